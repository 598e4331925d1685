//! The central hub's status page: `/` and `/status` serve one static page
//! (`status.html` and `status.js`, compiled into the binary), which fetches
//! `/status.json` every second and draws it; no build step, nothing from elsewhere.
//!
//! # What the centre knows, and shows
//! Per edge, three sources, each named on the page:
//! * the **registry** (the audit log's projection, read again every second with
//!   [`AuditLog::sync`], so records other hubs wrote show too): link state, last seen,
//!   outages, expulsions, agents;
//! * the edge's last **status heartbeat** (`mesh.hub.edge.<edge>`, every second while its
//!   link is up): the backlog in its outbox and how old that report is. While the link is
//!   lost no heartbeat arrives, so the backlog shown is the last one reported and ages;
//!   the edge hub's own page shows the live figure;
//! * **this hub's lander** ([`EdgeFigures`]): events landed since this hub started, the
//!   last edge sequence landed (the high-water mark), lag, bundles in hand or refused.
//!   A standby hub lands nothing, so its figures stay at zero while another hub lands.
//!
//! Mesh-wide: readiness and held edges ([`crate::health`]), dead letters recorded,
//! redriven and purged (registry) and waiting in `MESH_DLQ` (stream info), the audit
//! head (sequence and hash). Rates (landing, refusals) are worked out by the page from
//! two successive reads.
//!
//! The sampler [`run`] also sets the `mesh_central_edge_*`, `dead_letters` and
//! `audit_records` metrics from what it read, so alert rules see the same figures.
//!
//! # Trust
//! Edge and agent ids on the page come from the network. The page only ever sets
//! `textContent` and attributes (never HTML), and is served with a
//! `Content-Security-Policy` that allows no script but `/status.js`. Heartbeats are
//! believed only for the edge their subject names (the servers let only that edge's
//! credential publish there), and at most [`MAX_EDGES`] edges are kept.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::health::Health;
use crate::metrics::{CentralMetrics, EdgeFigures};
use crate::registry::{AgentState, LinkState, Registry};

/// The page, served at `/` and `/status`.
pub const PAGE: &str = include_str!("status.html");
/// Its script, served at `/status.js`.
pub const SCRIPT: &str = include_str!("status.js");
/// The page may run only its own script and fetch only from this hub.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                       style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// How often the sampler reads the audit log and `MESH_DLQ`.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Most edges whose heartbeats are kept (ids come from the network).
pub const MAX_EDGES: usize = 10_000;

/// What the sampler last read, shared with the HTTP handlers.
pub struct Status {
    hub: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    registry: Registry,
    head: (u64, String),
    /// Dead letters in `MESH_DLQ` now; `None` until read (or when unreadable).
    dlq_waiting: Option<u64>,
    /// When the audit log was last read successfully.
    read_at: Option<Instant>,
    heartbeats: BTreeMap<String, (schemas::EdgeStatus, Instant)>,
}

