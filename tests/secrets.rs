//! No secret leaves the key and credential files: after a secure mesh ran, published,
//! dead-lettered and revoked, no nkeys seed of the mesh appears in any log, server
//! config, `--print-config` output, metrics page or audit record; and every key and
//! credential file is mode 0600.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mesh_nats::auth::Identity;
use support::{mesh_cli_as, Mesh, MeshOpts};

/// Every nkeys seed in `keys/*.nk` and `creds/*.creds` (they start with `S`).
fn seeds(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["keys", "creds"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            if p.extension()
                .is_some_and(|x| x == "nk" || x == "creds" || x == "json")
            {
                assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for line in text.lines().map(str::trim) {
                if line.len() == 58 && line.starts_with('S') {
                    out.push(line.to_string());
                }
            }
        }
    }
    out
}

/// Every file under `dir` except the key and credential folders, as text.
fn readable_files(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if name != "keys" && name != "creds" {
                readable_files(&p, out);
            }
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_seed_in_logs_configs_metrics_or_audit_records() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("leaky").await;
    for n in 0..20 {
        agent.publish("t", "x.y", format!("{n}")).await.unwrap();
    }
    mesh.drained_events().await;
    // A revocation goes through the system account: its traces must hold no seed either.
    let victim = Identity::Operator {
        name: "gone".into(),
    };
    mesh.auth(&victim);
    mesh.kit()
        .security()
        .unwrap()
        .revoke(&victim.user_name(), &mesh.central().client_url())
        .await
        .unwrap();

    let seeds = seeds(mesh.dir());
    assert!(seeds.len() >= 5, "found the mesh's seeds: {}", seeds.len());
    let mut texts = Vec::new();
    readable_files(mesh.dir(), &mut texts);
    assert!(texts.iter().any(|(p, _)| p.ends_with("nats-server.conf")));
    // What the hubs print with their credentials given.
    let hub_creds = mesh.auth(&Identity::EdgeHub { edge: "e1".into() });
    for args in [
        vec![
            "edge",
            "--id",
            "e1",
            "--data-dir",
            "/nonexistent",
            "--print-config",
        ],
        vec!["central", "--print-config"],
    ] {
        let (ok, out) = mesh_cli_as(&hub_creds, &args);
        assert!(ok, "{out}");
        texts.push((format!("mesh {}", args.join(" ")), out));
    }
    // Metrics pages and the audit log.
    for hub in mesh.kit().hubs() {
        let page = mesh_testkit::scrape_blocking(hub.http()).expect("metrics page");
        let text: String = page.samples().iter().map(|s| format!("{s:?}\n")).collect();
        texts.push((format!("metrics of {}", hub.id()), text));
    }
    let js = mesh.central_js().await;
    let audit = schemas::audit::read_all(&js, schemas::subject::STREAM_AUDIT)
        .await
        .unwrap();
    assert!(!audit.is_empty());
    for (seq, payload) in &audit {
        texts.push((
            format!("audit record {seq}"),
            String::from_utf8_lossy(payload).into_owned(),
        ));
    }
    for (what, text) in &texts {
        for seed in &seeds {
            assert!(
                !text.contains(seed.as_str()),
                "{what} contains the seed {}…",
                &seed[..6]
            );
        }
        assert!(
            !text.contains("BEGIN USER NKEY SEED"),
            "{what} holds a credential"
        );
    }
}
