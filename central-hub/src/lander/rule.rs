//! The landing rules, pure: which bundles may land at all ([`check`]), and what to do
//! with one covering `first..=last` of an edge whose high-water mark is `mark`
//! ([`decide`]); see the [`super`] doc.

use async_nats::HeaderMap;
use schemas::bundle::BUNDLE_VERSION;
use schemas::{headers as h, subject, Bundle, SchemaError};

/// Why a bundle can never land. The message names the problem and its values; the
/// [`Refusal::label`] is the metric's bounded `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The subject is not `mesh.up.<edge>` with a valid edge id.
    #[error("bundle subject {subject:?} is not mesh.up.<edge> with a valid edge id")]
    Subject { subject: String },
    /// The body is not a bundle.
    #[error("{0}")]
    Undecodable(SchemaError),
    /// A format version this build does not read.
    #[error("bundle version {version} (this build reads {BUNDLE_VERSION})")]
    Version { version: u8 },
    /// The edge of the subject (who sent it) is not the bundle's `edge`.
    #[error("bundle subject edge {subject_edge} but bundle edge {edge:?}")]
    Edge { subject_edge: String, edge: String },
    /// `first..=last` is empty or starts at 0.
    #[error("bundle claims {first}..={last}, which is empty or starts at 0")]
    Range { first: u64, last: u64 },
    /// `mesh-missing` is not a number.
    #[error("bundle header {} is {value:?}, not a number", h::MESH_MISSING)]
    MissingHeader { value: String },
    /// The events and the missing sequences do not fill the range exactly.
    #[error("bundle claims {first}..={last} but holds {events} events{}", declared(*.missing))]
    Count {
        first: u64,
        last: u64,
        events: u64,
        missing: u64,
    },
    /// Event `index` is not the next sequence of the range.
    #[error("event {index} (ce-id {id}) has seq {got}, expected {expected}")]
    Sequence {
        index: usize,
        id: String,
        got: u64,
        expected: u64,
    },
    /// Event `index` is from another edge than the bundle.
    #[error("event {index} (ce-id {id}) is from edge {event_edge:?} but bundle edge {edge}")]
    EventEdge {
        index: usize,
        id: String,
        event_edge: String,
        edge: String,
    },
    /// Event `index` fails the schema checks ([`schemas::Event::validate`]).
    #[error("event {index} (ce-id {id}, seq {seq}) is invalid: {error}")]
    Event {
        index: usize,
        id: String,
        seq: u64,
        error: SchemaError,
    },
}

fn declared(missing: u64) -> String {
    if missing == 0 {
        String::new()
    } else {
        format!(" and declares {missing} missing")
    }
}

impl Refusal {
    /// The `reason` label of `mesh_central_refused_bundles_total`: one of a fixed set.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Subject { .. } => "subject",
            Refusal::Undecodable(_) => "undecodable",
            Refusal::Version { .. } => "version",
            Refusal::Edge { .. } | Refusal::EventEdge { .. } => "edge-mismatch",
            Refusal::Range { .. } => "range",
            Refusal::MissingHeader { .. } | Refusal::Count { .. } => "count",
            Refusal::Sequence { .. } => "sequence",
            Refusal::Event { .. } => "invalid-event",
        }
    }
}

/// The edge a bundle on `subject` comes from, if the subject is `mesh.up.<edge>` with a
/// valid edge id.
pub fn subject_edge(subject: &str) -> Option<&str> {
    subject::edge_of_up(subject).filter(|e| subject::validate_id("edge", e).is_ok())
}

