//! `mesh creds`: issue, list and revoke the credentials of a secure mesh from its data
//! directory (the one `mesh up --data-dir` and the test kit lay out: `keys/`, `creds/`,
//! `tls/ca.pem`).
//!
//! Invariants:
//! - Issuing needs only the keys: no server is told, so it works at once on a running
//!   mesh and at an edge cut off from the centre (the servers trust the account's
//!   signature, not a list).
//! - Output is the path written and the public key; never a seed or a JWT. Credential
//!   files are mode 0600 ([`mesh_nats::auth::write_secret`]).
//! - An existing credential file is never replaced silently (`--force` does): losing it
//!   would leave a live credential that can only be revoked together with its successor.
//! - A revocation is recorded in `keys/issued.json` first, then pushed to the centre;
//!   when the push fails it stays recorded and `mesh creds push` sends it again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use mesh_nats::auth::{creds_public_key, creds_user_name, Identity, Issued, MeshKeys};
use mesh_nats::client::AccountUpdate;
use schemas::subject::{validate_filter, validate_id};

#[derive(Args)]
pub struct CredsArgs {
    #[command(subcommand)]
    cmd: CredsCmd,
}

#[derive(Subcommand)]
enum CredsCmd {
    /// Issue an agent's credential: it may publish only to its own ingest subject.
    Agent(AgentArgs),
    /// Issue a human operator's credential (replay, dlq, audit, registry).
    Operator(NamedArgs),
    /// Issue one edge site's credentials: its edge hub, its leaf link, its system leaf link.
    Edge(EdgeArgs),
    /// Issue a central hub's credential.
    Hub(NamedArgs),
    /// List every credential issued: name, kind, public key, issued, revoked.
    List(ListArgs),
    /// Revoke credentials and push the account to the centre, which closes their connections.
    Revoke(RevokeArgs),
    /// Push the account (with every revocation) to the centre again, e.g. after a failed revoke.
    Push(PushArgs),
}

#[derive(Args)]
struct DataDir {
    /// The mesh's data directory (holding `keys/`), as given to `mesh up --data-dir`.
    #[arg(long, value_name = "DIR", default_value = ".mesh")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct Out {
    /// Where to write the credential (default `<DIR>/creds/<file name of the identity>`).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace an existing file (the credential in it stays valid until revoked).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    dir: DataDir,
    /// The edge the agent connects to.
    #[arg(long)]
    edge: String,
    /// The agent's id (the last token of its ingest subject).
    #[arg(long)]
    agent: String,
    /// An event-subject filter (e.g. `orders.>`) whose live copies it may subscribe to.
    #[arg(long, value_name = "FILTER")]
    live: Vec<String>,
    /// A durable consumer it may create and read, with its event-subject filter.
    #[arg(long, value_name = "NAME=FILTER")]
    durable: Vec<String>,
    #[command(flatten)]
    out: Out,
}

#[derive(Args)]
struct NamedArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Its name (A-Z a-z 0-9 _ -).
    #[arg(long)]
    name: String,
    #[command(flatten)]
    out: Out,
}

#[derive(Args)]
struct EdgeArgs {
    #[command(flatten)]
    dir: DataDir,
    /// The edge site's id.
    #[arg(long)]
    edge: String,
    /// Where to write the three files (default `<DIR>/creds`).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Replace existing files (the credentials in them stay valid until revoked).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    dir: DataDir,
    /// One JSON object per credential, one per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Centre {
    /// The central nats-server, e.g. tls://127.0.0.1:4222.
    #[arg(long, value_name = "CENTRAL_URL", env = "NATS_URL")]
    nats: String,
    /// CA to verify the centre with (default `<DIR>/tls/ca.pem`).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

#[derive(Args)]
#[command(group(ArgGroup::new("who").required(true).args(["name", "creds"])))]
struct RevokeArgs {
    #[command(flatten)]
    dir: DataDir,
    /// User name (e.g. `agent.e1.alice`, see `mesh creds list`) or public key; every
    /// live credential of that name is revoked.
    name: Option<String>,
    /// Revoke the one credential in this `.creds` file (by its public key).
    #[arg(long, value_name = "FILE")]
    creds: Option<PathBuf>,
    #[command(flatten)]
    centre: Centre,
}

#[derive(Args)]
struct PushArgs {
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    centre: Centre,
}

pub async fn run(a: CredsArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        CredsCmd::Agent(a) => agent(a),
        CredsCmd::Operator(a) => {
            validate_id("--name", &a.name)?;
            issue_one(&a.dir, Identity::Operator { name: a.name }, &a.out)
        }
        CredsCmd::Hub(a) => {
            validate_id("--name", &a.name)?;
            issue_one(&a.dir, Identity::CentralHub { name: a.name }, &a.out)
        }
        CredsCmd::Edge(a) => edge(a),
        CredsCmd::List(a) => list(a),
        CredsCmd::Revoke(a) => revoke(a).await,
        CredsCmd::Push(a) => push(a).await,
    }
}

