//! Ingest: agents' publish requests in, durable acks out.
//!
//! The ingest task listens on `mesh.ingest.<edge>.*` (in a queue group, so that a second
//! hub started by mistake for the same edge id cannot store a request twice; one edge id
//! is one hub process with one outbox) and checks each request completely — subject, agent
//! id, body, every event — before anything is stored; a refusal names the problem (G7).
//! Valid requests go to the committer, which gathers every request waiting at that
//! moment into one group commit: one sled record, one flush, then an ack to each request
//! with its `ce-meshseq` range (G1), then the live copies on `mesh.live.<edge>.…` (G6).
//!
//! A request may be a MessagePack [`IngestRequest`] batch, or a single event in the
//! CloudEvents binary mode (a `ce-type` header, the data as payload) for clients that
//! do not speak MessagePack. The agent is always the subject's last token.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message, Subject};
use bytes::Bytes;
use futures::StreamExt;
use schemas::{headers as h, subject, ErrorCode, IngestReply, IngestRequest, Limits, NewEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::EdgeMetrics;
use crate::outbox::{OutboxError, OutboxWriter};

/// One validated request waiting for its group commit.
pub struct Job {
    reply: Option<Subject>,
    agent: String,
    events: Vec<NewEvent>,
    data_bytes: u64,
}

/// Listens for ingest requests until `shutdown`, then unsubscribes and hands the
/// requests already received to the committer before returning (dropping `jobs`
/// closes the committer's queue).
pub async fn run_ingest(
    client: async_nats::Client,
    edge: String,
    limits: Limits,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<EdgeMetrics>,
    subscribed: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client
        .queue_subscribe(subject::ingest_filter(&edge), format!("mesh-edge-{edge}"))
        .await?;
    // The subscription is registered at the server once the client flushed it.
    let _ = client.flush().await;
    let _ = subscribed.send(());
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => handle(&client, &edge, &limits, &jobs, &metrics, msg).await,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        }
    }
    // Stop new requests, then answer every request the client library already holds.
    let _ = sub.unsubscribe().await;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        handle(&client, &edge, &limits, &jobs, &metrics, msg).await;
    }
    Ok(())
}

async fn handle(
    client: &async_nats::Client,
    edge: &str,
    limits: &Limits,
    jobs: &mpsc::Sender<Job>,
    metrics: &EdgeMetrics,
    msg: Message,
) {
    match parse(edge, limits, &msg) {
        Ok((agent, events)) => {
            let data_bytes = events.iter().map(|e| e.data.len() as u64).sum();
            let job = Job {
                reply: msg.reply,
                agent,
                events,
                data_bytes,
            };
            if let Err(mpsc::error::SendError(job)) = jobs.send(job).await {
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
        Err((code, message)) => reply_err(client, msg.reply, code, message, metrics).await,
    }
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
    let binary = msg
        .headers
        .as_ref()
        .and_then(|hm| hm.get(h::TYPE).map(|_| hm));
    let events = match binary {
        Some(hm) => {
            let ev = binary_event(hm, msg.payload.clone());
            ev.validate(limits)
                .map_err(|e| (ErrorCode::of(&e), e.to_string()))?;
            vec![ev]
        }
        None => {
            IngestRequest::decode(&msg.payload, limits)
                .map_err(|e| (ErrorCode::of(&e), e.to_string()))?
                .events
        }
    };
    Ok((agent.to_string(), events))
}

/// A single event in CloudEvents binary mode: attributes from headers, data as payload.
fn binary_event(hm: &HeaderMap, data: Bytes) -> NewEvent {
    let get = |n: &str| hm.get(n).map(|v| v.as_str().to_string());
    NewEvent {
        id: get(h::ID).and_then(|s| s.parse().ok()),
        ty: get(h::TYPE).unwrap_or_default(),
        subject: get(h::SUBJECT).unwrap_or_default(),
        time_ns: get(h::TIME)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
            .and_then(|t| t.timestamp_nanos_opt()),
        content_type: get(h::CONTENT_TYPE),
        dataschema: get(h::DATASCHEMA),
        correlation_id: get(h::CORRELATION_ID),
        causation_id: get(h::CAUSATION_ID),
        traceparent: get(h::TRACEPARENT),
        tracestate: get(h::TRACESTATE),
        data,
    }
}

async fn reply_err(
    client: &async_nats::Client,
    reply: Option<Subject>,
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
    let body = IngestReply::Err { code, message }.encode();
    if let Err(e) = client.publish_with_headers(reply, hm, body.into()).await {
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
    commit_max_events: usize,
    commit_max_bytes: usize,
    live: bool,
    metrics: Arc<EdgeMetrics>,
) {
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<Job> = None;
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
        let first = match pending.take() {
            Some(j) => j,
            None => tokio::select! {
                j = jobs.recv() => match j { Some(j) => j, None => break },
                _ = expiry.tick() => {
                    if let Err(e) = writer.expire().await {
                        tracing::error!(error = %e, "outbox expiry failed");
                    }
                    continue;
                }
            },
        };
        let mut batch = vec![first];
        let mut count = batch[0].events.len();
        let mut bytes = batch[0].data_bytes as usize;
        while count < commit_max_events && bytes < commit_max_bytes {
            match jobs.try_recv() {
                Ok(j) => {
                    if count + j.events.len() > commit_max_events && count > 0 {
                        pending = Some(j);
                        break;
                    }
                    count += j.events.len();
                    bytes += j.data_bytes as usize;
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        commit(
            &client,
            &edge,
            &mut writer,
            batch,
            live_tx.as_ref(),
            &metrics,
        )
        .await;
    }
    if let Err(e) = writer.flush().await {
        tracing::error!(error = %e, "final outbox flush failed");
    }
    drop(live_tx);
    if let Some(t) = live_task {
        let _ = t.await;
    }
}

async fn commit(
    client: &async_nats::Client,
    edge: &str,
    writer: &mut OutboxWriter,
    batch: Vec<Job>,
    live: Option<&mpsc::Sender<Vec<schemas::Event>>>,
    metrics: &EdgeMetrics,
) {
    let count: usize = batch.iter().map(|j| j.events.len()).sum();
    let bytes: u64 = batch.iter().map(|j| j.data_bytes).sum();
    let now = chrono::Utc::now();
    let started = std::time::Instant::now();
    // Events are moved into the record; the jobs keep their reply subject and size.
    let mut parts: Vec<(Option<Subject>, usize)> = Vec::with_capacity(batch.len());
    let mut sources: Vec<(String, Vec<NewEvent>)> = Vec::with_capacity(batch.len());
    for j in batch {
        parts.push((j.reply, j.events.len()));
        sources.push((j.agent, j.events));
    }
    let result = writer
        .append(count, bytes, |first| {
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
                    if let Err(e) = client.publish(reply, reply_body.encode().into()).await {
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
