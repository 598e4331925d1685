//! The local certificate authority of a secure mesh: one CA and one server certificate
//! (for `127.0.0.1` and `localhost`) that every nats-server of the mesh presents on its
//! client and leafnode ports.
//!
//! Invariants:
//! - Files live in one directory (`<data-dir>/tls`): `ca.pem` (public, what clients
//!   verify against), `server.pem`, and the keys `ca-key.pem` and `server-key.pem`
//!   (mode 0600). Existing files are reused, so a restarted mesh keeps its CA.
//! - The certificates are generated with `rcgen` (ECDSA P-256), valid for ten years.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::auth::write_secret;
use crate::Error;

/// The TLS files of a mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate clients verify the servers against.
    pub ca: PathBuf,
    /// The servers' certificate chain.
    pub cert: PathBuf,
    /// The servers' private key (mode 0600).
    pub key: PathBuf,
}

fn gen_err(dir: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(
        "generating TLS certificates in",
        dir,
        std::io::Error::other(e.to_string()),
    )
}

impl TlsFiles {
    /// The files in `dir`, generated on first use.
    pub fn open_or_create(dir: &Path) -> Result<TlsFiles, Error> {
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        };
        if files.ca.is_file() && files.cert.is_file() && files.key.is_file() {
            return Ok(files);
        }
        fs::create_dir_all(dir).map_err(|e| Error::io("creating TLS directory", dir, e))?;
        let ca_key = KeyPair::generate().map_err(|e| gen_err(dir, e))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| gen_err(dir, e))?;
        ca.distinguished_name
            .push(DnType::CommonName, "agentmesh local CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let ca_cert = ca.self_signed(&ca_key).map_err(|e| gen_err(dir, e))?;

        let key = KeyPair::generate().map_err(|e| gen_err(dir, e))?;
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(|e| gen_err(dir, e))?;
        leaf.distinguished_name
            .push(DnType::CommonName, "agentmesh nats-server");
        leaf.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = leaf
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|e| gen_err(dir, e))?;

        write_secret(&dir.join("ca-key.pem"), ca_key.serialize_pem().as_bytes())?;
        write_secret(&files.key, key.serialize_pem().as_bytes())?;
        fs::write(&files.cert, cert.pem()).map_err(|e| Error::io("writing", &files.cert, e))?;
        fs::write(&files.ca, ca_cert.pem()).map_err(|e| Error::io("writing", &files.ca, e))?;
        Ok(files)
    }
}
