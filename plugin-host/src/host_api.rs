//! What a plugin instance sees of the host: the per-call store data
//! ([`Ctx`]), the per-version state shared by its calls ([`PluginState`]:
//! settings, key-value store, custom metrics) and the host functions of the
//! `log`, `metrics`, `config` and `kv` interfaces.
//!
//! Errors *to* the plugin (a full store, a bad metric name) come back as
//! the WIT error type; going over the per-call budget of host calls is a
//! [`HostTrap`], which ends the instance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use holdfast_core::limits::{
    PLUGIN_HOST_CALLS_MAX, PLUGIN_KV_ENTRIES_MAX, PLUGIN_KV_KEY_BYTES_MAX,
    PLUGIN_KV_VALUE_BYTES_MAX, PLUGIN_LOG_LINES_MAX, PLUGIN_LOG_LINE_BYTES_MAX, PLUGIN_METRICS_MAX,
    PLUGIN_METRIC_NAME_BYTES_MAX, PLUGIN_STDIO_BYTES_MAX,
};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::router::holdfast::plugin::{config, kv, log, metrics, types};
use crate::grants::{Capability, Grants};

/// Why the host ended a plugin's instance from inside a host call.
#[derive(Debug, thiserror::Error)]
pub enum HostTrap {
    #[error("plugin made more than {max} host calls in one call")]
    TooManyHostCalls { max: u32 },
}

/// The outcome of a failed `kv` call: an error for the plugin, or a trap.
#[derive(Debug)]
pub enum KvFailure {
    ToPlugin(kv::KvError),
    Trap(HostTrap),
}

/// The outcome of a failed `metrics` call: an error for the plugin, or a trap.
#[derive(Debug)]
pub enum MetricFailure {
    ToPlugin(metrics::MetricError),
    Trap(HostTrap),
}

/// A plugin's own metric, declared by its first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CustomMetric {
    Counter(u64),
    Gauge(i64),
}

/// State of one installed version that outlives its calls.
#[derive(Debug)]
pub struct PluginState {
    pub(crate) name: String,
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) kv: Mutex<BTreeMap<String, Vec<u8>>>,
    pub(crate) metrics: Mutex<BTreeMap<String, CustomMetric>>,
    pub(crate) grants: Grants,
    pub(crate) fs_root: Option<std::path::PathBuf>,
}

impl PluginState {
    pub(crate) fn new(
        name: &str,
        config: BTreeMap<String, String>,
        grants: Grants,
        fs_root: Option<std::path::PathBuf>,
    ) -> Self {
        Self {
            name: name.to_string(),
            config,
            kv: Mutex::new(BTreeMap::new()),
            metrics: Mutex::new(BTreeMap::new()),
            grants,
            fs_root,
        }
    }

    /// The plugin's own metrics now.
    pub fn custom_metrics(&self) -> BTreeMap<String, CustomMetric> {
        lock(&self.metrics).clone()
    }
}

/// A poisoned lock here only means another call panicked in the host while
/// holding it; the maps stay consistent (every update is one insert).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Memory and table limits of one instance, and whether they were hit.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) memory_bytes: usize,
    pub(crate) table_elements: usize,
    pub(crate) memory_denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        self.memory_denied |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}

/// The data of an instance's store. An instance serves one call at a
/// time, and more calls only as long as each one succeeds.
pub(crate) struct Ctx {
    pub(crate) plugin: Arc<PluginState>,
    pub(crate) limiter: Limiter,
    /// The running call's deadline and start, and the thread's CPU clock
    /// and the wall clock when the deadline was first reached.
    pub(crate) deadline: std::time::Duration,
    pub(crate) wall_started: std::time::Instant,
    first_fire: Option<(std::time::Duration, std::time::Instant)>,
    host_calls: u32,
    log_lines: u32,
    pub(crate) logs_dropped: u32,
    /// Built on first use: most calls never touch WASI.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) stderr: Option<MemoryOutputPipe>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("plugin", &self.plugin.name)
            .field("host_calls", &self.host_calls)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub(crate) fn new(
        plugin: Arc<PluginState>,
        memory_bytes: usize,
        table_elements: usize,
        deadline: std::time::Duration,
    ) -> Self {
        Self {
            plugin,
            deadline,
            wall_started: std::time::Instant::now(),
            first_fire: None,
            limiter: Limiter {
                memory_bytes,
                table_elements,
                memory_denied: false,
            },
            host_calls: 0,
            log_lines: 0,
            logs_dropped: 0,
            wasi: None,
            table: ResourceTable::new(),
            stderr: None,
        }
    }

