//! Dead-letter queues: a consumer that always fails an event sends it to `MESH_DLQ` with
//! every reason header; redrive delivers it again exactly once; `Delivery::reject`
//! dead-letters at once; purge empties the DLQ. Every step is in the audit log, under
//! the operator credential's name; an operator credential cannot write the mesh's
//! streams itself, nor ask in another operator's name.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_nats::auth::Identity;
use mesh_nats::client::ClientAuth;
use schemas::audit::{self, kind, AuditRecord};
use schemas::{headers as h, subject};
use support::{mesh_cli_as, wait_for, Mesh, MeshOpts};

/// Messages in `MESH_DLQ`; 0 while the central hub has not created it yet.
async fn dlq_count(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream(subject::STREAM_DLQ).await {
        Ok(s) => s.get_info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits until the central hub created its streams and wrote its first audit record.
async fn hub_ready(js: &async_nats::jetstream::Context) {
    wait_for("the central hub's streams", || async {
        match js.get_stream(subject::STREAM_AUDIT).await {
            Ok(s) => s.get_info().await.is_ok_and(|i| i.state.messages > 0),
            Err(_) => false,
        }
    })
    .await;
}

async fn audit_kinds(js: &async_nats::jetstream::Context) -> Vec<AuditRecord> {
    audit::read_all(js, subject::STREAM_AUDIT)
        .await
        .unwrap()
        .iter()
        .filter_map(|(_, p)| AuditRecord::decode(p).ok())
        .collect()
}

/// A consumer that fails one event every time: after `max_deliver` deliveries it is in
/// the DLQ with reason, origin, consumer, delivery count, failure times and the error;
/// once the consumer is fixed, `mesh dlq redrive` delivers it again exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_consumer_dead_letters_and_redrive_delivers_once() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("producer").await;
    let mut poison_id = None;
    for data in ["ok-1", "poison", "ok-3"] {
        let ev = schemas::NewEvent::new("job", "jobs.run", data);
        if data == "poison" {
            poison_id = ev.id;
        }
        agent.publish_event(ev).await.unwrap();
    }
    let poison_id = poison_id.unwrap().to_string();

    let worker = mesh.agent("worker").await;
    let mut sub = worker
        .subscribe_with("worker", "jobs.>", 3, Duration::from_secs(30))
        .await
        .unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let processed = Arc::new(Mutex::new(Vec::<String>::new()));
    let task = {
        let (fixed, processed) = (fixed.clone(), processed.clone());
        tokio::spawn(async move {
            while let Some(Ok(d)) = sub.next().await {
                let data = String::from_utf8_lossy(&d.event.data).to_string();
                if data == "poison" && !fixed.load(Ordering::SeqCst) {
                    d.fail("cannot parse poison").await.unwrap();
                } else {
                    d.ack().await.unwrap();
                    processed.lock().unwrap().push(data);
                }
            }
        })
    };

    let js = mesh.central_js().await;
    wait_for("one dead letter", || async { dlq_count(&js).await == 1 }).await;
    let dlq = js.get_stream(subject::STREAM_DLQ).await.unwrap();
    let info = dlq.get_info().await.unwrap();
    let m = dlq.get_raw_message(info.state.last_sequence).await.unwrap();
    let hv = |n: &str| m.headers.get(n).map(|v| v.as_str().to_string());
    assert_eq!(m.subject.as_str(), "mesh.dlq.e1.jobs.run");
    assert_eq!(hv(h::DLQ_REASON).as_deref(), Some("max-deliveries"));
    assert_eq!(hv(h::DLQ_STREAM).as_deref(), Some(subject::STREAM_EVENTS));
    assert_eq!(hv(h::DLQ_SEQ).as_deref(), Some("2"));
    assert_eq!(hv(h::DLQ_SUBJECT).as_deref(), Some("mesh.evt.e1.jobs.run"));
    assert_eq!(hv(h::DLQ_CONSUMER).as_deref(), Some("worker"));
    assert_eq!(hv(h::DLQ_DELIVERIES).as_deref(), Some("3"));
    assert_eq!(hv(h::DLQ_ERROR).as_deref(), Some("cannot parse poison"));
    for t in [h::DLQ_FIRST_FAILURE, h::DLQ_LAST_FAILURE] {
        let v = hv(t).unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(&v).is_ok(), "{t}: {v}");
    }
    assert_eq!(hv(h::ID), Some(poison_id.clone()), "ce-id kept");
    assert_eq!(&m.payload[..], b"poison");

    let url = mesh.central().client_url();
    let (ok, out) = mesh.operator_cli(&["dlq", "list", "--nats", &url, "--filter", "e1.jobs.>"]);
    assert!(
        ok && out.contains("mesh.dlq.e1.jobs.run") && out.contains("1 dead letters"),
        "{out}"
    );
    let (ok, out) = mesh.operator_cli(&["dlq", "list", "--nats", &url, "--filter", "e2.>"]);
    assert!(ok && out.contains("0 dead letters"), "{out}");
    let id = info.state.last_sequence.to_string();
    let (ok, out) = mesh.operator_cli(&["dlq", "show", "--nats", &url, &id]);
    assert!(
        ok && out.contains("mesh-dlq-error: cannot parse poison"),
        "{out}"
    );

    // The edge's leaf link does not carry operator requests: a clear refusal, not a hang.
    let (ok, out) = mesh.operator_cli(&["dlq", "redrive", "--nats", &mesh.edge().client_url()]);
    assert!(
        !ok && out.contains("mesh.hub.op.operator.dlq.redrive"),
        "{out}"
    );
    assert!(
        out.contains("connect --nats to the centre") || out.contains("no answer"),
        "{out}"
    );
    assert_eq!(dlq_count(&js).await, 1);

    fixed.store(true, Ordering::SeqCst);
    let (ok, out) = mesh.operator_cli(&["dlq", "redrive", "--nats", &url]);
    assert!(
        ok && out.contains("redriven 1 -> mesh.evt.e1.jobs.run") && out.contains("redriven=1"),
        "{out}"
    );
    wait_for("the redriven event to be processed", || async {
        processed.lock().unwrap().iter().any(|d| d == "poison")
    })
    .await;
    // Exactly once: nothing pending or unacked on the consumer, poison processed once.
    let events = js.get_stream(subject::STREAM_EVENTS).await.unwrap();
    wait_for("the consumer to settle", || async {
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            events.get_consumer("worker").await.unwrap();
        let i = c.info().await.unwrap();
        i.num_pending == 0 && i.num_ack_pending == 0
    })
    .await;
    let got = processed.lock().unwrap().clone();
    assert_eq!(got.iter().filter(|d| *d == "poison").count(), 1, "{got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(dlq_count(&js).await, 0);
    // The redriven copy keeps its ce-id and names its origin.
    let redriven = events
        .get_last_raw_message_by_subject("mesh.evt.e1.jobs.run")
        .await
        .unwrap();
    let rh = |n: &str| redriven.headers.get(n).map(|v| v.as_str().to_string());
    assert_eq!(rh(h::ID), Some(poison_id));
    assert_eq!(rh(h::ORIGIN_SEQ).as_deref(), Some("2"));

    let records = audit_kinds(&js).await;
    assert!(records
        .iter()
        .any(|r| r.kind == kind::DLQ_DEAD_LETTERED && r.fields["error"] == "cannot parse poison"));
    assert!(records.iter().any(|r| r.kind == kind::DLQ_REDRIVEN
        && r.fields["count"] == 1
        && r.actor == "operator:operator"));
    task.abort();
}

/// `Delivery::reject` dead-letters at once (one delivery); purge removes it, audited
/// under the name in the operator's credential (a second operator, `ann`), never `$USER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_at_once_and_purge_is_audited() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("producer").await;
    agent
        .publish("job", "jobs.v2", "from the future")
        .await
        .unwrap();
    let worker = mesh.agent("worker").await;
    let mut sub = worker.subscribe("strict", "jobs.>").await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    let dlq_seq = d.reject("schema v2 unsupported").await.unwrap();
    let js = mesh.central_js().await;
    let dlq = js.get_stream(subject::STREAM_DLQ).await.unwrap();
    let m = dlq.get_raw_message(dlq_seq).await.unwrap();
    let hv = |n: &str| m.headers.get(n).map(|v| v.as_str().to_string());
    assert_eq!(
        hv(h::DLQ_REASON).as_deref(),
        Some("rejected: schema v2 unsupported")
    );
    assert_eq!(hv(h::DLQ_DELIVERIES).as_deref(), Some("1"));
    assert_eq!(hv(h::DLQ_CONSUMER).as_deref(), Some("strict"));

    let url = mesh.central().client_url();
    let ann = mesh.auth(&Identity::Operator { name: "ann".into() });
    let args = ["dlq", "purge", "--nats", &url, "--filter", "e1.>"];
    let (ok, out) = mesh_cli_as(&ann, &args);
    assert!(ok && out.contains("purged=1"), "{out}");
    assert_eq!(dlq_count(&js).await, 0);
    let records = audit_kinds(&js).await;
    let purged: Vec<_> = records
        .iter()
        .filter(|r| r.kind == kind::DLQ_PURGED)
        .collect();
    assert_eq!(purged.len(), 1, "{records:?}");
    assert_eq!(purged[0].fields["count"], 1);
    assert_eq!(
        purged[0].actor, "operator:ann",
        "the credential's name, not $USER"
    );
    let (ok, out) = mesh.operator_cli(&["audit", "verify", "--nats", &url]);
    assert!(ok, "{out}");
    // An agent's credential is not an operator's: refused before anything is asked.
    let (ok, out) = mesh.agent_cli("worker", &args);
    assert!(!ok && out.contains("not an operator's"), "{out}");
}

