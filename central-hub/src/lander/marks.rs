//! The mark writer: keeps each edge's `MESH_LANDER` KV key up with the lander's mark,
//! off the landing path.
//!
//! The mark is read as the maximum of the KV key and the `ce-meshseq` of the edge's last
//! event in `MESH_EVENTS`. A run whose last sequence is an event it stored is therefore
//! already on record when its stores are acked: its KV write is only needed later (when
//! the stream no longer holds that event, after expiry), so it is queued here
//! ([`MarkWriter::later`]) and the run is acked at once. Landing then needs no answer
//! from the KV's raft group, whose leader may be electing after a node failure (the
//! cluster's groups elect independently; the mesh should wait for as few as it can).
//! A run that ends in sequences with no event (dead-lettered or expelled at the edge)
//! is on record only in the KV: its write is waited for ([`MarkWriter::now`]) before
//! the run is acked, and a failure puts the run back.
//!
//! The task writes each edge's key as a maximum register: a compare-and-set on the
//! revision it knows, and on a conflict (another lander wrote it) the key is read again
//! and written only if it is still lower. Writes of one edge are coalesced (only the
//! highest pending is written); a failed write is tried again after [`RETRY`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::{mpsc, oneshot};

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_millis(200);
/// How long the writer may take to flush what is pending when the lander stops.
const FLUSH: Duration = Duration::from_secs(2);

enum Write {
    Later(String, u64),
    Now(String, u64, oneshot::Sender<Result<(), String>>),
}

/// Handle to the mark writer task of one lander.
pub(crate) struct MarkWriter {
    tx: mpsc::UnboundedSender<Write>,
    task: tokio::task::JoinHandle<()>,
}

impl MarkWriter {
    pub(crate) fn start(kv: kv::Store) -> MarkWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_loop(kv, rx));
        MarkWriter { tx, task }
    }

    /// Records `seq` as `edge`'s mark eventually (the stream already holds it).
    pub(crate) fn later(&self, edge: &str, seq: u64) {
        let _ = self.tx.send(Write::Later(edge.to_string(), seq));
    }

    /// Records `seq` as `edge`'s mark and waits for the KV's answer to the first try.
    pub(crate) async fn now(&self, edge: &str, seq: u64) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Write::Now(edge.to_string(), seq, done))
            .map_err(|_| "the mark writer has stopped".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the mark writer has stopped".into()))
    }

    /// Stops taking writes and waits (at most [`FLUSH`]) for the pending ones.
    pub(crate) async fn close(self) {
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(FLUSH, &mut task).await.is_err() {
            tracing::warn!("the mark writer did not flush in time; the stream holds the marks");
            task.abort();
        }
    }
}

/// A pending write of one edge: the highest sequence asked for, and who waits for it.
#[derive(Default)]
struct Pending {
    seq: u64,
    waiting: Vec<oneshot::Sender<Result<(), String>>>,
}

async fn write_loop(kv: kv::Store, mut rx: mpsc::UnboundedReceiver<Write>) {
    // The revision of each edge's key as this writer last saw it: `Some(None)` when the
    // key does not exist, absent when unknown (read before writing).
    let mut revisions: HashMap<String, Option<u64>> = HashMap::new();
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut open = true;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(w) => add(&mut pending, w),
                None => return,
            }
        }
        while let Ok(w) = rx.try_recv() {
            add(&mut pending, w);
        }
        let mut failed = false;
        for (edge, p) in std::mem::take(&mut pending) {
            let result = put_max(&kv, &edge, p.seq, &mut revisions).await;
            if let Err(e) = &result {
                tracing::warn!(edge, seq = p.seq, error = %e, "cannot write the high-water mark; trying again");
                failed = true;
                let again = pending.entry(edge).or_default();
                again.seq = again.seq.max(p.seq);
            }
            for w in p.waiting {
                let _ = w.send(result.clone());
            }
        }
        if !open {
            return;
        }
        if failed {
            // Wait before retrying, taking new writes meanwhile.
            let until = tokio::time::Instant::now() + RETRY;
            loop {
                tokio::select! {
                    w = rx.recv() => match w {
                        Some(w) => add(&mut pending, w),
                        None => { open = false; break; }
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        }
    }
}

fn add(pending: &mut BTreeMap<String, Pending>, w: Write) {
    let (edge, seq, done) = match w {
        Write::Later(e, s) => (e, s, None),
        Write::Now(e, s, d) => (e, s, Some(d)),
    };
    let p = pending.entry(edge).or_default();
    p.seq = p.seq.max(seq);
    p.waiting.extend(done);
}

/// Writes `seq` as `edge`'s key unless it already holds as much.
async fn put_max(
    kv: &kv::Store,
    edge: &str,
    seq: u64,
    revisions: &mut HashMap<String, Option<u64>>,
) -> Result<(), String> {
    let known = match revisions.get(edge) {
        Some(r) => *r,
        None => match current(kv, edge).await? {
            (Some(held), rev) if held >= seq => {
                revisions.insert(edge.to_string(), rev);
                return Ok(());
            }
            (_, rev) => rev,
        },
    };
    let value = bytes::Bytes::copy_from_slice(&seq.to_be_bytes());
    let written = match known {
        Some(rev) => kv.update(edge, value, rev).await.map_err(|e| e.to_string()),
        None => kv.create(edge, value).await.map_err(|e| e.to_string()),
    };
    match written {
        Ok(rev) => {
            revisions.insert(edge.to_string(), Some(rev));
            Ok(())
        }
        Err(e) => {
            // Another lander wrote the key, or the KV did not answer: read it again next.
            revisions.remove(edge);
            match current(kv, edge).await {
                Ok((Some(held), rev)) if held >= seq => {
                    revisions.insert(edge.to_string(), rev);
                    Ok(())
                }
                _ => Err(e),
            }
        }
    }
}

/// The value (when it is a sequence) and revision of `edge`'s key.
async fn current(kv: &kv::Store, edge: &str) -> Result<(Option<u64>, Option<u64>), String> {
    let entry = kv.entry(edge).await.map_err(|e| e.to_string())?;
    Ok(match entry {
        Some(e) => {
            let held = match e.operation {
                kv::Operation::Put => e.value.as_ref().try_into().ok().map(u64::from_be_bytes),
                _ => None,
            };
            (held, Some(e.revision))
        }
        None => (None, None),
    })
}
