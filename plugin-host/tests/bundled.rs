//! The bundled plugins make the documented decisions. One table per
//! plugin; each row is one call through the real host.

mod common;

use common::*;
use holdfast_plugin::types::deploy::*;
use holdfast_plugin::types::failover::*;
use holdfast_plugin::types::sql::*;
use holdfast_plugin::types::Health;
use holdfast_plugin::PluginHost;

fn health(s: &str) -> Health {
    match s {
        "up" => Health::Healthy,
        "degraded" => Health::Degraded,
        _ => Health::Down,
    }
}

#[test]
fn router_balances_and_keeps_sessions_sticky() {
    let host = host();
    host.install("rr", &wasm("router"), settings(&[])).unwrap();
    host.install(
        "lc",
        &wasm("router"),
        settings(&[("algorithm", "least-connections")]),
    )
    .unwrap();
    host.install(
        "sticky",
        &wasm("router"),
        settings(&[("sticky-cookie", "hf")]),
    )
    .unwrap();
    let check =
        |plugin: &str, seq: u64, cookies: &[(&str, &str)], backends: &[&str], expected: &str| {
            let input = route_input(seq, cookies, backends);
            let answer = host.route(plugin, &input).unwrap();
            assert!(answer.failure.is_none(), "{:?}", answer.failure);
            assert_eq!(
                short(&input, &answer.decision),
                expected,
                "{plugin} seq {seq} {cookies:?} {backends:?}"
            );
        };
    // Weighted round robin, interleaved: a=2, b=1 gives a b a.
    let ab = ["a:up:2:0", "b:up:1:0"];
    for (seq, expected) in ["a", "b", "a", "a", "b", "a"].iter().enumerate() {
        check("rr", seq as u64, &[], &ab, expected);
    }
    check("rr", 0, &[], &["a:down:5:0", "b:up:1:0"], "b");
    check("rr", 7, &[], &["a:up:0:0", "b:up:1:0"], "b");
    check("rr", 0, &[], &["a:down:1:0", "b:degraded:1:0"], "b");
    check("rr", 0, &[], &["a:down:1:0", "b:down:1:0"], "503");
    check("rr", 0, &[], &[], "503");
    // Least connections, per unit of weight; ties go round robin.
    check("lc", 0, &[], &["a:up:1:5", "b:up:1:2", "c:up:1:9"], "b");
    check("lc", 0, &[], &["a:up:2:4", "b:up:1:3"], "a");
    check("lc", 0, &[], &["a:up:1:3", "b:up:1:3"], "a");
    check("lc", 1, &[], &["a:up:1:3", "b:up:1:3"], "b");
    check("lc", 0, &[], &["a:down:1:0", "b:up:1:3"], "b");
    // Sticky cookies: kept while the backend lives, moved when it dies.
    check("sticky", 0, &[("hf", "b")], &ab, "b");
    check("sticky", 0, &[], &ab, "a+hf=a");
    check(
        "sticky",
        1,
        &[("hf", "b")],
        &["a:up:2:0", "b:down:1:0"],
        "a+hf=a",
    );
    check("sticky", 0, &[("hf", "gone")], &ab, "a+hf=a");
    check("sticky", 0, &[("other", "b")], &ab, "a+hf=a");
    let moves = host.custom_metrics("sticky").unwrap();
    assert_eq!(
        moves["sticky_moves"],
        holdfast_plugin::CustomMetric::Counter(2)
    );
}

/// A server written as `"id:role:health:lag_ms"`.
fn server(spec: &str) -> Server {
    let f: Vec<&str> = spec.split(':').collect();
    Server {
        id: f[0].into(),
        role: if f[1] == "primary" {
            Role::Primary
        } else {
            Role::Replica
        },
        health: health(f[2]),
        lag_ms: f[3].parse().unwrap(),
        zone: "z".into(),
        load: 0,
    }
}

