//! Capabilities an operator grants a plugin at install, and which imports
//! each one allows.
//!
//! What real components import (checked with `jco wit` on builds of the
//! bundled and example plugins):
//! - Rust on `wasm32-wasip2`: `wasi:io/{error,poll,streams}` and
//!   `wasi:cli/{environment,exit,stdin,stdout,stderr,terminal-*}` always
//!   (the standard library's panic and exit paths); `wasi:clocks`,
//!   `wasi:filesystem` and `wasi:sockets` only when the code uses time,
//!   `std::fs` or `std::net`; `wasi:random` only for `HashMap`'s seed.
//! - JavaScript with componentize-js and `--disable stdio random clocks
//!   http fetch-event`: no WASI import at all.
//! - Python with componentize-py: every WASI interface (CPython's libc);
//!   with `--stub-wasi` none, because the tool links them to trapping stubs
//!   inside the component.
//!
//! So the baseline, always allowed, is the harmless part of `wasi:io` and
//! `wasi:cli`: the environment is empty, stdin is empty, stdout and stderr
//! go to small per-call buffers (stderr is kept for the trap report), and
//! exit ends the instance. Everything else needs a grant.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// What a plugin may reach beyond the baseline.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `wasi:clocks/*`: wall and monotonic time.
    Clocks,
    /// `wasi:random/*`: random bytes.
    Random,
    /// `wasi:filesystem/*`: read-only access to the folder the operator
    /// names, if any (without one the plugin sees no directory at all).
    Filesystem,
    /// `wasi:sockets/*`: outbound network and name lookups.
    Sockets,
}

impl Capability {
    pub const ALL: [Capability; 4] = [
        Capability::Clocks,
        Capability::Random,
        Capability::Filesystem,
        Capability::Sockets,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Clocks => "clocks",
            Capability::Random => "random",
            Capability::Filesystem => "filesystem",
            Capability::Sockets => "sockets",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Capability::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!("unknown capability `{s}` (known: clocks, random, filesystem, sockets)")
            })
    }
}

/// The capabilities granted to one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grants(BTreeSet<Capability>);

impl Grants {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn with(mut self, c: Capability) -> Self {
        self.0.insert(c);
        self
    }

    pub fn contains(&self, c: Capability) -> bool {
        self.0.contains(&c)
    }

    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<Capability> for Grants {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// What an import needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The holdfast host API or a harmless WASI interface.
    Baseline,
    Grant(Capability),
    /// Nothing holdfast provides (for example `wasi:http`).
    Unavailable,
}

/// Host interfaces of `holdfast:plugin`, without version.
const HOLDFAST_INTERFACES: [&str; 9] = [
    "types",
    "log",
    "metrics",
    "config",
    "kv",
    "router-types",
    "sql-types",
    "failover-types",
    "deploy-types",
];

const BASELINE_WASI: [&str; 13] = [
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// Classifies a component import such as `wasi:clocks/wall-clock@0.2.6`.
pub fn need_of(import: &str) -> Need {
    let (name, version) = import.split_once('@').unwrap_or((import, ""));
    if let Some(iface) = name.strip_prefix("holdfast:plugin/") {
        let known = HOLDFAST_INTERFACES.contains(&iface);
        return if known && version.starts_with("0.1.") {
            Need::Baseline
        } else {
            Need::Unavailable
        };
    }
    // WASI 0.2.x: wasmtime links any 0.2 minor version to its newest.
    if !version.starts_with("0.2.") {
        return Need::Unavailable;
    }
    if BASELINE_WASI.contains(&name) {
        return Need::Baseline;
    }
    let package = name.split('/').next().unwrap_or_default();
    match package {
        "wasi:clocks" => Need::Grant(Capability::Clocks),
        "wasi:random" => Need::Grant(Capability::Random),
        "wasi:filesystem" => Need::Grant(Capability::Filesystem),
        "wasi:sockets" => Need::Grant(Capability::Sockets),
        _ => Need::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_classified() {
        let check = |import: &str, need: Need| assert_eq!(need_of(import), need, "{import}");
        check("holdfast:plugin/kv@0.1.0", Need::Baseline);
        check("holdfast:plugin/kv@0.2.0", Need::Unavailable);
        check("holdfast:plugin/secrets@0.1.0", Need::Unavailable);
        check("wasi:cli/stderr@0.2.6", Need::Baseline);
        check("wasi:io/streams@0.2.9", Need::Baseline);
        check(
            "wasi:clocks/wall-clock@0.2.6",
            Need::Grant(Capability::Clocks),
        );
        check(
            "wasi:random/insecure-seed@0.2.0",
            Need::Grant(Capability::Random),
        );
        check(
            "wasi:filesystem/preopens@0.2.6",
            Need::Grant(Capability::Filesystem),
        );
        check("wasi:sockets/tcp@0.2.6", Need::Grant(Capability::Sockets));
        check("wasi:http/outgoing-handler@0.2.6", Need::Unavailable);
        check("wasi:cli/stderr@0.3.0", Need::Unavailable);
    }
}
