//! `mesh replay`: print a stream range as CloudEvents JSON lines
//! ([`schemas::event::JsonFormat`]; a message that is no event is named on stderr), read here with an ordered consumer
//! (which never changes the source stream), or have a central hub republish it
//! ([`central_hub::ops`]). Either way a hub records the run in the audit log under the
//! operator's name: `--to-stdout` by a `replay.record` request after the read.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use central_hub::ops;
use clap::{ArgGroup, Args};
use schemas::audit::ReplayRun;
use schemas::stream::RangeReader;
use schemas::subject::op;
use schemas::Event;

use crate::audit_cmd::central_js;

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
    /// One CloudEvent a line on stdout (CloudEvents JSON format).
    #[arg(long)]
    to_stdout: bool,
    /// Have a central hub publish every message to this subject (outside `mesh.>`),
    /// keeping its headers, adding its origin.
    #[arg(long)]
    republish: Option<String>,
    /// At most this many messages per second.
    #[arg(long)]
    rate: Option<f64>,
}

pub async fn run(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let filter = a.subject.clone().unwrap_or_default();
    // Checks the times before anything is asked of anyone.
    let range = ops::range(
        &filter,
        a.from_seq,
        a.since.as_deref(),
        a.until.as_deref(),
        a.to_seq,
    )?;
    let operator = crate::dlq_cmd::operator(&a.auth)?;
    let (c, js) = central_js(&a.nats, &a.auth).await?;
    let started = Instant::now();
    let count = if let Some(target) = a.republish {
        let req = ops::ReplayRequest {
            stream: a.stream,
            subject: filter,
            from_seq: a.from_seq,
            since: a.since,
            until: a.until,
            to_seq: a.to_seq,
            rate: a.rate,
            republish: target,
        };
        match ops::request::<_, ops::ReplayReply>(
            &c,
            &operator,
            op::REPLAY_REPUBLISH,
            &req,
            ops::TIMEOUT,
        )
        .await
        {
            Ok(r) => r.count,
            Err(e) => return crate::dlq_cmd::refused(e),
        }
    } else {
        let count = to_stdout(&js, &a.stream, range, a.rate).await?;
        let run = ReplayRun {
            stream: a.stream,
            subject: filter,
            from_seq: a.from_seq,
            since: a.since,
            until: a.until,
            to_seq: a.to_seq,
            republish: None,
            count,
        };
        let recorded = ops::request::<_, ops::RecordReply>(
            &c,
            &operator,
            op::REPLAY_RECORD,
            &run,
            ops::TIMEOUT,
        )
        .await;
        if let Err(e) = recorded {
            eprintln!("replayed={count} but the replay is not in the audit log");
            return crate::dlq_cmd::refused(e);
        }
        count
    };
    eprintln!(
        "replayed={count} elapsed={:.3}s",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints `range` of `stream` as JSON lines; returns how many.
async fn to_stdout(
    js: &async_nats::jetstream::Context,
    stream: &str,
    range: schemas::stream::Range,
    rate: Option<f64>,
) -> anyhow::Result<u64> {
    let mut reader = RangeReader::open(js, stream, range).await?;
    let end = reader.end();
    let mut count = 0u64;
    let gap = rate
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
        // Only events go to stdout, so that every line is a CloudEvent.
        match Event::from_message(&m.headers, m.payload.clone()) {
            Ok(ev) => writeln!(out, "{}", ev.to_json_line())?,
            Err(e) => eprintln!(
                "{stream} seq {seq} on {} is not a mesh event, not printed: {e}",
                m.subject
            ),
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
    Ok(count)
}