/// The keys of the mesh in `dir`; refuses a directory that holds none rather than
/// creating a new, unrelated mesh's keys.
fn open_keys(dir: &DataDir) -> anyhow::Result<MeshKeys> {
    let keys = dir.data_dir.join("keys");
    if !MeshKeys::exists(&keys) {
        let hint = if MeshKeys::exists(&dir.data_dir) {
            format!(
                "; {} is itself a key directory: pass its parent",
                dir.data_dir.display()
            )
        } else {
            String::new()
        };
        bail!(
            "--data-dir {} holds no mesh keys (no {}): pass the data directory of a \
             secure mesh, the one `mesh up --data-dir DIR` created{hint}",
            dir.data_dir.display(),
            keys.join("mesh.nk").display()
        );
    }
    MeshKeys::open_or_create(&keys)
        .with_context(|| format!("cannot open the keys in {}", keys.display()))
}

fn agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    validate_id("--edge", &a.edge)?;
    validate_id("--agent", &a.agent)?;
    for f in &a.live {
        validate_filter("--live", f)?;
    }
    let mut durables = Vec::new();
    for d in &a.durable {
        let Some((name, filter)) = d.split_once('=') else {
            bail!(
                "--durable {d:?} has no '=': write it NAME=FILTER, e.g. --durable audit=orders.>"
            );
        };
        validate_id("--durable name", name)?;
        validate_filter("--durable filter", filter)?;
        durables.push((name.to_string(), filter.to_string()));
    }
    let id = Identity::Agent {
        edge: a.edge,
        agent: a.agent,
        live: a.live,
        durables,
    };
    issue_one(&a.dir, id, &a.out)
}

