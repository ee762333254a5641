//! Blue-green deploy: all traffic stays on the old version until every
//! instance of the new one is healthy, then all of it moves at once. The
//! deploy is done after `hold-ms` (default 300000) without the new version
//! failing more than `max-error-percent` (default 5) of at least
//! `min-requests` (default 20) requests; otherwise it rolls back.

use holdfast_plugin_sdk::deploy_strategy::*;

struct BlueGreen;

impl Guest for BlueGreen {
    fn decide(input: DeployInput) -> DeployDecision {
        let Some(new) = metrics_of(&input, &input.state.new_version) else {
            return split(&input, 0, 0, false);
        };
        match input.state.stage {
            0 if new.instances > 0 && new.healthy_instances == new.instances => {
                split(&input, 100, 1, false)
            }
            0 => split(&input, 0, 0, false),
            _ => {
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
                let held = input.now_ms.saturating_sub(input.state.stage_started_ms);
                if held >= config_or("hold-ms", 300_000) {
                    DeployDecision::Done
                } else {
                    split(&input, 100, 1, false)
                }
            }
        }
    }
}

holdfast_plugin_sdk::export_deploy_strategy!(BlueGreen);
