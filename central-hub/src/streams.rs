//! The JetStream streams and the KV bucket the central hub owns, set up on start.
//!
//! * `MESH_INGRESS` — `mesh.up.>`, work queue: a bundle leaves once a lander acked it.
//! * `MESH_EVENTS` — `mesh.evt.>`, limits retention, `Nats-Msg-Id` de-duplication.
//! * `MESH_AUDIT` — `mesh.audit.>`, the hash-chained audit log; denies deletes and purges.
//! * `MESH_DLQ` — `mesh.dlq.>`, dead letters.
//! * `MESH_LANDER` — KV (stream `KV_MESH_LANDER`), one key per edge: the highest edge
//!   sequence landed.
//!
//! # Invariants
//! * **A missing stream is created** with the configured settings.
//! * **An existing stream is never changed silently.** The hub compares every setting it
//!   manages ([`Field`]: subjects, retention, storage, replicas, `max_age`, `max_bytes`,
//!   `duplicate_window`, `deny_delete`, `deny_purge`, `allow_direct`, and the bucket's
//!   history) with what the configuration wants, normalised as nats-server stores them.
//!   Settings the hub does not manage (description, `max_msgs`, placement, …) and the
//!   ones the server fills in are left as they are and not compared. Equal: no request
//!   is sent. Different: the hub refuses to start with [`StreamsError::Differs`], which
//!   lists every difference of every stream, unless the operator allowed changes
//!   (`mesh central --apply-stream-changes` or `streams.apply_changes = true`). Then it
//!   updates the server's own configuration with the managed settings overlaid (so
//!   settings it does not manage are kept), and [`ensure`] returns one
//!   `stream.updated` record per changed stream for the hub to write once its audit log
//!   is open.
//! * **What nats-server cannot change is refused even when changes are allowed**: the
//!   storage type, retention to or from work queue, and `deny_delete` / `deny_purge` once
//!   set. The error says so; nothing is changed, not even the changes it could make.
//! * **Set-up waits and retries.** Admin requests use a JetStream context with
//!   `streams.request_timeout` (default 30 s: creating an R3 stream on a fresh cluster
//!   took ~10 s, past the default 5 s). Transient failures — a timeout, no responders,
//!   503 / "JetStream system temporarily unavailable", no leader or peers yet — are
//!   retried with backoff (100 ms doubling to 2 s), each logged with what failed, until
//!   `streams.setup_timeout` (default 60 s) after the start. "Stream name already in use"
//!   (a racing hub created it first) makes the hub read the stream and compare: two hubs
//!   on one configuration both come up, and the second makes no change.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::context::{
    AccountError, AccountErrorKind, CreateKeyValueError, CreateKeyValueErrorKind,
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, RequestError,
    RequestErrorKind,
};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use async_nats::jetstream::{self, kv, stream, ErrorCode};
use schemas::audit::{StreamChange, StreamUpdated};
use tokio::time::Instant;

use crate::config::CentralConfig;

/// What [`ensure`] hands back: the lander's bucket and the changes made.
pub struct Streams {
    /// `MESH_LANDER`, on the caller's context (its ordinary request timeout).
    pub kv: kv::Store,
    /// One per existing stream the hub changed, to be recorded as `stream.updated`.
    pub updated: Vec<StreamUpdated>,
}

/// Why the streams could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// Existing streams differ from the configuration, and the hub was not allowed to
    /// change them (`apply` false) or nats-server cannot. Nothing was changed.
    #[error("{}", differs_message(.differences, *.apply))]
    Differs {
        differences: Vec<Difference>,
        /// Whether changes were allowed.
        apply: bool,
    },
    /// A JetStream request failed in a way retrying does not mend (the cause, e.g.
    /// nats-server's refusal, is the error's source).
    #[error("stream {stream}: cannot {action}")]
    Request {
        stream: String,
        action: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// Transient failures lasted past `streams.setup_timeout`.
    #[error(
        "stream {stream}: cannot {action} within streams.setup_timeout ({timeout}, {attempts} \
         attempts); last error: {last}. Check that the hub's --nats is the central \
         nats-server (JetStream domain `central`), not an edge's, and that its JetStream is \
         up, has a meta leader and enough servers for the replicas asked; or raise \
         streams.setup_timeout"
    )]
    Deadline {
        stream: String,
        action: &'static str,
        timeout: String,
        attempts: u32,
        last: String,
    },
}

