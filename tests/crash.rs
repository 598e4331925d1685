//! Crashes: `kill -9` of the edge hub under load (G1), and of central hubs while they
//! land a backlog, with two central hubs running at once (G2–G4, one lander at a time).

mod support;

use std::time::Duration;

use agents::Agent;
use chaos::{produce, AgentLog, Verdict};
use schemas::NewEvent;
use support::{wait_for, Mesh, MeshOpts};
use tokio_util::sync::CancellationToken;

/// The edge hub is killed with SIGKILL twice in the middle of a steady load and
/// restarted: every event acked before each kill reaches the centre, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_edge_hub_under_load() {
    let mut mesh = Mesh::start(MeshOpts::default()).await;
    let stop = CancellationToken::new();
    let mut producers = Vec::new();
    for id in ["a1", "a2"] {
        let agent = mesh.agent(id).await.with_timeout(Duration::from_secs(1));
        let s = stop.clone();
        producers.push(tokio::spawn(async move {
            produce(
                agent,
                "jobs.step",
                300.0,
                u64::MAX,
                200,
                s.cancelled_owned(),
            )
            .await
        }));
    }
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        mesh.edge_hub().kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        mesh.edge_hub().start();
        mesh.wait_uplink(true).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.cancel();
    let mut logs = Vec::new();
    for p in producers {
        logs.push(p.await.unwrap());
    }
    let events = mesh.drained_events().await;
    let v = Verdict::judge(&logs, &events);
    let failed: usize = logs.iter().map(AgentLog::failures).sum();
    let slow: usize = logs.iter().map(|l| l.slow).sum();
    eprintln!("{v}; publishes not acked while the hub was down: {failed}, held up: {slow}");
    assert!(v.acked > 200, "too little load: {v}");
    assert!(
        failed + slow > 0,
        "the kills did not interrupt publishing; the test proves nothing"
    );
    assert!(v.ok(), "{v}: {v:?}");
}

/// Publishes `batches` batches of `size` events, in order, recording the oracle.
async fn publish_backlog(agent: Agent, batches: usize, size: usize) -> AgentLog {
    let mut log = AgentLog::new(agent.id());
    for b in 0..batches {
        let evs: Vec<NewEvent> = (0..size)
            .map(|i| {
                NewEvent::new(
                    "backlog",
                    "backlog.item",
                    chaos::producer::payload(agent.id(), (b * size + i) as u64, 64),
                )
            })
            .collect();
        let ids: Vec<_> = evs
            .iter()
            .map(|e| (e.id.unwrap(), e.data.clone()))
            .collect();
        let outcome = agent.publish_batch(evs).await;
        for (id, data) in ids {
            log.record(id, data, &outcome);
        }
    }
    log
}

/// Two central hubs run at once (one lander pinned, one on standby). A 40,000-event
/// backlog builds up behind a cut link; after the heal, each hub is killed with SIGKILL
/// while it lands, and the first is restarted. Every event lands once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_central_hubs_while_landing() {
    let mut mesh = Mesh::start(MeshOpts {
        central_hubs: 2,
        central_toml: "[lander]\npin_timeout = \"1s\"\nack_wait = \"3s\"\n".into(),
        ..MeshOpts::default()
    })
    .await;
    mesh.proxy().cut();
    mesh.wait_uplink(false).await;
    let (a1, a2) = (mesh.agent("a1").await, mesh.agent("a2").await);
    let (l1, l2) = tokio::join!(publish_backlog(a1, 100, 200), publish_backlog(a2, 100, 200));
    let logs = vec![l1, l2];
    let total: usize = logs.iter().map(|l| l.acked.len()).sum();
    assert_eq!(
        total, 40_000,
        "every backlog publish is acked inside the partition"
    );
    let js = mesh.central_js().await;
    let count = || {
        let js = js.clone();
        async move {
            let mut s = js
                .get_stream(schemas::subject::STREAM_EVENTS)
                .await
                .unwrap();
            s.info().await.map(|i| i.state.messages).unwrap_or(0)
        }
    };
    mesh.proxy().heal();
    wait_for("landing to start", || async { count().await > 2_000 }).await;
    mesh.central_hub(0).kill();
    let after_first = count().await;
    wait_for("landing to continue after the first kill", || async {
        count().await > after_first + 2_000
    })
    .await;
    mesh.central_hub(0).start();
    mesh.central_hub(1).kill();
    let after_second = count().await;
    wait_for("landing to continue after the second kill", || async {
        count().await > after_second + 2_000
    })
    .await;
    let events = mesh.drained_events().await;
    let v = Verdict::judge(&logs, &events);
    eprintln!("killed hub 0 at {after_first} landed, hub 1 at {after_second}; {v}");
    assert!(
        after_first < 40_000 && after_second < 40_000,
        "a kill came after landing finished"
    );
    assert!(v.ok(), "{v}: {v:?}");
    assert_eq!(v.delivered, 40_000);
}
