//! Runs the one conformance suite against both engines.

use holdfast_storage::conformance::{run, Harness};
use holdfast_storage::{
    Batch, Engine, Family, MemEngine, Memtables, RocksEngine, Split, StorageError,
};

/// As in production (`holdfast_core::limits::MEMTABLES`).
const MEMTABLES: Memtables = Memtables {
    bytes: 32 << 20,
    count: 4,
};

/// Keys starting with `b` or `d` live in the bulk column family, so that
/// the suite's scans, snapshots and range deletions cross both.
const SPLIT: Split = Split {
    is_bulk: |k| matches!(k.first(), Some(b'b' | b'd')),
    range: |s, e| {
        let bulk = [(&b"b"[..], &b"c"[..]), (b"d", b"e")];
        if bulk.iter().any(|(lo, hi)| s >= *lo && e <= *hi) {
            Family::Bulk
        } else if bulk.iter().all(|(lo, hi)| e <= *lo || s >= *hi) {
            Family::Default
        } else {
            Family::Both
        }
    },
};

struct Mem;
impl Harness for Mem {
    type E = MemEngine;
    fn open(&mut self) -> MemEngine {
        MemEngine::new()
    }
    fn crash_and_reopen(&mut self, e: MemEngine) -> MemEngine {
        e.crash();
        e
    }
}

struct Rocks {
    dirs: Vec<tempfile::TempDir>,
}
impl Harness for Rocks {
    type E = RocksEngine;
    fn open(&mut self) -> RocksEngine {
        let d = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(d.path(), MEMTABLES, Some(SPLIT)).unwrap();
        self.dirs.push(d);
        e
    }
    fn crash_and_reopen(&mut self, e: RocksEngine) -> RocksEngine {
        drop(e);
        RocksEngine::open(self.dirs.last().unwrap().path(), MEMTABLES, Some(SPLIT)).unwrap()
    }
}

#[test]
fn mem_engine_conforms() {
    run(&mut Mem);
}

#[test]
fn rocks_engine_conforms() {
    run(&mut Rocks { dirs: Vec::new() });
}

#[test]
fn mem_engine_crash_drops_unsynced_writes() {
    let e = MemEngine::new();
    let mut b = Batch::new();
    b.put(b"gone".to_vec(), b"1".to_vec());
    e.write(b, false).unwrap();
    e.crash();
    assert_eq!(e.get(b"gone").unwrap(), None);
}

/// What a crash keeps: the last flush, and the logged writes after it up
/// to the last sync, never an unlogged write that no flush followed.
#[test]
fn mem_engine_crash_keeps_the_last_flush_and_the_synced_log_after_it() {
    let put = |e: &MemEngine, k: &str, logged: bool| {
        let mut b = Batch::new();
        b.put(k.as_bytes().to_vec(), b"v".to_vec());
        if logged {
            e.write(b, false).unwrap()
        } else {
            e.write_unlogged(b).unwrap()
        }
    };
    let e = MemEngine::new();
    put(&e, "flushed", false);
    e.flush().unwrap();
    put(&e, "unlogged", false);
    put(&e, "logged", true);
    e.sync().unwrap();
    put(&e, "unsynced", true);
    e.crash();
    let keys = |e: &MemEngine| {
        let mut keys = Vec::new();
        e.scan(b"a", b"z", &mut |k, _| {
            keys.push(String::from_utf8(k.to_vec()).unwrap());
            true
        })
        .unwrap();
        keys
    };
    assert_eq!(keys(&e), ["flushed", "logged"]);
    // An engine that flushes after every write keeps everything written.
    let e = MemEngine::with_auto_flush(7, 1000);
    put(&e, "unlogged", false);
    e.crash();
    assert_eq!(keys(&e), ["unlogged"]);
}

/// A real crash: the writing process ends without closing the database.
/// Unlogged writes after the last flush are gone (in both column
/// families); what the flush persisted and the synced logged write after
/// it are kept.
#[test]
fn rocks_engine_crash_loses_only_unflushed_unlogged_writes() {
    const CHILD: &str = "HOLDFAST_STORAGE_CRASH_CHILD";
    let write = |e: &RocksEngine, keys: &[&str], logged: bool| {
        let mut b = Batch::new();
        for k in keys {
            b.put(k.as_bytes().to_vec(), k.as_bytes().to_vec());
        }
        if logged {
            e.write(b, true).unwrap()
        } else {
            e.write_unlogged(b).unwrap()
        }
    };
    if let Some(dir) = std::env::var_os(CHILD) {
        let e = RocksEngine::open(dir.as_ref(), MEMTABLES, Some(SPLIT)).unwrap();
        write(&e, &["a-flushed", "b-flushed"], false);
        e.flush().unwrap();
        write(&e, &["a-lost", "b-lost"], false);
        write(&e, &["c-logged"], true);
        // Ends the process as a crash would: no destructor of ours runs,
        // so the database is not closed (a close flushes).
        std::process::exit(42);
    }
    let d = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rocks_engine_crash_loses_only_unflushed_unlogged_writes",
        ])
        .env(CHILD, d.path())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(42), "the writer crashed as planned");
    let e = RocksEngine::open(d.path(), MEMTABLES, Some(SPLIT)).unwrap();
    let mut keys = Vec::new();
    e.scan(b"a", b"z", &mut |k, _| {
        keys.push(String::from_utf8(k.to_vec()).unwrap());
        true
    })
    .unwrap();
    assert_eq!(keys, ["a-flushed", "b-flushed", "c-logged"]);
    assert!(
        !d.path().join("FLUSH_CHECKPOINT").exists(),
        "the flush's checkpoint is deleted"
    );
}

