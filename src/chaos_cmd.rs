//! `mesh chaos`: runs the fault scenarios of the `chaos` crate against real processes and
//! prints what the judge found. `run` exits non-zero when any guarantee was broken.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chaos::scenarios::{self, Report, RunOpts, SCENARIOS};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    cmd: ChaosCmd,
}

#[derive(Subcommand)]
enum ChaosCmd {
    /// Run one scenario, a comma-separated list, or `all`; exit 1 on any violation.
    Run(RunArgs),
    /// Name every scenario, with a line on what it does.
    List,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario name(s), comma-separated, or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Length of each scenario's loaded run, faults included (e.g. `8s`, `30s`, `2m`).
    #[arg(long, default_value = "20s", value_parser = crate::duration::parse)]
    duration: Duration,
    /// Seed of the fault schedules (default: drawn from the clock, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write every report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep every scenario's stores and logs under DIR/<scenario> (default: temp dirs,
    /// kept only for a failing scenario or a recovery over 5 s).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(a: ChaosArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        ChaosCmd::List => {
            let w = SCENARIOS.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in SCENARIOS {
                println!("{:w$}  {}", s.name, s.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        ChaosCmd::Run(r) => run_scenarios(r).await,
    }
}

async fn run_scenarios(r: RunArgs) -> anyhow::Result<ExitCode> {
    let names: Vec<&str> = if r.scenario == "all" {
        SCENARIOS.iter().map(|s| s.name).collect()
    } else {
        r.scenario.split(',').map(str::trim).collect()
    };
    for n in &names {
        anyhow::ensure!(
            scenarios::info(n).is_some(),
            "no scenario named {n:?}; `mesh chaos list` names them"
        );
    }
    let seed = r.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1)
    });
    let opts = RunOpts {
        exe: std::env::current_exe().context("finding the mesh executable")?,
        duration: r.duration,
        seed,
        dir: r.dir.clone(),
    };
    tokio::task::spawn_blocking(mesh_nats::ensure_binary)
        .await?
        .context("finding nats-server")?;
    println!(
        "mesh chaos run --scenario {} --duration {}s --seed {seed}",
        r.scenario,
        r.duration.as_secs_f64()
    );
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for n in names {
        if crate::out::is_closed() {
            eprintln!("[chaos] stdout was closed; no further scenario runs");
            break;
        }
        eprintln!("[chaos] {n} …");
        match scenarios::run(n, &opts).await {
            Ok(rep) => {
                print_report(&rep);
                reports.push(rep);
            }
            Err(e) => {
                println!("\n== {n}: ERROR: {e}");
                errors.push(format!("{n}: {e}"));
            }
        }
    }
    print_summary(&reports, &errors);
    if let Some(path) = &r.json {
        let doc = serde_json::json!({
            "seed": seed,
            "duration_s": r.duration.as_secs_f64(),
            "reports": reports,
            "errors": errors,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = reports.iter().filter(|r| !r.passed()).count() + errors.len();
    if failed > 0 {
        println!("{failed} scenario(s) failed; reproduce with --seed {seed}");
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

const HEADER: [&str; 9] = [
    "acked",
    "delivered",
    "lost",
    "duplicated",
    "reordered",
    "expelled",
    "recovery_s",
    "noticed_s",
    "peak_outbox",
];

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2}"))
}

fn row(r: &Report) -> [String; 9] {
    [
        r.acked.to_string(),
        r.delivered.to_string(),
        r.lost.to_string(),
        r.duplicated.to_string(),
        r.reordered.to_string(),
        r.expelled.to_string(),
        secs(r.recovery_s),
        secs(r.cut_noticed_s),
        r.peak_outbox.to_string(),
    ]
}

/// One scenario: its verdict, a table row, the faults played, and what broke.
fn print_report(r: &Report) {
    let verdict = if r.passed() { "PASS" } else { "FAIL" };
    println!(
        "\n== {}  {verdict}  (seed {}, {:.0}s run, {:.1}s total)",
        r.scenario, r.seed, r.duration_s, r.elapsed_s
    );
    let cells = row(r);
    let line = |vals: &[&str]| {
        vals.iter()
            .zip(HEADER.iter())
            .map(|(v, h)| format!("{v:>w$}", w = h.len().max(8)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("  {}", line(&HEADER));
    println!(
        "  {}",
        line(&cells.iter().map(String::as_str).collect::<Vec<_>>())
    );
    println!(
        "  corrupted={} refused={} refused_present={} unknown={} expelled_metric={} heal_noticed_s={}",
        r.corrupted,
        r.refused,
        r.refused_present,
        r.unknown,
        r.expelled_metric,
        secs(r.heal_noticed_s)
    );
    if r.stall_s.is_some() || r.native_stall_s.is_some() {
        println!(
            "  cluster: stall_s={} native_stall_s={} elections_s={} bound_s={} leader_died={} drain_s={} drain_rate={} normal_drain_rate={}",
            secs(r.stall_s),
            secs(r.native_stall_s),
            secs(r.election_floor_s),
            secs(r.stall_bound_s),
            r.leader_died.map_or_else(|| "-".into(), |b| b.to_string()),
            secs(r.drain_s),
            r.drain_rate.map_or_else(|| "-".into(), |x| format!("{x:.0}")),
            r.normal_drain_rate.map_or_else(|| "-".into(), |x| format!("{x:.0}"))
        );
    }
    println!("  faults: {}", r.faults.join("; "));
    for n in &r.notes {
        println!("  note: {n}");
    }
    for v in &r.violations {
        println!("  VIOLATION: {v}");
    }
    if let Some(d) = &r.kept_dir {
        println!("  stores and logs kept in {d}");
    }
}

/// Every scenario on one line each.
fn print_summary(reports: &[Report], errors: &[String]) {
    println!("\n== summary");
    let w = reports.iter().map(|r| r.scenario.len()).max().unwrap_or(8);
    let head: Vec<String> = HEADER
        .iter()
        .map(|h| format!("{h:>w$}", w = h.len().max(8)))
        .collect();
    println!("  {:w$}  {:6} {}", "scenario", "result", head.join(" "));
    for r in reports {
        let cells: Vec<String> = row(r)
            .iter()
            .zip(HEADER.iter())
            .map(|(v, h)| format!("{v:>w$}", w = h.len().max(8)))
            .collect();
        let verdict = if r.passed() { "pass" } else { "FAIL" };
        println!("  {:w$}  {verdict:6} {}", r.scenario, cells.join(" "));
    }
    for e in errors {
        println!("  ERROR {e}");
    }
}
