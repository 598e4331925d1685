//! A clustered centre: three secure nodes form one JetStream cluster (domain `central`)
//! over mutually authenticated TLS routes, an R3 stream keeps taking writes after its
//! leader is killed, and a server without a certificate of the mesh CA cannot join.
//! Real nats-server processes, real clients.

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use mesh_nats::auth::{Identity, MeshKeys};
use mesh_nats::client::ClientAuth;
use mesh_nats::tls::TlsFiles;
use mesh_nats::{Cluster, NatsServer, Security, ServerConfig};

/// A free port on 127.0.0.1 (bound, then released for nats-server to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node(dir: &Path, i: usize, ports: &[u16], sec: &Security) -> ServerConfig {
    let routes = ports
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| Cluster::route_url(*p))
        .collect();
    ServerConfig::central(&format!("n{}", i + 1))
        .dir(dir.join(format!("n{}", i + 1)))
        .security(sec.clone())
        .cluster(Cluster {
            name: "central".into(),
            port: ports[i],
            routes,
            advertise: None,
        })
        .start_timeout(Duration::from_secs(20))
}

/// The server names this node has a route to (`/routez`).
fn routed_to(server: &NatsServer) -> BTreeSet<String> {
    let v = server.monitor_json("/routez").unwrap();
    v["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["remote_name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_secure_nodes_form_a_cluster_that_survives_its_stream_leader() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut keys = MeshKeys::open_or_create(&dir.join("keys")).unwrap();
    let tls = TlsFiles::open_or_create(&dir.join("tls")).unwrap();
    let sec = Security {
        auth: keys.server_auth(),
        tls: tls.clone(),
        leaf_creds: None,
        sys_leaf_creds: None,
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<NatsServer> = Vec::new();
    for i in 0..3 {
        let cfg = node(dir, i, &ports, &sec);
        nodes.push(tokio::task::block_in_place(|| NatsServer::start(cfg)).unwrap());
    }
    let text = std::fs::read_to_string(nodes[0].config_path()).unwrap();
    assert!(text.contains("verify: true"), "{text}");
    let leaders: BTreeSet<String> = nodes
        .iter()
        .map(|n| {
            tokio::task::block_in_place(|| n.wait_for_meta_leader(Duration::from_secs(30)))
                .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail(30)))
        })
        .collect();
    assert_eq!(leaders.len(), 1, "the nodes disagree on the meta leader");
    for n in &nodes {
        let mut want: BTreeSet<String> = ["n1", "n2", "n3"].map(String::from).into();
        want.remove(n.name());
        assert_eq!(routed_to(n), want, "routes of {}", n.name());
    }

    // A client given every node's URL.
    let path = dir.join("creds/hub.creds");
    keys.issue_to(&Identity::CentralHub { name: "c0".into() }, &path)
        .unwrap();
    let urls = nodes
        .iter()
        .map(NatsServer::client_url)
        .collect::<Vec<_>>()
        .join(",");
    let client = ClientAuth::new(&path, &tls.ca)
        .connect(&urls, "cluster test")
        .await
        .unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(20));
    // A meta leader is not the end of start-up: a node may still answer "JetStream not
    // enabled for account" (503) until it has the account's JetStream (seen in CI on a
    // loaded machine); the hubs retry their set-up the same way.
    let config = stream::Config {
        name: "R3".into(),
        subjects: vec!["r3.>".into()],
        num_replicas: 3,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match js.create_stream(config.clone()).await {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("creating R3 (will retry): {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("creating R3: {e}"),
        }
    };
    for i in 0..50 {
        js.publish(format!("r3.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let leader = s
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .unwrap()
        .leader
        .unwrap();
    let idx = nodes.iter().position(|n| n.name() == leader).unwrap();
    nodes[idx].kill();

    // The stream takes writes again once the two left elect a leader.
    let started = Instant::now();
    let mut stored = 0;
    while stored < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the R3 stream took {stored} of 50 writes in 30 s after its leader {leader} died"
        );
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(2),
            js.publish(format!("r3.after.{stored}"), "y".into())
                .await
                .unwrap()
                .into_future(),
        )
        .await
        {
            stored += 1;
        }
    }
    let info = s.info().await.unwrap();
    assert_eq!(info.state.messages, 100);
    assert_ne!(
        info.cluster.clone().unwrap().leader.as_deref(),
        Some(&*leader)
    );
    tokio::task::block_in_place(|| nodes[idx].restart()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_certificate_of_the_mesh_ca_cannot_join() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let keys = MeshKeys::open_or_create(&dir.join("keys")).unwrap();
    let tls = TlsFiles::open_or_create(&dir.join("tls")).unwrap();
    let sec = Security {
        auth: keys.server_auth(),
        tls,
        leaf_creds: None,
        sys_leaf_creds: None,
    };
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let cfg = node(dir, i, &ports, &sec);
        nodes.push(tokio::task::block_in_place(|| NatsServer::start(cfg)).unwrap());
    }
    let n1 = &nodes[0];
    let routed = Instant::now();
    while routed_to(n1).len() != 1 {
        assert!(
            routed.elapsed() < Duration::from_secs(10),
            "n1 and n2 never routed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its own CA, the same accounts: only the certificate is wrong.
    let rogue_tls = TlsFiles::open_or_create(&dir.join("rogue-tls")).unwrap();
    let rogue_sec = Security {
        tls: rogue_tls,
        ..sec.clone()
    };
    let rogue_port = free_port();
    let rogue = tokio::task::block_in_place(|| {
        NatsServer::start(
            ServerConfig::central("rogue")
                .dir(dir.join("rogue"))
                .security(rogue_sec)
                .cluster(Cluster {
                    name: "central".into(),
                    port: rogue_port,
                    routes: ports.iter().map(|p| Cluster::route_url(*p)).collect(),
                    advertise: None,
                }),
        )
    })
    .unwrap();
    // The rogue dials n1 and n2 every second; give it a few tries, then look.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            routed_to(n1),
            BTreeSet::from(["n2".to_string()]),
            "n1 took a route from a server of another CA"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = rogue.log_tail(200) + &n1.log_tail(200);
    assert!(
        log.to_lowercase().contains("tls"),
        "no TLS refusal in the logs:\n{log}"
    );
}
