//! The one way to assemble a mesh of real processes: [`MeshBuilder`] starts them,
//! [`Mesh`] owns them while they run.
//!
//! ```text
//!  edge hub e1 ─ edge nats e1 ─ [proxy e1] ─┐
//!  edge hub e2 ─ edge nats e2 ─ [proxy e2] ─┼─► central nats-server ◄─ central hub c0..cn
//! ```
//!
//! One central nats-server (JetStream, domain `central`), `0..n` central hubs, and edge
//! sites, each an edge nats-server leaf-linked to the centre (through its own
//! [`FaultProxy`] unless `proxied(false)`) with an edge hub on it (unless `hubs(false)`,
//! which leaves plain nats-servers, as `mesh bench`'s native-NATS comparison needs).
//!
//! # Layout
//!
//! Everything lives in one directory, named the same way on every run so that a kept
//! directory ([`MeshBuilder::dir`]) is reused: stores and outboxes survive a restart.
//!
//! ```text
//! central-nats/           central nats-server: config, JetStream store, log
//! central.toml            --config of every central hub (when given)
//! central-hub-<id>.log    stdout and stderr of central hub <id>
//! edge.toml               --config of every edge hub (when given)
//! <edge>-nats/            edge nats-server of site <edge>
//! <edge>-data/            edge hub outbox of site <edge> (--data-dir)
//! edge-hub-<edge>.log     stdout and stderr of edge hub <edge>
//! ```
//!
//! # Invariants
//!
//! - Every port is ephemeral; every store and log lives under the mesh directory: a temp
//!   dir removed on drop unless [`Mesh::keep_dir`] was called, or a given one (kept).
//! - Hubs are `mesh` child processes of the executable given ([`MeshBuilder::exe`]),
//!   started with [`EdgeArgs`] / [`CentralArgs`], so they can be SIGKILLed, SIGTERMed and
//!   restarted like deployed ones. Dropping the [`Mesh`] kills the central hubs, then each
//!   site's hub, nats-server and proxy, then the central server.
//! - [`MeshBuilder::start`] returns once every edge hub reports its uplink up (or, without
//!   hubs, once the centre counts every leaf connection).
//! - Blocking process control (restarting a nats-server, SIGTERM with a grace period) runs
//!   under `tokio::task::block_in_place`: the mesh needs a multi-thread runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agents::Agent;
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use mesh_nats::{NatsServer, ServerConfig};
use schemas::{headers as h, subject};

use crate::args::{CentralArgs, EdgeArgs};
use crate::error::{client_err, io_err};
use crate::metrics::{scrape, Scrape};
use crate::process::MeshProcess;
use crate::proxy::FaultProxy;
use crate::wait::{wait_until, DEADLINE};
use crate::KitError;

/// How long a mesh without hubs waits for its leaf links.
const LEAF_DEADLINE: Duration = Duration::from_secs(20);

/// The shape of a mesh to start; see the module doc. Every setter has a default.
#[derive(Debug, Clone)]
pub struct MeshBuilder {
    exe: Option<PathBuf>,
    name: String,
    edge_ids: Vec<String>,
    central_hub_ids: Vec<String>,
    hubs: bool,
    proxied: bool,
    central_toml: Option<String>,
    edge_toml: Option<String>,
    seed: u64,
    dir: Option<PathBuf>,
    edge_jetstream: Option<String>,
    nats_binary: Option<PathBuf>,
    hub_log: Option<String>,
}

impl Default for MeshBuilder {
    fn default() -> Self {
        MeshBuilder::new()
    }
}

impl MeshBuilder {
    /// One edge `e1` behind a fault proxy, one central hub `c0`, a temp dir, seed 1,
    /// servers named `mesh-…`.
    pub fn new() -> MeshBuilder {
        MeshBuilder {
            exe: None,
            name: "mesh".into(),
            edge_ids: vec!["e1".into()],
            central_hub_ids: vec!["c0".into()],
            hubs: true,
            proxied: true,
            central_toml: None,
            edge_toml: None,
            seed: 1,
            dir: None,
            edge_jetstream: None,
            nats_binary: None,
            hub_log: None,
        }
    }

