//! Test harness for real `holdfast` processes: start nodes, reach their
//! API, kill and restart them. Each node gets its own loopback address
//! (127.x.y.z), so tests run in parallel without fighting over ports.
//!
//! The binary under test is `target/<profile>/holdfast`, found next to the
//! test executable, or `HOLDFAST_BIN`.
//!
//! [`Cluster::start_with`] can instead put each node in its own network
//! namespace ([`net::Net`]), so that links between nodes can be cut.

pub mod net;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The repository's root. Read from the environment cargo and nextest run
/// tests in, not baked in at compile time: cargo reuses a test binary
/// built from another checkout of the same sources (a workspace member's
/// fingerprint does not depend on its path), and then `env!` would name
/// that checkout.
pub fn repo_root() -> PathBuf {
    let tests = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    tests.parent().expect("the repository root").to_path_buf()
}

pub fn holdfast_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HOLDFAST_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/<test> or target/debug/<tool> -> target/debug/holdfast
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target dir");
    let bin = [dir.join("holdfast"), dir.join("../holdfast")]
        .into_iter()
        .find(|b| b.exists())
        .unwrap_or_else(|| dir.join("../holdfast"));
    assert!(
        bin.exists(),
        "{} not built; run `cargo build --bin holdfast` first",
        bin.display()
    );
    bin
}

/// A fresh loopback address nobody else in this run uses.
pub fn fresh_ip() -> String {
    let r: u32 = rand::random();
    format!(
        "127.{}.{}.{}",
        1 + (r >> 16) % 250,
        (r >> 8) & 0xff,
        1 + (r & 0xff) % 250
    )
}

/// Runs `holdfast ARGS` to completion.
pub fn holdfast(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(holdfast_bin());
    c.args(args).stdin(Stdio::null());
    c.env_remove("HOLDFAST_API")
        .env_remove("HOLDFAST_ADMIN_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run holdfast")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a command failed with exactly one line on stderr that contains
/// `needle`, and returns that line.
pub fn assert_one_line_error(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{err}");
    assert!(
        lines[0].contains(needle),
        "error {:?} does not mention {needle:?}",
        lines[0]
    );
    lines[0].to_string()
}

#[derive(Debug, Deserialize, Clone)]
pub struct Status {
    pub cluster_id: String,
    pub node: String,
    pub leader: Option<String>,
    pub term: u64,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct NodeStatus {
    pub name: String,
    pub peer_addr: String,
    pub api_addr: String,
    pub role: String,
    pub healthy: bool,
    pub last_seen_ms: u64,
}

/// One node process and where it lives.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub data: PathBuf,
    pub peer: SocketAddr,
    pub api: SocketAddr,
    pub child: Option<Child>,
    log: PathBuf,
    /// `/run/netns/...` when the node lives in its own network namespace.
    netns: Option<String>,
    env: Vec<(String, String)>,
}

impl Node {
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node running");
        signal(&c, "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `holdfast serve --data DIR`: restart from the data folder alone.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} still running", self.name);
        self.child = Some(spawn_serve(
            &["--data", &self.data.display().to_string()],
            &self.log,
            self.netns.as_deref(),
            &self.env,
        ));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Bytes free on the filesystem that holds `path`, as df(1) says.
pub fn free_bytes(path: &Path) -> u64 {
    let o = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

/// Sends `SIG<name>` to a child with kill(1).
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{name} {} failed", child.id());
}

fn spawn_serve(args: &[&str], log: &Path, netns: Option<&str>, env: &[(String, String)]) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    // nsenter switches only the network namespace and then execs, so the
    // child is the node itself (signals reach it) and its FUSE mounts are
    // seen by everyone.
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg("--").arg(holdfast_bin());
            c
        }
        None => Command::new(holdfast_bin()),
    };
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("log"))
        .stderr(f)
        .spawn()
        .expect("spawn holdfast serve")
}

/// A cluster of node processes under one temporary folder.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub admin_token: String,
    /// Mount points made by [`Cluster::mount`], detached on drop.
    mounts: std::sync::Mutex<Vec<PathBuf>>,
    opts: ClusterOptions,
    /// Dropped after the nodes (see `Drop`).
    pub net: Option<net::Net>,
}

