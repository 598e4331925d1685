//! The audit log: every mesh action as a hash-chained record in `MESH_AUDIT`.
//!
//! # Record format
//! One JSON message per record on `mesh.audit.<kind>`:
//! `{"seq", "prev_hash", "kind", "time", "actor", "fields", "hash"}`.
//! `hash` is the lower-case hex SHA-256 of the record's **canonical encoding**: the JSON
//! of every other member with object keys sorted at every depth and no whitespace
//! (`serde_json` without `preserve_order` sorts them). `prev_hash` is the previous
//! record's `hash`, [`GENESIS_HASH`] for record 1. `seq` equals the record's stream
//! sequence.
//!
//! # One chain, many writers
//! A record with `seq = n` is published with `Nats-Expected-Last-Sequence: n - 1`, so
//! JetStream stores it only if it really extends the head the writer read. A writer that
//! loses the race re-reads the records it missed and tries again: two central hubs (or
//! a hub and an operator tool) can never fork the chain. Appends may carry a condition on
//! the [`Registry`] projection at the head (e.g. "edge e1 is not connected yet"), checked
//! again after every lost race, so concurrent hubs do not record one transition twice.
//!
//! # Tamper evidence (G8)
//! `MESH_AUDIT` denies deletes and purges. [`verify`] walks the chain and names the first
//! bad record: changed (hash does not match its content), missing (a sequence gap),
//! reordered (a record out of sequence order) or foreign (not an audit record, or not
//! chained to its predecessor). A rewrite of the whole chain with fresh hashes is found
//! against a [`Digest`] exported earlier.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, context::PublishErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::registry::Registry;

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
}

