//! The whole chaos suite (`mesh chaos run --scenario all`) at a short duration: every
//! scenario must end with nothing lost, duplicated, reordered or corrupted, nothing
//! refused present, the system live and drained after the last heal, and each fault
//! really exercised. Guards G1–G7 against any schedule of the scenarios' faults.
//!
//! `CHAOS_DURATION` (seconds, default 8) and `CHAOS_SEED` (default 1) change the run;
//! the scenarios run one after another so they do not compete for the machine.

use std::time::Duration;

use chaos::scenarios::{self, RunOpts, SCENARIOS};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_keeps_every_guarantee() {
    let opts = RunOpts {
        exe: env!("CARGO_BIN_EXE_mesh").into(),
        duration: Duration::from_secs_f64(env_or("CHAOS_DURATION", 8.0)),
        seed: env_or("CHAOS_SEED", 1),
        dir: None,
    };
    let mut failures = Vec::new();
    for s in SCENARIOS {
        match scenarios::run(s.name, &opts).await {
            Ok(r) => {
                eprintln!(
                    "{:20} {} acked={} delivered={} lost={} dup={} reord={} expelled={} recovery={:?} noticed={:?} peak_outbox={} ({:.1}s) faults: {}",
                    r.scenario,
                    if r.passed() { "pass" } else { "FAIL" },
                    r.acked,
                    r.delivered,
                    r.lost,
                    r.duplicated,
                    r.reordered,
                    r.expelled,
                    r.recovery_s,
                    r.cut_noticed_s,
                    r.peak_outbox,
                    r.elapsed_s,
                    r.faults.join("; ")
                );
                if r.stall_s.is_some() {
                    eprintln!(
                        "{:20} stall={:?} native_stall={:?} bound={:?} leader_died={:?} drain={:?} drain_rate={:?} normal_drain_rate={:?}",
                        "", r.stall_s, r.native_stall_s, r.stall_bound_s, r.leader_died, r.drain_s, r.drain_rate, r.normal_drain_rate
                    );
                }
                assert!(
                    r.elapsed_s < 90.0,
                    "{} took {:.1}s",
                    r.scenario,
                    r.elapsed_s
                );
                if !r.passed() {
                    failures.push(format!(
                        "{} (seed {}): {:?}; kept in {:?}",
                        r.scenario, r.seed, r.violations, r.kept_dir
                    ));
                }
                assert!(r.acked > 0, "{}: nothing was acked", r.scenario);
            }
            Err(e) => failures.push(format!("{}: harness error: {e}", s.name)),
        }
    }
    assert!(failures.is_empty(), "violations:\n{}", failures.join("\n"));
}
