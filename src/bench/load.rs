//! The load of every system: pipelined publishes until all are acked (throughput,
//! backlog), open-loop publishes at a fixed rate (ack latency), and waiting for a stream
//! to hold a count.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use agents::Agent;
use anyhow::bail;
use async_nats::jetstream;
use schemas::NewEvent;

use super::payload::Payloads;
use super::report::Latency;
use super::Progress;

/// A client with room for many replies in flight, authenticated as `auth` (TLS and a
/// credential on the secure default).
pub(super) async fn connect(
    url: &str,
    auth: &mesh_nats::client::ClientAuth,
) -> anyhow::Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new().subscription_capacity(1 << 16);
    Ok(auth.apply(opts).await?.connect(url).await?)
}

/// A full-rights client identity of a bench mesh (none on an insecure one).
pub(super) fn bench_auth(
    mesh: &mesh_testkit::Mesh,
) -> anyhow::Result<mesh_nats::client::ClientAuth> {
    Ok(mesh.auth(&mesh_nats::auth::Identity::CentralHub {
        name: "bench".into(),
    })?)
}

/// Messages in stream `name` (0 when it cannot be asked).
pub(super) async fn stream_count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Polls until `name` holds `n` messages; gives up after `limit`.
pub(super) async fn wait_count(
    js: &jetstream::Context,
    name: &str,
    n: u64,
    what: &str,
    p: &mut Progress,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let have = stream_count(js, name).await;
        p.show(what, have, n);
        if have >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: {name} holds {have} of {n} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many of `count` events publisher `i` of `publishers` sends: an even share, the
/// remainder to the first.
fn share(count: u64, publishers: usize, i: usize) -> u64 {
    let per = count / publishers as u64;
    if i == 0 {
        count - per * (publishers as u64 - 1)
    } else {
        per
    }
}

/// A JetStream context on `client`, in `domain` when given.
fn js_context(client: &async_nats::Client, domain: Option<&str>) -> jetstream::Context {
    match domain {
        Some(d) => jetstream::with_domain(client.clone(), d),
        None => jetstream::new(client.clone()),
    }
}

/// Pipelined JetStream publishes from several connections, at most `window`
/// unacknowledged per connection; returns when all are acked.
pub(super) async fn js_publish_all(
    clients: &[async_nats::Client],
    domain: Option<&str>,
    subject: &str,
    count: u64,
    size: usize,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let js = js_context(c, domain);
        let n = share(count, clients.len(), i);
        let subject = subject.to_string();
        let mut payloads = Payloads::new(size, i);
        tasks.push(tokio::spawn(async move {
            let mut pending = VecDeque::new();
            for _ in 0..n {
                if pending.len() >= 4096 {
                    let f: jetstream::context::PublishAckFuture =
                        pending.pop_front().expect("non-empty");
                    f.await?;
                }
                pending.push_back(js.publish(subject.clone(), payloads.next()).await?);
            }
            for f in pending {
                f.await?;
            }
            Ok::<(), async_nats::Error>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| anyhow::anyhow!("publish: {e}"))?;
    }
    Ok(())
}

/// Open-loop JetStream publishes at `rate` for `secs`: each publish's ack latency.
pub(super) async fn js_latency(
    client: &async_nats::Client,
    domain: Option<&str>,
    subject: &str,
    rate: u64,
    secs: f64,
    size: usize,
) -> anyhow::Result<Latency> {
    let js = js_context(client, domain);
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, jetstream::context::PublishAckFuture)>();
    let collector = tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Some((sent, f)) = rx.recv().await {
            if f.into_future().await.is_ok() {
                lat.push(sent.elapsed().as_micros() as u64);
            }
        }
        lat
    });
    let total = (rate as f64 * secs) as u64;
    let mut payloads = Payloads::new(size, 99);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while sent < due {
            let t = Instant::now();
            let f = js.publish(subject.to_string(), payloads.next()).await?;
            let _ = tx.send((t, f));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    drop(tx);
    Ok(percentiles(rate, collector.await?))
}

fn percentiles(rate: u64, mut v: Vec<u64>) -> Latency {
    v.sort_unstable();
    let at = |q: f64| -> u64 {
        if v.is_empty() {
            0
        } else {
            v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
        }
    };
    Latency {
        offered_per_s: rate,
        samples: v.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        commit_p50_us: None,
        commit_p99_us: None,
    }
}

/// Every agent publishes its share in batches, pipelined (8 requests in flight each);
/// returns once the edge acked all of them.
pub(super) async fn mesh_publish_all(
    agents: &[Agent],
    count: u64,
    batch: usize,
    size: usize,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let n = share(count, agents.len(), i);
        let agent = agent.clone();
        let mut payloads = Payloads::new(size, i);
        tasks.push(tokio::spawn(async move {
            let mut pipe = agent.pipeline().await?;
            let mut sent = 0u64;
            let mut acked = 0u64;
            while acked < n {
                while sent < n && pipe.in_flight() < 8 {
                    let k = (batch as u64).min(n - sent);
                    let evs = (0..k)
                        .map(|_| NewEvent::new("bench", "bench.x", payloads.next()))
                        .collect();
                    pipe.send(evs).await?;
                    sent += k;
                }
                match pipe.next_reply().await {
                    Some((_, Ok(ack))) => acked += ack.last_seq - ack.first_seq + 1,
                    Some((_, Err(e))) => return Err(anyhow::anyhow!("publish refused: {e}")),
                    None => break,
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Open-loop single-event requests at `rate` for `secs`: each request's ack latency
/// through the edge hub. Replies are taken the moment they arrive
/// (a `select!` on the reply stream and the send schedule), like `js_latency`'s collector
/// task: waking on a timer to look for replies would add up to a timer tick (1 ms in
/// tokio) to every sample.
pub(super) async fn mesh_latency(
    agent: &Agent,
    rate: u64,
    secs: f64,
    size: usize,
) -> anyhow::Result<Latency> {
    let mut pipe = agent.pipeline().await?;
    let total = (rate as f64 * secs) as u64;
    let mut payloads = Payloads::new(size, 99);
    let mut sent_at: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut lat = Vec::with_capacity(total as usize);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total || pipe.in_flight() > 0 {
        let next_due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::select! {
            biased;
            r = pipe.next_reply(), if pipe.in_flight() > 0 => {
                let Some((token, r)) = r else { break };
                r.map_err(|e| anyhow::anyhow!("latency publish refused: {e}"))?;
                if let Some(t) = sent_at.remove(&token) {
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            _ = tokio::time::sleep_until(next_due.into()), if sent < total => {
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
                while sent < due {
                    let t = Instant::now();
                    let token = pipe
                        .send(vec![NewEvent::new("bench", "bench.lat", payloads.next())])
                        .await?;
                    sent_at.insert(token, t);
                    sent += 1;
                }
            }
        }
    }
    Ok(percentiles(rate, lat))
}
