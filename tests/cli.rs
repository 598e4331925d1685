//! The command line as outside scripts drive it (docs/DESIGN.md: stable names and flags):
//! `mesh pub` summary line and exit status, `mesh sub`, `--print-config`, and refusal of
//! unknown configuration keys.

mod support;

use std::process::Command;

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
