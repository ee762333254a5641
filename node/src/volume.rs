//! File volumes as the rest of the node uses them: [`Volumes`] sends each
//! operation to the volume's leader (this node or another, over the
//! transport), follows "not leader" hints, and gives up with `EIO` after a
//! bounded wait; [`serve_local`] answers a request against a local
//! replica.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_core::fs::{Errno, FsOp, FsReply, FsView, OpTag};
use holdfast_core::limits;
use holdfast_core::meta::Command;
use holdfast_core::wire::{
    self, FsRead, PeerMsg, ReadReply, ReplicaChange, ReplicaStatus, VolReply, VolRequest,
};
use holdfast_transport::{Transport, TransportError};
use serde_bytes::ByteBuf;

use crate::driver::{DriverHandle, ProposeError};
use crate::faults::{broken, Break};

/// Answers `req` from this node's replica.
pub async fn serve_local(driver: &DriverHandle, req: VolRequest) -> VolReply {
    match req {
        VolRequest::Op { volume, op, tag } => driver.vol_op(volume, op, tag).await,
        VolRequest::Read { volume, read } => match driver.vol_read(volume).await {
            Ok((view, applied)) => {
                let r = do_read(&view, read);
                // What the read saw is at or before this index; a reader
                // that later reads elsewhere must see at least that much.
                VolReply::Read(r, applied.max(view.applying()))
            }
            Err(reply) => reply,
        },
        VolRequest::Status { volume } => driver.vol_status(volume).await,
        VolRequest::ChangeReplica {
            volume,
            node,
            change,
        } => driver.vol_change(volume, node, change).await,
        VolRequest::Digest { volume } => driver.vol_digest(volume).await,
        VolRequest::Leader { volume } => VolReply::Leader(
            driver
                .shared()
                .volumes
                .get(&volume)
                .and_then(|(status, _)| status.leader),
        ),
        VolRequest::SnapshotManifest {
            volume,
            index,
            after,
        } => {
            serve_snapshot(driver, volume, move |view| {
                let (entries, done) = view.snapshot_manifest(index, &after)?;
                Ok(VolReply::Manifest { entries, done })
            })
            .await
        }
        VolRequest::SnapshotValues {
            volume,
            index,
            keys,
        } => {
            serve_snapshot(driver, volume, move |view| {
                let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| k.into_vec()).collect();
                let values = view.snapshot_values(index, &keys)?;
                Ok(VolReply::Values(
                    values
                        .into_iter()
                        .map(|(k, v)| (ByteBuf::from(k), ByteBuf::from(v)))
                        .collect(),
                ))
            })
            .await
        }
    }
}

/// Answers a resync request from the snapshot local replica `volume`
/// serves (reading and hashing off the async threads).
async fn serve_snapshot(
    driver: &DriverHandle,
    volume: u64,
    f: impl FnOnce(FsView) -> Result<VolReply, String> + Send + 'static,
) -> VolReply {
    let Some((_, view)) = driver.vol_view(volume).await else {
        return VolReply::Unavailable("not a replica of this volume".into());
    };
    match tokio::task::spawn_blocking(move || f(view)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => VolReply::Unavailable(e),
        Err(_) => VolReply::Unavailable("resync request failed".into()),
    }
}

/// Whether asking again, after an attempt whose outcome is unknown, cannot
/// change the result: reads, reaps, and changes that carry an [`OpTag`]
/// (the volume answers a repeat with the first result). An untagged write
/// of bytes or attributes is not, although it looks idempotent: if the
/// first attempt was applied and another client's write landed after it,
/// the repeat would silently undo that acknowledged write (found by
/// `core/tests/sim_volume.rs`).
fn retry_is_safe(req: &VolRequest) -> bool {
    match req {
        VolRequest::Read { .. }
        | VolRequest::Status { .. }
        // The leader checks its configuration first: a repeat is a no-op.
        | VolRequest::ChangeReplica { .. }
        | VolRequest::Digest { .. }
        | VolRequest::Leader { .. }
        | VolRequest::SnapshotManifest { .. }
        | VolRequest::SnapshotValues { .. } => true,
        VolRequest::Op { op, tag, .. } => {
            tag.is_some() || matches!(op, FsOp::Reap { .. } | FsOp::ReapNode { .. })
        }
    }
}

