"""A router plugin in Python: the least-loaded healthy backend of the first pool.

A decision names the pool and the backend by their positions in the input,
counted from 0.
"""

from wit_world import WitWorld
from wit_world.imports import log
from wit_world.imports.types import Health, Pair
from wit_world.imports.router_types import (
    Forward,
    Reject,
    RouteDecision_Forward,
    RouteDecision_Reject,
    RouteInput,
)


class WitWorld(WitWorld):
    def route(self, input: RouteInput):
        if not input.pools:
            return RouteDecision_Reject(Reject(503, "no pool"))
        pool = input.pools[0]
        live = [
            (b.load, b.id, i)
            for i, b in enumerate(pool.backends)
            if b.health == Health.HEALTHY and b.weight > 0
        ]
        if not live:
            log.log(log.Level.WARN, "no live backend")
            return RouteDecision_Reject(Reject(503, "no live backend"))
        _, _, best = min(live)
        return RouteDecision_Forward(
            Forward(0, best, [Pair("x-routed-by", "python")], None)
        )
