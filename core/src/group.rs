//! A Raft consensus group driven as a sans-I/O state machine.
//!
//! [`RaftGroup`] wraps raft-rs's `RawNode` over a log kept in a storage
//! [`Engine`], and a [`StateMachine`] that applies committed entries. It is
//! driven from outside: [`RaftGroup::tick`], [`RaftGroup::step`] and the
//! `propose*` calls feed it; [`RaftGroup::take_outputs`] says what to send.
//! It has no sockets, no threads and no clock, and all of its randomness
//! comes from a seeded generator, so a simulation replays it exactly.
//!
//! Invariant: an entry is appended and the hard state saved with a synced
//! write *before* any message that depends on them leaves (raft-rs's
//! "persisted messages").

use std::collections::VecDeque;
use std::sync::Arc;

use holdfast_storage::{Batch, Engine, StorageError};
use protobuf::Message as _;
use raft::prelude::*;
use raft::{GetEntriesContext, RawNode, StateRole};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::limits;

/// Errors of a consensus group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The store failed. Local; the group must stop (it may have lost track
    /// of what it promised), unless the error is retryable (a full disk).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored record failed to decode: local corruption, the node stops.
    #[error("corrupt raft state: {0}")]
    Corrupt(String),
    /// raft-rs refused the operation (for example a proposal while there is
    /// no leader). The caller may retry.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// What a group needs from the state machine it replicates.
pub trait StateMachine {
    /// What applying an entry reports to the driver.
    type Event;
    /// Applies a committed normal entry. Writes go into `batch`, which is
    /// written atomically with the new applied index. Must be deterministic.
    fn apply(&mut self, index: u64, data: &[u8], batch: &mut Batch);
    /// Decides whether a committed membership change takes effect. Must be
    /// deterministic. When it returns `true` the group applies it to Raft.
    fn check_conf_change(&mut self, index: u64, cc: &ConfChange, batch: &mut Batch) -> bool;
    /// The state at applied index `index`, for a snapshot.
    fn snapshot(&mut self, index: u64) -> Vec<u8>;
    /// Replaces the state with the snapshot's `data` (at `meta.index`).
    fn restore(
        &mut self,
        meta: &SnapshotMetadata,
        data: &[u8],
        batch: &mut Batch,
    ) -> Result<(), String>;
    /// A restore that a crash interrupted, which the group finishes when it
    /// opens by calling [`StateMachine::restore`] again with empty data.
    /// Only a state machine that writes outside the group's batch while it
    /// restores has one.
    fn interrupted_restore(&self) -> Result<Option<SnapshotMetadata>, String> {
        Ok(None)
    }
    /// Lets go of what [`StateMachine::snapshot`] holds.
    fn release_snapshot(&mut self) {}
    /// Whether every member joins as a learner and is made a voter only
    /// once it holds the data. Then a member without a configuration yet
    /// (opened empty, waiting for its first snapshot) never needs to vote,
    /// and does not: its id may be that of a member that was removed and
    /// deleted its log, which a peer with an older configuration still
    /// counts as a voter. (The metadata group adds voters directly, and a
    /// new voter's vote may be needed before it has received anything.)
    fn members_join_as_learners(&self) -> bool {
        false
    }
    /// Whether a leader leaves telling followers of a new commit index to
    /// its next append or heartbeat (raft-rs `skip_bcast_commit`), instead
    /// of sending every follower one more append each time it commits.
    /// Followers then apply up to a heartbeat later, which suits a group
    /// whose reads all go to the leader.
    fn lazy_commit_broadcast(&self) -> bool {
        false
    }
    /// Whether every round's write is synced, even one with no new
    /// entries, term or vote (only a new commit index and what it
    /// applies). The metadata's is: a node must never forget, across a
    /// crash, an id it saw revoked. A group whose state may go back to an
    /// older applied index after a crash (it is applied again from the
    /// synced log) saves a synced write per round on every replica.
    fn sync_commit_index(&self) -> bool {
        true
    }
    /// Whether the group writes what applying changes, and its log
    /// compactions, without the engine's write-ahead log
    /// ([`Engine::write_unlogged`]): a crash then takes the state back to
    /// the applied index of the engine's last flush, and the log entries
    /// compacted since come back with it (their appends were logged), so
    /// the group applies them again. Each payload is then written to the
    /// write-ahead log once, as a log entry, instead of twice. Implies
    /// `!sync_commit_index()`; the group flushes the engine before a
    /// snapshot replaces the state.
    fn unlogged_applies(&self) -> bool {
        false
    }
    /// Events produced since the last call.
    fn take_events(&mut self) -> Vec<Self::Event>;
}

