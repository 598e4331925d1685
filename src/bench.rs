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

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agents::Agent;
use anyhow::{bail, Context};
use async_nats::jetstream::{self, stream};
use chaos::{process::disk_usage, FaultProxy, MeshProcess};
use clap::Args;
use mesh_nats::{NatsServer, ServerConfig};
use schemas::NewEvent;
use serde::Serialize;

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
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    offered_per_s: u64,
    samples: usize,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    /// agentmesh: the edge hub's group-commit time (sled write + flush) during the run,
    /// p50 and p99, as the upper bound of the histogram bucket (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_p99_us: Option<f64>,
}

/// The edge hub's group-commit histogram on its `/metrics` page.
const COMMIT_HISTOGRAM: &str = "mesh_edge_commit_seconds";

#[derive(Debug, Clone, Default, Serialize)]
struct SystemResult {
    throughput_per_s: Option<f64>,
    drain_per_s: Option<f64>,
    latency: Vec<Latency>,
    /// CPU microseconds per event by process, in the throughput run.
    cpu_throughput: Option<CpuProfile>,
    /// The same in the drain run.
    cpu_drain: Option<CpuProfile>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct MeshExtra {
    rss_events: u64,
    edge_peak_rss_bytes: u64,
    outbox_disk_full_bytes: u64,
    outbox_payload_full_bytes: u64,
    outbox_disk_after_cycles: Vec<u64>,
    cycle_payload_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    machine: String,
    nats_server: String,
    event_bytes: usize,
    count: u64,
    backlog: u64,
    limit: SystemResult,
    native: SystemResult,
    agentmesh: SystemResult,
    agentmesh_extra: MeshExtra,
}

/// A progress line on stderr, rewritten at most five times a second.
struct Progress {
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            last: Instant::now() - Duration::from_secs(1),
        }
    }

    fn show(&mut self, what: &str, done: u64, total: u64) {
        if self.last.elapsed() >= Duration::from_millis(200) || done >= total {
            eprint!("\r\x1b[2K[bench] {what}: {done}/{total}");
            self.last = Instant::now();
        }
    }

    fn say(&mut self, what: &str) {
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
        bench_limit(&a, &dir.join("limit"), &bin, &mut p)
            .await
            .context("limit")?
    } else {
        SystemResult::default()
    };
    let native = if run("native") {
        bench_native(&a, &dir.join("native"), &bin, &mut p)
            .await
            .context("native")?
    } else {
        SystemResult::default()
    };
    let (agentmesh, extra) = if run("agentmesh") {
        bench_agentmesh(&a, &dir.join("agentmesh"), &bin, &mut p)
            .await
            .context("agentmesh")?
    } else {
        (SystemResult::default(), MeshExtra::default())
    };
    p.say("done\n");

    let report = Report {
        machine: machine(),
        nats_server: version,
        event_bytes: a.size,
        count: a.count,
        backlog: a.backlog,
        limit,
        native,
        agentmesh,
        agentmesh_extra: extra,
    };
    print!("{}", table(&report));
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1048576.0))
        .unwrap_or_default();
    format!("{cores} cores, {mem}, {cpu}")
}

/// Event data for every system alike: successive slices of a 4 MiB pool of pseudo-random
/// bytes (xorshift, fixed seed), so no two nearby events carry the same data. The
/// agentmesh outbox compresses its records with LZ4; identical or patterned test data
/// would let it compress the data itself and flatter the disk and memory figures.
struct Payloads {
    pool: bytes::Bytes,
    size: usize,
    at: usize,
}

impl Payloads {
    const POOL: usize = 4 << 20;

    /// `stream` picks a different starting point for each publisher.
    fn new(size: usize, stream: usize) -> Payloads {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let pool: Vec<u8> = (0..Self::POOL.max(2 * size))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Payloads {
            at: (stream * 7919 * size.max(1)) % (pool.len() - size),
            pool: pool.into(),
            size,
        }
    }

    fn next(&mut self) -> bytes::Bytes {
        if self.at + self.size > self.pool.len() {
            self.at = 0;
        }
        let b = self.pool.slice(self.at..self.at + self.size);
        self.at += self.size.max(1);
        b
    }
}

