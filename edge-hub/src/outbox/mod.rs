//! The edge outbox: a durable, ordered, bounded queue of accepted events in `sled`.
//!
//! # Format
//! Tree `records`, one or more entries per group commit (a commit is split into records
//! of about 4 KiB, written in one batch with one flush; see "Memory" for why so small):
//! * key (32 bytes): `first_seq`, `last_seq`, `accepted_ns` (i64), `value_len`, each
//!   8 bytes big-endian, then the number of the agent whose events it holds (u32 BE;
//!   `agent:<number>` in tree `meta` names it; absent in records written before
//!   records were kept per agent). Keys sort by `first_seq`, so a range scan from an
//!   8-byte `first_seq` prefix finds the record holding a sequence, and start-up
//!   rebuilds the in-memory index, and what each agent holds, from keys alone, without
//!   decoding a value. A record holds one agent's events.
//! * value: an LZ4-compressed MessagePack [`OutboxRecord`] holding consecutive events of
//!   one commit (format in `schemas::bundle`); ~4 KiB before compression.
//!
//! Tree `meta`: `acked` = the centre confirmed every sequence up to it; `expelled` = the
//! highest sequence the outbox limits expelled. Both 8 bytes big-endian.
//!
//! Tree `producers`: the acks of each producer's last requests (format in `producers`),
//! written in the same sled transaction as the records of the commit they ack.
//!
//! Tree `ids`: every event id stored within `outbox.id_horizon`, per agent (the `ce-id`
//! rule and its format in `ids`), written in the same transaction as the records; the
//! floor below which ids are refused as too old is `ids_floor` in `meta`.
//!
//! # Invariants
//! * Sequences are gap-free and ascending: the next commit starts at
//!   `max(last record, acked, expelled) + 1`, so a sequence is never reused, even after
//!   every record was forwarded or expelled.
//! * Only flushed records are visible to readers ([`Outbox::tail`] and the index): an
//!   event is forwarded only once it is durable here, so a crash can never make the
//!   centre hold an event the outbox no longer knows (which would let a later event
//!   reuse its sequence).
//! * Records leave from the front: when the centre acknowledged all their events
//!   ([`Outbox::ack_through`]), or when a limit expels them ([`Outbox::expire`],
//!   `drop-oldest`). One exception: under `drop-oldest`, an agent holding more than its
//!   share (`max_bytes` over the agents holding or bringing events) loses its own oldest
//!   records first, from wherever they are (`Outbox::make_room`). Such a record stays in
//!   the index as a tombstone until it reaches the front; a read stops at the hole and
//!   the next read starts at it, so its bundle says (`mesh-missing`) that those
//!   sequences hold no event, as for an expelled front. Each expelled event is counted
//!   by reason.
//! * One writer ([`OutboxWriter`], not `Clone`) appends and expires; readers and the ack
//!   path share [`Outbox`]. The state mutex is never held across an `.await`.
//!
//! # Memory
//! sled 0.34 keeps every page it wrote in memory until its LRU pages it out, and that LRU
//! does not follow `cache_bytes` closely: it has 256 shards (by page id), each with a
//! 256th of the capacity but always keeping at least the page it saw last, and a shard
//! learns of accesses only in batches of 64. So what stays resident is about one leaf
//! page per shard, plus every page whose shard has not yet seen 64 accesses since it was
//! written. A leaf holds up to 17 records, and a leaf over a quarter of a segment
//! (~128 KiB) is written as a blob, which the LRU counts as ~32 bytes. Hence:
//! * records of ~4 KiB: a leaf stays ~70 KiB, inline, and counted at its size;
//! * after each commit, each new record is read a few times ([`TOUCH_READS`]), so the
//!   shards holding the new leaves get their 64 accesses and page out older leaves;
//! * glibc keeps the holes freed pages leave in its heaps: every [`TRIM_EVERY_BYTES`] of
//!   records written or removed, `malloc_trim` gives them back.
//!
//! Measured with `examples/outbox_probe.rs`, 1,000,000 events of 256 B, 3 fill/drain
//! cycles: peak RSS 34-44 MiB (154-165 MiB with 32 KiB records and none of the above).
//! The price was disk: 1.9-2.0x the payload at full with uncompressed 4 KiB records; LZ4
//! records brought the hub to 1.75x with incompressible data (docs/BENCHMARKS.md). The
//! file keeps its size after a drain (sled shrinks it only from its end); in steady
//! state it does not grow from cycle to cycle.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{OutboxConfig, OutboxSync};
use ids::Ids;
use uuid::Uuid;

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The append would pass `outbox.max_bytes` and the policy is `reject`.
    #[error("outbox full: {used} of {max} bytes used, this batch needs {need} more")]
    Full { used: u64, max: u64, need: u64 },
    /// A batch larger than the whole outbox.
    #[error("batch of {need} bytes is larger than the whole outbox ({max} bytes)")]
    TooLarge { need: u64, max: u64 },
    /// sled refused a read, write or flush.
    #[error("outbox storage at {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: sled::Error,
    },
    /// A stored key or value does not decode.
    #[error("outbox record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Why events left the outbox without reaching the centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpelReason {
    /// `outbox.max_age` passed.
    MaxAge,
    /// `outbox.max_bytes` reached under `drop-oldest`.
    MaxBytes,
}

