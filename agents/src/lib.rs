//! The agentmesh agent SDK.
//!
//! An [`Agent`] connects to its edge's nats-server with an agent id. [`Agent::publish`]
//! returns once the edge hub has the event durably in its outbox (the ack carries the
//! event's `ce-meshseq`); from there the mesh delivers it to `MESH_EVENTS` at the centre
//! exactly once, in order, also across partitions. Receiving is either live
//! ([`Agent::subscribe_live`]: core NATS, works inside a partition) or durable
//! ([`Agent::subscribe`]: a JetStream consumer at the centre, explicit acks, resumes
//! after a restart).
//!
//! ```no_run
//! # async fn demo() -> Result<(), agents::AgentError> {
//! let agent = agents::Agent::connect("nats://127.0.0.1:4222", "planner-1").await?;
//! let ack = agent.publish_json("task.created", "tasks.new", &serde_json::json!({"id": 7})).await?;
//! println!("stored as edge sequence {}", ack.first_seq);
//! let mut live = agent.subscribe_live("tasks.>").await?;
//! if let Some(Ok(event)) = live.next().await {
//!     println!("{} from {}", event.ty, event.source());
//! }
//! agent.drain().await?;
//! # Ok(()) }
//! ```

pub mod demo;
pub mod pipeline;

pub use pipeline::Pipeline;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use bytes::Bytes;
use futures::StreamExt;
pub use mesh_nats::client::ClientAuth;
use schemas::{subject, ErrorCode, Event, IngestReply, IngestRequest, NewEvent, SchemaError};
use serde::Serialize;

/// A refusal as [`Agent::request_once`] sees it, with the edge's retry time.
struct Refused {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
}

/// What can go wrong for an agent. Each variant says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The nats-server could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// No edge hub answered discovery on this connection's server.
    #[error("no edge hub found on {url}: {reason}")]
    Discover { url: String, reason: String },
    /// An id or event breaks the wire rules; nothing was sent.
    #[error("invalid input: {0}")]
    Invalid(#[from] SchemaError),
    /// The edge hub refused the request; nothing of it was stored.
    #[error("edge refused the publish ({}): {message}", .code.as_str())]
    Refused { code: ErrorCode, message: String },
    /// Nobody listens on the ingest subject: the edge hub is not running.
    #[error("no edge hub is listening on {subject}")]
    NoEdgeHub { subject: String },
    /// The edge hub did not answer in time. The events may or may not be stored.
    #[error("no answer from the edge hub within {0:?}; the publish may or may not be stored")]
    Timeout(Duration),
    /// Any other NATS request failure.
    #[error("request to {subject} failed: {reason}")]
    Request { subject: String, reason: String },
    /// A subscription or consumer could not be set up or read.
    #[error("subscription {filter}: {reason}")]
    Subscribe { filter: String, reason: String },
    /// A payload could not be encoded or decoded.
    #[error("payload: {0}")]
    Payload(String),
}