async fn start(cfg: ServerConfig) -> anyhow::Result<NatsServer> {
    let name = cfg.name.clone();
    tokio::task::spawn_blocking(move || NatsServer::start(cfg))
        .await?
        .with_context(|| format!("starting nats-server {name}"))
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 16)
        .connect(url)
        .await?)
}

async fn stream_count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Polls until `name` holds `n` messages; gives up after `limit`.
async fn wait_count(
    js: &jetstream::Context,
    name: &str,
    n: u64,
    what: &str,
    p: &mut Progress,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let have = stream_count(js, name).await;
        p.show(what, have, n);
        if have >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: {name} holds {have} of {n} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Pipelined JetStream publishes from several connections, at most `window`
/// unacknowledged per connection; returns when all are acked.
async fn js_publish_all(
    clients: &[async_nats::Client],
    domain: Option<&str>,
    subject: &str,
    count: u64,
    size: usize,
) -> anyhow::Result<()> {
    let per = count / clients.len() as u64;
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let js = match domain {
            Some(d) => jetstream::with_domain(c.clone(), d),
            None => jetstream::new(c.clone()),
        };
        let n = if i == 0 {
            count - per * (clients.len() as u64 - 1)
        } else {
            per
        };
        let subject = subject.to_string();
        let mut payloads = Payloads::new(size, i);
        tasks.push(tokio::spawn(async move {
            let mut pending = VecDeque::new();
            for _ in 0..n {
                if pending.len() >= 4096 {
                    let f: jetstream::context::PublishAckFuture =
                        pending.pop_front().expect("non-empty");
                    f.await?;
                }
                pending.push_back(js.publish(subject.clone(), payloads.next()).await?);
            }
            for f in pending {
                f.await?;
            }
            Ok::<(), async_nats::Error>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| anyhow::anyhow!("publish: {e}"))?;
    }
    Ok(())
}

/// Open-loop JetStream publishes at `rate` for `secs`: each publish's ack latency.
async fn js_latency(
    client: &async_nats::Client,
    domain: Option<&str>,
    subject: &str,
    rate: u64,
    secs: f64,
    size: usize,
) -> anyhow::Result<Latency> {
    let js = match domain {
        Some(d) => jetstream::with_domain(client.clone(), d),
        None => jetstream::new(client.clone()),
    };
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, jetstream::context::PublishAckFuture)>();
    let collector = tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Some((sent, f)) = rx.recv().await {
            if f.into_future().await.is_ok() {
                lat.push(sent.elapsed().as_micros() as u64);
            }
        }
        lat
    });
    let total = (rate as f64 * secs) as u64;
    let mut payloads = Payloads::new(size, 99);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while sent < due {
            let t = Instant::now();
            let f = js.publish(subject.to_string(), payloads.next()).await?;
            let _ = tx.send((t, f));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    drop(tx);
    Ok(percentiles(rate, collector.await?))
}

fn percentiles(rate: u64, mut v: Vec<u64>) -> Latency {
    v.sort_unstable();
    let at = |q: f64| -> u64 {
        if v.is_empty() {
            0
        } else {
            v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
        }
    };
    Latency {
        offered_per_s: rate,
        samples: v.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        commit_p50_us: None,
        commit_p99_us: None,
    }
}

