//! What the node offers on the cluster transport: it admits members,
//! routes their frames to the consensus thread, answers pings, and admits
//! new nodes that present a valid join token.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use holdfast_core::limits;
use holdfast_core::meta::{Change, JoinToken, NodeRecord, Outcome};
use holdfast_core::wire::{self, JoinReply, JoinRequest, PeerInfo, PeerMsg};
use holdfast_transport::{pki, BoxFuture, Service};

use crate::driver::DriverHandle;
use crate::metrics::{label, Metrics};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct NodeService {
    pub driver: DriverHandle,
    pub metrics: Metrics,
    /// Members we may talk to before our metadata arrives (a node that just
    /// joined knows its peers from the join reply).
    pub seed_peers: Vec<u64>,
    /// The plugin store, set once the transport it needs is up.
    pub plugins: Arc<std::sync::OnceLock<Arc<crate::plugins::PluginStore>>>,
}

impl Service for NodeService {
    fn admits(&self, id: u64) -> bool {
        let meta = self.driver.shared().meta;
        if meta.nodes.is_empty() {
            return self.seed_peers.contains(&id);
        }
        meta.admits(id)
    }

    fn deliver(&self, from: u64, frame: Vec<u8>) {
        match wire::decode::<PeerMsg>(&frame, limits::FRAME_BYTES_MAX) {
            Ok(PeerMsg::Raft { group, msg }) => match holdfast_core::decode_raft(&msg) {
                Ok(m) => {
                    self.driver.deliver(from, group, m);
                }
                Err(e) => tracing::warn!(peer = from, error = %e, "dropped malformed raft message"),
            },
            Ok(PeerMsg::Ping) => {}
            Ok(PeerMsg::Vol(_) | PeerMsg::Blob(_)) => {
                tracing::debug!(peer = from, "dropped a request sent as a frame")
            }
            Err(e) => tracing::warn!(peer = from, error = %e, "dropped malformed frame"),
        }
    }

    fn request(&self, _from: u64, request: Vec<u8>) -> BoxFuture<Vec<u8>> {
        let driver = self.driver.clone();
        let plugins = self.plugins.get().cloned();
        Box::pin(async move {
            match wire::decode::<PeerMsg>(&request, limits::FRAME_BYTES_MAX) {
                Ok(PeerMsg::Ping) => wire::encode(&PeerMsg::Ping),
                Ok(PeerMsg::Vol(req)) => {
                    wire::encode(&crate::volume::serve_local(&driver, req).await)
                }
                Ok(PeerMsg::Blob(req)) => wire::encode(&match plugins {
                    Some(p) => p.serve(req).await,
                    None => wire::BlobReply::Failed("plugin store starting".into()),
                }),
                _ => wire::encode(&wire::VolReply::Unavailable("malformed request".into())),
            }
        })
    }

    fn join(&self, request: Vec<u8>) -> BoxFuture<Vec<u8>> {
        let driver = self.driver.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let reply = match admit(&driver, &request).await {
                Ok(accepted) => {
                    metrics
                        .joins
                        .get_or_create(&label("outcome", "accepted"))
                        .inc();
                    accepted
                }
                Err(reason) => {
                    tracing::info!(%reason, "join refused");
                    metrics
                        .joins
                        .get_or_create(&label("outcome", "refused"))
                        .inc();
                    JoinReply::Refused { reason }
                }
            };
            wire::encode(&reply)
        })
    }
}

/// Checks a join request, commits the new member, and issues its
/// certificate. Every refusal is a one-line reason for the joiner.
async fn admit(driver: &DriverHandle, request: &[u8]) -> Result<JoinReply, String> {
    let req: JoinRequest = wire::decode(request, limits::CSR_BYTES_MAX * 2)
        .map_err(|e| format!("malformed join request: {e}"))?;
    wire::check_name(&req.name)?;
    wire::check_addr(&req.peer_addr)?;
    wire::check_addr(&req.api_addr)?;
    if req.csr_der.len() > limits::CSR_BYTES_MAX {
        return Err("certificate request too large".into());
    }
    let (token_id, secret) = req.token.split_once('.').ok_or("malformed join token")?;
    let secret_hash = JoinToken::secret_hash(secret);
    let now = now_ms();
    let meta = driver.shared().meta;
    if meta.nodes.is_empty() {
        return Err("this node has not caught up with the cluster yet; try another member".into());
    }
    // Fail fast on what we can see; the state machine checks again when the
    // change commits.
    meta.check_token(token_id, &secret_hash, now)?;
    if meta.node_by_name(&req.name).is_some() {
        return Err(format!("a node named {:?} is already a member", req.name));
    }
    let id = loop {
        let id = rand::random::<u64>() >> 12;
        if id != 0 && !meta.nodes.contains_key(&id) && !meta.revoked.contains(&id) {
            break id;
        }
    };
    let node = NodeRecord {
        id,
        name: req.name.clone(),
        peer_addr: req.peer_addr.clone(),
        api_addr: req.api_addr.clone(),
        role: req.role,
    };
    let change = Change::Join {
        node,
        token_id: token_id.to_string(),
        secret_hash,
        now_ms: now,
    };
    match driver.conf_change(change).await {
        Ok(Outcome::Joined { id: joined }) if joined == id => {}
        Ok(other) => return Err(format!("unexpected outcome {other:?}")),
        Err(e) => return Err(e.to_string()),
    }
    let meta = driver.shared().meta;
    let ca = pki::CertAndKey {
        cert_pem: meta.ca_cert_pem.clone(),
        key_pem: meta.ca_key_pem.clone(),
    };
    let cert_pem = pki::sign_node(&ca, &req.csr_der, id, &req.name)
        .map_err(|e| format!("cannot issue certificate: {e}"))?;
    let peers = meta
        .nodes
        .values()
        .map(|n| PeerInfo {
            id: n.id,
            name: n.name.clone(),
            peer_addr: n.peer_addr.clone(),
        })
        .collect();
    Ok(JoinReply::Accepted {
        node_id: id,
        cluster_id: meta.cluster_id.clone(),
        cert_pem,
        ca_pem: meta.ca_cert_pem.clone(),
        peers,
    })
}

/// Sends a ping to every member now and then, so that health reflects
/// reachability in both directions.
pub async fn ping_loop(
    driver: DriverHandle,
    transport: Arc<holdfast_transport::Transport>,
    me: u64,
) {
    let mut every =
        tokio::time::interval(std::time::Duration::from_millis(limits::PING_INTERVAL_MS));
    loop {
        every.tick().await;
        let meta = driver.shared().meta;
        for n in meta.nodes.values().filter(|n| n.id != me) {
            if let Ok(addr) = n.peer_addr.parse() {
                transport.send(n.id, addr, wire::encode(&PeerMsg::Ping));
            }
        }
    }
}
