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

/// Per-plugin metrics of this node's plugin host, read at each scrape:
/// calls, traps, timeouts, built-in decisions served, quarantine state, and
/// the call latency histogram, labelled `plugin`.
#[derive(Debug)]
pub struct PluginMetrics(pub std::sync::Arc<holdfast_plugin::PluginHost>);

impl prometheus_client::collector::Collector for PluginMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let plugins: Vec<_> = self
            .0
            .list()
            .into_iter()
            .filter_map(|s| Some((s.name.clone(), s.state, self.0.metrics(&s.name)?)))
            .collect();
        if plugins.is_empty() {
            // No plugin, no family: nothing declared stands still.
            return Ok(());
        }
        type Pick = fn(&holdfast_plugin::MetricsSnapshot) -> u64;
        let counters: [(&str, &str, Pick); 4] = [
            (
                "holdfast_plugin_calls",
                "Plugin calls that ran plugin code",
                |m| m.calls,
            ),
            ("holdfast_plugin_traps", "Plugin calls that trapped", |m| {
                m.traps
            }),
            (
                "holdfast_plugin_timeouts",
                "Plugin calls stopped at their deadline",
                |m| m.timeouts,
            ),
            (
                "holdfast_plugin_defaults_served",
                "Calls answered by the built-in decision (fail open)",
                |m| m.defaults_served,
            ),
        ];
        for (name, help, pick) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (plugin, _, m) in &plugins {
                let labels = label("plugin", plugin);
                family
                    .encode_family(&labels)?
                    .encode_counter::<Labels, u64, f64>(&pick(m), None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "holdfast_plugin_quarantined",
            "1 while the plugin is quarantined on this node",
            None,
            MetricType::Gauge,
        )?;
        for (plugin, state, _) in &plugins {
            let q = i64::from(*state == holdfast_plugin::PluginState::Quarantined);
            family
                .encode_family(&label("plugin", plugin))?
                .encode_gauge(&q)?;
        }
        let mut family = encoder.encode_descriptor(
            "holdfast_plugin_call_seconds",
            "Plugin call latency",
            None,
            MetricType::Histogram,
        )?;
        for (plugin, _, m) in &plugins {
            let bounds = holdfast_plugin::LATENCY_BUCKETS_NS
                .iter()
                .map(|&ns| ns as f64 / 1e9)
                .chain(std::iter::once(f64::MAX));
            let buckets: Vec<(f64, u64)> = bounds.zip(m.latency_buckets.iter().copied()).collect();
            let count = m.latency_buckets.iter().sum();
            family
                .encode_family(&label("plugin", plugin))?
                .encode_histogram::<Labels>(m.latency_sum_ns as f64 / 1e9, count, &buckets, None)?;
        }
        Ok(())
    }
}
