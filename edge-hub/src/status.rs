//! The edge hub's status page: `/` and `/status` serve a small static page
//! (`status.html` and `status.js`, compiled into the binary), which fetches
//! `/status.json` every second: the link to the centre, the outbox (backlog, how full,
//! the last sequence stored and the last the centre acknowledged, expulsions), and what
//! was accepted, forwarded and refused since the hub started. Rates are worked out by
//! the page from two successive reads.
//!
//! Unlike the central page's backlog (the edge's last heartbeat), these figures are live
//! while the link is cut: look here during a partition.
//!
//! Agents' ids and refusal reasons are drawn with `textContent` only, and the page is
//! served with a `Content-Security-Policy` that allows no script but `/status.js`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::metrics::{EdgeFigures, EdgeMetrics};
use crate::outbox::Outbox;

/// The page, served at `/` and `/status`.
pub const PAGE: &str = include_str!("status.html");
/// Its script, served at `/status.js`.
pub const SCRIPT: &str = include_str!("status.js");
/// The page may run only its own script and fetch only from this hub.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                       style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// `/status.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub edge: String,
    /// When the report was made (RFC 3339, UTC).
    pub time: String,
    /// `/health/ready`'s answer: the hub accepts publishes.
    pub ready: bool,
    pub outbox: OutboxReport,
    #[serde(flatten)]
    pub figures: EdgeFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxReport {
    /// Events not yet acknowledged by the centre (the backlog).
    pub events: u64,
    pub bytes: u64,
    /// `outbox.max_bytes`.
    pub max_bytes: u64,
    /// The last edge sequence stored (0 before the first).
    pub last_seq: u64,
    /// The last edge sequence the centre acknowledged.
    pub acked_seq: u64,
    /// Events expelled by the outbox limits, by reason (`max_age`, `max_bytes`).
    pub expelled: BTreeMap<String, u64>,
}

/// The report of edge `edge`, as of now.
pub fn report(
    edge: &str,
    ready: bool,
    metrics: &EdgeMetrics,
    outbox: &Outbox,
    max_bytes: u64,
) -> Report {
    let s = outbox.stats();
    Report {
        edge: edge.to_string(),
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ready,
        outbox: OutboxReport {
            events: s.events,
            bytes: s.bytes,
            max_bytes,
            last_seq: s.next_seq.saturating_sub(1),
            acked_seq: s.acked,
            expelled: [
                ("max_age".to_string(), s.expelled_max_age),
                ("max_bytes".to_string(), s.expelled_max_bytes),
            ]
            .into_iter()
            .collect(),
        },
        figures: metrics.figures(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard against a later edit parsing network-supplied text as HTML.
    #[test]
    fn the_script_never_parses_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!SCRIPT.contains(sink), "status.js uses {sink}");
        }
        assert!(
            !PAGE.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
    }

    #[test]
    fn figures_follow_the_counters() {
        let m = EdgeMetrics::new("e1");
        m.committed(5, std::time::Duration::from_millis(1));
        m.forwarded(3);
        m.rejected("rate_limited");
        m.rejected("rate_limited");
        m.uplink(true);
        let f = m.figures();
        assert_eq!((f.ingested_events, f.forwarded_events), (5, 3));
        assert_eq!(f.rejected["rate_limited"], 2);
        assert!(f.uplink_up);
    }
}
