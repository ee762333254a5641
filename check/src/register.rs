//! Linearizability of a set of independent read/write registers.
//!
//! A history is linearizable when every operation can be given a single
//! instant between its invocation and its completion such that, taken in
//! that order, every read returns the value of the latest write before it
//! (or the initial value). Keys are independent registers, and
//! linearizability is compositional (Herlihy and Wing's locality, the "P"
//! in P-compositionality), so each key is checked on its own.
//!
//! The search for one key is Wing and Gong's, with Lowe's memoization, as
//! in Porcupine: the history becomes a list of call and return entries in
//! time order; the search linearizes, one by one, any op whose call comes
//! before the first remaining return and whose result the register allows,
//! and backtracks when it meets the return of an op it has not placed. A
//! state is the set of ops linearized so far and the register's value; a
//! state seen once is never explored again (the set is kept as a 128-bit
//! Zobrist hash).
//!
//! A write whose outcome is unknown (`complete: None`) may take effect at
//! any instant after its invocation, or never: its return is placed after
//! everything, and the search succeeds once every op that did complete is
//! placed. Such a write that no read returned the value of is dropped
//! first: taking effect or not changes no read, and many pending writes
//! would otherwise multiply the states to explore.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::splitmix;

/// What an operation did to its register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Set the register to this value.
    Write(u64),
    /// Returned this value.
    Read(u64),
}

/// One operation of one client on one register.
///
/// `invoke` and `complete` are in any monotonic clock's units, the same for
/// every op. `complete: None` means the outcome is unknown: a write that
/// failed or timed out may or may not have taken effect, at any time after
/// `invoke`. Callers drop reads that failed; a read with `complete: None`
/// is ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: u64,
    pub key: String,
    pub kind: Kind,
    pub invoke: u64,
    pub complete: Option<u64>,
}

/// A register whose history is not linearizable (or could not be decided
/// within the search budget), with what a person needs to study it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "register {:?}: {}", self.key, self.explanation)
    }
}

impl std::error::Error for Violation {}

/// States the search of one [`check`] call may explore, over all keys,
/// before it gives up. About ten seconds of a debug build; the memo costs
/// some 40 bytes a state.
const SEARCH_STATES_BUDGET: u64 = 10_000_000;
/// A violation is shrunk to a smallest failing set of ops only when the
/// ops invoked before the stuck op completed are at most this many.
const SHRINK_OPS_LIMIT: usize = 400;
/// States all the searches of one shrink may explore.
const SHRINK_STATES_BUDGET: u64 = 2_000_000;
/// Ops listed by name in an explanation, per list.
const LISTED_OPS: usize = 12;

/// Checks that `history` is linearizable, each key being a register that
/// holds `initial` before the history starts.
pub fn check(history: &[Op], initial: u64) -> Result<(), Violation> {
    check_with_budget(history, initial, SEARCH_STATES_BUDGET)
}

fn check_with_budget(history: &[Op], initial: u64, budget: u64) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<KOp>> = BTreeMap::new();
    for (idx, op) in history.iter().enumerate() {
        let (write, value) = match op.kind {
            Kind::Write(v) => (true, v),
            Kind::Read(v) => (false, v),
        };
        if !write && op.complete.is_none() {
            continue;
        }
        if op.complete.is_some_and(|c| c < op.invoke) {
            return Err(Violation {
                key: op.key.clone(),
                explanation: format!("{} completes before it is invoked", describe_raw(idx, op)),
            });
        }
        by_key.entry(&op.key).or_default().push(KOp {
            idx,
            client: op.client,
            write,
            value,
            invoke: op.invoke,
            complete: op.complete,
        });
    }
    let mut budget = budget;
    for (key, ops) in by_key {
        check_key(ops, initial, &mut budget).map_err(|explanation| Violation {
            key: key.to_string(),
            explanation,
        })?;
    }
    Ok(())
}

/// One op of the key being checked; `idx` is its place in the caller's
/// history, so that an explanation can name it.
#[derive(Clone, Copy, Debug)]
struct KOp {
    idx: usize,
    client: u64,
    write: bool,
    value: u64,
    invoke: u64,
    complete: Option<u64>,
}

