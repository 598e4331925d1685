//! Ingest: agents' publish requests in, durable acks out.
//!
//! The ingest task listens on `mesh.ingest.<edge>.*` (in a queue group, so that a second
//! hub started by mistake for the same edge id cannot store a request twice; one edge id
//! is one hub process with one outbox) and checks each request completely — subject, agent
//! id, body, every event — before anything is stored; a refusal names the problem (G7).
//! Then the agent's limits (`limits`): a request over its events/s or bytes/s is refused
//! `rate_limited` with `mesh-retry-after-ms`, and nothing of it is stored; the refusal is
//! held back until the agent may retry (paced, see `limits`), by a task of its own so
//! the ingest task goes on.
//! Valid requests go to the committer, which gathers the requests waiting at that
//! moment into one group commit: one sled record, one flush, then an ack to each request
//! with its `ce-meshseq` range (G1), then the live copies on `mesh.live.<edge>.…` (G6).
//! When more waits than a commit holds, the agents share it fairly (`fair`: deficit
//! round robin over per-agent queues).
//!
//! A request that carries `mesh-producer` and `mesh-request` (the SDK's do) is exactly
//! once: one sent again after it was stored gets its original ack and stores nothing
//! (the outbox keeps each producer's last acks, written with the records; see
//! `outbox::producers`); one sent again while it waits for its commit is refused
//! `rate_limited` with a short retry time.
//!
//! A request may be an [`IngestRequest`] batch in MessagePack or JSON, CloudEvents in
//! structured mode (one or a batch), or one event in CloudEvents binary mode (`ce-*`
//! headers, the data as payload): the `content-type` header says which
//! ([`BodyFormat`], `docs/PROTOCOL.md`). The agent is always the subject's last token.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{HeaderMap, Message, Subject};
use futures::StreamExt;
use schemas::{
    headers as h, subject, BodyFormat, ErrorCode, IngestReply, IngestRequest, Limits, NewEvent,
    SchemaError,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fair::{Cost, Fair};
use crate::limits::{InFlight, Limiter, Refusal};
use crate::metrics::EdgeMetrics;
use crate::outbox::{Fingerprint, IdCheck, Outbox, OutboxError, OutboxWriter, RequestId, Seen};

/// Requests the committer takes out of the job queue into its per-agent queues, at most
/// (the job queue's own bound then holds the ingest task back).
const MAX_QUEUED: usize = 1024;

/// Refusals held back at once, at most; past this they are sent at once, with the hold
/// added to their retry time.
const MAX_HELD: usize = 8192;

/// How long an agent is told to wait before asking again for a request still waiting
/// for its commit.
const PENDING_RETRY: Duration = Duration::from_millis(20);

/// The requests (by `mesh-producer` / `mesh-request`) and the supplied event ids taken
/// by the ingest task and not yet committed.
#[derive(Debug, Clone, Default)]
pub struct Pending(Arc<Mutex<PendingSets>>);

#[derive(Debug, Default)]
struct PendingSets {
    requests: HashSet<RequestId>,
    ids: HashSet<Fingerprint>,
}

impl Pending {
    fn sets(&self) -> std::sync::MutexGuard<'_, PendingSets> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn contains(&self, id: &RequestId) -> bool {
        self.sets().requests.contains(id)
    }
    fn any_id(&self, fps: &[Fingerprint]) -> Option<usize> {
        let sets = self.sets();
        fps.iter().position(|fp| sets.ids.contains(fp))
    }
    fn insert(&self, id: Option<&RequestId>, fps: &[Fingerprint]) {
        let mut sets = self.sets();
        if let Some(id) = id {
            sets.requests.insert(id.clone());
        }
        sets.ids.extend(fps.iter().copied());
    }
    fn remove(&self, id: Option<&RequestId>, fps: &[Fingerprint]) {
        let mut sets = self.sets();
        if let Some(id) = id {
            sets.requests.remove(id);
        }
        for fp in fps {
            sets.ids.remove(fp);
        }
    }
}

/// What ingest needs of the outbox and the committer, besides its own limiter.
#[derive(Clone)]
pub struct Shared {
    pub outbox: Arc<Outbox>,
    pub pending: Pending,
}

