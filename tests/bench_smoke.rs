//! `mesh bench` at a smoke size, so it cannot rot. No timing assertions: only that every
//! system ran and every figure was produced.

use std::process::Command;

#[test]
fn bench_smoke_produces_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "bench",
            "--count",
            "3000",
            "--backlog",
            "3000",
            "--rates",
            "300",
            "--latency-secs",
            "1",
            "--rss-events",
            "3000",
            "--cycles",
            "2",
            "--cycle-events",
            "1000",
            "--agents",
            "2",
            "--noisy-secs",
            "1",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--dir")
        .arg(dir.path().join("work"))
        .env("MESH_LOG", "warn")
        .output()
        .expect("run mesh bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("end-to-end throughput") && stdout.contains("am/native"),
        "{stdout}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for sys in ["limit", "native", "agentmesh"] {
        assert!(
            r[sys]["throughput_per_s"].as_f64().unwrap() > 0.0,
            "{sys}: {r}"
        );
        assert_eq!(
            r[sys]["latency"][0]["samples"].as_u64(),
            Some(300),
            "{sys}: {r}"
        );
    }
    for sys in ["native", "agentmesh"] {
        assert!(r[sys]["drain_per_s"].as_f64().unwrap() > 0.0, "{sys}: {r}");
    }
    let extra = &r["agentmesh_extra"];
    assert!(extra["edge_peak_rss_bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(extra["outbox_disk_full_bytes"].as_u64().unwrap() > 0, "{r}");
    // The noisy neighbour: the calm agent's every publish acked, alone and beside the
    // flooder (a refusal fails the bench), and the flooder got through.
    let noisy = &extra["noisy"];
    assert_eq!(noisy["alone"]["samples"].as_u64(), Some(100), "{r}");
    assert_eq!(noisy["beside"]["samples"].as_u64(), Some(100), "{r}");
    assert!(noisy["flood_acked"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(noisy["flood_limit_per_s"].as_f64(), Some(20_000.0), "{r}");
    assert_eq!(
        extra["outbox_disk_after_cycles"].as_array().unwrap().len(),
        2,
        "{r}"
    );
}
