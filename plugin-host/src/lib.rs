//! The holdfast plugin host: it checks WebAssembly components against the
//! WIT worlds in `wit/` (router, sql-router, failover-policy,
//! deploy-strategy) and the operator's grants, keeps the active and the
//! previous version of each plugin, and runs every call in a wasmtime
//! instance that has never failed (a new one, or one kept after a call that
//! succeeded) under a deadline and a memory limit, failing open or closed
//! and quarantining a plugin that keeps failing. It runs on one node: storing
//! plugins in the replicated metadata, the CLI and the HTTP API are the
//! node's job, and the proxy, binlog and deploy code are its callers.

mod bindings;
mod breaker;
mod error;
mod grants;
mod hooks;
mod host;
mod host_api;
mod metrics;
mod wire;

pub use breaker::{Breaker, PluginState};
pub use error::{CallError, Culprit, HostError, InstallError, RegistryError};
pub use grants::{need_of, Capability, Grants, Need};
pub use hooks::{DeployHook, FailoverHook, Hook, RouterHook, SqlRouterHook, World};
pub use host::{
    Answer, FailMode, HostConfig, Info, JsonAnswer, PluginHost, PluginStatus, Settings,
};
pub use host_api::CustomMetric;
pub use metrics::{MetricsSnapshot, LATENCY_BUCKETS_NS};
pub use wire::WireSize;

/// The records of each world, as generated from `wit/` (with serde).
pub mod types {
    pub use crate::bindings::router::holdfast::plugin::types::{
        Health, IpAddress, Pair, SocketAddress,
    };

    /// `router` world: [`router::RouteInput`] in, [`router::RouteDecision`] out.
    pub mod router {
        pub use crate::bindings::router::holdfast::plugin::router_types::*;
    }
    /// `sql-router` world: [`sql::SqlInput`] in, [`sql::SqlDecision`] out.
    pub mod sql {
        pub use crate::bindings::sql_router::holdfast::plugin::sql_types::*;
    }
    /// `failover-policy` world: [`failover::FailoverInput`] in, a list of
    /// [`failover::Action`] out.
    pub mod failover {
        pub use crate::bindings::failover_policy::holdfast::plugin::failover_types::*;
    }
    /// `deploy-strategy` world: [`deploy::DeployInput`] in,
    /// [`deploy::DeployDecision`] out.
    pub mod deploy {
        pub use crate::bindings::deploy_strategy::holdfast::plugin::deploy_types::*;
    }
}
