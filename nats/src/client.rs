//! How a mesh client authenticates: a `.creds` file and the CA to verify the servers
//! against, from flags or the environment the nats CLI uses.
//!
//! Invariants:
//! - [`ClientAuth::from_env`] reads `NATS_CREDS` and `NATS_CA` (the nats CLI's names);
//!   explicit flags win over the environment.
//! - With a CA, TLS is required and the server certificate is verified against it; with
//!   none the client accepts plaintext (a secure server refuses it).
//! - With creds the client uses the inbox prefix of the identity in the JWT (see
//!   [`crate::auth::Identity::inbox_prefix`]): a least-privilege identity may subscribe
//!   to replies only there.

use std::path::{Path, PathBuf};

use crate::auth::{creds_user_name, Identity};

/// Environment variable naming a `.creds` file (as the nats CLI).
pub const CREDS_ENV: &str = "NATS_CREDS";
/// Environment variable naming a CA file (as the nats CLI).
pub const CA_ENV: &str = "NATS_CA";
/// Environment variable with the server URL (as the nats CLI).
pub const URL_ENV: &str = "NATS_URL";

/// The servers of a URL list as the nats CLI takes it: `nats://a:4222,nats://b:4222`
/// (commas, optional spaces). A clustered centre is given as every node's URL; the client
/// connects to one and moves to another when it fails.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if list.is_empty() {
        return Err(format!("no server URL in {urls:?}"));
    }
    list.iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("server URL {u:?}: {e}"))
        })
        .collect()
}

/// Credentials and CA of one client connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAuth {
    pub creds: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
}

impl ClientAuth {
    /// No credentials, no TLS (an insecure mesh).
    pub fn none() -> ClientAuth {
        ClientAuth::default()
    }

    /// A credential and a CA.
    pub fn new(creds: impl Into<PathBuf>, tls_ca: impl Into<PathBuf>) -> ClientAuth {
        ClientAuth {
            creds: Some(creds.into()),
            tls_ca: Some(tls_ca.into()),
        }
    }

    /// The flags if given, else `NATS_CREDS` / `NATS_CA`.
    pub fn from_flags_or_env(creds: Option<PathBuf>, tls_ca: Option<PathBuf>) -> ClientAuth {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        ClientAuth {
            creds: creds.or_else(|| env(CREDS_ENV)),
            tls_ca: tls_ca.or_else(|| env(CA_ENV)),
        }
    }

    /// The inbox prefix for the identity in the creds, if it has a restricted one.
    pub fn inbox_prefix(&self) -> Option<String> {
        Some(Identity::from_user_name(&self.user_name()?)?.inbox_prefix())
    }

