//! The registry: edges and agents, their state, last-seen time and counts — a
//! projection of `MESH_AUDIT`, never a second source of truth.
//!
//! [`Registry::apply`] folds one [`AuditRecord`] into the projection; a hub rebuilds it on
//! start-up by applying every record from sequence 1, so two hubs (or one hub before and
//! after a restart) that have read the same records hold the same registry. Records of
//! kinds the registry does not know, and records whose fields do not fit their kind, are
//! counted in `records` and otherwise ignored. It reads records through
//! [`schemas::audit`]'s typed events only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use schemas::audit::{AuditEvent, AuditRecord};

/// State of an edge's link to the centre, as last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    Connected,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeEntry {
    pub state: LinkState,
    /// Time (RFC 3339) of the first record about the edge.
    pub first_seen: String,
    /// Time of the latest record about the edge.
    pub last_seen: String,
    /// Time the link was last recorded lost (while `state` is `lost`).
    pub lost_at: Option<String>,
    /// How many times the link was recorded lost.
    pub outages: u64,
    /// Outbox expulsions recorded, per reason: the edge's cumulative counter as last
    /// reported.
    pub expelled: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    Active,
    Quiet,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEntry {
    pub edge: String,
    pub agent: String,
    pub state: AgentState,
    pub first_seen: String,
    pub last_seen: String,
    /// How many times the agent was recorded seen (first time and after each quiet spell).
    pub sessions: u64,
}

/// The projection. Keys: edge id; `<edge>/<agent>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub edges: BTreeMap<String, EdgeEntry>,
    pub agents: BTreeMap<String, AgentEntry>,
    /// Dead letters recorded, redriven and purged.
    pub dead_lettered: u64,
    pub redriven: u64,
    pub purged: u64,
    /// SHA-256 of the configuration each central hub last applied, by hub id.
    pub configs: BTreeMap<String, String>,
    /// Audit records applied; equals the sequence of the last one.
    pub records: u64,
}

/// Key of an agent in [`Registry::agents`].
pub fn agent_key(edge: &str, agent: &str) -> String {
    format!("{edge}/{agent}")
}

impl Registry {
    /// Folds one record into the projection.
    pub fn apply(&mut self, r: &AuditRecord) {
        self.records = r.seq;
        let Ok(event) = r.event() else { return };
        match event {
            AuditEvent::EdgeConnected(e) => self.connected(&e.edge, &r.time),
            AuditEvent::EdgeRestored(e) => self.connected(&e.edge, &r.time),
            AuditEvent::EdgeLost(l) => {
                let e = self.edge(&l.edge, &r.time);
                e.state = LinkState::Lost;
                e.lost_at = Some(r.time.clone());
                e.outages += 1;
            }
            AuditEvent::OutboxExpelled(x) => {
                let e = self.edge(&x.edge, &r.time);
                e.expelled.insert(x.reason, x.total);
            }
            AuditEvent::AgentRegistered(a) | AuditEvent::AgentSeen(a) => {
                let time = r.time.clone();
                let entry = self
                    .agents
                    .entry(agent_key(&a.edge, &a.agent))
                    .or_insert_with(|| AgentEntry {
                        edge: a.edge,
                        agent: a.agent,
                        state: AgentState::Active,
                        first_seen: time.clone(),
                        last_seen: time.clone(),
                        sessions: 0,
                    });
                entry.state = AgentState::Active;
                entry.last_seen = time;
                entry.sessions += 1;
            }
            AuditEvent::AgentQuiet(q) => {
                if let Some(a) = self.agents.get_mut(&agent_key(&q.edge, &q.agent)) {
                    a.state = AgentState::Quiet;
                    if !q.last_seen.is_empty() {
                        a.last_seen = q.last_seen;
                    }
                }
            }
            AuditEvent::ConfigApplied(c) => {
                self.configs.insert(c.hub, c.sha256);
            }
            AuditEvent::DeadLettered(_) => self.dead_lettered += 1,
            AuditEvent::Redriven(d) => self.redriven += d.count,
            AuditEvent::Purged(p) => self.purged += p.count,
            AuditEvent::HubStarted(_)
            | AuditEvent::ReplayRun(_)
            | AuditEvent::LanderEdgeHeld(_)
            | AuditEvent::LanderEdgeReleased(_)
            | AuditEvent::StreamUpdated(_)
            | AuditEvent::Other { .. } => {}
        }
    }

