//! Operator actions on `MESH_DLQ` (`mesh dlq list|show|redrive|purge`): reading dead
//! letters (any reader), sending them back and deleting them (a central hub only, at an
//! operator's request, see [`crate::ops`]). Redrive and purge are recorded in the audit
//! log under the requesting operator as actor.
//!
//! A redrive publishes each dead letter to its original subject (`mesh-dlq-subject`) or
//! to `to`, with the headers of [`schemas::dlq::redrive_headers`] (its `ce-id` kept),
//! waits for the store ack, and only then deletes it from `MESH_DLQ`: a failure leaves
//! the dead letter in place and stops the run; so does the hub's shutdown, between two
//! letters. Whatever was redriven before a stop is recorded all the same.

use std::time::Duration;

use async_nats::jetstream::{self, message::StreamMessage as RawMessage};
use schemas::audit::{AuditEvent, Purged, Redriven};
use schemas::stream::{self, Range, StreamMessage};
use schemas::{headers as h, subject};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::DlqError;
use crate::audit::AuditLog;

/// What to redrive, where, how fast (also the body of a `dlq.redrive` request).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redrive {
    /// `<edge>.<subject…>` with wildcards, as for [`letters`].
    pub filter: String,
    /// Only this dead letter (DLQ sequence).
    pub id: Option<u64>,
    /// Publish here instead of each letter's original subject.
    pub to: Option<String>,
    /// At most this many per second.
    pub rate: Option<f64>,
}

/// One dead letter sent back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// Its sequence in `MESH_DLQ` (now deleted there).
    pub dlq_seq: u64,
    pub target: String,
}

/// The dead letters on `mesh.dlq.<filter>` (`<edge>.<subject…>` with wildcards, e.g.
/// `e1.orders.>`), oldest first.
pub async fn letters(
    js: &jetstream::Context,
    filter: &str,
) -> Result<Vec<StreamMessage>, DlqError> {
    let range = Range::filtered(subject::dlq_filter(filter));
    Ok(stream::read_range(js, subject::STREAM_DLQ, range).await?)
}

/// The dead letter stored as `id` in `MESH_DLQ`.
pub async fn letter(js: &jetstream::Context, id: u64) -> Result<RawMessage, DlqError> {
    dlq_stream(js)
        .await?
        .get_raw_message(id)
        .await
        .map_err(|e| DlqError::NoLetter {
            id,
            source: e.into(),
        })
}

/// Redrives the dead letters `r` selects and records the run as `dlq.redriven` under
/// `actor` in `audit`. Returns what was sent; stops early (with
/// [`DlqError::Interrupted`]) once `stop` is cancelled.
pub async fn redrive(
    js: &jetstream::Context,
    r: &Redrive,
    audit: &AuditLog,
    actor: &str,
    stop: &CancellationToken,
) -> Result<Vec<Sent>, DlqError> {
    let mut done = Vec::new();
    let run = redrive_each(js, r, stop, &mut done).await;
    if run.is_ok() || !done.is_empty() {
        let event = AuditEvent::Redriven(Redriven {
            count: done.len() as u64,
            ids: done.iter().map(|s| s.dlq_seq).collect(),
            filter: r.filter.clone(),
            to: r.to.clone(),
        });
        audit.record_as(&event, actor).await?;
    }
    run.map(|()| done)
}

async fn redrive_each(
    js: &jetstream::Context,
    r: &Redrive,
    stop: &CancellationToken,
    done: &mut Vec<Sent>,
) -> Result<(), DlqError> {
    let stream = dlq_stream(js).await?;
    let mut ls = letters(js, &r.filter).await?;
    if let Some(id) = r.id {
        ls.retain(|l| l.seq == id);
        if ls.is_empty() {
            return Err(DlqError::NoMatch {
                id,
                filter: r.filter.clone(),
            });
        }
    }
    let gap = r
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut tick = gap.map(tokio::time::interval);
    for l in &ls {
        if let Some(t) = tick.as_mut() {
            tokio::select! {
                _ = t.tick() => {}
                _ = stop.cancelled() => {}
            }
        }
        if stop.is_cancelled() {
            return Err(DlqError::Interrupted {
                done: done.len() as u64,
                of: ls.len() as u64,
            });
        }
        let target = match &r.to {
            Some(t) => t.clone(),
            None => l
                .headers
                .get(h::DLQ_SUBJECT)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
        };
        if target.is_empty() {
            return Err(DlqError::NoTarget { seq: l.seq });
        }
        let headers = schemas::dlq::redrive_headers(&l.headers, l.seq);
        let republish = |source: async_nats::Error| DlqError::Republish {
            seq: l.seq,
            target: target.clone(),
            source,
        };
        js.publish_with_headers(target.clone(), headers, l.payload.clone())
            .await
            .map_err(|e| republish(e.into()))?
            .await
            .map_err(|e| republish(e.into()))?;
        stream
            .delete_message(l.seq)
            .await
            .map_err(|e| DlqError::Remove {
                seq: l.seq,
                source: e.into(),
            })?;
        tracing::info!(dlq_seq = l.seq, %target, "redriven");
        done.push(Sent {
            dlq_seq: l.seq,
            target,
        });
    }
    Ok(())
}

/// Deletes the dead letters on `mesh.dlq.<filter>` and records it as `dlq.purged` under
/// `actor` in `audit`. Returns how many went.
pub async fn purge(
    js: &jetstream::Context,
    filter: &str,
    audit: &AuditLog,
    actor: &str,
) -> Result<u64, DlqError> {
    let purged = dlq_stream(js)
        .await?
        .purge()
        .filter(subject::dlq_filter(filter))
        .await
        .map_err(|e| DlqError::Purge {
            filter: filter.to_string(),
            source: e.into(),
        })?
        .purged;
    audit
        .record_as(
            &AuditEvent::Purged(Purged {
                count: purged,
                filter: filter.to_string(),
            }),
            actor,
        )
        .await?;
    Ok(purged)
}

async fn dlq_stream(js: &jetstream::Context) -> Result<jetstream::stream::Stream, DlqError> {
    js.get_stream(subject::STREAM_DLQ)
        .await
        .map_err(|e| DlqError::Stream { source: e.into() })
}
