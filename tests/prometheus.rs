//! The monitoring files (`monitoring/`) checked with the real Prometheus tools:
//! `promtool check rules` and `check config`, the alert rules' unit tests
//! (`alerts_test.yml`), and a real Prometheus server scraping a real secure mesh with
//! the scrape config and the rules: the mesh's metrics arrive, every rule loads and
//! evaluates without error, none fires on the healthy mesh, a rejected event makes
//! `MeshDeadLettersArriving` fire, a cut link makes `MeshEdgeLinkDown` pending for that
//! edge, every query of the Grafana dashboard is valid PromQL, and every metric the
//! rules and the dashboard name is one the hubs really expose.
//!
//! Needs Debian's `prometheus` package (`promtool`, `prometheus`): without it the tests
//! are skipped with a loud message, so `cargo test` passes on a machine with only Rust
//! and pip; with `CI` set (as `.ci/run` runs) a missing tool fails them.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mesh_testkit::metrics::http_get;
use mesh_testkit::{free_addr, MeshProcess};
use serde_json::Value;
use support::{required_tool, wait_for, Mesh, MeshOpts};

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const ALERTS: [&str; 5] = [
    "MeshEdgeLinkDown",
    "MeshEdgeBacklogGrowing",
    "MeshLanderStalled",
    "MeshDeadLettersArriving",
    "MeshOutboxNearFull",
];

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

/// Runs `promtool args…` in `monitoring/`; its output, failing the test on a non-zero exit.
fn promtool(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .current_dir(monitoring())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    let Some(promtool_bin) = required_tool(PROMTOOL, "prometheus") else {
        return;
    };
    let out = promtool(&promtool_bin, &["check", "rules", "alerts.yml"]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{out}"
    );
    promtool(&promtool_bin, &["check", "config", "prometheus.yml"]);
}

