//! [`MeshBuilder`]: the shape of a mesh, and starting it (see the [module doc](super)
//! for the layout it creates and what it waits for).

use std::path::{Path, PathBuf};

use async_nats::jetstream;
use mesh_nats::auth::{Identity, MeshKeys};
use mesh_nats::tls::TlsFiles;
use mesh_nats::{Cluster, NatsServer, Security, ServerConfig};

use super::{free_addr, Hub, KitSecurity, Mesh, RouteProxy, Site};
use crate::args::{CentralArgs, EdgeArgs};
use crate::error::{client_err, io_err};
use crate::process::MeshProcess;
use crate::proxy::FaultProxy;
use crate::KitError;

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
    secure: bool,
    open_leaf_links: bool,
    central_nodes: usize,
    route_proxies: bool,
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
            secure: true,
            open_leaf_links: false,
            central_nodes: 1,
            route_proxies: false,
        }
    }

    /// The centre as a cluster of `n` nats-server nodes (default 1: a single server). With
    /// more than one, the nodes route to each other (cluster `central`, mutual TLS when
    /// secure), every hub and the kit connect with every node's URL, every edge's leaf
    /// remote lists every node's leaf port (not proxied: faults of a clustered centre are
    /// node kills and route cuts), and unless [`MeshBuilder::central_toml`] is given the
    /// central hubs run with `events.replicas` and `ingress.replicas` = min(n, 3).
    pub fn central_nodes(mut self, n: usize) -> Self {
        self.central_nodes = n.max(1);
        self
    }

    /// Clustered centres only: every route runs through a [`FaultProxy`] of its own, one
    /// per ordered pair of nodes, so [`Mesh::isolate_central_node`] can cut one node off
    /// from the others while clients and leafs still reach it.
    pub fn route_proxies(mut self, on: bool) -> Self {
        self.route_proxies = on;
        self
    }

    /// Secure meshes only: leaf links authenticated and on TLS but with no subject
    /// restrictions (a plain NATS deployment's; `mesh bench`'s native anchor sources
    /// streams across them). Never for agentmesh sites.
    pub fn open_leaf_links(mut self, open: bool) -> Self {
        self.open_leaf_links = open;
        self
    }

    /// Secure (the default): operator-mode auth, least-privilege credentials and TLS on
    /// every port (keys in `keys/`, credentials in `creds/`, the CA in `tls/`). `false`:
    /// no auth, no TLS, everyone in the default account.
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
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
        let security = match self.secure {
            true => Some(KitSecurity::open(&dir)?),
            false => None,
        };
        let server_sec = |leaf: Option<(PathBuf, PathBuf)>| {
            security.as_ref().map(|s| {
                let (leaf_creds, sys_leaf_creds) = match leaf {
                    Some((a, b)) => (Some(a), Some(b)),
                    None => (None, None),
                };
                Security {
                    auth: s.server_auth(),
                    tls: s.tls.clone(),
                    leaf_creds,
                    sys_leaf_creds,
                }
            })
        };
        let (mut nodes, route_proxies) = self.start_centre(&dir, server_sec(None)).await?;
        let central = nodes.remove(0);
        let central_peers = nodes;
        let central_url = std::iter::once(&central)
            .chain(&central_peers)
            .map(NatsServer::client_url)
            .collect::<Vec<_>>()
            .join(",");
        let leaf_urls: Vec<String> = std::iter::once(&central)
            .chain(&central_peers)
            .filter_map(NatsServer::leaf_url)
            .collect();
        let leaf = central.leaf_addr().ok_or_else(|| KitError::Client {
            what: format!("nats-server {}", central.name()),
            source: "has no leafnode port".into(),
        })?;
        let kit_auth = match &security {
            Some(s) => s.auth(&Identity::CentralHub {
                name: "testkit".into(),
            })?,
            None => Default::default(),
        };
        let mut js = jetstream::new(
            kit_auth
                .connect(&central_url, "testkit")
                .await
                .map_err(client_err(format!("connecting to {central_url}")))?,
        );
        js.set_timeout(KIT_JS_TIMEOUT);

        let mut central_hubs = Vec::new();
        if let Some(exe) = &exe {
            let replicas = self.central_nodes.min(3);
            let central_toml = match (&self.central_toml, replicas) {
                (None, r) if r > 1 => Some(format!(
                    "[events]\nreplicas = {r}\n\n[ingress]\nreplicas = {r}\n"
                )),
                (t, _) => t.clone(),
            };
            let cfg = write_config(&dir, "central.toml", &central_toml)?;
            for id in &self.central_hub_ids {
                let http = free_addr()?;
                let mut args = CentralArgs::new(&central_url).hub_id(id).http(http);
                if let Some(s) = &security {
                    args = args.auth(s.auth(&Identity::CentralHub { name: id.clone() })?);
                }
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
            let proxy = match self.proxied && central_peers.is_empty() {
                true => Some(
                    FaultProxy::start(leaf)
                        .await
                        .map_err(io_err(format!("starting the fault proxy of {id}")))?
                        .with_seed(self.seed.wrapping_add(i as u64)),
                ),
                false => None,
            };
            let remotes = match &proxy {
                Some(p) => vec![p.url("nats-leaf")],
                None => leaf_urls.clone(),
            };
            let mut cfg = ServerConfig::edge(&format!("{}-{id}", self.name), remotes)
                .dir(dir.join(format!("{id}-nats")));
            if let Some(domain) = &self.edge_jetstream {
                cfg = cfg.edge_jetstream(domain);
            }
            if let Some(s) = &security {
                let leaf = match self.open_leaf_links {
                    false => s.creds_file(&Identity::Leaf { edge: id.clone() })?,
                    true => s.creds_file(&Identity::CentralHub {
                        name: format!("open-leaf-{id}"),
                    })?,
                };
                let sys = s.creds_file(&Identity::SysLeaf { edge: id.clone() })?;
                cfg = cfg.security(server_sec(Some((leaf, sys))).expect("secure"));
            }
            let nats = start_nats(self.server(cfg)).await?;
            // `<edge>/`, the folder `mesh up` always kept its outboxes in: an existing data
            // dir keeps its outboxes (a new, empty one under an old edge id would restart
            // its sequences at 1 and the lander would skip them as landed).
            let data_dir = dir.join(id);
            let hub = match &exe {
                Some(exe) => {
                    let http = free_addr()?;
                    let mut args = EdgeArgs::new(nats.client_url(), id, &data_dir).http(http);
                    if let Some(s) = &security {
                        args = args.auth(s.auth(&Identity::EdgeHub { edge: id.clone() })?);
                    }
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
            central_peers,
            route_proxies,
            js,
            dir,
            temp,
            security,
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

impl MeshBuilder {
    /// The central nats-server, or the nodes of a clustered centre (waiting until every
    /// node knows the JetStream meta leader), and the route proxies if asked for.
    async fn start_centre(
        &self,
        dir: &Path,
        security: Option<Security>,
    ) -> Result<(Vec<NatsServer>, Vec<RouteProxy>), KitError> {
        let n = self.central_nodes;
        if n == 1 {
            let mut cfg = ServerConfig::central(&format!("{}-central", self.name))
                .dir(dir.join("central-nats"));
            if let Some(sec) = security {
                cfg = cfg.security(sec);
            }
            return Ok((vec![start_nats(self.server(cfg)).await?], Vec::new()));
        }
        // Route ports are fixed before any node starts: each names the others'. A kept
        // directory keeps them (its configs hold them).
        let mut ports = Vec::with_capacity(n);
        for i in 0..n {
            ports.push(match existing_route_port(&dir.join(node_dir(i))) {
                Some(p) => p,
                None => free_addr()?.port(),
            });
        }
        let mut proxies = Vec::new();
        let mut routes: Vec<Vec<String>> = vec![Vec::new(); n];
        for (from, list) in routes.iter_mut().enumerate() {
            for (to, port) in ports.iter().enumerate().filter(|(to, _)| *to != from) {
                if self.route_proxies {
                    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
                    let p = FaultProxy::start(upstream)
                        .await
                        .map_err(io_err(format!(
                            "starting the route proxy n{} -> n{}",
                            from + 1,
                            to + 1
                        )))?
                        .with_seed(self.seed.wrapping_add((100 + from * n + to) as u64));
                    list.push(p.url("nats-route"));
                    proxies.push(RouteProxy { from, to, proxy: p });
                } else {
                    list.push(Cluster::route_url(*port));
                }
            }
        }
        let mut nodes = Vec::with_capacity(n);
        for (i, routes) in routes.into_iter().enumerate() {
            let mut cfg = ServerConfig::central(&format!("{}-central-{}", self.name, i + 1))
                .dir(dir.join(node_dir(i)))
                .cluster(Cluster {
                    name: "central".into(),
                    port: ports[i],
                    routes,
                    // Behind route proxies a node tells its peers an address where
                    // nothing listens, so no peer dials it around its proxy (an
                    // "implicit" route); every pair is configured explicitly anyway.
                    advertise: self.route_proxies.then(|| "127.0.0.1:1".to_string()),
                })
                .start_timeout(std::time::Duration::from_secs(30));
            if let Some(sec) = &security {
                cfg = cfg.security(sec.clone());
            }
            nodes.push(start_nats(self.server(cfg)).await?);
        }
        for node in &nodes {
            let name = node.name().to_string();
            tokio::task::block_in_place(|| {
                node.wait_for_meta_leader(std::time::Duration::from_secs(30))
            })
            .map_err(|source| KitError::Nats {
                name,
                source: Box::new(source),
            })?;
        }
        Ok((nodes, proxies))
    }
}

/// The folder of node `i` (0-based) of a clustered centre.
fn node_dir(i: usize) -> String {
    format!("central-nats-{}", i + 1)
}

/// The route port in the config a node of a kept directory was last started with.
fn existing_route_port(dir: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(dir.join(mesh_nats::CONFIG_FILE)).ok()?;
    let cluster = &text[text.find("cluster {")?..];
    let listen = &cluster[cluster.find("listen: 127.0.0.1:")? + "listen: 127.0.0.1:".len()..];
    listen
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// How long the kit's JetStream requests wait: a clustered centre answers after an
/// election, which takes seconds.
const KIT_JS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl KitSecurity {
    /// The keys, CA and credentials directory of the mesh in `dir` (created on first use,
    /// reused after).
    pub(super) fn open(dir: &Path) -> Result<KitSecurity, KitError> {
        let nats_err = |source: mesh_nats::Error| KitError::Nats {
            name: "mesh security".into(),
            source: Box::new(source),
        };
        let keys = MeshKeys::open_or_create(&dir.join("keys")).map_err(nats_err)?;
        let tls = TlsFiles::open_or_create(&dir.join("tls")).map_err(nats_err)?;
        let creds_dir = dir.join("creds");
        std::fs::create_dir_all(&creds_dir)
            .map_err(io_err(format!("creating {}", creds_dir.display())))?;
        Ok(KitSecurity {
            keys: std::sync::Mutex::new(keys),
            tls,
            creds_dir,
        })
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
