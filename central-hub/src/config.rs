//! Central hub configuration: a TOML file (`--config`), every key with a default, unknown
//! keys refused, flags override the file; [`CentralConfig::validate`] lists every problem.
//!
//! `[streams]` ([`StreamsConfig`]) governs how the hub sets up its streams on start (see
//! [`crate::streams`]): `apply_changes` (default `false`; `mesh central
//! --apply-stream-changes` sets it) lets the hub change an existing stream whose settings
//! differ from this configuration, each change audited as `stream.updated`; without it the
//! hub refuses to start and names every difference. `setup_timeout` (default `60s`) bounds
//! the whole set-up, retries included; `request_timeout` (default `30s`) bounds each
//! JetStream admin request (creating an R3 stream on a fresh cluster takes seconds).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentralConfig {
    /// This hub's name in heartbeats and logs; `central-<pid>` when empty.
    pub hub_id: String,
    /// Central nats-server URL.
    pub nats: String,
    /// `/metrics` and `/health/*` listen address; none when unset.
    pub http: Option<String>,
    pub events: EventsConfig,
    pub ingress: IngressConfig,
    pub lander: LanderConfig,
    pub streams: StreamsConfig,
    /// How often the hub publishes `mesh.hub.heartbeat.<hub_id>`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

/// Stream `MESH_EVENTS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// How long events are kept; 0 keeps them until `max_bytes`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most bytes kept; -1 for no limit.
    pub max_bytes: i64,
    /// JetStream de-duplication window on `Nats-Msg-Id` (= `<edge>:<meshseq>`). Exactly-once does
    /// not rest on it: the lander's high-water mark does.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    pub replicas: usize,
}

/// Stream `MESH_INGRESS` (work queue of bundles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    pub replicas: usize,
}

