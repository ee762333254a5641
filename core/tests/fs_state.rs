//! The file-volume state machine on its own: targeted cases, each one line
//! through a small harness. (The mount-level model test is in
//! tests/tests/volumes.rs.)

use std::sync::Arc;

use holdfast_core::fs::{FsMachine, FsOp, FsReply, Kind, OpTag, ROOT_INO};
use holdfast_core::limits;
use holdfast_storage::{Batch, Engine, MemEngine};

mod watched;
use watched::Watched;

struct Vol {
    engine: Arc<dyn Engine>,
    m: FsMachine,
}

impl Vol {
    fn new() -> Vol {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        engine.write(FsMachine::initial_batch(7, 0), true).unwrap();
        let m = FsMachine::load(engine.clone(), 7).unwrap();
        Vol { engine, m }
    }

    /// Applies `ops` in one batch (as one consensus round does), writes it,
    /// and returns each result.
    fn round(&mut self, ops: Vec<FsOp>) -> Vec<Result<FsReply, i32>> {
        let mut batch = Batch::new();
        let out = ops
            .into_iter()
            .map(|op| self.m.apply_op(op, &mut batch))
            .collect();
        self.engine.write(batch, true).unwrap();
        out
    }

    /// Applies tagged ops in one batch, as [`Vol::round`] does.
    fn tagged(&mut self, ops: Vec<(OpTag, FsOp)>) -> Vec<Result<FsReply, i32>> {
        let mut batch = Batch::new();
        let out = ops
            .into_iter()
            .map(|(tag, op)| self.m.apply_tagged(tag, op, &mut batch))
            .collect();
        self.engine.write(batch, true).unwrap();
        out
    }

    fn one(&mut self, op: FsOp) -> Result<FsReply, i32> {
        self.round(vec![op]).remove(0)
    }

    fn ino(&mut self, parent: u64, name: &str, kind: Kind) -> u64 {
        match self.one(mknod(parent, name, kind)) {
            Ok(FsReply::Attr(a)) => a.ino,
            other => panic!("mknod {name}: {other:?}"),
        }
    }
}

