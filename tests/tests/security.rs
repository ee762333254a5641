//! Who may join and talk to a cluster, and what bad input gets.

use std::time::Duration;

use holdfast_tests::{assert_one_line_error, holdfast, stdout, wait_until, Cluster};

/// Checks that `serve ARGS` fails with one line containing `needle`, and
/// that the data folder it was given holds nothing afterwards.
fn refused(c: &Cluster, name: &str, args: &[&str], needle: &str) {
    let data = c.dir.path().join(name);
    let data_s = data.display().to_string();
    let mut full = vec!["serve", "--data", &data_s];
    full.extend_from_slice(args);
    let o = holdfast(&full, &[]);
    assert_one_line_error(&o, needle);
    let left = std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        left,
        0,
        "a refused start must leave {} empty",
        data.display()
    );
}

/// Checks that joining as `name` through `seed` with `token` is refused
/// with `needle`, leaving the new folder empty.
fn join_refused(c: &Cluster, name: &str, seed: &str, token: Option<&str>, needle: &str) {
    let (l, a) = (
        format!("{}:7001", holdfast_tests::fresh_ip()),
        format!("{}:7101", holdfast_tests::fresh_ip()),
    );
    let mut args = vec!["--name", name, "--listen", &l, "--api", &a, "--join", seed];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    refused(c, &format!("try-{name}"), &args, needle);
}

#[test]
fn joins_without_a_valid_token_are_refused() {
    let mut c = Cluster::start(1);
    let other = Cluster::start(1);
    let seed = c.nodes[0].peer.to_string();

    join_refused(&c, "x", &seed, None, "--token");
    join_refused(&c, "x", &seed, Some("nonsense"), "malformed join token");
    let good = c.token(&[]);
    let forged = format!(
        "{}{}",
        &good[..good.len() - 4],
        if good.ends_with("0000") {
            "1111"
        } else {
            "0000"
        }
    );
    join_refused(&c, "x", &seed, Some(&forged), "invalid join token");
    let short = c.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    join_refused(&c, "x", &seed, Some(&short), "expired");
    let foreign = other.token(&[]);
    join_refused(
        &c,
        "x",
        &seed,
        Some(&foreign),
        "not a member of the cluster this token is for",
    );

    // A token good for one join: the first works, the second is refused.
    let once = c.token(&["--uses", "1"]);
    let n2 = c.spawn_new("n2", &["--join", &seed, "--token", &once]);
    c.nodes.push(n2);
    c.wait_api(1);
    join_refused(&c, "x", &seed, Some(&once), "already used");
    // A name that is taken.
    join_refused(&c, "n2", &seed, Some(&c.token(&[])), "already a member");

    // The membership did not change through any of that.
    let s = c.wait_converged(0, 2);
    let mut names: Vec<_> = s.nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2"]);

    // A data folder of another cluster is refused, and left as it was.
    let n1_data = c.nodes[0].data.display().to_string();
    let before = std::fs::read(c.nodes[0].data.join("node.json")).unwrap();
    let o = holdfast(
        &[
            "serve",
            "--data",
            &n1_data,
            "--join",
            &other.nodes[0].peer.to_string(),
            "--token",
            &foreign,
        ],
        &[],
    );
    assert_one_line_error(&o, "belongs to another cluster");
    let o = holdfast(&["serve", "--data", &n1_data, "--bootstrap"], &[]);
    assert_one_line_error(&o, "already holds node");
    assert_eq!(
        std::fs::read(c.nodes[0].data.join("node.json")).unwrap(),
        before
    );
}

