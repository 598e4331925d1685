//! The agentmesh edge hub (`mesh edge`).
//!
//! Agents publish to `mesh.ingest.<edge>.<agent>` on the edge's nats-server; the hub
//! validates each request, group-commits it to a local sled [`outbox`], acks it, sends a
//! live copy, and a [`forwarder`] drains the outbox in bundles to `MESH_INGRESS` at the
//! centre over the leaf link, whenever the [`uplink`] probe says the centre is reachable.
//!
//! [`run`] takes its connection, an optional HTTP listener and a shutdown future, so a
//! test can drive a hub in-process. Shutdown is two-phase: stop ingest and answer what
//! was received, commit and flush, give in-flight bundles one ack timeout, then return.
//! Nothing acknowledged is lost: it is in the outbox and is forwarded on the next start.

pub mod config;
pub mod fair;
pub mod forwarder;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod status;
pub mod uplink;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{EdgeConfig, FullPolicy, OutboxSync};
pub use outbox::{Outbox, OutboxError};

/// Why the edge hub could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The configuration has problems; each is listed.
    #[error("invalid edge configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The ingest subscription could not be made.
    #[error("cannot subscribe to ingest subjects: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Runs an edge hub on `client` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    cfg: EdgeConfig,
    client: async_nats::Client,
    http: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EdgeError> {
    cfg.validate().map_err(EdgeError::Config)?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| EdgeError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    let (outbox, writer) = Outbox::open(&cfg.data_dir.join("outbox"), cfg.outbox.clone())?;
    let metrics = metrics::EdgeMetrics::new(&cfg.id);
    metrics.outbox_limit(cfg.outbox.max_bytes);
    let ready = Arc::new(AtomicBool::new(false));

    // Tasks stop in two groups: ingest first (so everything received gets committed and
    // answered), then the forwarder, uplink and HTTP.
    let stop_ingest = CancellationToken::new();
    let stop_rest = CancellationToken::new();
    let tasks = TaskTracker::new();

    let (uplink_tx, uplink_rx) = watch::channel(false);
    let uplink_rx_status = uplink_rx.clone();
    // The forwarder's acks from MESH_INGRESS are evidence for the uplink, with the probe.
    let (ack_witness, acks_rx) = uplink::ack_channel();
    metrics.uplink(false);
    tasks.spawn(uplink::run_uplink(
        client.clone(),
        cfg.uplink.clone(),
        acks_rx,
        uplink_tx,
        metrics.clone(),
        stop_rest.clone(),
    ));

    let mut js =
        async_nats::jetstream::with_domain(client.clone(), schemas::subject::CENTRAL_DOMAIN);
    js.set_timeout(cfg.forwarder.ack_timeout);
    tasks.spawn(forwarder::run_forwarder(
        js,
        outbox.clone(),
        cfg.id.clone(),
        cfg.forwarder.clone(),
        uplink_rx,
        ack_witness,
        metrics.clone(),
        stop_rest.clone(),
    ));

    let (jobs_tx, jobs_rx) = mpsc::channel(4096);
    let limiter = limits::Limiter::new(cfg.limits.clone());
    let shared = ingest::Shared {
        outbox: writer.outbox().clone(),
        pending: ingest::Pending::default(),
    };
    let committer = tokio::spawn(ingest::run_committer(
        client.clone(),
        cfg.id.clone(),
        writer,
        jobs_rx,
        limiter.inflight(),
        shared.pending.clone(),
        cfg.ingest.commit_max_events,
        cfg.ingest.commit_max_bytes,
        cfg.ingest.live,
        metrics.clone(),
    ));
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let ingest = tokio::spawn(ingest::run_ingest(
        client.clone(),
        cfg.id.clone(),
        cfg.limits(),
        limiter,
        shared,
        jobs_tx,
        metrics.clone(),
        subscribed_tx,
        stop_ingest.clone(),
    ));
    if subscribed_rx.await.is_ok() {
        ready.store(true, Ordering::Relaxed);
        tracing::info!(edge = %cfg.id, "edge hub ready");
    }

    tasks.spawn(ingest::run_discover(
        client.clone(),
        cfg.id.clone(),
        stop_rest.clone(),
    ));
    tasks.spawn(status_heartbeat(
        client.clone(),
        cfg.id.clone(),
        outbox.clone(),
        uplink_rx_status,
        stop_rest.clone(),
    ));
    if let Some(listener) = http {
        tasks.spawn(http::serve(
            listener,
            http::HttpState {
                edge: cfg.id.clone(),
                outbox_max_bytes: cfg.outbox.max_bytes,
                metrics: metrics.clone(),
                outbox: outbox.clone(),
                ready: ready.clone(),
            },
            stop_rest.clone(),
        ));
    }
    tasks.close();

    let ingest_result = tokio::select! {
        _ = shutdown => None,
        r = ingest => Some(r),
    };
    tracing::info!(edge = %cfg.id, "edge hub shutting down");
    ready.store(false, Ordering::Relaxed);
    stop_ingest.cancel();
    // The committer ends once ingest dropped its queue; it flushes the outbox last.
    let _ = committer.await;
    // Bounded: on Ctrl-C in `mesh up` every process gets the signal at once, and a flush
    // over a connection whose nats-server already stopped would wait for ever.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    stop_rest.cancel();
    if tokio::time::timeout(
        cfg.forwarder.ack_timeout + Duration::from_secs(2),
        tasks.wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!("edge hub tasks did not stop in time");
    }
    let s = outbox.stats();
    tracing::info!(edge = %cfg.id, events = s.events, acked = s.acked, "edge hub stopped");
    match ingest_result {
        Some(Ok(Err(e))) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Publishes a [`schemas::EdgeStatus`] on `mesh.hub.edge.<edge>` every second while the
/// uplink is up (and once when it changes), so the centre can record link events,
/// backlogs and expulsions in its audit log.
async fn status_heartbeat(
    client: async_nats::Client,
    edge: String,
    outbox: Arc<Outbox>,
    mut uplink: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let subject = schemas::subject::hub_edge(&edge);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = uplink.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let up = *uplink.borrow();
        let s = outbox.stats();
        let status = schemas::EdgeStatus {
            edge: edge.clone(),
            uplink_up: up,
            outbox_events: s.events,
            outbox_bytes: s.bytes,
            expelled: [
                ("max_age".to_string(), s.expelled_max_age),
                ("max_bytes".to_string(), s.expelled_max_bytes),
            ]
            .into_iter()
            .collect(),
            time: chrono::Utc::now().to_rfc3339(),
        };
        if let Ok(body) = serde_json::to_vec(&status) {
            let _ = client.publish(subject.clone(), body.into()).await;
        }
    }
}
