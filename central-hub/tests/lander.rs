//! The lander trusts nothing it receives: a forged or inconsistent bundle goes to
//! `MESH_DLQ` and moves no mark, and a bad message on one edge's subjects holds that edge
//! alone. Each against a real nats-server, with a central hub in-process; the forged
//! bundles are plain JetStream publishes to `mesh.up.<edge>`, as anyone on the
//! (insecure) mesh can make them. And bundles that arrive out of order (a failover's
//! redeliveries) are kept in hand and land in order, exactly once, without gap waits;
//! the pinned lander keeps its pin while it lands, and a backlog of small bundles lands
//! in runs.

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::StreamExt;
use schemas::audit::{self, AuditEvent, AuditRecord};
use schemas::{headers as h, subject, Bundle};
use support::{
    bundle, events, http_get, hub_config, hub_on, landed, mark_revision, messages, send, send_all,
    seqs_of, start_hub, start_hub_with, wait_for, Hub, DEADLINE,
};

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

/// A seeded xorshift shuffle: a repeatable order without a dependency.
fn shuffled(mut xs: Vec<u64>, seed: u64) -> Vec<u64> {
    let mut state = seed;
    for i in (1..xs.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        xs.swap(i, (state % (i as u64 + 1)) as usize);
    }
    xs
}

async fn gap_waits(hub: &Hub, edge: &str) -> f64 {
    hub.metric(&format!("mesh_central_gap_waits_total{{edge=\"{edge}\"}}"))
        .await
}

async fn in_hand(hub: &Hub, edge: &str) -> f64 {
    hub.metric(&format!("mesh_central_lander_in_hand{{edge=\"{edge}\"}}"))
        .await
}

/// Regression: after a failover ~1,000 redelivered bundles arrived behind fresh ones, and
/// every bundle ahead of a gap was nakked for 200 ms (a gap wait), so landing crawled at
/// ~50 events/s for minutes. Now 300 bundles of e1 in a shuffled order (with e2's in
/// order between them) are kept in hand and land as the gaps close: every event exactly
/// once, in per-edge order, and not one gap wait (the old lander counted one for every
/// bundle that arrived ahead of its turn, the very first one included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_bundles_land_in_order_from_the_hand_without_gap_waits() {
    let mut hub = start_hub("t-hand").await;
    let order = shuffled((1..=300).collect(), 0x5eed_cafe);
    assert_ne!(order[0], 1, "the first bundle must arrive ahead of a gap");
    let mut e2 = 0;
    for (i, &seq) in order.iter().enumerate() {
        send(&hub.js, &bundle("e1", "a1", seq, seq)).await;
        if i % 3 == 0 {
            e2 += 1;
            send(&hub.js, &bundle("e2", "a2", e2, e2)).await;
        }
    }
    wait_for("every event landed", || async {
        events(&hub.js).await == 300 + e2
    })
    .await;
    let all = landed(&hub.js).await;
    assert_eq!(seqs_of(&all, "e1"), (1..=300).collect::<Vec<_>>());
    assert_eq!(seqs_of(&all, "e2"), (1..=e2).collect::<Vec<_>>());
    assert_eq!(gap_waits(&hub, "e1").await, 0.0);
    assert_eq!(gap_waits(&hub, "e2").await, 0.0);
    assert!(
        hub.metric("mesh_central_landed_from_hand_bundles_total{edge=\"e1\"}")
            .await
            > 0.0
    );
    assert_eq!(in_hand(&hub, "e1").await, 0.0);
    wait_for("every bundle acked", || async {
        messages(&hub.js, subject::STREAM_INGRESS).await == 0
    })
    .await;
    hub.shut_down().await;
}

/// Bundles in hand are the lander's until it lands them: when it shuts down it gives
/// them back (nak), and the next lander on the stream takes them and lands each exactly
/// once, in order, when the missing bundle comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_in_hand_of_a_stopped_lander_land_once_on_the_next() {
    let mut first = start_hub("t-hand-stop").await;
    for seq in 2..=40 {
        send(&first.js, &bundle("e1", "a1", seq, seq)).await;
    }
    wait_for("39 bundles in hand", || async {
        in_hand(&first, "e1").await == 39.0
    })
    .await;
    assert_eq!(events(&first.js).await, 0, "nothing landed past the gap");
    first.shut_down().await;

    let mut second = hub_on(&first.url, hub_config()).await;
    send(&second.js, &bundle("e1", "a1", 1, 1)).await;
    wait_for("every event landed", || async {
        events(&second.js).await == 40
    })
    .await;
    wait_for("every bundle acked", || async {
        messages(&second.js, subject::STREAM_INGRESS).await == 0
    })
    .await;
    let all = landed(&second.js).await;
    assert_eq!(seqs_of(&all, "e1"), (1..=40).collect::<Vec<_>>());
    assert_eq!(all.len(), 40);
    second.shut_down().await;
}