/// Where a request is answered, and how: in JSON when it was JSON or in CloudEvents
/// binary mode ([`IngestReply::in_json`], with `content-type: application/json`), else
/// in MessagePack as always.
#[derive(Clone)]
pub struct Reply {
    subject: Subject,
    json: bool,
}

impl Reply {
    fn of(msg: &Message) -> Option<Reply> {
        Some(Reply {
            subject: msg.reply.clone()?,
            json: IngestReply::in_json(msg.headers.as_ref()),
        })
    }

    /// Sends `body`, with `headers` (plus the content type of a JSON reply).
    async fn send(
        self,
        client: &async_nats::Client,
        mut headers: HeaderMap,
        body: &IngestReply,
    ) -> Result<(), async_nats::PublishError> {
        let bytes = if self.json {
            headers.insert(h::CONTENT_TYPE, "application/json");
            body.encode_json()
        } else {
            body.encode()
        };
        if headers.is_empty() {
            client.publish(self.subject, bytes.into()).await
        } else {
            client
                .publish_with_headers(self.subject, headers, bytes.into())
                .await
        }
    }
}

/// One validated request waiting for its group commit.
pub struct Job {
    reply: Option<Reply>,
    /// Its `mesh-producer` / `mesh-request`, when it has them.
    id: Option<RequestId>,
    /// The fingerprints of the event ids it supplied (pending until committed).
    fps: Vec<Fingerprint>,
    agent: String,
    events: Vec<NewEvent>,
    data_bytes: u64,
}

impl Cost for Job {
    fn agent(&self) -> &str {
        &self.agent
    }
    fn events(&self) -> usize {
        self.events.len()
    }
    fn bytes(&self) -> usize {
        self.data_bytes as usize
    }
}

