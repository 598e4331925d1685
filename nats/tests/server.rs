//! Integration tests against real nats-server processes.
//!
//! Invariants: every server lives in a temporary directory and is killed by `Drop`; every wait
//! is a polling loop with a deadline; nothing here changes process-global state (env vars are
//! tested in `tests/find_binary.rs`, a separate test binary).

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_nats::{ensure_binary, NatsServer, ServerConfig};

const DEADLINE: Duration = Duration::from_secs(10);

fn binary() -> PathBuf {
    ensure_binary().expect("nats-server binary available or installable")
}

/// The INFO line a fresh client connection receives.
fn info_line(server: &NatsServer) -> String {
    let mut s = TcpStream::connect(server.client_addr()).expect("connect to client port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.contains(&b'\n') {
        let n = s.read(&mut chunk).expect("read INFO");
        assert!(n > 0, "server closed before INFO");
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(line.starts_with("INFO {"), "{line}");
    line
}

fn info_json(server: &NatsServer) -> serde_json::Value {
    let line = info_line(server);
    serde_json::from_str(line.trim_start_matches("INFO ").trim()).expect("INFO JSON")
}

fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn central_has_jetstream_and_edge_does_not() {
    let bin = binary();
    let central = NatsServer::start(ServerConfig::central("t-central-js").binary(&bin)).unwrap();
    let info = info_json(&central);
    assert_eq!(info["jetstream"], serde_json::json!(true), "{info}");
    assert_eq!(info["domain"], "central", "{info}");
    assert_eq!(info["max_payload"], 8_388_608, "{info}");
    assert_eq!(info["port"], central.client_addr().port());
    assert_eq!(
        central.client_url(),
        format!("nats://127.0.0.1:{}", central.client_addr().port())
    );
    let leaf = central.leaf_addr().expect("central has a leaf listener");
    assert_ne!(leaf.port(), 0);
    assert_eq!(
        central.leaf_url(),
        Some(format!("nats-leaf://127.0.0.1:{}", leaf.port()))
    );
    TcpStream::connect(leaf).expect("leaf port accepts connections");
    assert!(central.monitor_addr().is_some());
    assert!(central.store_dir().unwrap().starts_with(central.dir()));

    let edge = NatsServer::start(
        ServerConfig::edge("t-edge-js", vec![central.leaf_url().unwrap()])
            .binary(&bin)
            .max_payload(1024 * 1024),
    )
    .unwrap();
    let info = info_json(&edge);
    assert!(
        info.get("jetstream").is_none() || info["jetstream"] == false,
        "{info}"
    );
    assert_eq!(info["max_payload"], 1_048_576, "{info}");
    assert_eq!(edge.leaf_addr(), None);
    assert_eq!(edge.leaf_url(), None);
}

#[test]
fn edge_connects_to_central_as_leafnode() {
    let bin = binary();
    let central = NatsServer::start(ServerConfig::central("t-central-leaf").binary(&bin)).unwrap();
    assert_eq!(central.leafnode_count().unwrap(), 0);
    let edge = NatsServer::start(
        ServerConfig::edge("t-edge-leaf", vec![central.leaf_url().unwrap()]).binary(&bin),
    )
    .unwrap();
    central.wait_for_leafnodes(1, DEADLINE).unwrap();
    edge.wait_for_leafnodes(1, DEADLINE).unwrap();
    let leafz = central.monitor_get("/leafz").unwrap();
    assert!(
        leafz.contains("\"leafnodes\": 1") || leafz.contains("\"leafnodes\":1"),
        "{leafz}"
    );
    assert!(leafz.contains("t-edge-leaf"), "{leafz}");
}

#[test]
fn kill_and_restart_keep_ports_and_store() {
    let bin = binary();
    let mut central =
        NatsServer::start(ServerConfig::central("t-central-restart").binary(&bin)).unwrap();
    let mut edge = NatsServer::start(
        ServerConfig::edge("t-edge-restart", vec![central.leaf_url().unwrap()]).binary(&bin),
    )
    .unwrap();
    central.wait_for_leafnodes(1, DEADLINE).unwrap();

    let client = central.client_addr();
    let leaf = central.leaf_addr().unwrap();
    let monitor = central.monitor_addr().unwrap();
    let dir = central.dir().to_path_buf();
    let store = central.store_dir().unwrap();
    poll_until("JetStream store to be created", || {
        store.join("jetstream").is_dir()
    });

    let pid = central.pid().unwrap();
    central.kill();
    assert!(!central.is_running());
    assert_eq!(central.pid(), None);
    assert!(!pid_alive(pid));
    assert!(
        TcpStream::connect(client).is_err(),
        "client port still open after kill"
    );
    central.kill(); // no-op when not running

    central.restart().unwrap();
    assert!(central.is_running());
    assert_ne!(central.pid(), Some(pid));
    assert_eq!(central.client_addr(), client);
    assert_eq!(central.leaf_addr(), Some(leaf));
    assert_eq!(central.monitor_addr(), Some(monitor));
    assert_eq!(central.dir(), dir);
    assert!(
        store.join("jetstream").is_dir(),
        "store lost across restart"
    );
    assert_eq!(info_json(&central)["jetstream"], true);
    // The edge redials (every 250 ms) onto the same leaf port.
    central.wait_for_leafnodes(1, DEADLINE).unwrap();

    // restart() of a running server also works, and so does a graceful stop.
    edge.restart().unwrap();
    central.wait_for_leafnodes(1, DEADLINE).unwrap();
    edge.stop();
    assert!(!edge.is_running());
    central.wait_for_leafnodes(0, DEADLINE).unwrap();
    edge.stop(); // no-op when not running

    let log = std::fs::read_to_string(central.log_path()).unwrap();
    assert!(
        log.matches("Server is ready").count() >= 2,
        "log is not appended across restarts"
    );
}

#[test]
fn fixed_dir_is_kept_and_drop_kills() {
    let bin = binary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("central");
    let pid;
    {
        let mut server = NatsServer::start(
            ServerConfig::central("t-central-drop")
                .binary(&bin)
                .dir(&dir),
        )
        .unwrap();
        assert!(server.is_running());
        pid = server.pid().unwrap();
        assert!(pid_alive(pid));
        assert_eq!(server.dir(), dir.as_path());
        let conf = std::fs::read_to_string(server.config_path()).unwrap();
        let port = server.client_addr().port();
        assert!(
            conf.contains(&format!("listen: 127.0.0.1:{port}")),
            "{conf}"
        );
        assert!(
            !conf.contains(":-1"),
            "config not rewritten with concrete ports:\n{conf}"
        );
    }
    assert!(!pid_alive(pid), "pid {pid} still alive after drop");
    assert!(
        dir.join("nats-server.log").is_file(),
        "caller's dir must survive drop"
    );

    // A server with its own temporary directory removes it on drop.
    let server = NatsServer::start(ServerConfig::central("t-central-tmp").binary(&bin)).unwrap();
    let own = server.dir().to_path_buf();
    let pid = server.pid().unwrap();
    drop(server);
    assert!(!pid_alive(pid));
    assert!(!own.exists(), "temporary dir {own:?} not removed");
}

#[test]
fn fixed_client_port_is_used() {
    let bin = binary();
    // Find a free port, release it, and ask the server for it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = NatsServer::start(
        ServerConfig::central("t-central-port")
            .binary(&bin)
            .client_port(port),
    )
    .unwrap();
    assert_eq!(server.client_addr().port(), port);
}

#[test]
fn start_failure_reports_exit_and_log() {
    let bin = binary();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let err = NatsServer::start(
        ServerConfig::central("t-central-busy")
            .binary(&bin)
            .client_port(port),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("exited during start"), "{msg}");
    assert!(msg.contains("address already in use"), "{msg}");
}

#[test]
fn invalid_config_is_rejected_before_spawn() {
    let err = NatsServer::start(ServerConfig::edge("t-edge-empty", vec![]).binary("/nonexistent"))
        .unwrap_err();
    assert!(err.to_string().contains("t-edge-empty"), "{err}");
}
