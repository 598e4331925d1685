//! JavaScript for the interop tests: the pinned npm packages installed once with npm, as
//! the Python ones are with pip: `npm install --prefix <tools dir>/js-lib`, reused when
//! present. A script runs from a folder with a `node_modules` link to it (ES modules
//! resolve packages by folder, not by `NODE_PATH`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::python::{run, Lock};

/// The npm packages of the JavaScript tests, pinned: the NATS client and the official
/// CloudEvents SDK.
const JS_PACKAGES: &[&str] = &["nats@2.29.3", "cloudevents@10.0.0"];

/// The folder whose `node_modules` holds [`JS_PACKAGES`], installed on first use.
pub fn ensure_js_packages() -> PathBuf {
    let tools = mesh_nats::tools_dir();
    std::fs::create_dir_all(&tools).unwrap();
    let _lock = Lock::take(&tools.join("js.lock"));
    let lib = tools.join("js-lib");
    let stamp = lib.join("agentmesh-packages.txt");
    let want = JS_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(&want) {
        return lib;
    }
    let _ = std::fs::remove_dir_all(&lib);
    std::fs::create_dir_all(&lib).unwrap();
    let mut npm = Command::new("npm");
    npm.args(["install", "--silent", "--no-audit", "--no-fund"])
        // A registry that cannot be reached fails the install in about a minute, not
        // after npm's default of minutes per package.
        .args(["--fetch-retries=1", "--fetch-timeout=30000", "--prefix"])
        .arg(&lib)
        .args(JS_PACKAGES);
    // npm's fetches verify with Node's built-in CA list, which does not include the
    // system's (a registry behind a TLS-inspecting proxy, as on the CI machines, then
    // fails with SELF_SIGNED_CERT_IN_CHAIN and retries for ages): add the system bundle
    // unless the environment says otherwise. pip uses the system's by itself.
    const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
    if std::env::var_os("NODE_EXTRA_CA_CERTS").is_none() && Path::new(SYSTEM_CA).is_file() {
        npm.env("NODE_EXTRA_CA_CERTS", SYSTEM_CA);
    }
    run(&mut npm).unwrap_or_else(|e| panic!("installing {JS_PACKAGES:?} from npm: {e}"));
    std::fs::write(&stamp, want).unwrap();
    lib
}

/// Writes `source` as `dir/<name>` beside a `node_modules` link to `lib`'s, ready for
/// `node`.
pub fn module_in(dir: &Path, lib: &Path, name: &str, source: &str) -> PathBuf {
    let link = dir.join("node_modules");
    if !link.exists() {
        std::os::unix::fs::symlink(lib.join("node_modules"), &link).unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path
}
