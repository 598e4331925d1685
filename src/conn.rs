//! The connection flags every client command shares: `--creds` and `--tls-ca`, with the
//! nats CLI's environment variables (`NATS_CREDS`, `NATS_CA`) as defaults.

use std::path::PathBuf;

use clap::Args;
use mesh_nats::client::ClientAuth;

#[derive(Args, Clone, Debug, Default)]
pub struct AuthArgs {
    /// NATS credentials file (.creds) to authenticate with.
    #[arg(long, value_name = "FILE", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// CA certificate to verify the nats-server with; makes TLS required.
    #[arg(long, value_name = "FILE", env = "NATS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl AuthArgs {
    pub fn client_auth(&self) -> ClientAuth {
        ClientAuth {
            creds: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
        }
    }

    /// Connect to `url` as `name`; the error names the URL and why.
    pub async fn connect(&self, url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
        self.client_auth()
            .connect(url, name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to nats-server {url}: {e}"))
    }
}