fn check_key(ops: Vec<KOp>, initial: u64, budget: &mut u64) -> Result<(), String> {
    let read: BTreeSet<u64> = ops.iter().filter(|o| !o.write).map(|o| o.value).collect();
    let ops: Vec<KOp> = ops
        .into_iter()
        .filter(|o| !(o.write && o.complete.is_none() && !read.contains(&o.value)))
        .collect();
    let before = *budget;
    match search(&ops, initial, budget) {
        Outcome::Linearizable => Ok(()),
        Outcome::Budget => Err(format!(
            "search budget exhausted after {} states: cannot tell whether {} ops (up to {} at once, {} of unknown outcome) are linearizable",
            before,
            ops.len(),
            concurrency(&ops),
            ops.iter().filter(|o| o.complete.is_none()).count()
        )),
        Outcome::Stuck(stuck) => Err(explain(&ops, &stuck, initial)),
    }
}

enum Outcome {
    Linearizable,
    /// No order exists; the search got furthest before this op.
    Stuck(Stuck),
    Budget,
}

/// Where the search got furthest: the op (index into the key's ops) whose
/// return it could not pass, how many ops it had placed, and the values the
/// register could hold there.
#[derive(Debug)]
struct Stuck {
    op: usize,
    depth: usize,
    values: BTreeSet<u64>,
}

/// A fast hasher for the memo: its keys are already random (Zobrist).
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
}

type Memo = HashSet<(u128, u64), BuildHasherDefault<MixHasher>>;

/// The Wing–Gong/Lowe search over one key's ops.
fn search(ops: &[KOp], initial: u64, budget: &mut u64) -> Outcome {
    let n = ops.len();
    let finite = ops.iter().filter(|o| o.complete.is_some()).count();
    if finite == 0 {
        return Outcome::Linearizable;
    }
    // Entry 2i is op i's call, 2i+1 its return; `head` closes a circular
    // doubly linked list of the entries in time order. At equal times a
    // call comes first: such ops count as concurrent.
    let head = 2 * n;
    let mut order: Vec<usize> = (0..2 * n).collect();
    order.sort_by_key(|&e| {
        let op = &ops[e / 2];
        let ret = !is_call(e);
        let at = match (ret, op.complete) {
            (false, _) => (false, op.invoke),
            (true, Some(c)) => (false, c),
            (true, None) => (true, 0),
        };
        (at, ret, e)
    });
    let mut next = vec![head; 2 * n + 1];
    let mut prev = vec![head; 2 * n + 1];
    let mut last = head;
    for &e in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    next[last] = head;
    prev[head] = last;
    let zobrist: Vec<u128> = (0..n as u64)
        .map(|i| (u128::from(splitmix(2 * i)) << 64) | u128::from(splitmix(2 * i + 1)))
        .collect();

    // Writes whose value no other write of the key (nor the initial
    // value) has.
    let mut writers: BTreeMap<u64, usize> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.write) {
        *writers.entry(o.value).or_default() += 1;
    }
    let unique: Vec<bool> = ops
        .iter()
        .map(|o| o.write && o.value != initial && writers[&o.value] == 1)
        .collect();
    let mut memo = Memo::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = initial;
    let mut hash = 0u128;
    let mut placed_finite = 0;
    let mut stuck: Option<Stuck> = None;
    // `fresh`: a new level, where the search has just placed an op. Then
    // `(phase, e)` is where the scan for a choice stands: phase 0 tries the
    // writes that completed, phase 1 those of unknown outcome.
    let mut fresh = true;
    let mut phase = 0;
    let mut e = head;
    loop {
        if placed_finite == finite {
            return Outcome::Linearizable;
        }
        // What to place next: `Some((op, forced))`, or `None` to back up.
        let mut choice = None;
        if fresh {
            fresh = false;
            // A read that the register allows now is placed now, and no
            // other choice is tried at this level: any order that places it
            // later can place it here instead (it changes nothing, and every
            // op before it in the list may precede it in real time).
            let mut x = next[head];
            while x != head && is_call(x) && choice.is_none() {
                let o = &ops[x / 2];
                if !o.write && o.value == state {
                    choice = Some((x / 2, true));
                }
                x = next[x];
            }
            if choice.is_none() {
                (phase, e) = (0, next[head]);
            }
        }
        // Otherwise the next write whose call precedes the first return.
        while choice.is_none() {
            if e == head || !is_call(e) {
                if phase == 1 {
                    break;
                }
                (phase, e) = (1, next[head]);
                continue;
            }
            let o = &ops[e / 2];
            let wanted = match (phase, o.write, o.complete) {
                (0, true, Some(_)) => true,
                // A write of unknown outcome whose value no other write
                // has can wait until a read of its value may be placed:
                // moving it later, to just before that read, changes no
                // other read and breaks no real-time order (it never
                // completed). Without a reader now, later will do.
                (1, true, None) => {
                    !unique[e / 2] || {
                        let mut x = next[head];
                        let mut found = false;
                        while x != head && is_call(x) && !found {
                            found = !ops[x / 2].write && ops[x / 2].value == o.value;
                            x = next[x];
                        }
                        found
                    }
                }
                _ => false,
            };
            if wanted {
                choice = Some((e / 2, false));
            }
            e = next[e];
        }
        if let Some((i, forced)) = choice {
            let after = ops[i].value;
            let h = hash ^ zobrist[i];
            if memo.insert((h, after)) {
                if *budget == 0 {
                    return Outcome::Budget;
                }
                *budget -= 1;
                stack.push(Frame {
                    op: i,
                    before: state,
                    forced,
                    phase,
                });
                state = after;
                hash = h;
                for x in [2 * i, 2 * i + 1] {
                    next[prev[x]] = next[x];
                    prev[next[x]] = prev[x];
                }
                placed_finite += usize::from(ops[i].complete.is_some());
                fresh = true;
                continue;
            }
            if !forced {
                // Seen before: try the next write.
                continue;
            }
            // A forced read leads to a state already explored: this level
            // fails.
        } else if e != head {
            // The return of an op not yet placed: nothing placed so far can
            // be followed by it.
            let (i, depth) = (e / 2, stack.len());
            match &mut stuck {
                Some(s) if s.depth > depth => {}
                Some(s) if s.depth == depth => {
                    if s.op == i {
                        s.values.insert(state);
                    }
                }
                _ => {
                    stuck = Some(Stuck {
                        op: i,
                        depth,
                        values: [state].into(),
                    })
                }
            }
        }
        // Back up to the last level that has a choice left.
        loop {
            let Some(f) = stack.pop() else {
                return match stuck {
                    Some(s) => Outcome::Stuck(s),
                    // Unreachable: some op did complete, so the search met
                    // a return before the end of the list.
                    None => Outcome::Linearizable,
                };
            };
            let i = f.op;
            for x in [2 * i + 1, 2 * i] {
                next[prev[x]] = x;
                prev[next[x]] = x;
            }
            state = f.before;
            hash ^= zobrist[i];
            placed_finite -= usize::from(ops[i].complete.is_some());
            if !f.forced {
                (phase, e) = (f.phase, next[2 * i]);
                break;
            }
        }
    }
}

