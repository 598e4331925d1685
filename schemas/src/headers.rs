//! Header names of the CloudEvents NATS binding (binary mode) and the mesh extensions.
//! Lower-case, as the binding writes them; NATS header lookup is case-sensitive, so every
//! reader and writer goes through these constants. The values of the `ce-*` headers are
//! percent-encoded ([`crate::percent`]); the plain `content-type`, `traceparent` and
//! `tracestate` beside them are the secondary mappings other tools read, written as is.

pub const SPECVERSION: &str = "ce-specversion";
pub const ID: &str = "ce-id";
pub const SOURCE: &str = "ce-source";
pub const TYPE: &str = "ce-type";
pub const SUBJECT: &str = "ce-subject";
pub const TIME: &str = "ce-time";
/// `datacontenttype`, as the binding maps it. Every event stored since the mesh
/// percent-encodes its `ce-*` headers carries it, and only those: its presence is how a
/// reader tells an encoded event from one stored before ([`crate::Event::from_message`]).
pub const DATACONTENTTYPE: &str = "ce-datacontenttype";
/// The `datacontenttype` again, as the plain header NATS and HTTP tools read; on an
/// ingest request, the format of the body (`docs/PROTOCOL.md`).
pub const CONTENT_TYPE: &str = "content-type";
pub const DATASCHEMA: &str = "ce-dataschema";
pub const CORRELATION_ID: &str = "ce-correlationid";
pub const CAUSATION_ID: &str = "ce-causationid";
/// The distributed-tracing extension's attributes, as the binding maps them.
pub const CE_TRACEPARENT: &str = "ce-traceparent";
pub const CE_TRACESTATE: &str = "ce-tracestate";
/// The same two as the W3C Trace Context headers (the extension's secondary mapping),
/// for tracers that propagate through NATS headers.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// Mesh extension: the edge that accepted the event.
pub const MESH_EDGE: &str = "ce-meshedge";
/// Mesh extension: the edge's own gap-free sequence number of the event.
pub const MESH_SEQ: &str = "ce-meshseq";
/// JetStream de-duplication id; always equal to `ce-id` on an event.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// On an ingest request: the producer (a UUID the SDK draws once per `Agent`) and...
pub const MESH_PRODUCER: &str = "mesh-producer";
/// ...the request's number from that producer (1, 2, …). A request sent again with the
/// same pair is not stored again: the edge answers with the original ack.
pub const MESH_REQUEST: &str = "mesh-request";
/// On a `rate_limited` refusal: milliseconds until the request may be sent again.
pub const MESH_RETRY_AFTER_MS: &str = "mesh-retry-after-ms";
/// JetStream stores the message only if the stream's last sequence is this. The lander
/// sets it on every event it stores (a run is one chain); JetStream keeps it with the
/// message, so whoever copies a stored event elsewhere drops it first
/// ([`without_expectations`]).
pub const NATS_EXPECTED_LAST_SEQ: &str = "Nats-Expected-Last-Sequence";
/// The prefix of JetStream's publish expectations (`Nats-Expected-Last-Sequence`, …).
pub const NATS_EXPECTED_PREFIX: &str = "Nats-Expected-";

/// `headers` without JetStream's publish expectations (`Nats-Expected-*`): what a stored
/// message is copied to another stream with (a dead letter, a replay, a redrive), where
/// the original's expectations would refuse it.
pub fn without_expectations(headers: &async_nats::HeaderMap) -> async_nats::HeaderMap {
    let mut out = async_nats::HeaderMap::new();
    for (k, vs) in headers.iter() {
        let name: &str = k.as_ref();
        if name.starts_with(NATS_EXPECTED_PREFIX) {
            continue;
        }
        for v in vs {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// On an ingest error reply: the machine-readable error code.
pub const MESH_ERROR: &str = "mesh-error";
/// On a bundle: the first and last edge sequence it covers, for tools reading `MESH_INGRESS`.
pub const MESH_FIRST_SEQ: &str = "mesh-first-seq";
pub const MESH_LAST_SEQ: &str = "mesh-last-seq";
/// On a bundle: how many sequences at the start of its range hold no event (expelled by
/// the outbox limits, or dead-lettered at the edge). Absent means none; the lander
/// refuses a bundle whose events do not fill the rest of its range exactly.
pub const MESH_MISSING: &str = "mesh-missing";

/// The CloudEvents version the mesh speaks.
pub const SPECVERSION_1_0: &str = "1.0";

/// Dead letters in `MESH_DLQ` carry the event's own headers plus these, all named
/// `mesh-dlq-*` ([`DLQ_PREFIX`]); [`crate::dlq::DeadLetter`] sets them.
pub const DLQ_PREFIX: &str = "mesh-dlq-";
/// Why it was dead-lettered: `max-deliveries`, `rejected: …`, `refused-by-centre: …`,
/// `bad-bundle: …` ([`crate::dlq::reason`]).
pub const DLQ_REASON: &str = "mesh-dlq-reason";
/// Stream, sequence and subject of the original message.
pub const DLQ_STREAM: &str = "mesh-dlq-stream";
pub const DLQ_SEQ: &str = "mesh-dlq-seq";
pub const DLQ_SUBJECT: &str = "mesh-dlq-subject";
/// The durable consumer that failed it (empty for events the centre refused).
pub const DLQ_CONSUMER: &str = "mesh-dlq-consumer";
/// How many times it was delivered.
pub const DLQ_DELIVERIES: &str = "mesh-dlq-deliveries";
/// RFC 3339 times of the first and the last reported failure.
pub const DLQ_FIRST_FAILURE: &str = "mesh-dlq-first-failure";
pub const DLQ_LAST_FAILURE: &str = "mesh-dlq-last-failure";
/// The consumer's last error text.
pub const DLQ_ERROR: &str = "mesh-dlq-error";
/// On a redriven or replayed message: where it came from.
pub const ORIGIN_STREAM: &str = "mesh-origin-stream";
pub const ORIGIN_SEQ: &str = "mesh-origin-seq";

#[cfg(test)]
mod expectation_tests {
    use super::*;

    #[test]
    fn expectations_are_dropped_and_everything_else_kept() {
        let mut hs = async_nats::HeaderMap::new();
        hs.insert(NATS_EXPECTED_LAST_SEQ, "41");
        hs.insert("Nats-Expected-Stream", "MESH_EVENTS");
        hs.insert(ID, "x");
        hs.append("ce-note", "a");
        hs.append("ce-note", "b");
        let out = without_expectations(&hs);
        assert!(out.get(NATS_EXPECTED_LAST_SEQ).is_none());
        assert!(out.get("Nats-Expected-Stream").is_none());
        assert_eq!(out.get(ID).unwrap().as_str(), "x");
        assert_eq!(out.get_all("ce-note").count(), 2);
    }
}