/// Listens for ingest requests until `shutdown`, then unsubscribes and hands the
/// requests already received to the committer before returning (dropping `jobs`
/// closes the committer's queue).
#[allow(clippy::too_many_arguments)]
pub async fn run_ingest(
    client: async_nats::Client,
    edge: String,
    limits: Limits,
    mut limiter: Limiter,
    shared: Shared,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<EdgeMetrics>,
    subscribed: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client
        .queue_subscribe(subject::ingest_filter(&edge), format!("mesh-edge-{edge}"))
        .await?;
    let held = Arc::new(AtomicUsize::new(0));
    // The subscription is registered at the server once the client flushed it.
    let _ = client.flush().await;
    let _ = subscribed.send(());
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => handle(&client, &edge, &limits, &mut limiter, &shared, &jobs, &metrics, &held, msg).await,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        }
    }
    // Stop new requests, then answer every request the client library already holds.
    let _ = sub.unsubscribe().await;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        handle(
            &client,
            &edge,
            &limits,
            &mut limiter,
            &shared,
            &jobs,
            &metrics,
            &held,
            msg,
        )
        .await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    client: &async_nats::Client,
    edge: &str,
    limits: &Limits,
    limiter: &mut Limiter,
    shared: &Shared,
    jobs: &mpsc::Sender<Job>,
    metrics: &EdgeMetrics,
    held: &Arc<AtomicUsize>,
    msg: Message,
) {
    let now = std::time::Instant::now();
    let reply = Reply::of(&msg);
    let id = match request_id(edge, &msg) {
        Ok(id) => id,
        Err(message) => {
            return reply_err(client, reply.clone(), ErrorCode::Invalid, message, metrics).await;
        }
    };
    if let Some(id) = &id {
        // Sent again: answered from what the outbox holds, before any limit.
        if shared.pending.contains(id) {
            let r = Refusal {
                message: format!(
                    "request {} of producer {} is still waiting for its commit; nothing was stored twice",
                    id.request, id.producer
                ),
                hold: Duration::ZERO,
                retry_after: PENDING_RETRY,
            };
            return reply_rate_limited(client, reply.clone(), r, metrics, held).await;
        }
        match shared.outbox.seen(id) {
            Ok(Seen::Stored {
                first_seq,
                last_seq,
            }) => {
                metrics.repeated();
                if let Some(reply) = reply {
                    let body = IngestReply::Ok {
                        first_seq,
                        last_seq,
                    };
                    if let Err(e) = reply.send(client, HeaderMap::new(), &body).await {
                        tracing::warn!(error = %e, "cannot send an ingest ack");
                    }
                }
                return;
            }
            Ok(Seen::TooOld { oldest }) => {
                let message = format!(
                    "request {} of producer {} is older than the {} this edge remembers \
                     (oldest {oldest}): it may or may not have been stored; nothing was stored now",
                    id.request,
                    id.producer,
                    crate::outbox::PRODUCER_WINDOW
                );
                return reply_err(client, reply.clone(), ErrorCode::Invalid, message, metrics)
                    .await;
            }
            Ok(Seen::New) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the producers' acks");
                return reply_err(
                    client,
                    reply.clone(),
                    ErrorCode::Storage,
                    e.to_string(),
                    metrics,
                )
                .await;
            }
        }
    }
    if let Some(agent) = subject::agent_of_ingest(edge, &msg.subject) {
        if let Some(r) = limiter
            .too_many_in_flight(agent)
            .or_else(|| limiter.empty(agent, now))
        {
            metrics.rate_limited(&limiter.label(agent));
            reply_rate_limited(client, reply.clone(), r, metrics, held).await;
            return;
        }
    }
    match parse(edge, limits, &msg) {
        Ok((agent, events)) => {
            let fps = match check_ids(shared, &agent, &events) {
                Ok(fps) => fps,
                Err(IdRefusal::Now(code, message)) => {
                    return reply_err(client, reply.clone(), code, message, metrics).await;
                }
                Err(IdRefusal::Pending(r)) => {
                    return reply_rate_limited(client, reply.clone(), r, metrics, held).await;
                }
            };
            let data_bytes = events.iter().map(|e| e.data.len() as u64).sum();
            if let Some(message) = over_quota(shared, limiter, &agent, events.len(), data_bytes) {
                return reply_quota(client, reply.clone(), message, metrics).await;
            }
            if let Err(r) = limiter.admit(&agent, events.len() as u64, data_bytes, now) {
                metrics.rate_limited(&limiter.label(&agent));
                reply_rate_limited(client, reply.clone(), r, metrics, held).await;
                return;
            }
            let inflight = limiter.inflight();
            inflight.take(&agent);
            shared.pending.insert(id.as_ref(), &fps);
            let job = Job {
                reply: reply.clone(),
                id,
                fps,
                agent,
                events,
                data_bytes,
            };
            if let Err(mpsc::error::SendError(job)) = jobs.send(job).await {
                inflight.release(&job.agent);
                shared.pending.remove(job.id.as_ref(), &job.fps);
                reply_err(
                    client,
                    job.reply,
                    ErrorCode::ShuttingDown,
                    "the edge hub is shutting down".into(),
                    metrics,
                )
                .await;
            }
        }
        Err((code, message)) => reply_err(client, reply.clone(), code, message, metrics).await,
    }
}

/// The request's `mesh-producer` / `mesh-request`, if it has them (both or neither).
fn request_id(edge: &str, msg: &Message) -> Result<Option<RequestId>, String> {
    let Some(hm) = msg.headers.as_ref() else {
        return Ok(None);
    };
    let (p, r) = match (hm.get(h::MESH_PRODUCER), hm.get(h::MESH_REQUEST)) {
        (None, None) => return Ok(None),
        (Some(p), Some(r)) => (p.as_str(), r.as_str()),
        _ => {
            return Err(format!(
                "a request carries both {} and {}, or neither",
                h::MESH_PRODUCER,
                h::MESH_REQUEST
            ))
        }
    };
    let producer = uuid::Uuid::parse_str(p)
        .map_err(|e| format!("header {} {p:?} is not a UUID: {e}", h::MESH_PRODUCER))?;
    let request = r
        .parse::<u64>()
        .map_err(|_| format!("header {} {r:?} is not a number", h::MESH_REQUEST))?;
    let Some(agent) = subject::agent_of_ingest(edge, &msg.subject) else {
        return Ok(None);
    };
    Ok(Some(RequestId {
        agent: agent.to_string(),
        producer,
        request,
    }))
}

/// How long an agent over its outbox quota is told to wait: the outbox drains only as
/// the centre takes it.
const QUOTA_RETRY: Duration = Duration::from_secs(1);

