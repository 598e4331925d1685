//! The lander: expands bundles from `MESH_INGRESS` into one `MESH_EVENTS` message per
//! event, exactly once and in per-edge order, and trusts nothing it receives.
//!
//! # What may land
//! [`check`] runs before any mark is read. A bundle lands only if its subject is
//! `mesh.up.<edge>` with `<edge>` the bundle's edge and every event's; its range
//! `first..=last` starts at 1 or later; `mesh-missing` (sequences at the start with no
//! event: expelled or dead-lettered at the edge) plus its events fill the range exactly,
//! the events being `first + missing ..= last` in order; and every event passes
//! [`schemas::Event::validate`]. Anything else is refused ([`Refusal`]): dead-lettered to
//! `mesh.dlq.<edge>._bundle` with reason `bad-bundle: <the problem, with its values>`,
//! counted in `mesh_central_refused_bundles_total{edge,reason}`, reported to the tracker
//! and terminated. A refusal moves no mark and blocks no edge: the edge's real bundle for
//! the same range still lands (a real bundle refused leaves its edge waiting at the gap).
//!
//! # Exactly once
//! Each edge has a high-water mark: the highest edge sequence landed. It is kept at the
//! centre in two places and read as their maximum: the `MESH_LANDER` KV key of the edge
//! (outlives stream expiry; kept up by the mark writer, [`marks`]) and the `ce-meshseq`
//! of the last message on `mesh.evt.<edge>.>` (the mark as soon as the event is stored:
//! covers a crash before the KV write, and lets landing go on while the KV is away).
//! For a bundle covering `first..=last`:
//! * `last <= mark`: already landed (a resend after a partition, however long): ack.
//! * `first > mark + 1`: a bundle is missing before it; never land past a gap: keep it
//!   **in hand** (below) until the missing one has landed.
//! * otherwise it continues the mark: its events with `seq > mark` land.
//!
//! Bundles land in **runs**. The landing loop takes a bundle and, without waiting, what
//! else has been pulled meanwhile (at most `lander.run_bundles`, 64, and
//! `lander.run_bytes`, 8 MiB, together), sorts each edge's by range, and lands, per edge,
//! the longest run of bundles that continue the mark one after the other (each starts
//! at or before the previous one's `last + 1`), taking the ready ones from the hand too,
//! as one unit, within the same bounds:
//! 1. store the events of the run above the mark, in order, pipelined over one
//!    connection, as one chain (each stored only right after the one before it,
//!    `Nats-Expected-Last-Sequence`; one ack proves them all, see
//!    [`Lander::store_chain`]);
//! 2. only then move the mark once, to the run's last `last`. When that is the
//!    sequence of the last event stored, the stream holds the mark already and the KV
//!    write is queued to the mark writer; when the run ends in sequences with no event
//!    (dead-lettered or expelled at the edge), the KV write is waited for, and if it
//!    fails the run is put back unacked (below), as when storing fails;
//! 3. only then ack every bundle of the run, in order (a lost ack only brings a bundle
//!    back, and the mark skips it).
//!
//! A bundle inside the range of the run but at or below the run's own last (a resend
//! over a range the run covers) is acked with the run, after the mark; one at or below
//! the mark already written is acked at once. If storing fails, every bundle of the run
//! and the rest of the taken bundles of the edge are kept in hand (below; nakked only
//! when the hand is full) and landed by the next tick that reads the mark again (every
//! 250 ms while bundles wait); nothing of the run was acked, and the stream holds at
//! most a first part of its chain, so the mark, read afresh, says where the rest starts
//! (`Nats-Msg-Id` de-duplication covers a second lander during a failover). Per-edge
//! order holds because a run only ever appends the events right above the mark, each
//! stored only right after the one before it, and one edge's runs land one after the
//! other. Metrics stay per bundle and per event
//! (`landed_bundles`, `landed_events`, `lander_mark`); `mesh_central_lander_runs_total`
//! counts the runs, one mark move each.
//!
//! The cached mark is re-read from the centre whenever it might be stale: on the first
//! bundle of an edge, when a taken bundle of the edge is redelivered (another lander may
//! have landed part of it), at a gap the edge does not wait at yet, for every edge with
//! bundles in hand at each tick, and after any failure.
//!
//! # Bundles in hand
//! After a failover the bundles the old connection had in flight come back (after
//! `ack_wait`) behind the ones delivered fresh meanwhile, so many bundles arrive ahead of
//! a gap at once. Each is kept in memory, neither acked nor nakked, in a [`hand::Hand`]:
//! per edge, ordered by range, one per range (a redelivery of a range in hand replaces
//! the one kept; a different message with the same range, an edge's resend, is acked as
//! a duplicate). Rules and invariants:
//! * Nothing lands past a gap, still: a bundle leaves the hand only when the mark (or
//!   the run being built) has reached `first - 1` or beyond, and then goes through
//!   [`decide`] against it like any bundle (at or below it: acked as a duplicate; partly
//!   above: only the events above it land). Each landing of an edge takes the next ready
//!   bundles of that edge out of the hand into its runs, so a chain of bundles behind a
//!   gap lands in a few runs once the missing one lands.
//! * The mark a bundle leaves against is fresh: just written by this lander
//!   (compare-and-set), or re-read. A bundle ahead of the gap of an edge that already
//!   waits at it is kept without reading the mark again; instead, every tick
//!   (`ack_wait / 2`, a timer of the landing loop) re-reads the mark of each edge with
//!   bundles in hand, so a failover overlap (another lander landed them) releases them as
//!   duplicates.
//! * Bundles in hand are not redelivered: every tick (and between the runs of a long
//!   chain) each gets an in-progress ack (`+WPI`), which restarts its `ack_wait`.
//! * Bounded: at most `lander.hand_bundles` bundles (512, at most half the consumer's
//!   `max_ack_pending` of [`MAX_ACK_PENDING`], so redeliveries of the missing bundles can
//!   still come) and `lander.hand_bytes` bytes (64 MiB) in all. A bundle beyond the
//!   bound is nakked for `lander.gap_retry` as before, and counted in
//!   `mesh_central_gap_waits_total{edge}`, which counts nothing else: a bundle put back
//!   because of a gap.
//! * Nothing is pinned for ever: an edge whose mark has not moved for
//!   `lander.hand_max_wait` (30 s) gives back all its bundles in hand, nakked for
//!   `gap_retry` (gap waits). They come back and wait again; the missing bundle, which
//!   lands whenever it arrives (it is never kept), comes back by redelivery after
//!   `ack_wait` (redeliveries go before the `max_ack_pending` limit) or by the edge's
//!   go-back-N resend. There is no loop without a wait in it.
//! * On shutdown every bundle in hand is nakked without delay, so a standby lander takes
//!   it at once; if the lander dies instead, they come back after `ack_wait`. When a pull
//!   fails the hand is kept: the acks go through the client, whichever server it is on.
//!
//! `mesh_central_lander_in_hand{edge}` is the number in hand;
//! `mesh_central_landed_from_hand_bundles_total{edge}` counts those that left it landed
//! (or found landed).
//!
//! # A late bundle is read from the work queue
//! After a failover (the node of the landing hub killed, a hub restarted) the bundles
//! delivered on the old connection come back only after `ack_wait`, and everything
//! behind them waits in hand that long. So while an edge has bundles in hand the timer
//! runs every 250 ms (`FETCH_AFTER`), and once the edge has waited that long the lander
//! reads the edge's bundles from `MESH_INGRESS` in stream order (the work queue keeps a
//! bundle until its delivery is acked; at most `FETCH_READS` reads) and lands the first
//! one that continues the mark, exactly as a delivered one (the events above the mark,
//! then the mark). Its delivery, when it comes, is at or below the mark: a duplicate,
//! acked. Bundles carrying `mesh-dlq-reason` are left to their delivery, which reports
//! the dead letter. Counted in `mesh_central_landed_late_bundles_total{edge}`.
//!
//! # Timeouts
//! The lander's stores and mark reads and writes wait at most `lander.request_timeout`
//! (1 s): when a stream's leader dies mid-request, the next try goes to the new leader
//! soon after its election instead of after a 5 s default. The consumer is set up on
//! the hub's ordinary context, and re-fetched within `request_timeout` after a failed
//! pull.
//!
//! # An unreadable mark holds its edge alone
//! When the mark cannot be read — the last message on `mesh.evt.<edge>.>` has no or an
//! unparsable `ce-meshseq` (anyone who can publish into `MESH_EVENTS` can put one
//! there), or the KV value is not 8 bytes — the lander does not guess. Falling back to
//! the KV key could land duplicates (it lags the stream after a crash), taking 0 could
//! land everything again, and skipping is loss; so it **holds** the edge: each bundle of
//! it is nakked for 1 s (`HOLD_RETRY`) and the mark read again when it comes back, nothing
//! of the edge lands or is skipped, and every other edge lands as before. On the first
//! failed read it sets `mesh_central_lander_edge_held{edge}`, reports
//! [`LanderReport::EdgeHeld`] (audited as `lander.edge-held`, naming the stream and
//! sequence of the bad value) and tells [`Health`] (`/health/ready` stays 200, says
//! `ready, degraded` and names the edge); every bundle put back counts in
//! `mesh_central_held_bundles_total{edge}`. When an operator removes the bad value (e.g.
//! `nats stream rmm MESH_EVENTS <seq>`), the next read succeeds, the edge lands from its
//! true mark and the hold is released (`lander.edge-released`). An edge whose mark is
//! cached is not affected until the mark is re-read, and by then its own next event is
//! the last message again. Nothing is noticed for an edge that never sends a bundle.
//!
//! # One lander at a time
//! The durable consumer `lander` uses a priority group with the pinned-client policy:
//! the server delivers to one pulling hub only, and moves the pin to a standby hub when
//! the pinned one sends no pull request for `lander.pin_timeout`. Bundles the old lander
//! held unacked come back after `ack_wait` and are sorted out by the mark.
//!
//! # Pulling
//! Pulling and landing are two tasks, so the pin never depends on how long landing takes
//! (a chain of hundreds of bundles from the hand, each run an R3 store and KV commit):
//! * The **pull task** polls the consumer's `messages()` stream without pause, which
//!   keeps its pull requests (and so the pin) and its idle heartbeats flowing, and hands
//!   every message, unchecked, to the landing loop over a channel bounded by
//!   [`MAX_ACK_PENDING`]: everything in it, in hand or being landed is delivered and not
//!   acked, which the server bounds by the same number, so the channel does not fill in
//!   practice (only a redelivery of a message still in it could add one more; then the
//!   pull task waits for room).
//! * A pull that fails (the consumer deleted, the server gone, a missed heartbeat) is
//!   tried again by the pull task after 100 ms, getting or re-creating the consumer
//!   first; every pull opened and every failure is reported to [`Health`], which
//!   `/health/ready` follows. The landing loop, the hand and the messages already taken
//!   are not touched: their acks go through the client, whichever server it is on.
//! * The **landing loop** owns everything else (marks, hand, ticks, reports): it takes
//!   from the channel as above, checks, lands, keeps or refuses.
//! * On shutdown the pull task stops pulling at once (a message it holds, waiting for
//!   room, is nakked); the landing loop finishes what it is landing (the taken bundles
//!   and the runs they release from the hand), waits for the pull task to end, naks
//!   without delay every message still in the channel, then naks the bundles in hand.
//!   A message is thus never left to `ack_wait` once taken from the stream (the few the
//!   client had received but not yielded yet are, as before).
//!
//! # Reports
//! The lander writes no audit records: it sends a [`LanderReport`] (agents of landed
//! bundles, dead letters it made or found, edges held and released) to the tracker,
//! which records them. A `mesh-dlq-reason` marker is reported per bundle, after its run's
//! mark is written; the agents of a run are reported once per run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, AckKind};
use schemas::audit::{DeadLettered, EdgeHeld, EdgeReleased};
use schemas::dlq::DeadLetter;
use schemas::{headers as h, subject, Bundle, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::LanderConfig;
use crate::health::Health;
use crate::metrics::CentralMetrics;
use crate::metrics::UNKNOWN_EDGE;

pub mod hand;
mod marks;
mod puller;
mod rule;

use hand::{Hand, Keep};
use marks::MarkWriter;
pub use rule::{check, decide, Decision, Refusal};

/// Durable consumer name and priority group of the landers.
pub const CONSUMER: &str = "lander";
pub const GROUP: &str = "lander";
/// `max_ack_pending` of the lander consumer: bundles delivered and not acked yet,
/// those in hand and those pulled but not landed yet included. Also the bound of the
/// channel from the pull task to the landing loop.
pub const MAX_ACK_PENDING: usize = 1024;
/// How long a bundle of a held edge waits before it is tried (and the mark read) again.
const HOLD_RETRY: Duration = Duration::from_secs(1);
/// How long an edge waits at a gap with bundles in hand before the lander looks for the
/// missing bundle in `MESH_INGRESS` itself (see `fetch_late`).
const FETCH_AFTER: Duration = Duration::from_millis(250);
/// Most messages of an edge read from `MESH_INGRESS` in one look for a late bundle.
const FETCH_READS: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
}

