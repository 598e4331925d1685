//! `mesh replay`: read a stream range with an ordered consumer (which never changes the
//! source stream) and print it as JSON lines or republish it; recorded in the audit log.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use central_hub::audit::AuditLog;
use clap::{ArgGroup, Args};
use schemas::audit::{AuditEvent, ReplayRun};
use schemas::stream::{Range, RangeReader, Start};
use schemas::{headers as h, subject, Event};

use crate::audit_cmd::central_js;
use crate::dlq_cmd::hv;

#[derive(Args)]
#[command(group(ArgGroup::new("output").required(true).args(["to_stdout", "republish"])))]
#[command(group(ArgGroup::new("start").args(["from_seq", "since"])))]
#[command(group(ArgGroup::new("end").args(["until", "to_seq"])))]
pub struct ReplayArgs {
    /// URL of a nats-server that reaches the centre.
    #[arg(long, env = "NATS_URL")]
    nats: String,
    #[command(flatten)]
    auth: crate::conn::AuthArgs,
    /// The stream to read, e.g. MESH_EVENTS.
    #[arg(long)]
    stream: String,
    /// Only messages on this subject filter, e.g. `mesh.evt.e1.orders.>`.
    #[arg(long)]
    subject: Option<String>,
    /// First stream sequence.
    #[arg(long)]
    from_seq: Option<u64>,
    /// Messages stored at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Messages stored at or before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Last stream sequence.
    #[arg(long)]
    to_seq: Option<u64>,
    /// One JSON object per message on stdout.
    #[arg(long)]
    to_stdout: bool,
    /// Publish every message to this subject, keeping its headers, adding its origin.
    #[arg(long)]
    republish: Option<String>,
    /// At most this many messages per second.
    #[arg(long)]
    rate: Option<f64>,
}

fn time(flag: &str, v: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(chrono::DateTime::parse_from_rfc3339(v)
        .with_context(|| format!("--{flag} {v:?} is not an RFC 3339 time"))?
        .with_timezone(&chrono::Utc))
}

pub async fn run(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let since = a.since.as_deref().map(|v| time("since", v)).transpose()?;
    let until = a.until.as_deref().map(|v| time("until", v)).transpose()?;
    let (_c, js) = central_js(&a.nats, &a.auth).await?;
    let filter = a.subject.clone().unwrap_or_default();
    let range = Range {
        filter: filter.clone(),
        start: match (a.from_seq, since) {
            (Some(s), _) => Start::Seq(s),
            (None, Some(t)) => Start::Time(t),
            _ => Start::First,
        },
        to_seq: a.to_seq,
        until,
    };
    let mut reader = RangeReader::open(&js, &a.stream, range).await?;
    let end = reader.end();
    let started = Instant::now();
    let mut count = 0u64;
    let gap = a
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut tick = gap.map(tokio::time::interval);
    let progress = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    let mut out = std::io::stdout().lock();
    loop {
        let next = tokio::select! {
            m = reader.next() => m?,
            _ = &mut stop => { eprintln!("\nreplay stopped by signal"); break }
        };
        let Some(m) = next else { break };
        let seq = m.seq;
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        if let Some(target) = &a.republish {
            let mut hs = m.headers.clone();
            hs.insert(h::ORIGIN_STREAM, a.stream.as_str());
            hs.insert(h::ORIGIN_SEQ, seq.to_string().as_str());
            hs.insert(
                h::NATS_MSG_ID,
                format!("replay:{}:{seq}:{}", a.stream, hv(&m.headers, h::ID)).as_str(),
            );
            js.publish_with_headers(target.clone(), hs, m.payload.clone())
                .await?
                .await
                .with_context(|| format!("republishing {} seq {seq} to {target}", a.stream))?;
        } else {
            let mut obj = match Event::from_message(&m.headers, m.payload.clone()) {
                Ok(ev) => crate::subscribe::event_json(&ev),
                Err(_) => serde_json::json!({
                    "data": String::from_utf8_lossy(&m.payload),
                }),
            };
            obj["stream"] = a.stream.clone().into();
            obj["seq"] = seq.into();
            obj["nats_subject"] = m.subject.as_str().into();
            obj["stored"] = m.stored.to_rfc3339().into();
            writeln!(out, "{obj}")?;
        }
        count += 1;
        if progress && last_progress.elapsed() > Duration::from_millis(250) {
            eprint!("\rreplayed {count} (seq {seq}/{end})");
            last_progress = Instant::now();
        }
    }
    out.flush()?;
    if progress && count > 0 {
        eprintln!();
    }
    let log = AuditLog::open(
        js.clone(),
        subject::STREAM_AUDIT,
        &crate::dlq_cmd::operator(),
    )
    .await?;
    log.record(&AuditEvent::ReplayRun(ReplayRun {
        stream: a.stream,
        subject: filter,
        from_seq: a.from_seq,
        since: a.since,
        until: a.until,
        to_seq: a.to_seq,
        republish: a.republish,
        count,
    }))
    .await?;
    eprintln!(
        "replayed={count} elapsed={:.3}s",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
