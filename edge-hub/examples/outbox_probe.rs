//! Profiling aid for the outbox alone (no NATS): fills it with N events in group
//! commits, drains it, repeats, and prints disk use and this process's peak RSS.
//!
//! `cargo run --release -p edge-hub --example outbox_probe -- EVENTS CYCLES [SIZE]`
//!
//! Env: `CACHE=<bytes>` sets `outbox.cache_bytes` (16 MiB); `TRIM=1` calls `malloc_trim`
//! after each drain; `COMMIT=<events>` sets the events per group commit (2048);
//! `FLUSH=1` sets `outbox.sync = "flush"` (default `always`). It also prints the commits'
//! p50 / p99 / max time. Per cycle it prints the records and encoded MiB at full, glibc's heap
//! in use and free (`mallinfo2`), RSS after the drain (and after the trim), files and MiB
//! under sled's `blobs/`, disk at full and after the drain, and peak RSS (`VmHWM`).

use std::time::{Duration, Instant};

use edge_hub::config::{FullPolicy, OutboxConfig, OutboxSync};
use edge_hub::outbox::{Outbox, ReadCache};
use schemas::NewEvent;

fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

fn du(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.blocks() * 512;
            }
        }
    }
    total / (1 << 20)
}

/// Bytes glibc's malloc hands out now (MiB) and holds free (MiB).
fn heap() -> (usize, usize) {
    // SAFETY: mallinfo2 only reads allocator statistics.
    let mi = unsafe { libc::mallinfo2() };
    (mi.uordblks >> 20, mi.fordblks >> 20)
}

fn env(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.parse().ok())
}

/// Files and MiB under `dir/blobs` (sled's separately stored large pages).
fn blobs(dir: &std::path::Path) -> (usize, u64) {
    let b = dir.join("blobs");
    let n = std::fs::read_dir(&b).map(|r| r.count()).unwrap_or(0);
    (n, du(&b))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (events, cycles, size) = (args[0], args[1], *args.get(2).unwrap_or(&256) as usize);
    let dir = tempfile::tempdir().unwrap();
    let cfg = OutboxConfig {
        max_bytes: 4 << 30,
        max_age: Duration::from_secs(3600),
        full_policy: FullPolicy::Reject,
        cache_bytes: env("CACHE").unwrap_or(16 << 20),
        sync: match env("FLUSH") {
            Some(_) => OutboxSync::Flush,
            None => OutboxSync::Always,
        },
        ..OutboxConfig::default()
    };
    let (ob, mut w) = Outbox::open(dir.path(), cfg).unwrap();
    let data = bytes::Bytes::from(vec![b'x'; size]);
    let commit = env("COMMIT").unwrap_or(2048);
    for c in 0..cycles {
        let t = Instant::now();
        let mut n = 0;
        let mut commits = Vec::new();
        while n < events {
            let k = commit.min(events - n);
            let tc = Instant::now();
            w.append(k as usize, k * size as u64, |first| {
                (0..k)
                    .map(|i| {
                        NewEvent::new("t", "a.b", data.clone()).into_event(
                            "e",
                            "agent",
                            first + i,
                            chrono::Utc::now(),
                        )
                    })
                    .collect()
            })
            .await
            .unwrap();
            commits.push(tc.elapsed());
            n += k;
        }
        let fill = t.elapsed();
        commits.sort();
        let q = |f: f64| commits[((commits.len() - 1) as f64 * f) as usize].as_secs_f64() * 1e3;
        println!(
            "cycle {c}: {} commits of {commit} events, commit ms p50 {:.3} p99 {:.3} max {:.3}",
            commits.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
        let full = du(dir.path());
        if env("LS").is_some() {
            for e in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                use std::os::unix::fs::MetadataExt;
                let Ok(md) = e.metadata() else { continue };
                println!(
                    "  {:?}: {} MiB allocated, {} MiB length",
                    e.file_name(),
                    (md.blocks() * 512) >> 20,
                    md.len() >> 20
                );
            }
        }
        let (peak, now) = rss();
        let (hu, hf) = heap();
        let st = ob.stats();
        println!(
            "cycle {c}: at full {} records, {} MiB encoded, heap used {hu} MiB free {hf} MiB",
            st.records,
            st.bytes >> 20
        );
        let t = Instant::now();
        let mut cache = ReadCache::default();
        let mut cursor = ob.acked() + 1;
        while let Some((last, _evs)) = ob.read_from(cursor, 1024, 128 << 10, &mut cache).unwrap() {
            ob.ack_through(last).unwrap();
            cursor = last + 1;
        }
        w.flush().await.unwrap();
        let (_, after_drain) = rss();
        if env("TRIM").is_some() {
            // SAFETY: malloc_trim only returns free heap memory to the kernel.
            unsafe { libc::malloc_trim(0) };
        }
        let (bn, bmib) = blobs(dir.path());
        let (used, free) = heap();
        let (_, trimmed) = rss();
        println!(
            "cycle {c}: rss after drain {after_drain} MiB, after trim {trimmed} MiB, heap used {used} MiB free {free} MiB, blobs {bn} files {bmib} MiB"
        );
        println!(
            "cycle {c}: fill {:.0} ev/s, drain {:.0} ev/s, disk full {full} MiB, after drain {} MiB, payload {} MiB, rss peak {peak} MiB now {now} MiB",
            events as f64 / fill.as_secs_f64(),
            events as f64 / t.elapsed().as_secs_f64(),
            du(dir.path()),
            (events * size as u64) >> 20
        );
    }
}