    /// The `mesh` executable the hubs run from (required unless `hubs(false)`).
    pub fn exe(mut self, path: impl Into<PathBuf>) -> Self {
        self.exe = Some(path.into());
        self
    }

    /// Names the servers `<name>-central` and `<name>-<edge>` (and the temp dir).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// `n` edge sites named `e1`, `e2`, … (0: the centre alone).
    pub fn edges(mut self, n: usize) -> Self {
        self.edge_ids = (1..=n).map(|i| format!("e{i}")).collect();
        self
    }

    /// Edge sites with these ids, in this order.
    pub fn edge_ids<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.edge_ids = ids.into_iter().map(Into::into).collect();
        self
    }

    /// `n` central hub processes named `c0`, `c1`, …, all on the one central server.
    pub fn central_hubs(mut self, n: usize) -> Self {
        self.central_hub_ids = (0..n).map(|i| format!("c{i}")).collect();
        self
    }

    /// Central hubs with these `--hub-id`s.
    pub fn central_hub_ids<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.central_hub_ids = ids.into_iter().map(Into::into).collect();
        self
    }

    /// Whether to run hub processes at all (default yes). Without, the mesh is
    /// nats-servers and proxies only.
    pub fn hubs(mut self, hubs: bool) -> Self {
        self.hubs = hubs;
        self
    }

    /// Whether each leaf link runs through a [`FaultProxy`] (default yes).
    pub fn proxied(mut self, proxied: bool) -> Self {
        self.proxied = proxied;
        self
    }

    /// TOML of every central hub's `--config` file (default: no `--config`).
    pub fn central_toml(mut self, toml: impl Into<String>) -> Self {
        self.central_toml = Some(toml.into());
        self
    }

    /// TOML of every edge hub's `--config` file (default: no `--config`).
    pub fn edge_toml(mut self, toml: impl Into<String>) -> Self {
        self.edge_toml = Some(toml.into());
        self
    }

    /// Seed of each proxy's jitter generator (edge `i` gets `seed + i`).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Keep everything in `dir` (created if missing, never removed, reused as it is).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Run JetStream on every edge nats-server with this domain (plain NATS's own edge
    /// design; agentmesh edges never do).
    pub fn edge_jetstream(mut self, domain: &str) -> Self {
        self.edge_jetstream = Some(domain.into());
        self
    }

    /// The nats-server binary (default: `mesh_nats::ensure_binary` at each start).
    pub fn nats_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.nats_binary = Some(path.into());
        self
    }

    /// `MESH_LOG` of every hub process (default: hub internals at debug).
    pub fn hub_log(mut self, filter: &str) -> Self {
        self.hub_log = Some(filter.into());
        self
    }

    fn server(&self, cfg: ServerConfig) -> ServerConfig {
        match &self.nats_binary {
            Some(b) => cfg.binary(b),
            None => cfg,
        }
    }

    fn hub(&self, name: String, exe: &Path, args: Vec<String>, log: PathBuf) -> MeshProcess {
        let p = MeshProcess::new(&name, exe, args, log);
        match &self.hub_log {
            Some(f) => p.env("MESH_LOG", f),
            None => p,
        }
    }

    /// Starts everything; returns once it is ready (see the module doc). On a mesh that
    /// does not become ready, the directory is kept and the error carries the hubs' logs.
    pub async fn start(self) -> Result<Mesh, KitError> {
        let exe = match (&self.exe, self.hubs) {
            (Some(e), _) => Some(e.clone()),
            (None, false) => None,
            (None, true) => return Err(KitError::NoExe),
        };
        let (dir, temp) = match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
                let d = std::fs::canonicalize(d)
                    .map_err(io_err(format!("resolving {}", d.display())))?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("mesh-{}-", self.name))
                    .tempdir()
                    .map_err(io_err("creating a temp dir"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let central_name = format!("{}-central", self.name);
        let central = start_nats(
            self.server(ServerConfig::central(&central_name).dir(dir.join("central-nats"))),
        )
        .await?;
        let leaf = central.leaf_addr().ok_or_else(|| KitError::Client {
            what: format!("nats-server {central_name}"),
            source: "has no leafnode port".into(),
        })?;
        let js = jetstream::new(async_nats::connect(central.client_url()).await.map_err(
            client_err(format!("connecting to {}", central.client_url())),
        )?);

        let mut central_hubs = Vec::new();
        if let Some(exe) = &exe {
            let cfg = write_config(&dir, "central.toml", &self.central_toml)?;
            for id in &self.central_hub_ids {
                let http = free_addr()?;
                let mut args = CentralArgs::new(central.client_url()).hub_id(id).http(http);
                if let Some(c) = &cfg {
                    args = args.config(c);
                }
                let mut process = self.hub(
                    format!("central hub {id}"),
                    exe,
                    args.to_args(),
                    dir.join(format!("central-hub-{id}.log")),
                );
                process
                    .start()
                    .map_err(io_err(format!("spawning central hub {id}")))?;
                central_hubs.push(Hub {
                    id: id.clone(),
                    http,
                    process,
                });
            }
        }

        let edge_cfg = match exe {
            Some(_) => write_config(&dir, "edge.toml", &self.edge_toml)?,
            None => None,
        };
        let mut sites = Vec::new();
        for (i, id) in self.edge_ids.iter().enumerate() {
            let proxy = match self.proxied {
                true => Some(
                    FaultProxy::start(leaf)
                        .await
                        .map_err(io_err(format!("starting the fault proxy of {id}")))?
                        .with_seed(self.seed.wrapping_add(i as u64)),
                ),
                false => None,
            };
            let remote = match &proxy {
                Some(p) => p.url("nats-leaf"),
                None => format!("nats-leaf://{leaf}"),
            };
            let mut cfg = ServerConfig::edge(&format!("{}-{id}", self.name), vec![remote])
                .dir(dir.join(format!("{id}-nats")));
            if let Some(domain) = &self.edge_jetstream {
                cfg = cfg.edge_jetstream(domain);
            }
            let nats = start_nats(self.server(cfg)).await?;
            let data_dir = dir.join(format!("{id}-data"));
            let hub = match &exe {
                Some(exe) => {
                    let http = free_addr()?;
                    let mut args = EdgeArgs::new(nats.client_url(), id, &data_dir).http(http);
                    if let Some(c) = &edge_cfg {
                        args = args.config(c);
                    }
                    let mut process = self.hub(
                        format!("edge hub {id}"),
                        exe,
                        args.to_args(),
                        dir.join(format!("edge-hub-{id}.log")),
                    );
                    process
                        .start()
                        .map_err(io_err(format!("spawning edge hub {id}")))?;
                    Some(Hub {
                        id: id.clone(),
                        http,
                        process,
                    })
                }
                None => None,
            };
            sites.push(Site {
                id: id.clone(),
                hub,
                nats,
                proxy,
                data_dir,
            });
        }
        let mut mesh = Mesh {
            central_hubs,
            sites,
            central,
            js,
            dir,
            temp,
        };
        if let Err(e) = mesh.wait_ready().await {
            let logs = mesh.log_tails(30);
            return Err(KitError::NotReady {
                dir: mesh.keep_dir(),
                source: Box::new(e),
                logs,
            });
        }
        Ok(mesh)
    }
}

