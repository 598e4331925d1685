//! The JavaScript example of `docs/PROTOCOL.md` runs as it stands, with the npm `nats`
//! client and the official `cloudevents` SDK: it publishes a CloudEvent in structured
//! mode and a mesh request in JSON, and reads both back from `MESH_EVENTS` through
//! JetStream domain `central`. Skipped (loudly) without Node.js and npm, unless `CI` is
//! set.

mod support;

use support::js::{ensure_js_packages, module_in};
use support::{protocol_example, required_tool, run_example, Mesh, MeshOpts};

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
    let creds = mesh.issue_agent_creds("example-js", &["example=example.>"]);
    let example = module_in(&data, &lib, "example.mjs", &protocol_example("js"));
    let mut cmd = tokio::process::Command::new("node");
    cmd.env("NATS_URL", mesh.edge().client_url())
        .env("NATS_CREDS", creds)
        .env("NATS_CA", data.join("tls/ca.pem"))
        .env("MESH_EDGE", "e1")
        .env("MESH_AGENT", "example-js")
        .arg(&example);
    let read = run_example(cmd, "example-js", 2).await;
    assert_eq!(read[0]["data"], serde_json::json!({"hello": "js"}));
    assert_eq!(read[1]["data_base64"], "AP/+");
    assert_eq!(read[1]["meshseq"], "2");
}
