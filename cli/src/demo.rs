//! `holdfast demo`: a local cluster of real `holdfast serve` processes on
//! loopback, one data folder each under `--dir`, until Ctrl-C. Run again
//! with the same `--dir` and it restarts the same cluster.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

struct Node {
    name: String,
    api: SocketAddr,
    peer: SocketAddr,
    child: Child,
}

fn free_ports() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let tcp = TcpListener::bind("127.0.0.1:0")?;
    Ok((udp.local_addr()?, tcp.local_addr()?))
}

fn spawn(dir: &Path, name: &str, args: &[String]) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start node {name}"))
}

fn wait_healthy(node: &mut Node, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    while Instant::now() < deadline {
        if let Some(status) = node.child.try_wait()? {
            bail!(
                "node {} exited ({status}); see {}",
                node.name,
                dir.join(format!("{}.log", node.name)).display()
            );
        }
        if agent
            .get(&format!("http://{}/healthz", node.api))
            .call()
            .is_ok()
            && dir.join(&node.name).join("admin.token").exists()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("node {} did not come up within 60 s", node.name)
}

fn admin_token(dir: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(dir.join("n1").join("admin.token"))
        .context("reading n1's admin token")?
        .trim()
        .to_string())
}

fn create_token(api: SocketAddr, admin: &str) -> anyhow::Result<String> {
    let resp: serde_json::Value = ureq::post(&format!("http://{api}/api/v1/tokens"))
        .set("Authorization", &format!("Bearer {admin}"))
        .send_json(serde_json::json!({ "ttl_s": 600, "uses": 1 }))
        .context("creating a join token")?
        .into_json()?;
    resp.get("token")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .context("no token in the answer")
}

pub fn run(count: u8, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "holdfast-demo-{}",
            hex::encode(rand::random::<[u8; 4]>())
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let mut nodes: Vec<Node> = Vec::new();
    let result = start_all(&dir, count, &mut nodes).and_then(|()| {
        let admin = admin_token(&dir)?;
        let mounts = mount_web(&dir, &nodes, &admin)?;
        outln!(
            "holdfast demo: {} nodes under {}",
            nodes.len(),
            dir.display()
        );
        for n in &nodes {
            outln!(
                "  {:<4} api {:<21} peer {:<21} admin token {admin}",
                n.name,
                n.api,
                n.peer
            );
        }
        for (name, path) in &mounts {
            outln!("  volume web on {name} at {}", path.display());
        }
        outln!(
            "Try:  HOLDFAST_API={} HOLDFAST_ADMIN_TOKEN={admin} holdfast status",
            nodes[0].api
        );
        outln!(
            "Logs: {}/NODE.log.  Ctrl-C stops the cluster; run again with --dir {} to restart it.",
            dir.display(),
            dir.display()
        );
        wait_for_stop(&mut nodes)
    });
    for n in &mut nodes {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(n.child.id().to_string())
            .status();
    }
    for n in &mut nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while n.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
    outln!("holdfast demo: stopped");
    result
}

fn start_all(dir: &Path, count: u8, nodes: &mut Vec<Node>) -> anyhow::Result<()> {
    let restarting = dir.join("n1").join("node.json").exists();
    for i in 1..=count {
        let name = format!("n{i}");
        let data = dir.join(&name);
        let file = data.join("node.json");
        let (args, peer, api) = if file.exists() {
            let f: holdfast_node::disk::NodeFile = serde_json::from_slice(&std::fs::read(&file)?)?;
            (
                vec!["--data".into(), data.display().to_string()],
                f.listen.parse()?,
                f.api.parse()?,
            )
        } else if restarting && i > 1 && nodes.is_empty() {
            bail!("{} is missing", file.display())
        } else {
            let (peer, api) = free_ports()?;
            let mut args = vec![
                "--data".to_string(),
                data.display().to_string(),
                "--name".into(),
                name.clone(),
                "--listen".into(),
                peer.to_string(),
                "--api".into(),
                api.to_string(),
            ];
            if i == 1 {
                args.push("--bootstrap".into());
            } else {
                let token = create_token(nodes[0].api, &admin_token(dir)?)?;
                args.extend([
                    "--join".into(),
                    nodes[0].peer.to_string(),
                    "--token".into(),
                    token,
                ]);
            }
            (args, peer, api)
        };
        let child = spawn(dir, &name, &args)?;
        nodes.push(Node {
            name,
            api,
            peer,
            child,
        });
        if let Some(n) = nodes.last_mut() {
            // On a restart all nodes come up together; waiting for each in
            // turn would stall on a cluster that has no majority yet.
            if !restarting {
                wait_healthy(n, dir)?;
            }
        }
    }
    if restarting {
        for n in nodes.iter_mut() {
            wait_healthy(n, dir)?;
        }
    }
    Ok(())
}

fn wait_for_stop(nodes: &mut [Node]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    for n in nodes.iter_mut() {
                        if let Some(status) = n.child.try_wait()? {
                            bail!("node {} exited ({status})", n.name);
                        }
                    }
                }
            }
        }
    })
}

fn api_call(
    method: &str,
    api: SocketAddr,
    path: &str,
    admin: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let req = ureq::request(method, &format!("http://{api}{path}"))
        .set("Authorization", &format!("Bearer {admin}"));
    match req.send_json(body) {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => bail!(
            "{path}: HTTP {code}: {}",
            r.into_string().unwrap_or_default().trim()
        ),
        Err(e) => bail!("{path}: {e}"),
    }
}

fn api_get(api: SocketAddr, path: &str, admin: &str) -> anyhow::Result<serde_json::Value> {
    Ok(ureq::get(&format!("http://{api}{path}"))
        .set("Authorization", &format!("Bearer {admin}"))
        .call()?
        .into_json()?)
}

/// Creates volume `web` (first run) and mounts it on every node under
/// `DIR/mnt/NODE`. A restarted node mounts it again by itself.
fn mount_web(dir: &Path, nodes: &[Node], admin: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let volumes = api_get(nodes[0].api, "/api/v1/volumes", admin)?;
    if !volumes
        .as_array()
        .is_some_and(|vs| vs.iter().any(|v| v["name"] == "web"))
    {
        let replicas = nodes.len().min(3);
        api_call(
            "POST",
            nodes[0].api,
            "/api/v1/volumes",
            admin,
            serde_json::json!({ "name": "web", "replicas": replicas }),
        )?;
    }
    let mut out = Vec::new();
    for n in nodes {
        let path = dir.join("mnt").join(&n.name);
        std::fs::create_dir_all(&path)?;
        // A restarted node remounts by itself; wait a little for it.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mounted = |api| -> anyhow::Result<bool> {
            let ms = api_get(api, "/api/v1/mounts", admin)?;
            Ok(ms
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["path"] == serde_json::json!(path))))
        };
        let had_mount = std::fs::read_to_string(dir.join(&n.name).join("mounts.json"))
            .is_ok_and(|t| t.contains("\"web\""));
        while had_mount && !mounted(n.api)? && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        if !mounted(n.api)? {
            api_call(
                "POST",
                n.api,
                "/api/v1/mounts",
                admin,
                serde_json::json!({ "volume": "web", "path": path }),
            )?;
        }
        out.push((n.name.clone(), path));
    }
    Ok(out)
}
