//! `mesh up`: a whole local mesh on one machine — a central nats-server (JetStream domain
//! `central`) with a central hub, N edge nats-servers leaf-linked to it, each with an
//! edge hub — plus demo agents, printing what flows until Ctrl-C (or `--duration`).
//!
//! The mesh is assembled by the test kit's builder (`mesh_testkit::MeshBuilder`), as for
//! the tests: the hubs are `mesh central` / `mesh edge` child processes of this
//! executable, logging into files under `--data-dir`. That directory is kept across runs
//! and laid out the same way every time, so a second run reuses the stores and outboxes.
//! Stopping is two-phase: SIGTERM every hub and wait for it, then stop the servers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agents::Agent;
use anyhow::Context;
use clap::Args;
use mesh_nats::auth::Identity;
use mesh_testkit::{Mesh, MeshBuilder};
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct UpArgs {
    /// Number of edges.
    #[arg(long, default_value_t = 2)]
    edges: usize,
    /// Where servers' stores, outboxes and logs live (kept across runs).
    #[arg(long, default_value = ".mesh")]
    data_dir: PathBuf,
    /// Start the mesh without the demo agents.
    #[arg(long)]
    no_demo: bool,
    /// Stop by itself after this long (`90s`, `5m`, or seconds; default: run until Ctrl-C).
    #[arg(long, value_parser = crate::duration::parse)]
    duration: Option<Duration>,
    /// No authentication, no TLS, every client in one account: any client can do
    /// anything. Only for experiments on a trusted machine.
    #[arg(long)]
    insecure: bool,
    /// Run the centre as a cluster of this many nats-server nodes (1, 3 or 5), with
    /// `events.replicas` and `ingress.replicas` 3 and a second central hub on standby.
    #[arg(long, default_value_t = 1)]
    central_nodes: usize,
}

/// The demo agents' identities: what each publishes and may read.
fn demo_agent(edge: &str, agent: &str) -> Identity {
    let (live, durables): (&[&str], &[(&str, &str)]) = match agent {
        "auditor" => (&[], &[("demo-auditor", "demo.>")]),
        "watcher" => (&["demo.>"], &[]),
        "order-checker" => (&[], &[("demo-order-checker", "demo.orders")]),
        "me" => (&["demo.>"], &[("me", "demo.>")]),
        _ => (&[], &[]),
    };
    Identity::Agent {
        edge: edge.into(),
        agent: agent.into(),
        live: live.iter().map(|s| s.to_string()).collect(),
        durables: durables
            .iter()
            .map(|(n, f)| (n.to_string(), f.to_string()))
            .collect(),
    }
}

/// Connect demo agent `agent` to edge `site` with its own credential.
async fn connect_agent(mesh: &Mesh, site: usize, agent: &str) -> anyhow::Result<Agent> {
    let s = &mesh.sites[site];
    let auth = mesh.auth(&demo_agent(&s.id, agent))?;
    Agent::connect_with(&s.nats.client_url(), agent, &auth)
        .await
        .with_context(|| format!("demo agent {agent} on {}", s.id))
}

/// `MESH_LOG` of the hub processes: this command's own, else the hubs' usual default.
fn hub_log_filter() -> String {
    std::env::var("MESH_LOG").unwrap_or_else(|_| "info,async_nats=warn".into())
}

