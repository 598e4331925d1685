//! Dead-letter queues: messages that cannot be processed move to `MESH_DLQ`.
//!
//! Sources:
//! * JetStream's max-deliveries advisory for a consumer of `MESH_EVENTS`
//!   (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MESH_EVENTS.*`), received by one hub of
//!   a queue group, reason `max-deliveries`;
//! * a [`DeadLetterRequest`] from an agent (`Delivery::reject`), reason `rejected: …`;
//! * an event the centre refuses for good (too large for `MESH_INGRESS`), sent by its
//!   edge hub on `mesh.hub.dlq.refused.<edge>` (only that edge's credential may): written
//!   only if the event is valid, of that edge, and carries a `refused-by-centre` reason.
//!   Edge hubs never write `MESH_DLQ` themselves; the audit record of such a dead letter
//!   comes with the edge's empty bundle over its sequence (see the lander).
//!
//! A dead letter is published on `mesh.dlq.<edge>.<subject…>` with the event's own
//! headers (so `ce-id` is kept and any tool reads it as an event) plus the `mesh-dlq-*`
//! headers of [`DeadLetter`]. `Nats-Msg-Id` is `dlq:<stream>:<consumer>:<seq>`, so a
//! repeated advisory or request does not dead-letter twice within the duplicate window.
//! Each dead letter is recorded in the audit log.
//!
//! Failure times and error text come from [`FailureNote`]s agents send when they fail a
//! delivery; every hub keeps the latest per message in a bounded in-memory cache (a
//! diagnostic, not state: without it the headers say `unknown`).
//!
//! Operator actions on the queue are [`letters`], [`letter`] (reads, run anywhere) and
//! [`redrive`] and [`purge`] (writes, run by a hub for an operator's request, see
//! [`crate::ops`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use futures::StreamExt;
use schemas::audit::{AuditEvent, DeadLettered};
use schemas::dlq::{
    reason as why, DeadLetter, DeadLetterReply, DeadLetterRequest, FailureNote, MessageRef, Origin,
};
use schemas::{headers as h, subject};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;

mod actions;

pub use actions::{letter, letters, purge, redrive, Redrive, Sent};

/// Queue group of the hubs' advisory subscriptions: one hub handles each advisory.
pub const QUEUE: &str = "mesh-dlq";
const CACHE_MAX: usize = 100_000;

/// What can go wrong making, reading or acting on dead letters.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The message to dead-letter could not be read.
    #[error("reading {stream} seq {seq}: {reason}")]
    Read {
        stream: String,
        seq: u64,
        reason: String,
    },
    /// The dead letter could not be stored in `MESH_DLQ`.
    #[error("storing the dead letter of {stream} seq {seq}: {reason}")]
    Store {
        stream: String,
        seq: u64,
        reason: String,
    },
    /// `MESH_DLQ` could not be looked up.
    #[error("stream MESH_DLQ: {source}")]
    Stream {
        #[source]
        source: async_nats::Error,
    },
    /// The dead letters could not be listed.
    #[error(transparent)]
    List(#[from] schemas::stream::StreamError),
    /// No dead letter has this id.
    #[error("no dead letter with id {id} in MESH_DLQ: {source}")]
    NoLetter {
        id: u64,
        #[source]
        source: async_nats::Error,
    },
    /// The dead letter asked for is not among those the filter selects.
    #[error("no dead letter with id {id} matches the filter {filter:?}")]
    NoMatch { id: u64, filter: String },
    /// A dead letter does not say where it came from, and no target was given.
    #[error("dead letter {seq} has no mesh-dlq-subject header; use --to")]
    NoTarget { seq: u64 },
    /// A dead letter could not be published again; it stays in `MESH_DLQ`.
    #[error("redriving dead letter {seq} to {target}: {source}")]
    Republish {
        seq: u64,
        target: String,
        #[source]
        source: async_nats::Error,
    },
    /// A redriven dead letter could not be deleted from `MESH_DLQ`.
    #[error("removing redriven dead letter {seq}: {source}")]
    Remove {
        seq: u64,
        #[source]
        source: async_nats::Error,
    },
    /// The hub began shutting down during a redrive; the rest stay in `MESH_DLQ`.
    #[error("the central hub stopped after redriving {done} of {of} dead letters; run the redrive again for the rest")]
    Interrupted { done: u64, of: u64 },
    /// `MESH_DLQ` could not be purged.
    #[error("purging MESH_DLQ of {filter:?}: {source}")]
    Purge {
        filter: String,
        #[source]
        source: async_nats::Error,
    },
    /// The action could not be recorded in the audit log.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

#[derive(Debug, Clone)]
struct Failures {
    first: String,
    last: String,
    error: String,
}

/// Moves messages to `MESH_DLQ`.
#[derive(Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    audit: AuditLog,
    failures: Arc<Mutex<HashMap<MessageRef, Failures>>>,
}

