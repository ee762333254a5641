//! The consensus thread: the only owner of the node's consensus groups, the
//! metadata group and one group per local volume replica. It turns
//! wall-clock time into ticks, feeds the groups from a bounded inbox, hands
//! their messages to the transport, settles proposals and reads, and
//! publishes a snapshot of the state for readers.
//!
//! Inputs are taken in batches (up to `INBOX_BATCH_MAX`) with the groups
//! held, so that many proposals share one synced write.
//!
//! Invariant: only this thread touches the groups; everyone else talks to
//! it through the bounded inbox ([`DriverHandle`]) and reads [`Shared`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use holdfast_core::fs::{FsEvent, FsMachine, FsOp, FsProposal, FsReply, FsView, OpTag, Stats};
use holdfast_core::group::{self, GroupError, GroupStatus, Output, RaftGroup};
use holdfast_core::limits;
use holdfast_core::meta::{
    Change, Command, ConfContext, MetaEvent, MetaMachine, MetaState, Outcome, Proposal, META_GROUP,
};
use holdfast_core::placement::WriterAffinity;
use holdfast_core::resync::PullStats;
use holdfast_core::wire::{self, PeerMsg, ReplicaChange, ReplicaStatus, VolReply};
use holdfast_core::{RaftMessage, StateRole};
use holdfast_storage::Engine;
use holdfast_transport::Transport;
use tokio::sync::oneshot;

use crate::faults::{broken, Break};
use crate::metrics::{label, Metrics};

/// Why a metadata proposal did not produce an outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The cluster has no leader this node can reach. Retry later.
    #[error("no leader reachable; retry when the cluster has a majority")]
    NoLeader,
    /// The node is overloaded. Retry later.
    #[error("node busy; retry")]
    Busy,
    /// No outcome within the deadline; the change may or may not happen.
    #[error("timed out waiting for the cluster; the outcome is unknown")]
    Timeout,
    /// The state machine refused the change (a user error).
    #[error("{0}")]
    Refused(String),
    /// The node is stopping.
    #[error("node is shutting down")]
    Stopped,
}

type Reply = oneshot::Sender<Result<Outcome, ProposeError>>;
/// A view of a volume replica and the index applied to it when it was
/// handed out (it may move on while it is read).
type ReadReady = oneshot::Sender<Result<(FsView, u64), VolReply>>;

pub enum Input {
    Peer {
        from: u64,
        group: u64,
        msg: RaftMessage,
    },
    Propose {
        cmd: Command,
        reply: Reply,
    },
    ConfChange {
        change: Change,
        reply: Reply,
    },
    FsOp {
        volume: u64,
        op: FsOp,
        tag: Option<OpTag>,
        reply: oneshot::Sender<VolReply>,
    },
    FsRead {
        volume: u64,
        reply: ReadReady,
    },
    /// A view of the local replica once it has applied `index`, on any
    /// replica that has already learned that `index` is committed.
    FsReadAt {
        volume: u64,
        index: u64,
        reply: ReadReady,
    },
    VolStatus {
        volume: u64,
        reply: oneshot::Sender<VolReply>,
    },
    VolChange {
        volume: u64,
        node: u64,
        change: ReplicaChange,
        reply: oneshot::Sender<VolReply>,
    },
    /// The local replica's applied index and a reader of it, unsynchronised.
    VolView {
        volume: u64,
        reply: oneshot::Sender<Option<(u64, FsView)>>,
    },
    /// A resync pull ([`crate::resync`]) of `volume`'s snapshot at `index`
    /// ended.
    ResyncDone {
        volume: u64,
        index: u64,
        result: Result<PullStats, String>,
    },
    Shutdown,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Peer { from, group, .. } => write!(f, "Peer({from}, group {group})"),
            Input::Propose { .. } => f.write_str("Propose"),
            Input::ConfChange { .. } => f.write_str("ConfChange"),
            Input::FsOp { volume, .. } => write!(f, "FsOp({volume})"),
            Input::FsRead { volume, .. } => write!(f, "FsRead({volume})"),
            Input::FsReadAt { volume, index, .. } => write!(f, "FsReadAt({volume}, {index})"),
            Input::VolStatus { volume, .. } => write!(f, "VolStatus({volume})"),
            Input::VolChange { volume, node, .. } => write!(f, "VolChange({volume}, {node})"),
            Input::VolView { volume, .. } => write!(f, "VolView({volume})"),
            Input::ResyncDone { volume, index, .. } => write!(f, "ResyncDone({volume}, {index})"),
            Input::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// What readers see of the consensus state, refreshed by the driver.
#[derive(Debug, Clone)]
pub struct Shared {
    pub status: GroupStatus,
    pub meta: Arc<MetaState>,
    /// Local volume replicas: their group status and counters.
    pub volumes: BTreeMap<u64, (GroupStatus, Stats)>,
    /// Set when the driver stopped on a fatal error.
    pub fatal: Option<String>,
}

/// Why a call into the consensus thread got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum CallError {
    /// The inbox is full; nothing was handed over.
    #[error("node busy")]
    Busy,
    /// The consensus thread is gone; nothing was handed over.
    #[error("node stopping")]
    Stopped,
    /// Handed over, but no answer in time: the outcome is unknown.
    #[error("no answer from the consensus thread")]
    NoAnswer,
}

/// The handle through which async code talks to the driver.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    tx: SyncSender<Input>,
    shared: Arc<RwLock<Shared>>,
}