/// What the driver must do after feeding the group.
#[derive(Debug)]
pub enum Output<E> {
    /// Send this Raft message to its `to` node.
    Send(Message),
    /// A state-machine event.
    Event(E),
    /// The read `ctx` asked for ([`RaftGroup::read_index`]) is linearizable
    /// once this node has applied `index`.
    ReadIndex { ctx: u64, index: u64 },
}

/// A summary of the group for status reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    pub role: StateRole,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

fn key(prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(suffix);
    k
}

/// The term of each log entry, kept apart from the (large) entry so that
/// learning a term never reads an entry's payload.
fn term_key(prefix: &[u8], index: u64) -> Vec<u8> {
    let mut k = key(prefix, b"term/");
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn log_key(prefix: &[u8], index: u64) -> Vec<u8> {
    let mut k = key(prefix, b"log/");
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> GroupError {
    GroupError::Corrupt(format!("{what}: {e}"))
}

/// The Raft log and hard state of one group, kept in an [`Engine`] under
/// `r/<group>/`. Implements raft-rs's `Storage`.
#[derive(Debug)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    prefix: Vec<u8>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into the state machine and
    /// dropped from the log.
    snap_index: u64,
    snap_term: u64,
    last_index: u64,
    /// Terms of entries `snap_index + 1 ..= last_index`, in order.
    terms: std::collections::VecDeque<u64>,
    /// The newest entries, contiguous up to `last_index`, at most
    /// `LOG_CACHE_BYTES_MAX` of them.
    cache: std::collections::VecDeque<Entry>,
    cache_bytes: u64,
    /// The state machine at some applied index (index, term, data,
    /// configuration), served to followers that are too far behind for the
    /// log. Built only when raft-rs asks for it (`snapshot_wanted`).
    sm_snapshot: (u64, u64, Vec<u8>, ConfState),
    snapshot_wanted: std::cell::Cell<bool>,
    /// What each follower is known to have (leader only), so that a
    /// snapshot no newer than that is built anew.
    matched: std::collections::HashMap<u64, u64>,
}

impl LogStore {
    fn open(engine: Arc<dyn Engine>, group: u64) -> Result<Self, GroupError> {
        let prefix = prefix_of(group);
        let mut hard_state = HardState::default();
        if let Some(b) = engine.get(&key(&prefix, b"hs"))? {
            hard_state = HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?;
        }
        let mut conf_state = ConfState::default();
        if let Some(b) = engine.get(&key(&prefix, b"cs"))? {
            conf_state = ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?;
        }
        let (mut snap_index, mut snap_term) = (0, 0);
        if let Some(b) = engine.get(&key(&prefix, b"snap"))? {
            if b.len() != 16 {
                return Err(corrupt("snapshot mark", format!("{} bytes", b.len())));
            }
            snap_index = u64::from_be_bytes(b[..8].try_into().unwrap_or_default());
            snap_term = u64::from_be_bytes(b[8..].try_into().unwrap_or_default());
        }
        // Read the terms of the log after the snapshot: small keys only.
        let mut terms = std::collections::VecDeque::new();
        let mut gap = None;
        engine.scan(
            &term_key(&prefix, snap_index + 1),
            &term_key(&prefix, u64::MAX),
            &mut |k, v| {
                let index = <[u8; 8]>::try_from(&k[k.len() - 8..])
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                let term = <[u8; 8]>::try_from(v).map(u64::from_be_bytes).unwrap_or(0);
                if index != snap_index + 1 + terms.len() as u64 || term == 0 {
                    gap = Some(index);
                    return false;
                }
                terms.push_back(term);
                true
            },
        )?;
        if let Some(index) = gap {
            return Err(corrupt(
                "log terms",
                format!(
                    "unexpected entry {index} after {} entries from {}",
                    terms.len(),
                    snap_index + 1
                ),
            ));
        }
        let last_index = snap_index + terms.len() as u64;
        if last_index < snap_index {
            return Err(corrupt(
                "log",
                format!("last index {last_index} below snapshot {snap_index}"),
            ));
        }
        Ok(Self {
            engine,
            prefix,
            hard_state,
            conf_state,
            snap_index,
            snap_term,
            last_index,
            terms,
            cache: std::collections::VecDeque::new(),
            cache_bytes: 0,
            sm_snapshot: (0, 0, Vec::new(), ConfState::default()),
            snapshot_wanted: std::cell::Cell::new(false),
            matched: std::collections::HashMap::new(),
        })
    }

    fn first(&self) -> u64 {
        self.snap_index + 1
    }

    /// Adds entries to `batch`, replacing any conflicting tail.
    fn append(&mut self, entries: &[Entry], batch: &mut Batch) -> Result<(), GroupError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.snap_index {
            return Err(corrupt(
                "append",
                format!(
                    "entry {} is before the snapshot {}",
                    first.index, self.snap_index
                ),
            ));
        }
        if first.index > self.last_index + 1 {
            return Err(corrupt(
                "append",
                format!(
                    "entry {} leaves a gap after {}",
                    first.index, self.last_index
                ),
            ));
        }
        if first.index <= self.last_index {
            batch.delete_range(
                log_key(&self.prefix, first.index),
                log_key(&self.prefix, self.last_index + 1),
            );
            batch.delete_range(
                term_key(&self.prefix, first.index),
                term_key(&self.prefix, self.last_index + 1),
            );
            self.terms.truncate((first.index - self.first()) as usize);
            while self.cache.back().is_some_and(|e| e.index >= first.index) {
                if let Some(e) = self.cache.pop_back() {
                    self.cache_bytes -= e.compute_size() as u64;
                }
            }
        }
        if self
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        for e in entries {
            let bytes = e.write_to_bytes().map_err(|e| corrupt("entry encode", e))?;
            batch.put(log_key(&self.prefix, e.index), bytes);
            batch.put(
                term_key(&self.prefix, e.index),
                e.term.to_be_bytes().to_vec(),
            );
            self.terms.push_back(e.term);
            self.cache_bytes += e.compute_size() as u64;
            self.cache.push_back(e.clone());
        }
        while self.cache_bytes > limits::LOG_CACHE_BYTES_MAX && self.cache.len() > 1 {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.compute_size() as u64;
            }
        }
        self.last_index = entries.last().map(|e| e.index).unwrap_or(self.last_index);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState, batch: &mut Batch) -> Result<(), GroupError> {
        self.hard_state = hs.clone();
        batch.put(
            key(&self.prefix, b"hs"),
            hs.write_to_bytes()
                .map_err(|e| corrupt("hard state encode", e))?,
        );
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState, batch: &mut Batch) -> Result<(), GroupError> {
        self.conf_state = cs.clone();
        batch.put(
            key(&self.prefix, b"cs"),
            cs.write_to_bytes()
                .map_err(|e| corrupt("conf state encode", e))?,
        );
        Ok(())
    }

    fn set_snap_mark(&mut self, index: u64, term: u64, batch: &mut Batch) {
        self.snap_index = index;
        self.snap_term = term;
        let mut v = index.to_be_bytes().to_vec();
        v.extend_from_slice(&term.to_be_bytes());
        batch.put(key(&self.prefix, b"snap"), v);
    }

    /// Drops log entries up to and including `index` (which must be applied).
    fn compact(&mut self, index: u64, batch: &mut Batch) -> Result<(), GroupError> {
        if index <= self.snap_index {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        if index - self.snap_index <= limits::LOG_COMPACT_POINT_DELETES_MAX {
            // Point deletions: every RocksDB read walks the range
            // deletions of the memtable, so one per compaction would slow
            // each read down until the next flush.
            for i in self.snap_index + 1..=index {
                batch.delete(log_key(&self.prefix, i));
                batch.delete(term_key(&self.prefix, i));
            }
        } else {
            batch.delete_range(log_key(&self.prefix, 0), log_key(&self.prefix, index + 1));
            batch.delete_range(term_key(&self.prefix, 0), term_key(&self.prefix, index + 1));
        }
        let dropped = (index - self.snap_index) as usize;
        self.terms.drain(..dropped.min(self.terms.len()));
        while self.cache.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.compute_size() as u64;
            }
        }
        self.set_snap_mark(index, term, batch);
        Ok(())
    }

    /// Installs a snapshot received from the leader: the whole log goes.
    fn install_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
        batch: &mut Batch,
    ) -> Result<(), GroupError> {
        batch.delete_range(log_key(&self.prefix, 0), log_key(&self.prefix, u64::MAX));
        batch.delete_range(term_key(&self.prefix, 0), term_key(&self.prefix, u64::MAX));
        self.terms.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.set_snap_mark(meta.index, meta.term, batch);
        self.last_index = meta.index;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(&hs, batch)?;
        self.set_conf_state(meta.get_conf_state(), batch)
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        Ok(raft::RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        // The log tail is in memory: what followers and the apply path ask
        // for is almost always there.
        if let Some(first_cached) = self.cache.front().map(|e| e.index) {
            if low >= first_cached {
                for e in self
                    .cache
                    .iter()
                    .skip((low - first_cached) as usize)
                    .take((high - low) as usize)
                {
                    size += e.compute_size() as u64;
                    if !out.is_empty() && size > max {
                        break;
                    }
                    out.push(e.clone());
                }
                return Ok(out);
            }
        }
        let mut err = None;
        self.engine
            .scan(
                &log_key(&self.prefix, low),
                &log_key(&self.prefix, high),
                &mut |_, v| match Entry::parse_from_bytes(v) {
                    Ok(e) => {
                        size += v.len() as u64;
                        // Always return at least one entry, as raft-rs requires.
                        if !out.is_empty() && size > max {
                            return false;
                        }
                        out.push(e);
                        true
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                },
            )
            .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))?;
        if let Some(e) = err {
            return Err(raft::Error::CodecError(e));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        self.terms
            .get((idx - self.first()) as usize)
            .copied()
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // The configuration travels with the state it was built from.
        let (index, term, data, conf_state) = &self.sm_snapshot;
        // A follower refuses a snapshot whose configuration does not name
        // it (one built before `to` joined), or that is not ahead of what it
        // has (one built long ago).
        let names_to = conf_state.voters.contains(&to) || conf_state.learners.contains(&to);
        let ahead = self.matched.get(&to).is_none_or(|m| index > m);
        if *index < request_index || *index == 0 || !names_to || !ahead {
            // The group builds one when this round ends; raft-rs asks
            // again on the next heartbeat response.
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: data.clone().into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = *index;
        meta.term = *term;
        meta.set_conf_state(conf_state.clone());
        Ok(snap)
    }
}

/// A slog drain that forwards raft-rs's log lines, with their key-values,
/// to `tracing`.
struct TracingDrain;

/// Collects slog key-values as `k=v` text.
struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        use slog::KV as _;
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let kv = kv.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}{kv}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}{kv}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}{kv}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}{kv}", record.msg()),
        }
        Ok(())
    }
}

