//! Clear refusal (G7) and graceful shutdown: bad input gets an error naming the problem,
//! nothing accepted before or after is lost, and a SIGTERM loses nothing acked.

mod support;

use std::time::Duration;

use agents::AgentError;
use chaos::{produce, AgentLog, Verdict};
use schemas::{ErrorCode, IngestRequest, NewEvent};
use support::{Mesh, MeshOpts};
use tokio_util::sync::CancellationToken;

fn refused(r: Result<agents::Ack, AgentError>) -> (ErrorCode, String) {
    match r {
        Err(AgentError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A malformed body, an oversized event, invalid subjects and a bad type each get an
/// error reply naming the problem; the events accepted before and after all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_named_reason() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("a1").await;
    let mut log = AgentLog::new("a1");
    let good = |n: u64| {
        let data = chaos::producer::payload("a1", n, 32);
        let ev = NewEvent::new("t", "ok.subject", data.clone());
        (ev.id.unwrap(), data, ev)
    };
    let (id, data, ev) = good(0);
    let r = agent.publish_event(ev).await;
    log.record(id, data, &r);

    let (code, msg) = refused(
        agent
            .request(bytes::Bytes::from_static(b"\xc1 not msgpack"))
            .await,
    );
    assert_eq!(code, ErrorCode::Malformed);
    assert!(msg.contains("cannot decode ingest request"), "{msg}");

    let big = NewEvent::new("t", "ok.subject", vec![7u8; 600 * 1024]);
    let (code, msg) = refused(agent.publish_event(big).await);
    assert_eq!(code, ErrorCode::Oversized);
    assert!(
        msg.contains("events[0].data is 614400 bytes, over the limit of 524288"),
        "{msg}"
    );

    for (subject, needle) in [
        ("a..b", "empty token"),
        ("a.*", "wildcard"),
        ("a b", "whitespace"),
        ("", "is empty"),
    ] {
        let (code, msg) = refused(agent.publish("t", subject, "x").await);
        assert_eq!(code, ErrorCode::Invalid, "{subject:?}");
        assert!(
            msg.contains("events[0].subject") && msg.contains(needle),
            "{subject:?}: {msg}"
        );
    }
    // One bad event refuses the whole batch: nothing of it is stored.
    let batch = vec![
        NewEvent::new("t", "ok.one", "1"),
        NewEvent::new("", "ok.two", "2"),
    ];
    let ids: Vec<_> = batch.iter().map(|e| e.id.unwrap()).collect();
    let (code, msg) = refused(agent.publish_batch(batch).await);
    assert_eq!(code, ErrorCode::Invalid);
    assert!(msg.contains("events[1].ty is empty"), "{msg}");
    for id in ids {
        log.refused.push((id, msg.clone()));
    }
    let empty = IngestRequest { events: vec![] }.encode().unwrap();
    let (code, msg) = refused(agent.request(empty.into()).await);
    assert_eq!(code, ErrorCode::Malformed);
    assert!(msg.contains("no event"), "{msg}");

    let (id, data, ev) = good(1);
    let r = agent.publish_event(ev).await;
    log.record(id, data, &r);
    let events = mesh.drained_events().await;
    let v = Verdict::judge(&[log], &events);
    assert!(v.ok(), "{v}: {v:?}");
    assert_eq!((v.acked, v.delivered), (2, 2));
    assert!(
        mesh.edge_metric("mesh_edge_rejected_requests")
            .unwrap_or(0.0)
            >= 1.0
    );
}

/// With the link cut, a small outbox fills up: under `reject` the next publish is
/// refused with `outbox_full` (naming the sizes) and nothing is dropped; after the heal
/// the backlog drains and publishing works again. Every acked event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbox_rejects_and_recovers() {
    let mesh = Mesh::start(MeshOpts {
        // One agent may fill it all (no quota): this is about the outbox filling.
        edge_toml: "[ingest]\nmax_event_bytes = 65536\n[outbox]\nmax_bytes = 200000\n[limits]\noutbox_share = 1.0\n".into(),
        ..MeshOpts::default()
    })
    .await;
    mesh.proxy().cut();
    mesh.wait_uplink(false).await;
    let agent = mesh.agent("a1").await;
    let mut log = AgentLog::new("a1");
    let mut refusal = None;
    for n in 0..2_000u64 {
        let data = chaos::producer::payload("a1", n, 1024);
        let ev = NewEvent::new("t", "fill.up", data.clone());
        let id = ev.id.unwrap();
        let r = agent.publish_event(ev).await;
        if let Err(AgentError::Refused { code, message }) = &r {
            refusal = Some((*code, message.clone()));
            log.record(id, data, &r);
            break;
        }
        log.record(id, data, &r);
    }
    let (code, msg) = refusal.expect("the outbox never filled");
    assert_eq!(code, ErrorCode::OutboxFull);
    assert!(
        msg.contains("outbox full") && msg.contains("of 200000 bytes"),
        "{msg}"
    );
    assert!(log.acked.len() > 100, "only {} fitted", log.acked.len());
    mesh.proxy().heal();
    support::wait_for("the outbox to drain after the heal", || async {
        mesh.edge_metric("mesh_edge_outbox_events") == Some(0.0)
    })
    .await;
    let s = CancellationToken::new();
    let more = produce(
        mesh.agent("a2").await,
        "after.heal",
        500.0,
        200,
        64,
        s.cancelled_owned(),
    )
    .await;
    assert_eq!(more.failures(), 0);
    let events = mesh.drained_events().await;
    let v = Verdict::judge(&[log, more], &events);
    assert!(v.ok(), "{v}: {v:?}");
    assert_eq!(
        mesh.edge_metric("mesh_edge_expelled_events_total{edge=\"e1\",reason=\"max_bytes\"}"),
        Some(0.0)
    );
}

/// Under `drop-oldest` a full outbox expels its oldest events to take new ones: no
/// publish fails, the expulsions are counted in metrics, the lander passes the gap, and
/// every event not expelled arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_expels_counts_and_moves_on() {
    let mesh = Mesh::start(MeshOpts {
        edge_toml: "[ingest]\nmax_event_bytes = 65536\n[outbox]\nmax_bytes = 200000\nfull_policy = \"drop-oldest\"\n".into(),
        ..MeshOpts::default()
    })
    .await;
    mesh.proxy().cut();
    mesh.wait_uplink(false).await;
    let s = CancellationToken::new();
    let log = produce(
        mesh.agent("a1").await,
        "fill.up",
        2_000.0,
        1_000,
        1024,
        s.cancelled_owned(),
    )
    .await;
    assert_eq!(log.failures(), 0, "drop-oldest never refuses");
    let expelled = mesh
        .edge_metric("mesh_edge_expelled_events_total{edge=\"e1\",reason=\"max_bytes\"}")
        .unwrap_or(0.0) as usize;
    assert!(expelled > 0, "nothing was expelled");
    mesh.proxy().heal();
    let events = mesh.drained_events().await;
    // The expelled ones are the oldest: exactly the first `expelled` acked events.
    let mut kept = log.clone();
    kept.acked = log.acked[expelled..].to_vec();
    let v = Verdict::judge(&[kept], &events);
    assert!(v.ok(), "{v}: {v:?}");
    assert_eq!(v.delivered + expelled, 1_000, "{v}, expelled {expelled}");
}

