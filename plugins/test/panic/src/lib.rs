//! Test plugin: panics on every call. The host must see a clean trap.
use holdfast_plugin_sdk::router::*;
struct Boom;
impl Guest for Boom {
    fn route(input: RouteInput) -> RouteDecision {
        panic!(
            "test plugin panics on purpose (sequence {})",
            input.request.sequence
        )
    }
}
holdfast_plugin_sdk::export_router!(Boom);