/// Connects with `auth`, collecting the server's errors (permissions violations).
async fn connect_watching(
    url: &str,
    auth: &ClientAuth,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = async_nats::ConnectOptions::new().event_callback(move |ev| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ev.to_string());
        }
    });
    let opts = auth.apply(opts).await.expect("credential options");
    (opts.connect(url).await.expect("connect"), rx)
}

/// Waits for the server to report a permissions violation naming `what`.
async fn violation(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no permissions violation for {what}"))
            .unwrap();
        if ev.to_lowercase().contains("permissions violation") && ev.contains(what) {
            return;
        }
    }
}

/// Guards the centre's monopoly on writes: with an operator credential, a direct publish
/// to `MESH_AUDIT`, `MESH_EVENTS` or `MESH_DLQ`, a purge or a delete through the
/// JetStream API, and a request in another operator's name are all refused by the
/// nats-server, and the streams are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_credential_cannot_write_the_streams_or_act_as_another() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let agent = mesh.agent("producer").await;
    agent.publish("job", "jobs.x", "x").await.unwrap();
    let worker = mesh.agent("worker").await;
    let mut sub = worker.subscribe("strict", "jobs.>").await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    d.reject("kept for the test").await.unwrap();
    let js = mesh.central_js().await;
    assert_eq!(dlq_count(&js).await, 1);

    let url = mesh.central().client_url();
    let (c, mut errors) = connect_watching(&url, &mesh.operator()).await;
    let ojs = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(c.clone());
    for target in ["mesh.audit.x", "mesh.evt.e1.x", "mesh.dlq.e1.x"] {
        let acked = match ojs.publish(target, "forged".into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!acked, "{target}: a store ack for an operator's publish");
        violation(&mut errors, target).await;
    }
    for api in [
        "$JS.API.STREAM.PURGE.MESH_DLQ",
        "$JS.API.STREAM.DELETE.MESH_AUDIT",
    ] {
        let r = c
            .send_request(
                api,
                async_nats::Request::new()
                    .payload("{}".into())
                    .timeout(Some(Duration::from_secs(2))),
            )
            .await;
        assert!(r.is_err(), "{api}: answered {r:?}");
        violation(&mut errors, api).await;
    }
    // Another operator's request subject: refused, so no hub acts in ann's name.
    let as_ann = subject::hub_op("ann", subject::op::DLQ_PURGE);
    let r = c
        .send_request(
            as_ann.clone(),
            async_nats::Request::new()
                .payload(r#"{"filter":">"}"#.into())
                .timeout(Some(Duration::from_secs(2))),
        )
        .await;
    assert!(r.is_err(), "{as_ann}: answered {r:?}");
    violation(&mut errors, &as_ann).await;

    // Nothing changed.
    assert_eq!(dlq_count(&js).await, 1, "MESH_DLQ not purged");
    for (stream, subj) in [
        (subject::STREAM_AUDIT, "mesh.audit.x"),
        (subject::STREAM_EVENTS, "mesh.evt.e1.x"),
        (subject::STREAM_DLQ, "mesh.dlq.e1.x"),
    ] {
        let s = js
            .get_stream(stream)
            .await
            .expect("the stream still exists");
        assert!(
            s.get_last_raw_message_by_subject(subj).await.is_err(),
            "{subj} stored in {stream}"
        );
    }
    let records = audit_kinds(&js).await;
    assert!(
        !records.iter().any(|r| r.kind == kind::DLQ_PURGED),
        "{records:?}"
    );
}

