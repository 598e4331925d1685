//! Client-supplied `ce-id`s and the centre: an event is named by `ce-source` + `ce-id`
//! (CloudEvents), so two agents may send the same id, and the centre must store both
//! without stalling anyone.

mod support;

use std::time::Duration;

use schemas::NewEvent;
use support::{Mesh, MeshOpts};
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
