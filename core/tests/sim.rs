//! Deterministic simulation of the cluster-metadata Raft group.
//!
//! A small simulated world drives [`RaftGroup`]`<`[`MetaMachine`]`>` nodes,
//! each over its own [`MemEngine`], through seeded faults: message drops,
//! delays (and so reordering), duplicates, partitions that heal later, and
//! crashes (the group is dropped, the engine loses its unsynced writes,
//! messages in flight to the node are lost, and the node re-opens later
//! from the same engine). An operator grows the cluster from the bootstrap
//! node to 3-5 members with join tokens, tries joins that every node must
//! refuse, and removes members; a workload creates tokens at random nodes.
//!
//! The network models holdfast's transport: it refuses messages from a
//! sender that the receiver's metadata lists as revoked (mTLS). A removed
//! node keeps running, as a daemon does until someone stops it.
//!
//! Checkers run after every step of the world, and once more after the
//! world is healed: election safety, state-machine safety, durability of
//! acknowledged writes, refused joins and revoked ids, and liveness.
//!
//! Everything is ordered (`BTreeMap`, `Vec`), nothing reads a clock or
//! spawns a thread, and all randomness comes from one seeded generator, so a
//! seed replays its run exactly. Every failure prints its seed.
//!
//! - `HOLDFAST_SIM_SEEDS=N` runs seeds `0..N` (default [`DEFAULT_SEEDS`]);
//! - `HOLDFAST_SIM_SEED=N` replays seed `N` alone and prints its summary;
//! - `HOLDFAST_SIM_LOG=1` prints the world's log as it happens (faults,
//!   proposals, acknowledgements, leaders), `=2` also every delivered
//!   message (add `-- --nocapture`);
//! - `HOLDFAST_SIM_AVOID=snapshot-loss,leader-removal` leaves out faults
//!   that trigger a known bug, to look past it for others (see [`Avoid`]).
//!
//! A failure report ends with the last lines of the world's log.
//!
//! Seeded draws and running and reporting seeds are shared with
//! `sim_volume.rs` in `sim_common`.

mod sim_common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use holdfast_core::group::{bootstrap, GroupError, GroupStatus, Output, RaftGroup};
use holdfast_core::limits;
use holdfast_core::meta::{
    Change, Command, ConfContext, JoinToken, MetaEvent, MetaMachine, MetaState, NodeRecord,
    Outcome, Proposal, Role, META_GROUP,
};
use holdfast_core::{wire, RaftMessage, StateRole};
use holdfast_storage::{Engine, MemEngine};
use raft::prelude::MessageType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim_common::{chance, pick};

type Group = RaftGroup<MetaMachine>;

/// Seeds run by default: about 9 s in a debug build on an idle 2-core
/// machine (13 s with a compiler running beside it), the slowest test of
/// this file.
const DEFAULT_SEEDS: u64 = 200;
/// Simulated time advances in steps; one Raft tick is this many steps, so
/// messages can arrive between ticks.
const STEPS_PER_TICK: u64 = 10;
/// Ticks of faults before the world is healed.
const CHAOS_TICKS: u64 = 300;
/// Ticks a healed world gets to elect one leader and converge.
const HEAL_TICKS_MAX: u64 = 1_000;
/// Messages in flight at once; more are dropped, as a full peer queue would.
const QUEUE_MSGS_MAX: usize = 20_000;
/// Node ids handed out to joiners in one run (id 1 is the bootstrap node).
const NODE_IDS_MAX: u64 = 16;
/// Bad joins use fresh ids from here up, far from real joiners.
const BAD_JOIN_ID_BASE: u64 = 1_000;
/// Nodes down at the same time.
const CRASHED_MAX: usize = 2;
/// Ticks the operator waits for the outcome of one of its requests.
const TASK_TICKS_MAX: u64 = 150;
/// Workload tokens that are never pruned (and so must all survive); kept
/// well under `limits::TOKENS_MAX`.
const DURABLE_TOKENS_MAX: usize = 60;
/// An expiry that pruning never reaches.
const FAR_FUTURE_MS: u64 = u64::MAX / 2;
/// Lines of the world's log kept for a failure report.
const LOG_LINES_MAX: usize = 40;
/// Per-tick chances, in thousandths.
const BAD_JOIN_PERMILLE: u32 = 15;
const REMOVE_PERMILLE: u32 = 10;

// ---------------------------------------------------------------------------
// Faults

/// The faults of one run. Each seed turns on its own mix ("swarm testing"),
/// so that every fault gets runs where it dominates.
#[derive(Debug, Clone, Copy)]
struct Faults {
    drop_permille: u32,
    dup_permille: u32,
    /// Delivery takes 1..=this many steps; a long tail reorders messages.
    delay_steps_max: u64,
    /// Chance per tick that a member crashes.
    crash_permille: u32,
    /// Chance per tick that the network splits.
    partition_permille: u32,
    /// Workload proposals per thousand ticks. The busiest runs pass
    /// `limits::META_LOG_ENTRIES_MAX` entries, so logs get compacted and
    /// lagging members need snapshots.
    work_permille: u32,
}

impl Faults {
    fn swarm(rng: &mut ChaCha8Rng) -> Self {
        Self {
            drop_permille: pick(rng, &[0, 10, 50, 150, 300]),
            dup_permille: pick(rng, &[0, 20, 100]),
            delay_steps_max: pick(rng, &[2, 10, 40, 150]),
            crash_permille: pick(rng, &[0, 5, 20]),
            partition_permille: pick(rng, &[0, 5, 15]),
            work_permille: pick(rng, &[50, 150, 400, 6000]),
        }
    }

    fn quiet() -> Self {
        Self {
            drop_permille: 0,
            dup_permille: 0,
            delay_steps_max: 3,
            crash_permille: 0,
            partition_permille: 0,
            work_permille: 0,
        }
    }
}

/// Faults the world can leave out, to look past a known bug for others:
/// `HOLDFAST_SIM_AVOID=snapshot-loss,leader-removal`.
#[derive(Debug, Clone, Copy, Default)]
struct Avoid {
    /// Snapshots, and the append responses that acknowledge them, are
    /// never lost: the network retries them until they are delivered.
    snapshot_loss: bool,
    /// The operator does not remove the node that leads right now. This is
    /// best effort: leadership can move before the removal is applied.
    /// (Stopping a node once it has applied its own removal is no way out:
    /// when it led a two-voter group, the other voter may not have learnt
    /// that the removal committed, and still needs its vote.)
    leader_removal: bool,
}

