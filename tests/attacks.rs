//! The attacks of issue 10, each against a real secure mesh (operator-mode nats-servers,
//! TLS, the real hubs). The attacker is a plain async-nats client holding the credential
//! named. Every test asserts the attack is refused — an authorization failure, the
//! server's `Permissions Violation` for that subject, or a dead letter with its reason —
//! and that nothing legitimate is lost or stalled meanwhile: the real agents' events,
//! published during and after the attack, all land in `MESH_EVENTS` exactly once.

mod support;

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use mesh_nats::auth::Identity;
use mesh_nats::client::ClientAuth;
use mesh_testkit::{wait_until, Mesh, MeshBuilder, DEADLINE};
use schemas::{headers as h, subject, Bundle, Event};
use support::mesh_cli_as;
use tokio::sync::mpsc::UnboundedReceiver;

/// Attacks 1, 12 and 13: no credential, no TLS, a rogue leaf server (without credentials,
/// and without TLS), and the CLI publishing as another agent than its credential's. The
/// centre counts only the real leaf links, and a real agent's events all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_rogue_servers_and_borrowed_credentials_are_refused() {
    let mesh = Kept::start(&["e1"]).await;
    let m = &mesh.0;
    let ca = m.security().expect("secure mesh").tls.ca.clone();
    let edge = &m.sites[0].nats;

    // 1. Anonymous, with TLS: refused by the edge and by the centre.
    let anonymous = ClientAuth {
        creds: None,
        tls_ca: Some(ca.clone()),
    };
    for (name, url) in [
        ("edge", edge.client_url()),
        ("centre", m.central.client_url()),
    ] {
        let e = connect(&url, &anonymous)
            .await
            .err()
            .unwrap_or_else(|| panic!("anonymous connection to the {name} accepted"));
        assert!(e.to_lowercase().contains("authorization"), "{name}: {e}");
    }
    // 1. Valid credential, plaintext: refused by both.
    let mut plain = m.auth(&Mesh::test_agent("e1", "alice")).unwrap();
    plain.tls_ca = None;
    for (name, url) in [
        ("edge", edge.client_url()),
        ("centre", m.central.client_url()),
    ] {
        assert!(
            connect(&url, &plain).await.is_err(),
            "plaintext connection to the {name} accepted"
        );
    }

    // 12. A rogue nats-server leaf-linking to the centre with the mesh's CA but no leaf
    // credentials, and one without TLS at all.
    let leaves = edge_leaf_links(m);
    let central_leaf = m.central.leaf_url().expect("the centre listens for leaves");
    let sec = m.security().unwrap();
    let rogue = mesh_nats::NatsServer::start(
        mesh_nats::ServerConfig::edge("rogue", vec![central_leaf.clone()])
            .dir(m.dir().join("rogue-nats"))
            .security(mesh_nats::Security {
                auth: sec.server_auth(),
                tls: sec.tls.clone(),
                leaf_creds: None,
                sys_leaf_creds: None,
            }),
    )
    .expect("start the rogue server");
    let plain_rogue = mesh_nats::NatsServer::start(
        mesh_nats::ServerConfig::edge("rogue-plain", vec![central_leaf])
            .dir(m.dir().join("rogue-plain-nats")),
    )
    .expect("start the plaintext rogue server");
    // Both tried and were turned away (the leaf remotes redial every 250 ms): the centre
    // refuses a leaf without a credential, and one that cannot speak TLS to it.
    wait_until("the rogue leaf to be refused", DEADLINE, || async {
        rogue
            .log_tail(200)
            .contains("Leafnode Error 'Authorization Violation'")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", rogue.log_tail(30)));
    wait_until(
        "the plaintext rogue leaf to be refused",
        DEADLINE,
        || async {
            plain_rogue
                .log_tail(200)
                .contains("TLS leafnode handshake error")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plain_rogue.log_tail(30)));
    assert_eq!(
        m.central.leafnode_count().unwrap(),
        leaves,
        "the centre counts only the real edge's leaf links"
    );
    let leafz = m.central.monitor_get("/leafz").unwrap();
    assert!(!leafz.contains("rogue"), "{leafz}");
    // Events published into the rogue server do not land: it has no JetStream of its
    // own and no way to the centre's.
    let rogue_hub = m
        .auth(&Identity::EdgeHub {
            edge: "rogue".into(),
        })
        .unwrap();
    let rc = rogue_hub
        .connect(&rogue.client_url(), "rogue hub")
        .await
        .expect("the rogue server takes its own mesh's users");
    let forged = Bundle {
        version: schemas::bundle::BUNDLE_VERSION,
        edge: "rogue".into(),
        first_seq: 1,
        last_seq: 1,
        events: vec![],
    };
    let rjs = jetstream::with_domain(rc, subject::CENTRAL_DOMAIN);
    let stored = match rjs
        .publish_with_headers(
            subject::up("rogue"),
            forged.headers(),
            forged.encode().unwrap().into(),
        )
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!stored, "a bundle sent through the rogue server was stored");

    // 13. `mesh pub --agent alice` with bob's credential.
    let bob = m.auth(&Mesh::test_agent("e1", "bob")).unwrap();
    let (ok, out) = mesh_cli_as(
        &bob,
        &[
            "pub",
            "--nats",
            &edge.client_url(),
            "--agent",
            "alice",
            "--count",
            "1",
            "x.y",
        ],
    );
    assert!(
        !ok,
        "mesh pub as alice with bob's credential succeeded: {out}"
    );
    assert!(
        out.contains("agent.e1.bob") && out.contains("\"alice\"") && out.contains("only as itself"),
        "the refusal names the mismatch: {out}"
    );

    // Meanwhile the real agent is not disturbed.
    let agent = m.agent(0, "alice").await.unwrap();
    let acked = publish_n(&agent, "real.one", 20).await;
    m.wait_drained(DEADLINE).await.unwrap();
    assert_eq!(
        m.landed_mark("e1").await,
        Some(acked.last().copied().unwrap())
    );
    assert_eq!(events_of(m, "e1", "alice").await.len(), 20);
    assert_eq!(landed_mark(m, "rogue").await, 0);
    assert_eq!(m.central.leafnode_count().unwrap(), leaves);
}

