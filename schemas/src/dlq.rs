//! Wire types of dead-lettering (JSON on core NATS subjects under `mesh.hub.dlq.`).

use serde::{Deserialize, Serialize};

/// Which message: a stream sequence as seen by one durable consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageRef {
    pub stream: String,
    pub consumer: String,
    pub seq: u64,
}

/// An agent's report of a failed delivery (fire and forget).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureNote {
    pub msg: MessageRef,
    pub deliveries: u64,
    pub error: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// A request to dead-letter a message at once (the SDK's `Delivery::reject`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRequest {
    pub msg: MessageRef,
    pub deliveries: u64,
    pub reason: String,
}

/// The answer: the dead letter's sequence in `MESH_DLQ`, or what went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum DeadLetterReply {
    Ok { dlq_seq: u64 },
    Err { message: String },
}
