// A router plugin in JavaScript: the first healthy backend of the first
// pool, spread by the request's sequence number.
import { log } from "holdfast:plugin/log@0.1.0";

export function route(input) {
  const pool = input.pools[0];
  if (!pool) {
    return { tag: "reject", val: { status: 503, reason: "no pool" } };
  }
  const live = pool.backends.filter((b) => b.health === "healthy" && b.weight > 0);
  if (live.length === 0) {
    log("warn", "no live backend");
    return { tag: "reject", val: { status: 503, reason: "no live backend" } };
  }
  const b = live[Number(input.request.sequence % BigInt(live.length))];
  return {
    tag: "forward",
    val: { pool: pool.name, backend: b.id, addHeaders: [{ name: "x-routed-by", value: "js" }], setCookie: undefined },
  };
}
