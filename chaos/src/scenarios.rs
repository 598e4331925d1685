//! The scenario suite: seeded fault schedules run under load against a real [`Mesh`],
//! then judged.
//!
//! Every scenario has the same shape:
//!
//! 1. start a mesh ([`Mesh::start`]) and the producers (agents publishing one event at a
//!    time at a set rate, recording every ack: the oracle);
//! 2. play a fault schedule drawn from the seed: which faults, when, for how long, with
//!    which latency, jitter and bandwidth. The same `--seed` gives the same schedule;
//!    which event a fault hits still depends on scheduling;
//! 3. after the last heal, keep the load running for the rest of the duration while
//!    measuring **recovery**: the time from the last heal until every edge reports its
//!    uplink up *and* the centre has landed every event acked before the heal (the
//!    `ce-meshseq` of the edge's last event in `MESH_EVENTS` reaches the highest acked
//!    sequence);
//! 4. stop the producers, wait for every outbox and `MESH_INGRESS` to drain, read
//!    `MESH_EVENTS` and judge it ([`Verdict`]): acked-but-missing (G1, G2), duplicated
//!    (G3), reordered (G4), corrupted, refused-but-present (G7), plus the checks of the
//!    scenario (no failed publish inside a partition (G6), a cut noticed within 3 s (G5
//!    allows 1 s, with margin for a loaded machine; the same for noticing the heal), every
//!    missing event accounted for by `mesh_edge_expelled_events_total` and by the audit
//!    log's `outbox.expelled` records and the oldest of the outbox, `MESH_DLQ` empty, the
//!    fault really exercised what it targets).
//!
//! A background monitor scrapes every edge hub's `/metrics` every 50 ms for the outbox
//! depth (its peak is reported) and the uplink state (when a cut was noticed).
//!
//! What is not judged yet: `MESH_AUDIT` and `MESH_DLQ` (the audit log of issue 4 does not
//! exist yet), so expulsions are checked against the metric only.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agents::Agent;
use schemas::NewEvent;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{http_get, HarnessError, Mesh, MeshSpec, DEADLINE};
use crate::judge::Verdict;
use crate::producer::{payload, AgentLog};

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
pub async fn run(name: &str, opts: &RunOpts) -> Result<Report, HarnessError> {
    let info = info(name).ok_or_else(|| HarnessError::UnknownScenario(name.into()))?;
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
        "outbox-reject" => outbox_reject(opts, &t, &mut report).await,
        "outbox-drop-oldest" => outbox_drop_oldest(opts, &t, &mut report).await,
        other => {
            let plan = plan(other, &t, &mut rng);
            run_plan(opts, &t, plan, &mut report).await
        }
    };
    report.elapsed_s = started.elapsed().as_secs_f64();
    result.map(|()| report)
}

/// The scenario's own seed: the base seed mixed with its name, so scenarios differ and
/// each is reproducible alone.
pub fn scenario_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ h
}

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// A duration uniform in `[lo, hi)` seconds.
    pub fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(self.range(lo, hi))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// The phases of a run of length `d`: warm-up (load, no fault), faults, tail (load after
/// the last heal, at least one second).
#[derive(Debug, Clone, Copy)]
struct Timeline {
    d: Duration,
    warm: Duration,
    faults_end: Duration,
}

const MIN_TAIL: Duration = Duration::from_secs(1);

impl Timeline {
    fn new(d: Duration) -> Timeline {
        let warm = (d.mul_f64(0.15)).max(Duration::from_secs(1));
        Timeline {
            d,
            warm,
            faults_end: warm + d.mul_f64(0.6),
        }
    }

    /// The fraction `f` of the run's length.
    fn frac(&self, f: f64) -> Duration {
        self.d.mul_f64(f)
    }
}

/// One fault action.
#[derive(Debug, Clone)]
enum Action {
    Cut(usize),
    CutReturn(usize),
    Reset(usize),
    Heal(usize),
    Shape {
        site: usize,
        latency: Duration,
        jitter: Duration,
        bandwidth: u64,
    },
    Unshape(usize),
    KillEdgeHub(usize),
    StartEdgeHub(usize),
    KillCentralNats,
    RestartCentralNats,
    KillCentralHub(usize),
    TermCentralHub(usize),
    StartCentralHub(usize),
}

