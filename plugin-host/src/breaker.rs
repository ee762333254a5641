//! Quarantine: a plugin that fails K calls within T milliseconds stops
//! being called until an operator reinstates it (or installs or rolls back
//! to another version). Pure logic: the time comes in as an argument.

use std::collections::VecDeque;

/// Whether a plugin is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginState {
    Active,
    Quarantined,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    failures_max: usize,
    window_ms: u64,
    /// Times of the most recent failures, oldest first, at most
    /// `failures_max` of them.
    recent: VecDeque<u64>,
    quarantined: bool,
}

impl Breaker {
    pub fn new(failures_max: usize, window_ms: u64) -> Self {
        let failures_max = failures_max.max(1);
        Self {
            failures_max,
            window_ms,
            recent: VecDeque::with_capacity(failures_max),
            quarantined: false,
        }
    }

    pub fn state(&self) -> PluginState {
        if self.quarantined {
            PluginState::Quarantined
        } else {
            PluginState::Active
        }
    }

    /// Records a failed call at `now_ms`; returns true if this failure put
    /// the plugin into quarantine.
    pub fn failure(&mut self, now_ms: u64) -> bool {
        if self.recent.len() == self.failures_max {
            self.recent.pop_front();
        }
        self.recent.push_back(now_ms);
        let oldest = self.recent.front().copied().unwrap_or(now_ms);
        let trip = !self.quarantined
            && self.recent.len() == self.failures_max
            && now_ms.saturating_sub(oldest) <= self.window_ms;
        self.quarantined |= trip;
        trip
    }

    /// Back to active with a clean record.
    pub fn reinstate(&mut self) {
        self.recent.clear();
        self.quarantined = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds failures at the given times to a K=3, T=1000 breaker and
    /// checks the state after each.
    fn check(times: &[u64], states: &[PluginState]) {
        let mut b = Breaker::new(3, 1000);
        let got: Vec<PluginState> = times
            .iter()
            .map(|t| {
                b.failure(*t);
                b.state()
            })
            .collect();
        assert_eq!(got, states, "failures at {times:?}");
    }

    #[test]
    fn k_failures_within_t_quarantine() {
        use PluginState::{Active as A, Quarantined as Q};
        check(&[0, 10, 20], &[A, A, Q]);
        check(&[0, 500, 1000], &[A, A, Q]);
        check(&[0, 500, 1001], &[A, A, A]);
        check(&[0, 2000, 4000, 4100, 4200], &[A, A, A, A, Q]);
        check(&[0, 2000, 2500, 3500], &[A, A, A, A]);
    }

    #[test]
    fn reinstate_clears_the_record() {
        let mut b = Breaker::new(2, 1000);
        assert!(!b.failure(0));
        assert!(b.failure(1));
        assert!(!b.failure(2), "already quarantined");
        b.reinstate();
        assert_eq!(b.state(), PluginState::Active);
        assert!(!b.failure(3), "one failure after reinstating is not K");
        assert!(b.failure(4));
    }
}
