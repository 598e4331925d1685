//! `mesh central` and `mesh edge`: configuration layering (defaults, `--config` file,
//! flags), `--print-config`, and the hub's `run` with Ctrl-C / SIGTERM as shutdown.
//! `mesh central --apply-stream-changes` sets `streams.apply_changes`: without it a hub
//! whose configuration differs from the existing streams refuses to start and names
//! every difference (see `central_hub::streams`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use central_hub::CentralConfig;
use clap::Args;
use edge_hub::{EdgeConfig, FullPolicy};

#[derive(Args)]
pub struct CentralArgs {
    /// Central nats-server URL.
    #[arg(long)]
    nats: Option<String>,
    /// Serve /metrics and /health/* on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    http: Option<String>,
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Name of this hub in heartbeats and logs.
    #[arg(long)]
    hub_id: Option<String>,
    /// Change existing streams whose settings differ from the configuration (each change
    /// is audited as stream.updated) instead of refusing to start; sets
    /// streams.apply_changes = true.
    #[arg(long)]
    apply_stream_changes: bool,
    #[command(flatten)]
    auth: crate::conn::AuthArgs,
}

#[derive(Args)]
pub struct EdgeArgs {
    /// Edge nats-server URL.
    #[arg(long)]
    nats: Option<String>,
    /// This edge's id.
    #[arg(long)]
    id: Option<String>,
    /// Directory of the sled outbox.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve /metrics and /health/* on this address.
    #[arg(long)]
    http: Option<String>,
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Outbox byte limit.
    #[arg(long)]
    outbox_max_bytes: Option<u64>,
    /// What a full outbox does: reject or drop-oldest.
    #[arg(long, value_parser = parse_policy)]
    full_policy: Option<FullPolicy>,
    #[command(flatten)]
    auth: crate::conn::AuthArgs,
}

fn parse_policy(s: &str) -> Result<FullPolicy, String> {
    match s {
        "reject" => Ok(FullPolicy::Reject),
        "drop-oldest" => Ok(FullPolicy::DropOldest),
        other => Err(format!(
            "unknown full policy {other:?}; use reject or drop-oldest"
        )),
    }
}

fn read_config(path: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))
        })
        .transpose()
}

async fn listener(addr: &Option<String>) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match addr {
        Some(a) => Ok(Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on --http {a}"))?,
        )),
        None => Ok(None),
    }
}

/// Between tries to reach an unreachable nats-server.
const CONNECT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// Every how many tries a hub that still cannot reach its server says so.
const CONNECT_LOG_EVERY: u64 = 5;

/// Connects to `url`, trying again every [`CONNECT_RETRY`] while the server cannot be
/// reached, with a warning naming the URL at the first try and every
/// [`CONNECT_LOG_EVERY`] tries after (async-nats' own retry said nothing after its first
/// line). A refusal that retrying cannot mend (credentials, TLS,
/// a malformed URL) fails at once. `None` when shut down while waiting.
async fn connect(
    url: &str,
    name: String,
    auth: &crate::conn::AuthArgs,
) -> anyhow::Result<Option<async_nats::Client>> {
    use async_nats::ConnectErrorKind as K;
    let addrs = mesh_nats::client::server_addrs(url).map_err(anyhow::Error::msg)?;
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    for attempt in 1u64.. {
        let opts = auth
            .client_auth()
            .apply(async_nats::ConnectOptions::new().name(name.clone()))
            .await
            .with_context(|| format!("cannot connect to nats-server {url}"))?
            .connection_timeout(std::time::Duration::from_secs(5));
        let e = match opts.connect(addrs.clone()).await {
            Ok(client) => {
                if attempt > 1 {
                    tracing::info!(url, attempt, "connected to nats-server");
                }
                return Ok(Some(client));
            }
            Err(e) => e,
        };
        match e.kind() {
            K::Io | K::TimedOut | K::Dns | K::MaxReconnects => {
                if attempt % CONNECT_LOG_EVERY == 1 {
                    tracing::warn!(
                        url,
                        attempt,
                        error = %e,
                        "cannot reach nats-server {url}; trying again every {CONNECT_RETRY:?}"
                    );
                }
            }
            K::Authentication | K::AuthorizationViolation => bail!(
                "nats-server {url} refused this hub's credentials ({e}); check --creds, \
                 and that {url} is the right server (a central hub connects to the \
                 central nats-server, an edge hub to its edge's)"
            ),
            K::Tls | K::ServerParse => bail!("cannot connect to nats-server {url}: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(CONNECT_RETRY) => {}
            _ = &mut shutdown => return Ok(None),
        }
    }
    unreachable!("the attempts never run out")
}

/// A central hub's server must run JetStream, in domain `central` if it names one: an
/// edge's nats-server has none (the hub used to retry its stream set-up for a minute
/// and then say `jetstream unavailable`).
fn check_central_server(url: &str, info: &async_nats::ServerInfo) -> anyhow::Result<()> {
    let central = schemas::subject::CENTRAL_DOMAIN;
    let wrong = match (&info.domain, info.jetstream) {
        (_, false) => "has no JetStream".to_string(),
        (Some(d), true) if !d.is_empty() && d != central => format!("is JetStream domain {d:?}"),
        _ => return Ok(()),
    };
    bail!(
        "nats-server {url} ({}) {wrong}: a central hub connects to the central nats-server \
         (JetStream domain `{central}`), not to an edge's; give --nats the central server's \
         URL (every node's, for a clustered centre)",
        info.server_name
    )
}

pub async fn central(a: CentralArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match read_config(&a.config)? {
        Some(text) => {
            CentralConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("config file: {e}"))?
        }
        None => CentralConfig::default(),
    };
    if let Some(v) = a.nats {
        cfg.nats = v;
    }
    if let Some(v) = a.http {
        cfg.http = Some(v);
    }
    if let Some(v) = a.hub_id {
        cfg.hub_id = v;
    }
    if a.apply_stream_changes {
        cfg.streams.apply_changes = true;
    }
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(errs) = cfg.validate() {
        bail!("invalid configuration:\n  - {}", errs.join("\n  - "));
    }
    let Some(client) = connect(
        &cfg.nats,
        format!("central hub {}", cfg.hub_name()),
        &a.auth,
    )
    .await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    check_central_server(&cfg.nats, &client.server_info())?;
    let http = listener(&cfg.http).await?;
    central_hub::run(cfg, client, http, crate::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn edge(a: EdgeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match read_config(&a.config)? {
        Some(text) => {
            EdgeConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("config file: {e}"))?
        }
        None => EdgeConfig::default(),
    };
    if let Some(v) = a.nats {
        cfg.nats = v;
    }
    if let Some(v) = a.id {
        cfg.id = v;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = a.http {
        cfg.http = Some(v);
    }
    if let Some(v) = a.outbox_max_bytes {
        cfg.outbox.max_bytes = v;
    }
    if let Some(v) = a.full_policy {
        cfg.outbox.full_policy = v;
    }
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(errs) = cfg.validate() {
        bail!("invalid configuration:\n  - {}", errs.join("\n  - "));
    }
    // Two edge hubs on one outbox would both forward it; the second refuses first.
    let _lock = crate::dirlock::DirLock::take(&cfg.data_dir, &format!("mesh edge {}", cfg.id))?;
    let Some(client) = connect(&cfg.nats, format!("edge hub {}", cfg.id), &a.auth).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let http = listener(&cfg.http).await?;
    edge_hub::run(cfg, client, http, crate::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
