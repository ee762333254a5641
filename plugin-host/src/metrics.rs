//! Per-plugin call metrics: calls, a latency histogram, and failures by
//! kind. Lock-free counters; a snapshot is taken for `plugin list` and for
//! the node's metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in nanoseconds (the last bucket is
/// unbounded).
pub const LATENCY_BUCKETS_NS: [u64; 14] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000,
    5_000_000, 10_000_000, 50_000_000,
];

#[derive(Debug, Default)]
pub struct Metrics {
    calls: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    memory_faults: AtomicU64,
    bad_outputs: AtomicU64,
    rejected_inputs: AtomicU64,
    defaults_served: AtomicU64,
    skipped_quarantined: AtomicU64,
    quarantines: AtomicU64,
    latency_sum_ns: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_NS.len() + 1],
}

/// What went wrong with one call, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Trap,
    Timeout,
    Memory,
    BadOutput,
}

impl Metrics {
    pub(crate) fn record(&self, outcome: Outcome, took: Duration) {
        self.calls.fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_ns.fetch_add(ns, Relaxed);
        let bucket = LATENCY_BUCKETS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(LATENCY_BUCKETS_NS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        let counter = match outcome {
            Outcome::Ok => return,
            Outcome::Trap => &self.traps,
            Outcome::Timeout => &self.timeouts,
            Outcome::Memory => &self.memory_faults,
            Outcome::BadOutput => &self.bad_outputs,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected_input(&self) {
        self.rejected_inputs.fetch_add(1, Relaxed);
    }

    pub(crate) fn default_served(&self) {
        self.defaults_served.fetch_add(1, Relaxed);
    }

    pub(crate) fn skipped_quarantined(&self) {
        self.skipped_quarantined.fetch_add(1, Relaxed);
    }

    pub(crate) fn quarantined(&self) {
        self.quarantines.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            calls: self.calls.load(Relaxed),
            traps: self.traps.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            memory_faults: self.memory_faults.load(Relaxed),
            bad_outputs: self.bad_outputs.load(Relaxed),
            rejected_inputs: self.rejected_inputs.load(Relaxed),
            defaults_served: self.defaults_served.load(Relaxed),
            skipped_quarantined: self.skipped_quarantined.load(Relaxed),
            quarantines: self.quarantines.load(Relaxed),
            latency_sum_ns: self.latency_sum_ns.load(Relaxed),
            latency_buckets: self.latency.iter().map(|b| b.load(Relaxed)).collect(),
        }
    }
}

/// Counters of one plugin (all its versions) since the node started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Calls that ran plugin code (finished, trapped or overran).
    pub calls: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub memory_faults: u64,
    /// Decisions refused for size.
    pub bad_outputs: u64,
    /// Inputs refused for size before any call.
    pub rejected_inputs: u64,
    /// Calls answered by the built-in default (fail open).
    pub defaults_served: u64,
    /// Calls not made because the plugin was quarantined.
    pub skipped_quarantined: u64,
    /// Times the plugin was put into quarantine.
    pub quarantines: u64,
    pub latency_sum_ns: u64,
    /// Counts per bucket of [`LATENCY_BUCKETS_NS`], then the overflow.
    pub latency_buckets: Vec<u64>,
}
