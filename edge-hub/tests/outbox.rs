//! The sled outbox against its model (proptest) and against named crash and corruption
//! cases, on real sled databases in temp dirs.

use std::time::Duration;

use bytes::Bytes;
use edge_hub::config::{FullPolicy, OutboxConfig};
use edge_hub::outbox::{Outbox, OutboxError, OutboxWriter, ReadCache};
use proptest::prelude::*;
use schemas::NewEvent;
use std::sync::Arc;

fn cfg() -> OutboxConfig {
    OutboxConfig {
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(3600),
        full_policy: FullPolicy::Reject,
        cache_bytes: 1 << 20,
        ..OutboxConfig::default()
    }
}

/// Opens the outbox at `path` again right after it (or a raw sled handle on it) was
/// dropped. sled lets go of its file lock only once its own IO threads let go of the
/// database, which can be a few milliseconds after the last handle is dropped (seen:
/// "could not acquire lock" on a loaded machine).
fn open_settled(
    path: &std::path::Path,
    c: OutboxConfig,
) -> Result<(Arc<Outbox>, OutboxWriter), OutboxError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Outbox::open(path, c.clone()) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// `sled::open` right after the outbox on `path` was dropped (see [`open_settled`]).
fn sled_settled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.unwrap(),
        }
    }
}

fn reopen(path: &std::path::Path) -> (Arc<Outbox>, OutboxWriter) {
    reopen_with(path, cfg())
}