impl Avoid {
    /// Whether the network must deliver `msg` whatever happens.
    fn keeps(&self, msg: &RaftMessage) -> bool {
        self.snapshot_loss
            && matches!(
                msg.get_msg_type(),
                MessageType::MsgSnapshot | MessageType::MsgAppendResponse
            )
    }

    fn from_env() -> Self {
        let v = std::env::var("HOLDFAST_SIM_AVOID").unwrap_or_default();
        let mut a = Avoid::default();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "snapshot-loss" => a.snapshot_loss = true,
                "leader-removal" => a.leader_removal = true,
                other => {
                    panic!("HOLDFAST_SIM_AVOID: unknown {other:?} (snapshot-loss, leader-removal)")
                }
            }
        }
        a
    }
}

// ---------------------------------------------------------------------------
// The checker

/// What a request was for, so that its outcome can be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    /// A workload token. A `durable` one never expires and is never used,
    /// so once acknowledged it must be in every member's final state.
    Work {
        token: String,
        secret: String,
        durable: bool,
    },
    /// A one-use token minted for a join.
    Mint,
    Join {
        id: u64,
    },
    /// A join that every node must refuse.
    BadJoin {
        id: u64,
        why: &'static str,
    },
    Remove {
        id: u64,
    },
}

/// Everything the checkers remember of a run. Each `observe_*` returns the
/// violation it finds, so the checker itself can be tested on a fabricated
/// history.
#[derive(Debug, Default)]
struct History {
    /// Who was leader in each term.
    leaders: BTreeMap<u64, u64>,
    /// The state first seen at each applied index, by any node at any time.
    states: BTreeMap<u64, (u64, Arc<MetaState>)>,
    /// Per node: applied index and state last checked since its last
    /// crash (applied never goes back while a node runs).
    seen: BTreeMap<u64, (u64, usize)>,
    /// Per node: ids it has seen revoked.
    revoked: BTreeMap<u64, BTreeSet<u64>>,
    reqs: BTreeMap<u64, Req>,
    /// The outcome its origin node reported for each request: the
    /// acknowledgement a client would get. An `Ok` wins over an `Err`
    /// from a duplicate of the same proposal.
    acks: BTreeMap<u64, Result<Outcome, String>>,
    /// Ids of bad joins with fresh ids: they must never be members.
    never_members: BTreeSet<u64>,
}

impl History {
    /// Election safety: at most one leader per term.
    fn observe_leader(&mut self, term: u64, id: u64) -> Result<(), String> {
        let first = *self.leaders.entry(term).or_insert(id);
        if first != id {
            return Err(format!(
                "election safety: nodes {first} and {id} were both leader in term {term}"
            ));
        }
        Ok(())
    }

    /// Checks one node after anything happened to it.
    fn observe_node(&mut self, status: &GroupStatus, state: &Arc<MetaState>) -> Result<(), String> {
        let id = status.id;
        if status.role == StateRole::Leader {
            self.observe_leader(status.term, id)?;
        }
        let now = (status.applied, Arc::as_ptr(state) as usize);
        let before = self.seen.insert(id, now);
        if before == Some(now) {
            return Ok(());
        }
        if let Some((applied, _)) = before {
            if status.applied < applied {
                return Err(format!(
                    "durability: node {id}'s applied index went back from {applied} to {}",
                    status.applied
                ));
            }
        }
        // State-machine safety: the state at an applied index is the same
        // on every node and at every time (it is a function of the log).
        match self.states.get(&status.applied) {
            Some((other, first)) if **first != **state => {
                return Err(format!(
                    "state-machine safety: at applied index {} node {id} has a different state from node {other}: {}",
                    status.applied,
                    diff(first, state)
                ));
            }
            Some(_) => {}
            None => {
                self.states.insert(status.applied, (id, state.clone()));
            }
        }
        self.check_state(status, state)
    }

    fn check_state(&mut self, status: &GroupStatus, state: &MetaState) -> Result<(), String> {
        let id = status.id;
        if let Some(r) = state.nodes.keys().find(|n| state.revoked.contains(n)) {
            return Err(format!("revoked id {r} is a member on node {id}"));
        }
        let names: BTreeSet<&str> = state.nodes.values().map(|n| n.name.as_str()).collect();
        if names.len() != state.nodes.len() {
            return Err(format!(
                "two members share a name on node {id}: {:?}",
                state.nodes
            ));
        }
        if let Some(bad) = state.nodes.keys().find(|n| self.never_members.contains(n)) {
            return Err(format!("refused join: node {bad} is a member on node {id}"));
        }
        let seen = self.revoked.entry(id).or_default();
        if let Some(lost) = seen.difference(&state.revoked).next() {
            return Err(format!("node {id} forgot that id {lost} is revoked"));
        }
        seen.extend(state.revoked.iter().copied());
        // The Raft configuration is the membership, as the state says.
        let mut voters = status.voters.clone();
        let mut learners = status.learners.clone();
        voters.sort_unstable();
        learners.sort_unstable();
        let want_voters: Vec<u64> = state
            .nodes
            .values()
            .filter(|n| n.role != Role::Learner)
            .map(|n| n.id)
            .collect();
        let want_learners: Vec<u64> = state
            .nodes
            .values()
            .filter(|n| n.role == Role::Learner)
            .map(|n| n.id)
            .collect();
        if voters != want_voters || learners != want_learners {
            return Err(format!(
                "node {id} at applied {}: raft voters {voters:?} learners {learners:?}, but members say voters {want_voters:?} learners {want_learners:?}",
                status.applied
            ));
        }
        Ok(())
    }

    /// Checks an applied command's outcome as reported by `node`.
    fn observe_event(&mut self, node: u64, ev: &MetaEvent) -> Result<(), String> {
        let MetaEvent::Done {
            req_id,
            origin,
            outcome,
        } = ev;
        let Some(req) = self.reqs.get(req_id) else {
            return Err(format!(
                "node {node} applied request {req_id} that nobody proposed"
            ));
        };
        let wrong = match (req, outcome) {
            (Req::BadJoin { why, .. }, Ok(o)) => Some(format!(
                "accepted a join that must be refused ({why}): {o:?}"
            )),
            (Req::Join { id }, Ok(o)) if *o != (Outcome::Joined { id: *id }) => {
                Some(format!("join of {id} reported {o:?}"))
            }
            (Req::Remove { id }, Ok(o)) if *o != (Outcome::Removed { id: *id }) => {
                Some(format!("removal of {id} reported {o:?}"))
            }
            (Req::Work { .. } | Req::Mint, Ok(o)) if *o != Outcome::TokenCreated => {
                Some(format!("token creation reported {o:?}"))
            }
            _ => None,
        };
        if let Some(w) = wrong {
            return Err(format!("node {node}, request {req_id}: {w}"));
        }
        if node == *origin {
            let ack = self.acks.entry(*req_id).or_insert_with(|| outcome.clone());
            if ack.is_err() && outcome.is_ok() {
                *ack = outcome.clone();
            }
        }
        Ok(())
    }