impl DriverHandle {
    pub fn shared(&self) -> Shared {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hands a peer's Raft message to the driver; drops it if the inbox is
    /// full (the peer resends).
    pub fn deliver(&self, from: u64, group: u64, msg: RaftMessage) -> bool {
        self.tx.try_send(Input::Peer { from, group, msg }).is_ok()
    }

    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::Propose { cmd, reply }, rx).await
    }

    pub async fn conf_change(&self, change: Change) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::ConfChange { change, reply }, rx).await
    }

    /// Hands `input` to the consensus thread and waits for its answer.
    async fn call<T>(&self, input: Input, rx: oneshot::Receiver<T>) -> Result<T, CallError> {
        match self.tx.try_send(input) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(CallError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(CallError::Stopped),
        }
        match tokio::time::timeout(
            Duration::from_millis(limits::PROPOSAL_TIMEOUT_MS + 1000),
            rx,
        )
        .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(CallError::Stopped),
            Err(_) => Err(CallError::NoAnswer),
        }
    }

    async fn submit(
        &self,
        input: Input,
        rx: oneshot::Receiver<Result<Outcome, ProposeError>>,
    ) -> Result<Outcome, ProposeError> {
        match self.call(input, rx).await {
            Ok(r) => r,
            Err(CallError::Busy) => Err(ProposeError::Busy),
            Err(CallError::Stopped) => Err(ProposeError::Stopped),
            Err(CallError::NoAnswer) => Err(ProposeError::Timeout),
        }
    }

    /// Replicates `op` on local volume replica `volume`, if it leads.
    pub async fn vol_op(&self, volume: u64, op: FsOp, tag: Option<OpTag>) -> VolReply {
        let (reply, rx) = oneshot::channel();
        self.ask(
            Input::FsOp {
                volume,
                op,
                tag,
                reply,
            },
            rx,
        )
        .await
    }

    /// A view of local replica `volume` at a linearizable point, if it
    /// leads, and the index applied to it.
    pub async fn vol_read(&self, volume: u64) -> Result<(FsView, u64), VolReply> {
        let (reply, rx) = oneshot::channel();
        self.call(Input::FsRead { volume, reply }, rx)
            .await
            .unwrap_or_else(|e| Err(VolReply::Unavailable(e.to_string())))
    }

    /// A view of local replica `volume` once it has applied `index`, if it
    /// knows that `index` is committed and is not resyncing.
    pub async fn vol_read_at(&self, volume: u64, index: u64) -> Result<(FsView, u64), VolReply> {
        let (reply, rx) = oneshot::channel();
        self.call(
            Input::FsReadAt {
                volume,
                index,
                reply,
            },
            rx,
        )
        .await
        .unwrap_or_else(|e| Err(VolReply::Unavailable(e.to_string())))
    }

    /// The digest of local replica `volume` and the index it was taken at.
    pub async fn vol_digest(&self, volume: u64) -> VolReply {
        let (reply, rx) = oneshot::channel();
        match self.call(Input::VolView { volume, reply }, rx).await {
            Ok(Some((applied, view))) => {
                match tokio::task::spawn_blocking(move || view.digest()).await {
                    Ok(Ok(digest)) => VolReply::Digest { applied, digest },
                    _ => VolReply::Unavailable("cannot read the replica".into()),
                }
            }
            Ok(None) => VolReply::Unavailable("not a replica of this volume".into()),
            Err(e) => VolReply::Unavailable(e.to_string()),
        }
    }

    /// The applied index of local replica `volume` and a reader of it,
    /// unsynchronised.
    pub async fn vol_view(&self, volume: u64) -> Option<(u64, FsView)> {
        let (reply, rx) = oneshot::channel();
        self.call(Input::VolView { volume, reply }, rx)
            .await
            .ok()
            .flatten()
    }

    pub async fn vol_status(&self, volume: u64) -> VolReply {
        let (reply, rx) = oneshot::channel();
        self.ask(Input::VolStatus { volume, reply }, rx).await
    }

    pub async fn vol_change(&self, volume: u64, node: u64, change: ReplicaChange) -> VolReply {
        let (reply, rx) = oneshot::channel();
        let input = Input::VolChange {
            volume,
            node,
            change,
            reply,
        };
        self.ask(input, rx).await
    }

    async fn ask(&self, input: Input, rx: oneshot::Receiver<VolReply>) -> VolReply {
        match self.call(input, rx).await {
            Ok(r) => r,
            // Not taken, or sent but unanswered (an op may still commit):
            // the caller asks again, which a tagged op makes safe.
            Err(e) => VolReply::Unavailable(e.to_string()),
        }
    }

    pub fn shutdown(&self) {
        let _ = self.tx.try_send(Input::Shutdown);
    }
}

/// Whether a peer's message would make this node store new data.
fn carries_data(msg: &RaftMessage) -> bool {
    use holdfast_core::RaftMessageType as T;
    match msg.get_msg_type() {
        T::MsgAppend => !msg.entries.is_empty(),
        T::MsgSnapshot => true,
        _ => false,
    }
}

/// Whether applying `op` can take more space (deletes and truncates never
/// do, so that a full volume can be cleaned up).
fn consumes_space(op: &FsOp) -> bool {
    matches!(
        op,
        FsOp::Mknod { .. } | FsOp::Link { .. } | FsOp::Write { .. } | FsOp::SetXattr { .. }
    )
}

/// Reads waiting on one volume's linearization point.
///
/// A read-index round (a heartbeat to every voter, answered by a majority)
/// proves that this node still led when the round started. Voters that
/// answered elect nobody else for an election timeout, so for
/// `VOLUME_READ_LEASE_MS` after the round started the leader answers reads
/// at its commit index at once (a *read lease*, as in etcd and TiKV). The
/// lease is bound to the term and to the leadership transfers this node
/// started ([`RaftGroup::lease_epoch`]): a transfer's target is elected
/// without waiting out the voters' leases. It is measured with the
/// monotonic clock, which runs on while the process is stopped. A read
/// under a lease that is half gone starts a round to renew it.
#[derive(Default)]
struct Reads {
    /// Not yet part of a read-index round.
    queued: Vec<ReadReady>,
    /// The round in flight.
    round: Option<Round>,
    /// Rounds confirmed at an index, waiting for it to be applied.
    confirmed: Vec<(u64, Vec<ReadReady>)>,
    /// Until when, and under which epoch, reads need no round.
    lease: Option<(Instant, (u64, u64))>,
}

