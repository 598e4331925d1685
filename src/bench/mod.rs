//! `mesh bench`: agentmesh against plain NATS, side by side, in one process run.
//!
//! Three systems, started one after another on the same machine, with the same
//! nats-server binary and the same event size:
//! * **limit** — raw pipelined JetStream publishes into one stream of a central server:
//!   what the centre can ingest at all;
//! * **native** — what a user would build with plain NATS: an edge nats-server with its
//!   own JetStream domain, a leaf link, and a central stream sourcing the edge stream;
//! * **agentmesh** — agents publishing through `mesh.ingest` to an edge hub (acks after
//!   the outbox flushed), forwarded in bundles, landed into `MESH_EVENTS`.
//!
//! For each: end-to-end throughput (until the central stream holds every event), ack
//! latency at fixed offered rates (open loop), and the drain rate of a backlog built up
//! behind a cut leaf link (black hole in a fault proxy). For agentmesh also the edge
//! hub's peak RSS with `--rss-events` buffered, and the outbox's disk use when full and
//! after `--cycles` fill/drain cycles. Hubs run as child processes (`mesh central`,
//! `mesh edge`), as deployed. Ratios are taken within this one run; no figure is
//! compared with a number measured elsewhere.
//!
//! Every system's servers, proxy and hubs are assembled by the test kit's one builder
//! (`mesh_testkit::MeshBuilder`). Modules: `limit`, `native`, `agentmesh` (one system
//! each), `load` (the publish and latency loops), `payload` (event data), `cpu` (`/proc`
//! readings), `report` (results, table, JSON); here the flags and the run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

mod agentmesh;
mod cpu;
mod limit;
mod load;
mod native;
mod noisy;
mod payload;
mod report;

use report::{MeshExtra, Report, SystemResult};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Event data size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Events in the end-to-end throughput run.
    #[arg(long, default_value_t = 300_000)]
    count: u64,
    /// Events buffered behind a cut link for the drain run.
    #[arg(long, default_value_t = 500_000)]
    backlog: u64,
    /// Offered rates (events/s) of the latency runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5000,20000")]
    rates: Vec<u64>,
    /// Seconds per latency run.
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// Publishing agents (one connection each) in the throughput and drain runs.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Events per agentmesh ingest request in the throughput and drain runs.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Events buffered in the outbox for the edge hub memory check.
    #[arg(long, default_value_t = 1_000_000)]
    rss_events: u64,
    /// Fill/drain cycles of the outbox disk check.
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Events per fill/drain cycle.
    #[arg(long, default_value_t = 100_000)]
    cycle_events: u64,
    /// Seconds of each half of the noisy-neighbour run (a calm agent at 100 events/s
    /// alone, then beside a flooding agent); 0 skips it.
    #[arg(long, default_value_t = 10.0)]
    noisy_secs: f64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// TOML configuration for the agentmesh edge hub (e.g. to try forwarder settings).
    #[arg(long)]
    edge_config: Option<PathBuf>,
    /// Which systems to run (comma-separated): limit, native, agentmesh.
    #[arg(long, value_delimiter = ',', default_value = "limit,native,agentmesh")]
    systems: Vec<String>,
    /// Keep servers' and hubs' directories and logs here (default: a temp dir, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run every system without authentication and TLS (to measure what they cost).
    #[arg(long)]
    insecure: bool,
}

/// A progress line on stderr, rewritten at most five times a second.
pub(super) struct Progress {
    last: Instant,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            last: Instant::now() - Duration::from_secs(1),
        }
    }

    pub(super) fn show(&mut self, what: &str, done: u64, total: u64) {
        if self.last.elapsed() >= Duration::from_millis(200) || done >= total {
            eprint!("\r\x1b[2K[bench] {what}: {done}/{total}");
            self.last = Instant::now();
        }
    }

    pub(super) fn say(&mut self, what: &str) {
        eprint!("\r\x1b[2K[bench] {what}");
        self.last = Instant::now();
    }
}

pub async fn run(a: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(
        a.agents >= 1 && a.batch >= 1 && a.count >= a.agents as u64,
        "--agents, --batch and --count must be at least 1"
    );
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let bin = tokio::task::spawn_blocking(mesh_nats::ensure_binary).await??;
    let version = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut p = Progress::new();

    for s in &a.systems {
        anyhow::ensure!(
            ["limit", "native", "agentmesh"].contains(&s.as_str()),
            "unknown system {s:?} in --systems; use limit, native, agentmesh"
        );
    }
    let run = |name: &str| a.systems.iter().any(|s| s == name);
    let limit = if run("limit") {
        limit::bench_limit(&a, &dir.join("limit"), &bin, &mut p)
            .await
            .context("limit")?
    } else {
        SystemResult::default()
    };
    let native = if run("native") {
        native::bench_native(&a, &dir.join("native"), &bin, &mut p)
            .await
            .context("native")?
    } else {
        SystemResult::default()
    };
    let (agentmesh, extra) = if run("agentmesh") {
        agentmesh::bench_agentmesh(&a, &dir.join("agentmesh"), &bin, &mut p)
            .await
            .context("agentmesh")?
    } else {
        (SystemResult::default(), MeshExtra::default())
    };
    p.say("done\n");

    let report = Report {
        machine: cpu::machine(),
        nats_server: version,
        security: if a.insecure { "insecure" } else { "secure" }.into(),
        event_bytes: a.size,
        count: a.count,
        backlog: a.backlog,
        limit,
        native,
        agentmesh,
        agentmesh_extra: extra,
    };
    print!("{}", report::table(&report));
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