/// The edge's acknowledgement: the events got `ce-meshseq` `first_seq..=last_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A connected agent. Its publishes are exactly once: each request carries this
/// agent's producer id (drawn when the `Agent` is made, shared by its clones) and its
/// own number, so a request sent again after a timeout or a lost reply gets the original
/// ack and is not stored twice.
#[derive(Clone)]
pub struct Agent {
    client: async_nats::Client,
    edge: String,
    id: String,
    ingest: String,
    timeout: Duration,
    js: jetstream::Context,
    producer: uuid::Uuid,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The longest one try of a request waits before it is sent again (within the agent's
/// timeout).
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait before sending again when no edge hub listens (it may be restarting).
const NO_HUB_WAIT: Duration = Duration::from_millis(200);

impl Agent {
    /// Connects to an edge's nats-server and discovers the edge id from the edge hub.
    pub async fn connect(url: &str, id: &str) -> Result<Agent, AgentError> {
        Agent::connect_with(url, id, &ClientAuth::none()).await
    }

    /// [`Agent::connect`] with a credential (`.creds` file) and the CA of the mesh: what
    /// every agent of a secure mesh does.
    pub async fn connect_with(url: &str, id: &str, auth: &ClientAuth) -> Result<Agent, AgentError> {
        subject::validate_id("agent", id)?;
        if let Some(user) = auth.user_name() {
            // The servers refuse a publish as anyone else; say so now, not after a timeout.
            let own = match mesh_nats::auth::Identity::from_user_name(&user) {
                Some(mesh_nats::auth::Identity::Agent { agent, .. }) => Some(agent),
                _ => None,
            };
            if own.as_deref() != Some(id) {
                return Err(AgentError::Connect {
                    url: url.into(),
                    reason: format!(
                        "the credential is for {user:?}, not agent {id:?}: an agent may publish \
                         only as itself"
                    ),
                });
            }
        }
        let client = auth
            .connect(url, &format!("agent {id}"))
            .await
            .map_err(|reason| AgentError::Connect {
                url: url.into(),
                reason,
            })?;
        let edge = discover_edge(&client, Duration::from_secs(5))
            .await
            .map_err(|reason| AgentError::Discover {
                url: url.into(),
                reason,
            })?;
        Agent::with_client(client, &edge, id)
    }

    /// An agent on an existing connection, for a known edge id.
    pub fn with_client(
        client: async_nats::Client,
        edge: &str,
        id: &str,
    ) -> Result<Agent, AgentError> {
        subject::validate_id("edge", edge)?;
        subject::validate_id("agent", id)?;
        Ok(Agent {
            js: jetstream::with_domain(client.clone(), subject::CENTRAL_DOMAIN),
            ingest: subject::ingest(edge, id),
            client,
            edge: edge.into(),
            id: id.into(),
            timeout: Duration::from_secs(5),
            producer: uuid::Uuid::now_v7(),
            requests: Default::default(),
        })
    }

    /// How long a publish waits for the edge's ack (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Agent {
        self.timeout = timeout;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn edge(&self) -> &str {
        &self.edge
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Publishes opaque bytes (`application/octet-stream`).
    pub async fn publish(
        &self,
        ty: &str,
        subject: &str,
        data: impl Into<Bytes>,
    ) -> Result<Ack, AgentError> {
        self.publish_batch(vec![NewEvent::new(ty, subject, data)])
            .await
    }

    /// Publishes a value as JSON (`application/json`).
    pub async fn publish_json<T: Serialize>(
        &self,
        ty: &str,
        subject: &str,
        value: &T,
    ) -> Result<Ack, AgentError> {
        let data = serde_json::to_vec(value).map_err(|e| AgentError::Payload(e.to_string()))?;
        let mut ev = NewEvent::new(ty, subject, data);
        ev.content_type = Some("application/json".into());
        self.publish_batch(vec![ev]).await
    }

    /// Publishes a value as MessagePack (`application/msgpack`).
    pub async fn publish_msgpack<T: Serialize>(
        &self,
        ty: &str,
        subject: &str,
        value: &T,
    ) -> Result<Ack, AgentError> {
        let data =
            rmp_serde::to_vec_named(value).map_err(|e| AgentError::Payload(e.to_string()))?;
        let mut ev = NewEvent::new(ty, subject, data);
        ev.content_type = Some("application/msgpack".into());
        self.publish_batch(vec![ev]).await
    }

    /// Publishes one fully specified event.
    pub async fn publish_event(&self, ev: NewEvent) -> Result<Ack, AgentError> {
        self.publish_batch(vec![ev]).await
    }

    /// Publishes several events in one request: one round trip, stored together (all or
    /// none), consecutive sequences in the given order.
    pub async fn publish_batch(&self, events: Vec<NewEvent>) -> Result<Ack, AgentError> {
        let body = IngestRequest { events }.encode()?;
        self.request(body.into()).await
    }

    /// This agent's producer id (`mesh-producer`).
    pub fn producer(&self) -> uuid::Uuid {
        self.producer
    }

    /// Sends a raw ingest body (used by tests of the edge's refusals) as this agent's
    /// next request (`mesh-producer`, `mesh-request`), until the agent's timeout:
    /// - a `rate_limited` or `quota_exceeded` refusal (nothing was stored) is sent again
    ///   after the time its `mesh-retry-after-ms` header names;
    /// - a try without an answer within [`TRY_TIMEOUT`], or with no edge hub listening,
    ///   is sent again with the same number: if the first was stored, the edge answers
    ///   with its ack and stores nothing.
    ///
    /// At the timeout, the last outcome is returned ([`AgentError::Timeout`]: the events
    /// may or may not be stored, and the same request sent again would tell).
    pub async fn request(&self, body: Bytes) -> Result<Ack, AgentError> {
        let n = self
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.request_numbered(body, n).await
    }

    /// [`Agent::request`] as request number `n` of this agent's producer (a test sends
    /// the same number again, as a restarted client would).
    pub async fn request_numbered(&self, body: Bytes, n: u64) -> Result<Ack, AgentError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let try_for = left.min(TRY_TIMEOUT).max(Duration::from_millis(1));
            match self.request_once(body.clone(), n, try_for).await {
                Err(Refused {
                    code: ErrorCode::RateLimited | ErrorCode::QuotaExceeded,
                    message,
                    retry_after: Some(wait),
                }) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::debug!(%message, ?wait, "rate limited or over quota; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(Refused { code, message, .. }) => {
                    return Err(AgentError::Refused { code, message })
                }
                Ok(Err(AgentError::Timeout(_))) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(request = n, "no answer; sending the request again");
                }
                Ok(Err(AgentError::NoEdgeHub { .. }))
                    if tokio::time::Instant::now() + NO_HUB_WAIT < deadline =>
                {
                    tokio::time::sleep(NO_HUB_WAIT).await;
                }
                Ok(Err(AgentError::Timeout(_))) => return Err(AgentError::Timeout(self.timeout)),
                Ok(r) => return r,
            }
        }
    }

