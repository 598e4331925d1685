//! The audit record: the wire format of `MESH_AUDIT`, its hash chain and its check.
//!
//! # Record format
//! One JSON message per record on `mesh.audit.<kind>`:
//! `{"seq", "prev_hash", "kind", "time", "actor", "fields", "hash"}`.
//! `hash` is the lower-case hex SHA-256 of the record's **canonical encoding**: the JSON
//! of every other member with object keys sorted at every depth and no whitespace
//! (`serde_json` without `preserve_order` sorts them). `prev_hash` is the previous
//! record's `hash`, [`GENESIS_HASH`] for record 1. `seq` equals the record's stream
//! sequence. Chains written by earlier versions verify byte for byte: the encoding is
//! pinned by a golden test.
//!
//! # Kinds and their fields
//! `kind` and `fields` stay plain JSON in the record, so the hash covers exactly what was
//! written and a kind this version does not know still verifies. [`AuditRecord::event`]
//! reads them as a typed [`AuditEvent`]; writers build `(kind, fields)` from one, so no
//! writer spells a field name. The kinds and their payloads are listed in [`event`].
//!
//! # Tamper evidence (G8)
//! [`verify`] walks the chain and names the first bad record: changed (hash does not
//! match its content), missing (a sequence gap), reordered (a record out of sequence
//! order) or foreign (not an audit record, or not chained to its predecessor). A rewrite
//! of the whole chain with fresh hashes is found against a [`Digest`] exported earlier.
//! The stream itself denies deletes and purges; writers append with
//! `Nats-Expected-Last-Sequence` so the chain never forks (see the central hub's writer).

pub mod event;
mod verify;

use async_nats::jetstream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::stream::{self, Range, StreamError};
use crate::SchemaError;

pub use event::{
    AgentQuiet, AgentRef, AuditEvent, ConfigApplied, DeadLettered, EdgeConnected, EdgeHeld,
    EdgeLost, EdgeReleased, EdgeRestored, HubStarted, OutboxExpelled, Purged, Redriven, ReplayRun,
    StreamChange, StreamUpdated,
};
pub use verify::{verify, Problem, Verdict};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Record kinds (the `<kind>` of `mesh.audit.<kind>`).
pub mod kind {
    pub const HUB_STARTED: &str = "hub.started";
    pub const CONFIG_APPLIED: &str = "config.applied";
    pub const EDGE_CONNECTED: &str = "edge.connected";
    pub const EDGE_LOST: &str = "edge.lost";
    pub const EDGE_RESTORED: &str = "edge.restored";
    /// The first event of an agent the registry has never seen.
    pub const AGENT_REGISTERED: &str = "agent.registered";
    /// An agent that had gone quiet publishes again.
    pub const AGENT_SEEN: &str = "agent.seen";
    pub const AGENT_QUIET: &str = "agent.quiet";
    pub const OUTBOX_EXPELLED: &str = "outbox.expelled";
    pub const DLQ_DEAD_LETTERED: &str = "dlq.dead-lettered";
    pub const DLQ_REDRIVEN: &str = "dlq.redriven";
    pub const DLQ_PURGED: &str = "dlq.purged";
    pub const REPLAY_RUN: &str = "replay.run";
    /// The lander cannot read an edge's high-water mark and holds that edge's bundles.
    pub const LANDER_EDGE_HELD: &str = "lander.edge-held";
    /// The mark of an edge the lander held is readable again; its bundles land.
    pub const LANDER_EDGE_RELEASED: &str = "lander.edge-released";
    /// A central hub changed an existing stream's settings, as the operator asked.
    pub const STREAM_UPDATED: &str = "stream.updated";
}

/// One audit record. `hash` covers every other field (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    pub prev_hash: String,
    pub kind: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// Who did it: `central:<hub>`, `operator:<user>`, ...
    pub actor: String,
    pub fields: Map<String, Value>,
    pub hash: String,
}

