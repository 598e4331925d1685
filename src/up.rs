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
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
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
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", a.data_dir.display()))?;
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
        .central_hub_ids(["central-1"])
        .edge_ids((1..=a.edges).map(|i| format!("edge-{i}")))
        .hub_log(&hub_log_filter())
        .start()
        .await
        .context("cannot start the mesh")?;
    print_components(&mesh);

    let stop = CancellationToken::new();
    let central_url = mesh.central.client_url();
    let edge_urls: Vec<(String, String)> = mesh
        .sites
        .iter()
        .map(|s| (s.id.clone(), s.nats.client_url()))
        .collect();
    println!(
        "try:     mesh pub --nats {} --agent me demo.hello '{{\"hi\":1}}'",
        edge_urls[0].1
    );
    println!("         mesh sub --nats {central_url} --durable me 'demo.>'");

    if !a.no_demo {
        for (id, url) in &edge_urls {
            let agent = Agent::connect(url, &format!("producer-{}", &id[5..]))
                .await
                .with_context(|| format!("demo producer on {id}"))?;
            tokio::spawn(agents::demo::producer(
                agent,
                Duration::from_secs(1),
                |line| println!("[pub ] {line}"),
            ));
        }
        let auditor = Agent::connect(&edge_urls[0].1, "auditor").await?;
        tokio::spawn(async move {
            if let Err(e) =
                agents::demo::consumer(auditor, "demo-auditor", |line| println!("[sub ] {line}"))
                    .await
            {
                eprintln!("demo consumer stopped: {e}");
            }
        });
        let watcher = Agent::connect(&edge_urls[edge_urls.len() - 1].1, "watcher").await?;
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
        "         mesh audit verify --nats {0}   mesh dlq list --nats {0}   mesh registry list --nats {0}",
        central_url
    );
    if !a.no_demo {
        let edge_url = edge_urls[0].1.clone();
        let central_url = central_url.clone();
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = demo_dead_letter_and_audit(&edge_url, &central_url) => {
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
        Some(secs) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
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

/// How long each hub has to exit after SIGTERM.
const HUB_GRACE: Duration = Duration::from_secs(10);

/// One line per component: what it is, its URLs, its pid and where its data lives.
fn print_components(mesh: &Mesh) {
    let pid = |p: Option<u32>| p.map_or_else(|| "-".into(), |p| p.to_string());
    let c = &mesh.central;
    println!(
        "central  nats-server {:<12} nats {}  leaf {}  pid {}  data {}",
        c.name(),
        c.client_url(),
        c.leaf_url().unwrap_or_default(),
        pid(c.pid()),
        c.dir().display()
    );
    for hub in &mesh.central_hubs {
        println!(
            "central  hub {:<20} metrics http://{}/metrics  pid {}  log {}",
            hub.id(),
            hub.http(),
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
            println!(
                "{:<8} hub {:<20} metrics http://{}/metrics  pid {}  data {}  log {}",
                site.id,
                hub.id(),
                hub.http(),
                pid(hub.pid()),
                site.data_dir.display(),
                hub.process().log_path().display()
            );
        }
    }
}

/// The operator side of the demo: one malformed order is rejected by a strict consumer
/// and lands in `MESH_DLQ`; then the audit chain is verified every 10 s.
async fn demo_dead_letter_and_audit(edge_url: &str, central_url: &str) -> anyhow::Result<()> {
    let producer = Agent::connect(edge_url, "order-desk").await?;
    producer
        .publish_json(
            "demo.order",
            "demo.orders",
            &serde_json::json!({"qty": "many"}),
        )
        .await?;
    let strict = Agent::connect(edge_url, "order-checker").await?;
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
    let client = async_nats::connect(central_url).await?;
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