    /// After healing: what was acknowledged is in every member's state.
    fn check_final(&self, members: &BTreeMap<u64, Arc<MetaState>>) -> Result<(), String> {
        for (req_id, ack) in &self.acks {
            if ack.is_err() {
                continue;
            }
            for (m, st) in members {
                let lost = match &self.reqs[req_id] {
                    Req::Work {
                        token,
                        durable: true,
                        ..
                    } if !st.tokens.contains_key(token) => Some(format!("token {token}")),
                    Req::Join { id } if !st.nodes.contains_key(id) && !st.revoked.contains(id) => {
                        Some(format!("the join of node {id}"))
                    }
                    Req::Remove { id } if st.nodes.contains_key(id) || !st.revoked.contains(id) => {
                        Some(format!("the removal of node {id}"))
                    }
                    _ => None,
                };
                if let Some(what) = lost {
                    return Err(format!("durability: {what} (request {req_id}) was acknowledged but is missing on node {m}"));
                }
            }
        }
        Ok(())
    }
}

/// What differs between two states, secrets left out.
fn diff(a: &MetaState, b: &MetaState) -> String {
    let mut out = Vec::new();
    if a.cluster_id != b.cluster_id
        || a.ca_cert_pem != b.ca_cert_pem
        || a.ca_key_pem != b.ca_key_pem
        || a.admin_token != b.admin_token
    {
        out.push("cluster identity differs".to_string());
    }
    if a.nodes != b.nodes {
        out.push(format!("nodes {:?} vs {:?}", a.nodes, b.nodes));
    }
    if a.revoked != b.revoked {
        out.push(format!("revoked {:?} vs {:?}", a.revoked, b.revoked));
    }
    if a.tokens != b.tokens {
        let only_a: Vec<&String> = a
            .tokens
            .keys()
            .filter(|k| !b.tokens.contains_key(*k))
            .collect();
        let only_b: Vec<&String> = b
            .tokens
            .keys()
            .filter(|k| !a.tokens.contains_key(*k))
            .collect();
        let changed: Vec<&String> = a
            .tokens
            .iter()
            .filter(|(k, t)| b.tokens.get(*k).is_some_and(|u| u != *t))
            .map(|(k, _)| k)
            .collect();
        out.push(format!(
            "tokens only in first {only_a:?}, only in second {only_b:?}, changed {changed:?}"
        ));
    }
    if out.is_empty() && a != b {
        out.push("other fields differ".to_string());
    }
    out.join("; ")
}

// ---------------------------------------------------------------------------
// The world

#[derive(Debug)]
struct SimNode {
    engine: Arc<MemEngine>,
    /// `None` while crashed.
    group: Option<Group>,
    /// The tick a crashed node comes back at.
    restart_at: u64,
}

/// What the operator is waiting for.
#[derive(Debug, Clone)]
enum Task {
    Idle,
    Mint {
        req: u64,
        token: String,
        secret: String,
        since: u64,
    },
    Join {
        req: u64,
        token: String,
        secret: String,
        tries: u32,
        since: u64,
    },
    Remove {
        req: u64,
        since: u64,
    },
}

/// Counts that show what a run exercised.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    ticks: u64,
    delivered: u64,
    dropped: u64,
    duplicated: u64,
    crashes: u64,
    partitions: u64,
    proposals: u64,
    proposals_dropped: u64,
    acked_tokens: u64,
    joins: u64,
    removals: u64,
    bad_joins_refused: u64,
    max_term: u64,
    members: u64,
    snapshots_sent: u64,
    /// Runs in which the log was compacted.
    compacted: u64,
    heal_ticks: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.ticks += o.ticks;
        self.delivered += o.delivered;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
        self.proposals += o.proposals;
        self.proposals_dropped += o.proposals_dropped;
        self.acked_tokens += o.acked_tokens;
        self.joins += o.joins;
        self.removals += o.removals;
        self.bad_joins_refused += o.bad_joins_refused;
        self.max_term = self.max_term.max(o.max_term);
        self.members += o.members;
        self.snapshots_sent += o.snapshots_sent;
        self.compacted += o.compacted;
        self.heal_ticks = self.heal_ticks.max(o.heal_ticks);
    }
}

/// How one run ended; its digest is the trace's, in hex.
type Report = sim_common::Report<String, Stats>;

#[derive(Debug)]
struct World {
    rng: ChaCha8Rng,
    faults: Faults,
    /// Simulated time in steps.
    step: u64,
    nodes: BTreeMap<u64, SimNode>,
    /// Messages in flight by (delivery step, sequence number).
    queue: BTreeMap<(u64, u64), RaftMessage>,
    seq: u64,
    /// One side of the current partition, and the tick it heals at.
    partition: Option<(BTreeSet<u64>, u64)>,
    history: History,
    next_req: u64,
    next_id: u64,
    next_bad_id: u64,
    task: Task,
    target_members: usize,
    durable_tokens: usize,
    /// A hash of every delivered message, every event, every fault and the
    /// final states.
    trace: blake3::Hasher,
    /// The last things that happened, for a failure report.
    log: VecDeque<String>,
    /// `HOLDFAST_SIM_LOG=1`: print every line of the log as it happens;
    /// `=2`: and every message delivered.
    verbose: u8,
    avoid: Avoid,
    stats: Stats,
}

fn first_state() -> MetaState {
    let mut st = MetaState {
        cluster_id: "sim".into(),
        ca_cert_pem: "sim-ca-cert".into(),
        ca_key_pem: "sim-ca-key".into(),
        admin_token: "sim-admin".into(),
        ..Default::default()
    };
    st.nodes.insert(1, record(1, "n1", Role::Voter));
    st
}

fn record(id: u64, name: &str, role: Role) -> NodeRecord {
    NodeRecord {
        id,
        name: name.to_string(),
        peer_addr: format!("10.0.{}.{}:7000", id / 256, id % 256),
        api_addr: format!("10.0.{}.{}:7080", id / 256, id % 256),
        role,
    }
}

