//! `holdfast plugin test NAME --input FILE.json`: the example inputs in
//! plugins/examples/inputs/ go through `call_json` with the bundled
//! plugins and come back as JSON decisions.

mod common;

use common::*;
use holdfast_plugin::CallError;

fn example(world: &str) -> String {
    let path = manifest_dir()
        .join("../plugins/examples/inputs")
        .join(format!("{world}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn example_inputs_give_json_decisions() {
    let host = host();
    let check = |plugin: &str, world: &str, expected: serde_json::Value| {
        host.install(plugin, &wasm(plugin), settings(&[])).unwrap();
        let answer = host.call_json(plugin, &example(world)).unwrap();
        assert_eq!(answer.failure, None);
        assert_eq!(answer.decision, expected, "{plugin} on {world}.json");
    };
    use serde_json::json;
    check(
        "router",
        "router",
        json!({"Forward": {"pool": 0, "backend": 0, "add_headers": [], "set_cookie": null}}),
    );
    check("sql-router", "sql-router", json!({"Reader": "db-3"}));
    check(
        "failover",
        "failover-policy",
        json!([{"Fence": "db-1"}, {"Promote": "db-3"}, {"Alert": "promoted db-3 (position 1195, zone a)"}]),
    );
    check(
        "deploy-canary",
        "deploy-strategy",
        json!({"Proceed": {"weights": [{"version": "v1", "weight": 75}, {"version": "v2", "weight": 25}], "next_stage": 1, "sticky_sessions": true}}),
    );
}

#[test]
fn bad_json_is_the_caller_s_error() {
    let host = host();
    host.install("router", &wasm("router"), settings(&[]))
        .unwrap();
    let check = |input: &str| {
        let err = host.call_json("router", input).unwrap_err();
        assert!(matches!(err, CallError::BadInput(_)), "{input}: {err}");
        assert_eq!(err.culprit(), holdfast_plugin::Culprit::Caller);
    };
    check("");
    check("{}");
    check(&example("sql-router"));
    assert!(matches!(
        host.call_json("router", &"x".repeat(1 << 20)),
        Err(CallError::InputTooLarge { .. })
    ));
}
