//! Reading a running nats-server from outside: its ports file, the `INFO` line of its
//! client port, and its monitoring HTTP endpoints (`/varz`, `/leafz`, …). Plain
//! blocking sockets with timeouts; no HTTP or NATS client library is needed for this.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::Ports;
use crate::Error;

/// The JSON nats-server writes to its ports file.
#[derive(Debug, Deserialize)]
struct PortsFile {
    #[serde(default)]
    nats: Vec<String>,
    #[serde(default)]
    monitoring: Vec<String>,
}

/// Parse the ports file JSON (`{"nats":["nats://127.0.0.1:P"],"monitoring":["http://..."]}`).
pub(crate) fn parse_ports_file(path: &Path, text: &str) -> Result<Ports, Error> {
    let bad = |reason: String| Error::PortsFile {
        path: path.to_path_buf(),
        reason,
    };
    let parsed: PortsFile = serde_json::from_str(text)
        .map_err(|e| bad(format!("not JSON ({e}): {:?}", truncate(text, 200))))?;
    let first_port = |key: &str, urls: &[String]| -> Result<u16, Error> {
        let url = urls
            .first()
            .ok_or_else(|| bad(format!("no {key:?} entry in {:?}", truncate(text, 200))))?;
        url_port(url).ok_or_else(|| bad(format!("{key:?} URL {url:?} has no port")))
    };
    Ok(Ports {
        client: first_port("nats", &parsed.nats)?,
        monitor: first_port("monitoring", &parsed.monitoring)?,
        leaf: 0,
    })
}

/// The port of a `scheme://host:port[/...]` URL.
pub(crate) fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next()?;
    let (_, port) = host_port.rsplit_once(':')?;
    port.parse().ok().filter(|p| *p != 0)
}

pub(crate) fn leaf_port_from_varz(addr: SocketAddr, body: &str) -> Result<u16, Error> {
    let bad = |reason: String| Error::Monitor {
        addr,
        path: "/varz".into(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    v.pointer("/leaf/port")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("no leaf.port in /varz".into()))
}

/// Connect to a client port and return the first line the server sends.
pub(crate) fn read_info_line(
    addr: SocketAddr,
    deadline: Instant,
) -> Result<String, std::io::Error> {
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(50), Duration::from_secs(2));
    let mut stream = TcpStream::connect_timeout(&addr, remaining)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no complete line from {addr} before the deadline"),
            ));
        }
        stream.set_read_timeout(Some(remaining.min(Duration::from_secs(2))))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{addr} closed the connection before a complete line"),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            return Ok(String::from_utf8_lossy(&buf[..pos]).trim_end().to_string());
        }
    }
}

/// A minimal HTTP/1.0 GET over a raw TCP stream; returns the body of a 200 response.
pub(crate) fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, Error> {
    let fail = |reason: String| Error::Monitor {
        addr,
        path: path.to_string(),
        reason,
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(format!("setting timeouts: {e}")))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(format!("send: {e}")))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| fail(format!("receive: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        fail(format!(
            "no header/body separator in {:?}",
            truncate(&text, 200)
        ))
    })?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(fail(format!("status line {status:?}")));
    }
    Ok(body.to_string())
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_file() {
        let p = parse_ports_file(
            Path::new("x.ports"),
            r#"{"nats":["nats://127.0.0.1:40315"],"monitoring":["http://127.0.0.1:37027"]}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            Ports {
                client: 40315,
                leaf: 0,
                monitor: 37027
            }
        );
        assert!(parse_ports_file(Path::new("x"), r#"{"nats":["nats://127.0.0.1:40"#).is_err());
        assert!(parse_ports_file(Path::new("x"), r#"{"nats":[]}"#).is_err());
    }

    #[test]
    fn url_ports() {
        assert_eq!(url_port("nats-leaf://127.0.0.1:7422"), Some(7422));
        assert_eq!(url_port("http://127.0.0.1:8222/"), Some(8222));
        assert_eq!(url_port("nats://127.0.0.1"), None);
    }

    #[test]
    fn varz_leaf_port() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            leaf_port_from_varz(a, r#"{"leaf":{"host":"127.0.0.1","port":36081}}"#).unwrap(),
            36081
        );
        assert!(leaf_port_from_varz(a, r#"{"leaf":{}}"#).is_err());
    }
}
