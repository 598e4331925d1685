//! Typed audit events: one variant per record kind, each with its payload.
//!
//! | kind | payload | written by |
//! |---|---|---|
//! | `hub.started` | [`HubStarted`] | reserved: no writer records it today |
//! | `config.applied` | [`ConfigApplied`] | central hub, when its configuration differs from the one it last recorded |
//! | `edge.connected` | [`EdgeConnected`] | central hub (tracker), first status heartbeat of an unknown edge |
//! | `edge.lost` | [`EdgeLost`] | tracker, no heartbeat from a connected edge for a while |
//! | `edge.restored` | [`EdgeRestored`] | tracker, first heartbeat of an edge recorded lost |
//! | `agent.registered` / `agent.seen` | [`AgentRef`] | tracker (from the lander's reports) |
//! | `agent.quiet` | [`AgentQuiet`] | tracker |
//! | `outbox.expelled` | [`OutboxExpelled`] | tracker, an edge's expulsion counter changed (G2) |
//! | `dlq.dead-lettered` | [`DeadLettered`] | central hub (dead-letter service, tracker for the lander) |
//! | `dlq.redriven` / `dlq.purged` | [`Redriven`] / [`Purged`] | `mesh dlq` |
//! | `replay.run` | [`ReplayRun`] | `mesh replay` |
//! | `lander.edge-held` / `lander.edge-released` | [`EdgeHeld`] / [`EdgeReleased`] | tracker (from the lander's reports), an edge's mark unreadable / readable again |
//! | `stream.updated` | [`StreamUpdated`] | central hub, on start, when the operator let it change an existing stream to its configuration |
//!
//! A payload's members are the record's `fields`, named exactly as on the wire. Reading
//! is lenient as the registry always was: a member that is missing takes its default, a
//! member this version does not know is ignored, and a kind it does not know is
//! [`AuditEvent::Other`] — so neither `verify` nor the registry fails on a newer writer's
//! record. Only a member of the wrong type is an error.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::kind;
use crate::SchemaError;

/// `hub.started`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HubStarted {
    pub hub: String,
}

/// `config.applied`: a central hub applied a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigApplied {
    pub hub: String,
    /// [`super::sha256_hex`] of `config`.
    pub sha256: String,
    /// The whole configuration, TOML.
    pub config: String,
}

/// `edge.connected`: the first status heartbeat of an edge never recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeConnected {
    pub edge: String,
    /// Events waiting in its outbox.
    pub backlog: u64,
}

/// `edge.lost`: no heartbeat with the uplink up for a while.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeLost {
    pub edge: String,
    /// Time since the last heartbeat.
    pub silent_ms: u64,
    /// Backlog last reported.
    pub backlog: u64,
}

/// `edge.restored`: a heartbeat from an edge recorded lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeRestored {
    pub edge: String,
    /// Time since the loss was recorded.
    pub outage_ms: u64,
    pub backlog: u64,
}

/// `agent.registered` and `agent.seen`: which agent of which edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentRef {
    pub edge: String,
    pub agent: String,
}

/// `agent.quiet`: an agent without an event for a while.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentQuiet {
    pub edge: String,
    pub agent: String,
    /// RFC 3339 time of its last event (empty when unknown).
    pub last_seen: String,
}

/// `outbox.expelled`: an edge's cumulative expulsion counter of one reason changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxExpelled {
    pub edge: String,
    /// `max_age` or `max_bytes`.
    pub reason: String,
    /// Expelled since the last record.
    pub count: u64,
    /// The edge's counter.
    pub total: u64,
}

/// `dlq.dead-lettered`. Which optional members a record carries depends on where the
/// dead letter was made: a consumer's (`consumer`, `subject`, `ce_id`, `deliveries`,
/// `error`, `dlq_seq`), a bundle the lander refused (`subject`, `consumer`), or an event
/// the edge dead-lettered (`edge`, `by: "edge"`). Absent members are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadLettered {
    /// Stream and sequence of the original message.
    pub stream: String,
    pub seq: u64,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ce_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Sequence of the dead letter in `MESH_DLQ`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlq_seq: Option<u64>,
    /// `edge` when the edge made the dead letter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// `dlq.redriven`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Redriven {
    pub count: u64,
    /// DLQ sequences redriven.
    pub ids: Vec<u64>,
    pub filter: String,
    /// The subject they went to, when not their original one.
    pub to: Option<String>,
}

