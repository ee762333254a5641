//! Where a volume's leadership lives: it follows the node that sends the
//! volume most of its changes, so that node's writes commit without the
//! extra network round trip of being forwarded.
//!
//! [`WriterAffinity`] is the leader's side of the policy. It counts the
//! changes each node asks for, and at the end of each window of
//! [`limits::AFFINITY_WINDOW_TICKS`] ticks it names a node to hand the
//! leadership to when all of these hold:
//! - at least [`limits::AFFINITY_MIN_CHANGES`] changes arrived in the
//!   window, and one other node asked for at least
//!   [`limits::AFFINITY_SHARE_PERCENT`] percent of them;
//! - the caller says that node may lead (a caught-up voter);
//! - the policy is not quiet: it stays quiet for
//!   [`limits::AFFINITY_QUIET_TICKS`] after this node became leader, and,
//!   after a hand-over that did not take (this node still leads), for twice
//!   as long as the last time, up to [`limits::AFFINITY_QUIET_MAX_TICKS`].
//!
//! Invariant: at most one hand-over per quiet period, so two nodes that
//! write by turns cannot bounce the leadership faster than that.
//! Invariant: pure: ticks in, a decision out; no clock, no I/O.

use std::collections::BTreeMap;

use crate::limits;

/// One volume leader's count of who asks for changes; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct WriterAffinity {
    /// Changes per asking node in the current window.
    counts: BTreeMap<u64, u64>,
    /// Ticks into the current window.
    ticks: u64,
    /// Ticks left before another hand-over may be asked.
    quiet: u64,
    /// The quiet period after the next hand-over that does not take.
    backoff: u64,
    /// A hand-over was asked and this node has led ever since.
    asked: bool,
    /// This node led at the last tick.
    led: bool,
}

impl WriterAffinity {
    pub fn new() -> Self {
        Self {
            backoff: limits::AFFINITY_QUIET_TICKS,
            ..Self::default()
        }
    }

    /// Counts one change asked for by `node`.
    pub fn record(&mut self, node: u64) {
        *self.counts.entry(node).or_default() += 1;
    }

    /// Advances one tick. `me` is this node, `leads` whether it leads the
    /// volume now, and `may_lead` whether a node could take over. Returns
    /// the node to hand the leadership to, if it is time.
    pub fn tick(&mut self, me: u64, leads: bool, may_lead: impl Fn(u64) -> bool) -> Option<u64> {
        if !leads {
            *self = Self {
                backoff: limits::AFFINITY_QUIET_TICKS,
                ..Self::default()
            };
            return None;
        }
        if !self.led {
            self.led = true;
            self.quiet = limits::AFFINITY_QUIET_TICKS;
        }
        self.quiet = self.quiet.saturating_sub(1);
        self.ticks += 1;
        if self.ticks < limits::AFFINITY_WINDOW_TICKS {
            return None;
        }
        let counts = std::mem::take(&mut self.counts);
        self.ticks = 0;
        if self.quiet > 0 {
            return None;
        }
        if self.asked {
            // The last hand-over did not take: wait longer before the next.
            self.asked = false;
            self.backoff = (self.backoff * 2).min(limits::AFFINITY_QUIET_MAX_TICKS);
            self.quiet = self.backoff;
            return None;
        }
        let total: u64 = counts.values().sum();
        // The busiest node; the lowest id among equals, so that the
        // decision depends on the counts alone.
        let (&top, &n) = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
        let dominant = n * 100 >= total * limits::AFFINITY_SHARE_PERCENT;
        if top == me || total < limits::AFFINITY_MIN_CHANGES || !dominant || !may_lead(top) {
            return None;
        }
        self.asked = true;
        self.quiet = self.backoff;
        Some(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;
    const WRITER: u64 = 2;

    /// Runs `ticks` ticks as leader; before each, `per_tick` changes from
    /// each listed node. Returns the ticks (counted from 1) that asked for
    /// a hand-over, with the target.
    fn run(a: &mut WriterAffinity, ticks: u64, per_tick: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut asked = Vec::new();
        for t in 1..=ticks {
            for &(node, n) in per_tick {
                for _ in 0..n {
                    a.record(node);
                }
            }
            if let Some(to) = a.tick(ME, true, |_| true) {
                asked.push((t, to));
            }
        }
        asked
    }

    #[test]
    fn a_dominant_writer_gets_the_leadership_after_the_quiet_period() {
        let mut a = WriterAffinity::new();
        let asked = run(&mut a, 400, &[(WRITER, 10), (ME, 1)]);
        // Quiet until tick 100, then the first full window's end.
        assert_eq!(asked.first(), Some(&(100, WRITER)), "{asked:?}");
    }

    #[test]
    fn a_hand_over_that_does_not_take_backs_off_doubling() {
        let mut a = WriterAffinity::new();
        let asked: Vec<u64> = run(&mut a, 2000, &[(WRITER, 10)])
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        // Asked at 100; still the leader when the quiet 100 ticks end
        // (200), so quiet 200 more: asked again at 400; still the leader at
        // 600, so quiet 400 more: asked at 1000; next at 2200.
        assert_eq!(asked, vec![100, 400, 1000], "{asked:?}");
    }

    #[test]
    fn no_hand_over_without_a_clear_majority_or_enough_changes() {
        let mut a = WriterAffinity::new();
        assert!(run(&mut a, 1000, &[(WRITER, 2), (3, 1)]).is_empty());
        let mut a = WriterAffinity::new();
        assert!(run(&mut a, 1000, &[(WRITER, 3), (3, 2), (ME, 1)]).is_empty());
        let mut a = WriterAffinity::new();
        // 2 per window of 20 ticks: below AFFINITY_MIN_CHANGES.
        let sparse: Vec<(u64, u64)> = vec![(WRITER, 1)];
        let mut asked = Vec::new();
        for t in 0..1000u64 {
            if t % 10 == 0 {
                for &(node, n) in &sparse {
                    for _ in 0..n {
                        a.record(node);
                    }
                }
            }
            asked.extend(a.tick(ME, true, |_| true));
        }
        assert!(asked.is_empty(), "{asked:?}");
        // The leader's own writes keep the leadership where it is.
        let mut a = WriterAffinity::new();
        assert!(run(&mut a, 1000, &[(ME, 10), (WRITER, 1)]).is_empty());
    }

    #[test]
    fn a_node_that_may_not_lead_is_never_named() {
        let mut a = WriterAffinity::new();
        let mut asked = Vec::new();
        for _ in 0..1000 {
            for _ in 0..10 {
                a.record(WRITER);
            }
            asked.extend(a.tick(ME, true, |n| n != WRITER));
        }
        assert!(asked.is_empty(), "{asked:?}");
    }

    #[test]
    fn a_new_leader_starts_quiet_and_forgets_old_counts() {
        let mut a = WriterAffinity::new();
        run(&mut a, 50, &[(WRITER, 10)]);
        // Leadership lost, then won back: the quiet period starts again.
        assert_eq!(a.tick(ME, false, |_| true), None);
        let asked = run(&mut a, 400, &[(WRITER, 10)]);
        assert_eq!(asked.first(), Some(&(100, WRITER)), "{asked:?}");
    }
}