impl ExpelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpelReason::MaxAge => "max_age",
            ExpelReason::MaxBytes => "max_bytes",
        }
    }
}

/// A snapshot of the outbox for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub records: u64,
    /// Events not yet acknowledged by the centre.
    pub events: u64,
    pub bytes: u64,
    pub next_seq: u64,
    pub acked: u64,
    pub expelled_through: u64,
    pub expelled_max_age: u64,
    pub expelled_max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecMeta {
    first: u64,
    last: u64,
    accepted_ns: i64,
    bytes: u64,
    /// The agent all its events are from ([`Agents`]); 0 when unknown or several.
    agent: u32,
    /// Expelled from the middle of the index (`drop-oldest` by share): gone from sled
    /// and from every count, kept in the index until it reaches the front so the index
    /// stays sorted and gap-free.
    gone: bool,
}

impl RecMeta {
    /// A [`OutboxError::Corrupt`] naming this record's range.
    fn corrupt(&self, reason: impl ToString) -> OutboxError {
        OutboxError::Corrupt {
            key: format!("{}..={}", self.first, self.last),
            reason: reason.to_string(),
        }
    }

    /// 32 bytes, and 4 more (the agent's number) when the record has one agent.
    fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(36);
        k.extend_from_slice(&self.first.to_be_bytes());
        k.extend_from_slice(&self.last.to_be_bytes());
        k.extend_from_slice(&self.accepted_ns.to_be_bytes());
        k.extend_from_slice(&self.bytes.to_be_bytes());
        if self.agent != 0 {
            k.extend_from_slice(&self.agent.to_be_bytes());
        }
        k
    }

    fn from_key(k: &[u8]) -> Option<RecMeta> {
        if k.len() != 32 && k.len() != 36 {
            return None;
        }
        let u = |r: std::ops::Range<usize>| u64::from_be_bytes(k[r].try_into().unwrap_or([0; 8]));
        Some(RecMeta {
            first: u(0..8),
            last: u(8..16),
            accepted_ns: u(16..24) as i64,
            bytes: u(24..32),
            agent: k
                .get(32..36)
                .map_or(0, |a| u32::from_be_bytes(a.try_into().unwrap_or([0; 4]))),
            gone: false,
        })
    }

    fn events(&self) -> u64 {
        self.last - self.first + 1
    }
}

#[derive(Debug, Default)]
struct State {
    index: VecDeque<RecMeta>,
    bytes: u64,
    events: u64,
    next_seq: u64,
    acked: u64,
    expelled_through: u64,
    expelled_max_age: u64,
    expelled_max_bytes: u64,
    /// Highest sequence sent in a bundle that is still in flight (`acked` when none is).
    inflight_through: u64,
    /// Expelled while in flight: lost only if their bundle is not acknowledged.
    pending_expel: Vec<(u64, u64, ExpelReason)>,
    /// Records in the index that are [`RecMeta::gone`].
    tombstones: usize,
    agents: Agents,
    /// What each agent holds (by number; 0: records of several or unknown agents).
    held: HashMap<u32, Held>,
}

/// The agents records are kept for, by number (from 1), kept in tree `meta` as
/// `agent:<number>` so a record's key can name its agent in 4 bytes.
#[derive(Debug, Default)]
struct Agents {
    names: Vec<String>,
    numbers: HashMap<String, u32>,
}

