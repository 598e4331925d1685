//! The CloudEvents 1.0 envelope as the mesh stores and carries it.
//!
//! On a NATS message (stream `MESH_EVENTS`, the live copy, a dead letter) an event is in
//! the binding's binary mode: every attribute in a `ce-` header, its value
//! percent-encoded (see [`crate::headers`], [`crate::percent`]), the data as the payload,
//! so any NATS client in any language, and a CloudEvents SDK, reads it. `Nats-Msg-Id`
//! is `<ce-meshedge>:<ce-meshseq>`, which names exactly one event of the mesh; `ce-id`
//! does not (CloudEvents makes an event `ce-source` + `ce-id`, so two agents may use one
//! id, and a JetStream de-duplication on it would drop the second agent's event). In the edge outbox and in bundles it is MessagePack (array
//! encoding, fields in declaration order: append new optional fields at the end only).

use std::collections::HashMap;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{headers as h, percent, subject, SchemaError};

/// One accepted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `ce-id`: a UUIDv7, monotonic within the publishing process.
    pub id: Uuid,
    /// `ce-meshedge`: the edge that accepted it.
    pub edge: String,
    /// The publishing agent; `ce-source` is `mesh://<edge>/<agent>`.
    pub agent: String,
    /// `ce-meshseq`: the edge's gap-free sequence number.
    pub seq: u64,
    /// `ce-type`
    pub ty: String,
    /// `ce-subject`: the dotted subject below `mesh.evt.<edge>.`.
    pub subject: String,
    /// `ce-time`, UTC.
    #[serde(with = "chrono::serde::ts_nanoseconds")]
    pub time: DateTime<Utc>,
    /// `content-type` of the data.
    pub content_type: String,
    pub dataschema: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// The payload, opaque to the mesh.
    pub data: Bytes,
}

