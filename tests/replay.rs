//! `mesh replay` by sequence, by time and by subject returns exactly the expected events,
//! in order; `--republish` (done by the central hub) copies them with their origin and
//! leaves the source unchanged, and refuses targets inside `mesh.>`. Every run is in the
//! audit log under the operator credential's name.

mod support;

use std::process::Command;

use async_nats::jetstream::stream;
use mesh_nats::auth::Identity;
use mesh_nats::client::ClientAuth;
use schemas::audit::{self, kind, AuditRecord};
use schemas::{headers as h, subject};
use support::{Mesh, MeshOpts};

/// `mesh replay <args>` with credential `auth`; (success, stdout, stderr).
fn run_replay(auth: &ClientAuth, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
    cmd.arg("replay").args(args);
    if let Some(c) = &auth.creds {
        cmd.env("NATS_CREDS", c);
    }
    if let Some(c) = &auth.tls_ca {
        cmd.env("NATS_CA", c);
    }
    let out = cmd.output().expect("run mesh replay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn replay_as(auth: &ClientAuth, args: &[&str]) -> Vec<serde_json::Value> {
    let (ok, stdout, stderr) = run_replay(auth, args);
    assert!(ok, "{stdout}{stderr}");
    assert!(stderr.contains("replayed="), "{stderr}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect()
}

async fn replay_records(js: &async_nats::jetstream::Context) -> Vec<AuditRecord> {
    audit::read_all(js, subject::STREAM_AUDIT)
        .await
        .unwrap()
        .iter()
        .filter_map(|(_, p)| AuditRecord::decode(p).ok())
        .filter(|r| r.kind == kind::REPLAY_RUN)
        .collect()
}

/// The data of each line: `mesh pub` data is `application/octet-stream`, so
/// `data_base64` in the CloudEvents JSON format.
fn datas(v: &[serde_json::Value]) -> Vec<String> {
    v.iter()
        .map(|o| {
            let b64 = o["data_base64"].as_str().unwrap_or_else(|| panic!("{o}"));
            String::from_utf8(data_encoding::BASE64.decode(b64.as_bytes()).unwrap()).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_sequence_time_and_subject() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("a1").await;
    for n in 0..5 {
        let subj = if n % 2 == 0 { "even.n" } else { "odd.n" };
        agent.publish("t", subj, format!("{n}")).await.unwrap();
    }
    mesh.events_when(5).await;
    // Every event of the second half is stored after this instant.
    let split = chrono::Utc::now().to_rfc3339();
    for n in 5..10 {
        let subj = if n % 2 == 0 { "even.n" } else { "odd.n" };
        agent.publish("t", subj, format!("{n}")).await.unwrap();
    }
    mesh.events_when(10).await;
    let url = mesh.central().client_url();
    let base = ["--nats", url.as_str(), "--stream", subject::STREAM_EVENTS];
    let operator = mesh.operator();
    let replay = |args: &[&str]| replay_as(&operator, args);

    let all = replay(&[&base[..], &["--to-stdout"]].concat());
    assert_eq!(
        datas(&all),
        (0..10).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(all[0]["meshedge"], "e1");
    assert_eq!(all[0]["meshseq"], "1");
    assert_eq!(all[0]["specversion"], "1.0");

    let by_seq = replay(
        &[
            &base[..],
            &["--from-seq", "3", "--to-seq", "6", "--to-stdout"],
        ]
        .concat(),
    );
    assert_eq!(datas(&by_seq), ["2", "3", "4", "5"]);

    let by_time = replay(&[&base[..], &["--since", &split, "--to-stdout"]].concat());
    assert_eq!(datas(&by_time), ["5", "6", "7", "8", "9"]);
    let until = replay(&[&base[..], &["--until", &split, "--to-stdout"]].concat());
    assert_eq!(datas(&until), ["0", "1", "2", "3", "4"]);

    let by_subject = replay(
        &[
            &base[..],
            &["--subject", "mesh.evt.e1.odd.>", "--to-stdout"],
        ]
        .concat(),
    );
    assert_eq!(datas(&by_subject), ["1", "3", "5", "7", "9"]);
    let combined = replay(
        &[
            &base[..],
            &[
                "--subject",
                "mesh.evt.*.even.n",
                "--from-seq",
                "4",
                "--to-seq",
                "9",
                "--to-stdout",
            ],
        ]
        .concat(),
    );
    assert_eq!(datas(&combined), ["4", "6", "8"]);

    // Republish into a stream of our own: same attributes, origin added, source intact.
    let js = mesh.central_js().await;
    js.create_stream(stream::Config {
        name: "REPLAYED".into(),
        subjects: vec!["replayed.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let out = replay(
        &[
            &base[..],
            &[
                "--subject",
                "mesh.evt.e1.odd.>",
                "--republish",
                "replayed.odd",
                "--rate",
                "1000",
            ],
        ]
        .concat(),
    );
    assert!(out.is_empty());
    let copy = js.get_stream("REPLAYED").await.unwrap();
    assert_eq!(copy.get_info().await.unwrap().state.messages, 5);
    let first = copy.get_raw_message(1).await.unwrap();
    let hv = |n: &str| first.headers.get(n).map(|v| v.as_str().to_string());
    assert_eq!(
        hv(h::ORIGIN_STREAM).as_deref(),
        Some(subject::STREAM_EVENTS)
    );
    assert_eq!(hv(h::ORIGIN_SEQ).as_deref(), Some("2"));
    assert_eq!(hv(h::SUBJECT).as_deref(), Some("odd.n"));
    assert_eq!(&first.payload[..], b"1");
    let events = js.get_stream(subject::STREAM_EVENTS).await.unwrap();
    assert_eq!(events.get_info().await.unwrap().state.messages, 10);

    // Every run is recorded by the hub, under the operator credential's name.
    let runs = replay_records(&js).await;
    assert_eq!(runs.len(), 7, "{runs:?}");
    assert!(
        runs.iter().all(|r| r.actor == "operator:operator"),
        "{runs:?}"
    );
    let republished = runs.last().unwrap();
    assert_eq!(republished.fields["republish"], "replayed.odd");
    assert_eq!(republished.fields["count"], 5);
    assert_eq!(runs[1].fields["count"], 4, "--from-seq 3 --to-seq 6");
}

/// A second operator's runs, read-only and republished, name it as the actor; a
/// republish into the mesh's own subjects is refused with the reason, nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_audited_under_the_operator_and_refuses_mesh_targets() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("a1").await;
    for n in 0..3 {
        agent
            .publish("t", "orders.n", format!("{n}"))
            .await
            .unwrap();
    }
    mesh.events_when(3).await;
    let url = mesh.central().client_url();
    let base = ["--nats", url.as_str(), "--stream", subject::STREAM_EVENTS];
    let ann = mesh.auth(&Identity::Operator { name: "ann".into() });
    let js = mesh.central_js().await;

    let read = replay_as(&ann, &[&base[..], &["--to-stdout"]].concat());
    assert_eq!(read.len(), 3);
    for bad in [
        "mesh.evt.e1.orders.n",
        "mesh.audit.replay",
        "$JS.API.STREAM.DELETE.MESH_AUDIT",
    ] {
        let (ok, _, stderr) = run_replay(&ann, &[&base[..], &["--republish", bad]].concat());
        assert!(!ok, "{bad}: {stderr}");
        assert!(
            stderr.contains("the central hub refused mesh.hub.op.ann.replay.republish"),
            "{stderr}"
        );
        assert!(stderr.contains(bad), "{stderr}");
    }
    let events = js.get_stream(subject::STREAM_EVENTS).await.unwrap();
    assert_eq!(
        events.get_info().await.unwrap().state.messages,
        3,
        "nothing republished"
    );

    js.create_stream(stream::Config {
        name: "COPY".into(),
        subjects: vec!["copy.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let out = replay_as(&ann, &[&base[..], &["--republish", "copy.orders"]].concat());
    assert!(out.is_empty());
    let copy = js.get_stream("COPY").await.unwrap();
    assert_eq!(copy.get_info().await.unwrap().state.messages, 3);

    let runs = replay_records(&js).await;
    assert_eq!(runs.len(), 2, "refused runs are not recorded: {runs:?}");
    assert!(runs.iter().all(|r| r.actor == "operator:ann"), "{runs:?}");
    assert_eq!(runs[0].fields["republish"], serde_json::Value::Null);
    assert_eq!(runs[0].fields["count"], 3);
    assert_eq!(runs[1].fields["republish"], "copy.orders");
}