fn mknod(parent: u64, name: &str, kind: Kind) -> FsOp {
    FsOp::Mknod {
        parent,
        name: name.into(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        target: Vec::new(),
        now_ns: 1,
    }
}

fn write(ino: u64, offset: u64, data: &[u8]) -> FsOp {
    FsOp::Write {
        ino,
        offset,
        data: data.to_vec(),
        now_ns: 2,
    }
}

fn truncate(ino: u64, size: u64) -> FsOp {
    FsOp::SetAttr {
        ino,
        mode: None,
        uid: None,
        gid: None,
        size: Some(size),
        atime: None,
        mtime: None,
        now_ns: 3,
    }
}

fn unlink(parent: u64, name: &str, dir: bool, open_on: Option<u64>) -> FsOp {
    FsOp::Unlink {
        parent,
        name: name.into(),
        dir,
        open_on,
        now_ns: 4,
    }
}

/// Keys the volume keeps under `tag` (`b` file blocks, `x` attributes).
fn keys_under(v: &Vol, tag: u8) -> usize {
    let mut prefix = FsMachine::prefix_of(7);
    prefix.push(tag);
    let mut end = prefix.clone();
    *end.last_mut().unwrap() += 1;
    let mut n = 0;
    v.engine
        .scan(&prefix, &end, &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

/// Unlink and truncate delete a file's few keys one by one (a range
/// deletion slows every RocksDB read until the next memtable flush), and a
/// large file's in one range; either way nothing is left behind.
#[test]
fn deleted_file_data_leaves_no_keys_and_small_files_no_range_deletions() {
    let mut v = Vol::new();
    let blocks = limits::FS_POINT_DELETES_MAX as u64 + 10;
    for (name, n) in [("small", 3), ("large", blocks)] {
        let f = v.ino(ROOT_INO, name, Kind::File);
        let writes = (0..n)
            .map(|i| write(f, i * limits::FS_BLOCK_BYTES, b"x"))
            .chain([FsOp::SetXattr {
                ino: f,
                name: b"user.a".to_vec(),
                value: b"1".to_vec(),
                flags: 0,
                now_ns: 5,
            }])
            .collect();
        assert!(v.round(writes).iter().all(Result::is_ok));
        assert_eq!(keys_under(&v, b'b') as u64, n, "{name}: blocks stored");
        // Truncate to one block, then unlink.
        let mut batch = Batch::new();
        v.m.apply_op(truncate(f, 1), &mut batch).unwrap();
        v.m.apply_op(unlink(ROOT_INO, name, false, None), &mut batch)
            .unwrap();
        let ranges = batch
            .ops()
            .iter()
            .filter(|op| matches!(op, holdfast_storage::Op::DeleteRange(..)))
            .count();
        if n < limits::FS_POINT_DELETES_MAX as u64 {
            assert_eq!(ranges, 0, "{name}: range deletions");
        } else {
            assert!(ranges > 0, "{name}: no range deletion");
        }
        v.engine.write(batch, true).unwrap();
        assert_eq!(keys_under(&v, b'b'), 0, "{name}: blocks left");
        assert_eq!(keys_under(&v, b'x'), 0, "{name}: attributes left");
        assert_eq!(v.m.stats().bytes_used, 0, "{name}: bytes used");
    }
}

#[test]
fn bytes_used_follows_writes_and_truncates_even_within_one_round() {
    let mut v = Vol::new();
    let f = v.ino(ROOT_INO, "f", Kind::File);
    let r = v.round(vec![write(f, 0, &[1; 200_000]), truncate(f, 0)]);
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(
        v.m.stats().bytes_used,
        0,
        "a truncate in the same round as the write frees its bytes"
    );
    v.one(write(f, 0, &[1; 100])).unwrap();
    v.one(truncate(f, 10)).unwrap();
    assert_eq!(v.m.stats().bytes_used, 10);
    // Whole blocks written over count once.
    let whole = vec![2; 4 * limits::FS_BLOCK_BYTES as usize];
    v.one(write(f, 0, &whole)).unwrap();
    v.one(write(f, 0, &whole)).unwrap();
    assert_eq!(v.m.stats().bytes_used, whole.len() as u64, "an overwrite");
    // Holes count: the used bytes are the files' sizes.
    v.one(truncate(f, 1 << 30)).unwrap();
    v.one(write(f, 1 << 31, b"x")).unwrap();
    assert_eq!(v.m.stats().bytes_used, (1 << 31) + 1, "a sparse file");
    assert_eq!(
        v.m.view().stats().unwrap(),
        v.m.stats(),
        "the counters are stored as they are kept"
    );
}

/// RocksDB reads a blob's data as its iterator passes the key, so a file's
/// blocks must not be read to delete them: unlinking a gigabyte would read
/// a gigabyte on every replica, in the consensus thread. Only a truncate's
/// partial last block is read (to cut it).
#[test]
fn unlink_and_truncate_read_no_file_data() {
    let engine = Arc::new(Watched::new([&FsMachine::prefix_of(7)[..], b"b"].concat()));
    engine.write(FsMachine::initial_batch(7, 0), true).unwrap();
    let dyn_engine: Arc<dyn Engine> = engine.clone();
    let m = FsMachine::load(dyn_engine.clone(), 7).unwrap();
    let mut v = Vol {
        engine: dyn_engine,
        m,
    };
    let bs = limits::FS_BLOCK_BYTES;
    let f = v.ino(ROOT_INO, "f", Kind::File);
    let blocks = 2 * limits::FS_POINT_DELETES_MAX as u64;
    let whole = vec![3; (blocks * bs) as usize];
    for (off, chunk) in whole.chunks(limits::FS_WRITE_BYTES_MAX).enumerate() {
        let off = (off * limits::FS_WRITE_BYTES_MAX) as u64;
        v.one(write(f, off, chunk)).unwrap();
    }
    let reads = || engine.reads();
    let before = reads();
    v.one(truncate(f, 10 * bs)).unwrap();
    v.one(truncate(f, 5 * bs + 1)).unwrap();
    assert_eq!(
        reads() - before,
        1,
        "a truncate reads its partial block only"
    );
    assert_eq!(keys_under(&v, b'b'), 6, "blocks left after the truncates");
    let before = reads();
    v.one(unlink(ROOT_INO, "f", false, None)).unwrap();
    assert_eq!(reads(), before, "an unlink reads no block");
    assert_eq!(keys_under(&v, b'b'), 0, "blocks left after the unlink");
    assert_eq!(v.m.stats().bytes_used, 0);
}

#[test]
fn truncated_bytes_never_come_back() {
    let mut v = Vol::new();
    let f = v.ino(ROOT_INO, "f", Kind::File);
    v.one(write(f, 0, &[9; 70_000])).unwrap();
    v.one(truncate(f, 10)).unwrap();
    v.one(truncate(f, 70_000)).unwrap();
    let data = v.m.view().read(f, 0, 70_000).unwrap();
    assert_eq!(&data[..10], &[9; 10]);
    assert!(
        data[10..].iter().all(|b| *b == 0),
        "extending after a truncate reads zeros"
    );
    v.one(write(f, 1 << 40, b"x")).unwrap();
    assert_eq!(
        v.m.view().read(f, (1 << 40) - 2, 10).unwrap(),
        vec![0, 0, b'x'],
        "a 1 TiB sparse file"
    );
}

#[test]
fn rmdir_sees_the_pending_round() {
    let mut v = Vol::new();
    let d = v.ino(ROOT_INO, "d", Kind::Dir);
    for i in 0..70 {
        v.ino(d, &format!("f{i}"), Kind::File);
    }
    assert_eq!(
        v.one(unlink(ROOT_INO, "d", true, None)),
        Err(libc::ENOTEMPTY)
    );
    let mut ops: Vec<FsOp> = (0..70)
        .map(|i| unlink(d, &format!("f{i}"), false, None))
        .collect();
    ops.push(unlink(ROOT_INO, "d", true, None));
    let r = v.round(ops);
    assert!(r.iter().all(Result::is_ok), "{:?}", r.last());
    // A directory filled in the same round is not empty.
    let e = v.ino(ROOT_INO, "e", Kind::Dir);
    let r = v.round(vec![
        mknod(e, "x", Kind::File),
        unlink(ROOT_INO, "e", true, None),
    ]);
    assert_eq!(r[1], Err(libc::ENOTEMPTY));
}

#[test]
fn unlinked_open_files_live_until_reaped() {
    let mut v = Vol::new();
    let f = v.ino(ROOT_INO, "f", Kind::File);
    v.one(write(f, 0, b"still here")).unwrap();
    v.one(unlink(ROOT_INO, "f", false, Some(5))).unwrap();
    assert_eq!(v.m.view().lookup(ROOT_INO, b"f"), Err(libc::ENOENT));
    assert_eq!(v.m.view().read(f, 0, 100).unwrap(), b"still here");
    v.one(FsOp::ReapNode { node: 5 }).unwrap();
    assert_eq!(v.m.view().getattr(f).map(|_| ()), Err(libc::ENOENT));
    assert_eq!(v.m.stats().bytes_used, 0);
}

#[test]
fn bad_requests_fail_alone_and_leave_no_trace() {
    let mut v = Vol::new();
    let d = v.ino(ROOT_INO, "d", Kind::Dir);
    let sub = v.ino(d, "sub", Kind::Dir);
    let rename_into_itself = FsOp::Rename {
        parent: ROOT_INO,
        name: b"d".to_vec(),
        new_parent: sub,
        new_name: b"x".to_vec(),
        flags: 0,
        open_on: None,
        now_ns: 5,
    };
    let before = v.m.view().manifest().unwrap();
    let r = v.round(vec![
        rename_into_itself,
        mknod(ROOT_INO, &"n".repeat(256), Kind::File),
        mknod(99, "x", Kind::File),
        write(d, 0, b"x"),
    ]);
    assert_eq!(
        r.iter().map(|r| r.clone().err()).collect::<Vec<_>>(),
        vec![
            Some(libc::EINVAL),
            Some(libc::ENAMETOOLONG),
            Some(libc::ENOENT),
            Some(libc::EISDIR)
        ]
    );
    // Only the counters' key was rewritten, with the same value.
    assert_eq!(v.m.view().manifest().unwrap(), before);
}

fn tag(node: u64, seq: u64, low_water: u64) -> OpTag {
    OpTag {
        node,
        seq,
        low_water,
    }
}

/// Keys the volume keeps for tagged ops' results.
fn result_keys(v: &Vol) -> usize {
    let mut prefix = FsMachine::prefix_of(7);
    prefix.push(b'c');
    let mut end = prefix.clone();
    *end.last_mut().unwrap() += 1;
    let mut n = 0;
    v.engine
        .scan(&prefix, &end, &mut |k, _| {
            // The low-water marks are 8 bytes after the tag, results 16.
            n += usize::from(k.len() == prefix.len() + 16);
            true
        })
        .unwrap();
    n
}

#[test]
fn a_repeated_op_gets_the_first_result_and_is_not_applied_again() {
    let mut v = Vol::new();
    let f = v.ino(ROOT_INO, "f", Kind::File);
    // A create repeated in the same round and in a later one: the repeats
    // get the first answer (not EEXIST), and only one file exists.
    let create = mknod(ROOT_INO, "g", Kind::File);
    let r = v.tagged(vec![
        (tag(1, 10, 10), create.clone()),
        (tag(1, 10, 10), create.clone()),
    ]);
    assert!(matches!(r[0], Ok(FsReply::Attr(_))), "{r:?}");
    assert_eq!(r[0], r[1], "a repeat in the same round");
    assert_eq!(v.tagged(vec![(tag(1, 10, 10), create.clone())])[0], r[0]);
    assert_eq!(v.one(create), Err(libc::EEXIST), "untagged, it applies");
    // A write, then another node's write, then a late repeat of the first:
    // the repeat does not undo the second write.
    let first = v.tagged(vec![(tag(1, 11, 11), write(f, 0, b"first"))]);
    v.tagged(vec![(tag(2, 5, 5), write(f, 0, b"other"))]);
    assert_eq!(
        v.tagged(vec![(tag(1, 11, 11), write(f, 0, b"first"))]),
        first
    );
    assert_eq!(v.m.view().read(f, 0, 5).unwrap(), b"other");
    // A failure is kept too: its repeat fails alike, even once it would
    // succeed.
    let d = v.ino(ROOT_INO, "d", Kind::Dir);
    let rmdir = unlink(ROOT_INO, "d", true, None);
    v.one(mknod(d, "inside", Kind::File)).unwrap();
    assert_eq!(
        v.tagged(vec![(tag(1, 12, 12), rmdir.clone())])[0],
        Err(libc::ENOTEMPTY)
    );
    v.one(unlink(d, "inside", false, None)).unwrap();
    assert_eq!(
        v.tagged(vec![(tag(1, 12, 12), rmdir)])[0],
        Err(libc::ENOTEMPTY)
    );
}

#[test]
fn an_op_below_its_nodes_low_water_mark_is_never_applied() {
    let mut v = Vol::new();
    let f = v.ino(ROOT_INO, "f", Kind::File);
    // Node 1 gave up on seq 20 and went on: seq 21 says it waits on
    // nothing older. A late copy of 20 then fails, and changes nothing.
    v.tagged(vec![(tag(1, 21, 21), write(f, 0, b"later"))]);
    assert_eq!(
        v.tagged(vec![(tag(1, 20, 20), truncate(f, 0))])[0],
        Err(libc::EIO)
    );
    assert_eq!(v.m.view().read(f, 0, 5).unwrap(), b"later");
    // Other nodes have marks of their own.
    assert!(v.tagged(vec![(tag(2, 3, 3), write(f, 5, b"!"))])[0].is_ok());
    // The marks and results are state like any other: same on replicas.
    let digest = v.m.view().digest().unwrap();
    let mut w = Vol::new();
    let g = w.ino(ROOT_INO, "f", Kind::File);
    assert_eq!(g, f);
    w.tagged(vec![(tag(1, 21, 21), write(f, 0, b"later"))]);
    w.tagged(vec![(tag(1, 20, 20), truncate(f, 0))]);
    w.tagged(vec![(tag(2, 3, 3), write(f, 5, b"!"))]);
    assert_eq!(w.m.view().digest().unwrap(), digest);
}

#[test]
fn results_are_deleted_once_the_low_water_mark_passes_them() {
    let mut v = Vol::new();
    let f = v.ino(ROOT_INO, "f", Kind::File);
    let block = limits::FS_OP_RESULTS_BLOCK;
    // One op at a time, each waiting on nothing older: the results pile
    // up to a block, then go.
    for seq in 1..=3 * block {
        v.tagged(vec![(tag(1, seq, seq), write(f, 0, b"x"))]);
        assert!(
            result_keys(&v) as u64 <= block + 1,
            "{} results kept at seq {seq}",
            result_keys(&v)
        );
    }
    // An op still waited on keeps the mark, and its result, back.
    v.tagged(vec![(tag(1, 5 * block, 5 * block), write(f, 0, b"y"))]);
    for seq in 5 * block + 1..=7 * block {
        v.tagged(vec![(tag(1, seq, 5 * block), write(f, 0, b"x"))]);
    }
    assert!(
        result_keys(&v) as u64 > 2 * block,
        "results still waited on were deleted"
    );
    assert!(v.tagged(vec![(tag(1, 5 * block, 5 * block), write(f, 0, b"y"))])[0].is_ok());
    assert_eq!(
        v.m.view().read(f, 0, 1).unwrap(),
        b"x",
        "the repeat was not applied"
    );
}

/// File blocks, and only they, go to RocksDB's bulk column family; a range
/// is looked for in every family that may hold keys of it.
#[test]
fn file_blocks_and_only_they_are_bulk_keys() {
    use holdfast_storage::Family;
    let split = FsMachine::STORAGE_SPLIT;
    let v = FsMachine::prefix_of(7);
    let key = |tag: u8, rest: &[u8]| [&v[..], &[tag], rest].concat();
    let block = key(b'b', &[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert!((split.is_bulk)(&block));
    for other in [
        key(b'i', &[0; 8]),
        key(b'd', b"x"),
        key(b'm', &[]),
        v.clone(),
    ] {
        assert!(!(split.is_bulk)(&other), "{other:?}");
    }
    assert!(!(split.is_bulk)(b"r/\x00\x00\x00\x00\x00\x00\x00\x07/e"));
    let file = key(b'b', &[0, 0, 0, 0, 0, 0, 0, 9]);
    let next_file = key(b'b', &[0, 0, 0, 0, 0, 0, 0, 10]);
    assert_eq!(
        (split.range)(&file, &next_file),
        Family::Bulk,
        "one file's blocks"
    );
    assert_eq!(
        (split.range)(&key(b'x', &[]), &key(b'y', &[])),
        Family::Default,
        "attributes"
    );
    assert_eq!(
        (split.range)(&key(b'a', &[]), &key(b'z', &[])),
        Family::Both,
        "a volume"
    );
    assert_eq!(
        (split.range)(&v, &holdfast_storage::prefix_end(&v).unwrap()),
        Family::Both,
        "a whole volume"
    );
    assert_eq!(
        (split.range)(b"r/", b"r0"),
        Family::Default,
        "the Raft logs"
    );
    assert_eq!(
        (split.range)(b"s/", b"s0"),
        Family::Default,
        "resync staging"
    );
    assert_eq!((split.range)(b"a", b"z"), Family::Both, "everything");
}
