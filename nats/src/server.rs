//! A running nats-server process: start, readiness, kill/stop/restart, monitoring.
//!
//! Invariants:
//! - [`NatsServer::start`] returns only once the client port accepted a TCP connection and sent
//!   its `INFO` line; on any failure the process is killed and reaped before the error returns.
//! - Ports: a requested port of 0 starts the server with `-1`; the real ports are read from the
//!   ports file nats-server writes to `<dir>/<basename(argv0)>_<pid>.ports` (JSON with keys
//!   `nats` and `monitoring`, arrays of URLs) and, for the leafnode listener, which that file
//!   does not list, from `/varz` `leaf.port`. After the first start the config file is rewritten
//!   with the concrete ports, so every restart binds the same ports.
//! - The process's stdout and stderr go to `<dir>/nats-server.log`, appended across restarts.
//! - A `NatsServer` owns its child: dropping it kills (SIGKILL) and reaps the process, then
//!   removes the directory if it was a temporary one the server created.
//! - Waiting is always a short polling loop with a deadline, never a bare sleep.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::config::{store_dir, Ports, Role, ServerConfig};
use crate::probe::{http_get, leaf_port_from_varz, parse_ports_file, read_info_line, truncate};
use crate::Error;

/// Name of the config file inside the server's directory.
pub const CONFIG_FILE: &str = "nats-server.conf";
/// Name of the log file inside the server's directory.
pub const LOG_FILE: &str = "nats-server.log";

const POLL: Duration = Duration::from_millis(20);
const STOP_GRACE: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 20;
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// A nats-server child process managed by this crate.
#[derive(Debug)]
pub struct NatsServer {
    cfg: ServerConfig,
    binary: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// Concrete ports once started (0 = not yet known).
    ports: Ports,
    /// Declared last so it is removed after `Drop::drop` killed the process.
    _temp: Option<TempDir>,
}

impl NatsServer {
    /// Write the config, start nats-server and block until it is ready (see the module doc).
    pub fn start(cfg: ServerConfig) -> Result<NatsServer, Error> {
        cfg.validate()?;
        let binary = match &cfg.binary {
            Some(b) => b.clone(),
            None => crate::ensure_binary()?,
        };
        let (dir, temp) = match &cfg.dir {
            Some(d) => {
                fs::create_dir_all(d).map_err(|e| Error::io("creating server directory", d, e))?;
                let abs = std::path::absolute(d).map_err(|e| Error::io("making absolute", d, e))?;
                (abs, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("mesh-nats-{}-", cfg.name))
                    .tempdir()
                    .map_err(|e| {
                        Error::io("creating temporary directory in", std::env::temp_dir(), e)
                    })?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let requested = Ports {
            client: cfg.client_port,
            leaf: if cfg.role == Role::Central {
                cfg.leaf_port
            } else {
                0
            },
            monitor: cfg.monitor_port,
        };
        let mut server = NatsServer {
            config_path: dir.join(CONFIG_FILE),
            log_path: dir.join(LOG_FILE),
            binary,
            dir,
            cfg,
            child: None,
            ports: requested,
            _temp: temp,
        };
        server.write_config(requested)?;
        // On error `server` is dropped here, which kills and reaps the child.
        let ports = server.spawn_and_wait()?;
        server.ports = ports;
        server.write_config(ports)?;
        tracing::debug!(
            name = %server.cfg.name,
            client = ports.client,
            leaf = ports.leaf,
            monitor = ports.monitor,
            dir = %server.dir.display(),
            "nats-server ready"
        );
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    /// The client listener.
    pub fn client_addr(&self) -> SocketAddr {
        local(self.ports.client)
    }

    /// The leafnode listener (central only).
    pub fn leaf_addr(&self) -> Option<SocketAddr> {
        match self.cfg.role {
            Role::Central => Some(local(self.ports.leaf)),
            Role::Edge { .. } => None,
        }
    }

    /// `nats-leaf://127.0.0.1:PORT` (central only).
    pub fn leaf_url(&self) -> Option<String> {
        self.leaf_addr()
            .map(|a| format!("nats-leaf://127.0.0.1:{}", a.port()))
    }

    /// The monitoring HTTP listener (`/varz`, `/leafz`, `/jsz`, ...).
    pub fn monitor_addr(&self) -> Option<SocketAddr> {
        (self.ports.monitor != 0).then(|| local(self.ports.monitor))
    }

    /// The child's pid; `None` before start and after kill/stop (use [`Self::is_running`] to
    /// notice a process that exited on its own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory holding config, store, ports file and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file passed with `-c`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The JetStream store directory (central, or an edge with JetStream).
    pub fn store_dir(&self) -> Option<PathBuf> {
        match self.cfg.role {
            Role::Central => Some(store_dir(&self.dir)),
            Role::Edge { .. } => self
                .cfg
                .edge_jetstream_domain
                .as_ref()
                .map(|_| store_dir(&self.dir)),
        }
    }

    /// The server name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The configuration this server was started with (ports as requested, not resolved).
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// The binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The last `lines` lines of the log file (empty if it cannot be read).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Whether the process is alive; reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.child = None;
                false
            }
        }
    }