impl Agents {
    fn number(&self, agent: &str) -> Option<u32> {
        self.numbers.get(agent).copied()
    }

    fn add(&mut self, agent: &str) -> u32 {
        self.names.push(agent.to_string());
        let n = self.names.len() as u32;
        self.numbers.insert(agent.to_string(), n);
        n
    }

    fn meta_key(n: u32) -> Vec<u8> {
        let mut k = META_AGENT.to_vec();
        k.extend_from_slice(&n.to_be_bytes());
        k
    }
}

/// Records just expelled: their removal from sled, the events counted as expelled, the
/// new `expelled_through`, and their bytes.
struct Expelled {
    batch: sled::Batch,
    events: u64,
    through: u64,
    bytes: u64,
}

/// One agent's records in the outbox, oldest first, and their bytes.
#[derive(Debug, Default)]
struct Held {
    bytes: u64,
    firsts: VecDeque<u64>,
}

impl State {
    /// Adds a record at the end of the index.
    fn push_record(&mut self, m: RecMeta) {
        self.bytes += m.bytes;
        self.events += m.events();
        let h = self.held.entry(m.agent).or_default();
        h.bytes += m.bytes;
        h.firsts.push_back(m.first);
        self.index.push_back(m);
    }

    /// Takes a record leaving the outbox (not yet [`RecMeta::gone`]) out of the counts.
    fn forget_record(&mut self, m: &RecMeta) {
        self.bytes -= m.bytes;
        self.events -= m.events();
        if let Some(h) = self.held.get_mut(&m.agent) {
            h.bytes -= m.bytes;
            match h.firsts.front() == Some(&m.first) {
                true => drop(h.firsts.pop_front()),
                false => h.firsts.retain(|f| *f != m.first),
            }
            if h.firsts.is_empty() {
                self.held.remove(&m.agent);
            }
        }
    }

    /// The events of `m`, leaving by `reason`, that count as expelled now: those the
    /// centre acknowledged were delivered, not lost; those in a bundle still in flight
    /// are lost only if that bundle is not acknowledged (kept in `pending_expel`).
    fn count_lost(&mut self, m: &RecMeta, reason: ExpelReason) -> u64 {
        let first_unacked = self.acked.max(m.first - 1) + 1;
        let inflight_end = self.inflight_through.min(m.last);
        if first_unacked <= inflight_end {
            self.pending_expel
                .push((first_unacked, inflight_end, reason));
        }
        m.last.saturating_sub(inflight_end.max(first_unacked - 1))
    }

    /// Pops the records at the front that are gone already.
    fn pop_tombstones(&mut self) {
        while self.index.front().is_some_and(|m| m.gone) {
            self.index.pop_front();
            self.tombstones -= 1;
        }
    }

    fn count_expelled(&mut self, reason: ExpelReason, n: u64) {
        match reason {
            ExpelReason::MaxAge => self.expelled_max_age += n,
            ExpelReason::MaxBytes => self.expelled_max_bytes += n,
        }
    }
}

/// The shared side of the outbox: reading for the forwarder, acknowledging, stats.
pub struct Outbox {
    path: String,
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    /// The acks of each producer's last requests (`producers`).
    producers: sled::Tree,
    /// The ids stored within the horizon (`ids`), on disk and in memory.
    id_chunks: sled::Tree,
    ids: Mutex<Ids>,
    state: Mutex<State>,
    /// Held by a read from start to end and by every expulsion, so that a record cannot
    /// be expelled between a forwarder's read of it and the mark that puts it in flight
    /// (the expulsion would count as lost an event the bundle delivers), nor removed from
    /// sled while a read loads it. Taken before `state`, never after.
    reading: Mutex<()>,
    cfg: OutboxConfig,
    /// What `outbox.sync = "always"` syncs after each flush; `None` under `flush`.
    durable: Option<Arc<durable::Durable>>,
    appended: tokio::sync::Notify,
    /// Record bytes written or removed since the last `malloc_trim`.
    churn: AtomicU64,
}