    /// One try of [`Agent::request`]: the outcome, or a refusal with its retry time.
    async fn request_once(
        &self,
        body: Bytes,
        n: u64,
        timeout: Duration,
    ) -> Result<Result<Ack, AgentError>, Refused> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            schemas::headers::MESH_PRODUCER,
            self.producer.to_string().as_str(),
        );
        headers.insert(schemas::headers::MESH_REQUEST, n.to_string().as_str());
        let req = async_nats::Request::new()
            .payload(body)
            .headers(headers)
            .timeout(Some(timeout));
        let reply = match self
            .client
            .send_request(self.ingest.clone(), req)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => AgentError::NoEdgeHub {
                    subject: self.ingest.clone(),
                },
                async_nats::RequestErrorKind::TimedOut => AgentError::Timeout(self.timeout),
                _ => AgentError::Request {
                    subject: self.ingest.clone(),
                    reason: e.to_string(),
                },
            }) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        match IngestReply::decode(&reply.payload) {
            Err(e) => Ok(Err(AgentError::Payload(e.to_string()))),
            Ok(IngestReply::Ok {
                first_seq,
                last_seq,
            }) => Ok(Ok(Ack {
                first_seq,
                last_seq,
            })),
            Ok(IngestReply::Err { code, message }) => {
                let retry_after = reply
                    .headers
                    .as_ref()
                    .and_then(|hs| hs.get(schemas::headers::MESH_RETRY_AFTER_MS))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
                    .map(Duration::from_millis);
                Err(Refused {
                    code,
                    message,
                    retry_after,
                })
            }
        }
    }

    /// Live events from every edge whose subject matches `filter` (e.g. `tasks.>`).
    /// Core NATS: no replay, no acks; keeps working inside a partition for the events of
    /// this edge.
    pub async fn subscribe_live(&self, filter: &str) -> Result<LiveSubscription, AgentError> {
        subject::validate_filter("filter", filter)?;
        let full = subject::live_filter(filter);
        let sub = self
            .client
            .subscribe(full.clone())
            .await
            .map_err(|e| AgentError::Subscribe {
                filter: full.clone(),
                reason: e.to_string(),
            })?;
        Ok(LiveSubscription { sub })
    }

    /// A durable subscription at the centre: a JetStream consumer `durable` on
    /// `MESH_EVENTS` for `filter` (event subjects of every edge), explicit acks,
    /// at-least-once; it resumes where it stopped after a restart.
    pub async fn subscribe(
        &self,
        durable: &str,
        filter: &str,
    ) -> Result<DurableSubscription, AgentError> {
        self.open_durable(durable, filter, pull::Config::default())
            .await
    }

    /// Like [`Agent::subscribe`], with a delivery limit: an event not acked after
    /// `max_deliver` deliveries (each waiting `ack_wait`, or a [`Delivery::fail`]) is moved
    /// to `MESH_DLQ` by the central hub.
    pub async fn subscribe_with(
        &self,
        durable: &str,
        filter: &str,
        max_deliver: i64,
        ack_wait: Duration,
    ) -> Result<DurableSubscription, AgentError> {
        let base = pull::Config {
            max_deliver,
            ack_wait,
            ..Default::default()
        };
        self.open_durable(durable, filter, base).await
    }

    /// Creates (or reuses) the consumer `durable` on `MESH_EVENTS` for `filter`, with
    /// explicit acks and the other settings of `base`, and starts reading it.
    async fn open_durable(
        &self,
        durable: &str,
        filter: &str,
        base: pull::Config,
    ) -> Result<DurableSubscription, AgentError> {
        subject::validate_id("durable", durable)?;
        subject::validate_filter("filter", filter)?;
        let full = subject::evt_filter(filter);
        let err = |reason: String| AgentError::Subscribe {
            filter: full.clone(),
            reason,
        };
        let stream = self
            .js
            .get_stream(subject::STREAM_EVENTS)
            .await
            .map_err(|e| err(e.to_string()))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.into()),
                    filter_subject: full.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ..base
                },
            )
            .await
            .map_err(|e| err(e.to_string()))?;
        let messages = consumer.messages().await.map_err(|e| err(e.to_string()))?;
        Ok(DurableSubscription { messages })
    }

    /// Flushes what was sent and closes the connection once pending replies are in.
    pub async fn drain(self) -> Result<(), AgentError> {
        self.client.drain().await.map_err(|e| AgentError::Request {
            subject: "(drain)".into(),
            reason: e.to_string(),
        })
    }
}