    /// SIGKILL the process and reap it; no-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it already exited; wait() then just reaps.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the process, wait up to 5 s for it to exit, then SIGKILL; reap. No-op if not
    /// running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain syscall on our own (unreaped, so not recycled) child pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) | Err(_) = child.try_wait() {
                    return;
                }
                thread::sleep(POLL);
            }
            tracing::warn!(name = %self.cfg.name, pid, "nats-server ignored SIGTERM for 5 s; killing");
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kill if running, then start again with the same config, ports and directory; blocks
    /// until ready. Retries while the old ports are still briefly in use, up to the start
    /// timeout.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            match self.spawn_and_wait() {
                Ok(ports) => {
                    self.ports = ports;
                    return Ok(());
                }
                Err(Error::ExitedDuringStart { ref log_tail, .. })
                    if log_tail.contains("address already in use") && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    self.kill();
                    return Err(e);
                }
            }
        }
    }

    /// `GET path` on the monitoring port; returns the body of a 200 response.
    pub fn monitor_get(&self, path: &str) -> Result<String, Error> {
        let addr = self.monitor_addr().ok_or_else(|| Error::NotRunning {
            server: self.cfg.name.clone(),
        })?;
        http_get(addr, path, HTTP_TIMEOUT)
    }

    /// `GET path` on the monitoring port, parsed as JSON.
    pub fn monitor_json(&self, path: &str) -> Result<serde_json::Value, Error> {
        let body = self.monitor_get(path)?;
        serde_json::from_str(&body).map_err(|e| Error::Monitor {
            addr: local(self.ports.monitor),
            path: path.to_string(),
            reason: format!("body is not JSON ({e}): {}", truncate(&body, 200)),
        })
    }

    /// The route port of a cluster node.
    pub fn route_port(&self) -> Option<u16> {
        self.cfg.cluster.as_ref().map(|c| c.port)
    }

    /// The server name of the JetStream meta leader as this node sees it (`/jsz`
    /// `meta_cluster.leader`); `None` while there is none (or this node is not clustered).
    pub fn meta_leader(&self) -> Result<Option<String>, Error> {
        let v = self.monitor_json("/jsz")?;
        Ok(v.pointer("/meta_cluster/leader")
            .and_then(serde_json::Value::as_str)
            .filter(|l| !l.is_empty())
            .map(str::to_string))
    }

    /// Poll `/jsz` until this node knows a JetStream meta leader, or `timeout` passes;
    /// returns the leader's server name.
    pub fn wait_for_meta_leader(&self, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.meta_leader() {
                Ok(Some(l)) => return Ok(l),
                Ok(None) => "no meta leader yet".to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::WaitTimeout {
                    server: self.cfg.name.clone(),
                    what: "a JetStream meta leader".into(),
                    waited: timeout,
                    last,
                });
            }
            thread::sleep(POLL.max(Duration::from_millis(50)));
        }
    }

    /// Number of leafnode connections (`/leafz` `leafnodes`): on central, connected edges; on an
    /// edge, 1 while its link to central is up.
    pub fn leafnode_count(&self) -> Result<u64, Error> {
        let v = self.monitor_json("/leafz")?;
        v.get("leafnodes")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::Monitor {
                addr: local(self.ports.monitor),
                path: "/leafz".into(),
                reason: format!(
                    "no integer \"leafnodes\" in {}",
                    truncate(&v.to_string(), 200)
                ),
            })
    }

    /// Poll `/leafz` until exactly `n` leafnode connections are reported, or `timeout` passes.
    pub fn wait_for_leafnodes(&self, n: u64, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.leafnode_count() {
                Ok(c) if c == n => return Ok(()),
                Ok(c) => format!("{c} leafnode connection(s)"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::WaitTimeout {
                    server: self.cfg.name.clone(),
                    what: format!("{n} leafnode connection(s)"),
                    waited: timeout,
                    last,
                });
            }
            thread::sleep(POLL.max(Duration::from_millis(50)));
        }
    }

    fn write_config(&self, ports: Ports) -> Result<(), Error> {
        let text = self.cfg.render(&self.dir, ports);
        let tmp = self.dir.join(format!("{CONFIG_FILE}.tmp"));
        fs::write(&tmp, text).map_err(|e| Error::io("writing config", &tmp, e))?;
        fs::rename(&tmp, &self.config_path)
            .map_err(|e| Error::io("renaming config into place", &self.config_path, e))
    }

    /// Spawn the process (stored in `self.child`) and wait until it is ready; returns the
    /// concrete ports. On error the child is killed and reaped.
    fn spawn_and_wait(&mut self) -> Result<Ports, Error> {
        self.remove_stale_ports_files()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| Error::io("opening log", &self.log_path, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating log handle", &self.log_path, e))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_path)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: self.binary.clone(),
                config: self.config_path.clone(),
                source,
            })?;
        self.child = Some(child);
        let result = self.wait_ready();
        if result.is_err() {
            self.kill();
        }
        result
    }

    fn wait_ready(&mut self) -> Result<Ports, Error> {
        let timeout = self.cfg.start_timeout;
        let deadline = Instant::now() + timeout;

        // 1. The ports file.
        let mut last_problem = String::from("no ports file yet");
        let file_ports = loop {
            self.check_alive()?;
            match self.read_ports_file() {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => last_problem = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error(
                    format!("ports file in {} ({last_problem})", self.dir.display()),
                    timeout,
                ));
            }
            thread::sleep(POLL);
        };

        // 2. The client port's INFO line.
        let client = local(file_ports.client);
        loop {
            self.check_alive()?;
            match read_info_line(client, deadline) {
                Ok(line) if line.starts_with("INFO") => break,
                Ok(line) => last_problem = format!("first line was {:?}", truncate(&line, 120)),
                Err(e) => last_problem = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error(
                    format!("INFO line from client port {client} ({last_problem})"),
                    timeout,
                ));
            }
            thread::sleep(POLL);
        }

        // 3. The leafnode port (central), which the ports file does not list.
        let mut ports = file_ports;
        if self.cfg.role == Role::Central {
            let monitor = local(ports.monitor);
            ports.leaf = loop {
                self.check_alive()?;
                match http_get(monitor, "/varz", HTTP_TIMEOUT)
                    .and_then(|b| leaf_port_from_varz(monitor, &b))
                {
                    Ok(p) => break p,
                    Err(e) => last_problem = e.to_string(),
                }
                if Instant::now() >= deadline {
                    return Err(self.timeout_error(
                        format!("leafnode port from /varz ({last_problem})"),
                        timeout,
                    ));
                }
                thread::sleep(POLL);
            };
        }
        Ok(ports)
    }

    /// Error if the child has exited (with its status and the log tail).
    fn check_alive(&mut self) -> Result<(), Error> {
        let status = match self.child.as_mut() {
            None => "no process".to_string(),
            Some(child) => match child.try_wait() {
                Ok(None) => return Ok(()),
                Ok(Some(status)) => status.to_string(),
                Err(e) => format!("unknown status ({e})"),
            },
        };
        self.child = None;
        Err(Error::ExitedDuringStart {
            server: self.cfg.name.clone(),
            status,
            log: self.log_path.clone(),
            log_tail: self.log_tail(LOG_TAIL_LINES),
        })
    }

    fn timeout_error(&self, what: String, waited: Duration) -> Error {
        Error::StartTimeout {
            server: self.cfg.name.clone(),
            what,
            waited,
            log: self.log_path.clone(),
            log_tail: self.log_tail(LOG_TAIL_LINES),
        }
    }

    fn ports_files(&self) -> Result<Vec<PathBuf>, Error> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| Error::io("listing directory", &self.dir, e))?;
        Ok(entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "ports"))
            .collect())
    }

    /// Ports files of earlier runs (left behind by SIGKILL) would be mistaken for this run's.
    fn remove_stale_ports_files(&self) -> Result<(), Error> {
        for p in self.ports_files()? {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing stale ports file", p, e)),
            }
        }
        Ok(())
    }

    /// This run's ports file, parsed; `Ok(None)` if not written yet.
    fn read_ports_file(&self) -> Result<Option<Ports>, Error> {
        let Some(pid) = self.pid() else {
            return Ok(None);
        };
        let files = self.ports_files()?;
        // The name is `<basename(argv0)>_<pid>.ports`; prefer our pid, accept any other (a
        // wrapper script may have exec'd the real binary under another pid).
        let suffix = format!("_{pid}.ports");
        let Some(path) = files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(&suffix))
            .or_else(|| files.first())
        else {
            return Ok(None);
        };
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading ports file", path, e)),
        };
        parse_ports_file(path, &text).map(Some)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// The last `lines` lines of a file (empty string if unreadable).
fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let mut raw = Vec::new();
        if f.read_to_end(&mut raw).is_ok() {
            text = String::from_utf8_lossy(&raw).into_owned();
        }
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        fs::write(&p, (1..=30).map(|i| format!("l{i}\n")).collect::<String>()).unwrap();
        let t = log_tail(&p, 3);
        assert_eq!(t, "l28\nl29\nl30");
        assert_eq!(log_tail(&dir.path().join("missing"), 3), "");
    }
}