const META_ACKED: &[u8] = b"acked";
/// Largest record the outbox writes, in bytes (about). A sled leaf holds up to 17 entries
/// and is stored as a blob file once over a quarter of its 512 KiB segment; blob pages
/// are deleted late (8.7x the payload on disk with one record per commit) and count as
/// ~32 bytes in sled's cache, so they are never paged out (RSS grew with the payload with
/// 32 KiB records). 17 records of 4 KiB stay well under that (module doc, "Memory").
const RECORD_TARGET_BYTES: usize = 4 << 10;
/// Reads of each new record after its commit, so that sled's cache sees enough accesses
/// to page out older leaves (module doc, "Memory"). 1 read: 40 MiB peak RSS at 1M
/// events, 4: 34 MiB, 16: 34 MiB.
const TOUCH_READS: usize = 4;
/// Record bytes written or removed between two `malloc_trim`s (~1.5 ms each).
const TRIM_EVERY_BYTES: u64 = 16 << 20;
/// Estimated MessagePack size of an event beyond its data (ids, subject, type, time…).
const EVENT_OVERHEAD_BYTES: usize = 160;
const META_EXPELLED: &[u8] = b"expelled";
/// Prefix of the agents' numbers in tree `meta` ([`Agents`]).
const META_AGENT: &[u8] = b"agent:";

