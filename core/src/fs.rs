//! The file-volume state machine: a POSIX tree (inodes, directory entries,
//! file blocks, extended attributes) replicated by one consensus group per
//! volume.
//!
//! Every change is an [`FsOp`] applied deterministically on every replica;
//! reads ([`FsMachine::getattr`], [`FsMachine::read`], ...) look at the
//! applied state. Errors are Linux errno values, because the FUSE front end
//! hands them to the kernel as they are.
//!
//! Keys, under `v/<volume>/`:
//! ```text
//! i<ino>          inode (attributes, symlink target, orphan mark)
//! d<ino><name>    directory entry -> child ino and kind
//! b<ino><block>   file data, FS_BLOCK_BYTES per block; absent = zeros
//! x<ino><name>    extended attribute value
//! o<node><ino>    orphan index: unlinked while open on <node>
//! m               counters: next ino, files, bytes used
//! ```
//! Invariant: applying reads only the engine and the pending batch (never a
//! clock); time comes in each op's `now_ns`.
//! Invariant: a directory's `nlink` is 2 plus its subdirectories; a file's
//! is its number of directory entries.
//! Invariant: no block of a file lies wholly past its size (a truncate
//! deletes them), so unlink and truncate know a file's block keys from its
//! size and never read them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use holdfast_storage::{prefix_end, Batch, Engine, Family, Split};
use serde::{Deserialize, Serialize};

use crate::group::StateMachine;
use crate::limits;
use crate::wire;

pub type Ino = u64;
/// Every key of a volume with the blake3 of its value.
pub type Manifest = Vec<(Vec<u8>, [u8; 32])>;
pub const ROOT_INO: Ino = 1;
/// The data of a volume's Raft snapshot: the state itself is pulled
/// separately ([`crate::resync`]).
const SNAPSHOT_TAG: &[u8] = b"holdfast-volume-snapshot-1";
/// An errno value (`libc::ENOENT`, ...).
pub type Errno = i32;

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    /// Permission bits (`0o7777`); the file type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    /// Nanoseconds since the Unix epoch.
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// A directory's parent (the root is its own); 0 for other kinds.
    pub parent: Ino,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Inode {
    attr: Attr,
    target: Vec<u8>,
    /// Unlinked while still open on this node; reaped when it closes.
    orphan_of: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub next_ino: Ino,
    pub files: u64,
    /// The sum of the sizes of the volume's regular files, holes included
    /// (`du --apparent-size`): kept without reading a block back.
    pub bytes_used: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(i64),
}

/// One replicated change to the tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum FsOp {
    /// Creates a file, directory or symlink (`target`).
    Mknod {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        now_ns: i64,
    },
    Link {
        ino: Ino,
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        now_ns: i64,
    },
    /// `unlink` (`dir = false`) or `rmdir`. `open_on` names the node that
    /// still has the file open, so that its data lives until it closes.
    Unlink {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        dir: bool,
        open_on: Option<u64>,
        now_ns: i64,
    },
    Rename {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        new_parent: Ino,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        flags: u32,
        open_on: Option<u64>,
        now_ns: i64,
    },
    SetAttr {
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeSet>,
        mtime: Option<TimeSet>,
        now_ns: i64,
    },
    Write {
        ino: Ino,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        now_ns: i64,
    },
    SetXattr {
        ino: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
        now_ns: i64,
    },
    RemoveXattr {
        ino: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        now_ns: i64,
    },
    /// The last handle of an orphan closed.
    Reap { ino: Ino },
    /// A node restarted: none of its handles survive.
    ReapNode { node: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum FsReply {
    Attr(Attr),
    Done,
}

pub type FsResult = Result<FsReply, Errno>;

/// Who asked for an op, so that a repeat of it is answered from the
/// result kept for it instead of being applied again (client sessions, as
/// in the Raft thesis, section 6.3). `seq` grows on each node across
/// restarts; `low_water` is the smallest `seq` the node was still waiting
/// on when it sent the op. The volume keeps each result until a later op
/// of the node carries a `low_water` above its `seq`; an op whose `seq` is
/// below the `low_water` already applied is never applied (its caller has
/// its answer or gave up), so an op given up on cannot land after a later
/// op of the same node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpTag {
    pub node: u64,
    pub seq: u64,
    pub low_water: u64,
}

/// A proposed op with who asked for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FsProposal {
    pub req_id: u64,
    pub origin: u64,
    /// `None` for ops that are safe to apply twice (reaps).
    pub tag: Option<OpTag>,
    pub op: FsOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsEvent {
    Done {
        req_id: u64,
        origin: u64,
        result: FsResult,
        /// The log index the op was applied at.
        index: u64,
    },
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Checks a name from a client.
pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > limits::FS_NAME_BYTES_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// The file-volume state machine of one volume.
pub struct FsMachine {
    view: FsView,
    volume: u64,
    stats: Stats,
    events: Vec<FsEvent>,
}

/// The engine snapshot a replica serves to one that catches up
/// ([`crate::resync`]): the applied state at `index`.
#[derive(Debug)]
struct Held {
    index: u64,
    snap: Arc<dyn holdfast_storage::Snapshot>,
    /// Requests served from it, so that an idle one can be let go.
    served: u64,
}

/// Read access to one volume's applied state, usable from any thread.
/// Reads see whatever has been applied when they run; callers that need
/// linearizable reads first wait for the group's read index.
#[derive(Clone)]
pub struct FsView {
    engine: Arc<dyn Engine>,
    prefix: Vec<u8>,
    held: Arc<std::sync::Mutex<Option<Held>>>,
    /// The newest log index whose changes may be in the engine, in this
    /// process: set before each entry's batch is written.
    applying: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for FsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FsView")
    }
}

