//! The agentmesh central hub (`mesh central`).
//!
//! Owns the centre's JetStream [`streams`] and runs the [`lander`], which turns the
//! edges' bundles into `MESH_EVENTS` exactly once and in per-edge order, and a heartbeat
//! on `mesh.hub.heartbeat.<hub>`. It holds no state JetStream does not hold: it can be
//! restarted, or run as several replicas (one lander is pinned, the others stand by),
//! without losing or duplicating anything.
//!
//! Every mesh action is recorded in the hash-chained [`audit`] log; the [`registry`] of
//! edges and agents is a projection of it, rebuilt on start-up; the [`tracker`] turns
//! edge heartbeats and the lander's reports into audit records. Operators' writes
//! (redrive, purge, replay) are [`ops`] requests a hub serves, recorded under the
//! operator's name. `/health/ready` follows
//! [`health`]: the streams exist and the lander is pulling. The [`status`] page (`/`)
//! shows the edges, the lander's figures, dead letters and the audit head, live.
//!
//! On start the hub sets up its [`streams`]: it creates what is missing and refuses to
//! start when an existing stream differs from the configuration, unless changes are
//! allowed (`streams.apply_changes`); the changes are audited as `stream.updated`.
//!
//! [`run`] takes its connection, an optional HTTP listener and a shutdown future. Shutdown
//! is two-phase, within [`SHUTDOWN_DEADLINE`]: first the lander stops pulling and
//! finishes the bundle in hand; then the tracker, the dead-letter service, the registry
//! server, the operator requests (a run stops between two messages), the heartbeat, the
//! status sampler and HTTP stop, the tracker after recording what the lander
//! reported last; the audit writer drains its queue and stops last. Every task is on one
//! `TaskTracker`, the lander and the audit writer included.

pub mod audit;
pub mod config;
pub mod dlq;
pub mod health;
pub mod http;
pub mod lander;
pub mod metrics;
pub mod ops;
pub mod registry;
pub mod status;
pub mod streams;
pub mod tracker;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::CentralConfig;

