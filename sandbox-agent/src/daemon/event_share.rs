//! Each sandbox's share of the daemon's one event stream.
//!
//! Events of every sandbox go through one history and one fan-out channel. A sandbox that
//! makes thousands of decisions a second (a resolver flood, a connect loop) must not push its
//! neighbours' events out of either: each sandbox keeps at most a tenth of the history (a new
//! event then replaces its own oldest), and publishes at a bounded rate; what it sends past
//! the rate is counted and the count published with its next event.
use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

use super::observe::Line;

/// Events kept for `events` without `--follow`.
pub const HISTORY: usize = 10_000;
/// Of which one sandbox (or the daemon's own lines) keeps at most this many.
pub const HISTORY_PER_SANDBOX: usize = HISTORY / 10;
/// Events per second one sandbox publishes on average, and at most at once.
pub const EVENTS_PER_SECOND: f64 = 200.0;
pub const EVENT_BURST: f64 = 1000.0;
/// Sandboxes whose budgets are remembered; past it, full budgets (no debt, no drops) go.
const MAX_BUDGETS: usize = 4096;

/// The kept history, with each sandbox's share counted.
#[derive(Default)]
pub struct History {
    lines: VecDeque<Line>,
    held: HashMap<Option<String>, usize>,
}

impl History {
    pub fn push(&mut self, line: Line) {
        let held = self.held.get(&line.sandbox).copied().unwrap_or(0);
        if held >= HISTORY_PER_SANDBOX {
            // Its own oldest goes: a flooding sandbox never evicts another's event.
            if let Some(at) = self.lines.iter().position(|l| l.sandbox == line.sandbox) {
                self.lines.remove(at);
                self.release(line.sandbox.as_ref());
            }
        } else if self.lines.len() >= HISTORY
            && let Some(oldest) = self.lines.pop_front()
        {
            self.release(oldest.sandbox.as_ref());
        }
        *self.held.entry(line.sandbox.clone()).or_default() += 1;
        self.lines.push_back(line);
    }

    fn release(&mut self, sandbox: Option<&String>) {
        let key = sandbox.cloned();
        if let Some(n) = self.held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&key);
            }
        }
    }

    pub fn lines(&self) -> Vec<Line> {
        self.lines.iter().cloned().collect()
    }
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

/// Per-sandbox token buckets for publishing.
#[derive(Default)]
pub struct Budgets {
    buckets: HashMap<String, Bucket>,
}

/// What to do with one event of a sandbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Publish it; first say that this many of the sandbox's events were dropped.
    Publish { dropped_before: u64 },
    /// Over the budget: counted, not published.
    Drop,
}

impl Budgets {
    pub fn admit(&mut self, sandbox: &str, now: Instant) -> Admission {
        if self.buckets.len() >= MAX_BUDGETS && !self.buckets.contains_key(sandbox) {
            self.buckets
                .retain(|_, b| b.dropped > 0 || refilled(b, now) < EVENT_BURST);
        }
        let bucket = self
            .buckets
            .entry(sandbox.to_owned())
            .or_insert_with(|| Bucket {
                tokens: EVENT_BURST,
                refilled: now,
                dropped: 0,
            });
        bucket.tokens = refilled(bucket, now);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            bucket.dropped += 1;
            return Admission::Drop;
        }
        bucket.tokens -= 1.0;
        Admission::Publish {
            dropped_before: std::mem::take(&mut bucket.dropped),
        }
    }
}

fn refilled(b: &Bucket, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
    (b.tokens + elapsed * EVENTS_PER_SECOND).min(EVENT_BURST)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    fn line(sandbox: &str, n: usize) -> Line {
        Line {
            sandbox: Some(sandbox.to_owned()),
            denied: true,
            text: Arc::from(format!("{sandbox}-{n}")),
        }
    }

    #[test]
    fn a_flooding_sandbox_replaces_its_own_events_not_its_neighbours() {
        let mut h = History::default();
        for n in 0..10 {
            h.push(line("quiet", n));
        }
        for n in 0..HISTORY * 3 {
            h.push(line("flood", n));
        }
        let lines = h.lines();
        let quiet = lines
            .iter()
            .filter(|l| l.sandbox.as_deref() == Some("quiet"))
            .count();
        assert_eq!(quiet, 10);
        assert_eq!(lines.len(), 10 + HISTORY_PER_SANDBOX);
        // The flood's newest are kept, in order.
        assert_eq!(
            &*lines.last().unwrap().text,
            format!("flood-{}", HISTORY * 3 - 1)
        );
    }

    #[test]
    fn the_history_stays_bounded_with_many_sandboxes() {
        let mut h = History::default();
        for s in 0..50 {
            for n in 0..HISTORY_PER_SANDBOX {
                h.push(line(&format!("s{s}"), n));
            }
        }
        assert_eq!(h.lines().len(), HISTORY);
        assert_eq!(h.held.values().sum::<usize>(), HISTORY);
    }

    #[test]
    fn events_past_the_budget_are_counted_and_reported_with_the_next_one() {
        assert!(
            (EVENT_BURST - 1000.0).abs() < f64::EPSILON,
            "the loop below is the burst"
        );
        let mut b = Budgets::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(b.admit("a", t0), Admission::Publish { dropped_before: 0 });
        }
        assert_eq!(b.admit("a", t0), Admission::Drop);
        assert_eq!(b.admit("a", t0), Admission::Drop);
        // A neighbour has its own budget.
        assert_eq!(b.admit("b", t0), Admission::Publish { dropped_before: 0 });
        // Refilled after a while; the drops are said once.
        let later = t0 + Duration::from_millis(50);
        assert_eq!(
            b.admit("a", later),
            Admission::Publish { dropped_before: 2 }
        );
        assert_eq!(
            b.admit("a", later),
            Admission::Publish { dropped_before: 0 }
        );
    }
}
