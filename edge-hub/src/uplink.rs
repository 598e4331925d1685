//! Uplink state: is the centre's JetStream reachable through the leaf link?
//!
//! The edge's own nats-server stays up during a partition, so the client connection says
//! nothing about the link. The probe asks `$JS.central.API.INFO` every `probe_interval`;
//! an answer means up, no answer within `probe_timeout` (a black-holed link) or no
//! responders (a closed link) means down. With the defaults (200 ms, 500 ms) a cut is
//! noticed within ~0.7 s and a heal within ~0.2 s (G5).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::UplinkConfig;
use crate::metrics::EdgeMetrics;

/// The subject of the probe: JetStream account info of the central domain.
pub fn probe_subject() -> String {
    schemas::subject::js_api_info(schemas::subject::CENTRAL_DOMAIN)
}

/// Probes until `shutdown`, publishing every change of state on `state`.
pub async fn run_uplink(
    client: async_nats::Client,
    cfg: UplinkConfig,
    state: watch::Sender<bool>,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) {
    let subject = probe_subject();
    let mut down_since: Option<std::time::Instant> = Some(std::time::Instant::now());
    loop {
        let started = std::time::Instant::now();
        let reply = tokio::time::timeout(
            cfg.probe_timeout,
            client.request(subject.clone(), "".into()),
        )
        .await;
        let up = match reply {
            Ok(Ok(reply)) => {
                let ok = is_account_info(&reply.payload);
                if !ok {
                    tracing::debug!(
                        reply = %String::from_utf8_lossy(&reply.payload),
                        "uplink probe answered with an error"
                    );
                }
                ok
            }
            _ => false,
        };
        if up != *state.borrow() {
            if up {
                let outage = down_since.take().map(|t| t.elapsed());
                tracing::info!(?outage, "uplink to the centre is up");
            } else {
                down_since = Some(std::time::Instant::now());
                tracing::warn!("uplink to the centre is down");
            }
            state.send_replace(up);
            metrics.uplink(up);
        }
        let wait = cfg.probe_interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Whether a reply is the central JetStream's account info, not an error: a server on
/// this side of a cut link may answer the request itself ("JetStream not enabled").
fn is_account_info(payload: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => v.get("error").is_none() && v.get("api").is_some(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_account_info_counts_as_up() {
        assert!(super::is_account_info(br#"{"type":"io.nats.jetstream.api.v1.account_info_response","memory":0,"storage":0,"api":{"total":1,"errors":0}}"#));
        assert!(!super::is_account_info(
            br#"{"error":{"code":503,"description":"JetStream not enabled"}}"#
        ));
        assert!(!super::is_account_info(b""));
    }
}
