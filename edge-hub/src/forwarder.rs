//! The forwarder: drains the outbox, in order, to `MESH_INGRESS` at the centre.
//!
//! Events travel in bundles (one MessagePack message of up to `bundle_max_events` or about
//! `bundle_max_bytes`) on `mesh.up.<edge>`, because one JetStream message per event over
//! a leaf link tops out near the per-message rate while bundles cross it at over a
//! million events per second. Up to `max_inflight` bundles are unacknowledged at once.
//!
//! Invariants:
//! * Consecutive bundles cover consecutive ranges, starting at `acked + 1`; a range may
//!   hold no event for sequences the outbox limits expelled, so the lander can pass them.
//! * The outbox drops a record only once the centre acknowledged every bundle up to its
//!   last event, in order (acks are taken front to back).
//! * On any failure — a publish error, an ack timeout, the uplink going down — every
//!   bundle in flight is forgotten and sending restarts from the oldest unacknowledged
//!   sequence (go-back-N). Bundles the centre stored twice are skipped by the lander's
//!   per-edge high-water mark, not by the stream's duplicate window alone (G3).

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::Future;
use schemas::bundle::BUNDLE_VERSION;
use schemas::Bundle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ForwarderConfig;
use crate::metrics::EdgeMetrics;
use crate::outbox::{Outbox, ReadCache};

type AckFuture = Pin<
    Box<
        dyn Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

struct InFlight {
    last_seq: u64,
    events: u64,
    ack: AckFuture,
}

enum Step {
    Acked(Result<jetstream::publish::PublishAck, jetstream::context::PublishError>),
    UplinkChanged,
    Appended,
    Shutdown,
}

/// Forwards until `shutdown`; then waits up to `ack_timeout` for the bundles in flight.
pub async fn run_forwarder(
    js: jetstream::Context,
    outbox: Arc<Outbox>,
    edge: String,
    cfg: ForwarderConfig,
    mut uplink: watch::Receiver<bool>,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) {
    let subject = schemas::subject::up(&edge);
    let mut cache = ReadCache::default();
    let mut backoff = Duration::from_millis(50);
    'session: loop {
        // Wait for the link.
        while !*uplink.borrow_and_update() {
            tokio::select! {
                r = uplink.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
        outbox.reset_inflight();
        let mut cursor = outbox.acked() + 1;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        tracing::debug!(cursor, "forwarding session starts");
        loop {
            // Fill the window.
            while inflight.len() < cfg.max_inflight && !shutdown.is_cancelled() {
                let read = match outbox.read_from(
                    cursor,
                    cfg.bundle_max_events,
                    cfg.bundle_max_bytes,
                    &mut cache,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, cursor, "cannot read the outbox");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue 'session;
                    }
                };
                let Some((last, events)) = read else { break };
                let n = events.len() as u64;
                let bundle = Bundle {
                    version: BUNDLE_VERSION,
                    edge: edge.clone(),
                    first_seq: cursor,
                    last_seq: last,
                    events,
                };
                let payload = match bundle.encode() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode a bundle");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue 'session;
                    }
                };
                match js
                    .publish_with_headers(subject.clone(), bundle.headers(), payload.into())
                    .await
                {
                    Ok(ack) => {
                        inflight.push_back(InFlight {
                            last_seq: last,
                            events: n,
                            ack: Box::pin(ack.into_future()),
                        });
                        outbox.mark_sent(last);
                        cursor = last + 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "bundle publish failed; resending from the oldest unacknowledged");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue 'session;
                    }
                }
            }
            metrics.inflight(inflight.len());
            if inflight.is_empty() && shutdown.is_cancelled() {
                return;
            }
            let can_fill = inflight.len() < cfg.max_inflight;
            let step = match inflight.front_mut() {
                Some(front) => tokio::select! {
                    biased;
                    r = &mut front.ack => Step::Acked(r),
                    r = uplink.changed() => if r.is_err() { return } else { Step::UplinkChanged },
                    _ = outbox.appended(), if can_fill => Step::Appended,
                    _ = shutdown.cancelled() => Step::Shutdown,
                },
                None => tokio::select! {
                    r = uplink.changed() => if r.is_err() { return } else { Step::UplinkChanged },
                    _ = outbox.appended() => Step::Appended,
                    _ = shutdown.cancelled() => return,
                },
            };
            match step {
                Step::Acked(Ok(_ack)) => {
                    let done = inflight.pop_front().expect("front exists");
                    if let Err(e) = outbox.ack_through(done.last_seq) {
                        tracing::error!(error = %e, "cannot record an ack in the outbox");
                    }
                    metrics.forwarded(done.events);
                    backoff = Duration::from_millis(50);
                }
                Step::Acked(Err(e)) => {
                    tracing::warn!(error = %e, inflight = inflight.len(), "bundle not acknowledged; resending from the oldest unacknowledged");
                    metrics.inflight(0);
                    continue 'session;
                }
                Step::UplinkChanged => {
                    if !*uplink.borrow_and_update() {
                        tracing::info!(
                            inflight = inflight.len(),
                            "uplink down: pausing forwarding"
                        );
                        metrics.inflight(0);
                        continue 'session;
                    }
                }
                Step::Appended => {}
                Step::Shutdown => {
                    // Give the bundles in flight one ack timeout, then leave the rest to
                    // the next start (they stay in the outbox).
                    let deadline = tokio::time::Instant::now() + cfg.ack_timeout;
                    while let Some(front) = inflight.front_mut() {
                        match tokio::time::timeout_at(deadline, &mut front.ack).await {
                            Ok(Ok(_)) => {
                                let done = inflight.pop_front().expect("front exists");
                                let _ = outbox.ack_through(done.last_seq);
                                metrics.forwarded(done.events);
                            }
                            _ => break,
                        }
                    }
                    return;
                }
            }
        }
    }
}