/// What can go wrong reading or extending the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The stream could not be read or written.
    #[error("audit stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    /// The head record could not be decoded, so the chain cannot be extended.
    #[error("audit stream {stream}: head record {seq} is not an audit record: {reason}")]
    BadHead {
        stream: String,
        seq: u64,
        reason: String,
    },
    /// Lost the race for the head too many times in a row.
    #[error("audit stream {stream}: gave up appending {kind} after {tries} lost races")]
    Contended {
        stream: String,
        kind: String,
        tries: u32,
    },
    /// The writer task is gone (the hub is shutting down).
    #[error("the audit writer has stopped")]
    Stopped,
    /// A digest file could not be read or parsed.
    #[error("digest {0}")]
    Digest(String),
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
        hex(&Sha256::digest(self.canonical_bytes()))
    }

    pub fn encode(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("JSON values always encode")
            .into()
    }

    pub fn decode(bytes: &[u8]) -> Result<AuditRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
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
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The head of a chain, exported by `mesh audit digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub stream: String,
    pub seq: u64,
    pub hash: String,
}

/// A condition on the projection at the head, checked before each append attempt.
pub type Condition = Box<dyn Fn(&Registry) -> bool + Send + Sync>;

struct Append {
    kind: String,
    fields: Map<String, Value>,
    condition: Option<Condition>,
    done: oneshot::Sender<Result<Option<AuditRecord>, AuditError>>,
}

enum Cmd {
    Append(Append),
    /// Read what other writers appended, then answer with the projection.
    Sync(oneshot::Sender<Result<Registry, AuditError>>),
}

/// A handle on the single audit writer task of this process. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Cmd>,
    registry: watch::Receiver<Registry>,
}

impl AuditLog {
    /// Reads the whole log into the [`Registry`] projection, then starts the writer task.
    /// `actor` is written into every record this handle appends.
    pub async fn open(
        js: jetstream::Context,
        stream: &str,
        actor: &str,
    ) -> Result<AuditLog, AuditError> {
        let mut w = Writer {
            js,
            stream: stream.into(),
            actor: actor.into(),
            head: (0, GENESIS_HASH.into()),
            registry: Registry::default(),
        };
        for (_, payload) in read_all(&w.js, stream).await? {
            match AuditRecord::decode(&payload) {
                Ok(r) => {
                    w.head = (r.seq, r.hash.clone());
                    w.registry.apply(&r);
                }
                Err(e) => {
                    tracing::warn!(stream, error = %e, "skipping a foreign message in the audit log");
                }
            }
        }
        w.catch_up().await?;
        let (reg_tx, reg_rx) = watch::channel(w.registry.clone());
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(w.run(rx, reg_tx));
        Ok(AuditLog {
            tx,
            registry: reg_rx,
        })
    }

    /// Appends a record; returns it once JetStream stored it.
    pub async fn append(&self, kind: &str, fields: Value) -> Result<AuditRecord, AuditError> {
        self.append_if(kind, fields, None)
            .await?
            .ok_or(AuditError::Stopped)
    }

    /// Appends a record if `condition` holds on the projection at the head it extends;
    /// `None` when it did not hold.
    pub async fn append_if(
        &self,
        kind: &str,
        fields: Value,
        condition: Option<Condition>,
    ) -> Result<Option<AuditRecord>, AuditError> {
        let fields = match fields {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(Append {
                kind: kind.into(),
                fields,
                condition,
                done,
            }))
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// The projection as of the latest record this writer has seen.
    pub fn registry(&self) -> Registry {
        self.registry.borrow().clone()
    }

    /// The projection after reading every record appended so far, by any writer.
    pub async fn sync(&self) -> Result<Registry, AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sync(done))
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }
}

struct Writer {
    js: jetstream::Context,
    stream: String,
    actor: String,
    /// Sequence and hash of the last record known.
    head: (u64, String),
    registry: Registry,
}

const MAX_TRIES: u32 = 1000;

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, reg_tx: watch::Sender<Registry>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Append(a) => {
                    let r = self.append(&a).await;
                    reg_tx.send_replace(self.registry.clone());
                    let _ = a.done.send(r);
                }
                Cmd::Sync(done) => {
                    let r = self.catch_up().await.map(|()| self.registry.clone());
                    reg_tx.send_replace(self.registry.clone());
                    let _ = done.send(r);
                }
            }
        }
    }

    fn err(&self, reason: impl ToString) -> AuditError {
        AuditError::Stream {
            stream: self.stream.clone(),
            reason: reason.to_string(),
        }
    }

    async fn append(&mut self, a: &Append) -> Result<Option<AuditRecord>, AuditError> {
        for _ in 0..MAX_TRIES {
            if let Some(c) = &a.condition {
                if !c(&self.registry) {
                    return Ok(None);
                }
            }
            let rec = AuditRecord::seal(
                self.head.0 + 1,
                &self.head.1,
                &a.kind,
                &self.actor,
                a.fields.clone(),
            );
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                self.head.0.to_string().as_str(),
            );
            let sent = self
                .js
                .publish_with_headers(schemas::subject::audit(&a.kind), headers, rec.encode())
                .await;
            let acked = match sent {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(_) => {
                    self.head = (rec.seq, rec.hash.clone());
                    self.registry.apply(&rec);
                    return Ok(Some(rec));
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    self.catch_up().await?;
                }
                Err(e) => {
                    // The head may have moved meanwhile; re-read before the next attempt.
                    let _ = self.catch_up().await;
                    return Err(self.err(format!("appending {}: {e}", a.kind)));
                }
            }
        }
        Err(AuditError::Contended {
            stream: self.stream.clone(),
            kind: a.kind.clone(),
            tries: MAX_TRIES,
        })
    }

    /// Reads the records appended after `head` by other writers.
    async fn catch_up(&mut self) -> Result<(), AuditError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| self.err(e))?;
        let last = stream
            .get_info()
            .await
            .map_err(|e| self.err(e))?
            .state
            .last_sequence;
        while self.head.0 < last {
            let seq = self.head.0 + 1;
            let msg = stream
                .get_raw_message(seq)
                .await
                .map_err(|e| self.err(format!("reading record {seq}: {e}")))?;
            let r = AuditRecord::decode(&msg.payload).map_err(|e| AuditError::BadHead {
                stream: self.stream.clone(),
                seq,
                reason: e.to_string(),
            })?;
            self.head = (seq, r.hash.clone());
            self.registry.apply(&r);
        }
        Ok(())
    }
}

/// Every message of `stream` in stream order: `(stream sequence, payload)`. Reads with an
/// ordered consumer up to the last sequence at the time of the call.
pub async fn read_all(
    js: &jetstream::Context,
    stream: &str,
) -> Result<Vec<(u64, Bytes)>, AuditError> {
    let err = |reason: String| AuditError::Stream {
        stream: stream.into(),
        reason,
    };
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let info = s.get_info().await.map_err(|e| err(e.to_string()))?;
    let last = info.state.last_sequence;
    let mut out = Vec::with_capacity(info.state.messages as usize);
    if info.state.messages == 0 {
        return Ok(out);
    }
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut msgs = consumer.messages().await.map_err(|e| err(e.to_string()))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .map_err(|_| err("timed out reading".into()))?;
        let Some(m) = next else { break };
        let m = m.map_err(|e| err(e.to_string()))?;
        let seq = m.info().map_err(|e| err(e.to_string()))?.stream_sequence;
        out.push((seq, m.message.payload.clone()));
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record is intact and chained; `count` records, head `(seq, hash)`.
    Ok {
        count: u64,
        head_seq: u64,
        head_hash: String,
    },
    /// The first bad record.
    Bad(Problem),
}

/// What is wrong with the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Its content does not match its hash.
    #[error("record {seq} (stream seq {stream_seq}) was changed: its hash {stored} does not match its content ({computed})")]
    Changed {
        seq: u64,
        stream_seq: u64,
        stored: String,
        computed: String,
    },
    /// Records are missing: the chain jumps from `after` to `found`.
    #[error("record {expected} is missing: after record {after} comes record {found} (stream seq {stream_seq})")]
    Missing {
        expected: u64,
        after: u64,
        found: u64,
        stream_seq: u64,
    },
    /// A record is out of order.
    #[error("records are reordered: record {found} stands where record {expected} belongs (stream seq {stream_seq})")]
    Reordered {
        expected: u64,
        found: u64,
        stream_seq: u64,
    },
    /// Not an audit record, or not chained to its predecessor.
    #[error("record at stream seq {stream_seq} is foreign: {reason}")]
    Foreign { stream_seq: u64, reason: String },
    /// The chain does not contain the digest's head as exported.
    #[error("the chain was rewritten before the digest: {reason}")]
    Rewritten { reason: String },
}

impl Problem {
    /// The stream sequence of the bad record, where there is one.
    pub fn stream_seq(&self) -> Option<u64> {
        match self {
            Problem::Changed { stream_seq, .. }
            | Problem::Missing { stream_seq, .. }
            | Problem::Reordered { stream_seq, .. }
            | Problem::Foreign { stream_seq, .. } => Some(*stream_seq),
            Problem::Rewritten { .. } => None,
        }
    }
}

/// Walks `messages` (stream order) and returns the first problem, or OK with the head.
/// With `digest`, the record at `digest.seq` must carry exactly `digest.hash`.
pub fn verify(messages: &[(u64, Bytes)], digest: Option<&Digest>) -> Verdict {
    let decoded: Vec<(u64, Result<AuditRecord, String>)> = messages
        .iter()
        .map(|(s, p)| (*s, AuditRecord::decode(p).map_err(|e| e.to_string())))
        .collect();
    let mut prev: (u64, String) = (0, GENESIS_HASH.into());
    for (i, (stream_seq, r)) in decoded.iter().enumerate() {
        let stream_seq = *stream_seq;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                return Verdict::Bad(Problem::Foreign {
                    stream_seq,
                    reason: format!("not an audit record ({e})"),
                })
            }
        };
        let expected = prev.0 + 1;
        if r.seq != expected {
            // Reordered when the expected record is still to come; missing otherwise.
            let later = decoded[i + 1..]
                .iter()
                .any(|(_, x)| matches!(x, Ok(x) if x.seq == expected));
            if later || r.seq < expected {
                return Verdict::Bad(Problem::Reordered {
                    expected,
                    found: r.seq,
                    stream_seq,
                });
            }
            return Verdict::Bad(Problem::Missing {
                expected,
                after: prev.0,
                found: r.seq,
                stream_seq,
            });
        }
        let computed = r.compute_hash();
        if computed != r.hash {
            return Verdict::Bad(Problem::Changed {
                seq: r.seq,
                stream_seq,
                stored: r.hash.clone(),
                computed,
            });
        }
        if r.prev_hash != prev.1 {
            return Verdict::Bad(Problem::Foreign {
                stream_seq,
                reason: format!(
                    "record {} names previous hash {} but record {} has hash {}",
                    r.seq, r.prev_hash, prev.0, prev.1
                ),
            });
        }
        if let Some(d) = digest {
            if d.seq == r.seq && d.hash != r.hash {
                return Verdict::Bad(Problem::Rewritten {
                    reason: format!(
                        "record {} has hash {}, the digest says {}",
                        r.seq, r.hash, d.hash
                    ),
                });
            }
        }
        prev = (r.seq, r.hash.clone());
    }
    if let Some(d) = digest {
        if prev.0 < d.seq {
            return Verdict::Bad(Problem::Rewritten {
                reason: format!(
                    "the digest's head is record {} but the chain ends at record {}",
                    d.seq, prev.0
                ),
            });
        }
    }
    Verdict::Ok {
        count: decoded.len() as u64,
        head_seq: prev.0,
        head_hash: prev.1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let r = AuditRecord::seal(
                    seq,
                    &prev,
                    kind::HUB_STARTED,
                    "test",
                    serde_json::json!({"n": seq, "z": {"b": 1, "a": 2}})
                        .as_object()
                        .unwrap()
                        .clone(),
                );
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn msgs(rs: &[AuditRecord]) -> Vec<(u64, Bytes)> {
        rs.iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, r.encode()))
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let rs = chain(5);
        match verify(&msgs(&rs), None) {
            Verdict::Ok {
                count, head_hash, ..
            } => {
                assert_eq!(count, 5);
                assert_eq!(head_hash, rs[4].hash);
            }
            bad => panic!("{bad:?}"),
        }
    }

    #[test]
    fn canonical_encoding_sorts_keys() {
        let r = &chain(1)[0];
        let text = String::from_utf8(r.canonical_bytes()).unwrap();
        assert!(text.starts_with(r#"{"actor":"test","fields":{"n":1,"z":{"a":2,"b":1}}"#));
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let rs = chain(5);
        let mut changed = rs.clone();
        changed[2].actor = "mallory".into();
        assert!(matches!(
            verify(&msgs(&changed), None),
            Verdict::Bad(Problem::Changed { seq: 3, .. })
        ));
        let mut removed = rs.clone();
        removed.remove(2);
        assert!(matches!(
            verify(&msgs(&removed), None),
            Verdict::Bad(Problem::Missing {
                expected: 3,
                found: 4,
                ..
            })
        ));
        let mut swapped = rs.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            verify(&msgs(&swapped), None),
            Verdict::Bad(Problem::Reordered {
                expected: 2,
                found: 3,
                ..
            })
        ));
        let mut foreign = rs.clone();
        foreign.push(AuditRecord::seal(
            6,
            GENESIS_HASH,
            "x",
            "mallory",
            Map::new(),
        ));
        assert!(matches!(
            verify(&msgs(&foreign), None),
            Verdict::Bad(Problem::Foreign { stream_seq: 6, .. })
        ));
        let d = Digest {
            stream: "s".into(),
            seq: 3,
            hash: rs[2].hash.clone(),
        };
        let rewritten = chain(5)
            .into_iter()
            .map(|mut r| {
                r.actor = "other".into();
                r
            })
            .collect::<Vec<_>>();
        // Re-seal so every hash is valid: only the digest catches it.
        let mut prev = GENESIS_HASH.to_string();
        let rewritten: Vec<_> = rewritten
            .into_iter()
            .map(|mut r| {
                r.prev_hash = prev.clone();
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                r
            })
            .collect();
        assert!(matches!(
            verify(&msgs(&rewritten), None),
            Verdict::Ok { .. }
        ));
        assert!(matches!(
            verify(&msgs(&rewritten), Some(&d)),
            Verdict::Bad(Problem::Rewritten { .. })
        ));
        assert!(matches!(verify(&msgs(&rs), Some(&d)), Verdict::Ok { .. }));
    }
}