    /// Starts a call on the current thread: fresh budgets and clocks.
    pub(crate) fn begin_call(&mut self, started: std::time::Instant) {
        self.host_calls = 0;
        self.log_lines = 0;
        self.logs_dropped = 0;
        self.limiter.memory_denied = false;
        self.wall_started = started;
        self.first_fire = None;
    }

    /// Called each time the epoch passes the call's deadline: whether to
    /// stop it. The deadline is meant in CPU time of the calling thread, so
    /// that a call the kernel descheduled on a busy node is not blamed for
    /// it. Reading that clock is a system call (about 0.5 us here), too
    /// dear for every call; so it is read only once the wall-clock deadline
    /// has passed: at the first expiry, and at each tick after. The share
    /// of the tick the thread ran, applied to the time before the first
    /// expiry, estimates the CPU time spent then. A plugin that spins on an
    /// idle machine stops one tick after its deadline; wall-clock time is
    /// cut off at `wall_factor` times the deadline whatever happens.
    pub(crate) fn past_deadline(&mut self, wall_factor: u32) -> bool {
        let now = std::time::Instant::now();
        if now.duration_since(self.wall_started) >= self.deadline * wall_factor {
            return true;
        }
        let cpu = cpu_time::ThreadTime::now().as_duration();
        let Some((cpu0, wall0)) = self.first_fire else {
            self.first_fire = Some((cpu, now));
            return false;
        };
        let ran = cpu.saturating_sub(cpu0);
        let tick = now.duration_since(wall0);
        let share = if tick.is_zero() {
            1.0
        } else {
            (ran.as_secs_f64() / tick.as_secs_f64()).min(1.0)
        };
        let before = wall0.duration_since(self.wall_started).mul_f64(share);
        before + ran >= self.deadline
    }

    /// Counts a host call against the per-call budget.
    fn host_call(&mut self) -> Result<(), HostTrap> {
        self.host_calls += 1;
        if self.host_calls > PLUGIN_HOST_CALLS_MAX {
            return Err(HostTrap::TooManyHostCalls {
                max: PLUGIN_HOST_CALLS_MAX,
            });
        }
        Ok(())
    }

    /// What the plugin wrote to stderr in this call (a panic message).
    pub(crate) fn stderr_text(&self) -> String {
        self.stderr
            .as_ref()
            .map(|p| String::from_utf8_lossy(&p.contents()).trim().to_string())
            .unwrap_or_default()
    }

    fn build_wasi(&mut self) -> WasiCtx {
        // Deny by default: no environment, no arguments, stdin empty,
        // stdout and stderr into small in-memory buffers, no preopened
        // directory and no network. Clocks and randomness are always wired,
        // but a plugin can only reach them if its imports passed the grant
        // check at install.
        let stderr = MemoryOutputPipe::new(PLUGIN_STDIO_BYTES_MAX);
        self.stderr = Some(stderr.clone());
        let mut b = WasiCtxBuilder::new();
        b.stdout(MemoryOutputPipe::new(PLUGIN_STDIO_BYTES_MAX))
            .stderr(stderr);
        let grants = &self.plugin.grants;
        if grants.contains(Capability::Filesystem) {
            if let Some(root) = &self.plugin.fs_root {
                // A missing folder leaves the plugin without one; the
                // operator sees it in the plugin's own errors.
                let _ = b.preopened_dir(root, "/", wasmtime_wasi::FsPerms::ReadOnly);
            }
        }
        if grants.contains(Capability::Sockets) {
            b.inherit_network().allow_ip_name_lookup(true);
        }
        b.build()
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        if self.wasi.is_none() {
            let wasi = self.build_wasi();
            self.wasi = Some(wasi);
        }
        WasiCtxView {
            ctx: self.wasi.as_mut().expect("built above"),
            table: &mut self.table,
        }
    }
}

