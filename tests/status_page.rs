//! The status pages in a real browser: a secure mesh of two edges with events landed, a
//! dead letter and one edge's link cut; headless Chromium (Debian's `chromium`) loads
//! the central hub's page and an edge hub's, the test reads the DOM the page's script
//! drew and checks the edges, link states and figures, and takes screenshots (kept in
//! `$CARGO_TARGET_TMPDIR/status-*.png` for a look).
//!
//! Without `/usr/bin/chromium` the test is skipped with a loud message, so `cargo test`
//! passes on a machine with only Rust and pip; with `CI` set (as `.ci/run` runs) a missing
//! Chromium fails it.

mod support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_testkit::metrics::http_get;
use support::{required_tool, wait_for, Mesh, MeshOpts};

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long one Chromium run may take.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);
/// Virtual time the page gets before its DOM is dumped or shot: at least three reads of
/// `status.json` (one a second), so the rates, which need two, are drawn.
const VIRTUAL_TIME_MS: u32 = 3500;
const WINDOW: (u32, u32) = (1500, 760);

/// A Chromium process in its own process group, killed (the whole group: the browser's
/// helper processes too) on drop if it is still running.
struct BrowserRun {
    child: Child,
}

impl BrowserRun {
    /// Runs headless Chromium with `args` and a fresh profile; its stdout, within
    /// [`BROWSER_DEADLINE`].
    fn run(chromium: &Path, args: &[String]) -> String {
        let profile = tempfile::tempdir().expect("profile dir");
        let out_path = profile.path().join("stdout");
        let out = std::fs::File::create(&out_path).expect("stdout file");
        let err = std::fs::File::create(profile.path().join("stderr")).expect("stderr file");
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("p").display()
            ))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let mut run = BrowserRun { child };
        let started = Instant::now();
        loop {
            if let Some(status) = run.child.try_wait().expect("wait for chromium") {
                let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
                let stderr =
                    std::fs::read_to_string(profile.path().join("stderr")).unwrap_or_default();
                assert!(
                    status.success(),
                    "chromium {args:?} failed ({status}):\n{stderr}"
                );
                return stdout;
            }
            assert!(
                started.elapsed() < BROWSER_DEADLINE,
                "chromium {args:?} still running after {BROWSER_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BrowserRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signals the process group this test created (pgid = the child's pid).
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// The DOM of `url` once its script ran for [`VIRTUAL_TIME_MS`].
fn dump_dom(chromium: &Path, url: &str) -> String {
    BrowserRun::run(
        chromium,
        &[
            format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
            "--dump-dom".into(),
            url.into(),
        ],
    )
}

/// A screenshot of `url` at [`WINDOW`] into `file`; checks it is a PNG of that size and
/// not a blank page.
fn screenshot(chromium: &Path, url: &str, file: &Path) {
    let _ = std::fs::remove_file(file);
    BrowserRun::run(
        chromium,
        &[
            format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            format!("--screenshot={}", file.display()),
            url.into(),
        ],
    );
    let png = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        file.display()
    );
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), WINDOW, "screenshot size");
    // A page with only a heading on it is about 9 KB at this size; the drawn pages are
    // 35-70 KB (measured on Chromium 148).
    assert!(
        png.len() > 25_000,
        "{} is only {} bytes: a blank page?",
        file.display(),
        png.len()
    );
    eprintln!("screenshot {} ({} bytes)", file.display(), png.len());
}

/// The text of the element with `id="<id>"` (a leaf element).
fn by_id(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"));
    text_after_tag(&dom[at..])
}

/// The text of cell `key` in the row of `edge`.
fn edge_cell(dom: &str, edge: &str, key: &str) -> String {
    let row_at = dom
        .find(&format!("<tr data-edge=\"{edge}\""))
        .unwrap_or_else(|| panic!("no row for edge {edge} in the page:\n{dom}"));
    let row = &dom[row_at..];
    let row = &row[..row.find("</tr>").expect("row end")];
    let at = row
        .find(&format!("data-k=\"{key}\""))
        .unwrap_or_else(|| panic!("no cell {key} in the row of {edge}: {row}"));
    text_after_tag(&row[at..])
}

fn text_after_tag(s: &str) -> String {
    let start = s.find('>').expect("tag end") + 1;
    let end = s[start..].find('<').expect("next tag") + start;
    s[start..end].to_string()
}

/// `/status.json` of the hub at `addr`.
async fn status_json(addr: SocketAddr) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(addr, "/status.json").await?).ok()
}

/// The edge `id` of a central `/status.json`.
fn edge_of<'a>(s: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    s["edges"].as_array()?.iter().find(|e| e["id"] == id)
}

