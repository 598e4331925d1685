//! Strict decoding of the events of an ingest request, in every body format the edge
//! takes (`docs/PROTOCOL.md`): the mesh's own form in MessagePack or JSON, and
//! CloudEvents in the JSON event format (structured mode, one event or a batch).
//!
//! One visitor serves all of them, so the rules are the same everywhere: an unknown
//! field is refused by name (with the name it was probably meant to be), a value of the
//! wrong type is refused naming the field and the type it must have, a field given twice
//! is refused, and an id is a UUID given as a string or, in MessagePack, as 16 raw bytes.
//! A refusal is a serde error whose text starts with the field's path (`events[2].ty`).
//!
//! `data` in JSON follows the CloudEvents JSON format: a JSON value when the content
//! type is JSON (or absent, which then means `application/json`), stored as its JSON
//! text; a string when the content type is something else, stored as its UTF-8; or
//! `data_base64` for any bytes.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::NewEvent;

/// Which names and encodings a body uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// The mesh's field names, `data` as bytes, ids as strings or 16 bytes.
    MessagePack,
    /// The mesh's field names, `data` / `data_base64` as in CloudEvents JSON.
    Json,
    /// CloudEvents attribute names (JSON event format).
    CloudEvent,
}

/// Where a field's value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    SpecVersion,
    Id,
    Source,
    Ty,
    Subject,
    TimeNs,
    Time,
    ContentType,
    DataSchema,
    CorrelationId,
    CausationId,
    TraceParent,
    TraceState,
    Data,
    DataBase64,
}

const MESH_FIELDS: &[(&str, Slot)] = &[
    ("id", Slot::Id),
    ("ty", Slot::Ty),
    ("subject", Slot::Subject),
    ("time_ns", Slot::TimeNs),
    ("time", Slot::Time),
    ("content_type", Slot::ContentType),
    ("dataschema", Slot::DataSchema),
    ("correlation_id", Slot::CorrelationId),
    ("causation_id", Slot::CausationId),
    ("traceparent", Slot::TraceParent),
    ("tracestate", Slot::TraceState),
    ("data", Slot::Data),
    ("data_base64", Slot::DataBase64),
];

/// The array form of a MessagePack event: [`NewEvent`]'s fields in declaration order.
const ARRAY_ORDER: &[&str] = &[
    "id",
    "ty",
    "subject",
    "time_ns",
    "content_type",
    "dataschema",
    "correlation_id",
    "causation_id",
    "traceparent",
    "tracestate",
    "data",
];

const CE_FIELDS: &[(&str, Slot)] = &[
    ("specversion", Slot::SpecVersion),
    ("id", Slot::Id),
    ("source", Slot::Source),
    ("type", Slot::Ty),
    ("subject", Slot::Subject),
    ("time", Slot::Time),
    ("datacontenttype", Slot::ContentType),
    ("dataschema", Slot::DataSchema),
    ("correlationid", Slot::CorrelationId),
    ("causationid", Slot::CausationId),
    ("traceparent", Slot::TraceParent),
    ("tracestate", Slot::TraceState),
    ("data", Slot::Data),
    ("data_base64", Slot::DataBase64),
];

impl Dialect {
    fn fields(self) -> impl Iterator<Item = (&'static str, Slot)> {
        let all = match self {
            Dialect::CloudEvent => CE_FIELDS,
            _ => MESH_FIELDS,
        };
        // MessagePack has bytes: `data_base64` is a JSON thing only.
        all.iter()
            .copied()
            .filter(move |(_, s)| !(self == Dialect::MessagePack && *s == Slot::DataBase64))
    }

    fn slot(self, key: &str) -> Option<Slot> {
        self.fields().find(|(n, _)| *n == key).map(|(_, s)| s)
    }

    fn name(self, slot: Slot) -> Option<&'static str> {
        self.fields().find(|(_, s)| *s == slot).map(|(n, _)| n)
    }

    /// Why `key` is refused: its likely meant name, and every name there is.
    fn unknown(self, key: &str) -> String {
        let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
        let other = match self {
            Dialect::CloudEvent => Dialect::Json,
            _ => Dialect::CloudEvent,
        };
        let meant = self
            .fields()
            .find(|(n, _)| norm(n) == norm(key))
            .map(|(n, _)| n)
            .or_else(|| {
                other
                    .fields()
                    .find(|(n, _)| norm(n) == norm(key))
                    .and_then(|(_, s)| self.name(s))
            });
        let mut m = match (self, key) {
            (Dialect::MessagePack, "data_base64") => {
                return "unknown field \"data_base64\": in MessagePack, data is bytes (a bin); \
                        data_base64 is for JSON bodies"
                    .to_string()
            }
            (Dialect::CloudEvent, "meshedge" | "meshseq") => {
                return format!("{key:?} is set by the edge that accepts the event; leave it out")
            }
            _ => format!("unknown field {key:?}"),
        };
        if let Some(n) = meant {
            m.push_str(&format!(" (did you mean {n:?}?)"));
        }
        let names: Vec<&str> = self.fields().map(|(n, _)| n).collect();
        m.push_str(&format!("; the fields are {}", names.join(", ")));
        m
    }
}

