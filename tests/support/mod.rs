//! Test harness: a real mesh of processes on ephemeral ports in a temp dir — a central
//! nats-server, one or more `mesh central` processes, a fault proxy on the leaf link, an
//! edge nats-server and a `mesh edge` process. Everything is killed in `Drop`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agents::Agent;
use chaos::{FaultProxy, MeshProcess};
use mesh_nats::{NatsServer, ServerConfig};
use schemas::Event;

/// Upper bound for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A `mesh` child process, restartable, killed on drop: [`chaos::MeshProcess`] with the
/// test binary and panics instead of errors.
pub struct Proc(MeshProcess);

impl Proc {
    pub fn spawn(name: &str, args: Vec<String>, log: PathBuf) -> Proc {
        let exe = Path::new(env!("CARGO_BIN_EXE_mesh"));
        Proc(MeshProcess::spawn(name, exe, args, log).expect("spawn mesh"))
    }

    /// Starts the process again with the same arguments (after a kill).
    pub fn start(&mut self) {
        assert!(!self.0.is_running(), "{} is already running", self.0.name());
        self.0.start().expect("start mesh");
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// SIGTERM, then wait for a graceful exit; returns whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        self.0.terminate(Duration::from_secs(20))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn log_text(&self) -> String {
        self.0.log_text()
    }
}

