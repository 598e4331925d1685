//! The `ce-id` rule (`edge-hub/src/outbox/ids.rs`): an id an agent's event carries is
//! stored once per agent at every horizon, never acked-and-dropped. A copy within
//! `outbox.id_horizon` is refused `duplicate`, an id made before it `invalid` (naming
//! the key), also after every duplicate window and after a `kill -9` of the edge hub.
//! CloudEvents names an event by `ce-source` + `ce-id`, so two agents may send the same
//! id, and both are stored without stalling anyone.

mod support;

use std::time::Duration;

use agents::Agent;
use async_nats::HeaderMap;
use schemas::{headers as h, ErrorCode, IngestReply, IngestRequest, NewEvent};
use support::{wait_for, Mesh, MeshOpts};
use uuid::Uuid;

/// Far below `events.duplicate_window` (2 min): a landing stalled by a de-duplicated
/// event would only resume once the window passed.
const PROMPTLY: Duration = Duration::from_secs(20);

fn event(id: Option<Uuid>, data: &str) -> NewEvent {
    let mut ev = NewEvent::new("t", "ids.test", data.as_bytes().to_vec());
    ev.id = id;
    ev
}

/// Regression: `Nats-Msg-Id` was `ce-id`. `MESH_EVENTS` dropped the second agent's event
/// as a duplicate inside the lander's chain, the chain broke, and landing at that edge
/// stalled until the duplicate window (2 min) had passed. A hostile agent could stall
/// every agent of its edge so, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agents_event_with_the_same_ce_id_is_stored_and_landing_goes_on() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let a1 = mesh.agent("a1").await;
    let a2 = mesh.agent("a2").await;
    let shared = Uuid::now_v7();
    a1.publish_event(event(Some(shared), "a1's")).await.unwrap();
    a2.publish_event(event(Some(shared), "a2's, same id"))
        .await
        .unwrap();
    for k in 0..10 {
        a1.publish_event(event(None, &format!("after {k}")))
            .await
            .unwrap();
    }

    mesh_testkit::wait_until("all 12 events in MESH_EVENTS", PROMPTLY, || async {
        mesh.kit()
            .stream_messages(schemas::subject::STREAM_EVENTS)
            .await
            .is_some_and(|m| m == 12)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let events = mesh.drained_events().await;
    assert_eq!(events.len(), 12);
    let mut sharing: Vec<_> = events
        .iter()
        .filter(|e| e.id == shared)
        .map(|e| (e.agent.as_str(), e.data.as_ref()))
        .collect();
    sharing.sort();
    assert_eq!(
        sharing,
        [("a1", &b"a1's"[..]), ("a2", &b"a2's, same id"[..])],
        "each agent's event with the shared id is stored once"
    );
}

/// A UUIDv7 made `offset_ms` from now (negative: in the past).
fn v7_from_now(offset_ms: i64) -> Uuid {
    let ms = (chrono::Utc::now().timestamp_millis() + offset_ms) as u64;
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        (ms % 1000) as u32 * 1_000_000,
    ))
}

/// Sends `events` as one raw request (no `mesh-producer`: not an SDK retry) and reads
/// the answer, asking again while no edge hub listens (one being restarted).
async fn send(agent: &Agent, events: Vec<NewEvent>) -> IngestReply {
    let body: bytes::Bytes = IngestRequest { events }.encode().unwrap().into();
    let subject = schemas::subject::ingest("e1", agent.id());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match agent.client().request(subject.clone(), body.clone()).await {
            Ok(reply) => return IngestReply::decode(&reply.payload).unwrap(),
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("asking again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no answer from the edge hub: {e}"),
        }
    }
}

fn acked(r: IngestReply) -> (u64, u64) {
    match r {
        IngestReply::Ok {
            first_seq,
            last_seq,
        } => (first_seq, last_seq),
        other => panic!("expected an ack: {other:?}"),
    }
}