/// Under `reject`, why a request of `agent` would take it past its share of the outbox
/// (`limits.outbox_share`), or `None`. Counted like a commit's room: data plus 96 bytes
/// an event, against the bytes its records hold (requests not yet committed are not
/// counted: at most `limits.max_inflight` of them).
fn over_quota(
    shared: &Shared,
    limiter: &Limiter,
    agent: &str,
    events: usize,
    data_bytes: u64,
) -> Option<String> {
    let cfg = shared.outbox.cfg();
    let share = limiter.outbox_share(agent);
    if cfg.full_policy != crate::config::FullPolicy::Reject || share >= 1.0 {
        return None;
    }
    let quota = (cfg.max_bytes as f64 * share) as u64;
    let held = shared.outbox.held_bytes(agent);
    let need = data_bytes + 96 * events as u64;
    (held + need > quota).then(|| {
        format!(
            "agent {agent} holds {held} bytes of this edge's outbox and this request needs \
             {need} more, past its share: limits.outbox_share = {share} of outbox.max_bytes \
             ({}), {quota} bytes; nothing was stored. The outbox drains as the centre takes \
             it; other agents keep their room",
            cfg.max_bytes
        )
    })
}

/// Refuses a request `quota_exceeded`, with `mesh-retry-after-ms`.
async fn reply_quota(
    client: &async_nats::Client,
    reply: Option<Reply>,
    message: String,
    metrics: &EdgeMetrics,
) {
    let code = ErrorCode::QuotaExceeded;
    metrics.rejected(code.as_str());
    if let Some(reply) = reply {
        send_retry_later(client, reply, code, message, QUOTA_RETRY).await;
    }
}

/// Why the `ce-id` rule refused a request.
enum IdRefusal {
    /// Refused for good (`duplicate` or `invalid`).
    Now(ErrorCode, String),
    /// An id waits for its commit in another request: ask again shortly.
    Pending(Refusal),
}

/// The `ce-id` rule (`outbox::ids`) for the ids `agent` supplied in one request: their
/// fingerprints, or why the request is refused.
fn check_ids(
    shared: &Shared,
    agent: &str,
    events: &[NewEvent],
) -> Result<Vec<Fingerprint>, IdRefusal> {
    let supplied: Vec<&uuid::Uuid> = events.iter().filter_map(|e| e.id.as_ref()).collect();
    if supplied.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = shared.outbox.cfg();
    let fps = shared
        .outbox
        .check_ids(agent, supplied.iter().copied())
        .map_err(|(id, why)| {
            let invalid = |m: String| IdRefusal::Now(ErrorCode::Invalid, m);
            let age = || {
                let ms =
                    crate::outbox::ids::now_ms().saturating_sub(crate::outbox::ids::v7_ms(&id));
                humantime_serde::re::humantime::format_duration(Duration::from_secs(ms / 1000))
            };
            let horizon = humantime_serde::re::humantime::format_duration(cfg.id_horizon);
            match why {
                IdCheck::Stored => IdRefusal::Now(
                    ErrorCode::Duplicate,
                    format!(
                        "ce-id {id} of agent {agent} is stored at this edge already; nothing of \
                         this request was stored (the stored event stands)"
                    ),
                ),
                IdCheck::NotV7(v) => invalid(format!(
                    "ce-id {id} is a version {v} UUID: a ce-id an agent supplies must be a \
                     UUIDv7, whose time lets the edge tell a copy from a new event for \
                     outbox.id_horizon ({horizon}); or leave it out to have the edge assign one"
                )),
                IdCheck::Ahead(ms) => invalid(format!(
                    "ce-id {id} was made {:.1} s ahead of this edge's clock (at most {} s); \
                     check the agent's clock",
                    ms as f64 / 1000.0,
                    crate::outbox::ids::MAX_AHEAD.as_secs()
                )),
                IdCheck::PastHorizon => invalid(format!(
                    "ce-id {id} was made {} ago, before outbox.id_horizon ({horizon}): this edge \
                     no longer remembers ids that old, so it cannot tell a copy from a new \
                     event; publish the event with a new id",
                    age()
                )),
                IdCheck::Forgotten => invalid(format!(
                    "ce-id {id} was made {} ago: this edge remembers at most outbox.max_ids \
                     ({}) ids and has forgotten ids that old before outbox.id_horizon \
                     ({horizon}), so it cannot tell a copy from a new event; publish the \
                     event with a new id",
                    age(),
                    cfg.max_ids
                )),
                IdCheck::New => unreachable!("a new id is not refused"),
            }
        })?;
    if fps.len() > 1 {
        let mut seen = HashSet::with_capacity(fps.len());
        for (fp, id) in fps.iter().zip(&supplied) {
            if !seen.insert(*fp) {
                return Err(IdRefusal::Now(
                    ErrorCode::Invalid,
                    format!("ce-id {id} appears twice in this request; nothing was stored"),
                ));
            }
        }
    }
    if let Some(k) = shared.pending.any_id(&fps) {
        return Err(IdRefusal::Pending(Refusal {
            message: format!(
                "ce-id {} is in another request still waiting for its commit; nothing was \
                 stored twice",
                supplied[k]
            ),
            hold: Duration::ZERO,
            retry_after: PENDING_RETRY,
        }));
    }
    Ok(fps)
}