#[derive(Deserialize)]
struct MaxDeliveries {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context, audit: AuditLog) -> DeadLetters {
        DeadLetters {
            js,
            audit,
            failures: Arc::default(),
        }
    }

    /// Copies message `m` to `MESH_DLQ` with the reason headers; returns its DLQ sequence.
    pub async fn dead_letter(
        &self,
        m: &MessageRef,
        deliveries: u64,
        reason: &str,
    ) -> Result<u64, DlqError> {
        let read = |reason: String| DlqError::Read {
            stream: m.stream.clone(),
            seq: m.seq,
            reason,
        };
        let stream = self
            .js
            .get_stream(&m.stream)
            .await
            .map_err(|e| read(e.to_string()))?;
        let msg = stream
            .get_raw_message(m.seq)
            .await
            .map_err(|e| read(e.to_string()))?;
        let mut headers = h::without_expectations(&msg.headers);
        let get = |name: &str| {
            headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let edge = Some(get(h::MESH_EDGE)).filter(|e| !e.is_empty());
        let ce_subject = schemas::event::attribute(&headers, h::SUBJECT)
            .ok()
            .flatten()
            .filter(|s| !s.is_empty());
        let (edge, ce_subject) = match (edge, ce_subject) {
            (Some(e), Some(s)) => (e, s),
            // Not a mesh event: file it under its raw subject.
            _ => ("_".to_string(), msg.subject.to_string()),
        };
        let ce_id = get(h::ID);
        let f = self.failures.lock().expect("failure cache").get(m).cloned();
        let unknown = "unknown".to_string();
        let now = chrono::Utc::now().to_rfc3339();
        let (first, last, error) = match &f {
            Some(f) => (f.first.clone(), f.last.clone(), f.error.clone()),
            None => (unknown.clone(), now.clone(), unknown.clone()),
        };
        let dead = DeadLetter {
            origin: Origin::Consumer,
            reason: reason.to_string(),
            stream: m.stream.clone(),
            seq: m.seq,
            subject: msg.subject.to_string(),
            consumer: m.consumer.clone(),
            deliveries,
            first_failure: first,
            last_failure: last,
            error: error.clone(),
        };
        dead.apply(&mut headers);
        let store = |reason: String| DlqError::Store {
            stream: m.stream.clone(),
            seq: m.seq,
            reason,
        };
        let ack = self
            .js
            .publish_with_headers(subject::dlq(&edge, &ce_subject), headers, msg.payload)
            .await
            .map_err(|e| store(e.to_string()))?
            .await
            .map_err(|e| store(e.to_string()))?;
        self.failures.lock().expect("failure cache").remove(m);
        if !ack.duplicate {
            let dead = AuditEvent::DeadLettered(DeadLettered {
                stream: m.stream.clone(),
                seq: m.seq,
                consumer: Some(m.consumer.clone()),
                subject: Some(msg.subject.to_string()),
                ce_id: Some(ce_id),
                reason: reason.to_string(),
                deliveries: Some(deliveries),
                error: Some(error),
                dlq_seq: Some(ack.sequence),
                ..Default::default()
            });
            let r = self.audit.record(&dead).await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot record a dead letter in the audit log");
            }
        }
        tracing::info!(stream = %m.stream, seq = m.seq, consumer = %m.consumer, reason, dlq_seq = ack.sequence, "dead-lettered");
        Ok(ack.sequence)
    }

    fn note(&self, n: FailureNote) {
        let mut cache = self.failures.lock().expect("failure cache");
        if cache.len() >= CACHE_MAX && !cache.contains_key(&n.msg) {
            cache.clear();
        }
        let e = cache.entry(n.msg).or_insert_with(|| Failures {
            first: n.time.clone(),
            last: n.time.clone(),
            error: String::new(),
        });
        e.last = n.time;
        e.error = n.error;
    }

    /// Serves advisories, failure notes and reject requests until `stop`.
    pub async fn run(self, client: async_nats::Client, stop: CancellationToken) {
        let subs = async {
            Ok::<_, async_nats::SubscribeError>((
                client
                    .queue_subscribe(
                        subject::max_deliveries_advisory(subject::STREAM_EVENTS),
                        QUEUE.into(),
                    )
                    .await?,
                client.subscribe(subject::HUB_DLQ_FAILURE).await?,
                client
                    .queue_subscribe(subject::HUB_DLQ_REJECT, QUEUE.into())
                    .await?,
                client
                    .queue_subscribe(subject::HUB_DLQ_REFUSED_ALL, QUEUE.into())
                    .await?,
            ))
        };
        let (mut adv, mut notes, mut rejects, mut refused) = match subs.await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe for dead-lettering");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(m) = adv.next() => {
                    let a: MaxDeliveries = match serde_json::from_slice(&m.payload) {
                        Ok(a) => a,
                        Err(e) => { tracing::warn!(error = %e, "undecodable advisory"); continue }
                    };
                    let r = MessageRef { stream: a.stream, consumer: a.consumer, seq: a.stream_seq };
                    if let Err(e) = self.dead_letter(&r, a.deliveries, why::MAX_DELIVERIES).await {
                        tracing::error!(error = %e, "cannot dead-letter");
                    }
                }
                Some(m) = notes.next() => {
                    if let Ok(n) = serde_json::from_slice::<FailureNote>(&m.payload) {
                        self.note(n);
                    }
                }
                Some(m) = rejects.next() => {
                    let Some(reply) = m.reply else { continue };
                    let answer = match serde_json::from_slice::<DeadLetterRequest>(&m.payload) {
                        Ok(req) => match self.dead_letter(&req.msg, req.deliveries, &why::rejected(&req.reason)).await {
                            Ok(dlq_seq) => DeadLetterReply::Ok { dlq_seq },
                            Err(e) => DeadLetterReply::Err { message: e.to_string() },
                        },
                        Err(e) => DeadLetterReply::Err { message: format!("cannot decode dead-letter request: {e}") },
                    };
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    let _ = client.publish(reply, body.into()).await;
                }
                Some(m) = refused.next() => {
                    let Some(reply) = m.reply.clone() else { continue };
                    let answer = match self.refused_by_centre(&m).await {
                        Ok(dlq_seq) => DeadLetterReply::Ok { dlq_seq },
                        Err(message) => {
                            tracing::warn!(subject = %m.subject, %message, "refused an edge's dead letter");
                            DeadLetterReply::Err { message }
                        }
                    };
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    let _ = client.publish(reply, body.into()).await;
                }
                _ = stop.cancelled() => return,
                else => return,
            }
        }
    }

    /// Writes an edge's refused event to `MESH_DLQ` after checking it is one (see the
    /// module doc); returns its `MESH_DLQ` sequence or the refusal.
    async fn refused_by_centre(&self, m: &async_nats::Message) -> Result<u64, String> {
        let edge = subject::edge_of_hub_dlq_refused(&m.subject)
            .ok_or_else(|| format!("{} is not mesh.hub.dlq.refused.<edge>", m.subject))?;
        let headers = m
            .headers
            .clone()
            .ok_or("a dead letter without the event's headers")?;
        let ev = schemas::Event::from_message(&headers, m.payload.clone())
            .map_err(|e| format!("not an event: {e}"))?;
        ev.validate().map_err(|e| format!("invalid event: {e}"))?;
        if ev.edge != edge {
            return Err(format!(
                "edge {edge} may not dead-letter an event of edge {}",
                ev.edge
            ));
        }
        let reason = headers
            .get(h::DLQ_REASON)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        if !reason.starts_with(why::refused_by_centre("").trim_end_matches(' ')) {
            return Err(format!(
                "an edge dead-letters only events the centre refused, not {reason:?}"
            ));
        }
        let mut headers = headers;
        headers.insert(
            h::NATS_MSG_ID,
            format!("dlq:refused:{edge}:{}", ev.seq).as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(subject::dlq(edge, &ev.subject), headers, m.payload.clone())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(ack.sequence)
    }
}