/// An event the centre refuses for good (here: larger than `MESH_INGRESS` accepts) is
/// dead-lettered by the edge and does not block the events behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_refused_event_does_not_block_the_outbox() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let js = mesh.central_js().await;
    hub_ready(&js).await;
    let mut cfg = js
        .get_stream(subject::STREAM_INGRESS)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config;
    cfg.max_message_size = 16 * 1024;
    js.update_stream(cfg).await.unwrap();

    let agent = mesh.agent("a1").await;
    let mut big_id = None;
    for n in 0..7 {
        let ev = if n == 3 {
            let ev = schemas::NewEvent::new("t", "big.one", vec![b'x'; 64 * 1024]);
            big_id = ev.id;
            ev
        } else {
            schemas::NewEvent::new("t", "small.one", format!("{n}"))
        };
        agent.publish_event(ev).await.unwrap();
    }
    let events = mesh.drained_events().await;
    let got: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).to_string())
        .collect();
    assert_eq!(got, ["0", "1", "2", "4", "5", "6"]);
    wait_for("the dead letter", || async { dlq_count(&js).await == 1 }).await;
    let dlq = js.get_stream(subject::STREAM_DLQ).await.unwrap();
    let m = dlq
        .get_last_raw_message_by_subject("mesh.dlq.e1.big.one")
        .await
        .unwrap();
    let hv = |n: &str| m.headers.get(n).map(|v| v.as_str().to_string());
    assert!(
        hv(h::DLQ_REASON).unwrap().starts_with("refused-by-centre"),
        "{:?}",
        hv(h::DLQ_REASON)
    );
    assert_eq!(hv(h::ID), big_id.map(|i| i.to_string()));
    assert_eq!(hv(h::DLQ_SEQ).as_deref(), Some("4"));
    assert_eq!(m.payload.len(), 64 * 1024);
    // Later events keep flowing.
    agent.publish("t", "small.one", "7").await.unwrap();
    assert_eq!(mesh.events_when(7).await.len(), 7);
    // The dead letter is in the audit log.
    wait_for("the edge's dead letter in the audit log", || async {
        audit_kinds(&js).await.iter().any(|r| {
            r.kind == kind::DLQ_DEAD_LETTERED && r.fields["by"] == "edge" && r.fields["seq"] == 4
        })
    })
    .await;
}

