//! The cluster's plugin store, as this node keeps it.
//!
//! The metadata holds each plugin's record (world, active and previous
//! version, settings, the blake3 hash of each component); the components
//! themselves are kept by every node in its own engine under `p/`, by
//! hash, and move between nodes over the transport in pieces
//! (`BlobRequest`). An install stores the component here, has a majority
//! of the voting members fetch and store it, and only then proposes the
//! record, so a committed record always names a component that a majority
//! holds durably. Every node then converges its [`PluginHost`] on the
//! records (`converge`): it fetches what it lacks from any member, installs,
//! swaps, rolls back and removes, so that every node runs the same active
//! version without a restart.
//!
//! Invariant: a component is stored only after its bytes hash to its name.
//! Invariant: a component named by a record is never deleted; one no
//! record names is deleted after `PLUGIN_BLOB_GRACE_MS` (an install in
//! flight stores it before its record commits).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_core::limits::{
    FRAME_BYTES_MAX, PLUGIN_BLOB_CHUNK_BYTES, PLUGIN_BLOB_GRACE_MS, PLUGIN_COMPONENT_BYTES_MAX,
    PLUGIN_REPLICATE_TIMEOUT_MS,
};
use holdfast_core::meta::{
    Command, MetaState, Outcome, PluginRecord, PluginVersion, Role, PLUGIN_WORLDS,
};
use holdfast_core::wire::{self, BlobReply, BlobRequest, PeerMsg};
use holdfast_plugin::{
    Capability, FailMode, Grants, JsonAnswer, PluginHost, PluginState, Settings, World,
};
use holdfast_storage::{prefix_end, Batch, Engine};
use holdfast_transport::Transport;
use serde::{Deserialize, Serialize};

use crate::driver::{DriverHandle, ProposeError};

/// How often the converging task looks at the metadata.
const CONVERGE_EVERY: Duration = Duration::from_millis(300);
/// How soon a failed converge is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(3);
/// How long one piece of a component may take to arrive.
const PIECE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an install, rollback or removal waits for this node to run
/// the new version (a large component compiles for a while).
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a plugin operation failed; the API maps it to a status code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operator's input is wrong (bad component, bad setting).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The cluster could not take it now (no majority, no leader).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// A local failure (disk).
    #[error("{0}")]
    Local(String),
}

/// `POST /api/v1/plugins/{name}`: a component and its settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// The component, base64 (standard alphabet, padded).
    pub wasm_base64: String,
    /// Refuse the component unless it implements this world.
    #[serde(default)]
    pub world: Option<String>,
    #[serde(default)]
    pub grants: Vec<String>,
    /// `open` (default) or `closed`.
    #[serde(default)]
    pub fail: Option<String>,
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub fs_root: Option<String>,
}

/// One row of `holdfast plugin list --json`: the cluster's record and how
/// this node runs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginView {
    pub name: String,
    pub world: String,
    /// The cluster's active version.
    pub version: u64,
    pub hash: String,
    pub grants: Vec<String>,
    /// `active` or `quarantined` on this node; `pending` while this node
    /// does not run the cluster's active version yet (see `error`).
    pub state: String,
    pub calls: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub fail: String,
    pub previous_version: Option<u64>,
    /// Why this node does not run the active version, if it tried and
    /// failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct PluginStore {
    pub host: Arc<PluginHost>,
    blobs: Blobs,
    transport: Arc<Transport>,
    driver: DriverHandle,
    me: u64,
    /// One converge pass at a time.
    converging: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    /// Why converging a plugin failed on this node, by name.
    errors: Mutex<BTreeMap<String, String>>,
    /// Components no record names, and since when we know it.
    unreferenced: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for PluginStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginStore").field("me", &self.me).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn head_key(hash: &str) -> Vec<u8> {
    format!("p/h/{hash}").into_bytes()
}

fn piece_prefix(hash: &str) -> Vec<u8> {
    format!("p/c/{hash}/").into_bytes()
}

