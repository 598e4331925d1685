//! Per-agent limits at the edge: each agent has a token bucket of events and one of data
//! bytes (`[limits]` of the edge config, with per-agent overrides). A request is taken
//! while both buckets hold credit, and then costs its events and bytes, so a bucket may
//! go into debt by one request: a request larger than the bucket still passes when the
//! bucket is full, and its debt delays the agent's next one. A request that finds a
//! bucket empty is refused `rate_limited`, stores nothing, and the refusal names the
//! limit and says (header `mesh-retry-after-ms`) when the bucket has credit again.
//!
//! Refusals are **paced**: the hub holds a refusal back until the agent's bucket has
//! credit for it (at most [`MAX_HOLD`]), and an agent's refusals leave one per the time
//! its requests cost at its rate, so an agent that resends at once instead of waiting
//! cycles its requests in flight at about its own rate. Answered at once, a flooder
//! with 64 requests in flight sent thousands of refused requests a second through the
//! edge nats-server and the hub (measured: 4,500 a second, 117 MB/s, at a 2,000 events/s
//! limit), and a calm agent's acks waited behind them. An agent that waits as told sees
//! no difference: its refusal comes when it could retry, with a retry time of zero.
//!
//! An agent may also have at most `max_inflight` requests taken but not yet committed
//! ([`InFlight`], shared with the committer, which gives them back): past that it is
//! refused `rate_limited` before its request is decoded, held back [`INFLIGHT_HOLD`].
//! Its queued requests then cannot fill the job queue, so the ingest task never waits
//! on one agent and every agent's request reaches the fair group commit (`fair`).
//!
//! Only the ingest task uses a [`Limiter`], so it needs no lock. Buckets of agents idle
//! for longer than it takes to refill are dropped once there are many, so hostile or
//! short-lived agent ids pin no memory; a refilled bucket is the same as a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{AgentLimits, LimitsConfig};

/// Above this many buckets, idle full ones are dropped.
const MANY_BUCKETS: usize = 4096;
/// Agents counted under their own `agent` label in metrics; later ones are `_other`.
pub const LABELLED_AGENTS: usize = 100;
/// The `agent` label of agents past [`LABELLED_AGENTS`].
pub const OTHER_AGENTS: &str = "_other";

/// How long a refusal for too many requests in flight is held back.
pub const INFLIGHT_HOLD: Duration = MAX_HOLD;

/// Requests per agent taken by the ingest task and not yet committed.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<String, u32>>>);

impl InFlight {
    fn count(&self, agent: &str) -> u32 {
        self.0
            .lock()
            .expect("in-flight")
            .get(agent)
            .copied()
            .unwrap_or(0)
    }

    /// One more request of `agent` taken.
    pub fn take(&self, agent: &str) {
        *self
            .0
            .lock()
            .expect("in-flight")
            .entry(agent.to_string())
            .or_insert(0) += 1;
    }

    /// One request of `agent` committed or given up.
    pub fn release(&self, agent: &str) {
        let mut m = self.0.lock().expect("in-flight");
        if let Some(n) = m.get_mut(agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(agent);
            }
        }
    }
}

/// The longest a refusal is held back.
pub const MAX_HOLD: Duration = Duration::from_millis(250);

/// Why a request was refused, how long to hold the refusal back, and when to retry from
/// the moment it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// What was refused and why, without the retry time (see [`Refusal::text`]).
    pub message: String,
    pub hold: Duration,
    pub retry_after: Duration,
}

impl Refusal {
    /// The message the agent gets: with the retry time as of when it is sent.
    pub fn text(&self) -> String {
        match self.retry_after.is_zero() {
            true => format!("{}; retry now", self.message),
            false => format!(
                "{}; retry in {} ms",
                self.message,
                self.retry_after.as_millis()
            ),
        }
    }
}

/// One agent's effective limits.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rates {
    events_per_sec: f64,
    bytes_per_sec: f64,
    burst: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    size: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: f64, burst: Duration) -> Bucket {
        let size = rate * burst.as_secs_f64();
        Bucket {
            rate,
            size,
            tokens: size,
        }
    }

    fn unlimited(&self) -> bool {
        self.rate == 0.0
    }

    fn refill(&mut self, dt: f64) {
        self.tokens = (self.tokens + self.rate * dt).min(self.size);
    }

    /// How long until it holds credit again (zero when it does).
    fn wait(&self) -> Duration {
        if self.unlimited() || self.tokens > 0.0 {
            return Duration::ZERO;
        }
        // Rounded up to the millisecond the header carries.
        let ms = (-self.tokens / self.rate * 1000.0).floor() + 1.0;
        Duration::from_millis(ms as u64)
    }
}

