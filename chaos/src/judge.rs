//! The judge: checks what reached `MESH_EVENTS` against what the producers were told.
//!
//! * lost — acked, not in the stream (G1, G2);
//! * duplicated — a `ce-id` more than once in the stream (G3);
//! * reordered — an agent's acked events not in publish order (G4);
//! * corrupted — data differs from what was published;
//! * refused-but-present — an event the edge refused appears anyway (G7).

use std::collections::{HashMap, HashSet};

use async_nats::jetstream;
use schemas::stream::{Range, RangeReader};
use schemas::Event;
use uuid::Uuid;

use crate::producer::AgentLog;

/// The judge's findings. [`Verdict::ok`] is true when nothing is wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub acked: usize,
    pub delivered: usize,
    pub lost: Vec<Uuid>,
    pub duplicated: Vec<Uuid>,
    pub reordered: Vec<Uuid>,
    pub corrupted: Vec<Uuid>,
    pub refused_present: Vec<Uuid>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.corrupted.is_empty()
            && self.refused_present.is_empty()
    }

    /// Judges `events` (the stream, in stream order) against the producers' logs.
    pub fn judge(logs: &[AgentLog], events: &[Event]) -> Verdict {
        let mut v = Verdict {
            delivered: events.len(),
            ..Verdict::default()
        };
        let mut pos: HashMap<Uuid, usize> = HashMap::with_capacity(events.len());
        let mut dup: HashSet<Uuid> = HashSet::new();
        for (i, ev) in events.iter().enumerate() {
            if pos.insert(ev.id, i).is_some() {
                dup.insert(ev.id);
            }
        }
        v.duplicated = dup.into_iter().collect();
        v.duplicated.sort();
        for log in logs {
            v.acked += log.acked.len();
            let mut last = None;
            for id in &log.acked {
                match pos.get(id) {
                    None => v.lost.push(*id),
                    Some(&p) => {
                        if last.is_some_and(|l| p < l) {
                            v.reordered.push(*id);
                        }
                        last = Some(p);
                        let ev = &events[p];
                        if log.data.get(id).is_some_and(|d| *d != ev.data) || ev.agent != log.agent
                        {
                            v.corrupted.push(*id);
                        }
                    }
                }
            }
            for (id, _) in &log.refused {
                if pos.contains_key(id) {
                    v.refused_present.push(*id);
                }
            }
        }
        v
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked={} delivered={} lost={} duplicated={} reordered={} corrupted={} refused_present={}",
            self.acked,
            self.delivered,
            self.lost.len(),
            self.duplicated.len(),
            self.reordered.len(),
            self.corrupted.len(),
            self.refused_present.len()
        )
    }
}

/// Every event in `MESH_EVENTS`, in stream order, read with an ordered consumer through
/// `js` (a context of the central domain). Messages that are not events are an error.
pub async fn read_stream(js: &jetstream::Context) -> Result<Vec<Event>, async_nats::Error> {
    Ok(read_stream_timed(js)
        .await?
        .into_iter()
        .map(|(e, _)| e)
        .collect())
}

/// [`read_stream`] with the time the stream stored each event.
pub async fn read_stream_timed(
    js: &jetstream::Context,
) -> Result<Vec<(Event, chrono::DateTime<chrono::Utc>)>, async_nats::Error> {
    let mut reader = RangeReader::open(js, schemas::subject::STREAM_EVENTS, Range::all()).await?;
    let mut out = Vec::new();
    while let Some(m) = reader.next().await? {
        out.push((Event::from_message(&m.headers, m.payload)?, m.stored));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::Utc;

    fn ev(agent: &str, id: Uuid, data: &str) -> Event {
        Event {
            id,
            edge: "e".into(),
            agent: agent.into(),
            seq: 0,
            ty: "t".into(),
            subject: "s".into(),
            time: Utc::now(),
            content_type: "x".into(),
            dataschema: None,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            data: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    fn log(agent: &str, ids: &[Uuid]) -> AgentLog {
        let mut l = AgentLog::new(agent);
        for (i, id) in ids.iter().enumerate() {
            l.acked.push(*id);
            l.data.insert(*id, Bytes::from(format!("d{i}")));
        }
        l
    }

    #[test]
    fn clean_history_passes() {
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        let events: Vec<Event> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| ev("a", *id, &format!("d{i}")))
            .collect();
        let v = Verdict::judge(&[log("a", &ids)], &events);
        assert!(v.ok(), "{v}");
        assert_eq!((v.acked, v.delivered), (4, 4));
    }

    #[test]
    fn finds_lost_duplicated_reordered_and_corrupted() {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        // id1 lost, id2 duplicated, id3 and id4 swapped, id0 corrupted.
        let events = vec![
            ev("a", ids[0], "changed"),
            ev("a", ids[2], "d2"),
            ev("a", ids[4], "d4"),
            ev("a", ids[3], "d3"),
            ev("a", ids[2], "d2"),
        ];
        let v = Verdict::judge(&[log("a", &ids)], &events);
        assert_eq!(v.lost, vec![ids[1]]);
        assert_eq!(v.duplicated, vec![ids[2]]);
        assert!(
            v.reordered.contains(&ids[3]) || v.reordered.contains(&ids[4]),
            "{v:?}"
        );
        assert_eq!(v.corrupted, vec![ids[0]]);
        assert!(!v.ok());
    }

    #[test]
    fn a_refused_event_must_not_arrive() {
        let id = Uuid::now_v7();
        let mut l = AgentLog::new("a");
        l.refused.push((id, "outbox_full".into()));
        let v = Verdict::judge(&[l], &[ev("a", id, "x")]);
        assert_eq!(v.refused_present, vec![id]);
    }
}
