//! The one `/metrics` scraper: fetch a hub's Prometheus text page once, parse it into
//! samples, then ask it as often as needed.
//!
//! # Format read
//!
//! One sample a line, `name{label="value",…} value [timestamp]`, labels optional; lines
//! starting with `#` (HELP, TYPE, EOF) and blank lines are skipped. Label values may
//! hold `\"`, `\\` and `\n` escapes. Values parse as `f64`, `+Inf`/`-Inf`/`NaN` included.
//! A line that does not parse is skipped, not an error: a scrape is an observation.
//!
//! # Queries
//!
//! - [`Scrape::get`]: the first sample with this exact name whose labels include the given
//!   pairs (every edge sample carries `edge="…"`, so `get(name, &[])` is "the" value).
//! - [`Scrape::sum`]: every sample with this exact name added up (all label sets).
//! - [`Scrape::histogram`]: a histogram's cumulative buckets `(le, count)`;
//!   [`quantile_between`] reads a quantile of what was observed between two scrapes.
//! - [`Scrape::matching`]: samples whose series text as written (`name{labels}`) starts
//!   with a prefix, for callers that name a metric loosely (a counter without its
//!   `_total`, or a whole series with labels).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a fetch may take, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series as written on the page: `name{labels}` (or just `name`).
    pub series: String,
    /// The metric name.
    pub name: String,
    /// The labels, in page order, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses a Prometheus text page (see the module doc for what is read and skipped).
    pub fn parse(text: &str) -> Scrape {
        Scrape {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Every sample, in page order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The first sample named `name` whose labels include every pair of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.has_labels(labels))
            .map(|s| s.value)
    }

    /// The sum of every sample named `name`, over all label sets (0 when there is none).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// The cumulative buckets `(le, count)` of histogram `name` (its `name_bucket`
    /// samples, `+Inf` as infinity), in page order.
    pub fn histogram(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        self.samples
            .iter()
            .filter(|s| s.name == bucket)
            .filter_map(|s| Some((parse_value(s.label("le")?)?, s.value)))
            .collect()
    }

    /// Samples whose series as written (`name{labels}`) starts with `prefix`, in page order.
    pub fn matching<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.series.starts_with(prefix))
    }
}

/// The `q` quantile of the observations a histogram took between two scrapes of it
/// (`before`, `after`: [`Scrape::histogram`]), as the upper bound of the bucket it falls
/// in; `None` when nothing was observed in between.
pub fn quantile_between(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, c)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
            (le, c - b)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

/// `GET /metrics` on `addr`, parsed; `None` when the hub does not answer within 2 s or
/// answers other than 200.
pub async fn scrape(addr: SocketAddr) -> Option<Scrape> {
    http_get(addr, "/metrics").await.map(|b| Scrape::parse(&b))
}

/// `GET path` on a hub's `addr`: the body of a 200 answer within 2 s, else `None`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(request_of(addr, path).as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(out)
    };
    let raw = tokio::time::timeout(FETCH_TIMEOUT, fetch).await.ok()??;
    body(&raw)
}

/// [`scrape`] for callers that cannot `.await` (a plain `fn` in a test): the same request
/// on a blocking socket, with the same timeout.
pub fn scrape_blocking(addr: SocketAddr) -> Option<Scrape> {
    let mut s = TcpStream::connect_timeout(&addr, FETCH_TIMEOUT).ok()?;
    s.set_read_timeout(Some(FETCH_TIMEOUT)).ok()?;
    s.write_all(request(addr).as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    body(&out).map(|b| Scrape::parse(&b))
}

fn request(addr: SocketAddr) -> String {
    request_of(addr, "/metrics")
}

fn request_of(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// The body of a 200 answer.
fn body(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    (status.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

fn parse_value(v: &str) -> Option<f64> {
    v.parse().ok()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        let (labels, len) = parse_labels(&line[name_end + 1..])?;
        (labels, &line[name_end + 1 + len..])
    } else {
        (Vec::new(), &line[name_end..])
    };
    let series = &line[..line.len() - rest.len()];
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        series: series.to_string(),
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",…}` (after the `{`); returns the labels and the bytes consumed,
/// closing brace included.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, usize)> {
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
            chars.next();
        }
        match chars.peek() {
            Some((i, '}')) => return Some((labels, i + 1)),
            None => return None,
            _ => {}
        }
        let mut key = String::new();
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP mesh_edge_uplink_up 1 when the centre is reachable.
# TYPE mesh_edge_uplink_up gauge
mesh_edge_uplink_up{edge=\"e1\"} 1
mesh_edge_rejected_requests_total{edge=\"e1\",reason=\"invalid\"} 2
mesh_edge_rejected_requests_total{edge=\"e1\",reason=\"outbox_full\"} 3
mesh_edge_commit_seconds_sum{edge=\"e1\"} 0.5
mesh_edge_commit_seconds_bucket{le=\"0.001\",edge=\"e1\"} 4
mesh_edge_commit_seconds_bucket{le=\"0.002\",edge=\"e1\"} 9
mesh_edge_commit_seconds_bucket{le=\"+Inf\",edge=\"e1\"} 10
odd{path=\"a\\\"b\\\\c, d}\"} 7 1700000000
plain 42
not a sample
# EOF
";

    #[test]
    fn reads_names_labels_and_values() {
        let s = Scrape::parse(PAGE);
        assert_eq!(s.get("mesh_edge_uplink_up", &[]), Some(1.0));
        assert_eq!(s.get("mesh_edge_uplink_up", &[("edge", "e2")]), None);
        assert_eq!(
            s.get(
                "mesh_edge_rejected_requests_total",
                &[("reason", "outbox_full")]
            ),
            Some(3.0)
        );
        assert_eq!(s.sum("mesh_edge_rejected_requests_total"), 5.0);
        assert_eq!(s.sum("missing"), 0.0);
        assert_eq!(s.get("plain", &[]), Some(42.0));
        assert_eq!(s.get("odd", &[("path", "a\"b\\c, d}")]), Some(7.0));
    }

    #[test]
    fn histogram_and_quantile_between_scrapes() {
        let after = Scrape::parse(PAGE).histogram("mesh_edge_commit_seconds");
        assert_eq!(
            after,
            vec![(0.001, 4.0), (0.002, 9.0), (f64::INFINITY, 10.0)]
        );
        let before = vec![(0.001, 4.0), (0.002, 4.0), (f64::INFINITY, 4.0)];
        // Six observations in between: five at <= 2 ms, one above.
        assert_eq!(quantile_between(&before, &after, 0.5), Some(0.002));
        assert_eq!(quantile_between(&before, &after, 0.99), Some(f64::INFINITY));
        assert_eq!(quantile_between(&after, &after, 0.5), None);
    }

    #[test]
    fn prefix_matching_sees_the_series_as_written() {
        let s = Scrape::parse(PAGE);
        let first = s.matching("mesh_edge_rejected_requests").next().unwrap();
        assert_eq!(first.value, 2.0);
        let exact: Vec<f64> = s
            .matching("mesh_edge_rejected_requests_total{edge=\"e1\",reason=\"outbox_full\"}")
            .map(|x| x.value)
            .collect();
        assert_eq!(exact, vec![3.0]);
    }

    #[test]
    fn only_a_200_answer_has_a_body() {
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nplain 1\n").as_deref(),
            Some("plain 1\n")
        );
        assert_eq!(body(b"HTTP/1.1 404 Not Found\r\n\r\nplain 1\n"), None);
        assert_eq!(body(b"garbage"), None);
    }
}