#[test]
fn sql_router_sends_writes_to_the_primary_and_reads_to_the_freshest_replica() {
    let host = host();
    host.install("sql", &wasm("sql-router"), settings(&[]))
        .unwrap();
    let check =
        |kind: StatementKind, in_tx: bool, hint: Option<&str>, servers: &[&str], expected: &str| {
            let input = SqlInput {
                query: Query {
                    kind,
                    in_transaction: in_tx,
                    user: "app".into(),
                    database: "shop".into(),
                    client: client(),
                    hint: hint.map(Into::into),
                    sequence: 0,
                },
                servers: servers.iter().map(|s| server(s)).collect(),
            };
            let got = match host.route_sql("sql", &input).unwrap().decision {
                SqlDecision::Writer => "writer".to_string(),
                SqlDecision::Reader(r) => format!("reader {r}"),
                SqlDecision::Reject(_) => "reject".to_string(),
            };
            assert_eq!(
                got, expected,
                "{kind:?} tx={in_tx} hint={hint:?} {servers:?}"
            );
        };
    use StatementKind::*;
    let cluster = [
        "p:primary:up:0",
        "r1:replica:up:50",
        "r2:replica:up:10",
        "r3:replica:down:0",
    ];
    check(Read, false, None, &cluster, "reader r2");
    check(Write, false, None, &cluster, "writer");
    check(Ddl, false, None, &cluster, "writer");
    check(Session, false, None, &cluster, "writer");
    check(Read, true, None, &cluster, "writer");
    check(Read, false, Some("primary"), &cluster, "writer");
    check(
        Read,
        false,
        None,
        &["p:primary:up:0", "r1:replica:up:5000"],
        "writer",
    );
    check(
        Read,
        false,
        None,
        &["p:primary:up:0", "r1:replica:degraded:0"],
        "writer",
    );
    check(
        Read,
        false,
        None,
        &["p:primary:down:0", "r1:replica:up:20"],
        "reader r1",
    );
    check(
        Write,
        false,
        None,
        &["p:primary:down:0", "r1:replica:up:20"],
        "reject",
    );
    check(
        Read,
        false,
        None,
        &["p:primary:up:0", "b:replica:up:10", "a:replica:up:10"],
        "reader a",
    );
}

/// A member written as `"id:role:zone:health:position:reachable"`.
fn member(spec: &str) -> Member {
    let f: Vec<&str> = spec.split(':').collect();
    Member {
        id: f[0].into(),
        role: match f[1] {
            "primary" => MemberRole::Primary,
            "witness" => MemberRole::Witness,
            _ => MemberRole::Replica,
        },
        zone: f[2].into(),
        health: health(f[3]),
        position: f[4].parse().unwrap(),
        reachable: f[5] == "y",
    }
}

