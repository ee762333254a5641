//! A node that has just opened a group grants no vote, except to a
//! leadership transfer's target, for one election timeout: it has
//! forgotten when it last heard from a leader, and a leader's read lease
//! counts on every voter that heard its heartbeat electing nobody else for
//! that long.

use std::sync::Arc;

use holdfast_core::fs::FsMachine;
use holdfast_core::group::{bootstrap, Output, RaftGroup};
use holdfast_core::{limits, RaftMessage, RaftMessageType};
use holdfast_storage::{Engine, MemEngine};

const VOLUME: u64 = 9;

/// Replica 1 of a fresh three-replica volume, just opened.
fn open_replica() -> RaftGroup<FsMachine> {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    bootstrap(
        engine.clone(),
        VOLUME,
        &[1, 2, 3],
        FsMachine::initial_batch(VOLUME, 0),
    )
    .expect("bootstrap");
    let sm = FsMachine::load(engine.clone(), VOLUME).expect("load");
    RaftGroup::open_with(1, VOLUME, engine, sm, 7, limits::VOLUME_INFLIGHT_MSGS_MAX).expect("open")
}

/// Replica 2 asks replica 1 for its vote in term 5, with a log as long as
/// any.
fn vote_request(transfer: bool) -> RaftMessage {
    let mut m = RaftMessage::default();
    m.set_msg_type(RaftMessageType::MsgRequestVote);
    m.from = 2;
    m.to = 1;
    m.term = 5;
    m.log_term = 5;
    m.index = 1_000;
    if transfer {
        m.context = raft::CAMPAIGN_TRANSFER.to_vec().into();
    }
    m
}

/// Whether the group answered with a granted vote.
fn granted(g: &mut RaftGroup<FsMachine>) -> bool {
    g.take_outputs().any(|o| {
        matches!(o, Output::Send(m)
            if m.get_msg_type() == RaftMessageType::MsgRequestVoteResponse && !m.reject)
    })
}

#[test]
fn a_node_that_just_started_votes_only_after_an_election_timeout() {
    let mut g = open_replica();
    g.step(vote_request(false)).expect("step");
    assert!(
        !granted(&mut g),
        "voted before an election timeout had passed"
    );
    for _ in 0..limits::ELECTION_TICKS {
        g.tick().expect("tick");
    }
    let _ = g.take_outputs().count();
    g.step(vote_request(false)).expect("step");
    assert!(granted(&mut g), "no vote after an election timeout");
}

#[test]
fn a_leadership_transfer_gets_its_vote_at_once() {
    let mut g = open_replica();
    g.step(vote_request(true)).expect("step");
    assert!(granted(&mut g), "a transfer's target did not get the vote");
}
