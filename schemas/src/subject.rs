//! Subject builders and validators.
//!
//! | subject | meaning |
//! |---|---|
//! | `mesh.ingest.<edge>.<agent>` | publish request from an agent to its edge hub |
//! | `mesh.up.<edge>` | bundles in transit to the centre (stream `MESH_INGRESS`) |
//! | `mesh.evt.<edge>.<subject…>` | every accepted event, once (stream `MESH_EVENTS`) |
//! | `mesh.live.<edge>.<subject…>` | live copy at the edge, after the durable append |
//! | `mesh.audit.<kind>` | audit records (stream `MESH_AUDIT`) |
//! | `mesh.dlq.<edge>.<subject…>` | dead letters (stream `MESH_DLQ`) |
//! | `mesh.hub.>` | heartbeats and control requests |
//! | `mesh.hub.op.<operator>.<verb…>` | an operator's request to the central hubs (see [`hub_op`]) |
//! | `$JS.<domain>.API.STREAM.INFO.<stream>` | stream info in a domain (the edge's uplink probe asks it of `MESH_INGRESS`) |
//!
//! Identities (edge and agent ids) are single tokens of `[A-Za-z0-9_-]`, at most
//! [`MAX_ID_LEN`] bytes. Event subjects are dotted, at most [`MAX_SUBJECT_LEN`] bytes,
//! with no empty token, no wildcard and no whitespace. Builders assume validated input;
//! everything coming from outside goes through [`validate_id`] or [`validate_subject`]
//! before it is stored.

use crate::SchemaError;

/// Longest edge or agent id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest event subject, in bytes (leaves room for the `mesh.evt.<edge>.` prefix).
pub const MAX_SUBJECT_LEN: usize = 256;

pub const STREAM_INGRESS: &str = "MESH_INGRESS";
pub const STREAM_EVENTS: &str = "MESH_EVENTS";
pub const STREAM_AUDIT: &str = "MESH_AUDIT";
pub const STREAM_DLQ: &str = "MESH_DLQ";
/// KV bucket holding the lander's per-edge high-water marks.
pub const BUCKET_LANDER: &str = "MESH_LANDER";
/// JetStream domain of the centre.
pub const CENTRAL_DOMAIN: &str = "central";

pub const UP_ALL: &str = "mesh.up.>";
pub const EVT_ALL: &str = "mesh.evt.>";
pub const LIVE_ALL: &str = "mesh.live.>";
pub const HUB_HEARTBEAT_ALL: &str = "mesh.hub.heartbeat.>";
/// Every audit record (stream `MESH_AUDIT`).
pub const AUDIT_ALL: &str = "mesh.audit.>";
/// Every dead letter (stream `MESH_DLQ`).
pub const DLQ_ALL: &str = "mesh.dlq.>";
/// Edge hubs' status heartbeats (JSON [`crate::ingest::EdgeStatus`]), one subject per edge.
pub const HUB_EDGE_ALL: &str = "mesh.hub.edge.*";
/// Central hubs answer requests here with the registry projection (JSON).
pub const HUB_REGISTRY: &str = "mesh.hub.registry";
/// Edge hubs answer requests here with an [`crate::ingest::EdgeHello`], so an agent
/// connected to an edge's nats-server can learn the edge id.
pub const HUB_DISCOVER: &str = "mesh.hub.discover";

/// `mesh.ingest.<edge>.<agent>`
pub fn ingest(edge: &str, agent: &str) -> String {
    format!("mesh.ingest.{edge}.{agent}")
}

/// `mesh.ingest.<edge>.*`: what an edge hub listens on.
pub fn ingest_filter(edge: &str) -> String {
    format!("mesh.ingest.{edge}.*")
}

/// The agent id of an ingest subject of `edge`, or `None` if the subject is not one.
pub fn agent_of_ingest<'a>(edge: &str, subject: &'a str) -> Option<&'a str> {
    let rest = subject.strip_prefix("mesh.ingest.")?;
    let rest = rest.strip_prefix(edge)?;
    let agent = rest.strip_prefix('.')?;
    (!agent.is_empty() && !agent.contains('.')).then_some(agent)
}