/// [`open_settled`], which must succeed.
fn reopen_with(path: &std::path::Path, c: OutboxConfig) -> (Arc<Outbox>, OutboxWriter) {
    open_settled(path, c).unwrap_or_else(|e| panic!("reopen: {e}"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Appends `n` events whose data is their tag; returns the sequences.
async fn append(w: &mut OutboxWriter, tags: &[u32]) -> Result<(u64, u64), OutboxError> {
    append_as(w, "a", tags).await
}

/// [`append`] as `agent`.
async fn append_as(
    w: &mut OutboxWriter,
    agent: &str,
    tags: &[u32],
) -> Result<(u64, u64), OutboxError> {
    let bytes: u64 = tags.len() as u64 * 4;
    let c = w
        .append(tags.len(), bytes, |first| {
            tags.iter()
                .enumerate()
                .map(|(i, t)| {
                    NewEvent::new("t", "s", Bytes::copy_from_slice(&t.to_be_bytes())).into_event(
                        "e",
                        agent,
                        first + i as u64,
                        chrono::Utc::now(),
                    )
                })
                .collect()
        })
        .await?;
    Ok((c.first_seq, c.last_seq))
}

/// Everything readable from `from`, as (seq, tag), plus the last covered sequence.
fn read_all(ob: &Outbox, from: u64) -> (u64, Vec<(u64, u32)>) {
    let mut cache = ReadCache::default();
    let mut out = Vec::new();
    let mut cursor = from;
    let mut covered = from - 1;
    while let Some((last, evs)) = ob.read_from(cursor, 7, 1 << 20, &mut cache).unwrap() {
        for e in evs {
            out.push((e.seq, u32::from_be_bytes(e.data[..4].try_into().unwrap())));
        }
        covered = last;
        cursor = last + 1;
    }
    (covered, out)
}

/// [`read_all`] through the forwarder's path: raw reads spliced into bundles, decoded
/// as the lander decodes them. Bundle ranges must also chain without a hole.
fn read_all_raw(ob: &Outbox, from: u64) -> (u64, Vec<(u64, u32)>) {
    let mut cache = ReadCache::default();
    let mut out = Vec::new();
    let mut cursor = from;
    let mut covered = from - 1;
    let mut raw = Vec::new();
    while let Some((last, n)) = ob
        .read_raw_from(cursor, 7, 1 << 20, &mut cache, &mut raw)
        .unwrap()
    {
        let b = schemas::Bundle::decode(&schemas::Bundle::encode_raw("e", cursor, last, n, &raw))
            .unwrap();
        assert_eq!(b.events.len(), n as usize);
        assert!(n <= 7);
        for e in b.events {
            out.push((e.seq, u32::from_be_bytes(e.data[..4].try_into().unwrap())));
        }
        covered = last;
        cursor = last + 1;
        raw.clear();
    }
    (covered, out)
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u32>),
    /// Ack this many of the events the model holds (0..=len).
    Ack(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u32>(), 1..20).prop_map(Op::Append),
        2 => (0usize..30).prop_map(Op::Ack),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The outbox behaves as a queue of (seq, tag) with gap-free sequences that are never
    /// reused, across acks and reopenings.
    #[test]
    fn outbox_matches_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ob");
        rt().block_on(async {
            let (mut ob, mut w): (Arc<Outbox>, OutboxWriter) = Outbox::open(&path, cfg()).unwrap();
            let mut model: Vec<(u64, u32)> = Vec::new();
            let mut next = 1u64;
            let mut acked = 0u64;
            for op in ops {
                match op {
                    Op::Append(tags) => {
                        let (first, last) = append(&mut w, &tags).await.unwrap();
                        prop_assert_eq!(first, next);
                        prop_assert_eq!(last, next + tags.len() as u64 - 1);
                        for (i, t) in tags.iter().enumerate() {
                            model.push((first + i as u64, *t));
                        }
                        next = last + 1;
                    }
                    Op::Ack(k) => {
                        let k = k.min(model.len());
                        if k > 0 {
                            acked = model[k - 1].0;
                            ob.ack_through(acked).unwrap();
                            model.drain(..k);
                        }
                    }
                    Op::Reopen => {
                        drop(w);
                        drop(ob);
                        let (o, nw) = reopen(&path);
                        ob = o;
                        w = nw;
                        // Acks are not flushed: a reopen may resurrect acked records,
                        // which only means resending what the centre has. Re-ack.
                        ob.ack_through(acked).unwrap();
                    }
                }
                let (covered, got) = read_all(&ob, acked + 1);
                prop_assert_eq!(&got, &model);
                prop_assert_eq!(read_all_raw(&ob, acked + 1), (covered, got));
                prop_assert_eq!(ob.stats().events, model.len() as u64);
                prop_assert_eq!(ob.stats().next_seq, next);
            }
            Ok(())
        })?;
    }
}

#[test]
fn sequences_are_not_reused_after_a_full_drain_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (ob, mut w) = Outbox::open(dir.path(), cfg()).unwrap();
        let (_, last) = append(&mut w, &[1, 2, 3]).await.unwrap();
        ob.ack_through(last).unwrap();
        w.flush().await.unwrap();
        drop((ob, w));
        let (ob, mut w) = reopen_with(dir.path(), cfg());
        assert_eq!(ob.stats().events, 0);
        assert_eq!(append(&mut w, &[4]).await.unwrap(), (4, 4));
    });
}

#[test]
fn expiry_expels_counts_and_leaves_a_gap_the_next_bundle_covers() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut c = cfg();
        c.max_age = Duration::from_millis(50);
        let (ob, mut w) = Outbox::open(dir.path(), c.clone()).unwrap();
        append(&mut w, &[1, 2, 3]).await.unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(w.expire().await.unwrap(), 3);
        assert_eq!(ob.stats().expelled_max_age, 3);
        // Nothing left, but the range 1..=3 must still be announced to the centre.
        assert_eq!(read_all(&ob, 1), (3, vec![]));
        assert_eq!(read_all_raw(&ob, 1), (3, vec![]));
        append(&mut w, &[9]).await.unwrap();
        let (covered, got) = read_all(&ob, 1);
        assert_eq!((covered, got), (4, vec![(4, 9)]));
        assert_eq!(read_all_raw(&ob, 1), (4, vec![(4, 9)]));
        // After a reopen, the sequence still moves on.
        w.flush().await.unwrap();
        drop((ob, w));
        let (ob, mut w) = reopen_with(dir.path(), c);
        assert_eq!(ob.stats().next_seq, 5);
        assert_eq!(append(&mut w, &[10]).await.unwrap(), (5, 5));
    });
}

