//! Operator requests: every write an operator command makes (`mesh dlq redrive|purge`,
//! `mesh replay`) is done here, by a central hub, at the operator's request. Operators
//! read the streams themselves; only central hubs write `MESH_EVENTS`, `MESH_DLQ` and
//! `MESH_AUDIT`.
//!
//! # Protocol
//! A request is JSON on `mesh.hub.op.<operator>.<verb…>` ([`subject::hub_op`]); the
//! hubs take it in queue group [`QUEUE`], so one hub answers. The reply is JSON
//! [`OpReply`]: `{"result":"ok", …fields of the verb's reply}` or
//! `{"result":"err","message":"…"}`.
//!
//! | verb | request | ok reply |
//! |---|---|---|
//! | `dlq.redrive` | [`Redrive`] `{filter, id, to, rate}` | [`RedriveReply`] `{sent: [{dlq_seq, target}]}` |
//! | `dlq.purge` | [`PurgeRequest`] `{filter}` | [`PurgeReply`] `{purged}` |
//! | `replay.republish` | [`ReplayRequest`] `{stream, subject, from_seq, since, until, to_seq, rate, republish}` | [`ReplayReply`] `{count}` |
//! | `replay.record` | [`ReplayRun`] (what `--to-stdout` read; `republish` must be empty) | [`RecordReply`] `{audit_seq}` |
//!
//! # Invariants
//! - The actor of every audit record written here is `operator:<operator>`, from the
//!   `<operator>` token of the subject ([`actor`]). The nats-servers enforce it: an operator's credential may
//!   publish only `mesh.hub.op.<its own name>.>` (see `mesh_nats::auth::permissions`).
//!   On an insecure mesh (no credentials) the command line uses [`ANONYMOUS`].
//! - Targets are checked before anything is sent ([`check_target`]): a replay never
//!   republishes inside `mesh.>` (that would land events a second time past the lander);
//!   a redrive `to` may be `mesh.evt.<edge>.<subject…>` (where dead letters of consumers
//!   come from) or outside `mesh.>`; neither goes to `$…` or `_INBOX…` subjects.
//! - A run stops between two messages when the hub shuts down; what was done is still
//!   recorded and the reply says how far it got.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use schemas::audit::{AuditEvent, ReplayRun};
use schemas::stream::{Range, RangeReader, Start};
use schemas::{headers as h, subject};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::dlq::{self, DlqError, Redrive, Sent};

/// Queue group of the hubs' operator-request subscription: one hub answers each request.
pub const QUEUE: &str = "mesh-ops";
/// The `<operator>` token of requests from a client without a credential (an insecure
/// mesh, where nothing authenticates anyone).
pub const ANONYMOUS: &str = "anonymous";
/// How long the command line waits for a hub's answer (a slow `--rate` run may need
/// longer; the hub finishes and records it all the same).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The audit actor of requests on `mesh.hub.op.<operator>.…`: `operator:<operator>`, in
/// the record format's `<kind>:<who>` grammar (hubs are `central:<hub>`).
pub fn actor(operator: &str) -> String {
    format!("operator:{operator}")
}

/// The answer to every operator request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum OpReply<T> {
    Ok(T),
    Err { message: String },
}

/// `dlq.redrive`: what was sent, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveReply {
    pub sent: Vec<Sent>,
}

/// `dlq.purge`: the dead letters on `mesh.dlq.<filter>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    pub filter: String,
}

/// `dlq.purge`: how many went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReply {
    pub purged: u64,
}

/// `replay.republish`: a range of `stream` to publish again on `republish`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayRequest {
    pub stream: String,
    /// Subject filter; empty for all.
    pub subject: String,
    pub from_seq: Option<u64>,
    /// RFC 3339.
    pub since: Option<String>,
    /// RFC 3339.
    pub until: Option<String>,
    pub to_seq: Option<u64>,
    /// At most this many per second.
    pub rate: Option<f64>,
    pub republish: String,
}

/// `replay.republish`: how many messages were republished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReply {
    pub count: u64,
}

/// `replay.record`: the sequence of the audit record written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordReply {
    pub audit_seq: u64,
}