impl World {
    fn new(seed: u64) -> Result<Self, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let faults = Faults::swarm(&mut rng);
        let target_members = rng.gen_range(3..=5);
        let engine = Arc::new(MemEngine::new());
        bootstrap(
            engine.clone(),
            META_GROUP,
            &[1],
            MetaMachine::initial_batch(&first_state()),
        )
        .map_err(|e| format!("bootstrap: {e}"))?;
        let mut w = World {
            rng,
            faults,
            step: 0,
            nodes: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            partition: None,
            history: History::default(),
            next_req: 1,
            next_id: 2,
            next_bad_id: BAD_JOIN_ID_BASE,
            task: Task::Idle,
            target_members,
            durable_tokens: 0,
            trace: blake3::Hasher::new(),
            log: VecDeque::new(),
            verbose: std::env::var("HOLDFAST_SIM_LOG").map_or(0, |v| v.parse().unwrap_or(1)),
            avoid: Avoid::from_env(),
            stats: Stats::default(),
        };
        w.nodes.insert(
            1,
            SimNode {
                engine,
                group: None,
                restart_at: 0,
            },
        );
        w.restart(1)?;
        w.drive(1, |g| g.campaign())?;
        Ok(w)
    }

    fn tick_now(&self) -> u64 {
        self.step / STEPS_PER_TICK
    }

    fn now_ms(&self) -> u64 {
        self.tick_now() * limits::TICK_MS
    }

    fn group(&self, id: u64) -> Option<&Group> {
        self.nodes.get(&id).and_then(|n| n.group.as_ref())
    }

    fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.group.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn crashed_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.group.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The most advanced state among live nodes: the operator's view.
    fn reference(&self) -> Option<Arc<MetaState>> {
        let mut best: Option<(u64, Arc<MetaState>)> = None;
        for id in self.live_ids() {
            let g = self.group(id)?;
            let applied = g.status().applied;
            if best.as_ref().is_none_or(|(a, _)| applied > *a) {
                best = Some((applied, g.state_machine().state()));
            }
        }
        best.map(|(_, st)| st)
    }

    fn is_leader(&self, id: u64) -> bool {
        self.group(id)
            .is_some_and(|g| g.status().role == StateRole::Leader)
    }

    /// Live nodes that the reference state lists as members.
    fn live_members(&self) -> Vec<u64> {
        let Some(st) = self.reference() else {
            return Vec::new();
        };
        st.nodes
            .keys()
            .copied()
            .filter(|id| self.group(*id).is_some())
            .collect()
    }

    /// Runs `f` on node `id` if it is up, then routes its outputs and runs
    /// the checkers on it. Returns whether `f` took effect: `false` when the
    /// node is down or raft-rs dropped a proposal (no leader known).
    fn drive(
        &mut self,
        id: u64,
        f: impl FnOnce(&mut Group) -> Result<(), GroupError>,
    ) -> Result<bool, String> {
        let Some(g) = self.nodes.get_mut(&id).and_then(|n| n.group.as_mut()) else {
            return Ok(false);
        };
        let result = f(g);
        let outputs: Vec<Output<MetaEvent>> = g.take_outputs().collect();
        let status = g.status();
        let state = g.state_machine().state();

        for out in outputs {
            match out {
                Output::Send(msg) => self.send(msg),
                // The simulation never asks for a read.
                Output::ReadIndex { ctx, index } => {
                    return Err(format!(
                        "n{id} answered read {ctx} at index {index} that nobody asked for"
                    ));
                }
                Output::Event(ev) => {
                    let MetaEvent::Done {
                        req_id,
                        origin,
                        outcome,
                    } = &ev;
                    if *origin == id {
                        let line = format!("n{id} acknowledged request {req_id}: {outcome:?}");
                        match self.history.reqs.get(req_id) {
                            Some(Req::Work { .. }) => self.detail(line),
                            _ => self.note(line),
                        }
                    } else {
                        self.trace.update(format!("{id} {ev:?}").as_bytes());
                    }
                    self.history.observe_event(id, &ev)?;
                }
            }
        }
        self.stats.max_term = self.stats.max_term.max(status.term);
        if status.role == StateRole::Leader && !self.history.leaders.contains_key(&status.term) {
            self.note(format!("n{id} is leader in term {}", status.term));
        }
        self.history.observe_node(&status, &state)?;

        match result {
            Ok(()) => Ok(true),
            Err(GroupError::Raft(raft::Error::ProposalDropped)) => Ok(false),
            Err(e) => Err(format!("node {id} failed: {e}")),
        }
    }

    /// The network takes a message: drops, duplicates and delays it.
    fn send(&mut self, msg: RaftMessage) {
        if !self.nodes.contains_key(&msg.to) {
            return self.lose(&msg, "no such node");
        }
        let keep = self.keep(&msg);
        if self.queue.len() >= QUEUE_MSGS_MAX && !keep {
            return self.lose(&msg, "queue full");
        }
        if chance(&mut self.rng, self.faults.drop_permille) && !keep {
            return self.lose(&msg, "dropped");
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            let index = msg.get_snapshot().get_metadata().index;
            self.note(format!(
                "n{} sends n{} a snapshot at index {index}",
                msg.from, msg.to
            ));
            self.stats.snapshots_sent += 1;
        }
        let copies = if chance(&mut self.rng, self.faults.dup_permille) {
            2
        } else {
            1
        };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let at = self.step + self.rng.gen_range(1..=self.faults.delay_steps_max);
            self.seq += 1;
            self.queue.insert((at, self.seq), msg.clone());
        }
    }

    fn cut(&self, a: u64, b: u64) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|(side, _)| side.contains(&a) != side.contains(&b))
    }

    fn deliver_due(&mut self) -> Result<(), String> {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.step {
                break;
            }
            let msg = entry.remove();
            let (from, to) = (msg.from, msg.to);
            if self.keep(&msg) && (self.group(to).is_none() || self.cut(from, to)) {
                self.seq += 1;
                self.queue
                    .insert((self.step + STEPS_PER_TICK, self.seq), msg);
                continue;
            }
            let Some(g) = self.group(to) else {
                self.lose(&msg, "receiver down");
                continue;
            };
            // The transport refuses a peer whose certificate is revoked.
            if g.state_machine().state().revoked.contains(&from) {
                self.lose(&msg, "sender revoked");
                continue;
            }
            if self.cut(from, to) {
                self.lose(&msg, "partitioned");
                continue;
            }
            self.trace_msg(&msg);
            if self.verbose > 1 {
                let m = &msg;
                println!(
                    "tick {} step {}: n{from} -> n{to} {:?} term {} log_term {} index {} commit {} entries {} reject {} hint {} snap {}",
                    self.tick_now(),
                    self.step,
                    m.get_msg_type(),
                    m.term,
                    m.log_term,
                    m.index,
                    m.commit,
                    m.entries.len(),
                    m.reject,
                    m.reject_hint,
                    m.get_snapshot().get_metadata().index
                );
            }
            self.stats.delivered += 1;
            self.drive(to, |g| g.step(msg))?;
        }
        Ok(())
    }

    fn keep(&self, msg: &RaftMessage) -> bool {
        self.avoid.keeps(msg)
    }

    fn lose(&mut self, msg: &RaftMessage, why: &str) {
        self.stats.dropped += 1;
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            let index = msg.get_snapshot().get_metadata().index;
            self.note(format!(
                "the snapshot at index {index} from n{} to n{} is lost: {why}",
                msg.from, msg.to
            ));
        }
    }

    fn trace_msg(&mut self, m: &RaftMessage) {
        let snap = m.get_snapshot().get_metadata().index;
        let fields = [
            self.step,
            m.from,
            m.to,
            m.get_msg_type() as u64,
            m.term,
            m.log_term,
            m.index,
            m.commit,
            m.entries.len() as u64,
            m.reject as u64,
            snap,
        ];
        for v in fields {
            self.trace.update(&v.to_le_bytes());
        }
    }

    /// Records something that happened in the trace and the log.
    fn note(&mut self, what: String) {
        self.record(what, true);
    }

    /// Records a routine event (the workload's) in the trace only.
    fn detail(&mut self, what: String) {
        self.record(what, false);
    }

    fn record(&mut self, what: String, keep: bool) {
        let line = format!("tick {} step {}: {what}", self.tick_now(), self.step);
        self.trace.update(line.as_bytes());
        if self.verbose > 0 {
            println!("{line}");
        }
        if keep {
            if self.log.len() == LOG_LINES_MAX {
                self.log.pop_front();
            }
            self.log.push_back(line);
        }
    }

    fn crash(&mut self, id: u64) {
        let restart_at = self.tick_now() + self.rng.gen_range(10..=150);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.group = None;
        node.engine.crash();
        node.restart_at = restart_at;
        // The applied state is written without fsync (the synced log is the
        // durable record), so a crash may take a node's applied index back;
        // it then applies the same entries again from its log. What must
        // hold is checked elsewhere: equal applied indexes, equal states.
        self.history.seen.remove(&id);
        let avoid = self.avoid;
        self.queue.retain(|_, m| m.to != id || avoid.keeps(m));
        self.stats.crashes += 1;
        self.note(format!("n{id} crashes, back at tick {restart_at}"));
    }

    /// Opens node `id` from its engine, as after a crash.
    fn restart(&mut self, id: u64) -> Result<(), String> {
        let seed = self.rng.gen();
        let Some(node) = self.nodes.get_mut(&id) else {
            return Err(format!("no node {id}"));
        };
        let engine: Arc<dyn Engine> = node.engine.clone();
        let sm = MetaMachine::load(&*engine).map_err(|e| format!("node {id} restart: {e}"))?;
        let g = RaftGroup::open(id, META_GROUP, engine, sm, seed)
            .map_err(|e| format!("node {id} restart: {e}"))?;
        node.group = Some(g);
        self.note(format!("n{id} restarts"));
        self.drive(id, |_| Ok(()))?;
        Ok(())
    }

    /// A node that is about to join: an empty engine and no state, which
    /// it will receive from the leader as a snapshot.
    fn add_node(&mut self, id: u64) -> Result<(), String> {
        let seed = self.rng.gen();
        let engine = Arc::new(MemEngine::new());
        let g = RaftGroup::open(id, META_GROUP, engine.clone(), MetaMachine::default(), seed)
            .map_err(|e| format!("node {id} open: {e}"))?;
        self.nodes.insert(
            id,
            SimNode {
                engine,
                group: Some(g),
                restart_at: 0,
            },
        );
        Ok(())
    }

    fn new_req(&mut self, req: Req) -> u64 {
        let id = self.next_req;
        self.next_req += 1;
        self.history.reqs.insert(id, req);
        id
    }

    fn propose(&mut self, at: u64, req: Req, cmd: Command) -> Result<Option<u64>, String> {
        let req_id = self.new_req(req);
        let data = wire::encode(&Proposal {
            req_id,
            origin: at,
            cmd,
        });
        let accepted = self.drive(at, |g| g.propose(data))?;
        Ok(self.count_proposal(at, accepted, req_id))
    }

    fn propose_change(&mut self, at: u64, req: Req, change: Change) -> Result<Option<u64>, String> {
        let req_id = self.new_req(req);
        let cc = ConfContext {
            req_id,
            origin: at,
            change,
        }
        .to_conf_change();
        let accepted = self.drive(at, |g| g.propose_conf_change(cc))?;
        Ok(self.count_proposal(at, accepted, req_id))
    }

    fn count_proposal(&mut self, at: u64, accepted: bool, req_id: u64) -> Option<u64> {
        self.stats.proposals += 1;
        if !accepted {
            self.stats.proposals_dropped += 1;
        }
        let (what, routine) = match &self.history.reqs[&req_id] {
            Req::Work { token, durable, .. } => {
                (format!("token {token} (durable: {durable})"), true)
            }
            other => (format!("{other:?}"), !accepted),
        };
        let line = format!(
            "request {req_id}, {what}, at n{at}: {}",
            if accepted { "proposed" } else { "dropped" }
        );
        if routine {
            self.detail(line);
        } else {
            self.note(line);
        }
        accepted.then_some(req_id)
    }

    fn random_live_member(&mut self) -> Option<u64> {
        let members = self.live_members();
        (!members.is_empty()).then(|| pick(&mut self.rng, &members))
    }

    /// One step of simulated time; on a tick boundary, faults, the operator
    /// and the workload act first (when `chaos`), then every node ticks.
    fn run_step(&mut self, chaos: bool) -> Result<(), String> {
        if self.step.is_multiple_of(STEPS_PER_TICK) {
            if chaos {
                self.faults_tick()?;
                self.operator_tick()?;
                self.workload_tick()?;
            }
            for id in self.live_ids() {
                self.drive(id, |g| g.tick())?;
            }
            self.stats.ticks += 1;
        }
        self.deliver_due()?;
        self.step += 1;
        Ok(())
    }

    fn run_ticks(&mut self, ticks: u64, chaos: bool) -> Result<(), String> {
        for _ in 0..ticks * STEPS_PER_TICK {
            self.run_step(chaos)?;
        }
        Ok(())
    }

    fn faults_tick(&mut self) -> Result<(), String> {
        let tick = self.tick_now();
        for id in self.crashed_ids() {
            if self.nodes[&id].restart_at <= tick {
                self.restart(id)?;
            }
        }
        match &self.partition {
            Some((_, heal_at)) if *heal_at <= tick => {
                self.partition = None;
                self.note("the partition heals".into());
            }
            Some(_) => {}
            None if chance(&mut self.rng, self.faults.partition_permille) => {
                let ids: Vec<u64> = self.nodes.keys().copied().collect();
                if let Some((side, heal_at)) = sim_common::draw_partition(&mut self.rng, ids, tick)
                {
                    self.note(format!(
                        "partition: {side:?} cut off from the rest until tick {heal_at}"
                    ));
                    self.partition = Some((side, heal_at));
                    self.stats.partitions += 1;
                }
            }
            None => {}
        }
        if chance(&mut self.rng, self.faults.crash_permille)
            && self.crashed_ids().len() < CRASHED_MAX
        {
            if let Some(id) = self.random_live_member() {
                self.crash(id);
            }
        }
        Ok(())
    }

    fn workload_tick(&mut self) -> Result<(), String> {
        let rate = self.faults.work_permille;
        let n = rate / 1000 + u32::from(chance(&mut self.rng, rate % 1000));
        for _ in 0..n {
            self.work()?;
        }
        Ok(())
    }

    /// Proposes one new token at a random live node.
    fn work(&mut self) -> Result<(), String> {
        let live = self.live_ids();
        if live.is_empty() {
            return Ok(());
        }
        let at = pick(&mut self.rng, &live);
        let durable = self.durable_tokens < DURABLE_TOKENS_MAX && self.rng.gen_bool(0.5);
        // Short-lived tokens keep the table churning without growing it.
        let expires_at_ms = if durable {
            FAR_FUTURE_MS
        } else {
            self.now_ms() + self.rng.gen_range(1..=1_000)
        };
        let token = format!("w{}", self.next_req);
        let secret = format!("{:032x}", self.rng.gen::<u128>());
        let secret_hash = JoinToken::secret_hash(&secret);
        let uses_max = limits::TOKEN_USES_MAX;
        let cmd = Command::CreateToken {
            id: token.clone(),
            secret_hash,
            expires_at_ms,
            uses_max,
            now_ms: self.now_ms(),
        };
        if self
            .propose(
                at,
                Req::Work {
                    token,
                    secret,
                    durable,
                },
                cmd,
            )?
            .is_some()
            && durable
        {
            self.durable_tokens += 1;
        }
        Ok(())
    }

    /// The operator: grows the cluster to its target with join tokens,
    /// sometimes removes a member, and tries joins that must be refused.
    fn operator_tick(&mut self) -> Result<(), String> {
        let tick = self.tick_now();
        let Some(reference) = self.reference() else {
            return Ok(());
        };
        let ack = |w: &Self, req: u64| w.history.acks.get(&req).map(|a| a.is_ok());
        match self.task.clone() {
            Task::Idle => {
                if reference.nodes.len() < self.target_members && self.next_id <= NODE_IDS_MAX {
                    self.mint()?;
                } else if reference.nodes.len() >= 3 && chance(&mut self.rng, REMOVE_PERMILLE) {
                    // Node 1 stays, so a join under its name is always refused.
                    let others: Vec<u64> = reference
                        .nodes
                        .keys()
                        .copied()
                        .filter(|id| {
                            *id != 1 && !(self.avoid.leader_removal && self.is_leader(*id))
                        })
                        .collect();
                    let at = self.random_live_member();
                    if let (Some(at), false) = (at, others.is_empty()) {
                        let id = pick(&mut self.rng, &others);
                        if let Some(req) =
                            self.propose_change(at, Req::Remove { id }, Change::Remove { id })?
                        {
                            self.task = Task::Remove { req, since: tick };
                        }
                    }
                }
            }
            Task::Mint {
                req,
                token,
                secret,
                since,
            } => match ack(self, req) {
                Some(true) => self.join(token, secret, 0)?,
                Some(false) => self.task = Task::Idle,
                None if tick > since + TASK_TICKS_MAX => self.task = Task::Idle,
                None => {}
            },
            Task::Join {
                req,
                token,
                secret,
                tries,
                since,
            } => match ack(self, req) {
                Some(_) => self.task = Task::Idle,
                // Retry under a new id with the same one-use token: at most
                // one of the attempts can join.
                None if tick > since + TASK_TICKS_MAX
                    && tries < 3
                    && self.next_id <= NODE_IDS_MAX =>
                {
                    self.join(token, secret, tries + 1)?
                }
                None if tick > since + TASK_TICKS_MAX => self.task = Task::Idle,
                None => {}
            },
            Task::Remove { req, since } => {
                if ack(self, req).is_some() || tick > since + TASK_TICKS_MAX {
                    self.task = Task::Idle;
                }
            }
        }
        if chance(&mut self.rng, BAD_JOIN_PERMILLE) {
            self.bad_join(&reference)?;
        }
        Ok(())
    }

    fn mint(&mut self) -> Result<(), String> {
        let Some(at) = self.random_live_member() else {
            return Ok(());
        };
        let token = format!("j{}", self.next_req);
        let secret = format!("{:032x}", self.rng.gen::<u128>());
        let cmd = Command::CreateToken {
            id: token.clone(),
            secret_hash: JoinToken::secret_hash(&secret),
            expires_at_ms: FAR_FUTURE_MS,
            uses_max: 1,
            now_ms: self.now_ms(),
        };
        if let Some(req) = self.propose(at, Req::Mint, cmd)? {
            self.task = Task::Mint {
                req,
                token,
                secret,
                since: self.tick_now(),
            };
        }
        Ok(())
    }

    fn join(&mut self, token: String, secret: String, tries: u32) -> Result<(), String> {
        let id = self.next_id;
        self.next_id += 1;
        self.add_node(id)?;
        let role = pick(
            &mut self.rng,
            &[
                Role::Voter,
                Role::Voter,
                Role::Voter,
                Role::Learner,
                Role::Witness,
            ],
        );
        let change = Change::Join {
            node: record(id, &format!("n{id}"), role),
            token_id: token.clone(),
            secret_hash: JoinToken::secret_hash(&secret),
            now_ms: self.now_ms(),
        };
        let at = self.random_live_member().unwrap_or(1);
        // Not proposed (request 0 is never acknowledged): time out and
        // retry, as after a lost proposal.
        let req = self
            .propose_change(at, Req::Join { id }, change)?
            .unwrap_or_default();
        self.stats.joins += 1;
        self.task = Task::Join {
            req,
            token,
            secret,
            tries,
            since: self.tick_now(),
        };
        Ok(())
    }

    /// Proposes a join that every node must refuse.
    fn bad_join(&mut self, reference: &MetaState) -> Result<(), String> {
        let Some(at) = self.random_live_member() else {
            return Ok(());
        };
        // A valid, durable workload token, so that refusals past the token
        // check are reached.
        let valid: Vec<(String, String)> = self
            .history
            .acks
            .iter()
            .filter(|(_, a)| a.is_ok())
            .filter_map(|(r, _)| match &self.history.reqs[r] {
                Req::Work {
                    token,
                    secret,
                    durable: true,
                } if reference.tokens.contains_key(token) => Some((token.clone(), secret.clone())),
                _ => None,
            })
            .collect();
        let removed: Vec<u64> = reference.revoked.iter().copied().collect();
        let fresh = self.next_bad_id;
        self.next_bad_id += 1;
        let role = pick(&mut self.rng, &[Role::Voter, Role::Learner, Role::Witness]);
        let now_ms = self.now_ms();
        let join = |id: u64, name: &str, (token_id, secret): (String, String)| Change::Join {
            node: record(id, name, role),
            token_id,
            secret_hash: JoinToken::secret_hash(&secret),
            now_ms,
        };
        let (why, id, change) = match self.rng.gen_range(0..5) {
            0 if !valid.is_empty() => {
                let (token, _) = pick_clone(&mut self.rng, &valid);
                (
                    "wrong secret",
                    fresh,
                    join(
                        fresh,
                        &format!("b{fresh}"),
                        (token, "not-the-secret".into()),
                    ),
                )
            }
            1 if !valid.is_empty() => {
                let t = pick_clone(&mut self.rng, &valid);
                ("name taken", fresh, join(fresh, "n1", t))
            }
            2 if !valid.is_empty() && !removed.is_empty() => {
                let id = pick(&mut self.rng, &removed);
                let t = pick_clone(&mut self.rng, &valid);
                (
                    "id of a removed node",
                    id,
                    join(id, &format!("b{fresh}"), t),
                )
            }
            3 if !valid.is_empty() => {
                let t = pick_clone(&mut self.rng, &valid);
                ("id zero", 0, join(0, &format!("b{fresh}"), t))
            }
            _ => (
                "unknown token",
                fresh,
                join(
                    fresh,
                    &format!("b{fresh}"),
                    ("no-such-token".into(), "x".into()),
                ),
            ),
        };
        if id == fresh {
            self.history.never_members.insert(id);
        }
        self.propose_change(at, Req::BadJoin { id, why }, change)?;
        Ok(())
    }

    /// Ends the faults, restarts every crashed node and waits for one
    /// leader and identical state everywhere; then a new write must be
    /// acknowledged, and everything acknowledged before must be there.
    fn heal(&mut self) -> Result<(), String> {
        self.faults = Faults::quiet();
        self.partition = None;
        for id in self.crashed_ids() {
            self.restart(id)?;
        }
        let start = self.tick_now();
        let leader = self.converge(start)?;
        let token = "after-heal".to_string();
        let cmd = Command::CreateToken {
            id: token.clone(),
            secret_hash: JoinToken::secret_hash("s"),
            expires_at_ms: FAR_FUTURE_MS,
            uses_max: 1,
            now_ms: self.now_ms(),
        };
        let req = self.propose(
            leader,
            Req::Work {
                token,
                secret: "s".into(),
                durable: true,
            },
            cmd,
        )?;
        let req = req
            .ok_or_else(|| format!("liveness: leader {leader} dropped a proposal after healing"))?;
        let deadline = self.tick_now() + 100;
        while !self.history.acks.contains_key(&req) {
            if self.tick_now() > deadline {
                return Err(format!("liveness: a write proposed at leader {leader} after healing was not acknowledged in 100 ticks"));
            }
            self.run_ticks(1, false)?;
        }
        if let Some(Err(e)) = self.history.acks.get(&req) {
            return Err(format!("a write after healing was refused: {e}"));
        }
        self.converge(start)?;
        self.stats.heal_ticks = self.tick_now() - start;
        self.check_final()
    }

    /// Runs fault-free ticks until the members agree; returns the leader.
    fn converge(&mut self, start: u64) -> Result<u64, String> {
        loop {
            match self.agreement() {
                Ok(leader) => return Ok(leader),
                Err(why) if self.tick_now() > start + HEAL_TICKS_MAX => {
                    return Err(format!("liveness: {HEAL_TICKS_MAX} ticks after healing the cluster has not converged: {why}"));
                }
                Err(_) => self.run_ticks(1, false)?,
            }
        }
    }

    /// Exactly one leader among the members, which all follow it in its
    /// term and have applied everything it has committed.
    fn agreement(&self) -> Result<u64, String> {
        let reference = self.reference().ok_or("no node is up")?;
        let mut statuses = Vec::new();
        for id in reference.nodes.keys() {
            let g = self
                .group(*id)
                .ok_or_else(|| format!("member {id} is down"))?;
            statuses.push(g.status());
        }
        let leaders: Vec<&GroupStatus> = statuses
            .iter()
            .filter(|s| s.role == StateRole::Leader)
            .collect();
        let [leader] = leaders.as_slice() else {
            return Err(format!(
                "{} leaders among the members: {}",
                leaders.len(),
                describe(&statuses)
            ));
        };
        for s in &statuses {
            if s.term != leader.term
                || s.leader != Some(leader.id)
                || s.applied != leader.commit
                || s.commit != leader.commit
            {
                return Err(format!(
                    "member n{} lags leader n{}: {}",
                    s.id,
                    leader.id,
                    describe(&statuses)
                ));
            }
        }
        Ok(leader.id)
    }

    fn check_final(&mut self) -> Result<(), String> {
        let reference = self.reference().ok_or("no node is up")?;
        let mut members = BTreeMap::new();
        for id in reference.nodes.keys() {
            let st = self
                .group(*id)
                .ok_or_else(|| format!("member {id} is down"))?
                .state_machine()
                .state();
            if *st != *reference {
                return Err(format!(
                    "after healing node {id} differs: {}",
                    diff(&reference, &st)
                ));
            }
            members.insert(*id, st);
        }
        self.history.check_final(&members)?;
        for id in self.live_ids() {
            let st = self
                .group(id)
                .map(|g| g.state_machine().state())
                .unwrap_or_default();
            self.trace.update(&wire::encode(&*st));
        }
        let acks = self.history.acks.iter().filter(|(_, a)| a.is_ok());
        self.stats.acked_tokens = acks
            .clone()
            .filter(|(r, _)| matches!(self.history.reqs[r], Req::Work { .. }))
            .count() as u64;
        self.stats.removals = acks
            .filter(|(r, _)| matches!(self.history.reqs[r], Req::Remove { .. }))
            .count() as u64;
        self.stats.bad_joins_refused = self
            .history
            .acks
            .iter()
            .filter(|(r, a)| a.is_err() && matches!(self.history.reqs[r], Req::BadJoin { .. }))
            .count() as u64;
        self.stats.members = members.len() as u64;
        self.stats.compacted = u64::from(self.nodes.values().any(|n| compacted(&*n.engine)));
        Ok(())
    }
}

