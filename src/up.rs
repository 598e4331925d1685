//! `mesh up`: a whole local mesh on one machine — a central nats-server (JetStream domain
//! `central`) with a central hub, N edge nats-servers leaf-linked to it, each with an
//! edge hub — plus demo agents, printing what flows until Ctrl-C (or `--duration`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agents::Agent;
use anyhow::Context;
use clap::Args;
use mesh_nats::{NatsServer, ServerConfig};
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

async fn start_server(cfg: ServerConfig) -> anyhow::Result<NatsServer> {
    let name = cfg.name.clone();
    tokio::task::spawn_blocking(move || NatsServer::start(cfg))
        .await?
        .with_context(|| format!("cannot start nats-server {name}"))
}

async fn http_listener() -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", l.local_addr()?);
    Ok((l, addr))
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

    let stop = CancellationToken::new();
    let mut hubs = Vec::new();

    let central_nats = start_server(
        ServerConfig::central("mesh-central")
            .dir(data.join("central-nats"))
            .binary(binary.clone()),
    )
    .await?;
    let leaf = central_nats
        .leaf_url()
        .context("central nats-server has no leafnode port")?;
    let client = async_nats::connect(central_nats.client_url()).await?;
    let (l, http) = http_listener().await?;
    let cfg = central_hub::CentralConfig {
        hub_id: "central-1".into(),
        nats: central_nats.client_url(),
        ..Default::default()
    };
    let s = stop.clone();
    hubs.push(tokio::spawn(async move {
        if let Err(e) = central_hub::run(cfg, client, Some(l), s.cancelled_owned()).await {
            eprintln!("central hub failed: {e}");
        }
    }));
    println!(
        "central  nats {}  leaf {}  hub metrics {}/metrics",
        central_nats.client_url(),
        leaf,
        http
    );

    let mut edge_servers = Vec::new();
    for i in 1..=a.edges {
        let id = format!("edge-{i}");
        let srv = start_server(
            ServerConfig::edge(&format!("mesh-{id}"), vec![leaf.clone()])
                .dir(data.join(format!("{id}-nats")))
                .binary(binary.clone()),
        )
        .await?;
        let client = async_nats::connect(srv.client_url()).await?;
        let (l, http) = http_listener().await?;
        let cfg = edge_hub::EdgeConfig {
            id: id.clone(),
            nats: srv.client_url(),
            data_dir: data.join(&id),
            ..Default::default()
        };
        let s = stop.clone();
        hubs.push(tokio::spawn(async move {
            if let Err(e) = edge_hub::run(cfg, client, Some(l), s.cancelled_owned()).await {
                eprintln!("edge hub failed: {e}");
            }
        }));
        println!(
            "{id:<8} nats {}  hub metrics {}/metrics",
            srv.client_url(),
            http
        );
        edge_servers.push((id, srv));
    }
    println!(
        "try:     mesh pub --nats {} --agent me demo.hello '{{\"hi\":1}}'",
        edge_servers[0].1.client_url()
    );
    println!(
        "         mesh sub --nats {} --durable me 'demo.>'",
        central_nats.client_url()
    );

    if !a.no_demo {
        for (id, srv) in &edge_servers {
            let agent = Agent::connect(&srv.client_url(), &format!("producer-{}", &id[5..]))
                .await
                .with_context(|| format!("demo producer on {id}"))?;
            tokio::spawn(agents::demo::producer(
                agent,
                Duration::from_secs(1),
                |line| println!("[pub ] {line}"),
            ));
        }
        let auditor = Agent::connect(&edge_servers[0].1.client_url(), "auditor").await?;
        tokio::spawn(async move {
            if let Err(e) =
                agents::demo::consumer(auditor, "demo-auditor", |line| println!("[sub ] {line}"))
                    .await
            {
                eprintln!("demo consumer stopped: {e}");
            }
        });
        let watcher = Agent::connect(
            &edge_servers[edge_servers.len() - 1].1.client_url(),
            "watcher",
        )
        .await?;
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
        central_nats.client_url()
    );
    if !a.no_demo {
        let central_url = central_nats.client_url();
        let edge_url = edge_servers[0].1.client_url();
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
    for h in hubs {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
    drop(edge_servers);
    drop(central_nats);
    Ok(ExitCode::SUCCESS)
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
        let msgs = central_hub::audit::read_all(&js, schemas::subject::STREAM_AUDIT).await?;
        match central_hub::audit::verify(&msgs, None) {
            central_hub::audit::Verdict::Ok {
                count,
                head_seq,
                head_hash,
            } => {
                println!("[audit] verify OK: {count} records, head seq {head_seq} hash {head_hash}")
            }
            central_hub::audit::Verdict::Bad(p) => println!("[audit] verify FAILED: {p}"),
        }
    }
}
