//! Wire types of dead-lettering: the requests agents send (JSON on core NATS subjects
//! under `mesh.hub.dlq.`), and the headers of a dead letter in `MESH_DLQ` — built by
//! [`DeadLetter::apply`] wherever a dead letter is made (the edge's forwarder, the
//! lander, the centre's dead-letter service) and undone by [`redrive_headers`].

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::{headers as h, subject, Event};

/// Which message: a stream sequence as seen by one durable consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageRef {
    pub stream: String,
    pub consumer: String,
    pub seq: u64,
}

/// An agent's report of a failed delivery (fire and forget).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureNote {
    pub msg: MessageRef,
    pub deliveries: u64,
    pub error: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// A request to dead-letter a message at once (the SDK's `Delivery::reject`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRequest {
    pub msg: MessageRef,
    pub deliveries: u64,
    pub reason: String,
}

/// The answer: the dead letter's sequence in `MESH_DLQ`, or what went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum DeadLetterReply {
    Ok { dlq_seq: u64 },
    Err { message: String },
}

/// Why a message was dead-lettered: the values of `mesh-dlq-reason`.
pub mod reason {
    /// A consumer failed it `max_deliver` times.
    pub const MAX_DELIVERIES: &str = "max-deliveries";

    /// An agent rejected it (`Delivery::reject`).
    pub fn rejected(why: &str) -> String {
        format!("rejected: {why}")
    }

    /// The centre refuses the event for good (the edge dead-letters it).
    pub fn refused_by_centre(why: &str) -> String {
        format!("refused-by-centre: {why}")
    }

    /// The lander can never land the bundle.
    pub fn bad_bundle(why: &str) -> String {
        format!("bad-bundle: {why}")
    }
}

/// Where a dead letter was made. It decides the dead letter's `Nats-Msg-Id`, so one
/// failure reported twice within the duplicate window is stored once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A consumer of a stream gave up on a message: `dlq:<stream>:<consumer>:<seq>`.
    Consumer,
    /// The centre refused an event of this edge for good: `dlq:<edge>:<seq>`.
    Edge(String),
    /// The lander refused a bundle of `MESH_INGRESS`: `dlq:ingress:<seq>`.
    Ingress,
}

/// The `mesh-dlq-*` headers of one dead letter, the only place they are built. A dead
/// letter carries the original message's own headers plus these (see
/// [`crate::headers`] for what each means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub origin: Origin,
    pub reason: String,
    /// Stream, sequence and subject of the original message.
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    /// The durable consumer that failed it; empty when none did.
    pub consumer: String,
    pub deliveries: u64,
    /// RFC 3339 times of the first and the last failure, or `unknown`.
    pub first_failure: String,
    pub last_failure: String,
    pub error: String,
}

impl DeadLetter {
    /// An event the centre refuses for good (`why`), dead-lettered by its edge now.
    pub fn refused_by_centre(ev: &Event, why: &str) -> DeadLetter {
        let now = chrono::Utc::now().to_rfc3339();
        DeadLetter {
            origin: Origin::Edge(ev.edge.clone()),
            reason: reason::refused_by_centre(why),
            stream: subject::STREAM_INGRESS.into(),
            seq: ev.seq,
            subject: ev.evt_subject(),
            consumer: String::new(),
            deliveries: 1,
            first_failure: now.clone(),
            last_failure: now,
            error: why.into(),
        }
    }

    /// A bundle at `seq` of `MESH_INGRESS` that `consumer` can never land (`why`).
    pub fn bad_bundle(
        seq: u64,
        subject: &str,
        consumer: &str,
        deliveries: u64,
        why: &str,
    ) -> DeadLetter {
        let now = chrono::Utc::now().to_rfc3339();
        DeadLetter {
            origin: Origin::Ingress,
            reason: reason::bad_bundle(why),
            stream: subject::STREAM_INGRESS.into(),
            seq,
            subject: subject.into(),
            consumer: consumer.into(),
            deliveries,
            first_failure: now.clone(),
            last_failure: now,
            error: why.into(),
        }
    }

    /// The de-duplication id (see [`Origin`]).
    pub fn msg_id(&self) -> String {
        match &self.origin {
            Origin::Consumer => format!("dlq:{}:{}:{}", self.stream, self.consumer, self.seq),
            Origin::Edge(edge) => format!("dlq:{edge}:{}", self.seq),
            Origin::Ingress => format!("dlq:ingress:{}", self.seq),
        }
    }

    /// Sets the `mesh-dlq-*` headers and `Nats-Msg-Id` on `headers` (the original
    /// message's), replacing any already there.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(h::DLQ_REASON, self.reason.as_str());
        headers.insert(h::DLQ_STREAM, self.stream.as_str());
        headers.insert(h::DLQ_SEQ, self.seq.to_string().as_str());
        headers.insert(h::DLQ_SUBJECT, self.subject.as_str());
        headers.insert(h::DLQ_CONSUMER, self.consumer.as_str());
        headers.insert(h::DLQ_DELIVERIES, self.deliveries.to_string().as_str());
        headers.insert(h::DLQ_FIRST_FAILURE, self.first_failure.as_str());
        headers.insert(h::DLQ_LAST_FAILURE, self.last_failure.as_str());
        headers.insert(h::DLQ_ERROR, self.error.as_str());
        headers.insert(h::NATS_MSG_ID, self.msg_id().as_str());
    }
}

