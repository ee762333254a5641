//! The cluster transport: QUIC (quinn) with mutual TLS between members, and
//! an unauthenticated door that admits only join requests.
//!
//! What it does: authenticates peers by their CA-signed certificate (the
//! node id is in the certificate), refuses peers the [`Service`] does not
//! admit (removed or unknown nodes), carries length-prefixed frames on one
//! stream per peer, and answers request/response exchanges.
//! What it does not do: interpret frames. Frames are opaque bytes handed to
//! the [`Service`]; their meaning lives in `holdfast-core::wire`.
//!
//! Invariant: a frame length from the network is checked against
//! `limits::FRAME_BYTES_MAX` before its buffer is allocated.
//! Invariant: every queue is bounded; when a peer's queue is full, frames
//! are dropped and counted (consensus resends).

pub mod pki;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast_core::limits;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, VarInt};
use tokio::sync::mpsc;

pub use tls::Identity;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Application close code: the peer is not (or no longer) admitted.
pub const CLOSE_REFUSED: u32 = 1;

/// Errors of the transport. All are about a peer or the network, and a
/// retry may help, except `Refused` (the peer will not talk to us) and
/// `Config` (our own set-up is wrong).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS set-up: {0}")]
    Config(String),
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("refused by peer: {0}")]
    Refused(String),
    #[error("peer sent a frame of {0} bytes, over the limit")]
    FrameTooLarge(usize),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("timed out")]
    Timeout,
}

impl From<rustls::Error> for TransportError {
    fn from(e: rustls::Error) -> Self {
        TransportError::Config(e.to_string())
    }
}

/// What the node behind the transport provides.
pub trait Service: Send + Sync + 'static {
    /// Whether the member with node id `id` may talk to us now.
    fn admits(&self, id: u64) -> bool;
    /// A frame from member `from`. Must not block.
    fn deliver(&self, from: u64, frame: Vec<u8>);
    /// A request from member `from`; the answer goes back on its stream.
    fn request(&self, from: u64, request: Vec<u8>) -> BoxFuture<Vec<u8>>;
    /// A join request from a client that has no certificate yet.
    fn join(&self, request: Vec<u8>) -> BoxFuture<Vec<u8>>;
}

/// Counters of the transport, registered by the node's metrics.
#[derive(Debug, Clone, Default)]
pub struct TransportMetrics {
    pub frames_sent: Counter,
    pub frames_received: Counter,
    /// Payload bytes of the frames received.
    pub bytes_received: Counter,
    pub frames_dropped: Counter,
    /// Connections refused, by reason (`tls`, `not_member`).
    pub refused: Family<Vec<(String, String)>, Counter>,
    pub joins_served: Counter,
}

impl TransportMetrics {
    fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }
}

struct Link {
    addr: SocketAddr,
    tx: mpsc::Sender<Vec<u8>>,
}

/// A bound QUIC endpoint serving one node.
pub struct Transport {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    rt: tokio::runtime::Handle,
    links: Mutex<HashMap<u64, Link>>,
    conns: tokio::sync::Mutex<HashMap<u64, Connection>>,
    last_seen: Arc<Mutex<HashMap<u64, Instant>>>,
    metrics: TransportMetrics,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish()
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        VarInt::from_u32(limits::PEER_IDLE_TIMEOUT_MS as u32).into(),
    ));
    t.keep_alive_interval(Some(Duration::from_millis(limits::PING_INTERVAL_MS * 2)));
    // Peers share a LAN, perhaps with jumbo frames: let path MTU discovery
    // go that high (it settles lower where the path is smaller). Fewer,
    // larger packets cost less CPU per byte.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(limits::PEER_UDP_PAYLOAD_BYTES_MAX);
    t.mtu_discovery_config(Some(mtu));
    // A volume append carries up to 1 MiB, and a leader keeps a few in
    // flight to each follower: a stream window below that would stall it.
    t.stream_receive_window(VarInt::from_u32(limits::PEER_STREAM_WINDOW_BYTES));
    Arc::new(t)
}

fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TransportError> {
    let q = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(q));
    c.transport_config(transport_config());
    Ok(c)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn write_frame(send: &mut quinn::SendStream, payload: &[u8]) -> Result<(), TransportError> {
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    send.write_all(&buf)
        .await
        .map_err(|e| TransportError::Lost(e.to_string()))
}

