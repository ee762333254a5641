//! Host-side bindings generated from `wit/`, one module per world. The
//! interfaces every world imports (types, log, metrics, config, kv) are
//! generated once, in `router`, and shared by the other worlds.
//!
//! Every import is trappable: a host function returns `wasmtime::Result`,
//! whose `Err` ends the instance (a trap). The WIT errors of `kv` and
//! `metrics` travel as [`crate::host_api::KvFailure`] and
//! [`crate::host_api::MetricFailure`], which are either returned to the
//! plugin as its WIT error or turned into a trap, never confused.

pub mod router {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router",
        imports: { default: trappable },
        trappable_error_type: {
            "holdfast:plugin/kv.kv-error" => crate::host_api::KvFailure,
            "holdfast:plugin/metrics.metric-error" => crate::host_api::MetricFailure,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

pub mod sql_router {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sql-router",
        imports: { default: trappable },
        with: {
            "holdfast:plugin/types": crate::bindings::router::holdfast::plugin::types,
            "holdfast:plugin/log": crate::bindings::router::holdfast::plugin::log,
            "holdfast:plugin/metrics": crate::bindings::router::holdfast::plugin::metrics,
            "holdfast:plugin/config": crate::bindings::router::holdfast::plugin::config,
            "holdfast:plugin/kv": crate::bindings::router::holdfast::plugin::kv,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

pub mod failover_policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "failover-policy",
        imports: { default: trappable },
        with: {
            "holdfast:plugin/types": crate::bindings::router::holdfast::plugin::types,
            "holdfast:plugin/log": crate::bindings::router::holdfast::plugin::log,
            "holdfast:plugin/metrics": crate::bindings::router::holdfast::plugin::metrics,
            "holdfast:plugin/config": crate::bindings::router::holdfast::plugin::config,
            "holdfast:plugin/kv": crate::bindings::router::holdfast::plugin::kv,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

pub mod deploy_strategy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "deploy-strategy",
        imports: { default: trappable },
        with: {
            "holdfast:plugin/log": crate::bindings::router::holdfast::plugin::log,
            "holdfast:plugin/metrics": crate::bindings::router::holdfast::plugin::metrics,
            "holdfast:plugin/config": crate::bindings::router::holdfast::plugin::config,
            "holdfast:plugin/kv": crate::bindings::router::holdfast::plugin::kv,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}
