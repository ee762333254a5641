//! The plugin host: one wasmtime engine (pooling allocator, epoch
//! interruption), the linker with the host API and the WASI baseline, the
//! compiled-artifact cache, and the registry of installed plugins with
//! their active and previous versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use holdfast_core::limits::{
    PLUGINS_MAX, PLUGIN_COMPONENT_BYTES_MAX, PLUGIN_CONFIG_ENTRIES_MAX,
    PLUGIN_CONFIG_KEY_BYTES_MAX, PLUGIN_CONFIG_VALUE_BYTES_MAX, PLUGIN_DEADLINE_MS_MAX,
    PLUGIN_DEADLINE_WALL_FACTOR, PLUGIN_EPOCH_TICK_US, PLUGIN_IDLE_INSTANCES_MAX,
    PLUGIN_IDLE_PER_VERSION_MAX, PLUGIN_INPUT_BYTES_MAX, PLUGIN_INSTANCES_MAX,
    PLUGIN_MEMORY_BYTES_MAX, PLUGIN_OUTPUT_BYTES_MAX, PLUGIN_POLICY_DEADLINE_MS,
    PLUGIN_POLICY_MEMORY_BYTES, PLUGIN_QUARANTINE_FAILURES, PLUGIN_QUARANTINE_WINDOW_MS,
    PLUGIN_ROUTER_DEADLINE_MS, PLUGIN_ROUTER_MEMORY_BYTES, PLUGIN_TABLE_ELEMENTS_MAX,
};
use serde::Serialize;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::bindings::router::holdfast::plugin as api;
use crate::breaker::{Breaker, PluginState as State};
use crate::error::{one_line, CallError, HostError, InstallError, RegistryError};
use crate::grants::{need_of, Capability, Grants, Need};
use crate::hooks::{Bound, DeployHook, FailoverHook, Hook, Pre, RouterHook, SqlRouterHook, World};
use crate::host_api::{Ctx, CustomMetric, PluginState};
use crate::metrics::{Metrics, MetricsSnapshot, Outcome};
use crate::wire::WireSize;

/// Node-wide settings of the host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where compiled artifacts are kept, by blake3 of the component; none
    /// means compile at every install.
    pub cache_dir: Option<PathBuf>,
    /// K and T of quarantine: K failures within T milliseconds.
    pub quarantine_failures: usize,
    pub quarantine_window_ms: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            quarantine_failures: PLUGIN_QUARANTINE_FAILURES,
            quarantine_window_ms: PLUGIN_QUARANTINE_WINDOW_MS,
        }
    }
}

/// What a failing plugin's callers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// The built-in default decision, with the error beside it.
    #[default]
    Open,
    /// The error.
    Closed,
}

impl FailMode {
    pub fn name(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(FailMode::Open),
            "closed" => Ok(FailMode::Closed),
            _ => Err(format!("unknown fail mode `{s}` (open or closed)")),
        }
    }
}

/// An operator's settings for one installed version.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub grants: Grants,
    pub fail: FailMode,
    /// Per-call deadline; default by world, at most `PLUGIN_DEADLINE_MS_MAX`.
    pub deadline_ms: Option<u64>,
    /// Memory limit; default by world, at most `PLUGIN_MEMORY_BYTES_MAX`.
    pub memory_bytes: Option<u64>,
    /// Values the plugin reads through `config.get`.
    pub config: BTreeMap<String, String>,
    /// With the `filesystem` grant, the folder the plugin sees (read-only)
    /// as `/`.
    pub fs_root: Option<PathBuf>,
    /// Refuse the component unless it implements this world.
    pub world: Option<World>,
}

/// What validation found out about a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Info {
    pub world: World,
    /// Every import, as `package/interface@version`.
    pub imports: Vec<String>,
    /// The capabilities those imports need.
    pub needs: Vec<Capability>,
    /// blake3 of the component's bytes, hex.
    pub hash: String,
}

/// A decision and who made it.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub decision: T,
    /// The version that was asked (every call asks exactly one).
    pub version: u64,
    /// Set when the plugin failed and the built-in decision answered.
    pub failure: Option<CallError>,
}

/// The JSON form of an [`Answer`], for `holdfast plugin test`.
#[derive(Debug, Clone, Serialize)]
pub struct JsonAnswer {
    pub decision: serde_json::Value,
    pub version: u64,
    pub failure: Option<String>,
}

