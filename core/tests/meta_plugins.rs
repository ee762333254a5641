//! The plugin records of the cluster metadata: versions are numbered at
//! apply time, a swap keeps the active version as the previous one, a
//! rollback swaps them, a name keeps its world and its numbers, and every
//! refusal changes nothing.

use std::collections::BTreeMap;

use holdfast_core::group::StateMachine;
use holdfast_core::meta::{
    Command, MetaEvent, MetaMachine, MetaState, Outcome, PluginVersion, Proposal,
};
use holdfast_core::wire;
use holdfast_storage::Batch;

fn version(hash_byte: char, tag: &str) -> PluginVersion {
    PluginVersion {
        number: 0,
        hash: hash_byte.to_string().repeat(64),
        bytes: 1000,
        grants: vec![],
        fail: "open".into(),
        deadline_ms: None,
        memory_bytes: None,
        config: BTreeMap::from([("tag".to_string(), tag.to_string())]),
        fs_root: None,
        origin: 1,
        installed_ms: 0,
    }
}

fn apply(m: &mut MetaMachine, cmd: Command) -> Result<Outcome, String> {
    let p = Proposal {
        req_id: 1,
        origin: 1,
        cmd,
    };
    let mut batch = Batch::new();
    m.apply(1, &wire::encode(&p), &mut batch);
    let mut events = m.take_events();
    assert_eq!(events.len(), 1);
    match events.remove(0) {
        MetaEvent::Done { outcome, .. } => outcome,
    }
}

fn install(
    m: &mut MetaMachine,
    name: &str,
    world: &str,
    v: PluginVersion,
) -> Result<Outcome, String> {
    apply(
        m,
        Command::InstallPlugin {
            name: name.into(),
            world: world.into(),
            version: v,
        },
    )
}

fn state(m: &MetaMachine) -> MetaState {
    (*m.state()).clone()
}

#[test]
fn versions_swap_roll_back_and_keep_their_numbers() {
    let mut m = MetaMachine::default();
    assert_eq!(
        install(&mut m, "web", "router", version('a', "v1")),
        Ok(Outcome::PluginInstalled { version: 1 })
    );
    assert_eq!(
        install(&mut m, "web", "router", version('b', "v2")),
        Ok(Outcome::PluginInstalled { version: 2 })
    );
    let st = state(&m);
    let p = &st.plugins["web"];
    assert_eq!((p.active.number, p.active.hash.as_bytes()[0]), (2, b'b'));
    assert_eq!(p.previous.as_ref().map(|v| v.number), Some(1));
    assert_eq!(st.plugin_hashes().len(), 2);

    let rollback = || Command::RollbackPlugin { name: "web".into() };
    assert_eq!(
        apply(&mut m, rollback()),
        Ok(Outcome::PluginRolledBack { version: 1 })
    );
    assert_eq!(
        apply(&mut m, rollback()),
        Ok(Outcome::PluginRolledBack { version: 2 })
    );
    assert_eq!(
        apply(&mut m, rollback()),
        Ok(Outcome::PluginRolledBack { version: 1 })
    );

    // A third version drops the oldest component from what must be kept.
    install(&mut m, "web", "router", version('c', "v3")).unwrap();
    let st = state(&m);
    assert_eq!(st.plugins["web"].active.number, 3);
    assert_eq!(st.plugins["web"].previous.as_ref().unwrap().number, 1);
    assert!(!st.plugin_hashes().contains("b".repeat(64).as_str()));

    // Removed and installed again: the numbers go on.
    assert_eq!(
        apply(&mut m, Command::RemovePlugin { name: "web".into() }),
        Ok(Outcome::PluginRemoved)
    );
    assert!(state(&m).plugins.is_empty());
    assert_eq!(
        install(&mut m, "web", "sql-router", version('d', "v4")),
        Ok(Outcome::PluginInstalled { version: 4 })
    );
    assert!(state(&m).plugins["web"].previous.is_none());
}

#[test]
fn refusals_change_nothing() {
    let mut m = MetaMachine::default();
    install(&mut m, "web", "router", version('a', "v1")).unwrap();
    let before = state(&m);
    let refused = [
        (
            install(&mut m, "web", "sql-router", version('b', "x")),
            "remove it first",
        ),
        (
            install(&mut m, "Web", "router", version('b', "x")),
            "plugin name",
        ),
        (
            install(&mut m, "other", "proxy", version('b', "x")),
            "unknown plugin world",
        ),
        (
            install(
                &mut m,
                "other",
                "router",
                PluginVersion {
                    hash: "xyz".into(),
                    ..version('b', "x")
                },
            ),
            "hex",
        ),
        (
            install(
                &mut m,
                "other",
                "router",
                PluginVersion {
                    bytes: 0,
                    ..version('b', "x")
                },
            ),
            "bytes",
        ),
        (
            apply(&mut m, Command::RollbackPlugin { name: "web".into() }),
            "no previous version",
        ),
        (
            apply(
                &mut m,
                Command::RollbackPlugin {
                    name: "nope".into(),
                },
            ),
            "no plugin named",
        ),
        (
            apply(
                &mut m,
                Command::RemovePlugin {
                    name: "nope".into(),
                },
            ),
            "no plugin named",
        ),
    ];
    for (outcome, needle) in refused {
        let e = outcome.expect_err(needle);
        assert!(e.contains(needle), "{e:?} does not mention {needle:?}");
    }
    assert!(state(&m) == before, "a refused command changed the state");

    // The records travel whole in one snapshot: their total is bounded.
    let big = PluginVersion {
        config: (0..14)
            .map(|i| (format!("k{i}"), "v".repeat(4000)))
            .collect(),
        ..version('b', "x")
    };
    let mut refused = None;
    for i in 0..100 {
        let before = state(&m);
        match install(&mut m, &format!("p{i}"), "router", big.clone()) {
            Ok(_) => {}
            Err(e) => {
                assert!(state(&m) == before, "a refused install changed the state");
                refused = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = refused.expect("the metadata took 100 plugins of 56 KB settings");
    assert!(e.contains("cluster metadata"), "{e}");
    assert!(i > 20, "refused too early, at plugin {i}: {e}");
}
