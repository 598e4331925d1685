//! Fault injectors for agentmesh.
//!
//! This crate holds the tools the chaos and end-to-end tests use to break the mesh on purpose:
//!
//! - [`proxy::FaultProxy`]: an in-process TCP proxy placed on the leaf link between an edge and
//!   the central NATS server, able to black-hole, reset, delay and throttle the link.
//!
//! More injectors will join it (a producer/judge harness that drives traffic through a fault
//! schedule and checks what arrived).

pub mod proxy;

pub use proxy::{FaultProxy, LinkState};
