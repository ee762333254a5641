//! A [`MemEngine`] that counts what passes through it, for the tests that
//! check how the state machines use storage (`fs_state.rs`,
//! `log_compaction.rs`). Each includes it with `mod watched;`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use holdfast_storage::{Batch, Engine, MemEngine, Op, Snapshot};

#[derive(Debug, Default)]
pub struct Watched {
    inner: MemEngine,
    /// Reads of keys under this prefix (gets, and keys a scan passes) are
    /// counted.
    watch: Vec<u8>,
    reads: AtomicUsize,
    range_deletes: AtomicUsize,
}

// Each test file uses part of it.
#[allow(dead_code)]
impl Watched {
    pub fn new(watch: Vec<u8>) -> Self {
        Watched {
            watch,
            ..Default::default()
        }
    }
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }
    pub fn range_deletes(&self) -> usize {
        self.range_deletes.load(Ordering::Relaxed)
    }
    fn count_range_deletes(&self, batch: &Batch) {
        let n = batch
            .ops()
            .iter()
            .filter(|op| matches!(op, Op::DeleteRange(..)))
            .count();
        self.range_deletes.fetch_add(n, Ordering::Relaxed);
    }
    fn count(&self, key: &[u8]) {
        if !self.watch.is_empty() && key.starts_with(&self.watch) {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Engine for Watched {
    fn get(&self, key: &[u8]) -> holdfast_storage::Result<Option<Vec<u8>>> {
        self.count(key);
        self.inner.get(key)
    }
    fn write(&self, batch: Batch, sync: bool) -> holdfast_storage::Result<()> {
        self.count_range_deletes(&batch);
        self.inner.write(batch, sync)
    }
    fn write_unlogged(&self, batch: Batch) -> holdfast_storage::Result<()> {
        self.count_range_deletes(&batch);
        self.inner.write_unlogged(batch)
    }
    fn flush(&self) -> holdfast_storage::Result<()> {
        self.inner.flush()
    }
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> holdfast_storage::Result<()> {
        self.inner.scan(start, end, &mut |k, v| {
            self.count(k);
            visit(k, v)
        })
    }
    fn sync(&self) -> holdfast_storage::Result<()> {
        self.inner.sync()
    }
    fn snapshot(&self) -> Arc<dyn Snapshot> {
        self.inner.snapshot()
    }
}
