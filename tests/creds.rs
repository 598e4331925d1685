//! `mesh creds` against a real secure mesh from the test kit (whose dir is a data dir
//! with `keys/`): a credential it issues works at once, also at an edge cut off from the
//! centre; a revocation closes the agent's connection within seconds and spares the
//! others; files are mode 0600 and no seed or JWT is ever printed; and every refusal.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agents::Agent;
use mesh_nats::client::ClientAuth;
use support::{mesh_cli, wait_for, Mesh, MeshOpts};
use tokio::sync::mpsc;

fn dir_arg(p: &Path) -> String {
    p.display().to_string()
}

/// `mesh creds agent` for `agent` of e1 in the mesh's data dir; the file written.
fn issue_agent(data: &Path, agent: &str) -> (PathBuf, String) {
    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &dir_arg(data),
        "--edge",
        "e1",
        "--agent",
        agent,
    ]);
    assert!(ok, "{out}");
    let path = data.join("creds").join(format!("agent-e1-{agent}.creds"));
    assert!(
        out.contains(&path.display().to_string()),
        "names the path: {out}"
    );
    (path, out)
}

fn ca(data: &Path) -> PathBuf {
    data.join("tls/ca.pem")
}

/// Every seed and JWT in the data dir (key seeds and credential files).
fn secrets(data: &Path) -> Vec<String> {
    let mut s = Vec::new();
    for d in ["keys", "creds"] {
        for e in std::fs::read_dir(data.join(d)).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for line in text.lines().map(str::trim) {
                if (line.starts_with('S') && line.len() == 58) || line.starts_with("eyJ") {
                    s.push(line.to_string());
                }
            }
        }
    }
    assert!(s.len() > 3, "found the secrets to look for");
    s
}