/// The type a slot's value must have, in words, for refusals.
fn expected(slot: Slot, dialect: Dialect) -> &'static str {
    match slot {
        Slot::SpecVersion => "the string \"1.0\"",
        Slot::Id => match dialect {
            Dialect::MessagePack => {
                "a UUID: a string such as \"0192f1e4-8d3c-7a51-9c4e-2f6b1a7d3e90\" or 16 raw bytes"
            }
            _ => "a UUID string such as \"0192f1e4-8d3c-7a51-9c4e-2f6b1a7d3e90\"",
        },
        Slot::TimeNs => "an integer: nanoseconds since the Unix epoch",
        Slot::Time => "an RFC 3339 time string such as \"2026-12-04T16:43:22.123Z\"",
        Slot::Data => match dialect {
            Dialect::MessagePack => "bytes (MessagePack bin) or a string",
            _ => "a JSON value",
        },
        Slot::DataBase64 => "a base64 string",
        _ => "a string",
    }
}

fn at(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The fields of one event as read, before the data rules are applied.
#[derive(Default)]
struct Raw {
    seen: Vec<Slot>,
    specversion: Option<String>,
    id: Option<Uuid>,
    source: Option<String>,
    ty: Option<String>,
    subject: Option<String>,
    time_ns: Option<i64>,
    time: Option<String>,
    content_type: Option<String>,
    dataschema: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    data_bytes: Option<Bytes>,
    data_json: Option<Box<RawValue>>,
    data_base64: Option<String>,
}

/// A value source: a map's next value, or an array's next element (`None` at its end).
trait Next<'de> {
    type Error: de::Error;
    fn next<T: Deserialize<'de>>(&mut self) -> Result<Option<T>, Self::Error>;
}

struct FromMap<'a, M>(&'a mut M);
impl<'de, M: MapAccess<'de>> Next<'de> for FromMap<'_, M> {
    type Error = M::Error;
    fn next<T: Deserialize<'de>>(&mut self) -> Result<Option<T>, M::Error> {
        self.0.next_value().map(Some)
    }
}

struct FromSeq<'a, S>(&'a mut S);
impl<'de, S: SeqAccess<'de>> Next<'de> for FromSeq<'_, S> {
    type Error = S::Error;
    fn next<T: Deserialize<'de>>(&mut self) -> Result<Option<T>, S::Error> {
        self.0.next_element()
    }
}

/// A UUID as a string, or as 16 raw bytes (what `rmp-serde` writes for a `Uuid`).
struct AnyUuid(Uuid);