impl Event {
    /// Checks an accepted event against the wire rules, as the lander does before it lands
    /// one: a non-nil id, valid edge and agent ids, and the attribute rules of
    /// [`crate::NewEvent::validate`]. Not the data size: that limit is the edge's, and the
    /// stream enforces its own.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.id.is_nil() {
            return Err(SchemaError::Empty { field: "id".into() });
        }
        subject::validate_id("edge", &self.edge)?;
        subject::validate_id("agent", &self.agent)?;
        crate::ingest::validate_attributes(
            &self.subject,
            &self.ty,
            [
                ("content_type", Some(&self.content_type)),
                ("dataschema", self.dataschema.as_ref()),
                ("correlation_id", self.correlation_id.as_ref()),
                ("causation_id", self.causation_id.as_ref()),
                ("traceparent", self.traceparent.as_ref()),
                ("tracestate", self.tracestate.as_ref()),
            ],
        )
    }

    /// `mesh://<edge>/<agent>`
    pub fn source(&self) -> String {
        format!("mesh://{}/{}", self.edge, self.agent)
    }

    /// Its `Nats-Msg-Id`: `<edge>:<meshseq>`, unique in the mesh (see the module doc).
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.edge, self.seq)
    }

    /// The subject this event has in `MESH_EVENTS`.
    pub fn evt_subject(&self) -> String {
        subject::evt(&self.edge, &self.subject)
    }

    /// The subject of its live copy at the edge.
    pub fn live_subject(&self) -> String {
        subject::live(&self.edge, &self.subject)
    }

    /// The binary-mode headers of this event: `ce-*` values percent-encoded, plus the
    /// plain `content-type`, `traceparent` and `tracestate` (see [`crate::headers`]).
    pub fn to_headers(&self) -> HeaderMap {
        // Header names are built at compile time: this runs once per event on the edge
        // (live copy) and once per event in the lander.
        let mut m = HeaderMap::new();
        m.insert(names::SPECVERSION, h::SPECVERSION_1_0);
        m.insert(names::ID, self.id.to_string());
        m.insert(names::SOURCE, percent::encode(&self.source()).as_ref());
        m.insert(names::TYPE, percent::encode(&self.ty).as_ref());
        m.insert(names::SUBJECT, percent::encode(&self.subject).as_ref());
        m.insert(names::TIME, format_time(&self.time));
        m.insert(
            names::DATACONTENTTYPE,
            percent::encode(&self.content_type).as_ref(),
        );
        m.insert(names::CONTENT_TYPE, self.content_type.as_str());
        if let Some(v) = &self.dataschema {
            m.insert(names::DATASCHEMA, percent::encode(v).as_ref());
        }
        insert_per_event(&mut m, self);
        m.insert(names::MESH_EDGE, percent::encode(&self.edge).as_ref());
        m.insert(names::MESH_SEQ, self.seq.to_string());
        m.insert(names::NATS_MSG_ID, self.msg_id());
        m
    }

    /// Reads an event back from a binary-mode message. Every required attribute must be
    /// present and well formed; the error names the header. An event stored before the
    /// mesh percent-encoded its headers has no `ce-datacontenttype`: its values are taken
    /// as they are (`content-type`, the plain `traceparent`), as they were written.
    pub fn from_message(headers: &HeaderMap, payload: Bytes) -> Result<Event, SchemaError> {
        let attr = |name: &'static str| attribute(headers, name);
        let required = |name: &'static str| attr(name)?.ok_or(SchemaError::MissingHeader { name });
        let spec = required(h::SPECVERSION)?;
        if spec != h::SPECVERSION_1_0 {
            return Err(bad(
                h::SPECVERSION,
                &spec,
                "only CloudEvents 1.0 is supported",
            ));
        }
        let id_s = required(h::ID)?;
        let id = Uuid::parse_str(&id_s).map_err(|e| bad(h::ID, &id_s, e))?;
        let source = required(h::SOURCE)?;
        let (src_edge, agent) = parse_source(&source)?;
        let edge = required(h::MESH_EDGE)?;
        if edge != src_edge {
            return Err(bad(
                h::MESH_EDGE,
                &edge,
                format!("does not match the edge of {} {source:?}", h::SOURCE),
            ));
        }
        let seq_s = required(h::MESH_SEQ)?;
        let seq = seq_s.parse().map_err(|e| bad(h::MESH_SEQ, &seq_s, e))?;
        let time_s = required(h::TIME)?;
        let time = DateTime::parse_from_rfc3339(&time_s)
            .map_err(|e| bad(h::TIME, &time_s, e))?
            .with_timezone(&Utc);
        let content_type = match attr(h::DATACONTENTTYPE)? {
            Some(v) => v,
            None => required(h::CONTENT_TYPE)?,
        };
        // The extension's own header, else the W3C one (all an older event has).
        let trace = |ce: &'static str, plain: &'static str| -> Result<_, SchemaError> {
            Ok(match attr(ce)? {
                Some(v) => Some(v),
                None => headers.get(plain).map(|v| v.as_str().to_string()),
            })
        };
        Ok(Event {
            id,
            agent: agent.to_string(),
            edge,
            seq,
            ty: required(h::TYPE)?,
            subject: required(h::SUBJECT)?,
            time,
            content_type,
            dataschema: attr(h::DATASCHEMA)?,
            correlation_id: attr(h::CORRELATION_ID)?,
            causation_id: attr(h::CAUSATION_ID)?,
            traceparent: trace(h::CE_TRACEPARENT, h::TRACEPARENT)?,
            tracestate: trace(h::CE_TRACESTATE, h::TRACESTATE)?,
            data: payload,
        })
    }
}

/// An event in the CloudEvents JSON event format, as `mesh sub` and `mesh replay` print
/// it: every attribute (the mesh's as the extensions `meshedge` and `meshseq`, the
/// latter a string since it outgrows a CloudEvents Integer), `time` as in the headers,
/// and the data as `data` when it is JSON (content type JSON and the bytes parse) or
/// text (`text/*` and UTF-8), else as `data_base64`; no data member for empty data.
/// A CloudEvents SDK reads it back into the event the binary-mode headers give.
#[derive(Serialize)]
pub struct JsonFormat<'a> {
    specversion: &'static str,
    id: String,
    source: String,
    #[serde(rename = "type")]
    ty: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataschema: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    meshedge: &'a str,
    meshseq: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// `data` of [`JsonFormat`]: JSON text as it was stored, or a string.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonData {
    Json(Box<serde_json::value::RawValue>),
    Text(String),
}