impl types::Host for Ctx {}

impl log::Host for Ctx {
    fn log(&mut self, level: log::Level, mut message: String) -> wasmtime::Result<()> {
        self.host_call()?;
        if self.log_lines >= PLUGIN_LOG_LINES_MAX {
            self.logs_dropped += 1;
            return Ok(());
        }
        self.log_lines += 1;
        if message.len() > PLUGIN_LOG_LINE_BYTES_MAX {
            let mut cut = PLUGIN_LOG_LINE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = self.plugin.name.as_str();
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

impl Ctx {
    fn metric(
        &mut self,
        name: &str,
        update: impl FnOnce(Option<CustomMetric>) -> Option<CustomMetric>,
    ) -> Result<(), MetricFailure> {
        self.host_call().map_err(MetricFailure::Trap)?;
        let valid = !name.is_empty()
            && name.len() <= PLUGIN_METRIC_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if !valid {
            return Err(MetricFailure::ToPlugin(metrics::MetricError::BadName));
        }
        let mut all = lock(&self.plugin.metrics);
        let current = all.get(name).copied();
        if current.is_none() && all.len() >= PLUGIN_METRICS_MAX {
            return Err(MetricFailure::ToPlugin(metrics::MetricError::TooMany));
        }
        // A name keeps the kind it was declared with.
        let Some(new) = update(current) else {
            return Err(MetricFailure::ToPlugin(metrics::MetricError::BadName));
        };
        all.insert(name.to_string(), new);
        Ok(())
    }
}

impl metrics::Host for Ctx {
    fn counter_add(&mut self, name: String, delta: u64) -> Result<(), MetricFailure> {
        self.metric(&name, |m| match m {
            None => Some(CustomMetric::Counter(delta)),
            Some(CustomMetric::Counter(v)) => Some(CustomMetric::Counter(v.saturating_add(delta))),
            Some(CustomMetric::Gauge(_)) => None,
        })
    }

    fn gauge_set(&mut self, name: String, value: i64) -> Result<(), MetricFailure> {
        self.metric(&name, |m| match m {
            None | Some(CustomMetric::Gauge(_)) => Some(CustomMetric::Gauge(value)),
            Some(CustomMetric::Counter(_)) => None,
        })
    }

    fn convert_metric_error(
        &mut self,
        err: MetricFailure,
    ) -> wasmtime::Result<metrics::MetricError> {
        match err {
            MetricFailure::ToPlugin(e) => Ok(e),
            MetricFailure::Trap(t) => Err(wasmtime::Error::new(t)),
        }
    }
}

impl config::Host for Ctx {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.host_call()?;
        Ok(self.plugin.config.get(&key).cloned())
    }
}

impl kv::Host for Ctx {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.host_call()?;
        Ok(lock(&self.plugin.kv).get(&key).cloned())
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), KvFailure> {
        self.host_call().map_err(KvFailure::Trap)?;
        if key.len() > PLUGIN_KV_KEY_BYTES_MAX {
            return Err(KvFailure::ToPlugin(kv::KvError::KeyTooLarge));
        }
        if value.len() > PLUGIN_KV_VALUE_BYTES_MAX {
            return Err(KvFailure::ToPlugin(kv::KvError::ValueTooLarge));
        }
        let mut store = lock(&self.plugin.kv);
        if !store.contains_key(&key) && store.len() >= PLUGIN_KV_ENTRIES_MAX {
            return Err(KvFailure::ToPlugin(kv::KvError::Full));
        }
        store.insert(key, value);
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.host_call()?;
        lock(&self.plugin.kv).remove(&key);
        Ok(())
    }

    fn convert_kv_error(&mut self, err: KvFailure) -> wasmtime::Result<kv::KvError> {
        match err {
            KvFailure::ToPlugin(e) => Ok(e),
            KvFailure::Trap(t) => Err(wasmtime::Error::new(t)),
        }
    }
}
