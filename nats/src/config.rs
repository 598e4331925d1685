//! Server configuration: roles, the builder, and rendering of the nats-server config templates.
//!
//! Invariants:
//! - Every listener binds 127.0.0.1; a port of 0 is rendered as `-1` (nats-server's "pick an
//!   ephemeral port") and the real port is learnt from the ports file / `/varz` after start.
//! - Strings put into the config (server name, paths, URLs) are always double-quoted and escaped,
//!   so no value can inject config syntax.
//! - Central: JetStream on, domain `central`, a leafnode listener; optionally one node of a
//!   cluster ([`Cluster`]: a fixed route port, the routes to every other node, mutual TLS on
//!   the routes when secure). Edge: no JetStream, exactly one leafnode remote holding all the
//!   given URLs (every node of a clustered centre).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::ServerAuth;
use crate::tls::TlsFiles;
use crate::Error;

/// The central config template (see the comments inside for the verified keys).
pub const CENTRAL_TEMPLATE: &str = include_str!("../templates/central.conf");
/// The edge config template (see the comments inside for the verified keys).
pub const EDGE_TEMPLATE: &str = include_str!("../templates/edge.conf");

/// Default `max_payload` for both roles: 8 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 8 * 1024 * 1024;

/// Default deadline for a server to become ready.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// What kind of server this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The JetStream hub (domain `central`) with a leafnode listener.
    Central,
    /// A core-NATS edge that connects to central as a leafnode.
    Edge {
        /// Leafnode URLs of the central, e.g. `nats-leaf://127.0.0.1:7422`.
        remotes: Vec<String>,
    },
}

/// Everything needed to start one nats-server. Fields are public; the builder methods are the
/// usual way to set them.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The `server_name`.
    pub name: String,
    /// Central or edge.
    pub role: Role,
    /// Where config, store, ports file and log live; `None` = a fresh temporary directory owned
    /// (and removed on drop) by the server.
    pub dir: Option<PathBuf>,
    /// Client port; 0 = ephemeral.
    pub client_port: u16,
    /// Leafnode listener port (central only); 0 = ephemeral.
    pub leaf_port: u16,
    /// Monitoring HTTP port; 0 = ephemeral.
    pub monitor_port: u16,
    /// `max_payload` in bytes.
    pub max_payload: u32,
    /// The nats-server binary; `None` = [`crate::ensure_binary`].
    pub binary: Option<PathBuf>,
    /// How long [`crate::NatsServer::start`] waits for readiness.
    pub start_timeout: Duration,
    /// Edge only: enable JetStream with this domain (plain NATS's own edge design, which
    /// the benchmark compares agentmesh with). `None` (the default): core NATS only.
    pub edge_jetstream_domain: Option<String>,
    /// Operator-mode auth and TLS; `None` = the insecure mode (no auth, no TLS).
    pub security: Option<Security>,
    /// Central only: this server is one node of a cluster; `None` = a single server.
    pub cluster: Option<Cluster>,
}

/// One node's part of a clustered centre: nats-server `cluster {}` (routes) under a
/// JetStream cluster of the same domain. Every node lists the route URL of every other
/// node, so the cluster forms whichever node starts first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's name (`central` in a mesh): the same on every node.
    pub name: String,
    /// The route listener's port. Fixed (not 0): the other nodes' routes name it before
    /// this node starts.
    pub port: u16,
    /// `nats-route://host:port` of every other node (or of a proxy in front of it).
    pub routes: Vec<String>,
    /// The route address this node tells its peers (`cluster.advertise`), e.g. a proxy's;
    /// `None` = its own listener.
    pub advertise: Option<String>,
}

impl Cluster {
    /// The route URL of the node listening on route port `port` on 127.0.0.1.
    pub fn route_url(port: u16) -> String {
        format!("nats-route://127.0.0.1:{port}")
    }
}

