//! Test plugin: forwards to the first backend of the first pool without
//! reading the input. The benchmark's floor: what a call costs the host
//! and the canonical ABI alone.
use holdfast_plugin_sdk::router::*;
struct Noop;
impl Guest for Noop {
    fn route(_input: RouteInput) -> RouteDecision {
        forward(0, 0)
    }
}
holdfast_plugin_sdk::export_router!(Noop);
