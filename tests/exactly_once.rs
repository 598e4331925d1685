//! Exactly once from the agent: a request sent again (`mesh-producer`, `mesh-request`)
//! after its reply was lost, after a `kill -9` of the edge hub between the store and the
//! reply, or while the edge hub restarts, gets the original ack and stores nothing twice.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use agents::Agent;
use async_nats::HeaderMap;
use schemas::{headers as h, ErrorCode, IngestReply, IngestRequest, NewEvent};
use support::{wait_for, Mesh, MeshOpts};

fn body(tag: &str, n: usize) -> bytes::Bytes {
    let events = (0..n)
        .map(|k| NewEvent::new("t", "once.test", format!("{tag}-{k}").into_bytes()))
        .collect();
    IngestRequest { events }.encode().unwrap().into()
}

/// Sends request `n` of `agent`'s producer with a reply subject nobody listens on: the
/// edge stores it and its ack is lost.
async fn send_reply_lost(agent: &Agent, n: u64, body: bytes::Bytes) {
    let mut hm = HeaderMap::new();
    hm.insert(h::MESH_PRODUCER, agent.producer().to_string().as_str());
    hm.insert(h::MESH_REQUEST, n.to_string().as_str());
    agent
        .client()
        .publish_with_reply_and_headers(
            schemas::subject::ingest("e1", agent.id()),
            agent.client().new_inbox(),
            hm,
            body,
        )
        .await
        .unwrap();
    agent.client().flush().await.unwrap();
}

/// Waits until the edge hub has stored `n` events in all.
async fn stored(mesh: &Mesh, n: f64) {
    wait_for(&format!("{n} events stored at the edge"), || async {
        mesh.edge_metric("mesh_edge_ingested_events_total") == Some(n)
    })
    .await;
}

fn ids_once(events: &[schemas::Event]) {
    let ids: HashSet<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), events.len(), "a ce-id is stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_again_after_its_reply_was_lost_gets_the_original_ack() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("a1").await;
    let first = body("first", 3);
    send_reply_lost(&agent, 1000, first.clone()).await;
    stored(&mesh, 3.0).await;

    // The same request again, as the SDK sends it after a timeout.
    let ack = agent.request_numbered(first, 1000).await.unwrap();
    assert_eq!((ack.first_seq, ack.last_seq), (1, 3));
    assert_eq!(
        mesh.edge_metric("mesh_edge_repeated_requests_total"),
        Some(1.0)
    );
    assert_eq!(
        mesh.edge_metric("mesh_edge_ingested_events_total"),
        Some(3.0)
    );

    // A new request is stored after it; the same body under a new number is new.
    let ack = agent.request(body("second", 2)).await.unwrap();
    assert_eq!((ack.first_seq, ack.last_seq), (4, 5));

    let events = mesh.drained_events().await;
    assert_eq!(events.len(), 5);
    ids_once(&events);

    // Both headers or neither, and well formed; the refusal names the header.
    for (p, r, needle) in [
        (Some("not-a-uuid"), Some("1"), "mesh-producer"),
        (
            Some("0190b8a0-0000-7000-8000-000000000000"),
            Some("x"),
            "mesh-request",
        ),
        (None, Some("1"), "both"),
    ] {
        let mut hm = HeaderMap::new();
        if let Some(p) = p {
            hm.insert(h::MESH_PRODUCER, p);
        }
        if let Some(r) = r {
            hm.insert(h::MESH_REQUEST, r);
        }
        let reply = agent
            .client()
            .request_with_headers(schemas::subject::ingest("e1", "a1"), hm, body("bad", 1))
            .await
            .unwrap();
        match IngestReply::decode(&reply.payload).unwrap() {
            IngestReply::Err {
                code: ErrorCode::Invalid,
                message,
            } => assert!(message.contains(needle), "{message}"),
            other => panic!("expected a refusal naming {needle}: {other:?}"),
        }
    }
    assert_eq!(
        mesh.edge_metric("mesh_edge_ingested_events_total"),
        Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_again_after_a_kill_9_between_store_and_reply_gets_the_original_ack() {
    let mut mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("a1").await.with_timeout(Duration::from_secs(30));
    agent.publish("t", "once.before", "x").await.unwrap();
    // Stored and flushed, its reply lost, then the edge hub is killed before anyone
    // could have seen an ack.
    let req = body("killed", 4);
    send_reply_lost(&agent, 1000, req.clone()).await;
    stored(&mesh, 5.0).await;
    mesh.edge_hub().kill();

    // A publish while the edge hub is down: the SDK keeps sending it (no edge hub
    // listens) until the hub is back, and it is stored once.
    let during = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.publish("t", "once.during", "y").await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    mesh.edge_hub().start();

    let ack = agent.request_numbered(req, 1000).await.unwrap();
    assert_eq!(
        (ack.first_seq, ack.last_seq),
        (2, 5),
        "not the original ack"
    );
    let during = during.await.unwrap().unwrap();
    assert_eq!((during.first_seq, during.last_seq), (6, 6));

    let events = mesh.drained_events().await;
    assert_eq!(
        events.len(),
        6,
        "{:?}",
        events.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    ids_once(&events);
}
