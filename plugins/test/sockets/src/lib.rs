//! Test plugin: opens a TCP connection, so it imports `wasi:sockets`. The
//! host must refuse it at install unless `sockets` is granted.
use holdfast_plugin_sdk::router::*;
struct Caller;
impl Guest for Caller {
    fn route(_input: RouteInput) -> RouteDecision {
        match std::net::TcpStream::connect("127.0.0.1:1") {
            Ok(_) => reject(500, "connected"),
            Err(_) => reject(503, "no network"),
        }
    }
}
holdfast_plugin_sdk::export_router!(Caller);
