//! The centre on three nodes: `mesh up --central-nodes 3` says which node is which, two
//! central hubs started at the same moment on a fresh cluster both come up with R3
//! streams, and events published at an edge land through a clustered centre.

mod support;

use std::time::Duration;

use mesh_nats::auth::Identity;
use mesh_testkit::{wait_until, MeshBuilder};
use schemas::subject;
use support::{mesh_cli, mesh_cli_as};

/// Regression: both hubs gave up with `jetstream request timed out` (creating each R3
/// stream took ~10 s, longer than a JetStream request's default timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_started_at_once_on_a_fresh_cluster_both_come_up_with_r3_streams() {
    let mut mesh = MeshBuilder::new()
        .name("cluster")
        .exe(env!("CARGO_BIN_EXE_mesh"))
        .central_nodes(3)
        .central_hubs(2)
        .edges(1)
        .start()
        .await
        .expect("a 3-node mesh with two hubs started at once");
    for s in [
        subject::STREAM_INGRESS,
        subject::STREAM_EVENTS,
        subject::STREAM_AUDIT,
        subject::STREAM_DLQ,
    ] {
        let mut stream = mesh.central_js().get_stream(s).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{s}");
        let cluster = info.cluster.clone().expect("a clustered stream");
        assert_eq!(cluster.replicas.len(), 2, "{s}: {cluster:?}");
    }
    for hub in &mesh.central_hubs {
        assert!(
            hub.scrape().await.is_some(),
            "central hub {} does not answer",
            hub.id()
        );
    }
    // Events go through: published at the edge, landed on the cluster.
    let agent = mesh.agent(0, "a1").await.unwrap();
    for i in 0..200u32 {
        agent
            .publish("test.job", "jobs.run", i.to_string())
            .await
            .unwrap();
    }
    wait_until("200 events landed", Duration::from_secs(30), || async {
        mesh.landed_mark("e1").await == Some(200)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.log_tails(30)));
    assert_eq!(mesh.central_nodes().len(), 3);
    assert!(mesh.meta_leader().is_some());

    // Regression: a hub started on the default configuration (replicas 1) silently
    // scaled the R3 streams down to R1. Now it refuses and names every difference.
    let hub = mesh
        .auth(&Identity::CentralHub {
            name: "late".into(),
        })
        .unwrap();
    let (ok, out) = tokio::task::block_in_place(|| {
        mesh_cli_as(
            &hub,
            &["central", "--nats", &mesh.central_url(), "--hub-id", "late"],
        )
    });
    assert!(
        !ok,
        "a hub with replicas 1 started against R3 streams:\n{out}"
    );
    for needle in [
        "stream MESH_EVENTS: num_replicas is 3 on the server but events.replicas is 1",
        "stream MESH_INGRESS: num_replicas is 3 on the server but ingress.replicas is 1",
        "--apply-stream-changes",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    let mut events = mesh
        .central_js()
        .get_stream(subject::STREAM_EVENTS)
        .await
        .unwrap();
    assert_eq!(events.info().await.unwrap().config.num_replicas, 3);

    // Operator commands take every node's URL too.
    let operator = mesh.operator_auth().unwrap();
    let (ok, out) = tokio::task::block_in_place(|| {
        mesh_cli_as(
            &operator,
            &["audit", "verify", "--nats", &mesh.central_url()],
        )
    });
    assert!(
        ok && out.contains("OK"),
        "audit verify on the cluster:\n{out}"
    );
    assert!(mesh.leaf_node(0).is_some(), "the leaf link is on no node");
    mesh.keep_dir();
    let _ = std::fs::remove_dir_all(mesh.dir());
}

/// `mesh up --central-nodes 3` starts three nodes and says which is which: URLs (client,
/// leaf, route), PID and data directory of each, the meta leader, and the URL list the
/// clients use.
#[test]
fn mesh_up_with_three_central_nodes_says_which_node_is_which() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mesh");
    let (ok, out) = mesh_cli(&[
        "up",
        "--central-nodes",
        "3",
        "--edges",
        "1",
        "--no-demo",
        "--duration",
        "3",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "mesh up --central-nodes 3 failed:\n{out}");
    for i in 1..=3 {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("nats-server mesh-central-{i} ")))
            .unwrap_or_else(|| panic!("no line for node {i}:\n{out}"));
        for needle in [
            "nats nats://127.0.0.1:",
            "leaf nats-leaf://",
            "route nats-route://",
            "pid ",
        ] {
            assert!(line.contains(needle), "node {i}: no {needle:?} in {line:?}");
        }
        assert!(
            line.contains(&format!("central-nats-{i}")),
            "node {i}: no data dir in {line:?}"
        );
    }
    let cluster = out
        .lines()
        .find(|l| l.contains("cluster \"central\" of 3 nodes"))
        .unwrap_or_else(|| panic!("no cluster line:\n{out}"));
    assert!(cluster.contains("meta leader mesh-central-"), "{cluster}");
    assert_eq!(cluster.matches("nats://127.0.0.1:").count(), 3, "{cluster}");
    assert!(out.contains("hub central-2"), "no standby hub:\n{out}");

    // A bad count is refused with the rule.
    let (ok, out) = mesh_cli(&[
        "up",
        "--central-nodes",
        "2",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(out.contains("--central-nodes is 2"), "{out}");
}
