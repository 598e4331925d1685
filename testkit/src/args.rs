//! Typed command lines of `mesh edge` and `mesh central`, rendered to the argument
//! vector a child process is started with.
//!
//! These are the one place the kit spells a hub flag: a flag added to the hubs (several
//! `--nats` URLs, credentials, TLS files) is added here once, as an optional field and a
//! setter, and every mesh the kit assembles can use it. The kit renders strings and does
//! not depend on the hub crates: the hubs parse and validate what they are given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mesh_nats::client::ClientAuth;

/// What an edge hub does when its outbox is full (`--full-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Refuse new events with `outbox_full`.
    Reject,
    /// Expel the oldest events to take new ones.
    DropOldest,
}

impl FullPolicy {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            FullPolicy::Reject => "reject",
            FullPolicy::DropOldest => "drop-oldest",
        }
    }
}

/// `mesh edge --nats URL --id EDGE --data-dir DIR [--http ADDR] [--config FILE]
/// [--outbox-max-bytes N] [--full-policy P] [--creds FILE] [--tls-ca FILE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeArgs {
    nats: String,
    id: String,
    data_dir: PathBuf,
    http: Option<SocketAddr>,
    config: Option<PathBuf>,
    outbox_max_bytes: Option<u64>,
    full_policy: Option<FullPolicy>,
    auth: ClientAuth,
}

impl EdgeArgs {
    /// An edge hub `id` on the edge nats-server at `nats`, its outbox in `data_dir`.
    pub fn new(nats: impl Into<String>, id: impl Into<String>, data_dir: &Path) -> EdgeArgs {
        EdgeArgs {
            nats: nats.into(),
            id: id.into(),
            data_dir: data_dir.to_path_buf(),
            http: None,
            config: None,
            outbox_max_bytes: None,
            full_policy: None,
            auth: ClientAuth::none(),
        }
    }

    /// Serve `/metrics` and `/health/*` on `addr`.
    pub fn http(mut self, addr: SocketAddr) -> EdgeArgs {
        self.http = Some(addr);
        self
    }

    /// Read the TOML configuration `path` (flags override it).
    pub fn config(mut self, path: &Path) -> EdgeArgs {
        self.config = Some(path.to_path_buf());
        self
    }

    /// The outbox byte limit.
    pub fn outbox_max_bytes(mut self, bytes: u64) -> EdgeArgs {
        self.outbox_max_bytes = Some(bytes);
        self
    }

    /// What a full outbox does.
    pub fn full_policy(mut self, policy: FullPolicy) -> EdgeArgs {
        self.full_policy = Some(policy);
        self
    }

    /// Connect with these credentials (`--creds`, `--tls-ca`).
    pub fn auth(mut self, auth: ClientAuth) -> EdgeArgs {
        self.auth = auth;
        self
    }

    /// The argument vector, starting with the subcommand: `["edge", "--nats", …]`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "edge".to_string(),
            "--nats".into(),
            self.nats.clone(),
            "--id".into(),
            self.id.clone(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ];
        if let Some(h) = self.http {
            a.extend(["--http".into(), h.to_string()]);
        }
        if let Some(c) = &self.config {
            a.extend(["--config".into(), c.display().to_string()]);
        }
        if let Some(b) = self.outbox_max_bytes {
            a.extend(["--outbox-max-bytes".into(), b.to_string()]);
        }
        if let Some(p) = self.full_policy {
            a.extend(["--full-policy".into(), p.as_str().into()]);
        }
        auth_args(&self.auth, &mut a);
        a
    }
}

/// `mesh central --nats URL [--hub-id ID] [--http ADDR] [--config FILE] [--creds FILE]
/// [--tls-ca FILE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralArgs {
    nats: String,
    hub_id: Option<String>,
    http: Option<SocketAddr>,
    config: Option<PathBuf>,
    apply_stream_changes: bool,
    auth: ClientAuth,
}

