//! Header names of the CloudEvents NATS binding (binary mode) and the mesh extensions.
//! Lower-case, as the binding writes them; NATS header lookup is case-sensitive, so every
//! reader and writer goes through these constants.

pub const SPECVERSION: &str = "ce-specversion";
pub const ID: &str = "ce-id";
pub const SOURCE: &str = "ce-source";
pub const TYPE: &str = "ce-type";
pub const SUBJECT: &str = "ce-subject";
pub const TIME: &str = "ce-time";
pub const CONTENT_TYPE: &str = "content-type";
pub const DATASCHEMA: &str = "ce-dataschema";
pub const CORRELATION_ID: &str = "ce-correlationid";
pub const CAUSATION_ID: &str = "ce-causationid";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// Mesh extension: the edge that accepted the event.
pub const MESH_EDGE: &str = "ce-meshedge";
/// Mesh extension: the edge's own gap-free sequence number of the event.
pub const MESH_SEQ: &str = "ce-meshseq";
/// JetStream de-duplication id; always equal to `ce-id` on an event.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// On an ingest error reply: the machine-readable error code.
pub const MESH_ERROR: &str = "mesh-error";
/// On a bundle: the first and last edge sequence it covers, for tools reading `MESH_INGRESS`.
pub const MESH_FIRST_SEQ: &str = "mesh-first-seq";
pub const MESH_LAST_SEQ: &str = "mesh-last-seq";

/// The CloudEvents version the mesh speaks.
pub const SPECVERSION_1_0: &str = "1.0";
