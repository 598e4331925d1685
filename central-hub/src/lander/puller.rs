//! The pull task of the lander: keeps pulling from the consumer `lander` whatever the
//! landing loop is doing, and hands every message over a bounded channel to it; see the
//! `# Pulling` section of the [`super`] doc.
//!
//! # Invariants
//! * It never waits on landing: it polls the `messages()` stream without pause, so its
//!   pull requests (which keep the pin of the priority group) and its idle heartbeats
//!   flow while the landing loop lands. It waits only for room in the channel, which is
//!   bounded by the consumer's `max_ack_pending` and so does not fill in practice.
//! * It does not look at a message, ack it or keep it: every message it takes goes into
//!   the channel, except on shutdown (or with the landing loop gone), when the one it
//!   holds is nakked without delay, so no message it took is left to `ack_wait`.
//! * A failed pull is reported to [`Health`] and tried again after [`PULL_RETRY`],
//!   getting or re-creating the consumer first; a pull opened is reported too.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, PriorityPolicy, PullConsumer};
use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use schemas::subject;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CONSUMER, GROUP, MAX_ACK_PENDING};
use crate::config::LanderConfig;
use crate::health::Health;

/// How long the pull task waits after a failed pull before it pulls again.
const PULL_RETRY: Duration = Duration::from_millis(100);

/// The durable consumer `lander`, created if it is missing.
pub(super) async fn consumer(
    ingress: &jetstream::stream::Stream,
    cfg: &LanderConfig,
) -> Result<PullConsumer, async_nats::Error> {
    Ok(ingress
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                description: Some("agentmesh lander (one pinned central hub at a time)".into()),
                filter_subject: subject::UP_ALL.into(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: cfg.ack_wait,
                max_deliver: -1,
                max_ack_pending: MAX_ACK_PENDING as i64,
                priority_policy: PriorityPolicy::PinnedClient,
                priority_groups: vec![GROUP.into()],
                priority_timeout: cfg.pin_timeout,
                ..Default::default()
            },
        )
        .await?)
}

pub(super) struct Puller {
    pub ingress: jetstream::stream::Stream,
    pub cfg: LanderConfig,
    pub health: Arc<Health>,
    /// To the landing loop.
    pub tx: mpsc::Sender<Message>,
}

impl Puller {
    /// Pulls from `consumer` (re-created as needed) until `shutdown`.
    pub async fn run(self, consumer: PullConsumer, shutdown: CancellationToken) {
        let mut consumer = Some(consumer);
        loop {
            if let Some(c) = consumer.take() {
                if self.pull(&c, &shutdown).await == Ended::Landing {
                    return;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            self.health.pull_failed();
            tokio::select! {
                _ = tokio::time::sleep(PULL_RETRY) => {}
                _ = shutdown.cancelled() => return,
            }
            consumer = consumer_or_warn(&self.ingress, &self.cfg).await;
        }
    }

    /// One pull session: hands over what arrives until the pull fails, `shutdown`, or
    /// the landing loop is gone.
    async fn pull(&self, consumer: &PullConsumer, shutdown: &CancellationToken) -> Ended {
        let opened = consumer
            .stream()
            .group(GROUP)
            .max_messages_per_batch(self.cfg.batch)
            .expires(Duration::from_millis(250).min(self.cfg.pin_timeout / 2))
            .heartbeat(Duration::from_millis(100).min(self.cfg.pin_timeout / 4))
            .messages()
            .await;
        let mut messages = match opened {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "lander cannot pull; pulling again");
                return Ended::Pull;
            }
        };
        self.health.pull_open();
        loop {
            let next = tokio::select! {
                m = messages.next() => m,
                _ = shutdown.cancelled() => return Ended::Shutdown,
            };
            let msg = match next {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "lander pull failed; pulling again");
                    return Ended::Pull;
                }
                None => return Ended::Pull,
            };
            let room = tokio::select! {
                room = self.tx.reserve() => room,
                _ = shutdown.cancelled() => {
                    give_back(&msg).await;
                    return Ended::Shutdown;
                }
            };
            match room {
                Ok(room) => room.send(msg),
                Err(_) => {
                    tracing::error!("the landing loop has stopped; the lander stops pulling");
                    give_back(&msg).await;
                    return Ended::Landing;
                }
            }
        }
    }
}

/// Why a pull session ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The pull failed or its stream ended: pull again.
    Pull,
    /// Shutdown.
    Shutdown,
    /// The landing loop is gone: nothing to pull for.
    Landing,
}

async fn consumer_or_warn(
    ingress: &jetstream::stream::Stream,
    cfg: &LanderConfig,
) -> Option<PullConsumer> {
    // Bounded by the lander's short request timeout: after its node died, the consumer's
    // info is answered only once its replicas elected a new leader; ask again soon
    // rather than wait out a long timeout.
    let got = tokio::time::timeout(cfg.request_timeout, consumer(ingress, cfg))
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    match got {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "cannot get or create the lander consumer; trying again");
            None
        }
    }
}

/// Naks a message taken but not handed over, without delay: a standby lander takes it.
async fn give_back(msg: &Message) {
    let _ = msg.ack_with(AckKind::Nak(None)).await;
}