/// Auth and TLS of a secure mesh's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// Operator, accounts and resolver preload.
    pub auth: ServerAuth,
    /// Certificate and key presented on the client and leafnode ports.
    pub tls: TlsFiles,
    /// Edge only: the edge site's leaf credential (mesh account).
    pub leaf_creds: Option<PathBuf>,
    /// Edge only: the edge site's system-account leaf credential (claim lookups and
    /// updates, so a revocation reaches the edge).
    pub sys_leaf_creds: Option<PathBuf>,
}

impl ServerConfig {
    fn new(name: &str, role: Role) -> Self {
        ServerConfig {
            name: name.to_string(),
            role,
            dir: None,
            client_port: 0,
            leaf_port: 0,
            monitor_port: 0,
            max_payload: DEFAULT_MAX_PAYLOAD,
            binary: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            edge_jetstream_domain: None,
            security: None,
            cluster: None,
        }
    }

    /// Central only: run as one node of `cluster`.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// A central server: JetStream enabled, domain `central`, a leafnode listener.
    pub fn central(name: &str) -> Self {
        Self::new(name, Role::Central)
    }

    /// An edge server: core NATS only, one leafnode remote with the given URLs.
    pub fn edge(name: &str, remotes: Vec<String>) -> Self {
        Self::new(name, Role::Edge { remotes })
    }

    /// Edge only: run JetStream at the edge with domain `domain` (for the native-NATS
    /// comparison of `mesh bench`; agentmesh edges never do).
    pub fn edge_jetstream(mut self, domain: &str) -> Self {
        self.edge_jetstream_domain = Some(domain.to_string());
        self
    }

    /// Run in operator mode with TLS (see [`Security`]).
    pub fn security(mut self, security: Security) -> Self {
        self.security = Some(security);
        self
    }

    /// Directory for config, store, ports file and log (created if missing; kept on drop).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Client port; 0 = ephemeral (the default).
    pub fn client_port(mut self, port: u16) -> Self {
        self.client_port = port;
        self
    }

    /// Leafnode listener port (central only; ignored for edges); 0 = ephemeral (the default).
    pub fn leaf_port(mut self, port: u16) -> Self {
        self.leaf_port = port;
        self
    }

    /// Monitoring HTTP port; 0 = ephemeral (the default).
    pub fn monitor_port(mut self, port: u16) -> Self {
        self.monitor_port = port;
        self
    }