fn piece_key(hash: &str, index: u32) -> Vec<u8> {
    let mut k = piece_prefix(hash);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn pieces(bytes: u64) -> u32 {
    bytes.div_ceil(PLUGIN_BLOB_CHUNK_BYTES as u64) as u32
}

fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The host settings a version asks for.
fn settings_of(world: &str, v: &PluginVersion) -> Result<Settings, String> {
    let mut grants = Grants::none();
    for g in &v.grants {
        grants = grants.with(g.parse::<Capability>()?);
    }
    Ok(Settings {
        grants,
        fail: v.fail.parse::<FailMode>()?,
        deadline_ms: v.deadline_ms,
        memory_bytes: v.memory_bytes,
        config: v.config.clone(),
        fs_root: v.fs_root.as_ref().map(Into::into),
        world: Some(World::from_name(world).ok_or_else(|| format!("unknown world {world:?}"))?),
    })
}

impl PluginStore {
    pub fn new(
        host: Arc<PluginHost>,
        engine: Arc<dyn Engine>,
        transport: Arc<Transport>,
        driver: DriverHandle,
        me: u64,
    ) -> Self {
        Self {
            host,
            blobs: Blobs::new(engine),
            transport,
            driver,
            me,
            converging: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            errors: Mutex::new(BTreeMap::new()),
            unreferenced: Mutex::new(HashMap::new()),
        }
    }

    // ---- components between nodes ----

    fn addr_of(meta: &MetaState, id: u64) -> Option<SocketAddr> {
        meta.nodes.get(&id)?.peer_addr.parse().ok()
    }

    async fn ask(&self, to: u64, req: BlobRequest, timeout: Duration) -> Result<BlobReply, String> {
        let meta = self.driver.shared().meta;
        let addr = Self::addr_of(&meta, to).ok_or_else(|| format!("node {to} is not a member"))?;
        let frame = wire::encode(&PeerMsg::Blob(req));
        let reply = tokio::time::timeout(timeout, self.transport.request(to, addr, frame))
            .await
            .map_err(|_| format!("node {to} did not answer in {} s", timeout.as_secs()))?
            .map_err(|e| e.to_string())?;
        wire::decode::<BlobReply>(&reply, FRAME_BYTES_MAX).map_err(|e| e.to_string())
    }

    /// Fetches component `hash` from member `from` and stores it.
    async fn fetch_from(&self, from: u64, hash: &str, bytes: u64) -> Result<(), String> {
        let mut data = Vec::with_capacity(bytes as usize);
        for index in 0..pieces(bytes) {
            let req = BlobRequest::Get {
                hash: hash.to_string(),
                index,
            };
            match self.ask(from, req, PIECE_TIMEOUT).await? {
                BlobReply::Piece {
                    bytes: total,
                    data: piece,
                } => {
                    let want = (bytes - data.len() as u64).min(PLUGIN_BLOB_CHUNK_BYTES as u64);
                    if total != bytes || piece.len() as u64 != want {
                        return Err(format!("node {from} sent a piece of the wrong size"));
                    }
                    data.extend_from_slice(&piece);
                }
                BlobReply::Missing => return Err(format!("node {from} does not have it")),
                BlobReply::Failed(e) => return Err(format!("node {from}: {e}")),
                BlobReply::Stored => return Err(format!("node {from} answered out of turn")),
            }
        }
        if blake3::hash(&data).to_hex().as_str() != hash {
            return Err(format!("node {from} sent bytes that do not match the hash"));
        }
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || blobs.write_blob(&data).map(drop))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Makes sure component `hash` is here, fetching it from `first` or
    /// any other member.
    async fn ensure_blob(&self, hash: &str, bytes: u64, first: u64) -> Result<(), String> {
        if !is_hash(hash) || bytes == 0 || bytes > PLUGIN_COMPONENT_BYTES_MAX as u64 {
            return Err(format!("refused component {hash:?} of {bytes} bytes"));
        }
        if self.blobs.has_blob(hash)? {
            return Ok(());
        }
        let meta = self.driver.shared().meta;
        let mut from: Vec<u64> = vec![first];
        from.extend(meta.nodes.keys().copied().filter(|&id| id != first));
        let mut errors = Vec::new();
        for id in from.into_iter().filter(|&id| id != self.me) {
            match self.fetch_from(id, hash, bytes).await {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "cannot fetch component {}: {}",
            &hash[..12],
            if errors.is_empty() {
                "no other member".to_string()
            } else {
                errors.join("; ")
            }
        ))
    }

    /// A peer's request.
    pub async fn serve(&self, req: BlobRequest) -> BlobReply {
        match req {
            BlobRequest::Get { hash, index } => {
                if !is_hash(&hash) {
                    return BlobReply::Failed("malformed hash".into());
                }
                match self.blobs.piece(&hash, index) {
                    Ok(Some((bytes, data))) => BlobReply::Piece { bytes, data },
                    Ok(None) => BlobReply::Missing,
                    Err(e) => BlobReply::Failed(e),
                }
            }
            BlobRequest::Fetch { hash, bytes, from } => {
                match self.ensure_blob(&hash, bytes, from).await {
                    Ok(()) => BlobReply::Stored,
                    Err(e) => BlobReply::Failed(e),
                }
            }
        }
    }

    /// Has every other member fetch component `hash`; returns once a
    /// majority of the voting members (this node included) holds it, or
    /// fails when that cannot happen in time. The rest go on fetching.
    async fn replicate(self: &Arc<Self>, hash: &str, bytes: u64) -> Result<(), StoreError> {
        let meta = self.driver.shared().meta;
        let voting = |id: u64| meta.nodes.get(&id).is_some_and(|n| n.role != Role::Learner);
        let voters = meta.nodes.keys().filter(|&&id| voting(id)).count();
        let need = voters / 2 + 1;
        let mut have = usize::from(voting(self.me));
        if have >= need {
            return Ok(());
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(meta.nodes.len().max(1));
        for &id in meta.nodes.keys().filter(|&&id| id != self.me) {
            let (store, tx, hash) = (self.clone(), tx.clone(), hash.to_string());
            tokio::spawn(async move {
                let req = BlobRequest::Fetch {
                    hash,
                    bytes,
                    from: store.me,
                };
                let timeout = Duration::from_millis(PLUGIN_REPLICATE_TIMEOUT_MS);
                let r = match store.ask(id, req, timeout).await {
                    Ok(BlobReply::Stored) => Ok(()),
                    Ok(BlobReply::Failed(e)) => Err(e),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e),
                };
                let _ = tx.send((id, r)).await;
            });
        }
        drop(tx);
        let mut errors = Vec::new();
        while let Some((id, r)) = rx.recv().await {
            match r {
                Ok(()) if voting(id) => {
                    have += 1;
                    if have >= need {
                        return Ok(());
                    }
                }
                Ok(()) => {}
                Err(e) => {
                    let name = meta.nodes.get(&id).map_or("?", |n| n.name.as_str());
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "the component reached {have} of {voters} voting nodes, {need} needed ({})",
            errors.join("; ")
        )))
    }

    // ---- operator actions ----

    /// Checks, stores, replicates and commits a new version of plugin
    /// `name`, then waits for this node to run it.
    pub async fn install(
        self: &Arc<Self>,
        name: &str,
        req: InstallRequest,
    ) -> Result<PluginView, StoreError> {
        use base64::Engine as _;
        let wasm = base64::engine::general_purpose::STANDARD
            .decode(req.wasm_base64.as_bytes())
            .map_err(|e| StoreError::Invalid(format!("wasm_base64 is not base64: {e}")))?;
        let fail = req.fail.clone().unwrap_or_else(|| "open".into());
        let mut grants: Vec<String> = req.grants.clone();
        grants.sort();
        grants.dedup();
        let mut version = PluginVersion {
            number: 0,
            hash: String::new(),
            bytes: wasm.len() as u64,
            grants,
            fail,
            deadline_ms: req.deadline_ms,
            memory_bytes: req.memory_bytes,
            config: req.config,
            fs_root: req.fs_root,
            origin: self.me,
            installed_ms: crate::service::now_ms(),
        };
        if let Some(w) = &req.world {
            if !PLUGIN_WORLDS.contains(&w.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "unknown world `{w}` (known: {})",
                    PLUGIN_WORLDS.join(", ")
                )));
            }
        }
        let mut settings = settings_of(req.world.as_deref().unwrap_or("router"), &version)
            .map_err(StoreError::Invalid)?;
        if req.world.is_none() {
            settings.world = None;
        }
        // Check everything before anything is stored.
        let info = {
            let (host, name, wasm) = (self.host.clone(), name.to_string(), wasm.clone());
            tokio::task::spawn_blocking(move || host.check(&name, &wasm, settings))
                .await
                .map_err(|e| StoreError::Local(e.to_string()))?
                .map_err(|e| StoreError::Invalid(e.to_string()))?
        };
        let world = info.world.name().to_string();
        if let Some(p) = self.driver.shared().meta.plugins.get(name) {
            if p.world != world {
                return Err(StoreError::Invalid(format!(
                    "plugin {name:?} is a {} plugin, this component is a {world}; remove it first to reuse the name",
                    p.world
                )));
            }
        }
        let blobs = self.blobs.clone();
        version.hash = tokio::task::spawn_blocking(move || blobs.write_blob(&wasm))
            .await
            .map_err(|e| StoreError::Local(e.to_string()))?
            .map_err(StoreError::Local)?;
        self.replicate(&version.hash, version.bytes).await?;
        let cmd = Command::InstallPlugin {
            name: name.to_string(),
            world,
            version,
        };
        let number = match self.driver.propose(cmd).await? {
            Outcome::PluginInstalled { version } => version,
            other => return Err(StoreError::Local(format!("unexpected outcome {other:?}"))),
        };
        self.await_local(name, Some(number)).await
    }

    pub async fn rollback(self: &Arc<Self>, name: &str) -> Result<PluginView, StoreError> {
        let cmd = Command::RollbackPlugin {
            name: name.to_string(),
        };
        let number = match self.driver.propose(cmd).await {
            Ok(Outcome::PluginRolledBack { version }) => version,
            Ok(other) => return Err(StoreError::Local(format!("unexpected outcome {other:?}"))),
            Err(ProposeError::Refused(e)) if e.starts_with("no plugin") => {
                return Err(StoreError::NotFound(e))
            }
            Err(e) => return Err(e.into()),
        };
        self.await_local(name, Some(number)).await
    }

    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<(), StoreError> {
        let cmd = Command::RemovePlugin {
            name: name.to_string(),
        };
        match self.driver.propose(cmd).await {
            Ok(_) => {}
            Err(ProposeError::Refused(e)) if e.starts_with("no plugin") => {
                return Err(StoreError::NotFound(e))
            }
            Err(e) => return Err(e.into()),
        }
        self.await_local(name, None).await.map(drop)
    }

    /// Waits until this node runs version `number` of `name` (or, with
    /// none, no longer runs `name`); returns how `plugin list` shows it.
    async fn await_local(
        self: &Arc<Self>,
        name: &str,
        number: Option<u64>,
    ) -> Result<PluginView, StoreError> {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        // An error of an earlier record says nothing of this one.
        lock(&self.errors).remove(name);
        loop {
            self.wake.notify_one();
            let local = self.host.status(name).map(|s| s.version);
            if local == number {
                if let Some(v) = self.view(name).filter(|_| number.is_some()) {
                    return Ok(v);
                }
                if number.is_none() {
                    return Ok(PluginView::default());
                }
            }
            if let Some(e) = lock(&self.errors).get(name).cloned() {
                return Err(StoreError::Local(format!(
                    "committed, but this node cannot run it: {e}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "committed, but this node has not loaded it yet; see `plugin list`".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One call on this node, with the input in its world's JSON form.
    pub async fn test(&self, name: &str, input: String) -> Result<JsonAnswer, StoreError> {
        if !self.driver.shared().meta.plugins.contains_key(name) {
            return Err(StoreError::NotFound(format!("no plugin named {name:?}")));
        }
        if self.host.status(name).is_none() {
            return Err(StoreError::Unavailable(format!(
                "plugin {name:?} is not loaded on this node yet"
            )));
        }
        let (host, name) = (self.host.clone(), name.to_string());
        tokio::task::spawn_blocking(move || host.call_json(&name, &input))
            .await
            .map_err(|e| StoreError::Local(e.to_string()))?
            .map_err(|e| StoreError::Invalid(e.to_string()))
    }

    /// Takes a plugin out of quarantine on this node.
    pub fn reinstate(&self, name: &str) -> Result<PluginView, StoreError> {
        self.host
            .reinstate(name)
            .map_err(|e| StoreError::NotFound(e.to_string()))?;
        self.view(name)
            .ok_or_else(|| StoreError::NotFound(format!("no plugin named {name:?}")))
    }

    pub fn list(&self) -> Vec<PluginView> {
        let meta = self.driver.shared().meta;
        meta.plugins.keys().filter_map(|n| self.view(n)).collect()
    }

    pub fn view(&self, name: &str) -> Option<PluginView> {
        let meta = self.driver.shared().meta;
        let rec = meta.plugins.get(name)?;
        let local = self
            .host
            .status(name)
            .filter(|s| s.version == rec.active.number && s.hash == rec.active.hash);
        let (state, calls, traps, timeouts) = match &local {
            Some(s) => (
                match s.state {
                    PluginState::Active => "active",
                    PluginState::Quarantined => "quarantined",
                },
                s.calls,
                s.traps,
                s.timeouts,
            ),
            None => ("pending", 0, 0, 0),
        };
        Some(PluginView {
            name: rec.name.clone(),
            world: rec.world.clone(),
            version: rec.active.number,
            hash: rec.active.hash.clone(),
            grants: rec.active.grants.clone(),
            state: state.to_string(),
            calls,
            traps,
            timeouts,
            fail: rec.active.fail.clone(),
            previous_version: rec.previous.as_ref().map(|p| p.number),
            error: if local.is_none() {
                lock(&self.errors).get(name).cloned()
            } else {
                None
            },
        })
    }

    // ---- converging on the records ----

    /// Runs until the node stops: converges the host on the metadata
    /// whenever the records change, and retries failures.
    pub async fn run(self: Arc<Self>) {
        let mut done: Option<BTreeMap<String, PluginRecord>> = None;
        let mut failed_at: Option<Instant> = None;
        loop {
            let _ = tokio::time::timeout(CONVERGE_EVERY, self.wake.notified()).await;
            let meta = self.driver.shared().meta;
            if meta.nodes.is_empty() {
                continue;
            }
            let retry = failed_at.is_some_and(|t| t.elapsed() >= RETRY_AFTER);
            if done.as_ref() == Some(&meta.plugins) && !retry {
                continue;
            }
            let ok = self.converge(&meta).await;
            done = Some(meta.plugins.clone());
            failed_at = (!ok).then(Instant::now);
        }
    }

    /// One pass; true when every record is running here.
    async fn converge(self: &Arc<Self>, meta: &MetaState) -> bool {
        let _one = self.converging.lock().await;
        let mut ok = true;
        for rec in meta.plugins.values() {
            let r = self.converge_one(rec).await;
            let mut errors = lock(&self.errors);
            match r {
                Ok(()) => {
                    errors.remove(&rec.name);
                }
                Err(e) => {
                    tracing::warn!(plugin = %rec.name, version = rec.active.number, error = %e, "cannot run plugin version");
                    errors.insert(rec.name.clone(), e);
                    ok = false;
                }
            }
        }
        for s in self.host.list() {
            if !meta.plugins.contains_key(&s.name) {
                let _ = self.host.remove(&s.name);
                lock(&self.errors).remove(&s.name);
                tracing::info!(plugin = %s.name, "plugin removed");
            }
        }
        if let Err(e) = self.collect_garbage(meta) {
            tracing::warn!(error = %e, "plugin component clean-up failed");
        }
        ok
    }

    async fn converge_one(self: &Arc<Self>, rec: &PluginRecord) -> Result<(), String> {
        let want = &rec.active;
        if self
            .host
            .status(&rec.name)
            .is_some_and(|s| s.version == want.number && s.hash == want.hash)
        {
            return Ok(());
        }
        self.ensure_blob(&want.hash, want.bytes, want.origin)
            .await?;
        if let Some(p) = &rec.previous {
            // Only a rollback needs it; `apply` loads what it can.
            if let Err(e) = self.ensure_blob(&p.hash, p.bytes, p.origin).await {
                tracing::warn!(plugin = %rec.name, version = p.number, error = %e, "cannot fetch the previous version");
            }
        }
        let (store, rec) = (self.clone(), rec.clone());
        tokio::task::spawn_blocking(move || store.apply(&rec))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Brings the host's entry for `rec` to its active version: a swap, a
    /// rollback, or a fresh install of both versions.
    fn apply(&self, rec: &PluginRecord) -> Result<(), String> {
        let want = &rec.active;
        let install = |v: &PluginVersion| -> Result<(), String> {
            let bytes = self.blobs.read_blob(&v.hash)?;
            let settings = settings_of(&rec.world, v)?;
            self.host
                .install_version(&rec.name, Some(v.number), &bytes, settings)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        if let Some(s) = self.host.status(&rec.name) {
            let newest = s.version.max(s.previous_version.unwrap_or(0));
            if s.world.name() == rec.world {
                if s.previous_version == Some(want.number) {
                    self.host.rollback(&rec.name).map_err(|e| e.to_string())?;
                    if self
                        .host
                        .status(&rec.name)
                        .is_some_and(|s| s.hash == want.hash)
                    {
                        return Ok(());
                    }
                } else if want.number > newest {
                    // A hot swap; if it fails, the old version keeps
                    // serving here and `plugin list` says why.
                    return install(want);
                }
            }
            // Numbers or world this host cannot get to from here (the
            // name was removed and installed again meanwhile): start over.
            let _ = self.host.remove(&rec.name);
        }
        // Fresh: both versions in the order of their numbers, then a
        // rollback if the active one is the older.
        let mut versions: Vec<&PluginVersion> =
            std::iter::once(want).chain(rec.previous.as_ref()).collect();
        versions.sort_by_key(|v| v.number);
        for v in &versions {
            if v.number == want.number {
                install(v)?;
            } else if let Err(e) = install(v) {
                // The previous version only matters for a rollback.
                tracing::warn!(plugin = %rec.name, version = v.number, error = %e, "cannot load the previous version");
            }
        }
        if self.host.status(&rec.name).map(|s| s.version) != Some(want.number) {
            self.host.rollback(&rec.name).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Deletes the components no record has named for a while.
    fn collect_garbage(&self, meta: &MetaState) -> Result<(), String> {
        let keep = meta.plugin_hashes();
        let grace = Duration::from_millis(PLUGIN_BLOB_GRACE_MS);
        let mut unreferenced = lock(&self.unreferenced);
        unreferenced.retain(|h, _| !keep.contains(h.as_str()));
        for hash in self.blobs.stored_hashes()? {
            if keep.contains(hash.as_str()) {
                continue;
            }
            let since = *unreferenced
                .entry(hash.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                self.blobs.delete_blob(&hash)?;
                unreferenced.remove(&hash);
                tracing::info!(hash = %hash, "deleted unused plugin component");
            }
        }
        Ok(())
    }
}

/// The components this node keeps, in its engine under `p/`: a head
/// `p/h/<hash>` with the length, written last in the same synced batch as
/// the pieces `p/c/<hash>/<index>`.
#[derive(Clone)]
pub struct Blobs {
    engine: Arc<dyn Engine>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").finish_non_exhaustive()
    }
}

impl Blobs {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self { engine }
    }

    pub fn has_blob(&self, hash: &str) -> Result<bool, String> {
        Ok(self
            .engine
            .get(&head_key(hash))
            .map_err(|e| e.to_string())?
            .is_some())
    }

    fn blob_len(&self, hash: &str) -> Result<Option<u64>, String> {
        match self
            .engine
            .get(&head_key(hash))
            .map_err(|e| e.to_string())?
        {
            Some(v) => {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("component {hash}: corrupt length"))?;
                Ok(Some(u64::from_be_bytes(b)))
            }
            None => Ok(None),
        }
    }

    fn piece(&self, hash: &str, index: u32) -> Result<Option<(u64, Vec<u8>)>, String> {
        let Some(len) = self.blob_len(hash)? else {
            return Ok(None);
        };
        if index >= pieces(len) {
            return Err(format!("component {hash} has no piece {index}"));
        }
        let data = self
            .engine
            .get(&piece_key(hash, index))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("component {hash}: piece {index} missing"))?;
        Ok(Some((len, data)))
    }

    /// The component's bytes, checked against its hash.
    pub fn read_blob(&self, hash: &str) -> Result<Vec<u8>, String> {
        let len = self
            .blob_len(hash)?
            .ok_or_else(|| format!("component {hash} is not on this node"))?;
        let mut out = Vec::with_capacity(len as usize);
        for i in 0..pieces(len) {
            let (_, data) = self.piece(hash, i)?.ok_or("component deleted")?;
            out.extend_from_slice(&data);
        }
        if blake3::hash(&out).to_hex().as_str() != hash {
            return Err(format!("component {hash} is corrupt on this node"));
        }
        Ok(out)
    }

    /// Stores `bytes` durably under their hash; the pieces and the head go
    /// in one synced batch.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<String, String> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if self.has_blob(&hash)? {
            return Ok(hash);
        }
        let mut b = Batch::new();
        for (i, piece) in bytes.chunks(PLUGIN_BLOB_CHUNK_BYTES).enumerate() {
            b.put(piece_key(&hash, i as u32), piece.to_vec());
        }
        b.put(head_key(&hash), (bytes.len() as u64).to_be_bytes().to_vec());
        self.engine.write(b, true).map_err(|e| e.to_string())?;
        Ok(hash)
    }

    fn delete_blob(&self, hash: &str) -> Result<(), String> {
        let mut b = Batch::new();
        b.delete(head_key(hash));
        let start = piece_prefix(hash);
        let end = prefix_end(&start).unwrap_or_default();
        b.delete_range(start, end);
        self.engine.write(b, false).map_err(|e| e.to_string())
    }

    fn stored_hashes(&self) -> Result<Vec<String>, String> {
        let start = b"p/h/".to_vec();
        let end = prefix_end(&start).unwrap_or_default();
        let mut out = Vec::new();
        self.engine
            .scan(&start, &end, &mut |k, _| {
                out.extend(String::from_utf8(k[start.len()..].to_vec()));
                true
            })
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_storage::MemEngine;

    #[test]
    fn components_are_stored_in_pieces_read_back_checked_and_deleted() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let blobs = Blobs::new(engine.clone());
        let bytes: Vec<u8> = (0..(PLUGIN_BLOB_CHUNK_BYTES * 5 / 2))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let hash = blobs.write_blob(&bytes).unwrap();
        assert_eq!(hash, blake3::hash(&bytes).to_hex().as_str());
        assert!(blobs.has_blob(&hash).unwrap());
        assert_eq!(blobs.read_blob(&hash).unwrap(), bytes);
        let (len, last) = blobs.piece(&hash, 2).unwrap().unwrap();
        assert_eq!(
            (len, last.len()),
            (bytes.len() as u64, PLUGIN_BLOB_CHUNK_BYTES / 2)
        );
        assert!(blobs.piece(&hash, 3).is_err(), "a piece past the end");
        assert_eq!(blobs.stored_hashes().unwrap(), vec![hash.clone()]);

        // A piece that changed on disk is caught, not served as the plugin.
        let mut b = Batch::new();
        b.put(piece_key(&hash, 1), vec![0u8; PLUGIN_BLOB_CHUNK_BYTES]);
        engine.write(b, true).unwrap();
        let e = blobs.read_blob(&hash).unwrap_err();
        assert!(e.contains("corrupt"), "{e}");

        blobs.delete_blob(&hash).unwrap();
        assert!(!blobs.has_blob(&hash).unwrap());
        assert_eq!(blobs.piece(&hash, 0).unwrap(), None);
        assert!(blobs.stored_hashes().unwrap().is_empty());
        let mut left = 0;
        engine
            .scan(b"p/", b"p0", &mut |_, _| {
                left += 1;
                true
            })
            .unwrap();
        assert_eq!(left, 0, "pieces left behind");
    }
}
