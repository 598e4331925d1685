//! Identities of a secure mesh: NATS decentralised JWT auth (an operator, a system account
//! and one mesh account, users signed with nkeys) and the permissions of each identity.
//!
//! Invariants:
//! - The keys of a mesh live in one directory (`<data-dir>/keys`, mode 0700): the seeds of
//!   the operator, the system account and the mesh account (`*.nk`, mode 0600) and
//!   `issued.json`, the list of user credentials issued and revoked (public keys only).
//! - Every credential is a standard NATS `.creds` file (user JWT + user seed, mode 0600),
//!   usable unchanged by any NATS client (nats-py `user_credentials=`, nats CLI `--creds`).
//! - Permissions are allow lists: whatever an identity is not granted is refused by the
//!   nats-server ([`permissions`] is the one place they are written).
//! - Issuing a user needs only the account seed: no server is told, so it works at an edge
//!   cut off from the centre. Revoking adds the user's key to the account JWT's
//!   revocations; [`MeshKeys::account_jwt`] then carries it, and pushing that JWT to the
//!   central resolver (`$SYS.REQ.CLAIMS.UPDATE`, see [`CLAIMS_UPDATE`]) reaches every
//!   edge's cache resolver over its system-account leaf link.
//! - No seed is ever logged or formatted by `Debug`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Error;

/// Where the system account takes claim updates (full resolver at the centre).
pub const CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";

/// Where every server of the mesh takes an update of one account's claims: the centre's
/// full resolver and, over the system-account leaf links, each edge's cache resolver.
pub fn account_claims_update(account: &str) -> String {
    format!("$SYS.REQ.ACCOUNT.{account}.CLAIMS.UPDATE")
}
/// JetStream domain of the centre (as in `schemas::subject::CENTRAL_DOMAIN`).
const DOMAIN: &str = "central";

/// One identity of the mesh, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Identity {
    /// An agent at an edge: publishes only its own ingest subject.
    Agent {
        edge: String,
        agent: String,
        /// Event-subject filters (SDK grammar, e.g. `orders.>`) whose live copies, from
        /// every edge, it may subscribe to (`mesh.live.*.<filter>`).
        #[serde(default)]
        live: Vec<String>,
        /// Durable consumers on `MESH_EVENTS` it may create and read: `(consumer name,
        /// event-subject filter)`, the filter as in [`Identity::Agent::live`]. The name
        /// `*` grants every consumer name and filter (test agents; never `mesh up`).
        #[serde(default)]
        durables: Vec<(String, String)>,
    },
    /// The edge hub of one edge.
    EdgeHub { edge: String },
    /// The leaf link of one edge site to the centre (mesh account).
    Leaf { edge: String },
    /// The system-account leaf link of one edge site (claim lookups and updates only).
    SysLeaf { edge: String },
    /// A central hub: the only writer of the mesh's streams.
    CentralHub { name: String },
    /// A human operator (replay, dlq, audit, registry): reads the streams, and asks the
    /// central hubs (on `mesh.hub.op.<name>.>`) for every write.
    Operator { name: String },
}

impl Identity {
    /// The user name in the JWT, e.g. `agent.e1.alice`.
    pub fn user_name(&self) -> String {
        match self {
            Identity::Agent { edge, agent, .. } => format!("agent.{edge}.{agent}"),
            Identity::EdgeHub { edge } => format!("edge-hub.{edge}"),
            Identity::Leaf { edge } => format!("leaf.{edge}"),
            Identity::SysLeaf { edge } => format!("sys-leaf.{edge}"),
            Identity::CentralHub { name } => format!("central-hub.{name}"),
            Identity::Operator { name } => format!("operator.{name}"),
        }
    }

