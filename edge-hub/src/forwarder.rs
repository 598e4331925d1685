//! The forwarder: drains the outbox, in order, to `MESH_INGRESS` at the centre.
//!
//! Events travel in bundles (one MessagePack message of up to `bundle_max_events` or about
//! `bundle_max_bytes`) on `mesh.up.<edge>`, because one JetStream message per event over
//! a leaf link tops out near the per-message rate while bundles cross it at over a
//! million events per second. Up to `max_inflight` bundles are unacknowledged at once.
//!
//! Invariants:
//! * Consecutive bundles cover consecutive ranges, starting at `acked + 1`; a range may
//!   hold no event for sequences the outbox limits expelled (always at its start), and
//!   its `mesh-missing` header says how many, so the lander can pass them.
//! * The outbox drops a record only once the centre acknowledged every bundle up to its
//!   last event, in order (acks are taken front to back).
//! * On any failure — a publish error, an ack timeout, the uplink going down, or an ack
//!   for a later bundle while an earlier one has none (one connection keeps them in
//!   order, so the earlier one was lost: resent at once, not after `ack_timeout`) —
//!   every bundle in flight is forgotten and sending restarts from the oldest
//!   unacknowledged sequence (go-back-N). Bundles the centre stored twice are skipped by the lander's
//!   per-edge high-water mark, not by the stream's duplicate window alone (G3).
//! * A bundle the centre refuses permanently (too large for the server or the stream) is
//!   sent again one event per bundle; a single event still refused is dead-lettered to
//!   `mesh.dlq.<edge>.<subject>` (reason `refused-by-centre: …`) by a central hub, asked on
//!   `mesh.hub.dlq.refused.<edge>` (edge hubs may not write `MESH_DLQ`), and an empty bundle
//!   covering its sequence lets the lander pass it — it never blocks the events behind it.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream;
use futures::Future;
use schemas::bundle::BUNDLE_VERSION;
use schemas::dlq::DeadLetter;
use schemas::Bundle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ForwarderConfig;
use crate::metrics::EdgeMetrics;
use crate::outbox::{Outbox, ReadCache};
use crate::uplink::AckWitness;

type AckFuture = Pin<
    Box<
        dyn Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

type AckResult = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;

struct InFlight {
    last_seq: u64,
    events: u64,
    /// The ack being waited for; `None` once it came (in `done`).
    ack: Option<AckFuture>,
    done: Option<AckResult>,
}

/// Polls the ack of every bundle in flight; ready when at least one came.
fn poll_acks(inflight: &mut VecDeque<InFlight>, cx: &mut Context<'_>) -> Poll<()> {
    let mut came = false;
    for f in inflight.iter_mut() {
        if let Some(ack) = f.ack.as_mut() {
            if let Poll::Ready(r) = ack.as_mut().poll(cx) {
                f.done = Some(r);
                f.ack = None;
                came = true;
            }
        }
    }
    match came {
        true => Poll::Ready(()),
        false => Poll::Pending,
    }
}

enum Step {
    Acked,
    UplinkChanged,
    Appended,
    Shutdown,
}