impl Action {
    fn describe(&self) -> String {
        let e = |s: &usize| format!("e{}", s + 1);
        match self {
            Action::Cut(s) => format!("cut {} (black hole)", e(s)),
            Action::CutReturn(s) => format!("cut the return path of {}", e(s)),
            Action::Reset(s) => format!("reset {}", e(s)),
            Action::Heal(s) => format!("heal {}", e(s)),
            Action::Shape {
                site,
                latency,
                jitter,
                bandwidth,
            } => format!(
                "shape {}: latency {} ms + jitter {} ms, {} KiB/s",
                e(site),
                latency.as_millis(),
                jitter.as_millis(),
                bandwidth / 1024
            ),
            Action::Unshape(s) => format!("unshape and heal {}", e(s)),
            Action::KillEdgeHub(s) => format!("SIGKILL edge hub {}", e(s)),
            Action::StartEdgeHub(s) => format!("start edge hub {}", e(s)),
            Action::KillCentralNats => "SIGKILL central nats-server".into(),
            Action::RestartCentralNats => "restart central nats-server".into(),
            Action::KillCentralHub(i) => format!("SIGKILL central hub c{i}"),
            Action::TermCentralHub(i) => format!("SIGTERM central hub c{i}"),
            Action::StartCentralHub(i) => format!("start central hub c{i}"),
        }
    }

    /// The site whose link this action takes down (for the cut-noticed check).
    fn cuts(&self) -> Option<usize> {
        match self {
            Action::Cut(s) | Action::CutReturn(s) | Action::Reset(s) => Some(*s),
            _ => None,
        }
    }

    fn heals(&self) -> Option<usize> {
        match self {
            Action::Heal(s) | Action::Unshape(s) => Some(*s),
            _ => None,
        }
    }
}

/// A fault action due `at` after the start of the load.
#[derive(Debug, Clone)]
struct Step {
    at: Duration,
    action: Action,
}

/// What a generic scenario checks besides the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    /// The edge must have resent bundles the centre already had (skipped by the mark).
    SkippedByMark,
    /// The faults must have interrupted publishing (else they hit nothing).
    PublishInterrupted,
}

/// A scenario made of a mesh, a load and a fault schedule.
struct Plan {
    spec: MeshSpec,
    /// `(site, agent id)` of every producer.
    agents: Vec<(usize, String)>,
    rate: f64,
    size: usize,
    timeout: Duration,
    steps: Vec<Step>,
    /// G6: no publish may fail (the faults never touch the edge hub).
    no_failures: bool,
    extra: Extra,
}

fn plan(name: &str, t: &Timeline, rng: &mut Rng) -> Plan {
    let mut p = Plan {
        spec: MeshSpec {
            seed: rng.next_u64(),
            ..MeshSpec::default()
        },
        agents: vec![(0, "a1".into()), (0, "a2".into())],
        rate: 150.0,
        size: 256,
        timeout: Duration::from_secs(2),
        steps: Vec::new(),
        no_failures: true,
        extra: Extra::None,
    };
    let step = |at: Duration, action: Action| Step { at, action };
    match name {
        "partition" => {
            let at = t.warm + t.frac(rng.range(0.0, 0.1));
            let len = t.frac(rng.range(0.35, 0.5)).max(Duration::from_secs(2));
            p.steps = vec![step(at, Action::Cut(0)), step(at + len, Action::Heal(0))];
        }
        "flapping" => {
            let mut at = t.warm;
            while at < t.faults_end {
                let down = rng.secs(0.15, 0.9);
                let action = if rng.chance(0.3) {
                    Action::Reset(0)
                } else {
                    Action::Cut(0)
                };
                p.steps.push(step(at, action));
                p.steps.push(step(at + down, Action::Heal(0)));
                at += down + rng.secs(0.15, 0.9);
            }
        }
        "long-partition" => {
            p.spec.central_toml =
                "[events]\nduplicate_window = \"2s\"\n[ingress]\nduplicate_window = \"2s\"\n"
                    .into();
            p.spec.edge_toml = "[forwarder]\nack_timeout = \"10s\"\n".into();
            p.agents = vec![(0, "a1".into())];
            p.rate = 200.0;
            p.size = 128;
            let at = t.warm;
            let len = t.frac(rng.range(0.4, 0.5)).max(rng.secs(3.5, 4.5));
            p.steps = vec![
                step(at, Action::CutReturn(0)),
                step(at + len, Action::Heal(0)),
            ];
            p.extra = Extra::SkippedByMark;
        }
        "kill-edge-hub" => {
            p.rate = 300.0;
            p.size = 200;
            p.timeout = Duration::from_secs(1);
            p.no_failures = false;
            p.extra = Extra::PublishInterrupted;
            let span = t.faults_end - t.warm;
            for k in 0..3 {
                let at = t.warm + span.mul_f64((k as f64 + rng.range(0.0, 0.5)) / 3.0);
                if k == 1 {
                    // The second kill hits while the forwarder drains a backlog: the link
                    // is cut for a while and healed just before.
                    let heal = at - rng.secs(0.02, 0.15);
                    let cut = (heal - span.mul_f64(0.2)).max(t.warm);
                    p.steps.push(step(cut, Action::Cut(0)));
                    p.steps.push(step(heal, Action::Heal(0)));
                }
                p.steps.push(step(at, Action::KillEdgeHub(0)));
                p.steps
                    .push(step(at + rng.secs(0.1, 0.5), Action::StartEdgeHub(0)));
            }
        }
        "kill-central-nats" => {
            let at = t.warm + t.frac(rng.range(0.0, 0.2));
            p.steps = vec![
                step(at, Action::KillCentralNats),
                step(at + rng.secs(0.5, 2.0), Action::RestartCentralNats),
            ];
        }
        "slow-link" => {
            p.steps.push(step(
                t.warm,
                Action::Shape {
                    site: 0,
                    latency: rng.secs(0.04, 0.12),
                    jitter: rng.secs(0.005, 0.04),
                    bandwidth: (rng.range(256.0, 768.0) * 1024.0) as u64,
                },
            ));
            let span = (t.faults_end - t.warm).as_secs_f64();
            for k in 0..2 {
                let at = t.warm
                    + Duration::from_secs_f64(span * (0.2 + 0.4 * k as f64 + rng.range(0.0, 0.2)));
                p.steps.push(step(at, Action::Cut(0)));
                p.steps.push(step(at + rng.secs(0.2, 0.5), Action::Heal(0)));
            }
            p.steps.push(step(t.faults_end, Action::Unshape(0)));
        }
        "restart-central-hub" => {
            let at = t.warm + t.frac(rng.range(0.0, 0.1));
            let down = rng.secs(0.3, 1.5);
            p.steps.push(step(at, Action::KillCentralHub(0)));
            p.steps.push(step(at + down, Action::StartCentralHub(0)));
            let at2 = (at + down + t.frac(0.2)).max(t.warm + t.frac(0.35));
            p.steps.push(step(at2, Action::TermCentralHub(0)));
            p.steps
                .push(step(at2 + rng.secs(0.3, 1.5), Action::StartCentralHub(0)));
        }
        "two-edges" => {
            p.spec.edges = 2;
            p.agents = vec![(0, "a1".into()), (1, "b1".into())];
            let c1 = t.warm + t.frac(rng.range(0.0, 0.05));
            let l1 = t.frac(rng.range(0.25, 0.35)).max(Duration::from_secs(2));
            let c2 = c1 + t.frac(rng.range(0.15, 0.25));
            let l2 = t.frac(rng.range(0.25, 0.35)).max(Duration::from_secs(2));
            p.steps = vec![
                step(c1, Action::Cut(0)),
                step(c1 + l1, Action::Heal(0)),
                step(c2, Action::Cut(1)),
                step(c2 + l2, Action::Heal(1)),
            ];
        }
        other => unreachable!("scenario {other} has no plan"),
    }
    p.steps.sort_by_key(|s| s.at);
    p
}

