//! A whole mesh of real processes for fault scenarios: one central nats-server, `1..n`
//! central hubs, and `N` edge sites, each an edge nats-server whose leaf link runs through
//! its own [`FaultProxy`], with an edge hub on it.
//!
//! ```text
//!  edge hub e1 ─ edge nats e1 ─ proxy e1 ─┐
//!  edge hub e2 ─ edge nats e2 ─ proxy e2 ─┼─► central nats-server ◄─ central hub c0..cn
//! ```
//!
//! Invariants:
//! - Every port is ephemeral, every store and log lives under one directory (a temp dir
//!   removed on drop, unless [`Mesh::keep_dir`] was called or a directory was given).
//! - Hubs are `mesh` child processes ([`MeshProcess`]) of the executable passed in, so they
//!   can be SIGKILLed and restarted like deployed ones. Dropping the [`Mesh`] kills the hubs
//!   first, then the edge servers and proxies, then the central server.
//! - Waiting is a poll with a deadline ([`wait_until`]), never a bare sleep.
//! - Blocking process control (restarting a nats-server, SIGTERM with a grace period) runs
//!   under `tokio::task::block_in_place`: the harness needs a multi-thread runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agents::Agent;
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use mesh_nats::{NatsServer, ServerConfig};
use schemas::{headers as h, subject, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::MeshProcess;
use crate::proxy::FaultProxy;

/// Longest any single wait of the harness lasts before it gives up.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What went wrong while building or driving a mesh.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A nats-server could not be started or restarted.
    #[error("nats-server {name}: {source}")]
    Nats {
        name: String,
        #[source]
        source: Box<mesh_nats::Error>,
    },
    /// A file, directory, socket or child process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A NATS client operation against the mesh failed.
    #[error("{what}: {reason}")]
    Client { what: String, reason: String },
    /// No scenario has this name.
    #[error("no scenario named {0:?}; `mesh chaos list` names them")]
    UnknownScenario(String),
    /// A condition did not hold before its deadline.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

fn client_err(what: impl Into<String>) -> impl FnOnce(String) -> HarnessError {
    let what = what.into();
    move |reason| HarnessError::Client { what, reason }
}

/// The shape of a mesh to start.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// Number of edge sites, named `e1`, `e2`, …
    pub edges: usize,
    /// Number of central hub processes (`c0`, `c1`, …), all against the one central server.
    pub central_hubs: usize,
    /// TOML of every central hub's `--config` file.
    pub central_toml: String,
    /// TOML of every edge hub's `--config` file.
    pub edge_toml: String,
    /// Seed of each edge proxy's jitter generator (edge `i` gets `seed + i`).
    pub seed: u64,
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            edges: 1,
            central_hubs: 1,
            central_toml: String::new(),
            edge_toml: String::new(),
            seed: 1,
        }
    }
}

/// One edge site: its proxy on the leaf link, its nats-server and its hub.
pub struct Site {
    /// The edge id (`e1`, …).
    pub id: String,
    /// The edge hub process (`mesh edge`).
    pub hub: MeshProcess,
    /// The edge hub's `--http` address (metrics, health).
    pub http: SocketAddr,
    /// The edge nats-server (core NATS, leaf-linked through `proxy`).
    pub nats: NatsServer,
    /// The fault proxy between the edge nats-server and the central leaf port.
    pub proxy: FaultProxy,
}