    fn connected(&mut self, edge: &str, time: &str) {
        let e = self.edge(edge, time);
        e.state = LinkState::Connected;
        e.lost_at = None;
    }

    fn edge(&mut self, edge: &str, time: &str) -> &mut EdgeEntry {
        let e = self
            .edges
            .entry(edge.to_string())
            .or_insert_with(|| EdgeEntry {
                state: LinkState::Connected,
                first_seen: time.to_string(),
                last_seen: time.to_string(),
                lost_at: None,
                outages: 0,
                expelled: BTreeMap::new(),
            });
        e.last_seen = time.to_string();
        e
    }

    /// A readable table, one line per edge and per agent.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<8} {:<28} {:<10} {:<32} details\n",
            "kind", "id", "state", "last seen"
        ));
        for (id, e) in &self.edges {
            let state = match e.state {
                LinkState::Connected => "connected",
                LinkState::Lost => "lost",
            };
            let expelled: u64 = e.expelled.values().sum();
            out.push_str(&format!(
                "{:<8} {:<28} {:<10} {:<32} outages={} expelled={} first_seen={}\n",
                "edge", id, state, e.last_seen, e.outages, expelled, e.first_seen
            ));
        }
        for (id, a) in &self.agents {
            let state = match a.state {
                AgentState::Active => "active",
                AgentState::Quiet => "quiet",
            };
            out.push_str(&format!(
                "{:<8} {:<28} {:<10} {:<32} sessions={} first_seen={}\n",
                "agent", id, state, a.last_seen, a.sessions, a.first_seen
            ));
        }
        out.push_str(&format!(
            "audit records={} dead_lettered={} redriven={} purged={}\n",
            self.records, self.dead_lettered, self.redriven, self.purged
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::audit::{
        AgentQuiet, AgentRef, EdgeConnected, EdgeLost, OutboxExpelled, Purged, GENESIS_HASH,
    };

    /// Records of `events`, chained, each at its own time.
    fn records(events: &[AuditEvent]) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        events
            .iter()
            .enumerate()
            .map(|(i, ev)| {
                let mut r =
                    AuditRecord::seal(i as u64 + 1, &prev, ev.kind(), "test", ev.to_fields());
                r.time = format!("2025-01-01T00:00:{i:02}Z");
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn the_projection_follows_the_typed_events() {
        let agent = AgentRef {
            edge: "e1".into(),
            agent: "a1".into(),
        };
        let rs = records(&[
            AuditEvent::EdgeConnected(EdgeConnected {
                edge: "e1".into(),
                backlog: 0,
            }),
            AuditEvent::AgentRegistered(agent.clone()),
            AuditEvent::EdgeLost(EdgeLost {
                edge: "e1".into(),
                ..Default::default()
            }),
            AuditEvent::OutboxExpelled(OutboxExpelled {
                edge: "e1".into(),
                reason: "max_bytes".into(),
                count: 4,
                total: 4,
            }),
            AuditEvent::AgentQuiet(AgentQuiet {
                edge: "e1".into(),
                agent: "a1".into(),
                last_seen: "2024-12-31T23:59:59Z".into(),
            }),
            AuditEvent::Other {
                kind: "future.kind".into(),
                fields: serde_json::Map::new(),
            },
            AuditEvent::Purged(Purged {
                count: 2,
                filter: ">".into(),
            }),
        ]);
        let mut reg = Registry::default();
        for r in &rs {
            reg.apply(r);
        }
        let e = &reg.edges["e1"];
        assert_eq!(e.state, LinkState::Lost);
        assert_eq!(e.lost_at.as_deref(), Some("2025-01-01T00:00:02Z"));
        assert_eq!((e.outages, e.expelled["max_bytes"]), (1, 4));
        let a = &reg.agents["e1/a1"];
        assert_eq!((a.state, a.sessions), (AgentState::Quiet, 1));
        assert_eq!(a.last_seen, "2024-12-31T23:59:59Z");
        assert_eq!((reg.purged, reg.records), (2, 7));
    }

    #[test]
    fn a_record_whose_fields_do_not_fit_is_counted_and_ignored() {
        let r = AuditRecord::seal(
            5,
            GENESIS_HASH,
            schemas::audit::kind::DLQ_PURGED,
            "test",
            serde_json::json!({"count": "many"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let mut reg = Registry::default();
        reg.apply(&r);
        assert_eq!((reg.records, reg.purged), (5, 0));
    }
}
