//! The noisy neighbour: one agent (`calm`) publishing single events at a steady rate,
//! first alone, then while a second agent (`noisy`) floods the same edge hub at full
//! speed — 64 requests of 100 events in flight (`mesh pub`'s default), each refusal
//! answered at once with the next request, as a hostile or broken agent would. The
//! flooder runs on a thread and runtime of its own with its own connection, as another
//! process would: sharing the calm agent's runtime would put its encoding between the
//! calm agent and its acks. The flooder runs under the edge's default per-agent limits
//! (the bench's other agents have none); the calm agent's ack latency beside it, as a
//! ratio of its latency alone, is the isolation the edge gives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use agents::{Agent, AgentError};
use schemas::{ErrorCode, NewEvent};
use serde::Serialize;

use super::agentmesh::commit_histogram;
use super::load::{connect, mesh_latency};
use super::payload::Payloads;
use super::report::Latency;
use mesh_nats::client::ClientAuth;
use mesh_testkit::metrics::quantile_between;

/// The flooder's agent id; the bench's edge config gives it the default limits.
pub(super) const NOISY: &str = "noisy";
/// The calm agent's offered rate.
pub(super) const CALM_RATE: u64 = 100;
/// The flooder's requests in flight and events per request.
const FLOOD_INFLIGHT: usize = 64;
const FLOOD_BATCH: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub(super) struct Noisy {
    /// The calm agent alone.
    pub(super) alone: Latency,
    /// The calm agent beside the flooder.
    pub(super) beside: Latency,
    /// The flooder's limit (events/s), as configured for it.
    pub(super) flood_limit_per_s: f64,
    /// Events of the flooder acked per second while the calm agent ran beside it.
    pub(super) flood_acked_per_s: f64,
    /// The flooder's events acked in all.
    pub(super) flood_acked: u64,
    /// The flooder's requests refused `rate_limited`.
    pub(super) flood_rate_limited: u64,
}

/// Where and as whom the flooder connects.
pub(super) struct Flooder {
    pub(super) url: String,
    pub(super) auth: ClientAuth,
    pub(super) edge: String,
}

/// Runs both halves; the calm agent's publishes must all be acked (a refusal fails the
/// bench). Returns once the flooder stopped and every reply it waited for came.
pub(super) async fn bench_noisy(
    calm: &Agent,
    flooder: Flooder,
    flood_limit_per_s: f64,
    secs: f64,
    size: usize,
    edge_http: std::net::SocketAddr,
) -> anyhow::Result<Noisy> {
    let alone = timed(calm, secs, size, edge_http).await?;
    let flags = Arc::new(Flags::default());
    let f = flags.clone();
    let thread = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = connect(&flooder.url, &flooder.auth).await?;
            let agent = Agent::with_client(client, &flooder.edge, NOISY)?
                .with_timeout(std::time::Duration::from_secs(30));
            flood(agent, f, size).await
        })
    });
    let flooder = tokio::task::spawn_blocking(move || {
        thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the flooder's thread panicked")))
    });
    // A second for the flooder to reach full speed and empty its burst.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    flags.measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let beside = timed(calm, secs, size, edge_http).await;
    let elapsed = t.elapsed().as_secs_f64();
    flags.measuring.store(false, Ordering::Relaxed);
    flags.stop.store(true, Ordering::Relaxed);
    let (acked, refused) = flooder.await??;
    Ok(Noisy {
        alone,
        beside: beside?,
        flood_limit_per_s,
        flood_acked_per_s: flags.acked_measuring.load(Ordering::Relaxed) as f64 / elapsed,
        flood_acked: acked,
        flood_rate_limited: refused,
    })
}

/// The calm agent's run, with the edge's group-commit times meanwhile.
async fn timed(
    calm: &Agent,
    secs: f64,
    size: usize,
    edge_http: std::net::SocketAddr,
) -> anyhow::Result<Latency> {
    let before = commit_histogram(edge_http).await;
    let mut l = mesh_latency(calm, CALM_RATE, secs, size).await?;
    let after = commit_histogram(edge_http).await;
    let us = |q| quantile_between(&before, &after, q).map(|s| s * 1e6);
    l.commit_p50_us = us(0.5);
    l.commit_p99_us = us(0.99);
    Ok(l)
}

/// The flooder's controls and its count of events acked while the calm agent is measured.
#[derive(Default)]
struct Flags {
    stop: AtomicBool,
    measuring: AtomicBool,
    acked_measuring: AtomicU64,
}

/// Floods until `stop`, then takes the replies still due: returns the events acked and
/// the requests refused `rate_limited`.
async fn flood(agent: Agent, flags: Arc<Flags>, size: usize) -> anyhow::Result<(u64, u64)> {
    let mut pipe = agent.pipeline().await?;
    let mut payloads = Payloads::new(size, 7);
    let (mut acked, mut refused) = (0u64, 0u64);
    loop {
        while !flags.stop.load(Ordering::Relaxed) && pipe.in_flight() < FLOOD_INFLIGHT {
            let evs = (0..FLOOD_BATCH)
                .map(|_| NewEvent::new("bench", "bench.noisy", payloads.next()))
                .collect();
            pipe.send(evs).await?;
        }
        if pipe.in_flight() == 0 {
            break;
        }
        match pipe.next_reply().await {
            Some((_, Ok(ack))) => {
                let n = ack.last_seq - ack.first_seq + 1;
                acked += n;
                if flags.measuring.load(Ordering::Relaxed) {
                    flags.acked_measuring.fetch_add(n, Ordering::Relaxed);
                }
            }
            Some((
                _,
                Err(AgentError::Refused {
                    code: ErrorCode::RateLimited,
                    ..
                }),
            )) => refused += 1,
            Some((_, Err(e))) => anyhow::bail!("the flooder's publish failed: {e}"),
            None => break,
        }
    }
    Ok((acked, refused))
}
