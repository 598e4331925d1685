//! `mesh replay` by sequence, by time and by subject returns exactly the expected events,
//! in order; `--republish` copies them with their origin and leaves the source unchanged.

mod support;

use std::process::Command;

use async_nats::jetstream::stream;
use schemas::{headers as h, subject};
use support::{Mesh, MeshOpts};

fn replay(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("replay")
        .args(args)
        .output()
        .expect("run mesh replay");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect()
}

fn datas(v: &[serde_json::Value]) -> Vec<String> {
    v.iter()
        .map(|o| o["data"].as_str().unwrap().to_string())
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

    let all = replay(&[&base[..], &["--to-stdout"]].concat());
    assert_eq!(
        datas(&all),
        (0..10).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(all[0]["meshedge"], "e1");
    assert_eq!(all[0]["seq"], 1);

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
}