impl std::fmt::Debug for FsMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsMachine")
            .field("stats", &self.stats)
            .finish()
    }
}

/// Reads and writes of one apply, through the pending batch.
struct Tx<'a> {
    m: &'a FsMachine,
    batch: &'a mut Batch,
}

impl Tx<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
        self.batch
            .read_through(&*self.m.view.engine, key)
            .map_err(|_| libc::EIO)
    }
    fn inode(&self, ino: Ino) -> Result<Inode, Errno> {
        let b = self
            .get(&self.m.view.key(b'i', &be(ino), &[]))?
            .ok_or(libc::ENOENT)?;
        wire::decode(&b, limits::FRAME_BYTES_MAX).map_err(|_| libc::EIO)
    }
    fn put_inode(&mut self, ino: &Inode) {
        self.batch.put(
            self.m.view.key(b'i', &be(ino.attr.ino), &[]),
            wire::encode(ino),
        );
    }
    fn dir(&self, ino: Ino) -> Result<Inode, Errno> {
        let i = self.inode(ino)?;
        if i.attr.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(i)
    }
    fn entry(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEntry>, Errno> {
        match self.get(&self.m.view.key(b'd', &be(parent), name))? {
            Some(b) => Ok(Some(wire::decode(&b, 64).map_err(|_| libc::EIO)?)),
            None => Ok(None),
        }
    }
    fn put_entry(&mut self, parent: Ino, name: &[u8], e: DirEntry) {
        self.batch
            .put(self.m.view.key(b'd', &be(parent), name), wire::encode(&e));
    }
    fn del_entry(&mut self, parent: Ino, name: &[u8]) {
        self.batch.delete(self.m.view.key(b'd', &be(parent), name));
    }
    fn dir_is_empty(&self, ino: Ino) -> Result<bool, Errno> {
        // Through the batch: pending deletes may have emptied it, pending
        // puts may have filled it.
        let start = self.m.view.key(b'd', &be(ino), &[]);
        let end = prefix_end(&start).unwrap_or_default();
        for k in self.keys_in(&start, &end, usize::MAX)? {
            if self.get(&k)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }
    fn touch_dir(&mut self, ino: Ino, now: i64, nlink_delta: i32) -> Result<(), Errno> {
        let mut d = self.inode(ino)?;
        d.attr.mtime_ns = now;
        d.attr.ctime_ns = now;
        d.attr.nlink = (d.attr.nlink as i64 + nlink_delta as i64).max(0) as u32;
        self.put_inode(&d);
        Ok(())
    }
    /// Drops one link to `ino`; deletes it when none is left, unless it is
    /// open on some node (then it becomes an orphan of that node).
    fn drop_link(
        &mut self,
        mut inode: Inode,
        now: i64,
        open_on: Option<u64>,
        stats: &mut Stats,
    ) -> Result<(), Errno> {
        let ino = inode.attr.ino;
        inode.attr.nlink = if inode.attr.kind == Kind::Dir {
            0
        } else {
            inode.attr.nlink.saturating_sub(1)
        };
        inode.attr.ctime_ns = now;
        if inode.attr.nlink > 0 {
            self.put_inode(&inode);
            return Ok(());
        }
        stats.files = stats.files.saturating_sub(1);
        match open_on {
            Some(node) if inode.attr.kind == Kind::File => {
                inode.orphan_of = Some(node);
                self.put_inode(&inode);
                self.batch
                    .put(self.m.view.key(b'o', &be(node), &be(ino)), Vec::new());
                Ok(())
            }
            _ => self.delete_inode(&inode, stats),
        }
    }
    fn delete_inode(&mut self, inode: &Inode, stats: &mut Stats) -> Result<(), Errno> {
        let ino = inode.attr.ino;
        self.batch.delete(self.m.view.key(b'i', &be(ino), &[]));
        if inode.attr.kind == Kind::File {
            self.drop_blocks(ino, 0, inode.attr.size);
            stats.bytes_used = stats.bytes_used.saturating_sub(inode.attr.size);
        }
        let start = self.m.view.key(b'x', &be(ino), &[]);
        let end = prefix_end(&start).unwrap_or_default();
        self.drop_range(&start, &end)?;
        if let Some(node) = inode.orphan_of {
            self.batch
                .delete(self.m.view.key(b'o', &be(node), &be(ino)));
        }
        Ok(())
    }
    /// Keys in `[start, end)` as they will be once the batch is written:
    /// the engine's plus those the batch puts (at most `max` from the
    /// engine). Callers read each through the batch, which drops deleted
    /// ones.
    fn keys_in(
        &self,
        start: &[u8],
        end: &[u8],
        max: usize,
    ) -> Result<std::collections::BTreeSet<Vec<u8>>, Errno> {
        let mut keys = std::collections::BTreeSet::new();
        self.m
            .view
            .engine
            .scan(start, end, &mut |k, _| {
                keys.insert(k.to_vec());
                keys.len() < max
            })
            .map_err(|_| libc::EIO)?;
        for op in self.batch.ops() {
            if let holdfast_storage::Op::Put(k, _) = op {
                if k.as_slice() >= start && k.as_slice() < end {
                    keys.insert(k.clone());
                }
            }
        }
        Ok(keys)
    }
    /// Deletes every key in `[start, end)`, through the batch. A few keys
    /// are deleted one by one: every RocksDB read walks the range deletions
    /// of the memtable, so one per unlink would slow each read down until
    /// the next flush.
    fn drop_range(&mut self, start: &[u8], end: &[u8]) -> Result<(), Errno> {
        let keys = self.keys_in(start, end, usize::MAX)?;
        if keys.len() <= limits::FS_POINT_DELETES_MAX {
            for k in keys {
                self.batch.delete(k);
            }
        } else {
            self.batch.delete_range(start.to_vec(), end.to_vec());
        }
        Ok(())
    }
    fn block_key(&self, ino: Ino, idx: u64) -> Vec<u8> {
        self.m.view.key(b'b', &be(ino), &be(idx))
    }
    /// Deletes the blocks of a file of `size` bytes from block `from` on,
    /// without reading them: no block lies wholly past a file's end (the
    /// invariant in the module docs), so those are the blocks below
    /// `size`'s. Reading them would bring their data in from the blob
    /// files (RocksDB reads a blob as its iterator passes its key): a
    /// gigabyte read on every replica, in the consensus thread, to unlink
    /// a gigabyte.
    fn drop_blocks(&mut self, ino: Ino, from: u64, size: u64) {
        let to = size.div_ceil(limits::FS_BLOCK_BYTES);
        if to <= from {
            return;
        }
        if to - from <= limits::FS_POINT_DELETES_MAX as u64 {
            for idx in from..to {
                let k = self.block_key(ino, idx);
                self.batch.delete(k);
            }
        } else {
            let end = prefix_end(&self.m.view.key(b'b', &be(ino), &[])).unwrap_or_default();
            self.batch.delete_range(self.block_key(ino, from), end);
        }
    }
    /// Shrinks a file of `old_size` bytes to `size` (truncate).
    fn cut(&mut self, ino: Ino, old_size: u64, size: u64) -> Result<(), Errno> {
        let bs = limits::FS_BLOCK_BYTES;
        self.drop_blocks(ino, size.div_ceil(bs), old_size);
        // The partial last block keeps only its head.
        if !size.is_multiple_of(bs) {
            let k = self.block_key(ino, size / bs);
            if let Some(mut v) = self.get(&k)? {
                let keep = (size % bs) as usize;
                if v.len() > keep {
                    v.truncate(keep);
                    self.batch.put(k, v);
                }
            }
        }
        Ok(())
    }
}

/// The length of `v/<volume>/`.
const VOLUME_PREFIX_BYTES: usize = 11;

fn is_volume_prefix(k: &[u8]) -> bool {
    k.len() >= VOLUME_PREFIX_BYTES && k.starts_with(b"v/") && k[VOLUME_PREFIX_BYTES - 1] == b'/'
}

/// Whether `k` is a file block's key, `v/<volume>/b...`.
fn is_block_key(k: &[u8]) -> bool {
    is_volume_prefix(k) && k.get(VOLUME_PREFIX_BYTES) == Some(&b'b')
}

/// Where the keys in `[s, e)` may be: blocks, other keys, or both.
fn block_family(s: &[u8], e: &[u8]) -> Family {
    if is_volume_prefix(s) {
        let volume = &s[..VOLUME_PREFIX_BYTES];
        if prefix_end(volume).is_some_and(|end| e <= end.as_slice()) {
            let blocks = [volume, b"b"].concat();
            let past = [volume, b"c"].concat();
            return if s >= blocks.as_slice() && e <= past.as_slice() {
                Family::Bulk
            } else if e <= blocks.as_slice() || s >= past.as_slice() {
                Family::Default
            } else {
                Family::Both
            };
        }
    }
    if e <= b"v/".as_slice() || s >= b"v0".as_slice() {
        Family::Default
    } else {
        Family::Both
    }
}

fn apply_time(t: TimeSet, now: i64) -> i64 {
    match t {
        TimeSet::Now => now,
        TimeSet::At(ns) => ns,
    }
}

impl FsMachine {
    /// Opens volume `volume`'s state in `engine` (empty for a new replica).
    pub fn load(engine: Arc<dyn Engine>, volume: u64) -> Result<Self, String> {
        let view = FsView {
            engine,
            prefix: Self::prefix_of(volume),
            held: Arc::default(),
            applying: Arc::default(),
        };
        let stats = view
            .stats()
            .map_err(|e| format!("volume counters: errno {e}"))?;
        Ok(Self {
            view,
            volume,
            stats,
            events: Vec::new(),
        })
    }

    /// The batch that gives a new volume its root directory. Identical on
    /// every replica, so replicas start equal without a snapshot.
    pub fn initial_batch(volume: u64, created_ns: i64) -> Batch {
        let m = FsView {
            engine: Arc::new(holdfast_storage::MemEngine::new()),
            prefix: Self::prefix_of(volume),
            held: Arc::default(),
            applying: Arc::default(),
        };
        let root = Inode {
            attr: Attr {
                ino: ROOT_INO,
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                nlink: 2,
                atime_ns: created_ns,
                mtime_ns: created_ns,
                ctime_ns: created_ns,
                parent: ROOT_INO,
            },
            target: Vec::new(),
            orphan_of: None,
        };
        let mut b = Batch::new();
        b.put(m.key(b'i', &be(ROOT_INO), &[]), wire::encode(&root));
        b.put(
            m.key(b'm', &[], &[]),
            wire::encode(&Stats {
                next_ino: ROOT_INO + 1,
                files: 1,
                bytes_used: 0,
            }),
        );
        b
    }

    /// How a node's RocksDB keeps file blocks apart from everything else
    /// (`holdfast_storage::Split`): a block is written once and kept, while
    /// log entries and metadata come and go, and their flushes span the
    /// whole key space. Together, every compaction of the short-lived keys
    /// rewrote the references to every block and moved a quarter of the
    /// blocks (RocksDB's blob garbage collection relocates what lives in
    /// the oldest quarter of its blob files whenever a compaction passes
    /// over it): a cost that grew with the volume's size.
    pub const STORAGE_SPLIT: Split = Split {
        is_bulk: is_block_key,
        range: block_family,
    };

    /// Where volume `volume`'s applied state lives in the engine.
    pub fn prefix_of(volume: u64) -> Vec<u8> {
        let mut prefix = b"v/".to_vec();
        prefix.extend_from_slice(&be(volume));
        prefix.push(b'/');
        prefix
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A reader of this volume's applied state.
    pub fn view(&self) -> FsView {
        self.view.clone()
    }

    /// Applies `op` once per `tag`: a repeat gets the result of the first
    /// time, and an op older than its node's low-water mark fails with
    /// `EIO` without being applied.
    pub fn apply_tagged(&mut self, tag: OpTag, op: FsOp, batch: &mut Batch) -> FsResult {
        let node = be(tag.node);
        let mark_key = self.view.key(b'c', &node, &[]);
        let result_key = self.view.key(b'c', &node, &be(tag.seq));
        let read = |key: &[u8]| {
            batch
                .read_through(&*self.view.engine, key)
                .map_err(|_| libc::EIO)
        };
        let mark = match read(&mark_key)? {
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| libc::EIO)?),
            None => 0,
        };
        if tag.seq < mark {
            return Err(libc::EIO);
        }
        if let Some(b) = read(&result_key)? {
            return wire::decode::<FsResult>(&b, limits::FRAME_BYTES_MAX).map_err(|_| libc::EIO)?;
        }
        let result = self.apply_op(op, batch);
        if tag.low_water > mark {
            // Results below the mark are never read again. They are
            // deleted a block at a time, not each time the mark moves: a
            // range deletion per op would slow RocksDB's reads down.
            let block = |n: u64| n / limits::FS_OP_RESULTS_BLOCK;
            if block(tag.low_water) > block(mark) {
                batch.delete_range(
                    self.view.key(b'c', &node, &be(0)),
                    self.view.key(
                        b'c',
                        &node,
                        &be(block(tag.low_water) * limits::FS_OP_RESULTS_BLOCK),
                    ),
                );
            }
            batch.put(mark_key, be(tag.low_water).to_vec());
        }
        if tag.seq >= tag.low_water.max(mark) {
            batch.put(result_key, wire::encode(&result));
        }
        result
    }

    /// Applies one op; the caller writes `batch`.
    pub fn apply_op(&mut self, op: FsOp, batch: &mut Batch) -> FsResult {
        let mut stats = self.stats;
        let r = {
            let mut tx = Tx { m: self, batch };
            Self::apply_tx(&mut tx, op, &mut stats)
        };
        if r.is_ok() {
            self.stats = stats;
            batch.put(self.view.key(b'm', &[], &[]), wire::encode(&stats));
        }
        r
    }

    fn apply_tx(tx: &mut Tx<'_>, op: FsOp, stats: &mut Stats) -> FsResult {
        // A failed op must leave no trace: undo what it staged.
        let mark = tx.batch.len();
        let r = Self::apply_inner(tx, op, stats);
        if r.is_err() {
            tx.batch.truncate(mark);
        }
        r
    }

    fn apply_inner(tx: &mut Tx<'_>, op: FsOp, stats: &mut Stats) -> FsResult {
        match op {
            FsOp::Mknod {
                parent,
                name,
                kind,
                mode,
                uid,
                gid,
                target,
                now_ns,
            } => {
                check_name(&name)?;
                if target.len() > limits::FS_SYMLINK_BYTES_MAX {
                    return Err(libc::ENAMETOOLONG);
                }
                tx.dir(parent)?;
                if tx.entry(parent, &name)?.is_some() {
                    return Err(libc::EEXIST);
                }
                let ino = stats.next_ino;
                stats.next_ino += 1;
                stats.files += 1;
                let attr = Attr {
                    ino,
                    kind,
                    mode: mode & 0o7777,
                    uid,
                    gid,
                    size: if kind == Kind::Symlink {
                        target.len() as u64
                    } else {
                        0
                    },
                    nlink: if kind == Kind::Dir { 2 } else { 1 },
                    atime_ns: now_ns,
                    mtime_ns: now_ns,
                    ctime_ns: now_ns,
                    parent: if kind == Kind::Dir { parent } else { 0 },
                };
                tx.put_inode(&Inode {
                    attr: attr.clone(),
                    target,
                    orphan_of: None,
                });
                tx.put_entry(parent, &name, DirEntry { ino, kind });
                tx.touch_dir(parent, now_ns, if kind == Kind::Dir { 1 } else { 0 })?;
                Ok(FsReply::Attr(attr))
            }
            FsOp::Link {
                ino,
                parent,
                name,
                now_ns,
            } => {
                check_name(&name)?;
                let mut i = tx.inode(ino)?;
                if i.attr.kind == Kind::Dir {
                    return Err(libc::EPERM);
                }
                if i.attr.nlink == 0 {
                    return Err(libc::ENOENT);
                }
                tx.dir(parent)?;
                if tx.entry(parent, &name)?.is_some() {
                    return Err(libc::EEXIST);
                }
                i.attr.nlink += 1;
                i.attr.ctime_ns = now_ns;
                tx.put_inode(&i);
                tx.put_entry(
                    parent,
                    &name,
                    DirEntry {
                        ino,
                        kind: i.attr.kind,
                    },
                );
                tx.touch_dir(parent, now_ns, 0)?;
                Ok(FsReply::Attr(i.attr))
            }
            FsOp::Unlink {
                parent,
                name,
                dir,
                open_on,
                now_ns,
            } => {
                check_name(&name)?;
                tx.dir(parent)?;
                let e = tx.entry(parent, &name)?.ok_or(libc::ENOENT)?;
                let target = tx.inode(e.ino)?;
                match (dir, target.attr.kind == Kind::Dir) {
                    (false, true) => return Err(libc::EISDIR),
                    (true, false) => return Err(libc::ENOTDIR),
                    (true, true) if !tx.dir_is_empty(e.ino)? => return Err(libc::ENOTEMPTY),
                    _ => {}
                }
                tx.del_entry(parent, &name);
                tx.touch_dir(parent, now_ns, if dir { -1 } else { 0 })?;
                tx.drop_link(target, now_ns, open_on, stats)?;
                Ok(FsReply::Done)
            }
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                open_on,
                now_ns,
            } => {
                check_name(&name)?;
                check_name(&new_name)?;
                if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
                    || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
                {
                    return Err(libc::EINVAL);
                }
                tx.dir(parent)?;
                tx.dir(new_parent)?;
                let src = tx.entry(parent, &name)?.ok_or(libc::ENOENT)?;
                let dst = tx.entry(new_parent, &new_name)?;
                if parent == new_parent && name == new_name {
                    return if flags & RENAME_NOREPLACE != 0 {
                        Err(libc::EEXIST)
                    } else {
                        Ok(FsReply::Done)
                    };
                }
                // A directory may not move into its own subtree.
                if src.kind == Kind::Dir {
                    let mut at = new_parent;
                    loop {
                        if at == src.ino {
                            return Err(libc::EINVAL);
                        }
                        if at == ROOT_INO {
                            break;
                        }
                        at = tx.inode(at)?.attr.parent;
                    }
                }
                if flags & RENAME_EXCHANGE != 0 {
                    let dst = dst.ok_or(libc::ENOENT)?;
                    if dst.kind == Kind::Dir {
                        let mut at = parent;
                        loop {
                            if at == dst.ino {
                                return Err(libc::EINVAL);
                            }
                            if at == ROOT_INO {
                                break;
                            }
                            at = tx.inode(at)?.attr.parent;
                        }
                    }
                    tx.put_entry(parent, &name, dst);
                    tx.put_entry(new_parent, &new_name, src);
                    for (moved, to) in [(src, new_parent), (dst, parent)] {
                        let mut i = tx.inode(moved.ino)?;
                        i.attr.ctime_ns = now_ns;
                        if moved.kind == Kind::Dir {
                            i.attr.parent = to;
                        }
                        tx.put_inode(&i);
                    }
                    if src.kind != dst.kind && parent != new_parent {
                        let (d_src, d_dst) = if src.kind == Kind::Dir {
                            (-1, 1)
                        } else {
                            (1, -1)
                        };
                        tx.touch_dir(parent, now_ns, d_src)?;
                        tx.touch_dir(new_parent, now_ns, d_dst)?;
                    } else {
                        tx.touch_dir(parent, now_ns, 0)?;
                        tx.touch_dir(new_parent, now_ns, 0)?;
                    }
                    return Ok(FsReply::Done);
                }
                if let Some(d) = dst {
                    if flags & RENAME_NOREPLACE != 0 {
                        return Err(libc::EEXIST);
                    }
                    if d.ino == src.ino {
                        // Two links to one file: POSIX says do nothing.
                        return Ok(FsReply::Done);
                    }
                    let victim = tx.inode(d.ino)?;
                    match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                        (true, false) => return Err(libc::ENOTDIR),
                        (false, true) => return Err(libc::EISDIR),
                        (true, true) if !tx.dir_is_empty(d.ino)? => return Err(libc::ENOTEMPTY),
                        _ => {}
                    }
                    if d.kind == Kind::Dir {
                        tx.touch_dir(new_parent, now_ns, -1)?;
                    }
                    tx.drop_link(victim, now_ns, open_on, stats)?;
                }
                tx.del_entry(parent, &name);
                tx.put_entry(new_parent, &new_name, src);
                let mut moved = tx.inode(src.ino)?;
                moved.attr.ctime_ns = now_ns;
                if src.kind == Kind::Dir {
                    moved.attr.parent = new_parent;
                }
                tx.put_inode(&moved);
                let d = if src.kind == Kind::Dir { 1 } else { 0 };
                tx.touch_dir(parent, now_ns, -d)?;
                tx.touch_dir(new_parent, now_ns, d)?;
                Ok(FsReply::Done)
            }
            FsOp::SetAttr {
                ino,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
                now_ns,
            } => {
                let mut i = tx.inode(ino)?;
                if let Some(size) = size {
                    match i.attr.kind {
                        Kind::Dir => return Err(libc::EISDIR),
                        Kind::Symlink => return Err(libc::EINVAL),
                        Kind::File => {}
                    }
                    if size > limits::FS_FILE_BYTES_MAX {
                        return Err(libc::EFBIG);
                    }
                    if size < i.attr.size {
                        tx.cut(ino, i.attr.size, size)?;
                    }
                    stats.bytes_used = (stats.bytes_used + size).saturating_sub(i.attr.size);
                    i.attr.size = size;
                    i.attr.mtime_ns = now_ns;
                }
                if let Some(m) = mode {
                    i.attr.mode = m & 0o7777;
                }
                if let Some(u) = uid {
                    i.attr.uid = u;
                }
                if let Some(g) = gid {
                    i.attr.gid = g;
                }
                if let Some(t) = atime {
                    i.attr.atime_ns = apply_time(t, now_ns);
                }
                if let Some(t) = mtime {
                    i.attr.mtime_ns = apply_time(t, now_ns);
                }
                i.attr.ctime_ns = now_ns;
                tx.put_inode(&i);
                Ok(FsReply::Attr(i.attr))
            }
            FsOp::Write {
                ino,
                offset,
                data,
                now_ns,
            } => {
                if data.len() > limits::FS_WRITE_BYTES_MAX {
                    return Err(libc::EINVAL);
                }
                let mut i = tx.inode(ino)?;
                if i.attr.kind != Kind::File {
                    return Err(if i.attr.kind == Kind::Dir {
                        libc::EISDIR
                    } else {
                        libc::EINVAL
                    });
                }
                let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
                if end > limits::FS_FILE_BYTES_MAX {
                    return Err(libc::EFBIG);
                }
                let bs = limits::FS_BLOCK_BYTES;
                let mut pos = offset;
                while pos < end {
                    let idx = pos / bs;
                    let block_start = idx * bs;
                    let in_block = (pos - block_start) as usize;
                    let n = ((bs - (pos - block_start)).min(end - pos)) as usize;
                    let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
                    let key = tx.block_key(ino, idx);
                    let mut block = if in_block == 0 && n as u64 == bs {
                        Vec::new()
                    } else {
                        tx.get(&key)?.unwrap_or_default()
                    };
                    // Bytes past the file's old end inside this block are a
                    // hole, even if a truncate left stale ones: zero them.
                    let valid = i.attr.size.saturating_sub(block_start).min(bs) as usize;
                    block.truncate(valid);
                    if block.len() < in_block + n {
                        block.resize(in_block + n, 0);
                    }
                    block[in_block..in_block + n].copy_from_slice(src);
                    tx.batch.put(key, block);
                    pos += n as u64;
                }
                stats.bytes_used += end.saturating_sub(i.attr.size);
                i.attr.size = i.attr.size.max(end);
                i.attr.mtime_ns = now_ns;
                i.attr.ctime_ns = now_ns;
                tx.put_inode(&i);
                Ok(FsReply::Attr(i.attr))
            }
            FsOp::SetXattr {
                ino,
                name,
                value,
                flags,
                now_ns,
            } => {
                if name.is_empty() || name.len() > limits::FS_XATTR_NAME_BYTES_MAX {
                    return Err(libc::ERANGE);
                }
                if value.len() > limits::FS_XATTR_VALUE_BYTES_MAX {
                    return Err(libc::E2BIG);
                }
                let mut i = tx.inode(ino)?;
                let key = tx.m.view.key(b'x', &be(ino), &name);
                let exists = tx.get(&key)?.is_some();
                if flags & XATTR_CREATE != 0 && exists {
                    return Err(libc::EEXIST);
                }
                if flags & XATTR_REPLACE != 0 && !exists {
                    return Err(libc::ENODATA);
                }
                tx.batch.put(key, value);
                i.attr.ctime_ns = now_ns;
                tx.put_inode(&i);
                Ok(FsReply::Done)
            }
            FsOp::RemoveXattr { ino, name, now_ns } => {
                let mut i = tx.inode(ino)?;
                let key = tx.m.view.key(b'x', &be(ino), &name);
                if tx.get(&key)?.is_none() {
                    return Err(libc::ENODATA);
                }
                tx.batch.delete(key);
                i.attr.ctime_ns = now_ns;
                tx.put_inode(&i);
                Ok(FsReply::Done)
            }
            FsOp::Reap { ino } => {
                let i = tx.inode(ino)?;
                if i.attr.nlink == 0 && i.orphan_of.is_some() {
                    tx.delete_inode(&i, stats)?;
                }
                Ok(FsReply::Done)
            }
            FsOp::ReapNode { node } => {
                let start = tx.m.view.key(b'o', &be(node), &[]);
                let end = prefix_end(&start).unwrap_or_default();
                let mut inos = Vec::new();
                tx.m.view
                    .engine
                    .scan(&start, &end, &mut |k, _| {
                        inos.push(u64::from_be_bytes(
                            k[start.len()..].try_into().unwrap_or_default(),
                        ));
                        true
                    })
                    .map_err(|_| libc::EIO)?;
                for ino in inos {
                    if let Ok(i) = tx.inode(ino) {
                        tx.delete_inode(&i, stats)?;
                    }
                }
                Ok(FsReply::Done)
            }
        }
    }
}

