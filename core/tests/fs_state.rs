//! The file-volume state machine on its own: targeted cases, each one line
//! through a small harness. (The mount-level model test is in
//! tests/tests/volumes.rs.)

use std::sync::Arc;

use holdfast_core::fs::{FsMachine, FsOp, FsReply, Kind, ROOT_INO};
use holdfast_storage::{Batch, Engine, MemEngine};

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
    assert_eq!(
        v.m.view().stats().unwrap(),
        v.m.stats(),
        "the counters are stored as they are kept"
    );
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