/// `dlq.purged`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Purged {
    pub count: u64,
    pub filter: String,
}

/// `replay.run`: the range asked for, the target and how many messages went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplayRun {
    pub stream: String,
    /// Subject filter, empty for all.
    pub subject: String,
    pub from_seq: Option<u64>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub to_seq: Option<u64>,
    pub republish: Option<String>,
    pub count: u64,
}

/// `lander.edge-held`: the lander cannot read the high-water mark of `edge` and puts its
/// bundles back until it can (nothing of the edge lands, nothing is skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeHeld {
    pub edge: String,
    /// What is unreadable, e.g. `last event of mesh.evt.e9.> (MESH_EVENTS seq 7) has
    /// ce-meshseq "not-a-number"`.
    pub reason: String,
    /// Stream and sequence of the message that holds the unreadable value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `lander.edge-released`: the mark of a held edge is readable again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeReleased {
    pub edge: String,
    /// The mark read.
    pub mark: u64,
}

/// `stream.updated`: a central hub changed the settings of an existing stream (or KV
/// bucket) to its configuration, because the operator allowed it
/// (`--apply-stream-changes` or `streams.apply_changes`). One record per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamUpdated {
    pub hub: String,
    /// The stream's name, e.g. `MESH_EVENTS` (`KV_MESH_LANDER` for the bucket).
    pub stream: String,
    /// Every setting changed, in the order the hub compares them.
    pub changes: Vec<StreamChange>,
}

/// One setting of a [`StreamUpdated`]: its nats-server name and both values, as the hub
/// prints them (e.g. `max_age`, `0s`, `1h`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamChange {
    pub field: String,
    pub old: String,
    pub new: String,
}

/// One table, three directions: the variant, its payload and its kind.
macro_rules! audit_events {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $kind:ident, )*) => {
        /// An audit record's `kind` and `fields`, typed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum AuditEvent {
            $( $(#[$doc])* $variant($payload), )*
            /// A kind this version does not know, kept as it was written.
            Other { kind: String, fields: Map<String, Value> },
        }

        impl AuditEvent {
            /// The record kind, e.g. `edge.lost`.
            pub fn kind(&self) -> &str {
                match self {
                    $( AuditEvent::$variant(_) => kind::$kind, )*
                    AuditEvent::Other { kind, .. } => kind,
                }
            }

            /// The record's `fields`.
            pub fn to_fields(&self) -> Map<String, Value> {
                match self {
                    $( AuditEvent::$variant(p) => object(p), )*
                    AuditEvent::Other { fields, .. } => fields.clone(),
                }
            }

            /// Reads `kind` and `fields` of a record (see the module doc for leniency).
            pub fn from_parts(
                kind: &str,
                fields: &Map<String, Value>,
            ) -> Result<AuditEvent, SchemaError> {
                match kind {
                    $( kind::$kind => payload(kind, fields).map(AuditEvent::$variant), )*
                    _ => Ok(AuditEvent::Other {
                        kind: kind.to_string(),
                        fields: fields.clone(),
                    }),
                }
            }
        }
    };
}

audit_events! {
    HubStarted(HubStarted) = HUB_STARTED,
    ConfigApplied(ConfigApplied) = CONFIG_APPLIED,
    EdgeConnected(EdgeConnected) = EDGE_CONNECTED,
    EdgeLost(EdgeLost) = EDGE_LOST,
    EdgeRestored(EdgeRestored) = EDGE_RESTORED,
    /// The first event of an agent the registry has never seen.
    AgentRegistered(AgentRef) = AGENT_REGISTERED,
    /// An agent recorded quiet publishes again.
    AgentSeen(AgentRef) = AGENT_SEEN,
    AgentQuiet(AgentQuiet) = AGENT_QUIET,
    OutboxExpelled(OutboxExpelled) = OUTBOX_EXPELLED,
    DeadLettered(DeadLettered) = DLQ_DEAD_LETTERED,
    Redriven(Redriven) = DLQ_REDRIVEN,
    Purged(Purged) = DLQ_PURGED,
    ReplayRun(ReplayRun) = REPLAY_RUN,
    LanderEdgeHeld(EdgeHeld) = LANDER_EDGE_HELD,
    LanderEdgeReleased(EdgeReleased) = LANDER_EDGE_RELEASED,
    StreamUpdated(StreamUpdated) = STREAM_UPDATED,
}