#[test]
fn reject_policy_refuses_whole_commits_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut c = cfg();
        c.max_bytes = 2_000;
        let (ob, mut w) = Outbox::open(dir.path(), c).unwrap();
        let mut stored = 0;
        let err = loop {
            match append(&mut w, &[1, 2]).await {
                Ok(_) => stored += 2,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, OutboxError::Full { max: 2000, .. }), "{err}");
        assert!(err.to_string().contains("outbox full"), "{err}");
        assert_eq!(ob.stats().events, stored);
        assert_eq!(ob.stats().expelled_max_bytes, 0);
    });
}

#[test]
fn drop_oldest_expels_from_the_front() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut c = cfg();
        c.max_bytes = 2_000;
        c.full_policy = FullPolicy::DropOldest;
        let (ob, mut w) = Outbox::open(dir.path(), c).unwrap();
        for i in 0..100u32 {
            append(&mut w, &[i]).await.unwrap();
        }
        let s = ob.stats();
        assert!(s.expelled_max_bytes > 0);
        assert_eq!(s.events + s.expelled_max_bytes, 100);
        let (covered, got) = read_all(&ob, 1);
        assert_eq!(read_all_raw(&ob, 1), (covered, got.clone()));
        assert_eq!(covered, 100);
        assert_eq!(
            got.first().unwrap().0,
            s.expelled_max_bytes + 1,
            "the oldest went first"
        );
    });
}

#[test]
fn a_corrupt_key_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("records")
            .unwrap()
            .insert(b"short", b"x".as_ref())
            .unwrap();
        db.flush().unwrap();
    }
    let err = open_settled(dir.path(), cfg()).err().expect("must refuse");
    assert!(err.to_string().contains("expected 32"), "{err}");
}

#[test]
fn a_corrupt_value_is_reported_when_read() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        {
            let (_ob, mut w) = Outbox::open(dir.path(), cfg()).unwrap();
            append(&mut w, &[1]).await.unwrap();
            w.flush().await.unwrap();
        }
        {
            let db = sled_settled(dir.path());
            let t = db.open_tree("records").unwrap();
            let (k, _) = t.first().unwrap().unwrap();
            t.insert(k, b"\xc1garbage".as_ref()).unwrap();
            db.flush().unwrap();
        }
        let (ob, _w) = reopen_with(dir.path(), cfg());
        let err = ob
            .read_from(1, 10, 1 << 20, &mut ReadCache::default())
            .unwrap_err();
        assert!(matches!(err, OutboxError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("1..=1"), "{err}");
        let err = ob
            .read_raw_from(1, 10, 1 << 20, &mut ReadCache::default(), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, OutboxError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("1..=1"), "{err}");
    });
}

/// Events expelled while their bundle is in flight are not counted as lost when that
/// bundle is acknowledged, and are counted when the forwarder gives up on it.
#[test]
fn expelled_while_in_flight_counts_only_what_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut c = cfg();
        c.max_age = Duration::from_millis(30);
        let (ob, mut w) = Outbox::open(dir.path(), c).unwrap();
        append(&mut w, &[1, 2, 3, 4]).await.unwrap();
        ob.mark_sent(2); // a bundle with 1..=2 is in flight
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(w.expire().await.unwrap(), 2, "3 and 4 were not in flight");
        ob.ack_through(2).unwrap(); // the bundle landed: 1 and 2 were delivered
        ob.reset_inflight();
        assert_eq!(ob.stats().expelled_max_age, 2);

        append(&mut w, &[5, 6]).await.unwrap();
        ob.mark_sent(6);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(w.expire().await.unwrap(), 0, "both in flight");
        ob.reset_inflight(); // the bundle failed; the forwarder starts over without them
        assert_eq!(ob.stats().expelled_max_age, 4);
    });
}

