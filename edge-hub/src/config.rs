//! Edge hub configuration: a TOML file (`--config`), every key with a default, unknown
//! keys refused; command-line flags override the file. [`EdgeConfig::validate`] reports
//! every problem at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the outbox does when an append would pass `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Refuse the publish with `outbox_full`; nothing accepted is dropped.
    Reject,
    /// Expel the oldest records to make room, counting and logging each expulsion.
    DropOldest,
}

/// When a group commit counts as stored, and so may be acked (`outbox.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutboxSync {
    /// After sled's flush, `fdatasync` of its log and new blob files: an acked event
    /// survives a power cut (the default; `outbox::durable`).
    Always,
    /// After sled's flush only (`pwrite` + `sync_file_range`): an acked event survives a
    /// kill -9 of the edge hub, not a power cut or a kernel crash. Faster.
    Flush,
}

impl OutboxSync {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxSync::Always => "always",
            OutboxSync::Flush => "flush",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// This edge's id: one token of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Edge nats-server URL.
    pub nats: String,
    /// Where the sled outbox lives.
    pub data_dir: PathBuf,
    /// `/metrics` and `/health/*` listen address; none when unset.
    pub http: Option<String>,
    pub ingest: IngestConfig,
    pub outbox: OutboxConfig,
    pub forwarder: ForwarderConfig,
    pub uplink: UplinkConfig,
    pub limits: LimitsConfig,
}

/// What each agent may publish at this edge: token buckets of events and of data bytes
/// (see `limits`). A request over either is refused `rate_limited`, stores nothing, and
/// says when to retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Events per second per agent; 0 means no limit.
    pub events_per_sec: f64,
    /// Bytes of event data per second per agent; 0 means no limit.
    pub bytes_per_sec: f64,
    /// How much of its rates an agent may use at once, as time at that rate: the
    /// buckets hold `rate * burst`.
    #[serde(with = "humantime_serde")]
    pub burst: Duration,
    /// Requests per agent taken but not yet committed (acked or refused); one more is
    /// refused `rate_limited`. 0 means no limit.
    pub max_inflight: u32,
    /// Under `outbox.full_policy = "reject"`: the most of `outbox.max_bytes` one agent's
    /// events may hold; a request past it is refused `quota_exceeded`, so one agent
    /// cannot fill the outbox for everyone during a partition. 1 means no quota. (Under
    /// `drop-oldest` the agents over their fair share lose their own events first.)
    pub outbox_share: f64,
    /// Per-agent overrides, by agent id: `[limits.agents.<id>]` with any of the keys
    /// above.
    pub agents: BTreeMap<String, AgentLimits>,
}

/// One agent's overrides of [`LimitsConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_sec: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub burst: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_share: Option<f64>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            events_per_sec: 20_000.0,
            bytes_per_sec: (32u64 << 20) as f64,
            burst: Duration::from_secs(1),
            max_inflight: 64,
            outbox_share: 0.5,
            agents: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest event data accepted, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one ingest request.
    pub max_batch_events: usize,
    /// Most events written by one group commit.
    pub commit_max_events: usize,
    /// Most bytes written by one group commit.
    pub commit_max_bytes: usize,
    /// Publish the live copy on `mesh.live.<edge>.<subject>` after each commit.
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Most bytes of events the outbox holds.
    pub max_bytes: u64,
    /// Oldest an event may get in the outbox before it is expelled.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub full_policy: FullPolicy,
    /// sled page cache, in bytes: about what sled keeps of the outbox in memory, but never
    /// less than one leaf page (~70 KiB) per each of its 256 cache shards, ~16 MiB (see
    /// `outbox`, "Memory"). Probe peak RSS at 1M events: 35-39 MiB with 1 or 16 MiB,
    /// 71 MiB with 64 MiB.
    pub cache_bytes: u64,
    /// How long the edge remembers the event ids it stored, on the ids' own time (the
    /// `ce-id` rule, `outbox::ids`): a `ce-id` made longer ago is refused, since a copy
    /// could no longer be told from a new event.
    #[serde(with = "humantime_serde")]
    pub id_horizon: Duration,
    /// Most ids remembered (~30 bytes of memory each); past it the oldest are forgotten
    /// early, never those of the last minute, and ids older than them are refused.
    pub max_ids: u64,
    /// When a commit is acked: `always` once it is on stable storage (survives a power
    /// cut), `flush` once sled has written it to the kernel (survives a kill -9 only).
    pub sync: OutboxSync,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwarderConfig {
    /// Most events in one bundle.
    pub bundle_max_events: usize,
    /// Target size of one bundle, in bytes of event data.
    pub bundle_max_bytes: usize,
    /// Bundles sent and not yet acknowledged by the centre.
    pub max_inflight: usize,
    /// How long to wait for the centre's ack of a bundle.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// How often the link to the centre is probed.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// A probe unanswered this long fails; the link is down once the probe failed and no
    /// bundle ack arrived for this long either.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            id: "edge".into(),
            nats: "nats://127.0.0.1:4222".into(),
            data_dir: PathBuf::from("./edge-data"),
            http: None,
            ingest: IngestConfig::default(),
            outbox: OutboxConfig::default(),
            forwarder: ForwarderConfig::default(),
            uplink: UplinkConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        let limits = schemas::Limits::default();
        IngestConfig {
            max_event_bytes: limits.max_event_bytes,
            max_batch_events: limits.max_batch_events,
            commit_max_events: 8192,
            commit_max_bytes: 4 << 20,
            live: true,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
            full_policy: FullPolicy::Reject,
            cache_bytes: 16 << 20,
            id_horizon: Duration::from_secs(600),
            max_ids: 1_000_000,
            sync: OutboxSync::Always,
        }
    }
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            bundle_max_events: 1024,
            bundle_max_bytes: 128 << 10,
            max_inflight: 16,
            ack_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(500),
        }
    }
}

