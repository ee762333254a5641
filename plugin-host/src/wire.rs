//! The size of a call's input and output, counted the way the canonical ABI
//! lays them out (string and list bytes plus fixed fields), so that both
//! can be checked against `PLUGIN_INPUT_BYTES_MAX` and
//! `PLUGIN_OUTPUT_BYTES_MAX` without serialising anything.

use crate::types::deploy::*;
use crate::types::failover::*;
use crate::types::router::*;
use crate::types::sql::*;
use crate::types::{Health, IpAddress, Pair, SocketAddress};

pub trait WireSize {
    fn wire_bytes(&self) -> usize;
}

impl WireSize for String {
    fn wire_bytes(&self) -> usize {
        8 + self.len()
    }
}

impl<T: WireSize> WireSize for Vec<T> {
    fn wire_bytes(&self) -> usize {
        8 + self.iter().map(WireSize::wire_bytes).sum::<usize>()
    }
}

impl<T: WireSize> WireSize for Option<T> {
    fn wire_bytes(&self) -> usize {
        1 + self.as_ref().map_or(0, WireSize::wire_bytes)
    }
}

macro_rules! fixed {
    ($($t:ty),*) => {
        $(impl WireSize for $t {
            fn wire_bytes(&self) -> usize {
                std::mem::size_of::<$t>()
            }
        })*
    };
}
fixed!(
    bool,
    u8,
    u16,
    u32,
    u64,
    i64,
    Health,
    StatementKind,
    Role,
    MemberRole
);

macro_rules! record {
    ($($t:ty { $($f:ident),* })*) => {
        $(impl WireSize for $t {
            fn wire_bytes(&self) -> usize {
                0 $(+ self.$f.wire_bytes())*
            }
        })*
    };
}
record! {
    Pair { name, value }
    SocketAddress { ip, port }
    Request { method, host, path, headers, cookies, client, sequence }
    Backend { id, health, weight, load, version }
    Pool { name, backends }
    RouteInput { request, pools }
    SetCookie { name, value, max_age_s }
    Forward { pool, backend, add_headers, set_cookie }
    Reject { status, reason }
    Redirect { status, location }
    Query { kind, in_transaction, user, database, client, hint, sequence }
    Server { id, role, health, lag_ms, zone, load }
    SqlInput { query, servers }
    Member { id, zone, role, health, position, reachable }
    Cluster { members, primary, preferred_zone, now_ms }
    FailoverInput { event, cluster }
    VersionMetrics { version, requests, errors, p99_latency_ms, sessions, instances, healthy_instances }
    DeployState { old_version, new_version, stage, stage_started_ms, started_ms }
    DeployInput { state, metrics, now_ms }
    VersionWeight { version, weight }
    Plan { weights, next_stage, sticky_sessions }
}

impl WireSize for RouteDecision {
    fn wire_bytes(&self) -> usize {
        1 + match self {
            RouteDecision::Forward(f) => f.wire_bytes(),
            RouteDecision::Reject(r) => r.wire_bytes(),
            RouteDecision::Redirect(r) => r.wire_bytes(),
        }
    }
}

impl WireSize for IpAddress {
    fn wire_bytes(&self) -> usize {
        1 + match self {
            IpAddress::Ipv4(_) => 4,
            IpAddress::Ipv6(_) => 16,
        }
    }
}

impl WireSize for Method {
    fn wire_bytes(&self) -> usize {
        1 + match self {
            Method::Other(s) => s.wire_bytes(),
            _ => 0,
        }
    }
}

impl WireSize for SqlDecision {
    fn wire_bytes(&self) -> usize {
        1 + match self {
            SqlDecision::Writer => 0,
            SqlDecision::Reader(s) | SqlDecision::Reject(s) => s.wire_bytes(),
        }
    }
}

impl WireSize for Event {
    fn wire_bytes(&self) -> usize {
        1 + match self {
            Event::MemberDown(s)
            | Event::MemberUp(s)
            | Event::PrimaryDown(s)
            | Event::Switchover(s) => s.wire_bytes(),
            Event::Tick => 0,
        }
    }
}

impl WireSize for Action {
    fn wire_bytes(&self) -> usize {
        1 + match self {
            Action::Promote(s) | Action::Fence(s) | Action::Alert(s) => s.wire_bytes(),
            Action::Wait(ms) => ms.wire_bytes(),
        }
    }
}

impl WireSize for DeployDecision {
    fn wire_bytes(&self) -> usize {
        1 + match self {
            DeployDecision::Proceed(p) => p.wire_bytes(),
            DeployDecision::Done => 0,
            DeployDecision::Rollback(s) => s.wire_bytes(),
        }
    }
}