/// A bundle the lander can never land is dead-lettered (not just dropped), and the edge's
/// own events keep landing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_is_dead_lettered() {
    let mesh = Mesh::start(MeshOpts::default()).await;
    let js = mesh.central_js().await;
    hub_ready(&js).await;
    js.publish(
        subject::up("e1"),
        bytes::Bytes::from_static(b"\xc1 not a bundle"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_for("the bad bundle in the DLQ", || async {
        dlq_count(&js).await == 1
    })
    .await;
    let m = js
        .get_stream(subject::STREAM_DLQ)
        .await
        .unwrap()
        .get_last_raw_message_by_subject("mesh.dlq.e1._bundle")
        .await
        .unwrap();
    let reason = m.headers.get(h::DLQ_REASON).unwrap().as_str().to_string();
    assert!(reason.starts_with("bad-bundle: "), "{reason}");
    assert_eq!(&m.payload[..], b"\xc1 not a bundle");
    mesh.agent("a1")
        .await
        .publish("t", "ok.x", "1")
        .await
        .unwrap();
    assert_eq!(mesh.events_when(1).await.len(), 1);
    assert!(audit_kinds(&js)
        .await
        .iter()
        .any(|r| r.kind == kind::DLQ_DEAD_LETTERED
            && r.fields["reason"]
                .as_str()
                .unwrap()
                .starts_with("bad-bundle")));
}
