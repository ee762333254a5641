//! The plugin benchmark (run it with `bench/plugin-bench`): the bundled
//! router called through the host against the same routing logic as a
//! plain Rust function in this process, plus the cost of instantiation and
//! the JavaScript and Python example routers when they are built.
//!
//! Two inputs: what the proxy passes the router with sticky sessions (the
//! sticky cookie, four backends), and a heavier one with two headers and a
//! cookie it does not read. A plugin that forwards without reading its
//! input gives the floor: what the host and the canonical ABI cost alone.
//!
//! Prints p50 and p99 per call in nanoseconds, calls per second on one
//! core, and the ratios; the added cost is host p50 minus native p50.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use holdfast_plugin::types::router::*;
use holdfast_plugin::types::{Health, IpAddress, Pair, SocketAddress};
use holdfast_plugin::{FailMode, HostConfig, PluginHost, Settings};

fn plugins_dir() -> PathBuf {
    if let Ok(d) = std::env::var("HOLDFAST_PLUGINS_DIR") {
        return PathBuf::from(d);
    }
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("plugins")
}

/// What the proxy passes the bundled router with sticky sessions on: the
/// sticky cookie (pinned to one of four live backends) and no headers.
fn sticky_input(sequence: u64) -> RouteInput {
    let mut input = input(sequence);
    input.request.headers.clear();
    input.request.cookies[0].value = format!("web-{}", sequence % 4 + 1);
    input
}

/// A heavier request: two headers and a cookie the router does not read.
fn input(sequence: u64) -> RouteInput {
    let backend = |id: &str, weight: u32, load: u32| Backend {
        id: id.into(),
        health: Health::Healthy,
        weight,
        load,
        version: "v1".into(),
    };
    RouteInput {
        request: Request {
            method: Method::Get,
            host: "shop.example.com".into(),
            path: "/cart/checkout".into(),
            headers: vec![
                Pair {
                    name: "user-agent".into(),
                    value: "Mozilla/5.0 (X11; Linux x86_64)".into(),
                },
                Pair {
                    name: "accept".into(),
                    value: "text/html".into(),
                },
            ],
            cookies: vec![Pair {
                name: "session".into(),
                value: "3f2a9c".into(),
            }],
            client: SocketAddress {
                ip: IpAddress::Ipv4((198, 51, 100, 7)),
                port: 53122,
            },
            sequence,
        },
        pools: vec![Pool {
            name: "web".into(),
            backends: vec![
                backend("web-1", 3, 4),
                backend("web-2", 2, 1),
                backend("web-3", 1, 0),
                backend("web-4", 1, 7),
            ],
        }],
    }
}

/// The bundled router (plugins/router/src/lib.rs) as a plain function:
/// weighted round robin, with sticky cookies under the name `sticky`.
fn native_route(input: &RouteInput, sticky: Option<&str>) -> RouteDecision {
    const WEIGHT_CAP: u32 = 1000;
    let Some(pool) = input.pools.first() else {
        return RouteDecision::Reject(Reject {
            status: 503,
            reason: "no such pool".into(),
        });
    };
    let mut live: Vec<(u32, &Backend)> = Vec::new();
    for health in [Health::Healthy, Health::Degraded] {
        live = (0..)
            .zip(&pool.backends)
            .filter(|(_, b)| b.health == health && b.weight > 0)
            .collect();
        if !live.is_empty() {
            break;
        }
    }
    if live.is_empty() {
        return RouteDecision::Reject(Reject {
            status: 503,
            reason: "no live backend".into(),
        });
    }
    let forward = |backend: u32| Forward {
        pool: 0,
        backend,
        add_headers: Vec::new(),
        set_cookie: None,
    };
    if let Some(name) = sticky {
        let pinned = input.request.cookies.iter().find(|c| c.name == name);
        if let Some(&(i, _)) = pinned.and_then(|c| live.iter().find(|(_, b)| b.id == c.value)) {
            return RouteDecision::Forward(forward(i));
        }
    }
    let weight = |b: &Backend| b.weight.min(WEIGHT_CAP);
    let total: u64 = live.iter().map(|(_, b)| u64::from(weight(b))).sum();
    let mut slot = input.request.sequence % total;
    let mut chosen = live[0];
    'rounds: for round in 0..WEIGHT_CAP {
        for &(i, b) in &live {
            if weight(b) > round {
                if slot == 0 {
                    chosen = (i, b);
                    break 'rounds;
                }
                slot -= 1;
            }
        }
    }
    let mut f = forward(chosen.0);
    if let Some(name) = sticky {
        f.set_cookie = Some(SetCookie {
            name: name.into(),
            value: chosen.1.id.clone(),
            max_age_s: None,
        });
    }
    RouteDecision::Forward(f)
}

struct Stats {
    p50_ns: u64,
    p99_ns: u64,
    per_sec: f64,
}

