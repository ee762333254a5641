//! `holdfast demo`, run as a new user runs it from the README.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_tests::{holdfast, holdfast_bin, signal, Status};

/// Starts the demo, reads its banner, returns (child, api, admin token).
fn start_demo(dir: &std::path::Path) -> (std::process::Child, String, String) {
    let mut child = Command::new(holdfast_bin())
        .args(["demo", "--nodes", "3", "--dir", &dir.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start demo");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut banner = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo banner");
        banner.push(line.clone());
        if let Some(rest) = line.strip_prefix("Try:") {
            let mut api = String::new();
            let mut token = String::new();
            for word in rest.split_whitespace() {
                if let Some(v) = word.strip_prefix("HOLDFAST_API=") {
                    api = v.to_string();
                }
                if let Some(v) = word.strip_prefix("HOLDFAST_ADMIN_TOKEN=") {
                    token = v.to_string();
                }
            }
            let nodes = banner.iter().filter(|l| l.contains("admin token")).count();
            assert_eq!(
                nodes,
                3,
                "the banner lists each node with its API and admin token:\n{}",
                banner.join("\n")
            );
            return (child, api, token);
        }
    }
}

fn status(api: &str, token: &str) -> Status {
    let o = holdfast(
        &["status", "--json"],
        &[("HOLDFAST_API", api), ("HOLDFAST_ADMIN_TOKEN", token)],
    );
    assert!(o.status.success(), "{}", holdfast_tests::stderr(&o));
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

fn stop_demo(mut child: std::process::Child, api: &str) {
    signal(&child, "INT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st.success(), "demo exits 0 on Ctrl-C, got {st}");
    assert!(
        ureq::get(&format!("http://{api}/healthz"))
            .timeout(Duration::from_secs(1))
            .call()
            .is_err(),
        "nodes must be gone after the demo stops"
    );
}

#[test]
fn demo_runs_a_three_node_cluster_stops_on_ctrl_c_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (child, api, token) = start_demo(dir.path());
    let s = holdfast_tests::wait_until("demo cluster healthy", Duration::from_secs(30), || {
        Some(status(&api, &token)).filter(|s| {
            s.leader.is_some() && s.nodes.len() == 3 && s.nodes.iter().all(|n| n.healthy)
        })
    });
    stop_demo(child, &api);

    // The same --dir brings the same cluster back.
    let (child, api2, token2) = start_demo(dir.path());
    assert_eq!(
        (api2.as_str(), token2.as_str()),
        (api.as_str(), token.as_str())
    );
    let again =
        holdfast_tests::wait_until("restarted demo healthy", Duration::from_secs(30), || {
            Some(status(&api, &token)).filter(|s| {
                s.leader.is_some() && s.nodes.len() == 3 && s.nodes.iter().all(|n| n.healthy)
            })
        });
    assert_eq!(again.cluster_id, s.cluster_id);
    stop_demo(child, &api);
}