    /// The identity a user name of [`Identity::user_name`] names, for the kinds whose
    /// name says all a client needs (agents, without their grants; edge hubs; operators).
    pub fn from_user_name(name: &str) -> Option<Identity> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(match parts.as_slice() {
            ["agent", edge, agent] => Identity::Agent {
                edge: edge.to_string(),
                agent: agent.to_string(),
                live: vec![],
                durables: vec![],
            },
            ["edge-hub", edge] => Identity::EdgeHub {
                edge: edge.to_string(),
            },
            ["operator", name] => Identity::Operator {
                name: name.to_string(),
            },
            _ => return None,
        })
    }

    /// The file name `mesh up` and the test kit give its credential.
    pub fn file_name(&self) -> String {
        match self {
            Identity::Agent { edge, agent, .. } => format!("agent-{edge}-{agent}.creds"),
            Identity::EdgeHub { edge } => format!("edge-hub-{edge}.creds"),
            Identity::Leaf { edge } => format!("leaf-{edge}.creds"),
            Identity::SysLeaf { edge } => format!("sys-leaf-{edge}.creds"),
            Identity::CentralHub { name } => format!("central-hub-{name}.creds"),
            Identity::Operator { name } if name == "operator" => "operator.creds".into(),
            Identity::Operator { name } => format!("operator-{name}.creds"),
        }
    }

    /// Whether the user belongs to the system account rather than the mesh account.
    pub fn is_system(&self) -> bool {
        matches!(self, Identity::SysLeaf { .. })
    }

    /// The inbox prefix its clients must use: replies reach it there and only there.
    pub fn inbox_prefix(&self) -> String {
        match self {
            Identity::Agent { edge, agent, .. } => format!("_INBOX.{edge}.{agent}"),
            Identity::EdgeHub { edge } => format!("_INBOX_EDGE.{edge}"),
            Identity::Operator { name } => format!("_INBOX_OP.{name}"),
            _ => "_INBOX".into(),
        }
    }
}

/// Subjects an identity may publish and subscribe to (allow lists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// Publish denies carved out of `publish` (only where an allow needs a wildcard).
    pub publish_deny: Vec<String>,
}

fn js(api: &str) -> String {
    format!("$JS.{DOMAIN}.API.{api}")
}

