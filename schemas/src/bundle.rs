//! The edge outbox record and the bundle that carries events across the leaf link.
//!
//! **Outbox record** (a sled value): consecutive events of one group commit, MessagePack
//! array encoding, stored LZ4-compressed: byte `0x01`, then an LZ4 block with its
//! uncompressed size prepended (4 bytes, little-endian). Events of one agent repeat most
//! of their attributes (edge, agent, type, subject, content type), which LZ4 removes.
//! A value that starts with `0x93` (a MessagePack array of 3) is an uncompressed record
//! from an older build and is read as such. Record `k` holds
//! `first_seq ..= first_seq + events.len() - 1`.
//!
//! **Bundle** (one message on `mesh.up.<edge>`, stream `MESH_INGRESS`): the events of
//! `first_seq ..= last_seq` that are still in the outbox, in order. Sequences without an
//! event (expelled by the outbox limits, or dead-lettered at the edge) can only be at the
//! start of the range, since the outbox drops records from the front; the header
//! `mesh-missing` says how many there are, and the events are exactly
//! `first_seq + missing ..= last_seq` (the lander refuses anything else). Consecutive
//! bundles of one edge cover consecutive ranges.

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

    /// The stored form: LZ4-compressed MessagePack (module doc).
    pub fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        let plain = rmp_serde::to_vec(self).map_err(|e| SchemaError::Encode {
            what: "outbox record",
            reason: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(plain.len() / 2 + 16);
        out.push(RECORD_LZ4);
        out.extend_from_slice(&lz4_flex::compress_prepend_size(&plain));
        Ok(out)
    }

    pub fn decode(stored: &[u8]) -> Result<OutboxRecord, SchemaError> {
        rmp_serde::from_slice(&OutboxRecord::msgpack(stored)?).map_err(|e| SchemaError::Decode {
            what: "outbox record",
            reason: e.to_string(),
        })
    }

    /// The MessagePack form of a stored record (decompressed, or as it is for a record
    /// from a build that did not compress).
    pub fn msgpack(stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, SchemaError> {
        match stored.first() {
            Some(&RECORD_LZ4) => lz4_flex::decompress_size_prepended(&stored[1..])
                .map(std::borrow::Cow::Owned)
                .map_err(|e| SchemaError::Decode {
                    what: "outbox record",
                    reason: format!("LZ4: {e}"),
                }),
            Some(0x93) => Ok(std::borrow::Cow::Borrowed(stored)),
            Some(b) => Err(SchemaError::Decode {
                what: "outbox record",
                reason: format!("unknown format byte {b:#04x}"),
            }),
            None => Err(SchemaError::Decode {
                what: "outbox record",
                reason: "empty value".into(),
            }),
        }
    }
}

/// First byte of an LZ4-compressed outbox record.
const RECORD_LZ4: u8 = 0x01;

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
        let b = Bundle::decode_unchecked(bytes)?;
        b.check()?;
        Ok(b)
    }

    /// Decodes a bundle without [`Bundle::check`], for a reader that checks it with rules
    /// of its own (the lander, which names each inconsistency).
    pub fn decode_unchecked(bytes: &[u8]) -> Result<Bundle, SchemaError> {
        rmp_serde::from_slice(bytes).map_err(|e| SchemaError::Decode {
            what: "bundle",
            reason: e.to_string(),
        })
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

    /// Headers of the bundle message: a de-duplication id, its range and how many
    /// sequences of it hold no event.
    pub fn headers(&self) -> HeaderMap {
        Bundle::headers_for(
            &self.edge,
            self.first_seq,
            self.last_seq,
            self.events.len() as u64,
        )
    }

    /// [`Bundle::headers`] of a bundle from `edge` covering `first_seq..=last_seq` with
    /// `events` events (the last ones of the range); `mesh-missing` is set when they do
    /// not fill it.
    pub fn headers_for(edge: &str, first_seq: u64, last_seq: u64, events: u64) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(h::NATS_MSG_ID, format!("{edge}:{first_seq}-{last_seq}"));
        m.insert(h::MESH_FIRST_SEQ, first_seq.to_string());
        m.insert(h::MESH_LAST_SEQ, last_seq.to_string());
        let missing = (last_seq.wrapping_sub(first_seq).wrapping_add(1)).saturating_sub(events);
        if missing > 0 {
            m.insert(h::MESH_MISSING, missing.to_string());
        }
        m
    }
}

