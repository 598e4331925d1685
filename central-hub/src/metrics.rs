//! Prometheus metrics of the central hub, served as text on `/metrics`.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn edge(e: &str) -> Labels {
    vec![("edge".into(), e.into())]
}

pub struct CentralMetrics {
    registry: Mutex<Registry>,
    landed_events: Family<Labels, Counter>,
    landed_bundles: Family<Labels, Counter>,
    duplicate_bundles: Family<Labels, Counter>,
    gap_waits: Family<Labels, Counter>,
    skipped_events: Family<Labels, Counter>,
    slow_path: Family<Labels, Counter>,
    mark: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge>,
    bad_bundles: Counter,
    /// Events landed from all edges since start (for heartbeats).
    pub landed_total: std::sync::atomic::AtomicU64,
}

impl CentralMetrics {
    pub fn new() -> CentralMetrics {
        let m = CentralMetrics {
            registry: Mutex::new(Registry::with_prefix("mesh_central")),
            landed_events: Family::default(),
            landed_bundles: Family::default(),
            duplicate_bundles: Family::default(),
            gap_waits: Family::default(),
            skipped_events: Family::default(),
            slow_path: Family::default(),
            mark: Family::default(),
            lag: Family::default(),
            bad_bundles: Counter::default(),
            landed_total: Default::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "landed_events",
                "Events stored in MESH_EVENTS, by edge",
                m.landed_events.clone(),
            );
            r.register(
                "landed_bundles",
                "Bundles landed, by edge",
                m.landed_bundles.clone(),
            );
            r.register(
                "duplicate_bundles",
                "Bundles skipped because already landed, by edge",
                m.duplicate_bundles.clone(),
            );
            r.register(
                "skipped_events",
                "Events in bundles at or below the high-water mark, not landed again, by edge",
                m.skipped_events.clone(),
            );
            r.register(
                "slow_path_bundles",
                "Bundles landed again with an ack per event because the fast path was not proven",
                m.slow_path.clone(),
            );
            r.register(
                "gap_waits",
                "Bundles put back to wait for a missing one, by edge",
                m.gap_waits.clone(),
            );
            r.register(
                "lander_mark",
                "Highest edge sequence landed, by edge",
                m.mark.clone(),
            );
            r.register(
                "lander_lag",
                "Edge sequences seen in bundles but not landed yet, by edge",
                m.lag.clone(),
            );
            r.register(
                "bad_bundles",
                "Bundles refused as undecodable or inconsistent",
                m.bad_bundles.clone(),
            );
        }
        m
    }

    pub fn landed(&self, e: &str, events: u64, mark: u64) {
        self.landed_total
            .fetch_add(events, std::sync::atomic::Ordering::Relaxed);
        let l = edge(e);
        self.landed_events.get_or_create(&l).inc_by(events);
        self.landed_bundles.get_or_create(&l).inc();
        self.mark.get_or_create(&l).set(mark as i64);
        self.lag.get_or_create(&l).set(0);
    }

    pub fn skipped(&self, e: &str, events: u64) {
        if events > 0 {
            self.skipped_events.get_or_create(&edge(e)).inc_by(events);
        }
    }

    pub fn slow_path(&self, e: &str) {
        self.slow_path.get_or_create(&edge(e)).inc();
    }

    pub fn duplicate_bundle(&self, e: &str) {
        self.duplicate_bundles.get_or_create(&edge(e)).inc();
    }

    pub fn gap(&self, e: &str, seen: u64, mark: u64) {
        let l = edge(e);
        self.gap_waits.get_or_create(&l).inc();
        self.lag
            .get_or_create(&l)
            .set(seen.saturating_sub(mark) as i64);
    }

    pub fn bad_bundle(&self) {
        self.bad_bundles.inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = encode(&mut out, &r) {
            out = format!("# cannot encode metrics: {e}\n");
        }
        out
    }
}

impl Default for CentralMetrics {
    fn default() -> Self {
        Self::new()
    }
}
