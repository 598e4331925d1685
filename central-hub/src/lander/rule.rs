//! The landing rule on the numbers alone: what to do with a bundle covering
//! `first..=last` of an edge whose high-water mark is `mark` (see the [`super`] doc).

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