/// Writes `<dir>/<name>` when there is a text for it; its path.
fn write_config(
    dir: &Path,
    name: &str,
    text: &Option<String>,
) -> Result<Option<PathBuf>, KitError> {
    let Some(text) = text else { return Ok(None) };
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
    Ok(Some(path))
}

/// A hub process with its id and `--http` address (metrics, health).
pub struct Hub {
    id: String,
    http: SocketAddr,
    process: MeshProcess,
}

impl Hub {
    /// The hub's id (`--hub-id` of a central hub, `--id` of an edge hub).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `--http` address.
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    /// The process.
    pub fn process(&self) -> &MeshProcess {
        &self.process
    }

    /// The pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again with the same arguments (no-op while it runs).
    pub fn start(&mut self) -> Result<(), KitError> {
        let name = self.process.name().to_string();
        self.process
            .start()
            .map_err(io_err(format!("restarting {name}")))
    }

    /// SIGTERM, then up to `grace` for the exit (SIGKILL after that), blocking in place;
    /// whether it exited 0 by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let p = &mut self.process;
        tokio::task::block_in_place(|| p.terminate(grace))
    }

    /// Whether the process is running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Its `/metrics` page, `None` when it does not answer.
    pub async fn scrape(&self) -> Option<Scrape> {
        scrape(self.http).await
    }
}

