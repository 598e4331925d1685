//! The ingest request an agent sends to `mesh.ingest.<edge>.<agent>` and its reply; the
//! protocol for clients in any language is `docs/PROTOCOL.md`.
//!
//! Body, by the request's `content-type` header ([`BodyFormat`]): MessagePack of
//! [`IngestRequest`] (none, or a MessagePack type), the same in JSON
//! (`application/json`), one CloudEvent (`application/cloudevents+json`) or a batch of
//! them (`application/cloudevents-batch+json`); or one event in CloudEvents binary mode
//! ([`NewEvent::from_binary`]: `ce-*` headers, the data as the body). Decoding is strict
//! (`wire`): unknown fields are refused by name, a wrong type names the field and the
//! type. The agent's identity is the last token of the subject, never a field of the
//! body; a CloudEvent's `source` must be the one the mesh gives it. The edge validates
//! the whole batch first and accepts all of it or none of it. Reply: MessagePack of
//! [`IngestReply`]; an error reply also carries the header `mesh-error: <code>` so a
//! client can branch without decoding.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use async_nats::HeaderMap;
use serde::de::DeserializeSeed;

use crate::wire::{Decoded, Dialect, EventSeed, EventsSeed, RequestSeed};
use crate::{headers as h, percent, subject, Event, SchemaError};

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

/// An event as an agent offers it, before the edge assigns its sequence. It decodes
/// strictly (see `wire`): MessagePack with a binary format, JSON with a readable one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

impl<'de> Deserialize<'de> for NewEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NewEvent, D::Error> {
        let dialect = if d.is_human_readable() {
            Dialect::Json
        } else {
            Dialect::MessagePack
        };
        EventSeed { path: "", dialect }
            .deserialize(d)
            .map(|d| d.event)
    }
}

/// A batch of events from one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestRequest {
    pub events: Vec<NewEvent>,
}

impl<'de> Deserialize<'de> for IngestRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IngestRequest, D::Error> {
        let dialect = if d.is_human_readable() {
            Dialect::Json
        } else {
            Dialect::MessagePack
        };
        let events = RequestSeed(dialect).deserialize(d)?;
        Ok(IngestRequest {
            events: events.into_iter().map(|d| d.event).collect(),
        })
    }
}

/// How an ingest request's body is written, told by its `content-type` header alone (no
/// sniffing: a body's first byte cannot tell a lone CloudEvent from a mesh request, and a
/// typo would be read as the wrong format with a baffling refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// No `content-type`, or `application/msgpack` (`x-msgpack`, `vnd.msgpack`):
    /// MessagePack of [`IngestRequest`], what the Rust SDK sends.
    MessagePack,
    /// `application/json`: [`IngestRequest`] in JSON, the same field names.
    Json,
    /// `application/cloudevents+json`: one CloudEvent, JSON event format.
    CloudEvent,
    /// `application/cloudevents-batch+json`: a JSON array of CloudEvents.
    CloudEventBatch,
}

impl BodyFormat {
    /// The format a `content-type` names; any other type is refused, naming those taken.
    pub fn of(content_type: Option<&str>) -> Result<BodyFormat, SchemaError> {
        let Some(ct) = content_type else {
            return Ok(BodyFormat::MessagePack);
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Ok(match essence.as_str() {
            "" | "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                BodyFormat::MessagePack
            }
            "application/json" => BodyFormat::Json,
            "application/cloudevents+json" => BodyFormat::CloudEvent,
            "application/cloudevents-batch+json" => BodyFormat::CloudEventBatch,
            _ => {
                return Err(SchemaError::BadHeader {
                    name: h::CONTENT_TYPE,
                    value: ct.to_string(),
                    reason: "is not a body format the edge takes: leave it out or send \
                             application/msgpack (MessagePack), application/json, \
                             application/cloudevents+json or \
                             application/cloudevents-batch+json; for one event in \
                             CloudEvents binary mode set ce-specversion and ce-type"
                        .into(),
                })
            }
        })
    }

