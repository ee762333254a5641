//! Test plugin: reads the filesystem, so it imports `wasi:filesystem`. The
//! host must refuse it at install unless `filesystem` is granted.
use holdfast_plugin_sdk::router::*;
struct Snoop;
impl Guest for Snoop {
    fn route(_input: RouteInput) -> RouteDecision {
        match std::fs::read_to_string("/etc/passwd") {
            Ok(s) => reject(500, &s),
            Err(_) => reject(503, "no filesystem"),
        }
    }
}
holdfast_plugin_sdk::export_router!(Snoop);
