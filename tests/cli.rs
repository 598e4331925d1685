//! The command line as outside scripts drive it (docs/DESIGN.md: stable names and flags):
//! `mesh pub` summary line and exit status, `mesh sub`, `--print-config`, and refusal of
//! unknown configuration keys; and the operator surface: the data-directory lock, an
//! unreachable server's retry log, JSON logs, durations, a closed stdout, `--version`
//! and shell completions.

mod support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_nats::client::ClientAuth;
use support::{Mesh, MeshOpts};

fn mesh(args: &[&str]) -> (bool, String, String) {
    mesh_as(&ClientAuth::none(), args)
}

/// `mesh <args>` with `--creds` / `--tls-ca` of `auth`.
fn mesh_as(auth: &ClientAuth, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
    cmd.args(args).env("MESH_LOG", "warn");
    if let (Some(c), Some(ca)) = (&auth.creds, &auth.tls_ca) {
        cmd.arg("--creds").arg(c).arg("--tls-ca").arg(ca);
    }
    let out = cmd.output().expect("run mesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn summary(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or_default()
}

/// `mesh pub --count N` exits 0 with `acked=N failed=0` once every event is acked, and
/// the events are in MESH_EVENTS with the CloudEvents headers; with no edge hub it ends
/// with a summary too, and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_summary_and_exit_status() {
    let mut m = Mesh::start(MeshOpts::default()).await;
    let cli = m.auth(&mesh_testkit::Mesh::test_agent("e1", "cli"));
    let url = m.edge().client_url();
    let a = cli.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        mesh_as(
            &a,
            &[
                "pub",
                "--nats",
                &url,
                "--agent",
                "cli",
                "--count",
                "500",
                "--size",
                "100",
                "orders.created",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(summary(&out).starts_with("acked=500 failed=0 "), "{out}");
    // The ack latency percentiles close the summary.
    let field = |k: &str| -> f64 {
        let v = summary(&out)
            .split(' ')
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {out}"));
        v.parse()
            .unwrap_or_else(|_| panic!("{k}{v} is not a number"))
    };
    let (p50, p99) = (field("p50_ms="), field("p99_ms="));
    assert!(0.0 < p50 && p50 <= p99, "p50 {p50} p99 {p99}");

    let url = m.edge().client_url();
    let a = cli.clone();
    let (ok, out, _) = tokio::task::spawn_blocking(move || {
        mesh_as(
            &a,
            &[
                "pub",
                "--nats",
                &url,
                "--agent",
                "cli",
                "--batch",
                "50",
                "--count",
                "500",
                "orders.created",
                "hello",
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        ok && summary(&out).starts_with("acked=500 failed=0 "),
        "{out}"
    );

    let events = m.events_when(1000).await;
    assert_eq!(events.len(), 1000);
    assert!(events
        .iter()
        .all(|e| e.source() == "mesh://e1/cli" && e.subject == "orders.created"));
    assert_eq!(events[999].data, "hello".as_bytes());
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=1000).collect::<Vec<_>>(),
        "ce-meshseq is gap-free and in order"
    );

    // Read one stored message raw, as a non-mesh client would.
    let js = m.central_js().await;
    let stream = js.get_stream("MESH_EVENTS").await.unwrap();
    let raw = stream.get_raw_message(1).await.unwrap();
    let h = |n: &str| raw.headers.get(n).map(|v| v.as_str().to_string());
    assert_eq!(raw.subject.as_str(), "mesh.evt.e1.orders.created");
    assert_eq!(h("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(h("ce-meshseq").as_deref(), Some("1"));
    assert_eq!(h("ce-meshedge").as_deref(), Some("e1"));
    assert_eq!(h("Nats-Msg-Id").as_deref(), Some("e1:1"));
    assert!(h("ce-time").is_some() && h("ce-type").is_some());

    // A durable `mesh sub` at the edge reads them back from the centre.
    let url = m.edge().client_url();
    let a = cli.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        mesh_as(
            &a,
            &[
                "sub",
                "--nats",
                &url,
                "--agent",
                "cli",
                "--durable",
                "cli-reader",
                "--count",
                "3",
                "orders.>",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["meshseq"], "1");
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["source"], "mesh://e1/cli");

    // Pointed at the centre, `mesh pub` says to use the edge's server.
    let central = m.central().client_url();
    let a = cli.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        mesh_as(
            &a,
            &[
                "pub", "--nats", &central, "--agent", "cli", "--count", "1", "x.y",
            ],
        )
    })
    .await
    .unwrap();
    assert!(!ok, "publishing at the centre must fail");
    assert!(
        format!("{out}{err}").contains("connect to the nats-server of your edge"),
        "stdout: {out}\nstderr: {err}"
    );

    m.edge_hub().kill();
    let url = m.edge().client_url();
    let a = cli.clone();
    let (ok, out, _) = tokio::task::spawn_blocking(move || {
        mesh_as(
            &a,
            &[
                "pub", "--nats", &url, "--agent", "cli", "--edge", "e1", "--count", "3", "x.y",
            ],
        )
    })
    .await
    .unwrap();
    assert!(!ok, "exit status must be non-zero when nothing was acked");
    assert!(summary(&out).starts_with("acked=0 failed=3 "), "{out}");
    assert!(summary(&out).contains("no_edge_hub=3"), "{out}");
}

/// `--print-config` shows the effective configuration (flags over file), and an unknown
/// key in the file is refused by name.
#[test]
fn config_layering_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "id = \"from-file\"\n[outbox]\nmax_bytes = 1234567\n").unwrap();
    let f = file.display().to_string();
    let (ok, out, err) = mesh(&[
        "edge",
        "--config",
        &f,
        "--id",
        "from-flag",
        "--print-config",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("id = \"from-flag\""), "{out}");
    assert!(out.contains("max_bytes = 1234567"), "{out}");

    std::fs::write(&file, "[outbox]\nmax_byts = 1\n").unwrap();
    let (ok, _, err) = mesh(&["edge", "--config", &f, "--print-config"]);
    assert!(!ok);
    assert!(err.contains("max_byts"), "{err}");

    let (ok, _, err) = mesh(&[
        "edge",
        "--id",
        "bad id",
        "--nats",
        "nats://127.0.0.1:1",
        "--data-dir",
        "/tmp/x",
    ]);
    assert!(!ok);
    assert!(err.contains("id \"bad id\""), "{err}");

    let (ok, out, _) = mesh(&["central", "--print-config"]);
    assert!(ok && out.contains("[lander]"), "{out}");
}

/// `mesh --help` says where nats-server comes from and where it would be installed: the
/// per-user tools folder, or `MESH_TOOLS_DIR` when set — never the source tree.
#[test]
fn help_names_the_nats_server_location() {
    let tools = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("--help")
        .env("MESH_TOOLS_DIR", tools.path())
        .output()
        .expect("run mesh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let installed = tools.path().join("nats/bin/nats-server");
    assert!(text.contains(&installed.display().to_string()), "{text}");
    for needle in [
        "MESH_NATS_SERVER",
        "MESH_TOOLS_DIR",
        ".local/share/agentmesh/tools",
    ] {
        assert!(
            text.contains(needle),
            "--help does not mention {needle}:\n{text}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("--help")
        .env_remove("MESH_TOOLS_DIR")
        .env("HOME", "/home/someone")
        .env_remove("XDG_DATA_HOME")
        .output()
        .expect("run mesh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/home/someone/.local/share/agentmesh/tools/nats/bin/nats-server"),
        "{text}"
    );
}

/// Hub logs written to a file (here by the test kit, as under `mesh up`) carry no ANSI
/// escape codes: colour is only for a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_logs_in_files_have_no_colour_codes() {
    let m = Mesh::start(MeshOpts::default()).await;
    m.agent("painter")
        .await
        .publish("t", "logs.plain", &b"x"[..])
        .await
        .expect("publish");
    m.events_when(1).await;
    let logs: Vec<_> = std::fs::read_dir(m.dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    assert!(logs.len() >= 2, "no hub logs in {}", m.dir().display());
    for p in logs {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("INFO"), "{} logged nothing", p.display());
        assert!(
            !text.contains('\u{1b}'),
            "{} holds ANSI escape codes",
            p.display()
        );
    }
}

/// A `mesh` child process, killed (by its PID, through `Child`) and reaped on drop.
struct Running(Child);

impl Running {
    fn start(args: &[&str], stdout: Stdio, stderr: Stdio) -> Running {
        Running(
            Command::new(env!("CARGO_BIN_EXE_mesh"))
                .args(args)
                .env("MESH_LOG", "info")
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .expect("start mesh"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }

    /// SIGTERM, then up to `grace` for it to exit; true when it exited by itself.
    fn terminate(&mut self, grace: Duration) -> bool {
        // SAFETY: a signal to our own child, which we have not reaped yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < grace {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback with nothing listening on it (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A second `mesh up` on a data directory in use refuses at once, naming the PID that
/// holds it, and starts nothing (it once started a second central nats-server on the
/// first one's store and broke its audit chain); the first mesh runs on, its audit
/// chain intact.
#[test]
fn a_second_mesh_up_on_a_data_dir_in_use_refuses_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mesh");
    let data_s = data.to_str().unwrap();
    let up_args = [
        "up",
        "--insecure",
        "--no-demo",
        "--edges",
        "1",
        "--data-dir",
        data_s,
    ];
    let mut first = Running::start(&up_args, Stdio::piped(), Stdio::null());
    let mut lines = std::io::BufReader::new(first.0.stdout.take().unwrap()).lines();
    let mut central_url = None;
    let mut said = String::new();
    for line in lines.by_ref() {
        let line = line.expect("read mesh up's stdout");
        said.push_str(&line);
        said.push('\n');
        if line.starts_with("central  nats-server") {
            central_url = line
                .split_whitespace()
                .skip_while(|w| *w != "nats")
                .nth(1)
                .map(String::from);
        }
        if line.starts_with("running") {
            break;
        }
    }
    let central_url = central_url.unwrap_or_else(|| panic!("no central URL in:\n{said}"));
    assert!(
        said.contains("running"),
        "the first mesh up did not start:\n{said}"
    );
    // Keep reading its output so it never blocks on a full pipe.
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).count());

    let t = Instant::now();
    let second = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(up_args)
        .args(["--duration", "30s"])
        .output()
        .expect("run the second mesh up");
    let (out, err) = (
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr),
    );
    assert!(
        !second.status.success(),
        "the second mesh up exited 0:\n{out}\n{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the second mesh up took {:?} to refuse",
        t.elapsed()
    );
    assert!(
        err.contains(&format!("in use by pid {} mesh up", first.pid())),
        "the refusal does not name the first mesh up's pid {}:\n{err}",
        first.pid()
    );
    assert!(
        !out.contains("nats-server") && !out.contains("running"),
        "the second mesh up started something:\n{out}"
    );

    // The first one is untouched: still running, its audit chain verifies.
    assert!(first.alive(), "the first mesh up died");
    let (ok, text) = support::mesh_cli(&["audit", "verify", "--nats", &central_url]);
    assert!(ok && text.contains("OK"), "{text}");
    assert!(
        first.terminate(Duration::from_secs(30)),
        "mesh up did not stop on SIGTERM"
    );
    let _ = reader.join();
}

/// `mesh edge` and `mesh central` against a server that is not there say so, with the
/// URL, at a steady cadence (the edge hub used to log once and fall silent), here in JSON
/// lines (`--log-format
/// json`); a second `mesh edge` on the same data directory refuses, naming the first's
/// PID; and a durations flag in the wrong syntax is refused by name.
#[test]
fn an_unreachable_server_is_retried_aloud_and_a_data_dir_is_one_edges() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("edge");
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let log_path = dir.path().join("edge.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let edge_args = [
        "edge",
        "--log-format",
        "json",
        "--nats",
        &url,
        "--id",
        "e1",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut first = Running::start(&edge_args, Stdio::null(), Stdio::from(log));
    let lock = data.join("mesh.lock");
    let t = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&first.pid().to_string())) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "mesh edge took no lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (ok, _, err) = mesh(&edge_args);
    assert!(!ok, "a second mesh edge on one data directory must refuse");
    assert!(
        err.contains(&format!("in use by pid {} mesh edge e1", first.pid())),
        "the refusal does not name pid {}:\n{err}",
        first.pid()
    );

    // A central hub against nothing does the same (it used to say `jetstream request
    // timed out` after 10 s).
    let central_log_path = dir.path().join("central.log");
    let central_log = std::fs::File::create(&central_log_path).unwrap();
    let mut central = Running::start(
        &[
            "central",
            "--log-format",
            "json",
            "--nats",
            &url,
            "--hub-id",
            "c9",
        ],
        Stdio::null(),
        Stdio::from(central_log),
    );

    // Tries every second, says so at the first and every fifth.
    std::thread::sleep(Duration::from_millis(7_500));
    for (what, proc, path) in [
        ("mesh edge", &mut first, &log_path),
        ("mesh central", &mut central, &central_log_path),
    ] {
        assert!(proc.alive(), "{what} gave up");
        let text = std::fs::read_to_string(path).unwrap();
        let warnings: Vec<serde_json::Value> = text
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{what}: not a JSON log line ({e}): {l}"))
            })
            .filter(|v: &serde_json::Value| v["level"] == "WARN")
            .collect();
        assert!(
            warnings.len() >= 2,
            "{what}: expected a warning at the first and the sixth try:\n{text}"
        );
        for w in &warnings {
            assert_eq!(w["url"], url.as_str(), "{what}: {w}");
            assert!(
                w["message"].as_str().unwrap_or_default().contains(&url),
                "{what}: the message does not name the URL: {w}"
            );
        }
        assert!(
            proc.terminate(Duration::from_secs(5)),
            "{what} did not stop on SIGTERM"
        );
    }

    let (ok, _, err) = mesh(&["up", "--duration", "5 parsecs"]);
    assert!(
        !ok && err.contains("\"5 parsecs\" is not a duration"),
        "{err}"
    );
}

