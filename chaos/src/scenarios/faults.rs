//! Playing a fault schedule: each [`Action`] applied to the mesh (proxy states and
//! shaping, hub and server kills and restarts) and logged with its time.

use std::time::{Duration, Instant};

use mesh_testkit::{KitError, Mesh};

use super::plan::Action;

/// The fault log of a run: when each action was applied.
pub(crate) struct Faults {
    pub(crate) t0: Instant,
    pub(crate) applied: Vec<(Instant, Action)>,
    pub(crate) lines: Vec<String>,
    pub(crate) notes: Vec<String>,
}

impl Faults {
    pub(crate) fn new() -> Faults {
        Faults {
            t0: Instant::now(),
            applied: Vec::new(),
            lines: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Sleeps until `at` after the start of the load.
    pub(crate) async fn sleep_until(&self, at: Duration) {
        tokio::time::sleep_until((self.t0 + at).into()).await;
    }

    /// Applies `action` to `mesh` now and logs it.
    pub(crate) fn apply(&mut self, mesh: &mut Mesh, action: Action) -> Result<(), KitError> {
        let now = Instant::now();
        match &action {
            Action::Cut(s) => mesh.proxy(*s)?.cut(),
            Action::CutReturn(s) => mesh.proxy(*s)?.cut_return(),
            Action::Reset(s) => mesh.proxy(*s)?.reset(),
            Action::Heal(s) => mesh.proxy(*s)?.heal(),
            Action::Shape {
                site,
                latency,
                jitter,
                bandwidth,
            } => {
                let p = mesh.proxy(*site)?;
                p.set_latency(*latency, *jitter);
                p.set_bandwidth(Some(*bandwidth));
            }
            Action::Unshape(s) => {
                let p = mesh.proxy(*s)?;
                p.set_latency(Duration::ZERO, Duration::ZERO);
                p.set_bandwidth(None);
                p.heal();
            }
            Action::KillEdgeHub(s) => mesh.sites[*s].hub_mut()?.kill(),
            Action::StartEdgeHub(s) => mesh.sites[*s].hub_mut()?.start()?,
            Action::KillCentralNats => mesh.kill_central(),
            Action::RestartCentralNats => mesh.restart_central()?,
            Action::KillCentralHub(i) => mesh.central_hubs[*i].kill(),
            Action::TermCentralHub(i) => {
                if !mesh.central_hubs[*i].terminate(Duration::from_secs(10)) {
                    self.notes
                        .push(format!("central hub c{i} did not exit 0 on SIGTERM"));
                }
            }
            Action::StartCentralHub(i) => mesh.central_hubs[*i].start()?,
        }
        self.lines.push(format!(
            "+{:.2}s {}",
            now.duration_since(self.t0).as_secs_f64(),
            action.describe()
        ));
        self.applied.push((now, action));
        Ok(())
    }

    /// Logs a fault that is not an [`Action`] (the cluster scenarios' node faults).
    pub(crate) fn note(&mut self, what: &str) {
        self.lines
            .push(format!("+{:.2}s {what}", self.t0.elapsed().as_secs_f64()));
    }

    /// Time since the start of the load.
    pub(crate) fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }
}
