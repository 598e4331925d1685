//! Test harness: a thin, panicking layer over the test kit's one mesh builder
//! ([`mesh_testkit::MeshBuilder`]): a central nats-server, one or more `mesh central`
//! processes, a fault proxy on the leaf link, an edge nats-server and a `mesh edge`
//! process, on ephemeral ports in a temp dir. Everything is killed in `Drop`; on a
//! failing test the dir is kept and the hubs' log tails are printed.

#![allow(dead_code)]

pub mod js;
pub mod python;

use std::path::{Path, PathBuf};
use std::time::Duration;

use agents::Agent;
use mesh_nats::auth::Identity;
use mesh_nats::client::ClientAuth;
use mesh_nats::NatsServer;
use mesh_testkit::{scrape_blocking, wait_until, FaultProxy, Hub, MeshBuilder, DEADLINE};
use schemas::Event;

/// A hub of the test mesh: [`mesh_testkit::Hub`] with panics instead of errors.
pub struct Proc<'a>(&'a mut Hub);

impl Proc<'_> {
    /// Starts the process again with the same arguments (after a kill).
    pub fn start(&mut self) {
        assert!(!self.0.is_running(), "{} is already running", self.name());
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
        self.0.process().name()
    }
}

/// Runs `mesh <args>` with no credentials; returns (exit success, stdout + stderr).
pub fn mesh_cli(args: &[&str]) -> (bool, String) {
    mesh_cli_as(&ClientAuth::none(), args)
}

