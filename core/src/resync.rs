//! Catch-up of a volume replica that is too far behind for the log: it
//! compares its state with a point-in-time snapshot of another replica by
//! blake3 hash, key by key, and fetches only the values that differ.
//!
//! The serving side is [`crate::fs::FsView::snapshot_manifest`] and
//! [`crate::fs::FsView::snapshot_values`], answered from the engine
//! snapshot the state machine pinned when Raft asked it for a snapshot
//! (so every page comes from the same applied index). The receiving side is
//! [`pull`]: it stages what it fetched under `s/<volume>/`, apart from the
//! live state, which stays exactly the state of the replica's applied index
//! until Raft installs the snapshot ([`crate::fs::FsMachine`]'s `restore`
//! then moves the staged changes into the live state).
//!
//! Staging keys, under `s/<volume>/`:
//! ```text
//! h          header: snapshot index, the applied index compared against, complete
//! !          marker: the snapshot metadata of a restore in progress
//! w<key>     wanted: blake3 and length of a value still to fetch
//! k<key>     staged change: 1 + value (put) or 0 (delete)
//! ```
//! Invariant: a staged value is stored only after its blake3 matched the
//! manifest; a peer cannot plant bytes it did not announce.
//! Invariant: the staged changes are relative to the live state at the
//! header's applied index; they are applied only when the group is still
//! there.

use std::sync::atomic::{AtomicU64, Ordering};

use holdfast_storage::{prefix_end, Batch, Engine};
use serde::{Deserialize, Serialize};

use crate::limits;
use crate::wire;

/// One key of a snapshot manifest, relative to the volume's prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub hash: [u8; 32],
    pub len: u64,
}

/// The staging header.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// The snapshot index being pulled.
    pub index: u64,
    /// The replica's applied index the changes were computed against.
    pub base_applied: u64,
    /// Every change is staged.
    pub complete: bool,
}

/// Keys with their values.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// Where a pull gets the snapshot from (the cluster transport in a node, a
/// function call in the simulation). Errors are strings for the log: a
/// failed pull is simply started again later.
pub trait Source {
    /// Manifest entries after key `after` (exclusive) in key order, and
    /// whether the manifest ends with them.
    fn manifest(&mut self, after: &[u8]) -> Result<(Vec<ManifestEntry>, bool), String>;
    /// The values of `keys`, in the same order.
    fn values(&mut self, keys: &[Vec<u8>]) -> Result<KeyValues, String>;
}

/// What a pull did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Keys in the snapshot.
    pub manifest_keys: u64,
    /// Keys whose value was fetched, and their bytes.
    pub fetched_keys: u64,
    pub fetched_bytes: u64,
    /// Local keys the snapshot does not have.
    pub deleted_keys: u64,
}

/// The staging prefix of `volume`.
pub fn staging_prefix(volume: u64) -> Vec<u8> {
    let mut p = b"s/".to_vec();
    p.extend_from_slice(&volume.to_be_bytes());
    p.push(b'/');
    p
}

fn live_prefix(volume: u64) -> Vec<u8> {
    let mut p = b"v/".to_vec();
    p.extend_from_slice(&volume.to_be_bytes());
    p.push(b'/');
    p
}

fn tagged(prefix: &[u8], tag: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 1 + key.len());
    k.extend_from_slice(prefix);
    k.push(tag);
    k.extend_from_slice(key);
    k
}

/// The staging header of `volume`, if a pull was started.
pub fn header(engine: &dyn Engine, volume: u64) -> Result<Option<Header>, String> {
    match engine
        .get(&tagged(&staging_prefix(volume), b'h', &[]))
        .map_err(|e| e.to_string())?
    {
        Some(b) => wire::decode(&b, 64)
            .map(Some)
            .map_err(|e| format!("staging header: {e}")),
        None => Ok(None),
    }
}

fn engine_err(e: impl std::fmt::Display) -> String {
    format!("local storage: {e}")
}