/// Attacks 2, 5, 6, 7, 9, 10 and 11 with an agent's credential: impersonating another
/// agent or edge, hijacking the edge hub's queue group and discovery, writing event,
/// live, audit and heartbeat subjects, and eavesdropping. All refused by the servers;
/// the victims' real events land exactly once with their real data, and an agent granted
/// `orders.>` live gets the orders and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_impersonate_hijack_forge_or_eavesdrop() {
    let mesh = Kept::start(&["e1", "e2"]).await;
    let m = &mesh.0;
    let e1 = m.sites[0].nats.client_url();
    let mallory = m.auth(&Mesh::test_agent("e1", "mallory")).unwrap();
    let mut att = Attacker::connect("agent mallory", &e1, &mallory).await;

    // 2. Impersonation, with well-formed ingest requests.
    let body: Bytes = schemas::IngestRequest {
        events: vec![schemas::NewEvent::new("t", "forged.one", "forged")],
    }
    .encode()
    .unwrap()
    .into();
    for s in [
        subject::ingest("e1", "bob"),
        subject::ingest("e2", "mallory"),
    ] {
        att.publish_refused(&s, HeaderMap::new(), body.clone())
            .await;
    }
    // 5. Queue-group hijack of the edge hub's ingest and of discovery.
    att.queue_subscribe_refused(&subject::ingest_filter("e1"), "mesh-edge-e1")
        .await;
    att.subscribe_refused(subject::HUB_DISCOVER).await;

    // The victims publish for real, during the attack: bob at e1, mallory's namesake at
    // e2, 100 events each.
    let bob = m.agent(0, "bob").await.unwrap();
    let bob_acks = publish_n(&bob, "orders.new", 100).await;
    let namesake = m.agent(1, "mallory").await.unwrap();
    publish_n(&namesake, "payments.new", 100).await;

    // 6. Republishing a real live copy, same headers, other data, as the event itself and
    // as a live copy.
    let spy = m.agent(0, "watcher").await.unwrap();
    let mut live = spy
        .client()
        .subscribe("mesh.live.e1.orders.>")
        .await
        .unwrap();
    spy.client().flush().await.unwrap();
    publish_n(&bob, "orders.new", 1).await;
    let copy = tokio::time::timeout(DEADLINE, live.next())
        .await
        .expect("a live copy")
        .unwrap();
    let headers = copy.headers.clone().unwrap_or_default();
    let evt = subject::evt("e1", "orders.new");
    att.publish_refused(&evt, headers.clone(), "evil".into())
        .await;
    att.publish_refused(&copy.subject, headers.clone(), "evil".into())
        .await;
    // 7. A poison mark on an unused edge.
    att.publish_refused(&subject::evt("e9", "x"), poison(), "poison".into())
        .await;
    // 9. A forged audit record.
    att.publish_refused(&subject::audit("x"), HeaderMap::new(), "{}".into())
        .await;
    // 10. Fake heartbeats, of its own edge and of a ghost.
    for edge in ["e1", "ghost"] {
        att.publish_refused(
            &subject::hub_edge(edge),
            HeaderMap::new(),
            fake_status(edge),
        )
        .await;
    }

    // 11. Eavesdropping, with an agent granted only `orders.>` live and no durables.
    let carol_id = Identity::Agent {
        edge: "e1".into(),
        agent: "carol".into(),
        live: vec!["orders.>".into()],
        durables: vec![],
    };
    let mut carol = Attacker::connect("agent carol", &e1, &m.auth(&carol_id).unwrap()).await;
    for s in [
        ">",
        "mesh.ingest.>",
        "mesh.live.>",
        "_INBOX.e1.bob.>",
        "mesh.live.*.payments.>",
    ] {
        carol.subscribe_refused(s).await;
    }
    for api in [
        "CONSUMER.CREATE.MESH_EVENTS.spy.mesh.evt.>",
        "CONSUMER.CREATE.MESH_EVENTS",
        "CONSUMER.CREATE.MESH_AUDIT.spy",
        "CONSUMER.CREATE.MESH_AUDIT",
    ] {
        carol.request_refused(&js_api(api)).await;
    }
    // An agent granted one durable may not widen its filter or take another name.
    let dave_id = Identity::Agent {
        edge: "e1".into(),
        agent: "dave".into(),
        live: vec![],
        durables: vec![("dave-orders".into(), "orders.>".into())],
    };
    let mut dave = Attacker::connect("agent dave", &e1, &m.auth(&dave_id).unwrap()).await;
    for api in [
        "CONSUMER.CREATE.MESH_EVENTS.dave-orders.mesh.evt.*.payments.>",
        "CONSUMER.CREATE.MESH_EVENTS.dave-orders.mesh.evt.>",
        "CONSUMER.CREATE.MESH_EVENTS.lander.mesh.evt.>",
        "CONSUMER.DELETE.MESH_EVENTS.dave-orders",
    ] {
        dave.request_refused(&js_api(api)).await;
    }
    let carol_agent = agents::Agent::with_client(carol.client.clone(), "e1", "carol").unwrap();
    let mut orders = carol_agent.subscribe_live("orders.>").await.unwrap();
    carol.client.flush().await.unwrap();
    // From e2: carol's interest crosses two leaf links in its own time, so publish until
    // a live copy arrives.
    let mut sent = 0;
    let got = loop {
        publish_n(&namesake, "orders.new", 1).await;
        sent += 1;
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(250), orders.next()).await
        {
            break ev.unwrap();
        }
        assert!(sent < 40, "carol got no live order from e2 in {sent} tries");
    };
    assert_eq!(
        (got.edge.as_str(), got.subject.as_str()),
        ("e2", "orders.new")
    );
    assert!(
        carol.no_violation_yet(),
        "the granted live subscription was refused"
    );

    // Nothing was lost, nothing forged was stored.
    m.wait_drained(DEADLINE).await.unwrap();
    let events = chaos::read_stream(m.central_js()).await.unwrap();
    let of = |edge: &str, agent: &str| {
        events
            .iter()
            .filter(|e| e.edge == edge && e.agent == agent)
            .collect::<Vec<_>>()
    };
    let bobs = of("e1", "bob");
    assert_eq!(bobs.len(), 101, "bob's events, once each");
    assert!(bobs
        .iter()
        .all(|e| e.data.as_ref() != b"forged" && e.data.as_ref() != b"evil"));
    assert_eq!(of("e2", "mallory").len(), 100 + sent);
    assert!(
        of("e1", "mallory").is_empty(),
        "nothing under the attacker's own source"
    );
    assert!(!events.iter().any(|e| e.subject == "forged.one"));
    let real_copy = Event::from_message(&headers, copy.payload.clone()).unwrap();
    let stored = events
        .iter()
        .find(|e| e.id == real_copy.id)
        .expect("the real event");
    assert_eq!(
        stored.data, real_copy.data,
        "the victim event is the real one"
    );
    assert!(bob_acks.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(landed_mark(m, "e9").await, 0);
    assert_eq!(
        m.landed_mark("e1").await,
        Some(101),
        "e1's 101 events, none skipped"
    );
    assert_eq!(m.landed_mark("e2").await, Some(100 + sent as u64));
    let reg = registry(m);
    assert!(reg["edges"].get("ghost").is_none(), "{reg}");
}

