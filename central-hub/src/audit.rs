//! The audit writer: appends records to `MESH_AUDIT` and keeps the [`Registry`]
//! projection at the head. The record format, its typed events and [`verify`] are
//! [`schemas::audit`]'s; they are re-exported here.
//!
//! # One chain, many writers
//! A record with `seq = n` is published with `Nats-Expected-Last-Sequence: n - 1`, so
//! JetStream stores it only if it really extends the head the writer read. A writer that
//! loses the race re-reads the records it missed and tries again: two central hubs (or
//! a hub and an operator tool) can never fork the chain. Appends may carry a
//! [`Condition`] on the projection at the head (e.g. "edge e1 is not connected yet"),
//! checked again after every lost race, so concurrent hubs do not record one transition
//! twice.
//!
//! # One writer task per process
//! [`AuditLog`] is a cheap handle on a writer task that appends in the order it is asked.
//! The task ends once every handle is dropped, after the appends already queued: a hub
//! that drops its handles last drains its queue on shutdown.

use async_nats::jetstream::{self, context::PublishErrorKind};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;

use crate::registry::Registry;

use schemas::audit::{read_all, AuditEvent, AuditRecord, GENESIS_HASH};

/// What can go wrong reading or extending the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log could not be read in order.
    #[error(transparent)]
    Read(#[from] schemas::stream::StreamError),
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

/// A condition on the projection at the head, checked before each append attempt.
pub type Condition = Box<dyn Fn(&Registry) -> bool + Send + Sync>;

struct Append {
    kind: String,
    /// Overrides the handle's actor (a request done on someone's behalf).
    actor: Option<String>,
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
    head: watch::Receiver<(u64, String)>,
}

impl AuditLog {
    /// Reads the whole log into the [`Registry`] projection, then starts the writer task.
    /// `actor` is written into every record this handle appends.
    pub async fn open(
        js: jetstream::Context,
        stream: &str,
        actor: &str,
    ) -> Result<AuditLog, AuditError> {
        let (log, writer) = AuditLog::prepare(js, stream, actor).await?;
        tokio::spawn(writer);
        Ok(log)
    }

    /// [`AuditLog::open`], with the writer task on `tasks`, so a hub's shutdown can wait
    /// for it to drain.
    pub async fn open_on(
        js: jetstream::Context,
        stream: &str,
        actor: &str,
        tasks: &TaskTracker,
    ) -> Result<AuditLog, AuditError> {
        let (log, writer) = AuditLog::prepare(js, stream, actor).await?;
        tasks.spawn(writer);
        Ok(log)
    }

    async fn prepare(
        js: jetstream::Context,
        stream: &str,
        actor: &str,
    ) -> Result<(AuditLog, impl std::future::Future<Output = ()>), AuditError> {
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
        let (head_tx, head_rx) = watch::channel(w.head.clone());
        let (tx, rx) = mpsc::channel(1024);
        let log = AuditLog {
            tx,
            registry: reg_rx,
            head: head_rx,
        };
        Ok((log, w.run(rx, reg_tx, head_tx)))
    }

    /// Records `event`; returns the record once JetStream stored it.
    pub async fn record(&self, event: &AuditEvent) -> Result<AuditRecord, AuditError> {
        self.send(event.kind(), event.to_fields(), None, None)
            .await?
            .ok_or(AuditError::Stopped)
    }

    /// Records `event` with `actor` instead of this handle's: what a hub does at an
    /// authenticated operator's request is recorded under that operator.
    pub async fn record_as(
        &self,
        event: &AuditEvent,
        actor: &str,
    ) -> Result<AuditRecord, AuditError> {
        self.send(event.kind(), event.to_fields(), None, Some(actor.into()))
            .await?
            .ok_or(AuditError::Stopped)
    }

    /// Records `event` if `condition` holds on the projection at the head it extends;
    /// `None` when it did not hold.
    pub async fn record_if(
        &self,
        event: &AuditEvent,
        condition: Condition,
    ) -> Result<Option<AuditRecord>, AuditError> {
        self.send(event.kind(), event.to_fields(), Some(condition), None)
            .await
    }

    /// Appends a record of any `kind` with untyped `fields` (a JSON object; another value
    /// is stored as `{"value": …}`), for tools and tests writing a kind of their own. The
    /// mesh's own writers use [`AuditLog::record`].
    pub async fn append(&self, kind: &str, fields: Value) -> Result<AuditRecord, AuditError> {
        let fields = match fields {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        self.send(kind, fields, None, None)
            .await?
            .ok_or(AuditError::Stopped)
    }

    async fn send(
        &self,
        kind: &str,
        fields: Map<String, Value>,
        condition: Option<Condition>,
        actor: Option<String>,
    ) -> Result<Option<AuditRecord>, AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(Append {
                kind: kind.into(),
                actor,
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

    /// Sequence and hash of the last record this writer has seen (`(0, GENESIS_HASH)`
    /// for an empty log); up to date with other writers after a [`AuditLog::sync`].
    pub fn head(&self) -> (u64, String) {
        self.head.borrow().clone()
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
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        reg_tx: watch::Sender<Registry>,
        head_tx: watch::Sender<(u64, String)>,
    ) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Append(a) => {
                    let r = self.append(&a).await;
                    reg_tx.send_replace(self.registry.clone());
                    head_tx.send_replace(self.head.clone());
                    let _ = a.done.send(r);
                }
                Cmd::Sync(done) => {
                    let r = self.catch_up().await.map(|()| self.registry.clone());
                    reg_tx.send_replace(self.registry.clone());
                    head_tx.send_replace(self.head.clone());
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
                a.actor.as_deref().unwrap_or(&self.actor),
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
