//! The crate's one error type.
//!
//! Invariants: every variant names the thing that failed and the value involved (a path, a
//! command line, an address, an exit status); failures during a server start carry the tail of
//! the server's log so the cause is visible without opening the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while finding, installing, configuring or running nats-server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment variable naming the binary (`MESH_NATS_SERVER`) points to no file.
    #[error("environment variable {var} names nats-server binary {path:?}, which does not exist")]
    OverrideMissing {
        /// The variable's name.
        var: &'static str,
        /// The path it holds.
        path: PathBuf,
    },

    /// A filesystem operation failed.
    #[error("{action} {path:?}: {source}")]
    Io {
        /// What was being done, e.g. "creating directory".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The installer command could not be run or exited unsuccessfully.
    #[error("installing nats-server failed: `{command}` {outcome}; stderr: {stderr}")]
    Install {
        /// The full command line.
        command: String,
        /// How it ended ("exited with exit status: 1", "could not be started: ...").
        outcome: String,
        /// The command's standard error (trimmed).
        stderr: String,
    },

    /// The installer succeeded but the binary is not where it should be.
    #[error("`{command}` succeeded but left no nats-server binary at {path:?}")]
    InstallNoBinary {
        /// The installer command line.
        command: String,
        /// Where the binary was expected.
        path: PathBuf,
    },

    /// The server configuration is unusable.
    #[error("invalid configuration for server {server:?}: {reason}")]
    InvalidConfig {
        /// The server name.
        server: String,
        /// What is wrong.
        reason: String,
    },

    /// The nats-server process could not be spawned.
    #[error("spawning {binary:?} -c {config:?}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The config file passed with `-c`.
        config: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The server process exited before it became ready.
    #[error("nats-server {server:?} exited during start with {status}; last lines of {log:?}:\n{log_tail}")]
    ExitedDuringStart {
        /// The server name.
        server: String,
        /// The exit status as printed by std.
        status: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },

    /// The server did not become ready in time.
    #[error("nats-server {server:?}: {what} not done within {waited:?}; last lines of {log:?}:\n{log_tail}")]
    StartTimeout {
        /// The server name.
        server: String,
        /// The step that did not finish, e.g. "ports file in /tmp/x".
        what: String,
        /// How long was waited.
        waited: Duration,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },

    /// The ports file the server wrote could not be understood.
    #[error("ports file {path:?} is not usable: {reason}")]
    PortsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A monitoring HTTP request failed or returned something unexpected.
    #[error("monitoring request GET {path} to {addr}: {reason}")]
    Monitor {
        /// The monitoring address.
        addr: SocketAddr,
        /// The request path, e.g. "/varz".
        path: String,
        /// What went wrong.
        reason: String,
    },

    /// An operation needs the server to be running but it is not.
    #[error("nats-server {server:?} is not running")]
    NotRunning {
        /// The server name.
        server: String,
    },

    /// A condition polled for did not hold within its deadline.
    #[error("waiting for {what} on nats-server {server:?}: not reached within {waited:?} (last seen: {last})")]
    WaitTimeout {
        /// The server name.
        server: String,
        /// The condition, e.g. "1 leafnode connection(s)".
        what: String,
        /// How long was waited.
        waited: Duration,
        /// The last observed value or error.
        last: String,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
