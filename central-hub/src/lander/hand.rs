//! Bundles in hand: what the lander keeps, per edge, of the bundles that arrived ahead of
//! a gap, until the edge's mark reaches them; pure (no I/O, the clock passed in).
//!
//! # Invariants
//! * Per edge, bundles are ordered by `(first, last)`; [`Hand::next_ready`] hands out the
//!   lowest one only when `first <= mark + 1`, so the caller sees them in edge order and
//!   never one past a gap. One ready at or below the mark (a duplicate) comes out too, for
//!   the caller to ack.
//! * One bundle per range: a second delivery of the same edge and range replaces the one
//!   kept and gives the old one back ([`Keep::Replaced`]), so a range lands at most once.
//! * Bounded: at most `max_bundles` bundles and `max_bytes` bytes in all; a bundle beyond
//!   either is given back ([`Keep::Full`]) and not kept. A replacement never counts twice.
//! * Nothing is kept for ever: [`Hand::expired`] gives back every bundle of an edge that
//!   has made no progress ([`Hand::progressed`]) for the given time since its first
//!   bundle was kept.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The bundles kept ahead of gaps, of every edge; `T` is what the caller keeps of each.
#[derive(Debug)]
pub struct Hand<T> {
    edges: HashMap<String, EdgeHand<T>>,
    bundles: usize,
    bytes: u64,
    max_bundles: usize,
    max_bytes: u64,
}

#[derive(Debug)]
struct EdgeHand<T> {
    kept: BTreeMap<(u64, u64), Kept<T>>,
    /// When the edge last progressed (or its first bundle was kept).
    since: Instant,
}

#[derive(Debug)]
struct Kept<T> {
    bytes: u64,
    item: T,
}

/// What [`Hand::keep`] did with a bundle.
#[derive(Debug, PartialEq, Eq)]
pub enum Keep<T> {
    /// Kept.
    Kept,
    /// Kept in place of the one of the same edge and range, given back.
    Replaced(T),
    /// Not kept: the bound is reached; given back.
    Full(T),
}

impl<T> Hand<T> {
    pub fn new(max_bundles: usize, max_bytes: u64) -> Hand<T> {
        Hand {
            edges: HashMap::new(),
            bundles: 0,
            bytes: 0,
            max_bundles,
            max_bytes,
        }
    }

    /// Keeps `item`, the bundle `first..=last` of `edge` of `bytes` bytes.
    pub fn keep(
        &mut self,
        edge: &str,
        first: u64,
        last: u64,
        bytes: u64,
        item: T,
        now: Instant,
    ) -> Keep<T> {
        if let Some(old) = self
            .edges
            .get_mut(edge)
            .and_then(|e| e.kept.get_mut(&(first, last)))
        {
            self.bytes = self.bytes - old.bytes + bytes;
            old.bytes = bytes;
            return Keep::Replaced(std::mem::replace(&mut old.item, item));
        }
        if self.bundles >= self.max_bundles || self.bytes + bytes > self.max_bytes {
            return Keep::Full(item);
        }
        self.bundles += 1;
        self.bytes += bytes;
        self.edges
            .entry(edge.to_string())
            .or_insert_with(|| EdgeHand {
                kept: BTreeMap::new(),
                since: now,
            })
            .kept
            .insert((first, last), Kept { bytes, item });
        Keep::Kept
    }

    /// Whether [`Hand::next_ready`] would give a bundle of `edge` at `mark`.
    pub fn is_ready(&self, edge: &str, mark: u64) -> bool {
        self.edges
            .get(edge)
            .and_then(|e| e.kept.keys().next())
            .is_some_and(|(first, _)| *first <= mark.saturating_add(1))
    }

    /// Takes the lowest bundle of `edge` if nothing is missing before it at `mark`
    /// (`first <= mark + 1`).
    pub fn next_ready(&mut self, edge: &str, mark: u64) -> Option<T> {
        let e = self.edges.get_mut(edge)?;
        let entry = e.kept.first_entry()?;
        if entry.key().0 > mark.saturating_add(1) {
            return None;
        }
        let kept = entry.remove();
        if e.kept.is_empty() {
            self.edges.remove(edge);
        }
        self.bundles -= 1;
        self.bytes -= kept.bytes;
        Some(kept.item)
    }

    /// Since when `edge` has waited at its gap (its last progress, or its first bundle
    /// kept); `None` when nothing of it is in hand.
    pub fn waiting_since(&self, edge: &str) -> Option<Instant> {
        self.edges.get(edge).map(|e| e.since)
    }