/// `mesh.up.<edge>`
pub fn up(edge: &str) -> String {
    format!("mesh.up.{edge}")
}

/// The edge id of a `mesh.up.<edge>` subject (a single non-empty token).
pub fn edge_of_up(subject: &str) -> Option<&str> {
    let edge = subject.strip_prefix("mesh.up.")?;
    (!edge.is_empty() && !edge.contains('.')).then_some(edge)
}

/// `mesh.evt.<edge>.<subject>`
pub fn evt(edge: &str, subject: &str) -> String {
    format!("mesh.evt.{edge}.{subject}")
}

/// `mesh.evt.<edge>.>`: every event of one edge.
pub fn evt_edge(edge: &str) -> String {
    format!("mesh.evt.{edge}.>")
}

/// `mesh.evt.*.<filter>`: events of every edge whose subject matches `filter`.
pub fn evt_filter(filter: &str) -> String {
    format!("mesh.evt.*.{filter}")
}

/// `mesh.live.<edge>.<subject>`
pub fn live(edge: &str, subject: &str) -> String {
    format!("mesh.live.{edge}.{subject}")
}

/// `mesh.live.*.<filter>`: live copies from every edge whose subject matches `filter`.
pub fn live_filter(filter: &str) -> String {
    format!("mesh.live.*.{filter}")
}

/// `mesh.dlq.<edge>.<subject>`
pub fn dlq(edge: &str, subject: &str) -> String {
    format!("mesh.dlq.{edge}.{subject}")
}

/// `mesh.audit.<kind>`
pub fn audit(kind: &str) -> String {
    format!("mesh.audit.{kind}")
}

/// `mesh.hub.edge.<edge>`: the edge hub's status heartbeat.
pub fn hub_edge(edge: &str) -> String {
    format!("mesh.hub.edge.{edge}")
}

/// The edge id of a `mesh.hub.edge.<edge>` subject.
pub fn edge_of_hub_edge(subject: &str) -> Option<&str> {
    let edge = subject.strip_prefix("mesh.hub.edge.")?;
    (!edge.is_empty() && !edge.contains('.')).then_some(edge)
}

/// Agents report a failed delivery here (JSON [`crate::dlq::FailureNote`]), so the
/// dead letter can carry the consumer's error text and failure times.
pub const HUB_DLQ_FAILURE: &str = "mesh.hub.dlq.failure";
/// Request from edge hub `<edge>`: one event the centre refuses for good, as the event's
/// headers plus the `mesh-dlq-*` ones and its data (maybe left out); a central hub writes
/// it to `MESH_DLQ` and answers a [`crate::dlq::DeadLetterReply`].
pub fn hub_dlq_refused(edge: &str) -> String {
    format!("mesh.hub.dlq.refused.{edge}")
}

/// Every edge's refused-event requests (the central hubs' queue subscription).
pub const HUB_DLQ_REFUSED_ALL: &str = "mesh.hub.dlq.refused.*";

/// The edge of a `mesh.hub.dlq.refused.<edge>` subject.
pub fn edge_of_hub_dlq_refused(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("mesh.hub.dlq.refused.")
        .filter(|e| validate_id("edge", e).is_ok())
}

/// Request (JSON [`crate::dlq::DeadLetterRequest`]): dead-letter one message now.
pub const HUB_DLQ_REJECT: &str = "mesh.hub.dlq.reject";

/// Every operator request: `mesh.hub.op.<operator>.<verb…>` (the central hubs' queue
/// subscription).
pub const HUB_OP_ALL: &str = "mesh.hub.op.*.>";

/// The verbs of operator requests, the `<verb…>` of [`hub_op`].
pub mod op {
    /// Redrive dead letters (`mesh dlq redrive`).
    pub const DLQ_REDRIVE: &str = "dlq.redrive";
    /// Purge dead letters (`mesh dlq purge`).
    pub const DLQ_PURGE: &str = "dlq.purge";
    /// Republish a stream range (`mesh replay --republish`).
    pub const REPLAY_REPUBLISH: &str = "replay.republish";
    /// Record a replay the operator read itself (`mesh replay --to-stdout`).
    pub const REPLAY_RECORD: &str = "replay.record";
}