struct Round {
    ctx: u64,
    readers: Vec<ReadReady>,
    started: Instant,
    epoch: Option<(u64, u64)>,
}

impl Reads {
    /// Starts a read-index round for the queued readers.
    fn start_round(
        &mut self,
        group: &mut RaftGroup<FsMachine>,
        ctx: u64,
    ) -> Result<(), GroupError> {
        self.round = Some(Round {
            ctx,
            readers: std::mem::take(&mut self.queued),
            started: Instant::now(),
            epoch: group.lease_epoch(),
        });
        group.read_index(ctx)
    }

    /// How much of the lease is left, if this node holds one now.
    fn lease_left(&self, group: &RaftGroup<FsMachine>, now: Instant) -> Option<Duration> {
        let (until, epoch) = self.lease?;
        (group.lease_epoch() == Some(epoch) && now < until).then(|| until - now)
    }
}

struct Volume {
    group: RaftGroup<FsMachine>,
    pending: HashMap<u64, (oneshot::Sender<VolReply>, Instant)>,
    reads: Reads,
    /// `Break::AckBeforeQuorum` only: writes already acknowledged, proposed
    /// at the next tick (dropped if this node no longer leads by then).
    acked_early: Vec<Vec<u8>>,
    /// Who asks this leader for changes: the leadership follows the
    /// busiest replica ([`holdfast_core::placement`]).
    affinity: WriterAffinity,
    /// The snapshot this replica is pulling or has staged, if any.
    resync: Option<Resync>,
    /// Bytes fetched by resyncs since start, and resyncs done.
    resync_fetched: u64,
    resyncs: u64,
    /// The snapshot this replica serves (index, requests served) and when
    /// that last changed, so that an idle one is let go.
    serving: Option<((u64, u64), Instant)>,
}

/// A volume snapshot being pulled ([`crate::resync`]), then stepped into
/// the group once staged.
struct Resync {
    index: u64,
    base_applied: u64,
    /// The newest snapshot message for `index`.
    msg: RaftMessage,
    staged: bool,
    left: Arc<AtomicU64>,
}

/// A driver that is not running yet.
pub struct DriverStarter {
    meta: RaftGroup<MetaMachine>,
    engine: Arc<dyn Engine>,
    rx: Receiver<Input>,
    tx: SyncSender<Input>,
    shared: Arc<RwLock<Shared>>,
    metrics: Metrics,
    seed_peers: HashMap<u64, SocketAddr>,
    data_dir: std::path::PathBuf,
}

impl std::fmt::Debug for DriverStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DriverStarter")
    }
}

pub struct Driver {
    meta: RaftGroup<MetaMachine>,
    volumes: BTreeMap<u64, Volume>,
    engine: Arc<dyn Engine>,
    rx: Receiver<Input>,
    shared: Arc<RwLock<Shared>>,
    transport: Arc<Transport>,
    metrics: Metrics,
    /// Peers known before the metadata arrives (a node that just joined).
    seed_peers: HashMap<u64, SocketAddr>,
    pending: HashMap<u64, (Reply, Instant)>,
    next_req: u64,
    stopping: bool,
    /// The data folder, and whether its disk is below the reserve.
    data_dir: std::path::PathBuf,
    disk_low: bool,
    /// The driver's own inbox (resync threads report back through it) and
    /// the runtime they make requests on.
    tx: SyncSender<Input>,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("meta", &self.meta).finish()
    }
}

impl Driver {
    /// Makes the driver and its handle; [`DriverStarter::spawn`] starts it
    /// once the transport exists (the transport needs the handle first).
    pub fn prepare(
        meta: RaftGroup<MetaMachine>,
        engine: Arc<dyn Engine>,
        metrics: Metrics,
        seed_peers: HashMap<u64, SocketAddr>,
        data_dir: std::path::PathBuf,
    ) -> (DriverStarter, DriverHandle) {
        let (tx, rx) = std::sync::mpsc::sync_channel(limits::INBOX_DEPTH_MAX);
        let shared = Arc::new(RwLock::new(Shared {
            status: meta.status(),
            meta: meta.state_machine().state(),
            volumes: BTreeMap::new(),
            fatal: None,
        }));
        let handle = DriverHandle {
            tx: tx.clone(),
            shared: shared.clone(),
        };
        (
            DriverStarter {
                meta,
                engine,
                rx,
                tx,
                shared,
                metrics,
                seed_peers,
                data_dir,
            },
            handle,
        )
    }
}

impl DriverStarter {
    /// Starts the consensus thread. Call it inside the node's tokio
    /// runtime: resync threads make their requests on it.
    pub fn spawn(self, transport: Arc<Transport>) -> std::thread::JoinHandle<()> {
        let s = self;
        let mut d = Driver {
            meta: s.meta,
            volumes: BTreeMap::new(),
            engine: s.engine,
            rx: s.rx,
            shared: s.shared,
            transport,
            metrics: s.metrics,
            seed_peers: s.seed_peers,
            pending: HashMap::new(),
            next_req: rand::random::<u64>() >> 1,
            stopping: false,
            data_dir: s.data_dir,
            disk_low: false,
            tx: s.tx,
            rt: tokio::runtime::Handle::current(),
        };
        std::thread::Builder::new()
            .name("consensus".into())
            .spawn(move || {
                if let Err(e) = d.run() {
                    tracing::error!(error = %e, "consensus stopped");
                    d.shared.write().unwrap_or_else(|e| e.into_inner()).fatal = Some(e.to_string());
                }
                for (_, (reply, _)) in d.pending.drain() {
                    let _ = reply.send(Err(ProposeError::Stopped));
                }
            })
            .expect("spawn consensus thread")
    }
}

/// The peer address of a member.
fn peer_addr(meta: &MetaState, id: u64) -> Option<SocketAddr> {
    meta.nodes.get(&id)?.peer_addr.parse().ok()
}

