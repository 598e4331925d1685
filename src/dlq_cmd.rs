//! `mesh dlq list|show|redrive|purge`: inspect and act on `MESH_DLQ`. Redrive and purge
//! are recorded in the audit log.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use async_nats::HeaderMap;
use central_hub::audit::AuditLog;
use clap::{Args, Subcommand};
use futures::StreamExt;
use schemas::audit::{AuditEvent, Purged, Redriven};
use schemas::{headers as h, subject};

use crate::audit_cmd::central_js;

#[derive(Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    cmd: DlqCmd,
}

#[derive(Args, Clone)]
pub struct Common {
    /// URL of a nats-server that reaches the centre.
    #[arg(long)]
    nats: String,
    /// Only dead letters on `mesh.dlq.<FILTER>`, i.e. `<edge>.<subject…>` with wildcards,
    /// e.g. `e1.orders.>` or `*.orders.created`.
    #[arg(long, default_value = ">")]
    filter: String,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// One line per dead letter: DLQ sequence, subject, reason, consumer, deliveries.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Every header and the data of one dead letter (ID = its DLQ sequence).
    Show {
        #[arg(long)]
        nats: String,
        id: u64,
    },
    /// Publish dead letters again — to their original subject by default, keeping their
    /// `ce-id` — then remove them from the DLQ.
    Redrive {
        #[command(flatten)]
        common: Common,
        /// Publish to this subject instead of the original one.
        #[arg(long)]
        to: Option<String>,
        /// At most this many per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Only this dead letter (DLQ sequence).
        #[arg(long)]
        id: Option<u64>,
    },
    /// Remove dead letters for good (recorded in the audit log).
    Purge {
        #[command(flatten)]
        common: Common,
    },
}

struct Letter {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
}

