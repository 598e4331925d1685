//! The `ce-id` rule: every event id an agent's events carry is stored at most once, at
//! every time horizon, and never acked-and-dropped.
//!
//! CloudEvents names an event by `ce-source` + `ce-id`; here `ce-source` is
//! `mesh://<edge>/<agent>`, so an id is unique per agent of this edge. An agent may leave
//! the id out (the edge assigns a UUIDv7) or supply a UUIDv7. The edge remembers every
//! id it stored (assigned or supplied) for `outbox.id_horizon`, measured on the id's own
//! time (a UUIDv7 carries its millisecond), and refuses a request, storing nothing of it,
//! whose ids include one that
//! * it stored already for the same agent: `duplicate` (the stored event stands);
//! * was made before the horizon: `invalid`, naming `outbox.id_horizon` (the edge can no
//!   longer tell a copy from a new event);
//! * is not a UUIDv7, or was made more than [`MAX_AHEAD`] ahead of the edge's clock, or
//!   appears twice in the request: `invalid`;
//! * waits for its commit in another request: `rate_limited`, retry in 20 ms (the answer
//!   is known by then).
//!
//! # Memory
//! Per second of id time, a set of 128-bit fingerprints of (agent, id), keyed by random
//! keys drawn per process (so no agent can aim at another's fingerprint; a collision is
//! 2^-128). A lookup reads the one set of its id's second. Seconds before the horizon
//! are forgotten each expiry tick. Past `outbox.max_ids`, the oldest seconds are
//! forgotten early (never the last [`KEEP_S`] seconds) and the floor moves up with them:
//! ids older than the floor are refused as too old, and the message says the horizon was
//! shortened. The floor never goes down (a clock set back does not reopen a forgotten
//! second) and is kept in tree `meta` as `ids_floor`.
//!
//! # Format
//! Tree `ids`, written in the same sled transaction as the records, so an id is durable
//! exactly when its event is. Key: the second (u64 BE), the commit's first sequence
//! (u64 BE), a chunk number (u32 BE). Value: up to [`CHUNK_IDS`] entries of the agent's
//! length (u16 BE), the agent, the id's 16 bytes. Start-up rebuilds the sets from it;
//! chunks leave with their second.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::time::Duration;

use schemas::Event;
use uuid::Uuid;

/// How far ahead of the edge's clock an id's time may be.
pub const MAX_AHEAD: Duration = Duration::from_secs(60);
/// Seconds of ids never forgotten early under `outbox.max_ids`.
pub const KEEP_S: u64 = 60;
/// Ids in one chunk of tree `ids` (~4 KiB, like the records).
pub const CHUNK_IDS: usize = 100;
/// Key of the floor in tree `meta`.
pub const META_FLOOR: &[u8] = b"ids_floor";

/// A keyed 128-bit fingerprint of (agent, id).
pub type Fingerprint = u128;

/// Hashes a [`Fingerprint`] to its low 64 bits: it is random already.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Set = HashSet<Fingerprint, BuildHasherDefault<PassThrough>>;

/// What the edge knows of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdCheck {
    New,
    /// Stored already for this agent.
    Stored,
    /// Not a UUIDv7 (its version).
    NotV7(usize),
    /// Made this many ms ahead of the edge's clock.
    Ahead(u64),
    /// Made before the horizon (`outbox.id_horizon`).
    PastHorizon,
    /// Made before the floor, which moved past the horizon (`outbox.max_ids`).
    Forgotten,
}

/// The ids remembered (module doc).
pub struct Ids {
    keys: (RandomState, RandomState),
    seconds: BTreeMap<u64, Set>,
    len: usize,
    floor_s: u64,
    horizon_s: u64,
    max_ids: usize,
}