/// `mesh.hub.op.<operator>.<verb>`: where operator `operator` asks the central hubs to
/// do `verb` (one of [`op`]). The nats-servers let an operator's credential publish only
/// under its own `<operator>` token, so a hub takes that token as the actor.
pub fn hub_op(operator: &str, verb: &str) -> String {
    format!("mesh.hub.op.{operator}.{verb}")
}

/// `(operator, verb)` of a [`hub_op`] subject; `None` if it is not one.
pub fn parse_hub_op(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("mesh.hub.op.")?;
    let (operator, verb) = rest.split_once('.')?;
    (!operator.is_empty() && !verb.is_empty()).then_some((operator, verb))
}

/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.*`: JetStream's advisory when a
/// message of `stream` reached a consumer's `max_deliver`.
pub fn max_deliveries_advisory(stream: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*")
}

/// `$JS.<domain>.API`: the prefix of the JetStream API of `domain` (e.g. for a stream
/// sourcing another domain's stream).
pub fn js_api_prefix(domain: &str) -> String {
    format!("$JS.{domain}.API")
}

/// `$JS.<domain>.API.STREAM.INFO.<stream>`: stream info, answered by the stream's leader
/// (in a cluster, not by the meta leader), so only while that stream can take writes.
pub fn js_api_stream_info(domain: &str, stream: &str) -> String {
    format!("{}.STREAM.INFO.{stream}", js_api_prefix(domain))
}

/// `mesh.dlq.<filter>`: dead letters matching an `<edge>.<subject…>` filter.
pub fn dlq_filter(filter: &str) -> String {
    format!("mesh.dlq.{filter}")
}

/// `mesh.hub.heartbeat.<hub>`
pub fn hub_heartbeat(hub: &str) -> String {
    format!("mesh.hub.heartbeat.{hub}")
}

/// Checks an edge or agent id: one token of `[A-Za-z0-9_-]`, 1..=[`MAX_ID_LEN`] bytes.
pub fn validate_id(field: &str, value: &str) -> Result<(), SchemaError> {
    if value.is_empty() {
        return Err(SchemaError::Empty {
            field: field.into(),
        });
    }
    if value.len() > MAX_ID_LEN {
        return Err(SchemaError::TooLong {
            field: field.into(),
            len: value.len(),
            max: MAX_ID_LEN,
        });
    }
    check_chars(field, value)?;
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(SchemaError::BadChar {
            field: field.into(),
            value: value.into(),
            ch,
        });
    }
    Ok(())
}

/// Checks an event subject: dotted tokens, none empty, no wildcard, no whitespace or
/// control character, 1..=[`MAX_SUBJECT_LEN`] bytes.
pub fn validate_subject(field: &str, value: &str) -> Result<(), SchemaError> {
    if value.is_empty() {
        return Err(SchemaError::Empty {
            field: field.into(),
        });
    }
    if value.len() > MAX_SUBJECT_LEN {
        return Err(SchemaError::TooLong {
            field: field.into(),
            len: value.len(),
            max: MAX_SUBJECT_LEN,
        });
    }
    check_chars(field, value)?;
    if value.split('.').any(str::is_empty) {
        return Err(SchemaError::EmptyToken {
            field: field.into(),
            value: value.into(),
        });
    }
    Ok(())
}

/// Checks a subscription filter: like a subject, but `*` may stand as a whole token and
/// `>` as the whole last token.
pub fn validate_filter(field: &str, value: &str) -> Result<(), SchemaError> {
    let masked: String = {
        let tokens: Vec<&str> = value.split('.').collect();
        let n = tokens.len();
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match *t {
                "*" => "x",
                ">" if i + 1 == n => "x",
                t => t,
            })
            .collect::<Vec<_>>()
            .join(".")
    };
    validate_subject(field, &masked).map_err(|e| match e {
        SchemaError::Wildcard {
            field, wildcard, ..
        } => SchemaError::Wildcard {
            field,
            value: value.into(),
            wildcard,
        },
        other => other,
    })
}

fn check_chars(field: &str, value: &str) -> Result<(), SchemaError> {
    for c in value.chars() {
        if c == '*' || c == '>' {
            return Err(SchemaError::Wildcard {
                field: field.into(),
                value: value.into(),
                wildcard: c,
            });
        }
        if c.is_whitespace() || c.is_control() {
            return Err(SchemaError::Whitespace {
                field: field.into(),
                value: value.into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids() {
        assert!(validate_id("edge", "edge-1_A").is_ok());
        assert!(matches!(
            validate_id("edge", ""),
            Err(SchemaError::Empty { .. })
        ));
        assert!(matches!(
            validate_id("edge", "a.b"),
            Err(SchemaError::BadChar { ch: '.', .. })
        ));
        assert!(matches!(
            validate_id("agent", "a*"),
            Err(SchemaError::Wildcard { wildcard: '*', .. })
        ));
        assert!(matches!(
            validate_id("agent", &"x".repeat(65)),
            Err(SchemaError::TooLong { len: 65, .. })
        ));
    }

    #[test]
    fn subjects() {
        assert!(validate_subject("subject", "orders.created.v1").is_ok());
        for bad in [
            "", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a\tb", "a\u{0}b",
        ] {
            let e = validate_subject("subject", bad).unwrap_err();
            assert!(e.to_string().contains("subject"), "{e}");
        }
        assert!(validate_subject("subject", &"a".repeat(257)).is_err());
    }

    #[test]
    fn filters() {
        assert!(validate_filter("filter", "mesh.evt.*.orders.>").is_ok());
        assert!(validate_filter("filter", ">").is_ok());
        assert!(validate_filter("filter", "a.>.b").is_err());
        assert!(validate_filter("filter", "a.b*").is_err());
    }

    #[test]
    fn ingest_subject_round_trip() {
        let s = ingest("e1", "agent-7");
        assert_eq!(agent_of_ingest("e1", &s), Some("agent-7"));
        assert_eq!(agent_of_ingest("e2", &s), None);
        assert_eq!(agent_of_ingest("e1", "mesh.ingest.e1.a.b"), None);
        assert_eq!(agent_of_ingest("e1", "mesh.ingest.e10.a"), None);
    }

    #[test]
    fn edge_of_up_subjects() {
        assert_eq!(edge_of_up(&up("e1")), Some("e1"));
        assert_eq!(edge_of_up("mesh.up."), None);
        assert_eq!(edge_of_up("mesh.up.a.b"), None);
        assert_eq!(edge_of_up("mesh.evt.e1"), None);
    }

    #[test]
    fn hub_op_round_trip() {
        let s = hub_op("ann", op::DLQ_REDRIVE);
        assert_eq!(s, "mesh.hub.op.ann.dlq.redrive");
        assert_eq!(parse_hub_op(&s), Some(("ann", "dlq.redrive")));
        assert_eq!(parse_hub_op("mesh.hub.op.ann"), None);
        assert_eq!(parse_hub_op("mesh.hub.op..dlq.purge"), None);
        assert_eq!(parse_hub_op("mesh.hub.registry"), None);
    }

    #[test]
    fn filters_of_every_edge() {
        assert_eq!(evt_filter("orders.>"), "mesh.evt.*.orders.>");
        assert_eq!(live_filter("tasks.*"), "mesh.live.*.tasks.*");
        assert_eq!(
            js_api_stream_info(CENTRAL_DOMAIN, STREAM_INGRESS),
            "$JS.central.API.STREAM.INFO.MESH_INGRESS"
        );
    }

    proptest! {
        #[test]
        fn generated_subjects_are_valid(tokens in proptest::collection::vec("[a-zA-Z0-9_$-]{1,12}", 1..8)) {
            let s = tokens.join(".");
            prop_assert!(validate_subject("subject", &s).is_ok());
        }

        #[test]
        fn any_wildcard_or_space_is_refused(prefix in "[a-z]{0,8}", bad in "[*> \t\n]", suffix in "[a-z]{0,8}") {
            let s = format!("{prefix}{bad}{suffix}");
            prop_assert!(validate_subject("subject", &s).is_err());
            prop_assert!(validate_id("agent", &s).is_err());
        }
    }
}