/// The acks of a producer's requests are written with the records they ack, survive a
/// reopen, and are dropped once the producer was idle for `max_age`.
#[test]
fn producer_acks_survive_a_reopen_and_expire_with_max_age() {
    use edge_hub::outbox::{RequestId, Seen};
    let dir = tempfile::tempdir().unwrap();
    let id = |request| RequestId {
        agent: "a".into(),
        producer: uuid::Uuid::from_u128(7),
        request,
    };
    rt().block_on(async {
        let mut c = cfg();
        c.max_age = Duration::from_millis(300);
        let (ob, mut w) = Outbox::open(dir.path(), c.clone()).unwrap();
        append(&mut w, &[1]).await.unwrap();
        // Two requests of 2 and 3 events in one commit, at offsets 0 and 2.
        let c5 = w
            .append_acked(5, 20, &[(id(1), 0, 2), (id(2), 2, 3)], |first| {
                (0..5)
                    .map(|i| {
                        NewEvent::new("t", "s", Bytes::from_static(b"x")).into_event(
                            "e",
                            "a",
                            first + i,
                            chrono::Utc::now(),
                        )
                    })
                    .collect()
            })
            .await
            .unwrap();
        assert_eq!((c5.first_seq, c5.last_seq), (2, 6));
        let stored = |first_seq, last_seq| Seen::Stored {
            first_seq,
            last_seq,
        };
        assert_eq!(ob.seen(&id(1)).unwrap(), stored(2, 3));
        assert_eq!(ob.seen(&id(2)).unwrap(), stored(4, 6));
        assert_eq!(ob.seen(&id(3)).unwrap(), Seen::New);
        let other = RequestId {
            agent: "b".into(),
            ..id(1)
        };
        assert_eq!(ob.seen(&other).unwrap(), Seen::New, "keyed by agent too");
        drop((ob, w));
        let (ob, mut w) = reopen_with(dir.path(), c);
        assert_eq!(ob.seen(&id(2)).unwrap(), stored(4, 6));
        std::thread::sleep(Duration::from_millis(400));
        w.expire().await.unwrap();
        assert_eq!(ob.seen(&id(2)).unwrap(), Seen::New);
    });
}

/// Every stored event's id (supplied or assigned) is remembered with its record, survives
/// a reopen, and is forgotten (and its chunks removed) once past `id_horizon`; an id
/// older than the horizon is then refused as such, not taken as new.
#[test]
fn stored_ids_survive_a_reopen_and_are_forgotten_past_the_horizon() {
    use edge_hub::outbox::IdCheck;
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut c = cfg();
        c.id_horizon = Duration::from_secs(1);
        let (ob, mut w) = Outbox::open(dir.path(), c.clone()).unwrap();
        let supplied = uuid::Uuid::now_v7();
        let c2 = w
            .append(2, 2, |first| {
                let mut a = NewEvent::new("t", "s", Bytes::from_static(b"x"));
                a.id = Some(supplied);
                let b = NewEvent::new("t", "s", Bytes::from_static(b"y"));
                let now = chrono::Utc::now();
                vec![
                    a.into_event("e", "a", first, now),
                    b.into_event("e", "b", first + 1, now),
                ]
            })
            .await
            .unwrap();
        let assigned = c2.events[1].id;
        let check =
            |ob: &Outbox, agent: &str, id: uuid::Uuid| match ob.check_ids(agent, [id].iter()) {
                Ok(_) => IdCheck::New,
                Err((_, why)) => why,
            };
        assert_eq!(check(&ob, "a", supplied), IdCheck::Stored);
        assert_eq!(check(&ob, "b", assigned), IdCheck::Stored);
        assert_eq!(check(&ob, "b", supplied), IdCheck::New, "keyed by agent");
        assert_eq!(ob.ids_remembered().0, 2);
        drop((ob, w));

        let (ob, mut w) = reopen_with(dir.path(), c.clone());
        assert_eq!(
            check(&ob, "a", supplied),
            IdCheck::Stored,
            "rebuilt on reopen"
        );
        assert_eq!(check(&ob, "b", assigned), IdCheck::Stored);
        std::thread::sleep(Duration::from_millis(2100));
        w.expire().await.unwrap();
        assert_eq!(ob.ids_remembered().0, 0);
        assert_eq!(check(&ob, "a", supplied), IdCheck::PastHorizon);
        drop((ob, w));

        // The chunks left the tree: a reopen with a long horizon finds none, and the
        // floor kept in `meta` still refuses the id.
        c.id_horizon = Duration::from_secs(3600);
        let (ob, _w) = reopen_with(dir.path(), c);
        assert_eq!(ob.ids_remembered().0, 0);
        assert_eq!(check(&ob, "a", supplied), IdCheck::Forgotten);
    });
}

