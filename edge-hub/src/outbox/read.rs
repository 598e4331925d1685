//! Reading the outbox in order, for the forwarder and for tests: whole events or the
//! stored MessagePack spliced into bundles, and the one-record cache that saves decoding a
//! record again for every bundle cut from it. A read holds `Outbox::reading`, so nothing
//! is expelled while it runs (see the field's doc).

use std::sync::Arc;

use schemas::bundle::RawRecord;
use schemas::{Event, OutboxRecord};

use super::{Outbox, OutboxError, RecMeta};

impl Outbox {
    /// Reads the events with sequence `>= from`, in order, up to `max_events` events or
    /// about `max_bytes` of data (at least one event). Returns `(last_covered, events)`:
    /// `last_covered` is the last sequence the read speaks for, including sequences
    /// expelled before `from`'s record; `None` when nothing beyond `from - 1` exists.
    pub fn read_from(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
        cache: &mut ReadCache,
    ) -> Result<Option<(u64, Vec<Event>)>, OutboxError> {
        let _reading = self.reading();
        let Some((metas, mut last_covered)) = self.read_plan(from) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'records: for m in metas {
            // A hole (records expelled from the middle) ends the read: the next starts
            // at it, and its bundle says the hole's sequences hold no event.
            if !out.is_empty() && m.first != last_covered + 1 {
                break;
            }
            let rec = cache.get(self, m)?;
            for ev in rec
                .events
                .iter()
                .skip(from.saturating_sub(m.first) as usize)
            {
                if !out.is_empty() && (out.len() >= max_events || bytes + ev.data.len() > max_bytes)
                {
                    break 'records;
                }
                bytes += ev.data.len() + 64;
                last_covered = ev.seq;
                out.push(ev.clone());
            }
        }
        if last_covered < from {
            return Ok(None);
        }
        Ok(Some((last_covered, out)))
    }

    /// [`Outbox::read_from`] for the forwarder: the events stay MessagePack-encoded and
    /// are appended back to back to `out`, ready for [`schemas::Bundle::encode_raw`];
    /// `max_bytes` bounds their encoded size. Returns `(last_covered, events)`.
    pub fn read_raw_from(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
        cache: &mut ReadCache,
        out: &mut Vec<u8>,
    ) -> Result<Option<(u64, u32)>, OutboxError> {
        let _reading = self.reading();
        self.read_raw_locked(from, max_events, max_bytes, cache, out)
    }

    /// [`Outbox::read_raw_from`] for a bundle about to be sent: what it read is marked in
    /// flight ([`Outbox::mark_sent`]) in the same step, so no expulsion can come between
    /// the read and the mark.
    pub fn read_bundle(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
        cache: &mut ReadCache,
        out: &mut Vec<u8>,
    ) -> Result<Option<(u64, u32)>, OutboxError> {
        let _reading = self.reading();
        let read = self.read_raw_locked(from, max_events, max_bytes, cache, out)?;
        if let Some((last, _)) = read {
            self.mark_sent(last);
        }
        Ok(read)
    }

    /// [`Outbox::read_raw_from`] with `reading` held by the caller.
    fn read_raw_locked(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
        cache: &mut ReadCache,
        out: &mut Vec<u8>,
    ) -> Result<Option<(u64, u32)>, OutboxError> {
        let Some((metas, mut last_covered)) = self.read_plan(from) else {
            return Ok(None);
        };
        let mut count = 0usize;
        for m in metas {
            // A hole ends the read (see `read_from`).
            if count > 0 && m.first != last_covered + 1 {
                break;
            }
            let rec = cache.get_raw(self, m)?;
            let skip = from.saturating_sub(m.first) as usize;
            let mut end = skip;
            let mut size = out.len();
            while end < rec.len() {
                let len = rec.event_len(end);
                if count > 0 && (count >= max_events || size + len > max_bytes) {
                    break;
                }
                size += len;
                count += 1;
                end += 1;
            }
            if end > skip {
                out.extend_from_slice(rec.events(skip..end));
                last_covered = m.first + end as u64 - 1;
            }
            if end < rec.len() {
                break;
            }
        }
        if last_covered < from {
            return Ok(None);
        }
        Ok(Some((last_covered, count as u32)))
    }

    /// The records a read from `from` looks at (at most 128), and the last sequence it
    /// covers before the first of their events: `from - 1`, or up to the next record
    /// (or the tail) when the sequences from `from` on were expelled. `None` when
    /// nothing beyond `from - 1` exists.
    fn read_plan(&self, from: u64) -> Option<(Vec<RecMeta>, u64)> {
        let st = self.state();
        let tail = st
            .index
            .back()
            .map_or(0, |m| m.last)
            .max(st.expelled_through);
        if from > tail {
            return None;
        }
        let start = st.index.partition_point(|m| m.last < from);
        // 128 records of ~4 KiB cover a full bundle (1024 events or 128 KiB of data).
        // Records gone from the middle are holes, like sequences expelled from the front.
        let metas: Vec<RecMeta> = st
            .index
            .iter()
            .skip(start)
            .filter(|m| !m.gone)
            .take(128)
            .copied()
            .collect();
        let covered = match metas.first() {
            Some(m) if m.first <= from => from - 1,
            Some(m) => m.first - 1,
            None => tail,
        };
        Some((metas, covered))
    }

    fn load_raw(&self, m: RecMeta) -> Result<RawRecord<Vec<u8>>, OutboxError> {
        let rec = RawRecord::from_stored(&self.stored(m)?).map_err(|e| m.corrupt(e))?;
        if rec.first_seq != m.first || rec.first_seq + rec.len() as u64 - 1 != m.last {
            return Err(m.corrupt(format!("holds {} events from {}", rec.len(), rec.first_seq)));
        }
        Ok(rec)
    }

    fn load(&self, m: RecMeta) -> Result<OutboxRecord, OutboxError> {
        OutboxRecord::decode(&self.stored(m)?).map_err(|e| m.corrupt(e))
    }

    /// The stored value of the record `m` describes.
    fn stored(&self, m: RecMeta) -> Result<sled::IVec, OutboxError> {
        self.records
            .get(m.key())
            .map_err(|e| self.storage(e))?
            .ok_or_else(|| m.corrupt("in the index but not in the tree"))
    }
}

/// The forwarder's cache of the last decoded record, so that bundles smaller than a
/// record do not decode it again and again.
#[derive(Default)]
pub struct ReadCache {
    last: Option<(RecMeta, Arc<OutboxRecord>)>,
    raw: Option<(RecMeta, Arc<RawRecord<Vec<u8>>>)>,
}

impl ReadCache {
    fn get(&mut self, outbox: &Outbox, m: RecMeta) -> Result<Arc<OutboxRecord>, OutboxError> {
        cached(&mut self.last, m, || outbox.load(m))
    }

    fn get_raw(
        &mut self,
        outbox: &Outbox,
        m: RecMeta,
    ) -> Result<Arc<RawRecord<Vec<u8>>>, OutboxError> {
        cached(&mut self.raw, m, || outbox.load_raw(m))
    }
}

/// The record in `slot` if it is `m`'s, else `load`ed into it.
fn cached<T>(
    slot: &mut Option<(RecMeta, Arc<T>)>,
    m: RecMeta,
    load: impl FnOnce() -> Result<T, OutboxError>,
) -> Result<Arc<T>, OutboxError> {
    if let Some((cm, rec)) = slot {
        if *cm == m {
            return Ok(rec.clone());
        }
    }
    let rec = Arc::new(load()?);
    *slot = Some((m, rec.clone()));
    Ok(rec)
}
