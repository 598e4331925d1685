//! A `mesh` hub run as a child process, so it can be killed with SIGKILL, stopped with
//! SIGTERM, restarted with the same arguments, and measured (RSS). Killed on drop.
//!
//! Its stdout and stderr are appended to one log file across restarts. `MESH_LOG` is set
//! to debug the hubs unless [`MeshProcess::env`] says otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `MESH_LOG` of a hub process unless set otherwise: hub internals at debug, for
/// post-mortems of failed tests.
pub const DEFAULT_LOG_FILTER: &str = "info,edge_hub=debug,central_hub=debug,async_nats=warn";

/// A restartable `mesh` child process; see the module doc.
pub struct MeshProcess {
    name: String,
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl MeshProcess {
    /// `exe args…`, not started yet, with stdout and stderr to be appended to `log`.
    pub fn new(name: &str, exe: &Path, args: Vec<String>, log: PathBuf) -> MeshProcess {
        MeshProcess {
            name: name.into(),
            exe: exe.into(),
            args,
            log,
            env: vec![("MESH_LOG".into(), DEFAULT_LOG_FILTER.into())],
            child: None,
        }
    }

    /// Starts `exe args…` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        exe: &Path,
        args: Vec<String>,
        log: PathBuf,
    ) -> std::io::Result<MeshProcess> {
        let mut p = MeshProcess::new(name, exe, args, log);
        p.start()?;
        Ok(p)
    }

    /// Sets an environment variable of the process (from its next start on).
    pub fn env(mut self, key: &str, value: &str) -> MeshProcess {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// The name given at spawn (e.g. `edge hub e1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The arguments the process is started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The child's pid while it runs (as far as this handle knows).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process again with the same arguments (after a kill or stop).
    pub fn start(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.exe)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL and reap: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` for the exit (SIGKILL after that). Returns whether
    /// the process exited by itself with status 0.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Peak and current resident set size in bytes (`VmHWM`, `VmRSS` of /proc).
    pub fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb = |key: &str| -> Option<u64> {
            status
                .lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
                .map(|k| k * 1024)
        };
        Some((kb("VmHWM:")?, kb("VmRSS:")?))
    }

    /// The whole log file (empty if it cannot be read).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MeshProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Bytes a directory tree really occupies on disk (allocated blocks, so sparse files
/// count for what they use).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.blocks() * 512;
            }
        }
    }
    total
}