fn refused(r: IngestReply, want: ErrorCode, needles: &[&str]) {
    match r {
        IngestReply::Err { code, message } if code == want => {
            for n in needles {
                assert!(message.contains(n), "{n:?} not in {message:?}");
            }
        }
        other => panic!("expected a {} refusal: {other:?}", want.as_str()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_ce_id_is_refused_and_nothing_of_its_request_is_stored() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let a1 = mesh.agent("a1").await;
    let a2 = mesh.agent("a2").await;
    let x = Uuid::now_v7();
    assert_eq!(
        acked(send(&a1, vec![event(Some(x), "first")]).await),
        (1, 1)
    );

    // Resent at once, alone or beside a new id: refused whole, the stored event stands.
    let xs = x.to_string();
    refused(
        send(&a1, vec![event(Some(x), "again")]).await,
        ErrorCode::Duplicate,
        &[&xs, "a1", "stored"],
    );
    let y = Uuid::now_v7();
    refused(
        send(&a1, vec![event(Some(y), "new"), event(Some(x), "again")]).await,
        ErrorCode::Duplicate,
        &[&xs],
    );
    // The same id twice in one request.
    let z = Uuid::now_v7();
    refused(
        send(&a1, vec![event(Some(z), "one"), event(Some(z), "two")]).await,
        ErrorCode::Invalid,
        &[&z.to_string(), "twice"],
    );
    // Not a UUIDv7, made ahead of the edge's clock, made before the horizon.
    refused(
        send(
            &a1,
            vec![event(
                Some(Uuid::from_u128(0x0190_b8a0_1234_4def_8123_4567_89ab_cdef)),
                "v4",
            )],
        )
        .await,
        ErrorCode::Invalid,
        &["version 4", "UUIDv7", "outbox.id_horizon"],
    );
    refused(
        send(&a1, vec![event(Some(v7_from_now(300_000)), "ahead")]).await,
        ErrorCode::Invalid,
        &["ahead of this edge's clock"],
    );
    refused(
        send(&a1, vec![event(Some(v7_from_now(-11 * 60_000)), "old")]).await,
        ErrorCode::Invalid,
        &["outbox.id_horizon (10m)", "new id"],
    );
    // Another agent's event with the same id is another event; y was never stored.
    assert_eq!(acked(send(&a2, vec![event(Some(x), "a2's")]).await), (2, 2));
    assert_eq!(acked(send(&a1, vec![event(Some(y), "new")]).await), (3, 3));
    // A copy refused through the SDK tells the caller so.
    match a1.publish_event(event(Some(y), "sdk")).await {
        Err(agents::AgentError::Refused {
            code: ErrorCode::Duplicate,
            ..
        }) => {}
        other => panic!("expected a duplicate refusal: {other:?}"),
    }

    assert_eq!(
        mesh.edge_metric("mesh_edge_ingested_events_total"),
        Some(3.0)
    );
    let events = mesh.drained_events().await;
    let mut got: Vec<_> = events
        .iter()
        .map(|e| (e.agent.as_str(), e.id, e.data.as_ref()))
        .collect();
    got.sort();
    let mut want = vec![
        ("a1", x, &b"first"[..]),
        ("a2", x, &b"a2's"[..]),
        ("a1", y, &b"new"[..]),
    ];
    want.sort();
    assert_eq!(got, want);
}

/// After the edge's horizon (8 s here) and the centre's duplicate window (1 s here) have
/// both passed, a copy is still not stored: it is refused as too old. The checks are
/// timed from the id's own time, so a slow drain on a loaded machine does not move them
/// past the horizon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_sent_after_every_duplicate_window_is_refused_as_too_old() {
    let mesh = Mesh::start(MeshOpts {
        edge_toml: "[outbox]\nid_horizon = \"8s\"\n".into(),
        central_toml: "[events]\nduplicate_window = \"1s\"\n".into(),
        ..MeshOpts::default()
    })
    .await;
    let a1 = mesh.agent("a1").await;
    let a2 = mesh.agent("a2").await;
    let x = Uuid::now_v7();
    let made = tokio::time::Instant::now();
    acked(send(&a1, vec![event(Some(x), "a1's")]).await);
    acked(send(&a2, vec![event(Some(x), "a2's")]).await);
    mesh.drained_events().await;

    // Past the centre's window, within the edge's horizon: a duplicate.
    tokio::time::sleep_until(made + Duration::from_millis(1500)).await;
    assert!(
        made.elapsed() < Duration::from_secs(6),
        "too slow to check within the horizon: {:?}",
        made.elapsed()
    );
    for a in [&a1, &a2] {
        refused(
            send(a, vec![event(Some(x), "copy")]).await,
            ErrorCode::Duplicate,
            &[&x.to_string()],
        );
    }
    // Past both (the horizon counts whole seconds of id time): too old, naming it.
    tokio::time::sleep_until(made + Duration::from_millis(9500)).await;
    for a in [&a1, &a2] {
        refused(
            send(a, vec![event(Some(x), "copy")]).await,
            ErrorCode::Invalid,
            &["outbox.id_horizon (8s)"],
        );
    }
    // Refused ids are not acked-and-dropped: a new id is stored at once.
    acked(send(&a1, vec![event(None, "later")]).await);
    let events = mesh.drained_events().await;
    assert_eq!(events.len(), 3, "{events:?}");
    for a in ["a1", "a2"] {
        assert_eq!(
            events.iter().filter(|e| e.id == x && e.agent == a).count(),
            1,
            "{a}'s event with the id is stored once"
        );
    }
}

/// The ids are durable with their events: after a `kill -9` of the edge hub, a stored id
/// (supplied, or assigned by the edge and read back) is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_ids_are_refused_after_a_kill_9_and_restart() {
    let mut mesh = Mesh::start(MeshOpts::default()).await;
    let a1 = mesh.agent("a1").await;
    let x = Uuid::now_v7();
    acked(
        send(
            &a1,
            vec![event(Some(x), "supplied"), event(None, "assigned")],
        )
        .await,
    );
    let events = mesh.drained_events().await;
    let assigned = events.iter().find(|e| e.seq == 2).expect("seq 2").id;
    assert_ne!(assigned, x);
    mesh.edge_hub().kill();
    mesh.edge_hub().start();

    for id in [x, assigned] {
        refused(
            send(&a1, vec![event(Some(id), "copy")]).await,
            ErrorCode::Duplicate,
            &[&id.to_string()],
        );
    }
    acked(send(&a1, vec![event(Some(Uuid::now_v7()), "new")]).await);
    wait_for("3 events in all", || async {
        mesh.kit()
            .stream_messages(schemas::subject::STREAM_EVENTS)
            .await
            == Some(3)
    })
    .await;
}

