//! An in-process TCP fault proxy.
//!
//! [`FaultProxy`] listens on `127.0.0.1:<ephemeral>` and forwards every accepted connection to
//! one upstream address (connecting upstream when the connection is accepted). Point one end of
//! a link (for example an edge NATS server's leaf remote) at [`FaultProxy::url`] instead of the
//! real peer, then inject faults while the system runs.
//!
//! # Link states
//!
//! - [`LinkState::Up`] (after [`FaultProxy::heal`]): bytes flow both ways.
//! - [`LinkState::Cut`] ([`FaultProxy::cut`]): a black hole in both directions. No byte moves, but
//!   every socket stays open, so the peers see silence rather than a close, as in a real network
//!   partition. Bytes already read from one side but not yet written to the other are *held*, not
//!   dropped (up to about 1 MiB per direction per connection, after which the proxy stops reading
//!   and TCP backpressure takes over), so a stream that survives the cut resumes intact on heal.
//!   An end-of-stream (FIN) seen during the cut is held too. New connections are accepted but
//!   held: no upstream connect and no byte moved until heal.
//! - [`LinkState::Reset`] ([`FaultProxy::reset`]): every current connection is closed abruptly on
//!   both sides (`SO_LINGER` 0, so each peer gets a TCP RST), and new connections are accepted and
//!   reset at once, until heal.
//!
//! # Shaping
//!
//! - [`FaultProxy::set_latency`]: each chunk read is delivered no earlier than
//!   `latency + jitter'` after it was read, where `jitter'` is uniform in `[0, jitter]`. Chunks keep
//!   their order (a chunk never overtakes an earlier one); reading is pipelined, so latency does
//!   not by itself cap throughput. Applies to chunks read after the call.
//! - [`FaultProxy::set_bandwidth`]: a cap in bytes per second, per direction, per connection,
//!   enforced by pacing writes in small slices. `Some(0)` is treated as 1 byte/s.
//!
//! Jitter comes from a small deterministic xorshift generator seeded from the listening port or
//! from [`FaultProxy::with_seed`]; which chunk draws which value still depends on scheduling.
//!
//! # Ends
//!
//! When one side ends its stream (EOF), the proxy forwards it by shutting down the write half
//! towards the other side, once everything read before it has been delivered. When one side fails
//! (for example it resets), both sides of that connection are reset. Dropping the [`FaultProxy`]
//! stops accepting and closes every connection (a normal close, not a reset).
//!
//! The proxy runs on tokio tasks: [`FaultProxy::start`] must be called within a tokio runtime.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

/// Largest chunk read at once from a socket.
const CHUNK: usize = 16 * 1024;
/// Bytes a direction may hold (read but not yet written) before it stops reading.
const MAX_HELD_BYTES: usize = 1024 * 1024;
/// With a bandwidth cap, writes are paced in slices of about `rate / PACE_SLICES_PER_SEC` bytes.
const PACE_SLICES_PER_SEC: u64 = 50;
/// Pause after a failed `accept` (for example out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The fault mode of a [`FaultProxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Forwarding.
    Up,
    /// Black hole: sockets stay open, no byte moves, bytes in flight are held.
    Cut,
    /// Every connection is reset, new connections are reset on accept.
    Reset,
    /// One-way black hole: bytes from the connecting side flow upstream, bytes coming back
    /// are held (an asymmetric partition: requests arrive, answers do not).
    CutReturn,
}

/// Which way a pump moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// From the connecting side to the upstream.
    Forward,
    /// From the upstream back to the connecting side.
    Return,
}

/// What the pumps watch: the state, and a counter bumped by every [`FaultProxy::reset`] so a
/// connection opened before a reset dies even if the state is healed before it looks.
#[derive(Debug, Clone, Copy)]
struct Mode {
    state: LinkState,
    reset_gen: u64,
}

struct Shared {
    mode: watch::Sender<Mode>,
    latency_ns: AtomicU64,
    jitter_ns: AtomicU64,
    /// Bytes per second; 0 = unlimited.
    bandwidth: AtomicU64,
    rng: AtomicU64,
    connections: AtomicUsize,
    bytes_forwarded: AtomicU64,
}

