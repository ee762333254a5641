//! Test plugin: forwards to the first backend and tags the answer with its
//! `tag` setting (which version answered) and a per-plugin call count kept
//! in the key-value store. It also checks that an oversized store write
//! comes back as an error, not a trap.
use holdfast_plugin_sdk::kv;
use holdfast_plugin_sdk::router::*;
struct Tag;
impl Guest for Tag {
    fn route(_input: RouteInput) -> RouteDecision {
        let tag = config("tag").unwrap_or_default();
        let count = kv::get("count")
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
            + 1;
        let stored = kv::set("count", &count.to_le_bytes()).is_ok();
        let too_big = match kv::set("big", &vec![0u8; 8 << 10]) {
            Err(KvError::ValueTooLarge) => "value-too-large",
            Err(_) => "other-error",
            Ok(()) => "accepted",
        };
        let _ = counter_add("tagged", 1);
        log(Level::Info, "tagging");
        let mut d = forward(0, 0);
        if let RouteDecision::Forward(f) = &mut d {
            for (name, value) in [
                ("x-tag", tag),
                ("x-count", count.to_string()),
                ("x-stored", stored.to_string()),
                ("x-big", too_big.to_string()),
            ] {
                f.add_headers.push(Pair {
                    name: name.into(),
                    value,
                });
            }
        }
        d
    }
}
holdfast_plugin_sdk::export_router!(Tag);
