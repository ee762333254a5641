//! The consensus thread: the only owner of the metadata [`RaftGroup`]. It
//! turns wall-clock time into ticks, feeds peer messages and proposals to
//! the group, hands outgoing messages to the transport, and publishes a
//! snapshot of the state for readers.
//!
//! Invariant: only this thread touches the group; everyone else talks to it
//! through the bounded inbox and reads [`Shared`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use holdfast_core::group::{GroupError, GroupStatus, Output, RaftGroup};
use holdfast_core::limits;
use holdfast_core::meta::{
    Change, Command, ConfContext, MetaEvent, MetaMachine, MetaState, Outcome, Proposal,
};
use holdfast_core::wire::{self, PeerMsg};
use holdfast_core::{RaftMessage, StateRole};
use holdfast_transport::Transport;
use tokio::sync::oneshot;

use crate::metrics::{label, Metrics};

/// Why a proposal did not produce an outcome.
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

pub enum Input {
    Peer { from: u64, msg: RaftMessage },
    Propose { cmd: Command, reply: Reply },
    ConfChange { change: Change, reply: Reply },
    Shutdown,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Peer { from, .. } => write!(f, "Peer({from})"),
            Input::Propose { .. } => f.write_str("Propose"),
            Input::ConfChange { .. } => f.write_str("ConfChange"),
            Input::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// What readers see of the consensus state, refreshed by the driver.
#[derive(Debug, Clone)]
pub struct Shared {
    pub status: GroupStatus,
    pub meta: Arc<MetaState>,
    /// Set when the driver stopped on a fatal error.
    pub fatal: Option<String>,
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
    pub fn deliver(&self, from: u64, msg: RaftMessage) -> bool {
        self.tx.try_send(Input::Peer { from, msg }).is_ok()
    }

    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::Propose { cmd, reply }, rx).await
    }

    pub async fn conf_change(&self, change: Change) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Input::ConfChange { change, reply }, rx).await
    }

    async fn submit(
        &self,
        input: Input,
        rx: oneshot::Receiver<Result<Outcome, ProposeError>>,
    ) -> Result<Outcome, ProposeError> {
        match self.tx.try_send(input) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ProposeError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ProposeError::Stopped),
        }
        match tokio::time::timeout(
            Duration::from_millis(limits::PROPOSAL_TIMEOUT_MS + 1000),
            rx,
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        }
    }

    pub fn shutdown(&self) {
        let _ = self.tx.try_send(Input::Shutdown);
    }
}

/// A driver that is not running yet.
pub struct DriverStarter {
    group: RaftGroup<MetaMachine>,
    rx: Receiver<Input>,
    shared: Arc<RwLock<Shared>>,
    metrics: Metrics,
    seed_peers: HashMap<u64, SocketAddr>,
}

impl std::fmt::Debug for DriverStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DriverStarter")
    }
}

