//! Seeded fault schedules: the [`Rng`], the phases of a run ([`Timeline`]), the fault
//! [`Action`]s and the [`Plan`] of every scripted scenario.
//!
//! Pure: nothing here touches a process. The same seed gives the same plan (times,
//! latencies, bandwidths); which event a fault hits still depends on scheduling.

use std::time::Duration;

use mesh_testkit::MeshBuilder;

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
pub(crate) struct Timeline {
    pub(crate) d: Duration,
    pub(crate) warm: Duration,
    pub(crate) faults_end: Duration,
}

/// The shortest tail of load after the last heal.
pub(crate) const MIN_TAIL: Duration = Duration::from_secs(1);

impl Timeline {
    pub(crate) fn new(d: Duration) -> Timeline {
        let warm = (d.mul_f64(0.15)).max(Duration::from_secs(1));
        Timeline {
            d,
            warm,
            faults_end: warm + d.mul_f64(0.6),
        }
    }

    /// The fraction `f` of the run's length.
    pub(crate) fn frac(&self, f: f64) -> Duration {
        self.d.mul_f64(f)
    }
}

/// One fault action.
#[derive(Debug, Clone)]
pub(crate) enum Action {
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
    pub(crate) fn describe(&self) -> String {
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
    pub(crate) fn cuts(&self) -> Option<usize> {
        match self {
            Action::Cut(s) | Action::CutReturn(s) | Action::Reset(s) => Some(*s),
            _ => None,
        }
    }

    /// The site whose link this action brings back.
    pub(crate) fn heals(&self) -> Option<usize> {
        match self {
            Action::Heal(s) | Action::Unshape(s) => Some(*s),
            _ => None,
        }
    }
}

/// A fault action due `at` after the start of the load.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) at: Duration,
    pub(crate) action: Action,
}

/// What a generic scenario checks besides the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extra {
    None,
    /// The edge must have resent bundles the centre already had (skipped by the mark).
    SkippedByMark,
    /// The faults must have interrupted publishing (else they hit nothing).
    PublishInterrupted,
}

/// A scenario made of a mesh, a load and a fault schedule.
pub(crate) struct Plan {
    /// The mesh to run it on (executable and directory still to be given).
    pub(crate) mesh: MeshBuilder,
    /// `(site, agent id)` of every producer.
    pub(crate) agents: Vec<(usize, String)>,
    pub(crate) rate: f64,
    pub(crate) size: usize,
    pub(crate) timeout: Duration,
    pub(crate) steps: Vec<Step>,
    /// G6: no publish may fail (the faults never touch the edge hub).
    pub(crate) no_failures: bool,
    pub(crate) extra: Extra,
}

/// The plan of scripted scenario `name`, drawn from `rng`.
pub(crate) fn plan(name: &str, t: &Timeline, rng: &mut Rng) -> Plan {
    let mut p = Plan {
        mesh: MeshBuilder::new().seed(rng.next_u64()),
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
            p.mesh = p
                .mesh
                .central_toml(
                    "[events]\nduplicate_window = \"2s\"\n[ingress]\nduplicate_window = \"2s\"\n",
                )
                .edge_toml("[forwarder]\nack_timeout = \"10s\"\n");
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
            p.mesh = p.mesh.edges(2);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::SCENARIOS;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let t = Timeline::new(Duration::from_secs(10));
        for s in SCENARIOS {
            if s.name.starts_with("outbox-")
                || s.name.starts_with("cluster-")
                || s.name == "noisy-neighbour"
            {
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
            for s in SCENARIOS.iter().filter(|s| {
                !s.name.starts_with("outbox-")
                    && !s.name.starts_with("cluster-")
                    && s.name != "noisy-neighbour"
            }) {
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
