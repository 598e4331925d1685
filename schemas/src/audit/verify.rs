//! [`verify`]: a pure walk over a chain of audit records that names the first bad one.

use bytes::Bytes;

use super::{AuditRecord, Digest, GENESIS_HASH};

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record is intact and chained; `count` records, head `(seq, hash)`.
    Ok {
        count: u64,
        head_seq: u64,
        head_hash: String,
    },
    /// The first bad record.
    Bad(Problem),
}

/// What is wrong with the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Its content does not match its hash.
    #[error("record {seq} (stream seq {stream_seq}) was changed: its hash {stored} does not match its content ({computed})")]
    Changed {
        seq: u64,
        stream_seq: u64,
        stored: String,
        computed: String,
    },
    /// Records are missing: the chain jumps from `after` to `found`.
    #[error("record {expected} is missing: after record {after} comes record {found} (stream seq {stream_seq})")]
    Missing {
        expected: u64,
        after: u64,
        found: u64,
        stream_seq: u64,
    },
    /// A record is out of order.
    #[error("records are reordered: record {found} stands where record {expected} belongs (stream seq {stream_seq})")]
    Reordered {
        expected: u64,
        found: u64,
        stream_seq: u64,
    },
    /// Not an audit record, or not chained to its predecessor.
    #[error("record at stream seq {stream_seq} is foreign: {reason}")]
    Foreign { stream_seq: u64, reason: String },
    /// The chain does not contain the digest's head as exported.
    #[error("the chain was rewritten before the digest: {reason}")]
    Rewritten { reason: String },
}

impl Problem {
    /// The stream sequence of the bad record, where there is one.
    pub fn stream_seq(&self) -> Option<u64> {
        match self {
            Problem::Changed { stream_seq, .. }
            | Problem::Missing { stream_seq, .. }
            | Problem::Reordered { stream_seq, .. }
            | Problem::Foreign { stream_seq, .. } => Some(*stream_seq),
            Problem::Rewritten { .. } => None,
        }
    }
}

