//! File volumes as the rest of the node uses them: [`Volumes`] sends each
//! operation to the volume's leader (this node or another, over the
//! transport), follows "not leader" hints, and gives up with `EIO` after a
//! bounded wait; [`serve_local`] answers a request against a local
//! replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_core::fs::{Errno, FsOp, FsReply, FsView};
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
        VolRequest::Op { volume, op } => driver.vol_op(volume, op).await,
        VolRequest::Read { volume, read } => match driver.vol_read(volume).await {
            Ok(view) => VolReply::Read(do_read(&view, read)),
            Err(reply) => reply,
        },
        VolRequest::Status { volume } => driver.vol_status(volume).await,
        VolRequest::ChangeReplica {
            volume,
            node,
            change,
        } => driver.vol_change(volume, node, change).await,
        VolRequest::Digest { volume } => driver.vol_digest(volume).await,
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
/// change the result: reads, and reaps. Not writes of bytes or attributes,
/// although they look idempotent: if the first attempt was applied and
/// another client's write landed after it, the repeat would silently undo
/// that acknowledged write (found by `core/tests/sim_volume.rs`). They
/// fail with `EIO` instead, until changes carry ids the volume can
/// deduplicate.
fn retry_is_safe(req: &VolRequest) -> bool {
    match req {
        VolRequest::Read { .. }
        | VolRequest::Status { .. }
        // The leader checks its configuration first: a repeat is a no-op.
        | VolRequest::ChangeReplica { .. }
        | VolRequest::Digest { .. }
        | VolRequest::SnapshotManifest { .. }
        | VolRequest::SnapshotValues { .. } => true,
        VolRequest::Op { op, .. } => matches!(op, FsOp::Reap { .. } | FsOp::ReapNode { .. }),
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
}

enum Attempt {
    Done(VolReply),
    /// Not taken; try `next` (or another replica).
    Retry(Option<u64>),
    /// Sent, but no answer: a change may or may not have happened.
    Unknown,
}

impl Volumes {
    pub fn new(driver: DriverHandle, transport: Arc<Transport>, me: u64) -> Self {
        Self {
            driver,
            transport,
            me,
            leaders: Mutex::new(HashMap::new()),
        }
    }

    fn replicas(&self, volume: u64) -> Result<Vec<u64>, Errno> {
        let meta = self.driver.shared().meta;
        meta.volumes
            .get(&volume)
            .map(|v| v.replicas.clone())
            .ok_or(libc::ENOENT)
    }

    async fn attempt(&self, target: u64, req: &VolRequest) -> Attempt {
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
            // A leader that died with our request never answers; do not
            // wait for the connection to time out when asking again is safe.
            let budget = if retry_is_safe(req) {
                limits::VOLUME_ATTEMPT_MS
            } else {
                limits::VOLUME_WAIT_MS
            };
            let sent =
                self.transport
                    .request(target, addr, wire::encode(&PeerMsg::Vol(req.clone())));
            let Ok(answer) = tokio::time::timeout(Duration::from_millis(budget), sent).await else {
                return Attempt::Unknown;
            };
            match answer {
                Ok(bytes) => match wire::decode::<VolReply>(&bytes, limits::FRAME_BYTES_MAX) {
                    Ok(r) => r,
                    Err(_) => return Attempt::Unknown,
                },
                // Nothing was sent: safe to try elsewhere.
                Err(
                    TransportError::Connect { .. }
                    | TransportError::Timeout
                    | TransportError::Refused(_),
                ) => return Attempt::Retry(None),
                Err(_) => return Attempt::Unknown,
            }
        };
        match reply {
            VolReply::NotLeader { leader } => Attempt::Retry(leader.filter(|l| *l != target)),
            VolReply::Unavailable(_) => Attempt::Retry(None),
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
        loop {
            let attempt = self.attempt(target, &req).await;
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
                    return Ok(reply);
                }
                Attempt::Unknown => {
                    if !retry_is_safe(&req) || Instant::now() >= deadline {
                        // It may or may not have happened.
                        return Err(libc::EIO);
                    }
                    turn += 1;
                    target = replicas[turn % replicas.len()];
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Attempt::Retry(hint) => {
                    if Instant::now() >= deadline {
                        return Err(libc::EIO);
                    }
                    target = match hint.filter(|h| replicas.contains(h)) {
                        Some(h) => h,
                        None => {
                            turn += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            replicas[turn % replicas.len()]
                        }
                    };
                }
            }
        }
    }

    pub async fn op(&self, volume: u64, op: FsOp) -> Result<FsReply, Errno> {
        match self.call(volume, VolRequest::Op { volume, op }).await? {
            VolReply::Op(r) => r,
            _ => Err(libc::EIO),
        }
    }

    pub async fn read(&self, volume: u64, read: FsRead) -> Result<ReadReply, Errno> {
        match self.call(volume, VolRequest::Read { volume, read }).await? {
            VolReply::Read(r) => r,
            _ => Err(libc::EIO),
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
        VolRequest::Op { volume: 1, op }
    }

    #[test]
    fn only_reads_and_reaps_are_repeated_after_an_unknown_outcome() {
        assert!(retry_is_safe(&VolRequest::Status { volume: 1 }));
        assert!(retry_is_safe(&op(FsOp::Reap { ino: 5 })));
        // A repeated write could land after another client's write and
        // undo it (core/tests/sim_volume.rs, HOLDFAST_SIM_RETRY_WRITES).
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
