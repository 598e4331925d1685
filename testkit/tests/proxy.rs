//! Tests of the TCP fault proxy against a local echo server.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_testkit::{FaultProxy, LinkState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// Upper bound for anything that should happen "promptly".
const DEADLINE: Duration = Duration::from_secs(5);

/// Echo server on 127.0.0.1:0: writes back everything it reads, then half-closes on EOF.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn setup() -> FaultProxy {
    let upstream = echo_server().await;
    FaultProxy::start(upstream).await.expect("start proxy")
}

/// Polls `cond` until it holds or `DEADLINE` passes.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn read_exactly(sock: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    timeout(DEADLINE, sock.read_exact(&mut buf))
        .await
        .expect("echo within deadline")
        .expect("read echo");
    buf
}

async fn round_trip(sock: &mut TcpStream, msg: &[u8]) {
    sock.write_all(msg).await.expect("write");
    assert_eq!(read_exactly(sock, msg.len()).await, msg);
}

/// Reads until the stream ends; returns Ok(()) on EOF, Err on a reset.
async fn read_to_end_within_deadline(sock: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    timeout(DEADLINE, async {
        loop {
            if sock.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    })
    .await
    .expect("stream should end within deadline")
}

fn is_closed_abruptly(res: &io::Result<()>) -> bool {
    match res {
        Ok(()) => true,
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ),
    }
}

#[tokio::test]
async fn pass_through_echo_counts_bytes() {
    let proxy = setup().await;
    assert_eq!(proxy.state(), LinkState::Up);
    assert_eq!(
        proxy.url("nats-leaf"),
        format!("nats-leaf://127.0.0.1:{}", proxy.addr().port())
    );

    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut client, b"hello through the proxy").await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = client.split();
    let (echoed, ()) = tokio::join!(
        async {
            let mut buf = vec![0u8; big.len()];
            timeout(DEADLINE, r.read_exact(&mut buf))
                .await
                .expect("big echo within deadline")
                .expect("read big echo");
            buf
        },
        async { w.write_all(&big).await.expect("write big") }
    );
    assert_eq!(echoed, big);

    // Both directions are counted: 2 * (23 + 200_000).
    let expected = 2 * (23 + big.len() as u64);
    wait_until("bytes_forwarded", || proxy.bytes_forwarded() == expected).await;
    assert_eq!(proxy.connections(), 1);

    drop(client);
    wait_until("connection closed", || proxy.connections() == 0).await;
}

#[tokio::test]
async fn cut_holds_bytes_and_heal_resumes_same_connection() {
    let proxy = setup().await;
    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut client, b"before").await;
    assert_eq!(proxy.connections(), 1);
    let forwarded = proxy.bytes_forwarded();

    proxy.cut();
    assert_eq!(proxy.state(), LinkState::Cut);
    let msg = b"sent during the cut";
    client.write_all(msg).await.expect("write during cut");
    let mut buf = [0u8; 64];
    // The one timeout-based negative check: silence, not a close.
    let during = timeout(Duration::from_millis(300), client.read(&mut buf)).await;
    assert!(
        during.is_err(),
        "expected silence during the cut, got {during:?}"
    );
    assert_eq!(proxy.bytes_forwarded(), forwarded);
    assert_eq!(proxy.connections(), 1);

    proxy.heal();
    assert_eq!(proxy.state(), LinkState::Up);
    assert_eq!(read_exactly(&mut client, msg.len()).await, msg);
    round_trip(&mut client, b"after").await;
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn connection_opened_during_cut_is_held_until_heal() {
    let proxy = setup().await;
    proxy.cut();
    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
    wait_until("held connection counted", || proxy.connections() == 1).await;
    client.write_all(b"held").await.expect("write");
    let mut buf = [0u8; 16];
    let during = timeout(Duration::from_millis(300), client.read(&mut buf)).await;
    assert!(during.is_err(), "expected silence, got {during:?}");
    assert_eq!(proxy.bytes_forwarded(), 0);

    proxy.heal();
    assert_eq!(read_exactly(&mut client, 4).await, b"held");
}

#[tokio::test]
async fn reset_closes_connections_until_heal() {
    let proxy = setup().await;
    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut client, b"ping").await;

    proxy.reset();
    assert_eq!(proxy.state(), LinkState::Reset);
    let res = read_to_end_within_deadline(&mut client).await;
    assert!(is_closed_abruptly(&res), "unexpected: {res:?}");
    wait_until("connections dropped", || proxy.connections() == 0).await;

    // A new connection during the reset is accepted and closed at once.
    match TcpStream::connect(proxy.addr()).await {
        Ok(mut fresh) => {
            let res = read_to_end_within_deadline(&mut fresh).await;
            assert!(is_closed_abruptly(&res), "unexpected: {res:?}");
        }
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(proxy.connections(), 0);

    proxy.heal();
    let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut again, b"pong").await;
}

#[tokio::test]
async fn latency_delays_the_round_trip() {
    let proxy = setup().await;
    let latency = Duration::from_millis(100);
    proxy.set_latency(latency, Duration::from_millis(20));
    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
    let start = Instant::now();
    round_trip(&mut client, b"slow").await;
    let rtt = start.elapsed();
    // Delayed once each way.
    assert!(rtt >= 2 * latency, "round trip {rtt:?} < 2 * {latency:?}");
}

#[tokio::test]
async fn bandwidth_cap_slows_transfer() {
    let proxy = setup().await;
    proxy.set_bandwidth(Some(20_000));
    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
    let data = vec![7u8; 10_000];
    let start = Instant::now();
    round_trip(&mut client, &data).await;
    let took = start.elapsed();
    // 10 kB at 20 kB/s is 0.5 s per direction; the first slice goes at once.
    assert!(took >= Duration::from_millis(400), "took only {took:?}");
}

#[tokio::test]
async fn drop_closes_connections() {
    let proxy = setup().await;
    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut client, b"bye").await;

    drop(proxy);
    let res = read_to_end_within_deadline(&mut client).await;
    assert!(res.is_ok(), "expected EOF, got {res:?}");
}

/// A one-way cut lets bytes reach the upstream but holds what comes back; heal delivers
/// the held answer on the same connection.
#[tokio::test]
async fn cut_return_delivers_upstream_but_holds_answers() {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let seen = got.clone();
    tokio::spawn(async move {
        if let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            while let Ok(n) = sock.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = sock.write_all(&buf[..n]).await;
            }
        }
    });
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    let mut sock = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut sock, b"one").await;
    proxy.cut_return();
    assert_eq!(proxy.state(), LinkState::CutReturn);
    sock.write_all(b"two").await.expect("write");
    wait_until("upstream to receive during a one-way cut", || {
        got.lock().unwrap().ends_with(b"two")
    })
    .await;
    let mut buf = [0u8; 3];
    assert!(
        timeout(Duration::from_millis(300), sock.read_exact(&mut buf))
            .await
            .is_err(),
        "the answer must be held while the return path is cut"
    );
    proxy.heal();
    assert_eq!(read_exactly(&mut sock, 3).await, b"two");
}