impl<'de> Deserialize<'de> for AnyUuid {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<AnyUuid, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AnyUuid;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a UUID string or 16 bytes")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AnyUuid, E> {
                Uuid::parse_str(s)
                    .map(AnyUuid)
                    .map_err(|e| E::custom(format!("{s:?} is not a UUID ({e})")))
            }
            fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<AnyUuid, E> {
                Uuid::from_slice(b)
                    .map(AnyUuid)
                    .map_err(|_| E::custom(format!("{} bytes are not a UUID (16)", b.len())))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads the value of `slot` into `raw`; errors name `path.field` and the expected type.
fn read<'de, N: Next<'de>>(
    n: &mut N,
    slot: Slot,
    field: &str,
    path: &str,
    dialect: Dialect,
    raw: &mut Raw,
) -> Result<bool, N::Error> {
    if raw.seen.contains(&slot) {
        return Err(de::Error::custom(format!(
            "{} is given twice",
            at(path, field)
        )));
    }
    raw.seen.push(slot);
    let wrong = |e: N::Error| -> N::Error {
        de::Error::custom(format!(
            "{} must be {}: {e}",
            at(path, field),
            expected(slot, dialect)
        ))
    };
    macro_rules! take {
        ($t:ty) => {
            match n.next::<$t>().map_err(wrong)? {
                Some(v) => v,
                None => return Ok(false),
            }
        };
    }
    match slot {
        Slot::SpecVersion => raw.specversion = take!(Option<String>),
        Slot::Id => raw.id = take!(Option<AnyUuid>).map(|u| u.0),
        Slot::Source => raw.source = take!(Option<String>),
        Slot::Ty => raw.ty = take!(Option<String>),
        Slot::Subject => raw.subject = take!(Option<String>),
        Slot::TimeNs => raw.time_ns = take!(Option<i64>),
        Slot::Time => raw.time = take!(Option<String>),
        Slot::ContentType => raw.content_type = take!(Option<String>),
        Slot::DataSchema => raw.dataschema = take!(Option<String>),
        Slot::CorrelationId => raw.correlation_id = take!(Option<String>),
        Slot::CausationId => raw.causation_id = take!(Option<String>),
        Slot::TraceParent => raw.traceparent = take!(Option<String>),
        Slot::TraceState => raw.tracestate = take!(Option<String>),
        Slot::Data if dialect == Dialect::MessagePack => raw.data_bytes = take!(Option<Bytes>),
        Slot::Data => {
            let v = take!(Box<RawValue>);
            // `null` is no data, as in CloudEvents JSON.
            raw.data_json = (v.get() != "null").then_some(v);
        }
        Slot::DataBase64 => raw.data_base64 = take!(Option<String>),
    }
    Ok(true)
}

/// Whether a content type is JSON: `application/json`, `text/json` or a `+json` type
/// (what the CloudEvents SDKs test), parameters and case ignored.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    (ty == "application" || ty == "text") && (sub == "json" || sub.ends_with("+json"))
}

/// The event of `raw`, the data rules applied.
fn finish(mut raw: Raw, path: &str, dialect: Dialect) -> Result<Decoded, String> {
    let name = |s: Slot| at(path, dialect.name(s).unwrap_or("?"));
    let missing = |s: Slot, what: &str| format!("{} is missing: {what}", name(s));
    if dialect == Dialect::CloudEvent {
        match raw.specversion.as_deref() {
            Some("1.0") => {}
            Some(v) => {
                return Err(format!(
                    "{} is {v:?}: only CloudEvents 1.0 is taken",
                    name(Slot::SpecVersion)
                ))
            }
            None => {
                return Err(missing(
                    Slot::SpecVersion,
                    "a CloudEvent has \"specversion\": \"1.0\"",
                ))
            }
        }
    }
    let ty = raw
        .ty
        .take()
        .ok_or_else(|| missing(Slot::Ty, "the event's type, a string"))?;
    let subject = raw.subject.take().ok_or_else(|| {
        missing(
            Slot::Subject,
            "the dotted subject the mesh files the event under, e.g. \"orders.created\"",
        )
    })?;
    let time_ns = match (raw.time_ns, raw.time.take()) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{} and {} are both given; give one",
                name(Slot::TimeNs),
                name(Slot::Time)
            ))
        }
        (ns, None) => ns,
        (None, Some(t)) => Some(
            chrono::DateTime::parse_from_rfc3339(&t)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .ok_or_else(|| {
                    format!(
                        "{} must be {}: {t:?} is not one",
                        name(Slot::Time),
                        expected(Slot::Time, dialect)
                    )
                })?,
        ),
    };
    let data = match (raw.data_bytes, raw.data_json, raw.data_base64) {
        (Some(b), _, _) => b,
        (None, Some(_), Some(_)) => {
            return Err(format!(
                "{} and {} are both given; give one",
                name(Slot::Data),
                name(Slot::DataBase64)
            ))
        }
        (None, None, Some(b64)) => Bytes::from(
            data_encoding::BASE64
                .decode(b64.as_bytes())
                .map_err(|e| format!("{} is not base64: {e}", name(Slot::DataBase64)))?,
        ),
        (None, Some(json), None) => {
            let ct = raw
                .content_type
                .get_or_insert_with(|| "application/json".to_string());
            if is_json(ct) {
                Bytes::copy_from_slice(json.get().as_bytes())
            } else {
                let s: String = serde_json::from_str(json.get()).map_err(|_| {
                    format!(
                        "{} must be a string, since {} {ct:?} is not JSON (give bytes as {})",
                        name(Slot::Data),
                        name(Slot::ContentType),
                        name(Slot::DataBase64)
                    )
                })?;
                Bytes::from(s)
            }
        }
        (None, None, None) => Bytes::new(),
    };
    Ok(Decoded {
        source: raw.source,
        event: NewEvent {
            id: raw.id,
            ty,
            subject,
            time_ns,
            content_type: raw.content_type,
            dataschema: raw.dataschema,
            correlation_id: raw.correlation_id,
            causation_id: raw.causation_id,
            traceparent: raw.traceparent,
            tracestate: raw.tracestate,
            data,
        },
    })
}

