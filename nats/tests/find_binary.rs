//! `find_binary` and the `MESH_NATS_SERVER` override.
//!
//! Invariant: this is the only test binary that changes environment variables, and it does so
//! in a single test function, so no other test can observe the change.

use mesh_nats::{find_binary, Error, BINARY_ENV};

#[test]
fn override_env_var() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-nats-server");
    std::env::set_var(BINARY_ENV, &missing);
    let err = find_binary().unwrap_err();
    assert!(matches!(err, Error::OverrideMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("MESH_NATS_SERVER"), "{msg}");
    assert!(msg.contains("no-such-nats-server"), "{msg}");
    // ensure_binary must not paper over a broken override by installing.
    assert!(mesh_nats::ensure_binary().is_err());

    let present = tmp.path().join("nats-server");
    std::fs::write(&present, "#!/bin/sh\n").unwrap();
    std::env::set_var(BINARY_ENV, &present);
    assert_eq!(find_binary().unwrap(), Some(present));

    std::env::remove_var(BINARY_ENV);
}