    /// Whether a `content-type` says structured mode (`application/cloudevents…`), which
    /// the NATS binding tells from binary mode by this alone.
    pub fn is_structured(content_type: Option<&str>) -> bool {
        content_type.is_some_and(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with("application/cloudevents")
        })
    }

    fn describe(self) -> &'static str {
        match self {
            BodyFormat::MessagePack => "ingest request (MessagePack IngestRequest)",
            BodyFormat::Json => "ingest request (JSON IngestRequest)",
            BodyFormat::CloudEvent => "CloudEvent (application/cloudevents+json)",
            BodyFormat::CloudEventBatch => "CloudEvents batch (application/cloudevents-batch+json)",
        }
    }
}

impl IngestRequest {
    /// MessagePack with field names, so clients in other languages can build it.
    pub fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        rmp_serde::to_vec_named(self).map_err(|e| SchemaError::Encode {
            what: "ingest request",
            reason: e.to_string(),
        })
    }

    /// Decodes and validates a MessagePack request; the error names the event index and
    /// field.
    pub fn decode(body: &[u8], limits: &Limits) -> Result<IngestRequest, SchemaError> {
        let req: IngestRequest = rmp_serde::from_slice(body).map_err(|e| SchemaError::Decode {
            what: BodyFormat::MessagePack.describe(),
            reason: msgpack_reason(body, e),
        })?;
        req.validated(limits)
    }

    /// Decodes and validates a body of `format` from the agent whose events have the
    /// CloudEvents source `source` (`mesh://<edge>/<agent>`): a CloudEvent naming
    /// another source is refused, since the mesh would store it under this one.
    pub fn decode_as(
        format: BodyFormat,
        body: &[u8],
        limits: &Limits,
        source: &str,
    ) -> Result<IngestRequest, SchemaError> {
        let decode_err = |reason: String| SchemaError::Decode {
            what: format.describe(),
            reason,
        };
        let decoded: Vec<Decoded> = match format {
            BodyFormat::MessagePack => return IngestRequest::decode(body, limits),
            BodyFormat::Json => RequestSeed(Dialect::Json)
                .deserialize(&mut serde_json::Deserializer::from_slice(body)),
            BodyFormat::CloudEvent => EventSeed {
                path: "",
                dialect: Dialect::CloudEvent,
            }
            .deserialize(&mut serde_json::Deserializer::from_slice(body))
            .map(|e| vec![e]),
            BodyFormat::CloudEventBatch => EventsSeed {
                name: "",
                dialect: Dialect::CloudEvent,
            }
            .deserialize(&mut serde_json::Deserializer::from_slice(body)),
        }
        .map_err(|e| decode_err(e.to_string()))?;
        let mut events = Vec::with_capacity(decoded.len());
        for (i, d) in decoded.into_iter().enumerate() {
            if let Some(given) = d.source {
                if given != source {
                    let field = match format {
                        BodyFormat::CloudEventBatch => format!("[{i}].source"),
                        _ => "source".to_string(),
                    };
                    return Err(SchemaError::WrongSource {
                        field,
                        value: given,
                        expected: source.to_string(),
                    });
                }
            }
            events.push(d.event);
        }
        IngestRequest { events }.validated(limits)
    }

    fn validated(self, limits: &Limits) -> Result<IngestRequest, SchemaError> {
        let req = self;
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

/// The reason of a MessagePack refusal, with a hint when the body is plainly JSON sent
/// without its `content-type` (a MessagePack request never starts with `{` or `[`).
fn msgpack_reason(body: &[u8], e: rmp_serde::decode::Error) -> String {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') | Some(b'[') => format!(
            "{e} (the body looks like JSON: send it with the header content-type: \
             application/json, or application/cloudevents+json for a CloudEvent)"
        ),
        _ => e.to_string(),
    }
}