/// Whether list entry `e` is an op's call (`2i`) rather than its return
/// (`2i + 1`).
fn is_call(e: usize) -> bool {
    e.is_multiple_of(2)
}

/// One op placed by the search: the register's value before it, and
/// whether it was the only choice at its level.
struct Frame {
    op: usize,
    before: u64,
    forced: bool,
    /// The scan phase it was chosen in, to go on from there.
    phase: u8,
}

/// The most ops whose intervals overlap at one time.
fn concurrency(ops: &[KOp]) -> usize {
    let mut events: Vec<(u64, bool)> = Vec::new();
    for o in ops {
        events.push((o.invoke, false));
        events.push((o.complete.unwrap_or(u64::MAX), true));
    }
    events.sort();
    let (mut now, mut most) = (0usize, 0usize);
    for (_, end) in events {
        if end {
            now = now.saturating_sub(1);
        } else {
            now += 1;
            most = most.max(now);
        }
    }
    most
}

fn describe_raw(idx: usize, op: &Op) -> String {
    let (what, v) = match op.kind {
        Kind::Write(v) => ("write", v),
        Kind::Read(v) => ("read", v),
    };
    let done = op
        .complete
        .map_or_else(|| "unknown".to_string(), |c| c.to_string());
    format!(
        "op #{idx} (client {} {what} {v}, invoked {}, completed {done})",
        op.client, op.invoke
    )
}