/// One edge site: its nats-server, the proxy on its leaf link, its hub and outbox dir.
pub struct Site {
    /// The edge id (`e1`, …).
    pub id: String,
    /// The edge hub (`mesh edge`), unless the mesh has no hubs.
    pub hub: Option<Hub>,
    /// The edge nats-server (core NATS, or JetStream with `edge_jetstream`).
    pub nats: NatsServer,
    /// The fault proxy between the edge nats-server and the central leaf port.
    pub proxy: Option<FaultProxy>,
    /// The edge hub's `--data-dir` (its outbox).
    pub data_dir: PathBuf,
}

impl Site {
    /// The fault proxy on the leaf link.
    pub fn proxy(&self) -> Result<&FaultProxy, KitError> {
        self.proxy.as_ref().ok_or_else(|| KitError::NotProxied {
            site: self.id.clone(),
        })
    }

    /// The edge hub.
    pub fn hub(&self) -> Result<&Hub, KitError> {
        self.hub.as_ref().ok_or_else(|| KitError::NoHub {
            what: format!("edge hub {}", self.id),
        })
    }

    /// The edge hub, to kill, terminate or restart it.
    pub fn hub_mut(&mut self) -> Result<&mut Hub, KitError> {
        let id = &self.id;
        self.hub.as_mut().ok_or_else(|| KitError::NoHub {
            what: format!("edge hub {id}"),
        })
    }
}

