//! `mesh pub`: publish through the edge hub and report. The last line of output is always
//! the summary `acked=N failed=M ... p50_ms=… p99_ms=…` (ack latency of the requests
//! acked: from sending a request to its ack), also when connecting fails; the exit
//! status is 0 only when every event was acked. On a terminal, stderr shows the
//! progress once a second during long runs.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agents::{Agent, AgentError};
use clap::Args;
use schemas::NewEvent;

#[derive(Args)]
pub struct PubArgs {
    /// Edge nats-server URL.
    #[arg(long, env = "NATS_URL")]
    nats: String,
    #[command(flatten)]
    auth: crate::conn::AuthArgs,
    /// Agent id (the last token of the ingest subject).
    #[arg(long)]
    agent: String,
    /// Edge id; discovered from the edge hub when omitted.
    #[arg(long)]
    edge: Option<String>,
    /// Number of events.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Data size in bytes for generated payloads (ignored when DATA is given).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Events per second (0 = as fast as acks allow).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Events per ingest request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// ce-type of the events.
    #[arg(long = "type", default_value = "mesh.pub")]
    ty: String,
    /// How long to wait for each ack (`5s`, `500ms`, or seconds).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    timeout: Duration,
    /// Event subject (below mesh.evt.<edge>.).
    subject: String,
    /// Data of every event; generated when omitted.
    data: Option<String>,
}

struct Tally {
    acked: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    /// Ack latency of every acked request, in microseconds.
    latencies_us: Vec<u32>,
}

/// The `q` quantile (0..=1) of `sorted`, nearest rank, in milliseconds.
fn quantile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