/// A partition with a flooder under `drop-oldest`: the flooder fills the outbox many
/// times over, and only its own events are expelled; two calm agents publishing
/// throughout keep every event (they hold less than their share, a third of the
/// outbox: single-event records of ~450 bytes at 20/s, ~9 KB/s, while the flood takes
/// ~8 s here), and the flooder's newest events are the ones that arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_expels_only_the_flooders_events() {
    let mesh = Mesh::start(MeshOpts {
        edge_toml: "[ingest]\nmax_event_bytes = 65536\n[outbox]\nmax_bytes = 1000000\nfull_policy = \"drop-oldest\"\n".into(),
        ..MeshOpts::default()
    })
    .await;
    mesh.proxy().cut();
    mesh.wait_uplink(false).await;
    let stop = CancellationToken::new();
    let mut calm = Vec::new();
    for id in ["calm1", "calm2"] {
        let agent = mesh.agent(id).await;
        let s = stop.clone();
        calm.push(tokio::spawn(async move {
            produce(agent, "calm.tick", 20.0, u64::MAX, 256, s.cancelled_owned()).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // About 4.4 MB in 1 KiB events: four times the outbox.
    let s = CancellationToken::new();
    let flood = produce(
        mesh.agent("flood").await,
        "flood.tick",
        4_000.0,
        4_000,
        1024,
        s.cancelled_owned(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut logs = Vec::new();
    for c in calm {
        logs.push(c.await.unwrap());
    }
    assert_eq!(flood.failures(), 0, "drop-oldest never refuses");
    for log in &logs {
        assert_eq!(log.failures(), 0, "{}: {:?}", log.agent, log.refused);
        assert!(
            log.acked.len() > 10,
            "{} acked {}",
            log.agent,
            log.acked.len()
        );
    }
    let expelled = mesh
        .edge_metric("mesh_edge_expelled_events_total{edge=\"e1\",reason=\"max_bytes\"}")
        .unwrap_or(0.0) as usize;
    assert!(expelled > 1_000, "only {expelled} expelled");
    mesh.proxy().heal();
    let events = mesh.drained_events().await;

    let calm_events: Vec<_> = events
        .iter()
        .filter(|e| e.agent.starts_with("calm"))
        .cloned()
        .collect();
    let v = Verdict::judge(&logs, &calm_events);
    assert!(
        v.ok(),
        "the calm agents lost or got something wrong: {v}: {v:?}"
    );
    assert_eq!(v.delivered, v.acked, "{v}");
    let flood_events: Vec<_> = events
        .iter()
        .filter(|e| e.agent == "flood")
        .cloned()
        .collect();
    assert_eq!(
        flood_events.len() + expelled,
        4_000,
        "{} of the flooder's events arrived, {expelled} expelled",
        flood_events.len()
    );
    // Its own oldest went: what arrived is the tail of what it was acked for.
    let mut kept = flood.clone();
    kept.acked = flood.acked[expelled..].to_vec();
    let v = Verdict::judge(&[kept], &flood_events);
    assert!(v.ok(), "{v}: {v:?}");
}

/// Under `reject`, an agent holds at most its share of the outbox (`limits.outbox_share`,
/// half by default): during a partition a flooder is refused `quota_exceeded`, naming
/// the key, with a retry time, while another agent still finds room; after the heal
/// everything acked arrives and the flooder may publish again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_holds_an_agent_to_its_share_of_the_outbox() {
    let mesh = Mesh::start(MeshOpts {
        edge_toml: "[ingest]\nmax_event_bytes = 65536\n[outbox]\nmax_bytes = 200000\n".into(),
        ..MeshOpts::default()
    })
    .await;
    mesh.proxy().cut();
    mesh.wait_uplink(false).await;
    // A short timeout: the SDK waits out a retry time only within it.
    let flood = mesh
        .agent("flood")
        .await
        .with_timeout(Duration::from_millis(500));
    let mut flood_log = AgentLog::new("flood");
    let mut refusal = None;
    for n in 0..400 {
        let data = chaos::producer::payload("flood", n, 1024);
        let ev = NewEvent::new("t", "flood.fill", data.clone());
        let id = ev.id.unwrap();
        let r = flood.publish_event(ev).await;
        flood_log.record(id, data, &r);
        if let Err(e) = r {
            refusal = Some(e);
            break;
        }
    }
    let (code, message) = refused(Err(refusal.expect("the flooder was never refused")));
    assert_eq!(code, ErrorCode::QuotaExceeded, "{message}");
    assert!(message.contains("limits.outbox_share = 0.5"), "{message}");
    let held = flood_log.acked.len();
    assert!(
        (40..=100).contains(&held),
        "the flooder got {held} KiB-events in"
    );

    // Another agent still finds room: the other half.
    let calm = mesh.agent("calm").await;
    let mut calm_log = AgentLog::new("calm");
    for n in 0..40 {
        let data = chaos::producer::payload("calm", n, 1024);
        let ev = NewEvent::new("t", "calm.fill", data.clone());
        let id = ev.id.unwrap();
        let r = calm.publish_event(ev).await;
        assert!(r.is_ok(), "calm publish {n}: {r:?}");
        calm_log.record(id, data, &r);
    }
    assert_eq!(
        mesh.edge_metric(
            "mesh_edge_rejected_requests_total{edge=\"e1\",reason=\"quota_exceeded\"}"
        ),
        Some(1.0)
    );

    mesh.proxy().heal();
    let events = mesh.drained_events().await;
    // Once drained, the flooder is within its share again.
    flood.publish("t", "flood.after", "x").await.unwrap();
    let v = Verdict::judge(&[flood_log, calm_log], &events);
    assert!(v.ok(), "{v}: {v:?}");
    assert_eq!(v.delivered, v.acked, "{v}");
}

/// SIGTERM to the edge hub in the middle of a load, with a backlog behind a cut link:
/// it exits 0, and after a restart and the heal every acked event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_nothing() {
    let mut mesh = Mesh::start(MeshOpts::default()).await;
    let stop = CancellationToken::new();
    let agent = mesh.agent("a1").await.with_timeout(Duration::from_secs(2));
    let s = stop.clone();
    let producer = tokio::spawn(async move {
        produce(
            agent,
            "work.item",
            400.0,
            u64::MAX,
            128,
            s.cancelled_owned(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    mesh.proxy().cut();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        mesh.edge_hub().terminate(),
        "the edge hub did not exit 0 on SIGTERM"
    );
    stop.cancel();
    let log = producer.await.unwrap();
    mesh.edge_hub().start();
    mesh.proxy().heal();
    mesh.wait_uplink(true).await;
    let events = mesh.drained_events().await;
    let v = Verdict::judge(std::slice::from_ref(&log), &events);
    eprintln!("{v}");
    assert!(v.acked > 100, "{v}");
    assert!(v.ok(), "{v}: {v:?}");
}

/// Regression (issue 10): a forged bundle claiming `1..=2^63` of the real edge moved its
/// mark so every later event was skipped, and a `ce-meshseq: not-a-number` on another
/// edge's subjects was reported to stop landing altogether. In a real mesh now: the
/// forged bundle is dead-lettered, the poisoned edge is held alone, and the real edge's
/// 20 events all land, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bundles_and_a_poisoned_mark_do_not_stop_the_real_edge() {
    use schemas::{headers as h, subject, Bundle};
    let mesh = Mesh::start(MeshOpts::default()).await;
    let js = mesh.central_js().await;
    let forged = Bundle {
        version: schemas::bundle::BUNDLE_VERSION,
        edge: "e1".into(),
        first_seq: 1,
        last_seq: 1 << 63,
        events: vec![],
    };
    js.publish(subject::up("e1"), forged.encode().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut hs = async_nats::HeaderMap::new();
    hs.insert(h::MESH_SEQ, "not-a-number");
    js.publish_with_headers(subject::evt("e9", "x"), hs, "poison".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let held = Bundle {
        version: schemas::bundle::BUNDLE_VERSION,
        edge: "e9".into(),
        first_seq: 1,
        last_seq: 1,
        events: vec![],
    };
    js.publish_with_headers(
        subject::up("e9"),
        held.headers(),
        held.encode().unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let agent = mesh.agent("a1").await;
    let started = std::time::Instant::now();
    for n in 0..20 {
        agent
            .publish("t", "real.one", format!("{n}"))
            .await
            .unwrap();
    }
    // The poison is in MESH_EVENTS too, so count rather than decode.
    support::wait_for("e1's 20 events landed", || async {
        mesh.central_metric(0, "mesh_central_landed_events_total{edge=\"e1\"}") == 20.0
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let mut stream = js.get_stream(subject::STREAM_EVENTS).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 21);
    let last = stream
        .get_last_raw_message_by_subject(&subject::evt_edge("e1"))
        .await
        .unwrap();
    assert_eq!(last.headers.get(h::MESH_SEQ).unwrap().as_str(), "20");
    assert_eq!(
        mesh.central_metric(0, "mesh_central_skipped_events_total"),
        0.0
    );
    assert_eq!(
        mesh.central_metric(
            0,
            "mesh_central_refused_bundles_total{edge=\"_unknown\",reason=\"count\"}"
        ) + mesh.central_metric(
            0,
            "mesh_central_refused_bundles_total{edge=\"e1\",reason=\"count\"}"
        ),
        1.0
    );
    assert_eq!(
        mesh.central_metric(0, "mesh_central_lander_edge_held{edge=\"e9\"}"),
        1.0
    );
}