    /// Apply to connect options: credentials, TLS with the CA, the inbox prefix.
    pub async fn apply(
        &self,
        mut opts: async_nats::ConnectOptions,
    ) -> std::io::Result<async_nats::ConnectOptions> {
        if let Some(creds) = &self.creds {
            opts = opts.credentials_file(creds).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("credentials {}: {e}", creds.display()))
            })?;
            if let Some(prefix) = self.inbox_prefix() {
                opts = opts.custom_inbox_prefix(prefix);
            }
        }
        if let Some(ca) = &self.tls_ca {
            check_readable(ca)?;
            opts = opts.require_tls(true).add_root_certificates(ca.clone());
        }
        Ok(opts)
    }

    /// Connect to `url` (one URL, or a comma-separated list: [`server_addrs`]) with these
    /// credentials, named `name`.
    pub async fn connect(&self, url: &str, name: &str) -> Result<async_nats::Client, String> {
        let opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(std::time::Duration::from_secs(5));
        let opts = self.apply(opts).await.map_err(|e| e.to_string())?;
        opts.connect(server_addrs(url)?)
            .await
            .map_err(|e| self.explain(e.to_string()))
    }

    /// [`ClientAuth::connect`] that also reports the connection's events (server errors
    /// such as permissions violations, disconnects) as text on a channel: how tests and
    /// probes see a refusal, which NATS reports asynchronously.
    pub async fn connect_watched(
        &self,
        url: &str,
    ) -> Result<
        (
            async_nats::Client,
            tokio::sync::mpsc::UnboundedReceiver<String>,
        ),
        String,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let opts = async_nats::ConnectOptions::new()
            .connection_timeout(std::time::Duration::from_secs(3))
            .event_callback(move |ev| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(ev.to_string());
                }
            });
        let opts = self.apply(opts).await.map_err(|e| e.to_string())?;
        let client = opts
            .connect(server_addrs(url)?)
            .await
            .map_err(|e| self.explain(e.to_string()))?;
        Ok((client, rx))
    }

    /// The user name in the credential (e.g. `agent.e1.alice`), if there is one.
    pub fn user_name(&self) -> Option<String> {
        creds_user_name(&std::fs::read_to_string(self.creds.as_ref()?).ok()?)
    }

    /// A connect error with the flag that would fix it.
    pub fn explain(&self, e: String) -> String {
        let hint = if e.contains("UnknownIssuer") || e.contains("invalid peer certificate") {
            match &self.tls_ca {
                None => " (the server uses TLS: pass its CA with --tls-ca or NATS_CA)",
                Some(_) => " (the server's certificate is not signed by the --tls-ca given)",
            }
        } else if e.to_lowercase().contains("authorization violation") {
            match &self.creds {
                None => " (the server requires credentials: pass --creds FILE or NATS_CREDS)",
                Some(_) => " (the credential was refused: revoked, or of another mesh)",
            }
        } else if e.contains("tls") && self.tls_ca.is_some() {
            " (is the server a secure one? --tls-ca makes TLS required)"
        } else {
            ""
        };
        format!("{e}{hint}")
    }
}

fn check_readable(p: &Path) -> std::io::Result<()> {
    std::fs::metadata(p)
        .map(|_| ())
        .map_err(|e| std::io::Error::new(e.kind(), format!("CA file {}: {e}", p.display())))
}

/// Push the mesh account's current JWT (with its revocations) to the centre at `url`,
/// which stores it and hands it on to every edge over the system-account leaf links.
/// Returns the centre's answer.
pub async fn push_account(
    keys: &crate::auth::MeshKeys,
    url: &str,
    tls_ca: Option<&Path>,
) -> Result<String, String> {
    let update = AccountUpdate::of(keys);
    update.push(url, tls_ca).await
}

/// An account JWT to push and the throwaway system credential that may push it.
pub struct AccountUpdate {
    pusher: String,
    account: String,
    jwt: String,
}

impl AccountUpdate {
    /// The current account JWT of `keys`.
    pub fn of(keys: &crate::auth::MeshKeys) -> AccountUpdate {
        AccountUpdate {
            pusher: keys.claims_pusher().file_text(),
            account: keys.account_key(),
            jwt: keys.account_jwt(),
        }
    }

    /// Send it to the centre at `url`.
    pub async fn push(&self, url: &str, tls_ca: Option<&Path>) -> Result<String, String> {
        let mut opts = async_nats::ConnectOptions::with_credentials(&self.pusher)
            .map_err(|e| e.to_string())?
            .connection_timeout(std::time::Duration::from_secs(5));
        if let Some(ca) = tls_ca {
            opts = opts
                .require_tls(true)
                .add_root_certificates(ca.to_path_buf());
        }
        let c = opts
            .connect(server_addrs(url)?)
            .await
            .map_err(|e| e.to_string())?;
        let subject = crate::auth::account_claims_update(&self.account);
        let reply = c
            .request(subject, self.jwt.clone().into())
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&reply.payload).to_string();
        if text.contains("\"error\"") {
            return Err(format!("the centre refused the account update: {text}"));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::server_addrs;

    #[test]
    fn url_lists_split_on_commas() {
        let a = server_addrs("nats://127.0.0.1:1, nats://127.0.0.1:2,").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].port(), 2);
        assert!(server_addrs(" , ").unwrap_err().contains("no server URL"));
        assert!(server_addrs("nats://a:1,nats://b:x")
            .unwrap_err()
            .contains("\"nats://b:x\""));
    }
}