/// Pulls the snapshot at `index` from `source` into the staging area of
/// `volume`, comparing against the live state at `base_applied` (which must
/// not change meanwhile). `bytes_left` shows the bytes still to fetch. On
/// success the staging header says `complete`; on error the staging area
/// is left for the next pull to clear.
pub fn pull(
    engine: &dyn Engine,
    volume: u64,
    index: u64,
    base_applied: u64,
    source: &mut dyn Source,
    bytes_left: &AtomicU64,
) -> Result<PullStats, String> {
    let stage = staging_prefix(volume);
    let live = live_prefix(volume);
    let mut stats = PullStats::default();
    let mut b = Batch::new();
    b.delete_range(stage.clone(), prefix_end(&stage).unwrap_or_default());
    let mut head = Header {
        index,
        base_applied,
        complete: false,
    };
    b.put(tagged(&stage, b'h', &[]), wire::encode(&head));
    engine.write(b, false).map_err(engine_err)?;

    // 1. Compare the manifest with the live state, page by page: stage a
    //    delete for every local key the snapshot lacks, and note every key
    //    whose value differs as wanted.
    let live_end = prefix_end(&live).unwrap_or_default();
    let mut after: Vec<u8> = Vec::new();
    let mut wanted_bytes = 0u64;
    loop {
        let (page, done) = source.manifest(&after)?;
        if page.len() > limits::RESYNC_PAGE_KEYS_MAX {
            return Err(format!("manifest page of {} keys", page.len()));
        }
        if page.is_empty() && !done {
            return Err("empty manifest page before the end".into());
        }
        // The page covers the keys just past the previous page's last key
        // (the whole start of the volume for the first page) up to its own
        // last key, or to the end of the volume on the last page.
        let lo = just_past(&live, &after);
        for e in &page {
            if e.key.is_empty() || (!after.is_empty() && e.key <= after) {
                return Err("manifest keys out of order".into());
            }
            after = e.key.clone();
        }
        stats.manifest_keys += page.len() as u64;
        let hi = if done {
            live_end.clone()
        } else {
            just_past(&live, &after)
        };
        let mut local: Vec<(Vec<u8>, [u8; 32])> = Vec::new();
        engine
            .scan(&lo, &hi, &mut |k, v| {
                local.push((k[live.len()..].to_vec(), *blake3::hash(v).as_bytes()));
                true
            })
            .map_err(engine_err)?;
        let mut b = Batch::new();
        let mut li = local.iter().peekable();
        for e in &page {
            while let Some((k, _)) = li.peek() {
                if k.as_slice() < e.key.as_slice() {
                    b.put(tagged(&stage, b'k', k), vec![0]);
                    stats.deleted_keys += 1;
                    li.next();
                } else {
                    break;
                }
            }
            let same = match li.peek() {
                Some((k, h)) if *k == e.key => {
                    let same = *h == e.hash;
                    li.next();
                    same
                }
                _ => false,
            };
            if !same {
                let mut w = e.hash.to_vec();
                w.extend_from_slice(&e.len.to_be_bytes());
                b.put(tagged(&stage, b'w', &e.key), w);
                wanted_bytes += e.len;
            }
        }
        for (k, _) in li {
            b.put(tagged(&stage, b'k', k), vec![0]);
            stats.deleted_keys += 1;
        }
        engine.write(b, false).map_err(engine_err)?;
        bytes_left.store(wanted_bytes, Ordering::Relaxed);
        if done {
            break;
        }
    }

    // 2. Fetch the wanted values, a bounded batch at a time, and stage
    //    each one whose hash matches what the manifest announced.
    let w_start = tagged(&stage, b'w', &[]);
    let w_end = tagged(&stage, b'w' + 1, &[]);
    loop {
        let mut want: Vec<(Vec<u8>, [u8; 32])> = Vec::new();
        let mut bytes = 0u64;
        engine
            .scan(&w_start, &w_end, &mut |k, v| {
                let mut hash = [0u8; 32];
                if v.len() == 40 {
                    hash.copy_from_slice(&v[..32]);
                    bytes += u64::from_be_bytes(v[32..].try_into().unwrap_or_default());
                }
                want.push((k[w_start.len()..].to_vec(), hash));
                want.len() < limits::RESYNC_PAGE_KEYS_MAX
                    && bytes < limits::RESYNC_FETCH_BYTES_MAX as u64
            })
            .map_err(engine_err)?;
        if want.is_empty() {
            break;
        }
        let keys: Vec<Vec<u8>> = want.iter().map(|(k, _)| k.clone()).collect();
        let got = source.values(&keys)?;
        if got.len() != want.len() {
            return Err(format!(
                "asked for {} values, got {}",
                want.len(),
                got.len()
            ));
        }
        let mut b = Batch::new();
        for ((k, hash), (gk, gv)) in want.iter().zip(got) {
            if *k != gk {
                return Err("values out of order".into());
            }
            if blake3::hash(&gv).as_bytes() != hash {
                return Err("a value does not match its manifest hash".into());
            }
            stats.fetched_keys += 1;
            stats.fetched_bytes += gv.len() as u64;
            wanted_bytes = wanted_bytes.saturating_sub(gv.len() as u64);
            let mut staged = Vec::with_capacity(1 + gv.len());
            staged.push(1);
            staged.extend_from_slice(&gv);
            b.put(tagged(&stage, b'k', k), staged);
            b.delete(tagged(&stage, b'w', k));
        }
        engine.write(b, false).map_err(engine_err)?;
        bytes_left.store(wanted_bytes, Ordering::Relaxed);
    }

    head.complete = true;
    let mut b = Batch::new();
    b.put(tagged(&stage, b'h', &[]), wire::encode(&head));
    engine.write(b, true).map_err(engine_err)?;
    bytes_left.store(0, Ordering::Relaxed);
    Ok(stats)
}