/// Attacks 3, 6, 7, 9 and 10 with a stolen edge credential (e1's edge hub, e1's leaf
/// links) and the operator's: other edges' uplinks, event, audit and heartbeat subjects
/// are refused by the servers. The one thing e1's own credential can send, a forged
/// bundle on `mesh.up.e1`, is dead-lettered with its reason, and e1's real events all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_edge_credential_cannot_forge_bundles_events_or_heartbeats() {
    let mesh = Kept::start(&["e1", "e2"]).await;
    let m = &mesh.0;
    let e1 = m.sites[0].nats.client_url();
    let centre = m.central.client_url();
    let forged = |edge: &str, first: u64, last: u64| Bundle {
        version: schemas::bundle::BUNDLE_VERSION,
        edge: edge.into(),
        first_seq: first,
        last_seq: last,
        events: vec![],
    };
    let e2_bundle: Bytes = forged("e2", 1, 1).encode().unwrap().into();

    // 3. An agent's credential may not write any uplink.
    let agent = m.auth(&Mesh::test_agent("e1", "mallory")).unwrap();
    let mut att = Attacker::connect("agent mallory", &e1, &agent).await;
    let own: Bytes = forged("e1", 1, 1).encode().unwrap().into();
    att.publish_refused(&subject::up("e1"), HeaderMap::new(), own)
        .await;
    att.publish_refused(&subject::up("e2"), HeaderMap::new(), e2_bundle.clone())
        .await;

    // e1's edge-hub credential, at its edge and straight at the centre, and e1's leaf
    // credential at the centre: not e2's uplink, no event, audit or foreign heartbeat.
    let hub = m.auth(&Identity::EdgeHub { edge: "e1".into() }).unwrap();
    let leaf = m.auth(&Identity::Leaf { edge: "e1".into() }).unwrap();
    let operator = m.operator_auth().unwrap();
    let mut hub_at_edge = Attacker::connect("edge-hub.e1 at e1", &e1, &hub).await;
    let mut hub_at_centre = Attacker::connect("edge-hub.e1 at the centre", &centre, &hub).await;
    let mut leaf_at_centre = Attacker::connect("leaf.e1 at the centre", &centre, &leaf).await;
    let mut op = Attacker::connect("operator at the centre", &centre, &operator).await;
    for a in [&mut hub_at_edge, &mut hub_at_centre, &mut leaf_at_centre] {
        a.publish_refused(
            &subject::up("e2"),
            forged("e2", 1, 1).headers(),
            e2_bundle.clone(),
        )
        .await;
        a.publish_refused(
            &subject::hub_edge("e2"),
            HeaderMap::new(),
            fake_status("e2"),
        )
        .await;
        a.publish_refused(
            &subject::hub_edge("ghost"),
            HeaderMap::new(),
            fake_status("ghost"),
        )
        .await;
    }
    // 6, 7, 9. Event subjects (a copy of a real event, a poison mark) and audit records.
    let victim = m.agent(0, "bob").await.unwrap();
    publish_n(&victim, "orders.new", 1).await;
    let real = wait_event(m, "e1", 1).await;
    let copy_headers = real.headers.clone();
    for a in [
        &mut hub_at_edge,
        &mut hub_at_centre,
        &mut leaf_at_centre,
        &mut op,
    ] {
        a.publish_refused(&real.subject, copy_headers.clone(), "evil".into())
            .await;
        a.publish_refused(&subject::evt("e9", "x"), poison(), "poison".into())
            .await;
        a.publish_refused(&subject::audit("x"), HeaderMap::new(), "{}".into())
            .await;
    }

    // 3. The forged bundle e1's own credential can send: `1..=2^63`, no events.
    let hub_client = hub.connect(&e1, "forger").await.unwrap();
    let hjs = jetstream::with_domain(hub_client, subject::CENTRAL_DOMAIN);
    let big = forged("e1", 1, 1 << 63);
    let mut hs = HeaderMap::new();
    hs.insert(h::MESH_FIRST_SEQ, "1");
    hs.insert(h::MESH_LAST_SEQ, (1u64 << 63).to_string().as_str());
    let ack = wait_until("the forged bundle to reach MESH_INGRESS", DEADLINE, || {
        let hjs = hjs.clone();
        let hs = hs.clone();
        let payload: Bytes = big.encode().unwrap().into();
        async move {
            match hjs
                .publish_with_headers(subject::up("e1"), hs, payload)
                .await
            {
                Ok(f) => f.await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    ack.expect("e1's edge-hub credential may write mesh.up.e1");
    let reason = wait_dead_letter(m, "e1").await;
    assert!(
        reason.starts_with("bad-bundle:") && reason.contains("9223372036854775808"),
        "{reason}"
    );
    // e1's real events after it all land, none skipped; e2 is untouched.
    let acks = publish_n(&victim, "orders.new", 20).await;
    let e2 = m.agent(1, "carol").await.unwrap();
    publish_n(&e2, "orders.new", 5).await;
    m.wait_drained(DEADLINE).await.unwrap();
    assert_eq!(acks.last(), Some(&21));
    assert_eq!(
        m.landed_mark("e1").await,
        Some(21),
        "none of e1's events skipped"
    );
    assert_eq!(events_of(m, "e1", "bob").await.len(), 21);
    assert_eq!(events_of(m, "e2", "carol").await.len(), 5);
    assert_eq!(m.landed_mark("e2").await, Some(5));
    assert_eq!(landed_mark(m, "e9").await, 0);
    assert_eq!(
        m.central_metric("mesh_central_skipped_events_total").await,
        0.0
    );
    let stored = events_of(m, "e1", "bob").await;
    assert_eq!(
        stored[0].data,
        real_event(&real).data,
        "the victim event is the real one"
    );

    // 10. The registry knows the two real edges, and no expulsion was recorded.
    // (Each real edge is registered from its first heartbeat; wait for both.)
    wait_until("the registry to know e1 and e2", DEADLINE, || async {
        let reg = registry(m);
        reg["edges"].get("e1").is_some() && reg["edges"].get("e2").is_some()
    })
    .await
    .unwrap();
    let reg = registry(m);
    let edges: Vec<&String> = reg["edges"].as_object().unwrap().keys().collect();
    assert_eq!(edges, ["e1", "e2"], "{reg}");
    for (id, e) in reg["edges"].as_object().unwrap() {
        let expelled: u64 = e["expelled"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
        assert_eq!(expelled, 0, "fake outbox.expelled for {id}: {reg}");
    }
    let (ok, out) =
        support::mesh_cli_as(&operator, &["audit", "tail", "--nats", &centre, "--json"]);
    assert!(ok && !out.contains("outbox.expelled"), "{out}");
    let (ok, out) = support::mesh_cli_as(&operator, &["audit", "verify", "--nats", &centre]);
    assert!(ok && out.starts_with("OK"), "{out}");
}

/// Attack 8: deleting, purging or updating the streams, the lander's bucket and its
/// consumer, through the central domain's API (agent, edge hub, leaf) and the centre's own
/// (operator): refused, no success reply; the streams hold what they held, the lander
/// consumer is there, and `mesh audit verify` counts the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_but_the_central_hubs_touches_streams_buckets_or_consumers() {
    let mesh = Kept::start(&["e1"]).await;
    let m = &mesh.0;
    let agent = m.agent(0, "alice").await.unwrap();
    publish_n(&agent, "before.attack", 10).await;
    m.wait_drained(DEADLINE).await.unwrap();
    let streams = [
        subject::STREAM_EVENTS,
        subject::STREAM_AUDIT,
        subject::STREAM_INGRESS,
        subject::STREAM_DLQ,
        "KV_MESH_LANDER",
    ];
    let mut before = Vec::new();
    for s in streams {
        before.push(
            m.stream_messages(s)
                .await
                .unwrap_or_else(|| panic!("stream {s}")),
        );
    }
    let operator = m.operator_auth().unwrap();
    let centre = m.central.client_url();
    let verified = |out: &str| -> u64 {
        // "OK MESH_AUDIT: N records, ..."
        out.split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a verify line: {out}"))
    };
    let (ok, out) = mesh_cli_as(&operator, &["audit", "verify", "--nats", &centre]);
    assert!(ok, "{out}");
    let records = verified(&out);

    let apis = [
        "STREAM.DELETE.MESH_AUDIT",
        "STREAM.PURGE.MESH_EVENTS",
        "STREAM.UPDATE.MESH_INGRESS",
        "STREAM.DELETE.KV_MESH_LANDER",
        "STREAM.PURGE.KV_MESH_LANDER",
        "CONSUMER.DELETE.MESH_INGRESS.lander",
        "STREAM.MSG.DELETE.MESH_EVENTS",
    ];
    let e1 = m.sites[0].nats.client_url();
    let who = [
        (
            "agent",
            e1.clone(),
            m.auth(&Mesh::test_agent("e1", "mallory")).unwrap(),
        ),
        (
            "edge hub",
            e1.clone(),
            m.auth(&Identity::EdgeHub { edge: "e1".into() }).unwrap(),
        ),
        (
            "leaf",
            centre.clone(),
            m.auth(&Identity::Leaf { edge: "e1".into() }).unwrap(),
        ),
        ("operator", centre.clone(), operator.clone()),
        ("operator at the edge", e1.clone(), operator.clone()),
    ];
    for (name, url, auth) in &who {
        let mut a = Attacker::connect(name, url, auth).await;
        for api in apis {
            a.request_refused(&js_api(api)).await;
            if name.starts_with("operator") {
                a.request_refused(&format!("$JS.API.{api}")).await;
            }
        }
        // The lander's mark, written directly.
        a.publish_refused(
            "$KV.MESH_LANDER.e1",
            HeaderMap::new(),
            Bytes::from_static(&[0xff; 8]),
        )
        .await;
    }

    let mut after = Vec::new();
    for s in streams {
        after.push(
            m.stream_messages(s)
                .await
                .unwrap_or_else(|| panic!("stream {s}")),
        );
    }
    assert_eq!(after, before, "{streams:?}");
    m.central_js()
        .get_stream(subject::STREAM_INGRESS)
        .await
        .unwrap()
        .consumer_info("lander")
        .await
        .expect("the lander's consumer is still there");
    let (ok, out) = mesh_cli_as(&operator, &["audit", "verify", "--nats", &centre]);
    assert!(ok, "{out}");
    assert_eq!(verified(&out), records, "{out}");
    // And the mesh still lands.
    publish_n(&agent, "after.attack", 10).await;
    m.wait_drained(DEADLINE).await.unwrap();
    assert_eq!(m.landed_mark("e1").await, Some(20));
    assert_eq!(events_of(m, "e1", "alice").await.len(), 20);
}

/// Attack 4: fake acks and fake JetStream INFO replies. An agent can neither take the
/// uplink's messages nor the centre's API requests nor anyone's inbox, nor reply into an
/// edge hub's inbox; with the centre down the edge knows it is down and deletes nothing,
/// and after the restart every event lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_acks_cannot_make_an_edge_drop_its_outbox() {
    let mut mesh = Kept::start(&["e1"]).await;
    let e1 = mesh.0.sites[0].nats.client_url();
    let mallory = mesh.0.auth(&Mesh::test_agent("e1", "mallory")).unwrap();
    let mut att = Attacker::connect("agent mallory", &e1, &mallory).await;
    for s in [
        "mesh.up.>",
        "mesh.up.e1",
        "$JS.central.API.>",
        "$JS.central.API.INFO",
        "_INBOX.>",
        "_INBOX_EDGE.>",
        "_INBOX_EDGE.e1.>",
    ] {
        att.subscribe_refused(s).await;
    }
    // A reply pushed blindly into the edge hub's inboxes.
    att.publish_refused("_INBOX_EDGE.e1.x", HeaderMap::new(), "{}".into())
        .await;

    let agent = mesh.0.agent(0, "alice").await.unwrap();
    publish_n(&agent, "before.outage", 10).await;
    mesh.0.wait_drained(DEADLINE).await.unwrap();
    mesh.0.kill_central();
    mesh.0.wait_uplink(0, false).await.unwrap();
    let acks = publish_n(&agent, "during.outage", 30).await;
    assert_eq!(acks.last(), Some(&40));
    assert_eq!(
        mesh.0.edge_metric(0, "mesh_edge_outbox_events").await,
        Some(30.0),
        "the edge keeps every event the centre has not acked"
    );
    assert_eq!(
        mesh.0.edge_metric(0, "mesh_edge_uplink_up").await,
        Some(0.0)
    );
    mesh.0.restart_central().unwrap();
    mesh.0.wait_uplink(0, true).await.unwrap();
    mesh.0.wait_drained(DEADLINE).await.unwrap();
    assert_eq!(mesh.0.landed_mark("e1").await, Some(40));
    assert_eq!(events_of(&mesh.0, "e1", "alice").await.len(), 40);
}

/// Found while writing attack 3: e1's own edge-hub credential can send a *consistent*
/// bundle for sequences e1 has not sent yet, declaring them all missing (`mesh-missing`,
/// as the outbox does for expelled events). The lander cannot tell it from a real one:
/// it lands nothing, moves e1's mark past them, and e1's real events with those
/// sequences are then "already landed" and dropped. Asserts the secure behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "design question: the lander trusts an edge's own credential to declare its \
            sequences missing; a stolen edge-hub credential erases that edge's next events"]
async fn a_stolen_edge_credential_cannot_erase_its_edges_next_events() {
    let mesh = Kept::start(&["e1"]).await;
    let m = &mesh.0;
    let hub = m.auth(&Identity::EdgeHub { edge: "e1".into() }).unwrap();
    let c = hub
        .connect(&m.sites[0].nats.client_url(), "forger")
        .await
        .unwrap();
    let js = jetstream::with_domain(c, subject::CENTRAL_DOMAIN);
    let ahead = Bundle {
        version: schemas::bundle::BUNDLE_VERSION,
        edge: "e1".into(),
        first_seq: 1,
        last_seq: 5,
        events: vec![],
    };
    let mut hs = ahead.headers();
    hs.insert(h::NATS_MSG_ID, "forged");
    js.publish_with_headers(subject::up("e1"), hs, ahead.encode().unwrap().into())
        .await
        .unwrap()
        .await
        .expect("e1's credential may write mesh.up.e1");
    let agent = m.agent(0, "alice").await.unwrap();
    publish_n(&agent, "real.one", 10).await;
    m.wait_drained(DEADLINE).await.unwrap();
    assert_eq!(
        events_of(m, "e1", "alice").await.len(),
        10,
        "e1's real events 1..=5 were erased by a forged bundle"
    );
}

// ---- helpers ----

/// A test-kit mesh that, on a failing test, keeps its directory and prints the hubs' logs.
struct Kept(Mesh);

impl Kept {
    async fn start(edges: &[&str]) -> Kept {
        let mesh = MeshBuilder::new()
            .name("attacks")
            .exe(env!("CARGO_BIN_EXE_mesh"))
            .edge_ids(edges.iter().copied())
            .start()
            .await
            .unwrap_or_else(|e| panic!("starting the mesh: {e}"));
        Kept(mesh)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- test dir kept at {} ----", self.0.keep_dir().display());
            eprint!("{}", self.0.log_tails(60));
        }
    }
}

/// A plain client with a credential, and the server's errors to it.
struct Attacker {
    who: String,
    client: async_nats::Client,
    errors: UnboundedReceiver<String>,
}

impl Attacker {
    async fn connect(who: &str, url: &str, auth: &ClientAuth) -> Attacker {
        let (client, errors) = connect(url, auth)
            .await
            .unwrap_or_else(|e| panic!("{who} cannot connect to {url}: {e}"));
        Attacker {
            who: who.into(),
            client,
            errors,
        }
    }

    /// Waits for the server's permissions violation naming `subject`.
    async fn violation(&mut self, op: &str, subject: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        // The centre maps its own domain's API prefix to `$JS.API.` before checking.
        let central = format!("{}.", subject::js_api_prefix(subject::CENTRAL_DOMAIN));
        let mut names = vec![subject.to_string()];
        if let Some(api) = subject.strip_prefix(&central) {
            names.push(format!("$JS.API.{api}"));
        }
        loop {
            let ev = tokio::time::timeout_at(deadline, self.errors.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: no permissions violation for {op} {subject}: not refused \
                         (server said: {seen:?})",
                        self.who
                    )
                })
                .expect("connection events");
            if ev.to_lowercase().contains("permissions violation")
                && names.iter().any(|n| ev.contains(&format!("\"{n}\"")))
            {
                return;
            }
            seen.push(ev);
        }
    }

    async fn publish_refused(&mut self, subject: &str, headers: HeaderMap, payload: Bytes) {
        self.client
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.violation("publish to", subject).await;
    }

    async fn subscribe_refused(&mut self, subject: &str) {
        let _sub = self.client.subscribe(subject.to_string()).await.unwrap();
        self.client.flush().await.unwrap();
        self.violation("subscribe to", subject).await;
    }

    async fn queue_subscribe_refused(&mut self, subject: &str, queue: &str) {
        let _sub = self
            .client
            .queue_subscribe(subject.to_string(), queue.to_string())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.violation("queue subscribe to", subject).await;
    }

    /// A request whose publish is refused: the violation, and no reply at all (the
    /// server drops a refused message, so nothing can answer it).
    async fn request_refused(&mut self, subject: &str) {
        let inbox = self.client.new_inbox();
        let mut replies = self.client.subscribe(inbox.clone()).await.unwrap();
        self.client
            .publish_with_reply(subject.to_string(), inbox, "{}".into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.violation("request on", subject).await;
        self.client.flush().await.unwrap();
        if let Some(Some(r)) = futures::FutureExt::now_or_never(replies.next()) {
            panic!(
                "{}: {subject} answered: {}",
                self.who,
                String::from_utf8_lossy(&r.payload)
            );
        }
    }

    /// Whether no server error has come so far.
    fn no_violation_yet(&mut self) -> bool {
        while let Ok(ev) = self.errors.try_recv() {
            if ev.to_lowercase().contains("permissions violation") {
                return false;
            }
        }
        true
    }
}