fn parse(
    edge: &str,
    limits: &Limits,
    msg: &Message,
) -> Result<(String, Vec<NewEvent>), (ErrorCode, String)> {
    let agent = subject::agent_of_ingest(edge, &msg.subject).ok_or_else(|| {
        (
            ErrorCode::Invalid,
            format!(
                "subject {:?} is not mesh.ingest.{edge}.<agent>",
                msg.subject.as_str()
            ),
        )
    })?;
    subject::validate_id("agent", agent).map_err(|e| (ErrorCode::Invalid, e.to_string()))?;
    let refuse = |e: SchemaError| (ErrorCode::of(&e), e.to_string());
    let source = format!("mesh://{edge}/{agent}");
    let content_type = msg
        .headers
        .as_ref()
        .and_then(|hm| hm.get(h::CONTENT_TYPE))
        .map(|v| v.as_str());
    // The NATS binding: a CloudEvents content type is structured mode; otherwise `ce-`
    // headers are binary mode (where `content-type` is the data's); otherwise the
    // content type names the body's format.
    let binary = msg.headers.as_ref().filter(|hm| {
        !BodyFormat::is_structured(content_type)
            && (hm.get(h::TYPE).is_some() || hm.get(h::SPECVERSION).is_some())
    });
    let events = match binary {
        Some(hm) => {
            let ev = NewEvent::from_binary(hm, msg.payload.clone(), &source).map_err(refuse)?;
            ev.validate(limits).map_err(refuse)?;
            vec![ev]
        }
        None => {
            let format = BodyFormat::of(content_type).map_err(refuse)?;
            IngestRequest::decode_as(format, &msg.payload, limits, &source)
                .map_err(refuse)?
                .events
        }
    };
    Ok((agent.to_string(), events))
}

async fn reply_err(
    client: &async_nats::Client,
    reply: Option<Reply>,
    code: ErrorCode,
    message: String,
    metrics: &EdgeMetrics,
) {
    metrics.rejected(code.as_str());
    tracing::debug!(code = code.as_str(), %message, "ingest refused");
    let Some(reply) = reply else {
        tracing::warn!(code = code.as_str(), %message, "refused a request that has no reply subject");
        return;
    };
    let mut hm = HeaderMap::new();
    hm.insert(h::MESH_ERROR, code.as_str());
    let body = IngestReply::Err { code, message };
    if let Err(e) = reply.send(client, hm, &body).await {
        tracing::warn!(error = %e, "cannot send an ingest error reply");
    }
}

