//! The scenario suite: seeded fault schedules run under load against a real [`Mesh`],
//! then judged.
//!
//! Every scenario has the same shape:
//!
//! 1. start a mesh ([`MeshBuilder::start`]) and the producers (agents publishing one
//!    event at a time at a set rate, recording every ack: the oracle);
//! 2. play a fault schedule drawn from the seed: which faults, when, for how long, with
//!    which latency, jitter and bandwidth. The same `--seed` gives the same schedule;
//!    which event a fault hits still depends on scheduling;
//! 3. after the last heal, keep the load running for the rest of the duration while
//!    measuring **recovery**: the time from the last heal until every edge reports its
//!    uplink up *and* the centre has landed every event acked before the heal (the
//!    `ce-meshseq` of the edge's last event in `MESH_EVENTS` reaches the highest acked
//!    sequence);
//! 4. stop the producers, wait for every outbox and `MESH_INGRESS` to drain, read
//!    `MESH_EVENTS` and judge it ([`Verdict`](crate::judge::Verdict)): acked-but-missing
//!    (G1, G2), duplicated (G3), reordered (G4), corrupted, refused-but-present (G7),
//!    plus the checks of the scenario (no failed publish inside a partition (G6), a cut
//!    noticed within 3 s (G5 allows 1 s, with margin for a loaded machine; the same for
//!    noticing the heal), every missing event accounted for by
//!    `mesh_edge_expelled_events_total` and by the audit log's `outbox.expelled` records
//!    and the oldest of the outbox, `MESH_DLQ` empty, the fault really exercised what it
//!    targets).
//!
//! A background monitor scrapes every edge hub's `/metrics` every 50 ms for the outbox
//! depth (its peak is reported) and the uplink state (when a cut was noticed).
//!
//! # Modules
//!
//! - here: the catalogue ([`SCENARIOS`]), [`run`], the [`Report`], and the run of a
//!   scripted scenario (mesh, monitor, load, schedule, judge);
//! - `plan`: seeded schedules ([`Rng`], timeline, actions, the plan of each scripted
//!   scenario);
//! - `faults`: playing a schedule against the mesh;
//! - `load`: the producers; `monitor`: the metrics monitor;
//! - `judging`: recovery, drain, verdict and the shared checks;
//! - `outbox`: the two outbox scenarios, which script their own load;
//! - `noisy`: `noisy-neighbour`, a flooding agent beside calm ones;
//! - `cluster`: the scenarios on a 3-node centre.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_testkit::{KitError, Mesh, MeshBuilder};
use serde::Serialize;

use crate::producer::AgentLog;

mod cluster;
mod faults;
mod judging;
mod load;
mod monitor;
mod noisy;
mod outbox;
mod plan;

use faults::Faults;
use judging::{failed_publishes, finish, judge, recovery};
use load::Load;
use monitor::Monitor;
use plan::{plan, Extra, Plan, Timeline, MIN_TAIL};
pub use plan::{scenario_seed, Rng};