/// How [`Cluster::start_with`] starts nodes.
#[derive(Debug, Default, Clone)]
pub struct ClusterOptions {
    /// Each node in its own network namespace ([`net::Net`]).
    pub netns: bool,
    /// Environment for every node process.
    pub env: Vec<(String, String)>,
    /// Node index and size in MiB: that node's data folder is a tmpfs.
    pub small_disk: Option<(usize, u64)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test shows what the nodes said last.
        if std::thread::panicking() {
            eprintln!("last node log lines:\n{}", self.logs_tail(30));
        }
        for n in &mut self.nodes {
            n.kill9();
        }
        // A killed node leaves its FUSE mounts dead ("not connected").
        for m in self.mounts.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
        if let Some((i, _)) = self.opts.small_disk {
            if let Some(n) = self.nodes.get(i) {
                let _ = Command::new("umount").arg("-l").arg(&n.data).output();
            }
        }
        self.net.take();
    }
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Bootstraps `n1` and joins `n2..=count` through `n1`.
    pub fn start(count: usize) -> Cluster {
        Self::start_with(count, ClusterOptions::default())
    }

    pub fn start_with(count: usize, opts: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("holdfast-test-")
            .tempdir()
            .expect("tempdir");
        let mut c = Cluster {
            dir,
            nodes: Vec::new(),
            admin_token: String::new(),
            mounts: Default::default(),
            net: opts.netns.then(net::Net::create),
            opts,
        };
        let n1 = c.spawn_new("n1", &["--bootstrap"]);
        c.nodes.push(n1);
        c.wait_api(0);
        let token_file = c.nodes[0].data.join("admin.token");
        c.admin_token = wait_until("admin token", Duration::from_secs(10), || {
            std::fs::read_to_string(&token_file).ok()
        })
        .trim()
        .to_string();
        for i in 2..=count {
            c.join_new(&format!("n{i}"), &[]);
        }
        c
    }

    /// Starts a new process `serve --data DIR/NAME --name NAME ...EXTRA`
    /// as node number `self.nodes.len()`.
    pub fn spawn_new(&mut self, name: &str, extra: &[&str]) -> Node {
        let index = self.nodes.len();
        let (ip, netns) = match self.net.as_mut() {
            Some(net) => {
                let i = net.add_node();
                assert_eq!(i, index, "one namespace per node, in order");
                (net.ip(i), Some(net.ns_path(i)))
            }
            None => (fresh_ip(), None),
        };
        let peer: SocketAddr = format!("{ip}:7001").parse().expect("addr");
        let api: SocketAddr = format!("{ip}:7101").parse().expect("addr");
        let data = self.dir.path().join(name);
        let log = self.dir.path().join(format!("{name}.log"));
        if let Some((_, mib)) = self.opts.small_disk.filter(|(i, _)| *i == index) {
            std::fs::create_dir_all(&data).expect("data folder");
            let o = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(&data)
                .output()
                .expect("mount tmpfs");
            assert!(o.status.success(), "mount tmpfs: {}", stderr(&o));
        }
        let mut args = vec![
            "--data".to_string(),
            data.display().to_string(),
            "--name".into(),
            name.into(),
            "--listen".into(),
            peer.to_string(),
            "--api".into(),
            api.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Node {
            name: name.into(),
            data,
            peer,
            api,
            child: Some(spawn_serve(&refs, &log, netns.as_deref(), &self.opts.env)),
            log,
            netns,
            env: self.opts.env.clone(),
        }
    }

    /// Joins a new node through the first running member and waits until it
    /// serves its API.
    pub fn join_new(&mut self, name: &str, extra: &[&str]) -> usize {
        let token = self.token(&[]);
        let seed = self
            .nodes
            .iter_mut()
            .find_map(|n| n.is_running().then(|| n.peer.to_string()))
            .expect("a running node");
        let mut args = vec!["--join", &seed, "--token", &token];
        args.extend_from_slice(extra);
        let node = self.spawn_new(name, &args);
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.wait_api(i);
        i
    }

    pub fn env(&self, i: usize) -> Vec<(&'static str, String)> {
        vec![
            ("HOLDFAST_API", self.nodes[i].api.to_string()),
            ("HOLDFAST_ADMIN_TOKEN", self.admin_token.clone()),
        ]
    }

    /// Runs a client command against node `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let env = self.env(i);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        holdfast(args, &env)
    }

    /// A new join token from any node that can make one.
    pub fn token(&self, extra: &[&str]) -> String {
        wait_until("a join token", Duration::from_secs(30), || {
            (0..self.nodes.len()).find_map(|i| {
                let mut args = vec!["token", "create"];
                args.extend_from_slice(extra);
                let o = self.cli(i, &args);
                o.status.success().then(|| stdout(&o).trim().to_string())
            })
        })
    }

    pub fn status(&self, i: usize) -> Option<Status> {
        let o = self.cli(i, &["status", "--json"]);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    pub fn wait_api(&mut self, i: usize) {
        let api = self.nodes[i].api;
        let name = self.nodes[i].name.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ureq::get(&format!("http://{api}/healthz"))
                .timeout(Duration::from_secs(1))
                .call()
                .is_ok()
            {
                return;
            }
            if !self.nodes[i].is_running() {
                panic!("node {name} exited; its log:\n{}", self.nodes[i].log());
            }
            assert!(
                Instant::now() < deadline,
                "node {name} API did not come up; log:\n{}",
                self.nodes[i].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until node `i` reports `want` members, all healthy, and a
    /// leader; returns that status.
    pub fn wait_converged(&self, i: usize, want: usize) -> Status {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status(i);
            if let Some(s) = s.clone().filter(|s| {
                s.leader.is_some() && s.nodes.len() == want && s.nodes.iter().all(|n| n.healthy)
            }) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {} to see {want} healthy members and a leader; last status {s:?}\n{}", self.nodes[i].name, self.logs_tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = n.log();
            let all: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- {} log (last {lines} lines) ---\n", n.name));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Detaches `path` (a mount the test made) when the cluster goes.
    pub fn track_mount(&self, path: PathBuf) {
        self.mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path);
    }

    /// Creates a file volume through node 0.
    pub fn create_volume(&self, name: &str, replicas: usize) {
        self.create_volume_with(name, replicas, &[]);
    }

    /// Creates a file volume through node 0, with more `volume create`
    /// arguments (`--static-leader` for a test that needs the leadership
    /// to stay where elections put it).
    pub fn create_volume_with(&self, name: &str, replicas: usize, extra: &[&str]) {
        let replicas = replicas.to_string();
        let mut args = vec!["volume", "create", name, "--replicas", &replicas];
        args.extend_from_slice(extra);
        let o = self.cli(0, &args);
        assert!(o.status.success(), "volume create: {}", stderr(&o));
    }

    /// Mounts `volume` on node `i` at a new folder and returns it.
    pub fn mount(&self, i: usize, volume: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join("mnt")
            .join(format!("{}-{volume}", self.nodes[i].name));
        std::fs::create_dir_all(&path).expect("mount point");
        let p = path.display().to_string();
        let o = self.cli(i, &["mount", volume, &p]);
        assert!(o.status.success(), "mount: {}", stderr(&o));
        self.mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        path
    }

    /// `volume status NAME --json` from node `i`.
    pub fn volume_status(&self, i: usize, volume: &str) -> Option<serde_json::Value> {
        let o = self.cli(i, &["volume", "status", volume, "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    /// Each replica's applied index and state digest, asked of node `i`.
    pub fn digests(&self, i: usize, volume: &str) -> Vec<(String, u64, Option<String>)> {
        self.try_digests(i, volume).expect("digests")
    }

    /// [`Cluster::digests`], or `None` when node `i` does not answer.
    pub fn try_digests(
        &self,
        i: usize,
        volume: &str,
    ) -> Option<Vec<(String, u64, Option<String>)>> {
        let v: serde_json::Value = ureq::get(&format!(
            "http://{}/api/v1/volumes/{volume}/digests",
            self.nodes[i].api
        ))
        .set("Authorization", &format!("Bearer {}", self.admin_token))
        .timeout(Duration::from_secs(60))
        .call()
        .ok()?
        .into_json()
        .ok()?;
        Some(
            v.as_array()?
                .iter()
                .map(|r| {
                    (
                        r["node"].as_str().unwrap_or_default().to_string(),
                        r["applied_index"].as_u64().unwrap_or(0),
                        r["digest"].as_str().map(str::to_string),
                    )
                })
                .collect(),
        )
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("node by name")
    }

    /// Scrapes `/metrics` of node `i` with the admin token.
    pub fn metrics(&self, i: usize) -> String {
        ureq::get(&format!("http://{}/metrics", self.nodes[i].api))
            .set("Authorization", &format!("Bearer {}", self.admin_token))
            .call()
            .expect("scrape metrics")
            .into_string()
            .expect("metrics text")
    }
}