impl AuditRecord {
    /// A new record extending `prev_hash`, sealed with its hash.
    pub fn seal(
        seq: u64,
        prev_hash: &str,
        kind: &str,
        actor: &str,
        fields: Map<String, Value>,
    ) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            prev_hash: prev_hash.into(),
            kind: kind.into(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            actor: actor.into(),
            fields,
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// The canonical encoding: sorted-key JSON of every field but `hash`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "kind": self.kind,
            "time": self.time,
            "actor": self.actor,
            "fields": self.fields,
        });
        serde_json::to_vec(&v).expect("JSON values always encode")
    }

    /// Lower-case hex SHA-256 of [`Self::canonical_bytes`].
    pub fn compute_hash(&self) -> String {
        sha256_hex(&self.canonical_bytes())
    }

    pub fn encode(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("JSON values always encode")
            .into()
    }

    pub fn decode(bytes: &[u8]) -> Result<AuditRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The typed view of `kind` and `fields`. A kind this version does not know is
    /// [`AuditEvent::Other`]; an error only when a known kind's fields have the wrong type.
    pub fn event(&self) -> Result<AuditEvent, SchemaError> {
        AuditEvent::from_parts(&self.kind, &self.fields)
    }

    /// One readable line.
    pub fn render(&self) -> String {
        let fields = self
            .fields
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) if s.contains('\n') => {
                    format!("{k}=<{} lines>", s.lines().count())
                }
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "#{:<6} {} {:<18} {:<16} {}  [{}]",
            self.seq,
            self.time,
            self.kind,
            self.actor,
            fields,
            &self.hash[..self.hash.len().min(12)]
        )
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The head of a chain, exported by `mesh audit digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub stream: String,
    pub seq: u64,
    pub hash: String,
}

/// Every message of `stream` in stream order, `(stream sequence, payload)`, up to the last
/// sequence at the time of the call: the input of [`verify`].
pub async fn read_all(
    js: &jetstream::Context,
    stream: &str,
) -> Result<Vec<(u64, Bytes)>, StreamError> {
    Ok(stream::read_range(js, stream, Range::all())
        .await?
        .into_iter()
        .map(|m| (m.seq, m.payload))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as today's writers produce them, with hashes computed independently
    /// (Python: `json.dumps(sort_keys=True, separators=(",", ":"))`, SHA-256). If this
    /// fails, chains already in users' data dirs would no longer verify.
    #[test]
    fn canonical_encoding_and_hash_are_pinned() {
        let config = r#"{"seq":1,"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","kind":"config.applied","time":"2025-01-02T03:04:05.678901Z","actor":"central:c0","fields":{"hub":"c0","sha256":"abababababababababababababababababababababababababababababababab","config":"hub_id = \"c0\"\n[lander]\nbatch = 64\n"},"hash":"20e61aa10cda14c8b5814f4b29f118519031575afeea9f9ac783e19ff4c2cd64"}"#;
        let expelled = r#"{"seq":2,"prev_hash":"20e61aa10cda14c8b5814f4b29f118519031575afeea9f9ac783e19ff4c2cd64","kind":"outbox.expelled","time":"2025-01-02T03:04:06.000001Z","actor":"central:c0","fields":{"edge":"e1","reason":"max_bytes","count":3,"total":10},"hash":"3a377eb327f6826ea39735aeb33fa5e66df67c522562ed081428bb25cf2c9cf3"}"#;
        let a = AuditRecord::decode(config.as_bytes()).unwrap();
        let b = AuditRecord::decode(expelled.as_bytes()).unwrap();
        assert_eq!(a.compute_hash(), a.hash);
        assert_eq!(b.compute_hash(), b.hash);
        assert_eq!(
            String::from_utf8(b.canonical_bytes()).unwrap(),
            r#"{"actor":"central:c0","fields":{"count":3,"edge":"e1","reason":"max_bytes","total":10},"kind":"outbox.expelled","prev_hash":"20e61aa10cda14c8b5814f4b29f118519031575afeea9f9ac783e19ff4c2cd64","seq":2,"time":"2025-01-02T03:04:06.000001Z"}"#
        );
        let msgs = vec![(1, a.encode()), (2, b.encode())];
        assert!(matches!(
            verify(&msgs, None),
            Verdict::Ok { count: 2, head_seq: 2, ref head_hash } if *head_hash == b.hash
        ));
    }

    #[test]
    fn canonical_encoding_sorts_keys_at_every_depth() {
        let r = AuditRecord::seal(
            1,
            GENESIS_HASH,
            kind::HUB_STARTED,
            "test",
            serde_json::json!({"n": 1, "z": {"b": 1, "a": 2}})
                .as_object()
                .unwrap()
                .clone(),
        );
        let text = String::from_utf8(r.canonical_bytes()).unwrap();
        assert!(text.starts_with(r#"{"actor":"test","fields":{"n":1,"z":{"a":2,"b":1}}"#));
    }

    #[test]
    fn sha256_hex_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
