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
//! edge heartbeats and landed events into audit records.

pub mod audit;
pub mod config;
pub mod dlq;
pub mod http;
pub mod lander;
pub mod metrics;
pub mod registry;
pub mod streams;
pub mod tracker;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Streams, consumer or KV bucket could not be set up or used.
    #[error("JetStream: {0}")]
    JetStream(#[from] async_nats::Error),
    /// The audit log could not be read or extended.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

/// Runs a central hub on `client` until `shutdown` resolves.
pub async fn run(
    cfg: CentralConfig,
    client: async_nats::Client,
    http: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CentralError> {
    cfg.validate().map_err(CentralError::Config)?;
    let hub = cfg.hub_name();
    let js = async_nats::jetstream::new(client.clone());
    let kv = streams::ensure(&js, &cfg).await?;
    let metrics = Arc::new(metrics::CentralMetrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    let audit = audit::AuditLog::open(
        js.clone(),
        schemas::subject::STREAM_AUDIT,
        &format!("central:{hub}"),
    )
    .await?;
    let config_hash = audit::sha256_hex(cfg.to_toml().as_bytes());
    {
        let (h, c) = (hub.clone(), config_hash.clone());
        let applied = audit::AuditEvent::ConfigApplied(schemas::audit::ConfigApplied {
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
    let (agents_tx, agents_rx) = tokio::sync::mpsc::channel(4096);
    let lander = lander::Lander::new(
        client.clone(),
        js.clone(),
        kv,
        cfg.lander.clone(),
        metrics.clone(),
    )
    .await?
    .report_agents(agents_tx)
    .audit_to(audit.clone());
    tasks.spawn(tracker::run_links(
        client.clone(),
        audit.clone(),
        stop.clone(),
    ));
    tasks.spawn(tracker::run_agents(agents_rx, audit.clone(), stop.clone()));
    tasks.spawn(tracker::serve_registry(
        client.clone(),
        audit.clone(),
        stop.clone(),
    ));
    tasks.spawn(dlq::DeadLetters::new(js.clone(), audit.clone()).run(client.clone(), stop.clone()));
    let lander_task = tokio::spawn(lander.run(stop.clone()));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%hub, "central hub ready");

    tasks.spawn(heartbeat(
        client.clone(),
        hub.clone(),
        cfg.heartbeat_interval,
        metrics.clone(),
        stop.clone(),
    ));
    if let Some(listener) = http {
        tasks.spawn(http::serve(
            listener,
            http::HttpState {
                metrics: metrics.clone(),
                ready: ready.clone(),
            },
            stop.clone(),
        ));
    }
    tasks.close();

    let result = tokio::select! {
        _ = shutdown => Ok(()),
        r = lander_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CentralError::JetStream(e)),
            Err(e) => Err(CentralError::JetStream(e.to_string().into())),
        },
    };
    tracing::info!(%hub, "central hub shutting down");
    ready.store(false, Ordering::Relaxed);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    let _ = client.flush().await;
    result
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