impl DriverStarter {
    /// Starts the consensus thread.
    pub fn spawn(self, transport: Arc<Transport>) -> std::thread::JoinHandle<()> {
        let s = self;
        let mut d = Driver {
            group: s.group,
            rx: s.rx,
            shared: s.shared,
            transport,
            metrics: s.metrics,
            seed_peers: s.seed_peers,
            pending: HashMap::new(),
            next_req: rand::random::<u64>() >> 1,
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

pub struct Driver {
    group: RaftGroup<MetaMachine>,
    rx: Receiver<Input>,
    shared: Arc<RwLock<Shared>>,
    transport: Arc<Transport>,
    metrics: Metrics,
    /// Peers known before the metadata arrives (a node that just joined).
    seed_peers: HashMap<u64, SocketAddr>,
    pending: HashMap<u64, (Reply, Instant)>,
    next_req: u64,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("group", &self.group)
            .finish()
    }
}

impl Driver {
    /// Makes the driver and its handle; [`Driver::spawn`] starts it once
    /// the transport exists (the transport needs the handle first).
    pub fn prepare(
        group: RaftGroup<MetaMachine>,
        metrics: Metrics,
        seed_peers: HashMap<u64, SocketAddr>,
    ) -> (DriverStarter, DriverHandle) {
        let (tx, rx) = std::sync::mpsc::sync_channel(limits::INBOX_DEPTH_MAX);
        let shared = Arc::new(RwLock::new(Shared {
            status: group.status(),
            meta: group.state_machine().state(),
            fatal: None,
        }));
        let handle = DriverHandle {
            tx,
            shared: shared.clone(),
        };
        (
            DriverStarter {
                group,
                rx,
                shared,
                metrics,
                seed_peers,
            },
            handle,
        )
    }

    fn run(&mut self) -> Result<(), GroupError> {
        let tick = Duration::from_millis(limits::TICK_MS);
        // A lone voter need not wait an election timeout.
        let st = self.group.status();
        if st.voters == [st.id] && st.leader.is_none() {
            self.group.campaign()?;
        }
        let mut next_tick = Instant::now() + tick;
        loop {
            let now = Instant::now();
            if now >= next_tick {
                self.group.tick()?;
                next_tick += tick;
                if next_tick < now {
                    next_tick = now + tick;
                }
                self.expire_pending(now);
            }
            match self
                .rx
                .recv_timeout(next_tick.saturating_duration_since(Instant::now()))
            {
                Ok(Input::Shutdown) => return Ok(()),
                Ok(input) => self.handle(input)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            self.flush()?;
        }
    }

    fn handle(&mut self, input: Input) -> Result<(), GroupError> {
        match input {
            Input::Peer { from, msg } => {
                self.metrics.raft_messages_received.inc();
                // The transport authenticated `from`; a message that claims
                // another sender is dropped.
                if msg.from == from {
                    self.group.step(msg)?;
                }
            }
            Input::Propose { cmd, reply } => {
                let req_id = self.req_id();
                let proposal = Proposal {
                    req_id,
                    origin: self.group.id(),
                    cmd,
                };
                match self.group.propose(wire::encode(&proposal)) {
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
                    origin: self.group.id(),
                    change,
                };
                match self.group.propose_conf_change(ctx.to_conf_change()) {
                    Ok(()) => {
                        self.pending.insert(req_id, (reply, Instant::now()));
                    }
                    Err(e) => self.refuse(reply, e)?,
                }
            }
            Input::Shutdown => {}
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

    fn expire_pending(&mut self, now: Instant) {
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
    }

    fn peer_addr(&self, meta: &MetaState, id: u64) -> Option<SocketAddr> {
        match meta.nodes.get(&id) {
            Some(n) => n.peer_addr.parse().ok(),
            None => self.seed_peers.get(&id).copied(),
        }
    }

    /// Sends what the group produced, settles finished proposals and
    /// publishes the new state.
    fn flush(&mut self) -> Result<(), GroupError> {
        let outputs: Vec<_> = self.group.take_outputs().collect();
        let meta = self.group.state_machine().state();
        for out in outputs {
            match out {
                Output::Send(msg) => {
                    if let Some(addr) = self.peer_addr(&meta, msg.to) {
                        self.metrics.raft_messages_sent.inc();
                        let frame = wire::encode(&PeerMsg::Raft {
                            group: holdfast_core::meta::META_GROUP,
                            msg: holdfast_core::encode_raft(&msg),
                        });
                        self.transport.send(msg.to, addr, frame);
                    }
                }
                Output::Event(MetaEvent::Done {
                    req_id,
                    origin,
                    outcome,
                }) => {
                    if origin != self.group.id() {
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
            }
        }
        if !meta.nodes.is_empty() && !self.seed_peers.is_empty() {
            self.seed_peers.clear();
        }
        let status = self.group.status();
        self.metrics.raft_term.set(status.term as i64);
        self.metrics
            .raft_is_leader
            .set((status.role == StateRole::Leader) as i64);
        self.metrics.raft_applied_index.set(status.applied as i64);
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
        }
        shared.status = status;
        shared.meta = meta;
        Ok(())
    }
}