impl Shared {
    /// Whether bytes may move in direction `dir` now.
    fn flows(mode: &Mode, dir: Dir) -> bool {
        match mode.state {
            LinkState::Up => true,
            LinkState::CutReturn => dir == Dir::Forward,
            LinkState::Cut | LinkState::Reset => false,
        }
    }

    fn bandwidth(&self) -> Option<u64> {
        match self.bandwidth.load(Ordering::Relaxed) {
            0 => None,
            rate => Some(rate),
        }
    }

    /// Latency plus a fresh jitter draw.
    fn chunk_delay(&self) -> Duration {
        let latency = Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed));
        let max_jitter = self.jitter_ns.load(Ordering::Relaxed);
        if max_jitter == 0 {
            return latency;
        }
        let prev = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(xorshift(x)))
            .unwrap_or_else(|x| x);
        let draw = xorshift(prev).wrapping_mul(0x2545_F491_4F6C_DD1D);
        let jitter = match max_jitter.checked_add(1) {
            Some(bound) => draw % bound,
            None => draw,
        };
        latency.saturating_add(Duration::from_nanos(jitter))
    }
}

/// One xorshift64 step (the state must never be 0).
fn xorshift(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x
}

fn seed_state(seed: u64) -> u64 {
    // Spread small seeds (ports) over the state and keep it non-zero.
    let s = seed ^ 0x9E37_79B9_7F4A_7C15;
    if s == 0 {
        0x9E37_79B9_7F4A_7C15
    } else {
        s
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Counts a proxied connection for as long as it lives (its task may be aborted).
struct ConnGuard(Arc<Shared>);

impl ConnGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        ConnGuard(shared)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An in-process TCP fault proxy in front of one upstream address. See the [module docs](self).
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds 127.0.0.1:0 and forwards every accepted connection to `upstream` (connecting on
    /// accept). Starts in [`LinkState::Up`] with no latency and no bandwidth cap.
    ///
    /// Must be called within a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode {
            state: LinkState::Up,
            reset_gen: 0,
        });
        let shared = Arc::new(Shared {
            mode,
            latency_ns: AtomicU64::new(0),
            jitter_ns: AtomicU64::new(0),
            bandwidth: AtomicU64::new(0),
            rng: AtomicU64::new(seed_state(u64::from(addr.port()))),
            connections: AtomicUsize::new(0),
            bytes_forwarded: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone(), upstream));
        Ok(FaultProxy {
            addr,
            upstream,
            shared,
            accept_task,
        })
    }

    /// Reseeds the jitter generator (by default seeded from the listening port).
    pub fn with_seed(self, seed: u64) -> Self {
        self.shared.rng.store(seed_state(seed), Ordering::Relaxed);
        self
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream address every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The listening address as a URL, e.g. `url("nats-leaf")` -> `nats-leaf://127.0.0.1:PORT`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Black hole, both directions: stop moving bytes but keep every socket open. Bytes already
    /// read but not yet written are held, not dropped, and resume intact on [`heal`](Self::heal).
    /// New connections are accepted but held (no upstream connect) until heal.
    pub fn cut(&self) {
        self.set_state(LinkState::Cut);
    }

    /// One-way black hole: what the connecting side sends still reaches the upstream, what
    /// the upstream sends back is held until [`heal`](Self::heal). For a leaf link: the
    /// centre receives and stores bundles but its acks never reach the edge.
    pub fn cut_return(&self) {
        self.set_state(LinkState::CutReturn);
    }

    /// Close every current connection abruptly (RST to both peers), and reset every new
    /// connection on accept until [`heal`](Self::heal).
    pub fn reset(&self) {
        self.shared.mode.send_modify(|m| {
            m.state = LinkState::Reset;
            m.reset_gen = m.reset_gen.wrapping_add(1);
        });
    }

    /// Back to forwarding: held connections resume, new connections go through.
    pub fn heal(&self) {
        self.set_state(LinkState::Up);
    }

    fn set_state(&self, state: LinkState) {
        self.shared.mode.send_if_modified(|m| {
            let changed = m.state != state;
            m.state = state;
            changed
        });
    }

    /// Added one-way latency: each chunk is delayed by `latency` plus a uniform random jitter in
    /// `[0, jitter]`, chunk order kept. Zero for both turns it off.
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        self.shared
            .latency_ns
            .store(duration_nanos(latency), Ordering::Relaxed);
        self.shared
            .jitter_ns
            .store(duration_nanos(jitter), Ordering::Relaxed);
    }

    /// Bandwidth cap in bytes/s per direction per connection (`None` = unlimited; `Some(0)` is
    /// treated as 1 byte/s).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        let raw = bytes_per_sec.map_or(0, |rate| rate.max(1));
        self.shared.bandwidth.store(raw, Ordering::Relaxed);
    }

    /// The current fault mode.
    pub fn state(&self) -> LinkState {
        self.shared.mode.borrow().state
    }

    /// Currently open proxied connections (including connections held by a cut).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Total bytes written by the proxy, both directions, all connections.
    pub fn bytes_forwarded(&self) -> u64 {
        self.shared.bytes_forwarded.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("state", &self.state())
            .field("connections", &self.connections())
            .field("bytes_forwarded", &self.bytes_forwarded())
            .finish()
    }
}

