//! Prometheus metrics of the central hub, served as text on `/metrics`.
//!
//! Most are updated where things happen (the lander); the `edge_*`, `dead_letters` and
//! `audit_records` figures are the [`crate::status`] sampler's, set once a second from
//! the registry and the edges' status heartbeats.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The `edge` label of a refused bundle from an edge the lander never landed (so
/// whoever can publish to `mesh.up.>` cannot grow the metric without bound).
pub const UNKNOWN_EDGE: &str = "_unknown";

/// This hub's lander figures of one edge, for the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EdgeFigures {
    /// Events landed since this hub started.
    pub landed_events: u64,
    pub landed_bundles: u64,
    /// Highest edge sequence landed (the high-water mark), 0 before the first.
    pub mark: u64,
    /// Edge sequences seen in bundles but not landed yet.
    pub lag: u64,
    /// Bundles kept in hand ahead of a gap.
    pub in_hand: u64,
    /// The lander holds the edge (its mark is unreadable).
    pub held: bool,
    /// Bundles refused to `MESH_DLQ`.
    pub refused_bundles: u64,
}

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
    broken_chains: Family<Labels, Counter>,
    mark: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge>,
    refused_bundles: Family<Labels, Counter>,
    held_bundles: Family<Labels, Counter>,
    edge_held: Family<Labels, Gauge>,
    in_hand: Family<Labels, Gauge>,
    landed_from_hand: Family<Labels, Counter>,
    landed_late: Family<Labels, Counter>,
    runs: Family<Labels, Counter>,
    edge_connected: Family<Labels, Gauge>,
    edge_backlog: Family<Labels, Gauge>,
    /// Unlabelled; no sample until the first read of the audit log, so a restarted hub
    /// never shows 0 between two totals (which `increase()` would take for a reset and
    /// count the whole total as new dead letters).
    dead_letters: Family<Labels, Counter>,
    audit_records: Family<Labels, Gauge>,
    /// Bundles refused per edge label, every reason (for the status page).
    refused_by_edge: Mutex<BTreeMap<String, u64>>,
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
            broken_chains: Family::default(),
            mark: Family::default(),
            lag: Family::default(),
            refused_bundles: Family::default(),
            held_bundles: Family::default(),
            edge_held: Family::default(),
            in_hand: Family::default(),
            landed_from_hand: Family::default(),
            landed_late: Family::default(),
            runs: Family::default(),
            edge_connected: Family::default(),
            edge_backlog: Family::default(),
            dead_letters: Family::default(),
            audit_records: Family::default(),
            refused_by_edge: Mutex::default(),
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
                "lander_broken_chains",
                "Runs the stream did not take as one chain (an event lost, another writer, a stale sequence); they land again from the mark",
                m.broken_chains.clone(),
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
                "refused_bundles",
                "Bundles refused to MESH_DLQ, by edge of the subject (_unknown for one this hub \
                 never landed) and reason",
                m.refused_bundles.clone(),
            );
            r.register(
                "held_bundles",
                "Bundles put back because their edge's high-water mark is unreadable, by edge",
                m.held_bundles.clone(),
            );
            r.register(
                "lander_edge_held",
                "1 while the lander holds the edge (its high-water mark is unreadable), by edge",
                m.edge_held.clone(),
            );
            r.register(
                "lander_in_hand",
                "Bundles the lander keeps in hand ahead of a gap until the missing one lands, by edge",
                m.in_hand.clone(),
            );
            r.register(
                "landed_from_hand_bundles",
                "Bundles landed (or found already landed) from the hand once the gap before them closed, by edge",
                m.landed_from_hand.clone(),
            );
            r.register(
                "landed_late_bundles",
                "Bundles missing before the hand landed straight from MESH_INGRESS, their \
                 delivery still out (after a failover), by edge",
                m.landed_late.clone(),
            );
            r.register(
                "lander_runs",
                "Runs landed: consecutive bundles of an edge stored together under one \
                 high-water mark write, by edge (landed_bundles / lander_runs is the mean run)",
                m.runs.clone(),
            );
            r.register(
                "edge_connected",
                "1 while the registry records the edge's link connected, 0 while lost, by edge",
                m.edge_connected.clone(),
            );
            r.register(
                "edge_backlog_events",
                "Events waiting in the edge's outbox, as its last status heartbeat to this hub \
                 said (not updated while its link is lost), by edge",
                m.edge_backlog.clone(),
            );
            r.register(
                "dead_letters",
                "Dead letters recorded in the audit log, from every source and hub, as of this \
                 hub's last read of the log (once a second)",
                m.dead_letters.clone(),
            );
            r.register(
                "audit_records",
                "Records in the audit log (the head's sequence), as of this hub's last read",
                m.audit_records.clone(),
            );
        }
        m
    }

    /// What the registry and the last heartbeat say about edge `e`: its link, and its
    /// backlog when a heartbeat was received.
    pub fn edge_state(&self, e: &str, connected: bool, backlog: Option<u64>) {
        let l = edge(e);
        self.edge_connected
            .get_or_create(&l)
            .set(i64::from(connected));
        if let Some(b) = backlog {
            self.edge_backlog
                .get_or_create(&l)
                .set(i64::try_from(b).unwrap_or(i64::MAX));
        }
    }

    /// The audit log as last read: its record count and the dead letters it holds.
    pub fn audit_read(&self, records: u64, dead_letters: u64) {
        self.audit_records
            .get_or_create(&Labels::new())
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        let c = self.dead_letters.get_or_create(&Labels::new());
        let seen = c.get();
        if dead_letters > seen {
            c.inc_by(dead_letters - seen);
        }
    }

    /// This hub's lander figures of edge `e` (zeros for an edge it never landed).
    pub fn edge_figures(&self, e: &str) -> EdgeFigures {
        let l = edge(e);
        let counter = |f: &Family<Labels, Counter>| f.get(&l).map_or(0, |c| c.get());
        let gauge = |f: &Family<Labels, Gauge>| f.get(&l).map_or(0, |g| g.get().max(0) as u64);
        EdgeFigures {
            landed_events: counter(&self.landed_events),
            landed_bundles: counter(&self.landed_bundles),
            mark: gauge(&self.mark),
            lag: gauge(&self.lag),
            in_hand: gauge(&self.in_hand),
            held: gauge(&self.edge_held) > 0,
            refused_bundles: self
                .refused_by_edge
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(e)
                .copied()
                .unwrap_or(0),
        }
    }

    /// Bundles refused from an edge this hub never landed (the `_unknown` label).
    pub fn refused_unknown(&self) -> u64 {
        self.refused_by_edge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(UNKNOWN_EDGE)
            .copied()
            .unwrap_or(0)
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

    /// `bundles` bundles (a run) landed again with an ack per event.
    pub fn broken_chain(&self, e: &str) {
        self.broken_chains.get_or_create(&edge(e)).inc();
    }

    /// A run of edge `e` landed (one mark write).
    pub fn run(&self, e: &str) {
        self.runs.get_or_create(&edge(e)).inc();
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

    /// A bundle refused; `edge` is a known edge or `_unknown`, `reason` one of a fixed set.
    pub fn refused_bundle(&self, edge: &str, reason: &str) {
        *self
            .refused_by_edge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(edge.to_string())
            .or_default() += 1;
        self.refused_bundles
            .get_or_create(&vec![
                ("edge".into(), edge.into()),
                ("reason".into(), reason.into()),
            ])
            .inc();
    }

    /// A bundle of a held edge put back.
    pub fn held_bundle(&self, e: &str) {
        self.held_bundles.get_or_create(&edge(e)).inc();
    }

    /// Whether the lander holds edge `e`.
    pub fn edge_held(&self, e: &str, held: bool) {
        self.edge_held.get_or_create(&edge(e)).set(i64::from(held));
    }

    /// Bundles of edge `e` kept in hand now.
    pub fn in_hand(&self, e: &str, bundles: usize) {
        self.in_hand.get_or_create(&edge(e)).set(bundles as i64);
    }

    /// A bundle of edge `e` taken from the hand and settled (landed or a duplicate).
    pub fn landed_from_hand(&self, e: &str) {
        self.landed_from_hand.get_or_create(&edge(e)).inc();
    }

    /// A late bundle of edge `e` landed straight from `MESH_INGRESS`.
    pub fn landed_late(&self, e: &str) {
        self.landed_late.get_or_create(&edge(e)).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A restarted hub must not show 0 dead letters before it has read the log: Prometheus
    /// would take the 0 for a counter reset and count the whole total again.
    #[test]
    fn dead_letters_have_no_sample_before_the_first_read() {
        let m = CentralMetrics::new();
        assert!(!m.render().contains("mesh_central_dead_letters_total"));
        m.audit_read(12, 3);
        m.audit_read(12, 3);
        let text = m.render();
        assert!(
            text.contains("\nmesh_central_dead_letters_total{} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\nmesh_central_audit_records{} 12\n"),
            "{text}"
        );
    }
}