/// Where this node's op sequence numbers start: the count of its starts,
/// kept in its engine, times 2^40, so that they grow across restarts
/// whatever the clock does.
pub fn op_seq_start(engine: &dyn holdfast_storage::Engine) -> Result<u64, String> {
    const KEY: &[u8] = b"n/op-epoch";
    let err = |e: holdfast_storage::StorageError| format!("op sequence epoch: {e}");
    let epoch = match engine.get(KEY).map_err(err)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| "op sequence epoch: bad value".to_string())?,
        ),
        None => 0,
    } + 1;
    let mut batch = holdfast_storage::Batch::new();
    batch.put(KEY, epoch.to_be_bytes().to_vec());
    engine.write(batch, true).map_err(err)?;
    Ok(epoch << 40)
}

/// The next replica to ask in turn, passing over those that left an
/// attempt unanswered (all of them again once every one has).
fn next_replica(replicas: &[u64], turn: &mut usize, silent: &mut BTreeMap<u64, Instant>) -> u64 {
    forget_silent(silent);
    if replicas.iter().all(|r| silent.contains_key(r)) {
        silent.clear();
    }
    loop {
        *turn += 1;
        let r = replicas[*turn % replicas.len()];
        if !silent.contains_key(&r) {
            return r;
        }
    }
}

/// A replica that left an attempt unanswered is passed over for
/// `VOLUME_SILENT_MS` (by then the followers name the new leader, if it
/// died), then asked again (it may only have been slow).
fn forget_silent(silent: &mut BTreeMap<u64, Instant>) {
    silent.retain(|_, since| since.elapsed() < Duration::from_millis(limits::VOLUME_SILENT_MS));
}

/// This node's ops: the next sequence number, and those still waiting for
/// an answer (the smallest is the low-water mark every op carries).
#[derive(Debug)]
struct OpSeqs {
    next: u64,
    waiting: BTreeSet<u64>,
}

/// Removes an op from [`OpSeqs::waiting`] however its call ends.
struct Waiting<'a>(&'a Mutex<OpSeqs>, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .remove(&self.1);
    }
}

/// Runs a read against applied state.
pub fn do_read(view: &FsView, read: FsRead) -> Result<ReadReply, Errno> {
    Ok(match read {
        FsRead::GetAttr { ino } => ReadReply::Attr(view.getattr(ino)?),
        FsRead::Lookup { parent, name } => ReadReply::Attr(view.lookup(parent, &name)?),
        FsRead::ReadDir { ino, after } => ReadReply::Entries(view.readdir(ino, &after)?),
        FsRead::Read { ino, offset, len } => {
            ReadReply::Data(view.read(ino, offset, len as usize)?)
        }
        FsRead::ReadLink { ino } => ReadReply::Data(view.readlink(ino)?),
        FsRead::GetXattr { ino, name } => ReadReply::Data(view.getxattr(ino, &name)?),
        FsRead::ListXattr { ino } => ReadReply::Names(view.listxattr(ino)?),
        FsRead::Stats => ReadReply::Stats(view.stats()?),
    })
}

/// Why a replica-set change did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Routes volume requests to leaders.
#[derive(Debug)]
pub struct Volumes {
    pub driver: DriverHandle,
    pub transport: Arc<Transport>,
    pub me: u64,
    leaders: Mutex<HashMap<u64, u64>>,
    /// Per volume, the newest index this node has seen applied by a leader
    /// (see [`Volumes::local_view`]).
    floors: Mutex<HashMap<u64, u64>>,
    ops: Mutex<OpSeqs>,
}

enum Attempt {
    Done(VolReply),
    /// Not taken; try `next` (or another replica).
    Retry(Option<u64>),
    /// Sent, but no answer: a change may or may not have happened. Carries
    /// the leader this node's own replica follows now, if it moved on.
    Unknown(Option<u64>),
}

impl Volumes {
    /// `first_seq` comes from [`op_seq_start`].
    pub fn new(driver: DriverHandle, transport: Arc<Transport>, me: u64, first_seq: u64) -> Self {
        Self {
            driver,
            transport,
            me,
            leaders: Mutex::new(HashMap::new()),
            floors: Mutex::new(HashMap::new()),
            ops: Mutex::new(OpSeqs {
                next: first_seq,
                waiting: BTreeSet::new(),
            }),
        }
    }