impl Event {
    /// This event in the CloudEvents JSON format (see [`JsonFormat`]).
    pub fn json_format(&self) -> JsonFormat<'_> {
        let (data, data_base64) = json_data(&self.content_type, &self.data);
        JsonFormat {
            specversion: h::SPECVERSION_1_0,
            id: self.id.to_string(),
            source: self.source(),
            ty: &self.ty,
            subject: &self.subject,
            time: format_time(&self.time),
            datacontenttype: &self.content_type,
            dataschema: self.dataschema.as_deref(),
            correlationid: self.correlation_id.as_deref(),
            causationid: self.causation_id.as_deref(),
            traceparent: self.traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
            meshedge: &self.edge,
            meshseq: self.seq.to_string(),
            data,
            data_base64,
        }
    }

    /// [`Event::json_format`] as one line of JSON (no line break inside).
    pub fn to_json_line(&self) -> String {
        // Serialising borrowed strings and a checked RawValue cannot fail.
        serde_json::to_string(&self.json_format()).unwrap_or_default()
    }
}

fn json_data(content_type: &str, data: &Bytes) -> (Option<JsonData>, Option<String>) {
    if data.is_empty() {
        return (None, None);
    }
    if crate::is_json(content_type) {
        if let Ok(text) = std::str::from_utf8(data) {
            // JSON has no raw line breaks inside strings: outside them they are
            // whitespace, dropped so that an event stays one line.
            let text = if text.contains(['\n', '\r']) {
                text.replace(['\n', '\r'], "")
            } else {
                text.to_string()
            };
            if let Ok(raw) = serde_json::value::RawValue::from_string(text) {
                return (Some(JsonData::Json(raw)), None);
            }
        }
    } else if content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("text/")
    {
        if let Ok(text) = std::str::from_utf8(data) {
            return (Some(JsonData::Text(text.to_string())), None);
        }
    }
    (None, Some(data_encoding::BASE64.encode(data)))
}

/// The value of attribute header `name` of a stored event: percent-decoded when the event
/// was stored encoded (it has `ce-datacontenttype`), else as written. The one reading of
/// a `ce-*` header for whoever reads single headers (the dead-letter service files a
/// dead letter by its `ce-subject`).
pub fn attribute(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, SchemaError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let v = v.as_str();
    if headers.get(h::DATACONTENTTYPE).is_none() {
        return Ok(Some(v.to_string()));
    }
    percent::decode(v)
        .map(|d| Some(d.into_owned()))
        .map_err(|e| bad(name, v, e))
}

/// `ce-time` as the mesh writes it everywhere (headers, `mesh sub`, `mesh replay`): RFC
/// 3339 in UTC with `Z`, and 0, 3, 6 or 9 fraction digits as the value needs.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The headers of the attributes that vary per event within a shape: the
/// correlation, causation and tracing attributes (the last two under both names).
fn insert_per_event(m: &mut HeaderMap, ev: &Event) {
    for (name, value) in [
        (names::CORRELATION_ID, &ev.correlation_id),
        (names::CAUSATION_ID, &ev.causation_id),
        (names::CE_TRACEPARENT, &ev.traceparent),
        (names::CE_TRACESTATE, &ev.tracestate),
    ] {
        if let Some(v) = value {
            m.insert(name, percent::encode(v).as_ref());
        }
    }
    for (name, value) in [
        (names::TRACEPARENT, &ev.traceparent),
        (names::TRACESTATE, &ev.tracestate),
    ] {
        if let Some(v) = value {
            m.insert(name, v.as_str());
        }
    }
}

/// Builds the NATS messages of many events: their subjects and binary-mode headers.
///
/// The paths that send one message per event (the edge's live copies, the lander) call
/// this for every event, and building a [`HeaderMap`] from scratch was about a third of
/// each hub's CPU. Events of one *shape* (edge, agent, subject, type, content type,
/// data schema) share nine headers and both subjects, so those are built once per
/// shape and cloned; only `ce-id`, `ce-time`, `ce-meshseq`, `Nats-Msg-Id` and the
/// per-event trace attributes are filled in per event. The result equals
/// [`Event::to_headers`] (tested). At most [`MessageBuilder::MAX_SHAPES`] shapes are
/// kept; past that the cache starts over.
#[derive(Default)]
pub struct MessageBuilder {
    shapes: HashMap<u64, Vec<Shape>>,
    len: usize,
}