pub async fn run(a: UpArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=16).contains(&a.edges),
        "--edges is {}; use 1 to 16",
        a.edges
    );
    anyhow::ensure!(
        [1, 3, 5].contains(&a.central_nodes),
        "--central-nodes is {}; use 1, or 3 or 5 for a cluster (JetStream needs a majority)",
        a.central_nodes
    );
    // Before anything else touches the directory: a second `mesh up` on it would start
    // a second central nats-server on the first one's store.
    let lock = crate::dirlock::DirLock::take(&a.data_dir, "mesh up")?;
    lock.inherit()?;
    let data = std::fs::canonicalize(&a.data_dir)?;
    let binary = tokio::task::spawn_blocking(mesh_nats::ensure_binary)
        .await?
        .context("cannot find or install nats-server")?;
    println!(
        "agentmesh up: nats-server {}, data in {}",
        binary.display(),
        data.display()
    );
    let mesh = MeshBuilder::new()
        .name("mesh")
        .exe(std::env::current_exe().context("cannot find the mesh executable")?)
        .nats_binary(&binary)
        .dir(&data)
        .proxied(false)
        .central_nodes(a.central_nodes)
        .central_hub_ids(match a.central_nodes {
            1 => vec!["central-1"],
            _ => vec!["central-1", "central-2"],
        })
        .edge_ids((1..=a.edges).map(|i| format!("edge-{i}")))
        .hub_log(&hub_log_filter())
        .secure(!a.insecure)
        .start()
        .await
        .context("cannot start the mesh")?;
    print_components(&mesh);
    let creds_flags = match mesh.security() {
        Some(sec) => {
            let operator = mesh.operator_auth()?;
            let me = mesh.auth(&demo_agent(&mesh.sites[0].id, "me"))?;
            for (i, site) in mesh.sites.iter().enumerate() {
                for agent in demo_agents(i, mesh.sites.len()) {
                    mesh.auth(&demo_agent(&site.id, &agent))?;
                }
            }
            println!("secure:  TLS CA {}", sec.tls.ca.display());
            println!("         credentials in {}", sec.creds_dir.display());
            println!(
                "         operator {}",
                operator.creds.as_ref().expect("secure").display()
            );
            println!(
                "         agent me@{} {}",
                mesh.sites[0].id,
                me.creds.as_ref().expect("secure").display()
            );
            Some((operator, me, sec.tls.ca.clone()))
        }
        None => {
            eprintln!(
                "WARNING: --insecure: no authentication, no TLS. Any client can publish as any \
                 agent, forge bundles, read everything and delete the mesh's streams."
            );
            None
        }
    };
    let flags = |auth: Option<&mesh_nats::client::ClientAuth>| match (auth, &creds_flags) {
        (Some(a), Some((_, _, ca))) => format!(
            " --creds {} --tls-ca {}",
            a.creds
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
            ca.display()
        ),
        _ => String::new(),
    };
    let op_flags = flags(creds_flags.as_ref().map(|c| &c.0));
    let me_flags = flags(creds_flags.as_ref().map(|c| &c.1));

    let stop = CancellationToken::new();
    let central_url = mesh.central_url();
    let edge_urls: Vec<(String, String)> = mesh
        .sites
        .iter()
        .map(|s| (s.id.clone(), s.nats.client_url()))
        .collect();
    println!(
        "try:     mesh pub --nats {}{me_flags} --agent me demo.hello '{{\"hi\":1}}'",
        edge_urls[0].1
    );
    println!(
        "         mesh sub --nats {}{me_flags} --agent me --durable me 'demo.>'",
        edge_urls[0].1
    );

    if !a.no_demo {
        for (i, (id, _)) in edge_urls.iter().enumerate() {
            let agent = connect_agent(&mesh, i, &format!("producer-{}", &id[5..])).await?;
            tokio::spawn(agents::demo::producer(
                agent,
                Duration::from_secs(1),
                |line| println!("[pub ] {line}"),
            ));
        }
        let auditor = connect_agent(&mesh, 0, "auditor").await?;
        tokio::spawn(async move {
            if let Err(e) =
                agents::demo::consumer(auditor, "demo-auditor", |line| println!("[sub ] {line}"))
                    .await
            {
                eprintln!("demo consumer stopped: {e}");
            }
        });
        let watcher = connect_agent(&mesh, edge_urls.len() - 1, "watcher").await?;
        let mut live = watcher.subscribe_live("demo.>").await?;
        tokio::spawn(async move {
            while let Some(Ok(ev)) = live.next().await {
                println!(
                    "[live] watcher@{} saw {} seq {} from {}",
                    watcher.edge(),
                    ev.ty,
                    ev.seq,
                    ev.source()
                );
            }
        });
    }
    println!(
        "         mesh audit verify --nats {0}{1}\n         mesh dlq list --nats {0}{1}\n         mesh registry list --nats {0}{1}",
        central_url, op_flags
    );
    if !a.no_demo {
        let producer = connect_agent(&mesh, 0, "order-desk").await?;
        let strict = connect_agent(&mesh, 0, "order-checker").await?;
        let operator = mesh.operator_auth()?;
        let central_url = central_url.clone();
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = demo_dead_letter_and_audit(producer, strict, &operator, &central_url) => {
                    if let Err(e) = r {
                        eprintln!("dead-letter / audit demo stopped: {e:#}");
                    }
                }
                _ = s.cancelled() => {}
            }
        });
    }
    println!("running; Ctrl-C to stop");
    match a.duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = crate::shutdown_signal() => {}
            }
        }
        None => crate::shutdown_signal().await,
    }
    println!("stopping");
    stop.cancel();
    for hub in mesh.shutdown(HUB_GRACE) {
        eprintln!("{hub} did not exit cleanly on SIGTERM within {HUB_GRACE:?}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo agents of site `i` of `n`.
fn demo_agents(i: usize, n: usize) -> Vec<String> {
    let mut v = vec![format!("producer-{}", i + 1)];
    if i == 0 {
        v.extend(["auditor", "order-desk", "order-checker", "me"].map(String::from));
    }
    if i == n - 1 {
        v.push("watcher".into());
    }
    v
}

/// How long each hub has to exit after SIGTERM.
const HUB_GRACE: Duration = Duration::from_secs(10);

/// One line per component: what it is, its URLs, its pid and where its data lives.
fn print_components(mesh: &Mesh) {
    let pid = |p: Option<u32>| p.map_or_else(|| "-".into(), |p| p.to_string());
    let clustered = mesh.central_nodes().len() > 1;
    for c in mesh.central_nodes() {
        let route = match c.route_port() {
            Some(p) if clustered => format!("  route nats-route://127.0.0.1:{p}"),
            _ => String::new(),
        };
        println!(
            "central  nats-server {:<12} nats {}  leaf {}{route}  pid {}  data {}",
            c.name(),
            c.client_url(),
            c.leaf_url().unwrap_or_default(),
            pid(c.pid()),
            c.dir().display()
        );
    }
    if clustered {
        println!(
            "central  cluster \"central\" of {} nodes; JetStream meta leader {}; clients use --nats {}",
            mesh.central_nodes().len(),
            mesh.meta_leader()
                .map(|i| mesh.central_nodes()[i].name().to_string())
                .unwrap_or_else(|| "not elected yet".into()),
            mesh.central_url()
        );
    }
    for hub in &mesh.central_hubs {
        let http = hub.http();
        println!(
            "central  hub {:<20} status http://{http}/  metrics http://{http}/metrics  pid {}  log {}",
            hub.id(),
            pid(hub.pid()),
            hub.process().log_path().display()
        );
    }
    for site in &mesh.sites {
        println!(
            "{:<8} nats-server {:<12} nats {}  pid {}  data {}",
            site.id,
            site.nats.name(),
            site.nats.client_url(),
            pid(site.nats.pid()),
            site.nats.dir().display()
        );
        if let Some(hub) = &site.hub {
            let http = hub.http();
            println!(
                "{:<8} hub {:<20} status http://{http}/  metrics http://{http}/metrics  pid {}  data {}  log {}",
                site.id,
                hub.id(),
                pid(hub.pid()),
                site.data_dir.display(),
                hub.process().log_path().display()
            );
        }
    }
}

/// The operator side of the demo: one malformed order is rejected by a strict consumer
/// and lands in `MESH_DLQ`; then the audit chain is verified every 10 s.
async fn demo_dead_letter_and_audit(
    producer: Agent,
    strict: Agent,
    operator: &mesh_nats::client::ClientAuth,
    central_url: &str,
) -> anyhow::Result<()> {
    producer
        .publish_json(
            "demo.order",
            "demo.orders",
            &serde_json::json!({"qty": "many"}),
        )
        .await?;
    let mut sub = strict
        .subscribe("demo-order-checker", "demo.orders")
        .await?;
    if let Some(d) = sub.next().await {
        let d = d?;
        let ok = serde_json::from_slice::<serde_json::Value>(&d.event.data)
            .ok()
            .and_then(|v| v["qty"].as_u64())
            .is_some();
        if ok {
            d.ack().await?;
        } else {
            let seq = d.reject("demo: qty is not a number").await?;
            println!(
                "[dlq ] order-checker rejected {} seq {} from {}: dead-lettered as MESH_DLQ seq {seq}",
                d.event.ty,
                d.event.seq,
                d.event.source()
            );
        }
    }
    let client = operator
        .connect(central_url, "mesh up audit demo")
        .await
        .map_err(|e| anyhow::anyhow!("operator connection to {central_url}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let msgs = schemas::audit::read_all(&js, schemas::subject::STREAM_AUDIT).await?;
        match schemas::audit::verify(&msgs, None) {
            schemas::audit::Verdict::Ok {
                count,
                head_seq,
                head_hash,
            } => {
                println!("[audit] verify OK: {count} records, head seq {head_seq} hash {head_hash}")
            }
            schemas::audit::Verdict::Bad(p) => println!("[audit] verify FAILED: {p}"),
        }
    }
}