fn assert_no_secret(data: &Path, out: &str) {
    for s in secrets(data) {
        assert!(!out.contains(&s), "output shows a seed or JWT: {out}");
    }
    for word in out.split(|c: char| !c.is_ascii_alphanumeric()) {
        assert!(
            !(word.starts_with("SU") && word.len() == 58),
            "output shows a user seed: {out}"
        );
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

async fn publish_one(agent: &Agent, subject: &str) {
    agent
        .publish("test.creds", subject, &b"x"[..])
        .await
        .unwrap_or_else(|e| panic!("publish as {} not acked: {e}", agent.id()));
}

/// The landed events of `agent` once there are `n`.
async fn landed(mesh: &Mesh, agent: &str, n: usize) {
    wait_for(&format!("{n} events of {agent} in MESH_EVENTS"), || async {
        let evs = chaos::read_stream(mesh.kit().central_js())
            .await
            .unwrap_or_default();
        evs.iter()
            .filter(|e| e.agent == agent && e.source() == format!("mesh://e1/{agent}"))
            .count()
            >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_credential_issued_by_the_cli_works_at_once_without_a_restart() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let data = mesh.dir().to_path_buf();
    let (path, out) = issue_agent(&data, "newcomer");
    assert!(out.contains("agent.e1.newcomer"), "{out}");

    // (d) 0600 files, no seed or JWT in what it printed.
    assert_eq!(mode(&path), 0o600, "the credential");
    for f in ["operator.nk", "system.nk", "mesh.nk", "issued.json"] {
        assert_eq!(mode(&data.join("keys").join(f)), 0o600, "keys/{f}");
    }
    assert_no_secret(&data, &out);
    let (ok, listing) = mesh_cli(&["creds", "list", "--data-dir", &dir_arg(&data)]);
    assert!(ok, "{listing}");
    assert_no_secret(&data, &listing);

    // (a) the running servers take it: no server or hub was restarted.
    let auth = ClientAuth::new(&path, ca(&data));
    let agent = Agent::connect_with(&mesh.edge().client_url(), "newcomer", &auth)
        .await
        .expect("the new credential connects");
    publish_one(&agent, "orders.new").await;
    landed(&mesh, "newcomer", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_works_at_an_edge_cut_off_from_the_centre() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let data = mesh.dir().to_path_buf();
    mesh.proxy().cut();
    mesh.wait_uplink(false).await;

    let (path, _) = issue_agent(&data, "islander");
    let auth = ClientAuth::new(&path, ca(&data));
    let agent = Agent::connect_with(&mesh.edge().client_url(), "islander", &auth)
        .await
        .expect("the edge takes a credential issued during the partition");
    // Acked by the edge (its outbox) while the centre is out of reach.
    publish_one(&agent, "orders.cut").await;

    mesh.proxy().heal();
    landed(&mesh, "islander", 1).await;
}

/// [`ClientAuth::connect_watched`]: connect, with the connection's events on a channel.
async fn watched(
    url: &str,
    auth: &ClientAuth,
) -> Result<(async_nats::Client, mpsc::UnboundedReceiver<String>), String> {
    auth.connect_watched(url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_closes_the_agent_within_seconds_and_spares_the_others() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let data = mesh.dir().to_path_buf();
    let (victim, _) = issue_agent(&data, "victim");
    let (bystander, _) = issue_agent(&data, "bystander");
    let edge = mesh.edge().client_url();
    let victim_auth = ClientAuth::new(&victim, ca(&data));
    let (_c, mut events) = watched(&edge, &victim_auth).await.expect("victim connects");
    let other = Agent::connect_with(&edge, "bystander", &ClientAuth::new(&bystander, ca(&data)))
        .await
        .unwrap();

    let (ok, out) = mesh_cli(&[
        "creds",
        "revoke",
        "--data-dir",
        &dir_arg(&data),
        "agent.e1.victim",
        "--nats",
        &mesh.central().client_url(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("revoked 1 credential"), "{out}");
    assert!(out.contains("system leaf links"), "{out}");

    // The edge gets the account over its system leaf link and closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.recv().await {
            if ev.contains("disconnected") {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the revoked agent's connection was not closed"
    );
    let refused = watched(&edge, &victim_auth)
        .await
        .expect_err("revoked credential refused");
    assert!(
        refused.to_lowercase().contains("authorization"),
        "{refused}"
    );

    // The other agent is untouched.
    publish_one(&other, "orders.after").await;
    landed(&mesh, "bystander", 1).await;

    // (e) the list shows both, one revoked.
    let (ok, json) = mesh_cli(&["creds", "list", "--data-dir", &dir_arg(&data), "--json"]);
    assert!(ok, "{json}");
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {json}"))
    };
    assert!(row("agent.e1.victim")["revoked"].is_string(), "{json}");
    assert!(row("agent.e1.bystander")["revoked"].is_null(), "{json}");
    assert_eq!(row("agent.e1.victim")["kind"], "agent");
    assert!(row("agent.e1.victim")["public_key"]
        .as_str()
        .unwrap()
        .starts_with('U'));
    let (ok, table) = mesh_cli(&["creds", "list", "--data-dir", &dir_arg(&data)]);
    assert!(ok, "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("agent.e1.victim "))
        .expect(&table);
    assert!(line.trim_end().ends_with('Z'), "revoked time shown: {line}");
    let line = table
        .lines()
        .find(|l| l.starts_with("agent.e1.bystander "))
        .expect(&table);
    assert!(line.trim_end().ends_with('-'), "not revoked: {line}");
}

/// The refusals need only a key directory, no servers.
#[test]
fn refusals_name_the_problem_and_a_failed_push_stays_recorded() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path();
    let arg = dir_arg(data);

    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &arg,
        "--edge",
        "e1",
        "--agent",
        "a",
    ]);
    assert!(!ok && out.contains("holds no mesh keys"), "{out}");
    assert!(!data.join("keys").exists(), "no keys created by a refusal");

    mesh_nats::auth::MeshKeys::open_or_create(&data.join("keys")).unwrap();
    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &dir_arg(&data.join("keys")),
        "--edge",
        "e1",
        "--agent",
        "a",
    ]);
    assert!(!ok && out.contains("pass its parent"), "{out}");
    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &arg,
        "--edge",
        "e.1",
        "--agent",
        "a",
    ]);
    assert!(!ok && out.contains("--edge \"e.1\""), "{out}");
    let (ok, out) = mesh_cli(&[
        "creds",
        "operator",
        "--data-dir",
        &arg,
        "--name",
        "ann smith",
    ]);
    assert!(!ok && out.contains("--name"), "{out}");
    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &arg,
        "--edge",
        "e1",
        "--agent",
        "a",
        "--live",
        "a..b",
    ]);
    assert!(!ok && out.contains("--live"), "{out}");
    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &arg,
        "--edge",
        "e1",
        "--agent",
        "a",
        "--durable",
        "audit",
    ]);
    assert!(
        !ok && out.contains("--durable \"audit\" has no '='"),
        "{out}"
    );

    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &arg,
        "--edge",
        "e1",
        "--agent",
        "a",
        "--durable",
        "audit=orders.>",
        "--live",
        "orders.*",
    ]);
    assert!(ok, "{out}");
    let file = data.join("creds/agent-e1-a.creds");
    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &arg,
        "--edge",
        "e1",
        "--agent",
        "a",
    ]);
    assert!(
        !ok && out.contains("already exists") && out.contains("--force"),
        "{out}"
    );

    let (ok, out) = mesh_cli(&["creds", "edge", "--data-dir", &arg, "--edge", "e9"]);
    assert!(ok, "{out}");
    for f in ["edge-hub-e9.creds", "leaf-e9.creds", "sys-leaf-e9.creds"] {
        assert_eq!(mode(&data.join("creds").join(f)), 0o600, "{f}");
    }
    let (ok, out) = mesh_cli(&[
        "creds",
        "hub",
        "--data-dir",
        &arg,
        "--name",
        "c1",
        "--out",
        &dir_arg(&data.join("elsewhere/hub.creds")),
    ]);
    assert!(ok && out.contains("elsewhere/hub.creds"), "{out}");
    assert_no_secret(data, &out);

    let (ok, out) = mesh_cli(&[
        "creds",
        "revoke",
        "--data-dir",
        &arg,
        "agent.e1.nobody",
        "--nats",
        "tls://127.0.0.1:1",
    ]);
    assert!(
        !ok && out.contains("nothing revoked") && out.contains("mesh creds list"),
        "{out}"
    );

    // The centre is unreachable: recorded locally, and the way to push again named.
    let (ok, out) = mesh_cli(&[
        "creds",
        "revoke",
        "--data-dir",
        &arg,
        "--creds",
        &dir_arg(&file),
        "--nats",
        "tls://127.0.0.1:1",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("revoked 1 credential(s) of U") && out.contains("locally"),
        "{out}"
    );
    assert!(out.contains("mesh creds push"), "{out}");
    let (_, json) = mesh_cli(&["creds", "list", "--data-dir", &arg, "--json"]);
    let a: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["name"] == "agent.e1.a")
        .expect(&json);
    assert!(
        a["revoked"].is_string(),
        "recorded despite the failed push: {json}"
    );
    assert_eq!(a["identity"]["durables"][0][0], "audit");
    let (ok, out) = mesh_cli(&[
        "creds",
        "revoke",
        "--data-dir",
        &arg,
        "agent.e1.a",
        "--nats",
        "tls://127.0.0.1:1",
    ]);
    assert!(!ok && out.contains("already revoked"), "{out}");
}