/// The hand is bounded: with room for 4 bundles, the 15 others ahead of the gap are put
/// back for `gap_retry` (counted as gap waits) and come again; once the missing bundle
/// comes everything lands, once and in order, and the hand is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_bound_of_the_hand_bundles_wait_and_still_land_in_order() {
    let mut cfg = hub_config();
    cfg.lander.hand_bundles = 4;
    let mut hub = start_hub_with("t-hand-bound", cfg).await;
    for seq in 2..=20 {
        send(&hub.js, &bundle("e1", "a1", seq, seq)).await;
    }
    wait_for("the hand full and the rest put back", || async {
        in_hand(&hub, "e1").await == 4.0 && gap_waits(&hub, "e1").await >= 15.0
    })
    .await;
    assert_eq!(events(&hub.js).await, 0);
    send(&hub.js, &bundle("e1", "a1", 1, 1)).await;
    wait_for("every event landed", || async {
        events(&hub.js).await == 20
    })
    .await;
    wait_for("every bundle acked", || async {
        messages(&hub.js, subject::STREAM_INGRESS).await == 0
    })
    .await;
    assert_eq!(
        seqs_of(&landed(&hub.js).await, "e1"),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(in_hand(&hub, "e1").await, 0.0);
    hub.shut_down().await;
}

async fn landed_events(hub: &Hub, edge: &str) -> f64 {
    hub.metric(&format!(
        "mesh_central_landed_events_total{{edge=\"{edge}\"}}"
    ))
    .await
}

/// Regression: the lander pulled only between bundles, so while it landed a long chain
/// from the hand it sent no pull request; after `pin_timeout` the server pinned the
/// standby hub, both hubs landed, each held part of the bundles ahead of the other's gap,
/// and landing crawled. Now pulling goes on while the lander lands: hub 1, pinned, lands
/// a chain of 500 bundles (10,000 events) that the missing bundle closes at once, while
/// more bundles keep coming; hub 2, on standby with the same short `pin_timeout`
/// (500 ms), lands nothing, and every event lands exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_lander_keeps_the_pin_while_it_lands_a_long_chain() {
    const PER: u64 = 20;
    const CHAIN: u64 = 500;
    let mut cfg = hub_config();
    cfg.lander.pin_timeout = Duration::from_millis(500);
    let mut first = start_hub_with("t-pin", cfg.clone()).await;
    // Hub 1 lands the first bundle alone: the pin is its own.
    first.land("a1", 1, 1).await;
    let mut second = hub_on(
        &first.url,
        central_hub::CentralConfig {
            hub_id: "t1".into(),
            ..cfg
        },
    )
    .await;

    // The missing bundle is 2..=21; the chain behind it 22..=10021, kept in hand.
    let chain_last = 1 + PER + CHAIN * PER;
    send_all(
        &first.js,
        (0..CHAIN).map(|k| bundle("e1", "a1", 2 + PER * (k + 1), 1 + PER * (k + 2))),
    )
    .await;
    wait_for("the chain in hand", || async {
        in_hand(&first, "e1").await == CHAIN as f64
    })
    .await;
    assert_eq!(events(&first.js).await, 1, "nothing landed past the gap");

    // Close the gap, and keep sending while the chain lands (at most 1,000 bundles).
    send(&first.js, &bundle("e1", "a1", 2, 1 + PER)).await;
    let mut last = chain_last;
    let deadline = Instant::now() + DEADLINE;
    while events(&first.js).await < chain_last && last < chain_last + 1000 * PER {
        assert!(Instant::now() < deadline, "timed out waiting for the chain");
        send(&first.js, &bundle("e1", "a1", last + 1, last + PER)).await;
        last += PER;
    }
    for _ in 0..20 {
        send(&first.js, &bundle("e1", "a1", last + 1, last + PER)).await;
        last += PER;
    }
    wait_for("every event landed", || async {
        events(&first.js).await == last
    })
    .await;
    wait_for("every bundle acked", || async {
        messages(&first.js, subject::STREAM_INGRESS).await == 0
    })
    .await;
    let all = landed(&first.js).await;
    assert_eq!(seqs_of(&all, "e1"), (1..=last).collect::<Vec<_>>());
    assert_eq!(landed_events(&first, "e1").await, last as f64);
    assert_eq!(landed_events(&second, "e1").await, 0.0, "hub 2 landed");
    assert_eq!(in_hand(&second, "e1").await, 0.0);
    second.shut_down().await;
    first.shut_down().await;
}