/// A stream setting the hub manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Subjects,
    Retention,
    Storage,
    Replicas,
    MaxAge,
    MaxBytes,
    DuplicateWindow,
    DenyDelete,
    DenyPurge,
    AllowDirect,
    /// A KV bucket's history: `max_msgs_per_subject` of its stream.
    History,
}

impl Field {
    /// The setting's name in nats-server's stream configuration (`history` for a bucket).
    pub fn name(self) -> &'static str {
        match self {
            Field::Subjects => "subjects",
            Field::Retention => "retention",
            Field::Storage => "storage",
            Field::Replicas => "num_replicas",
            Field::MaxAge => "max_age",
            Field::MaxBytes => "max_bytes",
            Field::DuplicateWindow => "duplicate_window",
            Field::DenyDelete => "deny_delete",
            Field::DenyPurge => "deny_purge",
            Field::AllowDirect => "allow_direct",
            Field::History => "history",
        }
    }

    /// The value in `c`, normalised as nats-server stores it, for comparing and printing.
    fn show(self, c: &stream::Config) -> String {
        let dur = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        match self {
            Field::Subjects => {
                let mut s = c.subjects.clone();
                s.sort();
                format!("[{}]", s.join(", "))
            }
            Field::Retention => match c.retention {
                stream::RetentionPolicy::Limits => "limits",
                stream::RetentionPolicy::Interest => "interest",
                stream::RetentionPolicy::WorkQueue => "workqueue",
            }
            .into(),
            Field::Storage => match c.storage {
                stream::StorageType::File => "file",
                stream::StorageType::Memory => "memory",
            }
            .into(),
            Field::Replicas => c.num_replicas.max(1).to_string(),
            Field::MaxAge => dur(c.max_age),
            // The server stores "no limit" given as 0 as -1.
            Field::MaxBytes => (if c.max_bytes == 0 { -1 } else { c.max_bytes }).to_string(),
            Field::DuplicateWindow => dur(c.duplicate_window),
            Field::DenyDelete => c.deny_delete.to_string(),
            Field::DenyPurge => c.deny_purge.to_string(),
            Field::AllowDirect => c.allow_direct.to_string(),
            Field::History => c.max_messages_per_subject.max(1).to_string(),
        }
    }

    /// Sets this setting of `to` to its value in `from`.
    fn copy(self, from: &stream::Config, to: &mut stream::Config) {
        match self {
            Field::Subjects => to.subjects = from.subjects.clone(),
            Field::Retention => to.retention = from.retention,
            Field::Storage => to.storage = from.storage,
            Field::Replicas => to.num_replicas = from.num_replicas,
            Field::MaxAge => to.max_age = from.max_age,
            Field::MaxBytes => to.max_bytes = from.max_bytes,
            Field::DuplicateWindow => to.duplicate_window = from.duplicate_window,
            Field::DenyDelete => to.deny_delete = from.deny_delete,
            Field::DenyPurge => to.deny_purge = from.deny_purge,
            Field::AllowDirect => to.allow_direct = from.allow_direct,
            Field::History => to.max_messages_per_subject = from.max_messages_per_subject,
        }
    }

    /// Why nats-server refuses to change this setting from `server` to `wanted` on an
    /// existing stream, if it does.
    fn unchangeable(
        self,
        server: &stream::Config,
        wanted: &stream::Config,
    ) -> Option<&'static str> {
        use stream::RetentionPolicy::WorkQueue;
        match self {
            Field::Storage => Some("nats-server cannot change the storage type of a stream"),
            Field::Retention if server.retention == WorkQueue || wanted.retention == WorkQueue => {
                Some("nats-server cannot change retention to or from workqueue")
            }
            Field::DenyDelete if server.deny_delete && !wanted.deny_delete => {
                Some("nats-server cannot turn deny_delete off once set")
            }
            Field::DenyPurge if server.deny_purge && !wanted.deny_purge => {
                Some("nats-server cannot turn deny_purge off once set")
            }
            _ => None,
        }
    }
}