/// One consensus group: raft-rs plus the state machine it replicates.
pub struct RaftGroup<S: StateMachine> {
    raw: RawNode<LogStore>,
    sm: S,
    engine: Arc<dyn Engine>,
    prefix: Vec<u8>,
    applied: u64,
    rng: ChaCha8Rng,
    last_role: (u64, StateRole),
    outputs: VecDeque<Output<S::Event>>,
    log_retention: Option<u64>,
    /// Entries a leader keeps behind the applied index for followers that
    /// are still replicating, at most.
    log_lag_max: u64,
    /// Ticks so far, and the tick each peer was last heard from: a
    /// follower heard from lately still replicates from the log.
    ticks: u64,
    heard: std::collections::HashMap<u64, u64>,
    held: bool,
    /// Leadership transfers this node started (see [`RaftGroup::lease_epoch`]).
    transfers: u64,
    /// Peers sent a snapshot in this round, reported as delivered after it.
    snapshots_sent: Vec<u64>,
    group: u64,
    /// Reads asked of a leader that has not yet committed an entry of its
    /// own term. raft-rs drops those silently; they are asked again once it
    /// has, and dropped if it stops leading first (the caller's round then
    /// expires, as for any lost read).
    deferred_reads: Vec<u64>,
}

impl<S: StateMachine> std::fmt::Debug for RaftGroup<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGroup")
            .field("status", &self.status())
            .finish()
    }
}

