//! One behaviour suite that every [`Engine`] must pass. Each engine's test
//! file calls [`run`] with a [`Harness`] that knows how to open it and how to
//! simulate a restart.

use crate::{prefix_end, Batch, Engine};

/// How the suite opens an engine and simulates a restart of it.
pub trait Harness {
    type E: Engine;
    /// A fresh, empty engine.
    fn open(&mut self) -> Self::E;
    /// Closes `engine` as a crash would and opens the same store again.
    /// Synced writes must survive.
    fn crash_and_reopen(&mut self, engine: Self::E) -> Self::E;
}

fn collect(e: &dyn Engine, start: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    e.scan(start, end, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .expect("scan");
    out
}

fn put(e: &dyn Engine, k: &[u8], v: &[u8], sync: bool) {
    let mut b = Batch::new();
    b.put(k, v);
    e.write(b, sync).expect("write");
}

/// Runs every case. Panics with the name of the first case that fails.
pub fn run<H: Harness>(h: &mut H) {
    type Case<H> = (&'static str, fn(&mut H));
    let cases: &[Case<H>] = &[
        ("missing key reads as none", |h| {
            let e = h.open();
            assert_eq!(e.get(b"nope").unwrap(), None);
        }),
        ("put then get, overwrite, delete", |h| {
            let e = h.open();
            put(&e, b"k", b"v1", false);
            assert_eq!(e.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
            put(&e, b"k", b"v2", false);
            assert_eq!(e.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
            let mut b = Batch::new();
            b.delete(b"k".to_vec());
            e.write(b, false).unwrap();
            assert_eq!(e.get(b"k").unwrap(), None);
        }),
        ("a snapshot does not see later writes", |h| {
            let e = h.open();
            put(&e, b"a", b"1", false);
            put(&e, b"b", b"1", false);
            let snap = e.snapshot();
            put(&e, b"a", b"2", false);
            put(&e, b"c", b"2", false);
            let mut b = Batch::new();
            b.delete(b"b".to_vec());
            e.write(b, true).unwrap();
            assert_eq!(snap.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
            assert_eq!(snap.get(b"b").unwrap().as_deref(), Some(&b"1"[..]));
            assert_eq!(snap.get(b"c").unwrap(), None);
            let mut seen = Vec::new();
            snap.scan(b"a", b"z", &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
            assert_eq!(
                seen,
                vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"b".to_vec(), b"1".to_vec())
                ]
            );
            assert_eq!(e.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
        }),
        ("empty value and binary keys", |h| {
            let e = h.open();
            put(&e, &[0, 255, 0], b"", false);
            assert_eq!(e.get(&[0, 255, 0]).unwrap(), Some(vec![]));
        }),
        ("scan is ordered and bounded", |h| {
            let e = h.open();
            for k in [&b"b"[..], b"a", b"d", b"c", b"e"] {
                put(&e, k, k, false);
            }
            let got: Vec<Vec<u8>> = collect(&e, b"b", b"e")
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(got, vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
            assert!(
                collect(&e, b"e", b"b").is_empty(),
                "reversed range is empty"
            );
        }),
        ("scan stops when the visitor says so", |h| {
            let e = h.open();
            for i in 0u8..10 {
                put(&e, &[i], &[i], false);
            }
            let mut seen = 0;
            e.scan(&[0], &[10], &mut |_, _| {
                seen += 1;
                seen < 3
            })
            .unwrap();
            assert_eq!(seen, 3);
        }),
        ("batch mixes puts, deletes and ranges in order", |h| {
            let e = h.open();
            for i in 0u8..6 {
                put(&e, &[b'p', i], b"x", false);
            }
            let mut b = Batch::new();
            b.delete_range(vec![b'p', 1], vec![b'p', 4]);
            b.put(vec![b'p', 2], b"back".to_vec());
            b.delete(vec![b'p', 5]);
            e.write(b, true).unwrap();
            let keys: Vec<Vec<u8>> = collect(&e, b"p", &prefix_end(b"p").unwrap())
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(keys, vec![vec![b'p', 0], vec![b'p', 2], vec![b'p', 4]]);
        }),
        ("large values round-trip", |h| {
            let e = h.open();
            let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
            put(&e, b"big", &big, true);
            assert_eq!(e.get(b"big").unwrap().unwrap(), big);
        }),
        ("synced writes survive a crash", |h| {
            let e = h.open();
            put(&e, b"a", b"1", true);
            let mut b = Batch::new();
            b.put(b"b".to_vec(), b"2".to_vec())
                .put(b"c".to_vec(), b"3".to_vec());
            e.write(b, true).unwrap();
            let e = h.crash_and_reopen(e);
            assert_eq!(e.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
            assert_eq!(e.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
            assert_eq!(e.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
        }),
        ("sync() makes earlier unsynced writes durable", |h| {
            let e = h.open();
            put(&e, b"u", b"1", false);
            e.sync().unwrap();
            let e = h.crash_and_reopen(e);
            assert_eq!(e.get(b"u").unwrap().as_deref(), Some(&b"1"[..]));
        }),
        ("a crash never leaves half a batch", |h| {
            let e = h.open();
            let mut b = Batch::new();
            for i in 0u8..50 {
                b.put(vec![b'h', i], vec![i; 100]);
            }
            e.write(b, false).unwrap();
            let e = h.crash_and_reopen(e);
            let n = collect(&e, b"h", b"i").len();
            assert!(n == 0 || n == 50, "saw {n} of 50 keys of one batch");
        }),
        (
            "unlogged writes are seen at once and kept through a flush",
            |h| {
                let e = h.open();
                put(&e, b"a", b"logged", false);
                let mut b = Batch::new();
                // `b…` and `d…` are bulk keys in the split suites: both
                // families at once.
                b.put(b"b1".to_vec(), b"unlogged".to_vec())
                    .put(b"c".to_vec(), b"unlogged".to_vec())
                    .delete(b"a".to_vec());
                e.write_unlogged(b).unwrap();
                assert_eq!(e.get(b"a").unwrap(), None);
                assert_eq!(
                    collect(&e, b"a", b"z"),
                    vec![
                        (b"b1".to_vec(), b"unlogged".to_vec()),
                        (b"c".to_vec(), b"unlogged".to_vec())
                    ]
                );
                e.flush().unwrap();
                put(&e, b"d1", b"logged", true);
                let e = h.crash_and_reopen(e);
                assert_eq!(
                    collect(&e, b"a", b"z"),
                    vec![
                        (b"b1".to_vec(), b"unlogged".to_vec()),
                        (b"c".to_vec(), b"unlogged".to_vec()),
                        (b"d1".to_vec(), b"logged".to_vec())
                    ]
                );
            },
        ),
        ("prefix_end bounds a prefix", |_| {
            assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
            assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
            assert_eq!(prefix_end(&[255, 255]), None);
        }),
    ];
    for (name, case) in cases {
        eprintln!("conformance: {name}");
        case(h);
    }
}