/// The permission matrix. See docs/DESIGN.md, "Security", for the table.
pub fn permissions(id: &Identity) -> Permissions {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match id {
        Identity::Agent {
            edge,
            agent,
            live,
            durables,
        } => {
            let mut publish = vec![
                format!("mesh.ingest.{edge}.{agent}"),
                "mesh.hub.discover".into(),
                "mesh.hub.dlq.failure".into(),
                "mesh.hub.dlq.reject".into(),
            ];
            let mut subscribe = vec![format!("{}.>", id.inbox_prefix())];
            for f in live {
                subscribe.push(format!("mesh.live.*.{f}"));
            }
            if !durables.is_empty() {
                publish.push(js("STREAM.INFO.MESH_EVENTS"));
            }
            for (name, filter) in durables {
                let (create, name_tok) = if name == "*" {
                    (
                        js("CONSUMER.CREATE.MESH_EVENTS.*.mesh.evt.>"),
                        "*".to_string(),
                    )
                } else {
                    (
                        js(&format!(
                            "CONSUMER.CREATE.MESH_EVENTS.{name}.mesh.evt.*.{filter}"
                        )),
                        name.clone(),
                    )
                };
                publish.push(create);
                publish.push(js(&format!("CONSUMER.INFO.MESH_EVENTS.{name_tok}")));
                publish.push(js(&format!("CONSUMER.MSG.NEXT.MESH_EVENTS.{name_tok}")));
                publish.push(format!("$JS.ACK.MESH_EVENTS.{name_tok}.>"));
                publish.push(format!("$JS.ACK.*.*.MESH_EVENTS.{name_tok}.>"));
            }
            Permissions {
                publish,
                subscribe,
                publish_deny: vec![],
            }
        }
        Identity::EdgeHub { edge } => Permissions {
            publish: vec![
                format!("mesh.up.{edge}"),
                format!("mesh.live.{edge}.>"),
                format!("mesh.hub.edge.{edge}"),
                js("INFO"),
                js("STREAM.INFO.MESH_INGRESS"),
                // Replies to its agents' requests (their inboxes are `_INBOX.<edge>.<agent>`).
                format!("_INBOX.{edge}.>"),
                // Dead letters of events the centre refuses, written by a central hub.
                format!("mesh.hub.dlq.refused.{edge}"),
            ],
            subscribe: vec![
                format!("mesh.ingest.{edge}.*"),
                "mesh.hub.discover".into(),
                format!("{}.>", id.inbox_prefix()),
            ],
            publish_deny: vec![],
        },
        // Seen from the leaf: publish = what the edge site may send into the centre,
        // subscribe = what the centre may send to the site.
        Identity::Leaf { edge } => Permissions {
            publish: vec![
                format!("mesh.up.{edge}"),
                format!("mesh.hub.edge.{edge}"),
                // Live copies cross to the agents of other edges granted them.
                format!("mesh.live.{edge}.>"),
                js("INFO"),
                js("STREAM.INFO.MESH_INGRESS"),
                js("STREAM.INFO.MESH_EVENTS"),
                js("CONSUMER.CREATE.MESH_EVENTS.*.mesh.evt.>"),
                js("CONSUMER.INFO.MESH_EVENTS.*"),
                js("CONSUMER.MSG.NEXT.MESH_EVENTS.*"),
                "$JS.ACK.MESH_EVENTS.>".into(),
                "$JS.ACK.*.*.MESH_EVENTS.>".into(),
                "mesh.hub.dlq.failure".into(),
                "mesh.hub.dlq.reject".into(),
                format!("mesh.hub.dlq.refused.{edge}"),
            ],
            subscribe: vec![
                format!("_INBOX.{edge}.>"),
                format!("_INBOX_EDGE.{edge}.>"),
                // Other edges' live copies; each agent's own grants filter them.
                "mesh.live.>".into(),
            ],
            publish_deny: vec![],
        },
        Identity::SysLeaf { .. } => Permissions {
            publish: s(&["$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP"]),
            subscribe: s(&[
                "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE",
                "$SYS.ACCOUNT.*.CLAIMS.UPDATE",
                "_INBOX.>",
                "$SYS._INBOX.>",
            ]),
            publish_deny: vec![],
        },
        Identity::CentralHub { .. } => Permissions {
            publish: s(&[">"]),
            subscribe: s(&[">"]),
            publish_deny: vec![],
        },
        Identity::Operator { name } => {
            let mut publish = vec![
                "mesh.hub.registry".to_string(),
                // Its requests to the central hubs, which do every write (redrive, purge,
                // replay, audit records) with this `<name>` token as the actor.
                format!("mesh.hub.op.{name}.>"),
                "$JS.API.INFO".into(),
                "$JS.API.STREAM.INFO.*".into(),
                "$JS.API.STREAM.NAMES".into(),
                "$JS.API.STREAM.LIST".into(),
                "$JS.API.STREAM.MSG.GET.*".into(),
                "$JS.API.DIRECT.GET.>".into(),
                // Unnamed (ephemeral) consumers only: the ordered consumers of the read
                // commands. A named create would also update an existing consumer.
                "$JS.API.CONSUMER.CREATE.*".into(),
                "$JS.API.CONSUMER.INFO.>".into(),
                "$JS.API.CONSUMER.MSG.NEXT.>".into(),
            ];
            // The same through the domain prefix, for operators connected at an edge.
            let domain: Vec<String> = publish
                .iter()
                .filter_map(|p| p.strip_prefix("$JS.API.").map(js))
                .collect();
            publish.extend(domain);
            Permissions {
                publish,
                subscribe: vec![format!("{}.>", id.inbox_prefix())],
                // Operators read; they never touch the mesh's own consumers.
                publish_deny: vec![
                    "$JS.API.CONSUMER.CREATE.MESH_INGRESS".into(),
                    "$JS.API.CONSUMER.CREATE.MESH_INGRESS.>".into(),
                    "$JS.API.CONSUMER.CREATE.*.lander.>".into(),
                    "$JS.API.CONSUMER.CREATE.KV_MESH_LANDER.>".into(),
                    js("CONSUMER.CREATE.MESH_INGRESS"),
                    js("CONSUMER.CREATE.MESH_INGRESS.>"),
                    js("CONSUMER.CREATE.*.lander.>"),
                ],
            }
        }
    }
}

