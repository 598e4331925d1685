//! The ingest request an agent sends to `mesh.ingest.<edge>.<agent>` and its reply.
//!
//! Body: MessagePack of [`IngestRequest`] (a batch of one or more [`NewEvent`]s; maps or
//! arrays both decode). The agent's identity is the last token of the subject, never a
//! field of the body. The edge validates the whole batch first and accepts all of it or
//! none of it. Reply: MessagePack of [`IngestReply`]; an error reply also carries the
//! header `mesh-error: <code>` so a client can branch without decoding.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{subject, Event, SchemaError};

/// Limits the edge enforces on ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `data` of one event, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one request.
    pub max_batch_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 512 * 1024,
            max_batch_events: 4096,
        }
    }
}

/// An event as an agent offers it, before the edge assigns its sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// `ce-id`; the SDK sets a UUIDv7, the edge assigns one when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// `ce-type`
    pub ty: String,
    /// Dotted subject, below `mesh.evt.<edge>.`.
    pub subject: String,
    /// `ce-time` in nanoseconds since the epoch; the edge uses its clock when absent.
    #[serde(default)]
    pub time_ns: Option<i64>,
    /// `content-type`; `application/octet-stream` when absent.
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub dataschema: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub causation_id: Option<String>,
    #[serde(default)]
    pub traceparent: Option<String>,
    #[serde(default)]
    pub tracestate: Option<String>,
    /// The payload.
    pub data: Bytes,
}

/// Longest `ce-type`, content type or other string attribute, in bytes.
pub const MAX_ATTR_LEN: usize = 256;

impl NewEvent {
    /// A new event with a fresh UUIDv7, `ce-time` now, and no optional attributes.
    pub fn new(ty: impl Into<String>, subject: impl Into<String>, data: impl Into<Bytes>) -> Self {
        NewEvent {
            id: Some(Uuid::now_v7()),
            ty: ty.into(),
            subject: subject.into(),
            time_ns: Utc::now().timestamp_nanos_opt(),
            content_type: None,
            dataschema: None,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            data: data.into(),
        }
    }

    /// Checks every attribute against the wire rules and `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), SchemaError> {
        validate_attributes(
            &self.subject,
            &self.ty,
            [
                ("content_type", self.content_type.as_ref()),
                ("dataschema", self.dataschema.as_ref()),
                ("correlation_id", self.correlation_id.as_ref()),
                ("causation_id", self.causation_id.as_ref()),
                ("traceparent", self.traceparent.as_ref()),
                ("tracestate", self.tracestate.as_ref()),
            ],
        )?;
        if self.data.len() > limits.max_event_bytes {
            return Err(SchemaError::Oversized {
                field: "data".into(),
                len: self.data.len(),
                max: limits.max_event_bytes,
            });
        }
        Ok(())
    }

    /// The stored event, once the edge has accepted it as `seq` from `agent`.
    pub fn into_event(self, edge: &str, agent: &str, seq: u64, now: DateTime<Utc>) -> Event {
        Event {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            edge: edge.to_string(),
            agent: agent.to_string(),
            seq,
            ty: self.ty,
            subject: self.subject,
            time: self
                .time_ns
                .map(DateTime::from_timestamp_nanos)
                .unwrap_or(now),
            content_type: self
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            dataschema: self.dataschema,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            data: self.data,
        }
    }
}