struct Shape {
    edge: String,
    agent: String,
    subject: String,
    ty: String,
    content_type: String,
    dataschema: Option<String>,
    /// The shared headers, plus empty placeholders for the per-event ones, so a clone
    /// already has room for them (inserting into a full map would rehash it).
    headers: HeaderMap,
    evt: async_nats::Subject,
    live: async_nats::Subject,
}

impl Shape {
    fn matches(&self, ev: &Event) -> bool {
        self.edge == ev.edge
            && self.agent == ev.agent
            && self.subject == ev.subject
            && self.ty == ev.ty
            && self.content_type == ev.content_type
            && self.dataschema == ev.dataschema
    }
}

impl MessageBuilder {
    /// Shapes kept before the cache is cleared.
    pub const MAX_SHAPES: usize = 4096;

    pub fn new() -> MessageBuilder {
        MessageBuilder::default()
    }

    /// The `MESH_EVENTS` subject and headers of `ev`.
    pub fn evt(&mut self, ev: &Event) -> (async_nats::Subject, HeaderMap) {
        let shape = self.shape(ev);
        (shape.evt.clone(), Self::fill(&shape.headers, ev))
    }

    /// The live-copy subject and headers of `ev`.
    pub fn live(&mut self, ev: &Event) -> (async_nats::Subject, HeaderMap) {
        let shape = self.shape(ev);
        (shape.live.clone(), Self::fill(&shape.headers, ev))
    }

    fn shape(&mut self, ev: &Event) -> &Shape {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            &ev.edge,
            &ev.agent,
            &ev.subject,
            &ev.ty,
            &ev.content_type,
            &ev.dataschema,
        )
            .hash(&mut hasher);
        let key = hasher.finish();
        if self.len >= Self::MAX_SHAPES && !self.shapes.contains_key(&key) {
            self.shapes.clear();
            self.len = 0;
        }
        let bucket = self.shapes.entry(key).or_default();
        let i = match bucket.iter().position(|s| s.matches(ev)) {
            Some(i) => i,
            None => {
                let mut headers = HeaderMap::new();
                headers.insert(names::SPECVERSION, h::SPECVERSION_1_0);
                headers.insert(names::SOURCE, percent::encode(&ev.source()).as_ref());
                headers.insert(names::TYPE, percent::encode(&ev.ty).as_ref());
                headers.insert(names::SUBJECT, percent::encode(&ev.subject).as_ref());
                headers.insert(
                    names::DATACONTENTTYPE,
                    percent::encode(&ev.content_type).as_ref(),
                );
                headers.insert(names::CONTENT_TYPE, ev.content_type.as_str());
                if let Some(v) = &ev.dataschema {
                    headers.insert(names::DATASCHEMA, percent::encode(v).as_ref());
                }
                headers.insert(names::MESH_EDGE, percent::encode(&ev.edge).as_ref());
                for name in [names::ID, names::TIME, names::MESH_SEQ, names::NATS_MSG_ID] {
                    headers.insert(name, String::new());
                }
                bucket.push(Shape {
                    edge: ev.edge.clone(),
                    agent: ev.agent.clone(),
                    subject: ev.subject.clone(),
                    ty: ev.ty.clone(),
                    content_type: ev.content_type.clone(),
                    dataschema: ev.dataschema.clone(),
                    headers,
                    evt: ev.evt_subject().into(),
                    live: ev.live_subject().into(),
                });
                self.len += 1;
                bucket.len() - 1
            }
        };
        &bucket[i]
    }

    fn fill(shared: &HeaderMap, ev: &Event) -> HeaderMap {
        let mut m = shared.clone();
        let id = ev
            .id
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .to_owned();
        m.insert(names::NATS_MSG_ID, ev.msg_id());
        m.insert(names::ID, id);
        m.insert(names::TIME, format_time(&ev.time));
        m.insert(names::MESH_SEQ, ev.seq.to_string());
        insert_per_event(&mut m, ev);
        m
    }
}