/// An outbox record with its events left MessagePack-encoded, and where each one ends,
/// so the forwarder can put them in a bundle without decoding and re-encoding them
/// (that was about a fifth of the edge hub's CPU). Parsing only walks the MessagePack
/// markers; the bytes of an event are exactly what [`Bundle::encode`] would write for it.
#[derive(Debug)]
pub struct RawRecord<B> {
    bytes: B,
    pub first_seq: u64,
    pub accepted_ns: i64,
    /// Offset where event `i` ends; event 0 starts at `start`.
    ends: Vec<usize>,
    start: usize,
}

impl RawRecord<Vec<u8>> {
    /// The outline of a stored record ([`OutboxRecord::encode`]'s form).
    pub fn from_stored(stored: &[u8]) -> Result<RawRecord<Vec<u8>>, SchemaError> {
        RawRecord::parse(OutboxRecord::msgpack(stored)?.into_owned())
    }
}

impl<B: AsRef<[u8]>> RawRecord<B> {
    /// Parses the outline of an [`OutboxRecord`] in MessagePack (not compressed).
    pub fn parse(bytes: B) -> Result<RawRecord<B>, SchemaError> {
        let err = |reason: String| SchemaError::Decode {
            what: "outbox record",
            reason,
        };
        let buf = bytes.as_ref();
        let mut pos = 0;
        let fields = mp::array_len(buf, &mut pos).map_err(err)?;
        if fields != 3 {
            return Err(err(format!("{fields} fields, expected 3")));
        }
        let first_seq = mp::uint(buf, &mut pos).map_err(err)?;
        let accepted_ns = mp::int(buf, &mut pos).map_err(err)?;
        let n = mp::array_len(buf, &mut pos).map_err(err)?;
        let start = pos;
        let mut ends = Vec::with_capacity(n);
        for _ in 0..n {
            mp::skip(buf, &mut pos, 0).map_err(err)?;
            ends.push(pos);
        }
        if pos != buf.len() {
            return Err(err(format!("{} bytes after the events", buf.len() - pos)));
        }
        Ok(RawRecord {
            bytes,
            first_seq,
            accepted_ns,
            ends,
            start,
        })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The encoded events `range`, back to back.
    pub fn events(&self, range: std::ops::Range<usize>) -> &[u8] {
        if range.is_empty() {
            return &[];
        }
        let from = if range.start == 0 {
            self.start
        } else {
            self.ends[range.start - 1]
        };
        &self.bytes.as_ref()[from..self.ends[range.end - 1]]
    }

    /// Encoded size of event `i`.
    pub fn event_len(&self, i: usize) -> usize {
        self.events(i..i + 1).len()
    }
}

impl Bundle {
    /// Encodes a bundle from events that are already MessagePack-encoded (back to back,
    /// `count` of them, e.g. from [`RawRecord::events`]). The result is byte for byte what
    /// [`Bundle::encode`] writes for the decoded events.
    pub fn encode_raw(
        edge: &str,
        first_seq: u64,
        last_seq: u64,
        count: u32,
        events: &[u8],
    ) -> Vec<u8> {
        use rmp::encode;
        let mut out = Vec::with_capacity(events.len() + edge.len() + 32);
        // Writing into a Vec cannot fail.
        let _ = encode::write_array_len(&mut out, 5);
        let _ = encode::write_uint(&mut out, u64::from(BUNDLE_VERSION));
        let _ = encode::write_str(&mut out, edge);
        let _ = encode::write_uint(&mut out, first_seq);
        let _ = encode::write_uint(&mut out, last_seq);
        let _ = encode::write_array_len(&mut out, count);
        out.extend_from_slice(events);
        out
    }
}

/// Just enough MessagePack reading to walk values without decoding them.
mod mp {
    fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], String> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| format!("truncated at byte {pos}: {n} more bytes needed"))?;
        let s = &buf[*pos..end];
        *pos = end;
        Ok(s)
    }

    fn be(buf: &[u8], pos: &mut usize, n: usize) -> Result<u64, String> {
        Ok(take(buf, pos, n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    pub fn array_len(buf: &[u8], pos: &mut usize) -> Result<usize, String> {
        let m = take(buf, pos, 1)?[0];
        Ok(match m {
            0x90..=0x9f => usize::from(m & 0x0f),
            0xdc => be(buf, pos, 2)? as usize,
            0xdd => be(buf, pos, 4)? as usize,
            _ => {
                return Err(format!(
                    "marker {m:#04x} at byte {} is not an array",
                    *pos - 1
                ))
            }
        })
    }

    pub fn uint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
        let m = take(buf, pos, 1)?[0];
        Ok(match m {
            0x00..=0x7f => u64::from(m),
            0xcc => be(buf, pos, 1)?,
            0xcd => be(buf, pos, 2)?,
            0xce => be(buf, pos, 4)?,
            0xcf => be(buf, pos, 8)?,
            _ => {
                return Err(format!(
                    "marker {m:#04x} at byte {} is not an unsigned integer",
                    *pos - 1
                ))
            }
        })
    }

    pub fn int(buf: &[u8], pos: &mut usize) -> Result<i64, String> {
        let m = buf.get(*pos).copied().ok_or("truncated")?;
        Ok(match m {
            0x00..=0x7f | 0xcc..=0xcf => {
                let v = uint(buf, pos)?;
                i64::try_from(v).map_err(|_| format!("integer {v} is out of range"))?
            }
            0xe0..=0xff => {
                *pos += 1;
                i64::from(m as i8)
            }
            0xd0 => {
                *pos += 1;
                i64::from(be(buf, pos, 1)? as u8 as i8)
            }
            0xd1 => {
                *pos += 1;
                i64::from(be(buf, pos, 2)? as u16 as i16)
            }
            0xd2 => {
                *pos += 1;
                i64::from(be(buf, pos, 4)? as u32 as i32)
            }
            0xd3 => {
                *pos += 1;
                be(buf, pos, 8)? as i64
            }
            _ => {
                return Err(format!(
                    "marker {m:#04x} at byte {} is not an integer",
                    *pos
                ))
            }
        })
    }

    /// Skips one value (with everything inside it).
    pub fn skip(buf: &[u8], pos: &mut usize, depth: usize) -> Result<(), String> {
        if depth > 32 {
            return Err("nested deeper than 32".into());
        }
        let m = take(buf, pos, 1)?[0];
        let (fixed, items) = match m {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(m & 0x0f)),
            0x90..=0x9f => (0, usize::from(m & 0x0f)),
            0xa0..=0xbf => (usize::from(m & 0x1f), 0),
            0xc4 | 0xd9 => (be(buf, pos, 1)? as usize, 0),
            0xc5 | 0xda => (be(buf, pos, 2)? as usize, 0),
            0xc6 | 0xdb => (be(buf, pos, 4)? as usize, 0),
            0xc7 => (be(buf, pos, 1)? as usize + 1, 0),
            0xc8 => (be(buf, pos, 2)? as usize + 1, 0),
            0xc9 => (be(buf, pos, 4)? as usize + 1, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, be(buf, pos, 2)? as usize),
            0xdd => (0, be(buf, pos, 4)? as usize),
            0xde => (0, 2 * be(buf, pos, 2)? as usize),
            0xdf => (0, 2 * be(buf, pos, 4)? as usize),
            _ => {
                return Err(format!(
                    "marker {m:#04x} at byte {} is never used",
                    *pos - 1
                ))
            }
        };
        take(buf, pos, fixed)?;
        for _ in 0..items {
            skip(buf, pos, depth + 1)?;
        }
        Ok(())
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
            prop_assert_eq!(&back, &r);
            // Records written uncompressed by an older build still read.
            let plain = rmp_serde::to_vec(&r).unwrap();
            prop_assert_eq!(OutboxRecord::decode(&plain).unwrap(), r);
        }
    }

    proptest! {
        /// The forwarder's bundles are spliced from raw records; a lander decodes them
        /// with [`Bundle::decode`], so the bytes must be exactly the same.
        #[test]
        fn raw_bundle_equals_encoded(evs in proptest::collection::vec(arb_event(), 1..20), first in 1u64..u64::MAX / 2, accepted in any::<i64>(), from in 0usize..20, take in 1usize..20) {
            let mut evs = evs;
            for (i, e) in evs.iter_mut().enumerate() {
                e.edge = "edge-1".into();
                e.seq = first + i as u64;
            }
            let r = OutboxRecord { first_seq: first, accepted_ns: accepted, events: evs };
            let raw = RawRecord::from_stored(&r.encode().unwrap()).unwrap();
            prop_assert_eq!(raw.len(), r.events.len());
            prop_assert_eq!(raw.first_seq, first);
            prop_assert_eq!(raw.accepted_ns, accepted);
            let from = from.min(r.events.len() - 1);
            let to = (from + take).min(r.events.len());
            let events = r.events[from..to].to_vec();
            let b = Bundle { version: BUNDLE_VERSION, edge: "edge-1".into(), first_seq: events[0].seq, last_seq: events[events.len() - 1].seq + 3, events };
            let spliced = Bundle::encode_raw("edge-1", b.first_seq, b.last_seq, (to - from) as u32, raw.events(from..to));
            prop_assert_eq!(&spliced, &b.encode().unwrap());
            for i in from..to {
                prop_assert_eq!(raw.event_len(i), rmp_serde::to_vec(&r.events[i]).unwrap().len());
            }
        }
    }

    #[test]
    fn damaged_stored_records_are_refused_by_name() {
        let r = OutboxRecord {
            first_seq: 3,
            accepted_ns: 1,
            events: vec![crate::event::tests::sample()],
        };
        let stored = r.encode().unwrap();
        assert_eq!(stored[0], RECORD_LZ4);
        let err = OutboxRecord::decode(&stored[..stored.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("LZ4"), "{err}");
        let err = OutboxRecord::decode(b"\x07abc").unwrap_err();
        assert!(err.to_string().contains("format byte 0x07"), "{err}");
        assert!(OutboxRecord::decode(b"").is_err());
        assert!(RawRecord::from_stored(&stored[..stored.len() - 3]).is_err());
    }

    #[test]
    fn raw_records_refuse_damage() {
        let r = OutboxRecord {
            first_seq: 3,
            accepted_ns: -5,
            events: vec![crate::event::tests::sample()],
        };
        let bytes = rmp_serde::to_vec(&r).unwrap();
        for cut in [0, 1, 5, bytes.len() - 1] {
            assert!(RawRecord::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(RawRecord::parse(&longer[..])
            .unwrap_err()
            .to_string()
            .contains("after the events"));
        assert!(RawRecord::parse(&b"\x93\xc1"[..]).is_err());
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

    #[test]
    fn headers_declare_the_missing_sequences() {
        let missing = |hs: HeaderMap| hs.get(h::MESH_MISSING).map(|v| v.to_string());
        assert_eq!(missing(Bundle::headers_for("e1", 3, 5, 3)), None);
        assert_eq!(
            missing(Bundle::headers_for("e1", 3, 5, 1)).as_deref(),
            Some("2")
        );
        // An edge's dead-letter marker: one sequence, no event.
        assert_eq!(
            missing(Bundle::headers_for("e1", 7, 7, 0)).as_deref(),
            Some("1")
        );
        let hs = Bundle::headers_for("e1", 3, 5, 3);
        assert_eq!(hs.get(h::NATS_MSG_ID).unwrap().as_str(), "e1:3-5");
    }
}