fn send_raft(
    transport: &Transport,
    metrics: &Metrics,
    addr: SocketAddr,
    group: u64,
    msg: &RaftMessage,
) {
    metrics.raft_messages_sent.inc();
    let frame = wire::encode(&PeerMsg::Raft {
        group,
        msg: holdfast_core::encode_raft(msg),
    });
    transport.send(msg.to, addr, frame);
}

/// Proposes one step of a replica-set change on the volume leader, or
/// answers that it is in effect already. The leader does not remove itself:
/// it hands the leadership on, and the caller asks the new leader.
fn change_replica(
    g: &mut RaftGroup<FsMachine>,
    me: u64,
    node: u64,
    change: ReplicaChange,
) -> Result<VolReply, GroupError> {
    use raft::prelude::{ConfChange, ConfChangeType as T};
    let st = g.status();
    if st.role != StateRole::Leader {
        return Ok(VolReply::NotLeader { leader: st.leader });
    }
    let (voter, learner) = (st.voters.contains(&node), st.learners.contains(&node));
    let kind = match change {
        ReplicaChange::AddLearner if voter || learner => return Ok(VolReply::Accepted),
        ReplicaChange::AddLearner => T::AddLearnerNode,
        ReplicaChange::Promote if voter => return Ok(VolReply::Accepted),
        ReplicaChange::Promote if !learner => {
            return Ok(VolReply::Unavailable("not a learner of this volume".into()))
        }
        ReplicaChange::Promote => T::AddNode,
        ReplicaChange::Remove if !voter && !learner => return Ok(VolReply::Accepted),
        ReplicaChange::Remove if node == me => {
            return Ok(if g.transfer_leadership_away()? {
                VolReply::NotLeader { leader: None }
            } else {
                VolReply::Unavailable("no other replica can lead this volume".into())
            });
        }
        ReplicaChange::Remove => T::RemoveNode,
    };
    let mut cc = ConfChange {
        node_id: node,
        ..Default::default()
    };
    cc.set_change_type(kind);
    match g.propose_conf_change(cc) {
        Ok(()) => {
            tracing::info!(volume = g.id(), node, ?change, "proposed a replica change");
            Ok(VolReply::Accepted)
        }
        // Another change is still being applied, or leadership moved.
        Err(GroupError::Raft(e)) => Ok(VolReply::Unavailable(format!("change not taken now: {e}"))),
        Err(fatal) => Err(fatal),
    }
}

/// `Break::AckBeforeQuorum`: proposes the writes this leader acknowledged
/// since the last tick, or forgets them if it no longer leads.
fn propose_acked_early(v: &mut Volume) -> Result<(), GroupError> {
    if v.acked_early.is_empty() {
        return Ok(());
    }
    let early = std::mem::take(&mut v.acked_early);
    if v.group.status().role != StateRole::Leader {
        tracing::warn!(
            writes = early.len(),
            "deliberate bug: forgot acknowledged writes"
        );
        return Ok(());
    }
    for p in early {
        match v.group.propose(p) {
            Ok(()) => {}
            Err(GroupError::Raft(_)) => return Ok(()),
            Err(fatal) => return Err(fatal),
        }
    }
    Ok(())
}