pub struct Lander {
    client: async_nats::Client,
    /// The caller's context: the consumer's set-up and pulls.
    admin: jetstream::Context,
    /// The lander's own, with `lander.request_timeout`: stores and the mark.
    js: jetstream::Context,
    /// `MESH_INGRESS` on `js`, to read a late bundle (see `fetch_late`).
    ingress: Option<jetstream::stream::Stream>,
    /// Last `MESH_EVENTS` sequence this lander stored, when it knows it for sure.
    stream_seq: Option<u64>,
    /// Subjects and headers of the events it stores, built per event shape.
    build: schemas::MessageBuilder,
    events: jetstream::stream::Stream,
    kv: kv::Store,
    /// Writes the marks to the KV (see [`marks`]).
    writer: MarkWriter,
    marks: HashMap<String, Mark>,
    /// Edges this lander landed a bundle of: the `edge` label of refusals.
    known: HashSet<String>,
    /// Edges held because their mark is unreadable, and why.
    held: HashMap<String, String>,
    cfg: LanderConfig,
    metrics: Arc<CentralMetrics>,
    /// Where agents seen and dead letters made are reported, if anywhere.
    reports: Option<mpsc::Sender<LanderReport>>,
    /// Whether it is pulling, for `/health/ready` (reported by the pull task).
    health: Arc<Health>,
    /// Bundles kept ahead of a gap (see the module doc).
    hand: Hand<Delivery>,
    /// When the landing loop next re-reads the marks of edges in hand, gives back what
    /// waited too long and sends in-progress acks.
    next_tick: tokio::time::Instant,
    /// When bundles in hand last got an in-progress ack.
    last_progress: tokio::time::Instant,
}

