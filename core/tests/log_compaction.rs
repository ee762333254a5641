//! A group's log is compacted as it is applied: the entries behind the
//! kept tail are deleted from the engine, one key at a time (a range
//! deletion per compaction slows every RocksDB read until the next
//! memtable flush), and none is left behind.

use std::sync::Arc;

use holdfast_core::fs::FsMachine;
use holdfast_core::group::{bootstrap, prefix_of, RaftGroup};
use holdfast_core::limits;
use holdfast_storage::Engine;

mod watched;
use watched::Watched;

const VOLUME: u64 = 9;

/// Keys of the group's log entries in the engine.
fn log_keys(engine: &dyn Engine) -> usize {
    let mut start = prefix_of(VOLUME);
    start.extend_from_slice(b"log/");
    let mut end = start.clone();
    *end.last_mut().unwrap() += 1;
    let mut n = 0;
    engine
        .scan(&start, &end, &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

#[test]
fn compaction_deletes_every_entry_behind_the_kept_tail() {
    let counting = Arc::new(Watched::default());
    let engine: Arc<dyn Engine> = counting.clone();
    bootstrap(
        engine.clone(),
        VOLUME,
        &[1],
        FsMachine::initial_batch(VOLUME, 0),
    )
    .expect("bootstrap");
    let sm = FsMachine::load(engine.clone(), VOLUME).expect("load");
    let mut g = RaftGroup::open(1, VOLUME, engine.clone(), sm, 7).expect("open");
    let keep = limits::VOLUME_LOG_KEEP_ENTRIES;
    g.set_log_retention(Some(keep), keep);
    g.campaign().expect("campaign");
    for i in 0..500u64 {
        // Not a valid op: the machine skips it, and the log is what counts.
        g.propose(i.to_be_bytes().to_vec()).expect("propose");
        g.release().expect("release");
        let st = g.status();
        assert_eq!(st.applied, st.commit, "a single replica applies at once");
        let kept = log_keys(&*engine) as u64;
        assert!(
            kept <= 2 * keep + 2,
            "after {i} proposals, {kept} entries are kept (applied {})",
            st.applied
        );
    }
    assert!(g.status().applied >= 500);
    assert_eq!(counting.range_deletes(), 0, "range deletions written");
}