/// Refuses a request `rate_limited`, with `mesh-retry-after-ms`, after holding the
/// refusal back for `r.hold` (from a task of its own; at once past [`MAX_HELD`]).
async fn reply_rate_limited(
    client: &async_nats::Client,
    reply: Option<Reply>,
    mut r: Refusal,
    metrics: &EdgeMetrics,
    held: &Arc<AtomicUsize>,
) {
    let code = ErrorCode::RateLimited;
    metrics.rejected(code.as_str());
    let Some(reply) = reply else {
        return;
    };
    if !r.hold.is_zero() {
        if held.fetch_add(1, Ordering::Relaxed) < MAX_HELD {
            let (client, held) = (client.clone(), held.clone());
            tokio::spawn(async move {
                tokio::time::sleep(r.hold).await;
                send_rate_limited(&client, reply, r).await;
                held.fetch_sub(1, Ordering::Relaxed);
            });
            return;
        }
        held.fetch_sub(1, Ordering::Relaxed);
        r.retry_after += r.hold;
    }
    send_rate_limited(client, reply, r).await;
}

async fn send_rate_limited(client: &async_nats::Client, reply: Reply, r: Refusal) {
    send_retry_later(
        client,
        reply,
        ErrorCode::RateLimited,
        r.text(),
        r.retry_after,
    )
    .await;
}

/// Sends a refusal that says when to try again (`mesh-retry-after-ms`).
async fn send_retry_later(
    client: &async_nats::Client,
    reply: Reply,
    code: ErrorCode,
    message: String,
    retry_after: Duration,
) {
    let mut hm = HeaderMap::new();
    hm.insert(h::MESH_ERROR, code.as_str());
    hm.insert(
        h::MESH_RETRY_AFTER_MS,
        retry_after.as_millis().to_string().as_str(),
    );
    let body = IngestReply::Err { code, message };
    if let Err(e) = reply.send(client, hm, &body).await {
        tracing::warn!(error = %e, "cannot send an ingest error reply");
    }
}

/// Gathers waiting jobs into group commits until the job queue closes, expiring old
/// records between commits; flushes the outbox on the way out.
#[allow(clippy::too_many_arguments)]
pub async fn run_committer(
    client: async_nats::Client,
    edge: String,
    mut writer: OutboxWriter,
    mut jobs: mpsc::Receiver<Job>,
    inflight: InFlight,
    pending: Pending,
    commit_max_events: usize,
    commit_max_bytes: usize,
    live: bool,
    metrics: Arc<EdgeMetrics>,
) {
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fair: Fair<Job> = Fair::default();
    let (live_tx, live_task) = if live {
        // Two commits: the live copies of one go out while the next commits. A longer
        // queue holds whole commits in memory when the live task falls behind (measured:
        // 64 commits took the edge hub from 245 MiB to 528 MiB in the bench's 1M fill).
        let (tx, rx) = mpsc::channel(2);
        (Some(tx), Some(tokio::spawn(run_live(client.clone(), rx))))
    } else {
        (None, None)
    };
    loop {
        if fair.is_empty() {
            tokio::select! {
                j = jobs.recv() => match j { Some(j) => fair.push(j), None => break },
                _ = expiry.tick() => {
                    if let Err(e) = writer.expire().await {
                        tracing::error!(error = %e, "outbox expiry failed");
                    }
                    continue;
                }
            }
        }
        // Everything waiting now (bounded), then the commit's fair share of it.
        while fair.len() < MAX_QUEUED {
            match jobs.try_recv() {
                Ok(j) => fair.push(j),
                Err(_) => break,
            }
        }
        let mut batch = fair.take(commit_max_events, commit_max_bytes);
        let agents: Vec<(String, Option<RequestId>, Vec<Fingerprint>)> = batch
            .iter_mut()
            .map(|j| (j.agent.clone(), j.id.clone(), std::mem::take(&mut j.fps)))
            .collect();
        // Given back once the commit is durable (or failed) and before any reply goes
        // out: a client that sends its next request on a reply must find its count
        // already down, or a window of `max_inflight` would be refused.
        let release = || {
            for (a, id, fps) in &agents {
                inflight.release(a);
                pending.remove(id.as_ref(), fps);
            }
        };
        commit(
            &client,
            &edge,
            &mut writer,
            batch,
            live_tx.as_ref(),
            &metrics,
            release,
        )
        .await;
    }
    if let Err(e) = writer.flush().await {
        tracing::error!(error = %e, "final outbox flush failed");
    }
    drop(live_tx);
    // The outbox is flushed; live copies still queued go out if the connection takes
    // them soon (they are best effort: subscribers read the centre for the rest).
    if let Some(mut t) = live_task {
        if tokio::time::timeout(Duration::from_secs(2), &mut t)
            .await
            .is_err()
        {
            tracing::warn!("live copies still queued at shutdown were not sent");
            t.abort();
        }
    }
}

