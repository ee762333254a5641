//! Test plugin: loops forever. The host must stop it at its deadline.
use holdfast_plugin_sdk::router::*;
struct Spin;
impl Guest for Spin {
    fn route(input: RouteInput) -> RouteDecision {
        let mut n = input.request.sequence;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
holdfast_plugin_sdk::export_router!(Spin);
