//! Turns what the centre observes into audit records: edge links (from the edges'
//! status heartbeats on `mesh.hub.edge.<edge>`), outbox expulsions (G2), and what the
//! lander reports ([`LanderReport`]: agents, dead letters made while landing, and edges
//! it holds or releases).
//!
//! Every record is appended with a condition on the [`Registry`] projection at the head
//! (e.g. `edge.restored` only while the edge is recorded `lost`), so several central
//! hubs observing the same thing record it once, and a restarted hub records nothing it
//! had recorded before.
//!
//! * `edge.connected` — first status heartbeat of an edge never recorded.
//! * `edge.lost` — no heartbeat with the uplink up for [`LINK_TIMEOUT`] (also covers an
//!   edge hub that stopped), with the backlog last reported.
//! * `edge.restored` — a heartbeat from an edge recorded lost, with the outage length
//!   and the backlog waiting in its outbox.
//! * `outbox.expelled` — the edge's cumulative expulsion counter of a reason differs
//!   from the one recorded, with the difference and the total.
//! * `agent.registered` / `agent.seen` / `agent.quiet` — the lander landed an event of an
//!   agent never recorded / of one recorded quiet / an agent this hub saw was idle for
//!   [`AGENT_QUIET_AFTER`]. Only the hub that saw an agent marks it quiet, so a standby
//!   hub never declares agents quiet.
//! * `dlq.dead-lettered` — a bundle the lander refused, or an event its edge
//!   dead-lettered (recorded unconditionally: each is a distinct dead letter).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use schemas::audit::{
    AgentQuiet, AgentRef, AuditEvent, EdgeConnected, EdgeLost, EdgeRestored, OutboxExpelled,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::lander::LanderReport;
use crate::registry::{agent_key, AgentState, LinkState, Registry};

/// An edge without a heartbeat (uplink up) for this long is recorded lost.
pub const LINK_TIMEOUT: Duration = Duration::from_millis(2500);
/// An agent without an event for this long is recorded quiet.
pub const AGENT_QUIET_AFTER: Duration = Duration::from_secs(300);

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Follows the edges' status heartbeats until `stop`.
pub async fn run_links(client: async_nats::Client, audit: AuditLog, stop: CancellationToken) {
    let mut sub = match client.subscribe(schemas::subject::HUB_EDGE_ALL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to edge status heartbeats");
            return;
        }
    };
    let started = Instant::now();
    // Per edge: when the last heartbeat with the uplink up arrived, and its backlog.
    let mut last: HashMap<String, (Instant, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { return };
                let Some(edge) = schemas::subject::edge_of_hub_edge(&m.subject) else { continue };
                let status: schemas::EdgeStatus = match serde_json::from_slice(&m.payload) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%edge, error = %e, "undecodable edge status");
                        continue;
                    }
                };
                if status.edge != edge || !status.uplink_up {
                    continue;
                }
                last.insert(edge.to_string(), (Instant::now(), status.outbox_events));
                if let Err(e) = on_status(&audit, &status).await {
                    tracing::warn!(%edge, error = %e, "cannot record an edge event");
                }
            }
            _ = tick.tick() => {
                let reg = audit.registry();
                for (edge, e) in &reg.edges {
                    if e.state != LinkState::Connected {
                        continue;
                    }
                    let (seen, backlog) = last.get(edge).copied().unwrap_or((started, 0));
                    if seen.elapsed() < LINK_TIMEOUT {
                        continue;
                    }
                    let edge_c = edge.clone();
                    let lost = AuditEvent::EdgeLost(EdgeLost {
                        edge: edge.clone(),
                        silent_ms: seen.elapsed().as_millis() as u64,
                        backlog,
                    });
                    let r = audit
                        .record_if(
                            &lost,
                            Box::new(move |r: &Registry| {
                                r.edges.get(&edge_c).is_some_and(|e| e.state == LinkState::Connected)
                            }),
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(%edge, error = %e, "cannot record a lost link");
                    }
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

async fn on_status(
    audit: &AuditLog,
    s: &schemas::EdgeStatus,
) -> Result<(), crate::audit::AuditError> {
    let reg = audit.registry();
    let edge = s.edge.clone();
    match reg.edges.get(&s.edge) {
        None => {
            let e = edge.clone();
            let connected = AuditEvent::EdgeConnected(EdgeConnected {
                edge: edge.clone(),
                backlog: s.outbox_events,
            });
            audit
                .record_if(
                    &connected,
                    Box::new(move |r: &Registry| !r.edges.contains_key(&e)),
                )
                .await?;
        }
        Some(entry) if entry.state == LinkState::Lost => {
            let outage_ms = entry
                .lost_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds())
                .unwrap_or(0)
                .max(0);
            let e = edge.clone();
            let restored = AuditEvent::EdgeRestored(EdgeRestored {
                edge: edge.clone(),
                outage_ms: outage_ms as u64,
                backlog: s.outbox_events,
            });
            audit
                .record_if(
                    &restored,
                    Box::new(move |r: &Registry| {
                        r.edges.get(&e).is_some_and(|e| e.state == LinkState::Lost)
                    }),
                )
                .await?;
        }
        Some(_) => {}
    }
    let reg = audit.registry();
    for (reason, &total) in &s.expelled {
        let recorded = reg
            .edges
            .get(&s.edge)
            .and_then(|e| e.expelled.get(reason).copied())
            .unwrap_or(0);
        if total == recorded {
            continue;
        }
        let (e, why) = (edge.clone(), reason.clone());
        let expelled = AuditEvent::OutboxExpelled(OutboxExpelled {
            edge: edge.clone(),
            reason: reason.clone(),
            count: total.saturating_sub(recorded),
            total,
        });
        audit
            .record_if(
                &expelled,
                Box::new(move |r: &Registry| {
                    r.edges
                        .get(&e)
                        .and_then(|x| x.expelled.get(&why).copied())
                        .unwrap_or(0)
                        != total
                }),
            )
            .await?;
    }
    Ok(())
}

/// Per agent key: edge, agent, when this hub last saw it and that time as RFC 3339.
type LastSeen = HashMap<String, (String, String, Instant, String)>;

/// Records what the lander reports: agents (registered, seen again, gone quiet) and dead
/// letters. Runs until the lander drops its sender, after recording every report queued
/// by then, so a hub's shutdown loses none.
pub async fn run_reports(mut reports: mpsc::Receiver<LanderReport>, audit: AuditLog) {
    let mut last = LastSeen::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = reports.recv() => match r {
                None => return,
                Some(LanderReport::AgentsSeen { edge, agents }) => {
                    for agent in agents {
                        agent_seen(&audit, &mut last, edge.clone(), agent).await;
                    }
                }
                Some(LanderReport::DeadLettered(dead)) => {
                    if let Err(e) = audit.record(&AuditEvent::DeadLettered(dead)).await {
                        tracing::warn!(error = %e, "cannot record a dead letter in the audit log");
                    }
                }
                Some(LanderReport::EdgeHeld(held)) => {
                    if let Err(e) = audit.record(&AuditEvent::LanderEdgeHeld(held)).await {
                        tracing::warn!(error = %e, "cannot record a held edge in the audit log");
                    }
                }
                Some(LanderReport::EdgeReleased(released)) => {
                    if let Err(e) = audit.record(&AuditEvent::LanderEdgeReleased(released)).await {
                        tracing::warn!(error = %e, "cannot record a released edge in the audit log");
                    }
                }
            },
            _ = tick.tick() => agents_quiet(&audit, &mut last).await,
        }
    }
}