impl FsView {
    fn key(&self, tag: u8, a: &[u8], b: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 1 + a.len() + b.len());
        k.extend_from_slice(&self.prefix);
        k.push(tag);
        k.extend_from_slice(a);
        k.extend_from_slice(b);
        k
    }

    /// An index at or past every change this process has applied to the
    /// engine so far (0 before the first): read after a read, it bounds
    /// what that read can have seen, from above.
    pub fn applying(&self) -> u64 {
        self.applying.load(Ordering::Acquire)
    }

    /// The volume's counters as applied.
    pub fn stats(&self) -> Result<Stats, Errno> {
        match self
            .engine
            .get(&self.key(b'm', &[], &[]))
            .map_err(|_| libc::EIO)?
        {
            Some(b) => wire::decode(&b, 1024).map_err(|_| libc::EIO),
            None => Ok(Stats::default()),
        }
    }

    fn read_inode(&self, ino: Ino) -> Result<Inode, Errno> {
        let b = self
            .engine
            .get(&self.key(b'i', &be(ino), &[]))
            .map_err(|_| libc::EIO)?
            .ok_or(libc::ENOENT)?;
        wire::decode(&b, limits::FRAME_BYTES_MAX).map_err(|_| libc::EIO)
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        Ok(self.read_inode(ino)?.attr)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, Errno> {
        check_name(name).map_err(|e| if e == libc::EINVAL { libc::ENOENT } else { e })?;
        let b = self
            .engine
            .get(&self.key(b'd', &be(parent), name))
            .map_err(|_| libc::EIO)?;
        let Some(b) = b else {
            // Tell "no such entry" from "no such directory".
            let p = self.read_inode(parent)?;
            return Err(if p.attr.kind == Kind::Dir {
                libc::ENOENT
            } else {
                libc::ENOTDIR
            });
        };
        let e: DirEntry = wire::decode(&b, 64).map_err(|_| libc::EIO)?;
        self.getattr(e.ino)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, Errno> {
        let i = self.read_inode(ino)?;
        if i.attr.kind != Kind::Symlink {
            return Err(libc::EINVAL);
        }
        Ok(i.target)
    }

    /// Up to `FS_READDIR_ENTRIES_MAX` entries of `ino` whose names sort
    /// after `after`.
    pub fn readdir(&self, ino: Ino, after: &[u8]) -> Result<Vec<(Vec<u8>, DirEntry)>, Errno> {
        let d = self.read_inode(ino)?;
        if d.attr.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        let base = self.key(b'd', &be(ino), &[]);
        let mut start = self.key(b'd', &be(ino), after);
        if !after.is_empty() {
            start.push(0);
        }
        let end = prefix_end(&base).unwrap_or_default();
        let mut out = Vec::new();
        let mut bad = false;
        self.engine
            .scan(&start, &end, &mut |k, v| {
                match wire::decode::<DirEntry>(v, 64) {
                    Ok(e) => out.push((k[base.len()..].to_vec(), e)),
                    Err(_) => bad = true,
                }
                out.len() < limits::FS_READDIR_ENTRIES_MAX && !bad
            })
            .map_err(|_| libc::EIO)?;
        if bad {
            return Err(libc::EIO);
        }
        Ok(out)
    }

    /// Reads up to `len` bytes at `offset`; holes read as zeros.
    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let i = self.read_inode(ino)?;
        if i.attr.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let len = len.min(limits::FS_READ_BYTES_MAX) as u64;
        let end = (offset.saturating_add(len)).min(i.attr.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let bs = limits::FS_BLOCK_BYTES;
        let mut out = vec![0u8; (end - offset) as usize];
        let first = offset / bs;
        let last = (end - 1) / bs;
        let start_key = self.key(b'b', &be(ino), &be(first));
        let end_key = self.key(b'b', &be(ino), &be(last + 1));
        let base = self.key(b'b', &be(ino), &[]).len();
        self.engine
            .scan(&start_key, &end_key, &mut |k, v| {
                let idx = u64::from_be_bytes(k[base..base + 8].try_into().unwrap_or_default());
                let block_start = idx * bs;
                let from = offset.max(block_start);
                let to = end.min(block_start + v.len() as u64);
                if from < to {
                    out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                        &v[(from - block_start) as usize..(to - block_start) as usize],
                    );
                }
                true
            })
            .map_err(|_| libc::EIO)?;
        Ok(out)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, Errno> {
        self.read_inode(ino)?;
        self.engine
            .get(&self.key(b'x', &be(ino), name))
            .map_err(|_| libc::EIO)?
            .ok_or(libc::ENODATA)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, Errno> {
        self.read_inode(ino)?;
        let base = self.key(b'x', &be(ino), &[]);
        let end = prefix_end(&base).unwrap_or_default();
        let mut names = Vec::new();
        self.engine
            .scan(&base, &end, &mut |k, _| {
                names.push(k[base.len()..].to_vec());
                names.len() < 4096
            })
            .map_err(|_| libc::EIO)?;
        Ok(names)
    }

    /// Every key of this volume with the blake3 of its value: what replicas
    /// compare to find what differs.
    /// blake3 over the manifest: equal on replicas with equal state.
    pub fn digest(&self) -> Result<String, Errno> {
        let mut h = blake3::Hasher::new();
        for (k, v) in self.manifest()? {
            h.update(&(k.len() as u64).to_be_bytes());
            h.update(&k);
            h.update(&v);
        }
        Ok(h.finalize().to_hex().to_string())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The served snapshot at `index`, counting the use.
    fn held_at(&self, index: u64) -> Result<Arc<dyn holdfast_storage::Snapshot>, String> {
        let mut held = self.held();
        match held.as_mut() {
            Some(h) if h.index == index => {
                h.served += 1;
                Ok(h.snap.clone())
            }
            Some(h) => Err(format!(
                "snapshot {index} is gone (this replica serves {})",
                h.index
            )),
            None => Err(format!("snapshot {index} is gone")),
        }
    }

    /// The index of the snapshot this replica serves and how many requests
    /// it answered, for letting an idle one go.
    pub fn snapshot_served(&self) -> Option<(u64, u64)> {
        self.held().as_ref().map(|h| (h.index, h.served))
    }

    /// Manifest entries of the served snapshot at `index` after key
    /// `after`, at most `RESYNC_PAGE_KEYS_MAX` of them and about
    /// `RESYNC_FETCH_BYTES_MAX` of values hashed, and whether they end it.
    pub fn snapshot_manifest(
        &self,
        index: u64,
        after: &[u8],
    ) -> Result<(Vec<crate::resync::ManifestEntry>, bool), String> {
        let snap = self.held_at(index)?;
        let mut start = self.prefix.clone();
        if !after.is_empty() {
            start.extend_from_slice(after);
            start.push(0);
        }
        let end = prefix_end(&self.prefix).unwrap_or_default();
        let mut out = Vec::new();
        let mut hashed = 0usize;
        let mut done = true;
        snap.scan(&start, &end, &mut |k, v| {
            if out.len() == limits::RESYNC_PAGE_KEYS_MAX || hashed >= limits::RESYNC_FETCH_BYTES_MAX
            {
                done = false;
                return false;
            }
            hashed += v.len();
            out.push(crate::resync::ManifestEntry {
                key: k[self.prefix.len()..].to_vec(),
                hash: *blake3::hash(v).as_bytes(),
                len: v.len() as u64,
            });
            true
        })
        .map_err(|e| e.to_string())?;
        Ok((out, done))
    }

    /// The values of `keys` in the served snapshot at `index`.
    pub fn snapshot_values(
        &self,
        index: u64,
        keys: &[Vec<u8>],
    ) -> Result<crate::resync::KeyValues, String> {
        if keys.len() > limits::RESYNC_PAGE_KEYS_MAX {
            return Err(format!("{} keys asked at once", keys.len()));
        }
        let snap = self.held_at(index)?;
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for k in keys {
            let mut key = self.prefix.clone();
            key.extend_from_slice(k);
            let v = snap
                .get(&key)
                .map_err(|e| e.to_string())?
                .ok_or("a key asked for is not in the snapshot")?;
            bytes += v.len();
            if bytes > 2 * limits::RESYNC_FETCH_BYTES_MAX {
                return Err("too many bytes asked at once".into());
            }
            out.push((k.clone(), v));
        }
        Ok(out)
    }

    pub fn manifest(&self) -> Result<Manifest, Errno> {
        let end = prefix_end(&self.prefix).unwrap_or_default();
        let mut out = Vec::new();
        self.engine
            .scan(&self.prefix, &end, &mut |k, v| {
                out.push((k[self.prefix.len()..].to_vec(), *blake3::hash(v).as_bytes()));
                true
            })
            .map_err(|_| libc::EIO)?;
        Ok(out)
    }
}

impl StateMachine for FsMachine {
    type Event = FsEvent;

    fn apply(&mut self, index: u64, data: &[u8], batch: &mut Batch) {
        self.view.applying.store(index, Ordering::Release);
        match wire::decode::<FsProposal>(data, limits::FS_COMMAND_BYTES_MAX) {
            Ok(p) => {
                let result = match p.tag {
                    Some(tag) => self.apply_tagged(tag, p.op, batch),
                    None => self.apply_op(p.op, batch),
                };
                self.events.push(FsEvent::Done {
                    req_id: p.req_id,
                    origin: p.origin,
                    result,
                    index,
                });
            }
            Err(e) => tracing::warn!(error = %e, "skipped undecodable volume entry"),
        }
    }

    /// Replica-set changes come from the node that orchestrates them
    /// (`holdfast volume add-replica`/`remove-replica`): a new replica joins
    /// as a learner, is promoted once it caught up, and a replica leaves by
    /// removal. Anything else is refused, alike on every replica.
    fn check_conf_change(
        &mut self,
        _index: u64,
        cc: &raft::prelude::ConfChange,
        _batch: &mut Batch,
    ) -> bool {
        use raft::prelude::ConfChangeType as T;
        cc.node_id != 0
            && matches!(
                cc.get_change_type(),
                T::AddNode | T::AddLearnerNode | T::RemoveNode
            )
    }

    /// A replica is added as a learner and promoted once it has caught up
    /// (`Volumes::add_replica`); a removed replica may be added back empty.
    fn members_join_as_learners(&self) -> bool {
        true
    }

    /// Every volume read goes to the leader, so followers need not hear of
    /// each commit at once: that halves the messages of a write.
    fn lazy_commit_broadcast(&self) -> bool {
        true
    }

    /// A replica's state may go back to an older applied index after a
    /// crash: it is applied again from the synced log, and reads are
    /// served by the leader.
    fn sync_commit_index(&self) -> bool {
        false
    }

    /// File data is written to the write-ahead log once, in the log
    /// entry; the blocks it becomes reach the disk when the engine flushes.
    fn unlogged_applies(&self) -> bool {
        true
    }

    /// Pins the applied state (an engine snapshot, which costs nothing
    /// until the state moves on) and serves it page by page to a replica
    /// that catches up ([`crate::resync`]); the Raft snapshot itself only
    /// names it.
    fn snapshot(&mut self, index: u64) -> Vec<u8> {
        *self.view.held() = Some(Held {
            index,
            snap: self.view.engine.snapshot(),
            served: 0,
        });
        SNAPSHOT_TAG.to_vec()
    }

    /// Moves the changes [`crate::resync::pull`] staged for this snapshot
    /// into the live state. The driver steps a snapshot into the group only
    /// once they are staged completely.
    fn restore(
        &mut self,
        meta: &raft::prelude::SnapshotMetadata,
        data: &[u8],
        batch: &mut Batch,
    ) -> Result<(), String> {
        use protobuf::Message as _;
        if !data.is_empty() && data != SNAPSHOT_TAG {
            return Err("not a volume snapshot".into());
        }
        let marker = meta.write_to_bytes().map_err(|e| e.to_string())?;
        self.view.applying.store(meta.index, Ordering::Release);
        crate::resync::apply_staged(&*self.view.engine, self.volume, meta.index, marker)?;
        crate::resync::clear_staging(self.volume, batch);
        self.stats = self
            .view
            .stats()
            .map_err(|e| format!("volume counters: errno {e}"))?;
        Ok(())
    }

    fn interrupted_restore(&self) -> Result<Option<raft::prelude::SnapshotMetadata>, String> {
        use protobuf::Message as _;
        match crate::resync::interrupted(&*self.view.engine, self.volume)? {
            Some(b) => raft::prelude::SnapshotMetadata::parse_from_bytes(&b)
                .map(Some)
                .map_err(|e| format!("restore marker: {e}")),
            None => Ok(None),
        }
    }

    fn release_snapshot(&mut self) {
        *self.view.held() = None;
    }

    fn take_events(&mut self) -> Vec<FsEvent> {
        std::mem::take(&mut self.events)
    }
}