/// A running mesh. Fields drop in declaration order: hubs, then sites, then the centre.
pub struct Mesh {
    /// Central hub processes (`mesh central`).
    pub central_hubs: Vec<MeshProcess>,
    /// `--http` address of each central hub.
    pub central_http: Vec<SocketAddr>,
    /// The edge sites.
    pub sites: Vec<Site>,
    /// The central nats-server (JetStream, domain `central`).
    pub central: NatsServer,
    js: jetstream::Context,
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl Mesh {
    /// Starts everything `spec` asks for, with hubs run from `exe` (the `mesh` binary), in
    /// `dir` (kept) or a fresh temp dir (removed on drop); returns once every edge hub
    /// reports its uplink up.
    pub async fn start(
        exe: &Path,
        spec: &MeshSpec,
        dir: Option<&Path>,
    ) -> Result<Mesh, HarnessError> {
        let (dir, temp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
                (d.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("mesh-chaos-")
                    .tempdir()
                    .map_err(io_err("creating a temp dir"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let central =
            start_nats(ServerConfig::central("chaos-central").dir(dir.join("central-nats")))
                .await?;
        let leaf = central.leaf_addr().ok_or_else(|| HarnessError::Client {
            what: "central nats-server".into(),
            reason: "has no leafnode port".into(),
        })?;
        let client = async_nats::connect(central.client_url())
            .await
            .map_err(|e| {
                client_err(format!("connecting to {}", central.client_url()))(e.to_string())
            })?;
        let js = jetstream::new(client);

        let central_cfg = dir.join("central.toml");
        std::fs::write(&central_cfg, &spec.central_toml)
            .map_err(io_err(format!("writing {}", central_cfg.display())))?;
        let mut central_hubs = Vec::new();
        let mut central_http = Vec::new();
        for i in 0..spec.central_hubs.max(1) {
            let http = free_addr()?;
            central_hubs.push(
                MeshProcess::spawn(
                    &format!("central hub c{i}"),
                    exe,
                    vec![
                        "central".into(),
                        "--nats".into(),
                        central.client_url(),
                        "--hub-id".into(),
                        format!("c{i}"),
                        "--config".into(),
                        central_cfg.display().to_string(),
                        "--http".into(),
                        http.to_string(),
                    ],
                    dir.join(format!("central-hub-c{i}.log")),
                )
                .map_err(io_err(format!("spawning central hub c{i}")))?,
            );
            central_http.push(http);
        }

        let edge_cfg = dir.join("edge.toml");
        std::fs::write(&edge_cfg, &spec.edge_toml)
            .map_err(io_err(format!("writing {}", edge_cfg.display())))?;
        let mut sites = Vec::new();
        for i in 0..spec.edges.max(1) {
            let id = format!("e{}", i + 1);
            let proxy = FaultProxy::start(leaf)
                .await
                .map_err(io_err(format!("starting the fault proxy of {id}")))?
                .with_seed(spec.seed.wrapping_add(i as u64));
            let nats = start_nats(
                ServerConfig::edge(&format!("chaos-{id}"), vec![proxy.url("nats-leaf")])
                    .dir(dir.join(format!("{id}-nats"))),
            )
            .await?;
            let http = free_addr()?;
            let hub = MeshProcess::spawn(
                &format!("edge hub {id}"),
                exe,
                vec![
                    "edge".into(),
                    "--nats".into(),
                    nats.client_url(),
                    "--id".into(),
                    id.clone(),
                    "--data-dir".into(),
                    dir.join(format!("{id}-data")).display().to_string(),
                    "--http".into(),
                    http.to_string(),
                    "--config".into(),
                    edge_cfg.display().to_string(),
                ],
                dir.join(format!("edge-hub-{id}.log")),
            )
            .map_err(io_err(format!("spawning edge hub {id}")))?;
            sites.push(Site {
                id,
                hub,
                http,
                nats,
                proxy,
            });
        }
        let mesh = Mesh {
            central_hubs,
            central_http,
            sites,
            central,
            js,
            dir,
            temp,
        };
        for i in 0..mesh.sites.len() {
            mesh.wait_uplink(i, true).await?;
        }
        Ok(mesh)
    }

    /// The directory holding every store and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the directory after drop (for a post-mortem); returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(t) = self.temp.take() {
            let _ = t.keep();
        }
        self.dir.clone()
    }

    /// A JetStream context on the central nats-server (reconnects after its restarts).
    pub fn central_js(&self) -> &jetstream::Context {
        &self.js
    }

    /// A new agent `id` on edge `site`, on its own connection to the edge nats-server.
    pub async fn agent(&self, site: usize, id: &str) -> Result<Agent, HarnessError> {
        let s = &self.sites[site];
        let c = async_nats::connect(s.nats.client_url())
            .await
            .map_err(|e| client_err(format!("connecting agent {id} to {}", s.id))(e.to_string()))?;
        Agent::with_client(c, &s.id, id)
            .map_err(|e| client_err(format!("agent {id} on {}", s.id))(e.to_string()))
    }

    /// A metric of edge `site`: the first sample whose name (with labels) starts with `name`.
    pub async fn edge_metric(&self, site: usize, name: &str) -> Option<f64> {
        metric(self.sites[site].http, name).await
    }

    /// A metric summed over every sample whose name starts with `name`, over every
    /// central hub that answers.
    pub async fn central_metric_sum(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for a in &self.central_http {
            sum += metric_sum(*a, name).await;
        }
        sum
    }

    /// Waits until edge `site` reports its uplink `up` (or down); returns how long it took.
    pub async fn wait_uplink(&self, site: usize, up: bool) -> Result<Duration, HarnessError> {
        let want = if up { 1.0 } else { 0.0 };
        let id = &self.sites[site].id;
        wait_until(&format!("{id} uplink_up == {want}"), DEADLINE, || async {
            self.edge_metric(site, "mesh_edge_uplink_up").await == Some(want)
        })
        .await
    }

    /// The `ce-meshseq` of the last event of `edge` in `MESH_EVENTS` (0 when there is
    /// none): how far the centre has landed that edge. `None` when the centre cannot be
    /// asked (for example its nats-server is down).
    pub async fn landed_mark(&self, edge: &str) -> Option<u64> {
        let stream = self.js.get_stream(subject::STREAM_EVENTS).await.ok()?;
        match stream
            .get_last_raw_message_by_subject(&subject::evt_edge(edge))
            .await
        {
            Ok(m) => m
                .headers
                .get(h::MESH_SEQ)
                .and_then(|v| v.as_str().parse::<u64>().ok()),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Some(0),
            Err(_) => None,
        }
    }

    /// Messages in a stream of the centre (`None` when it cannot be asked).
    pub async fn stream_messages(&self, name: &str) -> Option<u64> {
        let mut s = self.js.get_stream(name).await.ok()?;
        s.info().await.ok().map(|i| i.state.messages)
    }

    /// Waits until every edge outbox is empty (the centre acked everything into
    /// `MESH_INGRESS`) and `MESH_INGRESS` is empty (everything landed). Call it after the
    /// producers stopped. Returns how long it took.
    pub async fn wait_drained(&self, deadline: Duration) -> Result<Duration, HarnessError> {
        let started = Instant::now();
        for i in 0..self.sites.len() {
            let id = &self.sites[i].id;
            wait_until(&format!("{id} outbox to drain"), deadline, || async {
                self.edge_metric(i, "mesh_edge_outbox_events").await == Some(0.0)
            })
            .await?;
        }
        wait_until("MESH_INGRESS to be landed", deadline, || async {
            self.stream_messages(subject::STREAM_INGRESS).await == Some(0)
        })
        .await?;
        Ok(started.elapsed())
    }

    /// Every event in `MESH_EVENTS`, in stream order.
    pub async fn read_events(&self) -> Result<Vec<Event>, HarnessError> {
        crate::judge::read_stream(&self.js)
            .await
            .map_err(|e| client_err("reading MESH_EVENTS")(e.to_string()))
    }

    /// SIGKILLs the central nats-server.
    pub fn kill_central(&mut self) {
        self.central.kill();
    }

    /// Starts the central nats-server again on the same ports and store; blocks (in place)
    /// until it accepts clients.
    pub fn restart_central(&mut self) -> Result<(), HarnessError> {
        let central = &mut self.central;
        tokio::task::block_in_place(|| central.restart()).map_err(|source| HarnessError::Nats {
            name: "chaos-central".into(),
            source: Box::new(source),
        })
    }

    /// SIGTERM to a hub process with a grace period (blocking in place); whether it exited 0.
    pub fn terminate(p: &mut MeshProcess, grace: Duration) -> bool {
        tokio::task::block_in_place(|| p.terminate(grace))
    }

    /// The last `lines` lines of every hub's log, for a report on failure.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let procs = self
            .central_hubs
            .iter()
            .chain(self.sites.iter().map(|s| &s.hub));
        for p in procs {
            let text = p.log_text();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("---- last lines of {} ----\n", p.name()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

async fn start_nats(cfg: ServerConfig) -> Result<NatsServer, HarnessError> {
    let name = cfg.name.clone();
    tokio::task::spawn_blocking(move || NatsServer::start(cfg))
        .await
        .map_err(|e| client_err(format!("starting nats-server {name}"))(e.to_string()))?
        .map_err(|source| HarnessError::Nats {
            name,
            source: Box::new(source),
        })
}

/// A free address on 127.0.0.1 (bound, then released for the child to bind).
pub fn free_addr() -> Result<SocketAddr, HarnessError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io_err("finding a free port"))
}

/// Polls `cond` every 20 ms until it holds; returns how long that took, or
/// [`HarnessError::Timeout`] after `deadline`.
pub async fn wait_until<F, Fut>(
    what: &str,
    deadline: Duration,
    mut cond: F,
) -> Result<Duration, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > deadline {
            return Err(HarnessError::Timeout {
                what: what.into(),
                waited: deadline,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` over HTTP/1.0 on `addr`; the body of the answer, `None` on any failure.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

/// The first sample of `/metrics` on `addr` whose name (with labels) starts with `name`.
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let body = http_get(addr, "/metrics").await?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The sum of every sample of `/metrics` on `addr` whose name starts with `name` (0 when
/// none, or when the hub does not answer).
pub async fn metric_sum(addr: SocketAddr, name: &str) -> f64 {
    http_get(addr, "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
