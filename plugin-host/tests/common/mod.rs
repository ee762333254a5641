//! Helpers shared by the plugin host's tests: where the built plugins are,
//! a host, and small builders for each world's input.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use holdfast_plugin::types::router::*;
use holdfast_plugin::types::{Health, IpAddress, Pair, SocketAddress};
use holdfast_plugin::{HostConfig, PluginHost, Settings};

/// This crate's folder, from the environment the test runs in (a binary
/// built from another checkout would carry that checkout's path in
/// `env!`).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The folder scripts/build-plugins.sh writes to.
pub fn plugins_dir() -> PathBuf {
    if let Ok(d) = std::env::var("HOLDFAST_PLUGINS_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest_dir().join("../target"));
    target.join("plugins")
}

/// The bytes of a built plugin, e.g. `wasm("router")`.
pub fn wasm(name: &str) -> Vec<u8> {
    let path = plugins_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first with scripts/build-plugins.sh",
            path.display()
        )
    })
}

/// A host that keeps compiled artifacts next to the plugins, so that only
/// the first test run pays for compiling the interpreter-sized ones.
pub fn host() -> PluginHost {
    PluginHost::new(HostConfig {
        cache_dir: Some(plugins_dir().join("compiled")),
        ..HostConfig::default()
    })
    .expect("plugin host")
}

/// Settings with the given config values and a deadline generous enough
/// for a debug build on a busy machine (tests about deadlines set their own).
pub fn settings(config: &[(&str, &str)]) -> Settings {
    Settings {
        deadline_ms: Some(1000),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..Settings::default()
    }
}

/// A backend written as `"id:health:weight:load"`, e.g. `"a:up:1:0"`
/// (health: up, degraded, down).
pub fn backend(spec: &str) -> Backend {
    let f: Vec<&str> = spec.split(':').collect();
    Backend {
        id: f[0].into(),
        health: match f[1] {
            "up" => Health::Healthy,
            "degraded" => Health::Degraded,
            _ => Health::Down,
        },
        weight: f[2].parse().unwrap(),
        load: f[3].parse().unwrap(),
        version: "v1".into(),
    }
}

/// A request to pool `web` of the given backends.
pub fn route_input(sequence: u64, cookies: &[(&str, &str)], backends: &[&str]) -> RouteInput {
    RouteInput {
        request: Request {
            method: Method::Get,
            host: "example.com".into(),
            path: "/".into(),
            headers: vec![],
            cookies: cookies
                .iter()
                .map(|(n, v)| Pair {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            client: client(),
            sequence,
        },
        pools: vec![Pool {
            name: "web".into(),
            backends: backends.iter().map(|b| backend(b)).collect(),
        }],
    }
}

/// The client address of every test request: 192.0.2.1:5000.
pub fn client() -> SocketAddress {
    SocketAddress {
        ip: IpAddress::Ipv4((192, 0, 2, 1)),
        port: 5000,
    }
}

/// A decision written short, with the backend by its id in `input`: `a`
/// (forward to a), `a+cookie=a` (and set sticky cookie), `503` (reject).
pub fn short(input: &RouteInput, d: &RouteDecision) -> String {
    match d {
        RouteDecision::Forward(f) => {
            let id = &input.pools[f.pool as usize].backends[f.backend as usize].id;
            match &f.set_cookie {
                Some(c) => format!("{id}+{}={}", c.name, c.value),
                None => id.clone(),
            }
        }
        RouteDecision::Reject(r) => r.status.to_string(),
        RouteDecision::Redirect(r) => format!("{}>{}", r.status, r.location),
    }
}