    /// A tag for a new op, waiting until the guard is dropped.
    fn begin_op(&self) -> (OpTag, Waiting<'_>) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let seq = ops.next;
        ops.next += 1;
        ops.waiting.insert(seq);
        let low_water = ops.waiting.first().copied().unwrap_or(seq);
        let tag = OpTag {
            node: self.me,
            seq,
            low_water,
        };
        (tag, Waiting(&self.ops, seq))
    }

    fn replicas(&self, volume: u64) -> Result<Vec<u64>, Errno> {
        let meta = self.driver.shared().meta;
        meta.volumes
            .get(&volume)
            .map(|v| v.replicas.clone())
            .ok_or(libc::ENOENT)
    }

    /// The term and leader of this node's replica of `volume`, if any.
    fn local_leader(&self, volume: u64) -> Option<(u64, Option<u64>)> {
        self.driver
            .shared()
            .volumes
            .get(&volume)
            .map(|(status, _)| (status.term, status.leader))
    }

    /// Resolves once this node's replica of `volume` follows, in a later
    /// term, a leader other than `target`: a request `target` has not
    /// answered will not be answered soon (its leader died or was
    /// deposed), and one that is safe to repeat goes to the new leader at
    /// once, without waiting out `VOLUME_ATTEMPT_MS`. Never resolves on a
    /// node with no replica, nor while its replica lags in an older term.
    async fn leader_moved(&self, volume: u64, target: u64) -> u64 {
        let Some((term, _)) = self.local_leader(volume) else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(Duration::from_millis(limits::VOLUME_LEADER_WATCH_MS)).await;
            if let Some((t, Some(l))) = self.local_leader(volume) {
                if t > term && l != target {
                    return l;
                }
            }
        }
    }

    /// Resolves once `target` stops answering `VolRequest::Leader` within
    /// `VOLUME_PROBE_MS`, or answers that it does not lead `volume`; asked
    /// every `VOLUME_ATTEMPT_MS` while a request to it waits.
    async fn target_lost(&self, volume: u64, target: u64, addr: std::net::SocketAddr) {
        let probe = wire::encode(&PeerMsg::Vol(VolRequest::Leader { volume }));
        loop {
            tokio::time::sleep(Duration::from_millis(limits::VOLUME_ATTEMPT_MS)).await;
            let answer = tokio::time::timeout(
                Duration::from_millis(limits::VOLUME_PROBE_MS),
                self.transport.request(target, addr, probe.clone()),
            )
            .await;
            let leads = match answer {
                Ok(Ok(bytes)) => matches!(
                    wire::decode::<VolReply>(&bytes, limits::FRAME_BYTES_MAX),
                    Ok(VolReply::Leader(Some(l))) if l == target
                ),
                _ => false,
            };
            if !leads {
                return;
            }
        }
    }

    async fn attempt(&self, volume: u64, target: u64, req: &VolRequest) -> Attempt {
        let reply = if target == self.me {
            serve_local(&self.driver, req.clone()).await
        } else {
            let meta = self.driver.shared().meta;
            let Some(addr) = meta
                .nodes
                .get(&target)
                .and_then(|n| n.peer_addr.parse().ok())
            else {
                return Attempt::Retry(None);
            };
            let sent =
                self.transport
                    .request(target, addr, wire::encode(&PeerMsg::Vol(req.clone())));
            let wait = Duration::from_millis(limits::VOLUME_WAIT_MS);
            // A leader that died with our request never answers; when
            // asking again is safe, do not wait for the connection to time
            // out. A slow leader that is alive and still leads is waited
            // for: asking it again would only queue a second copy behind
            // the first.
            let answer = if retry_is_safe(req) {
                tokio::select! {
                    a = tokio::time::timeout(wait, sent) => a,
                    moved = self.leader_moved(volume, target) => {
                        return Attempt::Unknown(Some(moved));
                    }
                    () = self.target_lost(volume, target, addr) => {
                        return Attempt::Unknown(None);
                    }
                }
            } else {
                tokio::time::timeout(wait, sent).await
            };
            let Ok(answer) = answer else {
                return Attempt::Unknown(None);
            };
            match answer {
                Ok(bytes) => match wire::decode::<VolReply>(&bytes, limits::FRAME_BYTES_MAX) {
                    Ok(r) => r,
                    Err(_) => return Attempt::Unknown(None),
                },
                // Nothing was sent: safe to try elsewhere.
                Err(
                    TransportError::Connect { .. }
                    | TransportError::Timeout
                    | TransportError::Refused(_),
                ) => return Attempt::Retry(None),
                Err(_) => return Attempt::Unknown(None),
            }
        };
        match reply {
            VolReply::NotLeader { leader } => Attempt::Retry(leader.filter(|l| *l != target)),
            // Not taken, or taken with an outcome it cannot tell (a
            // proposal that outlived `PROPOSAL_TIMEOUT_MS`, or a leader that
            // lost its leadership with it).
            VolReply::Unavailable(_) => Attempt::Unknown(None),
            // A local timeout of a proposal: outcome unknown.
            other => Attempt::Done(other),
        }
    }

    /// Sends `req` to the leader of `volume`, waiting at most
    /// `VOLUME_WAIT_MS` for one to be reachable.
    async fn call(&self, volume: u64, req: VolRequest) -> Result<VolReply, Errno> {
        let replicas = self.replicas(volume)?;
        let deadline = Instant::now() + Duration::from_millis(limits::VOLUME_WAIT_MS);
        let cached = self
            .leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&volume)
            .copied();
        let mut target =
            cached
                .filter(|l| replicas.contains(l))
                .unwrap_or(if replicas.contains(&self.me) {
                    self.me
                } else {
                    replicas[0]
                });
        if broken(Break::StaleRead)
            && matches!(req, VolRequest::Read { .. })
            && replicas.contains(&self.me)
        {
            target = self.me;
        }
        let mut turn = 0usize;
        let started = Instant::now();
        // Whether an earlier attempt may have been taken: then a refusal
        // before proposing (ENOSPC) does not mean the change did not happen.
        let mut maybe_taken = false;
        // Replicas that left an attempt unanswered (a dead leader, which
        // followers go on naming until their election timeout): neither
        // their hints nor the rotation lead back to them.
        let mut silent = BTreeMap::new();
        loop {
            let attempt = self.attempt(volume, target, &req).await;
            tracing::trace!(
                volume,
                target,
                elapsed_us = started.elapsed().as_micros() as u64,
                "volume request attempt"
            );
            match attempt {
                Attempt::Done(reply) => {
                    self.leaders
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(volume, target);
                    if maybe_taken && matches!(reply, VolReply::Op(Err(libc::ENOSPC), _)) {
                        return Ok(VolReply::Op(Err(libc::EIO), 0));
                    }
                    if let VolReply::Op(_, index) | VolReply::Read(_, index) = reply {
                        self.raise_floor(volume, index);
                    }
                    return Ok(reply);
                }
                Attempt::Unknown(moved) => {
                    maybe_taken = true;
                    if !retry_is_safe(&req) || Instant::now() >= deadline {
                        // It may or may not have happened.
                        return Err(libc::EIO);
                    }
                    silent.insert(target, Instant::now());
                    target = match moved.filter(|m| replicas.contains(m)) {
                        Some(m) => m,
                        None => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            next_replica(&replicas, &mut turn, &mut silent)
                        }
                    };
                }
                Attempt::Retry(hint) => {
                    if Instant::now() >= deadline {
                        return Err(libc::EIO);
                    }
                    forget_silent(&mut silent);
                    target = match hint.filter(|h| replicas.contains(h) && !silent.contains_key(h))
                    {
                        Some(h) => h,
                        None => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            next_replica(&replicas, &mut turn, &mut silent)
                        }
                    };
                }
            }
        }
    }

    /// Applies `op` once, however often it has to be asked: a repeat after
    /// an unanswered attempt is answered with the first result.
    pub async fn op(&self, volume: u64, op: FsOp) -> Result<FsReply, Errno> {
        let (tag, _waiting) = self.begin_op();
        let req = VolRequest::Op {
            volume,
            op,
            tag: Some(tag),
        };
        match self.call(volume, req).await? {
            VolReply::Op(r, _) => r,
            _ => Err(libc::EIO),
        }
    }

    /// Reads file data from this node's replica when it can, and asks the
    /// leader otherwise (and for every other read).
    pub async fn read(&self, volume: u64, read: FsRead) -> Result<ReadReply, Errno> {
        if matches!(read, FsRead::Read { .. }) {
            if let Some(view) = self.local_view(volume).await {
                return do_read(&view, read);
            }
        }
        match self.call(volume, VolRequest::Read { volume, read }).await? {
            VolReply::Read(r, _) => r,
            _ => Err(libc::EIO),
        }
    }

    /// Notes that this node saw `volume` at `index`: a later read here must
    /// not see an older state.
    fn raise_floor(&self, volume: u64, index: u64) {
        let mut floors = self.floors.lock().unwrap_or_else(|e| e.into_inner());
        let floor = floors.entry(volume).or_default();
        *floor = (*floor).max(index);
    }

    /// A view of this node's replica of `volume` that is as new as
    /// everything this node has seen of the volume: every op it made and
    /// every read the leader answered for it. That is close-to-open
    /// consistency: an `open` looks the file up at the leader, so data read
    /// after it includes all that was closed anywhere before the open, and
    /// all that this node wrote. `None` (ask the leader) when this node has
    /// no replica, has seen nothing yet, or its replica has not learned
    /// that the floor is committed or is resyncing; then waiting for it
    /// could take a heartbeat or more.
    async fn local_view(&self, volume: u64) -> Option<FsView> {
        if broken(Break::StaleRead) {
            return None;
        }
        let floor = *self
            .floors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&volume)?;
        let committed = self
            .driver
            .shared()
            .volumes
            .get(&volume)
            .is_some_and(|(status, _)| status.commit >= floor);
        if !committed {
            return None;
        }
        let wait = Duration::from_millis(limits::VOLUME_LOCAL_READ_WAIT_MS);
        match tokio::time::timeout(wait, self.driver.vol_read_at(volume, floor)).await {
            Ok(Ok((view, _))) => Some(view),
            _ => None,
        }
    }

    /// The leader's view of `volume`'s group, after a request it answered.
    async fn leader_status(&self, volume: u64) -> Option<ReplicaStatus> {
        let leader = self
            .leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&volume)
            .copied()?;
        self.replica_status(volume, leader)
            .await
            .filter(|s| s.leader == Some(leader))
    }

    /// Asks the leader of `volume` for one step of a replica-set change.
    async fn change(&self, volume: u64, node: u64, change: ReplicaChange) -> Result<(), String> {
        let req = VolRequest::ChangeReplica {
            volume,
            node,
            change,
        };
        match self.call(volume, req).await {
            Ok(VolReply::Accepted) => Ok(()),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(_) => Err("no leader of the volume answered".into()),
        }
    }

    /// Makes `node` a replica of `volume`: listed in the metadata, admitted
    /// to the volume group as a learner, and promoted to voter once it has
    /// caught up (by log or by resync), so that a new replica never counts
    /// towards the quorum before it holds the data.
    pub async fn add_replica(&self, volume: u64, node: u64) -> Result<(), ReplicaChangeError> {
        use ReplicaChangeError as E;
        match self
            .driver
            .propose(Command::AddVolumeReplica { volume, node })
            .await
        {
            Ok(_) => {}
            Err(ProposeError::Refused(e)) => return Err(E::Invalid(e)),
            Err(e) => return Err(E::Unavailable(e.to_string())),
        }
        let deadline = Instant::now() + Duration::from_millis(limits::VOLUME_REPLICA_CHANGE_MS);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match self.change(volume, node, ReplicaChange::AddLearner).await {
                // A configuration is trusted only once the leader applied
                // all it committed (a new leader may not have applied a
                // removal of this very node yet).
                Ok(()) => match self
                    .leader_status(volume)
                    .await
                    .filter(|s| s.applied >= s.commit)
                {
                    Some(s) if s.voters.contains(&node) => return Ok(()),
                    Some(s) if s.learners.contains(&node) => {
                        let caught_up = self.replica_status(volume, node).await.is_some_and(|n| {
                            n.applied > 0
                                && n.resync_bytes_left == 0
                                && n.applied + limits::VOLUME_PROMOTE_LAG_ENTRIES >= s.commit
                        });
                        if caught_up {
                            if let Err(e) = self.change(volume, node, ReplicaChange::Promote).await
                            {
                                last = e;
                            }
                        } else {
                            last = "the new replica is still catching up".into();
                        }
                    }
                    _ => last = "the change is not applied yet".into(),
                },
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(E::Unavailable(format!(
            "the replica was not admitted in time ({last}); run the command again to go on"
        )))
    }

    /// Takes `node` out of `volume`'s group (the leader hands on the
    /// leadership first if it is the one leaving), then off the metadata;
    /// the node then deletes its copy.
    pub async fn remove_replica(&self, volume: u64, node: u64) -> Result<(), ReplicaChangeError> {
        use ReplicaChangeError as E;
        let replicas = self
            .replicas(volume)
            .map_err(|_| E::Invalid("no such volume".into()))?;
        if replicas == [node] {
            return Err(E::Invalid(
                "cannot remove the last replica of a volume".into(),
            ));
        }
        let deadline = Instant::now() + Duration::from_millis(limits::VOLUME_REPLICA_CHANGE_MS);
        let mut last = String::from("no answer yet");
        loop {
            if Instant::now() >= deadline {
                return Err(E::Unavailable(format!(
                    "the replica was not let go in time ({last}); run the command again to go on"
                )));
            }
            match self.change(volume, node, ReplicaChange::Remove).await {
                Ok(()) => match self
                    .leader_status(volume)
                    .await
                    .filter(|s| s.applied >= s.commit)
                {
                    Some(s) if !s.voters.contains(&node) && !s.learners.contains(&node) => break,
                    _ => last = "the change is not applied yet".into(),
                },
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match self
            .driver
            .propose(Command::RemoveVolumeReplica { volume, node })
            .await
        {
            Ok(_) => Ok(()),
            Err(ProposeError::Refused(e)) => Err(E::Invalid(e)),
            Err(e) => Err(E::Unavailable(format!(
                "left the volume group, but the metadata change failed ({e}); run the command again"
            ))),
        }
    }

    /// Asks replica `node` itself (not the leader) about its copy.
    pub async fn replica_call(&self, node: u64, req: VolRequest) -> Option<VolReply> {
        if node == self.me {
            return Some(serve_local(&self.driver, req).await);
        }
        let meta = self.driver.shared().meta;
        let addr = meta.nodes.get(&node)?.peer_addr.parse().ok()?;
        let bytes = self
            .transport
            .request(node, addr, wire::encode(&PeerMsg::Vol(req)))
            .await
            .ok()?;
        wire::decode::<VolReply>(&bytes, limits::FRAME_BYTES_MAX).ok()
    }

    /// What replica `node` says of its copy of `volume`, if it answers
    /// within a second.
    pub async fn replica_status(&self, volume: u64, node: u64) -> Option<ReplicaStatus> {
        match tokio::time::timeout(
            Duration::from_secs(1),
            self.replica_call(node, VolRequest::Status { volume }),
        )
        .await
        {
            Ok(Some(VolReply::Status(s))) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: FsOp) -> VolRequest {
        VolRequest::Op {
            volume: 1,
            op,
            tag: None,
        }
    }

    #[test]
    fn only_reads_reaps_and_tagged_ops_are_repeated_after_an_unknown_outcome() {
        assert!(retry_is_safe(&VolRequest::Status { volume: 1 }));
        assert!(retry_is_safe(&op(FsOp::Reap { ino: 5 })));
        let tagged = VolRequest::Op {
            volume: 1,
            op: FsOp::Write {
                ino: 5,
                offset: 0,
                data: b"x".to_vec(),
                now_ns: 0,
            },
            tag: Some(OpTag {
                node: 1,
                seq: 7,
                low_water: 7,
            }),
        };
        assert!(retry_is_safe(&tagged));
        // A repeated write could land after another client's write and
        // undo it (core/tests/sim_volume.rs, HOLDFAST_SIM_UNTAGGED_WRITES).
        let write = FsOp::Write {
            ino: 5,
            offset: 0,
            data: b"x".to_vec(),
            now_ns: 0,
        };
        assert!(!retry_is_safe(&op(write)));
        let truncate = FsOp::SetAttr {
            ino: 5,
            mode: None,
            uid: None,
            gid: None,
            size: Some(0),
            atime: None,
            mtime: None,
            now_ns: 0,
        };
        assert!(!retry_is_safe(&op(truncate)));
    }
}