async fn agent_seen(audit: &AuditLog, last: &mut LastSeen, edge: String, agent: String) {
    let key = agent_key(&edge, &agent);
    last.insert(
        key.clone(),
        (edge.clone(), agent.clone(), Instant::now(), now()),
    );
    let known = audit
        .registry()
        .agents
        .get(&key)
        .map(|a| a.state == AgentState::Active);
    let k = key.clone();
    let who = AgentRef { edge, agent };
    let r = match known {
        Some(true) => return,
        // First sight of this agent anywhere: it joins the registry.
        None => {
            audit
                .record_if(
                    &AuditEvent::AgentRegistered(who),
                    Box::new(move |r: &Registry| !r.agents.contains_key(&k)),
                )
                .await
        }
        // Known but quiet: it is back.
        Some(false) => {
            audit
                .record_if(
                    &AuditEvent::AgentSeen(who),
                    Box::new(move |r: &Registry| {
                        r.agents
                            .get(&k)
                            .is_some_and(|a| a.state != AgentState::Active)
                    }),
                )
                .await
        }
    };
    if let Err(e) = r {
        tracing::warn!(%key, error = %e, "cannot record an agent");
    }
}

async fn agents_quiet(audit: &AuditLog, last: &mut LastSeen) {
    let quiet: Vec<_> = last
        .iter()
        .filter(|(_, (_, _, at, _))| at.elapsed() >= AGENT_QUIET_AFTER)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, (edge, agent, _, last_seen)) in quiet {
        last.remove(&key);
        let k = key.clone();
        let quiet = AuditEvent::AgentQuiet(AgentQuiet {
            edge,
            agent,
            last_seen,
        });
        let r = audit
            .record_if(
                &quiet,
                Box::new(move |r: &Registry| {
                    r.agents
                        .get(&k)
                        .is_some_and(|a| a.state == AgentState::Active)
                }),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(%key, error = %e, "cannot record a quiet agent");
        }
    }
}

/// Answers `mesh.hub.registry` requests with the projection (JSON), until `stop`.
pub async fn serve_registry(client: async_nats::Client, audit: AuditLog, stop: CancellationToken) {
    let mut sub = match client.subscribe(schemas::subject::HUB_REGISTRY).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to registry requests");
            return;
        }
    };
    loop {
        let m = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => return },
            _ = stop.cancelled() => return,
        };
        let Some(reply) = m.reply else { continue };
        let body = match audit.sync().await {
            Ok(reg) => serde_json::to_vec(&reg).unwrap_or_default(),
            Err(e) => {
                serde_json::to_vec(&serde_json::json!({"error": e.to_string()})).unwrap_or_default()
            }
        };
        let _ = client.publish(reply, body.into()).await;
    }
}