async fn commit(
    client: &async_nats::Client,
    edge: &str,
    writer: &mut OutboxWriter,
    batch: Vec<Job>,
    live: Option<&mpsc::Sender<Vec<schemas::Event>>>,
    metrics: &EdgeMetrics,
    release: impl FnOnce(),
) {
    let count: usize = batch.iter().map(|j| j.events.len()).sum();
    let bytes: u64 = batch.iter().map(|j| j.data_bytes).sum();
    let now = chrono::Utc::now();
    let started = std::time::Instant::now();
    // Events are moved into the record; the jobs keep their reply subject and size.
    let mut parts: Vec<(Option<Reply>, usize)> = Vec::with_capacity(batch.len());
    let mut sources: Vec<(String, Vec<NewEvent>)> = Vec::with_capacity(batch.len());
    let mut requests: Vec<(RequestId, u64, u64)> = Vec::new();
    let mut offset = 0u64;
    for j in batch {
        let n = j.events.len() as u64;
        if let Some(id) = j.id {
            requests.push((id, offset, n));
        }
        offset += n;
        parts.push((j.reply, j.events.len()));
        sources.push((j.agent, j.events));
    }
    let result = writer
        .append_acked(count, bytes, &requests, |first| {
            let mut seq = first;
            let mut out = Vec::with_capacity(count);
            for (agent, evs) in sources {
                for ev in evs {
                    out.push(ev.into_event(edge, &agent, seq, now));
                    seq += 1;
                }
            }
            out
        })
        .await;
    release();
    match result {
        Ok(c) => {
            metrics.committed(count as u64, started.elapsed());
            let mut seq = c.first_seq;
            for (reply, n) in parts {
                let reply_body = IngestReply::Ok {
                    first_seq: seq,
                    last_seq: seq + n as u64 - 1,
                };
                seq += n as u64;
                if let Some(reply) = reply {
                    if let Err(e) = reply.send(client, HeaderMap::new(), &reply_body).await {
                        tracing::warn!(error = %e, "cannot send an ingest ack");
                    }
                }
            }
            if let Some(live) = live {
                // Live copies go out from their own task, so the next group commit does
                // not wait behind thousands of publishes; a full queue slows commits.
                let _ = live.send(c.events).await;
            }
        }
        Err(e) => {
            let code = match e {
                OutboxError::Full { .. } | OutboxError::TooLarge { .. } => ErrorCode::OutboxFull,
                _ => ErrorCode::Storage,
            };
            if code == ErrorCode::Storage {
                tracing::error!(error = %e, "group commit failed");
            }
            for (reply, _) in parts {
                reply_err(client, reply, code, e.to_string(), metrics).await;
            }
        }
    }
}

/// Publishes the live copy of every committed event, in commit order, on
/// `mesh.live.<edge>.<subject>` (core NATS), until the committer closes the queue.
async fn run_live(client: async_nats::Client, mut commits: mpsc::Receiver<Vec<schemas::Event>>) {
    let mut build = schemas::MessageBuilder::new();
    while let Some(events) = commits.recv().await {
        for ev in events {
            let (subj, headers) = build.live(&ev);
            if let Err(e) = client.publish_with_headers(subj, headers, ev.data).await {
                tracing::warn!(error = %e, "cannot publish a live copy");
                break;
            }
        }
    }
}

/// Answers `mesh.hub.discover` with this edge's id and its nats-server's id, until
/// `shutdown`.
pub async fn run_discover(client: async_nats::Client, edge: String, shutdown: CancellationToken) {
    let mut sub = match client.subscribe(subject::HUB_DISCOVER).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to discovery requests");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => return },
            _ = shutdown.cancelled() => return,
        };
        let Some(reply) = msg.reply else { continue };
        let info = client.server_info();
        let hello = schemas::EdgeHello {
            edge: edge.clone(),
            server_id: info.server_id,
            server_name: info.server_name,
        };
        let body = serde_json::to_vec(&hello).unwrap_or_default();
        let _ = client.publish(reply, body.into()).await;
    }
}
