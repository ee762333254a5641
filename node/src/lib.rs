//! The holdfast node daemon: it brings a node up from its data folder
//! (bootstrapping a new cluster, joining one with a token, or restarting),
//! runs the consensus thread, the cluster transport and the HTTP API, and
//! shuts them down cleanly.
//!
//! It owns the wiring, not the logic: consensus lives in `holdfast-core`,
//! bytes on disk in `holdfast-storage`, the network in `holdfast-transport`.

pub mod api;
pub mod disk;
pub mod driver;
pub mod faults;
pub mod metrics;
pub mod mounts;
pub mod plugins;
pub mod resync;
pub mod service;
pub mod volume;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use holdfast_core::group::{self, RaftGroup};
use holdfast_core::meta::{JoinToken, MetaMachine, MetaState, NodeRecord, Role, META_GROUP};
use holdfast_core::wire::{self, JoinReply, JoinRequest};
use holdfast_storage::{Engine, RocksEngine};
use holdfast_transport::{pki, Identity, Transport, TransportError};

use crate::disk::{DataDir, NodeFile};

/// Why the node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The operator asked for something that cannot be done (bad flags, a
    /// busy port, a folder of another cluster, a refused token).
    #[error("{0}")]
    Usage(String),
    /// A local failure (files, storage). Retrying may help once fixed.
    #[error("{0}")]
    Local(String),
    /// The node stopped because continuing could break a promise.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// `holdfast serve` options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data: PathBuf,
    pub name: Option<String>,
    pub listen: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub bootstrap: bool,
    pub join: Option<SocketAddr>,
    pub token: Option<String>,
    pub role: Role,
}

enum Mode {
    Restart(NodeFile),
    Bootstrap,
    Join,
}

struct Started {
    file: NodeFile,
    identity: Identity,
    engine: Arc<dyn Engine>,
    seed_peers: HashMap<u64, SocketAddr>,
}

fn local(e: impl std::fmt::Display) -> NodeError {
    NodeError::Local(e.to_string())
}

fn bind_sockets(
    listen: SocketAddr,
    api: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), NodeError> {
    let udp = std::net::UdpSocket::bind(listen)
        .map_err(|e| NodeError::Usage(format!("cannot listen on {listen} (peer port): {e}")))?;
    let tcp = std::net::TcpListener::bind(api)
        .map_err(|e| NodeError::Usage(format!("cannot listen on {api} (API port): {e}")))?;
    tcp.set_nonblocking(true).map_err(local)?;
    Ok((udp, tcp))
}

fn check_advertisable(listen: SocketAddr) -> Result<(), NodeError> {
    if listen.ip().is_unspecified() || listen.port() == 0 {
        return Err(NodeError::Usage(format!(
            "--listen {listen} must name an address and port that other nodes can reach"
        )));
    }
    Ok(())
}

