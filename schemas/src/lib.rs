//! Wire types of agentmesh, owned in one place.
//!
//! * [`event`]: the CloudEvents 1.0 envelope ([`Event`]) and its NATS binary-mode
//!   mapping (attributes in headers, data in the payload), both ways.
//! * [`ingest`]: what an agent sends to its edge hub ([`IngestRequest`]) and what it gets
//!   back ([`IngestReply`]).
//! * [`bundle`]: the edge outbox record and the bundle that crosses the leaf link.
//! * [`subject`]: subject builders and the validation of every token that goes into one.
//! * [`headers`]: every header name the mesh writes or reads; [`percent`]: the
//!   percent-encoding of their values.
//! * [`audit`]: the hash-chained audit record, its typed events and [`audit::verify`].
//! * [`dlq`]: dead-letter requests and the dead letter's headers.
//! * [`stream`]: ordered reads of a range of a stream.
//!
//! No other crate of the project hand-writes a header name or a subject; they call these.
//! Every decoding or validation failure is a [`SchemaError`] naming the field and value.

pub mod audit;
pub mod bundle;
pub mod dlq;
pub mod error;
pub mod event;
pub mod headers;
pub mod ingest;
pub mod percent;
pub mod stream;
pub mod subject;
mod wire;

pub use bundle::{Bundle, OutboxRecord};
pub use error::SchemaError;
pub use event::{Event, MessageBuilder};
pub use ingest::{
    BodyFormat, EdgeHello, EdgeStatus, ErrorCode, IngestReply, IngestRequest, Limits, NewEvent,
};
pub use wire::is_json;
