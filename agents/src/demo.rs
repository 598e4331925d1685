//! The demo agents `mesh up` runs: a producer that publishes a JSON tick every
//! `every`, and a durable consumer that prints what reaches the centre.

use std::time::Duration;

use crate::{Agent, AgentError};

/// Publishes `{"n": i, "from": "<agent>"}` on `demo.ticks` every `every`, forever
/// (or until the connection closes), calling `report` after each ack or error.
pub async fn producer(
    agent: Agent,
    every: Duration,
    mut report: impl FnMut(String),
) -> Result<(), AgentError> {
    let mut tick = tokio::time::interval(every);
    for n in 0u64.. {
        tick.tick().await;
        let body = serde_json::json!({ "n": n, "from": agent.id() });
        match agent.publish_json("demo.tick", "demo.ticks", &body).await {
            Ok(ack) => report(format!(
                "{}@{} published tick {n} -> acked seq {}",
                agent.id(),
                agent.edge(),
                ack.first_seq
            )),
            Err(e) => report(format!(
                "{}@{} tick {n} not acked: {e}",
                agent.id(),
                agent.edge()
            )),
        }
    }
    Ok(())
}

/// Reads the durable consumer `durable` on `demo.>` and reports each event.
pub async fn consumer(
    agent: Agent,
    durable: &str,
    mut report: impl FnMut(String),
) -> Result<(), AgentError> {
    let mut sub = agent.subscribe(durable, "demo.>").await?;
    while let Some(d) = sub.next().await {
        let d = d?;
        let ev = &d.event;
        report(format!(
            "{} received at the centre: {} seq {} from {}: {}",
            agent.id(),
            ev.ty,
            ev.seq,
            ev.source(),
            String::from_utf8_lossy(&ev.data)
        ));
        d.ack().await?;
    }
    Ok(())
}