/// Progress on stderr, once a second, when stderr is a terminal.
struct Progress {
    on: bool,
    next: Instant,
    shown: bool,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            on: std::io::stderr().is_terminal(),
            next: Instant::now() + Duration::from_secs(1),
            shown: false,
        }
    }

    fn tick(&mut self, t: &Tally, count: u64, started: Instant) {
        if !self.on || Instant::now() < self.next {
            return;
        }
        self.next += Duration::from_secs(1);
        let secs = started.elapsed().as_secs_f64();
        eprint!(
            "\r{} of {count} acked, {} failed, {:.0}/s, {:.0}s   ",
            t.acked,
            t.failed,
            t.acked as f64 / secs.max(1e-9),
            secs
        );
        self.shown = true;
    }

    fn done(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

impl Tally {
    fn fail(&mut self, n: u64, e: &AgentError) {
        self.failed += n;
        let key = match e {
            AgentError::Refused { code, .. } => code.as_str().to_string(),
            AgentError::Timeout(_) => "timeout".into(),
            AgentError::NoEdgeHub { .. } => "no_edge_hub".into(),
            AgentError::Connect { .. } | AgentError::Discover { .. } => "connect".into(),
            AgentError::Invalid(_) => "invalid".into(),
            _ => "request".into(),
        };
        *self.errors.entry(key).or_default() += n;
        if self.failed <= 5 * n {
            eprintln!("publish failed: {e}");
        }
    }
}

pub async fn run(a: PubArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut t = Tally {
        acked: 0,
        failed: 0,
        errors: BTreeMap::new(),
        first_seq: None,
        last_seq: None,
        latencies_us: Vec::new(),
    };
    let mut progress = Progress::new();
    let result = publish(&a, &mut t, &mut progress, started).await;
    progress.done();
    if let Err(e) = result {
        let unsent = a.count.saturating_sub(t.acked + t.failed);
        t.fail(unsent, &e);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut line = format!(
        "acked={} failed={} elapsed={:.3}s rate={:.0}/s",
        t.acked,
        t.failed,
        secs,
        t.acked as f64 / secs.max(1e-9)
    );
    if let (Some(f), Some(l)) = (t.first_seq, t.last_seq) {
        line.push_str(&format!(" first_seq={f} last_seq={l}"));
    }
    for (k, n) in &t.errors {
        line.push_str(&format!(" {k}={n}"));
    }
    t.latencies_us.sort_unstable();
    if let (Some(p50), Some(p99)) = (
        quantile_ms(&t.latencies_us, 0.50),
        quantile_ms(&t.latencies_us, 0.99),
    ) {
        line.push_str(&format!(" p50_ms={p50:.3} p99_ms={p99:.3}"));
    }
    println!("{line}");
    Ok(if t.failed == 0 && t.acked == a.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn publish(
    a: &PubArgs,
    t: &mut Tally,
    progress: &mut Progress,
    started: Instant,
) -> Result<(), AgentError> {
    let timeout = a.timeout;
    let agent = match &a.edge {
        Some(edge) => {
            let client = a
                .auth
                .client_auth()
                .connect(&a.nats, &format!("agent {}", a.agent))
                .await
                .map_err(|reason| AgentError::Connect {
                    url: a.nats.clone(),
                    reason,
                })?;
            Agent::with_client(client, edge, &a.agent)?
        }
        None => Agent::connect_with(&a.nats, &a.agent, &a.auth.client_auth()).await?,
    }
    .with_timeout(timeout);
    schemas::subject::validate_subject("SUBJECT", &a.subject)?;
    let data: bytes::Bytes = match &a.data {
        Some(d) => d.clone().into_bytes().into(),
        None => (0..a.size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>()
            .into(),
    };
    let batch = a.batch.max(1) as u64;
    let window = a.inflight.max(1);
    let mut pipe = agent.pipeline().await?;
    let mut sizes = std::collections::HashMap::new();
    let mut sent = 0u64;
    let start = tokio::time::Instant::now();
    while sent < a.count || pipe.in_flight() > 0 {
        if sent < a.count && pipe.in_flight() < window {
            if a.rate > 0.0 {
                // Take the replies that come while waiting for the next send, so each
                // ack's latency is measured when it arrives, not at the next send.
                let due = start + Duration::from_secs_f64(sent as f64 / a.rate);
                while pipe.in_flight() > 0 {
                    match tokio::time::timeout_at(due, pipe.next_reply()).await {
                        Ok(Some((token, r))) => record(t, &mut sizes, token, r),
                        Ok(None) | Err(_) => break,
                    }
                }
                tokio::time::sleep_until(due).await;
            }
            let n = batch.min(a.count - sent);
            let events = (0..n)
                .map(|_| NewEvent::new(a.ty.as_str(), a.subject.as_str(), data.clone()))
                .collect();
            let sent_at = Instant::now();
            let token = pipe.send(events).await?;
            sizes.insert(token, (n, sent_at));
            sent += n;
            // Keep sending while the window has room; collect replies that are ready.
            if a.rate == 0.0 && pipe.in_flight() < window && sent < a.count {
                continue;
            }
        }
        if pipe.in_flight() >= window || sent >= a.count || a.rate > 0.0 {
            let wait = if sent >= a.count || pipe.in_flight() >= window {
                None
            } else {
                Some(Duration::from_millis(1))
            };
            let next = match wait {
                None => pipe.next_reply().await,
                Some(d) => tokio::time::timeout(d, pipe.next_reply())
                    .await
                    .ok()
                    .flatten(),
            };
            progress.tick(t, a.count, started);
            if let Some((token, r)) = next {
                record(t, &mut sizes, token, r);
            }
        }
    }
    agent.drain().await
}

/// Counts the reply to request `token` (sent at the time `sizes` holds, with its size).
fn record(
    t: &mut Tally,
    sizes: &mut std::collections::HashMap<u64, (u64, Instant)>,
    token: u64,
    r: Result<agents::Ack, AgentError>,
) {
    let (n, sent_at) = sizes.remove(&token).unwrap_or((1, Instant::now()));
    match r {
        Ok(ack) => {
            let us = sent_at.elapsed().as_micros().min(u128::from(u32::MAX));
            t.latencies_us.push(us as u32);
            t.acked += n;
            t.first_seq.get_or_insert(ack.first_seq);
            t.last_seq = Some(t.last_seq.map_or(ack.last_seq, |l| l.max(ack.last_seq)));
        }
        Err(e) => t.fail(n, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::quantile_ms;

    #[test]
    fn quantiles_are_nearest_rank_in_milliseconds() {
        let us: Vec<u32> = (1..=100).map(|k| k * 1000).collect();
        assert_eq!(quantile_ms(&us, 0.50), Some(50.0));
        assert_eq!(quantile_ms(&us, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&[1500], 0.99), Some(1.5));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }
}