/// Reads one frame; `None` at a clean end of stream.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, TransportError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(TransportError::Lost(e.to_string())),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(TransportError::FrameTooLarge(n));
    }
    let mut buf = vec![0u8; n];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| TransportError::Lost(e.to_string()))?;
    Ok(Some(buf))
}

fn closed_reason(e: &quinn::ConnectionError) -> TransportError {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == VarInt::from_u32(CLOSE_REFUSED) =>
        {
            TransportError::Refused(String::from_utf8_lossy(&c.reason).into_owned())
        }
        quinn::ConnectionError::ConnectionClosed(c) => TransportError::Refused(format!("{c}")),
        quinn::ConnectionError::TransportError(t) => TransportError::Refused(t.to_string()),
        other => TransportError::Lost(other.to_string()),
    }
}

fn peer_node_id(conn: &Connection) -> Option<u64> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    pki::node_id_of(certs.first()?)
}

async fn connect(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> Result<Connection, TransportError> {
    let connecting =
        endpoint
            .connect_with(cfg, addr, server_name)
            .map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
    match tokio::time::timeout(
        Duration::from_millis(limits::CONNECT_TIMEOUT_MS),
        connecting,
    )
    .await
    {
        Err(_) => Err(TransportError::Timeout),
        Ok(Err(e)) => Err(match closed_reason(&e) {
            TransportError::Lost(reason) => TransportError::Connect { addr, reason },
            other => other,
        }),
        Ok(Ok(c)) => Ok(c),
    }
}

/// One request/response on a fresh bidirectional stream.
async fn exchange(
    conn: &Connection,
    request: &[u8],
    reply_max: usize,
) -> Result<Vec<u8>, TransportError> {
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| closed_reason(&e))?;
        write_frame(&mut send, request).await?;
        let _ = send.finish();
        read_frame(&mut recv, reply_max)
            .await?
            .ok_or_else(|| TransportError::Lost("stream ended without a reply".into()))
    }
    .await;
    // A peer that refuses our certificate does so after our side of the
    // handshake is done, so the refusal may come while we write or read:
    // report it, not the stream's bare "connection lost".
    result.map_err(|e| match conn.close_reason() {
        Some(reason) => closed_reason(&reason),
        None => e,
    })
}

fn client_endpoint(addr: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| TransportError::Config("bind".into()))?;
    quinn::Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })
}

