//! One process per data directory. `mesh up` and `mesh edge` take an exclusive lock on
//! `<data dir>/mesh.lock` before they touch anything in it, and hold it while they run.
//! A second one on the same directory refuses at once, naming the PID that holds it:
//! two central nats-servers on one store, or two edge hubs on one outbox, corrupt what
//! the first one keeps (a second `mesh up` once broke the first mesh's audit chain).
//!
//! The lock is `flock(2)` on an open file description, so it goes when every process
//! holding that description is gone, however they ended: no stale lock after a crash.
//! `mesh up` lets its children (nats-servers, hubs) inherit the descriptor, so a
//! directory stays locked while anything `mesh up` started still runs on it, also when
//! `mesh up` itself was killed with SIGKILL.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The lock file's name inside a data directory.
pub const LOCK_FILE: &str = "mesh.lock";

/// Held until drop (and, with [`DirLock::inherit`], until the children exit too).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (created if missing) for `what` (e.g. `mesh up`), or refuses, naming
    /// the process that holds it and what it is.
    pub fn take(dir: &Path, what: &str) -> anyhow::Result<DirLock> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                let me = format!("pid {} {what}\n", std::process::id());
                file.set_len(0)
                    .and_then(|_| file.rewind())
                    .and_then(|_| file.write_all(me.as_bytes()))
                    .with_context(|| format!("cannot write lock file {}", path.display()))?;
                Ok(DirLock { _file: file, path })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = match holder.is_empty() {
                    true => "another process (it has not written its pid yet)".to_string(),
                    false => holder.to_string(),
                };
                bail!(
                    "data directory {} is in use by {holder} (or by a process it started), \
                     which holds {}; stop it first, or choose another --data-dir. Nothing \
                     was started and nothing in the directory was touched",
                    dir.display(),
                    path.display()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    /// Lets child processes started from now on inherit the lock, so the directory stays
    /// locked while they run even if this process dies first.
    pub fn inherit(&self) -> anyhow::Result<()> {
        let fd = self._file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this struct owns; only FD_CLOEXEC is cleared.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            bail!(
                "cannot pass the lock {} on to child processes: {}",
                self.path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_dir_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::take(dir.path(), "mesh up").unwrap();
        let err = DirLock::take(dir.path(), "mesh up")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("in use by pid {} mesh up", std::process::id())),
            "{err}"
        );
        assert!(err.contains(LOCK_FILE), "{err}");
        drop(first);
        DirLock::take(dir.path(), "mesh edge").expect("free once dropped");
    }
}