/// The headers a dead letter stored as `dlq_seq` is redriven with: its own minus the
/// `mesh-dlq-*` ones, plus where it came from (`mesh-origin-stream`/`-seq`). `ce-id`
/// stays; `Nats-Msg-Id` becomes `<ce-id>:redrive:<dlq_seq>`, or JetStream would drop a
/// redrive within the duplicate window as a duplicate of the original.
pub fn redrive_headers(dead: &HeaderMap, dlq_seq: u64) -> HeaderMap {
    let get = |name: &str| dead.get(name).map(|v| v.as_str()).unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (k, vs) in dead.iter() {
        let name: &str = k.as_ref();
        if name.starts_with(h::DLQ_PREFIX)
            || name == h::NATS_MSG_ID
            || name.starts_with(h::NATS_EXPECTED_PREFIX)
        {
            continue;
        }
        for v in vs {
            headers.append(k.clone(), v.clone());
        }
    }
    headers.insert(h::ORIGIN_STREAM, get(h::DLQ_STREAM));
    headers.insert(h::ORIGIN_SEQ, get(h::DLQ_SEQ));
    headers.insert(
        h::NATS_MSG_ID,
        format!("{}:redrive:{dlq_seq}", get(h::ID)).as_str(),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(hs: &HeaderMap, name: &str) -> String {
        hs.get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    }

    fn consumer_letter() -> DeadLetter {
        DeadLetter {
            origin: Origin::Consumer,
            reason: reason::MAX_DELIVERIES.into(),
            stream: "MESH_EVENTS".into(),
            seq: 7,
            subject: "mesh.evt.e1.jobs.run".into(),
            consumer: "worker".into(),
            deliveries: 3,
            first_failure: "t1".into(),
            last_failure: "t2".into(),
            error: "boom".into(),
        }
    }

    #[test]
    fn every_header_is_set_from_the_dead_letter() {
        let mut hs = HeaderMap::new();
        hs.insert(h::ID, "0190-id");
        hs.insert(h::NATS_MSG_ID, "0190-id");
        consumer_letter().apply(&mut hs);
        let want = [
            (h::ID, "0190-id"),
            (h::DLQ_REASON, "max-deliveries"),
            (h::DLQ_STREAM, "MESH_EVENTS"),
            (h::DLQ_SEQ, "7"),
            (h::DLQ_SUBJECT, "mesh.evt.e1.jobs.run"),
            (h::DLQ_CONSUMER, "worker"),
            (h::DLQ_DELIVERIES, "3"),
            (h::DLQ_FIRST_FAILURE, "t1"),
            (h::DLQ_LAST_FAILURE, "t2"),
            (h::DLQ_ERROR, "boom"),
            (h::NATS_MSG_ID, "dlq:MESH_EVENTS:worker:7"),
        ];
        for (name, v) in want {
            assert_eq!(value(&hs, name), v, "{name}");
        }
    }

    #[test]
    fn the_msg_id_follows_the_origin() {
        let mut d = consumer_letter();
        assert_eq!(d.msg_id(), "dlq:MESH_EVENTS:worker:7");
        d.origin = Origin::Edge("e1".into());
        assert_eq!(d.msg_id(), "dlq:e1:7");
        d.origin = Origin::Ingress;
        assert_eq!(d.msg_id(), "dlq:ingress:7");
        let b = DeadLetter::bad_bundle(9, "mesh.up.e1", "lander", 2, "undecodable");
        assert_eq!(
            (b.reason.as_str(), b.error.as_str(), b.msg_id().as_str()),
            ("bad-bundle: undecodable", "undecodable", "dlq:ingress:9")
        );
        assert_eq!(b.stream, subject::STREAM_INGRESS);
    }

    #[test]
    fn a_redrive_drops_the_dlq_headers_and_keeps_the_event_id() {
        let mut hs = HeaderMap::new();
        hs.insert(h::ID, "0190-id");
        hs.insert(h::TYPE, "job");
        consumer_letter().apply(&mut hs);
        let r = redrive_headers(&hs, 12);
        assert!(r
            .iter()
            .all(|(k, _)| !AsRef::<str>::as_ref(k).starts_with(h::DLQ_PREFIX)));
        assert_eq!(value(&r, h::ID), "0190-id");
        assert_eq!(value(&r, h::TYPE), "job");
        assert_eq!(value(&r, h::ORIGIN_STREAM), "MESH_EVENTS");
        assert_eq!(value(&r, h::ORIGIN_SEQ), "7");
        assert_eq!(value(&r, h::NATS_MSG_ID), "0190-id:redrive:12");
    }
}
