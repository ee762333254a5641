//! The four kinds of hook: for each world, how an instance is called and
//! which built-in decision answers when a fail-open plugin cannot.

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasmtime::component::InstancePre;
use wasmtime::Store;

use crate::bindings::{deploy_strategy, failover_policy, router, sql_router};
use crate::host_api::Ctx;
use crate::types::deploy::{DeployDecision, DeployInput};
use crate::types::failover::{Action, FailoverInput};
use crate::types::router::{Forward, Reject, RouteDecision, RouteInput};
use crate::types::sql::{Role, SqlDecision, SqlInput};
use crate::types::Health;
use crate::wire::WireSize;

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Router,
    SqlRouter,
    FailoverPolicy,
    DeployStrategy,
}

impl World {
    pub const ALL: [World; 4] = [
        World::Router,
        World::SqlRouter,
        World::FailoverPolicy,
        World::DeployStrategy,
    ];

    /// The world's name in `wit/`.
    pub fn name(self) -> &'static str {
        match self {
            World::Router => "router",
            World::SqlRouter => "sql-router",
            World::FailoverPolicy => "failover-policy",
            World::DeployStrategy => "deploy-strategy",
        }
    }

    /// The function the world exports.
    pub fn export(self) -> &'static str {
        match self {
            World::Router | World::SqlRouter => "route",
            World::FailoverPolicy | World::DeployStrategy => "decide",
        }
    }

    /// The world named `name` in `wit/`.
    pub fn from_name(name: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Routers sit on the request path; policies do not.
    pub fn is_router(self) -> bool {
        matches!(self, World::Router | World::SqlRouter)
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A pre-instantiated component, type-checked against its world.
#[derive(Clone)]
pub(crate) enum Pre {
    Router(router::RouterPre<Ctx>),
    SqlRouter(sql_router::SqlRouterPre<Ctx>),
    FailoverPolicy(failover_policy::FailoverPolicyPre<Ctx>),
    DeployStrategy(deploy_strategy::DeployStrategyPre<Ctx>),
}

impl std::fmt::Debug for Pre {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pre({})", self.world())
    }
}

impl Pre {
    /// Type-checks `pre`'s exports against `world`.
    pub(crate) fn new(world: World, pre: InstancePre<Ctx>) -> wasmtime::Result<Pre> {
        Ok(match world {
            World::Router => Pre::Router(router::RouterPre::new(pre)?),
            World::SqlRouter => Pre::SqlRouter(sql_router::SqlRouterPre::new(pre)?),
            World::FailoverPolicy => {
                Pre::FailoverPolicy(failover_policy::FailoverPolicyPre::new(pre)?)
            }
            World::DeployStrategy => {
                Pre::DeployStrategy(deploy_strategy::DeployStrategyPre::new(pre)?)
            }
        })
    }

    pub(crate) fn world(&self) -> World {
        match self {
            Pre::Router(_) => World::Router,
            Pre::SqlRouter(_) => World::SqlRouter,
            Pre::FailoverPolicy(_) => World::FailoverPolicy,
            Pre::DeployStrategy(_) => World::DeployStrategy,
        }
    }

    /// The compiled component.
    pub(crate) fn component(&self) -> wasmtime::component::Component {
        match self {
            Pre::Router(p) => p.instance_pre().component().clone(),
            Pre::SqlRouter(p) => p.instance_pre().component().clone(),
            Pre::FailoverPolicy(p) => p.instance_pre().component().clone(),
            Pre::DeployStrategy(p) => p.instance_pre().component().clone(),
        }
    }

    /// A new instance in `store`.
    pub(crate) fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<Bound> {
        Ok(match self {
            Pre::Router(p) => Bound::Router(p.instantiate(store)?),
            Pre::SqlRouter(p) => Bound::SqlRouter(p.instantiate(store)?),
            Pre::FailoverPolicy(p) => Bound::FailoverPolicy(p.instantiate(store)?),
            Pre::DeployStrategy(p) => Bound::DeployStrategy(p.instantiate(store)?),
        })
    }
}

/// An instance's exports, typed by world.
pub(crate) enum Bound {
    Router(router::Router),
    SqlRouter(sql_router::SqlRouter),
    FailoverPolicy(failover_policy::FailoverPolicy),
    DeployStrategy(deploy_strategy::DeployStrategy),
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bound")
    }
}

