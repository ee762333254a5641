//! Plugins written in JavaScript (componentize-js) and Python
//! (componentize-py) install with no grant and run through the same host
//! path as the Rust ones.

mod common;

use common::*;
use holdfast_plugin::types::router::RouteDecision;
use holdfast_plugin::{Grants, Settings, World};

/// Interpreters need more than a router's default 16 MiB and 1 ms.
fn interpreter_settings() -> Settings {
    Settings {
        memory_bytes: Some(128 << 20),
        deadline_ms: Some(1000),
        ..Settings::default()
    }
}

fn check(plugin: &str, backends: &[&str], expected: &str, routed_by: &str) {
    let host = host();
    let info = host.validate(&wasm(plugin), &Grants::none()).unwrap();
    assert_eq!(info.world, World::Router);
    assert!(
        info.needs.is_empty(),
        "{plugin} needs no grant: {:?}",
        info.imports
    );
    host.install(plugin, &wasm(plugin), interpreter_settings())
        .unwrap();
    for seq in 0..3 {
        let input = route_input(seq, &[], backends);
        let answer = host.route(plugin, &input).unwrap();
        assert!(answer.failure.is_none(), "{plugin}: {:?}", answer.failure);
        assert_eq!(
            short(&input, &answer.decision),
            expected,
            "{plugin} seq {seq}"
        );
        let RouteDecision::Forward(f) = &answer.decision else {
            unreachable!()
        };
        assert_eq!(f.add_headers[0].value, routed_by);
    }
    let input = route_input(0, &[], &["a:down:1:0"]);
    let answer = host.route(plugin, &input).unwrap();
    assert_eq!(short(&input, &answer.decision), "503");
}

#[test]
fn javascript_router() {
    // Round robin over healthy backends by sequence number: seq 0, 1, 2
    // over [b] is always b.
    check("js-router", &["a:down:1:0", "b:up:1:7"], "b", "js");
}

#[test]
fn python_router() {
    // Least loaded healthy backend.
    check(
        "py-router",
        &["a:up:1:9", "b:up:1:2", "c:down:1:0"],
        "b",
        "python",
    );
}
