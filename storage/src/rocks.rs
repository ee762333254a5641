use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBRawIterator, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

use crate::{Batch, Engine, Op, Result, Snapshot, StorageError};

/// How a [`RocksEngine`] buffers writes in memory: each column family has
/// up to `count` memtables of `bytes`, one taking writes and the rest
/// waiting for or under a flush. The most it holds unflushed is
/// [`Memtables::unflushed_bytes`], in memory and later on disk.
#[derive(Debug, Clone, Copy)]
pub struct Memtables {
    pub bytes: usize,
    pub count: usize,
}

impl Memtables {
    /// With both column families ([`Split`]).
    pub const fn unflushed_bytes(&self) -> u64 {
        (self.bytes * self.count * 2) as u64
    }
}

/// Which column families keys in a range may live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Default,
    Bulk,
    Both,
}

/// How a [`RocksEngine`] splits its keys between two column families: the
/// caller's bulk keys (file data, written once and kept) in their own, so
/// that a flush or compaction of the rest (logs, metadata, short-lived
/// keys whose ranges span the whole key space) never has to rewrite them,
/// and compactions of bulk keys only meet the bulk files their range
/// overlaps.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    /// Whether `key` is a bulk key.
    pub is_bulk: fn(&[u8]) -> bool,
    /// Which families the keys in `[start, end)` may be in (`start < end`).
    pub range: fn(&[u8], &[u8]) -> Family,
}

const BULK: &str = "bulk";

/// Where [`Engine::flush`] has RocksDB make (and then deletes) a
/// checkpoint, inside the database's folder so that it is hard links.
const FLUSH_CHECKPOINT: &str = "FLUSH_CHECKPOINT";

/// The production [`Engine`]: one RocksDB database in a folder.
#[derive(Debug)]
pub struct RocksEngine {
    db: Arc<DB>,
    split: Option<Split>,
    dir: std::path::PathBuf,
    /// One flush at a time (they share [`FLUSH_CHECKPOINT`]).
    flushing: std::sync::Mutex<()>,
}

/// The column family of `key` (`None`: the default one).
fn family_of<'a>(db: &'a DB, split: Option<Split>, key: &[u8]) -> Option<&'a ColumnFamily> {
    match split {
        Some(s) if (s.is_bulk)(key) => db.cf_handle(BULK),
        _ => None,
    }
}

/// The column families to scan or delete `[start, end)` in.
fn families_of<'a>(
    db: &'a DB,
    split: Option<Split>,
    start: &[u8],
    end: &[u8],
) -> Vec<Option<&'a ColumnFamily>> {
    match split.map(|s| (s.range)(start, end)) {
        None | Some(Family::Default) => vec![None],
        Some(Family::Bulk) => vec![db.cf_handle(BULK)],
        Some(Family::Both) => vec![None, db.cf_handle(BULK)],
    }
}

type DbSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot together with the database it borrows from.
    struct SnapshotCell {
        owner: Arc<DB>,
        #[covariant]
        dependent: DbSnapshot,
    }
);

struct RocksSnapshot {
    cell: SnapshotCell,
    split: Option<Split>,
}

impl std::fmt::Debug for RocksSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RocksSnapshot")
    }
}

fn bounded(end: &[u8]) -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(end.to_vec());
    ro
}

/// Visits the keys of one or two iterators (column families hold
/// disjoint keys) in ascending order, from `start`.
fn scan_with(
    mut its: Vec<DBRawIterator<'_>>,
    start: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    for it in &mut its {
        it.seek(start);
    }
    loop {
        // The iterator at the smallest key.
        let mut next: Option<usize> = None;
        for (i, it) in its.iter().enumerate() {
            if !it.valid() {
                continue;
            }
            if next.is_none_or(|n| it.key() < its[n].key()) {
                next = Some(i);
            }
        }
        let Some(i) = next else { break };
        let (Some(k), Some(v)) = (its[i].key(), its[i].value()) else {
            break;
        };
        if !visit(k, v) {
            return Ok(());
        }
        its[i].next();
    }
    for it in &its {
        it.status().map_err(map_err)?;
    }
    Ok(())
}

impl Snapshot for RocksSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (db, snap) = (self.cell.borrow_owner(), self.cell.borrow_dependent());
        match family_of(db, self.split, key) {
            Some(cf) => snap.get_cf(cf, key),
            None => snap.get(key),
        }
        .map_err(map_err)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let (db, snap) = (self.cell.borrow_owner(), self.cell.borrow_dependent());
        let its = families_of(db, self.split, start, end)
            .into_iter()
            .map(|cf| match cf {
                Some(cf) => snap.raw_iterator_cf_opt(cf, bounded(end)),
                None => snap.raw_iterator_opt(bounded(end)),
            })
            .collect();
        scan_with(its, start, visit)
    }
}

fn map_err(e: rocksdb::Error) -> StorageError {
    let msg = e.into_string();
    if msg.contains("No space left") || msg.contains("ENOSPC") {
        StorageError::NoSpace(msg)
    } else if msg.contains("Corruption") {
        StorageError::Corruption(msg)
    } else {
        StorageError::Io(msg)
    }
}