/// Decodes a bundle that arrived on `subject` and checks that it is what it claims: sent
/// on its own edge's subject, every event from that edge, exactly `missing + events`
/// sequences in `first..=last` with the events `first + missing ..= last` in order
/// (`missing` is `mesh-missing`, 0 when absent; 1 for an empty one-sequence bundle with
/// `mesh-dlq-reason`, an edge's dead-letter marker from before the header), and every
/// event valid.
pub fn check(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Bundle, Refusal> {
    let Some(from) = subject_edge(subject) else {
        return Err(Refusal::Subject {
            subject: subject.to_string(),
        });
    };
    let b = Bundle::decode_unchecked(payload).map_err(Refusal::Undecodable)?;
    if b.version != BUNDLE_VERSION {
        return Err(Refusal::Version { version: b.version });
    }
    if b.edge != from {
        return Err(Refusal::Edge {
            subject_edge: from.to_string(),
            edge: b.edge,
        });
    }
    let (first, last) = (b.first_seq, b.last_seq);
    if first == 0 || first > last {
        return Err(Refusal::Range { first, last });
    }
    let header = |name| headers.and_then(|hs| hs.get(name)).map(|v| v.as_str());
    let missing = match header(h::MESH_MISSING) {
        Some(v) => v.parse::<u64>().map_err(|_| Refusal::MissingHeader {
            value: v.to_string(),
        })?,
        None if b.events.is_empty() && first == last && header(h::DLQ_REASON).is_some() => 1,
        None => 0,
    };
    let events = b.events.len() as u64;
    // `first >= 1`, so the range's size fits in a u64.
    if missing.checked_add(events) != Some(last - first + 1) {
        return Err(Refusal::Count {
            first,
            last,
            events,
            missing,
        });
    }
    for (index, (ev, expected)) in b.events.iter().zip(first + missing..).enumerate() {
        if ev.edge != b.edge {
            return Err(Refusal::EventEdge {
                index,
                id: ev.id.to_string(),
                event_edge: ev.edge.clone(),
                edge: b.edge.clone(),
            });
        }
        if ev.seq != expected {
            return Err(Refusal::Sequence {
                index,
                id: ev.id.to_string(),
                got: ev.seq,
                expected,
            });
        }
        ev.validate().map_err(|error| Refusal::Event {
            index,
            id: ev.id.to_string(),
            seq: ev.seq,
            error,
        })?;
    }
    Ok(b)
}

/// What to do with a bundle covering `first..=last` of an edge whose mark is `mark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing in it is above the mark: it was landed before; ack it.
    Skip,
    /// It starts past `mark + 1`: a bundle before it is missing; it waits.
    Wait,
    /// Land its events from sequence `from` (`mark + 1`) on; those below were landed.
    Land { from: u64 },
}