/// A delivered bundle that passed [`check`]: its delivery (to ack or nak) and what it
/// holds. What the hand keeps, and what runs are made of.
struct Delivery {
    msg: Message,
    bundle: Bundle,
}

impl Delivery {
    /// Whether the server delivered it before (another lander may have landed it).
    fn redelivered(&self) -> bool {
        self.msg.info().map(|i| i.delivered > 1).unwrap_or(true)
    }
}

/// A bundle of a run being built.
struct RunItem {
    d: Delivery,
    /// The first edge sequence of it that lands; `None` when the run already covers it
    /// (acked with the run, after its mark).
    from: Option<u64>,
    /// Taken from the hand.
    from_hand: bool,
}

/// What the lander saw that belongs in the audit log. The lander does not write audit
/// records itself; the [`crate::tracker`] records these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LanderReport {
    /// The agents of a bundle that landed (each once).
    AgentsSeen { edge: String, agents: Vec<String> },
    /// A dead letter made while landing: a bundle the lander refused, or an event its
    /// edge dead-lettered (an empty bundle carrying `mesh-dlq-reason`).
    DeadLettered(DeadLettered),
    /// The lander holds an edge: its mark is unreadable (reported once per hold).
    EdgeHeld(EdgeHeld),
    /// A held edge's mark is readable again; it lands.
    EdgeReleased(EdgeReleased),
}

#[derive(Debug, thiserror::Error)]
pub enum LandError {
    #[error("reading the mark of edge {edge}: {reason}")]
    Mark { edge: String, reason: String },
    /// The centre holds a value for the edge's mark that is not a sequence; reading again
    /// gives the same until someone removes it (see the module doc).
    #[error("the mark of edge {edge} is unreadable: {reason}")]
    Unreadable {
        edge: String,
        reason: String,
        /// Stream (or KV bucket) and sequence (or revision) of the bad value.
        stream: String,
        seq: u64,
    },
    #[error("writing the mark {seq} of edge {edge}: {reason}")]
    MarkWrite {
        edge: String,
        seq: u64,
        reason: String,
    },
    #[error("storing event seq {seq} of edge {edge}: {reason}")]
    Publish {
        edge: String,
        seq: u64,
        reason: String,
    },
}

/// The lander's stream and consumer, set up before it runs.
pub struct LanderConsumer {
    ingress: jetstream::stream::Stream,
    consumer: PullConsumer,
}

