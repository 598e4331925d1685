//! The central hub in-process against a real nats-server: readiness follows the lander,
//! and shutdown is two-phase.

mod support;

use central_hub::{lander, SHUTDOWN_DEADLINE};
use schemas::audit::{self, AuditEvent, AuditRecord};
use schemas::subject;
use support::{ready_status, start_hub, wait_for};

/// Regression: with the lander's consumer deleted, `/health/ready` stayed 200 while the
/// hub logged a failed pull every 100 ms. Now it answers 503 until the lander has
/// re-created its consumer and pulled for a while, and events land again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_goes_503_without_the_lander_consumer_and_recovers() {
    let mut hub = start_hub("t-ready").await;
    hub.land("a1", 1, 2).await;

    let ingress = hub.js.get_stream(subject::STREAM_INGRESS).await.unwrap();
    ingress.delete_consumer(lander::CONSUMER).await.unwrap();
    wait_for("ready to go 503", || async {
        ready_status(hub.http).await == 503
    })
    .await;
    wait_for("ready to come back", || async {
        ready_status(hub.http).await == 200
    })
    .await;
    assert!(
        ingress.consumer_info(lander::CONSUMER).await.is_ok(),
        "the lander re-created its consumer"
    );
    hub.land("a1", 3, 4).await;

    hub.shut_down().await;
}

/// Shutdown stops the lander first, then the rest, and the audit writer last: the hub
/// returns before the deadline (every task ended, none was cut off), and what the lander
/// reported just before the signal is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_task_and_keeps_the_last_reports() {
    let mut hub = start_hub("t-stop").await;
    hub.land("late-agent", 1, 3).await;

    let took = hub.shut_down().await;
    assert!(
        took < SHUTDOWN_DEADLINE,
        "shutdown ran into its deadline: {took:?}"
    );
    let records: Vec<AuditRecord> = audit::read_all(&hub.js, subject::STREAM_AUDIT)
        .await
        .unwrap()
        .iter()
        .filter_map(|(_, p)| AuditRecord::decode(p).ok())
        .collect();
    assert!(
        records.iter().any(|r| matches!(
            r.event(),
            Ok(AuditEvent::AgentRegistered(a)) if a.agent == "late-agent"
        )),
        "{records:?}"
    );
}