/// The landing rule of the module doc, on the numbers alone.
pub fn decide(mark: u64, first: u64, last: u64) -> Decision {
    if last <= mark {
        Decision::Skip
    } else if first > mark + 1 {
        Decision::Wait
    } else {
        Decision::Land { from: mark + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(edge: &str, seq: u64) -> schemas::Event {
        schemas::NewEvent {
            content_type: Some("text/plain".into()),
            ..schemas::NewEvent::new("t", "jobs.run", &b"x"[..])
        }
        .into_event(edge, "a1", seq, chrono::Utc::now())
    }

    fn bundle(edge: &str, first: u64, last: u64, seqs: &[u64]) -> Bundle {
        Bundle {
            version: BUNDLE_VERSION,
            edge: edge.into(),
            first_seq: first,
            last_seq: last,
            events: seqs.iter().map(|&s| ev(edge, s)).collect(),
        }
    }

    /// `check` of `b` as sent on `mesh.up.<subject_edge>` with its own headers.
    fn checked(subject_edge: &str, b: &Bundle) -> Result<Bundle, Refusal> {
        check(
            &subject::up(subject_edge),
            Some(&b.headers()),
            &b.encode().unwrap(),
        )
    }

    #[test]
    fn a_consistent_bundle_passes() {
        let b = bundle("e1", 3, 5, &[3, 4, 5]);
        assert_eq!(checked("e1", &b), Ok(b));
    }

    #[test]
    fn declared_missing_sequences_at_the_start_pass() {
        // Expelled at the edge: `headers()` declares the two missing sequences.
        let b = bundle("e1", 3, 5, &[5]);
        assert_eq!(checked("e1", &b), Ok(b));
        // An edge's dead-letter marker, with and without `mesh-missing`.
        let t = bundle("e1", 7, 7, &[]);
        assert_eq!(checked("e1", &t), Ok(t.clone()));
        let mut hs = HeaderMap::new();
        hs.insert(h::DLQ_REASON, "refused-by-centre: too big");
        assert_eq!(
            check(&subject::up("e1"), Some(&hs), &t.encode().unwrap()),
            Ok(t)
        );
    }

    #[test]
    fn an_empty_claim_over_a_huge_range_is_refused() {
        let b = bundle("e1", 1, 1 << 63, &[]);
        let r = check(&subject::up("e1"), None, &b.encode().unwrap()).unwrap_err();
        assert_eq!(
            r.to_string(),
            "bundle claims 1..=9223372036854775808 but holds 0 events"
        );
        assert_eq!(r.label(), "count");
    }

    #[test]
    fn each_inconsistency_is_named() {
        let no_headers = |subject_edge: &str, b: &Bundle| {
            check(&subject::up(subject_edge), None, &b.encode().unwrap()).unwrap_err()
        };
        let cases: Vec<(Refusal, &str, &str)> = vec![
            (
                checked("e2", &bundle("e1", 1, 1, &[1])).unwrap_err(),
                "edge-mismatch",
                "bundle subject edge e2 but bundle edge \"e1\"",
            ),
            (
                no_headers("e1", &bundle("e1", 1, 3, &[1, 3])),
                "count",
                "bundle claims 1..=3 but holds 2 events",
            ),
            (
                no_headers("e1", &bundle("e1", 1, 3, &[1, 2, 2])),
                "sequence",
                "has seq 2, expected 3",
            ),
            (
                no_headers("e1", &bundle("e1", 1, 3, &[1, 3, 2])),
                "sequence",
                "has seq 3, expected 2",
            ),
            (
                no_headers("e1", &bundle("e1", 0, 3, &[0, 1, 2, 3])),
                "range",
                "0..=3",
            ),
            (no_headers("e1", &bundle("e1", 5, 4, &[])), "range", "5..=4"),
            (
                check("mesh.up.a.b", None, b"x").unwrap_err(),
                "subject",
                "mesh.up.a.b",
            ),
            (
                check(&subject::up("e1"), None, b"\xc1").unwrap_err(),
                "undecodable",
                "cannot decode bundle",
            ),
        ];
        for (r, label, needle) in cases {
            assert_eq!(r.label(), label, "{r}");
            assert!(r.to_string().contains(needle), "{r}");
        }

        let mut b = bundle("e1", 1, 2, &[1, 2]);
        b.events[1].edge = "e2".into();
        let r = no_headers("e1", &b);
        assert_eq!(r.label(), "edge-mismatch");
        assert!(
            r.to_string()
                .contains("is from edge \"e2\" but bundle edge e1"),
            "{r}"
        );

        let mut b = bundle("e1", 1, 2, &[1, 2]);
        b.events[1].subject = "a..b".into();
        let r = no_headers("e1", &b);
        assert_eq!(r.label(), "invalid-event");
        assert!(
            r.to_string().contains("event 1") && r.to_string().contains("empty token"),
            "{r}"
        );

        let mut b = bundle("e1", 1, 1, &[1]);
        b.version = 9;
        assert_eq!(no_headers("e1", &b).label(), "version");

        let b = bundle("e1", 1, 2, &[2]);
        let mut hs = HeaderMap::new();
        hs.insert(h::MESH_MISSING, "many");
        let r = check(&subject::up("e1"), Some(&hs), &b.encode().unwrap()).unwrap_err();
        assert_eq!(
            (r.label(), r.to_string().contains("\"many\"")),
            ("count", true),
            "{r}"
        );
    }

    #[test]
    fn a_bundle_at_or_below_the_mark_is_skipped() {
        assert_eq!(decide(10, 5, 10), Decision::Skip);
        assert_eq!(decide(10, 1, 3), Decision::Skip);
        assert_eq!(decide(10, 10, 10), Decision::Skip);
    }

    #[test]
    fn a_bundle_past_a_gap_waits() {
        assert_eq!(decide(10, 12, 20), Decision::Wait);
        assert_eq!(decide(0, 2, 2), Decision::Wait);
    }

    #[test]
    fn the_next_bundle_lands_whole() {
        assert_eq!(decide(10, 11, 20), Decision::Land { from: 11 });
        assert_eq!(decide(0, 1, 1), Decision::Land { from: 1 });
        // An empty bundle over a dead-lettered sequence moves the mark on.
        assert_eq!(decide(4, 5, 5), Decision::Land { from: 5 });
    }

    #[test]
    fn a_partly_landed_bundle_lands_only_what_is_above_the_mark() {
        assert_eq!(decide(15, 11, 20), Decision::Land { from: 16 });
        assert_eq!(decide(19, 11, 20), Decision::Land { from: 20 });
    }

    #[test]
    fn edge_values_do_not_overflow() {
        assert_eq!(decide(u64::MAX, 1, u64::MAX), Decision::Skip);
        assert_eq!(
            decide(u64::MAX - 1, u64::MAX, u64::MAX),
            Decision::Land { from: u64::MAX }
        );
        assert_eq!(decide(0, u64::MAX, u64::MAX), Decision::Wait);
        assert_eq!(decide(0, 0, 0), Decision::Skip);
    }
}