/// What stopped a scenario from running to its verdict (broken guarantees are not
/// errors: they are [`Report::violations`]).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The mesh could not be started or driven.
    #[error(transparent)]
    Kit(#[from] KitError),
    /// No scenario has this name.
    #[error("no scenario named {0:?}; `mesh chaos list` names them")]
    UnknownScenario(String),
    /// `MESH_EVENTS` could not be read back for the judge.
    #[error("reading MESH_EVENTS for the judge: {0}")]
    ReadEvents(#[source] async_nats::Error),
}

/// A scenario's name and what it does, one line.
#[derive(Debug, Clone, Copy)]
pub struct ScenarioInfo {
    pub name: &'static str,
    pub about: &'static str,
}

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: &[ScenarioInfo] = &[
    ScenarioInfo {
        name: "partition",
        about: "black-hole the leaf link under load for ~40% of the run, then heal; no publish may fail",
    },
    ScenarioInfo {
        name: "flapping",
        about: "cut and heal the link every 0.15-0.9 s (black hole or reset, seeded) under load",
    },
    ScenarioInfo {
        name: "long-partition",
        about: "cut only the return path for > the 2 s duplicate windows: the centre stores bundles, the edge resends them later",
    },
    ScenarioInfo {
        name: "kill-edge-hub",
        about: "SIGKILL the edge hub 3 times under load (once while it drains a backlog) and restart it",
    },
    ScenarioInfo {
        name: "kill-central-nats",
        about: "SIGKILL the central nats-server under load and restart it on the same store",
    },
    ScenarioInfo {
        name: "slow-link",
        about: "40-120 ms latency + jitter, a 256-768 KiB/s cap and short loss bursts on the link under load",
    },
    ScenarioInfo {
        name: "outbox-reject",
        about: "fill a 200 kB outbox behind a cut with full_policy=reject: refusals name outbox_full, none of them arrives",
    },
    ScenarioInfo {
        name: "outbox-drop-oldest",
        about: "overfill a 200 kB outbox behind a cut with full_policy=drop-oldest: the oldest go, exactly as many as the metric says",
    },
    ScenarioInfo {
        name: "restart-central-hub",
        about: "SIGKILL the central hub, restart it, then SIGTERM it and restart it, under load",
    },
    ScenarioInfo {
        name: "two-edges",
        about: "two edges under load, each partitioned at a different, overlapping time",
    },
    ScenarioInfo {
        name: "noisy-neighbour",
        about: "one agent floods the edge at full speed (64 x 100 events in flight, refusals resent at once) beside two calm agents: no calm publish fails, the flooder is held to its limit",
    },
    ScenarioInfo {
        name: "cluster-kill-events-leader",
        about: "3-node centre: SIGKILL the node holding the MESH_EVENTS leader, restart it 4-7 s later; stall vs a native R3 publisher",
    },
    ScenarioInfo {
        name: "cluster-kill-meta-leader",
        about: "3-node centre: SIGKILL the JetStream meta leader's node, restart it 4-7 s later",
    },
    ScenarioInfo {
        name: "cluster-kill-leaf-node",
        about: "3-node centre: move every leader off the node the edge's leaf link is on, SIGKILL it; stall <= 5 s",
    },
    ScenarioInfo {
        name: "cluster-kill-hub-node",
        about: "3-node centre: move every leader off the node the landing central hub is on, SIGKILL it; stall <= 5 s",
    },
    ScenarioInfo {
        name: "cluster-rolling-restart",
        about: "3-node centre: restart every node in turn (SIGTERM), each once the one before is healthy",
    },
    ScenarioInfo {
        name: "cluster-isolate-node",
        about: "3-node centre: cut the MESH_EVENTS leader's node off from the other two (fault proxies on its routes) for 4-7 s",
    },
];

/// How to run scenarios.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// The `mesh` executable the hubs run from.
    pub exe: PathBuf,
    /// Length of the loaded run (faults included); draining and judging come after.
    pub duration: Duration,
    /// Base seed; each scenario derives its own from it and its name.
    pub seed: u64,
    /// Keep every scenario's stores and logs under `<dir>/<scenario>` (default: a temp
    /// dir, kept only when the scenario fails).
    pub dir: Option<PathBuf>,
}

/// What one scenario run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The base seed (`--seed`) the run was drawn from.
    pub seed: u64,
    pub duration_s: f64,
    /// Events the edges acknowledged.
    pub acked: usize,
    /// Events in `MESH_EVENTS` at the end.
    pub delivered: usize,
    /// Acked events missing that no outbox limit explains (G1, G2).
    pub lost: usize,
    /// `ce-id`s present more than once (G3).
    pub duplicated: usize,
    /// Events out of their agent's publish order (G4).
    pub reordered: usize,
    /// Events whose data or agent differ from what was published.
    pub corrupted: usize,
    /// Refused events that arrived anyway (G7).
    pub refused_present: usize,
    /// Publishes refused by the edge (e.g. `outbox_full`, or no edge hub running).
    pub refused: usize,
    /// Publishes without an answer (may or may not have arrived, never twice).
    pub unknown: usize,
    /// Acked events expelled by the outbox limits, as the judge found them missing.
    pub expelled: usize,
    /// `mesh_edge_expelled_events_total`, summed over edges and reasons.
    pub expelled_metric: u64,
    /// Seconds from the last heal until every edge was live and everything acked before
    /// the heal had landed; `None` when that did not happen within the deadline.
    pub recovery_s: Option<f64>,
    /// Longest time until an edge noticed a cut of ≥ 2 s (G5).
    pub cut_noticed_s: Option<f64>,
    /// Longest time from the heal of such a cut until the edge reported its uplink up (G5).
    pub heal_noticed_s: Option<f64>,
    /// Most events an edge outbox held at once.
    pub peak_outbox: u64,
    /// The fault schedule as played, `+seconds action`.
    pub faults: Vec<String>,
    /// Broken guarantees; empty when the scenario passed.
    pub violations: Vec<String>,
    /// Other observations.
    pub notes: Vec<String>,
    /// Where the stores and logs were kept, if they were.
    pub kept_dir: Option<String>,
    /// Wall time of the whole scenario, start-up and judging included.
    pub elapsed_s: f64,
    /// Cluster scenarios: the longest time without a landing after the fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_s: Option<f64>,
    /// Cluster scenarios: the native R3 publisher's longest time without an ack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_stall_s: Option<f64>,
    /// Cluster scenarios: the bound the stall was held to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_bound_s: Option<f64>,
    /// Cluster scenarios: from the fault until the last raft group on the landing path
    /// whose leader the fault took had a new one (from the nats-server logs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_floor_s: Option<f64>,
    /// Cluster scenarios: whether the fault took a node holding a leader of the mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_died: Option<bool>,
    /// Cluster scenarios: from the end of the stall until the backlog was gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_s: Option<f64>,
    /// Cluster scenarios: events landed per second while the backlog drained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_rate: Option<f64>,
    /// Cluster scenarios: the same after both central hubs were away for 2 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normal_drain_rate: Option<f64>,
}