/// Runs a node until `stop` completes or the node fails.
pub async fn serve(
    opts: ServeOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    faults::init_from_env().map_err(NodeError::Usage)?;
    let dir = DataDir::new(&opts.data);
    let existing = dir.load()?;
    let mode = match (&existing, opts.bootstrap, opts.join) {
        (_, true, Some(_)) => return Err(NodeError::Usage("--bootstrap and --join exclude each other".into())),
        (Some(f), true, None) => {
            return Err(NodeError::Usage(format!(
                "{} already holds node {:?} of cluster {}; restart it with `holdfast serve --data {}`",
                opts.data.display(),
                f.name,
                f.cluster_id,
                opts.data.display()
            )))
        }
        (Some(f), false, Some(_)) => {
            let token = JoinToken::parse(opts.token.as_deref().unwrap_or_default()).map_err(NodeError::Usage)?;
            if token.ca_fingerprint != f.ca_fingerprint {
                return Err(NodeError::Usage(format!(
                    "{} belongs to another cluster ({}); use an empty folder to join this one",
                    opts.data.display(),
                    f.cluster_id
                )));
            }
            return Err(NodeError::Usage(format!("{} is already a member as {:?}; restart it with `holdfast serve --data DIR`", opts.data.display(), f.name)));
        }
        (Some(f), false, None) => {
            for (flag, given, stored) in [
                ("--name", opts.name.clone(), &f.name),
                ("--listen", opts.listen.map(|a| a.to_string()), &f.listen),
                ("--api", opts.api.map(|a| a.to_string()), &f.api),
            ] {
                if let Some(g) = given.filter(|g| g != stored) {
                    return Err(NodeError::Usage(format!("{flag} {g} differs from {stored} in {}; changing it is not supported", dir.node_file().display())));
                }
            }
            Mode::Restart(f.clone())
        }
        (None, false, None) => {
            return Err(NodeError::Usage(format!(
                "{} holds no node: pass --bootstrap to start a new cluster, or --join ADDR --token TOKEN to join one",
                opts.data.display()
            )))
        }
        (None, true, None) => Mode::Bootstrap,
        (None, false, Some(_)) => Mode::Join,
    };
    let (listen, api) = match &mode {
        Mode::Restart(f) => (
            f.listen.parse().map_err(local)?,
            f.api.parse().map_err(local)?,
        ),
        Mode::Bootstrap | Mode::Join => {
            let name = opts
                .name
                .as_deref()
                .ok_or_else(|| NodeError::Usage("--name is required for a new node".into()))?;
            wire::check_name(name).map_err(NodeError::Usage)?;
            dir.check_empty()?;
            let listen = opts
                .listen
                .ok_or_else(|| NodeError::Usage("--listen is required for a new node".into()))?;
            check_advertisable(listen)?;
            (
                listen,
                opts.api
                    .ok_or_else(|| NodeError::Usage("--api is required for a new node".into()))?,
            )
        }
    };
    let (udp, tcp) = bind_sockets(listen, api)?;
    let started = match mode {
        Mode::Restart(f) => restart(&dir, f),
        Mode::Bootstrap => init_cleanly(&dir, bootstrap(&dir, &opts, listen, api)),
        Mode::Join => {
            let r = join(&dir, &opts, listen, api).await;
            init_cleanly(&dir, r)
        }
    }?;
    run(dir, started, udp, tcp, stop).await
}