/// Forwards until `shutdown`; then waits up to `ack_timeout` for the bundles in flight.
/// Every ack from `MESH_INGRESS` is reported to `acks`: it is evidence for the uplink.
#[allow(clippy::too_many_arguments)]
pub async fn run_forwarder(
    js: jetstream::Context,
    outbox: Arc<Outbox>,
    edge: String,
    cfg: ForwarderConfig,
    mut uplink: watch::Receiver<bool>,
    acks: AckWitness,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) {
    let subject = schemas::subject::up(&edge);
    let mut cache = ReadCache::default();
    // The encoded events of the bundle being built (reused).
    let mut raw = Vec::new();
    let mut backoff = Duration::from_millis(50);
    // Bundles up to this sequence go one event at a time (after a permanent refusal).
    let mut single_until = 0u64;
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
                let max_events = if cursor <= single_until {
                    1
                } else {
                    cfg.bundle_max_events
                };
                raw.clear();
                let read = match outbox.read_bundle(
                    cursor,
                    max_events,
                    cfg.bundle_max_bytes,
                    &mut cache,
                    &mut raw,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, cursor, "cannot read the outbox");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue 'session;
                    }
                };
                let Some((last, n)) = read else { break };
                let payload = Bundle::encode_raw(&edge, cursor, last, n, &raw);
                let n = u64::from(n);
                match js
                    .publish_with_headers(
                        subject.clone(),
                        Bundle::headers_for(&edge, cursor, last, n),
                        payload.into(),
                    )
                    .await
                {
                    Ok(ack) => {
                        inflight.push_back(InFlight {
                            last_seq: last,
                            events: n,
                            ack: Some(Box::pin(ack.into_future())),
                            done: None,
                        });
                        cursor = last + 1;
                    }
                    Err(e) if permanent(&e) => {
                        if inflight.is_empty() {
                            let settled = refused(
                                &js,
                                &outbox,
                                &edge,
                                &subject,
                                cursor,
                                last,
                                &e,
                                &mut single_until,
                                &mut cache,
                            )
                            .await;
                            if !settled {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            continue 'session;
                        }
                        // Settle the bundles before it first; then it is the oldest.
                        break;
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
            let step = match inflight.is_empty() {
                false => tokio::select! {
                    biased;
                    _ = std::future::poll_fn(|cx| poll_acks(&mut inflight, cx)) => Step::Acked,
                    r = uplink.changed() => if r.is_err() { return } else { Step::UplinkChanged },
                    _ = outbox.appended(), if can_fill => Step::Appended,
                    _ = shutdown.cancelled() => Step::Shutdown,
                },
                true => tokio::select! {
                    r = uplink.changed() => if r.is_err() { return } else { Step::UplinkChanged },
                    _ = outbox.appended() => Step::Appended,
                    _ = shutdown.cancelled() => return,
                },
            };
            let front_err = match step {
                Step::Acked => {
                    // Acks are taken front to back.
                    while inflight
                        .front()
                        .is_some_and(|f| matches!(f.done, Some(Ok(_))))
                    {
                        let done = inflight.pop_front().expect("front exists");
                        if let Some(Ok(ack)) = &done.done {
                            if ack.stream == schemas::subject::STREAM_INGRESS {
                                acks.acked();
                            }
                        }
                        if let Err(e) = outbox.ack_through(done.last_seq) {
                            tracing::error!(error = %e, "cannot record an ack in the outbox");
                        }
                        metrics.forwarded(done.events);
                        backoff = Duration::from_millis(50);
                    }
                    match inflight.front_mut().and_then(|f| f.done.take()) {
                        Some(r) => r.err(),
                        None => {
                            // A later bundle was stored while an earlier one has no ack:
                            // one connection keeps them in order, so the earlier one was
                            // lost (a leader change at the centre). Resend now rather than
                            // after `ack_timeout` (a resend of a stored bundle is skipped).
                            if inflight.iter().any(|f| matches!(f.done, Some(Ok(_)))) {
                                tracing::debug!(
                                    inflight = inflight.len(),
                                    "a later bundle was acked before the oldest; resending from the oldest unacknowledged"
                                );
                                metrics.inflight(0);
                                continue 'session;
                            }
                            None
                        }
                    }
                }
                _ => None,
            };
            if let Some(e) = front_err {
                if permanent(&e) {
                    let last = inflight.front().map_or(0, |f| f.last_seq);
                    metrics.inflight(0);
                    let first = outbox.acked() + 1;
                    let settled = refused(
                        &js,
                        &outbox,
                        &edge,
                        &subject,
                        first,
                        last,
                        &e,
                        &mut single_until,
                        &mut cache,
                    )
                    .await;
                    if !settled {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue 'session;
                }
                tracing::warn!(error = %e, inflight = inflight.len(), "bundle not acknowledged; resending from the oldest unacknowledged");
                metrics.inflight(0);
                continue 'session;
            }
            match step {
                Step::Acked | Step::Appended => {}
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
                Step::Shutdown => {
                    // Give the bundles in flight one ack timeout, then leave the rest to
                    // the next start (they stay in the outbox).
                    let deadline = tokio::time::Instant::now() + cfg.ack_timeout;
                    while let Some(front) = inflight.front_mut() {
                        let acked = match (front.done.take(), front.ack.as_mut()) {
                            (Some(r), _) => r.is_ok(),
                            (None, Some(ack)) => {
                                matches!(tokio::time::timeout_at(deadline, ack).await, Ok(Ok(_)))
                            }
                            (None, None) => false,
                        };
                        if !acked {
                            break;
                        }
                        let done = inflight.pop_front().expect("front exists");
                        let _ = outbox.ack_through(done.last_seq);
                        metrics.forwarded(done.events);
                    }
                    return;
                }
            }
        }
    }
}

/// Whether the centre will never accept this bundle as it is.
fn permanent(e: &jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded {
        return true;
    }
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|je| je.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
}

/// The centre refused the bundle `first..=last` for good (`first` is the oldest
/// unacknowledged sequence). Several events: send them one by one from now on. One
/// event: dead-letter it and send an empty bundle over its sequence. Transient failures
/// on the way leave everything as it was: the next session meets the refusal again.
#[allow(clippy::too_many_arguments)]
async fn refused(
    js: &jetstream::Context,
    outbox: &Outbox,
    edge: &str,
    up_subject: &str,
    first: u64,
    last: u64,
    why: &jetstream::context::PublishError,
    single_until: &mut u64,
    cache: &mut ReadCache,
) -> bool {
    use schemas::headers as h;
    if first < last {
        tracing::warn!(first, last, error = %why, "the centre refused a bundle; sending its events one by one");
        *single_until = (*single_until).max(last);
        return true;
    }
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(seq = first, error = %e, "cannot {what} of a refused event; retrying");
    };
    let events = match outbox.read_from(first, 1, usize::MAX, cache) {
        Ok(Some((_, events))) => events,
        Ok(None) => return true,
        Err(e) => {
            failed("read the outbox", &e);
            return false;
        }
    };
    let why = why.to_string();
    let reason = schemas::dlq::reason::refused_by_centre(&why);
    for ev in &events {
        let mut dead = DeadLetter::refused_by_centre(ev, &why);
        let mut headers = ev.to_headers();
        dead.apply(&mut headers);
        // A central hub writes it to MESH_DLQ: edge hubs may not write the stream.
        let client = js.client();
        let room = client.server_info().max_payload.saturating_sub(64 * 1024);
        let mut sent = if ev.data.len() <= room {
            ask_dead_letter(&client, edge, headers.clone(), ev.data.clone()).await
        } else {
            Err(TOO_LARGE.to_string())
        };
        if sent
            .as_ref()
            .is_err_and(|e| e.contains(TOO_LARGE) || e.contains("maximum"))
        {
            // Too large for the DLQ as well: keep the attributes, say what was left out.
            dead.error = format!("{why}; data of {} bytes left out", ev.data.len());
            dead.apply(&mut headers);
            sent = ask_dead_letter(&client, edge, headers, bytes::Bytes::new()).await;
        }
        if let Err(e) = sent {
            failed("dead-letter", &e);
            return false;
        }
        tracing::warn!(seq = ev.seq, id = %ev.id, %reason, "dead-lettered an event the centre refuses");
    }
    let tombstone = Bundle {
        version: BUNDLE_VERSION,
        edge: edge.to_string(),
        first_seq: first,
        last_seq: first,
        events: Vec::new(),
    };
    let payload = match tombstone.encode() {
        Ok(p) => p,
        Err(e) => {
            failed("encode the empty bundle", &e);
            return false;
        }
    };
    // The header tells the lander to record the dead letter in the audit log.
    let mut headers = tombstone.headers();
    headers.insert(h::DLQ_REASON, reason.as_str());
    if let Err(e) = publish(js, up_subject, headers, payload.into()).await {
        failed("send the empty bundle", &e);
        return false;
    }
    if let Err(e) = outbox.ack_through(first) {
        failed("record the ack", &e);
        return false;
    }
    true
}

/// What [`refused`] says of data too large to send at all.
const TOO_LARGE: &str = "larger than the server's max_payload";

/// Asks the central hubs to dead-letter one refused event (`mesh.hub.dlq.refused.<edge>`);
/// the `MESH_DLQ` sequence, or why not.
async fn ask_dead_letter(
    client: &async_nats::Client,
    edge: &str,
    headers: async_nats::HeaderMap,
    data: bytes::Bytes,
) -> Result<u64, String> {
    let subject = schemas::subject::hub_dlq_refused(edge);
    let reply = client
        .request_with_headers(subject.clone(), headers, data)
        .await
        .map_err(|e| format!("{subject}: {e}"))?;
    match serde_json::from_slice::<schemas::dlq::DeadLetterReply>(&reply.payload) {
        Ok(schemas::dlq::DeadLetterReply::Ok { dlq_seq }) => Ok(dlq_seq),
        Ok(schemas::dlq::DeadLetterReply::Err { message }) => Err(message),
        Err(e) => Err(format!("undecodable answer on {subject}: {e}")),
    }
}

async fn publish(
    js: &jetstream::Context,
    subject: &str,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    js.publish_with_headers(subject.to_string(), headers, payload)
        .await?
        .await
}