async fn bench_limit(
    a: &BenchArgs,
    dir: &Path,
    bin: &Path,
    p: &mut Progress,
) -> anyhow::Result<SystemResult> {
    p.say("limit: starting");
    let srv = start(ServerConfig::central("bench-limit").dir(dir).binary(bin)).await?;
    let url = srv.client_url();
    let clients = futures::future::try_join_all((0..a.agents).map(|_| connect(&url))).await?;
    let js = jetstream::new(clients[0].clone());
    js.create_stream(stream::Config {
        name: "LIMIT".into(),
        subjects: vec!["limit.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    p.say("limit: throughput");
    let pids = [None, None, None, srv.pid()];
    let cpu0 = cpu_now(pids);
    let t = Instant::now();
    js_publish_all(&clients, None, "limit.x", a.count, a.size).await?;
    let throughput = a.count as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu_profile(cpu0, cpu_now(pids), a.count);
    let mut latency = Vec::new();
    for &rate in &a.rates {
        p.say(&format!("limit: latency at {rate}/s"));
        latency
            .push(js_latency(&clients[0], None, "limit.lat", rate, a.latency_secs, a.size).await?);
    }
    Ok(SystemResult {
        throughput_per_s: Some(throughput),
        drain_per_s: None,
        latency,
        cpu_throughput: Some(cpu),
        cpu_drain: None,
    })
}

async fn bench_native(
    a: &BenchArgs,
    dir: &Path,
    bin: &Path,
    p: &mut Progress,
) -> anyhow::Result<SystemResult> {
    p.say("native: starting");
    let central = start(
        ServerConfig::central("bench-native-central")
            .dir(dir.join("central"))
            .binary(bin),
    )
    .await?;
    let proxy = FaultProxy::start(central.leaf_addr().context("central leaf port")?).await?;
    let edge = start(
        ServerConfig::edge("bench-native-edge", vec![proxy.url("nats-leaf")])
            .edge_jetstream("edge")
            .dir(dir.join("edge"))
            .binary(bin),
    )
    .await?;
    tokio::task::block_in_place(|| central.wait_for_leafnodes(1, Duration::from_secs(20)))?;
    let central_js = jetstream::new(connect(&central.client_url()).await?);
    let url = edge.client_url();
    let clients = futures::future::try_join_all((0..a.agents).map(|_| connect(&url))).await?;
    let edge_js = jetstream::new(clients[0].clone());
    edge_js
        .create_stream(stream::Config {
            name: "NATIVE_EDGE".into(),
            subjects: vec!["native.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("edge stream: {e}"))?;
    // The central stream sources the edge stream across the leaf link (domain "edge").
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = central_js
            .create_stream(stream::Config {
                name: "NATIVE_CENTRAL".into(),
                storage: stream::StorageType::File,
                sources: Some(vec![stream::Source {
                    name: "NATIVE_EDGE".into(),
                    external: Some(stream::External {
                        api_prefix: "$JS.edge.API".into(),
                        delivery_prefix: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "central stream not created yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("central sourcing stream: {e}"),
        }
    }
    p.say("native: throughput");
    let pids = [None, None, edge.pid(), central.pid()];
    let cpu0 = cpu_now(pids);
    let t = Instant::now();
    js_publish_all(&clients, None, "native.x", a.count, a.size).await?;
    wait_count(
        &central_js,
        "NATIVE_CENTRAL",
        a.count,
        "native: end to end",
        p,
        Duration::from_secs(300),
    )
    .await?;
    let throughput = a.count as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu_profile(cpu0, cpu_now(pids), a.count);
    let mut latency = Vec::new();
    for &rate in &a.rates {
        p.say(&format!("native: latency at {rate}/s"));
        latency.push(
            js_latency(
                &clients[0],
                None,
                "native.lat",
                rate,
                a.latency_secs,
                a.size,
            )
            .await?,
        );
    }
    let before = stream_count(&edge_js, "NATIVE_EDGE").await;
    wait_count(
        &central_js,
        "NATIVE_CENTRAL",
        before,
        "native: settle",
        p,
        Duration::from_secs(300),
    )
    .await?;
    p.say("native: building the backlog behind a cut link");
    proxy.cut();
    js_publish_all(&clients, None, "native.x", a.backlog, a.size).await?;
    let total = stream_count(&edge_js, "NATIVE_EDGE").await;
    let cpu0 = cpu_now(pids);
    let t = Instant::now();
    proxy.heal();
    wait_count(
        &central_js,
        "NATIVE_CENTRAL",
        total,
        "native: drain",
        p,
        Duration::from_secs(600),
    )
    .await?;
    let drain = a.backlog as f64 / t.elapsed().as_secs_f64();
    let drain_cpu = cpu_profile(cpu0, cpu_now(pids), a.backlog);
    drop(edge);
    Ok(SystemResult {
        throughput_per_s: Some(throughput),
        drain_per_s: Some(drain),
        latency,
        cpu_throughput: Some(cpu),
        cpu_drain: Some(drain_cpu),
    })
}

struct MeshSite {
    /// Held so the servers and hubs live as long as the site.
    _central: NatsServer,
    proxy: FaultProxy,
    edge: NatsServer,
    _central_hub: MeshProcess,
    edge_hub: MeshProcess,
    edge_http: std::net::SocketAddr,
    js: jetstream::Context,
    dir: PathBuf,
}

/// CPU time (user + system) a process used so far, in microseconds.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat: indices 11 and 12 here.
    let hz = 100; // USER_HZ on Linux
    (ticks(11) + ticks(12)) * 1_000_000 / hz
}

/// CPU time of (edge hub, central hub, edge nats-server, central nats-server, this
/// process) now; a missing process counts 0.
fn cpu_now(pids: [Option<u32>; 4]) -> [u64; 5] {
    let c = |p: Option<u32>| p.map(cpu_us).unwrap_or(0);
    [
        c(pids[0]),
        c(pids[1]),
        c(pids[2]),
        c(pids[3]),
        cpu_us(std::process::id()),
    ]
}

fn cpu_profile(before: [u64; 5], after: [u64; 5], events: u64) -> CpuProfile {
    let d = |i: usize| after[i].saturating_sub(before[i]) as f64 / events.max(1) as f64;
    CpuProfile {
        edge_hub: d(0),
        central_hub: d(1),
        edge_nats: d(2),
        central_nats: d(3),
        agents: d(4),
    }
}

/// CPU microseconds per event spent by each part during a run.
#[derive(Debug, Clone, Default, Serialize)]
struct CpuProfile {
    edge_hub: f64,
    central_hub: f64,
    edge_nats: f64,
    central_nats: f64,
    agents: f64,
}

fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The edge hub's value of one metric (first sample with that name prefix).
/// A hub's `/metrics` page.
fn metrics_page(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    metrics_page(addr)?
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

impl MeshSite {
    fn cpu(&self) -> [u64; 5] {
        cpu_now([
            self.edge_hub.pid(),
            self._central_hub.pid(),
            self.edge.pid(),
            self._central.pid(),
        ])
    }

    async fn start(dir: &Path, bin: &Path, edge_config: Option<&Path>) -> anyhow::Result<MeshSite> {
        let exe = std::env::current_exe()?;
        let central = start(
            ServerConfig::central("bench-mesh-central")
                .dir(dir.join("central"))
                .binary(bin),
        )
        .await?;
        let proxy = FaultProxy::start(central.leaf_addr().context("central leaf port")?).await?;
        let edge = start(
            ServerConfig::edge("bench-mesh-edge", vec![proxy.url("nats-leaf")])
                .dir(dir.join("edge"))
                .binary(bin),
        )
        .await?;
        let central_hub = MeshProcess::spawn(
            "central hub",
            &exe,
            vec![
                "central".into(),
                "--nats".into(),
                central.client_url(),
                "--hub-id".into(),
                "bench".into(),
            ],
            dir.join("central-hub.log"),
        )?;
        let edge_http = free_addr()?;
        let edge_hub = MeshProcess::spawn(
            "edge hub",
            &exe,
            vec![
                "edge".into(),
                "--nats".into(),
                edge.client_url(),
                "--id".into(),
                "bench".into(),
                "--data-dir".into(),
                dir.join("edge-data").display().to_string(),
                "--http".into(),
                edge_http.to_string(),
            ]
            .into_iter()
            .chain(
                edge_config
                    .map(|c| ["--config".to_string(), c.display().to_string()])
                    .into_iter()
                    .flatten(),
            )
            .collect(),
            dir.join("edge-hub.log"),
        )?;
        let js = jetstream::new(connect(&central.client_url()).await?);
        let site = MeshSite {
            _central: central,
            proxy,
            edge,
            _central_hub: central_hub,
            edge_hub,
            edge_http,
            js,
            dir: dir.to_path_buf(),
        };
        site.wait_uplink(true).await?;
        Ok(site)
    }

    async fn wait_uplink(&self, up: bool) -> anyhow::Result<()> {
        let want = if up { 1.0 } else { 0.0 };
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(self.edge_http, "mesh_edge_uplink_up") != Some(want) {
            if Instant::now() > deadline {
                bail!(
                    "edge uplink did not become {want}; see {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn agents(&self, n: usize) -> anyhow::Result<Vec<Agent>> {
        let mut out = Vec::new();
        for i in 0..n {
            let c = connect(&self.edge.client_url()).await?;
            out.push(
                Agent::with_client(c, "bench", &format!("bench-{i}"))?
                    .with_timeout(Duration::from_secs(30)),
            );
        }
        Ok(out)
    }

    async fn outbox_events(&self) -> f64 {
        metric(self.edge_http, "mesh_edge_outbox_events").unwrap_or(-1.0)
    }
}

/// Every agent publishes its share in batches, pipelined (8 requests in flight each);
/// returns once the edge acked all of them.
async fn mesh_publish_all(
    agents: &[Agent],
    count: u64,
    batch: usize,
    size: usize,
) -> anyhow::Result<()> {
    let per = count / agents.len() as u64;
    let mut tasks = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let n = if i == 0 {
            count - per * (agents.len() as u64 - 1)
        } else {
            per
        };
        let agent = agent.clone();
        let mut payloads = Payloads::new(size, i);
        tasks.push(tokio::spawn(async move {
            let mut pipe = agent.pipeline().await?;
            let mut sent = 0u64;
            let mut acked = 0u64;
            while acked < n {
                while sent < n && pipe.in_flight() < 8 {
                    let k = (batch as u64).min(n - sent);
                    let evs = (0..k)
                        .map(|_| NewEvent::new("bench", "bench.x", payloads.next()))
                        .collect();
                    pipe.send(evs).await?;
                    sent += k;
                }
                match pipe.next_reply().await {
                    Some((_, Ok(ack))) => acked += ack.last_seq - ack.first_seq + 1,
                    Some((_, Err(e))) => return Err(anyhow::anyhow!("publish refused: {e}")),
                    None => break,
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Open-loop single-event requests at `rate` for `secs`: each request's ack latency.
/// Open-loop ack latency through the edge hub. Replies are taken the moment they arrive
/// (a `select!` on the reply stream and the send schedule), like `js_latency`'s collector
/// task: waking on a timer to look for replies would add up to a timer tick (1 ms in
/// tokio) to every sample.
async fn mesh_latency(agent: &Agent, rate: u64, secs: f64, size: usize) -> anyhow::Result<Latency> {
    let mut pipe = agent.pipeline().await?;
    let total = (rate as f64 * secs) as u64;
    let mut payloads = Payloads::new(size, 99);
    let mut sent_at: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut lat = Vec::with_capacity(total as usize);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total || pipe.in_flight() > 0 {
        let next_due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::select! {
            biased;
            r = pipe.next_reply(), if pipe.in_flight() > 0 => {
                let Some((token, r)) = r else { break };
                r.map_err(|e| anyhow::anyhow!("latency publish refused: {e}"))?;
                if let Some(t) = sent_at.remove(&token) {
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            _ = tokio::time::sleep_until(next_due.into()), if sent < total => {
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
                while sent < due {
                    let t = Instant::now();
                    let token = pipe
                        .send(vec![NewEvent::new("bench", "bench.lat", payloads.next())])
                        .await?;
                    sent_at.insert(token, t);
                    sent += 1;
                }
            }
        }
    }
    Ok(percentiles(rate, lat))
}

/// Cumulative buckets `(le, count)` of a Prometheus histogram on a `/metrics` page.
fn histogram(addr: std::net::SocketAddr, name: &str) -> Vec<(f64, f64)> {
    let out = metrics_page(addr).unwrap_or_default();
    let prefix = format!("{name}_bucket{{");
    out.lines()
        .filter_map(|l| {
            let (labels, count) = l.strip_prefix(&prefix)?.split_once("} ")?;
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of the observations between two scrapes of one histogram, as the
/// upper bound of the bucket it falls in (µs).
fn histogram_quantile_us(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, c)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
            (le, c - b)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| le * 1e6)
}

async fn bench_agentmesh(
    a: &BenchArgs,
    dir: &Path,
    bin: &Path,
    p: &mut Progress,
) -> anyhow::Result<(SystemResult, MeshExtra)> {
    p.say("agentmesh: starting");
    let mut site = MeshSite::start(dir, bin, a.edge_config.as_deref()).await?;
    let agents = site.agents(a.agents).await?;
    let events = schemas::subject::STREAM_EVENTS;

    p.say("agentmesh: throughput");
    let cpu0 = site.cpu();
    let t = Instant::now();
    mesh_publish_all(&agents, a.count, a.batch, a.size).await?;
    wait_count(
        &site.js,
        events,
        a.count,
        "agentmesh: end to end",
        p,
        Duration::from_secs(300),
    )
    .await?;
    let throughput = a.count as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu_profile(cpu0, site.cpu(), a.count);

    let mut latency = Vec::new();
    for &rate in &a.rates {
        p.say(&format!("agentmesh: latency at {rate}/s"));
        let before = histogram(site.edge_http, COMMIT_HISTOGRAM);
        let mut l = mesh_latency(&agents[0], rate, a.latency_secs, a.size).await?;
        let after = histogram(site.edge_http, COMMIT_HISTOGRAM);
        l.commit_p50_us = histogram_quantile_us(&before, &after, 0.5);
        l.commit_p99_us = histogram_quantile_us(&before, &after, 0.99);
        latency.push(l);
    }
    let mut landed = a.count + latency.iter().map(|l| l.samples as u64).sum::<u64>();
    wait_count(
        &site.js,
        events,
        landed,
        "agentmesh: settle",
        p,
        Duration::from_secs(300),
    )
    .await?;

    p.say("agentmesh: building the backlog behind a cut link");
    site.proxy.cut();
    site.wait_uplink(false).await?;
    mesh_publish_all(&agents, a.backlog, a.batch, a.size).await?;
    landed += a.backlog;
    let cpu0 = site.cpu();
    let t = Instant::now();
    site.proxy.heal();
    wait_count(
        &site.js,
        events,
        landed,
        "agentmesh: drain",
        p,
        Duration::from_secs(600),
    )
    .await?;
    let drain = a.backlog as f64 / t.elapsed().as_secs_f64();
    let drain_cpu = cpu_profile(cpu0, site.cpu(), a.backlog);

    // Memory with the outbox full: a fresh edge hub process, so its peak is this run's.
    p.say("agentmesh: edge hub memory with a full outbox");
    let mut extra = MeshExtra {
        rss_events: a.rss_events,
        ..MeshExtra::default()
    };
    site.edge_hub.terminate(Duration::from_secs(20));
    site.proxy.cut();
    site.edge_hub.start()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(site.edge_http, "mesh_edge_uplink_up").is_none() {
        anyhow::ensure!(Instant::now() < deadline, "edge hub did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh_publish_all(&agents, a.rss_events, a.batch, a.size).await?;
    landed += a.rss_events;
    extra.edge_peak_rss_bytes = site.edge_hub.memory().map(|(peak, _)| peak).unwrap_or(0);
    extra.outbox_disk_full_bytes = disk_usage(&site.dir.join("edge-data"));
    extra.outbox_payload_full_bytes = a.rss_events * a.size as u64;
    site.proxy.heal();
    wait_count(
        &site.js,
        events,
        landed,
        "agentmesh: drain the full outbox",
        p,
        Duration::from_secs(600),
    )
    .await?;

    extra.cycle_payload_bytes = a.cycle_events * a.size as u64;
    for c in 0..a.cycles {
        p.say(&format!(
            "agentmesh: fill/drain cycle {}/{}",
            c + 1,
            a.cycles
        ));
        site.proxy.cut();
        site.wait_uplink(false).await?;
        mesh_publish_all(&agents, a.cycle_events, a.batch, a.size).await?;
        let full = disk_usage(&site.dir.join("edge-data"));
        landed += a.cycle_events;
        site.proxy.heal();
        wait_count(
            &site.js,
            events,
            landed,
            "agentmesh: cycle drain",
            p,
            Duration::from_secs(600),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while site.outbox_events().await != 0.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::debug!(cycle = c, full, "outbox disk at the full point");
        extra
            .outbox_disk_after_cycles
            .push(disk_usage(&site.dir.join("edge-data")));
    }
    drop(site);
    Ok((
        SystemResult {
            throughput_per_s: Some(throughput),
            drain_per_s: Some(drain),
            latency,
            cpu_throughput: Some(cpu),
            cpu_drain: Some(drain_cpu),
        },
        extra,
    ))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
}

fn table(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "mesh bench: {} B events, {} events end to end, {} backlog; {}; {}\n\n",
        r.event_bytes, r.count, r.backlog, r.nats_server, r.machine
    ));
    s.push_str(&format!(
        "{:<34} {:>11} {:>11} {:>11} {:>9} {:>10}\n",
        "", "limit", "native", "agentmesh", "am/limit", "am/native"
    ));
    let (l, n, m) = (&r.limit, &r.native, &r.agentmesh);
    s.push_str(&format!(
        "{:<34} {:>11} {:>11} {:>11} {:>9} {:>10}\n",
        "end-to-end throughput (events/s)",
        num(l.throughput_per_s),
        num(n.throughput_per_s),
        num(m.throughput_per_s),
        ratio(m.throughput_per_s, l.throughput_per_s),
        ratio(m.throughput_per_s, n.throughput_per_s)
    ));
    s.push_str(&format!(
        "{:<34} {:>11} {:>11} {:>11} {:>9} {:>10}\n",
        "backlog drain (events/s)",
        num(l.drain_per_s),
        num(n.drain_per_s),
        num(m.drain_per_s),
        "-",
        ratio(m.drain_per_s, n.drain_per_s)
    ));
    for (i, lat) in m.latency.iter().enumerate() {
        let f = |x: &SystemResult| {
            x.latency
                .get(i)
                .map(|l| format!("{}/{}/{}", l.p50_us, l.p99_us, l.p999_us))
                .unwrap_or_else(|| "-".into())
        };
        s.push_str(&format!(
            "{:<34} {:>11} {:>11} {:>11}\n",
            format!("ack p50/p99/p999 µs @{}/s", lat.offered_per_s),
            f(l),
            f(n),
            f(m)
        ));
    }
    for lat in &m.latency {
        if let (Some(p50), Some(p99)) = (lat.commit_p50_us, lat.commit_p99_us) {
            s.push_str(&format!(
                "agentmesh group commit (sled write + flush) @{}/s: p50 <= {p50:.0} µs, p99 <= {p99:.0} µs\n",
                lat.offered_per_s
            ));
        }
    }
    let e = &r.agentmesh_extra;
    let mib = |b: u64| b as f64 / 1048576.0;
    s.push_str(&format!(
        "\nagentmesh edge hub: peak RSS {:.1} MiB with {} events buffered; outbox disk {:.1} MiB for {:.1} MiB of payload ({:.2}x)\n",
        mib(e.edge_peak_rss_bytes),
        e.rss_events,
        mib(e.outbox_disk_full_bytes),
        mib(e.outbox_payload_full_bytes),
        e.outbox_disk_full_bytes as f64 / e.outbox_payload_full_bytes.max(1) as f64
    ));
    s.push_str("\nCPU µs per event (edge hub / central hub / edge nats-server / central nats-server / publishers):\n");
    for (name, sys) in [("limit", l), ("native", n), ("agentmesh", m)] {
        for (what, c) in [
            ("throughput", &sys.cpu_throughput),
            ("drain", &sys.cpu_drain),
        ] {
            if let Some(c) = c {
                s.push_str(&format!(
                    "  {name:<10} {what:<10} {:>5.1} {:>5.1} {:>5.1} {:>5.1} {:>5.1}  = {:.1}\n",
                    c.edge_hub,
                    c.central_hub,
                    c.edge_nats,
                    c.central_nats,
                    c.agents,
                    c.edge_hub + c.central_hub + c.edge_nats + c.central_nats + c.agents
                ));
            }
        }
    }
    if !e.outbox_disk_after_cycles.is_empty() {
        let list: Vec<String> = e
            .outbox_disk_after_cycles
            .iter()
            .map(|b| format!("{:.1}", mib(*b)))
            .collect();
        s.push_str(&format!(
            "outbox disk after each fill ({:.1} MiB payload)/drain cycle, MiB: {}\n",
            mib(e.cycle_payload_bytes),
            list.join(" ")
        ));
    }
    s
}
