//! What the deterministic simulations (`sim.rs`, the metadata group, and
//! `sim_volume.rs`, a file volume) share: seeded draws, the environment
//! variables that choose seeds, drawing a partition, and running and
//! reporting seeds.
//!
//! Each test file includes it with `mod sim_common;`; its world, faults,
//! network, checkers and statistics stay its own.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Failed seeds whose report is shown in full (the rest in two lines).
const FAILURES_IN_FULL: usize = 3;

pub fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())]
}

pub fn chance(rng: &mut ChaCha8Rng, permille: u32) -> bool {
    rng.gen_range(0..1000) < permille
}

/// One side of a new partition among `ids` (often a single node), and the
/// tick it heals at, 20-200 ticks after `tick`; `None` when the draw leaves
/// a side empty, since a split needs someone on each side.
pub fn draw_partition(
    rng: &mut ChaCha8Rng,
    ids: Vec<u64>,
    tick: u64,
) -> Option<(BTreeSet<u64>, u64)> {
    let n = ids.len();
    let side: BTreeSet<u64> = if rng.gen_bool(0.3) {
        [pick(rng, &ids)].into()
    } else {
        ids.into_iter().filter(|_| rng.gen_bool(0.5)).collect()
    };
    let heal_at = tick + rng.gen_range(20..=200);
    (!side.is_empty() && side.len() < n).then_some((side, heal_at))
}

pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

/// The seeds to run: the one in `HOLDFAST_SIM_SEED`, or
/// `0..HOLDFAST_SIM_SEEDS` (`0..default` when unset).
pub fn seeds(default: u64) -> Vec<u64> {
    match env_u64("HOLDFAST_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("HOLDFAST_SIM_SEEDS").unwrap_or(default)).collect(),
    }
}

/// How to replay `seed` of the simulation in `tests/<test>.rs`.
pub fn replay(test: &str, seed: u64) -> String {
    format!(
        "seed={seed}; replay with: HOLDFAST_SIM_SEED={seed} cargo test -p holdfast-core --test {test}"
    )
}

/// How one run ended: its trace digest (for the determinism check), what
/// it exercised, and the failure report if it failed.
#[derive(Debug, Clone)]
pub struct Report<D, S> {
    pub digest: D,
    pub stats: S,
    pub failure: Option<String>,
}

/// Runs one seed of the simulation in `tests/<test>.rs`: `run` builds the
/// world into its slot and drives it, and `finish` takes what the finished
/// world leaves: its digest, its statistics and its last log lines. A
/// checker failure or a panic becomes `failure`, which names the seed and
/// ends with the world's last log lines.
pub fn run_seed<W, D: Default, S: Default>(
    test: &str,
    seed: u64,
    run: impl FnOnce(&mut Option<W>) -> Result<(), String>,
    finish: impl FnOnce(W) -> (D, S, VecDeque<String>),
) -> Report<D, S> {
    let mut world = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| run(&mut world)));
    let why = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(format!("simulation failed: {why}")),
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned();
            let msg = msg.or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Some(format!("simulation panicked: {}", msg.unwrap_or_default()))
        }
    };
    let Some(w) = world else {
        let why = why.unwrap_or_default();
        return Report {
            digest: D::default(),
            stats: S::default(),
            failure: Some(format!("{why}\n{}", replay(test, seed))),
        };
    };
    let (digest, stats, log) = finish(w);
    let failure = why.map(|why| {
        let log = Vec::from(log).join("\n  ");
        format!("{why}\n{}\nlast events:\n  {log}", replay(test, seed))
    });
    Report {
        digest,
        stats,
        failure,
    }
}

/// Runs every seed with `sim` and returns the sum (`add`) of the passing
/// seeds' statistics; fails with the reports of the failing ones. A lone
/// seed prints its summary (`summary`).
pub fn run_seeds<D, S: Default + Debug>(
    seeds: &[u64],
    mut sim: impl FnMut(u64) -> Report<D, S>,
    summary: impl Fn(u64, &Report<D, S>) -> String,
    add: impl Fn(&mut S, &S),
) -> S {
    let mut total = S::default();
    let mut failures = Vec::new();
    for &seed in seeds {
        let r = sim(seed);
        if seeds.len() == 1 {
            println!("{}", summary(seed, &r));
        }
        match r.failure {
            None => add(&mut total, &r.stats),
            Some(e) => failures.push(e),
        }
    }
    println!("{} seeds: {total:?}", seeds.len());
    // The first few failures in full, the rest by their first two lines
    // (what failed, and the seed).
    let shown: Vec<String> = failures
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i < FAILURES_IN_FULL {
                f.clone()
            } else {
                f.lines().take(2).collect::<Vec<_>>().join("\n")
            }
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        shown.join("\n\n")
    );
    total
}

/// Fails unless every count in `exercised` is above zero: the simulation
/// must actually exercise what it claims to.
pub fn assert_exercised(exercised: &[(&str, u64)], total: &impl Debug) {
    for &(what, n) in exercised {
        assert!(n > 0, "no seed exercised {what}: {total:?}");
    }
}

/// The seeds a determinism check runs: the one in `HOLDFAST_SIM_SEED`, or
/// `0..default`.
pub fn replay_seeds(default: u64) -> Vec<u64> {
    match env_u64("HOLDFAST_SIM_SEED") {
        Some(s) => vec![s],
        None => (0..default).collect(),
    }
}

/// Runs every seed twice with `sim` (of `tests/<test>.rs`) and fails unless
/// both runs end alike, and different seeds differ.
pub fn assert_same_runs<D: Ord + Debug, S>(
    test: &str,
    seeds: &[u64],
    mut sim: impl FnMut(u64) -> Report<D, S>,
) {
    let mut digests = BTreeSet::new();
    for &seed in seeds {
        let a = sim(seed);
        let b = sim(seed);
        assert_eq!(
            (&a.digest, &a.failure),
            (&b.digest, &b.failure),
            "two runs of the same seed differ: nondeterminism\n{}",
            replay(test, seed)
        );
        digests.insert(a.digest);
    }
    assert_eq!(
        digests.len(),
        seeds.len(),
        "different seeds gave the same run"
    );
}
