//! What the central hub's integration tests share: a nats-server and a hub in-process on
//! it, bundles sent as an edge's forwarder sends them, and polling with a deadline.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use central_hub::CentralConfig;
use mesh_nats::{NatsServer, ServerConfig};
use schemas::bundle::BUNDLE_VERSION;
use schemas::{subject, Bundle, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` every 10 ms until it holds; panics after [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET path` of the hub's HTTP server: status code and body, `(0, "")` when it does
/// not answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// The status code of `GET /health/ready`, 0 when the hub does not answer.
pub async fn ready_status(addr: SocketAddr) -> u16 {
    http_get(addr, "/health/ready").await.0
}

/// An event of `edge` and `agent` with edge sequence `seq`.
pub fn event_of(edge: &str, agent: &str, seq: u64) -> Event {
    schemas::NewEvent {
        content_type: Some("text/plain".into()),
        ..schemas::NewEvent::new("t", "jobs.run", format!("{seq}"))
    }
    .into_event(edge, agent, seq, chrono::Utc::now())
}

/// An event of edge `e1`.
pub fn event(agent: &str, seq: u64) -> Event {
    event_of("e1", agent, seq)
}

/// A well-formed bundle of `edge` with events `first..=last` of `agent`.
pub fn bundle(edge: &str, agent: &str, first: u64, last: u64) -> Bundle {
    Bundle {
        version: BUNDLE_VERSION,
        edge: edge.into(),
        first_seq: first,
        last_seq: last,
        events: (first..=last).map(|s| event_of(edge, agent, s)).collect(),
    }
}

/// Publishes `b` to `MESH_INGRESS` on `mesh.up.<b.edge>`, as an edge's forwarder does.
pub async fn send(js: &jetstream::Context, b: &Bundle) {
    js.publish_with_headers(
        subject::up(&b.edge),
        b.headers(),
        b.encode().unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Publishes a bundle of edge `e1` with events `first..=last` of `agent`.
pub async fn send_bundle(js: &jetstream::Context, agent: &str, first: u64, last: u64) {
    send(js, &bundle("e1", agent, first, last)).await;
}

/// Messages in `stream` (0 when it cannot be asked).
pub async fn messages(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Messages in `MESH_EVENTS`.
pub async fn events(js: &jetstream::Context) -> u64 {
    messages(js, subject::STREAM_EVENTS).await
}

pub struct Hub {
    pub js: jetstream::Context,
    pub http: SocketAddr,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), central_hub::CentralError>>,
    /// The nats-server, when this hub started it (`None` for a second hub on it).
    pub server: Option<NatsServer>,
    /// The nats-server's client URL.
    pub url: String,
}

impl Hub {
    /// Sends a bundle of `agent`'s events `first..=last` and waits until `MESH_EVENTS`
    /// holds `last` events (every bundle starts where the previous one ended).
    pub async fn land(&self, agent: &str, first: u64, last: u64) {
        send_bundle(&self.js, agent, first, last).await;
        wait_for(&format!("{last} events landed"), || async {
            events(&self.js).await == last
        })
        .await;
    }

    /// The value of metric `series` (name and labels exactly as rendered), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").await;
        body.lines()
            .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum()
    }

    /// Signals shutdown and waits for `run` to return `Ok`; returns how long it took.
    pub async fn shut_down(&mut self) -> Duration {
        let started = Instant::now();
        self.stop.cancel();
        let r = tokio::time::timeout(central_hub::SHUTDOWN_DEADLINE * 2, &mut self.task)
            .await
            .expect("the hub stops");
        assert!(r.unwrap().is_ok());
        started.elapsed()
    }
}

/// The configuration of a test hub: the defaults, hub id `t0`.
pub fn hub_config() -> CentralConfig {
    CentralConfig {
        hub_id: "t0".into(),
        ..CentralConfig::default()
    }
}

/// A nats-server and a central hub in-process on it, once ready.
pub async fn start_hub(name: &str) -> Hub {
    start_hub_with(name, hub_config()).await
}

/// A nats-server and a central hub configured as `cfg` in-process on it, once ready.
pub async fn start_hub_with(name: &str, cfg: CentralConfig) -> Hub {
    let server_cfg = ServerConfig::central(name);
    let server = tokio::task::spawn_blocking(move || NatsServer::start(server_cfg))
        .await
        .unwrap()
        .expect("central nats-server");
    let mut hub = hub_on(&server.client_url(), cfg).await;
    hub.server = Some(server);
    hub
}

/// A central hub configured as `cfg` in-process on the nats-server at `url` (which
/// another hub may use too), on its own connection, once ready.
pub async fn hub_on(url: &str, cfg: CentralConfig) -> Hub {
    let client = async_nats::connect(url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(central_hub::run(
        cfg,
        client.clone(),
        Some(listener),
        stop.clone().cancelled_owned(),
    ));
    wait_for("ready", || async { ready_status(http).await == 200 }).await;
    Hub {
        js: jetstream::new(client),
        http,
        stop,
        task,
        server: None,
        url: url.to_string(),
    }
}

/// Edge and edge sequence (`ce-meshseq`) of every message in `MESH_EVENTS`, in stream
/// order.
pub async fn landed(js: &jetstream::Context) -> Vec<(String, u64)> {
    let mut stream = js.get_stream(subject::STREAM_EVENTS).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let edge = m.subject.split('.').nth(2).unwrap_or_default().to_string();
        let mesh_seq = m
            .headers
            .get(schemas::headers::MESH_SEQ)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        out.push((edge, mesh_seq));
    }
    out
}

/// The edge sequences of `edge` in `landed`, in order.
pub fn seqs_of(landed: &[(String, u64)], edge: &str) -> Vec<u64> {
    landed
        .iter()
        .filter(|(e, _)| e == edge)
        .map(|(_, s)| *s)
        .collect()
}

/// Publishes every bundle of `bundles` to `MESH_INGRESS` pipelined (up to 1,000 acks
/// outstanding), then waits for every ack: a backlog that arrives at once.
pub async fn send_all(js: &jetstream::Context, bundles: impl IntoIterator<Item = Bundle>) {
    let mut acks = Vec::new();
    for b in bundles {
        let ack = js
            .publish_with_headers(
                subject::up(&b.edge),
                b.headers(),
                b.encode().unwrap().into(),
            )
            .await
            .unwrap();
        acks.push(ack);
        if acks.len() >= 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// The KV revision of `edge`'s high-water mark in `MESH_LANDER` (0 when absent): with one
/// edge in the bucket, how many times its mark was written.
pub async fn mark_revision(js: &jetstream::Context, edge: &str) -> u64 {
    let kv = js.get_key_value(subject::BUCKET_LANDER).await.unwrap();
    kv.entry(edge).await.unwrap().map_or(0, |e| e.revision)
}