/// A free port on 127.0.0.1 (bound then released).
/// Runs `mesh <args>`; returns (exit success, stdout + stderr).
pub fn mesh_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .expect("run mesh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Options of a test mesh.
pub struct MeshOpts {
    pub central_hubs: usize,
    /// Extra TOML for the central hubs' config.
    pub central_toml: String,
    /// Extra TOML for the edge hub's config.
    pub edge_toml: String,
}

impl Default for MeshOpts {
    fn default() -> Self {
        MeshOpts {
            central_hubs: 1,
            central_toml: String::new(),
            edge_toml: String::new(),
        }
    }
}

pub struct Mesh {
    pub edge_id: String,
    pub edge_hub: Proc,
    pub central_hubs: Vec<Proc>,
    /// `--http` address of each central hub.
    pub central_http: Vec<SocketAddr>,
    pub edge: NatsServer,
    pub proxy: FaultProxy,
    pub central: NatsServer,
    pub edge_http: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Mesh {
    pub async fn start(opts: MeshOpts) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let central = tokio::task::spawn_blocking({
            let d = dir.path().join("central-nats");
            move || NatsServer::start(ServerConfig::central("t-central").dir(d))
        })
        .await
        .unwrap()
        .expect("central nats-server");
        let proxy = FaultProxy::start(central.leaf_addr().expect("leaf addr"))
            .await
            .expect("proxy");
        let edge = tokio::task::spawn_blocking({
            let d = dir.path().join("edge-nats");
            let remote = proxy.url("nats-leaf");
            move || NatsServer::start(ServerConfig::edge("t-edge", vec![remote]).dir(d))
        })
        .await
        .unwrap()
        .expect("edge nats-server");

        let central_cfg = dir.path().join("central.toml");
        std::fs::write(&central_cfg, &opts.central_toml).unwrap();
        let mut central_hubs = Vec::new();
        let mut central_http = Vec::new();
        for i in 0..opts.central_hubs {
            let (p, http) = spawn_central(dir.path(), &central.client_url(), &central_cfg, i);
            central_hubs.push(p);
            central_http.push(http);
        }
        let edge_id = "e1".to_string();
        let edge_cfg = dir.path().join("edge.toml");
        std::fs::write(&edge_cfg, &opts.edge_toml).unwrap();
        let port = free_port();
        let edge_http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let edge_hub = Proc::spawn(
            "edge hub",
            vec![
                "edge".into(),
                "--nats".into(),
                edge.client_url(),
                "--id".into(),
                edge_id.clone(),
                "--data-dir".into(),
                dir.path().join("edge-data").display().to_string(),
                "--http".into(),
                edge_http.to_string(),
                "--config".into(),
                edge_cfg.display().to_string(),
            ],
            dir.path().join("edge-hub.log"),
        );
        let mesh = Mesh {
            edge_id,
            edge_hub,
            central_hubs,
            central_http,
            edge,
            proxy,
            central,
            edge_http,
            dir,
        };
        mesh.wait_uplink(true).await;
        mesh
    }

    /// A central hub's metric summed over all its label sets (e.g. every edge).
    pub fn central_metric(&self, hub: usize, name: &str) -> f64 {
        metric_sum(self.central_http[hub], name)
    }

    /// A client of the central nats-server.
    pub async fn central_js(&self) -> async_nats::jetstream::Context {
        let c = async_nats::connect(self.central.client_url())
            .await
            .expect("connect central");
        async_nats::jetstream::new(c)
    }

    /// An agent on the edge.
    pub async fn agent(&self, id: &str) -> Agent {
        let c = async_nats::connect(self.edge.client_url())
            .await
            .expect("connect edge");
        Agent::with_client(c, &self.edge_id, id).expect("agent")
    }

    /// Waits until the edge hub answers a publish-free probe: its metrics say the uplink
    /// is `up`. Returns how long it took.
    pub async fn wait_uplink(&self, up: bool) -> Duration {
        let want = if up { 1.0 } else { 0.0 };
        let started = Instant::now();
        wait_for(&format!("uplink_up == {want}"), || async {
            self.edge_metric("mesh_edge_uplink_up") == Some(want)
        })
        .await;
        started.elapsed()
    }

    /// A metric of the edge hub (first sample whose name starts with `name`).
    pub fn edge_metric(&self, name: &str) -> Option<f64> {
        metric(self.edge_http, name)
    }

    /// Waits until `MESH_EVENTS` holds at least `n` messages, then reads them all.
    pub async fn events_when(&self, n: usize) -> Vec<Event> {
        let js = self.central_js().await;
        wait_for(&format!("{n} events in MESH_EVENTS"), || async {
            match js.get_stream(schemas::subject::STREAM_EVENTS).await {
                Ok(mut s) => s
                    .info()
                    .await
                    .map(|i| i.state.messages as usize >= n)
                    .unwrap_or(false),
                Err(_) => false,
            }
        })
        .await;
        chaos::read_stream(&js).await.expect("read MESH_EVENTS")
    }

    /// Waits until the edge outbox is empty (everything acked by the centre), then
    /// reads all events.
    pub async fn drained_events(&self) -> Vec<Event> {
        wait_for("edge outbox to drain", || async {
            self.edge_metric("mesh_edge_outbox_events") == Some(0.0)
        })
        .await;
        let js = self.central_js().await;
        // The outbox is empty once bundles are acked into MESH_INGRESS; landing follows.
        wait_for("the lander to catch up", || async {
            let mut s = js
                .get_stream(schemas::subject::STREAM_INGRESS)
                .await
                .unwrap();
            s.info()
                .await
                .map(|i| i.state.messages == 0)
                .unwrap_or(false)
        })
        .await;
        chaos::read_stream(&js).await.expect("read MESH_EVENTS")
    }
}

fn spawn_central(dir: &Path, url: &str, cfg: &Path, i: usize) -> (Proc, SocketAddr) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let p = Proc::spawn(
        &format!("central hub {i}"),
        vec![
            "central".into(),
            "--nats".into(),
            url.into(),
            "--hub-id".into(),
            format!("c{i}"),
            "--config".into(),
            cfg.display().to_string(),
            "--http".into(),
            http.to_string(),
        ],
        dir.join(format!("central-hub-{i}.log")),
    );
    (p, http)
}

/// Polls `cond` every 20 ms until it holds; panics after [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `/metrics` and returns the first sample whose name starts with `name`.
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let body = http_get(addr, "/metrics")?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample whose name starts with `name` (0 when none).
pub fn metric_sum(addr: SocketAddr, name: &str) -> f64 {
    http_get(addr, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

impl Drop for Mesh {
    /// On a failing test, show the tail of every hub's log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // Keep the whole test dir (logs, stores, outbox) for a post-mortem.
        let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
        eprintln!("---- test dir kept at {} ----", kept.display());
        let mut procs: Vec<&Proc> = self.central_hubs.iter().collect();
        procs.push(&self.edge_hub);
        for p in procs {
            let text = p.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- last lines of {} ----", p.name());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