/// Why the central hub could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// The configuration has problems; each is listed.
    #[error("invalid central configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// The streams or the KV bucket could not be set up, or differ from the
    /// configuration and may not be changed.
    #[error(transparent)]
    Streams(#[from] streams::StreamsError),
    /// Consumer, stream or KV bucket could not be used.
    #[error("JetStream: {0}")]
    JetStream(#[from] async_nats::Error),
    /// The audit log could not be read or extended.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

/// How long a shutdown may take in all, from the signal to the last task.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Runs a central hub on `client` until `shutdown` resolves, then shuts down in two
/// phases (see the crate doc).
pub async fn run(
    cfg: CentralConfig,
    client: async_nats::Client,
    http: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CentralError> {
    cfg.validate().map_err(CentralError::Config)?;
    let hub = cfg.hub_name();
    let js = async_nats::jetstream::new(client.clone());
    // Changes to existing streams (only when allowed) are recorded once the audit log,
    // which lives in one of them, is open.
    let streams::Streams {
        kv,
        updated: stream_changes,
    } = streams::ensure(&js, &cfg).await?;
    let metrics = Arc::new(metrics::CentralMetrics::new());
    let health = Arc::new(health::Health::default());
    health.streams_ready();
    // Two groups stop in turn: the lander first, then everything else.
    let stop_lander = CancellationToken::new();
    let stop_rest = CancellationToken::new();
    let tasks = TaskTracker::new();

    let audit = audit::AuditLog::open_on(
        js.clone(),
        schemas::subject::STREAM_AUDIT,
        &format!("central:{hub}"),
        &tasks,
    )
    .await?;
    for change in stream_changes {
        audit
            .record(&schemas::audit::AuditEvent::StreamUpdated(change))
            .await?;
    }
    let config_hash = schemas::audit::sha256_hex(cfg.to_toml().as_bytes());
    {
        let (h, c) = (hub.clone(), config_hash.clone());
        let applied = schemas::audit::AuditEvent::ConfigApplied(schemas::audit::ConfigApplied {
            hub: hub.clone(),
            sha256: config_hash,
            config: cfg.to_toml(),
        });
        audit
            .record_if(
                &applied,
                Box::new(move |r: &registry::Registry| r.configs.get(&h) != Some(&c)),
            )
            .await?;
    }
    let (reports_tx, reports_rx) = tokio::sync::mpsc::channel(4096);
    let lander = lander::Lander::new(
        client.clone(),
        js.clone(),
        kv,
        cfg.lander.clone(),
        metrics.clone(),
    )
    .await?
    .report_to(reports_tx)
    .health(health.clone());
    // Set up before the hub says it has started: on a fresh cluster the consumer's
    // replicas may still be electing a leader (seen: two hubs started at once).
    let lander_consumer = streams::set_up_step(
        &cfg,
        schemas::subject::STREAM_INGRESS,
        "create or read the lander consumer",
        || lander.consumer(),
    )
    .await?;
    tasks.spawn(tracker::run_links(
        client.clone(),
        audit.clone(),
        stop_rest.clone(),
    ));
    tasks.spawn(tracker::run_reports(reports_rx, audit.clone()));
    tasks.spawn(tracker::serve_registry(
        client.clone(),
        audit.clone(),
        stop_rest.clone(),
    ));
    tasks.spawn(
        dlq::DeadLetters::new(js.clone(), audit.clone()).run(client.clone(), stop_rest.clone()),
    );
    tasks.spawn(ops::run(
        client.clone(),
        js.clone(),
        audit.clone(),
        stop_rest.clone(),
    ));
    let mut lander_task = tasks.spawn(lander.run(lander_consumer, stop_lander.clone()));
    tracing::info!(%hub, "central hub started");

    tasks.spawn(heartbeat(
        client.clone(),
        hub.clone(),
        cfg.heartbeat_interval,
        metrics.clone(),
        stop_rest.clone(),
    ));
    let board = Arc::new(status::Status::new(&hub));
    tasks.spawn(status::run(
        client.clone(),
        js.clone(),
        audit.clone(),
        metrics.clone(),
        board.clone(),
        stop_rest.clone(),
    ));
    if let Some(listener) = http {
        tasks.spawn(http::serve(
            listener,
            http::HttpState {
                metrics: metrics.clone(),
                health: health.clone(),
                status: board,
            },
            stop_rest.clone(),
        ));
    }
    tasks.close();

    let (result, lander_done) = tokio::select! {
        _ = shutdown => (Ok(()), false),
        r = &mut lander_task => (lander_result(r), true),
    };
    tracing::info!(%hub, "central hub shutting down");
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
    health.stopping();
    // Phase 1: stop pulling; the bundle in hand lands (or is nakked) first.
    stop_lander.cancel();
    if !lander_done
        && tokio::time::timeout_at(deadline, lander_task)
            .await
            .is_err()
    {
        tracing::warn!(%hub, "the lander did not stop in time");
    }
    // Phase 2: everything else. The tracker records the reports the lander left (it ends
    // once their channel is closed); the audit writer ends last, once every handle on
    // it is dropped, after appending what is queued.
    stop_rest.cancel();
    drop(audit);
    if tokio::time::timeout_at(deadline, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(%hub, "central hub tasks did not stop in time");
    }
    let _ = client.flush().await;
    tracing::info!(%hub, "central hub stopped");
    result
}

fn lander_result(r: Result<(), tokio::task::JoinError>) -> Result<(), CentralError> {
    r.map_err(|e| CentralError::JetStream(e.to_string().into()))
}

async fn heartbeat(
    client: async_nats::Client,
    hub: String,
    every: Duration,
    metrics: Arc<metrics::CentralMetrics>,
    stop: CancellationToken,
) {
    let subject = schemas::subject::hub_heartbeat(&hub);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let body = serde_json::json!({
            "hub": hub,
            "time": chrono::Utc::now().to_rfc3339(),
            "landed_events": metrics.landed_total.load(Ordering::Relaxed),
        });
        let _ = client
            .publish(subject.clone(), body.to_string().into())
            .await;
    }
}