impl Outbox {
    /// Opens (or creates) the outbox in `dir` and rebuilds its index from the keys.
    pub fn open(dir: &Path, cfg: OutboxConfig) -> Result<(Arc<Outbox>, OutboxWriter), OutboxError> {
        let path = dir.display().to_string();
        let storage = |source| OutboxError::Storage {
            path: path.clone(),
            source,
        };
        // No background flusher: every group commit flushes before it acks, and a
        // periodic flush beside it only makes commits wait for each other. What is not
        // flushed yet (acks, expulsions) is safe to lose in a crash: a record that
        // reappears is resent and skipped by the lander's mark; sequences never go back.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cfg.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(storage)?;
        let records = db.open_tree("records").map_err(storage)?;
        let meta = db.open_tree("meta").map_err(storage)?;
        let producers = db.open_tree("producers").map_err(storage)?;
        let id_chunks = db.open_tree("ids").map_err(storage)?;
        let read_meta = |k: &[u8]| -> Result<u64, OutboxError> {
            Ok(meta
                .get(k)
                .map_err(storage)?
                .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0))
        };
        let mut st = State {
            acked: read_meta(META_ACKED)?,
            expelled_through: read_meta(META_EXPELLED)?,
            ..State::default()
        };
        for kv in meta.scan_prefix(META_AGENT) {
            let (k, v) = kv.map_err(storage)?;
            let n = k
                .get(META_AGENT.len()..)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes);
            match (n, std::str::from_utf8(&v)) {
                // Numbers are given in order, from 1, and kept in order of their key.
                (Some(n), Ok(name)) if n as usize == st.agents.names.len() + 1 => {
                    st.agents.add(name);
                }
                _ => tracing::warn!(key = ?k, "outbox: an agent's number does not decode; ignored"),
            }
        }
        for key in records.iter().keys() {
            let key = key.map_err(storage)?;
            let m = RecMeta::from_key(&key).ok_or_else(|| OutboxError::Corrupt {
                key: format!("{key:?}"),
                reason: format!(
                    "key is {} bytes, expected 32 (or 36 with an agent)",
                    key.len()
                ),
            })?;
            if let Some(prev) = st.index.back() {
                if m.first != prev.last + 1 {
                    // Records expelled by share under `drop-oldest` (or a failed flush).
                    tracing::debug!(
                        prev_last = prev.last,
                        first = m.first,
                        "outbox records are not contiguous"
                    );
                }
            }
            st.push_record(m);
        }
        let last = st.index.back().map_or(0, |m| m.last);
        st.next_seq = last.max(st.acked).max(st.expelled_through) + 1;
        let max_ids = usize::try_from(cfg.max_ids).unwrap_or(usize::MAX);
        let mut ids = Ids::new(cfg.id_horizon, max_ids, read_meta(ids::META_FLOOR)?);
        let forgotten = rebuild_ids(&mut ids, &id_chunks).map_err(storage)?;
        meta.insert(ids::META_FLOOR, &ids.floor_s().to_be_bytes())
            .map_err(storage)?;
        let durable = match cfg.sync {
            OutboxSync::Always => Some(Arc::new(
                durable::Durable::open(dir).map_err(|e| storage(sled::Error::Io(e)))?,
            )),
            OutboxSync::Flush => {
                tracing::warn!(
                    path = %path,
                    "outbox.sync = \"flush\": an acked event survives a kill -9 of the edge \
                     hub, not a power cut"
                );
                None
            }
        };
        tracing::info!(
            path = %path, records = st.index.len(), events = st.events, bytes = st.bytes,
            next_seq = st.next_seq, acked = st.acked, ids = ids.len(), ids_forgotten = forgotten,
            sync = cfg.sync.as_str(),
            "outbox opened"
        );
        let outbox = Arc::new(Outbox {
            path,
            db,
            records,
            meta,
            producers,
            id_chunks,
            ids: Mutex::new(ids),
            state: Mutex::new(st),
            reading: Mutex::new(()),
            cfg,
            durable,
            appended: tokio::sync::Notify::new(),
            churn: AtomicU64::new(0),
        });
        Ok((outbox.clone(), OutboxWriter { outbox, ticks: 0 }))
    }

    /// sled's flush, then (under `outbox.sync = "always"`) the syncs that make what it
    /// wrote survive a power cut (`durable`).
    async fn flush_durable(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await?;
        if let Some(d) = &self.durable {
            let d = d.clone();
            tokio::task::spawn_blocking(move || d.sync())
                .await
                .map_err(|e| sled::Error::ReportableBug(format!("the sync task failed: {e}")))?
                .map_err(sled::Error::Io)?;
        }
        Ok(())
    }

    /// Counts record bytes written or removed; every `TRIM_EVERY_BYTES` returns the heap
    /// memory sled freed to the system (glibc keeps it otherwise).
    fn churned(&self, bytes: u64) {
        if self.churn.fetch_add(bytes, Ordering::Relaxed) + bytes < TRIM_EVERY_BYTES {
            return;
        }
        self.churn.store(0, Ordering::Relaxed);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            fn trim() {
                // SAFETY: malloc_trim only releases free heap pages; it is thread-safe.
                unsafe { libc::malloc_trim(0) };
            }
            // Off the caller's thread when there is a runtime: a trim takes ~1.5 ms.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(trim)),
                Err(_) => trim(),
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is a few
        // plain assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reading(&self) -> MutexGuard<'_, ()> {
        self.reading.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ids(&self) -> MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the ids `agent` supplied in one request against the `ce-id` rule (`ids`):
    /// their fingerprints, in order, or the first id refused and why. Does not look at
    /// the request's own repeats, nor at requests waiting for their commit.
    pub fn check_ids<'a>(
        &self,
        agent: &str,
        supplied: impl Iterator<Item = &'a Uuid>,
    ) -> Result<Vec<Fingerprint>, (Uuid, IdCheck)> {
        let now = ids::now_ms();
        let ids = self.ids();
        supplied
            .map(|id| {
                let fp = ids.fingerprint(agent, id);
                match ids.check(fp, id, now) {
                    IdCheck::New => Ok(fp),
                    other => Err((*id, other)),
                }
            })
            .collect()
    }

    /// The bytes of `agent`'s records in the outbox (records of one agent only: under
    /// `reject` a record may hold several agents' events; see the writer).
    pub fn held_bytes(&self, agent: &str) -> u64 {
        let st = self.state();
        st.agents
            .number(agent)
            .and_then(|n| st.held.get(&n))
            .map_or(0, |h| h.bytes)
    }

    /// The outbox's configuration.
    pub fn cfg(&self) -> &OutboxConfig {
        &self.cfg
    }

    /// Ids remembered for the `ce-id` rule, and the first second not forgotten.
    pub fn ids_remembered(&self) -> (usize, u64) {
        let ids = self.ids();
        (ids.len(), ids.floor_s())
    }

    /// What the outbox knows of request `id` (see `producers`).
    pub fn seen(&self, id: &RequestId) -> Result<Seen, OutboxError> {
        Ok(
            match self.producers.get(id.key()).map_err(|e| self.storage(e))? {
                Some(v) => producers::Entry::decode(&v)
                    .map(|e| e.seen(id.request))
                    .unwrap_or(Seen::New),
                None => Seen::New,
            },
        )
    }

    fn storage(&self, source: sled::Error) -> OutboxError {
        OutboxError::Storage {
            path: self.path.clone(),
            source,
        }
    }

    pub fn stats(&self) -> OutboxStats {
        let st = self.state();
        // The front record may be partly acknowledged (a bundle ended inside it): those
        // events are delivered, not held.
        let delivered_in_front = st
            .index
            .front()
            .map_or(0, |m| st.acked.saturating_sub(m.first - 1).min(m.events()));
        OutboxStats {
            records: (st.index.len() - st.tombstones) as u64,
            events: st.events - delivered_in_front,
            bytes: st.bytes,
            next_seq: st.next_seq,
            acked: st.acked,
            expelled_through: st.expelled_through,
            expelled_max_age: st.expelled_max_age,
            expelled_max_bytes: st.expelled_max_bytes,
        }
    }

    /// The centre confirmed every sequence up to this one.
    pub fn acked(&self) -> u64 {
        self.state().acked
    }

    /// The highest sequence a bundle may cover now: the last durable event, or the last
    /// expelled one when that is higher.
    pub fn tail(&self) -> u64 {
        let st = self.state();
        st.index
            .back()
            .map_or(0, |m| m.last)
            .max(st.expelled_through)
            .max(st.acked)
    }

    /// Resolves when a commit made new events durable (or at once if one did since the
    /// last call: `Notify` keeps one permit).
    pub async fn appended(&self) {
        self.appended.notified().await
    }

    /// The forwarder sent a bundle covering up to `last` (in flight until acknowledged).
    pub fn mark_sent(&self, last: u64) {
        let mut st = self.state();
        st.inflight_through = st.inflight_through.max(last);
    }

    /// The forwarder forgot every bundle in flight and starts again from `acked + 1`:
    /// events expelled while they were in flight and never acknowledged are lost now.
    pub fn reset_inflight(&self) {
        let mut st = self.state();
        let pending = std::mem::take(&mut st.pending_expel);
        for (first, last, reason) in pending {
            st.count_expelled(reason, last - first + 1);
        }
        st.inflight_through = st.acked;
    }

    /// The centre stored every sequence up to `seq`: drop the records it covers.
    /// Not flushed: a crash may undo it, which only makes the forwarder resend what the
    /// centre already has, and the lander skips it.
    pub fn ack_through(&self, seq: u64) -> Result<(), OutboxError> {
        let mut st = self.state();
        if seq <= st.acked {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        while let Some(m) = st.index.front().copied() {
            if m.last > seq {
                break;
            }
            st.index.pop_front();
            if m.gone {
                st.tombstones -= 1;
                continue;
            }
            removed += m.bytes;
            st.forget_record(&m);
            batch.remove(m.key());
        }
        st.pop_tombstones();
        st.acked = seq;
        // Events expelled while in flight and now acknowledged were delivered.
        st.pending_expel.retain_mut(|(first, last, _)| {
            *first = (*first).max(seq + 1);
            first <= last
        });
        self.records
            .apply_batch(batch)
            .map_err(|e| self.storage(e))?;
        self.meta
            .insert(META_ACKED, &seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        drop(st);
        self.churned(removed);
        Ok(())
    }

    /// Makes room for `need` more bytes under `drop-oldest`. While there is not enough,
    /// the agent holding the most above its share (`outbox.max_bytes` over the number
    /// of agents holding or bringing events, counting what it brings in `incoming`)
    /// loses its oldest record; once no agent is over its share, the oldest records go.
    /// So a flooding agent's events are expelled before anyone else's.
    fn make_room(
        &self,
        st: &mut State,
        need: u64,
        incoming: &HashMap<u32, u64>,
    ) -> Result<(), OutboxError> {
        let max = self.cfg.max_bytes;
        let mut batch = sled::Batch::default();
        let (mut n, mut removed, before) = (0, 0, st.expelled_through);
        let mut through = before;
        while st.bytes + need > max {
            let holders = st
                .held
                .iter()
                .filter(|(a, h)| **a != 0 && h.bytes > 0)
                .map(|(a, _)| *a)
                .chain(incoming.keys().copied().filter(|a| *a != 0))
                .collect::<std::collections::HashSet<u32>>()
                .len();
            let share = max / holders.max(1) as u64;
            let victim = st
                .held
                .iter()
                .filter(|(a, h)| **a != 0 && !h.firsts.is_empty())
                .map(|(a, h)| (h.bytes + incoming.get(a).copied().unwrap_or(0), *a))
                .filter(|(b, _)| *b > share)
                .max();
            let Some((_, agent)) = victim else { break };
            let first = st.held[&agent].firsts[0];
            let pos = st.index.partition_point(|m| m.first < first);
            let m = st.index[pos];
            debug_assert!(m.first == first && !m.gone, "{m:?} for {first}");
            st.forget_record(&m);
            n += st.count_lost(&m, ExpelReason::MaxBytes);
            through = through.max(m.last);
            st.index[pos].gone = true;
            st.tombstones += 1;
            removed += m.bytes;
            batch.remove(m.key());
        }
        st.pop_tombstones();
        if through != before {
            let expelled = Expelled {
                batch,
                events: n,
                through,
                bytes: removed,
            };
            self.expelled(st, ExpelReason::MaxBytes, expelled, "by share")?;
        }
        // No one over its share: the oldest go.
        self.expel_while(st, ExpelReason::MaxBytes, |st, _| st.bytes + need > max)?;
        Ok(())
    }

    /// Removes the oldest records while `pred` holds, counting them under `reason`.
    /// Returns the number of events expelled.
    fn expel_while(
        &self,
        st: &mut State,
        reason: ExpelReason,
        mut pred: impl FnMut(&State, &RecMeta) -> bool,
    ) -> Result<u64, OutboxError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        let mut n = 0;
        let mut through = st.expelled_through;
        while let Some(m) = st.index.front().copied() {
            if m.gone {
                st.index.pop_front();
                st.tombstones -= 1;
                continue;
            }
            if !pred(st, &m) {
                break;
            }
            removed += m.bytes;
            st.index.pop_front();
            st.forget_record(&m);
            n += st.count_lost(&m, reason);
            through = through.max(m.last);
            batch.remove(m.key());
        }
        if through == st.expelled_through {
            return Ok(0);
        }
        let expelled = Expelled {
            batch,
            events: n,
            through,
            bytes: removed,
        };
        self.expelled(st, reason, expelled, "oldest first")?;
        Ok(n)
    }

    /// Counts and records records just expelled (taken out of `st` already): removes
    /// them from sled, moves `expelled_through` (kept in `meta`), and logs it.
    fn expelled(
        &self,
        st: &mut State,
        reason: ExpelReason,
        e: Expelled,
        how: &'static str,
    ) -> Result<(), OutboxError> {
        st.count_expelled(reason, e.events);
        st.expelled_through = e.through;
        self.records
            .apply_batch(e.batch)
            .map_err(|err| self.storage(err))?;
        self.meta
            .insert(META_EXPELLED, &e.through.to_be_bytes())
            .map_err(|err| self.storage(err))?;
        self.churned(e.bytes);
        tracing::warn!(
            events = e.events,
            through = e.through,
            reason = reason.as_str(),
            how,
            "outbox expelled events"
        );
        Ok(())
    }
}

mod durable;
pub mod ids;
mod producers;
mod read;
mod writer;

pub use ids::{Fingerprint, IdCheck};
pub use producers::{RequestId, Seen, WINDOW as PRODUCER_WINDOW};
pub use read::ReadCache;
pub use writer::{Committed, OutboxWriter};

/// Fills `ids` from tree `ids`, removing the chunks of seconds already forgotten (before
/// the floor or the horizon). Returns how many chunks it removed.
fn rebuild_ids(ids: &mut Ids, tree: &sled::Tree) -> Result<usize, sled::Error> {
    let (floor, _) = ids.forget(ids::now_ms());
    let floor = floor.unwrap_or(ids.floor_s());
    let mut stale = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        match (ids::chunk_second(&k), ids::decode_chunk(&v)) {
            (Some(s), Some(entries)) if s >= floor => {
                for (agent, id) in entries {
                    ids.insert(agent, &id);
                }
            }
            (Some(_), Some(_)) => stale.push(k),
            _ => {
                tracing::warn!(key = ?k, "outbox: an id chunk does not decode; dropped");
                stale.push(k);
            }
        }
    }
    for k in &stale {
        tree.remove(k)?;
    }
    Ok(stale.len())
}
