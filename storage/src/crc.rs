//! RocksDB's CRC32C, computed with the CPU's `crc32` instruction.
//!
//! Debian builds `librocksdb` to run on any x86-64, so it computes the
//! CRC32C of every WAL record, SST block and blob in software, a byte at a
//! time through tables. Writing a volume spends much of its CPU there
//! (BENCHMARKS.md). RocksDB calls its `rocksdb::crc32c::Extend` through the
//! PLT, so a definition that the executable exports takes its place for
//! the whole library (ELF symbol interposition). The `holdfast` binary
//! exports this one (`cli/build.rs`); other executables, such as test
//! binaries, keep the library's own. Both give the same checksums
//! (`storage/tests/crc.rs` compares them), so files written with either
//! read back with the other.

// Defining a symbol of another library's namespace, and `dlsym`, need it.
#![allow(unsafe_code)]

/// `uint32_t rocksdb::crc32c::Extend(uint32_t crc, const char* buf,
/// size_t n)`: the CRC32C of A followed by `buf[..n]`, given `crc`, the
/// CRC32C of A.
///
/// # Safety
/// `buf` must point to `n` readable bytes (RocksDB's own contract).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _ZN7rocksdb6crc32c6ExtendEjPKcm(
    crc: u32,
    buf: *const u8,
    n: usize,
) -> u32 {
    if n == 0 {
        return crc;
    }
    // SAFETY: the caller passes `n` readable bytes at `buf`, and `n > 0`
    // means `buf` is not null.
    let data = unsafe { std::slice::from_raw_parts(buf, n) };
    crc32c::crc32c_append(crc, data)
}

/// Whether RocksDB's checksums go through [`_ZN7rocksdb6crc32c6ExtendEjPKcm`]
/// in this process (the executable exports it), rather than through
/// `librocksdb`'s own software version.
pub fn hardware_crc_in_use() -> bool {
    let name = c"_ZN7rocksdb6crc32c6ExtendEjPKcm";
    // SAFETY: `dlsym` with RTLD_DEFAULT and a NUL-terminated name only looks
    // the symbol up; the address is compared, never called.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    std::ptr::eq(
        found as *const (),
        _ZN7rocksdb6crc32c6ExtendEjPKcm as *const (),
    )
}