fn edge(a: EdgeArgs) -> anyhow::Result<ExitCode> {
    validate_id("--edge", &a.edge)?;
    let mut keys = open_keys(&a.dir)?;
    let out_dir = a.out_dir.unwrap_or_else(|| a.dir.data_dir.join("creds"));
    let ids = [
        Identity::EdgeHub {
            edge: a.edge.clone(),
        },
        Identity::Leaf {
            edge: a.edge.clone(),
        },
        Identity::SysLeaf { edge: a.edge },
    ];
    let paths: Vec<PathBuf> = ids.iter().map(|id| out_dir.join(id.file_name())).collect();
    // Refuse before writing any, so a refusal leaves no half-issued site.
    if !a.force {
        for p in &paths {
            refuse_existing(p)?;
        }
    }
    for (id, p) in ids.iter().zip(&paths) {
        write_creds(&mut keys, id, p)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn issue_one(dir: &DataDir, id: Identity, out: &Out) -> anyhow::Result<ExitCode> {
    let mut keys = open_keys(dir)?;
    let path = out
        .out
        .clone()
        .unwrap_or_else(|| dir.data_dir.join("creds").join(id.file_name()));
    if !out.force {
        refuse_existing(&path)?;
    }
    write_creds(&mut keys, &id, &path)?;
    Ok(ExitCode::SUCCESS)
}

fn refuse_existing(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let who = match (creds_user_name(&text), creds_public_key(&text)) {
        (Some(n), Some(k)) => format!(" (the credential of {n}, public key {k})"),
        _ => String::new(),
    };
    bail!(
        "{} already exists{who}: to rotate, issue the new one with --out NEW, deploy it, then \
         `mesh creds revoke --creds {}`; or pass --force to replace the file (the old \
         credential stays valid until revoked)",
        path.display(),
        path.display()
    )
}

fn write_creds(keys: &mut MeshKeys, id: &Identity, path: &Path) -> anyhow::Result<()> {
    let c = keys
        .issue_to(id, path)
        .with_context(|| format!("cannot issue the credential of {}", id.user_name()))?;
    println!(
        "issued {} (public key {}) to {}",
        id.user_name(),
        c.public_key,
        path.display()
    );
    Ok(())
}

fn kind(id: &Identity) -> &'static str {
    match id {
        Identity::Agent { .. } => "agent",
        Identity::EdgeHub { .. } => "edge-hub",
        Identity::Leaf { .. } => "leaf",
        Identity::SysLeaf { .. } => "sys-leaf",
        Identity::CentralHub { .. } => "central-hub",
        Identity::Operator { .. } => "operator",
    }
}

fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let keys = open_keys(&a.dir)?;
    if a.json {
        for i in keys.issued() {
            let line = serde_json::json!({
                "name": i.name,
                "kind": kind(&i.identity),
                "public_key": i.public_key,
                "issued": time(i.issued_at),
                "revoked": i.revoked_at.map(time),
                "identity": i.identity,
            });
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let width = keys
        .issued()
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(4);
    println!(
        "{:width$}  {:11}  {:56}  {:20}  REVOKED",
        "NAME", "KIND", "PUBLIC KEY", "ISSUED"
    );
    for i in keys.issued() {
        println!(
            "{:width$}  {:11}  {:56}  {:20}  {}",
            i.name,
            kind(&i.identity),
            i.public_key,
            time(i.issued_at),
            i.revoked_at.map(time).unwrap_or_else(|| "-".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let mut keys = open_keys(&a.dir)?;
    let who = match (&a.name, &a.creds) {
        (Some(n), _) => n.clone(),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read --creds {}", f.display()))?;
            creds_public_key(&text).with_context(|| {
                format!(
                    "--creds {} is not a NATS .creds file (no user JWT in it)",
                    f.display()
                )
            })?
        }
        (None, None) => unreachable!("clap requires NAME or --creds"),
    };
    let n = keys.revoke(&who).context("cannot record the revocation")?;
    if n == 0 {
        let matches: Vec<&Issued> = keys
            .issued()
            .iter()
            .filter(|i| i.name == who || i.public_key == who)
            .collect();
        if matches.is_empty() {
            bail!(
                "no credential of this mesh is named or keyed {who:?}: nothing revoked \
                 (`mesh creds list --data-dir {}` shows the names and keys)",
                a.dir.data_dir.display()
            );
        }
        bail!(
            "every credential matching {who:?} ({}) is already revoked: nothing new to revoke \
             (if the centre never got it, run `mesh creds push`)",
            matches.len()
        );
    }
    let ca = ca_path(&a.dir, &a.centre);
    let url = &a.centre.nats;
    match AccountUpdate::of(&keys).push(url, Some(&ca)).await {
        Ok(_) => {
            println!(
                "revoked {n} credential(s) of {who}; the centre at {url} has the new account \
                 and closed their connections there; edges get it over their system leaf \
                 links within seconds"
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!(
            "revoked {n} credential(s) of {who} locally (recorded in {}), but the centre at \
             {url} did not take the account: {e}. The servers accept the credential until \
             they get it: run `mesh creds push --data-dir {} --nats CENTRAL_URL` once the \
             centre is reachable",
            keys.dir().join("issued.json").display(),
            a.dir.data_dir.display()
        ),
    }
}

async fn push(a: PushArgs) -> anyhow::Result<ExitCode> {
    let keys = open_keys(&a.dir)?;
    let ca = ca_path(&a.dir, &a.centre);
    let url = &a.centre.nats;
    let revoked = keys
        .issued()
        .iter()
        .filter(|i| i.revoked_at.is_some())
        .count();
    AccountUpdate::of(&keys)
        .push(url, Some(&ca))
        .await
        .map_err(|e| anyhow::anyhow!("cannot push the account to the centre at {url}: {e}"))?;
    println!(
        "pushed the account ({revoked} revocation(s)) to the centre at {url}; edges get it \
         over their system leaf links within seconds"
    );
    Ok(ExitCode::SUCCESS)
}

fn ca_path(dir: &DataDir, c: &Centre) -> PathBuf {
    c.tls_ca
        .clone()
        .unwrap_or_else(|| dir.data_dir.join("tls").join("ca.pem"))
}