/// One line of `issued.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Issued {
    pub name: String,
    pub identity: Identity,
    pub public_key: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; `Some` once revoked.
    pub revoked_at: Option<i64>,
}

/// A user credential: the signed JWT and the user's seed.
pub struct Creds {
    pub jwt: String,
    seed: String,
    pub public_key: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Creds {
    /// The standard `.creds` file text.
    pub fn file_text(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            self.jwt, self.seed
        )
    }
}

/// The keys of one mesh.
pub struct MeshKeys {
    dir: PathBuf,
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
    issued: Vec<Issued>,
}

impl std::fmt::Debug for MeshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshKeys")
            .field("dir", &self.dir)
            .field("account", &self.account.public_key())
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Write `data` to `path` with mode 0600 (replacing it atomically).
pub fn write_secret(path: &Path, data: &[u8]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io("creating directory", parent, e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("writing", &tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("setting mode 0600 on", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
}

/// The list in `<dir>/issued.json`; empty when there is none yet.
fn read_issued(dir: &Path) -> Result<Vec<Issued>, Error> {
    let path = dir.join("issued.json");
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| key_err("parsing", &path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("reading", &path, e)),
    }
}

fn b64(data: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(data)
}

fn key_err(what: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(
        what,
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    )
}

impl MeshKeys {
    /// Open the keys in `dir`, creating them on first use.
    pub fn open_or_create(dir: &Path) -> Result<MeshKeys, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io("creating key directory", dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("setting mode 0700 on", dir, e))?;
        let load = |file: &str, new: fn() -> KeyPair| -> Result<KeyPair, Error> {
            let path = dir.join(file);
            match fs::read_to_string(&path) {
                Ok(seed) => {
                    KeyPair::from_seed(seed.trim()).map_err(|e| key_err("reading seed", &path, e))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let kp = new();
                    let seed = kp.seed().map_err(|e| key_err("encoding seed", &path, e))?;
                    write_secret(&path, seed.as_bytes())?;
                    Ok(kp)
                }
                Err(e) => Err(Error::io("reading", &path, e)),
            }
        };
        let operator = load("operator.nk", KeyPair::new_operator)?;
        let system = load("system.nk", KeyPair::new_account)?;
        let account = load("mesh.nk", KeyPair::new_account)?;
        let issued = read_issued(dir)?;
        Ok(MeshKeys {
            dir: dir.to_path_buf(),
            operator,
            system,
            account,
            issued,
        })
    }

    /// Whether `dir` holds the keys of a mesh.
    pub fn exists(dir: &Path) -> bool {
        dir.join("mesh.nk").is_file()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mesh account's public key.
    pub fn account_key(&self) -> String {
        self.account.public_key()
    }

    /// The system account's public key.
    pub fn system_key(&self) -> String {
        self.system.public_key()
    }

    /// Credentials issued so far (revoked ones included).
    pub fn issued(&self) -> &[Issued] {
        &self.issued
    }

    /// Re-read `issued.json` before changing it: another process (`mesh creds` beside a
    /// running `mesh up` or test kit) may have added to it since this one opened the keys.
    fn reload_issued(&mut self) -> Result<(), Error> {
        self.issued = read_issued(&self.dir)?;
        Ok(())
    }

    fn save_issued(&self) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(&self.issued).expect("issued list serialises");
        write_secret(&self.dir.join("issued.json"), &text)
    }

    fn sign(&self, signer: &KeyPair, claims: Value) -> String {
        let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let mut claims = claims;
        claims["jti"] = json!(uuid_like());
        claims["iat"] = json!(now());
        let body = b64(claims.to_string().as_bytes());
        let input = format!("{header}.{body}");
        let sig = signer
            .sign(input.as_bytes())
            .expect("ed25519 signing cannot fail");
        format!("{input}.{}", b64(&sig))
    }

    /// The operator JWT (names the system account).
    pub fn operator_jwt(&self) -> String {
        let op = self.operator.public_key();
        self.sign(
            &self.operator,
            json!({
                "iss": op, "sub": op, "name": "agentmesh",
                "nats": {"type": "operator", "version": 2,
                         "system_account": self.system.public_key()}
            }),
        )
    }

    /// The system account JWT.
    pub fn system_jwt(&self) -> String {
        let sys = self.system.public_key();
        self.sign(
            &self.operator,
            json!({
                "iss": self.operator.public_key(), "sub": sys, "name": "SYS",
                "nats": {"type": "account", "version": 2,
                         "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                                    "exports": -1, "wildcards": true, "conn": -1, "leaf": -1}}
            }),
        )
    }

    /// The mesh account JWT, JetStream enabled, with every revocation so far.
    pub fn account_jwt(&self) -> String {
        let revocations: BTreeMap<&str, i64> = self
            .issued
            .iter()
            .filter_map(|i| i.revoked_at.map(|t| (i.public_key.as_str(), t)))
            .collect();
        self.sign(
            &self.operator,
            json!({
                "iss": self.operator.public_key(), "sub": self.account.public_key(),
                "name": "MESH",
                "nats": {"type": "account", "version": 2,
                         "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                                    "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                                    "mem_storage": -1, "disk_storage": -1, "streams": -1,
                                    "consumer": -1, "max_ack_pending": -1,
                                    "mem_max_stream_bytes": 0, "disk_max_stream_bytes": 0,
                                    "max_bytes_required": false},
                         "default_permissions": {"pub": {}, "sub": {}},
                         "revocations": revocations}
            }),
        )
    }

    /// Sign a user credential for `id` and record it in `issued.json`.
    pub fn issue(&mut self, id: &Identity) -> Result<Creds, Error> {
        let user = KeyPair::new_user();
        let p = permissions(id);
        let mut pubp = json!({"allow": p.publish});
        if !p.publish_deny.is_empty() {
            pubp["deny"] = json!(p.publish_deny);
        }
        let signer = if id.is_system() {
            &self.system
        } else {
            &self.account
        };
        let jwt = self.sign(
            signer,
            json!({
                "iss": signer.public_key(), "sub": user.public_key(), "name": id.user_name(),
                "nats": {"type": "user", "version": 2, "pub": pubp,
                         "sub": {"allow": p.subscribe},
                         "subs": -1, "data": -1, "payload": -1}
            }),
        );
        let seed = user
            .seed()
            .map_err(|e| key_err("encoding seed", &self.dir, e))?;
        self.reload_issued()?;
        self.issued.push(Issued {
            name: id.user_name(),
            identity: id.clone(),
            public_key: user.public_key(),
            issued_at: now(),
            revoked_at: None,
        });
        self.save_issued()?;
        Ok(Creds {
            jwt,
            seed,
            public_key: user.public_key(),
        })
    }

    /// Issue a credential for `id` and write it to `path` (mode 0600).
    pub fn issue_to(&mut self, id: &Identity, path: &Path) -> Result<Creds, Error> {
        let c = self.issue(id)?;
        write_secret(path, c.file_text().as_bytes())?;
        Ok(c)
    }

    /// Revoke every live credential whose user name or public key is `who`; returns how
    /// many. The new [`MeshKeys::account_jwt`] must then reach the servers.
    pub fn revoke(&mut self, who: &str) -> Result<usize, Error> {
        self.reload_issued()?;
        let t = now();
        let mut n = 0;
        for i in self.issued.iter_mut() {
            if i.revoked_at.is_none() && (i.name == who || i.public_key == who) {
                // Revocations cover JWTs issued at or before the time; +1 covers this second.
                i.revoked_at = Some(t + 1);
                n += 1;
            }
        }
        if n > 0 {
            self.save_issued()?;
        }
        Ok(n)
    }

    /// A credential of the system account allowed only to push claim updates (made on
    /// the fly for `mesh creds revoke`; never written to disk, never listed).
    pub fn claims_pusher(&self) -> Creds {
        let user = KeyPair::new_user();
        let jwt = self.sign(
            &self.system,
            json!({
                "iss": self.system.public_key(), "sub": user.public_key(), "name": "claims-pusher",
                "nats": {"type": "user", "version": 2,
                         "pub": {"allow": [CLAIMS_UPDATE, "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE"]}, "sub": {"allow": ["_INBOX.>"]},
                         "subs": -1, "data": -1, "payload": -1}
            }),
        );
        Creds {
            jwt,
            seed: user.seed().unwrap_or_default(),
            public_key: user.public_key(),
        }
    }

    /// The server-side settings for a nats-server of this mesh.
    pub fn server_auth(&self) -> ServerAuth {
        ServerAuth {
            operator_jwt: self.operator_jwt(),
            system_account: self.system_key(),
            preload: vec![
                (self.system_key(), self.system_jwt()),
                (self.account_key(), self.account_jwt()),
            ],
            mesh_account: self.account_key(),
        }
    }
}

/// What a nats-server needs to run in operator mode for a mesh (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAuth {
    pub operator_jwt: String,
    pub system_account: String,
    /// `(account public key, account JWT)`, preloaded into the resolver.
    pub preload: Vec<(String, String)>,
    /// The account all mesh clients and leaf links live in.
    pub mesh_account: String,
}