/// The header names of [`crate::headers`] as ready-made [`async_nats::HeaderName`]s.
mod names {
    use crate::headers as h;
    use async_nats::HeaderName;

    pub const SPECVERSION: HeaderName = HeaderName::from_static(h::SPECVERSION);
    pub const ID: HeaderName = HeaderName::from_static(h::ID);
    pub const SOURCE: HeaderName = HeaderName::from_static(h::SOURCE);
    pub const TYPE: HeaderName = HeaderName::from_static(h::TYPE);
    pub const SUBJECT: HeaderName = HeaderName::from_static(h::SUBJECT);
    pub const TIME: HeaderName = HeaderName::from_static(h::TIME);
    pub const CONTENT_TYPE: HeaderName = HeaderName::from_static(h::CONTENT_TYPE);
    pub const DATACONTENTTYPE: HeaderName = HeaderName::from_static(h::DATACONTENTTYPE);
    pub const CE_TRACEPARENT: HeaderName = HeaderName::from_static(h::CE_TRACEPARENT);
    pub const CE_TRACESTATE: HeaderName = HeaderName::from_static(h::CE_TRACESTATE);
    pub const DATASCHEMA: HeaderName = HeaderName::from_static(h::DATASCHEMA);
    pub const CORRELATION_ID: HeaderName = HeaderName::from_static(h::CORRELATION_ID);
    pub const CAUSATION_ID: HeaderName = HeaderName::from_static(h::CAUSATION_ID);
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(h::TRACEPARENT);
    pub const TRACESTATE: HeaderName = HeaderName::from_static(h::TRACESTATE);
    pub const MESH_EDGE: HeaderName = HeaderName::from_static(h::MESH_EDGE);
    pub const MESH_SEQ: HeaderName = HeaderName::from_static(h::MESH_SEQ);
    pub const NATS_MSG_ID: HeaderName = HeaderName::from_static(h::NATS_MSG_ID);
}

/// Splits `mesh://<edge>/<agent>` into its two ids.
pub fn parse_source(source: &str) -> Result<(&str, &str), SchemaError> {
    let rest = source
        .strip_prefix("mesh://")
        .ok_or_else(|| bad(h::SOURCE, source, "must start with mesh://"))?;
    let (edge, agent) = rest
        .split_once('/')
        .ok_or_else(|| bad(h::SOURCE, source, "must be mesh://<edge>/<agent>"))?;
    subject::validate_id("edge", edge).map_err(|e| bad(h::SOURCE, source, e))?;
    subject::validate_id("agent", agent).map_err(|e| bad(h::SOURCE, source, e))?;
    Ok((edge, agent))
}