/// Runs `mesh <args>` with `auth` in `NATS_CREDS` / `NATS_CA` (as an operator's shell
/// would have them); returns (exit success, stdout + stderr).
pub fn mesh_cli_as(auth: &ClientAuth, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"));
    cmd.args(args)
        .env_remove("NATS_CREDS")
        .env_remove("NATS_CA");
    if let Some(c) = &auth.creds {
        cmd.env("NATS_CREDS", c);
    }
    if let Some(c) = &auth.tls_ca {
        cmd.env("NATS_CA", c);
    }
    let out = cmd.output().expect("run mesh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Options of a test mesh.
pub struct MeshOpts {
    pub central_hubs: usize,
    /// Extra TOML for the central hubs' config.
    pub central_toml: String,
    /// Extra TOML for the edge hub's config.
    pub edge_toml: String,
    /// Edge sites, `e1` … `e<n>`; the helpers below act on `e1` (the others through
    /// [`Mesh::kit`]).
    pub edges: usize,
}

impl Default for MeshOpts {
    fn default() -> Self {
        MeshOpts {
            central_hubs: 1,
            central_toml: String::new(),
            edge_toml: String::new(),
            edges: 1,
        }
    }
}

/// A running test mesh with edge site `e1` (and more with [`MeshOpts::edges`]).
pub struct Mesh(mesh_testkit::Mesh);

impl Mesh {
    pub async fn start(opts: MeshOpts) -> Mesh {
        let mesh = MeshBuilder::new()
            .name("t")
            .exe(env!("CARGO_BIN_EXE_mesh"))
            .central_hubs(opts.central_hubs)
            .central_toml(opts.central_toml)
            .edge_toml(opts.edge_toml)
            .edges(opts.edges)
            .start()
            .await
            .unwrap_or_else(|e| panic!("starting the test mesh: {e}"));
        Mesh(mesh)
    }

    /// Issues agent `agent` of edge `e1` its credential with `mesh creds agent`, as an
    /// operator would, with the durables `name=filter` given; returns the `.creds` path.
    pub fn issue_agent_creds(&self, agent: &str, durables: &[&str]) -> PathBuf {
        let data = self.dir().display().to_string();
        let mut args = vec![
            "creds",
            "agent",
            "--data-dir",
            &data,
            "--edge",
            "e1",
            "--agent",
            agent,
        ];
        for d in durables {
            args.extend(["--durable", d]);
        }
        let (ok, out) = mesh_cli(&args);
        assert!(ok, "{out}");
        self.dir().join(format!("creds/agent-e1-{agent}.creds"))
    }

    /// `mesh <args>` as the operator (`operator.creds` and the mesh CA).
    pub fn operator_cli(&self, args: &[&str]) -> (bool, String) {
        mesh_cli_as(&self.operator(), args)
    }

    /// `mesh <args>` as test agent `agent` of the edge (see [`mesh_testkit::Mesh::test_agent`]).
    pub fn agent_cli(&self, agent: &str, args: &[&str]) -> (bool, String) {
        mesh_cli_as(
            &self.auth(&mesh_testkit::Mesh::test_agent("e1", agent)),
            args,
        )
    }

    /// The operator credential.
    pub fn operator(&self) -> ClientAuth {
        self.0.operator_auth().expect("operator credential")
    }

    /// The credential of `id`, issued on first use.
    pub fn auth(&self, id: &Identity) -> ClientAuth {
        self.0.auth(id).expect("credential")
    }

    /// A client of the central nats-server with the credential of `id`.
    pub async fn central_client(&self, id: &Identity) -> async_nats::Client {
        self.auth(id)
            .connect(&self.central().client_url(), "test client")
            .await
            .expect("connect to the centre")
    }

    /// The test kit's mesh.
    pub fn kit(&self) -> &mesh_testkit::Mesh {
        &self.0
    }

    /// The fault proxy on the leaf link.
    pub fn proxy(&self) -> &FaultProxy {
        self.0.proxy(0).expect("the test mesh is proxied")
    }

    /// The edge nats-server.
    pub fn edge(&self) -> &NatsServer {
        &self.0.sites[0].nats
    }

    /// The central nats-server.
    pub fn central(&self) -> &NatsServer {
        &self.0.central
    }

    /// The edge hub process.
    pub fn edge_hub(&mut self) -> Proc<'_> {
        Proc(self.0.sites[0].hub_mut().expect("the test mesh has hubs"))
    }

    /// Central hub process `i`.
    pub fn central_hub(&mut self, i: usize) -> Proc<'_> {
        Proc(&mut self.0.central_hubs[i])
    }

    /// The directory of every store and log.
    pub fn dir(&self) -> &Path {
        self.0.dir()
    }

    /// A central hub's metric summed over every sample whose series starts with `name`
    /// (e.g. every edge).
    pub fn central_metric(&self, hub: usize, name: &str) -> f64 {
        scrape_blocking(self.0.central_hubs[hub].http())
            .map_or(0.0, |s| s.matching(name).map(|x| x.value).sum())
    }

    /// A client of the central nats-server.
    pub async fn central_js(&self) -> async_nats::jetstream::Context {
        self.0.central_js().clone()
    }

    /// An agent on the edge.
    pub async fn agent(&self, id: &str) -> Agent {
        self.0.agent(0, id).await.expect("agent")
    }

    /// Waits until the edge hub answers a publish-free probe: its metrics say the uplink
    /// is `up`. Returns how long it took.
    pub async fn wait_uplink(&self, up: bool) -> Duration {
        self.0
            .wait_uplink(0, up)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A metric of the edge hub: the first sample whose series (name with labels) starts
    /// with `name`.
    pub fn edge_metric(&self, name: &str) -> Option<f64> {
        let hub = self.0.sites[0].hub().expect("the test mesh has hubs");
        scrape_blocking(hub.http())?
            .matching(name)
            .next()
            .map(|s| s.value)
    }

    /// Waits until `MESH_EVENTS` holds at least `n` messages, then reads them all.
    pub async fn events_when(&self, n: usize) -> Vec<Event> {
        wait_for(&format!("{n} events in MESH_EVENTS"), || async {
            self.0
                .stream_messages(schemas::subject::STREAM_EVENTS)
                .await
                .is_some_and(|m| m as usize >= n)
        })
        .await;
        chaos::read_stream(self.0.central_js())
            .await
            .expect("read MESH_EVENTS")
    }

    /// Waits until the edge outbox is empty (everything acked by the centre) and the
    /// lander has caught up, then reads all events.
    pub async fn drained_events(&self) -> Vec<Event> {
        self.0
            .wait_drained(DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        chaos::read_stream(self.0.central_js())
            .await
            .expect("read MESH_EVENTS")
    }
}

/// The first ```` ```<lang> ```` code block of `docs/PROTOCOL.md`: its examples are run
/// as they stand, so a reader copies code that works.
/// Runs an example of `docs/PROTOCOL.md` to its end (`cmd`, set up with the agent's
/// `NATS_*` and `MESH_*` variables) and judges what every example prints: `n` lines
/// `{"stored": <id>}`, then the `n` events read back as CloudEvents JSON, the same ids in
/// the same order, each from `mesh://e1/<agent>`. Returns the events read back.
pub async fn run_example(
    mut cmd: tokio::process::Command,
    agent: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    let out = cmd.output().await.expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the example failed:\n{all}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{all}")))
        .collect();
    let stored: Vec<&str> = lines.iter().filter_map(|l| l["stored"].as_str()).collect();
    let read: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("specversion").is_some())
        .cloned()
        .collect();
    assert_eq!((stored.len(), read.len()), (n, n), "{all}");
    for (id, ev) in stored.iter().zip(&read) {
        assert_eq!(ev["id"], *id, "{all}");
        assert_eq!(ev["source"], format!("mesh://e1/{agent}"));
    }
    read
}

pub fn protocol_example(lang: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md");
    let fence = format!("```{lang}\n");
    let start = doc
        .find(&fence)
        .unwrap_or_else(|| panic!("no {lang} block in PROTOCOL.md"))
        + fence.len();
    let len = doc[start..].find("```").expect("the end of the block");
    doc[start..start + len].to_string()
}

/// Polls `cond` every 20 ms until it holds; panics after [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Err(e) = wait_until(what, DEADLINE, cond).await {
        panic!("{e}");
    }
}

impl Drop for Mesh {
    /// On a failing test, keep the whole test dir (logs, stores, outbox) for a
    /// post-mortem and show the tail of every hub's log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let kept = self.0.keep_dir();
        eprintln!("---- test dir kept at {} ----", kept.display());
        eprint!("{}", self.0.log_tails(60));
    }
}

/// An outside tool a test needs (Chromium, promtool, prometheus) at `path`, or a bare
/// command name on PATH (node): its path when installed. When it is missing the test is skipped with a loud message, so
/// `cargo test --workspace` passes on a machine with only Rust and pip, unless `CI` is
/// set (as `.ci/run` runs): then a missing tool fails the test.
pub fn required_tool(path: &str, package: &str) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(path);
    if p.is_file() {
        return Some(p);
    }
    // A bare name is looked up on PATH (node and npm live where their installer put them).
    if !path.contains('/') {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .map(|dir| dir.join(path))
            .find(|p| p.is_file());
        if found.is_some() {
            return found;
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "{path} is missing and CI is set: install Debian's `{package}` package \
         (.ci/run does: apt-get install -y {package})"
    );
    // Straight to stderr, not through `eprintln!`, which the test harness captures and
    // shows only for failing tests: a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED: {path} is missing; install Debian's `{package}` package \
         (apt-get install -y {package}) to run this test. CI fails instead. !!!!!!!!\n"
    );
    None
}