/// [`ClientAuth::connect_watched`]: connect, with the connection's events on a channel.
async fn connect(
    url: &str,
    auth: &ClientAuth,
) -> Result<(async_nats::Client, UnboundedReceiver<String>), String> {
    auth.connect_watched(url).await
}

/// `$JS.central.API.<api>`.
fn js_api(api: &str) -> String {
    format!("{}.{api}", subject::js_api_prefix(subject::CENTRAL_DOMAIN))
}

/// A `ce-meshseq` no lander can read.
fn poison() -> HeaderMap {
    let mut hs = HeaderMap::new();
    hs.insert(h::MESH_SEQ, "not-a-number");
    hs
}

/// A heartbeat of `edge` claiming 999 expelled events.
fn fake_status(edge: &str) -> Bytes {
    serde_json::to_vec(&schemas::EdgeStatus {
        edge: edge.into(),
        uplink_up: true,
        outbox_events: 0,
        outbox_bytes: 0,
        expelled: [("max_bytes".to_string(), 999)].into(),
        time: chrono::Utc::now().to_rfc3339(),
    })
    .unwrap()
    .into()
}

/// Publishes `n` events on `subject`; returns their acked edge sequences.
async fn publish_n(agent: &agents::Agent, subj: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        let ack = agent
            .publish("t", subj, format!("{} {i}", agent.id()))
            .await
            .unwrap_or_else(|e| panic!("{} publish {i}: {e}", agent.id()));
        seqs.push(ack.last_seq);
    }
    seqs
}