/// In binary mode a `ce-id` or `ce-time` that does not parse is refused, naming the
/// header; it used to be replaced silently by the edge's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_headers_that_do_not_parse_are_refused() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let a1 = mesh.agent("a1").await;
    for (name, value) in [(h::ID, "not-a-uuid"), (h::TIME, "yesterday")] {
        let mut hm = HeaderMap::new();
        hm.insert(h::SPECVERSION, "1.0");
        hm.insert(h::TYPE, "t");
        hm.insert(h::SUBJECT, "ids.test");
        hm.insert(name, value);
        let reply = a1
            .client()
            .request_with_headers(schemas::subject::ingest("e1", "a1"), hm, "x".into())
            .await
            .unwrap();
        refused(
            IngestReply::decode(&reply.payload).unwrap(),
            ErrorCode::Invalid,
            &[name, value],
        );
    }
    // Nothing was stored: the next event is the edge's first.
    let mut hm = HeaderMap::new();
    hm.insert(h::SPECVERSION, "1.0");
    hm.insert(h::TYPE, "t");
    hm.insert(h::SUBJECT, "ids.test");
    let reply = a1
        .client()
        .request_with_headers(schemas::subject::ingest("e1", "a1"), hm, "x".into())
        .await
        .unwrap();
    assert_eq!(acked(IngestReply::decode(&reply.payload).unwrap()), (1, 1));
}