impl Lander {
    pub async fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        kv: kv::Store,
        cfg: LanderConfig,
        metrics: Arc<CentralMetrics>,
    ) -> Result<Lander, async_nats::Error> {
        // Its own context and bucket handle, with the lander's short request timeout; the
        // consumer is set up and pulled on the caller's (admin requests may take long on a
        // cluster).
        let admin = js.clone();
        let mut js = js;
        js.set_timeout(cfg.request_timeout);
        let kv = js.get_key_value(&kv.name).await?;
        let events = js.get_stream(subject::STREAM_EVENTS).await?;
        let now = tokio::time::Instant::now();
        Ok(Lander {
            hand: Hand::new(cfg.hand_bundles, cfg.hand_bytes),
            next_tick: now,
            last_progress: now,
            client,
            admin,
            js,
            ingress: None,
            stream_seq: None,
            build: schemas::MessageBuilder::new(),
            events,
            writer: MarkWriter::start(kv.clone()),
            kv,
            marks: HashMap::new(),
            known: HashSet::new(),
            held: HashMap::new(),
            cfg,
            metrics,
            reports: None,
            health: Arc::default(),
        })
    }

    /// Sends [`LanderReport`]s to `tx`. A full channel drops an agents report (the
    /// agent's next bundle reports it again), so landing never waits for one; a dead
    /// letter report waits for room.
    pub fn report_to(mut self, tx: mpsc::Sender<LanderReport>) -> Lander {
        self.reports = Some(tx);
        self
    }

    /// Reports its pulls to `health`.
    pub fn health(mut self, health: Arc<Health>) -> Lander {
        self.health = health;
        self
    }

    async fn report_dead_letter(&self, dead: DeadLettered) {
        self.report(LanderReport::DeadLettered(dead)).await;
    }

    /// Sends a report that must not be lost, waiting for room.
    async fn report(&self, r: LanderReport) {
        if let Some(tx) = &self.reports {
            if tx.send(r).await.is_err() {
                tracing::warn!("cannot report to the tracker: it has stopped");
            }
        }
    }

    /// One try at the stream `MESH_INGRESS` and the durable consumer `lander` on it,
    /// created if missing; the hub retries it by the set-up rules of the streams
    /// (`streams::set_up_step`) before it reports that it has started.
    pub async fn consumer(&self) -> Result<LanderConsumer, async_nats::Error> {
        let ingress = self.admin.get_stream(subject::STREAM_INGRESS).await?;
        let consumer = puller::consumer(&ingress, &self.cfg).await?;
        Ok(LanderConsumer { ingress, consumer })
    }

    /// Pulls and lands bundles from `start` (see [`Lander::consumer`]) until `shutdown`;
    /// what it is landing when it comes is landed first, and every bundle taken but not
    /// landed is then nakked. A pull that fails (the consumer deleted, the server gone)
    /// is reported to [`Health`] and tried again, re-creating the consumer if it is gone.
    pub async fn run(mut self, start: LanderConsumer, shutdown: CancellationToken) {
        let LanderConsumer { ingress, consumer } = start;
        let (tx, mut rx) = mpsc::channel(MAX_ACK_PENDING);
        let stop_pulling = shutdown.child_token();
        let pulling = tokio::spawn(
            puller::Puller {
                ingress,
                cfg: self.cfg.clone(),
                health: self.health.clone(),
                tx,
            }
            .run(consumer, stop_pulling.clone()),
        );
        // If landing ends in any other way (a panic), pulling ends too.
        let stop_pulling = stop_pulling.drop_guard();
        self.land_until(&mut rx, &shutdown).await;
        drop(stop_pulling);
        if let Err(e) = pulling.await {
            tracing::error!(error = %e, "the lander's pull task failed");
        }
        // The pull task has ended: the channel holds all that was taken and not landed.
        rx.close();
        let mut given_back = 0;
        while let Some(msg) = rx.recv().await {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            given_back += 1;
        }
        if given_back > 0 {
            tracing::info!(
                bundles = given_back,
                "gave back the bundles pulled and not landed"
            );
        }
        self.give_back_all().await;
        self.writer.close().await;
    }

    /// The landing loop: takes what the pull task hands over and lands it, and ticks,
    /// until `shutdown`.
    async fn land_until(&mut self, rx: &mut mpsc::Receiver<Message>, shutdown: &CancellationToken) {
        loop {
            let next = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(self.next_tick) => {
                    self.tick().await;
                    continue;
                }
                _ = shutdown.cancelled() => return,
            };
            let Some(first) = next else {
                if !shutdown.is_cancelled() {
                    tracing::error!("the lander's pull task has stopped; the lander stops");
                }
                return;
            };
            let mut bytes = first.payload.len() as u64;
            let mut taken = vec![first];
            while taken.len() < self.cfg.run_bundles && bytes < self.cfg.run_bytes {
                let Ok(msg) = rx.try_recv() else {
                    break;
                };
                bytes += msg.payload.len() as u64;
                taken.push(msg);
            }
            self.land_taken(taken).await;
        }
    }

    /// Checks the bundles taken together, refuses the bad ones, and lands the rest edge
    /// by edge (in the order each edge first appears).
    async fn land_taken(&mut self, taken: Vec<Message>) {
        let mut edges: Vec<(String, Vec<Delivery>)> = Vec::new();
        for msg in taken {
            let bundle = match check(&msg.subject, msg.headers.as_ref(), &msg.payload) {
                Ok(b) => b,
                Err(refusal) => {
                    self.refuse(&msg, &refusal).await;
                    continue;
                }
            };
            let d = Delivery { msg, bundle };
            match edges.iter_mut().find(|(e, _)| *e == d.bundle.edge) {
                Some((_, ds)) => ds.push(d),
                None => edges.push((d.bundle.edge.clone(), vec![d])),
            }
        }
        for (edge, mut ds) in edges {
            ds.sort_by_key(|d| (d.bundle.first_seq, d.bundle.last_seq));
            self.land_edge(&edge, ds).await;
        }
    }

    /// Lands the bundles `ds` of `edge` (sorted by range, not empty) with what they
    /// release from the hand, and keeps or puts back the rest, as the mark says.
    async fn land_edge(&mut self, edge: &str, ds: Vec<Delivery>) {
        let (first, last) = (ds[0].bundle.first_seq, ds[0].bundle.last_seq);
        if let Some(m) = self.marks.get(edge).map(|m| m.seq) {
            if self.hand.len_of(edge) > 0 && decide(m, first, last) == Decision::Wait {
                // The edge already waits at this gap; the tick re-reads its mark.
                for d in ds {
                    self.keep(d, m).await;
                }
                return;
            }
        }
        let redelivered = ds.iter().any(Delivery::redelivered);
        if let Err(e) = self.fresh_mark(edge, first, last, redelivered).await {
            self.put_back(edge, ds, e).await;
            return;
        }
        self.land_ready(edge, ds.into()).await;
    }

    /// Sets the cached mark of `edge` to one fresh enough to decide on the lowest bundle
    /// taken, `first..=last`: the cached one unless a bundle was redelivered, read again
    /// if that one says the bundle waits at a gap (another lander may have landed).
    async fn fresh_mark(
        &mut self,
        edge: &str,
        first: u64,
        last: u64,
        redelivered: bool,
    ) -> Result<(), LandError> {
        let cached = self.marks.get(edge).copied().filter(|_| !redelivered);
        let mut mark = match cached {
            Some(m) => m,
            None => self.read_mark(edge).await?,
        };
        if self.held.remove(edge).is_some() {
            tracing::info!(
                edge,
                mark = mark.seq,
                "the mark of a held edge is readable again; landing it"
            );
            self.metrics.edge_held(edge, false);
            self.health.edge_released(edge);
            self.report(LanderReport::EdgeReleased(EdgeReleased {
                edge: edge.to_string(),
                mark: mark.seq,
            }))
            .await;
        }
        if cached.is_some() && decide(mark.seq, first, last) == Decision::Wait {
            mark = self.read_mark(edge).await?;
        }
        self.marks.insert(edge.to_string(), mark);
        Ok(())
    }

    /// Lands runs of `edge` against its cached mark (fresh) from `batch` (its taken
    /// bundles, sorted) and the hand, until nothing more is ready; keeps what is left of
    /// `batch` in hand (it is ahead of a gap).
    async fn land_ready(&mut self, edge: &str, mut batch: VecDeque<Delivery>) {
        loop {
            let Some(mark) = self.marks.get(edge).copied() else {
                // The last mark write failed: read the mark again before landing more.
                if batch.is_empty() {
                    break;
                }
                match self.read_mark(edge).await {
                    Ok(m) => {
                        self.marks.insert(edge.to_string(), m);
                        continue;
                    }
                    Err(e) => {
                        self.put_back(edge, batch.into(), e).await;
                        return;
                    }
                }
            };
            let run = self.take_run(edge, mark.seq, &mut batch).await;
            self.metrics.in_hand(edge, self.hand.len_of(edge));
            if run.is_empty() {
                break;
            }
            if let Err(e) = self.store_run(edge, &run).await {
                let ds = run.into_iter().map(|it| it.d).chain(batch).collect();
                self.put_back(edge, ds, e).await;
                return;
            }
            if let Err((ds, e)) = self.finish_run(edge, run).await {
                let ds = ds.into_iter().chain(batch).collect();
                self.put_back(edge, ds, e).await;
                return;
            }
            if !self.hand.is_empty() && self.last_progress.elapsed() >= self.progress_every() {
                self.progress().await;
            }
        }
        let mark = self.marks.get(edge).map_or(0, |m| m.seq);
        for d in batch {
            self.keep(d, mark).await;
        }
    }

    /// Takes the next run of `edge` above `mark`: the bundles of `batch` (sorted) and of
    /// the hand that continue it one after the other, within the run bounds. Bundles at
    /// or below `mark` met on the way are acked as duplicates at once.
    async fn take_run(
        &mut self,
        edge: &str,
        mark: u64,
        batch: &mut VecDeque<Delivery>,
    ) -> Vec<RunItem> {
        let mut run = Vec::new();
        let (mut to, mut bytes) = (mark, 0u64);
        while run.len() < self.cfg.run_bundles && bytes < self.cfg.run_bytes {
            let ready = |d: &Delivery| d.bundle.first_seq <= to.saturating_add(1);
            let (d, from_hand) = if batch.front().is_some_and(ready) {
                (batch.pop_front().expect("a front"), false)
            } else if let Some(d) = self.hand.next_ready(edge, to) {
                (d, true)
            } else {
                break;
            };
            match decide(to, d.bundle.first_seq, d.bundle.last_seq) {
                Decision::Land { from } => {
                    bytes += d.msg.payload.len() as u64;
                    to = d.bundle.last_seq;
                    run.push(RunItem {
                        d,
                        from: Some(from),
                        from_hand,
                    });
                }
                Decision::Skip if d.bundle.last_seq <= mark => self.duplicate(d, from_hand).await,
                Decision::Skip => run.push(RunItem {
                    d,
                    from: None,
                    from_hand,
                }),
                // Not reached: only a ready bundle is taken.
                Decision::Wait => self.keep(d, to).await,
            }
        }
        run
    }

    /// Stores every event of `run` that lands, in order.
    async fn store_run(&mut self, edge: &str, run: &[RunItem]) -> Result<(), LandError> {
        let events: Vec<&Event> = run
            .iter()
            .filter_map(|it| Some((it.from?, &it.d.bundle.events)))
            .flat_map(|(from, evs)| evs.iter().filter(move |e| e.seq >= from))
            .collect();
        self.store_chain(edge, &events).await
    }

    /// After every event of `run` is stored: moves the mark once (the run's last
    /// sequence; see [`Lander::write_mark`]), then acks each bundle of the run, reporting
    /// what it carries. When the mark cannot be written, acks nothing and gives the
    /// run's bundles back.
    async fn finish_run(
        &mut self,
        edge: &str,
        run: Vec<RunItem>,
    ) -> Result<(), (Vec<Delivery>, LandError)> {
        let Some(last) = run
            .iter()
            .filter(|it| it.from.is_some())
            .map(|it| it.d.bundle.last_seq)
            .max()
        else {
            // Only duplicates of one another (not reached: a run starts with a landing).
            for it in run {
                self.duplicate(it.d, it.from_hand).await;
            }
            return Ok(());
        };
        // The stream holds the mark when the run's last stored event is `last`.
        let covered = run.iter().any(|it| {
            it.from.is_some_and(|from| {
                (it.d.bundle.events.last()).is_some_and(|e| e.seq == last && e.seq >= from)
            })
        });
        if let Err(e) = self.write_mark(edge, last, covered).await {
            return Err((run.into_iter().map(|it| it.d).collect(), e));
        }
        self.known.insert(edge.to_string());
        self.hand.progressed(edge, std::time::Instant::now());
        self.metrics.run(edge);
        let mut agents: Vec<String> = Vec::new();
        for it in run {
            let Some(from) = it.from else {
                self.duplicate(it.d, it.from_hand).await;
                continue;
            };
            let b = &it.d.bundle;
            let n = b.events.iter().filter(|e| e.seq >= from).count() as u64;
            self.metrics.skipped(edge, b.events.len() as u64 - n);
            self.metrics.landed(edge, n, b.last_seq);
            if it.from_hand {
                self.metrics.landed_from_hand(edge);
            }
            tracing::debug!(
                edge,
                first = b.first_seq,
                last = b.last_seq,
                landed = n,
                "bundle landed"
            );
            agents.extend(b.events.iter().map(|e| e.agent.clone()));
            // An empty bundle over an event the edge dead-lettered says so.
            if let Some(reason) =
                it.d.msg
                    .headers
                    .as_ref()
                    .and_then(|hs| hs.get(h::DLQ_REASON))
            {
                self.report_dead_letter(DeadLettered {
                    stream: subject::STREAM_INGRESS.into(),
                    edge: Some(edge.to_string()),
                    seq: b.first_seq,
                    reason: reason.to_string(),
                    by: Some("edge".into()),
                    ..Default::default()
                })
                .await;
            }
            // A plain ack: if it is lost, the bundle comes back and the mark (already
            // written) skips it. Waiting for the server's confirmation would stall
            // the lander for the whole ack timeout after a restart of the server.
            if let Err(e) = it.d.msg.ack().await {
                tracing::warn!(error = %e, edge, "cannot ack a landed bundle");
            }
        }
        if let Some(tx) = self.reports.as_ref().filter(|_| !agents.is_empty()) {
            agents.sort_unstable();
            agents.dedup();
            let _ = tx.try_send(LanderReport::AgentsSeen {
                edge: edge.to_string(),
                agents,
            });
        }
        Ok(())
    }

    /// Acks a bundle found already landed.
    async fn duplicate(&self, d: Delivery, from_hand: bool) {
        let b = &d.bundle;
        tracing::debug!(edge = %b.edge, first = b.first_seq, last = b.last_seq, "bundle already landed");
        self.metrics.duplicate_bundle(&b.edge);
        self.metrics.skipped(&b.edge, b.events.len() as u64);
        if from_hand {
            self.metrics.landed_from_hand(&b.edge);
        }
        let _ = d.msg.ack().await;
    }

    /// Puts back bundles of `edge` that could not land because of `e`: held (the mark is
    /// unreadable) for [`HOLD_RETRY`], otherwise kept in hand (nakked for `gap_retry`
    /// only when the hand is full) and landed by a tick once the mark is read again.
    async fn put_back(&mut self, edge: &str, ds: Vec<Delivery>, e: LandError) {
        let mark = self.marks.remove(edge).map_or(0, |m| m.seq);
        let retry = match e {
            LandError::Unreadable {
                edge: _,
                reason,
                stream,
                seq,
            } => {
                if !self.held.contains_key(edge) {
                    tracing::error!(edge, %reason, "the mark of an edge is unreadable; holding its bundles");
                    self.metrics.edge_held(edge, true);
                    self.health.edge_held(edge, &reason);
                    self.held.insert(edge.to_string(), reason.clone());
                    self.report(LanderReport::EdgeHeld(EdgeHeld {
                        edge: edge.to_string(),
                        reason,
                        stream: Some(stream),
                        seq: Some(seq),
                    }))
                    .await;
                }
                for _ in &ds {
                    self.metrics.held_bundle(edge);
                }
                HOLD_RETRY
            }
            e => {
                // Kept in hand, not given back: a nak would bring them back in another
                // order, mixed with later bundles, and turn a failover's backlog into
                // gap waits. The tick reads the mark again and lands them.
                tracing::warn!(error = %e, bundles = ds.len(), "landing failed; the bundles will be tried again");
                self.stream_seq = None;
                for d in ds {
                    self.keep(d, mark).await;
                }
                return;
            }
        };
        for d in ds {
            let _ = d.msg.ack_with(AckKind::Nak(Some(retry))).await;
        }
    }

    /// Keeps a bundle that arrived ahead of a gap (the edge's mark is `mark`) in hand, or
    /// puts it back for `gap_retry` when the hand is full.
    async fn keep(&mut self, d: Delivery, mark: u64) {
        let edge = d.bundle.edge.clone();
        let (first, last) = (d.bundle.first_seq, d.bundle.last_seq);
        let stream_seq = d.msg.info().map(|i| i.stream_sequence).ok();
        let bytes = d.msg.payload.len() as u64;
        match self
            .hand
            .keep(&edge, first, last, bytes, d, std::time::Instant::now())
        {
            Keep::Kept => {
                tracing::debug!(%edge, first, last, mark, "bundle ahead of a gap; kept in hand");
                self.metrics.in_hand(&edge, self.hand.len_of(&edge));
                // The tick looks for the missing bundle soon, not at the next
                // in-progress ack (`ack_wait / 2`).
                let soon = tokio::time::Instant::now() + FETCH_AFTER;
                self.next_tick = self.next_tick.min(soon);
            }
            Keep::Replaced(old) => {
                // The same message delivered again: the new delivery replaces the old
                // one, whose ack would ack the same message. Another message with the
                // same range (an edge's resend) is a duplicate of the one kept.
                if old.msg.info().map(|i| i.stream_sequence).ok() != stream_seq {
                    self.metrics.duplicate_bundle(&edge);
                    let _ = old.msg.ack().await;
                }
                tracing::debug!(%edge, first, last, "bundle in hand delivered again");
            }
            Keep::Full(d) => self.gap_wait(&d, mark).await,
        }
    }

    /// Puts back a bundle ahead of a gap for `gap_retry` (a gap wait).
    async fn gap_wait(&self, d: &Delivery, mark: u64) {
        let b = &d.bundle;
        self.metrics.gap(&b.edge, b.last_seq, mark);
        tracing::debug!(edge = %b.edge, first = b.first_seq, mark, "bundle ahead of a gap put back; it waits");
        let _ = d.msg.ack_with(AckKind::Nak(Some(self.cfg.gap_retry))).await;
    }

    /// How often bundles in hand get an in-progress ack: well within `ack_wait`.
    fn progress_every(&self) -> Duration {
        (self.cfg.ack_wait / 2).max(Duration::from_millis(10))
    }

    /// The landing loop's timer: re-reads the marks of the edges in hand (another lander
    /// may have landed them) and lands what is ready, gives back the bundles of edges
    /// that waited longer than `hand_max_wait`, and keeps the rest from being redelivered.
    async fn tick(&mut self) {
        let now = tokio::time::Instant::now();
        self.next_tick = now + self.progress_every();
        if self.hand.is_empty() {
            return;
        }
        // While bundles wait in hand, look again soon: the missing one may be late.
        self.next_tick = now + FETCH_AFTER.min(self.progress_every());
        for edge in self.hand.edges() {
            match self.read_mark(&edge).await {
                Ok(m) => {
                    self.marks.insert(edge.clone(), m);
                    self.land_ready(&edge, VecDeque::new()).await;
                }
                Err(e) => {
                    tracing::debug!(%edge, error = %e, "cannot re-read the mark of an edge in hand");
                    continue;
                }
            }
            let waited = self
                .hand
                .waiting_since(&edge)
                .is_some_and(|t| t.elapsed() >= FETCH_AFTER);
            if waited {
                self.fetch_late(&edge).await;
            }
        }
        let expired = self
            .hand
            .expired(std::time::Instant::now(), self.cfg.hand_max_wait);
        for (edge, items) in expired {
            let mark = self.marks.get(&edge).map_or(0, |m| m.seq);
            tracing::warn!(%edge, mark, bundles = items.len(), waited = ?self.cfg.hand_max_wait,
                "the missing bundle has not come; putting back the bundles in hand");
            for it in &items {
                self.gap_wait(it, mark).await;
            }
            self.metrics.in_hand(&edge, 0);
        }
        if self.last_progress.elapsed() >= self.progress_every() {
            self.progress().await;
        }
    }

    /// Lands the bundles missing before the hand of `edge` straight from `MESH_INGRESS`,
    /// when they are there: after a failover their deliveries come back only after
    /// `ack_wait` (they were delivered on a connection that is gone), but the work queue
    /// still holds them. Reads the edge's bundles in stream order (at most
    /// [`FETCH_READS`]) and takes those that continue the mark one after the other,
    /// until the hand can go on by itself or the run bounds are reached, as one run
    /// (events above the mark stored as one chain, the mark moved, as any landing), then
    /// lands what that releases from the hand. Their deliveries, when they come, are at
    /// or below the mark and acked as duplicates. A bundle carrying `mesh-dlq-reason` is
    /// left to its delivery (which reports the dead letter), and ends the run.
    async fn fetch_late(&mut self, edge: &str) {
        let Some(mark) = self.marks.get(edge).copied() else {
            return;
        };
        let up = subject::up(edge);
        let ingress = match &self.ingress {
            Some(s) => s.clone(),
            None => match self.js.get_stream(subject::STREAM_INGRESS).await {
                Ok(s) => {
                    self.ingress = Some(s.clone());
                    s
                }
                Err(e) => {
                    tracing::debug!(edge, error = %e, "cannot look for a late bundle");
                    return;
                }
            },
        };
        let mut run: Vec<(Bundle, u64)> = Vec::new();
        let (mut to, mut bytes) = (mark.seq, 0u64);
        // (async-nats's "first by subject from a sequence" is the stream API's next_by_subj.)
        let mut next = ingress.get_first_raw_message_by_subject(&up, 0).await;
        for _ in 0..FETCH_READS {
            let Ok(m) = next else { break };
            let seq = m.sequence;
            if let Ok(b) = check(&m.subject, Some(&m.headers), &m.payload) {
                if m.headers.get(h::DLQ_REASON).is_some() && b.last_seq > to {
                    break;
                }
                if let Decision::Land { from } = decide(to, b.first_seq, b.last_seq) {
                    to = b.last_seq;
                    bytes += m.payload.len() as u64;
                    run.push((b, from));
                    let full = run.len() >= self.cfg.run_bundles || bytes >= self.cfg.run_bytes;
                    if full || self.hand.is_ready(edge, to) {
                        break;
                    }
                }
            }
            next = ingress.get_first_raw_message_by_subject(&up, seq + 1).await;
        }
        if !run.is_empty() {
            self.land_late(edge, run).await;
        }
    }

    /// Lands `run`, bundles of `edge` read from `MESH_INGRESS` (no delivery to ack), each
    /// from its sequence `from` on; then what it releases from the hand.
    async fn land_late(&mut self, edge: &str, run: Vec<(Bundle, u64)>) {
        let events: Vec<&Event> = run
            .iter()
            .flat_map(|(b, from)| b.events.iter().filter(move |e| e.seq >= *from))
            .collect();
        if let Err(e) = self.store_chain(edge, &events).await {
            tracing::debug!(edge, error = %e, "cannot land late bundles; their deliveries will");
            self.marks.remove(edge);
            return;
        }
        let (first, last) = (run[0].0.first_seq, run[run.len() - 1].0.last_seq);
        tracing::info!(
            edge,
            first,
            last,
            bundles = run.len(),
            "landed late bundles read from MESH_INGRESS (their deliveries are still out)"
        );
        let covered = events.last().is_some_and(|e| e.seq == last);
        if let Err(e) = self.write_mark(edge, last, covered).await {
            tracing::debug!(edge, error = %e, "late bundles are stored but their mark is not; their deliveries will land them");
            return;
        }
        for (b, from) in &run {
            let n = b.events.iter().filter(|e| e.seq >= *from).count() as u64;
            self.metrics.skipped(edge, b.events.len() as u64 - n);
            self.metrics.landed(edge, n, b.last_seq);
            self.metrics.landed_late(edge);
        }
        self.hand.progressed(edge, std::time::Instant::now());
        self.land_ready(edge, VecDeque::new()).await;
    }

    /// Moves the mark of `edge` to `last` once the events up to it are stored: cached at
    /// once, and recorded in the KV later when the stream holds it already (`covered`:
    /// the last stored event is `last`), otherwise now. Fails only when a write that is
    /// needed now fails (the cached mark is then dropped, to be read again).
    async fn write_mark(&mut self, edge: &str, last: u64, covered: bool) -> Result<(), LandError> {
        if covered {
            self.writer.later(edge, last);
        } else if let Err(reason) = self.writer.now(edge, last).await {
            self.marks.remove(edge);
            return Err(LandError::MarkWrite {
                edge: edge.to_string(),
                seq: last,
                reason,
            });
        }
        self.marks.insert(edge.to_string(), Mark { seq: last });
        Ok(())
    }

    /// An in-progress ack for every bundle in hand: restarts its `ack_wait`.
    async fn progress(&mut self) {
        self.last_progress = tokio::time::Instant::now();
        for it in self.hand.items() {
            let _ = it.msg.ack_with(AckKind::Progress).await;
        }
    }

    /// Naks every bundle in hand without delay (shutdown): a standby lander takes them.
    async fn give_back_all(&mut self) {
        let edges = self.hand.edges();
        let items = self.hand.take_all();
        if !items.is_empty() {
            tracing::info!(bundles = items.len(), "giving back the bundles in hand");
        }
        for it in &items {
            let _ = it.msg.ack_with(AckKind::Nak(None)).await;
        }
        for edge in edges {
            self.metrics.in_hand(&edge, 0);
        }
    }

    /// A bundle that can never land ([`check`] refused it): move it to `MESH_DLQ` as
    /// `mesh.dlq.<edge>._bundle` (reason `bad-bundle: …`) and terminate it, so it does not
    /// block the edges behind it; no mark moves. If the dead letter cannot be stored, the
    /// bundle is tried again later rather than dropped.
    async fn refuse(&self, msg: &Message, refusal: &Refusal) {
        let reason = refusal.to_string();
        tracing::error!(subject = %msg.subject, %reason, "refusing a bundle");
        let from = rule::subject_edge(&msg.subject);
        let label = from
            .filter(|e| self.known.contains(*e))
            .unwrap_or(UNKNOWN_EDGE);
        self.metrics.refused_bundle(label, refusal.label());
        let edge = from.unwrap_or("_");
        let (seq, deliveries) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 0));
        let dead = DeadLetter::bad_bundle(
            seq,
            &msg.subject,
            CONSUMER,
            deliveries.max(0) as u64,
            &reason,
        );
        let mut headers = msg.headers.clone().unwrap_or_default();
        dead.apply(&mut headers);
        let stored = match self
            .js
            .publish_with_headers(subject::dlq(edge, "_bundle"), headers, msg.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "cannot dead-letter a bad bundle; it will be tried again");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
        self.report_dead_letter(DeadLettered {
            stream: dead.stream,
            seq,
            subject: Some(dead.subject),
            consumer: Some(dead.consumer),
            reason: dead.reason,
            ..Default::default()
        })
        .await;
        let _ = msg.ack_with(AckKind::Term).await;
    }

    /// Stores `events` as one chain: each is published with `Nats-Expected-Last-Sequence`
    /// set to the stream sequence the one before it must have got, so the stream takes
    /// an event only right after its predecessor. If one is lost (a leader change in the
    /// middle of the run) or another writer comes in between, none after it is stored,
    /// and nothing lands past a gap. Every event but the last goes without a reply; the
    /// last one's ack, at exactly `before + n`, proves the whole chain. Otherwise the run
    /// fails and lands again from the mark read afresh. `before` is this lander's last
    /// ack, or the stream's last sequence as stream info says (if that answer is stale,
    /// the chain fails at its first event and is tried again).
    async fn store_chain(&mut self, edge: &str, events: &[&Event]) -> Result<(), LandError> {
        let publish_err = |seq: u64, e: String| LandError::Publish {
            edge: edge.to_string(),
            seq,
            reason: e,
        };
        let Some((last, rest)) = events.split_last() else {
            return Ok(());
        };
        let before = match self.stream_seq.take() {
            Some(s) => s,
            None => {
                self.events
                    .info()
                    .await
                    .map_err(|e| publish_err(events[0].seq, e.to_string()))?
                    .state
                    .last_sequence
            }
        };
        let expect = |k: usize| (before + k as u64).to_string();
        for (k, ev) in rest.iter().enumerate() {
            let (subj, mut headers) = self.build.evt(ev);
            headers.insert(h::NATS_EXPECTED_LAST_SEQ, expect(k).as_str());
            self.client
                .publish_with_headers(subj, headers, ev.data.clone())
                .await
                .map_err(|e| publish_err(ev.seq, e.to_string()))?;
        }
        let (subj, mut headers) = self.build.evt(last);
        headers.insert(h::NATS_EXPECTED_LAST_SEQ, expect(rest.len()).as_str());
        let ack = self
            .js
            .publish_with_headers(subj, headers, last.data.clone())
            .await
            .map_err(|e| publish_err(last.seq, e.to_string()))?
            .await
            .map_err(|e| {
                if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                    self.metrics.broken_chain(edge);
                }
                publish_err(last.seq, e.to_string())
            })?;
        let want = before + events.len() as u64;
        if ack.duplicate || ack.sequence != want {
            self.metrics.broken_chain(edge);
            return Err(publish_err(
                last.seq,
                format!(
                    "the stream did not take the run as one chain: its last event got stream \
                     sequence {}{}, not {want}",
                    ack.sequence,
                    if ack.duplicate { " (a duplicate)" } else { "" }
                ),
            ));
        }
        self.stream_seq = Some(ack.sequence);
        Ok(())
    }

    /// The edge's mark as the centre holds it: max of the KV key and the last landed event.
    async fn read_mark(&self, edge: &str) -> Result<Mark, LandError> {
        let err = |reason: String| LandError::Mark {
            edge: edge.to_string(),
            reason,
        };
        let unreadable = |reason: String, stream: &str, seq: u64| LandError::Unreadable {
            edge: edge.to_string(),
            reason,
            stream: stream.to_string(),
            seq,
        };
        let entry = self.kv.entry(edge).await.map_err(|e| err(e.to_string()))?;
        let kv_seq = match entry {
            Some(e) if e.operation == kv::Operation::Put => e
                .value
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    unreadable(
                        format!(
                            "KV {} key {edge} (revision {}) is {} bytes, expected 8",
                            subject::BUCKET_LANDER,
                            e.revision,
                            e.value.len()
                        ),
                        subject::BUCKET_LANDER,
                        e.revision,
                    )
                })?,
            Some(_) | None => 0,
        };
        let last = match self
            .events
            .get_last_raw_message_by_subject(&subject::evt_edge(edge))
            .await
        {
            Ok(m) => {
                let value = m.headers.get(h::MESH_SEQ).map(|v| v.as_str());
                value.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                    let found = match value {
                        Some(v) => format!("{} {v:?}", h::MESH_SEQ),
                        None => format!("no {}", h::MESH_SEQ),
                    };
                    unreadable(
                        format!(
                            "last message of {} ({} seq {}, subject {}) has {found}",
                            subject::evt_edge(edge),
                            subject::STREAM_EVENTS,
                            m.sequence,
                            m.subject
                        ),
                        subject::STREAM_EVENTS,
                        m.sequence,
                    )
                })?
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(err(e.to_string())),
        };
        tracing::debug!(edge, kv_seq, last, "read high-water mark");
        Ok(Mark {
            seq: kv_seq.max(last),
        })
    }
}