/// The fault log of a run: when each action was applied.
struct Faults {
    t0: Instant,
    applied: Vec<(Instant, Action)>,
    lines: Vec<String>,
    notes: Vec<String>,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            t0: Instant::now(),
            applied: Vec::new(),
            lines: Vec::new(),
            notes: Vec::new(),
        }
    }

    async fn sleep_until(&self, at: Duration) {
        tokio::time::sleep_until((self.t0 + at).into()).await;
    }

    fn apply(&mut self, mesh: &mut Mesh, action: Action) -> Result<(), HarnessError> {
        let now = Instant::now();
        let io = |what: &str| {
            let what = what.to_string();
            move |source| HarnessError::Io { what, source }
        };
        match &action {
            Action::Cut(s) => mesh.sites[*s].proxy.cut(),
            Action::CutReturn(s) => mesh.sites[*s].proxy.cut_return(),
            Action::Reset(s) => mesh.sites[*s].proxy.reset(),
            Action::Heal(s) => mesh.sites[*s].proxy.heal(),
            Action::Shape {
                site,
                latency,
                jitter,
                bandwidth,
            } => {
                let p = &mesh.sites[*site].proxy;
                p.set_latency(*latency, *jitter);
                p.set_bandwidth(Some(*bandwidth));
            }
            Action::Unshape(s) => {
                let p = &mesh.sites[*s].proxy;
                p.set_latency(Duration::ZERO, Duration::ZERO);
                p.set_bandwidth(None);
                p.heal();
            }
            Action::KillEdgeHub(s) => mesh.sites[*s].hub.kill(),
            Action::StartEdgeHub(s) => mesh.sites[*s]
                .hub
                .start()
                .map_err(io("restarting an edge hub"))?,
            Action::KillCentralNats => mesh.kill_central(),
            Action::RestartCentralNats => mesh.restart_central()?,
            Action::KillCentralHub(i) => mesh.central_hubs[*i].kill(),
            Action::TermCentralHub(i) => {
                if !Mesh::terminate(&mut mesh.central_hubs[*i], Duration::from_secs(10)) {
                    self.notes
                        .push(format!("central hub c{i} did not exit 0 on SIGTERM"));
                }
            }
            Action::StartCentralHub(i) => mesh.central_hubs[*i]
                .start()
                .map_err(io("restarting a central hub"))?,
        }
        self.lines.push(format!(
            "+{:.2}s {}",
            now.duration_since(self.t0).as_secs_f64(),
            action.describe()
        ));
        self.applied.push((now, action));
        Ok(())
    }

    fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }
}

