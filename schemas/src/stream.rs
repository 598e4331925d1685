//! Ordered reads of a range of a stream: the one way the mesh reads history.
//!
//! A [`RangeReader`] reads with an ordered consumer (ephemeral, no acks, never changes the
//! source stream) and yields messages in stream order. The range is fixed when it opens:
//! it ends at `to_seq` or at the stream's last sequence at that moment, whichever is
//! lower, so a stream that keeps growing does not keep the reader going. It also ends at
//! the last message matching the filter (the consumer reports none pending), at the first
//! message stored after `until`, and on an empty stream or range without waiting. Each
//! message must arrive within [`READ_TIMEOUT`], or the read fails naming how far it got.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;

/// How long a reader waits for the next message of its range.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a range starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Start {
    /// The first message of the stream.
    #[default]
    First,
    /// This stream sequence (0 counts as 1).
    Seq(u64),
    /// The first message stored at or after this time.
    Time(DateTime<Utc>),
}

/// Which messages to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    /// Subject filter, e.g. `mesh.dlq.e1.>`; empty for every subject.
    pub filter: String,
    pub start: Start,
    /// The last stream sequence to read.
    pub to_seq: Option<u64>,
    /// Stop before the first message stored after this time.
    pub until: Option<DateTime<Utc>>,
}

impl Range {
    /// Every message of the stream.
    pub fn all() -> Range {
        Range::default()
    }

    /// Every message on subjects matching `filter`.
    pub fn filtered(filter: impl Into<String>) -> Range {
        Range {
            filter: filter.into(),
            ..Range::default()
        }
    }
}

/// One message of a stream, as read.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// Stream sequence.
    pub seq: u64,
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// When the stream stored it.
    pub stored: DateTime<Utc>,
}

/// Why a range could not be read. Each variant names the stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream does not exist or its state could not be read.
    #[error("stream {stream}: cannot read its state: {source}")]
    Open {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    /// The ordered consumer could not be created or failed while reading.
    #[error("stream {stream}: ordered consumer failed after {read} messages: {source}")]
    Consumer {
        stream: String,
        read: usize,
        #[source]
        source: async_nats::Error,
    },
    /// No message arrived in time.
    #[error("stream {stream}: read {read} messages up to seq {end}, then nothing for {waited:?}")]
    Timeout {
        stream: String,
        read: usize,
        end: u64,
        waited: Duration,
    },
}

/// Reads a [`Range`] message by message; see the module doc for where it ends.
pub struct RangeReader {
    stream: String,
    msgs: Option<pull::Ordered>,
    end: u64,
    until: Option<DateTime<Utc>>,
    read: usize,
}

impl RangeReader {
    /// Opens `range` of `stream` through `js`.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        range: Range,
    ) -> Result<RangeReader, StreamError> {
        let open = |source: async_nats::Error| StreamError::Open {
            stream: stream.to_string(),
            source,
        };
        let consumer_err = |source: async_nats::Error| StreamError::Consumer {
            stream: stream.to_string(),
            read: 0,
            source,
        };
        let s = js.get_stream(stream).await.map_err(|e| open(e.into()))?;
        let info = s.get_info().await.map_err(|e| open(e.into()))?;
        let last = info.state.last_sequence;
        let end = range.to_seq.map_or(last, |t| t.min(last));
        let mut reader = RangeReader {
            stream: stream.to_string(),
            msgs: None,
            end,
            until: range.until,
            read: 0,
        };
        let deliver_policy = match range.start {
            Start::First => DeliverPolicy::All,
            Start::Seq(s) if s > end => return Ok(reader),
            Start::Seq(s) => DeliverPolicy::ByStartSequence {
                start_sequence: s.max(1),
            },
            Start::Time(t) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    t.timestamp_nanos_opt().unwrap_or(0) as i128,
                )
                .map_err(|e| consumer_err(e.into()))?,
            },
        };
        if info.state.messages == 0 {
            return Ok(reader);
        }
        let consumer = s
            .create_consumer(pull::OrderedConfig {
                filter_subject: range.filter,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| consumer_err(e.into()))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(reader);
        }
        reader.msgs = Some(
            consumer
                .messages()
                .await
                .map_err(|e| consumer_err(e.into()))?,
        );
        Ok(reader)
    }

    /// The last stream sequence this reader may yield.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The next message of the range, `None` at its end.
    pub async fn next(&mut self) -> Result<Option<StreamMessage>, StreamError> {
        let Some(msgs) = self.msgs.as_mut() else {
            return Ok(None);
        };
        let next = tokio::time::timeout(READ_TIMEOUT, msgs.next())
            .await
            .map_err(|_| StreamError::Timeout {
                stream: self.stream.clone(),
                read: self.read,
                end: self.end,
                waited: READ_TIMEOUT,
            })?;
        let failed = |read: usize, source: async_nats::Error| StreamError::Consumer {
            stream: self.stream.clone(),
            read,
            source,
        };
        let m = match next {
            None => {
                self.msgs = None;
                return Ok(None);
            }
            Some(m) => m.map_err(|e| failed(self.read, e.into()))?,
        };
        let info = m.info().map_err(|e| failed(self.read, e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let stored = DateTime::from_timestamp_nanos(info.published.unix_timestamp_nanos() as i64);
        if seq > self.end || self.until.is_some_and(|u| stored > u) {
            self.msgs = None;
            return Ok(None);
        }
        if seq >= self.end || pending == 0 {
            self.msgs = None;
        }
        self.read += 1;
        Ok(Some(StreamMessage {
            seq,
            subject: m.subject.to_string(),
            headers: m.headers.clone().unwrap_or_default(),
            payload: m.payload.clone(),
            stored,
        }))
    }
}

/// Every message of `range`, in stream order.
pub async fn read_range(
    js: &jetstream::Context,
    stream: &str,
    range: Range,
) -> Result<Vec<StreamMessage>, StreamError> {
    let mut reader = RangeReader::open(js, stream, range).await?;
    let mut out = Vec::new();
    while let Some(m) = reader.next().await? {
        out.push(m);
    }
    Ok(out)
}
