//! A secure central and edge (operator mode, TLS): who gets in, what the servers refuse,
//! and that a revocation reaches the edge. Real nats-server processes, real clients.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use mesh_nats::auth::{Identity, MeshKeys};
use mesh_nats::client::ClientAuth;
use mesh_nats::tls::TlsFiles;
use mesh_nats::{NatsServer, Security, ServerConfig};

struct Secure {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    keys: MeshKeys,
    tls: TlsFiles,
    central: NatsServer,
    edge: NatsServer,
}

fn start() -> Secure {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let mut keys = MeshKeys::open_or_create(&dir.join("keys")).unwrap();
    let tls = TlsFiles::open_or_create(&dir.join("tls")).unwrap();
    let leaf = dir.join("creds/leaf-e1.creds");
    let sys = dir.join("creds/sys-leaf-e1.creds");
    keys.issue_to(&Identity::Leaf { edge: "e1".into() }, &leaf)
        .unwrap();
    keys.issue_to(&Identity::SysLeaf { edge: "e1".into() }, &sys)
        .unwrap();
    let sec = Security {
        auth: keys.server_auth(),
        tls: tls.clone(),
        leaf_creds: None,
        sys_leaf_creds: None,
    };
    let central = NatsServer::start(
        ServerConfig::central("c")
            .dir(dir.join("central"))
            .security(sec.clone()),
    )
    .unwrap();
    let edge = NatsServer::start(
        ServerConfig::edge("e1", vec![central.leaf_url().unwrap()])
            .dir(dir.join("e1"))
            .security(Security {
                leaf_creds: Some(leaf),
                sys_leaf_creds: Some(sys),
                ..sec
            }),
    )
    .unwrap();
    central
        .wait_for_leafnodes(2, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", edge.log_tail(30)));
    Secure {
        _dir: d,
        dir,
        keys,
        tls,
        central,
        edge,
    }
}

impl Secure {
    fn creds(&mut self, id: &Identity) -> ClientAuth {
        let path = self.dir.join("creds").join(id.file_name());
        self.keys.issue_to(id, &path).unwrap();
        ClientAuth::new(path, &self.tls.ca)
    }
}

fn agent(edge: &str, name: &str) -> Identity {
    Identity::Agent {
        edge: edge.into(),
        agent: name.into(),
        live: vec!["orders.>".into()],
        durables: vec![],
    }
}

/// [`ClientAuth::connect_watched`]: connect, with the connection's events on a channel.
async fn connect(
    url: &str,
    auth: &ClientAuth,
) -> Result<
    (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ),
    String,
> {
    auth.connect_watched(url).await
}

async fn violation(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no permissions violation for {what}"))
            .unwrap();
        if ev.to_lowercase().contains("permissions violation") {
            return ev;
        }
    }
}

fn tls_url(s: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", s.client_addr().port())
}

#[tokio::test]
async fn no_credentials_no_plaintext_no_entry() {
    let mut m = start();
    let none = ClientAuth {
        creds: None,
        tls_ca: Some(m.tls.ca.clone()),
    };
    let e = connect(&tls_url(&m.edge), &none)
        .await
        .expect_err("anonymous refused");
    assert!(e.to_lowercase().contains("authorization"), "{e}");
    let mut plain = m.creds(&agent("e1", "alice"));
    plain.tls_ca = None;
    let url = m.edge.client_url();
    assert!(connect(&url, &plain).await.is_err(), "plaintext refused");
    let ok = m.creds(&agent("e1", "alice"));
    connect(&tls_url(&m.edge), &ok)
        .await
        .expect("agent with creds and TLS");
}

#[tokio::test]
async fn an_agent_may_publish_only_its_own_ingest_subject() {
    let mut m = start();
    let auth = m.creds(&agent("e1", "alice"));
    let (c, mut rx) = connect(&tls_url(&m.edge), &auth).await.unwrap();
    c.publish("mesh.ingest.e1.alice", "ok".into())
        .await
        .unwrap();
    c.flush().await.unwrap();
    for bad in [
        "mesh.ingest.e1.bob",
        "mesh.ingest.e2.alice",
        "mesh.up.e1",
        "mesh.evt.e1.x",
    ] {
        c.publish(bad, "x".into()).await.unwrap();
        let v = violation(&mut rx, bad).await;
        assert!(v.contains(bad), "{v}");
    }
    let _s = c.subscribe(">").await.unwrap();
    violation(&mut rx, "subscribe >").await;
}

#[tokio::test]
async fn an_edge_site_writes_only_its_own_uplink() {
    let mut m = start();
    let hub = m.creds(&Identity::CentralHub { name: "c".into() });
    let (hc, _) = connect(&tls_url(&m.central), &hub).await.unwrap();
    jetstream::new(hc)
        .create_stream(jetstream::stream::Config {
            name: "MESH_INGRESS".into(),
            subjects: vec!["mesh.up.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let eh = m.creds(&Identity::EdgeHub { edge: "e1".into() });
    let (ec, mut rx) = connect(&tls_url(&m.edge), &eh).await.unwrap();
    let js = jetstream::with_domain(ec.clone(), "central");
    // The leaf link may need a moment to carry interest after start.
    let mut acked = false;
    for _ in 0..50 {
        if let Ok(f) = js.publish("mesh.up.e1", "b".into()).await {
            if f.await.is_ok() {
                acked = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(acked, "edge hub's own uplink publish is acked");
    ec.publish("mesh.up.e2", "forged".into()).await.unwrap();
    violation(&mut rx, "mesh.up.e2").await;

    // The leaf credential of e1 (stolen) cannot write e2's uplink either: the centre
    // drops what the link may not carry.
    let leaf = ClientAuth::new(m.dir.join("creds/leaf-e1.creds"), &m.tls.ca);
    let (lc, mut lrx) = connect(&tls_url(&m.central), &leaf).await.unwrap();
    lc.publish("mesh.up.e2", "forged".into()).await.unwrap();
    violation(&mut lrx, "leaf creds mesh.up.e2").await;
    let stream_msgs = |js: jetstream::Context| async move {
        js.get_stream("MESH_INGRESS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    };
    let (hc2, _) = connect(&tls_url(&m.central), &hub).await.unwrap();
    assert_eq!(
        stream_msgs(jetstream::new(hc2)).await,
        1,
        "only the real bundle"
    );
}

#[tokio::test]
async fn a_revoked_agent_is_cut_off_within_seconds() {
    let mut m = start();
    let auth = m.creds(&agent("e1", "mallory"));
    let (_c, mut rx) = connect(&tls_url(&m.edge), &auth).await.unwrap();
    assert_eq!(m.keys.revoke("agent.e1.mallory").unwrap(), 1);
    mesh_nats::client::push_account(&m.keys, &tls_url(&m.central), Some(&m.tls.ca))
        .await
        .expect("the centre takes the account");
    // The edge's cache resolver gets the update over the system leaf link and closes
    // the revoked user's connection.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = rx.recv().await {
            if ev.contains("disconnected") {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "revoked connection not closed\n{}",
        m.edge.log_tail(30)
    );
    assert!(
        connect(&tls_url(&m.edge), &auth).await.is_err(),
        "revoked credential refused"
    );
    let fresh = m.creds(&agent("e1", "mallory"));
    connect(&tls_url(&m.edge), &fresh)
        .await
        .expect("a new credential works");
}