fn object<T: Serialize>(payload: &T) -> Map<String, Value> {
    match serde_json::to_value(payload) {
        Ok(Value::Object(m)) => m,
        // Every payload is a struct of strings, numbers, options and lists of them.
        other => unreachable!("an audit payload encoded as {other:?}"),
    }
}

fn payload<T: DeserializeOwned>(kind: &str, fields: &Map<String, Value>) -> Result<T, SchemaError> {
    serde_json::from_value(Value::Object(fields.clone())).map_err(|e| SchemaError::AuditFields {
        kind: kind.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// One event of every kind, with every member set.
    fn every_kind() -> Vec<AuditEvent> {
        let s = |x: &str| x.to_string();
        vec![
            AuditEvent::HubStarted(HubStarted { hub: s("c0") }),
            AuditEvent::ConfigApplied(ConfigApplied {
                hub: s("c0"),
                sha256: s("ab"),
                config: s("a = 1\n"),
            }),
            AuditEvent::EdgeConnected(EdgeConnected {
                edge: s("e1"),
                backlog: 3,
            }),
            AuditEvent::EdgeLost(EdgeLost {
                edge: s("e1"),
                silent_ms: 2600,
                backlog: 4,
            }),
            AuditEvent::EdgeRestored(EdgeRestored {
                edge: s("e1"),
                outage_ms: 900,
                backlog: 5,
            }),
            AuditEvent::AgentRegistered(AgentRef {
                edge: s("e1"),
                agent: s("a1"),
            }),
            AuditEvent::AgentSeen(AgentRef {
                edge: s("e1"),
                agent: s("a1"),
            }),
            AuditEvent::AgentQuiet(AgentQuiet {
                edge: s("e1"),
                agent: s("a1"),
                last_seen: s("2025-01-02T03:04:05Z"),
            }),
            AuditEvent::OutboxExpelled(OutboxExpelled {
                edge: s("e1"),
                reason: s("max_bytes"),
                count: 2,
                total: 7,
            }),
            AuditEvent::DeadLettered(DeadLettered {
                stream: s("MESH_EVENTS"),
                seq: 9,
                reason: s("max-deliveries"),
                consumer: Some(s("w")),
                subject: Some(s("mesh.evt.e1.x")),
                ce_id: Some(s("id")),
                deliveries: Some(3),
                error: Some(s("boom")),
                dlq_seq: Some(1),
                ..DeadLettered::default()
            }),
            AuditEvent::Redriven(Redriven {
                count: 2,
                ids: vec![1, 2],
                filter: s(">"),
                to: None,
            }),
            AuditEvent::Purged(Purged {
                count: 2,
                filter: s("e1.>"),
            }),
            AuditEvent::ReplayRun(ReplayRun {
                stream: s("MESH_EVENTS"),
                subject: String::new(),
                from_seq: Some(2),
                since: None,
                until: None,
                to_seq: None,
                republish: Some(s("x.y")),
                count: 5,
            }),
            AuditEvent::StreamUpdated(StreamUpdated {
                hub: s("c0"),
                stream: s("MESH_EVENTS"),
                changes: vec![StreamChange {
                    field: s("max_age"),
                    old: s("0s"),
                    new: s("1h"),
                }],
            }),
            AuditEvent::Other {
                kind: s("future.kind"),
                fields: fields(json!({"x": 1})),
            },
        ]
    }

    #[test]
    fn typed_to_fields_to_typed_is_the_identity() {
        for ev in every_kind() {
            let back = AuditEvent::from_parts(ev.kind(), &ev.to_fields()).unwrap();
            assert_eq!(back, ev);
        }
    }

    /// The `fields` today's writers put on the wire (literal JSON, as in the records of a
    /// running mesh) decode into the right variant, and encoding the variant gives the
    /// same members back: no writer's field names changed.
    #[test]
    fn records_as_written_today_decode_into_their_variant() {
        let cases = [
            (
                "config.applied",
                json!({"hub": "c0", "sha256": "ab", "config": "x = 1\n"}),
            ),
            ("edge.connected", json!({"edge": "e1", "backlog": 0})),
            (
                "edge.lost",
                json!({"edge": "e1", "silent_ms": 2501, "backlog": 12}),
            ),
            (
                "edge.restored",
                json!({"edge": "e1", "outage_ms": 4000, "backlog": 12}),
            ),
            (
                "outbox.expelled",
                json!({"edge": "e1", "reason": "max_bytes", "count": 3, "total": 10}),
            ),
            ("agent.registered", json!({"edge": "e1", "agent": "a1"})),
            ("agent.seen", json!({"edge": "e1", "agent": "a1"})),
            (
                "agent.quiet",
                json!({"edge": "e1", "agent": "a1", "last_seen": "2025-01-02T03:04:05.000001Z"}),
            ),
            (
                "dlq.dead-lettered",
                json!({"stream": "MESH_EVENTS", "seq": 2, "consumer": "worker",
                       "subject": "mesh.evt.e1.jobs.run", "ce_id": "0190", "reason": "max-deliveries",
                       "deliveries": 3, "error": "cannot parse poison", "dlq_seq": 1}),
            ),
            (
                "dlq.dead-lettered",
                json!({"stream": "MESH_INGRESS", "seq": 7, "subject": "mesh.up.e1",
                       "consumer": "lander", "reason": "bad-bundle: x"}),
            ),
            (
                "dlq.dead-lettered",
                json!({"stream": "MESH_INGRESS", "edge": "e1", "seq": 4,
                       "reason": "refused-by-centre: too big", "by": "edge"}),
            ),
            (
                "dlq.redriven",
                json!({"count": 1, "ids": [3], "filter": ">", "to": null}),
            ),
            ("dlq.purged", json!({"count": 1, "filter": "e1.>"})),
            (
                "replay.run",
                json!({"stream": "MESH_EVENTS", "subject": "", "from_seq": 2, "since": null,
                       "until": null, "to_seq": null, "republish": null, "count": 4}),
            ),
            (
                "lander.edge-held",
                json!({"edge": "e9", "reason": "last message of mesh.evt.e9.> has no ce-meshseq",
                       "stream": "MESH_EVENTS", "seq": 7}),
            ),
            ("lander.edge-released", json!({"edge": "e9", "mark": 0})),
            (
                "stream.updated",
                json!({"hub": "c0", "stream": "MESH_EVENTS", "changes": [
                    {"field": "num_replicas", "old": "3", "new": "1"},
                    {"field": "max_age", "old": "0s", "new": "1h"}]}),
            ),
        ];
        for (kind, v) in cases {
            let f = fields(v);
            let ev = AuditEvent::from_parts(kind, &f).unwrap();
            assert_eq!(ev.kind(), kind);
            assert!(!matches!(ev, AuditEvent::Other { .. }), "{kind}");
            assert_eq!(ev.to_fields(), f, "{kind}");
        }
        let ev = AuditEvent::from_parts(
            "outbox.expelled",
            &fields(json!({"edge": "e1", "reason": "max_age", "count": 3, "total": 10})),
        )
        .unwrap();
        assert_eq!(
            ev,
            AuditEvent::OutboxExpelled(OutboxExpelled {
                edge: "e1".into(),
                reason: "max_age".into(),
                count: 3,
                total: 10,
            })
        );
    }

    #[test]
    fn unknown_kinds_and_members_do_not_fail() {
        let f = fields(json!({"anything": [1, 2]}));
        assert_eq!(
            AuditEvent::from_parts("hub.rebooted", &f).unwrap(),
            AuditEvent::Other {
                kind: "hub.rebooted".into(),
                fields: f.clone()
            }
        );
        // A known kind with a member it does not know, and one missing.
        let ev = AuditEvent::from_parts("edge.lost", &fields(json!({"edge": "e1", "new": true})))
            .unwrap();
        assert_eq!(
            ev,
            AuditEvent::EdgeLost(EdgeLost {
                edge: "e1".into(),
                ..EdgeLost::default()
            })
        );
    }

    #[test]
    fn a_member_of_the_wrong_type_names_the_kind() {
        let err =
            AuditEvent::from_parts("dlq.purged", &fields(json!({"count": "many"}))).unwrap_err();
        assert!(matches!(&err, SchemaError::AuditFields { kind, .. } if kind == "dlq.purged"));
        assert!(err.to_string().contains("dlq.purged"), "{err}");
    }
}
