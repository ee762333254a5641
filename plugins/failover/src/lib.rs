//! The bundled failover policy.
//! - Majority only: nothing is promoted unless this node reaches more than
//!   half of the members (witnesses count).
//! - The most advanced healthy replica first; among replicas within
//!   `zone-slack` positions of the most advanced (default 0), one in the
//!   preferred zone (the cluster's, or the `zone` setting) wins.
//! - The old primary is fenced before the new one is promoted.

use holdfast_plugin_sdk::failover_policy::*;

/// How long to wait before asking again when nothing can be done yet.
const RETRY_MS: u32 = 1000;

struct Failover;

impl Guest for Failover {
    fn decide(input: FailoverInput) -> Vec<Action> {
        let c = &input.cluster;
        let reachable = c.members.iter().filter(|m| m.reachable).count();
        if reachable * 2 <= c.members.len() {
            return vec![
                Action::Alert(format!(
                    "no majority: {reachable} of {} members reachable; not failing over",
                    c.members.len()
                )),
                Action::Wait(RETRY_MS),
            ];
        }
        let primary = c.primary.as_deref();
        let primary_alive = primary
            .and_then(|p| c.members.iter().find(|m| m.id == p))
            .is_some_and(|m| m.reachable && m.health != Health::Down);
        match &input.event {
            Event::Switchover(target) => switchover(c, primary, target),
            Event::PrimaryDown(_) => failover(c, primary),
            _ if !primary_alive => failover(c, primary),
            _ => Vec::new(),
        }
    }
}

fn candidates(c: &Cluster) -> Vec<&Member> {
    c.members
        .iter()
        .filter(|m| m.role == MemberRole::Replica && m.reachable && m.health == Health::Healthy)
        .collect()
}

/// The replica to promote, if any.
pub fn choose(c: &Cluster) -> Option<&Member> {
    let all = candidates(c);
    let best = all.iter().map(|m| m.position).max()?;
    let slack: u64 = config_or("zone-slack", 0);
    let zone = c.preferred_zone.clone().or_else(|| config("zone"));
    let near: Vec<&Member> = all
        .into_iter()
        .filter(|m| m.position + slack >= best)
        .collect();
    let in_zone = |m: &&Member| zone.as_deref() == Some(m.zone.as_str());
    // Preferred zone first, then the most advanced, then the smallest id.
    near.into_iter().min_by(|a, b| {
        (!in_zone(a), std::cmp::Reverse(a.position), &a.id).cmp(&(
            !in_zone(b),
            std::cmp::Reverse(b.position),
            &b.id,
        ))
    })
}

fn failover(c: &Cluster, old: Option<&str>) -> Vec<Action> {
    let Some(new) = choose(c) else {
        return vec![
            Action::Alert("primary lost and no healthy replica to promote".into()),
            Action::Wait(RETRY_MS),
        ];
    };
    let mut actions = Vec::new();
    if let Some(old) = old {
        actions.push(Action::Fence(old.to_string()));
    }
    actions.push(Action::Promote(new.id.clone()));
    actions.push(Action::Alert(format!(
        "promoted {} (position {}, zone {})",
        new.id, new.position, new.zone
    )));
    actions
}

fn switchover(c: &Cluster, old: Option<&str>, target: &str) -> Vec<Action> {
    let Some(t) = candidates(c).into_iter().find(|m| m.id == target) else {
        return vec![Action::Alert(format!(
            "cannot switch over to {target}: not a healthy reachable replica"
        ))];
    };
    let primary_position = old
        .and_then(|p| c.members.iter().find(|m| m.id == p))
        .map_or(0, |m| m.position);
    if t.position < primary_position {
        // Let it catch up first.
        return vec![Action::Wait(RETRY_MS / 4)];
    }
    let mut actions = Vec::new();
    if let Some(old) = old {
        actions.push(Action::Fence(old.to_string()));
    }
    actions.push(Action::Promote(t.id.clone()));
    actions
}

holdfast_plugin_sdk::export_failover_policy!(Failover);