#[derive(Debug)]
struct AgentBuckets {
    events: Bucket,
    bytes: Bucket,
    at: Instant,
    /// Refusals are paced up to here: the next one is held back until then at least.
    paced_until: Instant,
    /// What the agent's last decoded request cost at its rates (the spacing of its
    /// refusals).
    cost: Duration,
}

pub struct Limiter {
    cfg: LimitsConfig,
    inflight: InFlight,
    buckets: HashMap<String, AgentBuckets>,
    labelled: std::collections::HashSet<String>,
}

impl Limiter {
    pub fn new(cfg: LimitsConfig) -> Limiter {
        Limiter {
            cfg,
            inflight: InFlight::default(),
            buckets: HashMap::new(),
            labelled: std::collections::HashSet::new(),
        }
    }

    fn rates(&self, agent: &str) -> Rates {
        let o = self
            .cfg
            .agents
            .get(agent)
            .cloned()
            .unwrap_or(AgentLimits::default());
        Rates {
            events_per_sec: o.events_per_sec.unwrap_or(self.cfg.events_per_sec),
            bytes_per_sec: o.bytes_per_sec.unwrap_or(self.cfg.bytes_per_sec),
            burst: o.burst.unwrap_or(self.cfg.burst),
        }
    }

    /// The share of the outbox `agent` may hold under `reject` (`limits.outbox_share`).
    pub fn outbox_share(&self, agent: &str) -> f64 {
        self.cfg
            .agents
            .get(agent)
            .and_then(|a| a.outbox_share)
            .unwrap_or(self.cfg.outbox_share)
    }

    /// The in-flight counts, for the committer to give requests back.
    pub fn inflight(&self) -> InFlight {
        self.inflight.clone()
    }

    /// A refusal for `agent` if it has its `max_inflight` requests in flight already.
    pub fn too_many_in_flight(&self, agent: &str) -> Option<Refusal> {
        let max = self
            .cfg
            .agents
            .get(agent)
            .and_then(|a| a.max_inflight)
            .unwrap_or(self.cfg.max_inflight);
        if max == 0 || self.inflight.count(agent) < max {
            return None;
        }
        Some(Refusal {
            message: format!(
                "agent {agent} has {max} requests in flight at this edge, its limit \
                 (limits.max_inflight); nothing was stored"
            ),
            hold: INFLIGHT_HOLD,
            retry_after: Duration::ZERO,
        })
    }

    /// Takes a request of `events` events and `bytes` data bytes from `agent` at `now`,
    /// or refuses it.
    pub fn admit(
        &mut self,
        agent: &str,
        events: u64,
        bytes: u64,
        now: Instant,
    ) -> Result<(), Refusal> {
        if self.buckets.len() > MANY_BUCKETS {
            self.forget_idle(now);
        }
        let r = self.rates(agent);
        let b = self
            .buckets
            .entry(agent.to_string())
            .or_insert_with(|| AgentBuckets {
                events: Bucket::new(r.events_per_sec, r.burst),
                bytes: Bucket::new(r.bytes_per_sec, r.burst),
                at: now,
                paced_until: now,
                cost: Duration::ZERO,
            });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        b.events.refill(dt);
        b.bytes.refill(dt);
        if events > 0 || bytes > 0 {
            let at = |n: u64, bucket: &Bucket| match bucket.unlimited() {
                true => 0.0,
                false => n as f64 / bucket.rate,
            };
            let secs = at(events, &b.events).max(at(bytes, &b.bytes));
            b.cost = Duration::from_secs_f64(secs.min(MAX_HOLD.as_secs_f64()));
        }
        let (we, wb) = (b.events.wait(), b.bytes.wait());
        if we.is_zero() && wb.is_zero() {
            if !b.events.unlimited() {
                b.events.tokens -= events as f64;
            }
            if !b.bytes.unlimited() {
                b.bytes.tokens -= bytes as f64;
            }
            return Ok(());
        }
        let (what, rate, size, unit, wait) = if we >= wb {
            ("events", r.events_per_sec, b.events.size, "events", we)
        } else {
            ("bytes", r.bytes_per_sec, b.bytes.size, "bytes", wb)
        };
        // Held until the bucket has credit, and after the agent's earlier refusals.
        let due = (now + wait).max(b.paced_until);
        let hold = due.saturating_duration_since(now).min(MAX_HOLD);
        b.paced_until = (due + b.cost).min(now + MAX_HOLD);
        Err(Refusal {
            message: format!(
                "agent {agent} is over its limit of {rate:.0} {what}/s at this edge (burst \
                 {size:.0} {unit}, limits.{what}_per_sec); nothing was stored"
            ),
            hold,
            retry_after: wait.saturating_sub(hold),
        })
    }

