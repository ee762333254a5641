use std::collections::BTreeMap;
use std::sync::Mutex;

use std::sync::Arc;

use crate::{Batch, Engine, Op, Result, Snapshot, StorageError};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
struct State {
    /// What readers see.
    visible: Map,
    /// The state as of the last flush (and of the logged, synced writes
    /// folded into it since, with no unlogged write before them).
    flushed: Map,
    /// Writes made since, in order, and whether each was logged.
    since_flush: Vec<(Batch, bool)>,
    /// How many of `since_flush` the last sync covers.
    synced: usize,
    full: bool,
    /// Seeded flushes of the engine's own: (generator state, chance in
    /// 1,000 after each write).
    auto_flush: Option<(u64, u32)>,
}

impl State {
    fn flush(&mut self) {
        for (b, _) in std::mem::take(&mut self.since_flush) {
            apply(&mut self.flushed, &b);
        }
        self.synced = 0;
    }

    /// Makes the logged writes so far durable, and folds those that no
    /// unlogged write precedes into `flushed` (which changes nothing a
    /// crash or flush would keep, and bounds the list).
    fn sync(&mut self) {
        self.synced = self.since_flush.len();
        let logged = self.since_flush.iter().take_while(|(_, l)| *l).count();
        for (b, _) in self.since_flush.drain(..logged) {
            apply(&mut self.flushed, &b);
        }
        self.synced -= logged;
    }

    /// Flushes now and then, as a real engine does when its memtables
    /// fill: a seeded xorshift draw after each write.
    fn maybe_flush(&mut self) {
        let Some((mut x, permille)) = self.auto_flush else {
            return;
        };
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.auto_flush = Some((x, permille));
        if x % 1000 < u64::from(permille) {
            self.flush();
        }
    }
}

/// An in-memory [`Engine`] for deterministic simulation. It models what a
/// crash does to a real engine: [`MemEngine::crash`] keeps the state of the
/// last flush and, after it, the logged writes up to the last sync; every
/// other write is gone. [`MemEngine::with_auto_flush`] makes it flush on
/// its own at seeded moments, as RocksDB does when a memtable fills.
/// [`MemEngine::set_full`] makes writes fail as a full disk would.
#[derive(Debug, Default)]
pub struct MemEngine {
    state: Mutex<State>,
}

fn apply(map: &mut Map, batch: &Batch) {
    for op in batch.ops() {
        match op {
            Op::Put(k, v) => {
                map.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                map.remove(k);
            }
            Op::DeleteRange(start, end) => {
                if start < end {
                    let doomed: Vec<Vec<u8>> = map
                        .range(start.clone()..end.clone())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
    }
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// An engine that flushes on its own after a write with a chance of
    /// `permille` in 1,000, drawn from `seed`.
    pub fn with_auto_flush(seed: u64, permille: u32) -> Self {
        let e = Self::default();
        // xorshift must not start at zero.
        e.lock().auto_flush = Some((seed | 1, permille));
        e
    }

    /// Simulates a power loss: what survives is the state of the last
    /// flush and the logged writes after it up to the last sync.
    pub fn crash(&self) {
        let mut s = self.lock();
        let synced = s.synced;
        let mut durable = s.flushed.clone();
        for (b, logged) in &s.since_flush[..synced] {
            if *logged {
                apply(&mut durable, b);
            }
        }
        s.since_flush.clear();
        s.synced = 0;
        s.flushed = durable.clone();
        s.visible = durable;
    }

    /// While `full` is set, every write fails with [`StorageError::NoSpace`].
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic happened while the map was being
        // changed; the maps are always left whole, so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Engine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().visible.get(key).cloned())
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut s = self.lock();
        if s.full {
            return Err(StorageError::NoSpace("simulated full disk".into()));
        }
        apply(&mut s.visible, &batch);
        s.since_flush.push((batch, true));
        if sync {
            s.sync();
        }
        s.maybe_flush();
        Ok(())
    }

    fn write_unlogged(&self, batch: Batch) -> Result<()> {
        let mut s = self.lock();
        if s.full {
            return Err(StorageError::NoSpace("simulated full disk".into()));
        }
        apply(&mut s.visible, &batch);
        s.since_flush.push((batch, false));
        s.maybe_flush();
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut s = self.lock();
        if s.full {
            return Err(StorageError::NoSpace("simulated full disk".into()));
        }
        s.flush();
        Ok(())
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
        let s = self.lock();
        for (k, v) in s.visible.range(start.to_vec()..end.to_vec()) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.lock().sync();
        Ok(())
    }

    fn snapshot(&self) -> Arc<dyn Snapshot> {
        Arc::new(MemSnapshot(self.lock().visible.clone()))
    }
}

/// A copy of a [`MemEngine`]'s visible state.
#[derive(Debug)]
struct MemSnapshot(Map);

impl Snapshot for MemSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
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
        for (k, v) in self.0.range(start.to_vec()..end.to_vec()) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}
