//! `noisy-neighbour`: two calm agents publish at a steady rate while a third floods the
//! same edge at full speed from the warm-up to the end of the fault window: requests of
//! [`FLOOD_BATCH`] events, [`FLOOD_INFLIGHT`] in flight, each refusal answered at once
//! with the next request (it ignores `mesh-retry-after-ms`, as a hostile or broken agent
//! would), under its own limit of [`FLOOD_LIMIT`] events/s.
//!
//! Judged as every scenario (the flooder's acked events too: nothing lost, duplicated
//! or reordered, nothing refused present), and: no publish of a calm agent may fail
//! (G6: one agent cannot take the edge from another); the flooder is held to its limit
//! (acked events at most its burst, its rate over the flood, one request of debt and
//! [`CLOCK_SLACK`]);
//! and it really was refused `rate_limited` (else the scenario did not exercise the
//! limit). The calm agents' ack latency is measured by `mesh bench` (a noisy-neighbour
//! phase), not here: no timing assertions in tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agents::{Agent, AgentError};
use mesh_testkit::MeshBuilder;
use schemas::{ErrorCode, NewEvent};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::faults::Faults;
use super::judging::{failed_publishes, finish, judge, recovery};
use super::load::Load;
use super::monitor::Monitor;
use super::plan::{scenario_seed, Timeline, MIN_TAIL};
use super::{start_mesh, Report, RunOpts, ScenarioError};
use crate::producer::{payload, AgentLog};

/// The flooder's agent id.
const FLOODER: &str = "flood";
/// The flooder's limit (events/s), with the default burst of 1 s.
const FLOOD_LIMIT: f64 = 2000.0;
/// The flooder's requests: events each, and in flight at once.
const FLOOD_BATCH: usize = 100;
const FLOOD_INFLIGHT: usize = 64;
/// Seconds of the flooder's rate allowed on top of its limit: the edge's clock and the
/// flooder's differ by the requests in transit.
const CLOCK_SLACK: f64 = 0.5;
/// The calm agents' rate (events/s each).
const CALM_RATE: f64 = 250.0;

/// What the flooder sent and what the edge said.
struct Flood {
    log: AgentLog,
    rate_limited: u64,
    other_refusals: u64,
    secs: f64,
}

pub(crate) async fn noisy_neighbour(
    opts: &RunOpts,
    t: &Timeline,
    report: &mut Report,
) -> Result<(), ScenarioError> {
    let builder = MeshBuilder::new()
        .edge_toml(format!(
            "[limits.agents.{FLOODER}]\nevents_per_sec = {FLOOD_LIMIT:?}\n"
        ))
        .seed(scenario_seed(opts.seed, &report.scenario));
    let mut mesh = start_mesh(opts, &report.scenario, builder).await?;
    let monitor = Monitor::start(&mesh)?;
    let calm: Vec<(usize, String)> = vec![(0, "a1".into()), (0, "a2".into())];
    let load = Load::start(&mesh, &calm, CALM_RATE, 256, Duration::from_secs(5)).await?;
    let mut faults = Faults::new();
    faults.sleep_until(t.warm).await;
    let agent = mesh
        .agent(0, FLOODER)
        .await?
        .with_timeout(Duration::from_secs(10));
    let stop = CancellationToken::new();
    let flooder = tokio::spawn(flood(agent, stop.clone()));
    faults.lines.push(format!(
        "+{:.2}s flood starts",
        faults.elapsed().as_secs_f64()
    ));
    faults.sleep_until(t.faults_end).await;
    stop.cancel();
    let flood = flooder.await.map_err(|e| {
        ScenarioError::Kit(mesh_testkit::KitError::Client {
            what: "the flooder".into(),
            source: e.into(),
        })
    })?;
    faults.lines.push(format!(
        "+{:.2}s flood stops",
        faults.elapsed().as_secs_f64()
    ));

    let high = load.high_water();
    let tail_end = t.d.max(faults.elapsed() + MIN_TAIL);
    let (recovered, ()) = tokio::join!(recovery(&mesh, &high), faults.sleep_until(tail_end));
    let mut logs = load.stop().await;
    if let Some(v) = failed_publishes(&logs, "of the calm agents failed beside the flooder") {
        report.violations.push(v);
    }
    let acked = flood.log.acked.len() as f64;
    // Its burst (1 s of its rate), its rate over the flood, one request of debt, and
    // [`CLOCK_SLACK`] for requests the edge took after the flooder's clock stopped.
    let allowed = FLOOD_LIMIT * (1.0 + flood.secs + CLOCK_SLACK) + FLOOD_BATCH as f64;
    if acked > allowed {
        report.violations.push(format!(
            "the flooder got {acked} events acked in {:.2}s, over its limit of {FLOOD_LIMIT} events/s ({allowed:.0} with its burst, one request of debt and {CLOCK_SLACK} s of slack)",
            flood.secs
        ));
    }
    if flood.rate_limited == 0 {
        report
            .violations
            .push("not exercised: the flooder was never refused rate_limited".into());
    }
    if flood.other_refusals > 0 {
        report.violations.push(format!(
            "the flooder got {} refusals other than rate_limited (first: {})",
            flood.other_refusals,
            flood
                .log
                .refused
                .iter()
                .find(|r| !r.1.contains("rate_limited"))
                .map(|r| r.1.as_str())
                .unwrap_or("?")
        ));
    }
    report.notes.push(format!(
        "the flooder: {acked} events acked in {:.2}s ({:.0}/s, limit {FLOOD_LIMIT}), {} requests refused rate_limited",
        flood.secs,
        acked / flood.secs.max(1e-9),
        flood.rate_limited
    ));
    logs.push(flood.log);
    judge(&mut mesh, logs, recovered, monitor, &faults, report).await?;
    finish(&mut mesh, faults, report);
    Ok(())
}

