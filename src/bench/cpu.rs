//! Reading `/proc`: the CPU time each process of a run used (user + system, from
//! `/proc/<pid>/stat`, in USER_HZ ticks), per event, and the machine the run was on.

use serde::Serialize;

/// CPU time (user + system) a process used so far, in microseconds.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat: indices 11 and 12 here.
    let hz = 100; // USER_HZ on Linux
    (ticks(11) + ticks(12)) * 1_000_000 / hz
}

/// CPU time of (edge hub, central hub, edge nats-server, central nats-server, this
/// process) now; a missing process counts 0.
pub(super) fn cpu_now(pids: [Option<u32>; 4]) -> [u64; 5] {
    let c = |p: Option<u32>| p.map(cpu_us).unwrap_or(0);
    [
        c(pids[0]),
        c(pids[1]),
        c(pids[2]),
        c(pids[3]),
        cpu_us(std::process::id()),
    ]
}

/// CPU µs per event of each part between two [`cpu_now`] readings.
pub(super) fn cpu_profile(before: [u64; 5], after: [u64; 5], events: u64) -> CpuProfile {
    let d = |i: usize| after[i].saturating_sub(before[i]) as f64 / events.max(1) as f64;
    CpuProfile {
        edge_hub: d(0),
        central_hub: d(1),
        edge_nats: d(2),
        central_nats: d(3),
        agents: d(4),
    }
}

/// CPU microseconds per event spent by each part during a run.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct CpuProfile {
    pub(super) edge_hub: f64,
    pub(super) central_hub: f64,
    pub(super) edge_nats: f64,
    pub(super) central_nats: f64,
    pub(super) agents: f64,
}

/// The machine line of the report: cores, memory, CPU model.
pub(super) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1048576.0))
        .unwrap_or_default();
    format!("{cores} cores, {mem}, {cpu}")
}
