//! The network side of a volume resync: a thread that pulls the snapshot a
//! leader serves, through `holdfast_core::resync::pull`, over the cluster
//! transport, at most `RESYNC_BYTES_PER_SEC`. The consensus thread starts
//! it when a volume snapshot arrives and steps the snapshot into the group
//! once the pull reports back ([`crate::driver`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_core::limits;
use holdfast_core::resync::{self, ManifestEntry, PullStats, Source};
use holdfast_core::wire::{self, PeerMsg, VolReply, VolRequest};
use holdfast_storage::Engine;
use holdfast_transport::Transport;
use serde_bytes::ByteBuf;

/// One pull: the snapshot at `index` of `volume`, served by node `from`.
pub struct Pull {
    pub engine: Arc<dyn Engine>,
    pub volume: u64,
    pub index: u64,
    /// The local replica's applied index, which must not move meanwhile.
    pub base_applied: u64,
    pub from: u64,
    pub addr: SocketAddr,
    pub transport: Arc<Transport>,
    pub rt: tokio::runtime::Handle,
    /// Bytes still to fetch, for `volume status`.
    pub left: Arc<AtomicU64>,
}

impl std::fmt::Debug for Pull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pull")
            .field("volume", &self.volume)
            .field("index", &self.index)
            .field("from", &self.from)
            .finish()
    }
}

impl Pull {
    /// Runs the pull on its own thread and hands the result to `done`.
    pub fn spawn(self, done: impl FnOnce(Result<PullStats, String>) + Send + 'static) {
        let spawned = std::thread::Builder::new()
            .name(format!("resync-{}", self.volume))
            .spawn(move || {
                let mut source = TransportSource {
                    transport: self.transport.clone(),
                    rt: self.rt.clone(),
                    to: self.from,
                    addr: self.addr,
                    volume: self.volume,
                    index: self.index,
                    started: Instant::now(),
                    fetched: 0,
                };
                let r = resync::pull(
                    &*self.engine,
                    self.volume,
                    self.index,
                    self.base_applied,
                    &mut source,
                    &self.left,
                );
                done(r)
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a resync thread");
        }
    }
}

struct TransportSource {
    transport: Arc<Transport>,
    rt: tokio::runtime::Handle,
    to: u64,
    addr: SocketAddr,
    volume: u64,
    index: u64,
    started: Instant,
    fetched: u64,
}

impl TransportSource {
    fn call(&self, req: VolRequest) -> Result<VolReply, String> {
        let frame = wire::encode(&PeerMsg::Vol(req));
        let bytes = self
            .rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_millis(limits::VOLUME_WAIT_MS),
                    self.transport.request(self.to, self.addr, frame),
                )
                .await
            })
            .map_err(|_| "the serving replica did not answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        match wire::decode::<VolReply>(&bytes, limits::FRAME_BYTES_MAX) {
            Ok(VolReply::Unavailable(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(e) => Err(format!("bad reply: {e}")),
        }
    }

    /// Waits until the bytes fetched so far fit the resync rate.
    fn throttle(&self) {
        let due =
            Duration::from_secs_f64(self.fetched as f64 / limits::RESYNC_BYTES_PER_SEC as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

impl Source for TransportSource {
    fn manifest(&mut self, after: &[u8]) -> Result<(Vec<ManifestEntry>, bool), String> {
        match self.call(VolRequest::SnapshotManifest {
            volume: self.volume,
            index: self.index,
            after: after.to_vec(),
        })? {
            VolReply::Manifest { entries, done } => Ok((entries, done)),
            other => Err(format!(
                "unexpected reply {:?}",
                std::mem::discriminant(&other)
            )),
        }
    }

    fn values(&mut self, keys: &[Vec<u8>]) -> Result<resync::KeyValues, String> {
        self.throttle();
        match self.call(VolRequest::SnapshotValues {
            volume: self.volume,
            index: self.index,
            keys: keys.iter().cloned().map(ByteBuf::from).collect(),
        })? {
            VolReply::Values(values) => {
                let out: resync::KeyValues = values
                    .into_iter()
                    .map(|(k, v)| (k.into_vec(), v.into_vec()))
                    .collect();
                self.fetched += out.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
                Ok(out)
            }
            other => Err(format!(
                "unexpected reply {:?}",
                std::mem::discriminant(&other)
            )),
        }
    }
}