/// Where group `group` keeps its log and Raft state in the engine.
pub fn prefix_of(group: u64) -> Vec<u8> {
    let mut prefix = b"r/".to_vec();
    prefix.extend_from_slice(&group.to_be_bytes());
    prefix.push(b'/');
    prefix
}

/// Whether `engine` holds any state of group `group`.
pub fn exists(engine: Arc<dyn Engine>, group: u64) -> Result<bool, GroupError> {
    let store = LogStore::open(engine, group)?;
    Ok(store.hard_state.term != 0 || store.last_index != 0)
}

/// Writes the first state of a brand-new group: a snapshot mark at index 1
/// with `voters` as the configuration, together with `sm_batch`, the state
/// machine's first state. Every member that joins later receives this state
/// as a snapshot.
pub fn bootstrap(
    engine: Arc<dyn Engine>,
    group: u64,
    voters: &[u64],
    sm_batch: Batch,
) -> Result<(), GroupError> {
    let mut store = LogStore::open(engine.clone(), group)?;
    if store.last_index != 0 || store.hard_state.term != 0 {
        return Err(corrupt("bootstrap", "the group already has state"));
    }
    let mut batch = sm_batch;
    store.set_snap_mark(1, 1, &mut batch);
    let hs = HardState {
        term: 1,
        vote: 0,
        commit: 1,
        ..Default::default()
    };
    store.set_hard_state(&hs, &mut batch)?;
    let cs = ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    };
    store.set_conf_state(&cs, &mut batch)?;
    batch.put(key(&store.prefix, b"applied"), 1u64.to_be_bytes().to_vec());
    engine.write(batch, true)?;
    Ok(())
}