/// Asks the edge hubs who they are and keeps the one on this connection's nats-server
/// (requests cross leaf links, so other edges may answer too).
pub async fn discover_edge(
    client: &async_nats::Client,
    within: Duration,
) -> Result<String, String> {
    let own = client.server_info().server_id;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + within;
    let mut heard = Vec::new();
    let mut next_ask = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_ask {
            client
                .publish_with_reply(subject::HUB_DISCOVER, inbox.clone(), "".into())
                .await
                .map_err(|e| e.to_string())?;
            next_ask += Duration::from_millis(500);
        }
        let wait = next_ask.min(deadline);
        match tokio::time::timeout_at(wait, sub.next()).await {
            Ok(Some(msg)) => {
                if let Ok(hello) = serde_json::from_slice::<schemas::EdgeHello>(&msg.payload) {
                    if hello.server_id == own {
                        return Ok(hello.edge);
                    }
                    heard.push(hello.edge);
                }
            }
            Ok(None) => return Err("discovery subscription closed".into()),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                heard.sort();
                heard.dedup();
                return match heard.as_slice() {
                    [one] => Ok(one.clone()),
                    [] => Err(format!(
                        "no edge hub answered on {} within {within:?}: agents publish \
                         at an edge, so connect to the nats-server of your edge (not the \
                         central one), and check that its edge hub runs",
                        subject::HUB_DISCOVER
                    )),
                    many => Err(format!(
                        "edge hubs {many:?} answered, none on this server: this looks \
                         like the central nats-server, which hears every edge across the \
                         leaf links; agents publish at an edge, so connect to the \
                         nats-server of your edge instead"
                    )),
                };
            }
            Err(_) => {}
        }
    }
}

/// Live events; see [`Agent::subscribe_live`].
pub struct LiveSubscription {
    sub: async_nats::Subscriber,
}

impl LiveSubscription {
    /// The next live event, or `None` once the connection closed.
    pub async fn next(&mut self) -> Option<Result<Event, SchemaError>> {
        let msg = self.sub.next().await?;
        let headers = msg.headers.unwrap_or_default();
        Some(Event::from_message(&headers, msg.payload))
    }
}