/// Each alert fires for its broken series and not for the healthy ones, nor before its
/// `for` (the cases are in `monitoring/alerts_test.yml`).
#[test]
fn alert_rules_pass_their_unit_tests() {
    let Some(promtool_bin) = required_tool(PROMTOOL, "prometheus") else {
        return;
    };
    let out = promtool(&promtool_bin, &["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = std::fs::read_to_string(monitoring().join("alerts_test.yml")).unwrap();
    for alert in ALERTS {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alerts_test.yml has no case for {alert}"
        );
    }
}

/// `GET path` on `addr`: status code and body.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus API call: the JSON answer (status `success` or `error`).
fn api(prom: SocketAddr, path: &str) -> Option<Value> {
    let (_, body) = get(prom, path)?;
    serde_json::from_str(&body).ok()
}

/// The result vector of instant query `q`.
fn query(prom: SocketAddr, q: &str) -> Vec<Value> {
    api(prom, &format!("/api/v1/query?query={}", encode(q)))
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// Every `mesh_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mesh_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The series names a `/metrics` page can hold, from its `# TYPE` lines (counters end in
/// `_total`, histograms have `_bucket`, `_sum`, `_count`), so families without a sample
/// yet count too.
fn exposed_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let mut w = line.split_whitespace();
        if (w.next(), w.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (w.next(), w.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The families the hubs register (`r.register("name", …)` in each hub's `metrics.rs`,
/// with the hub's prefix): a family without a sample yet (no bundle refused so far) is
/// not on the page at all.
fn registered_names() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = BTreeSet::new();
    for (file, prefix) in [
        ("central-hub/src/metrics.rs", "mesh_central_"),
        ("edge-hub/src/metrics.rs", "mesh_edge_"),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for part in text.split(".register(").skip(1) {
            let name = part.split('"').nth(1).expect("a registered name");
            names.insert(format!("{prefix}{name}"));
        }
    }
    names
}

/// Whether series `name` belongs to one of the `families` (a counter's `_total`, a
/// histogram's `_bucket`, `_sum`, `_count`).
fn in_families(name: &str, families: &BTreeSet<String>) -> bool {
    std::iter::once(name)
        .chain(
            ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s)),
        )
        .any(|n| families.contains(n))
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_real_mesh_with_the_rules_and_the_dashboard() {
    let Some(prometheus_bin) = required_tool(PROMETHEUS, "prometheus") else {
        return;
    };
    let mesh = Mesh::start(MeshOpts {
        edges: 2,
        ..MeshOpts::default()
    })
    .await;
    let kit = mesh.kit();
    let central = kit.central_hubs[0].http();
    let edges: Vec<SocketAddr> = kit.sites.iter().map(|s| s.hub().unwrap().http()).collect();

    // The scrape config, with this mesh's hubs as targets and 1 s intervals.
    let dir = tempfile::tempdir().expect("prometheus dir");
    let template = std::fs::read_to_string(monitoring().join("prometheus.yml")).unwrap();
    let list = |addrs: &[SocketAddr]| {
        let quoted: Vec<String> = addrs.iter().map(|a| format!("'{a}'")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut config = template.clone();
    for (from, to) in [
        (
            "scrape_interval: 15s".to_string(),
            "scrape_interval: 1s".to_string(),
        ),
        (
            "evaluation_interval: 15s".into(),
            "evaluation_interval: 1s".into(),
        ),
        (
            "['central-1:9101', 'central-2:9101']".into(),
            list(&[central]),
        ),
        ("['edge-1:9102', 'edge-2:9102']".into(), list(&edges)),
        (
            "  - alerts.yml".into(),
            format!("  - {}", monitoring().join("alerts.yml").display()),
        ),
    ] {
        assert!(
            config.contains(&from),
            "prometheus.yml no longer has {from:?}"
        );
        config = config.replace(&from, &to);
    }
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let prom = free_addr().expect("a port for prometheus");
    let server = MeshProcess::spawn(
        "prometheus",
        &prometheus_bin,
        vec![
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={prom}"),
        ],
        dir.path().join("prometheus.log"),
    )
    .expect("start prometheus");

    let alpha = mesh.agent("alpha").await;
    for i in 0..5 {
        alpha
            .publish("t.test", "orders.created", format!("{i}"))
            .await
            .unwrap();
    }
    mesh.events_when(5).await;

    wait_for(
        "prometheus has every hub up and e1's 5 landed events",
        || async {
            let up = query(prom, "up == 1").len();
            let landed = query(prom, r#"mesh_central_landed_events_total{edge="e1"}"#);
            up == 3 && landed.first().is_some_and(|s| s["value"][1] == "5")
        },
    )
    .await;
    wait_for(
        "every alert rule loaded and evaluated without error",
        || async {
            let Some(v) = api(prom, "/api/v1/rules") else {
                return false;
            };
            let rules: Vec<&Value> = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            ALERTS.iter().all(|a| {
                rules
                    .iter()
                    .any(|r| r["name"] == *a && r["type"] == "alerting" && r["health"] == "ok")
            })
        },
    )
    .await;
    assert!(
        query(prom, r#"ALERTS{alertstate="firing"}"#).is_empty(),
        "alerts firing on a healthy mesh: {:?}",
        query(prom, "ALERTS")
    );

    // Every metric the rules and the dashboard name is one the hubs expose now, or a
    // family they register that has no sample yet (nothing refused or held so far).
    let mut exposed = BTreeSet::new();
    for addr in std::iter::once(central).chain(edges.iter().copied()) {
        let page = http_get(addr, "/metrics").await.expect("a hub's /metrics");
        exposed.extend(exposed_names(&page));
    }
    let registered = registered_names();
    let alerts_text = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    let dashboard_text = std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap();
    let named: BTreeSet<String> = metric_names(&alerts_text)
        .into_iter()
        .chain(metric_names(&dashboard_text))
        .collect();
    let unknown: Vec<&String> = named
        .iter()
        .filter(|n| !exposed.contains(*n) && !in_families(n, &registered))
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml or dashboard.json name metrics no hub exposes or registers: {unknown:?}"
    );
    let live = named.iter().filter(|n| exposed.contains(*n)).count();
    eprintln!(
        "{} metrics named by the rules and the dashboard, {live} on the hubs' pages now",
        named.len()
    );
    assert!(live * 2 > named.len(), "most named metrics should be live");

    // Every dashboard query is valid PromQL (Grafana's variables filled in).
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("dashboard.json parses");
    assert_eq!(dashboard["uid"], "agentmesh");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());
    for e in &exprs {
        let q = e.replace("$__rate_interval", "1m").replace("$edge", ".*");
        let v = api(prom, &format!("/api/v1/query?query={}", encode(&q)))
            .unwrap_or_else(|| panic!("no answer from prometheus for {q}"));
        assert_eq!(v["status"], "success", "dashboard query {q}: {v}");
    }

    // A consumer rejects an event: the dead letter is recorded, the alert fires at once.
    let worker = mesh.agent("worker").await;
    let mut sub = worker.subscribe("strict", "orders.>").await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    d.reject("not for this test").await.unwrap();
    wait_for("MeshDeadLettersArriving firing", || async {
        !query(
            prom,
            r#"ALERTS{alertname="MeshDeadLettersArriving",alertstate="firing"}"#,
        )
        .is_empty()
    })
    .await;

    // A cut link: the edge says so at once, the alert goes pending for that edge.
    kit.proxy(1).unwrap().cut();
    wait_for("MeshEdgeLinkDown pending or firing for e2 only", || async {
        let alerts = query(prom, r#"ALERTS{alertname="MeshEdgeLinkDown"}"#);
        alerts.len() == 1 && alerts[0]["metric"]["edge"] == "e2"
    })
    .await;
    wait_for("the centre's view: e2 lost", || async {
        query(prom, "mesh_central_edge_connected == 0")
            .iter()
            .any(|s| s["metric"]["edge"] == "e2")
    })
    .await;
    drop(server);
}