/// One decoded event, with the `source` a CloudEvent named (checked by the caller).
pub(crate) struct Decoded {
    pub source: Option<String>,
    pub event: NewEvent,
}

/// Reads one event at `path` (`events[3]`, `[3]`, or `""` for a lone CloudEvent).
pub(crate) struct EventSeed<'p> {
    pub path: &'p str,
    pub dialect: Dialect,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Decoded;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Decoded, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Decoded;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let what = if self.path.is_empty() {
            "the event"
        } else {
            self.path
        };
        match self.dialect {
            Dialect::MessagePack => write!(f, "{what} as a map of its fields (or an array)"),
            _ => write!(f, "{what} as an object of its fields"),
        }
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Decoded, M::Error> {
        let mut raw = Raw::default();
        while let Some(key) = map.next_key::<String>().map_err(|e| {
            de::Error::custom(format!("{}: a key that is not a string ({e})", self.path))
        })? {
            let Some(slot) = self.dialect.slot(&key) else {
                let why = self.dialect.unknown(&key);
                return Err(de::Error::custom(if self.path.is_empty() {
                    why
                } else {
                    format!("{}: {why}", self.path)
                }));
            };
            read(
                &mut FromMap(&mut map),
                slot,
                &key,
                self.path,
                self.dialect,
                &mut raw,
            )?;
        }
        finish(raw, self.path, self.dialect).map_err(de::Error::custom)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Decoded, S::Error> {
        if self.dialect != Dialect::MessagePack {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut raw = Raw::default();
        for field in ARRAY_ORDER {
            let slot = self
                .dialect
                .slot(field)
                .expect("array fields are mesh fields");
            if !read(
                &mut FromSeq(&mut seq),
                slot,
                field,
                self.path,
                self.dialect,
                &mut raw,
            )? {
                // Fewer elements: the rest are absent.
                raw.seen.pop();
                break;
            }
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "{}: more than the {} fields of an event in its array form",
                self.path,
                ARRAY_ORDER.len()
            )));
        }
        finish(raw, self.path, self.dialect).map_err(de::Error::custom)
    }
}

/// A list of events: `events` of a mesh request, or a CloudEvents batch.
pub(crate) struct EventsSeed {
    /// `"events"` or `""` (a batch: paths `[i]`).
    pub name: &'static str,
    pub dialect: Dialect,
}

impl<'de> DeserializeSeed<'de> for EventsSeed {
    type Value = Vec<Decoded>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Decoded>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed {
    type Value = Vec<Decoded>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.name.is_empty() {
            f.write_str("a JSON array of CloudEvents")
        } else {
            write!(f, "{} as an array of events", self.name)
        }
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<Decoded>, S::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(4096));
        loop {
            let path = format!("{}[{}]", self.name, out.len());
            let seed = EventSeed {
                path: &path,
                dialect: self.dialect,
            };
            match seq.next_element_seed(seed)? {
                Some(ev) => out.push(ev),
                None => return Ok(out),
            }
        }
    }
}

/// A mesh request: `{"events": [...]}` (or, in MessagePack, `[[...]]`).
pub(crate) struct RequestSeed(pub Dialect);

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = Vec<Decoded>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Decoded>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = Vec<Decoded>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a request: a map with the one field \"events\", an array of events")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Vec<Decoded>, M::Error> {
        let mut events = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "events" {
                return Err(de::Error::custom(format!(
                    "unknown field {key:?} of the request; its one field is \"events\""
                )));
            }
            if events.is_some() {
                return Err(de::Error::custom("events is given twice"));
            }
            events = Some(map.next_value_seed(EventsSeed {
                name: "events",
                dialect: self.0,
            })?);
        }
        events.ok_or_else(|| de::Error::custom("events is missing: the request's array of events"))
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<Decoded>, S::Error> {
        if self.0 != Dialect::MessagePack {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let events = seq
            .next_element_seed(EventsSeed {
                name: "events",
                dialect: self.0,
            })?
            .ok_or_else(|| de::Error::custom("events is missing: the request's array of events"))?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(
                "a request in array form has one element, the array of events",
            ));
        }
        Ok(events)
    }
}