/// One row of `holdfast plugin list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub world: World,
    pub version: u64,
    pub hash: String,
    pub grants: Vec<Capability>,
    pub state: State,
    pub calls: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub fail: FailMode,
    pub previous_version: Option<u64>,
}

/// One installed version, ready to instantiate.
#[derive(Debug)]
struct Version {
    number: u64,
    hash: String,
    pre: Pre,
    state: Arc<PluginState>,
    fail: FailMode,
    deadline_ms: u64,
    deadline_ticks: u64,
    memory_bytes: u64,
    /// Instances that finished their last call cleanly, ready for the next.
    idle: Mutex<Vec<Instance>>,
}

/// An instance with its store. Each one holds a slot of the pooling
/// allocator, so idle ones are bounded per version and per host.
struct Instance {
    store: Store<Ctx>,
    bound: Bound,
    /// Set while counted in the host's idle total.
    idle: Option<IdleToken>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instance")
    }
}

/// Gives an idle instance's place in the host's count back when dropped.
#[derive(Debug)]
struct IdleToken(Arc<AtomicUsize>);

impl Drop for IdleToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Slot {
    active: Arc<Version>,
    previous: Option<Arc<Version>>,
    last_number: u64,
}

/// A plugin name with its versions, quarantine record and metrics.
#[derive(Debug)]
struct Entry {
    world: World,
    slot: Mutex<Slot>,
    breaker: Mutex<Breaker>,
    metrics: Metrics,
}

/// Locks that only guard plain data stay usable after a panic elsewhere.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Entry {
    fn active(&self) -> Arc<Version> {
        lock(&self.slot).active.clone()
    }
}

