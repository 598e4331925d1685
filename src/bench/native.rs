//! **native**: what a user would build with plain NATS: an edge nats-server with its own
//! JetStream domain (`edge`), a leaf link through a fault proxy, and a central stream
//! sourcing the edge stream — a mesh of the test kit without hubs. On the secure default
//! it has what agentmesh has: TLS on every port and an authenticated leaf link (one with
//! no subject restrictions, as sourcing needs the JetStream API of both domains).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream::{self, stream};
use mesh_testkit::MeshBuilder;

use super::cpu::{cpu_now, cpu_profile};
use super::load::{bench_auth, connect, js_latency, js_publish_all, stream_count, wait_count};
use super::report::SystemResult;
use super::{BenchArgs, Progress};

/// The JetStream domain of the native edge.
const EDGE_DOMAIN: &str = "edge";

pub(super) async fn bench_native(
    a: &BenchArgs,
    dir: &Path,
    bin: &Path,
    p: &mut Progress,
) -> anyhow::Result<SystemResult> {
    p.say("native: starting");
    // Returns once the centre counts the edge's leaf connection.
    let mesh = MeshBuilder::new()
        .name("bench-native")
        .hubs(false)
        .edge_jetstream(EDGE_DOMAIN)
        .open_leaf_links(true)
        .secure(!a.insecure)
        .nats_binary(bin)
        .dir(dir)
        .start()
        .await?;
    let (central, edge, proxy) = (&mesh.central, &mesh.sites[0].nats, mesh.proxy(0)?);
    let auth = bench_auth(&mesh)?;
    let central_js = jetstream::new(connect(&central.client_url(), &auth).await?);
    let url = edge.client_url();
    let clients =
        futures::future::try_join_all((0..a.agents).map(|_| connect(&url, &auth))).await?;
    let edge_js = jetstream::new(clients[0].clone());
    edge_js
        .create_stream(stream::Config {
            name: "NATIVE_EDGE".into(),
            subjects: vec!["native.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("edge stream: {e}"))?;
    // The central stream sources the edge stream across the leaf link (domain "edge").
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = central_js
            .create_stream(stream::Config {
                name: "NATIVE_CENTRAL".into(),
                storage: stream::StorageType::File,
                sources: Some(vec![stream::Source {
                    name: "NATIVE_EDGE".into(),
                    external: Some(stream::External {
                        api_prefix: schemas::subject::js_api_prefix(EDGE_DOMAIN),
                        delivery_prefix: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "central stream not created yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("central sourcing stream: {e}"),
        }
    }
    p.say("native: throughput");
    let pids = [None, None, edge.pid(), central.pid()];
    let cpu0 = cpu_now(pids);
    let t = Instant::now();
    js_publish_all(&clients, None, "native.x", a.count, a.size).await?;
    wait_count(
        &central_js,
        "NATIVE_CENTRAL",
        a.count,
        "native: end to end",
        p,
        Duration::from_secs(300),
    )
    .await?;
    let throughput = a.count as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu_profile(cpu0, cpu_now(pids), a.count);
    let mut latency = Vec::new();
    for &rate in &a.rates {
        p.say(&format!("native: latency at {rate}/s"));
        latency.push(
            js_latency(
                &clients[0],
                None,
                "native.lat",
                rate,
                a.latency_secs,
                a.size,
            )
            .await?,
        );
    }
    let before = stream_count(&edge_js, "NATIVE_EDGE").await;
    wait_count(
        &central_js,
        "NATIVE_CENTRAL",
        before,
        "native: settle",
        p,
        Duration::from_secs(300),
    )
    .await?;
    p.say("native: building the backlog behind a cut link");
    proxy.cut();
    js_publish_all(&clients, None, "native.x", a.backlog, a.size).await?;
    let total = stream_count(&edge_js, "NATIVE_EDGE").await;
    let cpu0 = cpu_now(pids);
    let t = Instant::now();
    proxy.heal();
    wait_count(
        &central_js,
        "NATIVE_CENTRAL",
        total,
        "native: drain",
        p,
        Duration::from_secs(600),
    )
    .await?;
    let drain = a.backlog as f64 / t.elapsed().as_secs_f64();
    let drain_cpu = cpu_profile(cpu0, cpu_now(pids), a.backlog);
    Ok(SystemResult {
        throughput_per_s: Some(throughput),
        drain_per_s: Some(drain),
        latency,
        cpu_throughput: Some(cpu),
        cpu_drain: Some(drain_cpu),
    })
}
