//! Parallel deploy: from the start every new session goes to the new
//! version while existing sessions stay on the old one until they end. Done
//! when the old version has no session left, or after `drain-ms` (default
//! 3600000). Rolls back when the new version fails more than
//! `max-error-percent` (default 5) of at least `min-requests` (default 20)
//! requests.

use holdfast_plugin_sdk::deploy_strategy::*;

struct Parallel;

impl Guest for Parallel {
    fn decide(input: DeployInput) -> DeployDecision {
        if let Some(new) = metrics_of(&input, &input.state.new_version) {
            if error_rate_exceeds(
                new,
                config_or("min-requests", 20),
                config_or("max-error-percent", 5),
            ) {
                return DeployDecision::Rollback(format!(
                    "{} of {} requests failed on {}",
                    new.errors, new.requests, new.version
                ));
            }
        }
        let old_sessions = metrics_of(&input, &input.state.old_version).map_or(0, |m| m.sessions);
        let draining = input.now_ms.saturating_sub(input.state.started_ms);
        if old_sessions == 0 || draining >= config_or("drain-ms", 3_600_000) {
            return DeployDecision::Done;
        }
        split(&input, 100, 1, true)
    }
}

holdfast_plugin_sdk::export_deploy_strategy!(Parallel);