/// The events in `MESH_EVENTS` from `agent` of `edge`.
async fn events_of(m: &Mesh, edge: &str, agent: &str) -> Vec<Event> {
    chaos::read_stream(m.central_js())
        .await
        .expect("read MESH_EVENTS")
        .into_iter()
        .filter(|e| e.edge == edge && e.agent == agent)
        .collect()
}

/// [`Mesh::landed_mark`], which must be readable.
async fn landed_mark(m: &Mesh, edge: &str) -> u64 {
    m.landed_mark(edge).await.expect("the landed mark")
}

/// Waits for event `seq` of `edge` in `MESH_EVENTS` and returns the raw message.
async fn wait_event(m: &Mesh, edge: &str, seq: u64) -> jetstream::message::StreamMessage {
    wait_until(
        &format!("{edge}'s event {seq} landed"),
        DEADLINE,
        || async { m.landed_mark(edge).await.is_some_and(|s| s >= seq) },
    )
    .await
    .unwrap();
    m.central_js()
        .get_stream(subject::STREAM_EVENTS)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&subject::evt_edge(edge))
        .await
        .unwrap()
}

fn real_event(m: &jetstream::message::StreamMessage) -> Event {
    Event::from_message(&m.headers, m.payload.clone()).unwrap()
}

/// Waits for the dead letter of a bundle of `edge` and returns its reason.
async fn wait_dead_letter(m: &Mesh, edge: &str) -> String {
    let dlq = subject::dlq(edge, "_bundle");
    let stream = m
        .central_js()
        .get_stream(subject::STREAM_DLQ)
        .await
        .unwrap();
    wait_until(&format!("a dead letter on {dlq}"), DEADLINE, || async {
        stream.get_last_raw_message_by_subject(&dlq).await.is_ok()
    })
    .await
    .unwrap();
    let msg = stream.get_last_raw_message_by_subject(&dlq).await.unwrap();
    msg.headers
        .get(h::DLQ_REASON)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// `mesh registry list --json` as the operator.
fn registry(m: &Mesh) -> serde_json::Value {
    let (ok, out) = mesh_cli_as(
        &m.operator_auth().unwrap(),
        &[
            "registry",
            "list",
            "--nats",
            &m.central.client_url(),
            "--json",
        ],
    );
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The leaf connections the centre counts for the real edges.
fn edge_leaf_links(m: &Mesh) -> u64 {
    m.central.leafnode_count().expect("the centre's /leafz")
}
