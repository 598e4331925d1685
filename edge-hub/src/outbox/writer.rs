//! The single writer of the outbox: group commits and limit expiry.

use std::collections::HashMap;
use std::sync::Arc;

use schemas::{Event, OutboxRecord};

use super::ids;
use super::producers::{Entry, RequestId};
use super::{
    Agents, ExpelReason, Outbox, OutboxError, RecMeta, EVENT_OVERHEAD_BYTES, RECORD_TARGET_BYTES,
    TOUCH_READS,
};
use crate::config::FullPolicy;

/// The single writer: appends (group commits) and limit expiry.
pub struct OutboxWriter {
    pub(super) outbox: Arc<Outbox>,
    /// Calls of [`OutboxWriter::expire`], for the rarer sweep of idle producers.
    pub(super) ticks: u64,
}

/// Expiry calls between two sweeps of idle producers.
const PRODUCER_SWEEP_EVERY: u64 = 600;

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
        self.append_acked(count, data_bytes, &[], build).await
    }

    /// [`OutboxWriter::append`], also recording the ack of each request in `requests`
    /// (its id, and its events' offset and count in the commit) in the same transaction
    /// as the records (`producers`).
    pub async fn append_acked(
        &mut self,
        count: usize,
        data_bytes: u64,
        requests: &[(RequestId, u64, u64)],
        build: impl FnOnce(u64) -> Vec<Event>,
    ) -> Result<Committed, OutboxError> {
        let ob = &self.outbox;
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        // Room is checked against an estimate (data + per-event overhead); the record's
        // real size is what is accounted once written.
        let need = data_bytes + 96 * count as u64;
        let max = ob.cfg.max_bytes;
        if need > max {
            return Err(OutboxError::TooLarge { need, max });
        }
        let drop_oldest = ob.cfg.full_policy == FullPolicy::DropOldest;
        // The one writer: nothing else moves `next_seq`, so the events can be built before
        // room is made (which needs to know whose they are).
        let first = ob.state().next_seq;
        let events = build(first);
        debug_assert_eq!(events.len(), count);
        // Each agent's number (new agents are numbered in `meta`, durable with the
        // commit's flush) and what it brings, estimated like `need`.
        let mut numbers: HashMap<String, u32> = HashMap::new();
        let mut incoming: HashMap<u32, u64> = HashMap::new();
        {
            let mut st = ob.state();
            for ev in &events {
                let n = match numbers.get(ev.agent.as_str()) {
                    Some(n) => *n,
                    None => {
                        let n = match st.agents.number(&ev.agent) {
                            Some(n) => n,
                            None => {
                                let n = st.agents.add(&ev.agent);
                                ob.meta
                                    .insert(Agents::meta_key(n), ev.agent.as_bytes())
                                    .map_err(|e| ob.storage(e))?;
                                n
                            }
                        };
                        numbers.insert(ev.agent.clone(), n);
                        n
                    }
                };
                *incoming.entry(n).or_default() += ev.data.len() as u64 + 96;
            }
        }
        {
            let mut st = ob.state();
            if st.bytes + need > max {
                if !drop_oldest {
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
                ob.make_room(&mut st, need, &incoming)?;
            }
            st.next_seq += count as u64;
        }
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
                // A record holds one agent's events: an agent over its share loses its
                // own under `drop-oldest` (`Outbox::make_room`), and its holdings are
                // known for its quota under `reject` (`limits.outbox_share`).
                if chunk.first().is_some_and(|c: &Event| c.agent != ev.agent) {
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
            let agent = match rec.events.split_first() {
                Some((a, rest)) if rest.iter().all(|e| e.agent == a.agent) => {
                    numbers.get(&a.agent).copied().unwrap_or(0)
                }
                _ => 0,
            };
            let meta = RecMeta {
                first: seq,
                last: rec.last_seq(),
                accepted_ns: now_ns,
                bytes: value.len() as u64,
                agent,
                gone: false,
            };
            seq = meta.last + 1;
            batch.insert(meta.key(), value);
            metas.push(meta);
            stored.extend(rec.events);
        }
        // Every event's id, for the `ce-id` rule (`ids`): durable with its event.
        let id_chunks = ids::chunks(first, &stored);
        let mut id_batch = sled::Batch::default();
        for (k, v) in &id_chunks {
            id_batch.insert(&k[..], &v[..]);
        }
        {
            use sled::transaction::{ConflictableTransactionError, TransactionError};
            use sled::Transactional;
            let r: Result<(), TransactionError<()>> = (&ob.records, &ob.producers, &ob.id_chunks)
                .transaction(|(records, producers, id_tree)| {
                    records.apply_batch(&batch)?;
                    id_tree.apply_batch(&id_batch)?;
                    for (id, offset, n) in requests {
                        let key = id.key();
                        let mut e = match producers.get(&key)? {
                            Some(v) => Entry::decode(&v).unwrap_or_default(),
                            None => Entry::default(),
                        };
                        let f = first + offset;
                        e.record(id.request, f, f + n - 1, now_ns);
                        producers.insert(key, e.encode())?;
                    }
                    Ok::<(), ConflictableTransactionError<()>>(())
                });
            r.map_err(|e| match e {
                TransactionError::Storage(e) => ob.storage(e),
                TransactionError::Abort(()) => ob.storage(sled::Error::Unsupported(
                    "the outbox transaction aborted".into(),
                )),
            })?;
        }
        if let Err(e) = ob.flush_durable().await {
            // Not durable, not acknowledged: make sure it is not forwarded after a restart,
            // nor answered as stored to a retry.
            for m in &metas {
                let _ = ob.records.remove(m.key());
            }
            for (k, _) in &id_chunks {
                let _ = ob.id_chunks.remove(&k[..]);
            }
            for (id, _, _) in requests {
                let key = id.key();
                if let Ok(Some(v)) = ob.producers.get(&key) {
                    if let Some(mut e) = Entry::decode(&v) {
                        e.acks.retain(|(r, _, _)| *r != id.request);
                        let _ = ob.producers.insert(key, e.encode());
                    }
                }
            }
            return Err(ob.storage(e));
        }
        let last = seq - 1;
        // Durable: a copy of any of these ids is refused from now on (before the
        // committer releases the requests' pending ids).
        {
            let mut ids = ob.ids();
            for ev in &stored {
                ids.insert(&ev.agent, &ev.id);
            }
        }
        // Reads only pages just written (in memory): they feed sled's cache the accesses
        // it needs to page out older leaves (module doc, "Memory"). The commit is durable
        // already, so a failed read must not fail it.
        for _ in 0..TOUCH_READS {
            for m in &metas {
                let _ = ob.records.get(m.key());
            }
        }
        let written = metas.iter().map(|m| m.bytes).sum();
        {
            let mut st = ob.state();
            for m in metas {
                st.push_record(m);
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
        self.ticks += 1;
        if self.ticks % PRODUCER_SWEEP_EVERY == 1 {
            self.sweep_producers();
        }
        self.forget_ids()?;
        let ob = &self.outbox;
        let cutoff = self.max_age_cutoff();
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

    /// Now minus `outbox.max_age`, in ns: anything accepted or used before it is too old.
    fn max_age_cutoff(&self) -> i64 {
        let max_age = i64::try_from(self.outbox.cfg.max_age.as_nanos()).unwrap_or(i64::MAX);
        chrono::Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or(i64::MAX)
            .saturating_sub(max_age)
    }

    /// Forgets the ids made before the horizon, and the oldest past `outbox.max_ids`
    /// (`ids`): the floor first, then the chunks below it.
    fn forget_ids(&self) -> Result<(), OutboxError> {
        let ob = &self.outbox;
        let (floor, early) = ob.ids().forget(ids::now_ms());
        let Some(floor) = floor else { return Ok(()) };
        if early > 0 {
            tracing::warn!(
                forgotten = early,
                max_ids = ob.cfg.max_ids,
                floor_s = floor,
                "outbox.max_ids reached: ids forgotten before outbox.id_horizon; older ids are refused"
            );
        }
        ob.meta
            .insert(ids::META_FLOOR, &floor.to_be_bytes())
            .map_err(|e| ob.storage(e))?;
        for k in ob.id_chunks.range(..&floor.to_be_bytes()[..]).keys() {
            let k = k.map_err(|e| ob.storage(e))?;
            ob.id_chunks.remove(k).map_err(|e| ob.storage(e))?;
        }
        Ok(())
    }

    /// Drops the producers idle for longer than `outbox.max_age` (the horizon of a retry).
    fn sweep_producers(&self) {
        let ob = &self.outbox;
        let cutoff = self.max_age_cutoff();
        for kv in ob.producers.iter() {
            let Ok((k, v)) = kv else { continue };
            if Entry::decode(&v).is_none_or(|e| e.updated_ns < cutoff) {
                let _ = ob.producers.remove(k);
            }
        }
    }

    /// Flushes everything to disk (on shutdown).
    pub async fn flush(&self) -> Result<(), OutboxError> {
        self.outbox
            .flush_durable()
            .await
            .map_err(|e| self.outbox.storage(e))
    }
}