fn describe(op: &KOp) -> String {
    let what = if op.write { "write" } else { "read" };
    let done = op
        .complete
        .map_or_else(|| "unknown".to_string(), |c| c.to_string());
    format!(
        "op #{} (client {} {what} {}, invoked {}, completed {done})",
        op.idx, op.client, op.value, op.invoke
    )
}

fn list(ops: &[&KOp]) -> String {
    let mut s: Vec<String> = ops.iter().take(LISTED_OPS).map(|o| describe(o)).collect();
    if ops.len() > LISTED_OPS {
        s.push(format!("and {} more", ops.len() - LISTED_OPS));
    }
    s.join("; ")
}

fn values(vs: &BTreeSet<u64>) -> String {
    let mut s: Vec<String> = vs.iter().take(LISTED_OPS).map(u64::to_string).collect();
    if vs.len() > LISTED_OPS {
        s.push(format!("and {} more", vs.len() - LISTED_OPS));
    }
    format!("{{{}}}", s.join(", "))
}

fn explain(ops: &[KOp], stuck: &Stuck, initial: u64) -> String {
    let b = &ops[stuck.op];
    let mut s = format!("{} cannot be linearized", describe(b));
    if b.write {
        s.push_str(&format!(
            " (the register could hold {} when it had to be placed)",
            values(&stuck.values)
        ));
    } else {
        s.push_str(&format!(
            ": it returned {}, but by its completion the register could only hold {}",
            b.value,
            values(&stuck.values)
        ));
        let writers: Vec<&KOp> = ops
            .iter()
            .filter(|o| o.write && o.value == b.value)
            .collect();
        if !writers.is_empty() {
            s.push_str(&format!("; {} was written by {}", b.value, list(&writers)));
        } else if b.value == initial {
            s.push_str(&format!("; {} is the initial value", b.value));
        } else {
            s.push_str(&format!("; nothing ever wrote {}", b.value));
        }
    }
    s.push_str(&format!(
        "; the search placed at most {} of {} ops before it",
        stuck.depth,
        ops.len()
    ));
    let end = b.complete.unwrap_or(u64::MAX);
    let concurrent: Vec<&KOp> = ops
        .iter()
        .filter(|o| o.idx != b.idx && o.invoke <= end && o.complete.is_none_or(|c| c >= b.invoke))
        .collect();
    if !concurrent.is_empty() {
        s.push_str(&format!("; concurrent with it: {}", list(&concurrent)));
    }
    let mut earlier: Vec<&KOp> = ops
        .iter()
        .filter(|o| o.write && o.complete.is_some_and(|c| c < b.invoke))
        .collect();
    earlier.sort_by_key(|o| std::cmp::Reverse(o.complete));
    earlier.truncate(3);
    if !earlier.is_empty() {
        s.push_str(&format!(
            "; the last writes completed before it: {}",
            list(&earlier)
        ));
    }
    if let Some(small) = shrink(ops, stuck, initial) {
        let refs: Vec<&KOp> = small.iter().collect();
        s.push_str(&format!(
            "; a smallest failing subset ({} ops): {}",
            small.len(),
            list(&refs)
        ));
    }
    s
}

