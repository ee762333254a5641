//! The FUSE front end of a file volume: [`VolumeFs`] turns kernel requests
//! into volume operations on a [`Backend`] (in the node, the volume's
//! leader, reached over the cluster).
//!
//! What it owns: the mapping of FUSE calls to [`FsOp`]s and [`FsRead`]s,
//! open handles, directory listings, and the write-back buffer that holds a
//! file's writes until `flush`, `fsync` or `close` (at once for files
//! opened O_SYNC/O_DSYNC), which is when they are made durable on a
//! majority. What it does not own: consensus, routing, storage.
//!
//! Invariant: a `flush`/`fsync`/`release` replies success only after every
//! buffered write of that file was acknowledged by the backend.
//! Invariant: attributes and entries are never cached by the kernel
//! (TTL 0) and page caches are dropped at open: close-to-open consistency
//! between nodes, as in NFS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow,
};
use holdfast_core::fs::{Attr, Errno, FsOp, FsReply, Ino, Kind, TimeSet, ROOT_INO};
use holdfast_core::limits;
use holdfast_core::wire::{FsRead, ReadReply};

pub use fuser::{BackgroundSession, MountOption};

/// Serves `fs` at `path` on a thread of its own until the session is
/// dropped or the mount goes away.
pub fn spawn_mount<B: Backend>(
    fs: VolumeFs<B>,
    path: &Path,
    options: &[MountOption],
) -> std::io::Result<BackgroundSession> {
    fuser::spawn_mount2(fs, path, options)
}

/// Where the filesystem's operations go. Calls block until answered.
pub trait Backend: Send + Sync + 'static {
    fn op(&self, op: FsOp) -> Result<FsReply, Errno>;
    /// Several independent ops at once (their order does not matter); the
    /// results come back in the order given.
    fn ops(&self, ops: Vec<FsOp>) -> Vec<Result<FsReply, Errno>> {
        ops.into_iter().map(|op| self.op(op)).collect()
    }
    fn read(&self, read: FsRead) -> Result<ReadReply, Errno>;
    /// This node's id (marks files it still has open when unlinked).
    fn node(&self) -> u64;
    /// Bytes of capacity and free space to report in `statfs`.
    fn space(&self) -> (u64, u64);
}

const TTL: Duration = Duration::ZERO;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time_of(a.atime_ns),
        mtime: time_of(a.mtime_ns),
        ctime: time_of(a.ctime_ns),
        crtime: time_of(a.ctime_ns),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: limits::FS_BLOCK_BYTES as u32,
        flags: 0,
    }
}

/// Buffered writes of one file: non-overlapping extents by offset.
#[derive(Debug, Default)]
struct Dirty {
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
}

impl Dirty {
    fn end(&self) -> u64 {
        self.extents
            .iter()
            .next_back()
            .map(|(o, d)| o + d.len() as u64)
            .unwrap_or(0)
    }

    /// Adds a write, merging it with every extent it overlaps or touches.
    fn add(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        // The common case, a write that extends or overwrites within the
        // extent it starts in and touches no other: change it in place, so
        // that a stream of appends costs O(bytes), not O(bytes^2).
        if let Some((&o, ext)) = self.extents.range_mut(..=offset).next_back() {
            let ext_end = o + ext.len() as u64;
            let next_start = self.extents_after(o).unwrap_or(u64::MAX);
            if offset <= ext_end && end < next_start {
                let ext = self.extents.get_mut(&o).expect("extent just seen");
                let at = (offset - o) as usize;
                let old_len = ext.len();
                if at + data.len() > ext.len() {
                    ext.resize(at + data.len(), 0);
                }
                ext[at..at + data.len()].copy_from_slice(data);
                self.bytes += (ext.len() - old_len) as u64;
                return;
            }
        }
        let touching: Vec<u64> = self
            .extents
            .range(..=end)
            .filter(|(o, d)| *o + d.len() as u64 >= offset)
            .map(|(o, _)| *o)
            .collect();
        let mut start = offset;
        let mut stop = end;
        for o in &touching {
            let d = &self.extents[o];
            start = start.min(*o);
            stop = stop.max(o + d.len() as u64);
        }
        let mut merged = vec![0u8; (stop - start) as usize];
        for o in touching {
            if let Some(d) = self.extents.remove(&o) {
                self.bytes -= d.len() as u64;
                merged[(o - start) as usize..(o - start) as usize + d.len()].copy_from_slice(&d);
            }
        }
        merged[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
        self.bytes += merged.len() as u64;
        self.extents.insert(start, merged);
    }

    /// The start of the first extent after the one at `o`.
    fn extents_after(&self, o: u64) -> Option<u64> {
        self.extents.range(o + 1..).next().map(|(k, _)| *k)
    }

    /// Lays buffered bytes over `buf`, which holds the file from `offset`.
    fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (o, d) in self.extents.range(..end) {
            let (from, to) = (offset.max(*o), end.min(o + d.len() as u64));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&d[(from - o) as usize..(to - o) as usize]);
            }
        }
    }
}

