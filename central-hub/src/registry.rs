//! The registry: edges and agents, their state, last-seen time and counts — a
//! projection of `MESH_AUDIT`, never a second source of truth.
//!
//! [`Registry::apply`] folds one [`AuditRecord`] into the projection; a hub rebuilds it on
//! start-up by applying every record from sequence 1, so two hubs (or one hub before and
//! after a restart) that have read the same records hold the same registry. Records of
//! kinds the registry does not know are counted in `records` and otherwise ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::{kind, AuditRecord};

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
        let s = |k: &str| r.fields.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let n = |k: &str| r.fields.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        match r.kind.as_str() {
            kind::EDGE_CONNECTED | kind::EDGE_RESTORED => {
                let e = self.edge(s("edge"), &r.time);
                e.state = LinkState::Connected;
                e.lost_at = None;
            }
            kind::EDGE_LOST => {
                let e = self.edge(s("edge"), &r.time);
                e.state = LinkState::Lost;
                e.lost_at = Some(r.time.clone());
                e.outages += 1;
            }
            kind::OUTBOX_EXPELLED => {
                let e = self.edge(s("edge"), &r.time);
                e.expelled.insert(s("reason").to_string(), n("total"));
            }
            kind::AGENT_REGISTERED | kind::AGENT_SEEN => {
                let (edge, agent) = (s("edge").to_string(), s("agent").to_string());
                let time = r.time.clone();
                let a = self
                    .agents
                    .entry(agent_key(&edge, &agent))
                    .or_insert_with(|| AgentEntry {
                        edge,
                        agent,
                        state: AgentState::Active,
                        first_seen: time.clone(),
                        last_seen: time.clone(),
                        sessions: 0,
                    });
                a.state = AgentState::Active;
                a.last_seen = time;
                a.sessions += 1;
            }
            kind::AGENT_QUIET => {
                if let Some(a) = self.agents.get_mut(&agent_key(s("edge"), s("agent"))) {
                    a.state = AgentState::Quiet;
                    if let Some(last) = r.fields.get("last_seen").and_then(|v| v.as_str()) {
                        a.last_seen = last.to_string();
                    }
                }
            }
            kind::CONFIG_APPLIED => {
                self.configs
                    .insert(s("hub").to_string(), s("sha256").to_string());
            }
            kind::DLQ_DEAD_LETTERED => self.dead_lettered += 1,
            kind::DLQ_REDRIVEN => self.redriven += n("count"),
            kind::DLQ_PURGED => self.purged += n("count"),
            _ => {}
        }
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
