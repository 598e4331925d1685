//! The edge outbox record and the bundle that carries events across the leaf link.
//!
//! **Outbox record** (sled value, key = `first_seq` as 8 big-endian bytes): every event of
//! one group commit, MessagePack array encoding. Records hold consecutive sequences:
//! record `k` holds `first_seq ..= first_seq + events.len() - 1`.
//!
//! **Bundle** (one message on `mesh.up.<edge>`, stream `MESH_INGRESS`): the events of
//! `first_seq ..= last_seq` that are still in the outbox, in order. A sequence in the
//! range without an event was expelled at the edge (outbox limits); the lander counts the
//! whole range as covered. Consecutive bundles of one edge cover consecutive ranges.

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::{headers as h, Event, SchemaError};

/// Format version of [`Bundle`]; a lander refuses versions it does not know.
pub const BUNDLE_VERSION: u8 = 1;

/// One group commit of the edge outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub first_seq: u64,
    /// When the edge accepted it, nanoseconds since the epoch (for max-age expiry).
    pub accepted_ns: i64,
    pub events: Vec<Event>,
}

impl OutboxRecord {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64 - 1
    }

    pub fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        rmp_serde::to_vec(self).map_err(|e| SchemaError::Encode {
            what: "outbox record",
            reason: e.to_string(),
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<OutboxRecord, SchemaError> {
        rmp_serde::from_slice(bytes).map_err(|e| SchemaError::Decode {
            what: "outbox record",
            reason: e.to_string(),
        })
    }
}

/// Events in transit from one edge to the centre.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub version: u8,
    pub edge: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: Vec<Event>,
}

impl Bundle {
    pub fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        rmp_serde::to_vec(self).map_err(|e| SchemaError::Encode {
            what: "bundle",
            reason: e.to_string(),
        })
    }

    /// Decodes and checks a bundle: known version, `first_seq <= last_seq`, events
    /// strictly ascending inside the range and all from the bundle's edge.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, SchemaError> {
        let b: Bundle = rmp_serde::from_slice(bytes).map_err(|e| SchemaError::Decode {
            what: "bundle",
            reason: e.to_string(),
        })?;
        b.check()?;
        Ok(b)
    }

    pub fn check(&self) -> Result<(), SchemaError> {
        let bad = |reason: String| SchemaError::BadBundle {
            edge: self.edge.clone(),
            reason,
        };
        if self.version != BUNDLE_VERSION {
            return Err(bad(format!(
                "version {} (this build reads {BUNDLE_VERSION})",
                self.version
            )));
        }
        crate::subject::validate_id("bundle.edge", &self.edge)?;
        if self.first_seq == 0 || self.first_seq > self.last_seq {
            return Err(bad(format!(
                "range {}..={} is empty or starts at 0",
                self.first_seq, self.last_seq
            )));
        }
        let mut prev = self.first_seq - 1;
        for ev in &self.events {
            if ev.seq <= prev || ev.seq > self.last_seq {
                return Err(bad(format!(
                    "event seq {} out of order or outside {}..={}",
                    ev.seq, self.first_seq, self.last_seq
                )));
            }
            if ev.edge != self.edge {
                return Err(bad(format!("event {} is from edge {:?}", ev.id, ev.edge)));
            }
            prev = ev.seq;
        }
        Ok(())
    }

    /// Headers of the bundle message: a de-duplication id and its range.
    pub fn headers(&self) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            h::NATS_MSG_ID,
            format!("{}:{}-{}", self.edge, self.first_seq, self.last_seq),
        );
        m.insert(h::MESH_FIRST_SEQ, self.first_seq.to_string());
        m.insert(h::MESH_LAST_SEQ, self.last_seq.to_string());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::arb_event;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bundle_round_trip(mut evs in proptest::collection::vec(arb_event(), 0..20), first in 1u64..1000, gap in 0u64..5) {
            let mut seq = first;
            for e in evs.iter_mut() {
                e.edge = "edge-1".into();
                e.seq = seq;
                seq += 1 + gap;
            }
            let b = Bundle { version: BUNDLE_VERSION, edge: "edge-1".into(), first_seq: first, last_seq: seq.max(first), events: evs };
            let back = Bundle::decode(&b.encode().unwrap()).unwrap();
            prop_assert_eq!(back, b);
        }

        #[test]
        fn record_round_trip(evs in proptest::collection::vec(arb_event(), 1..20), first in 1u64..1_000_000) {
            let r = OutboxRecord { first_seq: first, accepted_ns: 42, events: evs };
            let back = OutboxRecord::decode(&r.encode().unwrap()).unwrap();
            prop_assert_eq!(back.last_seq(), first + r.events.len() as u64 - 1);
            prop_assert_eq!(back, r);
        }
    }

    #[test]
    fn inconsistent_bundles_are_refused() {
        let mut ev = crate::event::tests::sample();
        ev.edge = "e1".into();
        ev.seq = 5;
        let mut b = Bundle {
            version: BUNDLE_VERSION,
            edge: "e1".into(),
            first_seq: 6,
            last_seq: 9,
            events: vec![ev.clone()],
        };
        assert!(b.check().unwrap_err().to_string().contains("seq 5"));
        b.first_seq = 5;
        assert!(b.check().is_ok());
        b.events.push(ev.clone());
        assert!(b.check().is_err(), "repeated seq");
        b.events.pop();
        b.version = 9;
        assert!(b.check().unwrap_err().to_string().contains("version 9"));
        assert!(Bundle::decode(b"nonsense").is_err());
    }
}
