//! Fault injection for agentmesh, in the shape of producer + fault schedule + judge.
//!
//! - [`producer`]: agents publishing at a set rate, recording every acknowledged `ce-id`
//!   in order and the data it carried (the oracle).
//! - [`judge`]: reads what reached `MESH_EVENTS` and checks it against the oracle: lost,
//!   duplicated, reordered or corrupted events.
//! - [`scenarios`]: seeded fault schedules run under load against a mesh of real
//!   processes assembled by the test kit (`mesh_testkit::MeshBuilder`, with a fault proxy
//!   on every leaf link), judged and reported (what `mesh chaos run` prints).

pub mod judge;
pub mod producer;
pub mod scenarios;

pub use judge::{read_stream, Verdict};
pub use producer::{produce, AgentLog};