/// What can go wrong serving or making an operator request.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request body is not the JSON of its verb.
    #[error("cannot decode the {verb} request: {reason}")]
    Decode { verb: String, reason: String },
    /// No such verb.
    #[error("unknown operator request {verb:?}; the verbs are dlq.redrive, dlq.purge, replay.republish, replay.record")]
    UnknownVerb { verb: String },
    /// The request asks for something the hubs do not do (a bad target, a bad range).
    #[error("{0}")]
    Refused(String),
    /// The dead-letter action failed.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// The range could not be read.
    #[error(transparent)]
    Read(#[from] schemas::stream::StreamError),
    /// A replayed message could not be republished.
    #[error("republishing {stream} seq {seq} to {target}: {source}")]
    Republish {
        stream: String,
        seq: u64,
        target: String,
        #[source]
        source: async_nats::Error,
    },
    /// The hub began shutting down during a replay.
    #[error("the central hub stopped after republishing {done} messages; replay the rest again")]
    Interrupted { done: u64 },
    /// The run could not be recorded in the audit log.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// (client) No central hub listens where the request went.
    #[error("no central hub answered on {subject}: connect --nats to the centre's nats-server (or one whose leaf link carries mesh.hub.op)")]
    NoHub { subject: String },
    /// (client) A hub did not answer in time.
    #[error("no answer on {subject} within {secs}s: is a central hub running, and is --nats the centre's nats-server?")]
    TimedOut { subject: String, secs: u64 },
    /// (client) The request could not be sent.
    #[error("request on {subject}: {source}")]
    Request {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
    /// (client) The hub refused the request or failed doing it.
    #[error("the central hub refused {subject}: {message}")]
    Hub { subject: String, message: String },
}

/// Checks where an operator asks a hub to publish (see the module doc).
/// `redrive` allows `mesh.evt.<edge>.<subject…>`.
pub fn check_target(flag: &str, target: &str, redrive: bool) -> Result<(), OpError> {
    let refuse = |why: &str| Err(OpError::Refused(format!("{flag} {target:?}: {why}")));
    if let Err(e) = subject::validate_subject(flag, target) {
        return Err(OpError::Refused(e.to_string()));
    }
    if target.starts_with('$') || target.starts_with("_INBOX") {
        return refuse("is a NATS system or reply subject; pick an application subject");
    }
    if target == "mesh" || target.starts_with("mesh.") {
        let events = target
            .strip_prefix("mesh.evt.")
            .is_some_and(|rest| rest.split('.').count() >= 2);
        if redrive && events {
            return Ok(());
        }
        return if redrive {
            refuse("is inside mesh.>, which only the mesh itself writes; a redrive may go to mesh.evt.<edge>.<subject> or to a subject outside mesh.>")
        } else {
            refuse("is inside mesh.>, which only the mesh itself writes (a replay into mesh.evt.> would land the events a second time, past the lander); pick a subject outside mesh.>, e.g. replayed.orders")
        };
    }
    Ok(())
}

/// Serves operator requests until `stop`; each runs on its own task, and a stop ends
/// the runs in hand between two messages.
pub async fn run(
    client: async_nats::Client,
    js: jetstream::Context,
    audit: AuditLog,
    stop: CancellationToken,
) {
    let mut sub = match client
        .queue_subscribe(subject::HUB_OP_ALL, QUEUE.into())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to operator requests");
            return;
        }
    };
    let runs = TaskTracker::new();
    loop {
        let m = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => break },
            _ = stop.cancelled() => break,
        };
        let Some(reply) = m.reply.clone() else {
            continue;
        };
        let (client, js, audit, stop) = (client.clone(), js.clone(), audit.clone(), stop.clone());
        runs.spawn(async move {
            let body = serve(&js, &audit, &stop, m.subject.as_str(), &m.payload).await;
            let _ = client.publish(reply, body.into()).await;
        });
    }
    runs.close();
    runs.wait().await;
}

/// Does one request received on subject `on` and returns the reply body.
pub async fn serve(
    js: &jetstream::Context,
    audit: &AuditLog,
    stop: &CancellationToken,
    on: &str,
    payload: &[u8],
) -> Vec<u8> {
    let Some((operator, verb)) = subject::parse_hub_op(on) else {
        return reply::<()>(Err(OpError::Refused(format!(
            "{on} is not mesh.hub.op.<operator>.<verb>"
        ))));
    };
    let actor = actor(operator);
    tracing::info!(%actor, verb, "operator request");
    let r = match verb {
        subject::op::DLQ_REDRIVE => reply(redrive(js, audit, stop, &actor, verb, payload).await),
        subject::op::DLQ_PURGE => reply(purge(js, audit, &actor, verb, payload).await),
        subject::op::REPLAY_REPUBLISH => {
            reply(republish(js, audit, stop, &actor, verb, payload).await)
        }
        subject::op::REPLAY_RECORD => reply(record(audit, &actor, verb, payload).await),
        _ => reply::<()>(Err(OpError::UnknownVerb { verb: verb.into() })),
    };
    r
}