impl EdgeConfig {
    /// Reads a TOML file; unknown keys are an error naming the key.
    pub fn from_toml(text: &str) -> Result<EdgeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}"))
    }

    pub fn limits(&self) -> schemas::Limits {
        schemas::Limits {
            max_event_bytes: self.ingest.max_event_bytes,
            max_batch_events: self.ingest.max_batch_events,
        }
    }

    /// Every problem with this configuration, or `Ok` when there is none.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if let Err(e) = schemas::subject::validate_id("id", &self.id) {
            errs.push(e.to_string());
        }
        let positive = [
            ("ingest.max_event_bytes", self.ingest.max_event_bytes as u64),
            (
                "ingest.max_batch_events",
                self.ingest.max_batch_events as u64,
            ),
            (
                "ingest.commit_max_events",
                self.ingest.commit_max_events as u64,
            ),
            (
                "ingest.commit_max_bytes",
                self.ingest.commit_max_bytes as u64,
            ),
            ("outbox.max_bytes", self.outbox.max_bytes),
            ("outbox.max_ids", self.outbox.max_ids),
            (
                "forwarder.bundle_max_events",
                self.forwarder.bundle_max_events as u64,
            ),
            (
                "forwarder.bundle_max_bytes",
                self.forwarder.bundle_max_bytes as u64,
            ),
            ("forwarder.max_inflight", self.forwarder.max_inflight as u64),
        ];
        for (name, v) in positive {
            if v == 0 {
                errs.push(format!("{name} is 0; it must be at least 1"));
            }
        }
        for (name, d) in [
            ("outbox.max_age", self.outbox.max_age),
            ("outbox.id_horizon", self.outbox.id_horizon),
            ("forwarder.ack_timeout", self.forwarder.ack_timeout),
            ("uplink.probe_interval", self.uplink.probe_interval),
            ("uplink.probe_timeout", self.uplink.probe_timeout),
        ] {
            if d.is_zero() {
                errs.push(format!("{name} is 0s; it must be longer"));
            }
        }
        let mut rates = vec![
            (
                "limits.events_per_sec".to_string(),
                self.limits.events_per_sec,
            ),
            (
                "limits.bytes_per_sec".to_string(),
                self.limits.bytes_per_sec,
            ),
        ];
        let mut bursts = vec![("limits.burst".to_string(), self.limits.burst)];
        let mut shares = vec![("limits.outbox_share".to_string(), self.limits.outbox_share)];
        for (agent, a) in &self.limits.agents {
            if let Err(e) = schemas::subject::validate_id("an agent of limits.agents", agent) {
                errs.push(e.to_string());
            }
            let key = |k: &str| format!("limits.agents.{agent}.{k}");
            rates.extend(a.events_per_sec.map(|r| (key("events_per_sec"), r)));
            rates.extend(a.bytes_per_sec.map(|r| (key("bytes_per_sec"), r)));
            bursts.extend(a.burst.map(|b| (key("burst"), b)));
            shares.extend(a.outbox_share.map(|s| (key("outbox_share"), s)));
        }
        for (name, r) in rates {
            if !(r.is_finite() && r >= 0.0) {
                errs.push(format!("{name} is {r}; it must be 0 (no limit) or more"));
            }
        }
        for (name, s) in shares {
            if !(s > 0.0 && s <= 1.0) {
                errs.push(format!(
                    "{name} is {s}; it must be more than 0 and at most 1 (1: no quota)"
                ));
            }
        }
        for (name, b) in bursts {
            if b.is_zero() {
                errs.push(format!("{name} is 0s; it must be longer"));
            }
        }
        if (self.ingest.max_event_bytes as u64) > self.outbox.max_bytes {
            errs.push(format!(
                "ingest.max_event_bytes ({}) is larger than outbox.max_bytes ({})",
                self.ingest.max_event_bytes, self.outbox.max_bytes
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_unknown_keys_are_refused() {
        let c = EdgeConfig::default();
        assert_eq!(EdgeConfig::from_toml(&c.to_toml()).unwrap(), c);
        let err = EdgeConfig::from_toml("id = \"e1\"\nbogus = 1\n").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let c =
            EdgeConfig::from_toml("[outbox]\nmax_age = \"90s\"\nfull_policy = \"drop-oldest\"\n")
                .unwrap();
        assert_eq!(c.outbox.max_age, Duration::from_secs(90));
        assert_eq!(c.outbox.full_policy, FullPolicy::DropOldest);
        let c = EdgeConfig::from_toml(
            "[limits]\nevents_per_sec = 100\n[limits.agents.bulk]\nevents_per_sec = 0\nburst = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.limits.events_per_sec, 100.0);
        assert_eq!(c.limits.agents["bulk"].events_per_sec, Some(0.0));
        assert_eq!(c.limits.agents["bulk"].burst, Some(Duration::from_secs(5)));
        assert_eq!(EdgeConfig::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut c = EdgeConfig {
            id: "bad id".into(),
            ..EdgeConfig::default()
        };
        c.forwarder.max_inflight = 0;
        c.uplink.probe_timeout = Duration::ZERO;
        c.limits.events_per_sec = -1.0;
        c.limits.agents.insert(
            "a1".into(),
            AgentLimits {
                burst: Some(Duration::ZERO),
                ..AgentLimits::default()
            },
        );
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("limits.agents.a1.burst")),
            "{errs:?}"
        );
    }
}
