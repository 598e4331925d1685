//! What `mesh bench` reports: the results of each system, the agentmesh extras (memory,
//! disk), the table printed at the end and the JSON written with `--json` (field names
//! are the JSON's; `tests/bench_smoke.rs` reads them).

use serde::Serialize;

use super::cpu::CpuProfile;

#[derive(Debug, Clone, Serialize)]
pub(super) struct Latency {
    pub(super) offered_per_s: u64,
    pub(super) samples: usize,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
    /// agentmesh: the edge hub's group-commit time (sled write + flush) during the run,
    /// p50 and p99, as the upper bound of the histogram bucket (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) commit_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) commit_p99_us: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct SystemResult {
    pub(super) throughput_per_s: Option<f64>,
    pub(super) drain_per_s: Option<f64>,
    pub(super) latency: Vec<Latency>,
    /// CPU microseconds per event by process, in the throughput run.
    pub(super) cpu_throughput: Option<CpuProfile>,
    /// The same in the drain run.
    pub(super) cpu_drain: Option<CpuProfile>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct MeshExtra {
    pub(super) rss_events: u64,
    pub(super) edge_peak_rss_bytes: u64,
    pub(super) outbox_disk_full_bytes: u64,
    pub(super) outbox_payload_full_bytes: u64,
    pub(super) outbox_disk_after_cycles: Vec<u64>,
    pub(super) cycle_payload_bytes: u64,
    /// The noisy-neighbour run (`--noisy-secs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) noisy: Option<super::noisy::Noisy>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    pub(super) machine: String,
    pub(super) nats_server: String,
    /// "secure" (JWT auth, TLS on every port, the default) or "insecure".
    pub(super) security: String,
    pub(super) event_bytes: usize,
    pub(super) count: u64,
    pub(super) backlog: u64,
    pub(super) limit: SystemResult,
    pub(super) native: SystemResult,
    pub(super) agentmesh: SystemResult,
    pub(super) agentmesh_extra: MeshExtra,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
}

/// The report as the table `mesh bench` prints.
pub(super) fn table(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "mesh bench: {} B events, {} events end to end, {} backlog; {}; {}; {}\n\n",
        r.event_bytes, r.count, r.backlog, r.security, r.nats_server, r.machine
    ));
    s.push_str(&format!(
        "{:<34} {:>11} {:>11} {:>11} {:>9} {:>10}\n",
        "", "limit", "native", "agentmesh", "am/limit", "am/native"
    ));
    let (l, n, m) = (&r.limit, &r.native, &r.agentmesh);
    s.push_str(&format!(
        "{:<34} {:>11} {:>11} {:>11} {:>9} {:>10}\n",
        "end-to-end throughput (events/s)",
        num(l.throughput_per_s),
        num(n.throughput_per_s),
        num(m.throughput_per_s),
        ratio(m.throughput_per_s, l.throughput_per_s),
        ratio(m.throughput_per_s, n.throughput_per_s)
    ));
    s.push_str(&format!(
        "{:<34} {:>11} {:>11} {:>11} {:>9} {:>10}\n",
        "backlog drain (events/s)",
        num(l.drain_per_s),
        num(n.drain_per_s),
        num(m.drain_per_s),
        "-",
        ratio(m.drain_per_s, n.drain_per_s)
    ));
    for (i, lat) in m.latency.iter().enumerate() {
        let f = |x: &SystemResult| {
            x.latency
                .get(i)
                .map(|l| format!("{}/{}/{}", l.p50_us, l.p99_us, l.p999_us))
                .unwrap_or_else(|| "-".into())
        };
        s.push_str(&format!(
            "{:<34} {:>11} {:>11} {:>11}\n",
            format!("ack p50/p99/p999 µs @{}/s", lat.offered_per_s),
            f(l),
            f(n),
            f(m)
        ));
    }
    for lat in &m.latency {
        if let (Some(p50), Some(p99)) = (lat.commit_p50_us, lat.commit_p99_us) {
            s.push_str(&format!(
                "agentmesh group commit (sled write + flush) @{}/s: p50 <= {p50:.0} µs, p99 <= {p99:.0} µs\n",
                lat.offered_per_s
            ));
        }
    }
    let e = &r.agentmesh_extra;
    let mib = |b: u64| b as f64 / 1048576.0;
    s.push_str(&format!(
        "\nagentmesh edge hub: peak RSS {:.1} MiB with {} events buffered; outbox disk {:.1} MiB for {:.1} MiB of payload ({:.2}x)\n",
        mib(e.edge_peak_rss_bytes),
        e.rss_events,
        mib(e.outbox_disk_full_bytes),
        mib(e.outbox_payload_full_bytes),
        e.outbox_disk_full_bytes as f64 / e.outbox_payload_full_bytes.max(1) as f64
    ));
    if let Some(n) = &e.noisy {
        s.push_str(&format!(
            "\nnoisy neighbour: a calm agent at {}/s, ack p50/p99/p999 µs alone {}/{}/{}, beside a flooder {}/{}/{}: p99 x{:.2}\n",
            n.alone.offered_per_s,
            n.alone.p50_us,
            n.alone.p99_us,
            n.alone.p999_us,
            n.beside.p50_us,
            n.beside.p99_us,
            n.beside.p999_us,
            n.beside.p99_us as f64 / n.alone.p99_us.max(1) as f64
        ));
        let c = |l: &Latency| match (l.commit_p50_us, l.commit_p99_us) {
            (Some(a), Some(b)) => format!("{a:.0}/{b:.0}"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "  the edge's group commits p50/p99 µs: alone {}, beside the flooder {}\n",
            c(&n.alone),
            c(&n.beside)
        ));
        s.push_str(&format!(
            "  the flooder (limit {:.0} events/s): {:.0} events/s acked meanwhile, {} events acked, {} requests refused rate_limited\n",
            n.flood_limit_per_s, n.flood_acked_per_s, n.flood_acked, n.flood_rate_limited
        ));
    }
    s.push_str("\nCPU µs per event (edge hub / central hub / edge nats-server / central nats-server / publishers):\n");
    for (name, sys) in [("limit", l), ("native", n), ("agentmesh", m)] {
        for (what, c) in [
            ("throughput", &sys.cpu_throughput),
            ("drain", &sys.cpu_drain),
        ] {
            if let Some(c) = c {
                s.push_str(&format!(
                    "  {name:<10} {what:<10} {:>5.1} {:>5.1} {:>5.1} {:>5.1} {:>5.1}  = {:.1}\n",
                    c.edge_hub,
                    c.central_hub,
                    c.edge_nats,
                    c.central_nats,
                    c.agents,
                    c.edge_hub + c.central_hub + c.edge_nats + c.central_nats + c.agents
                ));
            }
        }
    }
    if !e.outbox_disk_after_cycles.is_empty() {
        let list: Vec<String> = e
            .outbox_disk_after_cycles
            .iter()
            .map(|b| format!("{:.1}", mib(*b)))
            .collect();
        s.push_str(&format!(
            "outbox disk after each fill ({:.1} MiB payload)/drain cycle, MiB: {}\n",
            mib(e.cycle_payload_bytes),
            list.join(" ")
        ));
    }
    s
}