/// Sends a join request to the cluster member at `addr`, which must
/// present a certificate chain ending in the CA with `ca_fingerprint`.
pub async fn join(
    addr: SocketAddr,
    ca_fingerprint: &str,
    request: Vec<u8>,
) -> Result<Vec<u8>, TransportError> {
    let endpoint = client_endpoint(addr)?;
    let cfg = client_config(tls::join_client_config(ca_fingerprint)?)?;
    let conn = connect(&endpoint, cfg, addr, "holdfast").await?;
    let timeout = Duration::from_millis(limits::JOIN_TIMEOUT_MS + limits::CONNECT_TIMEOUT_MS);
    let reply = tokio::time::timeout(timeout, exchange(&conn, &request, limits::FRAME_BYTES_MAX))
        .await
        .map_err(|_| TransportError::Timeout)?;
    conn.close(VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    reply
}

/// Connects to `addr` presenting `identity` (or nothing), without checking
/// the server, and makes one request. For tests and diagnosis: it shows
/// whether the server admits that identity.
pub async fn probe(
    addr: SocketAddr,
    identity: Option<&Identity>,
    request: Vec<u8>,
) -> Result<Vec<u8>, TransportError> {
    let endpoint = client_endpoint(addr)?;
    let cfg = client_config(tls::probe_client_config(identity)?)?;
    let conn = connect(&endpoint, cfg, addr, "holdfast").await?;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        exchange(&conn, &request, limits::FRAME_BYTES_MAX),
    )
    .await
    .map_err(|_| TransportError::Timeout)?;
    conn.close(VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    reply
}

impl Transport {
    /// Serves on `socket` (bound by the caller, so that a busy port is
    /// found before anything else happens). Must run inside a tokio runtime.
    pub fn bind(
        socket: std::net::UdpSocket,
        identity: &Identity,
        service: Arc<dyn Service>,
    ) -> Result<Arc<Self>, TransportError> {
        let addr = socket.local_addr().map_err(|source| TransportError::Bind {
            addr: ([0, 0, 0, 0], 0).into(),
            source,
        })?;
        // A burst of appends to a follower must not overflow the default
        // receive buffer (about 200 KiB): each datagram dropped there is a
        // loss to QUIC's congestion control, which then slows down. The
        // kernel caps these at net.core.rmem_max / wmem_max.
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_recv_buffer_size(limits::PEER_SOCKET_BUFFER_BYTES);
        let _ = sock.set_send_buffer_size(limits::PEER_SOCKET_BUFFER_BYTES);
        let server_tls = tls::server_config(identity)?;
        let q = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(q));
        server.transport_config(transport_config());
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        let client = client_config(tls::member_client_config(identity)?)?;
        let t = Arc::new(Self {
            endpoint,
            client,
            rt: tokio::runtime::Handle::current(),
            links: Mutex::new(HashMap::new()),
            conns: tokio::sync::Mutex::new(HashMap::new()),
            last_seen: Arc::new(Mutex::new(HashMap::new())),
            metrics: TransportMetrics::default(),
        });
        let accept = t.clone();
        t.rt.spawn(async move { accept.accept_loop(service).await });
        Ok(t)
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    pub fn metrics(&self) -> &TransportMetrics {
        &self.metrics
    }

    /// When we last received anything from member `id`.
    pub fn last_seen(&self, id: u64) -> Option<Instant> {
        lock(&self.last_seen).get(&id).copied()
    }

    /// Queues `frame` for member `to` at `addr`. Never blocks: a full queue
    /// drops the frame.
    pub fn send(&self, to: u64, addr: SocketAddr, frame: Vec<u8>) {
        let mut links = lock(&self.links);
        let stale = links
            .get(&to)
            .map(|l| l.addr != addr || l.tx.is_closed())
            .unwrap_or(true);
        if stale {
            let (tx, rx) = mpsc::channel(limits::PEER_QUEUE_DEPTH_MAX);
            let (endpoint, cfg, metrics) = (
                self.endpoint.clone(),
                self.client.clone(),
                self.metrics.clone(),
            );
            self.rt
                .spawn(run_link(endpoint, cfg, to, addr, rx, metrics));
            links.insert(to, Link { addr, tx });
        }
        if let Some(link) = links.get(&to) {
            if link.tx.try_send(frame).is_err() {
                self.metrics.frames_dropped.inc();
            }
        }
    }

    /// Stops talking to member `id` (it was removed).
    pub fn forget(&self, id: u64) {
        lock(&self.links).remove(&id);
        lock(&self.last_seen).remove(&id);
    }

    /// A request/response exchange with member `to`.
    pub async fn request(
        &self,
        to: u64,
        addr: SocketAddr,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let conn = {
            let mut conns = self.conns.lock().await;
            match conns
                .get(&to)
                .filter(|c| c.close_reason().is_none() && c.remote_address() == addr)
            {
                Some(c) => c.clone(),
                None => {
                    let c = connect(
                        &self.endpoint,
                        self.client.clone(),
                        addr,
                        &pki::node_dns_name(to),
                    )
                    .await?;
                    conns.insert(to, c.clone());
                    c
                }
            }
        };
        let r = exchange(&conn, &request, limits::FRAME_BYTES_MAX).await;
        if r.is_ok() {
            lock(&self.last_seen).insert(to, Instant::now());
        }
        r
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(&self) {
        lock(&self.links).clear();
        self.endpoint.close(VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    async fn accept_loop(self: Arc<Self>, service: Arc<dyn Service>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let (svc, this) = (service.clone(), self.clone());
            self.rt
                .spawn(async move { this.serve(incoming, svc).await });
        }
    }

    async fn serve(self: Arc<Self>, incoming: quinn::Incoming, svc: Arc<dyn Service>) {
        let remote = incoming.remote_address();
        let conn =
            match tokio::time::timeout(Duration::from_millis(limits::CONNECT_TIMEOUT_MS), incoming)
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "refused connection: handshake failed");
                    self.metrics.refuse("tls");
                    return;
                }
                Err(_) => {
                    self.metrics.refuse("tls");
                    return;
                }
            };
        match peer_node_id(&conn) {
            Some(id) if svc.admits(id) => self.serve_member(conn, id, svc).await,
            Some(id) => {
                tracing::info!(%remote, peer = id, "refused connection: not a member");
                self.metrics.refuse("not_member");
                conn.close(
                    VarInt::from_u32(CLOSE_REFUSED),
                    b"not a member of this cluster",
                );
            }
            None => self.serve_joiner(conn, svc).await,
        }
    }

    async fn serve_member(self: Arc<Self>, conn: Connection, id: u64, svc: Arc<dyn Service>) {
        loop {
            tokio::select! {
                uni = conn.accept_uni() => {
                    let Ok(mut recv) = uni else { return };
                    let (svc, this, conn) = (svc.clone(), self.clone(), conn.clone());
                    self.rt.spawn(async move {
                        loop {
                            match read_frame(&mut recv, limits::FRAME_BYTES_MAX).await {
                                Ok(Some(frame)) => {
                                    if !svc.admits(id) {
                                        this.metrics.refuse("not_member");
                                        conn.close(VarInt::from_u32(CLOSE_REFUSED), b"not a member of this cluster");
                                        return;
                                    }
                                    lock(&this.last_seen).insert(id, Instant::now());
                                    this.metrics.frames_received.inc();
                                    this.metrics.bytes_received.inc_by(frame.len() as u64);
                                    svc.deliver(id, frame);
                                }
                                Ok(None) => return,
                                Err(e) => {
                                    tracing::debug!(peer = id, error = %e, "peer stream ended");
                                    return;
                                }
                            }
                        }
                    });
                }
                bi = conn.accept_bi() => {
                    let Ok((mut send, mut recv)) = bi else { return };
                    let (svc, this) = (svc.clone(), self.clone());
                    self.rt.spawn(async move {
                        let Ok(Some(req)) = read_frame(&mut recv, limits::FRAME_BYTES_MAX).await else { return };
                        if !svc.admits(id) {
                            return;
                        }
                        lock(&this.last_seen).insert(id, Instant::now());
                        let reply = svc.request(id, req).await;
                        if write_frame(&mut send, &reply).await.is_ok() {
                            let _ = send.finish();
                        }
                    });
                }
            }
        }
    }

    /// A client without a certificate may make exactly one join request.
    async fn serve_joiner(self: Arc<Self>, conn: Connection, svc: Arc<dyn Service>) {
        let budget = Duration::from_millis(limits::JOIN_TIMEOUT_MS + limits::CONNECT_TIMEOUT_MS);
        let work = async {
            let (mut send, mut recv) = conn.accept_bi().await.ok()?;
            let req = read_frame(&mut recv, limits::CSR_BYTES_MAX * 2)
                .await
                .ok()??;
            self.metrics.joins_served.inc();
            let reply = svc.join(req).await;
            write_frame(&mut send, &reply).await.ok()?;
            send.finish().ok()?;
            // Let the client read the reply before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            Some(())
        };
        if tokio::time::timeout(budget, work).await.is_err() {
            conn.close(VarInt::from_u32(CLOSE_REFUSED), b"join timed out");
        }
    }
}