/// Whether files in `dir` can be opened with `O_DIRECT` (not every file
/// system takes it; RocksDB would fail each flush where it does not).
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join("DIRECT_IO_PROBE");
    let works = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    works
}

impl RocksEngine {
    /// Opens (creating if needed) the database in `dir`, with its keys
    /// split between two column families as `split` says (`None`: one).
    pub fn open(dir: &Path, memtables: Memtables, split: Option<Split>) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        // Reads of a damaged file fail instead of returning garbage.
        opts.set_paranoid_checks(true);
        // A crash keeps a prefix of the writes (the Engine contract).
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        // File data is mostly already compressed (images, archives, video);
        // compressing blocks costs CPU on every read and saves little.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(4096);
        opts.set_enable_blob_gc(true);
        opts.set_advise_random_on_open(false);
        opts.set_write_buffer_size(memtables.bytes);
        opts.set_max_write_buffer_number(memtables.count as i32);
        // Unlogged writes (`Engine::write_unlogged`) are kept by a crash
        // only through a flush, and a flush must then keep a prefix of all
        // writes: every column family is flushed at the same point and
        // committed together (RocksDB's atomic flush, made for writes
        // without the WAL over several column families).
        opts.set_atomic_flush(true);
        // Flushes and compactions write large files once, which are not
        // read back soon: with O_DIRECT they skip the copy into the page
        // cache, which took a tenth to a quarter of the CPU in a sequential
        // write (BENCHMARKS.md, session 11). Reads stay buffered.
        opts.set_use_direct_io_for_flush_and_compaction(direct_io_works(dir));
        let bulk = opts.clone();
        let mut cfs = vec![ColumnFamilyDescriptor::new("default", opts.clone())];
        if split.is_some() {
            // A database made without the split holds its bulk keys in the
            // default family, where they would never be looked for.
            if let Ok(existing) = DB::list_cf(&opts, dir) {
                if !existing.iter().any(|cf| cf == BULK) {
                    return Err(StorageError::Corruption(format!(
                        "{} was written without a {BULK} column family (by an \
                         earlier build?) and cannot be read by this one",
                        dir.display()
                    )));
                }
            }
            cfs.push(ColumnFamilyDescriptor::new(BULK, bulk));
        }
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(map_err)?;
        // A flush cut short by a crash may have left its checkpoint.
        let _ = std::fs::remove_dir_all(dir.join(FLUSH_CHECKPOINT));
        Ok(Self {
            db: Arc::new(db),
            split,
            dir: dir.to_path_buf(),
            flushing: std::sync::Mutex::new(()),
        })
    }

    fn batch(&self, batch: &Batch) -> WriteBatch {
        let mut wb = WriteBatch::default();
        for op in batch.ops() {
            match op {
                Op::Put(k, v) => match family_of(&self.db, self.split, k) {
                    Some(cf) => wb.put_cf(cf, k, v),
                    None => wb.put(k, v),
                },
                Op::Delete(k) => match family_of(&self.db, self.split, k) {
                    Some(cf) => wb.delete_cf(cf, k),
                    None => wb.delete(k),
                },
                Op::DeleteRange(s, e) if s < e => {
                    for cf in families_of(&self.db, self.split, s, e) {
                        match cf {
                            Some(cf) => wb.delete_range_cf(cf, s, e),
                            None => wb.delete_range(s, e),
                        }
                    }
                }
                Op::DeleteRange(..) => {}
            }
        }
        wb
    }
}

impl Engine for RocksEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match family_of(&self.db, self.split, key) {
            Some(cf) => self.db.get_cf(cf, key),
            None => self.db.get(key),
        }
        .map_err(map_err)
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(self.batch(&batch), &wo).map_err(map_err)
    }

    fn write_unlogged(&self, batch: Batch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(self.batch(&batch), &wo).map_err(map_err)
    }

    /// RocksDB 7.8 flushes only the column family it is asked to, even
    /// with atomic flush; a checkpoint flushes all of them atomically
    /// first (`GetLiveFiles` with a flush). The checkpoint itself is hard
    /// links and a copy of the small MANIFEST, deleted at once.
    fn flush(&self) -> Result<()> {
        let _one = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        let at = self.dir.join(FLUSH_CHECKPOINT);
        let _ = std::fs::remove_dir_all(&at);
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&at))
            .map_err(map_err)?;
        std::fs::remove_dir_all(&at).map_err(|e| StorageError::Io(format!("{}: {e}", at.display())))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let its = families_of(&self.db, self.split, start, end)
            .into_iter()
            .map(|cf| match cf {
                Some(cf) => self.db.raw_iterator_cf_opt(cf, bounded(end)),
                None => self.db.raw_iterator_opt(bounded(end)),
            })
            .collect();
        scan_with(its, start, visit)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(map_err)
    }

    fn snapshot(&self) -> Arc<dyn Snapshot> {
        Arc::new(RocksSnapshot {
            cell: SnapshotCell::new(self.db.clone(), |db| db.snapshot()),
            split: self.split,
        })
    }
}