/// A running mesh. Fields drop in declaration order: central hubs, sites, the centre.
pub struct Mesh {
    /// Central hub processes (`mesh central`).
    pub central_hubs: Vec<Hub>,
    /// The edge sites.
    pub sites: Vec<Site>,
    /// The central nats-server (JetStream, domain `central`).
    pub central: NatsServer,
    js: jetstream::Context,
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl Mesh {
    async fn wait_ready(&self) -> Result<(), KitError> {
        if self.sites.iter().all(|s| s.hub.is_some()) {
            for i in 0..self.sites.len() {
                self.wait_uplink(i, true).await?;
            }
            return Ok(());
        }
        let central = &self.central;
        let n = self.sites.len() as u64;
        tokio::task::block_in_place(|| central.wait_for_leafnodes(n, LEAF_DEADLINE)).map_err(
            |source| KitError::Nats {
                name: central.name().into(),
                source: Box::new(source),
            },
        )
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

    /// The fault proxy of edge `site`.
    pub fn proxy(&self, site: usize) -> Result<&FaultProxy, KitError> {
        self.sites[site].proxy()
    }

    /// A new agent `id` on edge `site`, on its own connection to the edge nats-server.
    pub async fn agent(&self, site: usize, id: &str) -> Result<Agent, KitError> {
        let s = &self.sites[site];
        let c = async_nats::connect(s.nats.client_url())
            .await
            .map_err(client_err(format!("connecting agent {id} to {}", s.id)))?;
        Agent::with_client(c, &s.id, id).map_err(client_err(format!("agent {id} on {}", s.id)))
    }

    /// The `/metrics` page of edge `site`'s hub; `None` when it does not answer.
    pub async fn edge_scrape(&self, site: usize) -> Option<Scrape> {
        scrape(self.sites[site].hub.as_ref()?.http).await
    }

    /// Metric `name` of edge `site` (its one sample; edge samples all carry `edge=`).
    pub async fn edge_metric(&self, site: usize, name: &str) -> Option<f64> {
        self.edge_scrape(site).await?.get(name, &[])
    }

    /// Metric `name` summed over its label sets and over every central hub that answers.
    pub async fn central_metric(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for hub in &self.central_hubs {
            sum += hub.scrape().await.map_or(0.0, |s| s.sum(name));
        }
        sum
    }

    /// Waits until edge `site` reports its uplink `up` (or down); returns how long it took.
    pub async fn wait_uplink(&self, site: usize, up: bool) -> Result<Duration, KitError> {
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

    /// Messages in a stream of the centre (`None` when it cannot be asked, or the stream
    /// does not exist).
    pub async fn stream_messages(&self, name: &str) -> Option<u64> {
        let mut s = self.js.get_stream(name).await.ok()?;
        s.info().await.ok().map(|i| i.state.messages)
    }

    /// Waits until every edge outbox is empty (the centre acked everything into
    /// `MESH_INGRESS`) and `MESH_INGRESS` is empty (everything landed). Call it after the
    /// producers stopped. Returns how long it took.
    pub async fn wait_drained(&self, deadline: Duration) -> Result<Duration, KitError> {
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

    /// SIGKILLs the central nats-server.
    pub fn kill_central(&mut self) {
        self.central.kill();
    }

    /// Starts the central nats-server again on the same ports and store; blocks (in place)
    /// until it accepts clients.
    pub fn restart_central(&mut self) -> Result<(), KitError> {
        let central = &mut self.central;
        tokio::task::block_in_place(|| central.restart()).map_err(|source| KitError::Nats {
            name: central.name().into(),
            source: Box::new(source),
        })
    }

    /// Every hub process: the central hubs, then each site's.
    pub fn hubs(&self) -> impl Iterator<Item = &Hub> {
        self.central_hubs
            .iter()
            .chain(self.sites.iter().filter_map(|s| s.hub.as_ref()))
    }

    /// Two-phase stop: SIGTERM every edge hub, then every central hub, each given `grace`
    /// to exit (SIGKILL after that); then SIGTERM the edge nats-servers and the central
    /// one (5 s each, then SIGKILL); the proxies go with the mesh. Blocks in place.
    /// Returns the hubs that did not exit 0 by themselves.
    pub fn shutdown(mut self, grace: Duration) -> Vec<String> {
        let mut unclean = Vec::new();
        let hubs = self
            .sites
            .iter_mut()
            .filter_map(|s| s.hub.as_mut())
            .chain(self.central_hubs.iter_mut());
        for hub in hubs {
            if !hub.terminate(grace) {
                unclean.push(hub.process.name().to_string());
            }
        }
        tokio::task::block_in_place(|| {
            for s in &mut self.sites {
                s.nats.stop();
            }
            self.central.stop();
        });
        unclean
    }

    /// The last `lines` lines of every hub's log, for a report on failure.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for hub in self.hubs() {
            let text = hub.process.log_text();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("---- last lines of {} ----\n", hub.process.name()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

async fn start_nats(cfg: ServerConfig) -> Result<NatsServer, KitError> {
    let name = cfg.name.clone();
    tokio::task::spawn_blocking(move || NatsServer::start(cfg))
        .await
        .map_err(client_err(format!("starting nats-server {name}")))?
        .map_err(|source| KitError::Nats {
            name,
            source: Box::new(source),
        })
}

/// A free address on 127.0.0.1 (bound, then released for the child to bind).
pub fn free_addr() -> Result<SocketAddr, KitError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io_err("finding a free port"))
}
