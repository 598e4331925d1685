//! `mesh dlq list|show|redrive|purge`: flags and printing over [`central_hub::dlq`]'s
//! operator actions on `MESH_DLQ`. List and show read the stream here; redrive and purge
//! are requests to a central hub ([`central_hub::ops`]), which does them and records
//! them in the audit log under the operator's name.

use std::process::ExitCode;

use async_nats::HeaderMap;
use central_hub::dlq;
use clap::{Args, Subcommand};
use schemas::headers as h;

use central_hub::ops;
use schemas::subject::op;

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
            let operator = operator(&common.auth)?;
            let (c, _js) = central_js(&common.nats, &common.auth).await?;
            let r = dlq::Redrive {
                filter: common.filter,
                id,
                to,
                rate,
            };
            let done: ops::RedriveReply =
                match ops::request(&c, &operator, op::DLQ_REDRIVE, &r, ops::TIMEOUT).await {
                    Ok(d) => d,
                    Err(e) => return refused(e),
                };
            for s in &done.sent {
                println!("redriven {} -> {}", s.dlq_seq, s.target);
            }
            eprintln!("redriven={}", done.sent.len());
            Ok(ExitCode::SUCCESS)
        }
        DlqCmd::Purge { common } => {
            let operator = operator(&common.auth)?;
            let (c, _js) = central_js(&common.nats, &common.auth).await?;
            let req = ops::PurgeRequest {
                filter: common.filter,
            };
            let r: ops::PurgeReply =
                match ops::request(&c, &operator, op::DLQ_PURGE, &req, ops::TIMEOUT).await {
                    Ok(r) => r,
                    Err(e) => return refused(e),
                };
            println!("purged={}", r.purged);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `<operator>` token of this command's requests (`mesh.hub.op.<operator>.…`): the
/// name in the operator credential (`operator.<name>`), or [`ops::ANONYMOUS`] without a
/// credential (an insecure mesh). Refuses any other identity's credential.
pub fn operator(auth: &crate::conn::AuthArgs) -> anyhow::Result<String> {
    let Some(creds) = &auth.creds else {
        return Ok(ops::ANONYMOUS.to_string());
    };
    let user = auth.client_auth().user_name().ok_or_else(|| {
        anyhow::anyhow!(
            "cannot read the user name in the credential {}: is it a .creds file?",
            creds.display()
        )
    })?;
    match mesh_nats::auth::Identity::from_user_name(&user) {
        Some(mesh_nats::auth::Identity::Operator { name }) => Ok(name),
        _ => anyhow::bail!(
            "the credential {} is {user}'s, not an operator's: this command needs an operator credential (user operator.<name>)",
            creds.display()
        ),
    }
}

/// Prints a hub's refusal (or why no hub answered) and fails the command.
pub fn refused(e: ops::OpError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    Ok(ExitCode::FAILURE)
}