#[test]
fn mem_engine_full_disk_fails_writes_and_changes_nothing() {
    let e = MemEngine::new();
    e.set_full(true);
    let mut b = Batch::new();
    b.put(b"k".to_vec(), b"v".to_vec());
    let err = e.write(b, true).unwrap_err();
    assert!(matches!(err, StorageError::NoSpace(_)) && err.is_retryable());
    assert_eq!(e.get(b"k").unwrap(), None);
    e.set_full(false);
    let mut b = Batch::new();
    b.put(b"k".to_vec(), b"v".to_vec());
    e.write(b, true).unwrap();
}

#[test]
fn a_batch_reads_its_own_pending_writes() {
    let e = MemEngine::new();
    let mut b = Batch::new();
    b.put(b"a".to_vec(), b"old".to_vec())
        .put(b"c".to_vec(), b"3".to_vec());
    e.write(b, true).unwrap();
    let mut b = Batch::new();
    b.put(b"a".to_vec(), b"new".to_vec());
    b.delete_range(b"b".to_vec(), b"d".to_vec());
    assert_eq!(
        b.read_through(&e, b"a").unwrap().as_deref(),
        Some(&b"new"[..])
    );
    assert_eq!(
        b.read_through(&e, b"c").unwrap(),
        None,
        "deleted by the pending range"
    );
    assert_eq!(b.read_through(&e, b"z").unwrap(), None);
    b.put(b"c".to_vec(), b"again".to_vec());
    assert_eq!(
        b.read_through(&e, b"c").unwrap().as_deref(),
        Some(&b"again"[..])
    );
}

#[test]
fn a_database_made_without_the_split_is_refused_with_it() {
    let d = tempfile::tempdir().unwrap();
    let e = RocksEngine::open(d.path(), MEMTABLES, None).unwrap();
    e.write(
        {
            let mut b = Batch::new();
            b.put(b"b1".to_vec(), b"data".to_vec());
            b
        },
        true,
    )
    .unwrap();
    drop(e);
    let err = RocksEngine::open(d.path(), MEMTABLES, Some(SPLIT)).unwrap_err();
    assert!(
        matches!(&err, StorageError::Corruption(m) if m.contains("bulk column family")),
        "{err}"
    );
    // The same build opens it again.
    let e = RocksEngine::open(d.path(), MEMTABLES, None).unwrap();
    assert_eq!(e.get(b"b1").unwrap().as_deref(), Some(&b"data"[..]));
}

/// Flushes write with O_DIRECT where the file system takes it (ext4
/// here), and what they wrote reads back, before and after a reopen.
#[test]
fn flushed_files_are_written_with_direct_io_and_read_back() {
    let small = Memtables {
        bytes: 1 << 20,
        count: 2,
    };
    let value =
        |i: u32, len: usize| -> Vec<u8> { (0..len).map(|j| (i as usize * 31 + j) as u8).collect() };
    let d = tempfile::tempdir().unwrap();
    let e = RocksEngine::open(d.path(), small, Some(SPLIT)).unwrap();
    for i in 0..64u32 {
        let mut b = Batch::new();
        b.put(format!("b{i:03}").into_bytes(), value(i, 64 << 10));
        b.put(format!("a{i:03}").into_bytes(), value(i, 40 << 10));
        e.write(b, false).unwrap();
    }
    let blob_files = || {
        std::fs::read_dir(d.path())
            .unwrap()
            .filter(|f| f.as_ref().unwrap().path().extension() == Some("blob".as_ref()))
            .count()
    };
    for _ in 0..100 {
        if blob_files() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(blob_files() >= 2, "memtables of 1 MiB were flushed");
    let options = std::fs::read_dir(d.path())
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("OPTIONS-")
        })
        .unwrap();
    assert!(std::fs::read_to_string(options)
        .unwrap()
        .contains("use_direct_io_for_flush_and_compaction=true"));
    let check = |e: &RocksEngine| {
        for i in 0..64u32 {
            let b = e.get(format!("b{i:03}").as_bytes()).unwrap();
            assert_eq!(b, Some(value(i, 64 << 10)), "b{i:03}");
            let a = e.get(format!("a{i:03}").as_bytes()).unwrap();
            assert_eq!(a, Some(value(i, 40 << 10)), "a{i:03}");
        }
    };
    check(&e);
    e.sync().unwrap();
    drop(e);
    check(&RocksEngine::open(d.path(), small, Some(SPLIT)).unwrap());
}
