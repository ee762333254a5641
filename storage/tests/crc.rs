//! `holdfast_storage::crc` gives exactly the checksums of librocksdb's own
//! `rocksdb::crc32c::Extend`, so that files either one wrote read back with
//! the other.

#![allow(unsafe_code)]

use holdfast_storage::crc::_ZN7rocksdb6crc32c6ExtendEjPKcm as ours;

type Extend = unsafe extern "C" fn(u32, *const u8, usize) -> u32;

/// librocksdb's own definition, looked up in the library itself.
fn librocksdb_extend() -> Extend {
    // SAFETY: dlopen/dlsym with NUL-terminated names; the library stays
    // loaded (the test binary links it), and the symbol has this C ABI.
    unsafe {
        let lib = libc::dlopen(
            c"librocksdb.so.7.8".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_NOLOAD,
        );
        assert!(!lib.is_null(), "librocksdb is not loaded in this process");
        let f = libc::dlsym(lib, c"_ZN7rocksdb6crc32c6ExtendEjPKcm".as_ptr());
        assert!(!f.is_null(), "librocksdb has no rocksdb::crc32c::Extend");
        std::mem::transmute::<*mut libc::c_void, Extend>(f)
    }
}

#[test]
fn the_hardware_crc_matches_librocksdb_and_the_standard() {
    // Link the engine, so that librocksdb is loaded.
    let dir = tempfile::tempdir().expect("temp dir");
    let _db = holdfast_storage::RocksEngine::open(
        dir.path(),
        holdfast_storage::Memtables {
            bytes: 4 << 20,
            count: 2,
        },
        None,
    )
    .expect("open");
    let theirs = librocksdb_extend();
    assert_ne!(
        theirs as *const () as usize, ours as *const () as usize,
        "compared with itself"
    );
    let check = b"123456789";
    // SAFETY: both are given a valid buffer of the stated length.
    unsafe {
        assert_eq!(ours(0, check.as_ptr(), check.len()), 0xE306_9283);
        assert_eq!(theirs(0, check.as_ptr(), check.len()), 0xE306_9283);
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = vec![0u8; 70_000];
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for (start, len, init) in [
        (0, 0, 0),
        (0, 1, 0),
        (3, 7, 0x1234_5678),
        (1, 63, 0),
        (5, 4096, 0xFFFF_FFFF),
        (0, 65_536, 7),
        (11, 69_989, 0xDEAD_BEEF),
    ] {
        let buf = &data[start..start + len];
        // SAFETY: as above.
        let (a, b) = unsafe {
            (
                ours(init, buf.as_ptr(), buf.len()),
                theirs(init, buf.as_ptr(), buf.len()),
            )
        };
        assert_eq!(a, b, "start {start} len {len} init {init:#x}");
    }
}