impl Drop for FaultProxy {
    /// Stops accepting and closes every connection: aborting the accept task drops the listener
    /// and the set of connection tasks, which aborts them and their pumps, closing the sockets.
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, upstream: SocketAddr) {
    // Owned here so that aborting this task aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    let mode = *shared.mode.borrow();
                    if mode.state == LinkState::Reset {
                        abort_stream(&client);
                        continue;
                    }
                    let guard = ConnGuard::new(shared.clone());
                    conns.spawn(serve_connection(
                        shared.clone(),
                        upstream,
                        client,
                        mode.reset_gen,
                        guard,
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fault proxy: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Resolves once a reset has been requested after the connection of `generation` was accepted.
async fn killed(mode: &mut watch::Receiver<Mode>, generation: u64) {
    // An error means the sender is gone, i.e. the proxy is going away: treat as killed.
    let _ = mode.wait_for(|m| m.reset_gen != generation).await;
}

async fn serve_connection(
    shared: Arc<Shared>,
    upstream: SocketAddr,
    client: TcpStream,
    generation: u64,
    _guard: ConnGuard,
) {
    let mut mode = shared.mode.subscribe();

    // A connection accepted during a cut is held until heal (or killed by a reset).
    let go = mode
        .wait_for(|m| m.reset_gen != generation || Shared::flows(m, Dir::Forward))
        .await
        .map(|m| m.reset_gen == generation)
        .unwrap_or(false);
    if !go {
        abort_stream(&client);
        return;
    }

    let connected = tokio::select! {
        res = TcpStream::connect(upstream) => res,
        () = killed(&mut mode, generation) => {
            abort_stream(&client);
            return;
        }
    };
    let server = match connected {
        Ok(server) => server,
        Err(e) => {
            tracing::debug!(%upstream, error = %e, "fault proxy: upstream connect failed");
            abort_stream(&client);
            return;
        }
    };
    // Best effort: forwarding small chunks promptly matters more than coalescing here.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let client = Arc::new(client);
    let server = Arc::new(server);
    let mut pumps = JoinSet::new();
    pumps.spawn(pump(
        shared.clone(),
        client.clone(),
        server.clone(),
        Dir::Forward,
    ));
    pumps.spawn(pump(
        shared.clone(),
        server.clone(),
        client.clone(),
        Dir::Return,
    ));

    let abrupt = loop {
        tokio::select! {
            joined = pumps.join_next() => match joined {
                None => break false,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    tracing::debug!(error = %e, "fault proxy: connection failed, resetting both sides");
                    break true;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "fault proxy: pump task ended abnormally");
                    break true;
                }
            },
            () = killed(&mut mode, generation) => break true,
        }
    };
    if abrupt {
        abort_stream(&client);
        abort_stream(&server);
    }
    // Stop the pumps so their handles on the sockets go now; the sockets close when the last
    // `Arc` goes, with a RST if `abrupt`.
    pumps.shutdown().await;
}

/// Makes the socket send a RST (instead of a FIN) when it is closed.
fn abort_stream(stream: &TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "fault proxy: setting SO_LINGER 0 failed");
    }
}