/// Times `n` calls of `f` one by one (after `n / 10` warm-up calls).
fn measure(n: usize, mut f: impl FnMut(u64)) -> Stats {
    for i in 0..n / 10 {
        f(i as u64);
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f(i as u64);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed();
    samples.sort_unstable();
    Stats {
        p50_ns: samples[n / 2],
        p99_ns: samples[n * 99 / 100],
        per_sec: n as f64 / total.as_secs_f64(),
    }
}

fn row(name: &str, s: &Stats, base: &Stats) {
    println!(
        "{name:<34} {:>10} {:>10} {:>12.0} {:>9.1}x {:>10}",
        s.p50_ns,
        s.p99_ns,
        s.per_sec,
        s.p50_ns as f64 / base.p50_ns.max(1) as f64,
        s.p50_ns.saturating_sub(base.p50_ns),
    );
}

fn main() {
    let n: usize = std::env::var("PLUGIN_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = plugins_dir();
    let host = PluginHost::new(HostConfig {
        cache_dir: Some(dir.join("compiled")),
        ..HostConfig::default()
    })
    .expect("plugin host");
    let read = |name: &str| std::fs::read(dir.join(format!("{name}.wasm")));
    let router = read("router")
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-plugins.sh first", dir.display()));
    let closed = |deadline_ms, memory_bytes| Settings {
        fail: FailMode::Closed,
        deadline_ms,
        memory_bytes,
        ..Settings::default()
    };
    let t = Instant::now();
    host.install("router", &router, closed(None, None))
        .expect("install router");
    let install_router = t.elapsed();
    let mut sticky_settings = closed(None, None);
    sticky_settings.config = [("sticky-cookie".to_string(), "session".to_string())].into();
    host.install("sticky", &router, sticky_settings)
        .expect("install router with sticky cookies");
    let noop = read("test-noop").expect("test-noop.wasm");
    host.install("noop", &noop, closed(None, None))
        .expect("install noop");

    // Same decisions both ways.
    for i in 0..100 {
        for (plugin, cookie, input) in [
            ("router", None, input(i)),
            ("sticky", Some("session"), sticky_input(i)),
        ] {
            let via_host = host.route(plugin, &input).expect("router call").decision;
            assert_eq!(
                via_host,
                native_route(&input, cookie),
                "{plugin}, sequence {i}"
            );
        }
    }
    let inputs: Vec<RouteInput> = (0..1024).map(input).collect();
    let pick = |i: u64| &inputs[(i % 1024) as usize];
    let sticky_inputs: Vec<RouteInput> = (0..1024).map(sticky_input).collect();
    let pick_sticky = |i: u64| &sticky_inputs[(i % 1024) as usize];

    // The router keeps its default 1 ms deadline; on a busy machine a call
    // descheduled for longer times out, and is counted, not fatal.
    let mut failed = 0;
    let native_sticky = measure(n, |i| {
        black_box(native_route(black_box(pick_sticky(i)), Some("session")));
    });
    let sticky = measure(n, |i| {
        failed += usize::from(black_box(host.route("sticky", pick_sticky(i))).is_err());
    });
    let floor = measure(n, |i| {
        failed += usize::from(black_box(host.route("noop", pick_sticky(i))).is_err());
    });
    let native = measure(n, |i| {
        black_box(native_route(black_box(pick(i)), None));
    });
    let via_host = measure(n, |i| {
        failed += usize::from(black_box(host.route("router", pick(i))).is_err());
    });
    let warm_rows = || {
        row(
            "sticky router, native Rust fn",
            &native_sticky,
            &native_sticky,
        );
        row("sticky router, Wasm via host", &sticky, &native_sticky);
        row("  a plugin that reads nothing", &floor, &native_sticky);
        row("router, heavy input, native fn", &native, &native);
        row("router, heavy input, via host", &via_host, &native);
    };
    // PLUGIN_BENCH_WARM_ONLY=1 stops after the warm rows (for profiling
    // the warm call).
    if std::env::var_os("PLUGIN_BENCH_WARM_ONLY").is_some() {
        warm_rows();
        return;
    }
    let instantiate = measure(n, |_| {
        if let Err(e) = host.probe("router") {
            if failed == 0 {
                eprintln!("first failed probe: {e}");
            }
            failed += 1;
        }
    });

    println!("plugin-bench: {n} calls each, one thread; times in ns");
    println!(
        "{:<34} {:>10} {:>10} {:>12} {:>10} {:>10}",
        "", "p50", "p99", "calls/s", "p50 ratio", "added p50"
    );
    warm_rows();
    row("a new instance of the router", &instantiate, &native);

    for (name, label) in [
        ("js-router", "JS example router via host"),
        ("py-router", "Python example router via host"),
    ] {
        let Ok(bytes) = read(name) else {
            println!("{label:<34} (not built)");
            continue;
        };
        match host.install(name, &bytes, closed(None, None)) {
            Ok(_) => println!("{label:<34} installs with a router's default limits"),
            Err(e) => println!("{label:<34} with a router's default limits: {e}"),
        }
        let t = Instant::now();
        if let Err(e) = host.install(name, &bytes, closed(Some(1000), Some(128 << 20))) {
            println!("{label:<34} install failed: {e}");
            continue;
        }
        let took = t.elapsed();
        let s = measure((n / 100).max(100), |i| {
            black_box(host.route(name, pick(i)).expect("call"));
        });
        row(label, &s, &native);
        println!("{:<34} install (compile or cache load) {took:?}", "");
    }
    let clock = measure(n, |_| {
        black_box(cpu_time::ThreadTime::now());
    });
    println!(
        "thread CPU clock read (once per call): p50 {} ns",
        clock.p50_ns
    );
    let m = host.metrics("router").expect("metrics");
    println!(
        "router install (compile or cache load): {install_router:?}; calls {}, traps {}, timeouts {}, failed probes and calls {failed}",
        m.calls, m.traps, m.timeouts
    );
}
