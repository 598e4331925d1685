//! Uplink state: can the centre's `MESH_INGRESS` take the forwarder's bundles?
//!
//! The edge's own nats-server stays up during a partition, so the client connection says
//! nothing about the link. Two kinds of evidence decide, in [`Health`]:
//!
//! * **The probe** asks `$JS.central.API.STREAM.INFO.MESH_INGRESS` every `probe_interval`.
//!   In a cluster only the stream's *leader* answers stream info, so the probe does not
//!   depend on the JetStream meta leader (account info, `$JS.central.API.INFO`, does: it
//!   went unanswered for a whole meta-leader election while `MESH_INGRESS` took writes).
//!   Only a real stream-info answer for `MESH_INGRESS`, naming a leader, counts as up
//!   (followers answer for a stream electing a leader); an error reply (e.g.
//!   "stream not found", or "JetStream not enabled" from a server on this side of a cut
//!   link), no responders (a closed link) or no answer within `probe_timeout` (a
//!   black-holed link) counts as down.
//! * **Acks**: the forwarder reports every bundle ack from `MESH_INGRESS` ([`AckWitness`]);
//!   an ack is the stream taking a write, the very thing the probe stands for.
//!
//! # Rule
//!
//! Up ⇔ the latest probe got a stream-info answer **or** an ack arrived within the last
//! `probe_timeout`. So a lost probe does not pause forwarding while acks keep coming, and
//! a cut is still noticed as soon as the probe fails and the last ack is `probe_timeout`
//! old. With the defaults (200 ms, 500 ms) a cut is noticed within ~0.7 s (the last ack is
//! at most as old as the failed probe) and a heal within ~0.2 s, or ~0.5 s when the heal
//! falls in a probe lost to the cut (G5).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::UplinkConfig;
use crate::metrics::EdgeMetrics;

/// The subject of the probe: stream info of `MESH_INGRESS` in the central domain.
pub fn probe_subject() -> String {
    schemas::subject::js_api_stream_info(
        schemas::subject::CENTRAL_DOMAIN,
        schemas::subject::STREAM_INGRESS,
    )
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A stream-info answer for `MESH_INGRESS`.
    Answered,
    /// No answer in time, no responders, or an answer that is not that stream's info.
    Failed,
}

/// The up/down decision from probe results and ack times; pure, so it is tested alone.
#[derive(Debug, Clone)]
pub struct Health {
    /// How long an ack stands for the link (the probe timeout).
    window: Duration,
    last_probe: Probe,
    last_ack: Option<Instant>,
}

impl Health {
    /// Starts down: nothing has been heard from the centre yet.
    pub fn new(window: Duration) -> Health {
        Health {
            window,
            last_probe: Probe::Failed,
            last_ack: None,
        }
    }

    /// Records the result of the latest probe.
    pub fn probed(&mut self, result: Probe) {
        self.last_probe = result;
    }

    /// Records an ack from `MESH_INGRESS` received at `at`.
    pub fn acked(&mut self, at: Instant) {
        self.last_ack = Some(self.last_ack.map_or(at, |t| t.max(at)));
    }

    /// Whether the uplink counts as up at `now` (see the module's rule).
    pub fn is_up(&self, now: Instant) -> bool {
        self.last_probe == Probe::Answered || self.ack_fresh(now)
    }

    /// When [`Health::is_up`] will turn false by itself if nothing new is heard: the
    /// moment the latest ack goes stale while the latest probe failed.
    pub fn turns_down_at(&self, now: Instant) -> Option<Instant> {
        if self.last_probe == Probe::Answered || !self.ack_fresh(now) {
            return None;
        }
        self.last_ack.map(|t| t + self.window)
    }

    fn ack_fresh(&self, now: Instant) -> bool {
        self.last_ack
            .is_some_and(|t| now.saturating_duration_since(t) < self.window)
    }
}

/// The forwarder's side of the ack evidence: one call per ack from `MESH_INGRESS`.
#[derive(Debug)]
pub struct AckWitness(watch::Sender<Option<Instant>>);

impl AckWitness {
    /// Records that `MESH_INGRESS` acknowledged a bundle just now.
    pub fn acked(&self) {
        self.0.send_replace(Some(Instant::now()));
    }
}

/// The ack evidence channel: the forwarder holds the witness, [`run_uplink`] the receiver.
pub fn ack_channel() -> (AckWitness, watch::Receiver<Option<Instant>>) {
    let (tx, rx) = watch::channel(None);
    (AckWitness(tx), rx)
}

