//! The producer: one agent publishing at a steady rate, recording the oracle.
//!
//! Every event carries a fresh UUIDv7 `ce-id` and a payload that names the agent and
//! the event's position, so the judge can check identity, order and integrity. An event
//! is *acked* when the edge acknowledged it (it must arrive, once), *refused* when the
//! edge said no (it must not arrive), and *unknown* when no answer came (it may arrive,
//! at most once).

use std::collections::HashMap;
use std::time::Duration;

use agents::{Agent, AgentError};
use bytes::Bytes;
use schemas::NewEvent;
use uuid::Uuid;

/// What one agent published and what the edge said.
#[derive(Debug, Clone, Default)]
pub struct AgentLog {
    pub agent: String,
    /// Acknowledged ids, in publish order.
    pub acked: Vec<Uuid>,
    /// Refused ids with the error text.
    pub refused: Vec<(Uuid, String)>,
    /// Ids whose outcome is unknown (timeout, connection trouble).
    pub unknown: Vec<Uuid>,
    /// The data each id carried.
    pub data: HashMap<Uuid, Bytes>,
    /// Publishes that took [`SLOW`] or longer, whatever their outcome: the SDK sends a
    /// request again while no edge hub listens (it may be restarting), so a kill shows
    /// as slow publishes as well as failed ones.
    pub slow: usize,
}

/// A publish this slow was held up by a fault.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(250);

impl AgentLog {
    pub fn new(agent: &str) -> AgentLog {
        AgentLog {
            agent: agent.into(),
            ..AgentLog::default()
        }
    }

    /// Records the outcome of one publish.
    pub fn record(&mut self, id: Uuid, data: Bytes, outcome: &Result<agents::Ack, AgentError>) {
        self.data.insert(id, data);
        match outcome {
            Ok(_) => self.acked.push(id),
            Err(AgentError::Timeout(_)) | Err(AgentError::Request { .. }) => self.unknown.push(id),
            Err(e) => self.refused.push((id, e.to_string())),
        }
    }

    /// [`AgentLog::record`], counting the publish as slow if it took `took` >= [`SLOW`].
    pub fn record_timed(
        &mut self,
        id: Uuid,
        data: Bytes,
        outcome: &Result<agents::Ack, AgentError>,
        took: std::time::Duration,
    ) {
        if took >= SLOW {
            self.slow += 1;
        }
        self.record(id, data, outcome);
    }

    /// Every publish that did not get an ack.
    pub fn failures(&self) -> usize {
        self.refused.len() + self.unknown.len()
    }
}

/// The payload of the `n`-th event of `agent`, `size` bytes at least: `agent:n:` and then
/// pseudo-random bytes seeded by both. Incompressible on purpose: the outbox stores LZ4
/// records and its limits count stored bytes, so a patterned payload would not fill it.
pub fn payload(agent: &str, n: u64, size: usize) -> Bytes {
    let mut s = format!("{agent}:{n}:").into_bytes();
    let mut x = agent.bytes().fold(0x9E37_79B9_7F4A_7C15u64 ^ n, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    }) | 1;
    while s.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push((x >> 24) as u8);
    }
    s.into()
}

/// Publishes on `subject` at `rate` events/s (sequentially: each waits for its ack) until
/// `count` events were published or `stop` resolves; returns the log.
pub async fn produce(
    agent: Agent,
    subject: &str,
    rate: f64,
    count: u64,
    size: usize,
    stop: impl std::future::Future<Output = ()>,
) -> AgentLog {
    let mut log = AgentLog::new(agent.id());
    let start = tokio::time::Instant::now();
    tokio::pin!(stop);
    for n in 0..count {
        let due = start + Duration::from_secs_f64(n as f64 / rate.max(1e-9));
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = &mut stop => break,
        }
        let data = payload(agent.id(), n, size);
        let ev = NewEvent::new("chaos.tick", subject, data.clone());
        let id = ev.id.unwrap_or_else(Uuid::now_v7);
        let t = std::time::Instant::now();
        let outcome = agent.publish_event(ev).await;
        log.record_timed(id, data, &outcome, t.elapsed());
    }
    log
}