/// The millisecond a UUIDv7 was made (its first 48 bits).
pub fn v7_ms(id: &Uuid) -> u64 {
    let b = id.as_bytes();
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

impl Ids {
    pub fn new(horizon: Duration, max_ids: usize, floor_s: u64) -> Ids {
        Ids {
            keys: (RandomState::new(), RandomState::new()),
            seconds: BTreeMap::new(),
            len: 0,
            floor_s,
            horizon_s: horizon.as_secs().max(1),
            max_ids,
        }
    }

    pub fn fingerprint(&self, agent: &str, id: &Uuid) -> Fingerprint {
        let half = |s: &RandomState| {
            let mut h = s.build_hasher();
            h.write(agent.as_bytes());
            h.write_u8(0xff);
            h.write(id.as_bytes());
            h.finish()
        };
        (u128::from(half(&self.keys.0)) << 64) | u128::from(half(&self.keys.1))
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ids made in a second before this one are refused.
    pub fn floor_s(&self) -> u64 {
        self.floor_s
    }

    /// The first second inside the horizon at `now_ms`.
    fn cut_s(&self, now_ms: u64) -> u64 {
        (now_ms / 1000).saturating_sub(self.horizon_s)
    }

    /// Whether `id` (fingerprint `fp`) may be stored for its agent at `now_ms`.
    pub fn check(&self, fp: Fingerprint, id: &Uuid, now_ms: u64) -> IdCheck {
        let version = id.get_version_num();
        if version != 7 {
            return IdCheck::NotV7(version);
        }
        let t = v7_ms(id);
        let ahead_ms = MAX_AHEAD.as_millis() as u64;
        if t > now_ms + ahead_ms {
            return IdCheck::Ahead(t - now_ms);
        }
        let s = t / 1000;
        if s < self.cut_s(now_ms) {
            return IdCheck::PastHorizon;
        }
        if s < self.floor_s {
            return IdCheck::Forgotten;
        }
        match self.seconds.get(&s).is_some_and(|set| set.contains(&fp)) {
            true => IdCheck::Stored,
            false => IdCheck::New,
        }
    }

    /// Remembers a stored id.
    pub fn insert(&mut self, agent: &str, id: &Uuid) {
        let fp = self.fingerprint(agent, id);
        if self.seconds.entry(v7_ms(id) / 1000).or_default().insert(fp) {
            self.len += 1;
        }
    }

    /// Forgets the seconds before the horizon and, past `max_ids`, the oldest ones but
    /// the last [`KEEP_S`]. Returns the new floor when it moved, and how many ids were
    /// forgotten early.
    pub fn forget(&mut self, now_ms: u64) -> (Option<u64>, usize) {
        let now_s = now_ms / 1000;
        let mut floor = self.floor_s.max(self.cut_s(now_ms));
        let mut early = 0;
        while let Some((&s, set)) = self.seconds.first_key_value() {
            let over = self.len > self.max_ids && s + KEEP_S < now_s;
            if s >= floor && !over {
                break;
            }
            if s >= floor {
                early += set.len();
                floor = s + 1;
            }
            let (_, set) = self.seconds.pop_first().expect("not empty");
            self.len -= set.len();
        }
        match floor != self.floor_s {
            true => {
                self.floor_s = floor;
                (Some(floor), early)
            }
            false => (None, early),
        }
    }
}

/// The chunks of tree `ids` for the events of one commit (first sequence `first`).
pub fn chunks(first: u64, events: &[Event]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut by_second: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
    for ev in events {
        by_second.entry(v7_ms(&ev.id) / 1000).or_default().push(ev);
    }
    let mut out = Vec::new();
    for (s, evs) in by_second {
        for (k, part) in evs.chunks(CHUNK_IDS).enumerate() {
            let mut key = Vec::with_capacity(20);
            key.extend_from_slice(&s.to_be_bytes());
            key.extend_from_slice(&first.to_be_bytes());
            key.extend_from_slice(&(k as u32).to_be_bytes());
            let mut value = Vec::with_capacity(part.len() * 40);
            for ev in part {
                let agent = ev.agent.as_bytes();
                let len = u16::try_from(agent.len()).unwrap_or(u16::MAX);
                value.extend_from_slice(&len.to_be_bytes());
                value.extend_from_slice(&agent[..usize::from(len)]);
                value.extend_from_slice(ev.id.as_bytes());
            }
            out.push((key, value));
        }
    }
    out
}

/// The second of a chunk's key.
pub fn chunk_second(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

/// The (agent, id) entries of a chunk's value; `None` if it is cut short.
pub fn decode_chunk(value: &[u8]) -> Option<Vec<(&str, Uuid)>> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        let agent = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        let id = Uuid::from_slice(rest.get(2 + len..2 + len + 16)?).ok()?;
        out.push((agent, id));
        rest = &rest[2 + len + 16..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v7_at(ms: u64) -> Uuid {
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        Uuid::new_v7(ts)
    }

    #[test]
    fn an_id_is_stored_once_per_agent_and_refused_outside_the_horizon() {
        let now = 1_800_000_000_000;
        let mut ids = Ids::new(Duration::from_secs(600), 1000, 0);
        let id = v7_at(now - 5_000);
        let a = ids.fingerprint("a1", &id);
        let b = ids.fingerprint("a2", &id);
        assert_ne!(a, b);
        assert_eq!(ids.check(a, &id, now), IdCheck::New);
        ids.insert("a1", &id);
        assert_eq!(ids.check(a, &id, now), IdCheck::Stored);
        assert_eq!(
            ids.check(b, &id, now),
            IdCheck::New,
            "another agent's event"
        );
        let old = v7_at(now - 601_000);
        assert_eq!(
            ids.check(ids.fingerprint("a1", &old), &old, now),
            IdCheck::PastHorizon
        );
        let ahead = v7_at(now + 61_000);
        assert_eq!(
            ids.check(ids.fingerprint("a1", &ahead), &ahead, now),
            IdCheck::Ahead(61_000)
        );
        let v4 = Uuid::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef);
        assert_eq!(ids.check(0, &v4, now), IdCheck::NotV7(4));

        // Past the horizon the id is forgotten, and refused as too old, not as new.
        let later = now + 600_000;
        let (floor, early) = ids.forget(later);
        assert_eq!(early, 0);
        assert_eq!(floor, Some(later / 1000 - 600));
        assert!(ids.is_empty());
        assert_eq!(ids.check(a, &id, later), IdCheck::PastHorizon);
        // A clock set back does not reopen it.
        assert_eq!(ids.check(a, &id, now), IdCheck::Forgotten);
    }

    #[test]
    fn past_max_ids_the_oldest_seconds_go_but_never_the_last_minute() {
        let now = 1_800_000_000_000;
        let mut ids = Ids::new(Duration::from_secs(600), 10, 0);
        let old: Vec<Uuid> = (0..10).map(|k| v7_at(now - 300_000 + k)).collect();
        let recent: Vec<Uuid> = (0..20).map(|k| v7_at(now - 10_000 + k)).collect();
        for id in old.iter().chain(&recent) {
            ids.insert("a", id);
        }
        assert_eq!(ids.len(), 30);
        let (floor, early) = ids.forget(now);
        assert_eq!(early, 10);
        assert_eq!(floor, Some((now - 300_000) / 1000 + 1));
        assert_eq!(ids.len(), 20, "the last minute stays although over max_ids");
        let fp = ids.fingerprint("a", &old[0]);
        assert_eq!(ids.check(fp, &old[0], now), IdCheck::Forgotten);
        let fp = ids.fingerprint("a", &recent[0]);
        assert_eq!(ids.check(fp, &recent[0], now), IdCheck::Stored);
    }

    #[test]
    fn chunks_round_trip_by_second() {
        let now = 1_800_000_000_000;
        let ev = |agent: &str, ms: u64| {
            let mut e = schemas::NewEvent::new("t", "s", b"x".to_vec()).into_event(
                "e1",
                agent,
                1,
                chrono::Utc::now(),
            );
            e.id = v7_at(ms);
            e
        };
        let mut events: Vec<Event> = (0..250).map(|k| ev("a1", now + k % 2)).collect();
        events.push(ev("agent-two", now + 1500));
        let c = chunks(7, &events);
        assert_eq!(
            c.len(),
            4,
            "three chunks for 250 ids in one second, one for the next"
        );
        let mut back = Vec::new();
        for (k, v) in &c {
            let s = chunk_second(k).unwrap();
            for (agent, id) in decode_chunk(v).unwrap() {
                assert_eq!(v7_ms(&id) / 1000, s);
                back.push((agent.to_string(), id));
            }
        }
        let want: Vec<_> = events.iter().map(|e| (e.agent.clone(), e.id)).collect();
        assert_eq!(back, want);
        assert_eq!(decode_chunk(&c[0].1[..5]), None);
    }
}