    /// A refusal for `agent` if one of its buckets is empty at `now`, before its request
    /// is even decoded (a flooder's refused requests then cost little); takes nothing.
    pub fn empty(&mut self, agent: &str, now: Instant) -> Option<Refusal> {
        if !self.buckets.contains_key(agent) {
            return None;
        }
        self.admit(agent, 0, 0, now).err()
    }

    /// The `agent` label for metrics: the agent's own id for the agents with overrides
    /// and the first [`LABELLED_AGENTS`] others, [`OTHER_AGENTS`] past them.
    pub fn label(&mut self, agent: &str) -> String {
        if self.cfg.agents.contains_key(agent) || self.labelled.contains(agent) {
            return agent.to_string();
        }
        if self.labelled.len() < LABELLED_AGENTS {
            self.labelled.insert(agent.to_string());
            return agent.to_string();
        }
        OTHER_AGENTS.to_string()
    }

    /// Drops the buckets that have refilled completely (idle for a burst or longer).
    fn forget_idle(&mut self, now: Instant) {
        let rates: HashMap<String, Duration> = self
            .buckets
            .keys()
            .map(|a| (a.clone(), self.rates(a).burst))
            .collect();
        self.buckets
            .retain(|a, b| now.saturating_duration_since(b.at) < rates[a]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentLimits;

    fn limiter(events: f64, bytes: f64) -> Limiter {
        Limiter::new(LimitsConfig {
            events_per_sec: events,
            bytes_per_sec: bytes,
            burst: Duration::from_secs(1),
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_with_a_retry_time() {
        let mut l = limiter(100.0, 0.0);
        let t = Instant::now();
        for _ in 0..10 {
            l.admit("a1", 10, 0, t).unwrap();
        }
        let r = l.admit("a1", 1, 0, t).unwrap_err();
        assert!(r.message.contains("100 events/s"), "{}", r.message);
        assert!(r.message.contains("agent a1"), "{}", r.message);
        // Held back until the bucket has credit, then "retry now".
        assert_eq!(r.hold, Duration::from_millis(1));
        assert_eq!(r.retry_after, Duration::ZERO);
        assert!(r.text().ends_with("stored; retry now"), "{}", r.text());
        // 50 ms later: 5 events of credit.
        let t = t + Duration::from_millis(50);
        l.admit("a1", 10, 0, t).unwrap();
        let r = l.admit("a1", 1, 0, t).unwrap_err();
        assert_eq!(r.hold, Duration::from_millis(51));
    }

    #[test]
    fn refusals_are_paced_at_the_agents_own_rate() {
        // 100 events/s, requests of 10 events: one request's worth every 100 ms.
        let mut l = limiter(100.0, 0.0);
        let t = Instant::now();
        for _ in 0..10 {
            l.admit("a1", 10, 0, t).unwrap();
        }
        let holds: Vec<u128> = (0..4)
            .map(|_| l.admit("a1", 10, 0, t).unwrap_err().hold.as_millis())
            .collect();
        assert_eq!(holds, [1, 101, 201, 250]);
        // Refused before decoding: the last request's cost spaces them too.
        assert_eq!(l.empty("a1", t).unwrap().hold, MAX_HOLD);
        // Another agent is not paced behind it.
        l.admit("a2", 10, 0, t).unwrap();
        // Once the time has passed, the pacing starts afresh.
        let t = t + Duration::from_secs(1);
        for _ in 0..10 {
            l.admit("a1", 10, 0, t).unwrap();
        }
        assert_eq!(l.admit("a1", 10, 0, t).unwrap_err().hold.as_millis(), 1);
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_when_it_is_full_and_delays_the_next() {
        let mut l = limiter(100.0, 0.0);
        let t = Instant::now();
        l.admit("a1", 300, 0, t).unwrap();
        let r = l.admit("a1", 1, 0, t + Duration::from_secs(1)).unwrap_err();
        // Held for at most MAX_HOLD; the rest is the retry time.
        assert_eq!(r.hold, MAX_HOLD);
        assert_eq!(r.retry_after, Duration::from_millis(1001) - MAX_HOLD);
        assert!(
            r.text().ends_with("stored; retry in 751 ms"),
            "{}",
            r.text()
        );
        l.admit("a1", 1, 0, t + Duration::from_millis(2010))
            .unwrap();
    }

    #[test]
    fn agents_have_their_own_buckets_and_overrides() {
        let mut cfg = LimitsConfig {
            events_per_sec: 10.0,
            bytes_per_sec: 1000.0,
            burst: Duration::from_secs(1),
            ..LimitsConfig::default()
        };
        cfg.agents.insert(
            "bulk".into(),
            AgentLimits {
                events_per_sec: Some(0.0),
                bytes_per_sec: Some(0.0),
                burst: None,
                max_inflight: None,
                outbox_share: None,
            },
        );
        let mut l = Limiter::new(cfg);
        let t = Instant::now();
        l.admit("a1", 10, 10, t).unwrap();
        assert!(l.admit("a1", 1, 1, t).is_err());
        l.admit("a2", 10, 10, t).unwrap();
        for _ in 0..1000 {
            l.admit("bulk", 1000, 1 << 20, t).unwrap();
        }
        // Bytes run out first for a3.
        l.admit("a3", 1, 1000, t).unwrap();
        let r = l.admit("a3", 1, 1, t).unwrap_err();
        assert!(r.message.contains("1000 bytes/s"), "{}", r.message);
    }

    #[test]
    fn an_empty_bucket_is_seen_without_taking_anything() {
        let mut l = limiter(100.0, 0.0);
        let t = Instant::now();
        assert!(l.empty("a1", t).is_none());
        l.admit("a1", 100, 0, t).unwrap();
        assert!(l.empty("a1", t).is_some());
        let t = t + Duration::from_millis(20);
        assert!(l.empty("a1", t).is_none());
        l.admit("a1", 2, 0, t).unwrap();
    }

    #[test]
    fn requests_in_flight_are_limited_per_agent_until_given_back() {
        let mut cfg = LimitsConfig {
            max_inflight: 2,
            ..LimitsConfig::default()
        };
        cfg.agents.insert(
            "bulk".into(),
            AgentLimits {
                max_inflight: Some(0),
                ..AgentLimits::default()
            },
        );
        let l = Limiter::new(cfg);
        let f = l.inflight();
        assert!(l.too_many_in_flight("a1").is_none());
        f.take("a1");
        f.take("a1");
        let r = l.too_many_in_flight("a1").unwrap();
        assert!(
            r.text().contains("agent a1 has 2 requests in flight"),
            "{}",
            r.text()
        );
        assert!(r.text().contains("limits.max_inflight"), "{}", r.text());
        assert_eq!(r.hold, INFLIGHT_HOLD);
        // Others are not held back; 0 is no limit.
        assert!(l.too_many_in_flight("a2").is_none());
        for _ in 0..100 {
            f.take("bulk");
        }
        assert!(l.too_many_in_flight("bulk").is_none());
        f.release("a1");
        assert!(l.too_many_in_flight("a1").is_none());
        f.release("a1");
        f.release("a1");
        assert_eq!(f.count("a1"), 0);
    }

    #[test]
    fn labels_are_bounded() {
        let mut l = limiter(10.0, 0.0);
        for k in 0..LABELLED_AGENTS {
            assert_eq!(l.label(&format!("a{k}")), format!("a{k}"));
        }
        assert_eq!(l.label("late"), OTHER_AGENTS);
        assert_eq!(l.label("a0"), "a0");
    }

    #[test]
    fn idle_buckets_are_forgotten_once_there_are_many() {
        let mut l = limiter(10.0, 0.0);
        let t = Instant::now();
        for k in 0..=MANY_BUCKETS {
            l.admit(&format!("a{k}"), 1, 0, t).unwrap();
        }
        l.admit("new", 1, 0, t + Duration::from_secs(2)).unwrap();
        assert_eq!(l.buckets.len(), 1);
    }
}
