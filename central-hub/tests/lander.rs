//! The lander trusts nothing it receives: a forged or inconsistent bundle goes to
//! `MESH_DLQ` and moves no mark, and a bad message on one edge's subjects holds that edge
//! alone. Each against a real nats-server, with a central hub in-process; the forged
//! bundles are plain JetStream publishes to `mesh.up.<edge>`, as anyone on the
//! (insecure) mesh can make them.

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use schemas::audit::{self, AuditEvent, AuditRecord};
use schemas::{headers as h, subject, Bundle};
use support::{bundle, events, http_get, messages, send, start_hub, wait_for, Hub};

/// Publishes `b` to `mesh.up.<to>` with only a de-duplication id `id` (no range headers,
/// no `mesh-missing`): what a forger sends.
async fn forge(js: &jetstream::Context, to: &str, id: &str, b: &Bundle) {
    let mut hs = HeaderMap::new();
    hs.insert(h::NATS_MSG_ID, id);
    js.publish_with_headers(subject::up(to), hs, b.encode().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn audit_records(js: &jetstream::Context) -> Vec<AuditEvent> {
    audit::read_all(js, subject::STREAM_AUDIT)
        .await
        .unwrap()
        .iter()
        .filter_map(|(_, p)| AuditRecord::decode(p).ok()?.event().ok())
        .collect()
}

async fn refused(hub: &Hub, edge: &str, reason: &str) -> f64 {
    hub.metric(&format!(
        "mesh_central_refused_bundles_total{{edge=\"{edge}\",reason=\"{reason}\"}}"
    ))
    .await
}

/// Regression: a hand-made bundle claiming `1..=2^63` with no event moved the mark of its
/// edge to 2^63, and every later real event of that edge was skipped. Now each forged or
/// inconsistent bundle — a count that does not fill the range, the subject's edge not
/// the bundle's, an event of another edge, sequences out of order, an event failing the
/// schema checks, missing sequences not declared — goes to `MESH_DLQ` with its reason and
/// is counted, no mark moves, and the real events of both edges that follow all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bundles_go_to_the_dlq_and_move_no_mark() {
    let mut hub = start_hub("t-forged").await;
    hub.land("a1", 1, 2).await;
    send(&hub.js, &bundle("e2", "a2", 1, 1)).await;
    wait_for("e2's first event", || async { events(&hub.js).await == 3 }).await;

    let mut huge = bundle("e1", "x", 3, 3);
    huge.last_seq = 1 << 63;
    huge.events.clear();
    let mut other_event_edge = bundle("e1", "x", 3, 4);
    other_event_edge.events[1].edge = "e2".into();
    let mut out_of_order = bundle("e1", "x", 3, 5);
    out_of_order.events.swap(1, 2);
    let mut bad_subject = bundle("e1", "x", 3, 3);
    bad_subject.events[0].subject = "jobs..run".into();
    let mut undeclared_hole = bundle("e1", "x", 3, 5);
    undeclared_hole.events.remove(0);
    let mut unknown_edge = bundle("e7", "x", 1, 2);
    unknown_edge.events.pop();
    let forged: Vec<(&str, Bundle, &str, &str, &str)> = vec![
        (
            "e1",
            huge,
            "e1",
            "count",
            "bundle claims 3..=9223372036854775808 but holds 0 events",
        ),
        (
            "e2",
            bundle("e1", "x", 2, 2),
            "e2",
            "edge-mismatch",
            "bundle subject edge e2 but bundle edge \"e1\"",
        ),
        (
            "e1",
            other_event_edge,
            "e1",
            "edge-mismatch",
            "is from edge \"e2\" but bundle edge e1",
        ),
        (
            "e1",
            out_of_order,
            "e1",
            "sequence",
            "has seq 5, expected 4",
        ),
        ("e1", bad_subject, "e1", "invalid-event", "empty token"),
        (
            "e1",
            undeclared_hole,
            "e1",
            "count",
            "bundle claims 3..=5 but holds 2 events",
        ),
        ("e7", unknown_edge, "_unknown", "count", "holds 1 events"),
    ];
    for (i, (to, b, _, _, _)) in forged.iter().enumerate() {
        forge(&hub.js, to, &format!("forged-{i}"), b).await;
    }
    wait_for("every forged bundle dead-lettered", || async {
        messages(&hub.js, subject::STREAM_DLQ).await == forged.len() as u64
    })
    .await;

    let dlq = hub.js.get_stream(subject::STREAM_DLQ).await.unwrap();
    for (i, (to, _, _, _, needle)) in forged.iter().enumerate() {
        let m = dlq.get_raw_message(i as u64 + 1).await.unwrap();
        assert_eq!(m.subject.as_str(), subject::dlq(to, "_bundle"));
        let reason = m.headers.get(h::DLQ_REASON).unwrap().as_str();
        assert!(
            reason.starts_with("bad-bundle: ") && reason.contains(needle),
            "forged bundle {i}: {reason}"
        );
    }
    let mut want = std::collections::BTreeMap::new();
    for (_, _, edge, reason, _) in &forged {
        *want.entry((*edge, *reason)).or_insert(0.0) += 1.0;
    }
    for ((edge, reason), n) in want {
        assert_eq!(refused(&hub, edge, reason).await, n, "{edge} {reason}");
    }
    let dead_lettered = audit_records(&hub.js)
        .await
        .into_iter()
        .filter(
            |e| matches!(e, AuditEvent::DeadLettered(d) if d.reason.starts_with("bad-bundle: ")),
        )
        .count();
    assert_eq!(dead_lettered, forged.len());

    // No mark moved: the real events that follow all land, none skipped.
    send(&hub.js, &bundle("e1", "a1", 3, 5)).await;
    send(&hub.js, &bundle("e2", "a2", 2, 3)).await;
    wait_for("e2's events", || async { events(&hub.js).await == 8 }).await;
    for edge in ["e1", "e2"] {
        let skipped = format!("mesh_central_skipped_events_total{{edge=\"{edge}\"}}");
        assert_eq!(hub.metric(&skipped).await, 0.0, "{edge}");
    }
    assert_eq!(
        hub.metric("mesh_central_lander_mark{edge=\"e1\"}").await,
        5.0
    );
    assert_eq!(messages(&hub.js, subject::STREAM_INGRESS).await, 0);
    hub.shut_down().await;
}

/// Regression: one message with `ce-meshseq: not-a-number` on `mesh.evt.<edge>.x` made the
/// mark of that edge unreadable, and the lander was reported to stop for every edge while
/// `/health/ready` stayed 200 with nothing to show. Now only that edge is held: its
/// bundles wait (none lands, none is skipped), the other edge's 20 events land at once,
/// the hold is counted, audited and named by `/health/ready` (still 200: the hub lands
/// for everyone else). Once the bad message is removed the held edge lands and the hold
/// is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_mark_holds_its_edge_alone() {
    let mut hub = start_hub("t-poison").await;
    let mut hs = HeaderMap::new();
    hs.insert(h::MESH_SEQ, "not-a-number");
    let poison = hub
        .js
        .publish_with_headers(subject::evt("e9", "x"), hs, "poison".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    send(&hub.js, &bundle("e9", "a9", 1, 2)).await;

    let started = Instant::now();
    for seq in 1..=20 {
        send(&hub.js, &bundle("e1", "a1", seq, seq)).await;
    }
    wait_for("e1's 20 events", || async { events(&hub.js).await == 21 }).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "e1 took {:?}",
        started.elapsed()
    );

    wait_for("e9 held", || async {
        hub.metric("mesh_central_lander_edge_held{edge=\"e9\"}")
            .await
            == 1.0
    })
    .await;
    assert!(
        hub.metric("mesh_central_held_bundles_total{edge=\"e9\"}")
            .await
            >= 1.0
    );
    let (code, body) = http_get(hub.http, "/health/ready").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("ready, degraded\n")
            && body.contains("held edge e9: ")
            && body.contains("\"not-a-number\""),
        "{body}"
    );
    wait_for("the hold in the audit log", || async {
        audit_records(&hub.js).await.iter().any(|e| {
            matches!(e, AuditEvent::LanderEdgeHeld(held)
                if held.edge == "e9" && held.seq == Some(poison) && held.reason.contains("not-a-number"))
        })
    })
    .await;
    assert_eq!(events(&hub.js).await, 21, "nothing of e9 landed");
    assert_eq!(
        hub.metric("mesh_central_skipped_events_total{edge=\"e1\"}")
            .await,
        0.0
    );

    // Remove the bad message: e9 lands from its true mark, and the hold is released.
    let stream = hub.js.get_stream(subject::STREAM_EVENTS).await.unwrap();
    stream.delete_message(poison).await.unwrap();
    wait_for("e9's events", || async { events(&hub.js).await == 22 }).await;
    wait_for("e9 released", || async {
        hub.metric("mesh_central_lander_edge_held{edge=\"e9\"}")
            .await
            == 0.0
    })
    .await;
    assert_eq!(
        http_get(hub.http, "/health/ready").await,
        (200, "ready\n".into())
    );
    wait_for("the release in the audit log", || async {
        audit_records(&hub.js).await.iter().any(
            |e| matches!(e, AuditEvent::LanderEdgeReleased(r) if r.edge == "e9" && r.mark == 0),
        )
    })
    .await;
    assert_eq!(
        hub.metric("mesh_central_skipped_events_total{edge=\"e9\"}")
            .await,
        0.0
    );
    hub.shut_down().await;
}
