//! The single writer of the outbox: group commits and limit expiry.

use std::sync::Arc;

use schemas::{Event, OutboxRecord};

use super::{
    ExpelReason, Outbox, OutboxError, RecMeta, EVENT_OVERHEAD_BYTES, RECORD_TARGET_BYTES,
    TOUCH_READS,
};
use crate::config::FullPolicy;

/// The single writer: appends (group commits) and limit expiry.
pub struct OutboxWriter {
    pub(super) outbox: Arc<Outbox>,
}

/// What one group commit stored.
#[derive(Debug)]
pub struct Committed {
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: Vec<Event>,
}

impl OutboxWriter {
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Appends one group commit: assigns the next sequences to `build`'s events (called
    /// with the first sequence), writes them as one record and flushes. Returns once
    /// they are durable. Under `reject`, a commit that does not fit fails whole.
    pub async fn append(
        &mut self,
        count: usize,
        data_bytes: u64,
        build: impl FnOnce(u64) -> Vec<Event>,
    ) -> Result<Committed, OutboxError> {
        let ob = &self.outbox;
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        // Room is checked against an estimate (data + per-event overhead); the record's
        // real size is what is accounted once written.
        let need = data_bytes + 96 * count as u64;
        let first = {
            let mut st = ob.state();
            let max = ob.cfg.max_bytes;
            if need > max {
                return Err(OutboxError::TooLarge { need, max });
            }
            if st.bytes + need > max {
                if ob.cfg.full_policy == FullPolicy::Reject {
                    return Err(OutboxError::Full {
                        used: st.bytes,
                        max,
                        need,
                    });
                }
                // Expelling waits for a read in progress (`reading` comes before `state`).
                drop(st);
                let _reading = ob.reading();
                st = ob.state();
                ob.expel_while(&mut st, ExpelReason::MaxBytes, |st, _| {
                    st.bytes + need > max
                })?;
            }
            let first = st.next_seq;
            st.next_seq += count as u64;
            first
        };
        let events = build(first);
        debug_assert_eq!(events.len(), count);
        // One commit, several records: each stays under RECORD_TARGET_BYTES so that sled's
        // leaves stay inline in its log segments and can be paged out (module doc,
        // "Memory"); still one write batch and one flush.
        let mut metas = Vec::new();
        let mut batch = sled::Batch::default();
        let mut stored = Vec::with_capacity(count);
        let mut pending = events.into_iter().peekable();
        let mut seq = first;
        while pending.peek().is_some() {
            let mut chunk = Vec::new();
            let mut size = 0usize;
            while let Some(ev) = pending.peek() {
                let est = ev.data.len() + EVENT_OVERHEAD_BYTES;
                if !chunk.is_empty() && size + est > RECORD_TARGET_BYTES {
                    break;
                }
                size += est;
                chunk.extend(pending.next());
            }
            let rec = OutboxRecord {
                first_seq: seq,
                accepted_ns: now_ns,
                events: chunk,
            };
            let value = rec.encode().map_err(|e| OutboxError::Corrupt {
                key: format!("{seq}"),
                reason: e.to_string(),
            })?;
            let meta = RecMeta {
                first: seq,
                last: rec.last_seq(),
                accepted_ns: now_ns,
                bytes: value.len() as u64,
            };
            seq = meta.last + 1;
            batch.insert(&meta.key()[..], value);
            metas.push(meta);
            stored.extend(rec.events);
        }
        ob.records.apply_batch(batch).map_err(|e| ob.storage(e))?;
        if let Err(e) = ob.db.flush_async().await {
            // Not durable, not acknowledged: make sure it is not forwarded after a restart.
            for m in &metas {
                let _ = ob.records.remove(&m.key()[..]);
            }
            return Err(ob.storage(e));
        }
        let last = seq - 1;
        // Reads only pages just written (in memory): they feed sled's cache the accesses
        // it needs to page out older leaves (module doc, "Memory"). The commit is durable
        // already, so a failed read must not fail it.
        for _ in 0..TOUCH_READS {
            for m in &metas {
                let _ = ob.records.get(&m.key()[..]);
            }
        }
        let written = metas.iter().map(|m| m.bytes).sum();
        {
            let mut st = ob.state();
            for m in metas {
                st.bytes += m.bytes;
                st.events += m.events();
                st.index.push_back(m);
            }
        }
        ob.churned(written);
        ob.appended.notify_one();
        Ok(Committed {
            first_seq: first,
            last_seq: last,
            events: stored,
        })
    }

    /// Expels every record older than `outbox.max_age`. Returns the events counted as
    /// expelled now (events in a bundle in flight are counted once its fate is known).
    pub async fn expire(&mut self) -> Result<u64, OutboxError> {
        let ob = &self.outbox;
        let max_age = i64::try_from(ob.cfg.max_age.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = chrono::Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or(i64::MAX)
            .saturating_sub(max_age);
        let (n, moved) = {
            let _reading = ob.reading();
            let mut st = ob.state();
            let before = st.expelled_through;
            let n = ob.expel_while(&mut st, ExpelReason::MaxAge, |_, m| m.accepted_ns < cutoff)?;
            (n, st.expelled_through != before)
        };
        if moved {
            // The forwarder announces the expelled range to the centre.
            ob.appended.notify_one();
        }
        Ok(n)
    }

    /// Flushes everything to disk (on shutdown).
    pub async fn flush(&self) -> Result<(), OutboxError> {
        self.outbox
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| self.outbox.storage(e))
    }
}
