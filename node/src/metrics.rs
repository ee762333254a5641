//! The node's Prometheus metrics. Every metric declared here is updated
//! somewhere, and the cluster tests scrape `/metrics` to prove it.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_messages_received: Counter,
    pub raft_messages_sent: Counter,
    pub proposals: Family<Labels, Counter>,
    pub api_requests: Family<Labels, Counter>,
    pub joins: Family<Labels, Counter>,
}

pub fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
    pub fn register(&self, reg: &mut Registry, transport: &holdfast_transport::TransportMetrics) {
        reg.register(
            "holdfast_raft_term",
            "Current Raft term of the metadata group",
            self.raft_term.clone(),
        );
        reg.register(
            "holdfast_raft_is_leader",
            "1 when this node leads the metadata group",
            self.raft_is_leader.clone(),
        );
        reg.register(
            "holdfast_raft_applied_index",
            "Last applied index of the metadata group",
            self.raft_applied_index.clone(),
        );
        reg.register(
            "holdfast_raft_messages_received",
            "Raft messages received from peers",
            self.raft_messages_received.clone(),
        );
        reg.register(
            "holdfast_raft_messages_sent",
            "Raft messages handed to the transport",
            self.raft_messages_sent.clone(),
        );
        reg.register(
            "holdfast_proposals",
            "Metadata proposals by outcome",
            self.proposals.clone(),
        );
        reg.register(
            "holdfast_api_requests",
            "HTTP API requests by status code",
            self.api_requests.clone(),
        );
        reg.register(
            "holdfast_joins",
            "Join requests served, by outcome",
            self.joins.clone(),
        );
        reg.register(
            "holdfast_transport_frames_sent",
            "Frames sent to peers",
            transport.frames_sent.clone(),
        );
        reg.register(
            "holdfast_transport_frames_received",
            "Frames received from peers",
            transport.frames_received.clone(),
        );
        reg.register(
            "holdfast_transport_bytes_received",
            "Payload bytes of the frames received from peers",
            transport.bytes_received.clone(),
        );
        reg.register(
            "holdfast_transport_frames_dropped",
            "Frames dropped (queue full or peer unreachable)",
            transport.frames_dropped.clone(),
        );
        reg.register(
            "holdfast_transport_refused",
            "Connections refused, by reason",
            transport.refused.clone(),
        );
        reg.register(
            "holdfast_transport_joins_served",
            "Unauthenticated join exchanges served",
            transport.joins_served.clone(),
        );
    }
}
