//! An ordered, pipelined publisher: many ingest requests in flight on one connection.
//!
//! Requests are written to the connection one after another by [`Pipeline::send`] (an
//! `.await` each, so their order on the wire is the call order, and the edge stores them
//! in that order: G4 holds for a pipelining agent too). Replies come back on one
//! subscription (`<inbox>.<n>`) and are matched to their request by `n`;
//! [`Pipeline::next_reply`] yields them, or a timeout for the oldest unanswered request.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
use schemas::{IngestReply, IngestRequest, NewEvent};
use tokio::time::Instant;

use crate::{Ack, Agent, AgentError};

pub struct Pipeline {
    client: async_nats::Client,
    ingest: String,
    inbox: String,
    sub: async_nats::Subscriber,
    timeout: Duration,
    next: u64,
    /// Token -> deadline, oldest first.
    waiting: BTreeMap<u64, Instant>,
}

impl Agent {
    /// A pipelined publisher on this agent's connection.
    pub async fn pipeline(&self) -> Result<Pipeline, AgentError> {
        let inbox = self.client.new_inbox();
        let sub = self
            .client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| AgentError::Subscribe {
                filter: inbox.clone(),
                reason: e.to_string(),
            })?;
        Ok(Pipeline {
            client: self.client.clone(),
            ingest: self.ingest.clone(),
            inbox,
            sub,
            timeout: self.timeout,
            next: 0,
            waiting: BTreeMap::new(),
        })
    }
}

impl Pipeline {
    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// Sends a batch; returns its token. The reply comes from [`Pipeline::next_reply`].
    pub async fn send(&mut self, events: Vec<NewEvent>) -> Result<u64, AgentError> {
        let body = IngestRequest { events }.encode()?;
        self.send_raw(body.into()).await
    }

    /// Sends a raw body (for tests of refusals).
    pub async fn send_raw(&mut self, body: Bytes) -> Result<u64, AgentError> {
        let token = self.next;
        self.client
            .publish_with_reply(self.ingest.clone(), format!("{}.{token}", self.inbox), body)
            .await
            .map_err(|e| AgentError::Request {
                subject: self.ingest.clone(),
                reason: e.to_string(),
            })?;
        self.next += 1;
        self.waiting.insert(token, Instant::now() + self.timeout);
        Ok(token)
    }

    /// The next answer: `(token, result)`, in whatever order answers arrive; a request
    /// unanswered past its timeout yields [`AgentError::Timeout`]. `None` when nothing is
    /// in flight.
    pub async fn next_reply(&mut self) -> Option<(u64, Result<Ack, AgentError>)> {
        loop {
            let (&oldest, &deadline) = self.waiting.iter().next()?;
            let msg = match tokio::time::timeout_at(deadline, self.sub.next()).await {
                Err(_) => {
                    self.waiting.remove(&oldest);
                    return Some((oldest, Err(AgentError::Timeout(self.timeout))));
                }
                Ok(None) => {
                    self.waiting.remove(&oldest);
                    return Some((
                        oldest,
                        Err(AgentError::Request {
                            subject: self.ingest.clone(),
                            reason: "connection closed".into(),
                        }),
                    ));
                }
                Ok(Some(m)) => m,
            };
            let Some(token) = msg
                .subject
                .rsplit('.')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if self.waiting.remove(&token).is_none() {
                continue; // an answer after its timeout was reported
            }
            let result = if msg.status == Some(StatusCode::NO_RESPONDERS) {
                Err(AgentError::NoEdgeHub {
                    subject: self.ingest.clone(),
                })
            } else {
                match IngestReply::decode(&msg.payload) {
                    Ok(IngestReply::Ok {
                        first_seq,
                        last_seq,
                    }) => Ok(Ack {
                        first_seq,
                        last_seq,
                    }),
                    Ok(IngestReply::Err { code, message }) => {
                        Err(AgentError::Refused { code, message })
                    }
                    Err(e) => Err(AgentError::Payload(e.to_string())),
                }
            };
            return Some((token, result));
        }
    }
}
