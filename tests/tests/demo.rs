//! `holdfast demo`, run as a new user runs it from the README.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_tests::{holdfast, holdfast_bin, signal, wait_until, Status};

/// A running demo. Dropping it stops the demo (and so its nodes) even
/// when a test fails half-way.
struct Demo {
    child: Option<Child>,
    api: String,
    token: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "INT");
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Demo {
    /// Starts `holdfast demo --nodes 3 --dir DIR` and reads its banner.
    fn start(dir: &std::path::Path) -> Demo {
        let child = Command::new(holdfast_bin())
            .args(["demo", "--nodes", "3", "--dir", &dir.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start demo");
        let mut demo = Demo {
            child: Some(child),
            api: String::new(),
            token: String::new(),
        };
        let out = demo
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout");
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
            let Some(rest) = line.strip_prefix("Try:") else {
                continue;
            };
            for word in rest.split_whitespace() {
                if let Some(v) = word.strip_prefix("HOLDFAST_API=") {
                    demo.api = v.to_string();
                }
                if let Some(v) = word.strip_prefix("HOLDFAST_ADMIN_TOKEN=") {
                    demo.token = v.to_string();
                }
            }
            let listed = banner.iter().filter(|l| l.contains("admin token")).count();
            assert_eq!(
                listed,
                3,
                "the banner lists each node with its API and admin token:\n{}",
                banner.join("\n")
            );
            return demo;
        }
    }

    fn status(&self) -> Option<Status> {
        let o = holdfast(
            &["status", "--json"],
            &[
                ("HOLDFAST_API", &self.api),
                ("HOLDFAST_ADMIN_TOKEN", &self.token),
            ],
        );
        serde_json::from_slice(&o.stdout).ok()
    }

    fn wait_healthy(&self) -> Status {
        wait_until(
            "the demo cluster to be healthy",
            Duration::from_secs(30),
            || {
                self.status().filter(|s| {
                    s.leader.is_some() && s.nodes.len() == 3 && s.nodes.iter().all(|n| n.healthy)
                })
            },
        )
    }

    /// Ctrl-C: the demo must exit 0 and take its nodes with it.
    fn ctrl_c(mut self) {
        let mut child = self.child.take().expect("demo running");
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
        let up = ureq::get(&format!("http://{}/healthz", self.api))
            .timeout(Duration::from_secs(1))
            .call()
            .is_ok();
        assert!(!up, "nodes must be gone after the demo stops");
    }
}

#[test]
fn demo_runs_a_three_node_cluster_stops_on_ctrl_c_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path());
    let first = demo.wait_healthy();
    let (api, token) = (demo.api.clone(), demo.token.clone());
    demo.ctrl_c();

    // The same --dir brings the same cluster back.
    let demo = Demo::start(dir.path());
    assert_eq!(
        (demo.api.as_str(), demo.token.as_str()),
        (api.as_str(), token.as_str())
    );
    let again = demo.wait_healthy();
    assert_eq!(again.cluster_id, first.cluster_id);
    demo.ctrl_c();
}
