//! `mesh audit verify|digest|tail` and `mesh registry list`: read `MESH_AUDIT` (or, for
//! tests and forensics, any stream of audit records given with `--stream`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use central_hub::registry::Registry;
use clap::{Args, Subcommand};
use futures::StreamExt;
use schemas::audit::{self, AuditRecord, Digest, Verdict};

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Args, Clone)]
pub struct Target {
    /// URL of a nats-server that reaches the centre (the centre's, or an edge's).
    #[arg(long, env = "NATS_URL")]
    nats: String,
    #[command(flatten)]
    auth: crate::conn::AuthArgs,
    /// Stream holding the audit records.
    #[arg(long, default_value = schemas::subject::STREAM_AUDIT)]
    stream: String,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the chain: name the first bad record, or print OK with the count and head hash.
    /// Exit status 1 when the chain is bad.
    Verify {
        #[command(flatten)]
        target: Target,
        /// A digest exported earlier by `mesh audit digest`: the chain must still hold it.
        #[arg(long)]
        from_digest: Option<PathBuf>,
    },
    /// Print the head of the chain as JSON `{stream, seq, hash}` (keep it somewhere safe).
    Digest {
        #[command(flatten)]
        target: Target,
        /// Also write the digest to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print records readably, oldest first.
    Tail {
        #[command(flatten)]
        target: Target,
        /// Only the last N records.
        #[arg(long)]
        last: Option<u64>,
        /// Keep printing new records until Ctrl-C.
        #[arg(long)]
        follow: bool,
        /// One JSON record per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    cmd: RegistryCmd,
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Edges and agents with state, last seen and counts: the projection of MESH_AUDIT.
    List {
        #[command(flatten)]
        target: Target,
        /// Ask a running central hub for its projection instead of rebuilding it here.
        #[arg(long)]
        from_hub: bool,
        /// Print the registry as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A JetStream context of domain `central`, from the centre or from an edge.
pub async fn central_js(
    url: &str,
    auth: &crate::conn::AuthArgs,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let client = auth.connect(url, "mesh operator tool").await?;
    let js = jetstream::with_domain(client.clone(), schemas::subject::CENTRAL_DOMAIN);
    Ok((client, js))
}

pub async fn run(a: AuditArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        AuditCmd::Verify {
            target,
            from_digest,
        } => {
            let digest = match from_digest {
                Some(p) => {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read digest file {}", p.display()))?;
                    let d: Digest = serde_json::from_str(&text)
                        .with_context(|| format!("digest file {} is not a digest", p.display()))?;
                    Some(d)
                }
                None => None,
            };
            let (_c, js) = central_js(&target.nats, &target.auth).await?;
            let msgs = audit::read_all(&js, &target.stream).await?;
            match audit::verify(&msgs, digest.as_ref()) {
                Verdict::Ok {
                    count,
                    head_seq,
                    head_hash,
                } => {
                    let from = digest
                        .map(|d| format!(" (holds digest seq {} {})", d.seq, d.hash))
                        .unwrap_or_default();
                    println!(
                        "OK {}: {count} records, head seq {head_seq} hash {head_hash}{from}",
                        target.stream
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Verdict::Bad(p) => {
                    println!("FAIL {}: {p}", target.stream);
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCmd::Digest { target, out } => {
            let (_c, js) = central_js(&target.nats, &target.auth).await?;
            let msgs = audit::read_all(&js, &target.stream).await?;
            let d = match audit::verify(&msgs, None) {
                Verdict::Ok {
                    head_seq,
                    head_hash,
                    ..
                } => Digest {
                    stream: target.stream.clone(),
                    seq: head_seq,
                    hash: head_hash,
                },
                Verdict::Bad(p) => anyhow::bail!(
                    "refusing to export a digest of a bad chain: {} {p}",
                    target.stream
                ),
            };
            let text = serde_json::to_string(&d)?;
            if let Some(p) = out {
                std::fs::write(&p, format!("{text}\n"))
                    .with_context(|| format!("cannot write digest file {}", p.display()))?;
            }
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Tail {
            target,
            last,
            follow,
            json,
        } => tail(target, last, follow, json).await,
    }
}

async fn tail(
    target: Target,
    last: Option<u64>,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (_c, js) = central_js(&target.nats, &target.auth).await?;
    let stream = js
        .get_stream(&target.stream)
        .await
        .with_context(|| format!("stream {}", target.stream))?;
    let info = stream.get_info().await?;
    let head = info.state.last_sequence;
    if head == 0 && !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let start = match last {
        Some(n) => head.saturating_sub(n) + 1,
        None => 1,
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ..Default::default()
        })
        .await?;
    let mut msgs = consumer.messages().await?;
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            m = msgs.next() => m,
            _ = &mut stop => break,
        };
        let Some(m) = next else { break };
        let m = m?;
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        match AuditRecord::decode(&m.payload) {
            Ok(r) if json => println!("{}", serde_json::to_string(&r)?),
            Ok(r) => println!("{}", r.render()),
            Err(e) => println!("#? stream seq {seq}: not an audit record ({e})"),
        }
        if !follow && seq >= head {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn registry(a: RegistryArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        RegistryCmd::List {
            target,
            from_hub,
            json,
        } => {
            let (client, js) = central_js(&target.nats, &target.auth).await?;
            let reg = if from_hub {
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.request(schemas::subject::HUB_REGISTRY, "".into()),
                )
                .await
                .context("no central hub answered on mesh.hub.registry within 5s")?
                .context("registry request")?;
                serde_json::from_slice::<Registry>(&reply.payload).with_context(|| {
                    format!(
                        "the hub's answer is not a registry: {}",
                        String::from_utf8_lossy(&reply.payload)
                    )
                })?
            } else {
                let mut reg = Registry::default();
                for (_, p) in audit::read_all(&js, &target.stream).await? {
                    if let Ok(r) = AuditRecord::decode(&p) {
                        reg.apply(&r);
                    }
                }
                reg
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&reg)?);
            } else {
                print!("{}", reg.render());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
