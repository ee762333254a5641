//! The bundled SQL router: writes, DDL, session statements and everything
//! inside a transaction go to the primary; reads go to the least-lagging
//! healthy replica within `max-lag-ms` (default 1000), and to the primary
//! when no replica qualifies. A `primary` hint sends a read to the primary.

use holdfast_plugin_sdk::sql_router::*;

struct SqlRouter;

impl Guest for SqlRouter {
    fn route(input: SqlInput) -> SqlDecision {
        let primary_up = input
            .servers
            .iter()
            .any(|s| s.role == Role::Primary && s.health == Health::Healthy);
        let q = &input.query;
        let read = q.kind == StatementKind::Read
            && !q.in_transaction
            && q.hint.as_deref() != Some("primary");
        if read {
            if let Some(r) = best_replica(&input.servers, config_or("max-lag-ms", 1000)) {
                return SqlDecision::Reader(r.id.clone());
            }
        }
        if primary_up {
            SqlDecision::Writer
        } else {
            SqlDecision::Reject("no healthy primary".into())
        }
    }
}

/// The healthy replica with the least lag (then the least load, then the
/// smallest id), if any is within `max_lag_ms`.
pub fn best_replica(servers: &[Server], max_lag_ms: u64) -> Option<&Server> {
    servers
        .iter()
        .filter(|s| {
            s.role == Role::Replica && s.health == Health::Healthy && s.lag_ms <= max_lag_ms
        })
        .min_by(|a, b| (a.lag_ms, a.load, &a.id).cmp(&(b.lag_ms, b.load, &b.id)))
}

holdfast_plugin_sdk::export_sql_router!(SqlRouter);
