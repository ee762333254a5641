//! Resync by hash comparison (`holdfast_core::resync`): a replica fetches
//! only the values that differ, refuses values that do not match their
//! announced hash, reports its progress, and finishes a restore that a
//! crash interrupted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use holdfast_core::fs::{FsMachine, FsOp, FsReply, FsView, Kind, ROOT_INO};
use holdfast_core::group::{bootstrap, RaftGroup, StateMachine};
use holdfast_core::resync::{self, ManifestEntry, Source};
use holdfast_storage::{Batch, Engine, MemEngine};
use raft::prelude::{ConfState, SnapshotMetadata};

const VOLUME: u64 = 7;

/// A volume replica on its own engine, changed by applying ops directly.
struct Replica {
    engine: Arc<MemEngine>,
    fs: FsMachine,
}

impl Replica {
    fn new() -> Self {
        let engine = Arc::new(MemEngine::new());
        engine
            .write(FsMachine::initial_batch(VOLUME, 0), true)
            .unwrap();
        let fs = FsMachine::load(engine.clone(), VOLUME).unwrap();
        Self { engine, fs }
    }

    fn op(&mut self, op: FsOp) -> FsReply {
        let mut b = Batch::new();
        let r = self.fs.apply_op(op, &mut b).expect("op applies");
        self.engine.write(b, true).unwrap();
        r
    }

    fn create(&mut self, name: &str) -> u64 {
        match self.op(FsOp::Mknod {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            target: Vec::new(),
            now_ns: 1,
        }) {
            FsReply::Attr(a) => a.ino,
            other => panic!("create gave {other:?}"),
        }
    }

    fn write(&mut self, ino: u64, offset: u64, data: Vec<u8>) {
        self.op(FsOp::Write {
            ino,
            offset,
            data,
            now_ns: 2,
        });
    }
}

/// Serves a replica's pinned snapshot, as a peer does over the transport;
/// `corrupt` flips a byte of every value it sends.
struct Peer {
    view: FsView,
    index: u64,
    corrupt: bool,
    left: Arc<AtomicU64>,
    left_seen: Vec<u64>,
}

impl Source for Peer {
    fn manifest(&mut self, after: &[u8]) -> Result<(Vec<ManifestEntry>, bool), String> {
        self.view.snapshot_manifest(self.index, after)
    }
    fn values(&mut self, keys: &[Vec<u8>]) -> Result<resync::KeyValues, String> {
        self.left_seen.push(self.left.load(Ordering::Relaxed));
        let mut v = self.view.snapshot_values(self.index, keys)?;
        if self.corrupt {
            for (_, value) in &mut v {
                if let Some(b) = value.first_mut() {
                    *b ^= 1;
                }
            }
        }
        Ok(v)
    }
}

/// Two replicas that share a 4 MiB file; the source then gets a second
/// file of `new_mib` MiB and a change to the first file's first block.
fn diverged(new_mib: usize) -> (Replica, Replica) {
    let (mut src, mut dst) = (Replica::new(), Replica::new());
    for r in [&mut src, &mut dst] {
        let ino = r.create("shared");
        for i in 0..4u8 {
            r.write(ino, u64::from(i) << 20, vec![i; 1 << 20]);
        }
    }
    let ino = src.create("new");
    for i in 0..new_mib as u64 {
        src.write(ino, i << 20, vec![i as u8 + 100; 1 << 20]);
    }
    src.write(2, 0, vec![9; 10]);
    (src, dst)
}

fn peer(src: &mut Replica, index: u64, corrupt: bool, left: Arc<AtomicU64>) -> Peer {
    src.fs.snapshot(index);
    Peer {
        view: src.fs.view(),
        index,
        corrupt,
        left,
        left_seen: Vec::new(),
    }
}

fn meta(index: u64) -> SnapshotMetadata {
    let mut m = SnapshotMetadata {
        index,
        term: 3,
        ..Default::default()
    };
    m.set_conf_state(ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    });
    m
}

