//! Readiness of a central hub: `/health/ready` answers 200 only while the hub's streams
//! exist and its lander is pulling, pinned or on standby.
//!
//! # Rule
//! Ready when the streams were set up, the hub is not shutting down, a pull is open, and
//! no pull has failed for [`SETTLE`]. A pull whose consumer is gone fails within
//! milliseconds, and one whose server went silent misses its idle heartbeat (every
//! 100 ms) within two of them, so a pull open for `SETTLE` without a failure really
//! receives bundles or heartbeats. The lander pulls again 100 ms after a failure, so
//! while pulls keep failing the hub stays unready; once one holds for `SETTLE` it is
//! ready again.
//!
//! # Degraded
//! An edge the lander holds (its high-water mark is unreadable, see [`crate::lander`])
//! does not make the hub unready: the lander still lands every other edge, and another
//! hub would hold that edge just the same. `/health/ready` keeps its status code and
//! says `ready, degraded` with a line `held edge <edge>: <why>` per held edge; alert on
//! `mesh_central_lander_edge_held`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a pull must hold after the last failure before the hub is ready again.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What the hub and its lander report; [`Health::ready`] applies the rule.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
    /// Edges the lander holds, and why.
    held: Mutex<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    streams: bool,
    stopping: bool,
    pulling: bool,
    last_failure: Option<Instant>,
}

impl Health {
    /// The streams and the KV bucket exist.
    pub fn streams_ready(&self) {
        self.update(|s| s.streams = true);
    }

    /// The lander opened a pull.
    pub fn pull_open(&self) {
        self.update(|s| s.pulling = true);
    }

    /// A pull failed or ended (or the consumer could not be set up).
    pub fn pull_failed(&self) {
        self.update(|s| {
            s.pulling = false;
            s.last_failure = Some(Instant::now());
        });
    }

    /// The hub is shutting down: never ready again.
    pub fn stopping(&self) {
        self.update(|s| s.stopping = true);
    }

    /// Whether `/health/ready` answers 200.
    pub fn ready(&self) -> bool {
        self.ready_at(Instant::now())
    }

    /// The lander holds `edge` (its mark is unreadable: `why`).
    pub fn edge_held(&self, edge: &str, why: &str) {
        self.held
            .lock()
            .expect("health held")
            .insert(edge.to_string(), why.to_string());
    }

    /// The lander lands `edge` again.
    pub fn edge_released(&self, edge: &str) {
        self.held.lock().expect("health held").remove(edge);
    }

    /// The edges the lander holds, and why; empty when none.
    pub fn held(&self) -> BTreeMap<String, String> {
        self.held.lock().expect("health held").clone()
    }

    fn ready_at(&self, now: Instant) -> bool {
        let s = *self.state.lock().expect("health state");
        s.streams
            && !s.stopping
            && s.pulling
            && s.last_failure
                .is_none_or(|t| now.saturating_duration_since(t) >= SETTLE)
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().expect("health state"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_streams_and_an_open_pull() {
        let h = Health::default();
        assert!(!h.ready());
        h.pull_open();
        assert!(!h.ready(), "no streams yet");
        h.streams_ready();
        assert!(h.ready());
        h.stopping();
        assert!(!h.ready());
    }

    #[test]
    fn a_failed_pull_makes_it_unready_until_a_pull_holds_for_settle() {
        let h = Health::default();
        h.streams_ready();
        h.pull_open();
        h.pull_failed();
        let failed = Instant::now();
        assert!(!h.ready_at(failed + SETTLE), "no pull open");
        h.pull_open();
        assert!(!h.ready_at(failed + SETTLE / 2), "failed too recently");
        assert!(h.ready_at(failed + SETTLE + Duration::from_millis(10)));
    }

    #[test]
    fn a_held_edge_degrades_but_keeps_it_ready() {
        let h = Health::default();
        h.streams_ready();
        h.pull_open();
        h.edge_held("e9", "unreadable");
        assert!(h.ready());
        assert_eq!(h.held().get("e9").map(String::as_str), Some("unreadable"));
        h.edge_released("e9");
        assert!(h.held().is_empty());
    }
}