/// Walks `messages` (stream order) and returns the first problem, or OK with the head.
/// With `digest`, the record at `digest.seq` must carry exactly `digest.hash`.
pub fn verify(messages: &[(u64, Bytes)], digest: Option<&Digest>) -> Verdict {
    let decoded: Vec<(u64, Result<AuditRecord, String>)> = messages
        .iter()
        .map(|(s, p)| (*s, AuditRecord::decode(p).map_err(|e| e.to_string())))
        .collect();
    let mut prev: (u64, String) = (0, GENESIS_HASH.into());
    for (i, (stream_seq, r)) in decoded.iter().enumerate() {
        let stream_seq = *stream_seq;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                return Verdict::Bad(Problem::Foreign {
                    stream_seq,
                    reason: format!("not an audit record ({e})"),
                })
            }
        };
        let expected = prev.0 + 1;
        if r.seq != expected {
            // Reordered when the expected record is still to come; missing otherwise.
            let later = decoded[i + 1..]
                .iter()
                .any(|(_, x)| matches!(x, Ok(x) if x.seq == expected));
            if later || r.seq < expected {
                return Verdict::Bad(Problem::Reordered {
                    expected,
                    found: r.seq,
                    stream_seq,
                });
            }
            return Verdict::Bad(Problem::Missing {
                expected,
                after: prev.0,
                found: r.seq,
                stream_seq,
            });
        }
        let computed = r.compute_hash();
        if computed != r.hash {
            return Verdict::Bad(Problem::Changed {
                seq: r.seq,
                stream_seq,
                stored: r.hash.clone(),
                computed,
            });
        }
        if r.prev_hash != prev.1 {
            return Verdict::Bad(Problem::Foreign {
                stream_seq,
                reason: format!(
                    "record {} names previous hash {} but record {} has hash {}",
                    r.seq, r.prev_hash, prev.0, prev.1
                ),
            });
        }
        if let Some(d) = digest {
            if d.seq == r.seq && d.hash != r.hash {
                return Verdict::Bad(Problem::Rewritten {
                    reason: format!(
                        "record {} has hash {}, the digest says {}",
                        r.seq, r.hash, d.hash
                    ),
                });
            }
        }
        prev = (r.seq, r.hash.clone());
    }
    if let Some(d) = digest {
        if prev.0 < d.seq {
            return Verdict::Bad(Problem::Rewritten {
                reason: format!(
                    "the digest's head is record {} but the chain ends at record {}",
                    d.seq, prev.0
                ),
            });
        }
    }
    Verdict::Ok {
        count: decoded.len() as u64,
        head_seq: prev.0,
        head_hash: prev.1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::kind;
    use serde_json::Map;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let r = AuditRecord::seal(
                    seq,
                    &prev,
                    kind::HUB_STARTED,
                    "test",
                    serde_json::json!({"n": seq, "z": {"b": 1, "a": 2}})
                        .as_object()
                        .unwrap()
                        .clone(),
                );
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn msgs(rs: &[AuditRecord]) -> Vec<(u64, Bytes)> {
        rs.iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, r.encode()))
            .collect()
    }

    /// `rs` with every hash recomputed and re-chained, as a forger would.
    fn resealed(rs: Vec<AuditRecord>) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        rs.into_iter()
            .map(|mut r| {
                r.prev_hash = prev.clone();
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let rs = chain(5);
        match verify(&msgs(&rs), None) {
            Verdict::Ok {
                count,
                head_seq,
                head_hash,
            } => {
                assert_eq!((count, head_seq), (5, 5));
                assert_eq!(head_hash, rs[4].hash);
            }
            bad => panic!("{bad:?}"),
        }
        assert_eq!(
            verify(&[], None),
            Verdict::Ok {
                count: 0,
                head_seq: 0,
                head_hash: GENESIS_HASH.into()
            }
        );
    }

    #[test]
    fn a_changed_record_is_named_with_both_hashes() {
        let mut rs = chain(5);
        rs[2].actor = "mallory".into();
        let p = Problem::Changed {
            seq: 3,
            stream_seq: 3,
            stored: rs[2].hash.clone(),
            computed: rs[2].compute_hash(),
        };
        assert_eq!(p.stream_seq(), Some(3));
        assert_eq!(verify(&msgs(&rs), None), Verdict::Bad(p));
    }

    #[test]
    fn a_removed_record_is_missing() {
        let mut rs = chain(5);
        rs.remove(2);
        assert_eq!(
            verify(&msgs(&rs), None),
            Verdict::Bad(Problem::Missing {
                expected: 3,
                after: 2,
                found: 4,
                stream_seq: 3,
            })
        );
    }

    #[test]
    fn swapped_records_are_reordered() {
        let mut rs = chain(5);
        rs.swap(1, 2);
        assert_eq!(
            verify(&msgs(&rs), None),
            Verdict::Bad(Problem::Reordered {
                expected: 2,
                found: 3,
                stream_seq: 2,
            })
        );
    }

    #[test]
    fn a_foreign_record_is_named() {
        // Chained to the genesis instead of its predecessor.
        let mut rs = chain(5);
        rs.push(AuditRecord::seal(
            6,
            GENESIS_HASH,
            "x",
            "mallory",
            Map::new(),
        ));
        assert!(matches!(
            verify(&msgs(&rs), None),
            Verdict::Bad(Problem::Foreign { stream_seq: 6, ref reason }) if reason.contains("names previous hash")
        ));
        // Not an audit record at all.
        let mut m = msgs(&chain(2));
        m.push((3, Bytes::from_static(b"hello")));
        assert!(matches!(
            verify(&m, None),
            Verdict::Bad(Problem::Foreign { stream_seq: 3, ref reason }) if reason.starts_with("not an audit record")
        ));
    }

    #[test]
    fn a_rewritten_chain_is_caught_only_by_the_digest() {
        let rs = chain(5);
        let d = Digest {
            stream: "s".into(),
            seq: 3,
            hash: rs[2].hash.clone(),
        };
        let rewritten = resealed(
            chain(5)
                .into_iter()
                .map(|mut r| {
                    r.actor = "other".into();
                    r
                })
                .collect(),
        );
        assert!(matches!(
            verify(&msgs(&rewritten), None),
            Verdict::Ok { .. }
        ));
        assert!(matches!(
            verify(&msgs(&rewritten), Some(&d)),
            Verdict::Bad(Problem::Rewritten { .. })
        ));
        // A chain cut back before the digest's head.
        assert!(matches!(
            verify(&msgs(&rs[..2]), Some(&d)),
            Verdict::Bad(ref p @ Problem::Rewritten { .. }) if p.stream_seq().is_none()
        ));
        assert!(matches!(verify(&msgs(&rs), Some(&d)), Verdict::Ok { .. }));
    }
}