impl<S: StateMachine> RaftGroup<S> {
    /// Opens group `group` as node `id` from `engine`. `sm` must already be
    /// loaded from the same engine. `seed` drives election timeouts.
    pub fn open(
        id: u64,
        group: u64,
        engine: Arc<dyn Engine>,
        sm: S,
        seed: u64,
    ) -> Result<Self, GroupError> {
        Self::open_with(id, group, engine, sm, seed, limits::RAFT_INFLIGHT_MSGS_MAX)
    }

    /// [`RaftGroup::open`] with at most `inflight_msgs` appends in flight to
    /// one follower: a group with large entries bounds what a catching-up
    /// follower costs the leader per round (resync throttling).
    pub fn open_with(
        id: u64,
        group: u64,
        engine: Arc<dyn Engine>,
        sm: S,
        seed: u64,
        inflight_msgs: usize,
    ) -> Result<Self, GroupError> {
        let mut store = LogStore::open(engine.clone(), group)?;
        let prefix = store.prefix.clone();
        let mut sm = sm;
        // A crash in the middle of a restore: finish it first.
        if let Some(meta) = sm
            .interrupted_restore()
            .map_err(|e| corrupt("interrupted snapshot restore", e))?
        {
            let mut batch = Batch::new();
            store.install_snapshot(&meta, &mut batch)?;
            sm.restore(&meta, &[], &mut batch)
                .map_err(|e| corrupt("interrupted snapshot restore", e))?;
            batch.put(key(&prefix, b"applied"), meta.index.to_be_bytes().to_vec());
            engine.write(batch, true)?;
            tracing::info!(
                group,
                index = meta.index,
                "finished an interrupted snapshot restore"
            );
        }
        let applied = match engine.get(&key(&prefix, b"applied"))? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("applied index", "bad length"))?,
            ),
            None => 0,
        };
        if applied > store.hard_state.commit.max(store.snap_index) {
            return Err(corrupt(
                "applied index",
                format!("{applied} is beyond commit {}", store.hard_state.commit),
            ));
        }
        let cfg = raft::Config {
            id,
            election_tick: limits::ELECTION_TICKS,
            heartbeat_tick: limits::HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: limits::RAFT_MSG_BYTES_MAX,
            max_inflight_msgs: inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            skip_bcast_commit: sm.lazy_commit_broadcast(),
            ..Default::default()
        };
        let logger = slog::Logger::root(TracingDrain, slog::o!("group" => group));
        let raw = RawNode::new(&cfg, store, &logger)?;
        let mut g = Self {
            raw,
            sm,
            engine,
            prefix,
            applied,
            rng: ChaCha8Rng::seed_from_u64(seed ^ id.rotate_left(17)),
            last_role: (0, StateRole::Follower),
            outputs: VecDeque::new(),
            log_retention: Some(limits::META_LOG_ENTRIES_MAX),
            log_lag_max: limits::META_LOG_ENTRIES_MAX,
            ticks: 0,
            heard: std::collections::HashMap::new(),
            held: false,
            transfers: 0,
            snapshots_sent: Vec::new(),
            group,
            deferred_reads: Vec::new(),
        };
        g.rerandomize_timeout();
        Ok(g)
    }

    /// raft-rs draws election timeouts from the thread RNG; we overwrite
    /// them from our seeded one whenever raft-rs may have drawn a new one
    /// (on a change of term or role), so that runs are reproducible.
    fn rerandomize_timeout(&mut self) {
        let now = (self.raw.raft.term, self.raw.raft.state);
        if now != self.last_role || self.last_role.0 == 0 {
            let t = self
                .rng
                .gen_range(limits::ELECTION_TICKS..2 * limits::ELECTION_TICKS);
            self.raw.raft.set_randomized_election_timeout(t);
            self.last_role = now;
        }
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    pub fn status(&self) -> GroupStatus {
        let r = &self.raw.raft;
        let cs = self.raw.store().conf_state.clone();
        GroupStatus {
            id: r.id,
            term: r.term,
            leader: (r.leader_id != 0).then_some(r.leader_id),
            role: r.state,
            commit: r.raft_log.committed,
            applied: self.applied,
            voters: cs.voters,
            learners: cs.learners,
        }
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) -> Result<(), GroupError> {
        self.ticks += 1;
        self.raw.tick();
        self.process()
    }

    /// Feeds a message from a peer. Messages for another node, or that
    /// raft-rs rejects, are dropped (the sender retries).
    pub fn step(&mut self, msg: Message) -> Result<(), GroupError> {
        if msg.to != self.id() {
            return Ok(());
        }
        let cs = &self.raw.store().conf_state;
        if self.sm.members_join_as_learners()
            && cs.voters.is_empty()
            && cs.learners.is_empty()
            && matches!(
                msg.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
        {
            // Its vote would stand for the log an earlier member with its
            // id held (found by the volume simulation: a replica removed,
            // deleted and added back elected a stale leader, and entries
            // committed before the removal were lost).
            return Ok(());
        }
        if self.ticks < limits::ELECTION_TICKS as u64
            && matches!(
                msg.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
            && msg.context != raft::CAMPAIGN_TRANSFER
        {
            // A node that just started has forgotten when it last heard
            // from a leader, so raft-rs would grant this vote at once. It
            // waits one election timeout first, as if it had just heard
            // from one: a leader's read lease counts on no voter electing
            // another leader within an election timeout of its last
            // heartbeat (see `node::driver`, read leases).
            return Ok(());
        }
        if msg.get_msg_type() == MessageType::MsgHeartbeat
            && msg.commit > self.raw.raft.raft_log.last_index()
        {
            // A leader's heartbeat commits no more than this node has
            // acknowledged. This one was meant for an earlier member with
            // this id, which had the entries (a volume replica removed,
            // deleted and added back), and raft-rs panics on it (found by
            // the volume simulation).
            return Ok(());
        }
        self.heard.insert(msg.from, self.ticks);
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(error = %e, "dropped raft message");
        }
        self.process()
    }

    /// Proposes a normal entry. Followers forward it to the leader.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), GroupError> {
        self.raw.propose(Vec::new(), data)?;
        self.process()
    }

    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(), GroupError> {
        self.raw.propose_conf_change(Vec::new(), cc)?;
        self.process()
    }

    /// Starts a linearizable read: an [`Output::ReadIndex`] with the same
    /// `ctx` follows once the leader has confirmed it still leads. Only a
    /// leader answers; elsewhere the request is dropped.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), GroupError> {
        if self.raw.raft.state == StateRole::Leader && !self.raw.raft.commit_to_current_term() {
            if self.deferred_reads.len() < limits::READS_DEFERRED_MAX {
                self.deferred_reads.push(ctx);
            }
            return Ok(());
        }
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        self.process()
    }

    /// What a read lease is bound to: `Some((term, transfers))` while this
    /// node leads and hands the leadership to nobody. A transfer lets the
    /// target win an election at once, ignoring the voters' leases, so a
    /// lease taken before one must not outlive it: it counts here.
    pub fn lease_epoch(&self) -> Option<(u64, u64)> {
        (self.raw.raft.state == StateRole::Leader && self.raw.raft.lead_transferee.is_none())
            .then_some((self.raw.raft.term, self.transfers))
    }

    /// How many entries the log keeps behind the applied index (a leader
    /// keeps more, up to `lag_max`, for active followers that still need
    /// them);
    /// `None` keeps them all.
    pub fn set_log_retention(&mut self, entries: Option<u64>, lag_max: u64) {
        self.log_retention = entries;
        self.log_lag_max = lag_max;
    }

    /// If this node leads, hands the leadership to the voter whose log is
    /// the most advanced. Returns whether a transfer started.
    pub fn transfer_leadership_away(&mut self) -> Result<bool, GroupError> {
        let me = self.id();
        if self.raw.raft.state != StateRole::Leader {
            return Ok(false);
        }
        let voters: Vec<u64> = self.raw.store().conf_state.voters.clone();
        let best = voters
            .into_iter()
            .filter(|v| *v != me)
            .filter_map(|v| self.raw.raft.prs().get(v).map(|p| (p.matched, v)))
            .max();
        let Some((_, to)) = best else {
            return Ok(false);
        };
        self.transfers += 1;
        self.raw.transfer_leader(to);
        self.process()?;
        Ok(true)
    }

    /// Whether `node` is a voter whose log matches this leader's to within
    /// [`limits::TRANSFER_LAG_ENTRIES_MAX`] entries, so that a hand-over to
    /// it completes at once.
    pub fn caught_up_voter(&self, node: u64) -> bool {
        let last = self.raw.raft.raft_log.last_index();
        self.raw.raft.state == StateRole::Leader
            && node != self.id()
            && self.raw.store().conf_state.voters.contains(&node)
            && self
                .raw
                .raft
                .prs()
                .get(node)
                .is_some_and(|p| p.matched + limits::TRANSFER_LAG_ENTRIES_MAX >= last)
    }

    /// If this node leads and `to` is a caught-up voter, hands it the
    /// leadership. Returns whether a transfer started.
    pub fn transfer_leadership_to(&mut self, to: u64) -> Result<bool, GroupError> {
        if !self.caught_up_voter(to) {
            return Ok(false);
        }
        self.transfers += 1;
        self.raw.transfer_leader(to);
        self.process()?;
        Ok(true)
    }

    /// Asks this node to start an election now (used at bootstrap).
    pub fn campaign(&mut self) -> Result<(), GroupError> {
        self.raw.campaign()?;
        self.process()
    }

    /// Reports that a peer could not be reached, so raft-rs probes it
    /// gently instead of streaming to it.
    pub fn report_unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
    }

    pub fn take_outputs(&mut self) -> impl Iterator<Item = Output<S::Event>> + '_ {
        self.outputs.drain(..)
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in &msgs {
            self.note_sent(m);
        }
        self.outputs.extend(msgs.into_iter().map(Output::Send));
    }

    fn note_sent(&mut self, m: &Message) {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            self.snapshots_sent.push(m.to);
        }
    }

    /// Defers persisting and sending until [`RaftGroup::release`], so that
    /// many inputs share one synced write.
    pub fn hold(&mut self) {
        self.held = true;
    }

    /// Ends [`RaftGroup::hold`]: persists and sends what the held inputs
    /// produced.
    pub fn release(&mut self) -> Result<(), GroupError> {
        self.held = false;
        self.process()
    }

    /// As [`RaftGroup::release`], but hands the messages that may leave
    /// before this node persists (a leader's appends, Raft thesis 10.2.1)
    /// to `early` *before* the synced write instead of queueing them as
    /// outputs, so that followers write their copy while the leader writes
    /// its own. Messages that depend on the write still follow it as
    /// outputs.
    pub fn release_with(&mut self, early: &mut dyn FnMut(Message)) -> Result<(), GroupError> {
        self.held = false;
        self.process_with(Some(early))
    }

    fn process(&mut self) -> Result<(), GroupError> {
        self.process_with(None)
    }

    fn process_with(&mut self, early: Option<&mut dyn FnMut(Message)>) -> Result<(), GroupError> {
        self.rerandomize_timeout();
        if !self.deferred_reads.is_empty() {
            if self.raw.raft.state != StateRole::Leader {
                self.deferred_reads.clear();
            } else if self.raw.raft.commit_to_current_term() {
                for ctx in std::mem::take(&mut self.deferred_reads) {
                    self.raw.read_index(ctx.to_be_bytes().to_vec());
                }
            }
        }
        if self.held {
            return Ok(());
        }
        // raft-rs asked for a snapshot we did not have: build it now (every
        // applied entry is in the engine), and raft-rs asks again.
        self.build_snapshot_if_wanted();
        if self.raw.raft.state == StateRole::Leader {
            let matched = self
                .raw
                .raft
                .prs()
                .iter()
                .map(|(id, pr)| (*id, pr.matched))
                .collect();
            self.raw.mut_store().matched = matched;
        }
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        let read_states = ready.take_read_states();
        // A leader may send before it persists (Raft thesis 10.2.1).
        let msgs = ready.take_messages();
        match early {
            Some(early) => {
                for m in msgs {
                    self.note_sent(&m);
                    early(m);
                }
            }
            None => self.send(msgs),
        }

        let mut batch = Batch::new();
        let unlogged = self.sm.unlogged_applies();
        // New entries, a snapshot, a term or a vote must be durable before
        // the messages that depend on them leave. A new commit index alone
        // need not be (raft-rs learns it again from the leader), unless the
        // state machine wants its applied state never to go back.
        let mut sync = self.sm.sync_commit_index()
            || !ready.snapshot().is_empty()
            || !ready.entries().is_empty();
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            if unlogged {
                // The snapshot's changes are logged, and written over the
                // state as it is now: that state must survive a crash
                // with them (and the install that deletes the log).
                self.engine.flush()?;
            }
            self.raw
                .mut_store()
                .install_snapshot(snap.get_metadata(), &mut batch)?;
            self.sm
                .restore(snap.get_metadata(), &snap.data, &mut batch)
                .map_err(|e| corrupt("snapshot from leader", e))?;
            self.applied = snap.get_metadata().index;
            batch.put(
                key(&self.prefix, b"applied"),
                self.applied.to_be_bytes().to_vec(),
            );
        }
        let mut applied = Batch::new();
        self.apply(
            ready.take_committed_entries(),
            if unlogged { &mut applied } else { &mut batch },
        )?;
        self.raw.mut_store().append(ready.entries(), &mut batch)?;
        if let Some(hs) = ready.hs() {
            let hs = hs.clone();
            let old = &self.raw.store().hard_state;
            sync |= hs.term != old.term || hs.vote != old.vote;
            self.raw.mut_store().set_hard_state(&hs, &mut batch)?;
        }
        if !batch.is_empty() {
            self.engine.write(batch, sync)?;
        }
        // After the entries it applies (a leader may apply entries that a
        // quorum of followers holds before it holds them itself): a flush
        // keeps a prefix of the writes, so the applied state never
        // survives without them.
        if !applied.is_empty() {
            self.engine.write_unlogged(applied)?;
        }
        self.send(ready.take_persisted_messages());

        let mut light = self.raw.advance(ready);
        let mut batch = Batch::new();
        if let Some(commit) = light.commit_index() {
            let mut hs = self.raw.store().hard_state.clone();
            hs.commit = commit;
            self.raw.mut_store().set_hard_state(&hs, &mut batch)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries(), &mut batch)?;
        if unlogged && !batch.is_empty() {
            self.engine.write_unlogged(batch)?;
        } else if !batch.is_empty() {
            // Not synced: what was applied is durable in the (synced) log
            // and is applied again after a crash; the next synced write
            // (before any compaction) makes it durable too.
            self.engine.write(batch, false)?;
        }
        self.raw.advance_apply();
        self.maybe_compact()?;
        // The transport gives no delivery receipts: count a snapshot as
        // delivered. If it was lost, the follower rejects the next append
        // and raft-rs sends a new one; without this report the follower
        // would wait in snapshot state for ever.
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
        self.build_snapshot_if_wanted();
        for rs in read_states {
            let ctx = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or_default());
            self.outputs.push_back(Output::ReadIndex {
                ctx,
                index: rs.index,
            });
        }
        self.outputs
            .extend(self.sm.take_events().into_iter().map(Output::Event));
        self.rerandomize_timeout();
        Ok(())
    }

    /// Builds the snapshot raft-rs asked for, if it did.
    fn build_snapshot_if_wanted(&mut self) {
        if self.raw.store().snapshot_wanted.replace(false) {
            let Ok(term) = raft::Storage::term(self.raw.store(), self.applied) else {
                return;
            };
            let data = self.sm.snapshot(self.applied);
            tracing::info!(
                group = self.group,
                index = self.applied,
                bytes = data.len(),
                "built snapshot"
            );
            let conf_state = self.raw.store().conf_state.clone();
            self.raw.mut_store().sm_snapshot = (self.applied, term, data, conf_state);
        }
    }

    /// Forgets the snapshot built for followers (and what the state machine
    /// holds for it); the next follower that needs one gets a new one.
    pub fn drop_snapshot(&mut self) {
        self.raw.mut_store().sm_snapshot = (0, 0, Vec::new(), ConfState::default());
        self.sm.release_snapshot();
    }

    fn apply(&mut self, entries: Vec<Entry>, batch: &mut Batch) -> Result<(), GroupError> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if !e.data.is_empty() {
                        self.sm.apply(e.index, &e.data, batch);
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| corrupt("committed conf change", err))?;
                    if self.sm.check_conf_change(e.index, &cc, batch) {
                        let cs = self.raw.apply_conf_change(&cc)?;
                        self.raw.mut_store().set_conf_state(&cs, batch)?;
                        // raft-rs 0.7 leaves a removed leader leading, and it
                        // panics on its next commit: step down instead.
                        let me = self.raw.raft.id;
                        if self.raw.raft.state == StateRole::Leader && !cs.voters.contains(&me) {
                            let term = self.raw.raft.term;
                            self.raw.raft.become_follower(term, raft::INVALID_ID);
                        }
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    // holdfast never proposes these; a committed one is a
                    // foreign or corrupt log.
                    return Err(corrupt("log", "unexpected ConfChangeV2 entry"));
                }
            }
            self.applied = e.index;
        }
        batch.put(
            key(&self.prefix, b"applied"),
            self.applied.to_be_bytes().to_vec(),
        );
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), GroupError> {
        let Some(keep) = self.log_retention else {
            return Ok(());
        };
        let mut to = self.applied.saturating_sub(keep);
        if self.raw.raft.state == StateRole::Leader {
            // Keep what followers heard from lately still need, within the
            // lag limit; a follower further behind, or silent, gets a
            // snapshot. (Not raft-rs's `recent_active`: it is cleared for
            // every follower at each quorum check.)
            let floor = self.applied.saturating_sub(self.log_lag_max.max(keep));
            let me = self.raw.raft.id;
            for (id, pr) in self.raw.raft.prs().iter() {
                let lately = self.heard.get(id).is_some_and(|t| {
                    self.ticks.saturating_sub(*t) <= 2 * limits::ELECTION_TICKS as u64
                });
                if *id != me && lately {
                    to = to.min(pr.matched.max(floor));
                }
            }
        }
        // Compact in steps of `keep` entries, not after every entry.
        if to < self.raw.store().first() + keep.max(1) {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.raw.mut_store().compact(to, &mut batch)?;
        if self.sm.unlogged_applies() {
            // Kept by a crash only with the applied state written before
            // it (a flush keeps a prefix), which no longer needs them.
            self.engine.write_unlogged(batch)?;
        } else {
            // Not synced: the engine keeps writes in order through a
            // crash, so if this one survives, so do the applied entries
            // written before it.
            self.engine.write(batch, false)?;
        }
        Ok(())
    }
}
