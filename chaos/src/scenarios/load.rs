//! The load of a scenario: agents publishing one event at a time at a set rate, each
//! recording what the edge said (the oracle), and the highest acked sequence per site
//! (what recovery waits for).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agents::Agent;
use mesh_testkit::{KitError, Mesh};
use schemas::NewEvent;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::producer::{payload, AgentLog};

/// Producers: agents publishing one event at a time at a set rate.
pub(crate) struct Load {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<AgentLog>>,
    /// Highest acked `ce-meshseq` per site.
    high: Vec<Arc<AtomicU64>>,
}

impl Load {
    /// Starts one producer per `(site, agent id)`, each publishing `size`-byte events at
    /// `rate`/s with `timeout` per publish.
    pub(crate) async fn start(
        mesh: &Mesh,
        agents: &[(usize, String)],
        rate: f64,
        size: usize,
        timeout: Duration,
    ) -> Result<Load, KitError> {
        let stop = CancellationToken::new();
        let high: Vec<Arc<AtomicU64>> = (0..mesh.sites.len())
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let mut tasks = Vec::new();
        for (site, id) in agents {
            let agent = mesh.agent(*site, id).await?.with_timeout(timeout);
            tasks.push(tokio::spawn(publish_loop(
                agent,
                rate,
                size,
                stop.clone(),
                high[*site].clone(),
            )));
        }
        Ok(Load { stop, tasks, high })
    }

    /// The highest acked `ce-meshseq` of each site so far.
    pub(crate) fn high_water(&self) -> Vec<u64> {
        self.high.iter().map(|h| h.load(Ordering::SeqCst)).collect()
    }

    /// Stops every producer; their logs.
    pub(crate) async fn stop(self) -> Vec<AgentLog> {
        self.stop.cancel();
        let mut logs = Vec::new();
        for t in self.tasks {
            if let Ok(log) = t.await {
                logs.push(log);
            }
        }
        logs
    }
}

/// Like [`crate::producer::produce`], and also records the highest acked sequence.
async fn publish_loop(
    agent: Agent,
    rate: f64,
    size: usize,
    stop: CancellationToken,
    high: Arc<AtomicU64>,
) -> AgentLog {
    let mut log = AgentLog::new(agent.id());
    let start = tokio::time::Instant::now();
    for n in 0.. {
        let due = start + Duration::from_secs_f64(n as f64 / rate.max(1e-9));
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.cancelled() => break,
        }
        let data = payload(agent.id(), n, size);
        let ev = NewEvent::new("chaos.tick", "chaos.load", data.clone());
        let id = ev.id.unwrap_or_else(Uuid::now_v7);
        let t = std::time::Instant::now();
        let outcome = agent.publish_event(ev).await;
        if let Ok(ack) = &outcome {
            high.fetch_max(ack.last_seq, Ordering::SeqCst);
        }
        log.record_timed(id, data, &outcome, t.elapsed());
    }
    log
}
