//! Test plugin: works the SDK's allocator. Each call answers with a digest
//! of every string in its input (so the host can check that the input
//! arrived intact), and keeps, grows, shrinks and drops blocks of many
//! sizes across calls, checking every kept block's bytes each time; a
//! corrupted block panics, which traps.
use std::cell::RefCell;

use holdfast_plugin_sdk::router::*;

thread_local! {
    static KEPT: RefCell<Vec<(u64, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

/// The bytes a block of `seed` holds.
fn fill(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize).wrapping_add(i.wrapping_mul(31)) as u8)
        .collect()
}

/// FNV-1a over every string of the input, in order, each followed by 0xff.
pub fn digest(input: &RouteInput) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let r = &input.request;
    if let Method::Other(m) = &r.method {
        eat(m);
    }
    eat(&r.host);
    eat(&r.path);
    for p in r.headers.iter().chain(&r.cookies) {
        eat(&p.name);
        eat(&p.value);
    }
    for pool in &input.pools {
        eat(&pool.name);
        for b in &pool.backends {
            eat(&b.id);
            eat(&b.version);
        }
    }
    h
}

struct Churn;

impl Guest for Churn {
    fn route(input: RouteInput) -> RouteDecision {
        let mut state = input.request.sequence | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            for (seed, block) in kept.iter() {
                assert!(*block == fill(*seed, block.len()), "block {seed} corrupted");
            }
            for _ in 0..16 {
                let len = (next() % 600) as usize;
                match next() % 4 {
                    0 | 1 => {
                        let seed = next();
                        kept.push((seed, fill(seed, len)));
                    }
                    2 if !kept.is_empty() => {
                        let at = (next() as usize) % kept.len();
                        kept.swap_remove(at);
                    }
                    _ if !kept.is_empty() => {
                        let at = (next() as usize) % kept.len();
                        let (seed, block) = &mut kept[at];
                        if len > block.len() {
                            block.extend_from_slice(&fill(*seed, len)[block.len()..]);
                        } else {
                            block.truncate(len);
                            block.shrink_to_fit();
                        }
                    }
                    _ => {}
                }
            }
            while kept.len() > 256 {
                kept.swap_remove(0);
            }
        });
        let mut d = forward(0, 0);
        if let RouteDecision::Forward(f) = &mut d {
            f.add_headers.push(Pair {
                name: "x-digest".into(),
                value: digest(&input).to_string(),
            });
        }
        d
    }
}

holdfast_plugin_sdk::export_router!(Churn);