#[test]
fn only_differing_values_are_fetched_and_the_result_equals_the_source() {
    let (mut src, mut dst) = diverged(3);
    let left = Arc::new(AtomicU64::new(0));
    let mut p = peer(&mut src, 50, false, left.clone());
    // The source moves on after the snapshot: the pull still gets the
    // snapshot's state.
    let want = src.fs.view().digest().unwrap();
    src.write(2, 0, vec![1; 100]);

    let stats = resync::pull(&*dst.engine, VOLUME, 50, 0, &mut p, &left).unwrap();
    // The new file (3 MiB), the changed block (64 KiB), two inodes, the
    // directory entry and the counters: about 3 MiB, not the 7 MiB volume.
    assert!(
        stats.fetched_bytes > 3 << 20 && stats.fetched_bytes < (3 << 20) + (256 << 10),
        "{stats:?}"
    );
    assert_eq!(stats.deleted_keys, 0, "{stats:?}");
    // Progress went down as values came in, and ends at 0.
    assert!(
        p.left_seen.first().copied().unwrap_or(0) >= 3 << 20,
        "{:?}",
        p.left_seen
    );
    assert!(
        p.left_seen.windows(2).all(|w| w[0] >= w[1]),
        "{:?}",
        p.left_seen
    );
    assert_eq!(left.load(Ordering::Relaxed), 0);
    // Nothing live changed yet.
    assert_ne!(dst.fs.view().digest().unwrap(), want);

    let mut batch = Batch::new();
    dst.fs.restore(&meta(50), &[], &mut batch).unwrap();
    dst.engine.write(batch, true).unwrap();
    assert_eq!(dst.fs.view().digest().unwrap(), want);
    assert_eq!(
        dst.fs.stats(),
        FsMachine::load(dst.engine.clone(), VOLUME).unwrap().stats()
    );
}

#[test]
fn keys_the_source_lacks_are_deleted() {
    let (mut src, mut dst) = (Replica::new(), Replica::new());
    let ino = dst.create("stale");
    dst.write(ino, 0, vec![5; 200_000]);
    let left = Arc::new(AtomicU64::new(0));
    let mut p = peer(&mut src, 9, false, left.clone());
    let stats = resync::pull(&*dst.engine, VOLUME, 9, 0, &mut p, &left).unwrap();
    assert!(stats.deleted_keys >= 4, "{stats:?}");
    let mut batch = Batch::new();
    dst.fs.restore(&meta(9), &[], &mut batch).unwrap();
    dst.engine.write(batch, true).unwrap();
    assert_eq!(
        dst.fs.view().digest().unwrap(),
        src.fs.view().digest().unwrap()
    );
}

#[test]
fn a_value_that_does_not_match_its_hash_is_refused() {
    let (mut src, mut dst) = diverged(1);
    let before = dst.fs.view().digest().unwrap();
    let left = Arc::new(AtomicU64::new(0));
    let mut p = peer(&mut src, 50, true, left.clone());
    let err = resync::pull(&*dst.engine, VOLUME, 50, 0, &mut p, &left).unwrap_err();
    assert!(err.contains("does not match"), "{err}");
    // Nothing is staged as complete, so nothing can be installed.
    let mut batch = Batch::new();
    assert!(dst.fs.restore(&meta(50), &[], &mut batch).is_err());
    assert_eq!(dst.fs.view().digest().unwrap(), before);
}

#[test]
fn a_snapshot_that_is_gone_fails_the_pull() {
    let (mut src, dst) = diverged(1);
    let left = Arc::new(AtomicU64::new(0));
    let mut p = peer(&mut src, 50, false, left.clone());
    src.fs.release_snapshot();
    let err = resync::pull(&*dst.engine, VOLUME, 50, 0, &mut p, &left).unwrap_err();
    assert!(err.contains("gone"), "{err}");
}

#[test]
fn a_crash_in_the_middle_of_a_restore_is_finished_at_the_next_open() {
    let (mut src, dst) = diverged(20);
    let want = src.fs.view().digest().unwrap();
    let engine: Arc<dyn Engine> = dst.engine.clone();
    bootstrap(engine.clone(), VOLUME, &[1, 2, 3], Batch::new()).unwrap();
    let left = Arc::new(AtomicU64::new(0));
    let mut p = peer(&mut src, 50, false, left.clone());
    resync::pull(&*engine, VOLUME, 50, 1, &mut p, &left).unwrap();

    // The restore writes its marker (synced), then moves the staged
    // changes in unsynced batches; the crash loses those batches.
    use protobuf::Message as _;
    resync::apply_staged(&*engine, VOLUME, 50, meta(50).write_to_bytes().unwrap()).unwrap();
    dst.engine.crash();
    assert_ne!(dst.fs.view().digest().unwrap(), want);

    let fs = FsMachine::load(engine.clone(), VOLUME).unwrap();
    let g = RaftGroup::open(2, VOLUME, engine.clone(), fs, 1).unwrap();
    assert_eq!(g.status().applied, 50);
    assert_eq!(g.state_machine().view().digest().unwrap(), want);
    assert_eq!(resync::interrupted(&*engine, VOLUME).unwrap(), None);
    // And it stays that way across another open.
    drop(g);
    let fs = FsMachine::load(engine.clone(), VOLUME).unwrap();
    let g = RaftGroup::open(2, VOLUME, engine, fs, 1).unwrap();
    assert_eq!(g.status().applied, 50);
    assert_eq!(g.state_machine().view().digest().unwrap(), want);
}
