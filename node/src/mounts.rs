//! The FUSE mounts a node serves. `holdfast mount NAME DIR` asks the node
//! behind `--api` to serve volume NAME at DIR; the list is kept in
//! `DATA/mounts.json`, and a restarted node mounts them again.
//!
//! Unmounting never forces: a busy mount is refused with a clear message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use holdfast_core::fs::{Errno, FsOp, FsReply};
use holdfast_core::wire::{FsRead, ReadReply};
use holdfast_fuse::{Backend, BackgroundSession, MountOption, VolumeFs};
use serde::{Deserialize, Serialize};

use crate::disk::DataDir;
use crate::volume::Volumes;

/// A volume as the FUSE layer sees it: calls block on the node's runtime.
struct NodeBackend {
    volumes: Arc<Volumes>,
    volume: u64,
    rt: tokio::runtime::Handle,
    data: PathBuf,
}

impl Backend for NodeBackend {
    fn op(&self, op: FsOp) -> Result<FsReply, Errno> {
        self.rt.block_on(self.volumes.op(self.volume, op))
    }
    fn ops(&self, ops: Vec<FsOp>) -> Vec<Result<FsReply, Errno>> {
        self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            let n = ops.len();
            for (i, op) in ops.into_iter().enumerate() {
                let (volumes, volume) = (self.volumes.clone(), self.volume);
                set.spawn(async move { (i, volumes.op(volume, op).await) });
            }
            let mut out: Vec<Result<FsReply, Errno>> = vec![Err(libc::EIO); n];
            while let Some(Ok((i, r))) = set.join_next().await {
                out[i] = r;
            }
            out
        })
    }
    fn read(&self, read: FsRead) -> Result<ReadReply, Errno> {
        self.rt.block_on(self.volumes.read(self.volume, read))
    }
    fn node(&self) -> u64 {
        self.volumes.me
    }
    fn space(&self) -> (u64, u64) {
        (
            fs4::total_space(&self.data).unwrap_or(0),
            fs4::available_space(&self.data).unwrap_or(0),
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    pub volume: String,
    pub path: PathBuf,
}

struct Active {
    volume: String,
    session: BackgroundSession,
}

pub struct Mounts {
    dir: DataDir,
    volumes: Arc<Volumes>,
    rt: tokio::runtime::Handle,
    active: Mutex<BTreeMap<PathBuf, Active>>,
    reaped: Mutex<std::collections::BTreeSet<u64>>,
}

impl std::fmt::Debug for Mounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounts")
            .field("active", &self.list())
            .finish()
    }
}

fn unmount_cmd(path: &Path, lazy: bool) -> Result<(), String> {
    let mut cmd = Command::new("umount");
    if lazy {
        cmd.arg("-l");
    }
    let out = cmd
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run umount: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if err.contains("busy") {
        return Err(format!(
            "{} is busy (a file is open or a process is inside it); close them and retry",
            path.display()
        ));
    }
    Err(format!("cannot unmount {}: {err}", path.display()))
}

impl Mounts {
    pub fn new(dir: DataDir, volumes: Arc<Volumes>, rt: tokio::runtime::Handle) -> Self {
        Self {
            dir,
            volumes,
            rt,
            active: Mutex::new(BTreeMap::new()),
            reaped: Mutex::new(Default::default()),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.root.join("mounts.json")
    }

    pub fn list(&self) -> Vec<MountRecord> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, a)| MountRecord {
                volume: a.volume.clone(),
                path: p.clone(),
            })
            .collect()
    }

    fn save(&self) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(&self.list()).map_err(|e| e.to_string())?;
        self.dir
            .write_file(&self.file(), &text, false)
            .map_err(|e| e.to_string())
    }

    /// Serves volume `name` at `path`. Blocking; call off the async runtime.
    pub fn mount(&self, name: &str, path: &Path) -> Result<(), String> {
        let meta = self.volumes.driver.shared().meta;
        let vol = meta
            .volume_by_name(name)
            .ok_or_else(|| format!("no volume named {name:?}"))?;
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = active.get(path) {
            return Err(format!(
                "{} is already a mount of volume {:?}",
                path.display(),
                a.volume
            ));
        }
        // A mount left by a node that died answers "not connected": drop it.
        if let Err(e) = std::fs::metadata(path) {
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                let _ = unmount_cmd(path, true);
            }
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", path.display())),
            Err(e) => return Err(format!("cannot use {}: {e}", path.display())),
        }
        // Handles this node had open before it restarted are gone: files
        // unlinked while open here can go now.
        // In the background: the mount need not wait for the volume's leader.
        if self
            .reaped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vol.id)
        {
            let (volumes, id, volume) = (self.volumes.clone(), vol.id, name.to_string());
            self.rt.spawn(async move {
                if let Err(e) = volumes.op(id, FsOp::ReapNode { node: volumes.me }).await {
                    tracing::warn!(%volume, errno = e, "could not reap files left open by a previous run");
                }
            });
        }
        let backend = NodeBackend {
            volumes: self.volumes.clone(),
            volume: vol.id,
            rt: self.rt.clone(),
            data: self.dir.root.clone(),
        };
        let options = [
            MountOption::FSName(format!("holdfast:{name}")),
            MountOption::Subtype("holdfast".into()),
            MountOption::DefaultPermissions,
            MountOption::AllowOther,
        ];
        let session = holdfast_fuse::spawn_mount(VolumeFs::new(backend), path, &options)
            .map_err(|e| format!("cannot mount {}: {e}", path.display()))?;
        tracing::info!(volume = name, path = %path.display(), "mounted");
        active.insert(
            path.to_path_buf(),
            Active {
                volume: name.to_string(),
                session,
            },
        );
        drop(active);
        self.save()
    }

    /// Stops serving `path`; refused while it is busy.
    pub fn umount(&self, path: &Path) -> Result<(), String> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if !active.contains_key(path) {
            return Err(format!(
                "{} is not a holdfast mount of this node",
                path.display()
            ));
        }
        unmount_cmd(path, false)?;
        if let Some(a) = active.remove(path) {
            drop(a.session);
        }
        drop(active);
        tracing::info!(path = %path.display(), "unmounted");
        self.save()
    }

    /// Mounts again what `mounts.json` lists (after a restart).
    pub fn restore(&self) {
        let Ok(bytes) = std::fs::read(self.file()) else {
            return;
        };
        let records: Vec<MountRecord> = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a damaged mounts.json");
                return;
            }
        };
        for r in records {
            if let Err(e) = self.mount(&r.volume, &r.path) {
                tracing::warn!(volume = %r.volume, path = %r.path.display(), error = %e, "could not remount");
            }
        }
    }

    /// Detaches every mount (the node is stopping); `mounts.json` stays so
    /// that the next start mounts them again.
    pub fn shutdown(&self) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        for (path, a) in std::mem::take(&mut *active) {
            let _ = unmount_cmd(&path, true);
            drop(a.session);
        }
    }
}
