//! Hot swap: installing a version while calls stream in loses no call, and
//! every call is answered by exactly one version. Rollback brings the
//! previous version back.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use holdfast_plugin::types::router::RouteDecision;
use holdfast_plugin::{FailMode, RegistryError, Settings};

/// Installs `test-tag` with `tag` = the version number it will get, so a
/// decision names the code that made it.
fn tagged(version: u64) -> Settings {
    Settings {
        fail: FailMode::Closed,
        ..settings(&[("tag", &version.to_string())])
    }
}

fn tag_of(d: &RouteDecision) -> String {
    match d {
        RouteDecision::Forward(f) => f
            .add_headers
            .iter()
            .find(|h| h.name == "x-tag")
            .map(|h| h.value.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

#[test]
fn hot_swap_under_load_loses_no_call_and_each_is_answered_by_one_version() {
    let host = Arc::new(host());
    let bytes = wasm("test-tag");
    host.install("swap", &bytes, tagged(1)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|t| {
            let (host, stop) = (host.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) || seq < 20 {
                    let input = route_input(seq, &[], &["a:up:1:0"]);
                    let answer = host
                        .route("swap", &input)
                        .unwrap_or_else(|e| panic!("caller {t}: {e}"));
                    assert!(answer.failure.is_none());
                    assert_eq!(
                        tag_of(&answer.decision),
                        answer.version.to_string(),
                        "the version that answered made the decision"
                    );
                    seen.push(answer.version);
                    seq += 1;
                }
                seen
            })
        })
        .collect();
    let versions = 6;
    // Waits until the callers have made `n` more calls.
    let calls_go_on = |n: u64| {
        let before = host.metrics("swap").unwrap().calls;
        while host.metrics("swap").unwrap().calls < before + n {
            std::thread::yield_now();
        }
    };
    for v in 2..=versions {
        calls_go_on(10);
        let status = host.install("swap", &bytes, tagged(v)).unwrap();
        assert_eq!((status.version, status.previous_version), (v, Some(v - 1)));
    }
    calls_go_on(10);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut seen_versions = std::collections::BTreeSet::new();
    for c in callers {
        let seen = c.join().expect("caller thread");
        // A caller never goes back to an older version.
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        total += seen.len() as u64;
        seen_versions.extend(seen);
    }
    assert_eq!(
        host.metrics("swap").unwrap().calls,
        total,
        "every call counted once"
    );
    assert!(
        seen_versions.contains(&1) && seen_versions.contains(&versions),
        "{seen_versions:?}"
    );
}

#[test]
fn rollback_returns_to_the_previous_version_and_back() {
    let host = host();
    let bytes = wasm("test-tag");
    let input = route_input(0, &[], &["a:up:1:0"]);
    host.install("rb", &bytes, tagged(1)).unwrap();
    let err = host.rollback("rb").unwrap_err();
    assert!(matches!(err, RegistryError::NoPrevious(_)), "{err}");
    host.install("rb", &bytes, tagged(2)).unwrap();
    assert_eq!(tag_of(&host.route("rb", &input).unwrap().decision), "2");
    let status = host.rollback("rb").unwrap();
    assert_eq!((status.version, status.previous_version), (1, Some(2)));
    let answer = host.route("rb", &input).unwrap();
    assert_eq!(
        (answer.version, tag_of(&answer.decision)),
        (1, "1".to_string())
    );
    // A second rollback undoes the first.
    host.rollback("rb").unwrap();
    assert_eq!(tag_of(&host.route("rb", &input).unwrap().decision), "2");
    // A new install numbers on from the highest.
    assert_eq!(host.install("rb", &bytes, tagged(3)).unwrap().version, 3);
    // The cluster's store may choose the numbers; they only go up.
    assert_eq!(
        host.install_version("rb", Some(7), &bytes, tagged(7))
            .unwrap()
            .version,
        7
    );
    assert!(host
        .install_version("rb", Some(7), &bytes, tagged(7))
        .is_err());
    host.remove("rb").unwrap();
    assert!(host.route("rb", &input).is_err());
}

#[test]
fn a_new_version_must_keep_the_world() {
    let host = host();
    host.install("p", &wasm("router"), settings(&[])).unwrap();
    let err = host
        .install("p", &wasm("sql-router"), settings(&[]))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is a router; the new version is a sql-router"),
        "{err}"
    );
    assert_eq!(host.status("p").unwrap().version, 1);
}