/// Floods until `stop`, then waits for the replies still due.
async fn flood(agent: Agent, stop: CancellationToken) -> Flood {
    let mut log = AgentLog::new(agent.id());
    let (mut rate_limited, mut other_refusals) = (0u64, 0u64);
    let started = Instant::now();
    let mut secs = 0.0;
    let mut pipe = match agent.pipeline().await {
        Ok(p) => p,
        Err(e) => {
            log.refused.push((Uuid::nil(), e.to_string()));
            return Flood {
                log,
                rate_limited,
                other_refusals: 1,
                secs,
            };
        }
    };
    let mut sent: HashMap<u64, Vec<Uuid>> = HashMap::new();
    // Acked requests by their first sequence: the log lists acked ids in publish order.
    let mut acked: Vec<(u64, Vec<Uuid>)> = Vec::new();
    let mut n = 0u64;
    loop {
        while !stop.is_cancelled() && pipe.in_flight() < FLOOD_INFLIGHT {
            let mut ids = Vec::with_capacity(FLOOD_BATCH);
            let evs: Vec<NewEvent> = (0..FLOOD_BATCH)
                .map(|_| {
                    let data = payload(FLOODER, n, 256);
                    n += 1;
                    let ev = NewEvent::new("chaos.flood", "chaos.flood", data.clone());
                    let id = ev.id.expect("NewEvent::new sets an id");
                    log.data.insert(id, data);
                    ids.push(id);
                    ev
                })
                .collect();
            match pipe.send(evs).await {
                Ok(token) => {
                    sent.insert(token, ids);
                }
                Err(e) => {
                    // Not sent: nothing of it can arrive.
                    let text = e.to_string();
                    log.refused
                        .extend(ids.into_iter().map(|id| (id, text.clone())));
                    other_refusals += 1;
                    break;
                }
            }
        }
        if stop.is_cancelled() && secs == 0.0 {
            secs = started.elapsed().as_secs_f64();
        }
        if pipe.in_flight() == 0 {
            break;
        }
        let Some((token, r)) = pipe.next_reply().await else {
            break;
        };
        let ids = sent.remove(&token).unwrap_or_default();
        match r {
            Ok(a) => acked.push((a.first_seq, ids)),
            Err(AgentError::Timeout(_)) | Err(AgentError::Request { .. }) => {
                log.unknown.extend(ids)
            }
            Err(e) => {
                match &e {
                    AgentError::Refused {
                        code: ErrorCode::RateLimited,
                        ..
                    } => rate_limited += 1,
                    _ => other_refusals += 1,
                }
                let text = e.to_string();
                log.refused
                    .extend(ids.into_iter().map(|id| (id, text.clone())));
            }
        }
    }
    if secs == 0.0 {
        secs = started.elapsed().as_secs_f64();
    }
    acked.sort_by_key(|(first, _)| *first);
    log.acked = acked.into_iter().flat_map(|(_, ids)| ids).collect();
    Flood {
        log,
        rate_limited,
        other_refusals,
        secs,
    }
}
