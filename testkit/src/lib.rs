//! The agentmesh test kit: what the tests, the benchmark, the chaos suite and `mesh up`
//! use to run a mesh of real processes. Not the product: nothing here is deployed.
//!
//! - [`mesh`]: [`MeshBuilder`], the one way to assemble a mesh (nats-servers, fault
//!   proxies, hub processes), and the running [`Mesh`] with waits on its metrics and
//!   streams.
//! - [`args`]: typed command lines of `mesh edge` and `mesh central`.
//! - [`process`]: a `mesh` hub as a restartable child process ([`MeshProcess`]).
//! - [`proxy`]: the in-process TCP fault proxy on a leaf link ([`FaultProxy`]).
//! - [`metrics`]: the one `/metrics` scraper ([`Scrape`]).
//! - [`wait`]: polls with a deadline ([`wait_until`]).
//! - `faultfs` (cargo feature `faultfs`): the power-loss FUSE filesystem for storage
//!   tests (`FaultFs`).
//!
//! It sits on `mesh-nats`, `schemas` and `agents`, and knows the hubs only by their
//! command line: it depends on no hub crate and on nothing above it.

pub mod args;
mod error;
#[cfg(feature = "faultfs")]
pub mod faultfs;
pub mod mesh;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod wait;

pub use args::{CentralArgs, EdgeArgs, FullPolicy};
pub use error::{BoxError, KitError};
#[cfg(feature = "faultfs")]
pub use faultfs::{Dropped, FaultFs, FaultFsError, FaultStats};
pub use mesh::{free_addr, Hub, Mesh, MeshBuilder, RouteProxy, Site};
pub use metrics::{scrape, scrape_blocking, Scrape};
pub use process::{disk_usage, MeshProcess};
pub use proxy::{FaultProxy, LinkState};
pub use wait::{wait_until, DEADLINE};