impl Report {
    /// Whether every guarantee held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The one-line information of scenario `name`.
pub fn info(name: &str) -> Option<&'static ScenarioInfo> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Runs scenario `name`. Harness failures (a server that does not start) are errors;
/// broken guarantees are [`Report::violations`].
pub async fn run(name: &str, opts: &RunOpts) -> Result<Report, ScenarioError> {
    let info = info(name).ok_or_else(|| ScenarioError::UnknownScenario(name.into()))?;
    let started = Instant::now();
    let mut rng = Rng::new(scenario_seed(opts.seed, name));
    let mut report = Report {
        scenario: info.name.into(),
        seed: opts.seed,
        duration_s: opts.duration.as_secs_f64(),
        ..Report::default()
    };
    let t = Timeline::new(opts.duration);
    let result = match info.name {
        "outbox-reject" => outbox::outbox_reject(opts, &t, &mut report).await,
        "outbox-drop-oldest" => outbox::outbox_drop_oldest(opts, &t, &mut report).await,
        "noisy-neighbour" => noisy::noisy_neighbour(opts, &t, &mut report).await,
        c if cluster::is_cluster(c) => cluster::run_cluster(opts, &t, &mut rng, &mut report).await,
        other => {
            let plan = plan(other, &t, &mut rng);
            run_plan(opts, &t, plan, &mut report).await
        }
    };
    report.elapsed_s = started.elapsed().as_secs_f64();
    result.map(|()| report)
}

/// Starts the mesh of scenario `name` from `builder`: hubs from `opts.exe`, stores and
/// logs under `opts.dir/<name>` when given (kept), else in a temp dir.
async fn start_mesh(
    opts: &RunOpts,
    name: &str,
    builder: MeshBuilder,
) -> Result<Mesh, ScenarioError> {
    let mut b = builder.name("chaos").exe(&opts.exe);
    if let Some(d) = &opts.dir {
        b = b.dir(d.join(name));
    }
    Ok(b.start().await?)
}

/// Runs a scripted scenario: its mesh, the monitor, the load, the schedule, then the
/// judge and the scenario's own checks.
async fn run_plan(
    opts: &RunOpts,
    t: &Timeline,
    plan: Plan,
    report: &mut Report,
) -> Result<(), ScenarioError> {
    let mut mesh = start_mesh(opts, &report.scenario, plan.mesh).await?;
    let monitor = Monitor::start(&mesh)?;
    let load = Load::start(&mesh, &plan.agents, plan.rate, plan.size, plan.timeout).await?;
    let mut faults = Faults::new();
    for s in &plan.steps {
        faults.sleep_until(s.at).await;
        faults.apply(&mut mesh, s.action.clone())?;
    }
    let high = load.high_water();
    let tail_end = t.d.max(faults.elapsed() + MIN_TAIL);
    let (recovered, ()) = tokio::join!(recovery(&mesh, &high), faults.sleep_until(tail_end));
    let logs = load.stop().await;
    if plan.no_failures {
        if let Some(v) = failed_publishes(&logs, "failed while only the link was faulty") {
            report.violations.push(v);
        }
    }
    match plan.extra {
        Extra::None => {}
        Extra::SkippedByMark => {}
        Extra::PublishInterrupted => {
            let failed: usize = logs.iter().map(AgentLog::failures).sum();
            let slow: usize = logs.iter().map(|l| l.slow).sum();
            if failed + slow == 0 {
                report.violations.push(
                    "not exercised: no publish failed or was held up, so no kill hit the edge hub under load"
                        .into(),
                );
            } else {
                report.notes.push(format!(
                    "{failed} publishes not acked and {slow} held up (sent again by the SDK) while the edge hub was down"
                ));
            }
        }
    }
    judge(&mut mesh, logs, recovered, monitor, &faults, report).await?;
    if plan.extra == Extra::SkippedByMark {
        let skipped = mesh
            .central_metric("mesh_central_skipped_events_total")
            .await;
        if skipped > 0.0 {
            report.notes.push(format!(
                "{skipped} events resent after the duplicate window and skipped by the mark"
            ));
        } else {
            report
                .violations
                .push("not exercised: no event was resent and skipped by the lander's mark".into());
        }
    }
    finish(&mut mesh, faults, report);
    Ok(())
}