async fn run_link(
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    to: u64,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    metrics: TransportMetrics,
) {
    let name = pki::node_dns_name(to);
    let mut backoff = Duration::from_millis(50);
    loop {
        let conn = match connect(&endpoint, cfg.clone(), addr, &name).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = to, %addr, error = %e, "cannot reach peer");
                // Frames queued for an unreachable peer are stale by the
                // time it is back; consensus resends what matters.
                while rx.try_recv().is_ok() {
                    metrics.frames_dropped.inc();
                }
                if rx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let Ok(mut send) = conn.open_uni().await else {
            continue;
        };
        loop {
            let Some(first) = rx.recv().await else {
                let _ = send.finish();
                return;
            };
            // Frames are handed to quinn as they are, without copying them
            // into one buffer (a volume append carries up to 1 MiB).
            let mut chunks = Vec::new();
            let (mut n, mut bytes) = (0u64, 0usize);
            for frame in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                bytes += 4 + frame.len();
                chunks.push(Bytes::copy_from_slice(&(frame.len() as u32).to_be_bytes()));
                chunks.push(Bytes::from(frame));
                n += 1;
                if bytes > 1 << 20 {
                    break;
                }
            }
            if let Err(e) = send.write_all_chunks(&mut chunks).await {
                tracing::debug!(peer = to, error = %e, "peer stream broke");
                metrics.frames_dropped.inc_by(n);
                break;
            }
            metrics.frames_sent.inc_by(n);
        }
    }
}
