//! Prometheus metrics of the edge hub, served as text on `/metrics`.
//!
//! Counters are updated where things happen; the outbox gauges and the expulsion counters
//! are read from [`crate::outbox::Outbox::stats`] at each scrape, so they are never stale.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::outbox::Outbox;

type Labels = Vec<(String, String)>;

pub struct EdgeMetrics {
    registry: Mutex<Registry>,
    ingested: Counter,
    rejected: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    repeated: Counter,
    expelled: Family<Labels, Counter>,
    commit_seconds: Histogram,
    outbox_events: Gauge,
    outbox_bytes: Gauge,
    outbox_max_bytes: Gauge,
    outbox_acked_seq: Gauge,
    ids_remembered: Gauge,
    bundles_inflight: Gauge,
    bundles_forwarded: Counter,
    events_forwarded: Counter,
    uplink_up: Gauge,
    /// Ingest requests refused, for tests and summaries.
    pub rejected_total: AtomicU64,
    /// Ingest requests refused, by reason (a fixed set), for the status page.
    rejected_by_reason: Mutex<BTreeMap<String, u64>>,
}

/// The edge hub's counters as they stand, for the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EdgeFigures {
    /// Events durably accepted since the hub started.
    pub ingested_events: u64,
    /// Events and bundles the centre acknowledged since the hub started.
    pub forwarded_events: u64,
    pub forwarded_bundles: u64,
    /// Bundles sent and not yet acknowledged.
    pub bundles_inflight: u64,
    /// Whether the centre is reachable through the leaf link.
    pub uplink_up: bool,
    /// Ingest requests refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Requests sent again after they were stored.
    pub repeated: u64,
}

impl EdgeMetrics {
    pub fn new(edge: &str) -> Arc<EdgeMetrics> {
        let m = EdgeMetrics {
            registry: Mutex::new(Registry::with_prefix_and_labels(
                "mesh_edge",
                [(
                    std::borrow::Cow::Borrowed("edge"),
                    std::borrow::Cow::Owned(edge.to_string()),
                )]
                .into_iter(),
            )),
            ingested: Counter::default(),
            rejected: Family::default(),
            rate_limited: Family::default(),
            repeated: Counter::default(),
            expelled: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            outbox_events: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_max_bytes: Gauge::default(),
            outbox_acked_seq: Gauge::default(),
            ids_remembered: Gauge::default(),
            bundles_inflight: Gauge::default(),
            bundles_forwarded: Counter::default(),
            events_forwarded: Counter::default(),
            uplink_up: Gauge::default(),
            rejected_total: AtomicU64::new(0),
            rejected_by_reason: Mutex::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "ingested_events",
                "Events durably accepted",
                m.ingested.clone(),
            );
            r.register(
                "rejected_requests",
                "Ingest requests refused, by reason",
                m.rejected.clone(),
            );
            r.register(
                "rate_limited_requests",
                "Ingest requests refused rate_limited, by agent (the first 100 agents and those with limits of their own; the rest as _other)",
                m.rate_limited.clone(),
            );
            r.register(
                "repeated_requests",
                "Ingest requests sent again after they were stored (same mesh-producer and mesh-request): answered with the original ack, nothing stored",
                m.repeated.clone(),
            );
            r.register(
                "expelled_events",
                "Events expelled by outbox limits, by reason",
                m.expelled.clone(),
            );
            r.register(
                "commit_seconds",
                "Group commit duration (sled write + flush)",
                m.commit_seconds.clone(),
            );
            r.register(
                "outbox_events",
                "Events held in the outbox",
                m.outbox_events.clone(),
            );
            r.register(
                "outbox_bytes",
                "Bytes held in the outbox",
                m.outbox_bytes.clone(),
            );
            r.register(
                "outbox_max_bytes",
                "The outbox's byte limit (outbox.max_bytes): outbox_bytes / outbox_max_bytes is how full it is",
                m.outbox_max_bytes.clone(),
            );
            r.register(
                "ids_remembered",
                "Event ids remembered for the ce-id rule (outbox.id_horizon, outbox.max_ids)",
                m.ids_remembered.clone(),
            );
            r.register(
                "outbox_acked_seq",
                "Highest edge sequence the centre acknowledged",
                m.outbox_acked_seq.clone(),
            );
            r.register(
                "bundles_inflight",
                "Bundles sent and not yet acknowledged",
                m.bundles_inflight.clone(),
            );
            r.register(
                "forwarded_bundles",
                "Bundles acknowledged by the centre",
                m.bundles_forwarded.clone(),
            );
            r.register(
                "forwarded_events",
                "Events acknowledged by the centre",
                m.events_forwarded.clone(),
            );
            r.register(
                "uplink_up",
                "1 when the centre is reachable through the leaf link",
                m.uplink_up.clone(),
            );
        }
        Arc::new(m)
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        *self
            .rejected_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_string())
            .or_default() += 1;
        self.rejected
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// A request of `agent` (a bounded label, see `limits::Limiter::label`) was refused
    /// `rate_limited` (also counted in `rejected_requests{reason="rate_limited"}`).
    pub fn rate_limited(&self, agent: &str) {
        self.rate_limited
            .get_or_create(&vec![("agent".into(), agent.into())])
            .inc();
    }

    /// A request was sent again after it was stored, and got its original ack.
    pub fn repeated(&self) {
        self.repeated.inc();
    }

    pub fn committed(&self, events: u64, took: Duration) {
        self.ingested.inc_by(events);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    pub fn forwarded(&self, events: u64) {
        self.bundles_forwarded.inc();
        self.events_forwarded.inc_by(events);
    }

    pub fn inflight(&self, n: usize) {
        self.bundles_inflight.set(n as i64);
    }

    pub fn uplink(&self, up: bool) {
        self.uplink_up.set(up as i64);
    }

    /// The outbox's byte limit, set once at start.
    pub fn outbox_limit(&self, max_bytes: u64) {
        self.outbox_max_bytes
            .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
    }

    /// The counters as they stand (the outbox's own figures are [`Outbox::stats`]).
    pub fn figures(&self) -> EdgeFigures {
        EdgeFigures {
            ingested_events: self.ingested.get(),
            forwarded_events: self.events_forwarded.get(),
            forwarded_bundles: self.bundles_forwarded.get(),
            bundles_inflight: self.bundles_inflight.get().max(0) as u64,
            uplink_up: self.uplink_up.get() == 1,
            rejected: self
                .rejected_by_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            repeated: self.repeated.get(),
        }
    }

    /// The Prometheus text exposition, with the outbox figures read now.
    pub fn render(&self, outbox: &Outbox) -> String {
        let s = outbox.stats();
        self.outbox_events.set(s.events as i64);
        self.outbox_bytes.set(s.bytes as i64);
        self.outbox_acked_seq.set(s.acked as i64);
        self.ids_remembered
            .set(i64::try_from(outbox.ids_remembered().0).unwrap_or(i64::MAX));
        for (reason, total) in [
            ("max_age", s.expelled_max_age),
            ("max_bytes", s.expelled_max_bytes),
        ] {
            let c = self
                .expelled
                .get_or_create(&vec![("reason".into(), reason.into())]);
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        }
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = encode(&mut out, &r) {
            out = format!("# cannot encode metrics: {e}\n");
        }
        out
    }
}