fn uuid_like() -> String {
    let kp = KeyPair::new_user();
    kp.public_key()[1..27].to_string()
}

/// The claims of the user JWT in a `.creds` file.
fn creds_claims(text: &str) -> Option<Value> {
    let jwt = text
        .lines()
        .skip_while(|l| !l.contains("BEGIN NATS USER JWT"))
        .nth(1)?
        .trim();
    let claims = jwt.split('.').nth(1)?;
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(claims.as_bytes())
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The public key in a `.creds` file's JWT (its `sub`), for `mesh creds revoke FILE`.
pub fn creds_public_key(text: &str) -> Option<String> {
    Some(creds_claims(text)?.get("sub")?.as_str()?.to_string())
}

/// The user name in a `.creds` file's JWT.
pub fn creds_user_name(text: &str) -> Option<String> {
    Some(creds_claims(text)?.get("name")?.as_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_with_mode_0600_and_creds_parse() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("keys");
        let mut k = MeshKeys::open_or_create(&dir).unwrap();
        let acc = k.account_key();
        let id = Identity::EdgeHub { edge: "e1".into() };
        let c = k.issue_to(&id, &d.path().join("x.creds")).unwrap();
        let text = fs::read_to_string(d.path().join("x.creds")).unwrap();
        assert_eq!(
            creds_public_key(&text).as_deref(),
            Some(c.public_key.as_str())
        );
        assert_eq!(creds_user_name(&text).as_deref(), Some("edge-hub.e1"));
        for f in ["operator.nk", "system.nk", "mesh.nk", "issued.json"] {
            let m = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o600, "{f}");
        }
        let m = fs::metadata(d.path().join("x.creds"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, 0o600);
        let k2 = MeshKeys::open_or_create(&dir).unwrap();
        assert_eq!(k2.account_key(), acc);
        assert_eq!(k2.issued().len(), 1);
        let shown = format!("{k2:?} {c:?}");
        let account_seed = fs::read_to_string(dir.join("mesh.nk")).unwrap();
        assert!(
            !shown.contains(&c.seed) && !shown.contains(account_seed.trim()),
            "no seed in Debug"
        );
    }

    #[test]
    fn user_names_name_their_identity() {
        for id in [
            Identity::Agent {
                edge: "e1".into(),
                agent: "alice".into(),
                live: vec![],
                durables: vec![],
            },
            Identity::EdgeHub { edge: "e1".into() },
            Identity::Operator { name: "ann".into() },
        ] {
            assert_eq!(Identity::from_user_name(&id.user_name()), Some(id));
        }
        for bad in [
            "operator.",
            "agent.e1",
            "agent.e.1.a",
            "leaf.e1",
            "operator.a.b",
            "",
        ] {
            assert_eq!(Identity::from_user_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn revocation_lands_in_the_account_jwt() {
        let d = tempfile::tempdir().unwrap();
        let mut k = MeshKeys::open_or_create(d.path()).unwrap();
        let id = Identity::Operator { name: "ann".into() };
        let c = k.issue(&id).unwrap();
        assert_eq!(k.revoke("operator.ann").unwrap(), 1);
        let jwt = k.account_jwt();
        let claims = jwt.split('.').nth(1).unwrap();
        let v: Value = serde_json::from_slice(
            &data_encoding::BASE64URL_NOPAD
                .decode(claims.as_bytes())
                .unwrap(),
        )
        .unwrap();
        assert!(v["nats"]["revocations"][&c.public_key].is_i64(), "{v}");
        assert_eq!(k.revoke("operator.ann").unwrap(), 0, "already revoked");
    }

    #[test]
    fn two_holders_of_the_keys_do_not_lose_each_others_credentials() {
        // Guards against `mesh creds` beside a running `mesh up`: each wrote its own
        // in-memory list over the other's.
        let d = tempfile::tempdir().unwrap();
        let mut running = MeshKeys::open_or_create(d.path()).unwrap();
        let mut cli = MeshKeys::open_or_create(d.path()).unwrap();
        cli.issue(&Identity::Operator { name: "ann".into() })
            .unwrap();
        running
            .issue(&Identity::Operator { name: "bob".into() })
            .unwrap();
        assert_eq!(cli.revoke("operator.bob").unwrap(), 1);
        running
            .issue(&Identity::Operator { name: "cy".into() })
            .unwrap();
        let k = MeshKeys::open_or_create(d.path()).unwrap();
        let names: Vec<_> = k.issued().iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["operator.ann", "operator.bob", "operator.cy"]);
        assert!(
            k.issued()[1].revoked_at.is_some(),
            "the revocation survives"
        );
    }

    #[test]
    fn an_agent_publishes_only_its_own_ingest_subject() {
        let p = permissions(&Identity::Agent {
            edge: "e1".into(),
            agent: "alice".into(),
            live: vec!["orders.>".into()],
            durables: vec![],
        });
        assert!(p.publish.contains(&"mesh.ingest.e1.alice".to_string()));
        assert!(!p
            .publish
            .iter()
            .any(|s| s.contains('>') || s.starts_with("mesh.up")));
        assert_eq!(
            p.subscribe,
            vec!["_INBOX.e1.alice.>", "mesh.live.*.orders.>"]
        );
    }

    /// Whether NATS subject pattern `pat` (with `*` and `>`) matches subject `s`.
    fn matches(pat: &str, s: &str) -> bool {
        let (mut p, mut t) = (pat.split('.'), s.split('.'));
        loop {
            match (p.next(), t.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn an_operator_asks_the_hubs_in_its_own_name_and_writes_nothing() {
        let p = permissions(&Identity::Operator { name: "ann".into() });
        let may = |s: &str| {
            p.publish.iter().any(|a| matches(a, s)) && !p.publish_deny.iter().any(|d| matches(d, s))
        };
        assert!(may("mesh.hub.op.ann.dlq.redrive"));
        assert!(may("mesh.hub.registry"));
        assert!(may("$JS.API.STREAM.INFO.MESH_DLQ"));
        for s in [
            "mesh.hub.op.bob.dlq.purge",
            "mesh.evt.e1.x",
            "mesh.audit.x",
            "mesh.dlq.e1.x",
            "$KV.MESH_LANDER.e1",
            "$JS.API.STREAM.CREATE.X",
            "$JS.API.STREAM.UPDATE.MESH_EVENTS",
            "$JS.API.STREAM.DELETE.MESH_AUDIT",
            "$JS.API.STREAM.PURGE.MESH_DLQ",
            "$JS.API.STREAM.MSG.DELETE.MESH_DLQ",
            "$JS.central.API.STREAM.PURGE.MESH_DLQ",
        ] {
            assert!(!may(s), "an operator may publish {s}");
        }
    }
}
