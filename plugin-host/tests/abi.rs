//! What crosses the boundary: inputs of every shape reach the plugin intact
//! through the SDK's allocator, and a decision that names something the
//! input does not have is a failed call.

mod common;

use common::*;
use holdfast_plugin::types::router::*;
use holdfast_plugin::types::{Health, IpAddress, Pair, SocketAddress};
use holdfast_plugin::{CallError, FailMode, Settings};

/// The churn plugin's digest (plugins/test/churn): FNV-1a over every string
/// of the input, in order, each followed by 0xff.
fn digest(input: &RouteInput) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let r = &input.request;
    if let Method::Other(m) = &r.method {
        eat(m);
    }
    eat(&r.host);
    eat(&r.path);
    for p in r.headers.iter().chain(&r.cookies) {
        eat(&p.name);
        eat(&p.value);
    }
    for pool in &input.pools {
        eat(&pool.name);
        for b in &pool.backends {
            eat(&b.id);
            eat(&b.version);
        }
    }
    h
}

/// Call `i` of many: strings from empty to 1,500 bytes (the allocator
/// caches blocks up to 256), lists from empty to a few entries, both IP
/// families, and non-ASCII text.
fn varied_input(i: u64) -> RouteInput {
    let text = |n: u64, salt: &str| -> String {
        format!("{salt}é{i}")
            .chars()
            .cycle()
            .take(n as usize)
            .collect()
    };
    let len = |k: u64| (i * 7919 + k * 104_729) % 1500;
    let pairs = |count: u64, kind: &str| -> Vec<Pair> {
        (0..count)
            .map(|k| Pair {
                name: text(len(k) % 40, kind),
                value: text(len(k + 1), "v"),
            })
            .collect()
    };
    RouteInput {
        request: Request {
            method: if i.is_multiple_of(5) {
                Method::Other(text(i % 20 + 1, "M"))
            } else {
                Method::Get
            },
            host: text(len(1) % 300, "h"),
            path: text(len(2), "/p"),
            headers: pairs(i % 4, "x-h"),
            cookies: pairs(i % 3, "c"),
            client: SocketAddress {
                ip: if i.is_multiple_of(2) {
                    IpAddress::Ipv4((192, 0, 2, (i % 256) as u8))
                } else {
                    IpAddress::Ipv6((0x2001, 0xdb8, 0, 0, 0, 0, 0, (i % 65_536) as u16))
                },
                port: (i % 65_536) as u16,
            },
            sequence: i,
        },
        pools: (0..i % 3 + 1)
            .map(|p| Pool {
                name: text(len(p + 3) % 64, "pool"),
                backends: (0..(i + p) % 6 + 1)
                    .map(|b| Backend {
                        id: text(len(b + 4) % 80 + 1, "b"),
                        health: Health::Healthy,
                        weight: 1,
                        load: 0,
                        version: text(len(b + 5) % 20, "v"),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[test]
fn inputs_of_every_shape_reach_the_plugin_intact() {
    let host = host();
    let settings = Settings {
        fail: FailMode::Closed,
        ..settings(&[])
    };
    host.install("churn", &wasm("test-churn"), settings)
        .unwrap();
    for i in 0..3000 {
        let input = varied_input(i);
        let answer = host
            .route("churn", &input)
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        let RouteDecision::Forward(f) = &answer.decision else {
            panic!("call {i}: {:?}", answer.decision);
        };
        assert_eq!(
            f.add_headers[0].value,
            digest(&input).to_string(),
            "call {i}"
        );
    }
    let m = host.metrics("churn").unwrap();
    assert_eq!((m.calls, m.traps), (3000, 0));
}

#[test]
fn a_forward_outside_the_input_is_a_failed_call() {
    let host = host();
    let closed = Settings {
        fail: FailMode::Closed,
        ..settings(&[])
    };
    // The noop plugin always forwards to backend 0 of pool 0.
    host.install("noop", &wasm("test-noop"), closed).unwrap();
    host.install("noop-open", &wasm("test-noop"), settings(&[]))
        .unwrap();
    let no_backends = route_input(0, &[], &[]);
    let err = host.route("noop", &no_backends).unwrap_err();
    assert!(matches!(err, CallError::BadDecision(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "bad decision: forward to backend 0 of pool 0, which has 0 backends"
    );
    let mut no_pools = no_backends.clone();
    no_pools.pools.clear();
    let err = host.route("noop", &no_pools).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad decision: forward to pool 0, but the input has 0 pools"
    );
    assert_eq!(host.metrics("noop").unwrap().bad_outputs, 2);
    // Failing open, the built-in decision answers instead.
    let answer = host.route("noop-open", &no_backends).unwrap();
    assert!(matches!(answer.failure, Some(CallError::BadDecision(_))));
    assert_eq!(short(&no_backends, &answer.decision), "503");
    // And a decision inside the input is taken as it is.
    let one = route_input(0, &[], &["a:up:1:0"]);
    assert_eq!(
        short(&one, &host.route("noop", &one).unwrap().decision),
        "a"
    );
}
