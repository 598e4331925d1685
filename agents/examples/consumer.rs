//! Example agent: a durable consumer at the centre printing every `demo.>` event.
//!
//! `cargo run -p agents --example consumer -- nats://127.0.0.1:4222 my-consumer`
//! (an edge's nats-server URL; the consumer lives at the centre and resumes after a
//! restart).

#[tokio::main]
async fn main() -> Result<(), agents::AgentError> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let id = args.next().unwrap_or_else(|| "example-consumer".into());
    let agent = agents::Agent::connect(&url, &id).await?;
    let durable = format!("{id}-demo");
    agents::demo::consumer(agent, &durable, |line| println!("{line}")).await
}
