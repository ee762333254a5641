//! History checkers shared by holdfast's deterministic simulation and its
//! real-process fault harness: [`register`] decides whether a history of
//! reads and writes of independent registers is linearizable (a
//! Wing–Gong/Lowe search, key by key), and [`append`] checks an append-only
//! log of numbered, deterministic records against what its writer saw
//! acknowledged.
//!
//! This crate only judges histories that its callers recorded. It drives no
//! system, reads no clock, does no I/O and draws no random numbers: the same
//! history always gets the same verdict. It knows nothing of Raft, volumes or
//! files beyond the record format of [`append::record`].

pub mod append;
pub mod register;

/// SplitMix64: a fixed, well-mixed function of `x`. Gives deterministic
/// record payloads and search hashes without any random number generator.
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