impl NewEvent {
    /// One event in CloudEvents binary mode (the NATS binding): attributes from the
    /// `ce-*` headers, percent-decoded, the data as the body. `datacontenttype` is
    /// `ce-datacontenttype` or else `content-type`; the trace context is
    /// `ce-traceparent` / `ce-tracestate` or else the W3C headers. `ce-specversion`, when
    /// given, must be `1.0`; `ce-source`, when given, must be `source`; a `ce-id` or
    /// `ce-time` that does not parse is refused (the edge sets them when absent), and so
    /// is any other `ce-*` header, by name.
    pub fn from_binary(hm: &HeaderMap, data: Bytes, source: &str) -> Result<NewEvent, SchemaError> {
        const KNOWN: [&str; 12] = [
            h::SPECVERSION,
            h::ID,
            h::SOURCE,
            h::TYPE,
            h::SUBJECT,
            h::TIME,
            h::DATACONTENTTYPE,
            h::DATASCHEMA,
            h::CORRELATION_ID,
            h::CAUSATION_ID,
            h::CE_TRACEPARENT,
            h::CE_TRACESTATE,
        ];
        for (name, _) in hm.iter() {
            let name: &str = name.as_ref();
            let lower = name.to_ascii_lowercase();
            if !lower.starts_with("ce-") || KNOWN.contains(&lower.as_str()) {
                continue;
            }
            let reason = match lower.as_str() {
                h::MESH_EDGE | h::MESH_SEQ => {
                    "is set by the edge that accepts the event; leave it out".to_string()
                }
                _ => format!(
                    "is not an attribute the mesh stores; the ce- headers it takes are {}",
                    KNOWN.join(", ")
                ),
            };
            return Err(SchemaError::BadHeader {
                name: "ce-*",
                value: name.to_string(),
                reason,
            });
        }
        let get = |name: &'static str| -> Result<Option<String>, SchemaError> {
            let Some(v) = hm.get(name) else {
                return Ok(None);
            };
            percent::decode(v.as_str())
                .map(|d| Some(d.into_owned()))
                .map_err(|e| SchemaError::BadHeader {
                    name,
                    value: v.as_str().to_string(),
                    reason: e.to_string(),
                })
        };
        let bad = |name: &'static str, value: String, reason: String| SchemaError::BadHeader {
            name,
            value,
            reason: format!("{reason}; leave it out to have the edge set it"),
        };
        if let Some(v) = get(h::SPECVERSION)? {
            if v != h::SPECVERSION_1_0 {
                return Err(SchemaError::BadHeader {
                    name: h::SPECVERSION,
                    value: v,
                    reason: "only CloudEvents 1.0 is taken".into(),
                });
            }
        }
        if let Some(v) = get(h::SOURCE)? {
            if v != source {
                return Err(SchemaError::WrongSource {
                    field: h::SOURCE.into(),
                    value: v,
                    expected: source.into(),
                });
            }
        }
        let id = match get(h::ID)? {
            None => None,
            Some(s) => Some(
                Uuid::parse_str(&s)
                    .map_err(|e| bad(h::ID, s.clone(), format!("is not a UUID: {e}")))?,
            ),
        };
        let time_ns = match get(h::TIME)? {
            None => None,
            Some(s) => Some(
                chrono::DateTime::parse_from_rfc3339(&s)
                    .ok()
                    .and_then(|t| t.timestamp_nanos_opt())
                    .ok_or_else(|| bad(h::TIME, s.clone(), "is not an RFC 3339 time".into()))?,
            ),
        };
        let plain = |name: &str| hm.get(name).map(|v| v.as_str().to_string());
        Ok(NewEvent {
            id,
            ty: get(h::TYPE)?.ok_or(SchemaError::MissingHeader { name: h::TYPE })?,
            subject: get(h::SUBJECT)?.ok_or(SchemaError::MissingHeader { name: h::SUBJECT })?,
            time_ns,
            content_type: match get(h::DATACONTENTTYPE)? {
                Some(v) => Some(v),
                None => plain(h::CONTENT_TYPE),
            },
            dataschema: get(h::DATASCHEMA)?,
            correlation_id: get(h::CORRELATION_ID)?,
            causation_id: get(h::CAUSATION_ID)?,
            traceparent: match get(h::CE_TRACEPARENT)? {
                Some(v) => Some(v),
                None => plain(h::TRACEPARENT),
            },
            tracestate: match get(h::CE_TRACESTATE)? {
                Some(v) => Some(v),
                None => plain(h::TRACESTATE),
            },
            data,
        })
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
    /// MessagePack, the answer to a MessagePack request.
    pub fn encode(&self) -> Vec<u8> {
        // An enum of integers and strings always encodes.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// JSON of the same shape, the answer to a JSON or CloudEvents request
    /// ([`IngestReply::in_json`]), so such a client needs no MessagePack.
    pub fn encode_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Either encoding (a MessagePack reply never starts with `{`).
    pub fn decode(body: &[u8]) -> Result<IngestReply, SchemaError> {
        let err = |reason: String| SchemaError::Decode {
            what: "ingest reply",
            reason,
        };
        if body.first() == Some(&b'{') {
            return serde_json::from_slice(body).map_err(|e| err(e.to_string()));
        }
        rmp_serde::from_slice(body).map_err(|e| err(e.to_string()))
    }

    /// Whether the request with `headers` is answered in JSON: always, except when its
    /// body is MessagePack (no `content-type`, or a MessagePack one, and not binary
    /// mode), which is answered in MessagePack as it always was.
    pub fn in_json(headers: Option<&HeaderMap>) -> bool {
        let Some(hm) = headers else {
            return false;
        };
        let ct = hm.get(h::CONTENT_TYPE).map(|v| v.as_str());
        let binary = hm.get(h::TYPE).is_some() || hm.get(h::SPECVERSION).is_some();
        binary || BodyFormat::of(ct) != Ok(BodyFormat::MessagePack)
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

    const SRC: &str = "mesh://e1/py";

    fn json(body: serde_json::Value, format: BodyFormat) -> Result<Vec<NewEvent>, SchemaError> {
        let body = serde_json::to_vec(&body).unwrap();
        IngestRequest::decode_as(format, &body, &Limits::default(), SRC).map(|r| r.events)
    }

    fn msgpack(body: serde_json::Value) -> Result<Vec<NewEvent>, SchemaError> {
        let body = rmp_serde::to_vec_named(&body).unwrap();
        IngestRequest::decode(&body, &Limits::default()).map(|r| r.events)
    }

    fn refusal(r: Result<Vec<NewEvent>, SchemaError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn json_requests_mirror_the_messagepack_fields() {
        let id = Uuid::now_v7();
        let evs = json(
            serde_json::json!({"events": [
                {"id": id.to_string(), "ty": "t", "subject": "a.b",
                 "time": "2026-12-04T16:43:22.123456789Z", "data": {"x": [1, 2]},
                 "correlation_id": "c", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
                {"ty": "t", "subject": "a.b", "data_base64": "AP/+"},
                {"ty": "t", "subject": "a.b", "content_type": "text/plain", "data": "héllo"},
                {"ty": "t", "subject": "a.b", "time_ns": 5},
            ]}),
            BodyFormat::Json,
        )
        .unwrap();
        assert_eq!(evs[0].id, Some(id));
        assert_eq!(&evs[0].data[..], br#"{"x":[1,2]}"#);
        // A JSON value with no content type is JSON, as in CloudEvents.
        assert_eq!(evs[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(evs[0].time_ns, Some(1_796_402_602_123_456_789));
        assert_eq!(evs[0].correlation_id.as_deref(), Some("c"));
        assert_eq!(&evs[1].data[..], &[0x00, 0xff, 0xfe]);
        assert_eq!(evs[1].content_type, None);
        assert_eq!(&evs[2].data[..], "héllo".as_bytes());
        assert_eq!(evs[3].time_ns, Some(5));
        assert!(evs[3].data.is_empty());
    }

    #[test]
    fn messagepack_takes_ids_as_uuid_strings_and_as_16_bytes() {
        let id = Uuid::now_v7();
        let evs = msgpack(serde_json::json!({"events": [
            {"id": id.to_string(), "ty": "t", "subject": "a"}
        ]}))
        .unwrap();
        assert_eq!(evs[0].id, Some(id));
        let mut ev = NewEvent::new("t", "a", &b"x"[..]);
        ev.id = Some(id);
        let bytes = IngestRequest { events: vec![ev] }.encode().unwrap();
        let back = IngestRequest::decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(back.events[0].id, Some(id));
        // The array form still decodes.
        let arr = rmp_serde::to_vec(&IngestRequest {
            events: back.events.clone(),
        })
        .unwrap();
        assert_eq!(
            IngestRequest::decode(&arr, &Limits::default()).unwrap(),
            back
        );
    }

    /// Issue 13: a `contentType` typo was acked and stored as `application/octet-stream`.
    #[test]
    fn an_unknown_field_is_refused_by_name_in_every_format() {
        let ev = serde_json::json!({"ty": "t", "subject": "a", "contentType": "application/json"});
        for err in [
            refusal(msgpack(serde_json::json!({"events": [ev.clone()]}))),
            refusal(json(serde_json::json!({"events": [ev]}), BodyFormat::Json)),
        ] {
            assert!(
                err.contains(
                    r#"events[0]: unknown field "contentType" (did you mean "content_type"?)"#
                ),
                "{err}"
            );
        }
        let err = refusal(msgpack(
            serde_json::json!({"events": [{"ty": "t", "subject": "a", "data_base64": "AA=="}]}),
        ));
        assert!(err.contains("in MessagePack, data is bytes"), "{err}");
        let err = refusal(json(serde_json::json!({"evnts": []}), BodyFormat::Json));
        assert!(err.contains(r#"unknown field "evnts""#), "{err}");
        let err = refusal(json(
            serde_json::json!({"specversion": "1.0", "type": "t", "subject": "a", "source": SRC, "contenttype": "x"}),
            BodyFormat::CloudEvent,
        ));
        assert!(
            err.contains(r#"unknown field "contenttype" (did you mean "datacontenttype"?)"#),
            "{err}"
        );
        let err = refusal(json(
            serde_json::json!({"specversion": "1.0", "type": "t", "subject": "a", "meshseq": "4"}),
            BodyFormat::CloudEvent,
        ));
        assert!(err.contains(r#""meshseq" is set by the edge"#), "{err}");
        let err = refusal(json(
            serde_json::json!({"events": [{"type": "t", "subject": "a"}]}),
            BodyFormat::Json,
        ));
        assert!(
            err.contains(r#"unknown field "type" (did you mean "ty"?)"#),
            "{err}"
        );
    }

    /// Issue 13: decode errors said `expected i64` and no field.
    #[test]
    fn a_wrong_type_names_the_field_and_the_expected_type() {
        let ev = serde_json::json!({"ty": "t", "subject": "a", "time_ns": "yesterday"});
        for err in [
            refusal(msgpack(
                serde_json::json!({"events": [{"ty": "t", "subject": "a"}, ev.clone()]}),
            )),
            refusal(json(
                serde_json::json!({"events": [{"ty": "t", "subject": "a"}, ev]}),
                BodyFormat::Json,
            )),
        ] {
            assert!(
                err.contains(
                    "events[1].time_ns must be an integer: nanoseconds since the Unix epoch"
                ),
                "{err}"
            );
        }
        let err = refusal(msgpack(
            serde_json::json!({"events": [{"ty": 7, "subject": "a"}]}),
        ));
        assert!(err.contains("events[0].ty must be a string"), "{err}");
        let err = refusal(msgpack(serde_json::json!({"events": [{"subject": "a"}]})));
        assert!(err.contains("events[0].ty is missing"), "{err}");
        let err = refusal(json(
            serde_json::json!({"events": [{"ty": "t", "subject": "a", "content_type": "text/plain", "data": {"x": 1}}]}),
            BodyFormat::Json,
        ));
        assert!(err.contains("events[0].data must be a string"), "{err}");
        let err = refusal(json(
            serde_json::json!({"events": [{"ty": "t", "subject": "a", "data": 1, "data_base64": "AA=="}]}),
            BodyFormat::Json,
        ));
        assert!(
            err.contains("events[0].data and events[0].data_base64 are both given"),
            "{err}"
        );
        let err = refusal(json(
            serde_json::json!({"events": [{"ty": "t", "subject": "a", "time": "yesterday"}]}),
            BodyFormat::Json,
        ));
        assert!(
            err.contains("events[0].time must be an RFC 3339 time"),
            "{err}"
        );
    }

    /// Issue 13: a UUID string was refused with `expected a 16 byte array`.
    #[test]
    fn a_bad_uuid_is_refused_naming_the_field() {
        for err in [
            refusal(msgpack(
                serde_json::json!({"events": [{"id": "not-a-uuid", "ty": "t", "subject": "a"}]}),
            )),
            refusal(json(
                serde_json::json!({"events": [{"id": "not-a-uuid", "ty": "t", "subject": "a"}]}),
                BodyFormat::Json,
            )),
        ] {
            assert!(err.contains("events[0].id must be a UUID"), "{err}");
            assert!(err.contains(r#""not-a-uuid" is not a UUID"#), "{err}");
        }
        let err = refusal(json(
            serde_json::json!([{"specversion": "1.0", "id": "abc", "type": "t", "subject": "a"}]),
            BodyFormat::CloudEventBatch,
        ));
        assert!(err.contains("[0].id must be a UUID"), "{err}");
    }

    #[test]
    fn cloudevents_structured_and_batch() {
        let id = Uuid::now_v7();
        let ce = serde_json::json!({
            "specversion": "1.0", "id": id.to_string(), "source": SRC, "type": "py.100%",
            "subject": "a.b", "time": "2026-12-04T16:43:22Z", "datacontenttype": "application/octet-stream",
            "data_base64": "AP/+", "dataschema": "https://example.com/s", "correlationid": "c",
            "causationid": "d", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "rojo=00f067aa0ba902b7",
        });
        let evs = json(ce.clone(), BodyFormat::CloudEvent).unwrap();
        assert_eq!(evs[0].id, Some(id));
        assert_eq!(evs[0].ty, "py.100%");
        assert_eq!(&evs[0].data[..], &[0, 0xff, 0xfe]);
        assert_eq!(
            evs[0].content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(evs[0].tracestate.as_deref(), Some("rojo=00f067aa0ba902b7"));
        assert_eq!(evs[0].causation_id.as_deref(), Some("d"));
        let batch = json(serde_json::json!([ce, ce]), BodyFormat::CloudEventBatch).unwrap();
        assert_eq!(batch.len(), 2);

        let mut other = ce.clone();
        other["source"] = "mesh://e1/victim".into();
        let err = json(serde_json::json!([ce, other]), BodyFormat::CloudEventBatch).unwrap_err();
        assert_eq!(ErrorCode::of(&err), ErrorCode::Invalid);
        assert!(
            err.to_string()
                .contains(r#"[1].source is "mesh://e1/victim""#),
            "{err}"
        );
        let mut old = ce.clone();
        old["specversion"] = "0.3".into();
        let err = refusal(json(old, BodyFormat::CloudEvent));
        assert!(err.contains("specversion is \"0.3\""), "{err}");
        let mut nosubj = ce.clone();
        nosubj.as_object_mut().unwrap().remove("subject");
        let err = refusal(json(nosubj, BodyFormat::CloudEvent));
        assert!(err.contains("subject is missing"), "{err}");
        let err = refusal(json(serde_json::json!([]), BodyFormat::CloudEventBatch));
        assert!(err.contains("no event"), "{err}");
    }

    #[test]
    fn the_content_type_header_picks_the_format() {
        for (ct, f) in [
            (None, BodyFormat::MessagePack),
            (Some("application/msgpack"), BodyFormat::MessagePack),
            (Some("application/json; charset=utf-8"), BodyFormat::Json),
            (
                Some("application/cloudevents+json; charset=UTF-8"),
                BodyFormat::CloudEvent,
            ),
            (
                Some("Application/CloudEvents-Batch+JSON"),
                BodyFormat::CloudEventBatch,
            ),
        ] {
            assert_eq!(BodyFormat::of(ct).unwrap(), f, "{ct:?}");
        }
        let err = BodyFormat::of(Some("text/plain")).unwrap_err();
        assert!(err.to_string().contains("content-type"), "{err}");
        assert!(BodyFormat::is_structured(Some(
            "application/cloudevents+json"
        )));
        assert!(!BodyFormat::is_structured(Some("application/json")));
        // Only a MessagePack request gets a MessagePack reply.
        assert!(!IngestReply::in_json(None));
        let mut hm = HeaderMap::new();
        assert!(!IngestReply::in_json(Some(&hm)));
        hm.insert(h::CONTENT_TYPE, "application/msgpack");
        assert!(!IngestReply::in_json(Some(&hm)));
        for ct in [
            "application/json",
            "application/cloudevents+json",
            "text/plain",
        ] {
            hm.insert(h::CONTENT_TYPE, ct);
            assert!(IngestReply::in_json(Some(&hm)), "{ct}");
        }
        let mut binary = HeaderMap::new();
        binary.insert(h::TYPE, "t");
        assert!(IngestReply::in_json(Some(&binary)));
        // JSON sent without its content type gets a hint, not only a MessagePack error.
        let err = IngestRequest::decode(br#"{"events": []}"#, &Limits::default()).unwrap_err();
        assert!(
            err.to_string().contains("content-type: application/json"),
            "{err}"
        );
    }

    #[test]
    fn binary_mode_percent_decodes_and_refuses_what_it_does_not_store() {
        let mut hm = HeaderMap::new();
        hm.insert(h::SPECVERSION, "1.0");
        hm.insert(h::TYPE, "py.100%25");
        hm.insert(h::SUBJECT, "a.b");
        // The Python SDK escapes every reserved character.
        hm.insert(h::SOURCE, "mesh%3A%2F%2Fe1%2Fpy");
        hm.insert(
            h::CE_TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        hm.insert(h::CONTENT_TYPE, "text/plain");
        let ev = NewEvent::from_binary(&hm, Bytes::from_static(b"x"), SRC).unwrap();
        assert_eq!(ev.ty, "py.100%");
        assert_eq!(ev.content_type.as_deref(), Some("text/plain"));
        assert!(ev.traceparent.is_some());

        let refuse = |name: &str, value: &str| {
            let mut bad = hm.clone();
            bad.insert(name, value);
            NewEvent::from_binary(&bad, Bytes::new(), SRC)
                .unwrap_err()
                .to_string()
        };
        let err = refuse(h::TYPE, "py.100%");
        assert!(err.contains("ce-type") && err.contains("%25"), "{err}");
        let err = refuse("ce-contenttype", "x");
        assert!(
            err.contains("ce-contenttype") && err.contains("not an attribute"),
            "{err}"
        );
        let err = refuse(h::SOURCE, "mesh://e1/other");
        assert!(err.contains("mesh://e1/py"), "{err}");
        let err = refuse(h::MESH_SEQ, "9");
        assert!(err.contains("set by the edge"), "{err}");
        let err = refuse(h::SPECVERSION, "0.3");
        assert!(err.contains("ce-specversion"), "{err}");
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
            assert_eq!(IngestReply::decode(&r.encode_json()).unwrap(), r);
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
