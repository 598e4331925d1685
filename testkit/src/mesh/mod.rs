//! The one way to assemble a mesh of real processes: [`MeshBuilder`] starts them,
//! [`Mesh`] owns them while they run.
//!
//! ```text
//!  edge hub e1 ─ edge nats e1 ─ [proxy e1] ─┐
//!  edge hub e2 ─ edge nats e2 ─ [proxy e2] ─┼─► central nats-server ◄─ central hub c0..cn
//! ```
//!
//! One central nats-server (JetStream, domain `central`) or a cluster of them
//! ([`MeshBuilder::central_nodes`], optionally with a [`FaultProxy`] on every route),
//! `0..n` central hubs, and edge sites, each an edge nats-server leaf-linked to the centre (through its own
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
//! central-nats-<i>/       node i (1-based) of a clustered centre, instead
//! central.toml            --config of every central hub (when given)
//! central-hub-<id>.log    stdout and stderr of central hub <id>
//! edge.toml               --config of every edge hub (when given)
//! <edge>-nats/            edge nats-server of site <edge>
//! <edge>/                 edge hub outbox of site <edge> (--data-dir)
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
use mesh_nats::auth::{Identity, MeshKeys};
use mesh_nats::client::ClientAuth;
use mesh_nats::tls::TlsFiles;
use mesh_nats::NatsServer;
use schemas::{headers as h, subject};

use crate::error::{client_err, io_err};
use crate::metrics::{scrape, Scrape};
use crate::process::MeshProcess;
use crate::proxy::FaultProxy;
use crate::wait::{wait_until, DEADLINE};
use crate::KitError;

mod builder;

pub use builder::MeshBuilder;

/// How long a mesh without hubs waits for its leaf links.
const LEAF_DEADLINE: Duration = Duration::from_secs(20);
/// How long a central hub may take to become ready (R3 streams on a fresh cluster take
/// seconds each).
const HUB_READY_DEADLINE: Duration = Duration::from_secs(90);

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

/// The proxy on the route from node `from` to node `to` of a clustered centre (0-based).
pub struct RouteProxy {
    pub from: usize,
    pub to: usize,
    pub proxy: FaultProxy,
}

/// A running mesh. Fields drop in declaration order: central hubs, sites, the centre.
pub struct Mesh {
    /// Central hub processes (`mesh central`).
    pub central_hubs: Vec<Hub>,
    /// The edge sites.
    pub sites: Vec<Site>,
    /// The central nats-server (JetStream, domain `central`); node 1 of a clustered centre.
    pub central: NatsServer,
    /// Nodes 2..n of a clustered centre (empty for a single server).
    pub central_peers: Vec<NatsServer>,
    /// The route proxies of a clustered centre built with `route_proxies(true)`.
    pub route_proxies: Vec<RouteProxy>,
    js: jetstream::Context,
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    security: Option<KitSecurity>,
}

/// Keys, CA and credentials of a secure mesh.
pub struct KitSecurity {
    keys: std::sync::Mutex<MeshKeys>,
    /// The mesh's CA and server certificate.
    pub tls: TlsFiles,
    /// Where credentials are written: `<dir>/creds/<identity file name>`.
    pub creds_dir: PathBuf,
}

impl KitSecurity {
    /// The server settings of the mesh (operator, accounts).
    pub fn server_auth(&self) -> mesh_nats::auth::ServerAuth {
        self.keys.lock().expect("keys lock").server_auth()
    }

    /// The credential file of `id`, issued on first use (and kept: a reused directory
    /// keeps its credentials).
    pub fn creds_file(&self, id: &Identity) -> Result<PathBuf, KitError> {
        let path = self.creds_dir.join(id.file_name());
        if !path.is_file() {
            self.keys
                .lock()
                .expect("keys lock")
                .issue_to(id, &path)
                .map_err(|source| KitError::Nats {
                    name: format!("credential {}", id.user_name()),
                    source: Box::new(source),
                })?;
        }
        Ok(path)
    }

    /// [`KitSecurity::creds_file`] with the mesh CA.
    pub fn auth(&self, id: &Identity) -> Result<ClientAuth, KitError> {
        Ok(ClientAuth::new(self.creds_file(id)?, &self.tls.ca))
    }

    /// Revoke `who` (user name or public key) and push the account to `central_url`.
    pub async fn revoke(&self, who: &str, central_url: &str) -> Result<usize, KitError> {
        let (n, update) = {
            let mut k = self.keys.lock().expect("keys lock");
            let n = k.revoke(who).map_err(|source| KitError::Nats {
                name: format!("revoking {who}"),
                source: Box::new(source),
            })?;
            (n, mesh_nats::client::AccountUpdate::of(&k))
        };
        update
            .push(central_url, Some(&self.tls.ca))
            .await
            .map_err(|e| KitError::Client {
                what: format!("pushing the revocation of {who}"),
                source: e.into(),
            })?;
        Ok(n)
    }
}