/// The members' Raft status, for a liveness failure.
fn describe(statuses: &[GroupStatus]) -> String {
    let one = |s: &GroupStatus| {
        format!(
            "n{} {:?} term {} leader {:?} commit {} applied {} voters {:?} learners {:?}",
            s.id, s.role, s.term, s.leader, s.commit, s.applied, s.voters, s.learners
        )
    };
    statuses.iter().map(one).collect::<Vec<_>>().join("; ")
}

/// Whether a node's metadata log was compacted: its snapshot mark (see
/// `LogStore`, key `r/<group>/snap`) is past `META_LOG_ENTRIES_MAX`. (A
/// joiner's mark is where its first snapshot was taken; one that far up
/// means the leader had compacted.)
fn compacted(engine: &dyn Engine) -> bool {
    let mut key = b"r/".to_vec();
    key.extend_from_slice(&META_GROUP.to_be_bytes());
    key.extend_from_slice(b"/snap");
    let mark = engine.get(&key).ok().flatten().unwrap_or_default();
    mark.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .is_some_and(|b| u64::from_be_bytes(b) > limits::META_LOG_ENTRIES_MAX)
}

fn pick_clone<T: Clone>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())].clone()
}

// ---------------------------------------------------------------------------
// Running seeds

/// Runs one seed. A checker failure or a panic becomes `failure`, which
/// names the seed and ends with the world's last log lines.
fn sim(seed: u64) -> Report {
    sim_common::run_seed(
        "sim",
        seed,
        |world| {
            let w = world.insert(World::new(seed)?);
            w.run_ticks(CHAOS_TICKS, true)?;
            w.note("healing: no more faults, crashed nodes restart".into());
            w.heal()
        },
        |w: World| (w.trace.finalize().to_hex().to_string(), w.stats, w.log),
    )
}