fn reply<T: Serialize>(r: Result<T, OpError>) -> Vec<u8> {
    let r = match r {
        Ok(t) => OpReply::Ok(t),
        Err(e) => {
            tracing::warn!(error = %e, "operator request refused or failed");
            OpReply::Err {
                message: e.to_string(),
            }
        }
    };
    serde_json::to_vec(&r).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(verb: &str, payload: &[u8]) -> Result<T, OpError> {
    serde_json::from_slice(payload).map_err(|e| OpError::Decode {
        verb: verb.into(),
        reason: e.to_string(),
    })
}

async fn redrive(
    js: &jetstream::Context,
    audit: &AuditLog,
    stop: &CancellationToken,
    actor: &str,
    verb: &str,
    payload: &[u8],
) -> Result<RedriveReply, OpError> {
    let r: Redrive = decode(verb, payload)?;
    if let Some(to) = &r.to {
        check_target("--to", to, true)?;
    }
    let sent = dlq::redrive(js, &r, audit, actor, stop).await?;
    Ok(RedriveReply { sent })
}

async fn purge(
    js: &jetstream::Context,
    audit: &AuditLog,
    actor: &str,
    verb: &str,
    payload: &[u8],
) -> Result<PurgeReply, OpError> {
    let r: PurgeRequest = decode(verb, payload)?;
    let purged = dlq::purge(js, &r.filter, audit, actor).await?;
    Ok(PurgeReply { purged })
}

fn time(flag: &str, v: &str) -> Result<chrono::DateTime<chrono::Utc>, OpError> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| OpError::Refused(format!("--{flag} {v:?} is not an RFC 3339 time: {e}")))
}

/// The [`Range`] a replay reads.
pub fn range(
    subject: &str,
    from_seq: Option<u64>,
    since: Option<&str>,
    until: Option<&str>,
    to_seq: Option<u64>,
) -> Result<Range, OpError> {
    let since = since.map(|v| time("since", v)).transpose()?;
    let until = until.map(|v| time("until", v)).transpose()?;
    Ok(Range {
        filter: subject.to_string(),
        start: match (from_seq, since) {
            (Some(s), _) => Start::Seq(s),
            (None, Some(t)) => Start::Time(t),
            _ => Start::First,
        },
        to_seq,
        until,
    })
}

async fn republish(
    js: &jetstream::Context,
    audit: &AuditLog,
    stop: &CancellationToken,
    actor: &str,
    verb: &str,
    payload: &[u8],
) -> Result<ReplayReply, OpError> {
    let r: ReplayRequest = decode(verb, payload)?;
    check_target("--republish", &r.republish, false)?;
    let range = range(
        &r.subject,
        r.from_seq,
        r.since.as_deref(),
        r.until.as_deref(),
        r.to_seq,
    )?;
    let mut reader = RangeReader::open(js, &r.stream, range).await?;
    let mut count = 0u64;
    let run = republish_each(js, &r, stop, &mut reader, &mut count).await;
    if run.is_ok() || count > 0 {
        let event = AuditEvent::ReplayRun(ReplayRun {
            stream: r.stream.clone(),
            subject: r.subject.clone(),
            from_seq: r.from_seq,
            since: r.since.clone(),
            until: r.until.clone(),
            to_seq: r.to_seq,
            republish: Some(r.republish.clone()),
            count,
        });
        audit.record_as(&event, actor).await?;
    }
    run.map(|()| ReplayReply { count })
}

