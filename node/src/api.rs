//! The node's HTTP API (axum). Every route but `/healthz` needs the cluster
//! admin token as `Authorization: Bearer <token>`; without it the answer is
//! 401 and nothing changes. Errors are JSON: `{"error": "one line"}`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use holdfast_core::limits;
use holdfast_core::meta::{Change, Command, JoinToken, MetaState, Outcome};
use holdfast_transport::{pki, Transport};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::driver::{DriverHandle, ProposeError, Shared};
use crate::metrics::{label, Metrics};

#[derive(Clone)]
pub struct ApiState {
    pub driver: DriverHandle,
    pub transport: Arc<Transport>,
    pub me: u64,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub volumes: Arc<crate::volume::Volumes>,
    pub mounts: Arc<crate::mounts::Mounts>,
    pub plugins: Arc<crate::plugins::PluginStore>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("me", &self.me).finish()
    }
}

/// `GET /api/v1/cluster` and `holdfast status --json`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// The node that answered.
    pub node: String,
    pub leader: Option<String>,
    pub term: u64,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    pub id: u64,
    pub peer_addr: String,
    pub api_addr: String,
    pub role: String,
    /// Heard from within `PEER_HEALTHY_WITHIN_MS` (always true for the
    /// answering node itself while its consensus thread runs).
    pub healthy: bool,
    /// When the answering node last heard from this one, in Unix
    /// milliseconds; 0 if never.
    pub last_seen_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default = "default_ttl")]
    ttl_s: u64,
    #[serde(default = "default_uses")]
    uses: u32,
}
fn default_ttl() -> u64 {
    3600
}
fn default_uses() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub expires_at_ms: u64,
    pub uses: u32,
}

#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        let code = match &e {
            ProposeError::Refused(_) => StatusCode::CONFLICT,
            ProposeError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProposeError::NoLeader | ProposeError::Busy | ProposeError::Stopped => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError(code, e.to_string())
    }
}

/// An install request: the component in base64 plus its settings.
fn plugin_body_max() -> usize {
    limits::PLUGIN_COMPONENT_BYTES_MAX / 3 * 4 + 1024 + 4 * limits::META_COMMAND_BYTES_MAX
}