impl Status {
    pub fn new(hub: &str) -> Status {
        Status {
            hub: hub.to_string(),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `s`, the heartbeat just received on `mesh.hub.edge.<edge>`, if it is that
    /// edge's and there is room; whether it was kept.
    pub fn heard(&self, edge: &str, s: schemas::EdgeStatus) -> bool {
        if s.edge != edge {
            return false;
        }
        let mut inner = self.lock();
        if inner.heartbeats.len() >= MAX_EDGES && !inner.heartbeats.contains_key(edge) {
            return false;
        }
        inner
            .heartbeats
            .insert(edge.to_string(), (s, Instant::now()));
        true
    }

    /// The report `/status.json` serves, as of now.
    pub fn report(&self, metrics: &CentralMetrics, health: &Health) -> Report {
        let inner = self.lock();
        let reg = &inner.registry;
        let mut agents_of: BTreeMap<&str, usize> = BTreeMap::new();
        for a in reg.agents.values() {
            *agents_of.entry(a.edge.as_str()).or_default() += 1;
        }
        let mut ids: Vec<&String> = reg.edges.keys().collect();
        ids.extend(
            inner
                .heartbeats
                .keys()
                .filter(|k| !reg.edges.contains_key(*k)),
        );
        ids.sort();
        let edges = ids
            .into_iter()
            .map(|id| {
                let entry = reg.edges.get(id);
                EdgeRow {
                    id: id.clone(),
                    link: entry.map(|e| e.state),
                    last_seen: entry.map(|e| e.last_seen.clone()),
                    lost_at: entry.and_then(|e| e.lost_at.clone()),
                    outages: entry.map_or(0, |e| e.outages),
                    expelled: entry.map_or(0, |e| e.expelled.values().sum()),
                    agents: agents_of.get(id.as_str()).copied().unwrap_or(0),
                    heartbeat: inner.heartbeats.get(id).map(|(s, at)| Heartbeat {
                        uplink_up: s.uplink_up,
                        backlog_events: s.outbox_events,
                        backlog_bytes: s.outbox_bytes,
                        age_ms: millis(at.elapsed()),
                    }),
                    lander: metrics.edge_figures(id),
                }
            })
            .collect();
        Report {
            hub: self.hub.clone(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ready: health.ready(),
            held: health.held(),
            landed_events: metrics
                .landed_total
                .load(std::sync::atomic::Ordering::Relaxed),
            audit: AuditHead {
                records: inner.head.0,
                head_hash: inner.head.1.clone(),
                read_age_ms: inner.read_at.map(|t| millis(t.elapsed())),
            },
            dead_letters: DeadLetters {
                recorded: reg.dead_lettered,
                redriven: reg.redriven,
                purged: reg.purged,
                waiting: inner.dlq_waiting,
                refused_unknown_edge: metrics.refused_unknown(),
            },
            agents: Agents {
                total: reg.agents.len(),
                active: reg
                    .agents
                    .values()
                    .filter(|a| a.state == AgentState::Active)
                    .count(),
            },
            edges,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `/status.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// This hub's id.
    pub hub: String,
    /// When the report was made (RFC 3339, UTC).
    pub time: String,
    /// `/health/ready`'s answer.
    pub ready: bool,
    /// Edges the lander holds, and why.
    pub held: BTreeMap<String, String>,
    /// Events this hub landed since it started, every edge.
    pub landed_events: u64,
    pub audit: AuditHead,
    pub dead_letters: DeadLetters,
    pub agents: Agents,
    /// Every edge the registry or a heartbeat names, by id.
    pub edges: Vec<EdgeRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditHead {
    /// Records in the log: the head's sequence (0 for an empty log).
    pub records: u64,
    /// The head record's hash (64 zeros for an empty log).
    pub head_hash: String,
    /// How long ago the log was last read; `None` before the first read.
    pub read_age_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetters {
    /// Dead letters recorded in the audit log (every source, every hub).
    pub recorded: u64,
    pub redriven: u64,
    pub purged: u64,
    /// Messages in `MESH_DLQ` now; `None` when it could not be read.
    pub waiting: Option<u64>,
    /// Bundles this hub refused from an edge it never landed.
    pub refused_unknown_edge: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Agents {
    pub total: usize,
    pub active: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EdgeRow {
    pub id: String,
    /// The link as the registry records it; `None` for an edge only heard from, not yet
    /// recorded.
    pub link: Option<LinkState>,
    pub last_seen: Option<String>,
    pub lost_at: Option<String>,
    pub outages: u64,
    /// Events expelled by the edge's outbox limits, every reason.
    pub expelled: u64,
    /// Agents of this edge in the registry.
    pub agents: usize,
    /// The edge's last status heartbeat to this hub, if any since it started.
    pub heartbeat: Option<Heartbeat>,
    /// This hub's lander figures for the edge.
    pub lander: EdgeFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct Heartbeat {
    pub uplink_up: bool,
    /// Events waiting in the edge's outbox, as reported.
    pub backlog_events: u64,
    pub backlog_bytes: u64,
    /// How long ago it arrived.
    pub age_ms: u64,
}

/// Follows the edges' heartbeats and reads the audit log and `MESH_DLQ` every
/// [`SAMPLE_EVERY`], until `stop`.
pub async fn run(
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    audit: AuditLog,
    metrics: Arc<CentralMetrics>,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    let mut sub = match client.subscribe(schemas::subject::HUB_EDGE_ALL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "status page: cannot subscribe to edge heartbeats");
            return;
        }
    };
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { return };
                let Some(edge) = schemas::subject::edge_of_hub_edge(&m.subject) else { continue };
                if let Ok(s) = serde_json::from_slice::<schemas::EdgeStatus>(&m.payload) {
                    status.heard(edge, s);
                }
            }
            _ = tick.tick() => {
                tokio::select! {
                    _ = sample(&js, &audit, &metrics, &status) => {}
                    _ = stop.cancelled() => return,
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

async fn sample(
    js: &async_nats::jetstream::Context,
    audit: &AuditLog,
    metrics: &CentralMetrics,
    status: &Status,
) {
    let registry = match audit.sync().await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::debug!(error = %e, "status page: cannot read the audit log");
            None
        }
    };
    let dlq_waiting = match js.get_stream(schemas::subject::STREAM_DLQ).await {
        Ok(mut s) => s.info().await.ok().map(|i| i.state.messages),
        Err(_) => None,
    };
    let mut inner = status.lock();
    if let Some(reg) = registry {
        inner.registry = reg;
        inner.head = audit.head();
        inner.read_at = Some(Instant::now());
    }
    inner.dlq_waiting = dlq_waiting;
    metrics.audit_read(inner.registry.records, inner.registry.dead_lettered);
    for (id, e) in &inner.registry.edges {
        let backlog = inner.heartbeats.get(id).map(|(s, _)| s.outbox_events);
        metrics.edge_state(id, e.state == LinkState::Connected, backlog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(edge: &str, backlog: u64) -> schemas::EdgeStatus {
        schemas::EdgeStatus {
            edge: edge.into(),
            uplink_up: true,
            outbox_events: backlog,
            outbox_bytes: backlog * 100,
            expelled: BTreeMap::new(),
            time: String::new(),
        }
    }

    #[test]
    fn a_heartbeat_counts_only_for_the_edge_its_subject_names() {
        let s = Status::new("c0");
        assert!(
            !s.heard("e1", heartbeat("e2", 5)),
            "e2's status on e1's subject"
        );
        assert!(s.heard("e1", heartbeat("e1", 5)));
        let r = s.report(&CentralMetrics::new(), &Health::default());
        let ids: Vec<_> = r.edges.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["e1"]);
        let hb = r.edges[0].heartbeat.as_ref().expect("heartbeat kept");
        assert_eq!((hb.backlog_events, hb.backlog_bytes), (5, 500));
        assert_eq!(r.edges[0].link, None, "heard, not recorded yet");
    }

    #[test]
    fn heartbeats_of_new_edges_stop_at_max_edges() {
        let s = Status::new("c0");
        for i in 0..MAX_EDGES {
            assert!(s.heard(&format!("e{i}"), heartbeat(&format!("e{i}"), 0)));
        }
        assert!(!s.heard("one-more", heartbeat("one-more", 0)));
        assert!(
            s.heard("e0", heartbeat("e0", 9)),
            "a known edge still updates"
        );
    }

    #[test]
    fn the_report_joins_registry_heartbeats_and_lander_figures() {
        let s = Status::new("c0");
        let m = CentralMetrics::new();
        m.landed("e1", 7, 7);
        m.refused_bundle("e1", "range");
        m.refused_bundle(crate::metrics::UNKNOWN_EDGE, "subject");
        s.heard("e1", heartbeat("e1", 3));
        let r = s.report(&m, &Health::default());
        assert_eq!(r.landed_events, 7);
        assert_eq!(r.dead_letters.refused_unknown_edge, 1);
        let e1 = &r.edges[0];
        assert_eq!(
            (
                e1.lander.landed_events,
                e1.lander.mark,
                e1.lander.refused_bundles
            ),
            (7, 7, 1)
        );
        let json = serde_json::to_value(&r).expect("serializable");
        assert_eq!(json["edges"][0]["heartbeat"]["backlog_events"], 3);
    }

    /// The page draws network-supplied ids with `textContent` only: HTML from an id is
    /// never parsed. A guard against a later edit bringing `innerHTML` & co. back.
    #[test]
    fn the_script_never_parses_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!SCRIPT.contains(sink), "status.js uses {sink}");
        }
        assert!(
            !PAGE.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
    }
}