/// Probes until `shutdown`, taking acks as evidence too, and publishes every change of
/// state on `state`.
pub async fn run_uplink(
    client: async_nats::Client,
    cfg: UplinkConfig,
    mut acks: watch::Receiver<Option<Instant>>,
    state: watch::Sender<bool>,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) {
    let subject = probe_subject();
    let probe = |client: async_nats::Client| {
        let subject = subject.clone();
        let timeout = cfg.probe_timeout;
        async move {
            // An empty request asks for neither per-subject counts (`subjects_filter`) nor
            // the deleted sequences (`deleted_details`): the smallest stream-info answer.
            match tokio::time::timeout(timeout, client.request(subject, "".into())).await {
                Ok(Ok(reply)) if is_ingress_info(&reply.payload) => Probe::Answered,
                Ok(Ok(reply)) => {
                    tracing::debug!(
                        reply = %String::from_utf8_lossy(&reply.payload),
                        "uplink probe answered with an error"
                    );
                    Probe::Failed
                }
                _ => Probe::Failed,
            }
        }
    };
    let mut health = Health::new(cfg.probe_timeout);
    let mut down_since = Some(Instant::now());
    let mut next_probe = Instant::now() + cfg.probe_interval;
    let mut in_flight = Some(Box::pin(probe(client.clone())));
    let mut acks_open = true;
    loop {
        let expiry = health.turns_down_at(Instant::now());
        tokio::select! {
            result = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                health.probed(result);
            }
            _ = tokio::time::sleep_until(next_probe), if in_flight.is_none() => {
                next_probe = Instant::now() + cfg.probe_interval;
                in_flight = Some(Box::pin(probe(client.clone())));
                continue;
            }
            r = acks.changed(), if acks_open => {
                // Once the forwarder is gone the probe alone decides.
                acks_open = r.is_ok();
                if let Some(at) = *acks.borrow_and_update() {
                    health.acked(at);
                }
            }
            _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {}
            _ = shutdown.cancelled() => return,
        }
        let up = health.is_up(Instant::now());
        if up != *state.borrow() {
            if up {
                let outage = down_since.take().map(|t| t.elapsed());
                tracing::info!(?outage, "uplink to the centre is up");
            } else {
                down_since = Some(Instant::now());
                tracing::warn!("uplink to the centre is down");
            }
            state.send_replace(up);
            metrics.uplink(up);
        }
    }
}

/// Whether a reply is the central JetStream's stream info of `MESH_INGRESS`, not an
/// error: a server on this side of a cut link may answer the request itself.
fn is_ingress_info(payload: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return false;
    };
    // While a clustered stream elects a leader its followers answer stream info
    // themselves, with no leader: the stream takes no writes then.
    let leaderless = v.get("cluster").is_some_and(|c| {
        c.get("leader")
            .and_then(|l| l.as_str())
            .unwrap_or("")
            .is_empty()
    });
    v.get("error").is_none()
        && v.get("type").and_then(|t| t.as_str()) == Some(STREAM_INFO_TYPE)
        && v.pointer("/config/name").and_then(|n| n.as_str())
            == Some(schemas::subject::STREAM_INGRESS)
        && !leaderless
}