/// Advances the engine's epoch every `PLUGIN_EPOCH_TICK_US` while calls
/// run, and for `LINGER_TICKS` after the last one (so that a stream of
/// calls does not wake the thread for each), then sleeps until the next.
#[derive(Debug)]
struct Ticker {
    shared: Arc<TickShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct TickShared {
    running: AtomicUsize,
    parked: AtomicBool,
    stop: AtomicBool,
}

/// About 100 ms at 250 us per tick.
const LINGER_TICKS: u32 = 400;

struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.shared.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    fn start(engine: Engine) -> Result<Self, HostError> {
        let shared = Arc::new(TickShared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                let tick = Duration::from_micros(PLUGIN_EPOCH_TICK_US);
                let mut quiet = 0;
                while !s.stop.load(Ordering::SeqCst) {
                    if s.running.load(Ordering::SeqCst) > 0 {
                        quiet = 0;
                    } else if quiet >= LINGER_TICKS {
                        // Announce the nap, then look again: a call that
                        // started in between either sees `parked` and
                        // unparks, or is seen here.
                        s.parked.store(true, Ordering::SeqCst);
                        if s.running.load(Ordering::SeqCst) == 0 && !s.stop.load(Ordering::SeqCst) {
                            std::thread::park();
                        }
                        s.parked.store(false, Ordering::SeqCst);
                        quiet = 0;
                        continue;
                    } else {
                        quiet += 1;
                    }
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| HostError::Ticker(e.to_string()))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn enter(&self) -> Running<'_> {
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        // A plain load first: the swap writes the line the ticker reads.
        if self.shared.parked.load(Ordering::SeqCst)
            && self.shared.parked.swap(false, Ordering::SeqCst)
        {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
        Running(self)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The plugin host of one node.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<Ctx>,
    config: HostConfig,
    plugins: RwLock<BTreeMap<String, Arc<Entry>>>,
    started: Instant,
    /// Idle instances across all plugins.
    idle: Arc<AtomicUsize>,
    ticker: Ticker,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const TYPE_ONLY_INTERFACES: [&str; 5] = [
    "holdfast:plugin/types@0.1.0",
    "holdfast:plugin/router-types@0.1.0",
    "holdfast:plugin/sql-types@0.1.0",
    "holdfast:plugin/failover-types@0.1.0",
    "holdfast:plugin/deploy-types@0.1.0",
];

impl PluginHost {
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(PLUGIN_INSTANCES_MAX)
            // Interpreter-based components (Python, JavaScript) are made of
            // several core modules, each with its own instance and tables.
            .total_core_instances(PLUGIN_INSTANCES_MAX * 16)
            .max_core_instances_per_component(64)
            .total_memories(PLUGIN_INSTANCES_MAX * 2)
            .max_memories_per_component(4)
            .total_tables(PLUGIN_INSTANCES_MAX * 8)
            .max_tables_per_component(16)
            .table_elements(PLUGIN_TABLE_ELEMENTS_MAX)
            .max_memory_size(PLUGIN_MEMORY_BYTES_MAX as usize);
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            // A trap's message and the plugin's stderr say enough; walking
            // the stack on every trap would make a trapping plugin costlier.
            .wasm_backtrace_max_frames(None)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // For `perf`: names the plugins' functions in /tmp/perf-PID.map
        // (from the component's name section, when it kept one).
        if std::env::var_os("HOLDFAST_PLUGIN_PERFMAP").is_some() {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&cfg).map_err(|e| HostError::Engine(one_line(&e)))?;

        let mut linker: Linker<Ctx> = Linker::new(&engine);
        let link = |e: wasmtime::Error| HostError::Link(one_line(&e));
        type Me = wasmtime::component::HasSelf<Ctx>;
        api::log::add_to_linker::<Ctx, Me>(&mut linker, |c| c).map_err(link)?;
        api::metrics::add_to_linker::<Ctx, Me>(&mut linker, |c| c).map_err(link)?;
        api::config::add_to_linker::<Ctx, Me>(&mut linker, |c| c).map_err(link)?;
        api::kv::add_to_linker::<Ctx, Me>(&mut linker, |c| c).map_err(link)?;
        for name in TYPE_ONLY_INTERFACES {
            linker.instance(name).map_err(link)?;
        }
        // All of WASI p2 is linked; which parts a plugin may import is
        // decided per plugin at install (grants.rs), and what the linked
        // parts can reach is decided per call (Ctx's WasiCtx).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link)?;

        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| HostError::Cache {
                path: dir.display().to_string(),
                error: e.to_string(),
            })?;
        }
        let ticker = Ticker::start(engine.clone())?;
        Ok(Self {
            engine,
            linker,
            config,
            plugins: RwLock::new(BTreeMap::new()),
            started: Instant::now(),
            idle: Arc::new(AtomicUsize::new(0)),
            ticker,
        })
    }

    /// Milliseconds since the host started: the clock of quarantine.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Checks a component without installing it: bytes, component layer,
    /// imports against `grants`, and world.
    pub fn validate(&self, bytes: &[u8], grants: &Grants) -> Result<Info, InstallError> {
        self.prepare(bytes, grants, None).map(|(info, _)| info)
    }

    fn prepare(
        &self,
        bytes: &[u8],
        grants: &Grants,
        expect: Option<World>,
    ) -> Result<(Info, Pre), InstallError> {
        if bytes.len() > PLUGIN_COMPONENT_BYTES_MAX {
            return Err(InstallError::TooLarge {
                bytes: bytes.len(),
                max: PLUGIN_COMPONENT_BYTES_MAX,
            });
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(InstallError::NotWasm);
        }
        // Bytes 4..8: version 1 and layer 0 for a core module; layer 1
        // for a component.
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(InstallError::CoreModule);
        }
        let hash = blake3::hash(bytes).to_hex().to_string();
        let component = self.compile(bytes, &hash)?;

        let ty = component.component_type();
        let mut imports = Vec::new();
        let mut needs = Vec::new();
        for (name, _) in ty.imports(&self.engine) {
            match need_of(name) {
                Need::Baseline => {}
                Need::Unavailable => return Err(InstallError::Unavailable(name.to_string())),
                Need::Grant(c) if !grants.contains(c) => {
                    return Err(InstallError::NotGranted {
                        import: name.to_string(),
                        capability: c,
                    })
                }
                Need::Grant(c) => {
                    if !needs.contains(&c) {
                        needs.push(c);
                    }
                }
            }
            imports.push(name.to_string());
        }
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            InstallError::Malformed(format!("imports do not match holdfast's: {}", one_line(&e)))
        })?;

        let mut mismatches = Vec::new();
        for world in World::ALL {
            if expect.is_some_and(|w| w != world) || !exports.iter().any(|e| e == world.export()) {
                continue;
            }
            match Pre::new(world, pre.clone()) {
                Ok(p) => {
                    let info = Info {
                        world,
                        imports,
                        needs,
                        hash,
                    };
                    return Ok((info, p));
                }
                Err(e) => mismatches.push((world, one_line(&e))),
            }
        }
        if let Some((world, detail)) = mismatches.into_iter().next() {
            return Err(InstallError::WrongWorld {
                world,
                export: world.export().to_string(),
                detail,
            });
        }
        if let Some(world) = expect {
            return Err(InstallError::WrongWorld {
                world,
                export: world.export().to_string(),
                detail: format!("no such export; it exports: {}", exports.join(", ")),
            });
        }
        Err(InstallError::NoWorld(if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        }))
    }

    /// Compiles `bytes`, or loads the artifact compiled earlier from the
    /// cache.
    fn compile(&self, bytes: &[u8], hash: &str) -> Result<Component, InstallError> {
        if let Some(c) = self.installed_component(hash) {
            return Ok(c);
        }
        let Some(dir) = &self.config.cache_dir else {
            return Component::new(&self.engine, bytes)
                .map_err(|e| InstallError::Malformed(one_line(&e)));
        };
        let path = dir.join(format!("{hash}-{}.cwasm", self.engine_tag()));
        if path.exists() {
            // `deserialize_file` trusts the file to be an artifact that
            // wasmtime produced. The cache folder belongs to the node; only
            // `store_artifact` below writes into it, with the output of
            // `Component::serialize` from an engine of this configuration
            // (the file name carries the engine's compatibility hash and the
            // blake3 of the source bytes), renamed into place only once
            // complete. Whoever can write this folder can also replace the
            // holdfast binary.
            // SAFETY: the file is our own serialized artifact (see above);
            // wasmtime still checks its header and refuses a mismatch.
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize_file(&self.engine, &path) };
            match loaded {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %one_line(&e), "dropping unusable cached plugin artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| InstallError::Malformed(one_line(&e)))?;
        let artifact = component
            .serialize()
            .map_err(|e| InstallError::Cache(one_line(&e)))?;
        store_artifact(&path, &artifact).map_err(|e| InstallError::Cache(e.to_string()))?;
        Ok(component)
    }

    /// The compiled component of an installed version with these bytes.
    fn installed_component(&self, hash: &str) -> Option<Component> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        plugins.values().find_map(|e| {
            let slot = lock(&e.slot);
            std::iter::once(&slot.active)
                .chain(slot.previous.as_ref())
                .find(|v| v.hash == hash)
                .map(|v| v.pre.component())
        })
    }

    fn engine_tag(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Installs `bytes` as the new active version of plugin `name`; the
    /// version that was active stays as the previous one. Calls already
    /// running finish on the version they started on.
    pub fn install(
        &self,
        name: &str,
        bytes: &[u8],
        settings: Settings,
    ) -> Result<PluginStatus, InstallError> {
        self.install_version(name, None, bytes, settings)
    }

    /// [`PluginHost::install`] with the version number chosen by the
    /// caller (the cluster's plugin store, so that every node numbers a
    /// version alike); it must be above every number the name had.
    pub fn install_version(
        &self,
        name: &str,
        number: Option<u64>,
        bytes: &[u8],
        settings: Settings,
    ) -> Result<PluginStatus, InstallError> {
        let (info, version) = self.build(name, bytes, settings)?;
        self.register(name, number, info, version)
    }

    /// Everything an install checks, without installing: the name, the
    /// settings, the component against its world and grants, and a trial
    /// start under the plugin's limits. The compiled artifact is cached, so
    /// that the install that follows does not compile again.
    pub fn check(
        &self,
        name: &str,
        bytes: &[u8],
        settings: Settings,
    ) -> Result<Info, InstallError> {
        self.build(name, bytes, settings).map(|(info, _)| info)
    }

    /// A version ready to register, with one idle instance parked.
    fn build(
        &self,
        name: &str,
        bytes: &[u8],
        settings: Settings,
    ) -> Result<(Info, Version), InstallError> {
        check_name(name)?;
        check_config(&settings.config)?;
        let (info, pre) = self.prepare(bytes, &settings.grants, settings.world)?;
        let router = info.world.is_router();
        let deadline_ms = settings.deadline_ms.unwrap_or(if router {
            PLUGIN_ROUTER_DEADLINE_MS
        } else {
            PLUGIN_POLICY_DEADLINE_MS
        });
        if deadline_ms == 0 || deadline_ms > PLUGIN_DEADLINE_MS_MAX {
            return Err(InstallError::BadSetting(format!(
                "deadline {deadline_ms} ms: 1 to {PLUGIN_DEADLINE_MS_MAX} allowed"
            )));
        }
        let memory_bytes = settings.memory_bytes.unwrap_or(if router {
            PLUGIN_ROUTER_MEMORY_BYTES
        } else {
            PLUGIN_POLICY_MEMORY_BYTES
        });
        if !(64 << 10..=PLUGIN_MEMORY_BYTES_MAX).contains(&memory_bytes) {
            return Err(InstallError::BadSetting(format!(
                "memory {memory_bytes} bytes: 64 KiB to {PLUGIN_MEMORY_BYTES_MAX} allowed"
            )));
        }
        let state = Arc::new(PluginState::new(
            name,
            settings.config,
            settings.grants.clone(),
            settings.fs_root,
        ));
        let tick_us = PLUGIN_EPOCH_TICK_US;
        let version = Version {
            number: 0,
            hash: info.hash.clone(),
            pre,
            state,
            fail: settings.fail,
            deadline_ms,
            // One more tick: the current one may be about to end.
            deadline_ticks: (deadline_ms * 1000).div_ceil(tick_us) + 1,
            memory_bytes,
            idle: Mutex::new(Vec::new()),
        };
        // A trial instantiation, under the plugin's own limits: a plugin
        // that cannot even start (memory above its limit, a trapping start
        // function) is refused now rather than at its first call.
        // The instance is kept as the first idle one.
        // It checks that the plugin can start, not how fast: the first
        // instance of a component also builds its memory image, so it runs
        // under the longest deadline allowed.
        let trial = {
            let _running = self.ticker.enter();
            let mut store = self.store(&version, Instant::now());
            let longest = Duration::from_millis(PLUGIN_DEADLINE_MS_MAX);
            store.data_mut().deadline = longest;
            store.set_epoch_deadline((PLUGIN_DEADLINE_MS_MAX * 1000).div_ceil(tick_us) + 1);
            let bound = version
                .pre
                .instantiate(&mut store)
                .map_err(|e| InstallError::Start(classify(&e, &store, &version).to_string()))?;
            store.data_mut().deadline = Duration::from_millis(deadline_ms);
            Instance {
                store,
                bound,
                idle: None,
            }
        };
        self.park(&version, trial);
        Ok((info, version))
    }

    fn register(
        &self,
        name: &str,
        number: Option<u64>,
        info: Info,
        mut version: Version,
    ) -> Result<PluginStatus, InstallError> {
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        let entry = match plugins.get(name) {
            Some(entry) => {
                if entry.world != info.world {
                    return Err(InstallError::WorldChanged {
                        name: name.to_string(),
                        installed: entry.world,
                        new: info.world,
                    });
                }
                let mut slot = lock(&entry.slot);
                let next = number.unwrap_or(slot.last_number + 1);
                if next <= slot.last_number {
                    return Err(InstallError::BadSetting(format!(
                        "version {next} of `{name}` is not above {}",
                        slot.last_number
                    )));
                }
                slot.last_number = next;
                version.number = next;
                let old = std::mem::replace(&mut slot.active, Arc::new(version));
                // The previous version waits for a rollback without
                // holding instance slots.
                lock(&old.idle).clear();
                slot.previous = Some(old);
                drop(slot);
                lock(&entry.breaker).reinstate();
                entry.clone()
            }
            None => {
                if plugins.len() >= PLUGINS_MAX {
                    return Err(InstallError::Full(PLUGINS_MAX));
                }
                version.number = number.unwrap_or(1).max(1);
                let first = version.number;
                let entry = Arc::new(Entry {
                    world: info.world,
                    slot: Mutex::new(Slot {
                        active: Arc::new(version),
                        previous: None,
                        last_number: first,
                    }),
                    breaker: Mutex::new(Breaker::new(
                        self.config.quarantine_failures,
                        self.config.quarantine_window_ms,
                    )),
                    metrics: Metrics::default(),
                });
                plugins.insert(name.to_string(), entry.clone());
                entry
            }
        };
        drop(plugins);
        let status = status_of(name, &entry);
        tracing::info!(plugin = name, world = %info.world, version = status.version, hash = %info.hash, "plugin installed");
        Ok(status)
    }

    /// Makes the previous version active again (and the active one the
    /// previous, so that a second rollback undoes the first).
    pub fn rollback(&self, name: &str) -> Result<PluginStatus, RegistryError> {
        let entry = self
            .entry(name)
            .map_err(|_| RegistryError::NoSuchPlugin(name.into()))?;
        {
            let mut slot = lock(&entry.slot);
            let Some(previous) = slot.previous.take() else {
                return Err(RegistryError::NoPrevious(name.into()));
            };
            let current = std::mem::replace(&mut slot.active, previous);
            lock(&current.idle).clear();
            slot.previous = Some(current);
        }
        lock(&entry.breaker).reinstate();
        let status = status_of(name, &entry);
        tracing::info!(
            plugin = name,
            version = status.version,
            "plugin rolled back"
        );
        Ok(status)
    }

    /// Removes a plugin; calls already running finish.
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        plugins
            .remove(name)
            .map(drop)
            .ok_or_else(|| RegistryError::NoSuchPlugin(name.into()))
    }

    /// Takes a plugin out of quarantine.
    pub fn reinstate(&self, name: &str) -> Result<PluginStatus, RegistryError> {
        let entry = self
            .entry(name)
            .map_err(|_| RegistryError::NoSuchPlugin(name.into()))?;
        lock(&entry.breaker).reinstate();
        Ok(status_of(name, &entry))
    }

    /// Every plugin, by name.
    pub fn list(&self) -> Vec<PluginStatus> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        plugins.iter().map(|(n, e)| status_of(n, e)).collect()
    }

    pub fn status(&self, name: &str) -> Option<PluginStatus> {
        self.entry(name).ok().map(|e| status_of(name, &e))
    }

    /// Call metrics of a plugin, all versions together.
    pub fn metrics(&self, name: &str) -> Option<MetricsSnapshot> {
        self.entry(name).ok().map(|e| e.metrics.snapshot())
    }

    /// The plugin's own metrics (from its `metrics` imports), active version.
    pub fn custom_metrics(&self, name: &str) -> Option<BTreeMap<String, CustomMetric>> {
        self.entry(name)
            .ok()
            .map(|e| e.active().state.custom_metrics())
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, CallError> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        plugins
            .get(name)
            .cloned()
            .ok_or_else(|| CallError::NoSuchPlugin(name.into()))
    }

    /// A store for instances of `v`, with its limits.
    fn store(&self, v: &Version, started: Instant) -> Store<Ctx> {
        let ctx = Ctx::new(
            v.state.clone(),
            usize::try_from(v.memory_bytes).unwrap_or(usize::MAX),
            PLUGIN_TABLE_ELEMENTS_MAX,
            Duration::from_millis(v.deadline_ms),
        );
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|c| &mut c.limiter);
        // The epoch ticks in wall-clock time. Once a call reaches its
        // deadline, it is extended tick by tick while the thread has (by
        // `Ctx::past_deadline`'s estimate) used less CPU time than the
        // deadline, up to a wall-clock cut-off.
        let wall_factor = u32::try_from(PLUGIN_DEADLINE_WALL_FACTOR).unwrap_or(u32::MAX);
        store.epoch_deadline_callback(move |mut ctx| {
            Ok(if ctx.data_mut().past_deadline(wall_factor) {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Continue(1)
            })
        });
        store.data_mut().begin_call(started);
        store.set_epoch_deadline(v.deadline_ticks);
        store
    }

    /// Asks plugin `name` for a decision. The call runs on an instance
    /// kept from an earlier call that succeeded, or on a new one; an
    /// instance that failed in any way is dropped, so a trap cannot leave
    /// state behind for the next call.
    pub fn call<H: Hook>(
        &self,
        name: &str,
        input: &H::Input,
    ) -> Result<Answer<H::Output>, CallError> {
        let entry = self.entry(name)?;
        if entry.world != H::WORLD {
            return Err(CallError::WrongWorld {
                name: name.into(),
                expected: H::WORLD,
                actual: entry.world,
            });
        }
        let bytes = input.wire_bytes();
        if bytes > PLUGIN_INPUT_BYTES_MAX {
            entry.metrics.rejected_input();
            return Err(CallError::InputTooLarge {
                bytes,
                max: PLUGIN_INPUT_BYTES_MAX,
            });
        }
        let version = entry.active();
        if lock(&entry.breaker).state() == State::Quarantined {
            entry.metrics.skipped_quarantined();
            return fail::<H>(&entry, &version, input, CallError::Quarantined(name.into()));
        }
        let started = Instant::now();
        let result = self.invoke::<H>(&version, input, started);
        let took = started.elapsed();
        let outcome = match &result {
            Ok(_) => Some(Outcome::Ok),
            Err(CallError::Deadline { .. }) => Some(Outcome::Timeout),
            Err(CallError::MemoryLimit { .. }) => Some(Outcome::Memory),
            Err(CallError::OutputTooLarge { .. } | CallError::BadDecision(_)) => {
                Some(Outcome::BadOutput)
            }
            Err(CallError::Trap(_)) => Some(Outcome::Trap),
            Err(_) => None,
        };
        if let Some(o) = outcome {
            entry.metrics.record(o, took);
        }
        match result {
            Ok(decision) => Ok(Answer {
                decision,
                version: version.number,
                failure: None,
            }),
            Err(e) => {
                if e.is_plugin_failure() {
                    tracing::debug!(plugin = name, version = version.number, error = %e, "plugin call failed");
                    if lock(&entry.breaker).failure(self.now_ms()) {
                        entry.metrics.quarantined();
                        tracing::warn!(plugin = name, version = version.number, error = %e, "plugin quarantined");
                    }
                }
                fail::<H>(&entry, &version, input, e)
            }
        }
    }

    /// Instantiates the active version of `name` without calling it, under
    /// its limits: a readiness probe, and the instantiation figure of the
    /// benchmark.
    pub fn probe(&self, name: &str) -> Result<(), CallError> {
        let version = self.entry(name)?.active();
        let _running = self.ticker.enter();
        let mut store = self.store(&version, Instant::now());
        version
            .pre
            .instantiate(&mut store)
            .map(drop)
            .map_err(|e| classify(&e, &store, &version))
    }

    /// One call on an idle instance of `v`, or on a new one. An instance
    /// goes back to the idle list only after a call that fully succeeded,
    /// so a trap, an overrun or a bad answer never reaches a later call.
    fn invoke<H: Hook>(
        &self,
        v: &Version,
        input: &H::Input,
        started: Instant,
    ) -> Result<H::Output, CallError> {
        let _running = self.ticker.enter();
        let idle = lock(&v.idle).pop();
        let mut instance = match idle {
            Some(mut i) => {
                i.store.data_mut().begin_call(started);
                i.store.set_epoch_deadline(v.deadline_ticks);
                i
            }
            None => {
                let mut store = self.store(v, started);
                let bound = v
                    .pre
                    .instantiate(&mut store)
                    .map_err(|e| classify(&e, &store, v))?;
                Instance {
                    store,
                    bound,
                    idle: None,
                }
            }
        };
        let out = H::call(&instance.bound, &mut instance.store, input)
            .map_err(|e| classify(&e, &instance.store, v))?;
        let bytes = out.wire_bytes();
        if bytes > PLUGIN_OUTPUT_BYTES_MAX {
            return Err(CallError::OutputTooLarge {
                bytes,
                max: PLUGIN_OUTPUT_BYTES_MAX,
            });
        }
        H::check(input, &out).map_err(CallError::BadDecision)?;
        self.park(v, instance);
        Ok(out)
    }

    /// Keeps `instance` for the next call of `v`, within the idle limits.
    fn park(&self, v: &Version, mut instance: Instance) {
        let mut idle = lock(&v.idle);
        if idle.len() >= PLUGIN_IDLE_PER_VERSION_MAX {
            return;
        }
        if instance.idle.is_none() {
            let taken = self.idle.fetch_add(1, Ordering::AcqRel);
            if taken >= PLUGIN_IDLE_INSTANCES_MAX {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            instance.idle = Some(IdleToken(self.idle.clone()));
        }
        idle.push(instance);
    }

    pub fn route(
        &self,
        name: &str,
        input: &crate::types::router::RouteInput,
    ) -> Result<Answer<crate::types::router::RouteDecision>, CallError> {
        self.call::<RouterHook>(name, input)
    }

    pub fn route_sql(
        &self,
        name: &str,
        input: &crate::types::sql::SqlInput,
    ) -> Result<Answer<crate::types::sql::SqlDecision>, CallError> {
        self.call::<SqlRouterHook>(name, input)
    }

    pub fn decide_failover(
        &self,
        name: &str,
        input: &crate::types::failover::FailoverInput,
    ) -> Result<Answer<Vec<crate::types::failover::Action>>, CallError> {
        self.call::<FailoverHook>(name, input)
    }

    pub fn decide_deploy(
        &self,
        name: &str,
        input: &crate::types::deploy::DeployInput,
    ) -> Result<Answer<crate::types::deploy::DeployDecision>, CallError> {
        self.call::<DeployHook>(name, input)
    }

    /// One call with the input in the JSON form of the plugin's world (see
    /// `wit/README.md`); the decision comes back in the same form.
    pub fn call_json(&self, name: &str, input_json: &str) -> Result<JsonAnswer, CallError> {
        // JSON spends a few bytes per field on names and quotes; the wire
        // size is checked again after parsing.
        if input_json.len() > PLUGIN_INPUT_BYTES_MAX * 4 {
            return Err(CallError::InputTooLarge {
                bytes: input_json.len(),
                max: PLUGIN_INPUT_BYTES_MAX * 4,
            });
        }
        match self.entry(name)?.world {
            World::Router => self.json_call::<RouterHook>(name, input_json),
            World::SqlRouter => self.json_call::<SqlRouterHook>(name, input_json),
            World::FailoverPolicy => self.json_call::<FailoverHook>(name, input_json),
            World::DeployStrategy => self.json_call::<DeployHook>(name, input_json),
        }
    }

    fn json_call<H: Hook>(&self, name: &str, input_json: &str) -> Result<JsonAnswer, CallError> {
        let input: H::Input =
            serde_json::from_str(input_json).map_err(|e| CallError::BadInput(e.to_string()))?;
        let answer = self.call::<H>(name, &input)?;
        let decision =
            serde_json::to_value(&answer.decision).map_err(|e| CallError::Trap(e.to_string()))?;
        Ok(JsonAnswer {
            decision,
            version: answer.version,
            failure: answer.failure.map(|e| e.to_string()),
        })
    }
}

