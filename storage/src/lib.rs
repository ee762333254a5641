//! Ordered key-value storage for holdfast: the [`Engine`] trait, the RocksDB
//! engine used in production ([`RocksEngine`]), an in-memory engine used by
//! deterministic simulation ([`MemEngine`]), and one conformance suite
//! ([`conformance`]) that both must pass.
//!
//! This crate knows nothing about Raft, clusters or files: it stores bytes
//! under byte keys, atomically per [`Batch`], and says which writes are
//! durable. Callers own their key layout.

mod mem;
mod rocks;

use std::sync::Arc;

pub mod conformance;
pub mod crc;

pub use mem::MemEngine;
pub use rocks::{Family, Memtables, RocksEngine, Split};

/// Why a storage operation failed. Storage errors are always *local*: no
/// peer or client caused them.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The device is full. Retrying after space is freed can succeed.
    #[error("storage full: {0}")]
    NoSpace(String),
    /// Data read back failed a check. The node must stop using this store.
    #[error("storage corruption: {0}")]
    Corruption(String),
    /// Any other I/O failure of the engine.
    #[error("storage I/O error: {0}")]
    Io(String),
}

impl StorageError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::NoSpace(_))
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// One operation inside a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Deletes every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// A set of writes applied atomically: after a crash either all of them are
/// visible or none is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
    pub fn delete_range(
        &mut self,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.ops.push(Op::DeleteRange(start.into(), end.into()));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Drops every op after the first `len` (undoes a failed step).
    pub fn truncate(&mut self, len: usize) {
        self.ops.truncate(len);
    }
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// What this batch does to `key`, latest op first: `Some(Some(v))` if
    /// it puts `v`, `Some(None)` if it deletes the key, `None` if it leaves
    /// the key alone. Lets a state machine read its own pending writes.
    pub fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops.iter().rev().find_map(|op| match op {
            Op::Put(k, v) if k == key => Some(Some(v.as_slice())),
            Op::Delete(k) if k == key => Some(None),
            Op::DeleteRange(s, e) if s.as_slice() <= key && key < e.as_slice() => Some(None),
            _ => None,
        })
    }

    /// Reads `key` as it will be once this batch is written over `engine`.
    pub fn read_through(&self, engine: &dyn Engine, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.lookup(key) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None => engine.get(key),
        }
    }
}

/// An ordered, durable key-value store.
///
/// Contract (checked by [`conformance`]):
/// - writes in one [`Batch`] are atomic;
/// - a write made with `sync = true` is durable when `write` returns, and so
///   is every *logged* write ([`Engine::write`]) made before it;
/// - a write made with `sync = false` is visible at once but may be lost by a
///   crash until a later synced write or [`Engine::sync`];
/// - an *unlogged* write ([`Engine::write_unlogged`]) is visible at once
///   and survives a crash only once a flush has followed it;
/// - a flush persists every write made before it, logged or not, at once.
///   The engine flushes on its own whenever it likes (RocksDB: when its
///   memtables fill); [`Engine::flush`] forces one;
/// - a crash keeps writes in order, apart from unlogged ones: what
///   survives it is every write up to some flush (at least the last one
///   [`Engine::flush`] returned from), and after that point the logged
///   writes up to some point (at least the last synced one);
/// - [`Engine::scan`] visits keys in ascending byte order.
pub trait Engine: Send + Sync + std::fmt::Debug + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn write(&self, batch: Batch, sync: bool) -> Result<()>;
    /// Writes `batch` without the write-ahead log: it costs no log write,
    /// and it is lost by a crash unless a flush follows it (see the
    /// contract). For state that can be rebuilt from a log kept elsewhere.
    fn write_unlogged(&self, batch: Batch) -> Result<()>;
    /// Persists every earlier write, logged or not, before it returns.
    fn flush(&self) -> Result<()>;
    /// Calls `visit` for each key in `[start, end)` in order, until it
    /// returns `false`.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
    /// Makes every earlier write durable.
    fn sync(&self) -> Result<()>;
    /// A consistent read-only view of the engine as it is now; later
    /// writes do not show in it. Holding it keeps the old values alive (on
    /// disk for RocksDB), so hold it only while it is being read.
    fn snapshot(&self) -> Arc<dyn Snapshot>;
}

/// A point-in-time view of an [`Engine`] ([`Engine::snapshot`]).
pub trait Snapshot: Send + Sync + std::fmt::Debug + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// As [`Engine::scan`], over the state when the snapshot was taken.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
}

impl<E: Engine + ?Sized> Engine for Arc<E> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        (**self).get(key)
    }
    fn write(&self, batch: Batch, sync: bool) -> Result<()> {
        (**self).write(batch, sync)
    }
    fn write_unlogged(&self, batch: Batch) -> Result<()> {
        (**self).write_unlogged(batch)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        (**self).scan(start, end, visit)
    }
    fn sync(&self) -> Result<()> {
        (**self).sync()
    }
    fn snapshot(&self) -> Arc<dyn Snapshot> {
        (**self).snapshot()
    }
}

/// The smallest key strictly greater than every key starting with `prefix`,
/// for use as an exclusive scan end. `None` when no such key exists.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