    /// The mark of `edge` moved: its wait starts again.
    pub fn progressed(&mut self, edge: &str, now: Instant) {
        if let Some(e) = self.edges.get_mut(edge) {
            e.since = now;
        }
    }

    /// Takes every bundle of each edge that has not progressed for `after`, in order.
    pub fn expired(&mut self, now: Instant, after: Duration) -> Vec<(String, Vec<T>)> {
        let old: Vec<String> = self
            .edges
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.since) >= after)
            .map(|(edge, _)| edge.clone())
            .collect();
        old.into_iter()
            .map(|edge| {
                let items = self.take_edge(&edge);
                (edge, items)
            })
            .collect()
    }

    /// Takes every bundle of `edge`, in order.
    pub fn take_edge(&mut self, edge: &str) -> Vec<T> {
        let Some(e) = self.edges.remove(edge) else {
            return Vec::new();
        };
        self.bundles -= e.kept.len();
        e.kept
            .into_values()
            .map(|k| {
                self.bytes -= k.bytes;
                k.item
            })
            .collect()
    }

    /// Takes every bundle of every edge.
    pub fn take_all(&mut self) -> Vec<T> {
        let edges: Vec<String> = self.edges.keys().cloned().collect();
        edges.iter().flat_map(|e| self.take_edge(e)).collect()
    }

    /// The edges with bundles kept.
    pub fn edges(&self) -> Vec<String> {
        self.edges.keys().cloned().collect()
    }

    /// Every bundle kept.
    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.edges
            .values()
            .flat_map(|e| e.kept.values().map(|k| &k.item))
    }

    /// Bundles kept of `edge`.
    pub fn len_of(&self, edge: &str) -> usize {
        self.edges.get(edge).map_or(0, |e| e.kept.len())
    }

    /// Bundles kept in all.
    pub fn len(&self) -> usize {
        self.bundles
    }

    pub fn is_empty(&self) -> bool {
        self.bundles == 0
    }

    /// Bytes kept in all.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lander over `Hand` with no I/O: lands a bundle when nothing is missing before
    /// it (only what is above the mark), keeps it otherwise, and hands what is ready out
    /// after each landing. Bundles given back (`Full`, expired) are delivered again
    /// later, as the server redelivers a nakked bundle.
    struct Model {
        hand: Hand<(u64, u64)>,
        mark: u64,
        landed: Vec<u64>,
        queue: std::collections::VecDeque<(u64, u64)>,
    }

    impl Model {
        fn new(max_bundles: usize) -> Model {
            Model {
                hand: Hand::new(max_bundles, u64::MAX),
                mark: 0,
                landed: Vec::new(),
                queue: Default::default(),
            }
        }

        fn land(&mut self, (first, last): (u64, u64)) {
            if last > self.mark {
                self.landed.extend(first.max(self.mark + 1)..=last);
                self.mark = last;
            }
        }

        fn deliver(&mut self, b: (u64, u64), now: Instant) {
            if b.0 > self.mark + 1 {
                match self.hand.keep("e", b.0, b.1, 1, b, now) {
                    Keep::Kept | Keep::Replaced(_) => {}
                    Keep::Full(b) => self.queue.push_back(b),
                }
                return;
            }
            self.land(b);
            while let Some(b) = self.hand.next_ready("e", self.mark) {
                self.land(b);
            }
        }

        fn run(&mut self, arrivals: impl IntoIterator<Item = (u64, u64)>) {
            let now = Instant::now();
            self.queue.extend(arrivals);
            while let Some(b) = self.queue.pop_front() {
                self.deliver(b, now);
            }
        }
    }

    /// A xorshift generator: a seeded, repeatable order without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn shuffle<X>(&mut self, xs: &mut [X]) {
            for i in (1..xs.len()).rev() {
                xs.swap(i, self.below(i + 1));
            }
        }
    }

    /// Bundles of 1 to 3 sequences covering `1..=n`.
    fn ranges(n: u64, rng: &mut Rng) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut first = 1;
        while first <= n {
            let last = (first + rng.below(3) as u64).min(n);
            out.push((first, last));
            first = last + 1;
        }
        out
    }

    #[test]
    fn any_arrival_order_with_duplicates_lands_each_sequence_once_in_order() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let n = 1 + rng.below(60) as u64;
            let mut arrivals = ranges(n, &mut rng);
            // Redeliveries of some bundles, and a resend re-bundled over a wider range.
            for _ in 0..rng.below(10) {
                let b = arrivals[rng.below(arrivals.len())];
                arrivals.push(b);
            }
            if n > 2 {
                arrivals.push((2, n - 1));
            }
            rng.shuffle(&mut arrivals);
            let bound = [usize::MAX, 3, 1, 0][rng.below(4)];
            let mut m = Model::new(bound);
            m.run(arrivals.clone());
            assert_eq!(
                m.landed,
                (1..=n).collect::<Vec<_>>(),
                "seed {seed}, bound {bound}: {arrivals:?}"
            );
            assert!(m.hand.is_empty(), "seed {seed}");
        }
    }

    #[test]
    fn same_range_replaces_and_counts_once() {
        let now = Instant::now();
        let mut h = Hand::new(10, 100);
        assert_eq!(h.keep("e", 3, 4, 10, "a", now), Keep::Kept);
        assert_eq!(h.keep("e", 3, 4, 20, "b", now), Keep::Replaced("a"));
        assert_eq!((h.len(), h.bytes()), (1, 20));
        assert_eq!(h.keep("e", 3, 5, 5, "c", now), Keep::Kept);
        assert_eq!(h.keep("f", 3, 4, 5, "d", now), Keep::Kept);
        assert_eq!((h.len(), h.len_of("e"), h.bytes()), (3, 2, 30));
        assert_eq!(h.next_ready("e", 1), None);
        assert_eq!(h.next_ready("e", 2), Some("b"));
        assert_eq!(h.next_ready("e", 4), Some("c"));
        assert_eq!(h.next_ready("e", 4), None);
        assert_eq!((h.len(), h.bytes()), (1, 5));
    }

    #[test]
    fn the_bound_gives_back_by_count_and_by_bytes() {
        let now = Instant::now();
        let mut h = Hand::new(2, 100);
        assert_eq!(h.keep("e", 3, 3, 60, 3, now), Keep::Kept);
        assert_eq!(h.keep("e", 4, 4, 41, 4, now), Keep::Full(4));
        assert_eq!(h.keep("e", 4, 4, 40, 4, now), Keep::Kept);
        assert_eq!(h.keep("f", 2, 2, 0, 2, now), Keep::Full(2));
        // A replacement is not a new bundle: allowed at the bound.
        assert_eq!(h.keep("e", 4, 4, 40, 44, now), Keep::Replaced(4));
        let mut none = Hand::new(0, 100);
        assert_eq!(none.keep("e", 3, 3, 1, 3, now), Keep::Full(3));
    }

    #[test]
    fn duplicates_at_or_below_the_mark_come_out_in_order() {
        let now = Instant::now();
        let mut h = Hand::new(10, 100);
        for (f, l) in [(7, 9), (3, 4), (5, 6), (10, 10)] {
            h.keep("e", f, l, 1, (f, l), now);
        }
        // The mark was re-read at 8: 3..=4, 5..=6 are landed, 7..=9 partly.
        assert_eq!(h.next_ready("e", 8), Some((3, 4)));
        assert_eq!(h.next_ready("e", 8), Some((5, 6)));
        assert_eq!(h.next_ready("e", 8), Some((7, 9)));
        assert_eq!(h.next_ready("e", 8), None);
        assert_eq!(h.next_ready("e", 9), Some((10, 10)));
        assert!(h.is_empty() && h.edges().is_empty());
    }

    #[test]
    fn an_edge_without_progress_expires_whole_and_progress_restarts_the_wait() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(30);
        let mut h = Hand::new(10, 100);
        h.keep("e", 5, 5, 1, 5, t0);
        h.keep("e", 3, 3, 1, 3, t0 + Duration::from_secs(10));
        h.keep("f", 9, 9, 1, 9, t0 + Duration::from_secs(20));
        assert!(h.expired(t0 + Duration::from_secs(29), wait).is_empty());
        h.progressed("f", t0 + Duration::from_secs(25));
        assert_eq!(
            h.expired(t0 + Duration::from_secs(30), wait),
            vec![("e".to_string(), vec![3, 5])]
        );
        assert_eq!(h.expired(t0 + Duration::from_secs(54), wait), vec![]);
        assert_eq!(
            h.expired(t0 + Duration::from_secs(55), wait),
            vec![("f".to_string(), vec![9])]
        );
        assert_eq!((h.len(), h.bytes()), (0, 0));
    }
}