/// Producers: agents publishing one event at a time at a set rate.
struct Load {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<AgentLog>>,
    /// Highest acked `ce-meshseq` per site.
    high: Vec<Arc<AtomicU64>>,
}

impl Load {
    async fn start(
        mesh: &Mesh,
        agents: &[(usize, String)],
        rate: f64,
        size: usize,
        timeout: Duration,
    ) -> Result<Load, HarnessError> {
        let stop = CancellationToken::new();
        let high: Vec<Arc<AtomicU64>> = (0..mesh.sites.len())
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let mut tasks = Vec::new();
        for (site, id) in agents {
            let agent = mesh.agent(*site, id).await?.with_timeout(timeout);
            tasks.push(tokio::spawn(publish_loop(
                agent,
                rate,
                size,
                stop.clone(),
                high[*site].clone(),
            )));
        }
        Ok(Load { stop, tasks, high })
    }

    fn high_water(&self) -> Vec<u64> {
        self.high.iter().map(|h| h.load(Ordering::SeqCst)).collect()
    }

    async fn stop(self) -> Vec<AgentLog> {
        self.stop.cancel();
        let mut logs = Vec::new();
        for t in self.tasks {
            if let Ok(log) = t.await {
                logs.push(log);
            }
        }
        logs
    }
}

/// Like [`crate::producer::produce`], and also records the highest acked sequence.
async fn publish_loop(
    agent: Agent,
    rate: f64,
    size: usize,
    stop: CancellationToken,
    high: Arc<AtomicU64>,
) -> AgentLog {
    let mut log = AgentLog::new(agent.id());
    let start = tokio::time::Instant::now();
    for n in 0.. {
        let due = start + Duration::from_secs_f64(n as f64 / rate.max(1e-9));
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.cancelled() => break,
        }
        let data = payload(agent.id(), n, size);
        let ev = NewEvent::new("chaos.tick", "chaos.load", data.clone());
        let id = ev.id.unwrap_or_else(Uuid::now_v7);
        let outcome = agent.publish_event(ev).await;
        if let Ok(ack) = &outcome {
            high.fetch_max(ack.last_seq, Ordering::SeqCst);
        }
        log.record(id, data, &outcome);
    }
    log
}

/// What the monitor saw.
#[derive(Debug, Default)]
struct Seen {
    peak_outbox: u64,
    /// Per site, every change of `mesh_edge_uplink_up`.
    uplink: Vec<Vec<(Instant, bool)>>,
}

/// Scrapes every edge hub's metrics every 50 ms until stopped.
struct Monitor {
    stop: CancellationToken,
    task: JoinHandle<Seen>,
}