impl CentralArgs {
    /// A central hub on the central nats-server at `nats`.
    pub fn new(nats: impl Into<String>) -> CentralArgs {
        CentralArgs {
            nats: nats.into(),
            hub_id: None,
            http: None,
            config: None,
            apply_stream_changes: false,
            auth: ClientAuth::none(),
        }
    }

    /// Let the hub change existing streams that differ from its configuration
    /// (`--apply-stream-changes`).
    pub fn apply_stream_changes(mut self) -> CentralArgs {
        self.apply_stream_changes = true;
        self
    }

    /// Connect with these credentials (`--creds`, `--tls-ca`).
    pub fn auth(mut self, auth: ClientAuth) -> CentralArgs {
        self.auth = auth;
        self
    }

    /// The hub's name in heartbeats and logs.
    pub fn hub_id(mut self, id: impl Into<String>) -> CentralArgs {
        self.hub_id = Some(id.into());
        self
    }

    /// Serve `/metrics` and `/health/*` on `addr`.
    pub fn http(mut self, addr: SocketAddr) -> CentralArgs {
        self.http = Some(addr);
        self
    }

    /// Read the TOML configuration `path` (flags override it).
    pub fn config(mut self, path: &Path) -> CentralArgs {
        self.config = Some(path.to_path_buf());
        self
    }

    /// The argument vector, starting with the subcommand: `["central", "--nats", …]`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["central".to_string(), "--nats".into(), self.nats.clone()];
        if let Some(id) = &self.hub_id {
            a.extend(["--hub-id".into(), id.clone()]);
        }
        if let Some(c) = &self.config {
            a.extend(["--config".into(), c.display().to_string()]);
        }
        if let Some(h) = self.http {
            a.extend(["--http".into(), h.to_string()]);
        }
        if self.apply_stream_changes {
            a.push("--apply-stream-changes".into());
        }
        auth_args(&self.auth, &mut a);
        a
    }
}

/// `--creds FILE` and `--tls-ca FILE` when set.
fn auth_args(auth: &ClientAuth, a: &mut Vec<String>) {
    if let Some(c) = &auth.creds {
        a.extend(["--creds".into(), c.display().to_string()]);
    }
    if let Some(c) = &auth.tls_ca {
        a.extend(["--tls-ca".into(), c.display().to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_args_render_every_flag_given() {
        let http: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        let a = EdgeArgs::new("nats://127.0.0.1:1", "e1", Path::new("/d/e1-data"));
        assert_eq!(
            a.to_args(),
            [
                "edge",
                "--nats",
                "nats://127.0.0.1:1",
                "--id",
                "e1",
                "--data-dir",
                "/d/e1-data"
            ]
        );
        let full = a
            .http(http)
            .config(Path::new("/d/edge.toml"))
            .outbox_max_bytes(200_000)
            .full_policy(FullPolicy::DropOldest)
            .to_args();
        assert_eq!(
            full[7..],
            [
                "--http",
                "127.0.0.1:9100",
                "--config",
                "/d/edge.toml",
                "--outbox-max-bytes",
                "200000",
                "--full-policy",
                "drop-oldest"
            ]
        );
    }

    #[test]
    fn central_args_render_every_flag_given() {
        let http: SocketAddr = "127.0.0.1:9200".parse().unwrap();
        assert_eq!(
            CentralArgs::new("nats://c").to_args(),
            ["central", "--nats", "nats://c"]
        );
        assert_eq!(
            CentralArgs::new("nats://c")
                .hub_id("c0")
                .http(http)
                .config(Path::new("/d/central.toml"))
                .apply_stream_changes()
                .to_args(),
            [
                "central",
                "--nats",
                "nats://c",
                "--hub-id",
                "c0",
                "--config",
                "/d/central.toml",
                "--http",
                "127.0.0.1:9200",
                "--apply-stream-changes"
            ]
        );
    }
}
