//! `mesh dlq list|show|redrive|purge`: flags and printing over [`central_hub::dlq`]'s
//! operator actions on `MESH_DLQ`. Redrive and purge are recorded in the audit log.

use std::process::ExitCode;

use async_nats::HeaderMap;
use central_hub::dlq;
use clap::{Args, Subcommand};
use schemas::headers as h;

use crate::audit_cmd::central_js;

#[derive(Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    cmd: DlqCmd,
}

#[derive(Args, Clone)]
pub struct Common {
    /// URL of a nats-server that reaches the centre.
    #[arg(long, env = "NATS_URL")]
    nats: String,
    #[command(flatten)]
    auth: crate::conn::AuthArgs,
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
        #[arg(long, env = "NATS_URL")]
        nats: String,
        #[command(flatten)]
        auth: crate::conn::AuthArgs,
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

/// The value of header `name`, empty when absent (for printing and ids).
pub(crate) fn hv(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

pub async fn run(a: DlqArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        DlqCmd::List { common } => {
            let (_c, js) = central_js(&common.nats, &common.auth).await?;
            let ls = dlq::letters(&js, &common.filter).await?;
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
        DlqCmd::Show { nats, auth, id } => {
            let (_c, js) = central_js(&nats, &auth).await?;
            let m = dlq::letter(&js, id).await?;
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
            let (_c, js) = central_js(&common.nats, &common.auth).await?;
            let r = dlq::Redrive {
                filter: common.filter,
                id,
                to,
                rate,
            };
            let done = dlq::redrive(&js, &r, &operator(), |s| {
                println!("redriven {} -> {}", s.dlq_seq, s.target)
            })
            .await?;
            eprintln!("redriven={}", done.len());
            Ok(ExitCode::SUCCESS)
        }
        DlqCmd::Purge { common } => {
            let (_c, js) = central_js(&common.nats, &common.auth).await?;
            let purged = dlq::purge(&js, &common.filter, &operator()).await?;
            println!("purged={purged}");
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