impl Mesh {
    async fn wait_ready(&mut self) -> Result<(), KitError> {
        self.wait_central_hubs_ready().await?;
        if self.sites.iter().all(|s| s.hub.is_some()) {
            for i in 0..self.sites.len() {
                self.wait_edge_hub_up(i).await?;
            }
            return Ok(());
        }
        // A secure site has two leaf connections: the mesh account's and the system's.
        let per_site = if self.security.is_some() { 2 } else { 1 };
        let n = per_site * self.sites.len() as u64;
        if self.central_peers.is_empty() {
            let central = &self.central;
            return tokio::task::block_in_place(|| central.wait_for_leafnodes(n, LEAF_DEADLINE))
                .map_err(|source| KitError::Nats {
                    name: central.name().into(),
                    source: Box::new(source),
                });
        }
        wait_until(
            &format!("{n} leaf connections over the central nodes"),
            LEAF_DEADLINE,
            || async {
                let nodes = self.central_nodes();
                let count = tokio::task::block_in_place(|| {
                    nodes
                        .iter()
                        .map(|s| s.leafnode_count().unwrap_or(0))
                        .sum::<u64>()
                });
                count == n
            },
        )
        .await
        .map(|_| ())
    }

    /// Waits until every central hub answers `/health/ready` with 200 (its streams exist
    /// and its lander pulls); fails at once when one exits (e.g. it refused to start).
    async fn wait_central_hubs_ready(&mut self) -> Result<(), KitError> {
        let deadline = Instant::now() + HUB_READY_DEADLINE;
        for hub in &mut self.central_hubs {
            loop {
                if crate::metrics::http_get(hub.http, "/health/ready")
                    .await
                    .is_some()
                {
                    break;
                }
                if !hub.is_running() {
                    return Err(KitError::Client {
                        what: hub.process.name().to_string(),
                        source: "exited before it was ready".into(),
                    });
                }
                if Instant::now() > deadline {
                    return Err(KitError::Timeout {
                        what: format!("{} to be ready", hub.process.name()),
                        waited: HUB_READY_DEADLINE,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Waits until site `i`'s edge hub has its uplink up; fails at once when the hub
    /// exits (e.g. it could not open its outbox), instead of waiting out the deadline.
    async fn wait_edge_hub_up(&mut self, i: usize) -> Result<(), KitError> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.edge_metric(i, "mesh_edge_uplink_up").await == Some(1.0) {
                return Ok(());
            }
            let site = &mut self.sites[i];
            let hub = site.hub.as_mut().expect("a site with an edge hub");
            if !hub.is_running() {
                return Err(KitError::Client {
                    what: hub.process.name().to_string(),
                    source: "exited before it was ready".into(),
                });
            }
            if Instant::now() > deadline {
                return Err(KitError::Timeout {
                    what: format!("{} uplink_up == 1", site.id),
                    waited: DEADLINE,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The central nats-server nodes: node 1 ([`Mesh::central`]), then the peers.
    pub fn central_nodes(&self) -> Vec<&NatsServer> {
        std::iter::once(&self.central)
            .chain(&self.central_peers)
            .collect()
    }

    /// Node `i` (0-based) of the centre.
    pub fn central_node_mut(&mut self, i: usize) -> &mut NatsServer {
        match i {
            0 => &mut self.central,
            i => &mut self.central_peers[i - 1],
        }
    }

    /// Every central node's client URL, comma-separated (what the hubs are given).
    pub fn central_url(&self) -> String {
        self.central_nodes()
            .iter()
            .map(|s| s.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name`.
    fn node_index(&self, name: &str) -> Option<usize> {
        self.central_nodes().iter().position(|s| s.name() == name)
    }

    /// The node holding the JetStream meta leader, as the first running node that knows
    /// one says.
    pub fn meta_leader(&self) -> Option<usize> {
        let nodes = self.central_nodes();
        let name = tokio::task::block_in_place(|| {
            nodes.iter().find_map(|s| s.meta_leader().ok().flatten())
        })?;
        self.node_index(&name)
    }

    /// The node holding the leader of stream `name` (`None` while it has none).
    pub async fn stream_leader(&self, name: &str) -> Option<usize> {
        let mut s = self.js.get_stream(name).await.ok()?;
        let leader = s.info().await.ok()?.cluster.clone()?.leader?;
        self.node_index(&leader)
    }

    /// The node holding the leader of consumer `consumer` of stream `stream`.
    pub async fn consumer_leader(&self, stream: &str, consumer: &str) -> Option<usize> {
        let s = self.js.get_stream(stream).await.ok()?;
        let mut c: jetstream::consumer::PullConsumer = s.get_consumer(consumer).await.ok()?;
        let leader = c.info().await.ok()?.cluster.clone()?.leader?;
        self.node_index(&leader)
    }

    /// The node the mesh-account leaf link of edge `site` is on.
    pub fn leaf_node(&self, site: usize) -> Option<usize> {
        let edge = self.sites[site].nats.name().to_string();
        let nodes = self.central_nodes();
        tokio::task::block_in_place(|| {
            nodes.iter().position(|s| {
                s.monitor_json("/leafz").ok().is_some_and(|v| {
                    v["leafs"].as_array().into_iter().flatten().any(|l| {
                        l["name"].as_str() == Some(&edge)
                            && l["account"].as_str() != Some("$SYS")
                            && !l["account"]
                                .as_str()
                                .is_some_and(|a| self.is_system_account(a))
                    })
                })
            })
        })
    }

    fn is_system_account(&self, account: &str) -> bool {
        self.security
            .as_ref()
            .is_some_and(|s| s.server_auth().system_account == account)
    }

    /// The node central hub `hub` (its index) is connected to, from the nodes' `/connz`.
    pub fn hub_node(&self, hub: usize) -> Option<usize> {
        let name = format!("central hub {}", self.central_hubs[hub].id);
        let nodes = self.central_nodes();
        tokio::task::block_in_place(|| {
            nodes.iter().position(|s| {
                s.monitor_json("/connz?limit=1024").ok().is_some_and(|v| {
                    v["connections"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["name"].as_str() == Some(&name))
                })
            })
        })
    }

    /// SIGKILLs central node `i`.
    pub fn kill_central_node(&mut self, i: usize) {
        self.central_node_mut(i).kill();
    }

    /// Starts central node `i` again on its ports and store; blocks (in place) until it
    /// accepts clients.
    pub fn restart_central_node(&mut self, i: usize) -> Result<(), KitError> {
        let node = self.central_node_mut(i);
        tokio::task::block_in_place(|| node.restart()).map_err(|source| KitError::Nats {
            name: node.name().into(),
            source: Box::new(source),
        })
    }

    /// Cuts node `i` off from every other node (black-holes each route proxy to or from
    /// it); clients and leaf links still reach it. Needs `route_proxies(true)`.
    pub fn isolate_central_node(&self, i: usize) -> Result<(), KitError> {
        self.route_proxies_of(i)?.for_each(|p| p.proxy.cut());
        Ok(())
    }

    /// Heals what [`Mesh::isolate_central_node`] cut.
    pub fn rejoin_central_node(&self, i: usize) -> Result<(), KitError> {
        self.route_proxies_of(i)?.for_each(|p| p.proxy.heal());
        Ok(())
    }

    fn route_proxies_of(&self, i: usize) -> Result<impl Iterator<Item = &RouteProxy>, KitError> {
        if self.route_proxies.is_empty() {
            return Err(KitError::NoRouteProxies { node: i + 1 });
        }
        Ok(self
            .route_proxies
            .iter()
            .filter(move |p| p.from == i || p.to == i))
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

    /// Keys, CA and credentials; `None` on an insecure mesh.
    pub fn security(&self) -> Option<&KitSecurity> {
        self.security.as_ref()
    }

    /// The credentials of `id` (issued on first use); none on an insecure mesh.
    pub fn auth(&self, id: &Identity) -> Result<ClientAuth, KitError> {
        match &self.security {
            Some(s) => s.auth(id),
            None => Ok(ClientAuth::none()),
        }
    }

    /// The operator credential `operator.creds` (none on an insecure mesh).
    pub fn operator_auth(&self) -> Result<ClientAuth, KitError> {
        self.auth(&Identity::Operator {
            name: "operator".into(),
        })
    }

    /// The identity of a test agent: its own ingest subject, every live subject and
    /// every durable consumer (tests of narrower grants issue their own).
    pub fn test_agent(edge: &str, id: &str) -> Identity {
        Identity::Agent {
            edge: edge.into(),
            agent: id.into(),
            live: vec![">".into()],
            durables: vec![("*".into(), ">".into())],
        }
    }

    /// A new agent `id` on edge `site`, on its own connection to the edge nats-server.
    pub async fn agent(&self, site: usize, id: &str) -> Result<Agent, KitError> {
        let s = &self.sites[site];
        let auth = self.auth(&Mesh::test_agent(&s.id, id))?;
        let c = auth
            .connect(&s.nats.client_url(), &format!("agent {id}"))
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
            for n in &mut self.central_peers {
                n.stop();
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

/// A free address on 127.0.0.1 (bound, then released for the child to bind).
pub fn free_addr() -> Result<SocketAddr, KitError> {
    // Not from the kernel's ephemeral range (32768-60999 on Linux): the port is free now
    // but bound later by a child process, and in that window any nats-server started on
    // port -1, or any outgoing connection, could take an ephemeral-range port (seen: a
    // central hub's --http "Address already in use"). Below it, only this function picks
    // ports; a per-process cursor from a pid-derived start keeps tests apart.
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().map_err(io_err("finding a free port"));
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io_err("finding a free port"))
}
