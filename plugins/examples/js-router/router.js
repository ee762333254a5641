// A router plugin in JavaScript: the first healthy backend of the first
// pool, spread by the request's sequence number. A decision names the
// pool and the backend by their positions in the input, counted from 0.
import { log } from "holdfast:plugin/log@0.1.0";

export function route(input) {
  const pool = input.pools[0];
  if (!pool) {
    return { tag: "reject", val: { status: 503, reason: "no pool" } };
  }
  const live = [];
  pool.backends.forEach((b, i) => {
    if (b.health === "healthy" && b.weight > 0) live.push(i);
  });
  if (live.length === 0) {
    log("warn", "no live backend");
    return { tag: "reject", val: { status: 503, reason: "no live backend" } };
  }
  const backend = live[Number(input.request.sequence % BigInt(live.length))];
  return {
    tag: "forward",
    val: { pool: 0, backend, addHeaders: [{ name: "x-routed-by", value: "js" }], setCookie: undefined },
  };
}