/// Half-closes `stream` for writing (sends a FIN) while the other direction may still run.
fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    // SAFETY: the descriptor belongs to `stream`, which is borrowed for the whole call, so it is
    // open; shutdown(2) neither closes nor takes ownership of it.
    let rc = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::NotConnected {
        // The peer is already gone; the other direction will notice.
        Ok(())
    } else {
        Err(e)
    }
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn closed_error() -> io::Error {
    io::Error::other("fault proxy is shutting down")
}

/// Moves bytes from `from` to `to` until `from` ends (then half-closes `to`) or either fails.
///
/// A reader stage reads eagerly (bounded by [`MAX_HELD_BYTES`]) and stamps each chunk with its
/// delivery time; a writer stage delivers chunks in order, checking the link state right before
/// every write so nothing moves while the link is not up.
async fn pump(
    shared: Arc<Shared>,
    from: Arc<TcpStream>,
    to: Arc<TcpStream>,
    dir: Dir,
) -> io::Result<()> {
    let flows = move |m: &Mode| Shared::flows(m, dir);
    let held = Semaphore::new(MAX_HELD_BYTES);
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let held = &held;
    let shared = &shared;

    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_some(&from, &mut buf).await?;
            if n == 0 {
                // EOF: dropping `tx` tells the writer to forward it after the held bytes.
                return Ok::<(), io::Error>(());
            }
            let deliver_at = Instant::now() + shared.chunk_delay();
            // n <= CHUNK, which fits in u32.
            let permits = u32::try_from(n).map_err(|_| closed_error())?;
            held.acquire_many(permits)
                .await
                .map_err(|_| closed_error())?
                .forget();
            if tx.send((deliver_at, buf[..n].to_vec())).is_err() {
                return Ok(());
            }
        }
    };

    let writer = async move {
        let mut mode = shared.mode.subscribe();
        let mut next_send = Instant::now();
        while let Some((deliver_at, data)) = rx.recv().await {
            sleep_until(deliver_at).await;
            let mut off = 0;
            while off < data.len() {
                if mode.wait_for(flows).await.is_err() {
                    return Err(closed_error());
                }
                let rate = shared.bandwidth();
                let end = match rate {
                    None => data.len(),
                    Some(rate) => {
                        if Instant::now() < next_send {
                            sleep_until(next_send).await;
                            continue; // the state may have changed while pacing
                        }
                        let slice = usize::try_from(rate / PACE_SLICES_PER_SEC)
                            .unwrap_or(CHUNK)
                            .clamp(1, CHUNK);
                        off + slice.min(data.len() - off)
                    }
                };
                tokio::select! {
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return Err(closed_error());
                        }
                        continue;
                    }
                    ready = to.writable() => ready?,
                }
                if !flows(&mode.borrow_and_update()) {
                    continue;
                }
                match to.try_write(&data[off..end]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        off += n;
                        shared
                            .bytes_forwarded
                            .fetch_add(n as u64, Ordering::Relaxed);
                        if let Some(rate) = rate {
                            let cost = Duration::from_secs_f64(n as f64 / rate as f64);
                            next_send = next_send.max(Instant::now()) + cost;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            held.add_permits(data.len());
        }
        // The source ended: forward the FIN, which a cut holds like any byte.
        if mode.wait_for(flows).await.is_err() {
            return Err(closed_error());
        }
        shutdown_write(&to)
    };

    tokio::try_join!(reader, writer).map(|_| ())
}