/// Landing one bundle at a time cost a store round trip and a mark write (an R3 raft
/// commit in a cluster) per bundle, so a backlog of single-event bundles never caught up.
/// Now the consecutive bundles of an edge waiting together land as one run: 2,000
/// single-event bundles waiting at once land exactly once, in order, each counted, with
/// one mark write per run and far fewer runs than bundles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_small_bundles_lands_in_runs_exactly_once_and_in_order() {
    const N: u64 = 2000;
    let mut first = start_hub("t-runs").await;
    // The streams exist and nobody lands: the backlog waits whole.
    first.shut_down().await;
    send_all(&first.js, (1..=N).map(|s| bundle("e1", "a1", s, s))).await;

    let mut hub = hub_on(&first.url, hub_config()).await;
    wait_for("every event landed", || async {
        events(&hub.js).await == N
    })
    .await;
    wait_for("every bundle acked", || async {
        messages(&hub.js, subject::STREAM_INGRESS).await == 0
    })
    .await;
    assert_eq!(
        seqs_of(&landed(&hub.js).await, "e1"),
        (1..=N).collect::<Vec<_>>()
    );
    assert_eq!(landed_events(&hub, "e1").await, N as f64);
    assert_eq!(
        hub.metric("mesh_central_landed_bundles_total{edge=\"e1\"}")
            .await,
        N as f64
    );
    assert_eq!(
        hub.metric("mesh_central_lander_mark{edge=\"e1\"}").await,
        N as f64
    );
    let runs = hub
        .metric("mesh_central_lander_runs_total{edge=\"e1\"}")
        .await;
    assert!(runs * 8.0 <= N as f64, "{runs} runs for {N} bundles");
    // The KV catches up with the mark, in at most one write per run (coalesced).
    wait_for("the mark in the KV", || async {
        kv_mark(&hub.js, "e1").await == Some(N)
    })
    .await;
    let writes = mark_revision(&hub.js, "e1").await;
    assert!(
        writes as f64 <= runs,
        "{writes} mark writes for {runs} runs"
    );
    hub.shut_down().await;
}

/// The value of `edge`'s key in `MESH_LANDER`, if it can be read.
async fn kv_mark(js: &jetstream::Context, edge: &str) -> Option<u64> {
    let kv = js.get_key_value(subject::BUCKET_LANDER).await.ok()?;
    let e = kv.entry(edge).await.ok()??;
    e.value.as_ref().try_into().ok().map(u64::from_be_bytes)
}