/// The `type` of a JetStream stream-info answer.
const STREAM_INFO_TYPE: &str = "io.nats.jetstream.api.v1.stream_info_response";

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(500);

    #[test]
    fn probes_the_stream_leader_not_the_meta_leader() {
        assert_eq!(probe_subject(), "$JS.central.API.STREAM.INFO.MESH_INGRESS");
    }

    #[test]
    fn only_ingress_stream_info_counts_as_up() {
        assert!(is_ingress_info(
            br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","total":0,"offset":0,"limit":0,"config":{"name":"MESH_INGRESS","subjects":["mesh.up.*"]},"created":"2025-01-01T00:00:00Z","state":{"messages":0,"bytes":0,"first_seq":0,"last_seq":0,"consumer_count":1},"cluster":{"name":"central","leader":"n2"},"ts":"2025-01-01T00:00:00Z"}"#
        ));
        for not_up in [
            &br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#[..],
            br#"{"error":{"code":503,"description":"JetStream not enabled"}}"#,
            br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#,
            // Account info is not the stream's answer.
            br#"{"type":"io.nats.jetstream.api.v1.account_info_response","memory":0,"storage":0,"api":{"total":1,"errors":0}}"#,
            // A follower's answer while the stream elects a leader: it takes no writes.
            br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"MESH_INGRESS"},"cluster":{"name":"central","replicas":[{"name":"n1","current":true}]}}"#,
            // Another stream's info.
            br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"MESH_EVENTS"}}"#,
            br#"{}"#,
            b"",
            b"not json",
        ] {
            assert!(
                !is_ingress_info(not_up),
                "{}",
                String::from_utf8_lossy(not_up)
            );
        }
    }

    #[test]
    fn starts_down() {
        let h = Health::new(WINDOW);
        assert!(!h.is_up(Instant::now()));
        assert_eq!(h.turns_down_at(Instant::now()), None);
    }

    #[test]
    fn an_answered_probe_is_up_without_acks() {
        let mut h = Health::new(WINDOW);
        h.probed(Probe::Answered);
        let t0 = Instant::now();
        assert!(h.is_up(t0 + Duration::from_secs(60)));
        assert_eq!(h.turns_down_at(t0), None);
    }

    /// Regression: a probe lost (or answered late, e.g. during a meta-leader election)
    /// while `MESH_INGRESS` keeps acking bundles must not pause forwarding.
    #[test]
    fn probe_timing_out_while_acks_arrive_is_up() {
        let t0 = Instant::now();
        let mut h = Health::new(WINDOW);
        h.probed(Probe::Answered);
        // Acks every 100 ms; every probe from t0 on times out.
        for i in 0..50u64 {
            let t = t0 + Duration::from_millis(100 * i);
            h.acked(t);
            if i % 5 == 4 {
                h.probed(Probe::Failed);
            }
            assert!(h.is_up(t), "down at {i}");
            assert!(h.is_up(t + Duration::from_millis(99)), "down after {i}");
        }
    }

    /// A real cut: probes fail and acks stop. Down once the last ack is `window` old,
    /// and at the latest when the first failed probe reports (timeout ≤ window after the
    /// last ack), so within probe_interval + probe_timeout of the cut.
    #[test]
    fn probe_and_acks_failing_is_down_within_the_bound() {
        let t0 = Instant::now();
        let mut h = Health::new(WINDOW);
        h.probed(Probe::Answered);
        h.acked(t0);
        // The cut happens at t0: the probe started at t0 + 200 ms times out at + 700 ms.
        let failed_at = t0 + Duration::from_millis(700);
        assert!(h.is_up(failed_at - Duration::from_millis(1)));
        h.probed(Probe::Failed);
        assert!(!h.is_up(failed_at));
        assert!(failed_at - t0 <= Duration::from_secs(1));
    }

    #[test]
    fn a_fresh_ack_keeps_it_up_until_it_goes_stale() {
        let t0 = Instant::now();
        let mut h = Health::new(WINDOW);
        h.probed(Probe::Answered);
        h.acked(t0);
        // The probe fails early (no responders) 100 ms after the last ack.
        h.probed(Probe::Failed);
        let now = t0 + Duration::from_millis(100);
        assert!(h.is_up(now));
        assert_eq!(h.turns_down_at(now), Some(t0 + WINDOW));
        assert!(h.is_up(t0 + WINDOW - Duration::from_millis(1)));
        assert!(!h.is_up(t0 + WINDOW));
        assert_eq!(h.turns_down_at(t0 + WINDOW), None);
    }

    #[test]
    fn an_error_reply_is_not_up() {
        let mut h = Health::new(WINDOW);
        h.probed(Probe::Answered);
        // e.g. "JetStream not enabled" from this side of a cut link, no acks.
        h.probed(Probe::Failed);
        assert!(!h.is_up(Instant::now()));
    }

    #[test]
    fn an_ack_brings_it_up_and_the_next_answer_keeps_it() {
        let t0 = Instant::now();
        let mut h = Health::new(WINDOW);
        h.acked(t0);
        assert!(h.is_up(t0));
        h.probed(Probe::Answered);
        assert!(h.is_up(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn an_older_ack_reported_late_does_not_move_the_evidence_back() {
        let t0 = Instant::now();
        let mut h = Health::new(WINDOW);
        h.acked(t0 + Duration::from_millis(300));
        h.acked(t0);
        assert!(h.is_up(t0 + Duration::from_millis(700)));
    }
}