fn short_actions(actions: &[Action]) -> String {
    actions
        .iter()
        .map(|a| match a {
            Action::Promote(m) => format!("promote {m}"),
            Action::Fence(m) => format!("fence {m}"),
            Action::Wait(ms) => format!("wait {ms}"),
            Action::Alert(_) => "alert".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn failover_policy_promotes_the_most_advanced_replica_with_a_majority_only() {
    let host = host();
    host.install("fo", &wasm("failover"), settings(&[]))
        .unwrap();
    let check = |event: Event, zone: Option<&str>, members: &[&str], expected: &str| {
        let input = FailoverInput {
            event: event.clone(),
            cluster: Cluster {
                members: members.iter().map(|m| member(m)).collect(),
                primary: Some("p".into()),
                preferred_zone: zone.map(Into::into),
                now_ms: 1_000,
            },
        };
        let got = short_actions(&host.decide_failover("fo", &input).unwrap().decision);
        assert_eq!(got, expected, "{event:?} zone={zone:?} {members:?}");
    };
    let down = Event::PrimaryDown("p".into());
    let p_down = "p:primary:a:down:100:n";
    check(
        down.clone(),
        None,
        &[p_down, "r1:replica:a:up:90:y", "r2:replica:b:up:95:y"],
        "fence p, promote r2, alert",
    );
    check(
        down.clone(),
        Some("a"),
        &[p_down, "r1:replica:a:up:95:y", "r2:replica:b:up:95:y"],
        "fence p, promote r1, alert",
    );
    check(
        down.clone(),
        Some("b"),
        &[p_down, "r1:replica:a:up:95:y", "r2:replica:b:up:95:y"],
        "fence p, promote r2, alert",
    );
    check(
        down.clone(),
        Some("a"),
        &[p_down, "r1:replica:a:up:90:y", "r2:replica:b:up:95:y"],
        "fence p, promote r2, alert",
    );
    check(
        down.clone(),
        None,
        &[p_down, "r1:replica:a:down:99:y", "r2:replica:b:up:95:y"],
        "fence p, promote r2, alert",
    );
    check(
        down.clone(),
        None,
        &[p_down, "w:witness:c:up:0:y", "r2:replica:b:up:95:y"],
        "fence p, promote r2, alert",
    );
    // Without a majority nothing is promoted.
    check(
        down.clone(),
        None,
        &[
            p_down,
            "r1:replica:a:up:90:y",
            "r2:replica:b:up:95:n",
            "w:witness:c:up:0:n",
        ],
        "alert, wait 1000",
    );
    check(
        down.clone(),
        None,
        &[p_down, "r1:replica:a:down:90:y", "w:witness:c:up:0:y"],
        "alert, wait 1000",
    );
    // A live primary: nothing to do, whatever else happens.
    let p_up = "p:primary:a:up:100:y";
    check(Event::Tick, None, &[p_up, "r1:replica:a:up:90:y"], "");
    check(
        Event::MemberDown("r1".into()),
        None,
        &[p_up, "r1:replica:a:down:90:n", "r2:replica:a:up:90:y"],
        "",
    );
    // A primary that vanished without an event is noticed on a tick.
    check(
        Event::Tick,
        None,
        &[
            "p:primary:a:up:100:n",
            "r1:replica:a:up:90:y",
            "r2:replica:a:up:80:y",
        ],
        "fence p, promote r1, alert",
    );
    // Switchover: only to a caught-up healthy replica.
    check(
        Event::Switchover("r1".into()),
        None,
        &[p_up, "r1:replica:a:up:100:y"],
        "fence p, promote r1",
    );
    check(
        Event::Switchover("r1".into()),
        None,
        &[p_up, "r1:replica:a:up:90:y"],
        "wait 250",
    );
    check(
        Event::Switchover("r9".into()),
        None,
        &[p_up, "r1:replica:a:up:100:y"],
        "alert",
    );
}

/// Metrics of one version: `"requests:errors:sessions:instances:healthy"`.
fn version_metrics(version: &str, spec: &str) -> VersionMetrics {
    let f: Vec<u64> = spec.split(':').map(|x| x.parse().unwrap()).collect();
    VersionMetrics {
        version: version.into(),
        requests: f[0],
        errors: f[1],
        p99_latency_ms: 10,
        sessions: f[2] as u32,
        instances: f[3] as u32,
        healthy_instances: f[4] as u32,
    }
}

fn short_deploy(d: &DeployDecision) -> String {
    match d {
        DeployDecision::Proceed(p) => {
            let w: Vec<String> = p.weights.iter().map(|w| w.weight.to_string()).collect();
            let sticky = if p.sticky_sessions { " sticky" } else { "" };
            format!("{} s{}{sticky}", w.join("/"), p.next_stage)
        }
        DeployDecision::Done => "done".into(),
        DeployDecision::Rollback(_) => "rollback".into(),
    }
}

/// Calls deploy plugin `name` at `stage`, `held_ms` into the stage, with
/// metrics of the old and the new version.
fn deploy_check(
    host: &PluginHost,
    name: &str,
    stage: u32,
    held_ms: u64,
    old: &str,
    new: &str,
    expected: &str,
) {
    let now_ms = 10_000_000;
    let input = DeployInput {
        state: DeployState {
            old_version: "v1".into(),
            new_version: "v2".into(),
            stage,
            stage_started_ms: now_ms - held_ms,
            started_ms: now_ms - held_ms - 1000,
        },
        metrics: vec![version_metrics("v1", old), version_metrics("v2", new)],
        now_ms,
    };
    let got = short_deploy(&host.decide_deploy(name, &input).unwrap().decision);
    assert_eq!(
        got, expected,
        "{name} stage {stage} held {held_ms} old {old} new {new}"
    );
}

#[test]
fn blue_green_switches_at_once_when_the_new_version_is_healthy() {
    let host = host();
    host.install("bg", &wasm("deploy-blue-green"), settings(&[]))
        .unwrap();
    let check = |stage, held, old, new, expected| {
        deploy_check(&host, "bg", stage, held, old, new, expected)
    };
    check(0, 0, "100:0:5:3:3", "0:0:0:3:2", "100/0 s0");
    check(0, 0, "100:0:5:3:3", "0:0:0:0:0", "100/0 s0");
    check(0, 0, "100:0:5:3:3", "0:0:0:3:3", "0/100 s1");
    check(1, 1_000, "0:0:0:3:3", "100:1:5:3:3", "0/100 s1");
    check(1, 300_000, "0:0:0:3:3", "100:1:5:3:3", "done");
    check(1, 1_000, "0:0:0:3:3", "100:10:5:3:3", "rollback");
    check(1, 1_000, "0:0:0:3:3", "10:5:5:3:3", "0/100 s1");
}

#[test]
fn canary_steps_up_and_rolls_back_on_errors() {
    let host = host();
    host.install("canary", &wasm("deploy-canary"), settings(&[]))
        .unwrap();
    host.install(
        "canary2",
        &wasm("deploy-canary"),
        settings(&[("steps", "10,100"), ("hold-ms", "5")]),
    )
    .unwrap();
    let check = |name, stage, held, new, expected| {
        deploy_check(&host, name, stage, held, "1000:1:50:3:3", new, expected)
    };
    check("canary", 0, 0, "0:0:0:1:1", "95/5 s0 sticky");
    check("canary", 0, 60_000, "100:0:5:1:1", "75/25 s1 sticky");
    check("canary", 1, 30_000, "100:0:5:1:1", "75/25 s1 sticky");
    check("canary", 2, 60_000, "100:0:5:1:1", "0/100 s3 sticky");
    check("canary", 3, 60_000, "100:0:5:1:1", "done");
    check("canary", 1, 0, "100:6:5:1:1", "rollback");
    check("canary", 1, 0, "10:6:5:1:1", "75/25 s1 sticky");
    check("canary2", 0, 0, "0:0:0:1:1", "90/10 s0 sticky");
    check("canary2", 0, 5, "0:0:0:1:1", "0/100 s1 sticky");
    check("canary2", 1, 5, "0:0:0:1:1", "done");
}

#[test]
fn rolling_moves_traffic_with_healthy_instances() {
    let host = host();
    host.install("roll", &wasm("deploy-rolling"), settings(&[]))
        .unwrap();
    let check =
        |stage, old, new, expected| deploy_check(&host, "roll", stage, 0, old, new, expected);
    check(0, "100:0:9:4:4", "0:0:0:0:0", "100/0 s1");
    check(1, "100:0:9:3:3", "0:0:0:1:0", "100/0 s1");
    check(1, "100:0:9:3:3", "10:0:1:1:1", "75/25 s2");
    check(2, "100:0:9:2:2", "10:0:1:2:2", "50/50 s3");
    check(4, "0:0:0:0:0", "100:0:9:4:4", "done");
    check(2, "100:0:9:2:2", "100:30:1:2:2", "rollback");
}

#[test]
fn parallel_sends_new_sessions_to_the_new_version_until_old_ones_end() {
    let host = host();
    host.install("par", &wasm("deploy-parallel"), settings(&[]))
        .unwrap();
    let check = |held, old, new, expected| deploy_check(&host, "par", 0, held, old, new, expected);
    check(0, "100:0:12:3:3", "0:0:0:3:3", "0/100 s1 sticky");
    check(60_000, "10:0:1:3:3", "100:0:30:3:3", "0/100 s1 sticky");
    check(60_000, "10:0:0:3:3", "100:0:30:3:3", "done");
    check(3_600_000, "10:0:4:3:3", "100:0:30:3:3", "done");
    check(0, "100:0:12:3:3", "100:20:3:3:3", "rollback");
}