/// The KV of marks is off the landing path, except where only it can hold the mark. With
/// the `MESH_LANDER` bucket gone (its raft group electing, on a cluster), runs that end
/// in a stored event land and are acked: the stream holds their mark. A run that ends in
/// a sequence with no event (expelled at the edge) is not acked while its mark cannot be
/// written, so nothing moves past it unrecorded; with the bucket back it lands, and the
/// KV catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landing_waits_for_the_kv_only_where_only_the_kv_holds_the_mark() {
    let mut hub = start_hub("t-kv-away").await;
    send_all(&hub.js, (1..=10).map(|s| bundle("e1", "a1", s, s))).await;
    wait_for("ten events landed, their mark in the KV", || async {
        events(&hub.js).await == 10 && kv_mark(&hub.js, "e1").await == Some(10)
    })
    .await;
    let config = {
        let mut s = hub.js.get_stream("KV_MESH_LANDER").await.unwrap();
        s.info().await.unwrap().config.clone()
    };
    hub.js
        .delete_key_value(subject::BUCKET_LANDER)
        .await
        .unwrap();

    send_all(&hub.js, (11..=20).map(|s| bundle("e1", "a1", s, s))).await;
    wait_for("ten more landed and acked without the KV", || async {
        events(&hub.js).await == 20 && messages(&hub.js, subject::STREAM_INGRESS).await == 0
    })
    .await;

    // Sequence 21 was expelled at the edge: its bundle carries no event.
    let empty = Bundle {
        events: Vec::new(),
        ..bundle("e1", "a1", 21, 21)
    };
    send(&hub.js, &empty).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        messages(&hub.js, subject::STREAM_INGRESS).await,
        1,
        "a run ending in an empty range was acked while its mark could not be written"
    );

    hub.js.create_stream(config).await.unwrap();
    wait_for("the empty range landed, its mark in the KV", || async {
        messages(&hub.js, subject::STREAM_INGRESS).await == 0
            && kv_mark(&hub.js, "e1").await == Some(21)
    })
    .await;
    send(&hub.js, &bundle("e1", "a1", 22, 22)).await;
    wait_for("the next event", || async { events(&hub.js).await == 21 }).await;
    assert_eq!(
        seqs_of(&landed(&hub.js).await, "e1"),
        (1..=20).chain([22]).collect::<Vec<_>>()
    );
    wait_for("the KV caught up", || async {
        kv_mark(&hub.js, "e1").await == Some(22)
    })
    .await;
    hub.shut_down().await;
}

/// Not a check: how long 20,000 single-event bundles waiting at once take to land on one
/// server. `cargo test -p central-hub --test lander -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_of_a_backlog_of_single_event_bundles() {
    const N: u64 = 20_000;
    let mut first = start_hub("t-throughput").await;
    first.shut_down().await;
    send_all(&first.js, (1..=N).map(|s| bundle("e1", "a1", s, s))).await;
    let started = Instant::now();
    let mut hub = hub_on(&first.url, hub_config()).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while events(&hub.js).await < N {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    println!(
        "{N} single-event bundles landed in {took:?}: {:.0} bundles/s, {} mark writes",
        N as f64 / took.as_secs_f64(),
        mark_revision(&hub.js, "e1").await
    );
    hub.shut_down().await;
}

