//! Exactly once from the agent: the acks of each producer's last requests, kept in the
//! outbox's sled database and written in the same transaction as the records they ack.
//!
//! A request may carry `mesh-producer` (a UUID the SDK draws once per `Agent`) and
//! `mesh-request` (its number from that producer). The outbox keeps, per agent and
//! producer, the ack of its last [`WINDOW`] stored requests. A request sent again (a
//! timeout, a lost reply, a reconnect, an edge hub restarted or killed in between) finds
//! its ack here and gets it back; nothing is stored twice. Because the entry is written
//! atomically with the records, there is no moment at which the events are durable and
//! the ack is not, or the other way round. An entry idle for longer than
//! `outbox.max_age` is dropped: that is the horizon of a retry.
//!
//! # Format
//! Tree `producers`; key: the agent id, a 0 byte, the producer's 16 bytes. Value:
//! `updated_ns` (i64 BE) then up to [`WINDOW`] triples `(request, first_seq, last_seq)`
//! (u64 BE each), oldest first.

use uuid::Uuid;

/// Acks remembered per producer: as many as requests an agent may have in flight by
/// default (`limits.max_inflight`).
pub const WINDOW: usize = 64;

/// A request's identity: the agent, its producer and the request's number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub agent: String,
    pub producer: Uuid,
    pub request: u64,
}

impl RequestId {
    pub(super) fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.agent.len() + 17);
        k.extend_from_slice(self.agent.as_bytes());
        k.push(0);
        k.extend_from_slice(self.producer.as_bytes());
        k
    }
}

/// What the outbox knows of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Stored, with these sequences: answer with this ack.
    Stored { first_seq: u64, last_seq: u64 },
    /// Older than every request remembered for its producer: it may or may not have
    /// been stored.
    TooOld { oldest: u64 },
    /// Not stored.
    New,
}

/// One producer's entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) updated_ns: i64,
    pub(super) acks: Vec<(u64, u64, u64)>,
}

impl Entry {
    pub(super) fn decode(v: &[u8]) -> Option<Entry> {
        if v.len() < 8 || !(v.len() - 8).is_multiple_of(24) {
            return None;
        }
        let u = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        Some(Entry {
            updated_ns: i64::from_be_bytes(v[..8].try_into().ok()?),
            acks: v[8..]
                .chunks(24)
                .map(|c| (u(&c[..8]), u(&c[8..16]), u(&c[16..])))
                .collect(),
        })
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 24 * self.acks.len());
        v.extend_from_slice(&self.updated_ns.to_be_bytes());
        for (r, f, l) in &self.acks {
            v.extend_from_slice(&r.to_be_bytes());
            v.extend_from_slice(&f.to_be_bytes());
            v.extend_from_slice(&l.to_be_bytes());
        }
        v
    }

    pub(super) fn seen(&self, request: u64) -> Seen {
        if let Some((_, f, l)) = self.acks.iter().find(|(r, _, _)| *r == request) {
            return Seen::Stored {
                first_seq: *f,
                last_seq: *l,
            };
        }
        match self.acks.iter().map(|(r, _, _)| *r).min() {
            Some(oldest) if self.acks.len() >= WINDOW && request < oldest => {
                Seen::TooOld { oldest }
            }
            _ => Seen::New,
        }
    }

    /// Records a stored request, forgetting the oldest past [`WINDOW`].
    pub(super) fn record(&mut self, request: u64, first: u64, last: u64, now_ns: i64) {
        self.updated_ns = now_ns;
        self.acks.push((request, first, last));
        if self.acks.len() > WINDOW {
            let oldest = self
                .acks
                .iter()
                .enumerate()
                .min_by_key(|(_, (r, _, _))| *r)
                .map(|(k, _)| k)
                .expect("not empty");
            self.acks.remove(oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_remember_a_window() {
        let mut e = Entry::default();
        assert_eq!(e.seen(1), Seen::New);
        for r in 1..=(WINDOW as u64 + 10) {
            e.record(r, r * 10, r * 10 + 9, r as i64);
        }
        assert_eq!(e.acks.len(), WINDOW);
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        assert_eq!(
            e.seen(WINDOW as u64 + 10),
            Seen::Stored {
                first_seq: (WINDOW as u64 + 10) * 10,
                last_seq: (WINDOW as u64 + 10) * 10 + 9
            }
        );
        assert_eq!(
            e.seen(11),
            Seen::Stored {
                first_seq: 110,
                last_seq: 119
            }
        );
        assert_eq!(e.seen(10), Seen::TooOld { oldest: 11 });
        assert_eq!(e.seen(WINDOW as u64 + 11), Seen::New);
        assert_eq!(Entry::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn requests_arriving_out_of_order_are_new_until_stored() {
        let mut e = Entry::default();
        e.record(5, 1, 1, 0);
        assert_eq!(e.seen(4), Seen::New);
        e.record(4, 2, 2, 0);
        assert_eq!(
            e.seen(4),
            Seen::Stored {
                first_seq: 2,
                last_seq: 2
            }
        );
    }
}