fn bad(name: &'static str, value: &str, reason: impl ToString) -> SchemaError {
    SchemaError::BadHeader {
        name,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_event() -> impl Strategy<Value = Event> {
        (
            any::<u128>(),
            "[a-z0-9-]{1,10}",
            "[a-z0-9_]{1,10}",
            any::<u64>(),
            "[a-z.%\" \u{e9}\u{20ac}]{0,4}[a-z]{1,20}",
            proptest::collection::vec("[a-z0-9]{1,8}", 1..5),
            0i64..4_000_000_000_000_000_000,
            proptest::option::of("[ -~]{0,30}"),
            proptest::option::of("[0-9a-f-]{1,55}"),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(id, edge, agent, seq, ty, subj, nanos, schema, trace, data)| Event {
                    id: Uuid::from_u128(id),
                    edge,
                    agent,
                    seq,
                    ty,
                    subject: subj.join("."),
                    time: DateTime::from_timestamp_nanos(nanos),
                    content_type: "application/octet-stream".into(),
                    dataschema: schema
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty()),
                    correlation_id: trace.clone(),
                    causation_id: None,
                    traceparent: trace,
                    tracestate: None,
                    data: Bytes::from(data),
                },
            )
    }

    proptest! {
        /// The cached shapes must not change a single header or subject.
        #[test]
        fn message_builder_equals_to_headers(evs in proptest::collection::vec(arb_event(), 1..8)) {
            let mut b = MessageBuilder::new();
            for ev in evs.iter().chain(evs.iter()) {
                let (subj, hm) = b.evt(ev);
                prop_assert_eq!(subj.as_str(), ev.evt_subject());
                prop_assert_eq!(&hm, &ev.to_headers());
                let (subj, hm) = b.live(ev);
                prop_assert_eq!(subj.as_str(), ev.live_subject());
                prop_assert_eq!(&hm, &ev.to_headers());
            }
        }

        #[test]
        fn headers_round_trip(ev in arb_event()) {
            let back = Event::from_message(&ev.to_headers(), ev.data.clone()).unwrap();
            prop_assert_eq!(back, ev);
        }

        #[test]
        fn msgpack_round_trip(ev in arb_event()) {
            let bytes = rmp_serde::to_vec(&ev).unwrap();
            let back: Event = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(back, ev);
        }
    }

    /// The issue-13 case: a `%` in an attribute is written `%25` (the NATS binding), and
    /// read back as `%`, not as whatever the raw header says.
    #[test]
    fn attribute_values_are_percent_encoded_and_decoded() {
        let mut ev = sample();
        ev.ty = "py.100%".into();
        ev.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        ev.tracestate = Some("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7".into());
        ev.content_type = "text/plain; charset=utf-8".into();
        let hm = ev.to_headers();
        let v = |n: &str| hm.get(n).unwrap().as_str().to_string();
        assert_eq!(v(h::TYPE), "py.100%25");
        assert_eq!(v(h::DATACONTENTTYPE), "text/plain;%20charset=utf-8");
        assert_eq!(v(h::CONTENT_TYPE), "text/plain; charset=utf-8");
        assert_eq!(v(h::CE_TRACEPARENT), ev.traceparent.clone().unwrap());
        assert_eq!(v(h::TRACEPARENT), ev.traceparent.clone().unwrap());
        assert_eq!(
            v(h::CE_TRACESTATE),
            "congo=t61rcWkgMzE,%20rojo=00f067aa0ba902b7"
        );
        assert_eq!(v(h::TRACESTATE), ev.tracestate.clone().unwrap());
        assert_eq!(v(h::TIME), format_time(&ev.time));
        assert!(v(h::TIME).ends_with('Z'), "{}", v(h::TIME));
        assert_eq!(Event::from_message(&hm, ev.data.clone()).unwrap(), ev);

        let mut bad_hm = hm.clone();
        bad_hm.insert(h::TYPE, "py.100%");
        let err = Event::from_message(&bad_hm, Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("ce-type"), "{err}");
    }

    /// Events stored before the percent-encoding (no `ce-datacontenttype`, the trace
    /// context only in the W3C headers) still decode, their values taken as written.
    #[test]
    fn events_stored_before_the_encoding_still_decode() {
        let ev = sample();
        let mut hm = HeaderMap::new();
        for (n, v) in [
            (h::SPECVERSION, "1.0".to_string()),
            (h::ID, ev.id.to_string()),
            (h::SOURCE, ev.source()),
            (h::TYPE, "py.100%25".into()),
            (h::SUBJECT, ev.subject.clone()),
            (h::TIME, ev.time.to_rfc3339()),
            (h::CONTENT_TYPE, "application/json".into()),
            (
                h::TRACEPARENT,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
            (h::CORRELATION_ID, "a b%".into()),
            (h::MESH_EDGE, ev.edge.clone()),
            (h::MESH_SEQ, ev.seq.to_string()),
        ] {
            hm.insert(n, v.as_str());
        }
        let back = Event::from_message(&hm, ev.data.clone()).unwrap();
        assert_eq!(back.ty, "py.100%25");
        assert_eq!(back.correlation_id.as_deref(), Some("a b%"));
        assert_eq!(back.content_type, "application/json");
        assert_eq!(
            back.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(back.time, ev.time);
    }

    /// Issue 13: replay lines dropped attributes, mangled binary data and wrote `+00:00`.
    #[test]
    fn the_json_format_keeps_every_attribute_and_the_data_exactly() {
        let mut ev = sample();
        ev.dataschema = Some("https://example.com/s".into());
        ev.correlation_id = Some("c 1".into());
        ev.causation_id = Some("d".into());
        ev.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        ev.tracestate = Some("rojo=1".into());
        ev.content_type = "application/octet-stream".into();
        ev.data = Bytes::from_static(&[0x00, 0xff, 0xfe]);
        let line = ev.to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], ev.id.to_string());
        assert_eq!(v["source"], "mesh://e1/a1");
        assert_eq!(v["type"], "demo.tick");
        assert_eq!(v["subject"], "demo.ticks");
        assert_eq!(v["time"], format_time(&ev.time));
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["datacontenttype"], "application/octet-stream");
        assert_eq!(v["dataschema"], "https://example.com/s");
        assert_eq!(v["correlationid"], "c 1");
        assert_eq!(v["causationid"], "d");
        assert_eq!(v["traceparent"], ev.traceparent.clone().unwrap());
        assert_eq!(v["tracestate"], "rojo=1");
        assert_eq!(v["meshedge"], "e1");
        assert_eq!(v["meshseq"], "7");
        assert_eq!(v["data_base64"], "AP/+");
        assert!(v.get("data").is_none());
        // Every member is a legal CloudEvents attribute name (or data/data_base64).
        for k in v.as_object().unwrap().keys() {
            assert!(
                k == "data_base64"
                    || k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{k}"
            );
        }

        ev.content_type = "application/json".into();
        ev.data = Bytes::from_static(b"{\n  \"b\": 1,\n  \"a\": \"x\\ny\"\n}");
        let line = ev.to_json_line();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(r#""data":{  "b": 1,  "a": "x\ny"}"#),
            "{line}"
        );
        ev.data = Bytes::from_static(b"not json");
        let v: serde_json::Value = serde_json::from_str(&ev.to_json_line()).unwrap();
        assert_eq!(v["data_base64"], "bm90IGpzb24=");
        ev.content_type = "text/plain".into();
        let v: serde_json::Value = serde_json::from_str(&ev.to_json_line()).unwrap();
        assert_eq!(v["data"], "not json");
        ev.data = Bytes::new();
        let v: serde_json::Value = serde_json::from_str(&ev.to_json_line()).unwrap();
        assert!(v.get("data").is_none() && v.get("data_base64").is_none());
    }

    #[test]
    fn msg_id_is_edge_and_meshseq() {
        let ev = sample();
        let hm = ev.to_headers();
        assert_eq!(
            hm.get(h::NATS_MSG_ID).unwrap().as_str(),
            format!("{}:{}", ev.edge, ev.seq)
        );
        assert_eq!(hm.get(h::SOURCE).unwrap().as_str(), "mesh://e1/a1");
    }

    #[test]
    fn missing_and_bad_headers_are_named() {
        let ev = sample();
        let mut hm = ev.to_headers();
        hm.insert(h::MESH_SEQ, "x1");
        let err = Event::from_message(&hm, Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("ce-meshseq"), "{err}");
        let mut hm = HeaderMap::new();
        hm.insert(h::SPECVERSION, "1.0");
        let err = Event::from_message(&hm, Bytes::new()).unwrap_err();
        assert_eq!(err, SchemaError::MissingHeader { name: h::ID });
        let mut hm = ev.to_headers();
        hm.insert(h::SOURCE, "http://x/y");
        let err = Event::from_message(&hm, Bytes::new()).unwrap_err();
        assert!(err.to_string().contains("ce-source"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_attribute() {
        assert_eq!(sample().validate(), Ok(()));
        let mut e = sample();
        e.agent = "a/b".into();
        assert!(e.validate().unwrap_err().to_string().contains("agent"));
        let mut e = sample();
        e.subject = "a.>".into();
        assert!(e.validate().unwrap_err().to_string().contains("wildcard"));
        let mut e = sample();
        e.id = Uuid::nil();
        assert!(e
            .validate()
            .unwrap_err()
            .to_string()
            .contains("id is empty"));
        let mut e = sample();
        e.ty = "x\ny".into();
        assert!(e.validate().unwrap_err().to_string().contains("ty"));
    }

    pub fn sample() -> Event {
        Event {
            id: Uuid::now_v7(),
            edge: "e1".into(),
            agent: "a1".into(),
            seq: 7,
            ty: "demo.tick".into(),
            subject: "demo.ticks".into(),
            time: Utc::now(),
            content_type: "application/json".into(),
            dataschema: None,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            data: Bytes::from_static(b"{}"),
        }
    }
}