#[test]
fn seeds_keep_every_invariant() {
    let seeds = sim_common::seeds(DEFAULT_SEEDS);
    let total = sim_common::run_seeds(
        &seeds,
        sim,
        |seed, r| format!("seed {seed}: {:?}\ndigest {}", r.stats, r.digest),
        Stats::add,
    );
    if seeds.len() >= 20 {
        let exercised = [
            ("crashes", total.crashes),
            ("partitions", total.partitions),
            ("duplicates", total.duplicated),
            ("drops", total.dropped),
            ("joins", total.joins),
            ("removals", total.removals),
            ("refused bad joins", total.bad_joins_refused),
            ("acknowledged tokens", total.acked_tokens),
            ("snapshots", total.snapshots_sent),
            ("log compaction", total.compacted),
        ];
        sim_common::assert_exercised(&exercised, &total);
    }
}

/// The same seed replays the same run, whether it passes or fails: the
/// trace digest covers every delivered message, event, fault and final
/// state. raft-rs draws election timeouts from the thread's RNG; this also
/// proves that `RaftGroup` overrides every one of them from its seed.
#[test]
fn same_seed_same_run() {
    sim_common::assert_same_runs("sim", &sim_common::replay_seeds(10), sim);
}

// ---------------------------------------------------------------------------
// The checker can fail