fn shots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pages_show_edges_links_and_figures_in_chromium() {
    let Some(chromium) = required_tool(CHROMIUM, "chromium") else {
        return;
    };
    let mesh = Mesh::start(MeshOpts {
        edges: 2,
        ..MeshOpts::default()
    })
    .await;
    let kit = mesh.kit();
    let central = kit.central_hubs[0].http();
    let edge2 = kit.sites[1].hub().expect("edge hub e2").http();

    let alpha = mesh.agent("alpha").await;
    for i in 0..7 {
        alpha
            .publish("t.test", "orders.created", format!("a{i}"))
            .await
            .unwrap();
    }
    let beta = kit.agent(1, "beta").await.unwrap();
    for i in 0..3 {
        beta.publish("t.test", "orders.created", format!("b{i}"))
            .await
            .unwrap();
    }
    mesh.events_when(10).await;
    // A consumer rejects one event: a dead letter.
    let worker = mesh.agent("worker").await;
    let mut sub = worker.subscribe("strict", "orders.>").await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    d.reject("not for this test").await.unwrap();
    wait_for(
        "the central page's figures: e1 landed 7, e2 landed 3, 1 dead letter",
        || async {
            status_json(central).await.is_some_and(|s| {
                edge_of(&s, "e1").is_some_and(|e| e["lander"]["mark"] == 7)
                    && edge_of(&s, "e2").is_some_and(|e| e["lander"]["mark"] == 3)
                    && s["agents"]["total"] == 2
                    && s["dead_letters"]["recorded"] == 1
                    && s["dead_letters"]["waiting"] == 1
            })
        },
    )
    .await;

    // Cut e2's link; its agent keeps publishing into the outbox.
    kit.proxy(1).unwrap().cut();
    kit.wait_uplink(1, false).await.unwrap();
    for i in 0..4 {
        beta.publish("t.test", "orders.created", format!("c{i}"))
            .await
            .unwrap();
    }
    wait_for("the centre records e2's link lost", || async {
        status_json(central)
            .await
            .is_some_and(|s| edge_of(&s, "e2").is_some_and(|e| e["link"] == "lost"))
    })
    .await;
    let head = status_json(central).await.unwrap()["audit"]["head_hash"]
        .as_str()
        .unwrap()
        .to_string();

    let url = format!("http://{central}/status");
    let dom = dump_dom(&chromium, &url);
    assert_eq!(by_id(&dom, "hub"), "c0");
    // Readiness is drawn, but not pinned: on a loaded machine (Chromium rendering beside
    // the hubs) the lander's pull can miss an idle heartbeat and the hub is "not ready"
    // for a second (central_hub::health's rule), as a screenshot once showed.
    let ready = by_id(&dom, "ready");
    assert!(
        ["ready", "ready, degraded", "not ready"].contains(&ready.as_str()),
        "readiness badge {ready:?}"
    );
    assert_eq!(
        (by_id(&dom, "edges-connected"), by_id(&dom, "edges-total")),
        ("1".into(), "2".into())
    );
    assert_eq!(by_id(&dom, "landed"), "10");
    assert_eq!(by_id(&dom, "agents-total"), "2");
    assert_eq!(by_id(&dom, "dlq-recorded"), "1");
    assert_eq!(by_id(&dom, "dlq-waiting"), "1");
    assert!(
        by_id(&dom, "audit-hash").starts_with(&head[..16]),
        "the audit head {head} is not on the page"
    );
    for (edge, link, landed) in [("e1", "connected", "7"), ("e2", "lost", "3")] {
        assert_eq!(edge_cell(&dom, edge, "link"), link, "link of {edge}");
        assert_eq!(edge_cell(&dom, edge, "landed"), landed, "landed of {edge}");
        assert_eq!(
            edge_cell(&dom, edge, "mark"),
            landed,
            "last landed seq of {edge}"
        );
        assert_eq!(edge_cell(&dom, edge, "agents"), "1", "agents of {edge}");
    }
    assert_eq!(edge_cell(&dom, "e2", "outages"), "1");
    // Drawn from at least two reads: the page refreshes by itself.
    assert_eq!(edge_cell(&dom, "e1", "landing-rate"), "0.0");
    screenshot(&chromium, &url, &shots_dir().join("status-central.png"));

    // The cut edge's own page has the live backlog the centre cannot see.
    let url = format!("http://{edge2}/");
    let dom = dump_dom(&chromium, &url);
    assert_eq!(by_id(&dom, "edge"), "e2");
    assert_eq!(by_id(&dom, "uplink"), "link down");
    assert_eq!(by_id(&dom, "backlog"), "4");
    assert_eq!(
        (by_id(&dom, "last-seq"), by_id(&dom, "acked-seq")),
        ("7".into(), "3".into())
    );
    assert_eq!(by_id(&dom, "ingested"), "7");
    screenshot(&chromium, &url, &shots_dir().join("status-edge.png"));

    // Healed, the centre lands the backlog and the page follows.
    kit.proxy(1).unwrap().heal();
    mesh.events_when(14).await;
    wait_for("e2 connected again with 7 landed", || async {
        status_json(central).await.is_some_and(|s| {
            edge_of(&s, "e2").is_some_and(|e| e["link"] == "connected" && e["lander"]["mark"] == 7)
        })
    })
    .await;
    let dom = dump_dom(&chromium, &format!("http://{central}/"));
    assert_eq!(edge_cell(&dom, "e2", "link"), "connected");
    assert_eq!(edge_cell(&dom, "e2", "mark"), "7");
    assert_eq!(by_id(&dom, "edges-connected"), "2");
}
