//! A private network for real nodes: one network namespace per node, each
//! joined by a veth pair to a bridge in the root namespace (which also
//! holds an address, so the harness reaches every node's API), and an
//! nftables table inside each namespace through which links are cut.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Everything it makes
//! is removed when the [`Net`] is dropped.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs a command; panics with its output when it fails.
fn run(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        o.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Applies an nftables script inside namespace `ns`.
fn nft(ns: &str, script: &str) {
    // Script and errors go through files, not pipes: a child spawned by
    // another thread at the same moment can inherit a pipe's write end
    // for its whole life, and reading that pipe to its end would wait for
    // it. nsenter switches only the network namespace (`ip netns exec`
    // also makes a mount namespace, which nothing here needs).
    let dir = tempfile::tempdir().expect("tempdir");
    let (script_path, err_path) = (dir.path().join("script.nft"), dir.path().join("stderr"));
    std::fs::write(&script_path, script).expect("write nft script");
    let started = std::time::Instant::now();
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["nft", "-f"])
        .arg(&script_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .status()
        .expect("run nft");
    let took = started.elapsed();
    if took > std::time::Duration::from_secs(1) {
        eprintln!("  (nft in {ns} took {took:?})");
    }
    assert!(
        status.success(),
        "nft in {ns} failed: {}\nscript:\n{script}",
        std::fs::read_to_string(&err_path)
            .unwrap_or_default()
            .trim()
    );
}

#[derive(Debug)]
pub struct Net {
    tag: String,
    bridge: String,
    /// Third octet of the run's `10.215.X.0/24`.
    subnet: u8,
    namespaces: Vec<String>,
}

/// Where each live [`Net`] leaves its tag and its creator's pid, so that a
/// later run can clear what a killed run left behind.
const REGISTRY: &str = "/run/holdfast-test-net";

/// Removes the namespaces (and their processes) and bridges of runs whose
/// creator is gone.
fn clear_leftovers() {
    let Ok(entries) = std::fs::read_dir(REGISTRY) else {
        return;
    };
    let namespaces = run(&["ip", "netns", "list"]);
    for e in entries.flatten() {
        let tag = e.file_name().to_string_lossy().into_owned();
        let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
        if Path::new(&format!("/proc/{}", pid.trim())).exists() {
            continue;
        }
        for ns in namespaces
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|ns| ns.starts_with(&format!("hf-{tag}-")))
        {
            let pids = run(&["ip", "netns", "pids", ns]);
            for p in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", p]).output();
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("hfbr{tag}")])
            .output();
        let _ = std::fs::remove_file(e.path());
    }
}

impl Net {
    /// A bridge and no nodes yet.
    pub fn create() -> Net {
        clear_leftovers();
        std::fs::create_dir_all(REGISTRY).expect("registry folder");
        let used = run(&["ip", "-4", "-o", "addr"]);
        // The subnet names the run; claiming its registry entry with
        // `create_new` keeps two runs starting at once apart.
        let (tag, subnet) = (0..1000)
            .map(|_| 1 + (rand::random::<u32>() % 250) as u8)
            .filter(|s| !used.contains(&format!("10.215.{s}.")))
            .find_map(|s| {
                let tag = format!("{s:03}");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(Path::new(REGISTRY).join(&tag))
                    .ok()?;
                std::io::Write::write_all(&mut f, std::process::id().to_string().as_bytes())
                    .ok()?;
                Some((tag, s))
            })
            .expect("a free subnet");
        let bridge = format!("hfbr{tag}");
        run(&["ip", "link", "add", &bridge, "type", "bridge"]);
        let net = Net {
            tag,
            bridge,
            subnet,
            namespaces: Vec::new(),
        };
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.215.{subnet}.254/24"),
            "dev",
            &net.bridge,
        ]);
        run(&["ip", "link", "set", &net.bridge, "up"]);
        net
    }

    /// Adds namespace `i` (the next one) with its address, and returns `i`.
    pub fn add_node(&mut self) -> usize {
        let i = self.namespaces.len();
        assert!(i < 200, "too many nodes");
        let ns = format!("hf-{}-{i}", self.tag);
        let host = format!("hfv{}{i}", self.tag);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        run(&["ip", "link", "set", &host, "master", &self.bridge]);
        run(&["ip", "link", "set", &host, "up"]);
        let exec = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &ns];
            all.extend_from_slice(args);
            run(&all);
        };
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.ip(i)),
            "dev",
            "eth0",
        ]);
        exec(&["ip", "link", "set", "eth0", "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        nft(
            &ns,
            "table inet holdfast_nemesis {\n\
             chain input { type filter hook input priority 0; policy accept; }\n\
             chain output { type filter hook output priority 0; policy accept; }\n\
             }\n",
        );
        i
    }

    pub fn ip(&self, i: usize) -> String {
        format!("10.215.{}.{}", self.subnet, i + 1)
    }

    /// The path `nsenter --net=` takes for node `i`.
    pub fn ns_path(&self, i: usize) -> String {
        format!("/run/netns/{}", self.namespaces[i])
    }

    /// Drops every packet from node `from` to node `to` (one way: `to` can
    /// still send to `from`).
    pub fn cut(&self, from: usize, to: usize) {
        nft(
            &self.namespaces[to],
            &format!(
                "add rule inet holdfast_nemesis input ip saddr {} drop\n",
                self.ip(from)
            ),
        );
    }

    /// Cuts both ways between every node of `a` and every node of `b`.
    pub fn split(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for ns in &self.namespaces {
            nft(
                ns,
                "flush chain inet holdfast_nemesis input\nflush chain inet holdfast_nemesis output\n",
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = std::fs::remove_file(Path::new(REGISTRY).join(&self.tag));
    }
}
