//! Test plugin: answers with a decision far larger than the output limit.
use holdfast_plugin_sdk::router::*;
struct Bloat;
impl Guest for Bloat {
    fn route(_input: RouteInput) -> RouteDecision {
        let mut d = forward(0, 0);
        if let RouteDecision::Forward(f) = &mut d {
            for i in 0..128 {
                f.add_headers.push(Pair {
                    name: format!("x-filler-{i}"),
                    value: "x".repeat(256),
                });
            }
        }
        d
    }
}
holdfast_plugin_sdk::export_router!(Bloat);
