//! The monitor: scrapes every edge hub's `/metrics` every 50 ms during a scenario for
//! the outbox depth (its peak is reported) and the uplink state (when a cut and a heal
//! were noticed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_testkit::{scrape, Hub, KitError, Mesh};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the monitor saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) peak_outbox: u64,
    /// Per site, every change of `mesh_edge_uplink_up`.
    pub(crate) uplink: Vec<Vec<(Instant, bool)>>,
}

/// Scrapes every edge hub's metrics every 50 ms until stopped.
pub(crate) struct Monitor {
    stop: CancellationToken,
    task: JoinHandle<Seen>,
}

impl Monitor {
    /// Starts scraping every edge hub of `mesh`.
    pub(crate) fn start(mesh: &Mesh) -> Result<Monitor, KitError> {
        let addrs = mesh
            .sites
            .iter()
            .map(|s| s.hub().map(Hub::http))
            .collect::<Result<Vec<SocketAddr>, KitError>>()?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Seen {
                uplink: vec![Vec::new(); addrs.len()],
                ..Seen::default()
            };
            let mut last: Vec<Option<bool>> = vec![None; addrs.len()];
            loop {
                for (i, a) in addrs.iter().enumerate() {
                    let Some(page) = scrape(*a).await else {
                        continue;
                    };
                    let now = Instant::now();
                    let value = |name: &str| page.get(name, &[]);
                    if let Some(v) = value("mesh_edge_outbox_events") {
                        seen.peak_outbox = seen.peak_outbox.max(v as u64);
                    }
                    if let Some(v) = value("mesh_edge_uplink_up") {
                        let up = v == 1.0;
                        if last[i] != Some(up) {
                            last[i] = Some(up);
                            seen.uplink[i].push((now, up));
                        }
                    }
                }
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            seen
        });
        Ok(Monitor { stop, task })
    }

    /// Stops scraping; what was seen.
    pub(crate) async fn finish(self) -> Seen {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}