fn hv(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

async fn letters(js: &jetstream::Context, filter: &str) -> anyhow::Result<Vec<Letter>> {
    let stream = js
        .get_stream(subject::STREAM_DLQ)
        .await
        .context("stream MESH_DLQ")?;
    let full = subject::dlq_filter(filter);
    let info = stream.get_info().await?;
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    let last = info.state.last_sequence;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: full.clone(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    // As many as the stream holds on the filter now.
    let mut want = 0u64;
    let mut subjects = stream.info_with_subjects(full.clone()).await?;
    while let Some(s) = subjects.next().await {
        want += s?.1 as u64;
    }
    if want == 0 {
        return Ok(out);
    }
    let mut msgs = consumer.messages().await?;
    loop {
        let next = match tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
            Ok(Some(m)) => m?,
            Ok(None) => break,
            Err(_) => anyhow::bail!("timed out reading MESH_DLQ"),
        };
        let seq = next.info().map(|i| i.stream_sequence).unwrap_or(0);
        out.push(Letter {
            seq,
            subject: next.subject.to_string(),
            headers: next.headers.clone().unwrap_or_default(),
            payload: next.payload.clone(),
        });
        if seq >= last || out.len() as u64 >= want {
            break;
        }
    }
    Ok(out)
}

pub async fn run(a: DlqArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        DlqCmd::List { common } => {
            let (_c, js) = central_js(&common.nats).await?;
            let ls = letters(&js, &common.filter).await?;
            for l in &ls {
                println!(
                    "{:<6} {:<40} reason={:?} consumer={} deliveries={} ce-id={} from={}#{}",
                    l.seq,
                    l.subject,
                    hv(&l.headers, h::DLQ_REASON),
                    hv(&l.headers, h::DLQ_CONSUMER),
                    hv(&l.headers, h::DLQ_DELIVERIES),
                    hv(&l.headers, h::ID),
                    hv(&l.headers, h::DLQ_STREAM),
                    hv(&l.headers, h::DLQ_SEQ),
                );
            }
            eprintln!("{} dead letters", ls.len());
            Ok(ExitCode::SUCCESS)
        }
        DlqCmd::Show { nats, id } => {
            let (_c, js) = central_js(&nats).await?;
            let stream = js.get_stream(subject::STREAM_DLQ).await?;
            let m = stream
                .get_raw_message(id)
                .await
                .with_context(|| format!("no dead letter with id {id} in MESH_DLQ"))?;
            println!("id: {id}\nsubject: {}\ntime: {}", m.subject, m.time);
            let mut names: Vec<_> = m.headers.iter().map(|(k, _)| k.to_string()).collect();
            names.sort();
            for n in names {
                println!("{n}: {}", hv(&m.headers, &n));
            }
            println!("data: {}", String::from_utf8_lossy(&m.payload));
            Ok(ExitCode::SUCCESS)
        }
        DlqCmd::Redrive {
            common,
            to,
            rate,
            id,
        } => {
            let (_c, js) = central_js(&common.nats).await?;
            let stream = js.get_stream(subject::STREAM_DLQ).await?;
            let mut ls = letters(&js, &common.filter).await?;
            if let Some(id) = id {
                ls.retain(|l| l.seq == id);
                anyhow::ensure!(!ls.is_empty(), "no dead letter with id {id} matches");
            }
            let gap = rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r));
            let mut tick = gap.map(tokio::time::interval);
            let mut done = Vec::new();
            for l in &ls {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let target = match &to {
                    Some(t) => t.clone(),
                    None => hv(&l.headers, h::DLQ_SUBJECT),
                };
                anyhow::ensure!(
                    !target.is_empty(),
                    "dead letter {} has no {} header; use --to",
                    l.seq,
                    h::DLQ_SUBJECT
                );
                let mut headers = HeaderMap::new();
                for (k, vs) in l.headers.iter() {
                    let name: &str = k.as_ref();
                    if name.starts_with("mesh-dlq-") || name == h::NATS_MSG_ID {
                        continue;
                    }
                    for v in vs {
                        headers.append(k.clone(), v.clone());
                    }
                }
                headers.insert(h::ORIGIN_STREAM, hv(&l.headers, h::DLQ_STREAM).as_str());
                headers.insert(h::ORIGIN_SEQ, hv(&l.headers, h::DLQ_SEQ).as_str());
                // The ce-id stays; the de-duplication id is new, or JetStream would drop
                // a redrive within the duplicate window as a duplicate of the original.
                headers.insert(
                    h::NATS_MSG_ID,
                    format!("{}:redrive:{}", hv(&l.headers, h::ID), l.seq).as_str(),
                );
                js.publish_with_headers(target.clone(), headers, l.payload.clone())
                    .await?
                    .await
                    .with_context(|| format!("redriving dead letter {} to {target}", l.seq))?;
                stream
                    .delete_message(l.seq)
                    .await
                    .with_context(|| format!("removing redriven dead letter {}", l.seq))?;
                println!("redriven {} -> {target}", l.seq);
                done.push(l.seq);
            }
            let log = AuditLog::open(js.clone(), subject::STREAM_AUDIT, &operator()).await?;
            log.record(&AuditEvent::Redriven(Redriven {
                count: done.len() as u64,
                ids: done.clone(),
                filter: common.filter,
                to,
            }))
            .await?;
            eprintln!("redriven={}", done.len());
            Ok(ExitCode::SUCCESS)
        }
        DlqCmd::Purge { common } => {
            let (_c, js) = central_js(&common.nats).await?;
            let stream = js.get_stream(subject::STREAM_DLQ).await?;
            let r = stream
                .purge()
                .filter(subject::dlq_filter(&common.filter))
                .await
                .context("purging MESH_DLQ")?;
            let log = AuditLog::open(js.clone(), subject::STREAM_AUDIT, &operator()).await?;
            log.record(&AuditEvent::Purged(Purged {
                count: r.purged,
                filter: common.filter,
            }))
            .await?;
            println!("purged={}", r.purged);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `operator:<user>` for audit records written by the command line.
pub fn operator() -> String {
    format!(
        "operator:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}