/// Runs `history` against a fresh checker and returns the violation it
/// must report.
fn violation(history: impl FnOnce(&mut History) -> Result<(), String>) -> String {
    let mut h = History::default();
    match history(&mut h) {
        Ok(()) => panic!("the checker accepted a history it must reject"),
        Err(e) => e,
    }
}

fn status(id: u64, term: u64, role: StateRole, applied: u64, voters: &[u64]) -> GroupStatus {
    GroupStatus {
        id,
        term,
        leader: None,
        role,
        commit: applied,
        applied,
        voters: voters.to_vec(),
        learners: Vec::new(),
    }
}

fn state_with(nodes: &[u64], tokens: &[&str]) -> Arc<MetaState> {
    let mut st = first_state();
    for id in nodes {
        st.nodes
            .insert(*id, record(*id, &format!("n{id}"), Role::Voter));
    }
    for t in tokens {
        let rec = holdfast_core::meta::TokenRecord {
            secret_hash: String::new(),
            expires_at_ms: FAR_FUTURE_MS,
            uses_max: 1,
            uses: 0,
        };
        st.tokens.insert(t.to_string(), rec);
    }
    Arc::new(st)
}

#[test]
fn checker_reports_violations() {
    use StateRole::{Follower, Leader};
    let two_leaders = violation(|h| {
        h.observe_node(&status(1, 5, Leader, 3, &[1, 2]), &state_with(&[2], &[]))?;
        h.observe_node(&status(2, 5, Leader, 3, &[1, 2]), &state_with(&[2], &[]))
    });
    assert!(two_leaders.contains("election safety"), "{two_leaders}");

    let diverged = violation(|h| {
        h.observe_node(&status(1, 5, Follower, 7, &[1]), &state_with(&[], &["a"]))?;
        h.observe_node(&status(2, 5, Follower, 7, &[1]), &state_with(&[], &["b"]))
    });
    assert!(diverged.contains("state-machine safety"), "{diverged}");

    let lost = violation(|h| {
        h.reqs.insert(
            9,
            Req::Work {
                token: "a".into(),
                secret: "s".into(),
                durable: true,
            },
        );
        h.observe_event(
            1,
            &MetaEvent::Done {
                req_id: 9,
                origin: 1,
                outcome: Ok(Outcome::TokenCreated),
            },
        )?;
        h.check_final(&[(1, state_with(&[], &[]))].into())
    });
    assert!(lost.contains("durability"), "{lost}");

    let accepted = violation(|h| {
        h.reqs.insert(
            4,
            Req::BadJoin {
                id: 1000,
                why: "unknown token",
            },
        );
        h.observe_event(
            2,
            &MetaEvent::Done {
                req_id: 4,
                origin: 1,
                outcome: Ok(Outcome::Joined { id: 1000 }),
            },
        )
    });
    assert!(accepted.contains("must be refused"), "{accepted}");

    let config =
        violation(|h| h.observe_node(&status(1, 2, Follower, 3, &[1]), &state_with(&[2], &[])));
    assert!(config.contains("raft voters"), "{config}");
}