impl Monitor {
    fn start(mesh: &Mesh) -> Monitor {
        let addrs: Vec<SocketAddr> = mesh.sites.iter().map(|s| s.http).collect();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Seen {
                uplink: vec![Vec::new(); addrs.len()],
                ..Seen::default()
            };
            let mut last: Vec<Option<bool>> = vec![None; addrs.len()];
            loop {
                for (i, a) in addrs.iter().enumerate() {
                    let Some(body) = http_get(*a, "/metrics").await else {
                        continue;
                    };
                    let now = Instant::now();
                    let value = |name: &str| {
                        body.lines()
                            .find(|l| l.starts_with(name))
                            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    };
                    if let Some(v) = value("mesh_edge_outbox_events") {
                        seen.peak_outbox = seen.peak_outbox.max(v as u64);
                    }
                    if let Some(v) = value("mesh_edge_uplink_up") {
                        let up = v == 1.0;
                        if last[i] != Some(up) {
                            last[i] = Some(up);
                            seen.uplink[i].push((now, up));
                        }
                    }
                }
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            seen
        });
        Monitor { stop, task }
    }

    async fn finish(self) -> Seen {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// Waits until every edge reports its uplink up and the centre landed every event up to
/// `high[site]`; returns how long that took, or `None` after the deadline.
async fn recovery(mesh: &Mesh, high: &[u64]) -> Option<Duration> {
    crate::harness::wait_until("recovery after the last heal", DEADLINE, || async {
        for (i, s) in mesh.sites.iter().enumerate() {
            if mesh.edge_metric(i, "mesh_edge_uplink_up").await != Some(1.0) {
                return false;
            }
            match mesh.landed_mark(&s.id).await {
                Some(m) if m >= high[i] => {}
                _ => return false,
            }
        }
        true
    })
    .await
    .ok()
}

fn dir_for(opts: &RunOpts, name: &str) -> Option<PathBuf> {
    opts.dir.as_ref().map(|d| d.join(name))
}

async fn run_plan(
    opts: &RunOpts,
    t: &Timeline,
    plan: Plan,
    report: &mut Report,
) -> Result<(), HarnessError> {
    let mut mesh = Mesh::start(
        &opts.exe,
        &plan.spec,
        dir_for(opts, &report.scenario).as_deref(),
    )
    .await?;
    let monitor = Monitor::start(&mesh);
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
        let failed: usize = logs.iter().map(AgentLog::failures).sum();
        if failed > 0 {
            let first = logs
                .iter()
                .flat_map(|l| l.refused.first().map(|r| r.1.clone()))
                .next()
                .unwrap_or_else(|| "no answer".into());
            report.violations.push(format!(
                "G6: {failed} publishes failed while only the link was faulty (first: {first})"
            ));
        }
    }
    match plan.extra {
        Extra::None => {}
        Extra::SkippedByMark => {}
        Extra::PublishInterrupted => {
            let failed: usize = logs.iter().map(AgentLog::failures).sum();
            if failed == 0 {
                report.violations.push(
                    "not exercised: no publish failed, so no kill hit the edge hub under load"
                        .into(),
                );
            } else {
                report.notes.push(format!(
                    "{failed} publishes not acked while the edge hub was down"
                ));
            }
        }
    }
    judge(&mut mesh, logs, recovered, monitor, &faults, report).await?;
    if plan.extra == Extra::SkippedByMark {
        let skipped = mesh
            .central_metric_sum("mesh_central_skipped_events_total")
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

/// Waits for the drain, reads `MESH_EVENTS` and fills the report from the judge's
/// verdict; returns it.
async fn judge(
    mesh: &mut Mesh,
    logs: Vec<AgentLog>,
    recovered: Option<Duration>,
    monitor: Monitor,
    faults: &Faults,
    report: &mut Report,
) -> Result<Verdict, HarnessError> {
    if let Err(e) = mesh.wait_drained(DEADLINE).await {
        report.violations.push(format!("G5: not drained: {e}"));
    }
    let seen = monitor.finish().await;
    let events = mesh.read_events().await?;
    let v = Verdict::judge(&logs, &events);
    fill(report, &v, &logs);
    report.peak_outbox = seen.peak_outbox;
    report.recovery_s = recovered.map(|d| d.as_secs_f64());
    if recovered.is_none() {
        report.violations.push(format!(
            "G5: not live with everything acked before the last heal landed within {DEADLINE:?}"
        ));
    }
    report.expelled_metric = expelled_metric(mesh).await;
    // Nothing a scenario publishes is poison and the centre refuses nothing: a dead
    // letter would be an event that left the normal path.
    let dead = dead_letters(mesh).await;
    if dead > 0 {
        report.violations.push(format!(
            "{dead} messages in {} (no scenario should dead-letter anything)",
            schemas::subject::STREAM_DLQ
        ));
    }
    cut_noticed(faults, &seen, report);
    Ok(v)
}

/// Messages in `MESH_DLQ` (0 when the stream does not exist).
async fn dead_letters(mesh: &Mesh) -> u64 {
    match mesh
        .central_js()
        .get_stream(schemas::subject::STREAM_DLQ)
        .await
    {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

fn fill(report: &mut Report, v: &Verdict, logs: &[AgentLog]) {
    report.acked = v.acked;
    report.delivered = v.delivered;
    report.lost = v.lost.len();
    report.duplicated = v.duplicated.len();
    report.reordered = v.reordered.len();
    report.corrupted = v.corrupted.len();
    report.refused_present = v.refused_present.len();
    report.refused = logs.iter().map(|l| l.refused.len()).sum();
    report.unknown = logs.iter().map(|l| l.unknown.len()).sum();
    let mut add = |what: &str, ids: &[Uuid]| {
        if let Some(first) = ids.first() {
            report
                .violations
                .push(format!("{what}: {} (first ce-id {first})", ids.len()));
        }
    };
    add("G2 acked but missing", &v.lost);
    add("G3 duplicated", &v.duplicated);
    add("G4 reordered", &v.reordered);
    add("corrupted", &v.corrupted);
    add("G7 refused but present", &v.refused_present);
}

/// The expelled events `MESH_AUDIT` records (the latest `total` of each edge and reason
/// in `outbox.expelled` records), once it reaches `want` or after 10 s.
async fn wait_audited_expelled(mesh: &Mesh, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = audited_expelled(mesh).await;
        if got >= want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn audited_expelled(mesh: &Mesh) -> u64 {
    let Ok(records) =
        central_hub::audit::read_all(mesh.central_js(), schemas::subject::STREAM_AUDIT).await
    else {
        return 0;
    };
    let mut totals: std::collections::HashMap<(String, String), u64> = Default::default();
    for (_, payload) in records {
        let Ok(r) = serde_json::from_slice::<central_hub::audit::AuditRecord>(&payload) else {
            continue;
        };
        if r.kind != central_hub::audit::kind::OUTBOX_EXPELLED {
            continue;
        }
        let field = |k: &str| r.fields.get(k).cloned().unwrap_or_default();
        let key = (field("edge").to_string(), field("reason").to_string());
        let total = field("total").as_u64().unwrap_or(0);
        totals.insert(key, total);
    }
    totals.values().sum()
}

async fn expelled_metric(mesh: &Mesh) -> u64 {
    let mut total = 0.0;
    for s in &mesh.sites {
        total += crate::harness::metric_sum(s.http, "mesh_edge_expelled_events_total").await;
    }
    total as u64
}

/// G5: every cut of at least 2 s was noticed (uplink down) within 3 s, and its heal
/// (uplink up) within 3 s too. G5 says 1 s; the margin is for a loaded machine.
fn cut_noticed(faults: &Faults, seen: &Seen, report: &mut Report) {
    let mut worst: Option<Duration> = None;
    let mut worst_heal: Option<Duration> = None;
    for (k, (at, action)) in faults.applied.iter().enumerate() {
        let Some(site) = action.cuts() else { continue };
        let healed = faults.applied[k + 1..]
            .iter()
            .find(|(_, a)| a.heals() == Some(site))
            .map(|(t, _)| *t);
        let Some(healed) = healed else { continue };
        if healed.duration_since(*at) < Duration::from_secs(2) {
            continue;
        }
        let samples = seen.uplink.get(site).map(Vec::as_slice).unwrap_or_default();
        let noticed = samples
            .iter()
            .find(|(t, up)| !up && *t >= *at)
            .map(|(t, _)| t.duration_since(*at));
        let resumed = samples
            .iter()
            .find(|(t, up)| *up && *t >= healed)
            .map(|(t, _)| t.duration_since(healed));
        match resumed {
            Some(d) => {
                worst_heal = Some(worst_heal.map_or(d, |w| w.max(d)));
                if d > Duration::from_secs(3) {
                    report.violations.push(format!(
                        "G5: the heal of e{} was noticed only after {:.2}s",
                        site + 1,
                        d.as_secs_f64()
                    ));
                }
            }
            None => report
                .violations
                .push(format!("G5: the heal of e{} was never noticed", site + 1)),
        }
        match noticed {
            Some(d) if *at + d <= healed => {
                worst = Some(worst.map_or(d, |w| w.max(d)));
                if d > Duration::from_secs(3) {
                    report.violations.push(format!(
                        "G5: the cut of e{} was noticed only after {:.2}s",
                        site + 1,
                        d.as_secs_f64()
                    ));
                }
            }
            _ => report.violations.push(format!(
                "G5: the cut of e{} at +{:.2}s was never noticed before its heal",
                site + 1,
                at.duration_since(faults.t0).as_secs_f64()
            )),
        }
    }
    report.cut_noticed_s = worst.map(|d| d.as_secs_f64());
    report.heal_noticed_s = worst_heal.map(|d| d.as_secs_f64());
}

/// Records the fault log and keeps the directory when something broke or recovery was slow.
fn finish(mesh: &mut Mesh, faults: Faults, report: &mut Report) {
    report.faults = faults.lines;
    report.notes.extend(faults.notes);
    let slow = report.recovery_s.is_some_and(|s| s > SLOW_RECOVERY_S);
    if slow {
        report.notes.push(format!(
            "slow recovery (over {SLOW_RECOVERY_S} s): stores and logs kept for a look"
        ));
    }
    if !report.passed() || slow {
        report.kept_dir = Some(mesh.keep_dir().display().to_string());
    }
}

/// A recovery slower than this is not a violation, but its directory is kept.
const SLOW_RECOVERY_S: f64 = 5.0;

const FULL_OUTBOX_EDGE: &str = "[ingest]\nmax_event_bytes = 65536\n[outbox]\nmax_bytes = 200000\n";

/// `reject`: the link is cut while an agent publishes 1 KiB events at 300/s; the 200 kB
/// outbox fills and further publishes are refused with `outbox_full`. After the heal the
/// backlog drains; the refused events never arrive, every acked one does, and after the
/// drain publishing works again.
async fn outbox_reject(
    opts: &RunOpts,
    t: &Timeline,
    report: &mut Report,
) -> Result<(), HarnessError> {
    let spec = MeshSpec {
        edge_toml: format!("{FULL_OUTBOX_EDGE}full_policy = \"reject\"\n"),
        seed: scenario_seed(opts.seed, "outbox-reject"),
        ..MeshSpec::default()
    };
    let mut mesh =
        Mesh::start(&opts.exe, &spec, dir_for(opts, &report.scenario).as_deref()).await?;
    let monitor = Monitor::start(&mesh);
    let load = Load::start(
        &mesh,
        &[(0, "a1".into())],
        300.0,
        1024,
        Duration::from_secs(2),
    )
    .await?;
    let mut faults = Faults::new();
    faults.sleep_until(t.warm).await;
    faults.apply(&mut mesh, Action::Cut(0))?;
    faults.sleep_until(t.faults_end).await;
    faults.apply(&mut mesh, Action::Heal(0))?;
    let high = load.high_water();
    let tail_end = t.d.max(faults.elapsed() + MIN_TAIL);
    let (recovered, ()) = tokio::join!(recovery(&mesh, &high), faults.sleep_until(tail_end));
    let mut logs = load.stop().await;
    // After the drain the outbox has room again: a fresh agent's publishes are all acked.
    if let Err(e) = mesh.wait_drained(DEADLINE).await {
        report.violations.push(format!("G5: not drained: {e}"));
    }
    let after = Load::start(
        &mesh,
        &[(0, "a2".into())],
        200.0,
        1024,
        Duration::from_secs(2),
    )
    .await?;
    faults
        .sleep_until(faults.elapsed() + Duration::from_millis(500))
        .await;
    let after_logs = after.stop().await;
    let after_failed: usize = after_logs.iter().map(AgentLog::failures).sum();
    if after_failed > 0 {
        report.violations.push(format!(
            "G7: {after_failed} publishes still refused after the outbox drained"
        ));
    }
    logs.extend(after_logs);
    let refusals: Vec<&String> = logs
        .iter()
        .flat_map(|l| l.refused.iter().map(|r| &r.1))
        .collect();
    if refusals.is_empty() {
        report
            .violations
            .push("not exercised: the outbox never filled (no publish refused)".into());
    } else if let Some(bad) = refusals.iter().find(|m| !m.contains("outbox full")) {
        report.violations.push(format!(
            "G7: a refusal does not name the full outbox: {bad}"
        ));
    } else {
        report.notes.push(format!(
            "{} publishes refused, e.g. \"{}\"",
            refusals.len(),
            refusals[0]
        ));
    }
    judge(&mut mesh, logs, recovered, monitor, &faults, report).await?;
    if report.expelled_metric != 0 {
        report.violations.push(format!(
            "reject expelled {} events (mesh_edge_expelled_events_total)",
            report.expelled_metric
        ));
    }
    finish(&mut mesh, faults, report);
    Ok(())
}

/// `drop-oldest`: a first agent publishes with the link up and everything drains; the
/// link is cut and noticed; a second agent overfills the 200 kB outbox with 1 KiB events
/// (never refused); the link heals and a third agent publishes while the outbox is still
/// full. The missing events must be the oldest of the second agent's, exactly as many as
/// `mesh_edge_expelled_events_total` says and as the audit log records
/// (`outbox.expelled`); everything else arrives once, in order.
async fn outbox_drop_oldest(
    opts: &RunOpts,
    t: &Timeline,
    report: &mut Report,
) -> Result<(), HarnessError> {
    let spec = MeshSpec {
        edge_toml: format!("{FULL_OUTBOX_EDGE}full_policy = \"drop-oldest\"\n"),
        seed: scenario_seed(opts.seed, "outbox-drop-oldest"),
        ..MeshSpec::default()
    };
    let mut mesh =
        Mesh::start(&opts.exe, &spec, dir_for(opts, &report.scenario).as_deref()).await?;
    let monitor = Monitor::start(&mesh);
    let timeout = Duration::from_secs(2);
    let mut faults = Faults::new();
    let before = Load::start(&mesh, &[(0, "a1".into())], 150.0, 1024, timeout).await?;
    faults.sleep_until(t.warm).await;
    let mut logs = before.stop().await;
    mesh.wait_drained(DEADLINE).await?;
    faults.apply(&mut mesh, Action::Cut(0))?;
    mesh.wait_uplink(0, false).await?;
    let during = Load::start(&mesh, &[(0, "a2".into())], 300.0, 1024, timeout).await?;
    faults.sleep_until(t.faults_end).await;
    // Nothing acked after the heal counts for recovery: the backlog is what must land.
    let high = during.high_water();
    let mut overfilled = during.stop().await;
    faults.apply(&mut mesh, Action::Heal(0))?;
    let after = Load::start(&mesh, &[(0, "a3".into())], 150.0, 1024, timeout).await?;
    let tail_end = t.d.max(faults.elapsed() + MIN_TAIL);
    let (recovered, ()) = tokio::join!(recovery(&mesh, &high), faults.sleep_until(tail_end));
    logs.extend(after.stop().await);
    let o = overfilled.pop().unwrap_or_default();
    if o.failures() > 0 {
        report.violations.push(format!(
            "drop-oldest refused {} publishes (it never refuses)",
            o.failures()
        ));
    }
    // Judge the overfilling agent's events with the expelled prefix taken out, once the
    // metric says how many were expelled.
    if let Err(e) = mesh.wait_drained(DEADLINE).await {
        report.violations.push(format!("G5: not drained: {e}"));
    }
    let expelled = expelled_metric(&mesh).await as usize;
    let events = mesh.read_events().await?;
    let present: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
    let missing = match missing_prefix(&o.acked, &present) {
        Ok(k) => k,
        Err(positions) => {
            report.violations.push(format!(
                "G2: the missing events of the overfilling agent are not its oldest ({} missing, positions {:?}…)",
                positions.len(),
                &positions[..positions.len().min(5)]
            ));
            positions.len()
        }
    };
    if expelled == 0 {
        report
            .violations
            .push("not exercised: nothing was expelled".into());
    }
    // The count is exact: an event expelled while in flight in a bundle is counted only
    // if that bundle is not acknowledged (then it is missing too).
    if missing != expelled {
        report.violations.push(format!(
            "G2: {missing} events of the overfilling agent are missing, but mesh_edge_expelled_events_total says {expelled}"
        ));
    }
    // G2: each expulsion is also written to the audit log (the edge reports its counters
    // in its status heartbeat, every second; the central hub records the increase).
    let audited = wait_audited_expelled(&mesh, expelled as u64).await;
    if audited != expelled as u64 {
        report.violations.push(format!(
            "G2: the audit log records {audited} expelled events (outbox.expelled), the metric says {expelled}"
        ));
    } else {
        report.notes.push(format!(
            "the audit log records the {audited} expelled events"
        ));
    }
    let mut kept = o.clone();
    kept.acked = o.acked[missing.min(o.acked.len())..].to_vec();
    let acked_all = logs.iter().map(|l| l.acked.len()).sum::<usize>() + o.acked.len();
    logs.push(kept);
    judge(&mut mesh, logs, recovered, monitor, &faults, report).await?;
    report.acked = acked_all;
    report.expelled = missing;
    report.notes.push(format!(
        "{} of {} events of the overfilling agent expelled, the oldest first",
        missing,
        o.acked.len()
    ));
    finish(&mut mesh, faults, report);
    Ok(())
}

/// Where an agent's acked events missing from the stream are: `Ok(k)` when they are
/// exactly its `k` oldest (what drop-oldest may expel), else `Err` with their positions.
fn missing_prefix(acked: &[Uuid], present: &HashSet<Uuid>) -> Result<usize, Vec<usize>> {
    let missing: Vec<usize> = acked
        .iter()
        .enumerate()
        .filter(|(_, id)| !present.contains(id))
        .map(|(i, _)| i)
        .collect();
    if missing.iter().enumerate().all(|(k, i)| k == *i) {
        Ok(missing.len())
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_oldest_may_be_missing() {
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let present = |skip: &[usize]| -> HashSet<Uuid> {
            ids.iter()
                .enumerate()
                .filter(|(i, _)| !skip.contains(i))
                .map(|(_, id)| *id)
                .collect()
        };
        assert_eq!(missing_prefix(&ids, &present(&[])), Ok(0));
        assert_eq!(missing_prefix(&ids, &present(&[0, 1, 2])), Ok(3));
        assert_eq!(missing_prefix(&ids, &present(&[0, 2])), Err(vec![0, 2]));
        assert_eq!(missing_prefix(&ids, &present(&[5])), Err(vec![5]));
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let t = Timeline::new(Duration::from_secs(10));
        for s in SCENARIOS {
            if s.name.starts_with("outbox-") {
                continue;
            }
            let a = plan(s.name, &t, &mut Rng::new(scenario_seed(7, s.name)));
            let b = plan(s.name, &t, &mut Rng::new(scenario_seed(7, s.name)));
            let c = plan(s.name, &t, &mut Rng::new(scenario_seed(8, s.name)));
            let times = |p: &Plan| p.steps.iter().map(|s| s.at).collect::<Vec<_>>();
            assert_eq!(times(&a), times(&b), "{}", s.name);
            assert!(!a.steps.is_empty(), "{} has no fault", s.name);
            assert_ne!(times(&a), times(&c), "{}: the seed changes nothing", s.name);
        }
    }

    #[test]
    fn every_fault_is_healed_within_the_fault_window() {
        for secs in [8, 30] {
            let t = Timeline::new(Duration::from_secs(secs));
            for s in SCENARIOS.iter().filter(|s| !s.name.starts_with("outbox-")) {
                let p = plan(s.name, &t, &mut Rng::new(scenario_seed(1, s.name)));
                let last = p.steps.last().unwrap();
                assert!(
                    last.at <= t.d,
                    "{} ends at {:?}, after the {:?} run",
                    s.name,
                    last.at,
                    t.d
                );
                assert!(
                    matches!(
                        last.action,
                        Action::Heal(_)
                            | Action::Unshape(_)
                            | Action::StartEdgeHub(_)
                            | Action::RestartCentralNats
                            | Action::StartCentralHub(_)
                    ),
                    "{} ends with {:?}",
                    s.name,
                    last.action
                );
            }
        }
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            let x = a.range(0.5, 2.0);
            assert_eq!(x, b.range(0.5, 2.0));
            assert!((0.5..2.0).contains(&x));
        }
    }
}
