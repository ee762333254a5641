use std::collections::BTreeMap;
use std::sync::Mutex;

use std::sync::Arc;

use crate::{Batch, Engine, Op, Result, Snapshot, StorageError};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
struct State {
    /// What readers see.
    visible: Map,
    /// What survives a crash: the state as of the last synced write.
    durable: Map,
    /// Writes made since the last sync, in order.
    unsynced: Vec<Batch>,
    full: bool,
}

/// An in-memory [`Engine`] for deterministic simulation. It models what a
/// crash does to a real engine: [`MemEngine::crash`] drops every write that
/// was not synced. [`MemEngine::set_full`] makes writes fail as a full disk
/// would.
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

    /// Simulates a power loss: everything not yet synced is gone.
    pub fn crash(&self) {
        let mut s = self.lock();
        s.unsynced.clear();
        s.visible = s.durable.clone();
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
        s.unsynced.push(batch);
        if sync {
            let pending = std::mem::take(&mut s.unsynced);
            for b in &pending {
                apply(&mut s.durable, b);
            }
        }
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
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.unsynced);
        for b in &pending {
            apply(&mut s.durable, b);
        }
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