/// The smallest live key after relative key `after` (the volume's first key
/// when `after` is empty).
fn just_past(live: &[u8], after: &[u8]) -> Vec<u8> {
    let mut k = live.to_vec();
    if !after.is_empty() {
        k.extend_from_slice(after);
        k.push(0);
    }
    k
}

/// Moves the complete staged changes of `volume` into its live state, a
/// bounded batch at a time. `marker` (the snapshot metadata) is written,
/// synced, before the live state changes, so that a crash in the middle is
/// finished at the next start ([`interrupted`]). Each batch deletes what it
/// applied from the staging area, so running this again resumes.
/// The caller then clears the staging area ([`clear_staging`]) in the batch
/// that installs the snapshot in the group.
pub fn apply_staged(
    engine: &dyn Engine,
    volume: u64,
    index: u64,
    marker: Vec<u8>,
) -> Result<(), String> {
    let stage = staging_prefix(volume);
    let live = live_prefix(volume);
    match header(engine, volume)? {
        Some(h) if h.complete && h.index == index => {}
        other => {
            return Err(format!(
                "the snapshot at {index} is not staged (staging: {other:?})"
            ))
        }
    }
    let mut b = Batch::new();
    b.put(tagged(&stage, b'!', &[]), marker);
    engine.write(b, true).map_err(engine_err)?;
    let k_start = tagged(&stage, b'k', &[]);
    let k_end = tagged(&stage, b'k' + 1, &[]);
    loop {
        let mut b = Batch::new();
        let mut bytes = 0usize;
        engine
            .scan(&k_start, &k_end, &mut |k, v| {
                let mut key = live.clone();
                key.extend_from_slice(&k[k_start.len()..]);
                match v.split_first() {
                    Some((1, value)) => {
                        b.put(key, value.to_vec());
                    }
                    _ => {
                        b.delete(key);
                    }
                }
                b.delete(k.to_vec());
                bytes += k.len() + v.len();
                bytes < limits::RESYNC_APPLY_BATCH_BYTES
            })
            .map_err(engine_err)?;
        if b.is_empty() {
            break;
        }
        engine.write(b, false).map_err(engine_err)?;
    }
    Ok(())
}

/// Adds to `batch` the deletion of `volume`'s whole staging area.
pub fn clear_staging(volume: u64, batch: &mut Batch) {
    let stage = staging_prefix(volume);
    let end = prefix_end(&stage).unwrap_or_default();
    batch.delete_range(stage, end);
}

/// The marker of a restore that a crash interrupted, if any.
pub fn interrupted(engine: &dyn Engine, volume: u64) -> Result<Option<Vec<u8>>, String> {
    engine
        .get(&tagged(&staging_prefix(volume), b'!', &[]))
        .map_err(engine_err)
}