impl Bound {
    fn world(&self) -> World {
        match self {
            Bound::Router(_) => World::Router,
            Bound::SqlRouter(_) => World::SqlRouter,
            Bound::FailoverPolicy(_) => World::FailoverPolicy,
            Bound::DeployStrategy(_) => World::DeployStrategy,
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// One kind of hook: its input, its decision, how to call it, and the
/// built-in decision used when a fail-open plugin fails.
pub trait Hook: sealed::Sealed {
    type Input: WireSize + Serialize + DeserializeOwned + Send + Sync;
    type Output: WireSize + Serialize + DeserializeOwned + Send;
    const WORLD: World;

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn call(
        bound: &Bound,
        store: &mut Store<Ctx>,
        input: &Self::Input,
    ) -> wasmtime::Result<Self::Output>;

    /// The built-in decision (fail open).
    fn fallback(input: &Self::Input) -> Self::Output;

    /// Why `output` cannot answer `input`, if it cannot (a forward to a
    /// backend the input does not have). Sizes are checked elsewhere.
    fn check(_input: &Self::Input, _output: &Self::Output) -> Result<(), String> {
        Ok(())
    }
}

/// Marker types for [`Hook`].
#[derive(Debug)]
pub struct RouterHook;
#[derive(Debug)]
pub struct SqlRouterHook;
#[derive(Debug)]
pub struct FailoverHook;
#[derive(Debug)]
pub struct DeployHook;

impl sealed::Sealed for RouterHook {}
impl sealed::Sealed for SqlRouterHook {}
impl sealed::Sealed for FailoverHook {}
impl sealed::Sealed for DeployHook {}

fn wrong_world(bound: &Bound, want: World) -> wasmtime::Error {
    wasmtime::Error::msg(format!("plugin is a {}, not a {want}", bound.world()))
}

impl Hook for RouterHook {
    type Input = RouteInput;
    type Output = RouteDecision;
    const WORLD: World = World::Router;

    #[allow(private_interfaces)]
    fn call(
        bound: &Bound,
        store: &mut Store<Ctx>,
        input: &RouteInput,
    ) -> wasmtime::Result<RouteDecision> {
        let Bound::Router(b) = bound else {
            return Err(wrong_world(bound, Self::WORLD));
        };
        b.call_route(store, input)
    }

    /// Round robin over the healthy backends of the first pool.
    fn fallback(input: &RouteInput) -> RouteDecision {
        let Some(pool) = input.pools.first() else {
            return RouteDecision::Reject(Reject {
                status: 503,
                reason: "no pool".into(),
            });
        };
        let live: Vec<u32> = (0..)
            .zip(&pool.backends)
            .filter(|(_, b)| b.health == Health::Healthy && b.weight > 0)
            .map(|(i, _)| i)
            .collect();
        if live.is_empty() {
            return RouteDecision::Reject(Reject {
                status: 503,
                reason: "no live backend".into(),
            });
        }
        RouteDecision::Forward(Forward {
            pool: 0,
            backend: live[(input.request.sequence % live.len() as u64) as usize],
            add_headers: Vec::new(),
            set_cookie: None,
        })
    }

    fn check(input: &RouteInput, output: &RouteDecision) -> Result<(), String> {
        let RouteDecision::Forward(f) = output else {
            return Ok(());
        };
        let Some(pool) = input.pools.get(f.pool as usize) else {
            return Err(format!(
                "forward to pool {}, but the input has {} pools",
                f.pool,
                input.pools.len()
            ));
        };
        if pool.backends.get(f.backend as usize).is_none() {
            return Err(format!(
                "forward to backend {} of pool {}, which has {} backends",
                f.backend,
                f.pool,
                pool.backends.len()
            ));
        }
        Ok(())
    }
}

impl Hook for SqlRouterHook {
    type Input = SqlInput;
    type Output = SqlDecision;
    const WORLD: World = World::SqlRouter;

    #[allow(private_interfaces)]
    fn call(
        bound: &Bound,
        store: &mut Store<Ctx>,
        input: &SqlInput,
    ) -> wasmtime::Result<SqlDecision> {
        let Bound::SqlRouter(b) = bound else {
            return Err(wrong_world(bound, Self::WORLD));
        };
        b.call_route(store, input)
    }

    /// Everything to the primary.
    fn fallback(input: &SqlInput) -> SqlDecision {
        let primary_up = input
            .servers
            .iter()
            .any(|s| s.role == Role::Primary && s.health != Health::Down);
        if primary_up {
            SqlDecision::Writer
        } else {
            SqlDecision::Reject("no primary".into())
        }
    }
}

impl Hook for FailoverHook {
    type Input = FailoverInput;
    type Output = Vec<Action>;
    const WORLD: World = World::FailoverPolicy;

    #[allow(private_interfaces)]
    fn call(
        bound: &Bound,
        store: &mut Store<Ctx>,
        input: &FailoverInput,
    ) -> wasmtime::Result<Vec<Action>> {
        let Bound::FailoverPolicy(b) = bound else {
            return Err(wrong_world(bound, Self::WORLD));
        };
        b.call_decide(store, input)
    }

    /// Do nothing, and say so.
    fn fallback(_input: &FailoverInput) -> Vec<Action> {
        vec![Action::Alert(
            "failover policy failed; no action taken".into(),
        )]
    }
}

impl Hook for DeployHook {
    type Input = DeployInput;
    type Output = DeployDecision;
    const WORLD: World = World::DeployStrategy;

    #[allow(private_interfaces)]
    fn call(
        bound: &Bound,
        store: &mut Store<Ctx>,
        input: &DeployInput,
    ) -> wasmtime::Result<DeployDecision> {
        let Bound::DeployStrategy(b) = bound else {
            return Err(wrong_world(bound, Self::WORLD));
        };
        b.call_decide(store, input)
    }

    /// Back to the old version: the safe side when the strategy is broken.
    fn fallback(_input: &DeployInput) -> DeployDecision {
        DeployDecision::Rollback("deploy strategy failed".into())
    }
}
