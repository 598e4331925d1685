//! Issue 13's interop test: a Python agent that knows the mesh only through
//! `docs/PROTOCOL.md` (`tests/python/protocol_client.py`, nats-py and the official
//! CloudEvents SDK) publishes in every body format the edge takes, is refused with named
//! reasons where it should be, and reads its events back from `MESH_EVENTS` through the
//! SDK's binary-mode reader: every attribute, binary data and the trace context come
//! back as sent. Then `mesh replay --to-stdout` and `mesh sub` lines are parsed by the
//! SDK's JSON format reader into the same events. And the Python example of
//! `docs/PROTOCOL.md` runs as it stands.

mod support;

use support::python::{ensure_python_packages, script};
use support::{protocol_example, run_example, Mesh, MeshOpts};

/// The events the Python client publishes (binary 1, structured 1, batch 2, JSON 2,
/// MessagePack 1).
const SENT: usize = 7;

/// Runs the client with `args`; panics with its output when it fails. Returns its steps.
async fn python(lib: &std::path::Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new("python3")
        .env("PYTHONPATH", lib)
        .arg(script("protocol_client.py"))
        .args(args)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the python client failed:\n{all}");
    eprintln!("{all}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{all}")))
        .collect()
}

fn step<'a>(steps: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {steps:?}"))
}

/// A refusal step: its code, its `mesh-error` header, and a message containing `needle`.
fn refused(steps: &[serde_json::Value], name: &str, code: &str, needle: &str) {
    let s = step(steps, name);
    assert_eq!(s["reply"]["err"]["code"], code, "{s}");
    assert_eq!(s["mesh_error"], code, "{s}");
    let message = s["reply"]["err"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{name}: {message:?} lacks {needle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudevents_sdk_publishes_and_reads_back_every_attribute() {
    let lib = tokio::task::spawn_blocking(ensure_python_packages)
        .await
        .unwrap();
    let mesh = Mesh::start(MeshOpts::default()).await;
    let data = mesh.dir().to_path_buf();
    let creds = mesh.issue_agent_creds("py-agent", &["py=python.>"]);
    let sent = data.join("sent.jsonl");
    let edge_url = mesh.edge().client_url();
    let steps = python(
        &lib,
        &[
            "run",
            "--url",
            &edge_url,
            "--creds",
            &creds.display().to_string(),
            "--ca",
            &data.join("tls/ca.pem").display().to_string(),
            "--edge",
            "e1",
            "--agent",
            "py-agent",
            "--sent",
            &sent.display().to_string(),
        ],
    )
    .await;
    for s in [
        "binary",
        "structured",
        "batch",
        "mesh_json",
        "msgpack",
        "read_back",
    ] {
        assert_eq!(step(&steps, s)["ok"], true, "{s}");
    }
    assert_eq!(step(&steps, "read_back")["events"], SENT);
    refused(
        &steps,
        "typo",
        "malformed",
        r#"events[0]: unknown field "contentType" (did you mean "content_type"?)"#,
    );
    refused(
        &steps,
        "wrong_type",
        "malformed",
        "events[0].time_ns must be an integer",
    );
    refused(
        &steps,
        "bad_uuid",
        "malformed",
        r#"events[0].id must be a UUID"#,
    );
    refused(&steps, "other_source", "invalid", "mesh://e1/py-agent");
    refused(&steps, "bare_percent", "invalid", "ce-type");

    // Nothing refused was stored, and the stored events are the agent's own.
    let events = mesh.drained_events().await;
    assert_eq!(events.len(), SENT, "{events:?}");
    assert!(events.iter().all(|e| e.agent == "py-agent"));
    let binary = events
        .iter()
        .find(|e| e.ty == "py.100%")
        .expect("the binary event");
    assert_eq!(&binary.data[..], &[0x00, 0xff, 0xfe]);
    assert_eq!(binary.correlation_id.as_deref(), Some("corr é 100% %41"));

    // `mesh replay --to-stdout` and `mesh sub` write lines the SDK reads back as sent.
    let central_url = mesh.central().client_url();
    let (ok, out) = mesh.operator_cli(&[
        "replay",
        "--nats",
        &central_url,
        "--stream",
        "MESH_EVENTS",
        "--to-stdout",
    ]);
    assert!(ok, "{out}");
    let replayed = data.join("replay.jsonl");
    std::fs::write(&replayed, lines_of(&out)).unwrap();
    let count = SENT.to_string();
    let (ok, out) = mesh.agent_cli(
        "reader",
        &[
            "sub",
            "--nats",
            &edge_url,
            "--agent",
            "reader",
            "--durable",
            "reader",
            "--count",
            &count,
            "python.>",
        ],
    );
    assert!(ok, "{out}");
    let subbed = data.join("sub.jsonl");
    std::fs::write(&subbed, lines_of(&out)).unwrap();
    for lines in [&replayed, &subbed] {
        let steps = python(
            &lib,
            &[
                "check-lines",
                "--sent",
                &sent.display().to_string(),
                "--lines",
                &lines.display().to_string(),
            ],
        )
        .await;
        assert_eq!(step(&steps, "lines")["events"], SENT, "{}", lines.display());
    }
}

/// The JSON lines of a command's output (stderr is mixed in: its lines are not JSON).
fn lines_of(out: &str) -> String {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The example is what a reader copies first: it must publish in binary and structured
/// mode and in the JSON request, and read the three events back as CloudEvents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_of_protocol_md_runs() {
    let lib = tokio::task::spawn_blocking(ensure_python_packages)
        .await
        .unwrap();
    let mesh = Mesh::start(MeshOpts::default()).await;
    let data = mesh.dir().to_path_buf();
    let creds = mesh.issue_agent_creds("example", &["example=example.>"]);
    let example = data.join("example.py");
    std::fs::write(&example, protocol_example("python")).unwrap();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.env("PYTHONPATH", &lib)
        .env("NATS_URL", mesh.edge().client_url())
        .env("NATS_CREDS", creds)
        .env("NATS_CA", data.join("tls/ca.pem"))
        .env("MESH_EDGE", "e1")
        .env("MESH_AGENT", "example")
        .arg(&example);
    let read = run_example(cmd, "example", 3).await;
    assert_eq!(
        read[0]["data"],
        serde_json::json!({"hello": "world", "n": 0})
    );
    assert_eq!(
        read[1]["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(read[2]["data_base64"], "AP/+");
    assert_eq!(read[2]["meshseq"], "3");
}