impl Driver {
    fn run(&mut self) -> Result<(), GroupError> {
        let tick = Duration::from_millis(limits::TICK_MS);
        self.open_volumes()?;
        // A lone voter need not wait an election timeout.
        let st = self.meta.status();
        if st.voters == [st.id] && st.leader.is_none() {
            self.meta.campaign()?;
        }
        let mut next_tick = Instant::now() + tick;
        while !self.stopping {
            let now = Instant::now();
            if now >= next_tick {
                self.meta.tick()?;
                self.place_leaders()?;
                for v in self.volumes.values_mut() {
                    v.group.tick()?;
                    propose_acked_early(v)?;
                }
                next_tick += tick;
                if next_tick < now {
                    next_tick = now + tick;
                }
                self.expire(now);
                self.tend_snapshots(now);
                self.check_disk()?;
            }
            match self
                .rx
                .recv_timeout(next_tick.saturating_duration_since(Instant::now()))
            {
                Ok(first) => {
                    let t0 = Instant::now();
                    self.hold();
                    let r = self.handle_batch(first);
                    let t1 = Instant::now();
                    self.release()?;
                    let t2 = Instant::now();
                    r?;
                    if t2 - t0 > Duration::from_millis(limits::CONSENSUS_ROUND_SLOW_MS) {
                        tracing::warn!(
                            handle_ms = (t1 - t0).as_millis() as u64,
                            release_ms = (t2 - t1).as_millis() as u64,
                            "slow consensus round"
                        );
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let t = Instant::now();
            if self.flush()? {
                self.flush()?;
            }
            if t.elapsed() > Duration::from_millis(limits::CONSENSUS_ROUND_SLOW_MS) {
                tracing::warn!(
                    flush_ms = t.elapsed().as_millis() as u64,
                    "slow consensus flush"
                );
            }
        }
        Ok(())
    }

    fn hold(&mut self) {
        self.meta.hold();
        for v in self.volumes.values_mut() {
            v.group.hold();
        }
    }

    /// Persists what the held inputs produced. A volume leader's appends
    /// leave before its own synced write, so that the followers write in
    /// parallel with it.
    fn release(&mut self) -> Result<(), GroupError> {
        self.meta.release()?;
        let meta = self.meta.state_machine().state();
        let Driver {
            volumes,
            transport,
            metrics,
            ..
        } = self;
        for (id, v) in volumes.iter_mut() {
            v.group.release_with(&mut |msg| {
                if let Some(addr) = peer_addr(&meta, msg.to) {
                    send_raft(transport, metrics, addr, *id, &msg);
                }
            })?;
        }
        Ok(())
    }

    fn handle_batch(&mut self, first: Input) -> Result<(), GroupError> {
        self.handle(first)?;
        for _ in 1..limits::INBOX_BATCH_MAX {
            match self.rx.try_recv() {
                Ok(input) => self.handle(input)?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn handle(&mut self, input: Input) -> Result<(), GroupError> {
        match input {
            Input::Peer { from, group, msg } => {
                self.metrics.raft_messages_received.inc();
                // The transport authenticated `from`; a message that claims
                // another sender is dropped.
                if msg.from != from {
                    return Ok(());
                }
                // Short of disk, take no new volume data: lag, do not fail.
                if self.disk_low && group != META_GROUP && carries_data(&msg) {
                    return Ok(());
                }
                // Nor the leadership of a volume: its writes would fail
                // with ENOSPC here while other replicas have room. The
                // leader's transfer times out and it keeps leading.
                if self.disk_low
                    && group != META_GROUP
                    && msg.get_msg_type() == holdfast_core::RaftMessageType::MsgTimeoutNow
                {
                    return Ok(());
                }
                if group == META_GROUP {
                    self.meta.step(msg)?;
                } else if msg.get_msg_type() == holdfast_core::RaftMessageType::MsgSnapshot {
                    self.volume_snapshot(group, from, msg)?;
                } else if let Some(v) = self.volumes.get_mut(&group) {
                    v.group.step(msg)?;
                }
            }
            Input::Propose { cmd, reply } => {
                let req_id = self.req_id();
                let proposal = Proposal {
                    req_id,
                    origin: self.meta.id(),
                    cmd,
                };
                match self.meta.propose(wire::encode(&proposal)) {
                    Ok(()) => {
                        self.pending.insert(req_id, (reply, Instant::now()));
                    }
                    Err(e) => self.refuse(reply, e)?,
                }
            }
            Input::ConfChange { change, reply } => {
                let req_id = self.req_id();
                let ctx = ConfContext {
                    req_id,
                    origin: self.meta.id(),
                    change,
                };
                match self.meta.propose_conf_change(ctx.to_conf_change()) {
                    Ok(()) => {
                        self.pending.insert(req_id, (reply, Instant::now()));
                    }
                    Err(e) => self.refuse(reply, e)?,
                }
            }
            Input::FsOp {
                volume,
                op,
                tag,
                reply,
            } => {
                let req_id = self.req_id();
                let me = self.meta.id();
                let Some(v) = self.volumes.get_mut(&volume) else {
                    let _ =
                        reply.send(VolReply::Unavailable("not a replica of this volume".into()));
                    return Ok(());
                };
                let st = v.group.status();
                if st.role != StateRole::Leader {
                    let _ = reply.send(VolReply::NotLeader { leader: st.leader });
                    return Ok(());
                }
                if self.disk_low && consumes_space(&op) {
                    let _ = reply.send(VolReply::Op(Err(libc::ENOSPC), 0));
                    return Ok(());
                }
                let is_write = matches!(op, FsOp::Write { .. });
                if let Some(t) = &tag {
                    v.affinity.record(t.node);
                }
                let proposal = wire::encode(&FsProposal {
                    req_id,
                    origin: me,
                    tag,
                    op,
                });
                if is_write && broken(Break::AckBeforeQuorum) {
                    v.acked_early.push(proposal);
                    let _ = reply.send(VolReply::Op(Ok(FsReply::Done), 0));
                    return Ok(());
                }
                match v.group.propose(proposal) {
                    Ok(()) => {
                        v.pending.insert(req_id, (reply, Instant::now()));
                    }
                    Err(GroupError::Raft(_)) => {
                        let _ = reply.send(VolReply::NotLeader { leader: None });
                    }
                    Err(fatal) => {
                        let _ = reply.send(VolReply::Op(Err(libc::EIO), 0));
                        return Err(fatal);
                    }
                }
            }
            Input::FsRead { volume, reply } => {
                let Some(v) = self.volumes.get_mut(&volume) else {
                    let _ = reply.send(Err(VolReply::Unavailable(
                        "not a replica of this volume".into(),
                    )));
                    return Ok(());
                };
                if broken(Break::StaleRead) {
                    let applied = v.group.status().applied;
                    let _ = reply.send(Ok((v.group.state_machine().view(), applied)));
                    return Ok(());
                }
                let st = v.group.status();
                if st.role != StateRole::Leader {
                    let _ = reply.send(Err(VolReply::NotLeader { leader: st.leader }));
                    return Ok(());
                }
                let lease = Duration::from_millis(limits::VOLUME_READ_LEASE_MS);
                if let Some(left) = v.reads.lease_left(&v.group, Instant::now()) {
                    if st.applied >= st.commit {
                        let _ = reply.send(Ok((v.group.state_machine().view(), st.applied)));
                    } else {
                        v.reads.confirmed.push((st.commit, vec![reply]));
                    }
                    if left < lease / 2 && v.reads.round.is_none() {
                        let ctx = self.next_req.wrapping_add(1);
                        self.next_req = ctx;
                        v.reads.start_round(&mut v.group, ctx)?;
                    }
                    return Ok(());
                }
                v.reads.queued.push(reply);
                if v.reads.round.is_none() {
                    let ctx = self.next_req.wrapping_add(1);
                    self.next_req = ctx;
                    v.reads.start_round(&mut v.group, ctx)?;
                }
            }
            Input::FsReadAt {
                volume,
                index,
                reply,
            } => {
                let Some(v) = self.volumes.get_mut(&volume) else {
                    let _ = reply.send(Err(VolReply::Unavailable(
                        "not a replica of this volume".into(),
                    )));
                    return Ok(());
                };
                let st = v.group.status();
                if v.resync.is_some() || st.commit < index {
                    let _ = reply.send(Err(VolReply::Unavailable(
                        "the replica has not caught up".into(),
                    )));
                } else if st.applied >= index {
                    let _ = reply.send(Ok((v.group.state_machine().view(), st.applied)));
                } else {
                    v.reads.confirmed.push((index, vec![reply]));
                }
            }
            Input::VolStatus { volume, reply } => {
                let r = match self.volumes.get(&volume) {
                    Some(v) => {
                        let st = v.group.status();
                        VolReply::Status(ReplicaStatus {
                            leader: st.leader,
                            term: st.term,
                            commit: st.commit,
                            applied: st.applied,
                            resync_bytes_left: v
                                .resync
                                .as_ref()
                                .filter(|r| !r.staged)
                                .map_or(0, |r| r.left.load(Ordering::Relaxed)),
                            resync_bytes_fetched: v.resync_fetched,
                            resyncs: v.resyncs,
                            voters: st.voters,
                            learners: st.learners,
                        })
                    }
                    None => VolReply::Unavailable("not a replica of this volume".into()),
                };
                let _ = reply.send(r);
            }
            Input::VolChange {
                volume,
                node,
                change,
                reply,
            } => {
                let me = self.meta.id();
                let r = match self.volumes.get_mut(&volume) {
                    Some(v) => change_replica(&mut v.group, me, node, change)?,
                    None => VolReply::Unavailable("not a replica of this volume".into()),
                };
                let _ = reply.send(r);
            }
            Input::VolView { volume, reply } => {
                let _ = reply.send(
                    self.volumes
                        .get(&volume)
                        .map(|v| (v.group.status().applied, v.group.state_machine().view())),
                );
            }
            Input::ResyncDone {
                volume,
                index,
                result,
            } => {
                let Some(v) = self.volumes.get_mut(&volume) else {
                    return Ok(());
                };
                let Some(r) = v.resync.as_mut().filter(|r| r.index == index && !r.staged) else {
                    return Ok(());
                };
                match result {
                    Ok(stats) => {
                        tracing::info!(
                            volume,
                            index,
                            keys = stats.manifest_keys,
                            fetched_keys = stats.fetched_keys,
                            fetched_bytes = stats.fetched_bytes,
                            deleted_keys = stats.deleted_keys,
                            "resync pulled a snapshot"
                        );
                        v.resync_fetched += stats.fetched_bytes;
                        r.staged = true;
                        let msg = r.msg.clone();
                        if v.group.status().applied == r.base_applied {
                            v.resyncs += 1;
                            v.group.step(msg)?;
                        } else {
                            v.resync = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(volume, index, error = %e, "resync failed; waiting for the snapshot again");
                        v.resync = None;
                    }
                }
            }
            Input::Shutdown => self.stopping = true,
        }
        Ok(())
    }

    /// A proposal raft-rs would not take (no leader) fails alone; a storage
    /// failure while taking it stops the node.
    fn refuse(&self, reply: Reply, e: GroupError) -> Result<(), GroupError> {
        match e {
            GroupError::Raft(e) => {
                tracing::debug!(error = %e, "proposal not accepted");
                self.metrics
                    .proposals
                    .get_or_create(&label("outcome", "no_leader"))
                    .inc();
                let _ = reply.send(Err(ProposeError::NoLeader));
                Ok(())
            }
            fatal => {
                let _ = reply.send(Err(ProposeError::Stopped));
                Err(fatal)
            }
        }
    }

    fn req_id(&mut self) -> u64 {
        self.next_req = self.next_req.wrapping_add(1);
        self.next_req
    }

    /// Moves the leadership of each volume this node leads to the replica
    /// that asks for most of its changes, where the volume allows it.
    fn place_leaders(&mut self) -> Result<(), GroupError> {
        let me = self.meta.id();
        let meta = self.meta.state_machine().state();
        for (id, v) in self.volumes.iter_mut() {
            let follows = meta
                .volumes
                .get(id)
                .is_some_and(|r| r.leader_follows_writes);
            let leads = follows && !self.disk_low && v.group.status().role == StateRole::Leader;
            let group = &v.group;
            let Some(to) = v.affinity.tick(me, leads, |n| group.caught_up_voter(n)) else {
                continue;
            };
            if v.group.transfer_leadership_to(to)? {
                tracing::info!(
                    volume = id,
                    to,
                    "handing the leadership to the replica that asks for most changes"
                );
            }
        }
        Ok(())
    }

    /// Checks free space on the data disk; when it runs short, hands the
    /// leadership of local volumes to replicas with room.
    fn check_disk(&mut self) -> Result<(), GroupError> {
        let free = fs4::available_space(&self.data_dir).unwrap_or(u64::MAX);
        let low = if self.disk_low {
            free < limits::DISK_RESERVE_BYTES + limits::DISK_RESERVE_HYSTERESIS_BYTES
        } else {
            free < limits::DISK_RESERVE_BYTES
        };
        if low != self.disk_low {
            if low {
                tracing::warn!(
                    free_bytes = free,
                    "data disk nearly full: refusing new volume data until space is freed"
                );
            } else {
                tracing::info!(free_bytes = free, "data disk has room again");
            }
            self.disk_low = low;
        }
        if low {
            for v in self.volumes.values_mut() {
                v.group.transfer_leadership_away()?;
            }
        }
        Ok(())
    }

    fn expire(&mut self, now: Instant) {
        let deadline = Duration::from_millis(limits::PROPOSAL_TIMEOUT_MS);
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, t))| now.duration_since(*t) > deadline)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some((reply, _)) = self.pending.remove(&k) {
                self.metrics
                    .proposals
                    .get_or_create(&label("outcome", "timeout"))
                    .inc();
                let _ = reply.send(Err(ProposeError::Timeout));
            }
        }
        for v in self.volumes.values_mut() {
            let expired: Vec<u64> = v
                .pending
                .iter()
                .filter(|(_, (_, t))| now.duration_since(*t) > deadline)
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                if let Some((reply, _)) = v.pending.remove(&k) {
                    // It may still commit: the outcome is unknown. The
                    // caller asks again (its op is tagged, so a repeat is
                    // answered, not applied twice) until its own deadline.
                    let _ = reply.send(VolReply::Unavailable(
                        "no result in time; the outcome is unknown".into(),
                    ));
                }
            }
            if v.reads
                .round
                .as_ref()
                .is_some_and(|r| now.duration_since(r.started) > deadline)
            {
                if let Some(round) = v.reads.round.take() {
                    for r in round.readers {
                        let _ = r.send(Err(VolReply::NotLeader { leader: None }));
                    }
                }
            }
        }
    }

    /// A volume snapshot arrived from `from`: pull it (by hash comparison,
    /// on a thread) unless it is already staged, and step it into the group
    /// once it is. Until then the group does not see it.
    fn volume_snapshot(
        &mut self,
        volume: u64,
        from: u64,
        msg: RaftMessage,
    ) -> Result<(), GroupError> {
        let index = msg.get_snapshot().get_metadata().index;
        let meta = self.meta.state_machine().state();
        let Some(addr) = self.peer_addr(&meta, from) else {
            return Ok(());
        };
        let Some(v) = self.volumes.get_mut(&volume) else {
            return Ok(());
        };
        let applied = v.group.status().applied;
        // Nothing to pull: Raft refuses a snapshot that is not ahead, and its
        // answer tells the leader where this replica is.
        if applied >= index {
            return v.group.step(msg);
        }
        if let Some(r) = v.resync.as_mut() {
            if !r.staged {
                // A pull is running; a newer message for it replaces the old.
                if r.index == index {
                    r.msg = msg;
                }
                return Ok(());
            }
            if r.index == index && r.base_applied == applied {
                return v.group.step(msg);
            }
        }
        let left = Arc::new(AtomicU64::new(0));
        v.resync = Some(Resync {
            index,
            base_applied: applied,
            msg,
            staged: false,
            left: left.clone(),
        });
        tracing::info!(volume, index, from, applied, "resync: pulling a snapshot");
        let tx = self.tx.clone();
        crate::resync::Pull {
            engine: self.engine.clone(),
            volume,
            index,
            base_applied: applied,
            from,
            addr,
            transport: self.transport.clone(),
            rt: self.rt.clone(),
            left,
        }
        .spawn(move |result| {
            // A full inbox drops the report; the pull is started again
            // when the snapshot is sent again.
            let _ = tx.try_send(Input::ResyncDone {
                volume,
                index,
                result,
            });
        });
        Ok(())
    }

    /// Lets go of snapshots no replica has asked for in a while (they pin
    /// old versions on disk), and of resyncs the group has moved past.
    fn tend_snapshots(&mut self, now: Instant) {
        for v in self.volumes.values_mut() {
            let applied = v.group.status().applied;
            if v.resync
                .as_ref()
                .is_some_and(|r| r.staged && applied >= r.index)
            {
                v.resync = None;
            }
            match v.group.state_machine().view().snapshot_served() {
                None => v.serving = None,
                Some(s) => match v.serving {
                    Some((seen, since)) if seen == s => {
                        if now.duration_since(since)
                            > Duration::from_millis(limits::RESYNC_SNAPSHOT_IDLE_MS)
                        {
                            v.group.drop_snapshot();
                            v.serving = None;
                        }
                    }
                    _ => v.serving = Some((s, now)),
                },
            }
        }
    }

    fn peer_addr(&self, meta: &MetaState, id: u64) -> Option<SocketAddr> {
        match meta.nodes.get(&id) {
            Some(_) => peer_addr(meta, id),
            None => self.seed_peers.get(&id).copied(),
        }
    }

    fn send(&self, meta: &MetaState, group: u64, msg: RaftMessage) {
        if let Some(addr) = self.peer_addr(meta, msg.to) {
            send_raft(&self.transport, &self.metrics, addr, group, &msg);
        }
    }

    /// Opens (bootstrapping if new) every volume this node replicates, and
    /// closes and deletes the copies of volumes it no longer replicates.
    fn open_volumes(&mut self) -> Result<(), GroupError> {
        let meta = self.meta.state_machine().state();
        let me = self.meta.id();
        let gone: Vec<u64> = self
            .volumes
            .keys()
            .copied()
            .filter(|id| {
                !meta
                    .volumes
                    .get(id)
                    .is_some_and(|v| v.replicas.contains(&me))
            })
            .collect();
        for id in gone {
            self.volumes.remove(&id);
            let mut b = holdfast_storage::Batch::new();
            for prefix in [
                group::prefix_of(id),
                FsMachine::prefix_of(id),
                holdfast_core::resync::staging_prefix(id),
            ] {
                let end = holdfast_storage::prefix_end(&prefix).unwrap_or_default();
                b.delete_range(prefix, end);
            }
            self.engine.write(b, true)?;
            tracing::info!(volume = id, "no longer a replica: deleted the local copy");
        }
        for vol in meta.volumes.values().filter(|v| v.replicas.contains(&me)) {
            if self.volumes.contains_key(&vol.id) {
                continue;
            }
            // A replica added after the volume was made starts empty and
            // receives the state from the leader.
            if vol.bootstrap.contains(&me) && !group::exists(self.engine.clone(), vol.id)? {
                let created_ns = vol.created_ms as i64 * 1_000_000;
                group::bootstrap(
                    self.engine.clone(),
                    vol.id,
                    &vol.bootstrap,
                    FsMachine::initial_batch(vol.id, created_ns),
                )?;
            }
            let sm = FsMachine::load(self.engine.clone(), vol.id).map_err(GroupError::Corrupt)?;
            let mut g = RaftGroup::open_with(
                me,
                vol.id,
                self.engine.clone(),
                sm,
                rand::random(),
                limits::VOLUME_INFLIGHT_MSGS_MAX,
            )?;
            // A replica further behind than the log catches up by hash
            // comparison (`resync`).
            g.set_log_retention(
                Some(limits::VOLUME_LOG_KEEP_ENTRIES),
                limits::VOLUME_LOG_LAG_ENTRIES_MAX,
            );
            if vol.replicas == [me] {
                g.campaign()?;
            }
            tracing::info!(volume = %vol.name, id = vol.id, "opened volume replica");
            self.volumes.insert(
                vol.id,
                Volume {
                    group: g,
                    pending: HashMap::new(),
                    acked_early: Vec::new(),
                    affinity: WriterAffinity::new(),
                    reads: Reads::default(),
                    resync: None,
                    resync_fetched: 0,
                    resyncs: 0,
                    serving: None,
                },
            );
        }
        Ok(())
    }

    /// Sends what the groups produced, settles finished proposals and
    /// reads, and publishes the new state.
    /// Returns whether it started read-index rounds, whose messages a
    /// second flush sends.
    fn flush(&mut self) -> Result<bool, GroupError> {
        let mut again = false;
        let outputs: Vec<_> = self.meta.take_outputs().collect();
        let meta = self.meta.state_machine().state();
        let me = self.meta.id();
        // Publish the metadata before settling proposals, so that a caller
        // told "done" finds the change when it looks.
        {
            let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
            if !Arc::ptr_eq(&shared.meta, &meta) {
                for id in shared
                    .meta
                    .nodes
                    .keys()
                    .filter(|id| !meta.nodes.contains_key(id))
                {
                    self.transport.forget(*id);
                }
                shared.meta = meta.clone();
            }
        }
        for out in outputs {
            match out {
                Output::Send(msg) => self.send(&meta, META_GROUP, msg),
                Output::Event(MetaEvent::Done {
                    req_id,
                    origin,
                    outcome,
                }) => {
                    if origin != me {
                        continue;
                    }
                    if let Some((reply, _)) = self.pending.remove(&req_id) {
                        let tag = if outcome.is_ok() { "ok" } else { "refused" };
                        self.metrics
                            .proposals
                            .get_or_create(&label("outcome", tag))
                            .inc();
                        let _ = reply.send(outcome.map_err(ProposeError::Refused));
                    }
                }
                Output::ReadIndex { .. } => {}
            }
        }
        let listed = |id: &u64| {
            meta.volumes
                .get(id)
                .is_some_and(|v| v.replicas.contains(&me))
        };
        if meta
            .volumes
            .values()
            .any(|v| v.replicas.contains(&me) && !self.volumes.contains_key(&v.id))
            || self.volumes.keys().any(|id| !listed(id))
        {
            self.open_volumes()?;
        }
        let mut volume_status = BTreeMap::new();
        let ids: Vec<u64> = self.volumes.keys().copied().collect();
        for id in ids {
            let outputs: Vec<_> = match self.volumes.get_mut(&id) {
                Some(v) => v.group.take_outputs().collect(),
                None => continue,
            };
            for out in outputs {
                match out {
                    Output::Send(msg) => self.send(&meta, id, msg),
                    Output::Event(FsEvent::Done {
                        req_id,
                        origin,
                        result,
                        index,
                    }) if origin == me => {
                        if let Some((reply, _)) = self
                            .volumes
                            .get_mut(&id)
                            .and_then(|v| v.pending.remove(&req_id))
                        {
                            let _ = reply.send(VolReply::Op(result, index));
                        }
                    }
                    Output::Event(FsEvent::Done { .. }) => {}
                    Output::ReadIndex { ctx, index } => {
                        if let Some(v) = self.volumes.get_mut(&id) {
                            if v.reads.round.as_ref().is_some_and(|r| r.ctx == ctx) {
                                if let Some(round) = v.reads.round.take() {
                                    v.reads.confirmed.push((index, round.readers));
                                    // The round proves the leadership as
                                    // of its start, under its epoch only.
                                    if let Some(epoch) = round.epoch {
                                        if v.group.lease_epoch() == Some(epoch) {
                                            let until = round.started
                                                + Duration::from_millis(
                                                    limits::VOLUME_READ_LEASE_MS,
                                                );
                                            v.reads.lease = Some((until, epoch));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let Some(v) = self.volumes.get_mut(&id) else {
                continue;
            };
            let st = v.group.status();
            // Serve confirmed reads whose index is applied.
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut v.reads.confirmed)
                .into_iter()
                .partition(|(index, _)| *index <= st.applied);
            v.reads.confirmed = waiting;
            for (_, readers) in ready {
                for r in readers {
                    let _ = r.send(Ok((v.group.state_machine().view(), st.applied)));
                }
            }
            if st.role != StateRole::Leader && !v.pending.is_empty() {
                // A deposed leader's proposals may still commit under the
                // next leader: their outcome is unknown, and their callers
                // ask again at once (their ops are tagged, so a repeat is
                // answered, not applied twice).
                for (_, (reply, _)) in std::mem::take(&mut v.pending) {
                    let _ = reply.send(VolReply::Unavailable(
                        "the leadership moved; the outcome is unknown".into(),
                    ));
                }
            }
            if st.role != StateRole::Leader {
                // Readers of a deposed leader go elsewhere.
                v.reads.lease = None;
                for r in v
                    .reads
                    .queued
                    .drain(..)
                    .chain(v.reads.round.take().map(|r| r.readers).unwrap_or_default())
                {
                    let _ = r.send(Err(VolReply::NotLeader { leader: st.leader }));
                }
            } else if v.reads.round.is_none() && !v.reads.queued.is_empty() {
                let ctx = self.next_req.wrapping_add(1);
                self.next_req = ctx;
                v.reads.start_round(&mut v.group, ctx)?;
                // Its heartbeats are outputs: flush again, now.
                again = true;
            }
            volume_status.insert(id, (st, v.group.state_machine().stats()));
        }
        if !meta.nodes.is_empty() && !self.seed_peers.is_empty() {
            self.seed_peers.clear();
        }
        let status = self.meta.status();
        self.metrics.raft_term.set(status.term as i64);
        self.metrics
            .raft_is_leader
            .set((status.role == StateRole::Leader) as i64);
        self.metrics.raft_applied_index.set(status.applied as i64);
        let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
        shared.status = status;
        shared.volumes = volume_status;
        Ok(again)
    }
}
