//! **limit**: raw pipelined JetStream publishes into one stream of a central server alone
//! (a mesh of the test kit with no edge): what the centre can ingest at all.

use std::path::Path;
use std::time::Instant;

use async_nats::jetstream::{self, stream};
use mesh_testkit::MeshBuilder;

use super::cpu::{cpu_now, cpu_profile};
use super::load::{bench_auth, connect, js_latency, js_publish_all};
use super::report::SystemResult;
use super::{BenchArgs, Progress};

pub(super) async fn bench_limit(
    a: &BenchArgs,
    dir: &Path,
    bin: &Path,
    p: &mut Progress,
) -> anyhow::Result<SystemResult> {
    p.say("limit: starting");
    let mesh = MeshBuilder::new()
        .name("bench-limit")
        .edges(0)
        .hubs(false)
        .secure(!a.insecure)
        .nats_binary(bin)
        .dir(dir)
        .start()
        .await?;
    let url = mesh.central.client_url();
    let auth = bench_auth(&mesh)?;
    let clients =
        futures::future::try_join_all((0..a.agents).map(|_| connect(&url, &auth))).await?;
    let js = jetstream::new(clients[0].clone());
    js.create_stream(stream::Config {
        name: "LIMIT".into(),
        subjects: vec!["limit.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    p.say("limit: throughput");
    let pids = [None, None, None, mesh.central.pid()];
    let cpu0 = cpu_now(pids);
    let t = Instant::now();
    js_publish_all(&clients, None, "limit.x", a.count, a.size).await?;
    let throughput = a.count as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu_profile(cpu0, cpu_now(pids), a.count);
    let mut latency = Vec::new();
    for &rate in &a.rates {
        p.say(&format!("limit: latency at {rate}/s"));
        latency
            .push(js_latency(&clients[0], None, "limit.lat", rate, a.latency_secs, a.size).await?);
    }
    Ok(SystemResult {
        throughput_per_s: Some(throughput),
        drain_per_s: None,
        latency,
        cpu_throughput: Some(cpu),
        cpu_drain: None,
    })
}