    /// `max_payload` in bytes; default 8 MiB.
    pub fn max_payload(mut self, bytes: u32) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Use this nats-server binary instead of [`crate::ensure_binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Readiness deadline for start and restart; default 10 s.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Check the configuration for values nats-server would reject or misread.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidConfig {
            server: self.name.clone(),
            reason,
        };
        if self.name.is_empty() {
            return Err(invalid("server name is empty".into()));
        }
        if self
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(format!(
                "server name {:?} contains whitespace or control characters",
                self.name
            )));
        }
        if self.max_payload == 0 {
            return Err(invalid("max_payload is 0".into()));
        }
        if let Some(c) = &self.cluster {
            if self.role != Role::Central {
                return Err(invalid(
                    "only a central server can be a cluster node".into(),
                ));
            }
            if c.port == 0 {
                return Err(invalid(
                    "cluster port is 0; the other nodes' routes need a fixed port".into(),
                ));
            }
            if c.name.is_empty()
                || c.name
                    .chars()
                    .any(|ch| !ch.is_ascii_alphanumeric() && ch != '-' && ch != '_')
            {
                return Err(invalid(format!(
                    "cluster name {:?} must be letters, digits, '-' or '_'",
                    c.name
                )));
            }
            for url in c.routes.iter().chain(&c.advertise) {
                if url.is_empty() || url.chars().any(char::is_whitespace) {
                    return Err(invalid(format!(
                        "cluster route {url:?} is not host:port or a URL"
                    )));
                }
            }
        }
        if let Role::Edge { remotes } = &self.role {
            if remotes.is_empty() {
                return Err(invalid("edge has no leafnode remote URLs".into()));
            }
            for url in remotes {
                if !url.contains("://") || url.chars().any(|c| c.is_whitespace()) {
                    return Err(invalid(format!(
                        "leafnode remote URL {url:?} is not of the form scheme://host:port"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Render the config file text for a server whose files live in `dir`.
    /// Ports are the concrete ones to use (0 = ephemeral).
    pub fn render(&self, dir: &Path, ports: Ports) -> String {
        let template = match self.role {
            Role::Central => CENTRAL_TEMPLATE,
            Role::Edge { .. } => EDGE_TEMPLATE,
        };
        let remotes = match &self.role {
            Role::Edge { remotes } => self.remote_entries(remotes),
            Role::Central => String::new(),
        };
        template
            .replace("{{server_name}}", &quote(&self.name))
            .replace("{{port}}", &port_value(ports.client))
            .replace("{{http_port}}", &port_value(ports.monitor))
            .replace("{{leaf_port}}", &port_value(ports.leaf))
            .replace("{{max_payload}}", &self.max_payload.to_string())
            .replace("{{store_dir}}", &quote(&store_dir(dir).to_string_lossy()))
            .replace("{{ports_file_dir}}", &quote(&dir.to_string_lossy()))
            .replace("{{remotes}}", &remotes)
            .replace("{{jetstream}}", &self.edge_jetstream_block(dir))
            .replace("{{security}}", &self.security_block(dir))
            .replace("{{leaf_tls}}", &self.leaf_tls_block())
            .replace("{{cluster}}", &self.cluster_block())
    }
}

impl ServerConfig {
    /// The leafnode remotes of an edge: one to the mesh account (all URLs), and in secure
    /// mode a second for the system account, both with credentials and TLS.
    fn remote_entries(&self, urls: &[String]) -> String {
        let urls = urls.iter().map(|u| quote(u)).collect::<Vec<_>>().join(", ");
        let Some(sec) = &self.security else {
            return format!("{{ urls: [ {urls} ], compression: s2_fast }}");
        };
        let tls = format!(
            "tls {{ ca_file: {} }}",
            quote(&sec.tls.ca.to_string_lossy())
        );
        let mut out = String::new();
        let mut remote = |account: &str, creds: &Option<PathBuf>| {
            out.push_str(&format!(
                "{{ urls: [ {urls} ], account: {}, {}{tls}, compression: s2_fast }}\n    ",
                quote(account),
                creds
                    .as_ref()
                    .map(|c| format!("credentials: {}, ", quote(&c.to_string_lossy())))
                    .unwrap_or_default()
            ));
        };
        remote(&sec.auth.mesh_account, &sec.leaf_creds);
        if sec.sys_leaf_creds.is_some() {
            remote(&sec.auth.system_account, &sec.sys_leaf_creds);
        }
        out.trim_end().to_string()
    }

    /// Operator mode (resolver with the accounts preloaded) and TLS on the client port.
    /// The centre runs the full resolver (it takes claim updates); an edge a cache one,
    /// fed over its system-account leaf link.
    fn security_block(&self, dir: &Path) -> String {
        let Some(sec) = &self.security else {
            return "# insecure: no authentication, no TLS\n".to_string();
        };
        let resolver_dir = quote(&dir.join("jwt").to_string_lossy());
        let resolver = match self.role {
            Role::Central => format!(
                "resolver {{ type: full, dir: {resolver_dir}, allow_delete: false, interval: \"2m\" }}"
            ),
            Role::Edge { .. } => format!(
                "resolver {{ type: cache, dir: {resolver_dir}, ttl: \"1h\", limit: 1000 }}"
            ),
        };
        let preload = sec
            .auth
            .preload
            .iter()
            .map(|(k, jwt)| format!("  {}: {}", quote(k), quote(jwt)))
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "operator: {}\nsystem_account: {}\n{resolver}\nresolver_preload: {{\n{preload}\n}}\n\
             tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 5\n}}\n",
            quote(&sec.auth.operator_jwt),
            quote(&sec.auth.system_account),
            quote(&sec.tls.cert.to_string_lossy()),
            quote(&sec.tls.key.to_string_lossy()),
        )
    }

    /// The `cluster {}` block of a cluster node: listener, name, routes; when secure, mutual
    /// TLS on the routes (`verify: true`: a node must present a certificate of the mesh CA,
    /// so nothing but the mesh's own servers can join).
    fn cluster_block(&self) -> String {
        let Some(c) = &self.cluster else {
            return "# a single server: no cluster".to_string();
        };
        let routes = c
            .routes
            .iter()
            .map(|r| quote(r))
            .collect::<Vec<_>>()
            .join(", ");
        let advertise = c
            .advertise
            .as_ref()
            .map(|a| format!("\n  advertise: {}", quote(a)))
            .unwrap_or_default();
        let tls = match &self.security {
            Some(sec) => format!(
                "\n  tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true, timeout: 5 }}",
                quote(&sec.tls.cert.to_string_lossy()),
                quote(&sec.tls.key.to_string_lossy()),
                quote(&sec.tls.ca.to_string_lossy())
            ),
            None => String::new(),
        };
        format!(
            "cluster {{\n  name: {}\n  listen: 127.0.0.1:{}{advertise}\n  routes: [ {routes} ]{tls}\n}}",
            quote(&c.name),
            c.port
        )
    }

    /// TLS on the centre's leafnode listener (required of every leaf connection).
    fn leaf_tls_block(&self) -> String {
        match &self.security {
            Some(sec) => format!(
                "tls {{ cert_file: {}, key_file: {}, timeout: 5 }}",
                quote(&sec.tls.cert.to_string_lossy()),
                quote(&sec.tls.key.to_string_lossy())
            ),
            None => String::new(),
        }
    }

    fn edge_jetstream_block(&self, dir: &Path) -> String {
        match (&self.role, &self.edge_jetstream_domain) {
            (Role::Edge { .. }, Some(domain)) => format!(
                "jetstream {{\n  domain: {}\n  store_dir: {}\n}}\n",
                quote(domain),
                quote(&store_dir(dir).to_string_lossy())
            ),
            _ => String::new(),
        }
    }
}

/// Ports to put into a config; 0 = ephemeral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ports {
    /// Client port.
    pub client: u16,
    /// Leafnode listener port (central).
    pub leaf: u16,
    /// Monitoring port.
    pub monitor: u16,
}

/// The JetStream store directory of a server living in `dir`.
pub fn store_dir(dir: &Path) -> PathBuf {
    dir.join("store")
}

fn port_value(port: u16) -> String {
    if port == 0 {
        "-1".to_string()
    } else {
        port.to_string()
    }
}

/// A double-quoted, escaped nats-server config string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn central_render_has_no_placeholders() {
        let cfg = ServerConfig::central("c1").client_port(4222);
        let text = cfg.render(
            Path::new("/tmp/x"),
            Ports {
                client: 4222,
                leaf: 0,
                monitor: 0,
            },
        );
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("listen: 127.0.0.1:4222"));
        assert!(text.contains("listen: 127.0.0.1:-1"));
        assert!(text.contains("store_dir: \"/tmp/x/store\""));
        assert!(text.contains("max_payload: 8388608"));
        assert!(text.contains("domain: central"));
    }

    #[test]
    fn edge_render_lists_remotes_and_no_jetstream() {
        let cfg = ServerConfig::edge(
            "e1",
            vec![
                "nats-leaf://127.0.0.1:1".into(),
                "nats-leaf://127.0.0.1:2".into(),
            ],
        )
        .max_payload(1024);
        let text = cfg.render(Path::new("/d"), Ports::default());
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains(r#"urls: [ "nats-leaf://127.0.0.1:1", "nats-leaf://127.0.0.1:2" ]"#));
        assert!(!text.contains("jetstream {"));
        assert!(text.contains("max_payload: 1024"));
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn validation() {
        assert!(ServerConfig::edge("e", vec![]).validate().is_err());
        assert!(ServerConfig::edge("e", vec!["127.0.0.1:1".into()])
            .validate()
            .is_err());
        assert!(ServerConfig::central("a b").validate().is_err());
        assert!(ServerConfig::central("c").validate().is_ok());
    }
}