async fn republish_each(
    js: &jetstream::Context,
    r: &ReplayRequest,
    stop: &CancellationToken,
    reader: &mut RangeReader,
    count: &mut u64,
) -> Result<(), OpError> {
    let gap = r
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut tick = gap.map(tokio::time::interval);
    loop {
        let next = tokio::select! {
            m = reader.next() => m?,
            _ = stop.cancelled() => return Err(OpError::Interrupted { done: *count }),
        };
        let Some(m) = next else { return Ok(()) };
        if let Some(t) = tick.as_mut() {
            tokio::select! {
                _ = t.tick() => {}
                _ = stop.cancelled() => return Err(OpError::Interrupted { done: *count }),
            }
        }
        let seq = m.seq;
        let ce_id = m
            .headers
            .get(h::ID)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let mut hs = h::without_expectations(&m.headers);
        hs.insert(h::ORIGIN_STREAM, r.stream.as_str());
        hs.insert(h::ORIGIN_SEQ, seq.to_string().as_str());
        hs.insert(
            h::NATS_MSG_ID,
            format!("replay:{}:{seq}:{ce_id}", r.stream).as_str(),
        );
        let failed = |source: async_nats::Error| OpError::Republish {
            stream: r.stream.clone(),
            seq,
            target: r.republish.clone(),
            source,
        };
        js.publish_with_headers(r.republish.clone(), hs, m.payload.clone())
            .await
            .map_err(|e| failed(e.into()))?
            .await
            .map_err(|e| failed(e.into()))?;
        *count += 1;
    }
}

async fn record(
    audit: &AuditLog,
    actor: &str,
    verb: &str,
    payload: &[u8],
) -> Result<RecordReply, OpError> {
    let run: ReplayRun = decode(verb, payload)?;
    if run.republish.is_some() {
        return Err(OpError::Refused(format!(
            "a {verb} request records a read-only replay; a republish is recorded by {} itself",
            subject::op::REPLAY_REPUBLISH
        )));
    }
    let rec = audit.record_as(&AuditEvent::ReplayRun(run), actor).await?;
    Ok(RecordReply { audit_seq: rec.seq })
}

/// (client) Sends `req` as operator `operator`'s `verb` request and waits for the hub's
/// answer; a refusal or failure on the hub's side is [`OpError::Hub`].
pub async fn request<Req: Serialize, Rep: DeserializeOwned>(
    client: &async_nats::Client,
    operator: &str,
    verb: &str,
    req: &Req,
    timeout: Duration,
) -> Result<Rep, OpError> {
    let subject = subject::hub_op(operator, verb);
    let body = serde_json::to_vec(req).expect("requests serialise");
    let sent = client
        .send_request(
            subject.clone(),
            async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(timeout)),
        )
        .await;
    let m = match sent {
        Ok(m) => m,
        Err(e) => {
            use async_nats::RequestErrorKind as K;
            return Err(match e.kind() {
                K::NoResponders => OpError::NoHub { subject },
                K::TimedOut => OpError::TimedOut {
                    subject,
                    secs: timeout.as_secs(),
                },
                _ => OpError::Request {
                    subject,
                    source: e.into(),
                },
            });
        }
    };
    match serde_json::from_slice::<OpReply<Rep>>(&m.payload) {
        Ok(OpReply::Ok(r)) => Ok(r),
        Ok(OpReply::Err { message }) => Err(OpError::Hub { subject, message }),
        Err(e) => Err(OpError::Hub {
            subject,
            message: format!(
                "undecodable answer ({e}): {}",
                String::from_utf8_lossy(&m.payload)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        for ok in ["replayed.orders", "x", "mesh_copy.a"] {
            check_target("--republish", ok, false).unwrap();
            check_target("--to", ok, true).unwrap();
        }
        check_target("--to", "mesh.evt.e1.jobs.run", true).unwrap();
        for (bad, needle) in [
            ("mesh.evt.e1.jobs.run", "a second time"),
            ("mesh.audit.x", "inside mesh.>"),
            ("$JS.API.STREAM.PURGE.MESH_DLQ", "system"),
            ("_INBOX.x", "reply subject"),
            ("a.*", "wildcard"),
            ("a..b", "empty token"),
        ] {
            let e = check_target("--republish", bad, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        for bad in [
            "mesh.dlq.e1.x",
            "mesh.audit.x",
            "mesh.evt.e1",
            "mesh.up.e1",
            "mesh",
        ] {
            let e = check_target("--to", bad, true).unwrap_err().to_string();
            assert!(e.contains("a redrive may go to"), "{bad}: {e}");
        }
    }

    #[test]
    fn reply_format() {
        let ok = reply(Ok(PurgeReply { purged: 2 }));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&ok).unwrap(),
            serde_json::json!({"result": "ok", "purged": 2})
        );
        let err = reply::<PurgeReply>(Err(OpError::UnknownVerb { verb: "x".into() }));
        let v: OpReply<PurgeReply> = serde_json::from_slice(&err).unwrap();
        assert!(
            matches!(v, OpReply::Err { message } if message.contains("unknown operator request"))
        );
    }
}