/// Durable events; see [`Agent::subscribe`].
pub struct DurableSubscription {
    messages: pull::Stream,
}

impl DurableSubscription {
    /// The next event. Ack it with [`Delivery::ack`] once processed; an event not acked
    /// is delivered again.
    pub async fn next(&mut self) -> Option<Result<Delivery, AgentError>> {
        let msg = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(AgentError::Subscribe {
                    filter: "(durable)".into(),
                    reason: e.to_string(),
                }))
            }
        };
        let headers = msg.headers.clone().unwrap_or_default();
        Some(match Event::from_message(&headers, msg.payload.clone()) {
            Ok(event) => Ok(Delivery { event, msg }),
            Err(e) => Err(AgentError::Invalid(e)),
        })
    }
}

/// One durably delivered event and its ack handle.
pub struct Delivery {
    pub event: Event,
    msg: jetstream::Message,
}

impl Delivery {
    /// Processed: do not deliver again.
    pub async fn ack(&self) -> Result<(), AgentError> {
        self.msg.ack().await.map_err(|e| AgentError::Request {
            subject: "(ack)".into(),
            reason: e.to_string(),
        })
    }

    fn msg_ref(&self) -> Result<(schemas::dlq::MessageRef, u64), AgentError> {
        let info = self.msg.info().map_err(|e| AgentError::Request {
            subject: "(ack info)".into(),
            reason: e.to_string(),
        })?;
        Ok((
            schemas::dlq::MessageRef {
                stream: info.stream.to_string(),
                consumer: info.consumer.to_string(),
                seq: info.stream_sequence,
            },
            info.delivered.max(0) as u64,
        ))
    }

    /// Processing failed with `error`: deliver again later. The error text and time are
    /// reported to the central hub, so a dead letter (after `max_deliver` failures)
    /// carries them.
    pub async fn fail(&self, error: &str) -> Result<(), AgentError> {
        let (msg, deliveries) = self.msg_ref()?;
        let note = schemas::dlq::FailureNote {
            msg,
            deliveries,
            error: error.into(),
            time: chrono::Utc::now().to_rfc3339(),
        };
        let body = serde_json::to_vec(&note).map_err(|e| AgentError::Payload(e.to_string()))?;
        let client = self.msg.context.client();
        let _ = client.publish(subject::HUB_DLQ_FAILURE, body.into()).await;
        let _ = client.flush().await;
        self.nak().await
    }

    /// This event can never be processed: the central hub moves it to `MESH_DLQ` at once
    /// with `reason`, then it is terminated here. Returns the dead letter's sequence.
    pub async fn reject(&self, reason: &str) -> Result<u64, AgentError> {
        let (msg, deliveries) = self.msg_ref()?;
        let req = schemas::dlq::DeadLetterRequest {
            msg,
            deliveries,
            reason: reason.into(),
        };
        let body = serde_json::to_vec(&req).map_err(|e| AgentError::Payload(e.to_string()))?;
        let err = |reason: String| AgentError::Request {
            subject: subject::HUB_DLQ_REJECT.into(),
            reason,
        };
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.msg
                .context
                .client()
                .request(subject::HUB_DLQ_REJECT, body.into()),
        )
        .await
        .map_err(|_| AgentError::Timeout(Duration::from_secs(5)))?
        .map_err(|e| err(e.to_string()))?;
        match serde_json::from_slice(&reply.payload) {
            Ok(schemas::dlq::DeadLetterReply::Ok { dlq_seq }) => {
                self.msg
                    .ack_with(jetstream::AckKind::Term)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                Ok(dlq_seq)
            }
            Ok(schemas::dlq::DeadLetterReply::Err { message }) => Err(err(message)),
            Err(e) => Err(AgentError::Payload(e.to_string())),
        }
    }

    /// Not processed: deliver again later.
    pub async fn nak(&self) -> Result<(), AgentError> {
        self.msg
            .ack_with(jetstream::AckKind::Nak(None))
            .await
            .map_err(|e| AgentError::Request {
                subject: "(nak)".into(),
                reason: e.to_string(),
            })
    }
}
