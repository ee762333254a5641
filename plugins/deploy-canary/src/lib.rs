//! Canary deploy: the new version gets 5, 25, 50 then 100 percent of new
//! sessions (the `steps` setting, comma-separated), each step held for
//! `hold-ms` (default 60000). Whenever the new version fails more than
//! `max-error-percent` (default 5) of at least `min-requests` (default 20)
//! requests, the deploy rolls back. Sessions stay on their version.

use holdfast_plugin_sdk::deploy_strategy::*;

struct Canary;

fn steps() -> Vec<u8> {
    let parsed: Vec<u8> = config("steps")
        .unwrap_or_else(|| "5,25,50,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|p| *p <= 100)
        .collect();
    if parsed.is_empty() {
        vec![5, 25, 50, 100]
    } else {
        parsed
    }
}

impl Guest for Canary {
    fn decide(input: DeployInput) -> DeployDecision {
        let steps = steps();
        let stage = (input.state.stage as usize).min(steps.len() - 1);
        if let Some(new) = metrics_of(&input, &input.state.new_version) {
            if error_rate_exceeds(
                new,
                config_or("min-requests", 20),
                config_or("max-error-percent", 5),
            ) {
                let _ = counter_add("rollbacks", 1);
                return DeployDecision::Rollback(format!(
                    "canary at {}%: {} of {} requests failed",
                    steps[stage], new.errors, new.requests
                ));
            }
        }
        let held = input.now_ms.saturating_sub(input.state.stage_started_ms);
        if held < config_or("hold-ms", 60_000) {
            return split(&input, steps[stage], stage as u32, true);
        }
        if stage + 1 >= steps.len() {
            return DeployDecision::Done;
        }
        split(&input, steps[stage + 1], stage as u32 + 1, true)
    }
}

holdfast_plugin_sdk::export_deploy_strategy!(Canary);