/// One open file.
#[derive(Debug)]
struct Handle {
    ino: Ino,
    /// Writes through (O_SYNC/O_DSYNC).
    sync: bool,
    /// A push of buffered writes to this file failed while this handle was
    /// open: every close, and the next fsync, through it fail with this
    /// error (as the kernel reports a failed writeback to every file open
    /// at the time). Needed because the write(2) that triggered the push may not
    /// see the error: the kernel turns a failed request in the middle of a
    /// large write into a short write, and the caller writes the rest.
    write_error: Option<Errno>,
}

/// The FUSE filesystem of one volume.
pub struct VolumeFs<B: Backend> {
    backend: B,
    handles: HashMap<u64, Handle>,
    dirs: HashMap<u64, Vec<(Vec<u8>, Ino, Kind)>>,
    dirty: HashMap<Ino, Dirty>,
    open: HashMap<Ino, u32>,
    /// Unlinked while open here: reaped at their last close.
    orphans: HashSet<Ino>,
    next_fh: u64,
}

impl<B: Backend> std::fmt::Debug for VolumeFs<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeFs")
            .field("handles", &self.handles.len())
            .finish()
    }
}

impl<B: Backend> VolumeFs<B> {
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            handles: HashMap::new(),
            dirs: HashMap::new(),
            dirty: HashMap::new(),
            open: HashMap::new(),
            orphans: HashSet::new(),
            next_fh: 1,
        }
    }

    fn attr(&self, ino: Ino) -> Result<Attr, Errno> {
        match self.backend.read(FsRead::GetAttr { ino })? {
            ReadReply::Attr(mut a) => {
                if let Some(d) = self.dirty.get(&ino) {
                    a.size = a.size.max(d.end());
                }
                Ok(a)
            }
            _ => Err(libc::EIO),
        }
    }

    fn lookup_attr(&self, parent: Ino, name: &[u8]) -> Result<Attr, Errno> {
        match self.backend.read(FsRead::Lookup {
            parent,
            name: name.to_vec(),
        })? {
            ReadReply::Attr(mut a) => {
                if let Some(d) = self.dirty.get(&a.ino) {
                    a.size = a.size.max(d.end());
                }
                Ok(a)
            }
            _ => Err(libc::EIO),
        }
    }

    fn op_attr(&self, op: FsOp) -> Result<Attr, Errno> {
        match self.backend.op(op)? {
            FsReply::Attr(a) => Ok(a),
            FsReply::Done => Err(libc::EIO),
        }
    }

    /// Pushes the buffered writes of `ino` to the backend. Extents never
    /// overlap, so their writes go out together and share consensus
    /// rounds. On a failure the bytes are dropped, as the kernel drops
    /// pages after a failed writeback: a failed write may still have been
    /// applied, and pushing it again at the next flush or close would
    /// undo any write another client made in between (a lost update, found
    /// by an hour of `tests/run-faults`). The failure is kept on every
    /// handle open on `ino`, for its next fsync or close.
    fn flush_ino(&mut self, ino: Ino) -> Result<(), Errno> {
        let Some(dirty) = self.dirty.remove(&ino) else {
            return Ok(());
        };
        let mut ops = Vec::new();
        for (offset, data) in &dirty.extents {
            for (i, chunk) in data.chunks(limits::FS_WRITE_BYTES_MAX).enumerate() {
                let at = offset + (i * limits::FS_WRITE_BYTES_MAX) as u64;
                ops.push(FsOp::Write {
                    ino,
                    offset: at,
                    data: chunk.to_vec(),
                    now_ns: now_ns(),
                });
            }
        }
        if let Some(e) = self.backend.ops(ops).into_iter().find_map(Result::err) {
            tracing::warn!(ino, errno = e, "dropped writes whose push failed");
            for h in self.handles.values_mut().filter(|h| h.ino == ino) {
                h.write_error.get_or_insert(e);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Pushes the buffered writes of `ino`, then reports a failed push
    /// seen by handle `fh`. An fsync (`clear`) reports it once; a flush
    /// reports it without clearing it, as Linux does (a flush comes at
    /// every close of a copy of the descriptor, such as the one every
    /// fork-and-exec of the writing process makes, and must not swallow
    /// the error before the writer's fsync).
    fn sync_handle(&mut self, ino: Ino, fh: u64, clear: bool) -> Result<(), Errno> {
        let pushed = self.flush_ino(ino);
        let earlier = self.handles.get_mut(&fh).and_then(|h| {
            if clear {
                h.write_error.take()
            } else {
                h.write_error
            }
        });
        pushed?;
        earlier.map_or(Ok(()), Err)
    }

    fn new_fh(&mut self) -> u64 {
        self.next_fh += 1;
        self.next_fh
    }

    fn open_handle(&mut self, ino: Ino, flags: i32) -> u64 {
        let fh = self.new_fh();
        let sync = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.handles.insert(
            fh,
            Handle {
                ino,
                sync,
                write_error: None,
            },
        );
        *self.open.entry(ino).or_default() += 1;
        fh
    }

    /// Creates a node; `perm` is the mode with the umask applied.
    fn make_node(
        &mut self,
        req: &Request<'_>,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        target: Vec<u8>,
    ) -> Result<Attr, Errno> {
        self.op_attr(FsOp::Mknod {
            parent,
            name: name.as_bytes().to_vec(),
            kind,
            mode: perm & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            target,
            now_ns: now_ns(),
        })
    }

    fn open_on(&self, parent: Ino, name: &[u8]) -> Option<u64> {
        let ino = self.lookup_attr(parent, name).ok()?.ino;
        self.open
            .get(&ino)
            .filter(|n| **n > 0)
            .map(|_| self.backend.node())
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &fuse_attr(&a), 0),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl<B: Backend> Filesystem for VolumeFs<B> {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_write(limits::FS_WRITE_BYTES_MAX as u32);
        // Larger read requests: each one costs a trip to the volume leader.
        let _ = config
            .set_max_readahead(limits::FS_READAHEAD_BYTES)
            .or_else(|nearest| config.set_max_readahead(nearest));
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if name.len() > limits::FS_NAME_BYTES_MAX {
            return reply.error(libc::ENAMETOOLONG);
        }
        reply_entry(reply, self.lookup_attr(parent, name.as_bytes()))
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(a) => reply.attr(&TTL, &fuse_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let conv = |t: TimeOrNow| match t {
            TimeOrNow::Now => TimeSet::Now,
            TimeOrNow::SpecificTime(t) => TimeSet::At(ns_of(t)),
        };
        // A truncate must come after the writes buffered before it.
        if size.is_some() {
            if let Err(e) = self.flush_ino(ino) {
                return reply.error(e);
            }
        }
        let op = FsOp::SetAttr {
            ino,
            mode,
            uid,
            gid,
            size,
            atime: atime.map(conv),
            mtime: mtime.map(conv),
            now_ns: now_ns(),
        };
        match self.op_attr(op) {
            Ok(mut a) => {
                if let Some(d) = self.dirty.get(&ino) {
                    a.size = a.size.max(d.end());
                }
                reply.attr(&TTL, &fuse_attr(&a))
            }
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.backend.read(FsRead::ReadLink { ino }) {
            Ok(ReadReply::Data(d)) => reply.data(&d),
            Ok(_) => reply.error(libc::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Devices, fifos and sockets have no place on a shared volume.
            return reply.error(libc::EPERM);
        }
        let r = self.make_node(req, parent, name, Kind::File, mode & !umask, Vec::new());
        reply_entry(reply, r)
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.make_node(req, parent, name, Kind::Dir, mode & !umask, Vec::new());
        reply_entry(reply, r)
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.make_node(
            req,
            parent,
            link_name,
            Kind::Symlink,
            0o777,
            target.as_os_str().as_bytes().to_vec(),
        );
        reply_entry(reply, r)
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let open_on = self.open_on(parent, name.as_bytes());
        let target = open_on.and_then(|_| {
            self.lookup_attr(parent, name.as_bytes())
                .ok()
                .map(|a| a.ino)
        });
        let r = self.backend.op(FsOp::Unlink {
            parent,
            name: name.as_bytes().to_vec(),
            dir: false,
            open_on,
            now_ns: now_ns(),
        });
        if r.is_ok() {
            if let Some(ino) = target {
                self.orphans.insert(ino);
            }
        }
        reply_empty(reply, r.map(|_| ()))
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let r = self.backend.op(FsOp::Unlink {
            parent,
            name: name.as_bytes().to_vec(),
            dir: true,
            open_on: None,
            now_ns: now_ns(),
        });
        reply_empty(reply, r.map(|_| ()))
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let open_on = self.open_on(newparent, newname.as_bytes());
        let victim = open_on.and_then(|_| {
            self.lookup_attr(newparent, newname.as_bytes())
                .ok()
                .map(|a| a.ino)
        });
        let op = FsOp::Rename {
            parent,
            name: name.as_bytes().to_vec(),
            new_parent: newparent,
            new_name: newname.as_bytes().to_vec(),
            flags,
            open_on,
            now_ns: now_ns(),
        };
        let r = self.backend.op(op);
        if r.is_ok() {
            if let Some(ino) = victim {
                self.orphans.insert(ino);
            }
        }
        reply_empty(reply, r.map(|_| ()))
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.op_attr(FsOp::Link {
            ino,
            parent: newparent,
            name: newname.as_bytes().to_vec(),
            now_ns: now_ns(),
        });
        reply_entry(reply, r)
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        match self.attr(ino) {
            Ok(a) if a.kind == Kind::Dir => reply.error(libc::EISDIR),
            Ok(_) => {
                let fh = self.open_handle(ino, flags);
                // No FOPEN_KEEP_CACHE: the kernel drops its page cache, so
                // this open sees what other nodes closed.
                reply.opened(fh, 0)
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make_node(req, parent, name, Kind::File, mode & !umask, Vec::new()) {
            Ok(a) => {
                let fh = self.open_handle(a.ino, flags);
                reply.created(&TTL, &fuse_attr(&a), 0, fh, 0)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let offset = offset.max(0) as u64;
        let mut data = match self.backend.read(FsRead::Read {
            ino,
            offset,
            len: size,
        }) {
            Ok(ReadReply::Data(d)) => d,
            Ok(_) => return reply.error(libc::EIO),
            Err(e) => return reply.error(e),
        };
        if let Some(d) = self.dirty.get(&ino) {
            // Buffered writes may extend the file past what the volume has.
            let want = (offset + size as u64).min(self.attr(ino).map(|a| a.size).unwrap_or(0));
            if want > offset + data.len() as u64 {
                data.resize((want - offset) as usize, 0);
            }
            d.overlay(offset, &mut data);
        }
        reply.data(&data)
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _wflags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let offset = offset.max(0) as u64;
        if offset.saturating_add(data.len() as u64) > limits::FS_FILE_BYTES_MAX {
            return reply.error(libc::EFBIG);
        }
        let sync = self.handles.get(&fh).is_some_and(|h| h.sync);
        let d = self.dirty.entry(ino).or_default();
        d.add(offset, data);
        if sync || d.bytes >= limits::FS_DIRTY_FILE_BYTES_MAX {
            if let Err(e) = self.flush_ino(ino) {
                return reply.error(e);
            }
        }
        reply.written(data.len() as u32)
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        let r = self.sync_handle(ino, fh, false);
        reply_empty(reply, r)
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        _lock: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.flush_ino(ino);
        self.handles.remove(&fh);
        let left = self.open.get_mut(&ino).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            self.open.remove(&ino);
            if self.orphans.remove(&ino) {
                if let Err(e) = self.backend.op(FsOp::Reap { ino }) {
                    tracing::warn!(
                        ino,
                        errno = e,
                        "could not reap an unlinked file; it is reaped when this node restarts"
                    );
                }
            }
        }
        reply_empty(reply, r)
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let r = self.sync_handle(ino, fh, true);
        reply_empty(reply, r)
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        // The whole listing is taken at open, so offsets stay stable while
        // the directory changes.
        let parent = match self.attr(ino) {
            Ok(a) if a.kind == Kind::Dir => a.parent,
            Ok(_) => return reply.error(libc::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let mut entries = vec![
            (b".".to_vec(), ino, Kind::Dir),
            (
                b"..".to_vec(),
                if ino == ROOT_INO { ROOT_INO } else { parent },
                Kind::Dir,
            ),
        ];
        let mut after = Vec::new();
        loop {
            match self.backend.read(FsRead::ReadDir {
                ino,
                after: after.clone(),
            }) {
                Ok(ReadReply::Entries(page)) => {
                    let full = page.len() >= limits::FS_READDIR_ENTRIES_MAX;
                    if let Some((last, _)) = page.last() {
                        after = last.clone();
                    }
                    entries.extend(page.into_iter().map(|(n, e)| (n, e.ino, e.kind)));
                    if !full {
                        break;
                    }
                }
                Ok(_) => return reply.error(libc::EIO),
                Err(e) => return reply.error(e),
            }
        }
        let fh = self.new_fh();
        self.dirs.insert(fh, entries);
        reply.opened(fh, 0)
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dirs.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        for (i, (name, ino, kind)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(
                *ino,
                (i + 1) as i64,
                file_type(*kind),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(&fh);
        reply.ok()
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are durable on a majority when they return.
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let (total, free) = self.backend.space();
        let files = match self.backend.read(FsRead::Stats) {
            Ok(ReadReply::Stats(s)) => s.files,
            _ => 0,
        };
        let bs = 4096u64;
        reply.statfs(
            total / bs,
            free / bs,
            free / bs,
            files,
            u32::MAX as u64,
            bs as u32,
            limits::FS_NAME_BYTES_MAX as u32,
            bs as u32,
        )
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self.backend.op(FsOp::SetXattr {
            ino,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            flags: flags as u32,
            now_ns: now_ns(),
        });
        reply_empty(reply, r.map(|_| ()))
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        match self.backend.read(FsRead::GetXattr {
            ino,
            name: name.as_bytes().to_vec(),
        }) {
            Ok(ReadReply::Data(v)) => {
                if size == 0 {
                    reply.size(v.len() as u32)
                } else if (size as usize) < v.len() {
                    reply.error(libc::ERANGE)
                } else {
                    reply.data(&v)
                }
            }
            Ok(_) => reply.error(libc::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        match self.backend.read(FsRead::ListXattr { ino }) {
            Ok(ReadReply::Names(names)) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if (size as usize) < buf.len() {
                    reply.error(libc::ERANGE)
                } else {
                    reply.data(&buf)
                }
            }
            Ok(_) => reply.error(libc::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let r = self.backend.op(FsOp::RemoveXattr {
            ino,
            name: name.as_bytes().to_vec(),
            now_ns: now_ns(),
        });
        reply_empty(reply, r.map(|_| ()))
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions).
        reply.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Dirty;

    fn check(writes: &[(u64, &[u8])], at: u64, want: &[u8]) {
        let mut d = Dirty::default();
        for (o, data) in writes {
            d.add(*o, data);
        }
        let mut buf = vec![b'.'; want.len()];
        d.overlay(at, &mut buf);
        assert_eq!(buf, want, "writes {writes:?}");
        let stored: u64 = d.extents.values().map(|v| v.len() as u64).sum();
        assert_eq!(stored, d.bytes);
        let mut ends: Vec<(u64, u64)> = d
            .extents
            .iter()
            .map(|(o, v)| (*o, o + v.len() as u64))
            .collect();
        ends.sort();
        assert!(
            ends.windows(2).all(|w| w[0].1 < w[1].0),
            "extents overlap or touch: {ends:?}"
        );
    }

    #[test]
    fn buffered_writes_merge_and_overlay() {
        check(&[(0, b"abc")], 0, b"abc.");
        check(&[(2, b"xy")], 0, b"..xy.");
        check(&[(0, b"abc"), (3, b"def")], 0, b"abcdef");
        check(&[(0, b"abcdef"), (2, b"XY")], 0, b"abXYef");
        check(&[(4, b"ef"), (0, b"ab")], 0, b"ab..ef");
        check(&[(4, b"ef"), (0, b"ab"), (2, b"cd")], 0, b"abcdef");
        check(&[(0, b"abcdef")], 2, b"cdef..");
        check(&[(3, b"LONGER"), (0, b"abcdefghij")], 0, b"abcdefghij");
        check(&[(0, b"ab"), (4, b"ef"), (1, b"BCDE")], 0, b"aBCDEf");
        check(&[(0, b"ab"), (5, b"f"), (2, b"cd")], 0, b"abcd.f");
        check(
            &[(0, b"ab"), (2, b"cd"), (4, b"ef"), (1, b"X")],
            0,
            b"aXcdef",
        );
    }
}
