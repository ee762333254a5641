//! A plugin can loop, allocate, panic, reach for the filesystem or the
//! network, or answer too much; none of it hurts the node or other plugins.

mod common;

use common::*;
use holdfast_plugin::types::router::RouteDecision;
use holdfast_plugin::{
    CallError, Capability, FailMode, Grants, HostConfig, InstallError, PluginHost, PluginState,
    Settings, World,
};

/// Fail closed, with a deadline generous enough for a debug build on a
/// busy machine.
fn closed() -> Settings {
    Settings {
        fail: FailMode::Closed,
        deadline_ms: Some(1000),
        ..Settings::default()
    }
}

/// Fail closed with the default deadline (1 ms for a router).
fn closed_default_deadline() -> Settings {
    Settings {
        fail: FailMode::Closed,
        ..Settings::default()
    }
}

fn input() -> holdfast_plugin::types::router::RouteInput {
    route_input(0, &[], &["a:up:1:0", "b:up:1:0"])
}

#[test]
fn endless_loop_hits_its_deadline_and_is_quarantined_while_others_serve() {
    let host = PluginHost::new(HostConfig {
        quarantine_failures: 3,
        ..HostConfig::default()
    })
    .unwrap();
    host.install("spin", &wasm("test-loop"), closed_default_deadline())
        .unwrap();
    host.install("lb", &wasm("router"), settings(&[])).unwrap();
    for i in 0..3 {
        let err = host.route("spin", &input()).unwrap_err();
        assert!(
            matches!(err, CallError::Deadline { ms: 1 }),
            "call {i}: {err}"
        );
        assert_eq!(
            short(&input(), &host.route("lb", &input()).unwrap().decision),
            "a"
        );
    }
    assert_eq!(host.status("spin").unwrap().state, PluginState::Quarantined);
    assert_eq!(host.status("lb").unwrap().state, PluginState::Active);
    // Quarantined: not run at all.
    let err = host.route("spin", &input()).unwrap_err();
    assert!(matches!(err, CallError::Quarantined(_)), "{err}");
    let m = host.metrics("spin").unwrap();
    assert_eq!(
        (m.calls, m.timeouts, m.skipped_quarantined, m.quarantines),
        (3, 3, 1, 1)
    );
    assert_eq!(
        m.latency_buckets.iter().sum::<u64>(),
        m.calls,
        "every call timed"
    );
    // Visible, and reinstated by the operator.
    let listed = host.list();
    assert_eq!(
        listed.iter().find(|p| p.name == "spin").unwrap().timeouts,
        3
    );
    host.reinstate("spin").unwrap();
    assert_eq!(host.status("spin").unwrap().state, PluginState::Active);
    assert!(matches!(
        host.route("spin", &input()),
        Err(CallError::Deadline { .. })
    ));
}

#[test]
fn a_failing_fail_open_plugin_answers_with_the_built_in_decision() {
    let host = host();
    host.install("spin", &wasm("test-loop"), Settings::default())
        .unwrap();
    let answer = host.route("spin", &input()).unwrap();
    assert!(matches!(answer.failure, Some(CallError::Deadline { .. })));
    assert_eq!(short(&input(), &answer.decision), "a");
    assert_eq!(host.metrics("spin").unwrap().defaults_served, 1);
}

#[test]
fn deadline_can_be_raised_per_plugin_within_the_maximum() {
    let host = host();
    let s = Settings {
        deadline_ms: Some(20),
        ..closed()
    };
    host.install("spin", &wasm("test-loop"), s).unwrap();
    assert!(matches!(
        host.route("spin", &input()),
        Err(CallError::Deadline { ms: 20 })
    ));
    let too_long = Settings {
        deadline_ms: Some(3_600_000),
        ..closed()
    };
    let err = host
        .install("spin2", &wasm("test-loop"), too_long)
        .unwrap_err();
    assert!(matches!(err, InstallError::BadSetting(_)), "{err}");
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let host = host();
    host.install("hog", &wasm("test-alloc"), closed()).unwrap();
    let err = host.route("hog", &input()).unwrap_err();
    assert!(
        matches!(err, CallError::MemoryLimit { bytes } if bytes == 16 << 20),
        "{err}"
    );
    assert_eq!(host.metrics("hog").unwrap().memory_faults, 1);
    // The next call gets a fresh instance and fails the same way, cleanly.
    assert!(matches!(
        host.route("hog", &input()),
        Err(CallError::MemoryLimit { .. })
    ));
}

#[test]
fn a_panicking_rust_plugin_traps_cleanly() {
    let host = host();
    host.install("boom", &wasm("test-panic"), closed()).unwrap();
    for _ in 0..2 {
        match host.route("boom", &input()).unwrap_err() {
            CallError::Trap(msg) => assert!(msg.contains("panics on purpose"), "{msg}"),
            e => panic!("expected a trap, got {e}"),
        }
    }
    assert_eq!(host.metrics("boom").unwrap().traps, 2);
}

