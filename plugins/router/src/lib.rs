//! The bundled HTTP router: weighted round robin (the default) or least
//! connections over the live backends of one pool, with optional sticky
//! cookies that move to a live backend when the pinned one dies.
//!
//! Settings: `pool` (default: the first pool), `algorithm`
//! (`round-robin` | `least-connections`), `sticky-cookie` (a cookie name;
//! unset means no stickiness).

use holdfast_plugin_sdk::router::*;

/// Weights above this count as this, which bounds the work of one call.
const WEIGHT_CAP: u32 = 1000;

struct Router;

impl Guest for Router {
    fn route(input: RouteInput) -> RouteDecision {
        let pool = match config("pool") {
            Some(name) => input.pools.iter().find(|p| p.name == name),
            None => input.pools.first(),
        };
        let Some(pool) = pool else {
            return reject(503, "no such pool");
        };
        let live = live_backends(pool);
        if live.is_empty() {
            return reject(503, "no live backend");
        }
        let sticky = config("sticky-cookie");
        if let Some(name) = &sticky {
            if let Some(pinned) = cookie(&input.request, name) {
                if live.iter().any(|b| b.id == pinned) {
                    return forward(&pool.name, pinned);
                }
                let _ = counter_add("sticky_moves", 1);
            }
        }
        let chosen = match config("algorithm").as_deref() {
            Some("least-connections") => least_connections(&live, input.request.sequence),
            _ => weighted_round_robin(&live, input.request.sequence),
        };
        let mut decision = forward(&pool.name, &chosen.id);
        if let (Some(name), RouteDecision::Forward(f)) = (sticky, &mut decision) {
            f.set_cookie = Some(SetCookie {
                name,
                value: chosen.id.clone(),
                max_age_s: None,
            });
        }
        decision
    }
}

/// Healthy backends with a weight; failing that, degraded ones.
pub fn live_backends(pool: &Pool) -> Vec<&Backend> {
    for health in [Health::Healthy, Health::Degraded] {
        let live: Vec<&Backend> = pool
            .backends
            .iter()
            .filter(|b| b.health == health && b.weight > 0)
            .collect();
        if !live.is_empty() {
            return live;
        }
    }
    Vec::new()
}

/// Interleaved weighted round robin over the request sequence number: with
/// weights a=2, b=1 the order is a b a, a b a, ... No state is kept between
/// calls.
pub fn weighted_round_robin<'a>(live: &[&'a Backend], sequence: u64) -> &'a Backend {
    let weight = |b: &Backend| b.weight.min(WEIGHT_CAP);
    let total: u64 = live.iter().map(|b| u64::from(weight(b))).sum();
    let mut slot = sequence % total;
    for round in 0..WEIGHT_CAP {
        for b in live {
            if weight(b) > round {
                if slot == 0 {
                    return b;
                }
                slot -= 1;
            }
        }
    }
    live[0]
}

/// The backend with the fewest requests in flight per unit of weight; ties
/// go round robin by sequence number.
pub fn least_connections<'a>(live: &[&'a Backend], sequence: u64) -> &'a Backend {
    // load_a / weight_a < load_b / weight_b, without division.
    let cost = |b: &Backend| (u64::from(b.load), u64::from(b.weight.min(WEIGHT_CAP)));
    let better = |a: (u64, u64), b: (u64, u64)| a.0 * b.1 < b.0 * a.1;
    let best = live
        .iter()
        .map(|b| cost(b))
        .fold(None, |acc: Option<(u64, u64)>, c| match acc {
            Some(a) if !better(c, a) => Some(a),
            _ => Some(c),
        })
        .unwrap_or((0, 1));
    let ties: Vec<&&Backend> = live
        .iter()
        .filter(|b| !better(best, cost(b)) && !better(cost(b), best))
        .collect();
    ties[(sequence % ties.len() as u64) as usize]
}

holdfast_plugin_sdk::export_router!(Router);
