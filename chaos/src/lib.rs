//! Fault injection for agentmesh, in the shape of producer + fault schedule + judge.
//!
//! - [`proxy::FaultProxy`] (now in `mesh_testkit`, re-exported while the harness moves
//!   there): an in-process TCP proxy on the leaf link between an edge and
//!   the central nats-server: black hole (both ways or the return path only), reset,
//!   latency, bandwidth.
//! - [`producer`]: agents publishing at a set rate, recording every acknowledged `ce-id`
//!   in order and the data it carried (the oracle).
//! - [`judge`]: reads what reached `MESH_EVENTS` and checks it against the oracle: lost,
//!   duplicated, reordered or corrupted events.
//! - [`harness`]: a whole mesh of real processes (central nats-server and hubs, N edge
//!   sites each behind its own proxy), with waits on metrics and the streams.
//! - [`scenarios`]: seeded fault schedules run against a [`harness::Mesh`] under load,
//!   judged and reported (what `mesh chaos run` prints).

pub mod harness;
pub mod judge;
pub use mesh_testkit::process;
pub mod producer;
pub use mesh_testkit::proxy;
pub mod scenarios;

pub use harness::{Mesh, MeshSpec};
pub use judge::{read_stream, Verdict};
pub use process::MeshProcess;
pub use producer::{produce, AgentLog};
pub use proxy::{FaultProxy, LinkState};