/// One managed setting of an existing stream that differs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub stream: String,
    pub field: Field,
    /// The value on the server.
    pub server: String,
    /// The value the configuration wants.
    pub wanted: String,
    /// The configuration key that sets it; `None` when the hub fixes the value.
    pub key: Option<&'static str>,
    /// Why nats-server cannot make this change, when it cannot.
    pub unchangeable: Option<&'static str>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream {}: {} is {} on the server but ",
            self.stream,
            self.field.name(),
            self.server
        )?;
        match self.key {
            Some(key) => write!(f, "{key} is {}", self.wanted)?,
            None => write!(f, "the hub requires {}", self.wanted)?,
        }
        if let Some(why) = self.unchangeable {
            write!(f, " (cannot change: {why})")?;
        }
        Ok(())
    }
}

fn differs_message(differences: &[Difference], apply: bool) -> String {
    let mut s = format!(
        "the existing JetStream streams differ from the configuration ({} difference{}); \
         nothing was changed:",
        differences.len(),
        if differences.len() == 1 { "" } else { "s" }
    );
    for d in differences {
        s.push_str("\n  - ");
        s.push_str(&d.to_string());
    }
    if differences.iter().any(|d| d.unchangeable.is_some()) {
        s.push_str(
            "\nnats-server cannot make the changes marked \"cannot change\" on an existing \
             stream. Set the configuration to match the server, or back up the stream's \
             messages, delete the stream and start the hub to create it anew.",
        );
        if apply {
            s.push_str(" (Changes are allowed, but none is made while one cannot be.)");
        }
    } else {
        s.push_str(
            "\nThe hub changes no existing stream silently. To apply these changes, start it \
             with --apply-stream-changes or set streams.apply_changes = true (each changed \
             stream is recorded in the audit log as stream.updated); to keep the streams as \
             they are, set the configuration to match the server.",
        );
    }
    s
}

