//! Fair sharing of the group commit: per-agent queues served by deficit round robin.
//!
//! The committer takes the requests waiting at each moment into per-agent queues and
//! fills each group commit by visiting the agents in turn: a visit adds [`QUANTUM`]
//! events to the agent's credit and takes its requests from the front while their
//! events fit the credit and the commit. So, when more is waiting than one commit
//! holds, a light agent's single event goes into the next commit instead of waiting
//! behind a heavy agent's queued batches, and each agent's share of a full commit is
//! the same in events whatever its request size. One agent's requests keep their order
//! (its queue is first in, first out); across agents there is no order to keep.

use std::collections::{HashMap, VecDeque};

/// Events of credit an agent gets per visit.
pub const QUANTUM: usize = 256;

/// What the scheduler needs of a request: its agent, events and data bytes.
pub trait Cost {
    fn agent(&self) -> &str;
    fn events(&self) -> usize;
    fn bytes(&self) -> usize;
}

/// Per-agent queues of requests waiting for a group commit.
#[derive(Debug)]
pub struct Fair<J> {
    queues: HashMap<String, VecDeque<J>>,
    /// The agents with requests waiting, in the order of their next visit.
    ring: VecDeque<String>,
    credit: HashMap<String, usize>,
    /// The last commit filled up during the front agent's visit: the next one goes on
    /// with that visit (no new credit).
    resume: bool,
    len: usize,
}

impl<J: Cost> Default for Fair<J> {
    fn default() -> Self {
        Fair {
            queues: HashMap::new(),
            ring: VecDeque::new(),
            credit: HashMap::new(),
            resume: false,
            len: 0,
        }
    }
}

impl<J: Cost> Fair<J> {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `job` behind its agent's earlier ones.
    pub fn push(&mut self, job: J) {
        let q = self.queues.entry(job.agent().to_string()).or_default();
        if q.is_empty() {
            self.ring.push_back(job.agent().to_string());
        }
        q.push_back(job);
        self.len += 1;
    }

    /// The requests of the next group commit: at most `max_events` events and
    /// `max_bytes` data bytes, but always at least one request when any waits.
    pub fn take(&mut self, max_events: usize, max_bytes: usize) -> Vec<J> {
        let mut batch = Vec::new();
        let (mut events, mut bytes) = (0usize, 0usize);
        while let Some(agent) = self.ring.front().cloned() {
            let credit = self.credit.entry(agent.clone()).or_insert(0);
            if !std::mem::take(&mut self.resume) {
                *credit += QUANTUM;
            }
            let q = self
                .queues
                .get_mut(&agent)
                .expect("a queue for every agent in the ring");
            while let Some(head) = q.front() {
                let (e, b) = (head.events(), head.bytes());
                if e > *credit {
                    break;
                }
                if !batch.is_empty() && (events + e > max_events || bytes + b > max_bytes) {
                    // The commit is full; the next one goes on with this visit.
                    self.resume = true;
                    return batch;
                }
                *credit -= e;
                events += e;
                bytes += b;
                batch.push(q.pop_front().expect("a head"));
                self.len -= 1;
            }
            self.ring.pop_front();
            if q.is_empty() {
                self.queues.remove(&agent);
                self.credit.remove(&agent);
            } else {
                self.ring.push_back(agent);
            }
            if events >= max_events || bytes >= max_bytes {
                break;
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct J(&'static str, usize, u32);

    impl Cost for J {
        fn agent(&self) -> &str {
            self.0
        }
        fn events(&self) -> usize {
            self.1
        }
        fn bytes(&self) -> usize {
            self.1 * 100
        }
    }

    fn names(b: &[J]) -> Vec<(&'static str, u32)> {
        b.iter().map(|j| (j.0, j.2)).collect()
    }

    #[test]
    fn a_light_agents_event_goes_into_the_next_commit_not_behind_the_queue() {
        let mut f = Fair::default();
        // A flooder's 100 requests of 100 events are waiting, then one calm event.
        for k in 0..100 {
            f.push(J("flood", 100, k));
        }
        f.push(J("calm", 1, 0));
        let b = f.take(1000, usize::MAX);
        // Commits hold 1000 events: the flooder's credit (256) takes 2 requests, then
        // calm's event, then the flooder again.
        assert!(names(&b).contains(&("calm", 0)), "{:?}", names(&b));
        assert_eq!(names(&b)[..3], [("flood", 0), ("flood", 1), ("calm", 0)]);
        assert_eq!(b.iter().map(|j| j.1).sum::<usize>(), 901);
        assert_eq!(f.len(), 91);
    }

    #[test]
    fn each_agent_keeps_its_order_and_nothing_is_lost() {
        let mut f = Fair::default();
        for k in 0..50 {
            f.push(J("a", 1 + (k as usize * 37) % 300, k));
            f.push(J("b", 4096, k));
            if k % 3 == 0 {
                f.push(J("c", 1, k));
            }
        }
        let total = f.len();
        let mut seen: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut n = 0;
        while !f.is_empty() {
            let b = f.take(8192, 4 << 20);
            assert!(!b.is_empty());
            let events: usize = b.iter().map(|j| j.1).sum();
            assert!(events <= 8192 || b.len() == 1, "{events} events");
            for j in b {
                seen.entry(j.0).or_default().push(j.2);
                n += 1;
            }
        }
        assert_eq!(n, total);
        for (agent, ks) in seen {
            assert!(ks.windows(2).all(|w| w[0] < w[1]), "{agent}: {ks:?}");
        }
    }

    #[test]
    fn shares_of_full_commits_are_equal_in_events_whatever_the_request_size() {
        let mut f = Fair::default();
        for k in 0..2000 {
            f.push(J("big", 512, k));
            for n in 0..8 {
                f.push(J("small", 8, k * 8 + n));
            }
        }
        // 20 full commits: 164k events, of 1M and 128k waiting.
        let mut by: HashMap<&str, usize> = HashMap::new();
        for _ in 0..20 {
            for j in f.take(8192, usize::MAX) {
                *by.entry(j.0).or_default() += j.1;
            }
        }
        let (big, small) = (by["big"] as f64, by["small"] as f64);
        assert!((big / small - 1.0).abs() < 0.1, "big {big} small {small}");
    }

    #[test]
    fn a_request_larger_than_a_commit_still_goes_alone() {
        let mut f = Fair::default();
        f.push(J("a", 5000, 0));
        f.push(J("b", 1, 0));
        let first = f.take(1000, usize::MAX);
        // "a" needs 20 visits of credit; "b" goes first, then "a" alone.
        assert_eq!(names(&first), [("b", 0)]);
        assert_eq!(names(&f.take(1000, usize::MAX)), [("a", 0)]);
        assert!(f.is_empty());
    }
}
