//! Stream set-up against a real nats-server: an existing stream is never changed
//! silently, an allowed change is audited, a second start changes nothing, and two hubs
//! racing on a fresh server both come up.

mod support;

use std::time::Duration;

use async_nats::jetstream;
use central_hub::streams::StreamsError;
use central_hub::{CentralConfig, CentralError};
use futures::StreamExt;
use mesh_nats::{NatsServer, ServerConfig};
use schemas::audit::{self, AuditEvent, AuditRecord, StreamUpdated};
use schemas::subject;
use support::{ready_status, wait_for, DEADLINE};
use tokio_util::sync::CancellationToken;

async fn server(name: &str) -> NatsServer {
    let cfg = ServerConfig::central(name);
    tokio::task::spawn_blocking(move || NatsServer::start(cfg))
        .await
        .unwrap()
        .expect("central nats-server")
}

fn config(hub: &str) -> CentralConfig {
    CentralConfig {
        hub_id: hub.into(),
        ..CentralConfig::default()
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), CentralError>>,
}

impl Running {
    /// Signals shutdown and waits for `run` to return `Ok`.
    async fn stop(self) {
        self.stop.cancel();
        let r = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the hub stops");
        r.unwrap().expect("the hub ran without error");
    }
}

/// Runs a hub with `cfg` on `client` and waits until it is ready; panics with its error
/// when it stops instead.
async fn start_on(client: async_nats::Client, cfg: CentralConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(central_hub::run(
        cfg,
        client,
        Some(listener),
        stop.clone().cancelled_owned(),
    ));
    wait_for("the hub ready or stopped", || async {
        task.is_finished() || ready_status(http).await == 200
    })
    .await;
    if task.is_finished() {
        panic!("the hub stopped: {:?}", task.await.unwrap());
    }
    Running { stop, task }
}

async fn start(server: &NatsServer, cfg: CentralConfig) -> Running {
    start_on(connect(server).await, cfg).await
}

async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.client_url()).await.unwrap()
}

/// Runs a hub with `cfg` that must fail to start; its error.
async fn refused(server: &NatsServer, cfg: CentralConfig) -> CentralError {
    let run = central_hub::run(cfg, connect(server).await, None, std::future::pending());
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the hub returns")
        .expect_err("the hub refuses to start")
}

async fn stream_config(js: &jetstream::Context, name: &str) -> jetstream::stream::Config {
    js.get_stream(name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone()
}

/// The `stream.updated` records of the audit log.
async fn stream_updates(js: &jetstream::Context) -> Vec<StreamUpdated> {
    audit::read_all(js, subject::STREAM_AUDIT)
        .await
        .unwrap()
        .iter()
        .filter_map(|(_, p)| AuditRecord::decode(p).ok())
        .filter_map(|r| match r.event() {
            Ok(AuditEvent::StreamUpdated(u)) => Some(u),
            _ => None,
        })
        .collect()
}

fn an_hour() -> Duration {
    Duration::from_secs(3600)
}

/// Regression: a hub started with a config that differed from the existing streams
/// changed them silently (R3 streams went to R1). Now it refuses to start, names the
/// stream, the setting and both values, and leaves the stream as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_whose_config_differs_from_a_stream_refuses_to_start_and_changes_nothing() {
    let server = server("t-streams-differ").await;
    start(&server, config("t0")).await.stop().await;

    let mut cfg = config("t1");
    cfg.events.max_age = an_hour();
    let err = refused(&server, cfg).await;
    let msg = err.to_string();
    assert!(
        matches!(&err, CentralError::Streams(StreamsError::Differs { differences, apply: false })
            if differences.len() == 1),
        "{err:?}"
    );
    assert!(
        msg.contains("stream MESH_EVENTS: max_age is 0s on the server but events.max_age is 1h"),
        "{msg}"
    );
    assert!(msg.contains("--apply-stream-changes"), "{msg}");
    assert!(msg.contains("streams.apply_changes = true"), "{msg}");

    let js = jetstream::new(connect(&server).await);
    assert_eq!(
        stream_config(&js, subject::STREAM_EVENTS).await.max_age,
        Duration::ZERO
    );
    assert_eq!(stream_updates(&js).await, vec![]);
}

/// With the change allowed the hub starts, the stream has the new setting, and the audit
/// log says who changed what from what to what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_change_is_applied_and_audited() {
    let server = server("t-streams-apply").await;
    start(&server, config("t0")).await.stop().await;

    let mut cfg = config("t1");
    cfg.events.max_age = an_hour();
    cfg.streams.apply_changes = true;
    let hub = start(&server, cfg).await;

    let js = jetstream::new(connect(&server).await);
    assert_eq!(
        stream_config(&js, subject::STREAM_EVENTS).await.max_age,
        an_hour()
    );
    let updates = stream_updates(&js).await;
    assert_eq!(updates.len(), 1, "{updates:?}");
    let u = &updates[0];
    assert_eq!((u.hub.as_str(), u.stream.as_str()), ("t1", "MESH_EVENTS"));
    assert_eq!(
        u.changes
            .iter()
            .map(|c| (c.field.as_str(), c.old.as_str(), c.new.as_str()))
            .collect::<Vec<_>>(),
        [("max_age", "0s", "1h")]
    );
    hub.stop().await;
}

/// A second start on the same configuration sends no create or update request and
/// records no `stream.updated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_on_the_same_config_changes_nothing() {
    let server = server("t-streams-same").await;
    start(&server, config("t0")).await.stop().await;

    // The hub's requests go out on this connection, and so does the marker below: the
    // subscription sees them in the order they were sent.
    let client = connect(&server).await;
    let mut api = client.subscribe("$JS.API.STREAM.>").await.unwrap();
    let hub = start_on(client.clone(), config("t0")).await;
    let marker = "$JS.API.STREAM.INFO.TEST_MARKER";
    client.publish(marker, "".into()).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(DEADLINE, api.next())
            .await
            .expect("the marker arrives")
            .unwrap();
        if m.subject.as_str() == marker {
            break;
        }
        seen.push(m.subject.to_string());
    }
    assert!(
        seen.iter().any(|s| s.starts_with("$JS.API.STREAM.INFO.")),
        "the hub read the streams: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.contains(".STREAM.UPDATE.") || s.contains(".STREAM.CREATE.")),
        "{seen:?}"
    );
    let js = jetstream::new(client);
    assert_eq!(stream_updates(&js).await, vec![]);
    hub.stop().await;
}

/// Regression: two hubs started at the same moment on a fresh cluster both gave up with
/// `jetstream request timed out`. Both come up; the one that lost the race to create a
/// stream compares against the winner's and finds it equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_started_at_once_on_a_fresh_server_both_come_up() {
    let server = server("t-streams-race").await;
    let (a, b) = tokio::join!(start(&server, config("h1")), start(&server, config("h2")));

    let js = jetstream::new(connect(&server).await);
    for name in [
        subject::STREAM_INGRESS,
        subject::STREAM_EVENTS,
        subject::STREAM_AUDIT,
        subject::STREAM_DLQ,
    ] {
        assert!(js.get_stream(name).await.is_ok(), "{name}");
    }
    assert_eq!(stream_updates(&js).await, vec![]);
    tokio::join!(a.stop(), b.stop());
}