/// What the hub creates and how it wants it.
struct Spec {
    /// The stream's name (`KV_<bucket>` for the bucket).
    stream: String,
    /// Set for the bucket, created as one; a stream is created as `wanted`.
    bucket: Option<kv::Config>,
    /// The managed settings as the configuration wants them; for a stream, also what is
    /// created.
    wanted: stream::Config,
    /// The settings compared, with the configuration key that sets each (if any).
    managed: Vec<(Field, Option<&'static str>)>,
}

impl Spec {
    fn stream(wanted: stream::Config, keys: &[(Field, &'static str)]) -> Spec {
        let mut managed = vec![
            (Field::Subjects, None),
            (Field::Retention, None),
            (Field::Storage, None),
            (Field::Replicas, None),
            (Field::MaxAge, None),
            (Field::MaxBytes, None),
            (Field::DuplicateWindow, None),
            (Field::DenyDelete, None),
            (Field::DenyPurge, None),
            (Field::AllowDirect, None),
        ];
        if wanted.duplicate_window.is_zero() {
            // Left to the server's default (2 min, or max_age if shorter).
            managed.retain(|(f, _)| *f != Field::DuplicateWindow);
        }
        for (field, key) in &mut managed {
            *key = keys.iter().find(|(f, _)| f == field).map(|(_, k)| *k);
        }
        Spec {
            stream: wanted.name.clone(),
            bucket: None,
            wanted,
            managed,
        }
    }

    fn differences(&self, server: &stream::Config) -> Vec<Difference> {
        self.managed
            .iter()
            .filter_map(|&(field, key)| {
                let (have, want) = (field.show(server), field.show(&self.wanted));
                (have != want).then(|| Difference {
                    stream: self.stream.clone(),
                    field,
                    server: have,
                    wanted: want,
                    key,
                    unchangeable: field.unchangeable(server, &self.wanted),
                })
            })
            .collect()
    }
}

/// The streams and the bucket as `cfg` wants them, in the order they are set up.
fn specs(cfg: &CentralConfig) -> Vec<Spec> {
    use schemas::subject as s;
    use Field::*;
    let replicas = cfg.events.replicas;
    let ingress = Spec::stream(
        stream::Config {
            name: s::STREAM_INGRESS.into(),
            description: Some("agentmesh: bundles of events in transit from the edges".into()),
            subjects: vec![s::UP_ALL.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_bytes: -1,
            duplicate_window: cfg.ingress.duplicate_window,
            num_replicas: cfg.ingress.replicas,
            ..Default::default()
        },
        &[
            (Replicas, "ingress.replicas"),
            (DuplicateWindow, "ingress.duplicate_window"),
        ],
    );
    let events = Spec::stream(
        stream::Config {
            name: s::STREAM_EVENTS.into(),
            description: Some("agentmesh: every accepted event, once".into()),
            subjects: vec![s::EVT_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: cfg.events.max_age,
            max_bytes: cfg.events.max_bytes,
            duplicate_window: cfg.events.duplicate_window,
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        },
        &[
            (Replicas, "events.replicas"),
            (MaxAge, "events.max_age"),
            (MaxBytes, "events.max_bytes"),
            (DuplicateWindow, "events.duplicate_window"),
        ],
    );
    let audit = Spec::stream(
        stream::Config {
            name: s::STREAM_AUDIT.into(),
            description: Some("agentmesh: hash-chained audit log".into()),
            subjects: vec![s::AUDIT_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_bytes: -1,
            num_replicas: replicas,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            ..Default::default()
        },
        &[(Replicas, "events.replicas")],
    );
    let dlq = Spec::stream(
        stream::Config {
            name: s::STREAM_DLQ.into(),
            description: Some("agentmesh: dead letters with their reason headers".into()),
            subjects: vec![s::DLQ_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_bytes: -1,
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        },
        &[(Replicas, "events.replicas")],
    );
    let lander = Spec {
        stream: format!("KV_{}", s::BUCKET_LANDER),
        bucket: Some(kv::Config {
            bucket: s::BUCKET_LANDER.into(),
            description: "agentmesh: per-edge high-water mark of the lander".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }),
        wanted: stream::Config {
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        managed: vec![
            (History, None),
            (Storage, None),
            (Replicas, Some("events.replicas")),
        ],
    };
    vec![ingress, events, audit, dlq, lander]
}

/// Creates the streams and the bucket that are missing and compares the ones that exist
/// with `cfg`; changes those that differ only when `cfg.streams.apply_changes` (see the
/// module doc). Waits and retries transient failures until `cfg.streams.setup_timeout`.
pub async fn ensure(js: &jetstream::Context, cfg: &CentralConfig) -> Result<Streams, StreamsError> {
    let admin = jetstream::ContextBuilder::new()
        .timeout(cfg.streams.request_timeout)
        .build(js.client());
    let retry = Retry {
        until: Instant::now() + cfg.streams.setup_timeout,
        timeout: cfg.streams.setup_timeout,
    };
    let specs = specs(cfg);
    let mut changes = Vec::new();
    let mut differences = Vec::new();
    for spec in &specs {
        let (admin, spec) = (&admin, spec);
        let found = retry
            .run(&spec.stream, "create or read", move || {
                get_or_create(admin, spec)
            })
            .await?;
        match found {
            None => tracing::info!(stream = %spec.stream, "created stream"),
            Some(server) => {
                let d = spec.differences(&server);
                if !d.is_empty() {
                    differences.extend(d.iter().cloned());
                    changes.push((spec, server, d));
                }
            }
        }
    }
    let apply = cfg.streams.apply_changes;
    if !differences.is_empty() && (!apply || differences.iter().any(|d| d.unchangeable.is_some())) {
        return Err(StreamsError::Differs { differences, apply });
    }

    let hub = cfg.hub_name();
    let mut updated = Vec::new();
    for (spec, server, diffs) in changes {
        // The server's own configuration with the managed settings overlaid: what the
        // hub does not manage stays as the operator left it.
        let mut target = server;
        for d in &diffs {
            d.field.copy(&spec.wanted, &mut target);
        }
        let (admin, target) = (&admin, &target);
        retry
            .run(&spec.stream, "update", move || async move {
                admin
                    .update_stream(target)
                    .await
                    .map(drop)
                    .map_err(Into::into)
            })
            .await?;
        let changes: Vec<StreamChange> = diffs
            .iter()
            .map(|d| StreamChange {
                field: d.field.name().into(),
                old: d.server.clone(),
                new: d.wanted.clone(),
            })
            .collect();
        tracing::warn!(
            stream = %spec.stream,
            changes = %diffs.iter().map(|d| format!("{} {} -> {}", d.field.name(), d.server, d.wanted)).collect::<Vec<_>>().join(", "),
            "changed an existing stream to the configuration (streams.apply_changes)"
        );
        updated.push(StreamUpdated {
            hub: hub.clone(),
            stream: spec.stream.clone(),
            changes,
        });
    }

    let bucket = schemas::subject::BUCKET_LANDER;
    let kv = retry
        .run(bucket, "open bucket", || async {
            // Its stream exists (found or created above): "not found" is a cluster node
            // that does not see the new stream yet (seen: two hubs racing on a fresh
            // 3-node cluster).
            js.get_key_value(bucket).await.map_err(not_yet_visible)
        })
        .await?;
    // Every stream visible before the hub uses them: on a cluster a stream just created
    // (by this hub or a racing one) may not be seen yet by the node this hub talks to.
    for spec in &specs {
        retry
            .run(&spec.stream, "see the stream", || async {
                js.get_stream(&spec.stream)
                    .await
                    .map(|_| ())
                    .map_err(not_yet_visible)
            })
            .await?;
    }
    Ok(Streams { kv, updated })
}

/// Runs one more set-up `step` on `stream` by the rules of [`ensure`]: transient failures
/// (a timeout, no responders, a 503, no leader yet) are retried with backoff until
/// `streams.setup_timeout` from now; a refusal fails at once.
pub async fn set_up_step<T, F, Fut>(
    cfg: &CentralConfig,
    stream: &str,
    action: &'static str,
    step: F,
) -> Result<T, StreamsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, async_nats::Error>>,
{
    Retry {
        until: Instant::now() + cfg.streams.setup_timeout,
        timeout: cfg.streams.setup_timeout,
    }
    .run(stream, action, step)
    .await
}

/// The server's configuration of `spec`'s stream, or `None` once created.
async fn get_or_create(
    admin: &jetstream::Context,
    spec: &Spec,
) -> Result<Option<stream::Config>, async_nats::Error> {
    match admin.get_stream(&spec.stream).await {
        Ok(s) => return Ok(Some(s.cached_info().config.clone())),
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
            if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {}
        Err(e) => return Err(e.into()),
    }
    match &spec.bucket {
        None => admin.create_stream(spec.wanted.clone()).await.map(drop)?,
        Some(c) => admin.create_key_value(c.clone()).await.map(drop)?,
    }
    Ok(None)
}

/// How a failed request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Timeout, no responders, no JetStream leader or peers yet: try again.
    Transient,
    /// Another hub created the stream meanwhile: read it and compare.
    Exists,
    /// Retrying will not help.
    Permanent,
}

/// A stream this hub found or created is not seen yet by the node asked: try again.
#[derive(Debug, thiserror::Error)]
#[error("not visible yet on the node asked: {0}")]
struct NotVisibleYet(String);

/// A lookup error of a stream known to exist: "not found" becomes [`NotVisibleYet`].
fn not_yet_visible(e: impl Into<async_nats::Error>) -> async_nats::Error {
    let e: async_nats::Error = e.into();
    match stream_not_found(&*e) {
        true => Box::new(NotVisibleYet(e.to_string())),
        false => e,
    }
}

/// Whether `err` (or a cause of it) is JetStream's "stream not found".
fn stream_not_found(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(j) = e.downcast_ref::<jetstream::Error>() {
            return j.error_code() == ErrorCode::STREAM_NOT_FOUND;
        }
        if e.to_string().contains("stream not found") {
            return true;
        }
        cur = e.source();
    }
    false
}

fn classify(err: &(dyn std::error::Error + 'static)) -> Class {
    if err.downcast_ref::<NotVisibleYet>().is_some() {
        return Class::Transient;
    }
    fn code(e: &jetstream::Error) -> Class {
        match e.error_code() {
            ErrorCode::STREAM_NAME_EXIST => Class::Exists,
            ErrorCode::CLUSTER_NOT_AVAILABLE
            | ErrorCode::CLUSTER_NO_PEERS
            | ErrorCode::CLUSTER_NOT_ACTIVE
            | ErrorCode::CLUSTER_NOT_LEADER
            | ErrorCode::CLUSTER_INCOMPLETE => Class::Transient,
            _ if e.code() == 503 => Class::Transient,
            _ => Class::Permanent,
        }
    }
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(e) = e.downcast_ref::<jetstream::Error>() {
            return code(e);
        }
        if let Some(e) = e.downcast_ref::<CreateStreamError>() {
            match e.kind() {
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                    return Class::Transient
                }
                CreateStreamErrorKind::JetStream(j) => return code(&j),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<ConsumerError>() {
            match e.kind() {
                ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => {
                    return Class::Transient
                }
                ConsumerErrorKind::JetStream(j) => return code(&j),
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<GetStreamError>() {
            if let GetStreamErrorKind::JetStream(j) = e.kind() {
                return code(&j);
            }
        }
        if let Some(e) = e.downcast_ref::<AccountError>() {
            match e.kind() {
                AccountErrorKind::TimedOut | AccountErrorKind::JetStreamUnavailable => {
                    return Class::Transient
                }
                AccountErrorKind::JetStream(j) => return code(&j),
                AccountErrorKind::Other => {}
            }
        }
        if let Some(e) = e.downcast_ref::<CreateKeyValueError>() {
            if e.kind() == CreateKeyValueErrorKind::TimedOut {
                return Class::Transient;
            }
        }
        if let Some(e) = e.downcast_ref::<RequestError>() {
            if matches!(
                e.kind(),
                RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
            ) {
                return Class::Transient;
            }
        }
        if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
            if matches!(
                e.kind(),
                async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders
            ) {
                return Class::Transient;
            }
        }
        cur = e.source();
    }
    Class::Permanent
}

/// Retries transient failures with backoff until a deadline.
struct Retry {
    until: Instant,
    /// `streams.setup_timeout`, for the error message.
    timeout: Duration,
}

impl Retry {
    async fn run<T, F, Fut>(
        &self,
        stream: &str,
        action: &'static str,
        mut step: F,
    ) -> Result<T, StreamsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, async_nats::Error>>,
    {
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0;
        let mut last = String::from("no answer before the deadline");
        loop {
            attempts += 1;
            let err = match tokio::time::timeout_at(self.until, step()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => return Err(self.deadline(stream, action, attempts, last)),
            };
            let class = classify(&*err);
            if class == Class::Permanent {
                return Err(StreamsError::Request {
                    stream: stream.into(),
                    action,
                    source: err,
                });
            }
            last = err.to_string();
            if Instant::now() + backoff >= self.until {
                return Err(self.deadline(stream, action, attempts, last));
            }
            if class == Class::Exists {
                tracing::info!(stream, action, error = %err, "another hub created the stream meanwhile; reading it to compare");
            } else {
                tracing::warn!(stream, action, attempt = attempts, error = %err, retry_in = ?backoff, "stream set-up failed; retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn deadline(
        &self,
        stream: &str,
        action: &'static str,
        attempts: u32,
        last: String,
    ) -> StreamsError {
        StreamsError::Deadline {
            stream: stream.into(),
            action,
            timeout: humantime_serde::re::humantime::format_duration(self.timeout).to_string(),
            attempts,
            last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, cfg: &CentralConfig) -> Spec {
        specs(cfg).into_iter().find(|s| s.stream == name).unwrap()
    }

    /// Regression: a default-config hub scaled R3 streams down to R1 without a word. The
    /// difference is now named with both values and the key that sets it.
    #[test]
    fn a_replica_difference_names_the_stream_the_field_both_values_and_the_key() {
        let cfg = CentralConfig::default();
        let s = spec("MESH_EVENTS", &cfg);
        let mut server = s.wanted.clone();
        server.num_replicas = 3;
        server.max_age = Duration::from_secs(3600);
        let d = s.differences(&server);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            d[0].to_string(),
            "stream MESH_EVENTS: num_replicas is 3 on the server but events.replicas is 1"
        );
        assert_eq!(
            d[1].to_string(),
            "stream MESH_EVENTS: max_age is 1h on the server but events.max_age is 0s"
        );
        let msg = StreamsError::Differs {
            differences: d,
            apply: false,
        }
        .to_string();
        assert!(msg.contains("--apply-stream-changes"), "{msg}");
        assert!(msg.contains("streams.apply_changes = true"), "{msg}");
    }

    #[test]
    fn server_filled_and_unmanaged_settings_are_not_differences() {
        let cfg = CentralConfig::default();
        for s in specs(&cfg) {
            let mut server = s.wanted.clone();
            // What nats-server fills in or an operator may set beyond the hub's care.
            server.max_bytes = -1;
            server.num_replicas = server.num_replicas.max(1);
            server.max_messages = -1;
            server.max_message_size = -1;
            server.description = Some("changed by an operator".into());
            if server.duplicate_window.is_zero() {
                server.duplicate_window = Duration::from_secs(120);
            }
            assert_eq!(s.differences(&server), vec![], "{}", s.stream);
        }
    }

    #[test]
    fn what_nats_server_cannot_change_is_said_so() {
        let cfg = CentralConfig::default();
        let s = spec("MESH_INGRESS", &cfg);
        let mut server = s.wanted.clone();
        server.retention = stream::RetentionPolicy::Limits;
        server.storage = stream::StorageType::Memory;
        let d = s.differences(&server);
        assert!(d.iter().all(|d| d.unchangeable.is_some()), "{d:?}");
        let msg = StreamsError::Differs {
            differences: d,
            apply: true,
        }
        .to_string();
        assert!(
            msg.contains("stream MESH_INGRESS: retention is limits on the server but the hub requires workqueue (cannot change: nats-server cannot change retention to or from workqueue)"),
            "{msg}"
        );
        assert!(msg.contains("storage is memory"), "{msg}");
        assert!(!msg.contains("--apply-stream-changes"), "{msg}");

        let audit = spec("MESH_AUDIT", &cfg);
        let mut server = audit.wanted.clone();
        server.deny_purge = false;
        let d = audit.differences(&server);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].unchangeable, None, "deny_purge can be turned on");
    }

    #[test]
    fn transient_failures_are_told_from_permanent_ones() {
        let js = |code: u64, status: usize| -> async_nats::Error {
            let e: jetstream::Error = serde_json::from_value(serde_json::json!({
                "code": status, "err_code": code, "description": "x"
            }))
            .unwrap();
            CreateStreamError::from(e).into()
        };
        assert_eq!(classify(&*js(10008, 503)), Class::Transient);
        assert_eq!(classify(&*js(10058, 400)), Class::Exists);
        assert_eq!(classify(&*js(10074, 500)), Class::Permanent);
        let timed_out: async_nats::Error =
            CreateStreamError::new(CreateStreamErrorKind::TimedOut).into();
        assert_eq!(classify(&*timed_out), Class::Transient);
        let wrapped: async_nats::Error = CreateKeyValueError::with_source(
            CreateKeyValueErrorKind::BucketCreate,
            CreateStreamError::from(
                serde_json::from_value::<jetstream::Error>(serde_json::json!({
                    "code": 400, "err_code": 10058, "description": "stream name already in use"
                }))
                .unwrap(),
            ),
        )
        .into();
        assert_eq!(classify(&*wrapped), Class::Exists);
        let not_found: async_nats::Error = Box::new(NotVisibleYet("x".into()));
        assert_eq!(classify(&*not_found), Class::Transient);
        // The lander's consumer (regression: a hub on a fresh cluster exited on its
        // consumer's time-out while the consumer's replicas elected a leader).
        let consumer = |kind| -> async_nats::Error { ConsumerError::new(kind).into() };
        assert_eq!(
            classify(&*consumer(ConsumerErrorKind::TimedOut)),
            Class::Transient
        );
        assert_eq!(
            classify(&*consumer(ConsumerErrorKind::Request)),
            Class::Transient
        );
        assert_eq!(
            classify(&*consumer(ConsumerErrorKind::InvalidName)),
            Class::Permanent
        );
        let refused = |code: u64, status: usize| -> async_nats::Error {
            let e: jetstream::Error = serde_json::from_value(serde_json::json!({
                "code": status, "err_code": code, "description": "x"
            }))
            .unwrap();
            ConsumerError::new(ConsumerErrorKind::JetStream(e)).into()
        };
        assert_eq!(classify(&*refused(10008, 503)), Class::Transient);
        assert_eq!(classify(&*refused(10012, 400)), Class::Permanent);
        let e404: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 404, "err_code": 10059, "description": "stream not found"
        }))
        .unwrap();
        assert!(stream_not_found(&e404));
        assert!(!stream_not_found(&*js(10074, 500)));
    }
}
