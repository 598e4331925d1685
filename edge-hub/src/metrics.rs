//! Prometheus metrics of the edge hub, served as text on `/metrics`.
//!
//! Counters are updated where things happen; the outbox gauges and the expulsion counters
//! are read from [`crate::outbox::Outbox::stats`] at each scrape, so they are never stale.

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
    outbox_acked_seq: Gauge,
    ids_remembered: Gauge,
    bundles_inflight: Gauge,
    bundles_forwarded: Counter,
    events_forwarded: Counter,
    uplink_up: Gauge,
    /// Ingest requests refused, for tests and summaries.
    pub rejected_total: AtomicU64,
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
            outbox_acked_seq: Gauge::default(),
            ids_remembered: Gauge::default(),
            bundles_inflight: Gauge::default(),
            bundles_forwarded: Counter::default(),
            events_forwarded: Counter::default(),
            uplink_up: Gauge::default(),
            rejected_total: AtomicU64::new(0),
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
