//! Example agent: publishes a JSON tick every second through its edge hub.
//!
//! `cargo run -p agents --example producer -- nats://127.0.0.1:4222 my-producer`
//! (the URL of an edge nats-server, e.g. one `mesh up` printed).

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), agents::AgentError> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let id = args.next().unwrap_or_else(|| "example-producer".into());
    let agent = agents::Agent::connect(&url, &id).await?;
    println!("{id} publishing through edge {}", agent.edge());
    agents::demo::producer(agent, Duration::from_secs(1), |line| println!("{line}")).await
}
