//! The plugin benchmark (run it with `bench/plugin-bench`): the bundled
//! router called through the host against the same routing logic as a
//! plain Rust function in this process, plus the cost of instantiation and
//! the JavaScript and Python example routers when they are built.
//!
//! Prints p50 and p99 per call in nanoseconds, calls per second on one
//! core, and the ratios; the added cost is host p50 minus native p50.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use holdfast_plugin::types::router::*;
use holdfast_plugin::types::{Health, Pair};
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
            method: "GET".into(),
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
            client_addr: "198.51.100.7:53122".into(),
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

/// The bundled router's default algorithm (plugins/router/src/lib.rs),
/// as a plain function.
fn native_route(input: &RouteInput) -> RouteDecision {
    const WEIGHT_CAP: u32 = 1000;
    let Some(pool) = input.pools.first() else {
        return RouteDecision::Reject(Reject {
            status: 503,
            reason: "no such pool".into(),
        });
    };
    let mut live: Vec<&Backend> = Vec::new();
    for health in [Health::Healthy, Health::Degraded] {
        live = pool
            .backends
            .iter()
            .filter(|b| b.health == health && b.weight > 0)
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
    let weight = |b: &Backend| b.weight.min(WEIGHT_CAP);
    let total: u64 = live.iter().map(|b| u64::from(weight(b))).sum();
    let mut slot = input.request.sequence % total;
    let mut chosen = live[0];
    'rounds: for round in 0..WEIGHT_CAP {
        for b in &live {
            if weight(b) > round {
                if slot == 0 {
                    chosen = b;
                    break 'rounds;
                }
                slot -= 1;
            }
        }
    }
    RouteDecision::Forward(Forward {
        pool: pool.name.clone(),
        backend: chosen.id.clone(),
        add_headers: Vec::new(),
        set_cookie: None,
    })
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

    // Same decisions both ways.
    for i in 0..100 {
        let via_host = host
            .route("router", &input(i))
            .expect("router call")
            .decision;
        assert_eq!(via_host, native_route(&input(i)), "sequence {i}");
    }
    let inputs: Vec<RouteInput> = (0..1024).map(input).collect();
    let pick = |i: u64| &inputs[(i % 1024) as usize];

    let native = measure(n, |i| {
        black_box(native_route(black_box(pick(i))));
    });
    // The router keeps its default 1 ms deadline; on a busy machine a call
    // descheduled for longer times out, and is counted, not fatal.
    let mut failed = 0;
    let via_host = measure(n, |i| {
        failed += usize::from(black_box(host.route("router", pick(i))).is_err());
    });
    // PLUGIN_BENCH_WARM_ONLY=1 stops after the first two rows (for
    // profiling the warm call).
    if std::env::var_os("PLUGIN_BENCH_WARM_ONLY").is_some() {
        row("router, native Rust fn", &native, &native);
        row("router, Wasm via host", &via_host, &native);
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
    row("router, native Rust fn", &native, &native);
    row("router, Wasm via host", &via_host, &native);
    row("  of which instantiation", &instantiate, &native);

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
