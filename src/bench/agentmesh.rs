//! **agentmesh**: agents publishing through `mesh.ingest` to an edge hub (acks after the
//! outbox flushed), forwarded in bundles, landed into `MESH_EVENTS` by a central hub —
//! a mesh of the test kit with hubs as child processes, as deployed. Besides throughput,
//! latency and drain: the edge hub's peak RSS with a full outbox, and the outbox's disk
//! use when full and after fill/drain cycles.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use agents::Agent;
use anyhow::Context;
use async_nats::jetstream;
use mesh_testkit::metrics::quantile_between;
use mesh_testkit::{disk_usage, scrape, wait_until, Hub, Mesh, MeshBuilder};

use super::cpu::{cpu_now, cpu_profile};
use super::load::{bench_auth, connect, mesh_latency, mesh_publish_all, wait_count};
use super::noisy::{bench_noisy, Flooder, NOISY};
use super::report::{MeshExtra, SystemResult};
use super::{BenchArgs, Progress};

/// The edge hub's group-commit histogram on its `/metrics` page.
const COMMIT_HISTOGRAM: &str = "mesh_edge_commit_seconds";

pub(super) async fn bench_agentmesh(
    a: &BenchArgs,
    dir: &Path,
    bin: &Path,
    p: &mut Progress,
) -> anyhow::Result<(SystemResult, MeshExtra)> {
    p.say("agentmesh: starting");
    let mut b = MeshBuilder::new()
        .name("bench-mesh")
        .exe(std::env::current_exe()?)
        .secure(!a.insecure)
        .nats_binary(bin)
        .dir(dir);
    let edge_toml = match &a.edge_config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --edge-config {}", path.display()))?,
        None => {
            // The bench measures what the mesh can carry, not the per-agent limits (a
            // policy that would cap each publisher at its events/s or its requests in
            // flight), but for the noisy neighbour, which keeps every default;
            // `--edge-config` may set them. (A calm agent held to `max_inflight` fails
            // the bench when its acks are slow, as they are in a debug build.)
            let d = edge_hub::config::LimitsConfig::default();
            format!(
                "[limits]\nevents_per_sec = 0\nbytes_per_sec = 0\nmax_inflight = 0\n\n\
                 [limits.agents.{NOISY}]\nevents_per_sec = {:?}\nbytes_per_sec = {:?}\n\
                 max_inflight = {}\noutbox_share = {:?}\n",
                d.events_per_sec, d.bytes_per_sec, d.max_inflight, d.outbox_share
            )
        }
    };
    let limits = edge_hub::config::EdgeConfig::from_toml(&edge_toml)
        .map_err(|e| anyhow::anyhow!("the edge config: {e}"))?
        .limits;
    let flood_limit = limits
        .agents
        .get(NOISY)
        .and_then(|o| o.events_per_sec)
        .unwrap_or(limits.events_per_sec);
    b = b.edge_toml(edge_toml);
    let mut mesh = b.start().await?;
    let agents = bench_agents(&mesh, a.agents).await?;
    let js = jetstream::new(connect(&mesh.central.client_url(), &bench_auth(&mesh)?).await?);
    let edge_http = mesh.sites[0].hub()?.http();
    let events = schemas::subject::STREAM_EVENTS;

    p.say("agentmesh: throughput");
    let cpu0 = mesh_cpu(&mesh);
    let t = Instant::now();
    mesh_publish_all(&agents, a.count, a.batch, a.size).await?;
    wait_count(
        &js,
        events,
        a.count,
        "agentmesh: end to end",
        p,
        Duration::from_secs(300),
    )
    .await?;
    let throughput = a.count as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu_profile(cpu0, mesh_cpu(&mesh), a.count);

    let mut latency = Vec::new();
    for &rate in &a.rates {
        p.say(&format!("agentmesh: latency at {rate}/s"));
        let before = commit_histogram(edge_http).await;
        let mut l = mesh_latency(&agents[0], rate, a.latency_secs, a.size).await?;
        let after = commit_histogram(edge_http).await;
        let us = |q| quantile_between(&before, &after, q).map(|s| s * 1e6);
        l.commit_p50_us = us(0.5);
        l.commit_p99_us = us(0.99);
        latency.push(l);
    }
    let mut landed = a.count + latency.iter().map(|l| l.samples as u64).sum::<u64>();

    wait_count(
        &js,
        events,
        landed,
        "agentmesh: settle",
        p,
        Duration::from_secs(300),
    )
    .await?;

    // The noisy neighbour, on a settled mesh: everything before it has landed.
    let mut noisy = None;
    if a.noisy_secs > 0.0 {
        p.say("agentmesh: a noisy neighbour");
        // A quiet edge for the calm agent alone: its outbox emptied and flushed.
        let _ = wait_until("the outbox to empty", Duration::from_secs(30), || async {
            mesh.edge_metric(0, "mesh_edge_outbox_events").await == Some(0.0)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let site = &mesh.sites[0];
        let flooder = Flooder {
            url: site.nats.client_url(),
            auth: agent_auth(&mesh, NOISY)?,
            edge: site.id.clone(),
        };
        let n = bench_noisy(
            &agents[0],
            flooder,
            flood_limit,
            a.noisy_secs,
            a.size,
            edge_http,
        )
        .await?;
        landed += (n.alone.samples + n.beside.samples) as u64 + n.flood_acked;
        noisy = Some(n);
        wait_count(
            &js,
            events,
            landed,
            "agentmesh: the noisy neighbour landed",
            p,
            Duration::from_secs(300),
        )
        .await?;
    }

    p.say("agentmesh: building the backlog behind a cut link");
    mesh.proxy(0)?.cut();
    mesh.wait_uplink(0, false).await?;
    mesh_publish_all(&agents, a.backlog, a.batch, a.size).await?;
    landed += a.backlog;
    let cpu0 = mesh_cpu(&mesh);
    let t = Instant::now();
    mesh.proxy(0)?.heal();
    wait_count(
        &js,
        events,
        landed,
        "agentmesh: drain",
        p,
        Duration::from_secs(600),
    )
    .await?;
    let drain = a.backlog as f64 / t.elapsed().as_secs_f64();
    let drain_cpu = cpu_profile(cpu0, mesh_cpu(&mesh), a.backlog);

    // Memory with the outbox full: a fresh edge hub process, so its peak is this run's.
    p.say("agentmesh: edge hub memory with a full outbox");
    let mut extra = MeshExtra {
        rss_events: a.rss_events,
        noisy,
        ..MeshExtra::default()
    };
    mesh.sites[0].hub_mut()?.terminate(Duration::from_secs(20));
    mesh.proxy(0)?.cut();
    mesh.sites[0].hub_mut()?.start()?;
    wait_until(
        "the edge hub to come back",
        Duration::from_secs(30),
        || async { mesh.edge_metric(0, "mesh_edge_uplink_up").await.is_some() },
    )
    .await?;
    mesh_publish_all(&agents, a.rss_events, a.batch, a.size).await?;
    landed += a.rss_events;
    extra.edge_peak_rss_bytes = mesh.sites[0]
        .hub()?
        .process()
        .memory()
        .map(|(peak, _)| peak)
        .unwrap_or(0);
    let outbox_dir = mesh.sites[0].data_dir.clone();
    extra.outbox_disk_full_bytes = disk_usage(&outbox_dir);
    extra.outbox_payload_full_bytes = a.rss_events * a.size as u64;
    mesh.proxy(0)?.heal();
    wait_count(
        &js,
        events,
        landed,
        "agentmesh: drain the full outbox",
        p,
        Duration::from_secs(600),
    )
    .await?;

    extra.cycle_payload_bytes = a.cycle_events * a.size as u64;
    for c in 0..a.cycles {
        p.say(&format!(
            "agentmesh: fill/drain cycle {}/{}",
            c + 1,
            a.cycles
        ));
        mesh.proxy(0)?.cut();
        mesh.wait_uplink(0, false).await?;
        mesh_publish_all(&agents, a.cycle_events, a.batch, a.size).await?;
        let full = disk_usage(&outbox_dir);
        landed += a.cycle_events;
        mesh.proxy(0)?.heal();
        wait_count(
            &js,
            events,
            landed,
            "agentmesh: cycle drain",
            p,
            Duration::from_secs(600),
        )
        .await?;
        // Measured whether or not the outbox emptied within 30 s, as it always was.
        let _ = wait_until("the outbox to empty", Duration::from_secs(30), || async {
            mesh.edge_metric(0, "mesh_edge_outbox_events").await == Some(0.0)
        })
        .await;
        tracing::debug!(cycle = c, full, "outbox disk at the full point");
        extra.outbox_disk_after_cycles.push(disk_usage(&outbox_dir));
    }
    drop(mesh);
    Ok((
        SystemResult {
            throughput_per_s: Some(throughput),
            drain_per_s: Some(drain),
            latency,
            cpu_throughput: Some(cpu),
            cpu_drain: Some(drain_cpu),
        },
        extra,
    ))
}

/// CPU time so far of (edge hub, central hub, edge nats-server, central nats-server,
/// this process).
fn mesh_cpu(mesh: &Mesh) -> [u64; 5] {
    let hub_pid = |h: Option<&Hub>| h.and_then(Hub::pid);
    cpu_now([
        hub_pid(mesh.sites[0].hub.as_ref()),
        hub_pid(mesh.central_hubs.first()),
        mesh.sites[0].nats.pid(),
        mesh.central.pid(),
    ])
}

/// `n` publishing agents on the edge, one connection each.
async fn bench_agents(mesh: &Mesh, n: usize) -> anyhow::Result<Vec<Agent>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(bench_agent(mesh, &format!("bench-{i}")).await?);
    }
    Ok(out)
}

/// The identity of agent `id` on the edge.
fn agent_auth(mesh: &Mesh, id: &str) -> anyhow::Result<mesh_nats::client::ClientAuth> {
    Ok(mesh.auth(&mesh_nats::auth::Identity::Agent {
        edge: mesh.sites[0].id.clone(),
        agent: id.to_string(),
        live: vec![],
        durables: vec![],
    })?)
}

/// Agent `id` on the edge, on a connection of its own.
async fn bench_agent(mesh: &Mesh, id: &str) -> anyhow::Result<Agent> {
    let site = &mesh.sites[0];
    let c = connect(&site.nats.client_url(), &agent_auth(mesh, id)?).await?;
    Ok(Agent::with_client(c, &site.id, id)?.with_timeout(Duration::from_secs(30)))
}

/// The edge hub's group-commit histogram now (empty when it does not answer).
pub(super) async fn commit_histogram(edge_http: SocketAddr) -> Vec<(f64, f64)> {
    scrape(edge_http)
        .await
        .map(|s| s.histogram(COMMIT_HISTOGRAM))
        .unwrap_or_default()
}