/// Under `drop-oldest`, an agent flooding the outbox loses its own oldest events first:
/// a calm agent keeps every event while it holds less than its share (half, with two
/// agents). Reads pass over the holes the flooder's records leave, as bundles that say
/// how many sequences hold no event; after a reopen the agents are known again.
#[test]
fn drop_oldest_expels_the_agent_over_its_share_first() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut c = cfg();
        c.max_bytes = 20_000;
        c.full_policy = FullPolicy::DropOldest;
        let (ob, mut w) = Outbox::open(dir.path(), c.clone()).unwrap();
        let mut calm = Vec::new();
        let mut tag = 0u32;
        for round in 0..200 {
            let tags: Vec<u32> = (0..5).map(|k| tag + k).collect();
            tag += 5;
            append_as(&mut w, "flood", &tags).await.unwrap();
            if round % 20 == 0 {
                let (s, _) = append_as(&mut w, "calm", &[1_000_000 + round])
                    .await
                    .unwrap();
                calm.push((s, 1_000_000 + round));
            }
        }
        // `flood_sent`: the flooder's events since the outbox was opened, and those it
        // held then (the expelled counts start at 0 on each open).
        let check = |ob: &Outbox, flood_sent: u64| {
            let s = ob.stats();
            let (covered, got) = read_all(ob, 1);
            assert_eq!(read_all_raw(ob, 1), (covered, got.clone()));
            assert_eq!(covered, s.next_seq - 1, "the reads cover every sequence");
            let kept: Vec<(u64, u32)> = got
                .iter()
                .copied()
                .filter(|(_, t)| *t >= 1_000_000)
                .collect();
            assert_eq!(kept, calm, "the calm agent lost events");
            let flood_kept = (got.len() - kept.len()) as u64;
            assert_eq!(flood_kept + s.expelled_max_bytes, flood_sent);
            assert_eq!(s.events, got.len() as u64);
        };
        check(&ob, 1000);
        assert!(ob.stats().expelled_max_bytes > 0, "nothing expelled");
        let flood_held = ob.stats().events - calm.len() as u64;
        drop((ob, w));

        let (ob, mut w) = reopen_with(dir.path(), c);
        check(&ob, flood_held);
        for _ in 0..50 {
            let tags: Vec<u32> = (0..5).map(|k| tag + k).collect();
            tag += 5;
            append_as(&mut w, "flood", &tags).await.unwrap();
        }
        check(&ob, flood_held + 250);
        assert!(
            ob.stats().expelled_max_bytes > 0,
            "nothing expelled after the reopen"
        );
        // Acks pass over the holes too.
        let last = ob.stats().next_seq - 1;
        ob.ack_through(last).unwrap();
        assert_eq!(ob.stats().events, 0);
        assert_eq!(read_all(&ob, last + 1), (last, vec![]));
    });
}
