//! Exports `rocksdb::crc32c::Extend` from the `holdfast` binary, so that
//! librocksdb computes its checksums with `holdfast_storage::crc`
//! (hardware CRC32C) instead of its own software version.

fn main() {
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=_ZN7rocksdb6crc32c6ExtendEjPKcm"
    );
}