#[test]
fn filesystem_and_socket_imports_need_a_grant() {
    let host = host();
    let check = |plugin: &str, import_prefix: &str, cap: Capability| {
        let err = host.validate(&wasm(plugin), &Grants::none()).unwrap_err();
        match &err {
            InstallError::NotGranted { import, capability } => {
                assert!(import.starts_with(import_prefix), "{err}");
                assert_eq!(*capability, cap, "{err}");
            }
            _ => panic!("{plugin}: expected NotGranted, got {err}"),
        }
        assert!(
            err.to_string().contains(import_prefix),
            "names the import: {err}"
        );
        // Nothing is stored.
        assert!(host
            .install(plugin, &wasm(plugin), Settings::default())
            .is_err());
        assert!(host.status(plugin).is_none());
    };
    check("test-fs", "wasi:", Capability::Clocks);
    let all_but_fs: Grants = [Capability::Clocks].into_iter().collect();
    let err = host.validate(&wasm("test-fs"), &all_but_fs).unwrap_err();
    assert!(err.to_string().contains("wasi:filesystem/"), "{err}");
    let no_sockets: Grants = [Capability::Clocks, Capability::Filesystem]
        .into_iter()
        .collect();
    let err = host
        .validate(&wasm("test-sockets"), &no_sockets)
        .unwrap_err();
    assert!(err.to_string().contains("wasi:sockets/"), "{err}");
}

#[test]
fn granted_filesystem_and_sockets_install_and_still_reach_nothing_unnamed() {
    let host = host();
    let grants: Grants = [
        Capability::Clocks,
        Capability::Filesystem,
        Capability::Sockets,
    ]
    .into_iter()
    .collect();
    let info = host.validate(&wasm("test-sockets"), &grants).unwrap();
    assert_eq!(info.world, World::Router);
    assert!(info.needs.contains(&Capability::Sockets));
    let s = Settings {
        grants: grants.clone(),
        ..closed()
    };
    host.install("fs", &wasm("test-fs"), s).unwrap();
    // Granted, but with no folder named the plugin sees no directory.
    match host.route("fs", &input()).unwrap().decision {
        RouteDecision::Reject(r) => assert_eq!(r.reason, "no filesystem"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn install_refuses_what_is_not_a_plugin_with_one_line_errors() {
    let host = host();
    let check = |bytes: &[u8], settings: Settings, expect: &str| {
        let err = host.install("x", bytes, settings).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(expect), "expected `{expect}` in: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(host.status("x").is_none(), "nothing stored");
    };
    check(
        b"hello, world",
        Settings::default(),
        "not a WebAssembly file",
    );
    check(
        b"\0asm\x0d\0\x01\0\x07",
        Settings::default(),
        "malformed component",
    );
    check(
        b"\0asm\x01\0\0\0",
        Settings::default(),
        "core WebAssembly module, not a component",
    );
    check(
        b"\0asm\x0d\0\x01\0",
        Settings::default(),
        "exports no holdfast world",
    );
    let as_sql = Settings {
        world: Some(World::SqlRouter),
        ..Settings::default()
    };
    check(&wasm("router"), as_sql, "wrong world");
    check(
        &wasm("router"),
        Settings {
            deadline_ms: Some(0),
            ..Settings::default()
        },
        "deadline",
    );
    let err = host
        .install("Bad Name", &wasm("router"), Settings::default())
        .unwrap_err();
    assert!(matches!(err, InstallError::BadName(_)), "{err}");
}

#[test]
fn oversized_inputs_and_outputs_are_rejected() {
    let host = host();
    host.install("lb", &wasm("router"), settings(&[])).unwrap();
    let mut big = input();
    big.request.path = "x".repeat(100 << 10);
    let err = host.route("lb", &big).unwrap_err();
    assert!(matches!(err, CallError::InputTooLarge { .. }), "{err}");
    let m = host.metrics("lb").unwrap();
    assert_eq!(
        (m.calls, m.rejected_inputs),
        (0, 1),
        "rejected before any call"
    );

    host.install("bloat", &wasm("test-big-output"), closed())
        .unwrap();
    let err = host.route("bloat", &input()).unwrap_err();
    assert!(matches!(err, CallError::OutputTooLarge { .. }), "{err}");
    assert_eq!(host.metrics("bloat").unwrap().bad_outputs, 1);
}

#[test]
fn host_api_errors_go_to_the_plugin_and_state_stays_per_plugin() {
    let host = host();
    host.install("t1", &wasm("test-tag"), settings(&[("tag", "one")]))
        .unwrap();
    host.install("t2", &wasm("test-tag"), settings(&[("tag", "two")]))
        .unwrap();
    let headers = |name: &str| match host.route(name, &input()).unwrap().decision {
        RouteDecision::Forward(f) => f
            .add_headers
            .into_iter()
            .map(|h| format!("{}={}", h.name, h.value))
            .collect::<Vec<_>>()
            .join(" "),
        d => panic!("{d:?}"),
    };
    assert_eq!(
        headers("t1"),
        "x-tag=one x-count=1 x-stored=true x-big=value-too-large"
    );
    assert_eq!(
        headers("t1"),
        "x-tag=one x-count=2 x-stored=true x-big=value-too-large"
    );
    assert_eq!(
        headers("t2"),
        "x-tag=two x-count=1 x-stored=true x-big=value-too-large"
    );
    let custom = host.custom_metrics("t1").unwrap();
    assert_eq!(custom["tagged"], holdfast_plugin::CustomMetric::Counter(2));
}

#[test]
fn compiled_artifacts_are_cached_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let config = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let first = PluginHost::new(config.clone()).unwrap();
    let status = first
        .install("lb", &wasm("router"), Settings::default())
        .unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1);
    assert!(cached[0]
        .file_name()
        .to_string_lossy()
        .starts_with(&status.hash));
    // A second host loads the artifact instead of compiling, and it works.
    let second = PluginHost::new(config).unwrap();
    second
        .install("lb", &wasm("router"), Settings::default())
        .unwrap();
    assert_eq!(
        short(&input(), &second.route("lb", &input()).unwrap().decision),
        "a"
    );
}