fn fail<H: Hook>(
    entry: &Entry,
    version: &Version,
    input: &H::Input,
    error: CallError,
) -> Result<Answer<H::Output>, CallError> {
    match version.fail {
        FailMode::Closed => Err(error),
        FailMode::Open => {
            entry.metrics.default_served();
            Ok(Answer {
                decision: H::fallback(input),
                version: version.number,
                failure: Some(error),
            })
        }
    }
}

/// Names what ended a call.
fn classify(e: &wasmtime::Error, store: &Store<Ctx>, v: &Version) -> CallError {
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return CallError::Busy;
    }
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return CallError::Deadline { ms: v.deadline_ms };
    }
    if store.data().limiter.memory_denied {
        return CallError::MemoryLimit {
            bytes: v.memory_bytes,
        };
    }
    let stderr = store.data().stderr_text();
    let mut msg = one_line(e);
    if !stderr.is_empty() {
        msg.push_str(" (stderr: ");
        msg.push_str(&stderr.replace('\n', " "));
        msg.push(')');
    }
    CallError::Trap(msg)
}

fn status_of(name: &str, entry: &Entry) -> PluginStatus {
    let slot = lock(&entry.slot);
    let m = entry.metrics.snapshot();
    PluginStatus {
        name: name.to_string(),
        world: entry.world,
        version: slot.active.number,
        hash: slot.active.hash.clone(),
        grants: slot.active.state.grants.iter().collect(),
        state: lock(&entry.breaker).state(),
        calls: m.calls,
        traps: m.traps,
        timeouts: m.timeouts,
        fail: slot.active.fail,
        previous_version: slot.previous.as_ref().map(|p| p.number),
    }
}

fn check_name(name: &str) -> Result<(), InstallError> {
    holdfast_core::meta::check_plugin_name(name)
        .map_err(|_| InstallError::BadName(name.to_string()))
}

fn check_config(config: &BTreeMap<String, String>) -> Result<(), InstallError> {
    if config.len() > PLUGIN_CONFIG_ENTRIES_MAX {
        return Err(InstallError::BadSetting(format!(
            "{} config entries; at most {PLUGIN_CONFIG_ENTRIES_MAX}",
            config.len()
        )));
    }
    for (k, v) in config {
        if k.len() > PLUGIN_CONFIG_KEY_BYTES_MAX || v.len() > PLUGIN_CONFIG_VALUE_BYTES_MAX {
            return Err(InstallError::BadSetting(format!(
                "config `{}`: keys up to {PLUGIN_CONFIG_KEY_BYTES_MAX} bytes, values up to {PLUGIN_CONFIG_VALUE_BYTES_MAX}",
                k.chars().take(PLUGIN_CONFIG_KEY_BYTES_MAX).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Writes an artifact next to its final name, then renames it into place,
/// so that a reader never sees half a file.
fn store_artifact(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
