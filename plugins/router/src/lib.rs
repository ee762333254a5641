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

/// The settings, read once per instance (they never change for one).
struct Settings {
    pool: Option<String>,
    least_connections: bool,
    sticky_cookie: Option<String>,
}

thread_local! {
    static SETTINGS: Settings = Settings {
        pool: config("pool"),
        least_connections: config("algorithm").as_deref() == Some("least-connections"),
        sticky_cookie: config("sticky-cookie"),
    };
}

impl Guest for Router {
    fn route(input: RouteInput) -> RouteDecision {
        SETTINGS.with(|settings| route(settings, &input))
    }
}

fn route(settings: &Settings, input: &RouteInput) -> RouteDecision {
    let at = match &settings.pool {
        Some(name) => input.pools.iter().position(|p| &p.name == name),
        None => (!input.pools.is_empty()).then_some(0),
    };
    let Some(at) = at else {
        return reject(503, "no such pool");
    };
    let pool = &input.pools[at];
    // Every backend chosen below is borrowed from `pool`.
    let to = |b: &Backend| {
        let backend = position(&pool.backends, b).expect("a backend of the pool");
        forward(at as u32, backend)
    };
    let Some(live) = Live::of(pool) else {
        return reject(503, "no live backend");
    };
    if let Some(name) = &settings.sticky_cookie {
        if let Some(pinned) = cookie(&input.request, name) {
            if let Some(b) = live.iter().find(|b| b.id == pinned) {
                return to(b);
            }
            let _ = counter_add("sticky_moves", 1);
        }
    }
    let chosen = if settings.least_connections {
        least_connections(&live, input.request.sequence)
    } else {
        weighted_round_robin(&live, input.request.sequence)
    };
    let mut decision = to(chosen);
    if let (Some(name), RouteDecision::Forward(f)) = (&settings.sticky_cookie, &mut decision) {
        f.set_cookie = Some(SetCookie {
            name: name.clone(),
            value: chosen.id.clone(),
            max_age_s: None,
        });
    }
    decision
}

/// The backends that take requests: healthy ones with a weight; failing
/// those, degraded ones. A view of the pool, so that a call allocates
/// nothing for it.
pub struct Live<'a> {
    backends: &'a [Backend],
    health: Health,
}

impl<'a> Live<'a> {
    /// `None` when no backend of `pool` takes requests.
    pub fn of(pool: &'a Pool) -> Option<Self> {
        [Health::Healthy, Health::Degraded]
            .into_iter()
            .map(|health| Live {
                backends: &pool.backends,
                health,
            })
            .find(|live| live.iter().next().is_some())
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a Backend> + '_ {
        self.backends
            .iter()
            .filter(|b| b.health == self.health && b.weight > 0)
    }
}

/// Interleaved weighted round robin over the request sequence number: with
/// weights a=2, b=1 the order is a b a, a b a, ... No state is kept between
/// calls.
pub fn weighted_round_robin<'a>(live: &Live<'a>, sequence: u64) -> &'a Backend {
    let weight = |b: &Backend| b.weight.min(WEIGHT_CAP);
    let total: u64 = live.iter().map(|b| u64::from(weight(b))).sum();
    let mut slot = sequence % total;
    for round in 0..WEIGHT_CAP {
        for b in live.iter() {
            if weight(b) > round {
                if slot == 0 {
                    return b;
                }
                slot -= 1;
            }
        }
    }
    unreachable!("the slots of the rounds add up to the total weight")
}

/// The backend with the fewest requests in flight per unit of weight; ties
/// go round robin by sequence number.
pub fn least_connections<'a>(live: &Live<'a>, sequence: u64) -> &'a Backend {
    // load_a / weight_a < load_b / weight_b, without division.
    let cost = |b: &Backend| (u64::from(b.load), u64::from(b.weight.min(WEIGHT_CAP)));
    let better = |a: (u64, u64), b: (u64, u64)| a.0 * b.1 < b.0 * a.1;
    let best = live
        .iter()
        .map(cost)
        .fold(None, |acc: Option<(u64, u64)>, c| match acc {
            Some(a) if !better(c, a) => Some(a),
            _ => Some(c),
        })
        .unwrap_or((0, 1));
    let tie = |b: &&Backend| !better(best, cost(b)) && !better(cost(b), best);
    let ties = live.iter().filter(tie).count() as u64;
    let nth = (sequence % ties) as usize;
    live.iter()
        .filter(tie)
        .nth(nth)
        .expect("nth is below the number of ties")
}

holdfast_plugin_sdk::export_router!(Router);
