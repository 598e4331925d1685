//! `mesh sub`: print events in the CloudEvents JSON format, one a line
//! ([`schemas::event::JsonFormat`]), durable (a consumer at the centre, acked after
//! printing) or live.

use std::process::ExitCode;

use agents::Agent;
use clap::Args;

#[derive(Args)]
pub struct SubArgs {
    /// nats-server URL (an edge's, or the centre's for durable subscriptions).
    #[arg(long, env = "NATS_URL")]
    nats: String,
    #[command(flatten)]
    auth: crate::conn::AuthArgs,
    /// Durable consumer name: at-least-once from MESH_EVENTS, resumes after restart.
    #[arg(long)]
    durable: Option<String>,
    /// Agent id to connect as.
    #[arg(long, default_value = "mesh-sub")]
    agent: String,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Event subject filter, e.g. `orders.>` (all edges).
    filter: String,
}

pub async fn run(a: SubArgs) -> anyhow::Result<ExitCode> {
    let client = a
        .auth
        .connect(&a.nats, &format!("agent {}", a.agent))
        .await?;
    // Subscribing needs no edge: any id works for the subject builders.
    let agent = Agent::with_client(client, "sub", &a.agent)?;
    let limit = a.count.unwrap_or(u64::MAX);
    let mut seen = 0u64;
    match &a.durable {
        Some(durable) => {
            let mut sub = agent.subscribe(durable, &a.filter).await?;
            while seen < limit {
                let Some(d) = sub.next().await else { break };
                let d = d?;
                println!("{}", d.event.to_json_line());
                d.ack().await?;
                seen += 1;
            }
        }
        None => {
            let mut sub = agent.subscribe_live(&a.filter).await?;
            while seen < limit {
                let Some(ev) = sub.next().await else { break };
                match ev {
                    Ok(ev) => println!("{}", ev.to_json_line()),
                    Err(e) => eprintln!("skipping a message that is not an event: {e}"),
                }
                seen += 1;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