/// How the hub sets up its streams and bucket on start ([`crate::streams::ensure`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Change an existing stream whose managed settings differ from this configuration
    /// (recorded as `stream.updated`); when false the hub refuses to start instead.
    pub apply_changes: bool,
    /// How long the whole set-up may take, retries of transient failures included.
    #[serde(with = "humantime_serde")]
    pub setup_timeout: Duration,
    /// How long one JetStream admin request (create, update, info) may wait for its reply.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanderConfig {
    /// A bundle delivered to a lander that neither acks nor naks it in this time is
    /// delivered again.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// A pinned lander that stops pulling for this long loses the pin to a standby hub.
    #[serde(with = "humantime_serde")]
    pub pin_timeout: Duration,
    /// Bundles fetched per pull.
    pub batch: usize,
    /// How long a bundle that arrived ahead of a missing one waits before it is tried
    /// again, when it is not kept in hand (the hand is full, or it waited too long).
    #[serde(with = "humantime_serde")]
    pub gap_retry: Duration,
    /// Most bundles kept in hand ahead of gaps, all edges together; 0 keeps none (every
    /// bundle ahead of a gap is put back for `gap_retry`). Kept bundles count against the
    /// consumer's `max_ack_pending`, so at most half of it.
    pub hand_bundles: usize,
    /// Most bytes (bundle bodies) kept in hand, all edges together.
    pub hand_bytes: u64,
    /// An edge whose mark has not moved for this long gives back every bundle it has in
    /// hand (put back for `gap_retry`), so a bundle that never comes pins no memory.
    #[serde(with = "humantime_serde")]
    pub hand_max_wait: Duration,
    /// Most bundles landed as one run (one store, one mark write), and taken at once from
    /// what the pull task has pulled.
    pub run_bundles: usize,
    /// Most bytes (bundle bodies) in one run and taken at once; a single bundle larger
    /// than this still lands, alone.
    pub run_bytes: u64,
    /// How long one of the lander's JetStream requests (a run's store ack, the mark's
    /// reads and write) waits before the lander gives up on it and tries again. Short:
    /// when a stream's leader dies mid-request, the lander tries the new one within this
    /// time of its election instead of a default 5 s later.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for CentralConfig {
    fn default() -> Self {
        CentralConfig {
            hub_id: String::new(),
            nats: "nats://127.0.0.1:4222".into(),
            http: None,
            events: EventsConfig::default(),
            ingress: IngressConfig::default(),
            lander: LanderConfig::default(),
            streams: StreamsConfig::default(),
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_age: Duration::ZERO,
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            apply_changes: false,
            // Two hubs racing to create R3 streams on a fresh cluster took ~10 s a stream.
            setup_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for LanderConfig {
    fn default() -> Self {
        LanderConfig {
            // A bundle held by a lander that died comes back after this; landing a pulled
            // batch takes about a second, so 5 s leaves room and bounds the stall.
            ack_wait: Duration::from_secs(5),
            pin_timeout: Duration::from_secs(3),
            batch: 16,
            gap_retry: Duration::from_millis(200),
            // A failover brings back about 1,000 bundles out of order; half of the
            // consumer's max_ack_pending keeps most of them in hand and leaves room for
            // the missing ones.
            hand_bundles: 512,
            hand_bytes: 64 << 20,
            hand_max_wait: Duration::from_secs(30),
            // 64 single-event bundles are one store round trip and one R3 KV commit
            // instead of 64 of each; a run of big bundles stops at 8 MiB.
            run_bundles: 64,
            // Small enough that a run's store ack comes well within `request_timeout`.
            run_bytes: 2 << 20,
            request_timeout: Duration::from_secs(1),
        }
    }
}

impl CentralConfig {
    pub fn from_toml(text: &str) -> Result<CentralConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}"))
    }

    /// Every problem with this configuration, or `Ok`.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if !self.hub_id.is_empty() {
            if let Err(e) = schemas::subject::validate_id("hub_id", &self.hub_id) {
                errs.push(e.to_string());
            }
        }
        if !self.events.max_age.is_zero() && self.events.duplicate_window > self.events.max_age {
            errs.push(format!(
                "events.duplicate_window ({:?}) is longer than events.max_age ({:?})",
                self.events.duplicate_window, self.events.max_age
            ));
        }
        for (name, r) in [
            ("events.replicas", self.events.replicas),
            ("ingress.replicas", self.ingress.replicas),
        ] {
            if !(1..=5).contains(&r) {
                errs.push(format!("{name} is {r}; it must be 1 to 5"));
            }
        }
        for (name, d) in [
            ("events.duplicate_window", self.events.duplicate_window),
            ("ingress.duplicate_window", self.ingress.duplicate_window),
            ("lander.ack_wait", self.lander.ack_wait),
            ("lander.pin_timeout", self.lander.pin_timeout),
            ("lander.gap_retry", self.lander.gap_retry),
            ("lander.hand_max_wait", self.lander.hand_max_wait),
            ("heartbeat_interval", self.heartbeat_interval),
            ("streams.setup_timeout", self.streams.setup_timeout),
            ("streams.request_timeout", self.streams.request_timeout),
        ] {
            if d.is_zero() {
                errs.push(format!("{name} is 0s; it must be longer"));
            }
        }
        if self.lander.pin_timeout < Duration::from_millis(500) {
            errs.push(format!(
                "lander.pin_timeout is {:?}; it must be at least 500ms (the lander pulls every 250ms)",
                self.lander.pin_timeout
            ));
        }
        if self.lander.batch == 0 {
            errs.push("lander.batch is 0; it must be at least 1".into());
        }
        if self.lander.request_timeout < Duration::from_millis(100) {
            errs.push(format!(
                "lander.request_timeout is {:?}; it must be at least 100ms",
                self.lander.request_timeout
            ));
        }
        if self.lander.run_bundles == 0 {
            errs.push("lander.run_bundles is 0; it must be at least 1".into());
        }
        if self.lander.run_bytes == 0 {
            errs.push("lander.run_bytes is 0; it must be at least 1".into());
        }
        let most = crate::lander::MAX_ACK_PENDING / 2;
        if self.lander.hand_bundles > most {
            errs.push(format!(
                "lander.hand_bundles is {}; it must be at most {most} (half the lander \
                 consumer's max_ack_pending, so the missing bundles can still be delivered)",
                self.lander.hand_bundles
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// `hub_id`, or `central-<pid>` when unset.
    pub fn hub_name(&self) -> String {
        if self.hub_id.is_empty() {
            format!("central-{}", std::process::id())
        } else {
            self.hub_id.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_unknown_keys_are_refused() {
        let c = CentralConfig::default();
        assert_eq!(CentralConfig::from_toml(&c.to_toml()).unwrap(), c);
        assert!(CentralConfig::from_toml("[events]\nmaxage = \"1s\"\n")
            .unwrap_err()
            .contains("maxage"));
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut c = CentralConfig::default();
        c.events.max_age = Duration::from_secs(1);
        c.events.replicas = 7;
        c.lander.batch = 0;
        c.lander.hand_bundles = 513;
        c.lander.hand_max_wait = Duration::ZERO;
        c.lander.run_bundles = 0;
        assert_eq!(c.validate().unwrap_err().len(), 6);
    }
}
