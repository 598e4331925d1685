//! A non-Rust agent: `tests/python/agent_client.py` with nats-py, a standard `.creds`
//! file issued by `mesh creds agent` and the mesh's CA, against a real secure mesh. Its
//! own publish is acked and lands as itself; publishing as another agent and
//! subscribing to `>` are refused by the nats-server.
//!
//! The test installs its Python packages itself (`support::python`).

mod support;

use support::python::{ensure_python_packages, script};
use support::{Mesh, MeshOpts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_agent_publishes_as_itself_and_nothing_else() {
    let lib = tokio::task::spawn_blocking(ensure_python_packages)
        .await
        .unwrap();
    let mesh = Mesh::start(MeshOpts::default()).await;
    let data = mesh.dir().to_path_buf();
    let creds = mesh.issue_agent_creds("py-agent", &[]);

    let out = tokio::process::Command::new("python3")
        .env("PYTHONPATH", &lib)
        .arg(script("agent_client.py"))
        .args(["--url", &mesh.edge().client_url()])
        .arg("--creds")
        .arg(&creds)
        .arg("--ca")
        .arg(data.join("tls/ca.pem"))
        .args(["--edge", "e1", "--agent", "py-agent", "--other", "victim"])
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the python agent failed:\n{all}");
    eprintln!("{all}");
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{all}")))
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}:\n{all}"))
            .clone()
    };

    let ingest = step("ingest");
    assert_eq!(ingest["acked"], true, "{ingest}");
    assert_eq!(
        ingest["reply"]["ok"]["first_seq"],
        ingest["reply"]["ok"]["last_seq"]
    );
    let imp = step("impersonate");
    assert_eq!(imp["refused"], true, "{imp}");
    assert!(
        imp["error"]
            .as_str()
            .unwrap()
            .contains("mesh.ingest.e1.victim"),
        "{imp}"
    );
    let sub = step("subscribe_all");
    assert_eq!(sub["refused"], true, "{sub}");
    assert!(
        sub["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("subscription"),
        "{sub}"
    );
    step("done");

    // Landed as itself, and nothing as the other agent.
    let events = mesh.drained_events().await;
    let mine: Vec<_> = events.iter().filter(|e| e.agent == "py-agent").collect();
    assert_eq!(mine.len(), 1, "{events:?}");
    assert_eq!(mine[0].source(), "mesh://e1/py-agent");
    assert_eq!(mine[0].ty, "python.hello");
    assert_eq!(&mine[0].data[..], br#"{"from": "nats-py"}"#);
    let raw = mesh
        .central_js()
        .await
        .get_stream(schemas::subject::STREAM_EVENTS)
        .await
        .unwrap()
        .get_last_raw_message_by_subject("mesh.evt.e1.python.greetings")
        .await
        .expect("the python event in MESH_EVENTS");
    let source = raw
        .headers
        .get(schemas::headers::SOURCE)
        .map(|v| v.to_string());
    assert_eq!(source.as_deref(), Some("mesh://e1/py-agent"));
    assert!(
        events.iter().all(|e| e.agent != "victim"),
        "something stored as the other agent: {events:?}"
    );
}