/// A 1-minimal failing subset of the ops invoked before the stuck op
/// completed, if that prefix is small enough to shrink: removing any one
/// op more makes it linearizable, or leaves a read of a value that some
/// op of the history did write but no op of the subset does (a different,
/// less telling failure). Removes halves, then quarters, ... then single
/// ops (Zeller's ddmin, simplified), so a small culprit among many ops
/// costs few searches.
fn shrink(ops: &[KOp], stuck: &Stuck, initial: u64) -> Option<Vec<KOp>> {
    let end = ops[stuck.op].complete?;
    let mut set: Vec<KOp> = ops.iter().filter(|o| o.invoke <= end).copied().collect();
    if set.len() > SHRINK_OPS_LIMIT {
        return None;
    }
    let written: BTreeSet<u64> = ops.iter().filter(|o| o.write).map(|o| o.value).collect();
    let mut budget = SHRINK_STATES_BUDGET;
    let mut fails = |set: &[KOp]| -> Option<bool> {
        let mut mine: BTreeSet<u64> = set.iter().filter(|o| o.write).map(|o| o.value).collect();
        mine.insert(initial);
        let orphan = set
            .iter()
            .any(|r| !r.write && written.contains(&r.value) && !mine.contains(&r.value));
        if orphan {
            return Some(false);
        }
        match search(set, initial, &mut budget) {
            Outcome::Stuck(_) => Some(true),
            Outcome::Linearizable => Some(false),
            Outcome::Budget => None,
        }
    };
    if !fails(&set)? {
        return None;
    }
    let mut chunk = set.len().div_ceil(2);
    loop {
        let mut removed = false;
        let mut i = 0;
        while i < set.len() {
            let mut without = set.clone();
            without.drain(i..(i + chunk).min(set.len()));
            if fails(&without)? {
                set = without;
                removed = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 && !removed {
            return Some(set);
        }
        chunk = chunk.div_ceil(2).max(1);
        if chunk > 1 && chunk >= set.len() {
            chunk = set.len().div_ceil(2).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, kind: Kind, invoke: u64, complete: Option<u64>) -> Op {
        Op {
            client,
            key: "k".into(),
            kind,
            invoke,
            complete,
        }
    }
    fn w(client: u64, v: u64, invoke: u64, complete: impl Into<Option<u64>>) -> Op {
        op(client, Kind::Write(v), invoke, complete.into())
    }
    fn r(client: u64, v: u64, invoke: u64, complete: u64) -> Op {
        op(client, Kind::Read(v), invoke, Some(complete))
    }

    /// `history` (initial value 0) must be linearizable.
    fn good(history: &[Op]) {
        if let Err(v) = check(history, 0) {
            panic!("rejected a linearizable history: {v}\n{history:#?}");
        }
    }

    /// `history` (initial value 0) must not be; returns the explanation.
    fn bad(history: &[Op]) -> String {
        match check(history, 0) {
            Ok(()) => panic!("accepted a history that is not linearizable: {history:#?}"),
            Err(v) => {
                assert!(!v.explanation.contains("budget"), "{v}");
                v.to_string()
            }
        }
    }

    #[test]
    fn linearizable_histories_pass() {
        good(&[]);
        good(&[r(1, 0, 0, 1)]);
        // Sequential.
        good(&[w(1, 1, 0, 1), r(1, 1, 2, 3), w(2, 2, 4, 5), r(3, 2, 6, 7)]);
        // Overlapping writes: a read after both may see either value.
        good(&[w(1, 1, 0, 10), w(2, 2, 0, 10), r(3, 1, 11, 12)]);
        good(&[w(1, 1, 0, 10), w(2, 2, 0, 10), r(3, 2, 11, 12)]);
        // A read concurrent with a write sees the old or the new value.
        good(&[w(1, 1, 0, 10), r(2, 0, 1, 2), r(2, 1, 3, 4), r(3, 1, 5, 20)]);
        // Touching intervals count as concurrent.
        good(&[w(1, 1, 0, 5), r(2, 0, 5, 6)]);
        // A write of unknown outcome that a later read sees, after a later
        // write: it took effect late.
        good(&[
            w(1, 5, 0, None),
            w(2, 6, 2, 3),
            r(3, 6, 4, 5),
            r(3, 5, 10, 11),
        ]);
        // ... and one never seen: it may never have happened.
        good(&[
            w(1, 5, 0, None),
            r(2, 0, 10, 11),
            w(2, 6, 12, 13),
            r(2, 6, 14, 15),
        ]);
        // Reads of unknown outcome are ignored, whatever they claim.
        good(&[w(1, 1, 0, 1), op(2, Kind::Read(99), 2, None), r(2, 1, 3, 4)]);
    }

    #[test]
    fn stale_read_after_a_completed_write_fails() {
        let e = bad(&[w(1, 1, 0, 1), r(2, 0, 2, 3)]);
        assert!(e.contains("op #1") && e.contains("returned 0"), "{e}");
        assert!(e.contains("could only hold {1}"), "{e}");
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        let e = bad(&[w(1, 1, 0, 1), r(2, 42, 2, 3)]);
        assert!(e.contains("nothing ever wrote 42"), "{e}");
    }

    #[test]
    fn new_old_inversion_fails() {
        // A slow write of 2: one read sees it, a later read sees 1 again.
        let e = bad(&[
            w(1, 1, 0, 1),
            w(2, 2, 2, 100),
            r(3, 2, 10, 11),
            r(4, 1, 20, 21),
        ]);
        assert!(e.contains("op #3") && e.contains("returned 1"), "{e}");
        assert!(e.contains("smallest failing subset (4 ops)"), "{e}");
    }

    #[test]
    fn read_from_the_future_fails() {
        let e = bad(&[r(1, 7, 0, 1), w(2, 7, 5, 6)]);
        assert!(e.contains("could only hold {0}"), "{e}");
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut h = vec![w(1, 1, 0, 1), r(2, 1, 2, 3)];
        // On another key, 1 was never written.
        let mut other = r(2, 1, 2, 3);
        other.key = "other".into();
        h.push(other);
        let v = check(&h, 0).unwrap_err();
        assert_eq!(v.key, "other");
        // The same reads on their own keys are fine.
        h[2].kind = Kind::Read(0);
        assert_eq!(check(&h, 0), Ok(()));
    }

    #[test]
    fn a_completion_before_the_invocation_is_refused() {
        let v = check(&[w(1, 1, 5, 4)], 0).unwrap_err();
        assert!(v.explanation.contains("completes before"), "{v}");
    }

    #[test]
    fn the_search_gives_up_within_its_budget() {
        let h = linearizable_history(3, 8, 50);
        let v = check_with_budget(&h, 0, 10).unwrap_err();
        assert!(v.explanation.contains("search budget exhausted"), "{v}");
    }

    /// A deterministic generator for the randomized tests.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = splitmix(self.0);
            self.0 % n
        }
    }

    /// A history of `clients` clients doing `per_client` ops each on an
    /// atomic register: every op takes effect at a random instant inside
    /// its interval. Some writes time out: they take effect at some later
    /// instant or never, and are recorded as unknown. Values are unique.
    fn linearizable_history(seed: u64, clients: u64, per_client: u64) -> Vec<Op> {
        let mut rng = Rng(seed);
        // (op, instant it takes effect, or None for never)
        let mut ops: Vec<(Op, Option<u64>)> = Vec::new();
        let mut next_value = 1;
        for c in 0..clients {
            let mut t = rng.below(10);
            for _ in 0..per_client {
                let invoke = t + rng.below(5);
                let at = invoke + rng.below(20);
                let complete = at + rng.below(20);
                t = complete + 1;
                match rng.below(10) {
                    0..=4 => ops.push((r(c, 0, invoke, complete), Some(at))),
                    5 => {
                        // Timed out: took effect much later, or never.
                        let late = (rng.below(2) == 0).then(|| invoke + rng.below(200));
                        ops.push((w(c, next_value, invoke, None), late));
                        next_value += 1;
                    }
                    6 => {
                        // A failed read: dropped by its caller, or kept
                        // with an unknown outcome and a bogus value.
                        if rng.below(2) == 0 {
                            ops.push((op(c, Kind::Read(u64::MAX), invoke, None), None));
                        }
                    }
                    _ => {
                        ops.push((w(c, next_value, invoke, complete), Some(at)));
                        next_value += 1;
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..ops.len()).filter(|i| ops[*i].1.is_some()).collect();
        order.sort_by_key(|i| (ops[*i].1, *i));
        let mut value = 0;
        for i in order {
            match &mut ops[i].0.kind {
                Kind::Write(v) => value = *v,
                Kind::Read(v) => *v = value,
            }
        }
        ops.into_iter().map(|(o, _)| o).collect()
    }

    fn reads(h: &[Op]) -> Vec<usize> {
        (0..h.len())
            .filter(|i| matches!(h[*i].kind, Kind::Read(_)) && h[*i].complete.is_some())
            .collect()
    }

    #[test]
    fn random_linearizable_histories_pass_and_corrupted_ones_fail() {
        for seed in 0..40 {
            let clients = 1 + seed % 10;
            let mut h = linearizable_history(seed, clients, 40);
            if let Err(v) = check(&h, 0) {
                panic!("seed {seed}: rejected a linearizable history: {v}");
            }
            // A read of a value nobody wrote can never be linearized.
            let rs = reads(&h);
            let mut rng = Rng(seed ^ 0xabcd);
            let victim = rs[rng.below(rs.len() as u64) as usize];
            let saved = h[victim].kind.clone();
            h[victim].kind = Kind::Read(1 << 40);
            let v = check(&h, 0).expect_err("a read of a value never written passed");
            assert!(
                v.explanation.contains(&format!("op #{victim}")),
                "seed {seed}: {v}"
            );
            h[victim].kind = saved;
            // A stale read: a write W completed, then a write W2 ran from
            // start to end, then a read began and returned W's value.
            if let Some((victim, stale)) = stale_read(&h) {
                h[victim].kind = Kind::Read(stale);
                let v = check(&h, 0).expect_err("a stale read passed");
                assert!(!v.explanation.contains("budget"), "seed {seed}: {v}");
            }
        }
    }

    /// A read and the value of a write that real time makes stale for it.
    fn stale_read(h: &[Op]) -> Option<(usize, u64)> {
        let writes: Vec<&Op> = h
            .iter()
            .filter(|o| matches!(o.kind, Kind::Write(_)) && o.complete.is_some())
            .collect();
        for i in reads(h).into_iter().rev() {
            let rd = &h[i];
            // The latest-starting write that ended before the read began,
            // and a write that ended before that one began.
            let w2 = writes
                .iter()
                .filter(|w| w.complete < Some(rd.invoke))
                .max_by_key(|w| w.invoke)?;
            let w1 = writes
                .iter()
                .find(|w| w.complete.is_some_and(|c| c < w2.invoke) && w.kind != w2.kind);
            if let Some(Op {
                kind: Kind::Write(v1),
                ..
            }) = w1
            {
                return Some((i, *v1));
            }
        }
        None
    }

    /// The definition, by brute force: some order of every completed op
    /// and any of the others respects real time and the register. Tiny
    /// histories of one key only.
    fn linearizable_by_brute_force(h: &[Op], initial: u64) -> bool {
        fn go(ops: &[&Op], placed: &mut Vec<bool>, value: u64) -> bool {
            let done = (0..ops.len()).all(|j| placed[j] || ops[j].complete.is_none());
            if done {
                return true;
            }
            for i in 0..ops.len() {
                let blocked = (0..ops.len())
                    .any(|j| !placed[j] && ops[j].complete.is_some_and(|c| c < ops[i].invoke));
                if placed[i] || blocked {
                    continue;
                }
                let after = match ops[i].kind {
                    Kind::Write(v) => v,
                    Kind::Read(v) if v == value => v,
                    Kind::Read(_) => continue,
                };
                placed[i] = true;
                if go(ops, placed, after) {
                    return true;
                }
                placed[i] = false;
            }
            false
        }
        let ops: Vec<&Op> = h
            .iter()
            .filter(|o| matches!(o.kind, Kind::Write(_)) || o.complete.is_some())
            .collect();
        go(&ops, &mut vec![false; ops.len()], initial)
    }

    #[test]
    fn tiny_random_histories_agree_with_brute_force() {
        let (mut yes, mut no) = (0, 0);
        for seed in 0..4000 {
            let mut rng = Rng(seed);
            let n = 1 + rng.below(7);
            // Few values, so that writes repeat values and reads often
            // match some write.
            let h: Vec<Op> = (0..n)
                .map(|_| {
                    let invoke = rng.below(12);
                    let complete = (rng.below(5) > 0).then(|| invoke + rng.below(8));
                    let v = rng.below(3);
                    let kind = if rng.below(2) == 0 {
                        Kind::Write(v)
                    } else {
                        Kind::Read(v)
                    };
                    op(rng.below(3), kind, invoke, complete)
                })
                .collect();
            let want = linearizable_by_brute_force(&h, 0);
            let got = check(&h, 0);
            assert_eq!(got.is_ok(), want, "seed {seed}: {got:?}\n{h:#?}");
            if want {
                yes += 1;
            } else {
                no += 1;
            }
        }
        // Both verdicts were exercised.
        assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
    }

    #[test]
    fn long_histories_with_ten_clients_are_decided() {
        // 3000 ops on one key by 10 clients, and two keys more.
        let mut h = linearizable_history(7, 10, 300);
        for (k, seed) in [("b", 8), ("c", 9)] {
            h.extend(
                linearizable_history(seed, 10, 100)
                    .into_iter()
                    .map(|mut o| {
                        o.key = k.into();
                        o
                    }),
            );
        }
        assert_eq!(check(&h, 0), Ok(()));
    }
}
