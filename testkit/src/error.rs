//! The kit's one error type: what went wrong while assembling or driving a mesh.

use std::path::PathBuf;
use std::time::Duration;

/// A boxed source error of a NATS client operation (connect, JetStream, agent).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong while building or driving a mesh.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A nats-server could not be started or restarted.
    #[error("nats-server {name}: {source}")]
    Nats {
        /// The server's name (`<mesh name>-central`, `<mesh name>-<edge>`).
        name: String,
        #[source]
        source: Box<mesh_nats::Error>,
    },
    /// A file, directory, socket or child process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file or process.
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A NATS client operation against the mesh failed.
    #[error("{what}: {source}")]
    Client {
        /// What was being done, naming the server or agent.
        what: String,
        #[source]
        source: BoxError,
    },
    /// A condition did not hold before its deadline.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition, e.g. `e1 uplink_up == 1`.
        what: String,
        /// How long was waited.
        waited: Duration,
    },
    /// The mesh was asked to run hubs but given no `mesh` executable to run them from.
    #[error("the mesh has hubs but no executable to run them: call MeshBuilder::exe")]
    NoExe,
    /// A proxy was asked for on a site built with `proxied(false)`.
    #[error("edge site {site} has no fault proxy on its leaf link (the mesh was built with proxied(false))")]
    NotProxied {
        /// The edge id.
        site: String,
    },
    /// A route cut was asked for on a centre built without `route_proxies(true)`.
    #[error("central node {node} has no route proxies (build the mesh with central_nodes(n) and route_proxies(true))")]
    NoRouteProxies {
        /// The node, 1-based.
        node: usize,
    },
    /// A hub was asked for on a mesh built with `hubs(false)`.
    #[error("{what} does not exist: the mesh was built with hubs(false)")]
    NoHub {
        /// Which hub, e.g. `edge hub e1`.
        what: String,
    },
    /// The mesh started but did not become ready; its directory is kept for a look.
    #[error("the mesh in {} did not become ready: {source}\n{logs}", dir.display())]
    NotReady {
        /// The mesh directory (kept).
        dir: PathBuf,
        #[source]
        source: Box<KitError>,
        /// The last lines of every hub's log.
        logs: String,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KitError {
    let what = what.into();
    move |source| KitError::Io { what, source }
}

pub(crate) fn client_err<E>(what: impl Into<String>) -> impl FnOnce(E) -> KitError
where
    E: Into<BoxError>,
{
    let what = what.into();
    move |e| KitError::Client {
        what,
        source: e.into(),
    }
}