impl From<crate::plugins::StoreError> for ApiError {
    fn from(e: crate::plugins::StoreError) -> Self {
        use crate::plugins::StoreError as E;
        match e {
            E::Invalid(m) => bad(m),
            E::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            E::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
            E::Propose(p) => p.into(),
            E::Local(m) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

fn check_plugin_name(name: &str) -> Result<(), ApiError> {
    holdfast_core::meta::check_plugin_name(name).map_err(bad)
}

async fn list_plugins(State(st): State<ApiState>) -> Json<Vec<crate::plugins::PluginView>> {
    Json(st.plugins.list())
}

async fn install_plugin(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<crate::plugins::PluginView>, ApiError> {
    check_plugin_name(&name)?;
    let req: crate::plugins::InstallRequest = parse_body(&body)?;
    drop(body);
    Ok(Json(st.plugins.install(&name, req).await?))
}

async fn remove_plugin(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_plugin_name(&name)?;
    st.plugins.remove(&name).await?;
    Ok(Json(serde_json::json!({ "removed": name })))
}

async fn rollback_plugin(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<crate::plugins::PluginView>, ApiError> {
    check_plugin_name(&name)?;
    Ok(Json(st.plugins.rollback(&name).await?))
}

async fn reinstate_plugin(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<crate::plugins::PluginView>, ApiError> {
    check_plugin_name(&name)?;
    Ok(Json(st.plugins.reinstate(&name)?))
}

async fn test_plugin(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<holdfast_plugin::JsonAnswer>, ApiError> {
    check_plugin_name(&name)?;
    let input = String::from_utf8(body.to_vec()).map_err(|_| bad("the input is not UTF-8"))?;
    Ok(Json(st.plugins.test(&name, input).await?))
}

pub fn router(state: ApiState) -> Router {
    let authed = Router::new()
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/tokens", post(create_token))
        .route("/api/v1/nodes/{name}", delete(remove_node))
        .route("/api/v1/volumes", post(create_volume).get(list_volumes))
        .route("/api/v1/volumes/{name}", get(volume_status))
        .route("/api/v1/volumes/{name}/digests", get(volume_digests))
        .route("/api/v1/volumes/{name}/replicas/add", post(add_replica))
        .route(
            "/api/v1/volumes/{name}/replicas/remove",
            post(remove_replica),
        )
        .route("/api/v1/mounts", post(mount).get(list_mounts))
        .route("/api/v1/mounts/unmount", post(umount))
        .route("/api/v1/plugins", get(list_plugins))
        .route(
            "/api/v1/plugins/{name}",
            post(install_plugin)
                .delete(remove_plugin)
                .layer(DefaultBodyLimit::max(plugin_body_max())),
        )
        .route("/api/v1/plugins/{name}/rollback", post(rollback_plugin))
        .route("/api/v1/plugins/{name}/reinstate", post(reinstate_plugin))
        .route(
            "/api/v1/plugins/{name}/test",
            post(test_plugin).layer(DefaultBodyLimit::max(
                limits::PLUGIN_INPUT_BYTES_MAX * 4 + 1024,
            )),
        )
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(authed)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(limits::API_BODY_BYTES_MAX))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            limits::API_REQUESTS_INFLIGHT_MAX,
        ))
        .with_state(state)
}

async fn count(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    st.metrics
        .api_requests
        .get_or_create(&label("code", resp.status().as_str()))
        .inc();
    resp
}

async fn auth(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let meta = st.driver.shared().meta;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match presented {
        // Compare hashes so that the time taken says nothing of the token.
        Some(t) if !meta.admin_token.is_empty() => {
            blake3::hash(t.as_bytes()) == blake3::hash(meta.admin_token.as_bytes())
        }
        _ => false,
    };
    if !ok {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token".into(),
        )
        .into_response();
    }
    next.run(req).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

fn unix_ms(at: Instant) -> u64 {
    let ago = Instant::now().saturating_duration_since(at);
    SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn cluster_status(shared: &Shared, transport: &Transport, me: u64) -> ClusterStatus {
    let meta: &MetaState = &shared.meta;
    let name_of = |id: u64| meta.nodes.get(&id).map(|n| n.name.clone());
    let healthy_within = Duration::from_millis(limits::PEER_HEALTHY_WITHIN_MS);
    let nodes = meta
        .nodes
        .values()
        .map(|n| {
            let (healthy, last_seen_ms) = if n.id == me {
                (shared.fatal.is_none(), unix_ms(Instant::now()))
            } else {
                match transport.last_seen(n.id) {
                    Some(t) => (t.elapsed() <= healthy_within, unix_ms(t)),
                    None => (false, 0),
                }
            };
            NodeStatus {
                name: n.name.clone(),
                id: n.id,
                peer_addr: n.peer_addr.clone(),
                api_addr: n.api_addr.clone(),
                role: n.role.as_str().to_string(),
                healthy,
                last_seen_ms,
            }
        })
        .collect();
    ClusterStatus {
        cluster_id: meta.cluster_id.clone(),
        node: name_of(me).unwrap_or_default(),
        leader: shared.status.leader.and_then(name_of),
        term: shared.status.term,
        nodes,
    }
}

async fn cluster(State(st): State<ApiState>) -> Json<ClusterStatus> {
    Json(cluster_status(&st.driver.shared(), &st.transport, st.me))
}

async fn metrics(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &st.registry)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

async fn create_token(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<TokenCreated>, ApiError> {
    let req: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest {
            ttl_s: default_ttl(),
            uses: default_uses(),
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed request: {e}")))?
    };
    if req.ttl_s == 0 || req.ttl_s.saturating_mul(1000) > limits::TOKEN_TTL_MS_MAX {
        return Err(bad(format!(
            "ttl_s must be 1 to {}",
            limits::TOKEN_TTL_MS_MAX / 1000
        )));
    }
    if req.uses == 0 || req.uses > limits::TOKEN_USES_MAX {
        return Err(bad(format!("uses must be 1 to {}", limits::TOKEN_USES_MAX)));
    }
    let meta = st.driver.shared().meta;
    let ca = pki::cert_der(&meta.ca_cert_pem).map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "node has not caught up with the cluster yet".into(),
        )
    })?;
    let token = JoinToken {
        ca_fingerprint: pki::fingerprint(&ca),
        id: hex::encode(rand::random::<[u8; 8]>()),
        secret: hex::encode(rand::random::<[u8; 16]>()),
    };
    let now = crate::service::now_ms();
    let expires_at_ms = now + req.ttl_s * 1000;
    let cmd = Command::CreateToken {
        id: token.id.clone(),
        secret_hash: JoinToken::secret_hash(&token.secret),
        expires_at_ms,
        uses_max: req.uses,
        now_ms: now,
    };
    match st.driver.propose(cmd).await? {
        Outcome::TokenCreated => Ok(Json(TokenCreated {
            token: token.to_token_string(),
            expires_at_ms,
            uses: req.uses,
        })),
        other => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected outcome {other:?}"),
        )),
    }
}

async fn remove_node(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    holdfast_core::wire::check_name(&name).map_err(bad)?;
    let meta = st.driver.shared().meta;
    let id = meta
        .node_by_name(&name)
        .map(|n| n.id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no node named {name:?}")))?;
    st.driver.conf_change(Change::Remove { id }).await?;
    Ok(Json(serde_json::json!({ "removed": name })))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("malformed request: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeCreate {
    name: String,
    #[serde(default = "default_replicas")]
    replicas: u8,
    #[serde(default = "yes")]
    leader_follows_writes: bool,
}
fn yes() -> bool {
    true
}
fn default_replicas() -> u8 {
    3
}

/// A volume as `volume list` shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub kind: String,
    pub replicas: Vec<String>,
    pub created_ms: u64,
    /// Whether the leadership follows the replica that writes most.
    pub leader_follows_writes: bool,
}

/// `volume status --json`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeStatus {
    pub name: String,
    pub kind: String,
    pub leader: Option<String>,
    pub replicas: Vec<ReplicaInfo>,
    pub bytes_used: u64,
    pub files: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub node: String,
    /// The replica answered within a second.
    pub healthy: bool,
    pub applied_index: u64,
    /// Entries it has yet to apply, against the most advanced replica.
    pub lag_entries: u64,
    /// Bytes a snapshot resync still has to fetch (0: none running; a
    /// replica a little behind catches up from the log).
    pub resync_bytes_left: u64,
    /// Bytes the replica fetched by resync since its node started.
    pub resync_bytes_fetched: u64,
    /// In the leader's configuration: `voter`, `learner` (added, still
    /// catching up), or `joining` (listed, not admitted yet); `unknown`
    /// without a leader that answered.
    pub role: String,
}

fn volume_info(meta: &MetaState, v: &holdfast_core::meta::VolumeRecord) -> VolumeInfo {
    let name_of = |id: &u64| {
        meta.nodes
            .get(id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("#{id}"))
    };
    VolumeInfo {
        name: v.name.clone(),
        kind: "file".into(),
        replicas: v.replicas.iter().map(name_of).collect(),
        created_ms: v.created_ms,
        leader_follows_writes: v.leader_follows_writes,
    }
}

async fn create_volume(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<VolumeInfo>, ApiError> {
    let req: VolumeCreate = parse_body(&body)?;
    holdfast_core::wire::check_name(&req.name)
        .map_err(|e| bad(e.replace("node name", "volume name")))?;
    let id = loop {
        let id = rand::random::<u64>() >> 12;
        if id > 1 && !st.driver.shared().meta.volumes.contains_key(&id) {
            break id;
        }
    };
    let cmd = Command::CreateVolume {
        id,
        name: req.name.clone(),
        replicas: req.replicas,
        leader_follows_writes: req.leader_follows_writes,
        now_ms: crate::service::now_ms(),
    };
    st.driver.propose(cmd).await?;
    let meta = st.driver.shared().meta;
    let v = meta
        .volumes
        .get(&id)
        .ok_or_else(|| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "volume vanished".into()))?;
    Ok(Json(volume_info(&meta, v)))
}

async fn list_volumes(State(st): State<ApiState>) -> Json<Vec<VolumeInfo>> {
    let meta = st.driver.shared().meta;
    Json(
        meta.volumes
            .values()
            .map(|v| volume_info(&meta, v))
            .collect(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaRequest {
    node: String,
}

/// The volume and node a replica change names.
fn replica_target(st: &ApiState, volume: &str, body: &[u8]) -> Result<(u64, u64), ApiError> {
    let req: ReplicaRequest = parse_body(body)?;
    let meta = st.driver.shared().meta;
    let vol = meta
        .volume_by_name(volume)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no volume named {volume:?}")))?;
    let node = meta.node_by_name(&req.node).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no node named {:?}", req.node),
        )
    })?;
    Ok((vol.id, node.id))
}

impl From<crate::volume::ReplicaChangeError> for ApiError {
    fn from(e: crate::volume::ReplicaChangeError) -> Self {
        use crate::volume::ReplicaChangeError as E;
        match e {
            E::Invalid(m) => ApiError(StatusCode::CONFLICT, m),
            E::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

/// The volume as `volume list` shows it, after a change.
fn changed_volume(st: &ApiState, id: u64) -> Result<Json<VolumeInfo>, ApiError> {
    let meta = st.driver.shared().meta;
    let v = meta
        .volumes
        .get(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "the volume is gone".into()))?;
    Ok(Json(volume_info(&meta, v)))
}

async fn add_replica(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<VolumeInfo>, ApiError> {
    let (volume, node) = replica_target(&st, &name, &body)?;
    st.volumes.add_replica(volume, node).await?;
    changed_volume(&st, volume)
}

async fn remove_replica(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<VolumeInfo>, ApiError> {
    let (volume, node) = replica_target(&st, &name, &body)?;
    st.volumes.remove_replica(volume, node).await?;
    changed_volume(&st, volume)
}

async fn volume_status(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<VolumeStatus>, ApiError> {
    let meta = st.driver.shared().meta;
    let vol = meta
        .volume_by_name(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no volume named {name:?}")))?
        .clone();
    let mut asks = tokio::task::JoinSet::new();
    for node in vol.replicas.clone() {
        let volumes = st.volumes.clone();
        asks.spawn(async move { (node, volumes.replica_status(vol.id, node).await) });
    }
    let mut answers = std::collections::BTreeMap::new();
    while let Some(Ok((node, s))) = asks.join_next().await {
        answers.insert(node, s);
    }
    let best = answers
        .values()
        .flatten()
        .map(|s| s.applied.max(s.commit))
        .max()
        .unwrap_or(0);
    let leader = answers
        .values()
        .flatten()
        .filter_map(|s| s.leader)
        .max_by_key(|l| {
            answers
                .values()
                .flatten()
                .filter(|s| s.leader == Some(*l))
                .count()
        });
    let name_of = |id: u64| {
        meta.nodes
            .get(&id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("#{id}"))
    };
    let conf = leader.and_then(|l| answers.get(&l).cloned().flatten());
    let role_of = |n: u64| match &conf {
        Some(c) if c.voters.contains(&n) => "voter",
        Some(c) if c.learners.contains(&n) => "learner",
        Some(_) => "joining",
        None => "unknown",
    };
    let replicas = vol
        .replicas
        .iter()
        .map(|&n| {
            let s = answers.get(&n).cloned().flatten();
            ReplicaInfo {
                node: name_of(n),
                healthy: s.is_some(),
                applied_index: s.as_ref().map(|s| s.applied).unwrap_or(0),
                lag_entries: s
                    .as_ref()
                    .map(|s| best.saturating_sub(s.applied))
                    .unwrap_or(best),
                resync_bytes_left: s.as_ref().map_or(0, |s| s.resync_bytes_left),
                resync_bytes_fetched: s.as_ref().map_or(0, |s| s.resync_bytes_fetched),
                role: role_of(n).to_string(),
            }
        })
        .collect();
    let stats = tokio::time::timeout(
        Duration::from_secs(2),
        st.volumes.read(vol.id, holdfast_core::wire::FsRead::Stats),
    )
    .await;
    let (bytes_used, files) = match stats {
        Ok(Ok(holdfast_core::wire::ReadReply::Stats(s))) => (s.bytes_used, s.files),
        _ => st
            .driver
            .shared()
            .volumes
            .get(&vol.id)
            .map(|(_, s)| (s.bytes_used, s.files))
            .unwrap_or((0, 0)),
    };
    Ok(Json(VolumeStatus {
        name: vol.name.clone(),
        kind: "file".into(),
        leader: leader.map(name_of),
        replicas,
        bytes_used,
        files,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MountRequest {
    volume: String,
    path: std::path::PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnmountRequest {
    path: std::path::PathBuf,
}

async fn mount(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: MountRequest = parse_body(&body)?;
    let mounts = st.mounts.clone();
    let (volume, path) = (req.volume.clone(), req.path.clone());
    tokio::task::spawn_blocking(move || mounts.mount(&volume, &path))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            ApiError(
                if e.starts_with("no volume") {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::CONFLICT
                },
                e,
            )
        })?;
    Ok(Json(
        serde_json::json!({ "volume": req.volume, "path": req.path }),
    ))
}

async fn umount(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: UnmountRequest = parse_body(&body)?;
    let mounts = st.mounts.clone();
    let path = req.path.clone();
    tokio::task::spawn_blocking(move || mounts.umount(&path))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            ApiError(
                if e.contains("not a holdfast mount") {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::CONFLICT
                },
                e,
            )
        })?;
    Ok(Json(serde_json::json!({ "unmounted": req.path })))
}

async fn list_mounts(State(st): State<ApiState>) -> Json<Vec<crate::mounts::MountRecord>> {
    Json(st.mounts.list())
}

/// One replica's copy of a volume, for comparing replicas.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaDigest {
    pub node: String,
    pub applied_index: u64,
    /// blake3 over the replica's whole state; `None` if it did not answer.
    pub digest: Option<String>,
}

async fn volume_digests(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ReplicaDigest>>, ApiError> {
    let meta = st.driver.shared().meta;
    let vol = meta
        .volume_by_name(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no volume named {name:?}")))?
        .clone();
    let mut out = Vec::new();
    for node in vol.replicas {
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            st.volumes.replica_call(
                node,
                holdfast_core::wire::VolRequest::Digest { volume: vol.id },
            ),
        )
        .await;
        let name = meta
            .nodes
            .get(&node)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("#{node}"));
        out.push(match reply {
            Ok(Some(holdfast_core::wire::VolReply::Digest { applied, digest })) => ReplicaDigest {
                node: name,
                applied_index: applied,
                digest: Some(digest),
            },
            _ => ReplicaDigest {
                node: name,
                applied_index: 0,
                digest: None,
            },
        });
    }
    Ok(Json(out))
}