#[test]
fn bad_flags_and_busy_ports_get_one_line_errors() {
    let c = Cluster::start(1);
    let busy = c.nodes[0].peer.to_string();
    let api = format!("{}:7101", holdfast_tests::fresh_ip());
    refused(
        &c,
        "busy",
        &[
            "--name",
            "b",
            "--listen",
            &busy,
            "--api",
            &api,
            "--bootstrap",
        ],
        "cannot listen on",
    );
    let busy_api = c.nodes[0].api.to_string();
    let l = format!("{}:7001", holdfast_tests::fresh_ip());
    refused(
        &c,
        "busy-api",
        &[
            "--name",
            "b",
            "--listen",
            &l,
            "--api",
            &busy_api,
            "--bootstrap",
        ],
        "cannot listen on",
    );
    refused(&c, "noflags", &[], "holds no node");
    refused(
        &c,
        "badname",
        &[
            "--name",
            "Bad Name",
            "--listen",
            &l,
            "--api",
            &api,
            "--bootstrap",
        ],
        "node name",
    );
    refused(
        &c,
        "anyaddr",
        &[
            "--name",
            "a",
            "--listen",
            "0.0.0.0:7001",
            "--api",
            &api,
            "--bootstrap",
        ],
        "must name an address",
    );
    let o = holdfast(&["status", "--frobnicate"], &[]);
    assert_one_line_error(&o, "--frobnicate");
    let o = holdfast(
        &["status", "--api", "127.0.0.1:1"],
        &[("HOLDFAST_ADMIN_TOKEN", "x")],
    );
    assert_one_line_error(&o, "cannot reach");
    let o = holdfast(&["status", "--api", &busy_api], &[]);
    assert_one_line_error(&o, "no admin token");
}

fn probe(peer: &str, data: Option<&std::path::Path>) -> std::process::Output {
    let mut args = vec![
        "debug".to_string(),
        "probe".into(),
        "--peer".into(),
        peer.to_string(),
    ];
    if let Some(d) = data {
        args.extend(["--data".into(), d.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    holdfast(&refs, &[])
}

#[test]
fn forged_anonymous_and_removed_nodes_cannot_talk_to_the_cluster() {
    let c = Cluster::start(3);
    c.wait_converged(0, 3);
    let other = Cluster::start(1);
    let n1 = c.nodes[0].peer.to_string();

    // A member's own certificate is admitted: the probe itself works.
    let o = probe(&n1, Some(&c.nodes[1].data));
    assert!(
        o.status.success() && stdout(&o).contains("admitted"),
        "{}",
        holdfast_tests::stderr(&o)
    );
    // A certificate signed by another cluster's CA fails the handshake.
    assert_one_line_error(&probe(&n1, Some(&other.nodes[0].data)), "UnknownIssuer");
    // No certificate: only a join may be attempted, and a ping is not one.
    assert_one_line_error(&probe(&n1, None), "refused");

    // Remove n3: its certificate is revoked everywhere.
    let o = c.cli(0, &["node", "remove", "n3"]);
    assert!(o.status.success(), "{}", holdfast_tests::stderr(&o));
    let n3_data = c.nodes[2].data.clone();
    for peer in [c.nodes[0].peer.to_string(), c.nodes[1].peer.to_string()] {
        wait_until(
            "the removed node to be refused",
            Duration::from_secs(20),
            || {
                let o = probe(&peer, Some(&n3_data));
                (!o.status.success() && holdfast_tests::stderr(&o).contains("not a member"))
                    .then_some(())
            },
        );
    }
    let s = c.wait_converged(0, 2);
    assert!(s.nodes.iter().all(|n| n.name != "n3"));
    // The removed node can no longer change anything through the cluster.
    let o = c.cli(2, &["token", "create"]);
    assert!(
        !o.status.success(),
        "a removed node must not get a token committed"
    );
    // Removing an unknown node is a clear error.
    assert_one_line_error(&c.cli(0, &["node", "remove", "nope"]), "no node named");

    // The refusals were counted.
    let m = c.metrics(0);
    assert!(
        m.lines()
            .any(|l| l.starts_with("holdfast_transport_refused_total{reason=\"not_member\"}")),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("holdfast_transport_refused_total{reason=\"tls\"}")),
        "{m}"
    );
}

#[test]
fn output_into_a_closed_pipe_is_not_a_crash() {
    let c = Cluster::start(1);
    c.wait_converged(0, 1);
    let bin = holdfast_tests::holdfast_bin().display().to_string();
    let cmd = format!(
        "{bin} status --api {} | head -c 1 > /dev/null; echo ${{PIPESTATUS[0]}}",
        c.nodes[0].api
    );
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(&cmd)
        .env("HOLDFAST_ADMIN_TOKEN", &c.admin_token)
        .output()
        .unwrap();
    let err = holdfast_tests::stderr(&o);
    assert!(
        !err.contains("panicked"),
        "the CLI panicked on a closed pipe: {err}"
    );
    assert_eq!(stdout(&o).trim(), "0", "status into a closed pipe exits 0");
}