/// The attribute rules of an event, shared by [`NewEvent::validate`] (at the edge) and
/// [`Event::validate`] (at the centre): a valid subject, a non-empty type, and string
/// attributes that fit a header (at most [`MAX_ATTR_LEN`] bytes, no control character).
pub(crate) fn validate_attributes(
    subject: &str,
    ty: &str,
    optional: [(&str, Option<&String>); 6],
) -> Result<(), SchemaError> {
    subject::validate_subject("subject", subject)?;
    if ty.is_empty() {
        return Err(SchemaError::Empty { field: "ty".into() });
    }
    for (field, value) in std::iter::once(("ty", Some(ty))).chain(
        optional
            .into_iter()
            .map(|(f, v)| (f, v.map(String::as_str))),
    ) {
        if let Some(v) = value {
            if v.len() > MAX_ATTR_LEN {
                return Err(SchemaError::TooLong {
                    field: field.into(),
                    len: v.len(),
                    max: MAX_ATTR_LEN,
                });
            }
            // Header values cannot carry line breaks or other control characters.
            if v.chars().any(|c| c.is_control()) {
                return Err(SchemaError::Whitespace {
                    field: field.into(),
                    value: v.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A batch of events from one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRequest {
    pub events: Vec<NewEvent>,
}

impl IngestRequest {
    /// MessagePack with field names, so clients in other languages can build it.
    pub fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        rmp_serde::to_vec_named(self).map_err(|e| SchemaError::Encode {
            what: "ingest request",
            reason: e.to_string(),
        })
    }

    /// Decodes and validates a request; the error names the event index and field.
    pub fn decode(body: &[u8], limits: &Limits) -> Result<IngestRequest, SchemaError> {
        let req: IngestRequest = rmp_serde::from_slice(body).map_err(|e| SchemaError::Decode {
            what: "ingest request (MessagePack IngestRequest)",
            reason: e.to_string(),
        })?;
        if req.events.is_empty() {
            return Err(SchemaError::EmptyBatch);
        }
        if req.events.len() > limits.max_batch_events {
            return Err(SchemaError::TooManyEvents {
                count: req.events.len(),
                max: limits.max_batch_events,
            });
        }
        for (i, ev) in req.events.iter().enumerate() {
            ev.validate(limits)
                .map_err(|e| e.in_field(&format!("events[{i}]")))?;
        }
        Ok(req)
    }
}

/// Why the edge refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not a valid request.
    Malformed,
    /// An attribute breaks a rule (subject, type, length).
    Invalid,
    /// An event's data is over the size limit.
    Oversized,
    /// The outbox is at its byte limit and its policy is `reject`.
    OutboxFull,
    /// The agent may not publish here.
    Unauthorised,
    /// The edge hub is shutting down; retry on another or later.
    ShuttingDown,
    /// The outbox could not be written.
    Storage,
    /// The agent is over its events/s or bytes/s limit at this edge; nothing was stored.
    /// The reply's `mesh-retry-after-ms` header says when to send it again.
    RateLimited,
    /// An event's `ce-id` was stored already for this agent (within
    /// `outbox.id_horizon`); nothing of the request was stored, the stored event stands.
    Duplicate,
    /// The agent holds its share of the edge's outbox already (`limits.outbox_share`,
    /// under `outbox.full_policy = "reject"`); nothing was stored. The reply's
    /// `mesh-retry-after-ms` says when to try again (the outbox drains once the link to
    /// the centre is up).
    QuotaExceeded,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Oversized => "oversized",
            ErrorCode::OutboxFull => "outbox_full",
            ErrorCode::Unauthorised => "unauthorised",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Storage => "storage",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Duplicate => "duplicate",
            ErrorCode::QuotaExceeded => "quota_exceeded",
        }
    }

    /// The code for a validation failure.
    pub fn of(err: &SchemaError) -> ErrorCode {
        match err {
            SchemaError::Decode { .. } | SchemaError::EmptyBatch => ErrorCode::Malformed,
            SchemaError::Oversized { .. } | SchemaError::TooManyEvents { .. } => {
                ErrorCode::Oversized
            }
            _ => ErrorCode::Invalid,
        }
    }
}

/// The edge's answer to an ingest request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestReply {
    /// Durably accepted: the events got `ce-meshseq` `first_seq..=last_seq`, in order.
    Ok { first_seq: u64, last_seq: u64 },
    /// Refused: nothing of the request was stored.
    Err { code: ErrorCode, message: String },
}

impl IngestReply {
    pub fn encode(&self) -> Vec<u8> {
        // An enum of integers and strings always encodes.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn decode(body: &[u8]) -> Result<IngestReply, SchemaError> {
        rmp_serde::from_slice(body).map_err(|e| SchemaError::Decode {
            what: "ingest reply",
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_validation() {
        let lim = Limits::default();
        let req = IngestRequest {
            events: vec![NewEvent::new("t", "a.b", &b"x"[..])],
        };
        let back = IngestRequest::decode(&req.encode().unwrap(), &lim).unwrap();
        assert_eq!(back, req);

        let bad = IngestRequest {
            events: vec![
                NewEvent::new("t", "a.b", &b"x"[..]),
                NewEvent::new("t", "a..b", &b"x"[..]),
            ],
        };
        let err = IngestRequest::decode(&bad.encode().unwrap(), &lim).unwrap_err();
        assert!(err.to_string().contains("events[1].subject"), "{err}");
        assert_eq!(ErrorCode::of(&err), ErrorCode::Invalid);

        let big = IngestRequest {
            events: vec![NewEvent::new("t", "a", vec![0u8; lim.max_event_bytes + 1])],
        };
        let err = IngestRequest::decode(&big.encode().unwrap(), &lim).unwrap_err();
        assert_eq!(ErrorCode::of(&err), ErrorCode::Oversized);
        assert!(err.to_string().contains("events[0].data"), "{err}");

        let err = IngestRequest::decode(b"\xc1garbage", &lim).unwrap_err();
        assert_eq!(ErrorCode::of(&err), ErrorCode::Malformed);

        let mut ev = NewEvent::new("t", "a", &b""[..]);
        ev.ty = "bad\r\nheader".into();
        let err =
            IngestRequest::decode(&IngestRequest { events: vec![ev] }.encode().unwrap(), &lim)
                .unwrap_err();
        assert!(err.to_string().contains("events[0].ty"), "{err}");
    }

    #[test]
    fn reply_round_trip() {
        for r in [
            IngestReply::Ok {
                first_seq: 1,
                last_seq: 9,
            },
            IngestReply::Err {
                code: ErrorCode::OutboxFull,
                message: "full".into(),
            },
        ] {
            assert_eq!(IngestReply::decode(&r.encode()).unwrap(), r);
        }
    }
}

/// An edge hub's answer on [`crate::subject::HUB_DISCOVER`] (JSON). Requests cross leaf
/// links, so an agent may hear from several edges; it keeps the one connected to its
/// own nats-server (`server_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeHello {
    pub edge: String,
    /// `server_id` of the nats-server the edge hub is connected to.
    pub server_id: String,
    pub server_name: String,
}

/// An edge hub's status heartbeat on `mesh.hub.edge.<edge>` (JSON), every second: the
/// centre learns from it when a link is up, how big the backlog is, and what the outbox
/// limits expelled (G2: each expulsion is written to the audit log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeStatus {
    pub edge: String,
    /// Whether the edge hub's uplink reaches the centre's `MESH_INGRESS` (its probe is
    /// answered, or a bundle was acked within the probe timeout).
    pub uplink_up: bool,
    /// Events in the outbox not yet acked by the centre (the backlog).
    pub outbox_events: u64,
    pub outbox_bytes: u64,
    /// Events expelled by the outbox limits since the edge hub started, per reason.
    pub expelled: std::collections::BTreeMap<String, u64>,
    /// RFC 3339, UTC.
    pub time: String,
}
