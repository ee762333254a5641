//! Test plugin: allocates without end. The host must stop it at its memory limit.
use holdfast_plugin_sdk::router::*;
struct Hog;
impl Guest for Hog {
    fn route(_input: RouteInput) -> RouteDecision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}
holdfast_plugin_sdk::export_router!(Hog);
