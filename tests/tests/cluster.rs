//! The cluster as an operator sees it: real `holdfast` processes on
//! loopback, driven through the CLI.

use std::time::Duration;

use holdfast_tests::{wait_until, Cluster};

fn voters_healthy(s: &holdfast_tests::Status, names: &[&str]) -> bool {
    let mut got: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| n.role == "voter" && n.healthy)
        .map(|n| n.name.as_str())
        .collect();
    got.sort_unstable();
    got == names
}

#[test]
fn three_nodes_form_a_cluster_and_survive_a_leader_kill() {
    let mut c = Cluster::start(3);
    // Every node sees the same three healthy voters and the same leader.
    let views: Vec<_> = (0..3).map(|i| c.wait_converged(i, 3)).collect();
    for v in &views {
        assert!(voters_healthy(v, &["n1", "n2", "n3"]), "{v:?}");
        assert_eq!(v.cluster_id, views[0].cluster_id);
        assert!(v.nodes.iter().all(|n| n.last_seen_ms > 0));
    }
    let leader = wait_until(
        "all nodes to agree on one leader",
        Duration::from_secs(20),
        || {
            let ls: Vec<_> = (0..3).filter_map(|i| c.status(i)?.leader).collect();
            (ls.len() == 3 && ls.iter().all(|l| *l == ls[0])).then(|| ls[0].clone())
        },
    );
    let old_term = c.status(0).unwrap().term;

    // kill -9 the leader: the others elect a new one and say so.
    let li = c.index_of(&leader);
    c.nodes[li].kill9();
    let survivor = (0..3).find(|&i| i != li).unwrap();
    let after = wait_until("a new leader", Duration::from_secs(20), || {
        c.status(survivor)
            .filter(|s| s.leader.as_ref().is_some_and(|l| *l != leader))
    });
    assert!(
        after.term > old_term,
        "term must grow on election: {} -> {}",
        old_term,
        after.term
    );
    wait_until(
        "the killed node to be reported down",
        Duration::from_secs(10),
        || {
            c.status(survivor)
                .filter(|s| s.nodes.iter().any(|n| n.name == leader && !n.healthy))
        },
    );

    // Restart the old leader from its data folder alone: it rejoins as a
    // follower of the new leader.
    c.nodes[li].restart();
    c.wait_api(li);
    let back = c.wait_converged(li, 3);
    assert_eq!(
        back.leader, after.leader,
        "the restarted node follows the new leader"
    );
    assert_ne!(back.leader.as_deref(), Some(leader.as_str()));
    assert!(voters_healthy(&back, &["n1", "n2", "n3"]));
}

#[test]
fn learners_and_witnesses_join_with_their_role() {
    let mut c = Cluster::start(2);
    c.join_new("l1", &["--role", "learner"]);
    c.join_new("w1", &["--role", "witness"]);
    let s = c.wait_converged(0, 4);
    let role = |name: &str| {
        s.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.role.clone())
    };
    assert_eq!(role("l1").as_deref(), Some("learner"));
    assert_eq!(role("w1").as_deref(), Some("witness"));
    assert_eq!(role("n2").as_deref(), Some("voter"));
    // The learner replicates the metadata too: it answers status itself.
    let li = c.index_of("l1");
    let from_learner = c.wait_converged(li, 4);
    assert_eq!(from_learner.cluster_id, s.cluster_id);
}

#[test]
fn a_clean_stop_and_restart_keeps_the_membership() {
    let mut c = Cluster::start(3);
    c.wait_converged(0, 3);
    for i in 0..3 {
        let st = c.nodes[i].stop();
        assert!(st.success(), "SIGTERM must stop a node cleanly, got {st}");
    }
    for i in 0..3 {
        c.nodes[i].restart();
    }
    for i in 0..3 {
        c.wait_api(i);
    }
    let s = c.wait_converged(1, 3);
    assert!(voters_healthy(&s, &["n1", "n2", "n3"]));
}