/// A failed first start leaves the (formerly empty) folder empty again.
fn init_cleanly(dir: &DataDir, r: Result<Started, NodeError>) -> Result<Started, NodeError> {
    if r.is_err() {
        if let Ok(entries) = std::fs::read_dir(&dir.root) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    r
}

fn open_engine(dir: &DataDir) -> Result<Arc<dyn Engine>, NodeError> {
    tracing::info!(
        hardware = holdfast_storage::crc::hardware_crc_in_use(),
        "RocksDB checksums (CRC32C)"
    );
    Ok(Arc::new(
        RocksEngine::open(
            &dir.db(),
            holdfast_core::limits::MEMTABLES,
            Some(holdfast_core::fs::FsMachine::STORAGE_SPLIT),
        )
        .map_err(|e| NodeError::Local(format!("cannot open {}: {e}", dir.db().display())))?,
    ))
}

fn bootstrap(
    dir: &DataDir,
    opts: &ServeOptions,
    listen: SocketAddr,
    api: SocketAddr,
) -> Result<Started, NodeError> {
    let name = opts.name.clone().unwrap_or_default();
    let cluster_id = hex::encode(rand::random::<[u8; 8]>());
    let ca = pki::generate_ca(&cluster_id).map_err(local)?;
    let node_id = (rand::random::<u64>() >> 12).max(1);
    let (key_pem, csr) = pki::generate_csr(&name).map_err(local)?;
    let cert_pem = pki::sign_node(&ca, &csr, node_id, &name).map_err(local)?;
    let admin_token = hex::encode(rand::random::<[u8; 24]>());
    let mut state = MetaState {
        cluster_id: cluster_id.clone(),
        ca_cert_pem: ca.cert_pem.clone(),
        ca_key_pem: ca.key_pem.clone(),
        admin_token,
        ..Default::default()
    };
    state.nodes.insert(
        node_id,
        NodeRecord {
            id: node_id,
            name: name.clone(),
            peer_addr: listen.to_string(),
            api_addr: api.to_string(),
            role: Role::Voter,
        },
    );
    let engine = open_engine(dir)?;
    group::bootstrap(
        engine.clone(),
        META_GROUP,
        &[node_id],
        MetaMachine::initial_batch(&state),
    )
    .map_err(local)?;
    let identity = Identity::from_pem(&ca.cert_pem, &cert_pem, &key_pem).map_err(local)?;
    let file = NodeFile {
        cluster_id,
        node_id,
        name,
        listen: listen.to_string(),
        api: api.to_string(),
        ca_fingerprint: pki::fingerprint(&identity.ca),
        seed_peers: Vec::new(),
    };
    write_identity(dir, &file, &ca.cert_pem, &cert_pem, &key_pem)?;
    dir.write_file(
        &dir.admin_token(),
        format!("{}\n", state.admin_token).as_bytes(),
        true,
    )?;
    Ok(Started {
        file,
        identity,
        engine,
        seed_peers: HashMap::new(),
    })
}

fn write_identity(
    dir: &DataDir,
    file: &NodeFile,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), NodeError> {
    dir.write_file(&dir.tls("ca.crt"), ca_pem.as_bytes(), false)?;
    dir.write_file(&dir.tls("node.crt"), cert_pem.as_bytes(), false)?;
    dir.write_file(&dir.tls("node.key"), key_pem.as_bytes(), true)?;
    // Written last: its presence means the node is complete.
    dir.write_file(
        &dir.node_file(),
        serde_json::to_string_pretty(file)
            .map_err(local)?
            .as_bytes(),
        false,
    )
}

async fn join(
    dir: &DataDir,
    opts: &ServeOptions,
    listen: SocketAddr,
    api: SocketAddr,
) -> Result<Started, NodeError> {
    let seed = opts
        .join
        .ok_or_else(|| NodeError::Usage("--join needs an address".into()))?;
    let token = JoinToken::parse(
        opts.token
            .as_deref()
            .ok_or_else(|| NodeError::Usage("--join needs --token".into()))?,
    )
    .map_err(NodeError::Usage)?;
    let name = opts.name.clone().unwrap_or_default();
    let (key_pem, csr_der) = pki::generate_csr(&name).map_err(local)?;
    let req = JoinRequest {
        token: format!("{}.{}", token.id, token.secret),
        name: name.clone(),
        peer_addr: listen.to_string(),
        api_addr: api.to_string(),
        role: opts.role,
        csr_der,
    };
    let reply = holdfast_transport::join(seed, &token.ca_fingerprint, wire::encode(&req))
        .await
        .map_err(|e| match e {
            TransportError::Refused(r) if r.contains("fingerprint") => NodeError::Usage(format!(
                "join refused: {seed} is not a member of the cluster this token is for"
            )),
            TransportError::Connect { reason, .. } if reason.contains("fingerprint") => {
                NodeError::Usage(format!(
                    "join refused: {seed} is not a member of the cluster this token is for"
                ))
            }
            other => NodeError::Usage(format!("join failed: {other}")),
        })?;
    let reply: JoinReply = wire::decode(&reply, holdfast_core::limits::FRAME_BYTES_MAX)
        .map_err(|e| NodeError::Usage(format!("join failed: {e}")))?;
    let (node_id, cluster_id, cert_pem, ca_pem, peers) = match reply {
        JoinReply::Accepted {
            node_id,
            cluster_id,
            cert_pem,
            ca_pem,
            peers,
        } => (node_id, cluster_id, cert_pem, ca_pem, peers),
        JoinReply::Refused { reason } => {
            return Err(NodeError::Usage(format!("join refused: {reason}")))
        }
    };
    let identity = Identity::from_pem(&ca_pem, &cert_pem, &key_pem).map_err(local)?;
    if pki::fingerprint(&identity.ca) != token.ca_fingerprint {
        return Err(NodeError::Usage(
            "join refused: the cluster answered with a CA that does not match the token".into(),
        ));
    }
    let file = NodeFile {
        cluster_id,
        node_id,
        name,
        listen: listen.to_string(),
        api: api.to_string(),
        ca_fingerprint: token.ca_fingerprint,
        seed_peers: peers.into_iter().filter(|p| p.id != node_id).collect(),
    };
    let engine = open_engine(dir)?;
    write_identity(dir, &file, &ca_pem, &cert_pem, &key_pem)?;
    let seed_peers = seed_peers_of(&file);
    Ok(Started {
        file,
        identity,
        engine,
        seed_peers,
    })
}

fn seed_peers_of(file: &NodeFile) -> HashMap<u64, SocketAddr> {
    file.seed_peers
        .iter()
        .filter_map(|p| Some((p.id, p.peer_addr.parse().ok()?)))
        .collect()
}

fn restart(dir: &DataDir, file: NodeFile) -> Result<Started, NodeError> {
    let identity = Identity::from_pem(
        &dir.read_text(&dir.tls("ca.crt"))?,
        &dir.read_text(&dir.tls("node.crt"))?,
        &dir.read_text(&dir.tls("node.key"))?,
    )
    .map_err(local)?;
    if pki::fingerprint(&identity.ca) != file.ca_fingerprint {
        return Err(NodeError::Local(format!(
            "{} does not match tls/ca.crt",
            dir.node_file().display()
        )));
    }
    let engine = open_engine(dir)?;
    let seed_peers = seed_peers_of(&file);
    Ok(Started {
        file,
        identity,
        engine,
        seed_peers,
    })
}

async fn run(
    dir: DataDir,
    s: Started,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let me = s.file.node_id;
    let sm = MetaMachine::load(&*s.engine).map_err(NodeError::Local)?;
    let raft =
        RaftGroup::open(me, META_GROUP, s.engine.clone(), sm, rand::random()).map_err(local)?;
    let metrics = metrics::Metrics::default();
    let (driver, handle) = driver::Driver::prepare(
        raft,
        s.engine.clone(),
        metrics.clone(),
        s.seed_peers.clone(),
        dir.root.clone(),
    );
    let plugin_host = Arc::new(
        holdfast_plugin::PluginHost::new(holdfast_plugin::HostConfig {
            cache_dir: Some(dir.plugin_cache()),
            ..Default::default()
        })
        .map_err(|e| NodeError::Local(format!("cannot start the plugin host: {e}")))?,
    );
    let plugin_slot = Arc::new(std::sync::OnceLock::new());
    let svc = Arc::new(service::NodeService {
        driver: handle.clone(),
        metrics: metrics.clone(),
        seed_peers: s.seed_peers.keys().copied().collect(),
        plugins: plugin_slot.clone(),
    });
    let transport =
        Transport::bind(udp, &s.identity, svc).map_err(|e| NodeError::Usage(e.to_string()))?;
    let consensus = driver.spawn(transport.clone());
    let plugins = Arc::new(plugins::PluginStore::new(
        plugin_host,
        s.engine.clone(),
        transport.clone(),
        handle.clone(),
        me,
    ));
    let _ = plugin_slot.set(plugins.clone());
    let converger = tokio::spawn(plugins.clone().run());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry, transport.metrics());
    registry.register_collector(Box::new(metrics::PluginMetrics(plugins.host.clone())));
    let first_seq = volume::op_seq_start(&*s.engine).map_err(NodeError::Local)?;
    let volumes = Arc::new(volume::Volumes::new(
        handle.clone(),
        transport.clone(),
        me,
        first_seq,
    ));
    let mounts = Arc::new(mounts::Mounts::new(
        dir.clone(),
        volumes.clone(),
        tokio::runtime::Handle::current(),
    ));
    let state = api::ApiState {
        driver: handle.clone(),
        transport: transport.clone(),
        me,
        metrics,
        registry: Arc::new(registry),
        volumes,
        mounts: mounts.clone(),
        plugins,
    };
    let restorer = {
        let mounts = mounts.clone();
        tokio::task::spawn_blocking(move || mounts.restore())
    };
    let pinger = tokio::spawn(service::ping_loop(handle.clone(), transport.clone(), me));
    let token_writer = tokio::spawn(write_admin_token(dir, handle.clone()));
    tracing::info!(node = %s.file.name, id = me, cluster = %s.file.cluster_id, listen = %s.file.listen, api = %s.file.api, "node up");

    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    let watch = handle.clone();
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if let Some(f) = watch.shared().fatal {
                let _ = fatal_tx.send(f);
                return;
            }
        }
    });
    let listener = tokio::net::TcpListener::from_std(tcp).map_err(local)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    let outcome = tokio::select! {
        _ = stop => Ok(()),
        f = fatal_rx => Err(NodeError::Fatal(f.unwrap_or_default())),
    };
    tracing::info!("node stopping");
    let _ = restorer.await;
    {
        let mounts = mounts.clone();
        let _ = tokio::task::spawn_blocking(move || mounts.shutdown()).await;
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    pinger.abort();
    converger.abort();
    token_writer.abort();
    watcher.abort();
    handle.shutdown();
    let _ = tokio::task::spawn_blocking(move || consensus.join()).await;
    transport.shutdown().await;
    s.engine.sync().map_err(local)?;
    outcome
}

/// Every member keeps the admin token in `DIR/admin.token` (0600) once it
/// knows it, so that the CLI can be used on any node.
async fn write_admin_token(dir: DataDir, driver: driver::DriverHandle) {
    loop {
        let token = driver.shared().meta.admin_token.clone();
        if !token.is_empty() {
            if !dir.admin_token().exists() {
                if let Err(e) =
                    dir.write_file(&dir.admin_token(), format!("{token}\n").as_bytes(), true)
                {
                    tracing::warn!(error = %e, "cannot write admin token file");
                }
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