/// A reader that goes away (`mesh chaos list | head -1`) ends the output quietly: no
/// panic, exit status 0 (it was `Broken pipe` and exit 101).
#[test]
fn a_closed_stdout_is_no_panic() {
    for args in [&["chaos", "list"][..], &["completions", "bash"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mesh");
        // Closed before the child writes anything: every write meets a broken pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "mesh {args:?}: {err}");
        assert!(
            out.status.success(),
            "mesh {args:?}: {:?} {err}",
            out.status
        );
    }
}

/// `mesh --version` names the commit it was built from and the nats-server it would
/// run; `mesh completions` writes a completion script that knows the commands.
#[test]
fn version_and_completions() {
    let (ok, out, err) = mesh(&["--version"]);
    assert!(ok, "{err}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(commit) => assert!(out.contains(&format!("(commit {commit})")), "{out}"),
        None => assert!(out.contains("(commit unknown)"), "{out}"),
    }
    assert!(out.contains("\nnats-server: "), "{out}");

    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = mesh(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        for cmd in ["up", "pub", "replay", "completions"] {
            assert!(out.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
    let (ok, _, err) = mesh(&["completions", "cmd.exe"]);
    assert!(!ok && err.contains("cmd.exe"), "{err}");
}

/// A component that fails at start fails `mesh up` at once, with a non-zero exit and
/// its reason: here the edge hub cannot open its outbox (a file stands where the
/// directory belongs). `mesh up` used to wait out a minute's deadline for it.
#[test]
fn a_component_that_fails_at_start_fails_mesh_up_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mesh");
    std::fs::create_dir_all(data.join("edge-1")).unwrap();
    std::fs::write(data.join("edge-1").join("outbox"), b"not a directory").unwrap();
    let t = Instant::now();
    let (ok, out, err) = mesh(&[
        "up",
        "--insecure",
        "--no-demo",
        "--edges",
        "1",
        "--data-dir",
        data.to_str().unwrap(),
        "--duration",
        "60s",
    ]);
    assert!(!ok, "mesh up exited 0:\n{out}\n{err}");
    assert!(!out.contains("running"), "{out}");
    assert!(
        err.contains("edge hub edge-1") && err.contains("exited before it was ready"),
        "{err}"
    );
    assert!(
        err.contains("outbox storage"),
        "the edge hub's reason is not shown: {err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
}

/// A client command that cannot connect names the URL once with its cause, also when
/// the URL comes from `NATS_URL` (connection errors used to repeat their cause and omit
/// the URL).
#[test]
fn a_connection_error_names_the_url_once() {
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["audit", "verify"])
        .env("NATS_URL", &url)
        .env_remove("NATS_CREDS")
        .env_remove("NATS_CA")
        .output()
        .expect("run mesh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.matches(&url).count(), 1, "the URL once: {err}");
    assert_eq!(
        err.matches("Connection refused").count(),
        1,
        "the cause once: {err}"
    );
}

/// A central hub pointed at an edge's nats-server refuses to start at once and says to
/// use the central one (it used to retry for a minute and say `jetstream unavailable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_hub_at_the_wrong_server_says_where_to_go() {
    let m = Mesh::start(MeshOpts::default()).await;
    let hub = m.auth(&mesh_nats::auth::Identity::CentralHub {
        name: "wrong".into(),
    });
    let edge = m.edge().client_url();
    let t = Instant::now();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        mesh_as(
            &hub,
            &[
                "central",
                "--nats",
                &edge,
                "--hub-id",
                "wrong",
                "--http",
                "127.0.0.1:0",
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        !ok,
        "a central hub at an edge's server started:\n{out}\n{err}"
    );
    assert!(
        err.contains("central nats-server"),
        "the refusal does not say to use the central nats-server:\n{err}"
    );
    assert!(
        err.contains("has no JetStream"),
        "the refusal does not say what is wrong with the server:\n{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
}
