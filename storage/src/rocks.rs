use std::path::Path;
use std::sync::Arc;

use rocksdb::{DBRawIterator, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::{Batch, Engine, Op, Result, Snapshot, StorageError};

/// How a [`RocksEngine`] buffers writes in memory: memtables of `bytes`,
/// `per_flush` of them merged into each flush, and two more that take
/// writes while a flush runs. The most it holds unflushed is
/// [`Memtables::unflushed_bytes`], in memory and later on disk.
#[derive(Debug, Clone, Copy)]
pub struct Memtables {
    pub bytes: usize,
    pub per_flush: usize,
}

impl Memtables {
    pub const fn unflushed_bytes(&self) -> u64 {
        (self.bytes * (self.per_flush + 2)) as u64
    }
}

/// The production [`Engine`]: one RocksDB database in a folder.
#[derive(Debug)]
pub struct RocksEngine {
    db: Arc<DB>,
}

type DbSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot together with the database it borrows from.
    struct RocksSnapshot {
        owner: Arc<DB>,
        #[covariant]
        dependent: DbSnapshot,
    }
);

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

fn scan_with(
    mut it: DBRawIterator<'_>,
    start: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    it.seek(start);
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !visit(k, v) {
            return Ok(());
        }
        it.next();
    }
    it.status().map_err(map_err)
}

impl Snapshot for RocksSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.borrow_dependent().get(key).map_err(map_err)
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
        scan_with(
            self.borrow_dependent().raw_iterator_opt(bounded(end)),
            start,
            visit,
        )
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

impl RocksEngine {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path, memtables: Memtables) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        // Reads of a damaged file fail instead of returning garbage.
        opts.set_paranoid_checks(true);
        // A crash keeps a prefix of the writes (the Engine contract).
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        // File data is mostly already compressed (images, archives, video);
        // compressing blocks costs CPU on every read and saves little.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_write_buffer_size(memtables.bytes);
        opts.set_max_write_buffer_number(memtables.per_flush as i32 + 2);
        opts.set_min_write_buffer_number_to_merge(memtables.per_flush as i32);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(4096);
        opts.set_enable_blob_gc(true);
        opts.set_advise_random_on_open(false);
        let db = DB::open(&opts, dir).map_err(map_err)?;
        Ok(Self { db: Arc::new(db) })
    }
}

impl Engine for RocksEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(map_err)
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.ops() {
            match op {
                Op::Put(k, v) => wb.put(k, v),
                Op::Delete(k) => wb.delete(k),
                Op::DeleteRange(s, e) => {
                    if s < e {
                        wb.delete_range(s, e)
                    }
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(map_err)
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
        scan_with(self.db.raw_iterator_opt(bounded(end)), start, visit)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(map_err)
    }

    fn snapshot(&self) -> Arc<dyn Snapshot> {
        Arc::new(RocksSnapshot::new(self.db.clone(), |db| db.snapshot()))
    }
}
