//! The central hub in-process against a real nats-server: readiness follows the lander,
//! and shutdown is two-phase.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use central_hub::{lander, CentralConfig, SHUTDOWN_DEADLINE};
use mesh_nats::{NatsServer, ServerConfig};
use schemas::audit::{self, AuditEvent, AuditRecord};
use schemas::bundle::BUNDLE_VERSION;
use schemas::{subject, Bundle, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` every 10 ms until it holds; panics after [`DEADLINE`].
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The status code of `GET /health/ready`, 0 when the hub does not answer.
async fn ready_status(addr: SocketAddr) -> u16 {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let req = "GET /health/ready HTTP/1.0\r\nHost: x\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn event(agent: &str, seq: u64) -> Event {
    Event {
        id: uuid::Uuid::now_v7(),
        edge: "e1".into(),
        agent: agent.into(),
        seq,
        ty: "t".into(),
        subject: "jobs.run".into(),
        time: chrono::Utc::now(),
        content_type: "text/plain".into(),
        dataschema: None,
        correlation_id: None,
        causation_id: None,
        traceparent: None,
        tracestate: None,
        data: format!("{seq}").into(),
    }
}

/// Publishes a bundle of edge `e1` with events `first..=last` of `agent` to
/// `MESH_INGRESS`, as an edge's forwarder does.
async fn send_bundle(js: &jetstream::Context, agent: &str, first: u64, last: u64) {
    let b = Bundle {
        version: BUNDLE_VERSION,
        edge: "e1".into(),
        first_seq: first,
        last_seq: last,
        events: (first..=last).map(|s| event(agent, s)).collect(),
    };
    js.publish_with_headers(subject::up("e1"), b.headers(), b.encode().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn events(js: &jetstream::Context) -> u64 {
    match js.get_stream(subject::STREAM_EVENTS).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

struct Hub {
    js: jetstream::Context,
    http: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), central_hub::CentralError>>,
    _server: NatsServer,
}

impl Hub {
    /// Sends a bundle of `agent`'s events `first..=last` and waits until `MESH_EVENTS`
    /// holds `last` events (every bundle starts where the previous one ended).
    async fn land(&self, agent: &str, first: u64, last: u64) {
        send_bundle(&self.js, agent, first, last).await;
        wait_for(&format!("{last} events landed"), || async {
            events(&self.js).await == last
        })
        .await;
    }

    /// Signals shutdown and waits for `run` to return `Ok`; returns how long it took.
    async fn shut_down(&mut self) -> Duration {
        let started = Instant::now();
        self.stop.cancel();
        let r = tokio::time::timeout(SHUTDOWN_DEADLINE * 2, &mut self.task)
            .await
            .expect("the hub stops");
        assert!(r.unwrap().is_ok());
        started.elapsed()
    }
}

/// A nats-server and a central hub in-process on it, once ready.
async fn start_hub(name: &str) -> Hub {
    let cfg = ServerConfig::central(name);
    let server = tokio::task::spawn_blocking(move || NatsServer::start(cfg))
        .await
        .unwrap()
        .expect("central nats-server");
    let client = async_nats::connect(server.client_url()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let cfg = CentralConfig {
        hub_id: "t0".into(),
        ..CentralConfig::default()
    };
    let task = tokio::spawn(central_hub::run(
        cfg,
        client.clone(),
        Some(listener),
        stop.clone().cancelled_owned(),
    ));
    wait_for("ready", || async { ready_status(http).await == 200 }).await;
    Hub {
        js: jetstream::new(client),
        http,
        stop,
        task,
        _server: server,
    }
}

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
