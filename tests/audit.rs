//! The audit log (G8) and the registry, against real nats-servers.
//!
//! Tampering: `MESH_AUDIT` refuses deletes and purges, so a test cannot (and an attacker
//! with only stream API rights cannot) remove a record in place. To show that `mesh audit
//! verify` finds every other kind of tampering, each case copies the real chain into a
//! second stream with raw JetStream publishes — one record rewritten, removed, swapped
//! with its successor, or followed by a record from a foreign writer — and runs the real
//! `mesh audit verify --stream COPY`, which must fail naming the right record.

mod support;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use central_hub::audit::AuditLog;
use central_hub::registry::{AgentState, LinkState, Registry};
use schemas::audit::{self, kind, AuditRecord};
use support::{wait_for, Mesh, MeshOpts};

async fn audit_count(js: &jetstream::Context) -> u64 {
    match js.get_stream(schemas::subject::STREAM_AUDIT).await {
        Ok(s) => s.get_info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Copies `records` (already encoded) into a fresh stream `name` in the given order.
async fn copy_stream(js: &jetstream::Context, name: &str, payloads: &[Bytes]) {
    let subject = format!("tamper.{}", name.to_lowercase());
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await
    .expect("create copy stream");
    for p in payloads {
        js.publish(subject.clone(), p.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Copies `payloads` into a fresh stream `name` and runs `mesh audit verify` on it;
/// returns whether it passed and what it printed.
async fn verify_copy(
    mesh: &Mesh,
    js: &jetstream::Context,
    url: &str,
    name: &str,
    payloads: &[Bytes],
) -> (bool, String) {
    copy_stream(js, name, payloads).await;
    mesh.operator_cli(&["audit", "verify", "--nats", url, "--stream", name])
}

/// Each kind of tampering makes `mesh audit verify` fail at the right record; the intact
/// chain verifies, a digest proves a wholesale rewrite, and the real stream refuses
/// deletes and purges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_found_at_the_right_record() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let js = mesh.central_js().await;
    // config.applied and edge.connected come from the hub; add operator records.
    wait_for("the hub's first audit records", || async {
        audit_count(&js).await >= 2
    })
    .await;
    let log = AuditLog::open(js.clone(), schemas::subject::STREAM_AUDIT, "operator:test")
        .await
        .unwrap();
    for n in 0..4 {
        log.append(kind::REPLAY_RUN, serde_json::json!({"n": n}))
            .await
            .unwrap();
    }
    let url = mesh.central().client_url();
    let (ok, out) = mesh.operator_cli(&["audit", "verify", "--nats", &url]);
    assert!(ok && out.starts_with("OK MESH_AUDIT: "), "{out}");

    let digest_file = mesh.dir().join("digest.json");
    let (ok, out) = mesh.operator_cli(&[
        "audit",
        "digest",
        "--nats",
        &url,
        "--out",
        digest_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");

    let msgs = audit::read_all(&js, schemas::subject::STREAM_AUDIT)
        .await
        .unwrap();
    assert!(msgs.len() >= 6);
    let records: Vec<AuditRecord> = msgs
        .iter()
        .map(|(_, p)| AuditRecord::decode(p).unwrap())
        .collect();
    let enc = |rs: &[AuditRecord]| rs.iter().map(|r| r.encode()).collect::<Vec<_>>();

    // An intact copy verifies.
    let (ok, out) = verify_copy(&mesh, &js, &url, "COPY_INTACT", &enc(&records)).await;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{} records", records.len())), "{out}");

    // Rewritten: record 3's actor changed, its hash kept.
    let mut changed = records.clone();
    changed[2].actor = "mallory".into();
    let (ok, out) = verify_copy(&mesh, &js, &url, "COPY_CHANGED", &enc(&changed)).await;
    assert!(
        !ok && out.contains("record 3 (stream seq 3) was changed"),
        "{out}"
    );

    // Removed: record 3 left out.
    let mut removed = records.clone();
    removed.remove(2);
    let (ok, out) = verify_copy(&mesh, &js, &url, "COPY_REMOVED", &enc(&removed)).await;
    assert!(!ok && out.contains("record 3 is missing"), "{out}");

    // Reordered: records 3 and 4 swapped.
    let mut swapped = records.clone();
    swapped.swap(2, 3);
    let (ok, out) = verify_copy(&mesh, &js, &url, "COPY_REORDERED", &enc(&swapped)).await;
    assert!(
        !ok && out.contains("record 4 stands where record 3 belongs"),
        "{out}"
    );

    // Foreign: a well-formed record with a valid own hash, not chained to the head.
    let mut foreign = records.clone();
    let n = foreign.len() as u64;
    let mut fields = serde_json::Map::new();
    fields.insert("edge".into(), "e1".into());
    foreign.push(AuditRecord::seal(
        n + 1,
        &records[1].hash,
        kind::EDGE_LOST,
        "mallory",
        fields,
    ));
    let (ok, out) = verify_copy(&mesh, &js, &url, "COPY_FOREIGN", &enc(&foreign)).await;
    assert!(
        !ok && out.contains(&format!("record at stream seq {} is foreign", n + 1)),
        "{out}"
    );
    // ...and a message that is no audit record at all.
    let mut junk = enc(&records);
    junk.insert(1, Bytes::from_static(b"{\"hello\":1}"));
    let (ok, out) = verify_copy(&mesh, &js, &url, "COPY_JUNK", &junk).await;
    assert!(
        !ok && out.contains("record at stream seq 2 is foreign: not an audit record"),
        "{out}"
    );

    // Rewritten wholesale with fresh, valid hashes: only the digest can tell.
    let mut prev = audit::GENESIS_HASH.to_string();
    let rewritten: Vec<AuditRecord> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.actor = "mallory".into();
            r.prev_hash = prev.clone();
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            r
        })
        .collect();
    let (ok, out) = verify_copy(&mesh, &js, &url, "COPY_REWRITTEN", &enc(&rewritten)).await;
    assert!(ok, "a consistent rewrite passes without a digest: {out}");
    let digest = digest_file.to_str().unwrap();
    let (ok, out) = mesh.operator_cli(&[
        "audit",
        "verify",
        "--nats",
        &url,
        "--stream",
        "COPY_REWRITTEN",
        "--from-digest",
        digest,
    ]);
    assert!(
        !ok && out.contains("the chain was rewritten before the digest"),
        "{out}"
    );
    let (ok, out) =
        mesh.operator_cli(&["audit", "verify", "--nats", &url, "--from-digest", digest]);
    assert!(ok && out.contains("holds digest"), "{out}");

    // The real stream refuses deletes and purges.
    let s = js.get_stream(schemas::subject::STREAM_AUDIT).await.unwrap();
    assert!(s.delete_message(2).await.is_err(), "delete was allowed");
    assert!(s.purge().await.is_err(), "purge was allowed");
    let (ok, out) = mesh.operator_cli(&["audit", "verify", "--nats", &url]);
    assert!(ok, "{out}");

    // The tail prints every record readably.
    let (ok, out) = mesh.operator_cli(&["audit", "tail", "--nats", &url]);
    assert!(
        ok && out.contains("config.applied") && out.contains("replay.run"),
        "{out}"
    );
}

/// Two central hubs and two more writers append at once: one valid chain, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_one_chain() {
    let mesh = Mesh::start(MeshOpts {
        central_hubs: 2,
        ..Default::default()
    })
    .await;
    let js = mesh.central_js().await;
    wait_for("both hubs' first audit records", || async {
        audit_count(&js).await >= 2
    })
    .await;
    let mut tasks = Vec::new();
    for w in 0..2 {
        let js = mesh.central_js().await;
        tasks.push(tokio::spawn(async move {
            let log = AuditLog::open(
                js,
                schemas::subject::STREAM_AUDIT,
                &format!("operator:w{w}"),
            )
            .await
            .unwrap();
            for n in 0..100 {
                log.append(kind::REPLAY_RUN, serde_json::json!({"writer": w, "n": n}))
                    .await
                    .unwrap();
            }
        }));
    }
    // The hubs write meanwhile: agents appear.
    for id in ["a1", "a2"] {
        mesh.agent(id).await.publish("t", "x.y", "1").await.unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    let client = mesh.central_client(&operator()).await;
    wait_for("the edge and both agents recorded", || async {
        hub_registry(&client)
            .await
            .is_some_and(|r| r.edges.contains_key("e1") && r.agents.len() == 2)
    })
    .await;
    let js = mesh.central_js().await;
    let msgs = audit::read_all(&js, schemas::subject::STREAM_AUDIT)
        .await
        .unwrap();
    match audit::verify(&msgs, None) {
        audit::Verdict::Ok { count, .. } => assert!(count >= 200, "{count}"),
        bad => panic!("{bad:?}"),
    }
    let records: Vec<AuditRecord> = msgs
        .iter()
        .map(|(_, p)| AuditRecord::decode(p).unwrap())
        .collect();
    for w in 0..2 {
        let ns: Vec<u64> = records
            .iter()
            .filter(|r| r.actor == format!("operator:w{w}"))
            .map(|r| r.fields["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..100).collect::<Vec<_>>(), "writer {w}");
    }
    // Both hubs saw the edge, but it was recorded connected once; configs once per hub.
    let count = |k: &str| records.iter().filter(|r| r.kind == k).count();
    assert_eq!(count(kind::EDGE_CONNECTED), 1);
    assert_eq!(count(kind::CONFIG_APPLIED), 2);
}

async fn hub_registry(client: &async_nats::Client) -> Option<Registry> {
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(schemas::subject::HUB_REGISTRY, "".into()),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// The registry records the edge and its agents, the link's loss and restoration with the
/// outage and backlog, and is identical after the hub restarts (rebuilt from MESH_AUDIT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_survives_restart_and_records_link_events() {
    let mut mesh = Mesh::start(MeshOpts::default()).await;
    let client = mesh.central_client(&operator()).await;
    for id in ["a1", "a2"] {
        mesh.agent(id).await.publish("t", "x.y", "1").await.unwrap();
    }
    wait_for("edge and two agents in the registry", || async {
        hub_registry(&client).await.is_some_and(|r| {
            r.edges
                .get("e1")
                .is_some_and(|e| e.state == LinkState::Connected)
                && r.agents.len() == 2
                && r.agents.values().all(|a| a.state == AgentState::Active)
        })
    })
    .await;

    // Cut the link with a backlog: lost, then restored with outage and backlog.
    mesh.proxy().cut();
    mesh.wait_uplink(false).await;
    let agent = mesh.agent("a1").await;
    for _ in 0..5 {
        agent.publish("t", "x.y", "during the cut").await.unwrap();
    }
    wait_for("edge.lost recorded", || async {
        hub_registry(&client)
            .await
            .is_some_and(|r| r.edges["e1"].state == LinkState::Lost)
    })
    .await;
    mesh.proxy().heal();
    wait_for("edge.restored recorded", || async {
        hub_registry(&client)
            .await
            .is_some_and(|r| r.edges["e1"].state == LinkState::Connected)
    })
    .await;
    let js = mesh.central_js().await;
    let records: Vec<AuditRecord> = audit::read_all(&js, schemas::subject::STREAM_AUDIT)
        .await
        .unwrap()
        .iter()
        .map(|(_, p)| AuditRecord::decode(p).unwrap())
        .collect();
    let restored = records
        .iter()
        .find(|r| r.kind == kind::EDGE_RESTORED)
        .expect("edge.restored");
    assert!(
        restored.fields["outage_ms"].as_u64().unwrap() > 0,
        "{restored:?}"
    );
    // The first heartbeat after the heal races the forwarder: at most the 5 buffered.
    assert!(
        restored.fields["backlog"].as_u64().is_some_and(|b| b <= 5),
        "{restored:?}"
    );
    mesh.drained_events().await;

    let before = hub_registry(&client).await.expect("registry");
    mesh.central_hub(0).kill();
    mesh.central_hub(0).start();
    wait_for("the restarted hub to answer", || async {
        hub_registry(&client).await.is_some()
    })
    .await;
    let after = hub_registry(&client).await;
    assert_eq!(
        Some(before.clone()),
        after,
        "registry changed across a restart"
    );

    // The CLI rebuilds the same projection from MESH_AUDIT.
    let (ok, out) = mesh.operator_cli(&[
        "registry",
        "list",
        "--nats",
        &mesh.central().client_url(),
        "--json",
    ]);
    assert!(ok, "{out}");
    let rebuilt: Registry = serde_json::from_str(&out).expect(&out);
    assert_eq!(rebuilt, before);
    let (ok, out) =
        mesh.operator_cli(&["registry", "list", "--nats", &mesh.central().client_url()]);
    assert!(
        ok && out.contains("e1/a1") && out.contains("outages=1"),
        "{out}"
    );
}

/// Events the outbox limits expelled during a cut (G2) are written to the audit log with
/// their count once the edge reaches the centre again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_expulsions_are_audited() {
    let mesh = Mesh::start(MeshOpts {
        edge_toml: "[ingest]\nmax_event_bytes = 65536\n[outbox]\nmax_bytes = 200000\nfull_policy = \"drop-oldest\"\n".into(),
        ..MeshOpts::default()
    })
    .await;
    mesh.proxy().cut();
    mesh.wait_uplink(false).await;
    let agent = mesh.agent("a1").await;
    // Incompressible data: the outbox limit counts stored (LZ4) bytes.
    let batch: Vec<schemas::NewEvent> = (0..400)
        .map(|n| schemas::NewEvent::new("t", "fill.up", chaos::producer::payload("a1", n, 1024)))
        .collect();
    for chunk in batch.chunks(50) {
        agent.publish_batch(chunk.to_vec()).await.unwrap();
    }
    let expelled = mesh
        .edge_metric("mesh_edge_expelled_events_total{edge=\"e1\",reason=\"max_bytes\"}")
        .unwrap_or(0.0) as u64;
    assert!(expelled > 0, "nothing was expelled");
    mesh.proxy().heal();
    let js = mesh.central_js().await;
    wait_for("outbox.expelled in the audit log", || async {
        audit::read_all(&js, schemas::subject::STREAM_AUDIT)
            .await
            .unwrap()
            .iter()
            .filter_map(|(_, p)| AuditRecord::decode(p).ok())
            .any(|r| {
                r.kind == kind::OUTBOX_EXPELLED
                    && r.fields["reason"] == "max_bytes"
                    && r.fields["total"].as_u64() == Some(expelled)
            })
    })
    .await;
    let (ok, out) = mesh.operator_cli(&["audit", "verify", "--nats", &mesh.central().client_url()]);
    assert!(ok, "{out}");
}

fn operator() -> mesh_nats::auth::Identity {
    mesh_nats::auth::Identity::Operator {
        name: "operator".into(),
    }
}