/// Regression (a 3-node centre, the node of the landing hub killed): a bundle delivered
/// on a connection that is gone comes back only after `ack_wait`, so every bundle behind
/// it waited in hand that long. Now the lander reads the missing bundle straight from
/// `MESH_INGRESS` (the work queue still holds it) and lands it; its late delivery is a
/// duplicate. Here `ack_wait` is 120 s, far past the test's deadline: only the read lands
/// bundle 1 in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_whose_delivery_is_out_is_landed_from_the_work_queue() {
    let mut cfg = hub_config();
    // Past the test's deadline, and so is `ack_wait / 2`, when bundles in hand used to
    // be looked at first.
    cfg.lander.ack_wait = Duration::from_secs(120);
    cfg.lander.pin_timeout = Duration::from_secs(1);
    let mut first = start_hub_with("t-late", cfg.clone()).await;
    first.shut_down().await;
    // The "old connection": a client pulls bundle 1 in the landers' group and vanishes
    // with it unacked.
    send(&first.js, &bundle("e1", "a1", 1, 1)).await;
    let consumer: jetstream::consumer::PullConsumer = first
        .js
        .get_stream(subject::STREAM_INGRESS)
        .await
        .unwrap()
        .get_consumer(central_hub::lander::CONSUMER)
        .await
        .unwrap();
    // The stopped hub's pin lasts `pin_timeout`; pull until this client has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let taken = consumer
            .stream()
            .group(central_hub::lander::GROUP)
            .max_messages_per_batch(1)
            .expires(Duration::from_millis(500))
            .heartbeat(Duration::from_millis(200))
            .messages()
            .await;
        let next = match taken {
            Ok(mut t) => t.next().await.map(|r| r.map_err(|e| e.to_string())),
            Err(e) => Some(Err(e.to_string())),
        };
        match next {
            Some(Ok(m)) => break m,
            other => assert!(Instant::now() < deadline, "cannot pull bundle 1: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(out.subject.as_str(), subject::up("e1"));
    for seq in 2..=40 {
        send(&first.js, &bundle("e1", "a1", seq, seq)).await;
    }
    // Once the vanished client's pin times out, a hub is pinned and gets 2..=40.
    let second = hub_on(&first.url, cfg).await;
    wait_for("every event landed", || async {
        events(&second.js).await == 40
    })
    .await;
    let all = landed(&second.js).await;
    assert_eq!(seqs_of(&all, "e1"), (1..=40).collect::<Vec<_>>());
    assert_eq!(
        second
            .metric("mesh_central_landed_late_bundles_total{edge=\"e1\"}")
            .await,
        1.0
    );
    drop(out);
}

/// A store that fails (here `MESH_EVENTS` refusing every new message, as a stream with no
/// leader refuses them) keeps the bundles in hand instead of giving them back: nothing
/// lands meanwhile, nothing is redelivered out of order, and once the stream takes
/// messages again the bundles land from the hand, in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_whose_store_failed_are_kept_in_hand_and_land_in_order() {
    let mut hub = start_hub("t-store-fails").await;
    send_all(&hub.js, (1..=10).map(|s| bundle("e1", "a1", s, s))).await;
    wait_for("ten events landed", || async {
        events(&hub.js).await == 10
    })
    .await;

    let mut stream = hub.js.get_stream(subject::STREAM_EVENTS).await.unwrap();
    let open = stream.info().await.unwrap().config.clone();
    let mut full = open.clone();
    full.max_messages = 10;
    full.discard = jetstream::stream::DiscardPolicy::New;
    hub.js.update_stream(&full).await.unwrap();

    send_all(&hub.js, (11..=60).map(|s| bundle("e1", "a1", s, s))).await;
    wait_for("the bundles in hand", || async {
        hub.metric("mesh_central_lander_in_hand{edge=\"e1\"}").await > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        events(&hub.js).await,
        10,
        "nothing lands while the stream refuses"
    );
    assert_eq!(messages(&hub.js, subject::STREAM_INGRESS).await, 50);

    hub.js.update_stream(&open).await.unwrap();
    wait_for("every event landed and acked", || async {
        events(&hub.js).await == 60 && messages(&hub.js, subject::STREAM_INGRESS).await == 0
    })
    .await;
    assert_eq!(
        seqs_of(&landed(&hub.js).await, "e1"),
        (1..=60).collect::<Vec<_>>()
    );
    assert!(
        hub.metric("mesh_central_landed_from_hand_bundles_total{edge=\"e1\"}")
            .await
            > 0.0,
        "the bundles of the failed store landed from the hand"
    );
    assert_eq!(gap_waits(&hub, "e1").await, 0.0);
    hub.shut_down().await;
}

/// A run is stored as one chain: the stream takes an event only right after the one
/// before it. Here `MESH_EVENTS` refuses one event in the middle of a run (too large
/// for it, as a leader change loses one): nothing after it is stored either, so nothing
/// lands past the gap; once the stream takes it, the rest lands, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_after_an_event_the_stream_refused_is_stored() {
    let mut hub = start_hub("t-chain").await;
    send_all(&hub.js, (1..=10).map(|s| bundle("e1", "a1", s, s))).await;
    wait_for("ten events landed", || async {
        events(&hub.js).await == 10
    })
    .await;

    let mut stream = hub.js.get_stream(subject::STREAM_EVENTS).await.unwrap();
    let open = stream.info().await.unwrap().config.clone();
    let mut small = open.clone();
    small.max_message_size = 2048;
    hub.js.update_stream(&small).await.unwrap();

    let mut b = bundle("e1", "a1", 11, 20);
    b.events[4].data = vec![b'x'; 4096].into(); // event 15
    send(&hub.js, &b).await;
    wait_for("a broken chain", || async {
        hub.metric("mesh_central_lander_broken_chains_total{edge=\"e1\"}")
            .await
            >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        seqs_of(&landed(&hub.js).await, "e1"),
        (1..=14).collect::<Vec<_>>(),
        "events after the refused one were stored"
    );
    assert_eq!(messages(&hub.js, subject::STREAM_INGRESS).await, 1);

    hub.js.update_stream(&open).await.unwrap();
    wait_for("every event landed and acked", || async {
        events(&hub.js).await == 20 && messages(&hub.js, subject::STREAM_INGRESS).await == 0
    })
    .await;
    assert_eq!(
        seqs_of(&landed(&hub.js).await, "e1"),
        (1..=20).collect::<Vec<_>>()
    );
    hub.shut_down().await;
}
