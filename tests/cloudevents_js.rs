//! The JavaScript example of `docs/PROTOCOL.md` runs as it stands, with the npm `nats`
//! client and the official `cloudevents` SDK: it publishes a CloudEvent in structured
//! mode and a mesh request in JSON, and reads both back from `MESH_EVENTS` through
//! JetStream domain `central`. Skipped (loudly) without Node.js and npm, unless `CI` is
//! set.

mod support;

use support::js::{ensure_js_packages, module_in};
use support::{mesh_cli, protocol_example, required_tool, Mesh, MeshOpts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_example_of_protocol_md_runs() {
    // The README promises a machine with Rust and pip; Node.js is extra.
    if required_tool("node", "nodejs").is_none() || required_tool("npm", "npm").is_none() {
        return;
    }
    let lib = tokio::task::spawn_blocking(ensure_js_packages)
        .await
        .unwrap();
    let mesh = Mesh::start(MeshOpts::default()).await;
    let data = mesh.dir().to_path_buf();
    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &data.display().to_string(),
        "--edge",
        "e1",
        "--agent",
        "example-js",
        "--durable",
        "example=example.>",
    ]);
    assert!(ok, "{out}");
    let example = module_in(&data, &lib, "example.mjs", &protocol_example("js"));
    let out = tokio::process::Command::new("node")
        .env("NATS_URL", mesh.edge().client_url())
        .env("NATS_CREDS", data.join("creds/agent-e1-example-js.creds"))
        .env("NATS_CA", data.join("tls/ca.pem"))
        .env("MESH_EDGE", "e1")
        .env("MESH_AGENT", "example-js")
        .arg(&example)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the example failed:\n{all}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{all}")))
        .collect();
    let stored: Vec<&str> = lines.iter().filter_map(|l| l["stored"].as_str()).collect();
    let read: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("specversion").is_some())
        .collect();
    assert_eq!((stored.len(), read.len()), (2, 2), "{all}");
    for (id, ev) in stored.iter().zip(&read) {
        assert_eq!(ev["id"], *id, "{all}");
        assert_eq!(ev["source"], "mesh://e1/example-js");
    }
    assert_eq!(read[0]["data"], serde_json::json!({"hello": "js"}), "{all}");
    assert_eq!(read[1]["data_base64"], "AP/+", "{all}");
    assert_eq!(read[1]["meshseq"], "2");
}
