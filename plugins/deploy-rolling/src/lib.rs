//! Rolling deploy: instances are replaced a batch at a time (the stage
//! counts batches asked for); traffic follows the healthy instances of each
//! version. The next batch is asked for only when every new instance is
//! healthy; done when no old instance is left. Rolls back when the new
//! version fails more than `max-error-percent` (default 5) of at least
//! `min-requests` (default 20) requests.

use holdfast_plugin_sdk::deploy_strategy::*;

struct Rolling;

impl Guest for Rolling {
    fn decide(input: DeployInput) -> DeployDecision {
        let old = metrics_of(&input, &input.state.old_version);
        let new = metrics_of(&input, &input.state.new_version);
        let (old_up, old_all) = old.map_or((0, 0), |m| (m.healthy_instances, m.instances));
        let (new_up, new_all) = new.map_or((0, 0), |m| (m.healthy_instances, m.instances));
        if let Some(new) = new {
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
        if old_all == 0 && new_all > 0 && new_up == new_all {
            return DeployDecision::Done;
        }
        let up = u64::from(old_up) + u64::from(new_up);
        let percent = (u64::from(new_up) * 100).checked_div(up).unwrap_or(0) as u8;
        let stage = input.state.stage;
        let settled = new_up == new_all;
        split(
            &input,
            percent,
            if settled { stage + 1 } else { stage },
            false,
        )
    }
}

holdfast_plugin_sdk::export_deploy_strategy!(Rolling);
