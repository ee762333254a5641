//! `holdfast`: the one binary. `serve` runs a node; every other command is a
//! client of a node's HTTP API, except `demo`, which runs a local cluster of
//! `serve` processes.

/// `println!` for output a pipe may stop reading (`holdfast status | head`):
/// a closed stdout ends the program quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod client;
mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "holdfast",
    version,
    about = "A highly available website platform on two to five hosts"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a client command reaches a node.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The node's API address.
    #[arg(long, env = "HOLDFAST_API", default_value = "127.0.0.1:7380")]
    api: String,
    /// A file holding the cluster admin token (DIR/admin.token on any node).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node: bootstrap a cluster, join one, or restart from --data.
    Serve {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Peer (QUIC) address, which other nodes dial.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP API address.
        #[arg(long)]
        api: Option<SocketAddr>,
        #[arg(long, conflicts_with = "join")]
        bootstrap: bool,
        /// Peer address of a member to join through.
        #[arg(long, requires = "token")]
        join: Option<SocketAddr>,
        #[arg(long, requires = "join")]
        token: Option<String>,
        /// voter, learner or witness.
        #[arg(long, default_value = "voter", requires = "join")]
        role: holdfast_core::meta::Role,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Show the cluster.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cluster members.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// File volumes.
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// Serve volume NAME at DIR through FUSE on the node behind --api (it
    /// mounts it again after a restart).
    Mount {
        name: String,
        dir: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop serving DIR (refused while it is busy).
    Umount {
        dir: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Wasm plugins (routers, SQL routers, failover policies, deploy
    /// strategies), stored in the cluster and run on every node.
    Plugin {
        #[command(subcommand)]
        cmd: PluginCmd,
    },
    /// Run a local cluster of real node processes until Ctrl-C.
    Demo {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
        nodes: u8,
        /// Where the nodes keep their data (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Diagnosis tools.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        cmd: DebugCmd,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Print a new join token.
    Create {
        /// How long the token stays valid (e.g. 30m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many joins it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Create a replicated file volume.
    Create {
        name: String,
        #[arg(long, default_value_t = 3)]
        replicas: u8,
        /// Leave the leadership where elections put it. By default it
        /// moves to the replica that asks for most of the changes, whose
        /// writes then commit one network round trip sooner.
        #[arg(long)]
        static_leader: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List volumes.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Add a replica on data node NODE: it copies the volume (by resync)
    /// as a learner and votes once it has caught up. Waits until then.
    AddReplica {
        name: String,
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove NODE's replica (the leadership moves first if NODE leads);
    /// NODE then deletes its copy.
    RemoveReplica {
        name: String,
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a volume's leader, replicas and usage.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCmd {
    /// Check a component, store it in the cluster and make it the active
    /// version of NAME on every node (the version it replaces stays for a
    /// rollback).
    Install {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// Allow an import beyond the baseline: clocks, random, filesystem
        /// or sockets.
        #[arg(long = "grant", value_name = "CAP")]
        grants: Vec<String>,
        /// What callers get when the plugin fails: the built-in decision
        /// (open) or an error (closed).
        #[arg(long, default_value = "open", value_parser = ["open", "closed"])]
        fail: String,
        /// Refuse the component unless it implements this world.
        #[arg(long, value_parser = ["router", "sql-router", "failover-policy", "deploy-strategy"])]
        world: Option<String>,
        /// Per-call deadline (default 1 ms for routers, 50 ms for policies).
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// Memory limit in MiB (default 16 for routers, 64 for policies).
        #[arg(long)]
        memory_mib: Option<u64>,
        /// A config value the plugin reads (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// With --grant filesystem: the folder the plugin sees, read-only.
        #[arg(long)]
        fs_root: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the plugins, with this node's call counts and state.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make one call on the node behind --api and print the decision.
    Test {
        name: String,
        /// The input, in the JSON form of the plugin's world.
        #[arg(long)]
        input: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make the previous version active again on every node.
    Rollback {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a plugin from every node.
    Remove {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take a quarantined plugin back into service on the node behind --api.
    Reinstate {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// Remove a member and revoke its certificate.
    Remove {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
enum DebugCmd {
    /// Connect to a node's peer port with the identity in --data (or none),
    /// without checking the server, and ping it. Shows whether it admits us.
    Probe {
        #[arg(long)]
        peer: SocketAddr,
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line: clap's message up to its usage block.
            let msg = e.to_string();
            let words: Vec<&str> = msg
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = words.join(" ");
            eprintln!(
                "holdfast: {} (see holdfast --help)",
                line.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let serving = matches!(cli.cmd, Cmd::Serve { .. });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        if serving {
            "info".into()
        } else {
            "warn".into()
        }
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve {
            data,
            name,
            listen,
            api,
            bootstrap,
            join,
            token,
            role,
        } => {
            let opts = holdfast_node::ServeOptions {
                data,
                name,
                listen,
                api,
                bootstrap,
                join,
                token,
                role,
            };
            runtime()?.block_on(async {
                let stop = async {
                    let mut term = match tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::terminate(),
                    ) {
                        Ok(s) => s,
                        Err(_) => return std::future::pending().await,
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                };
                holdfast_node::serve(opts, stop).await
            })?;
            Ok(())
        }
        Cmd::Token {
            cmd: TokenCmd::Create { ttl, uses, api },
        } => {
            let c = client::Client::new(&api)?;
            let body = serde_json::json!({ "ttl_s": ttl.as_secs().max(1), "uses": uses });
            let created: holdfast_node::api::TokenCreated = c.post("/api/v1/tokens", &body)?;
            outln!("{}", created.token);
            Ok(())
        }
        Cmd::Status { json, api } => {
            let c = client::Client::new(&api)?;
            let st: holdfast_node::api::ClusterStatus = c.get("/api/v1/cluster")?;
            if json {
                outln!("{}", serde_json::to_string(&st)?);
            } else {
                outln!(
                    "cluster {}  term {}  leader {}",
                    st.cluster_id,
                    st.term,
                    st.leader.as_deref().unwrap_or("(none)")
                );
                outln!(
                    "{:<16} {:<8} {:<8} {:<22} {:<22}",
                    "NODE",
                    "ROLE",
                    "HEALTH",
                    "PEER",
                    "API"
                );
                for n in &st.nodes {
                    let lead = if Some(&n.name) == st.leader.as_ref() {
                        "*"
                    } else {
                        ""
                    };
                    outln!(
                        "{:<16} {:<8} {:<8} {:<22} {:<22}",
                        format!("{}{lead}", n.name),
                        n.role,
                        if n.healthy { "healthy" } else { "DOWN" },
                        n.peer_addr,
                        n.api_addr
                    );
                }
            }
            Ok(())
        }
        Cmd::Node {
            cmd: NodeCmd::Remove { name, api },
        } => {
            let c = client::Client::new(&api)?;
            let _: serde_json::Value = c.delete(&format!("/api/v1/nodes/{name}"))?;
            outln!("removed {name}");
            Ok(())
        }
        Cmd::Volume { cmd } => volume(cmd),
        Cmd::Plugin { cmd } => plugin(cmd),
        Cmd::Mount { name, dir, api } => {
            let c = client::Client::new(&api)?;
            let path = std::path::absolute(&dir)?;
            let _: serde_json::Value = c.post(
                "/api/v1/mounts",
                &serde_json::json!({ "volume": name, "path": path }),
            )?;
            outln!("mounted volume {name} at {}", path.display());
            Ok(())
        }
        Cmd::Umount { dir, api } => {
            let c = client::Client::new(&api)?;
            let path = std::path::absolute(&dir)?;
            let _: serde_json::Value = c.post(
                "/api/v1/mounts/unmount",
                &serde_json::json!({ "path": path }),
            )?;
            outln!("unmounted {}", path.display());
            Ok(())
        }
        Cmd::Demo { nodes, dir } => demo::run(nodes, dir),
        Cmd::Debug {
            cmd: DebugCmd::Probe { peer, data },
        } => {
            let identity = match &data {
                Some(d) => {
                    let dd = holdfast_node::disk::DataDir::new(d);
                    Some(holdfast_transport::Identity::from_pem(
                        &dd.read_text(&dd.tls("ca.crt"))?,
                        &dd.read_text(&dd.tls("node.crt"))?,
                        &dd.read_text(&dd.tls("node.key"))?,
                    )?)
                }
                None => None,
            };
            let ping = holdfast_core::wire::encode(&holdfast_core::wire::PeerMsg::Ping);
            let reply =
                runtime()?.block_on(holdfast_transport::probe(peer, identity.as_ref(), ping))?;
            match holdfast_core::wire::decode::<holdfast_core::wire::PeerMsg>(&reply, 1024) {
                Ok(holdfast_core::wire::PeerMsg::Ping) => {
                    outln!("admitted");
                    Ok(())
                }
                _ => match holdfast_core::wire::decode::<holdfast_core::wire::JoinReply>(
                    &reply,
                    1 << 16,
                ) {
                    Ok(holdfast_core::wire::JoinReply::Refused { reason }) => {
                        anyhow::bail!("refused: {reason}")
                    }
                    _ => anyhow::bail!("refused: unexpected reply"),
                },
            }
        }
    }
}

fn plugin(cmd: PluginCmd) -> anyhow::Result<()> {
    use holdfast_node::plugins::PluginView;
    let print = |v: &PluginView| {
        outln!(
            "{} {} version {} ({}) on this node: {}",
            v.world,
            v.name,
            v.version,
            &v.hash[..v.hash.len().min(12)],
            v.state
        )
    };
    match cmd {
        PluginCmd::Install {
            file,
            name,
            grants,
            fail,
            world,
            deadline_ms,
            memory_mib,
            config,
            fs_root,
            api,
        } => {
            use base64::Engine as _;
            let wasm =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut values = serde_json::Map::new();
            for kv in config {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--config {kv:?} is not KEY=VALUE"))?;
                values.insert(k.to_string(), v.into());
            }
            let fs_root = fs_root.map(std::path::absolute).transpose()?;
            let body = serde_json::json!({
                "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&wasm),
                "world": world,
                "grants": grants,
                "fail": fail,
                "deadline_ms": deadline_ms,
                "memory_bytes": memory_mib.map(|m| m << 20),
                "config": values,
                "fs_root": fs_root,
            });
            let c = client::Client::new(&api)?;
            let v: PluginView = c.post_slow(
                &format!("/api/v1/plugins/{name}"),
                &body,
                Duration::from_secs(300),
            )?;
            print(&v);
        }
        PluginCmd::List { json, api } => {
            let c = client::Client::new(&api)?;
            let vs: Vec<PluginView> = c.get("/api/v1/plugins")?;
            if json {
                outln!("{}", serde_json::to_string(&vs)?);
            } else {
                outln!(
                    "{:<24} {:<16} {:>7} {:<12} {:<12} {:>10} {:>7} {:>8}",
                    "PLUGIN",
                    "WORLD",
                    "VERSION",
                    "HASH",
                    "STATE",
                    "CALLS",
                    "TRAPS",
                    "TIMEOUTS"
                );
                for v in vs {
                    outln!(
                        "{:<24} {:<16} {:>7} {:<12} {:<12} {:>10} {:>7} {:>8}",
                        v.name,
                        v.world,
                        v.version,
                        &v.hash[..v.hash.len().min(12)],
                        v.state,
                        v.calls,
                        v.traps,
                        v.timeouts
                    );
                }
            }
        }
        PluginCmd::Test { name, input, api } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", input.display()))?;
            let c = client::Client::new(&api)?;
            let answer: serde_json::Value = c.post_slow(
                &format!("/api/v1/plugins/{name}/test"),
                &value,
                Duration::from_secs(60),
            )?;
            outln!("{}", serde_json::to_string(&answer)?);
        }
        PluginCmd::Rollback { name, api } => {
            let c = client::Client::new(&api)?;
            let v: PluginView = c.post_slow(
                &format!("/api/v1/plugins/{name}/rollback"),
                &serde_json::json!({}),
                Duration::from_secs(300),
            )?;
            print(&v);
        }
        PluginCmd::Remove { name, api } => {
            let c = client::Client::new(&api)?;
            let _: serde_json::Value = c.delete(&format!("/api/v1/plugins/{name}"))?;
            outln!("removed plugin {name}");
        }
        PluginCmd::Reinstate { name, api } => {
            let c = client::Client::new(&api)?;
            let v: PluginView = c.post(
                &format!("/api/v1/plugins/{name}/reinstate"),
                &serde_json::json!({}),
            )?;
            print(&v);
        }
    }
    Ok(())
}

fn volume(cmd: VolumeCmd) -> anyhow::Result<()> {
    use holdfast_node::api::{VolumeInfo, VolumeStatus};
    match cmd {
        VolumeCmd::Create {
            name,
            replicas,
            static_leader,
            api,
        } => {
            let c = client::Client::new(&api)?;
            let v: VolumeInfo = c.post(
                "/api/v1/volumes",
                &serde_json::json!({
                    "name": name,
                    "replicas": replicas,
                    "leader_follows_writes": !static_leader,
                }),
            )?;
            outln!("created volume {} on {}", v.name, v.replicas.join(", "));
        }
        VolumeCmd::AddReplica { name, node, api } => {
            let c = client::Client::new(&api)?;
            let v: VolumeInfo = c.post_slow(
                &format!("/api/v1/volumes/{name}/replicas/add"),
                &serde_json::json!({ "node": node }),
                Duration::from_secs(3600),
            )?;
            outln!("volume {} replicas: {}", v.name, v.replicas.join(", "));
        }
        VolumeCmd::RemoveReplica { name, node, api } => {
            let c = client::Client::new(&api)?;
            let v: VolumeInfo = c.post_slow(
                &format!("/api/v1/volumes/{name}/replicas/remove"),
                &serde_json::json!({ "node": node }),
                Duration::from_secs(3600),
            )?;
            outln!("volume {} replicas: {}", v.name, v.replicas.join(", "));
        }
        VolumeCmd::List { json, api } => {
            let c = client::Client::new(&api)?;
            let vs: Vec<VolumeInfo> = c.get("/api/v1/volumes")?;
            if json {
                outln!("{}", serde_json::to_string(&vs)?);
            } else {
                outln!("{:<24} {:<6} REPLICAS", "VOLUME", "KIND");
                for v in vs {
                    outln!("{:<24} {:<6} {}", v.name, v.kind, v.replicas.join(","));
                }
            }
        }
        VolumeCmd::Status { name, json, api } => {
            let c = client::Client::new(&api)?;
            let s: VolumeStatus = c.get(&format!("/api/v1/volumes/{name}"))?;
            if json {
                outln!("{}", serde_json::to_string(&s)?);
            } else {
                outln!(
                    "volume {} ({})  leader {}  {} files  {} bytes",
                    s.name,
                    s.kind,
                    s.leader.as_deref().unwrap_or("(none)"),
                    s.files,
                    s.bytes_used
                );
                outln!(
                    "{:<16} {:<8} {:<8} {:>10} {:>8} {:>12}",
                    "REPLICA",
                    "ROLE",
                    "HEALTH",
                    "APPLIED",
                    "LAG",
                    "RESYNC_LEFT"
                );
                for r in s.replicas {
                    outln!(
                        "{:<16} {:<8} {:<8} {:>10} {:>8} {:>12}",
                        r.node,
                        r.role,
                        if r.healthy { "healthy" } else { "DOWN" },
                        r.applied_index,
                        r.lag_entries,
                        r.resync_bytes_left
                    );
                }
            }
        }
    }
    Ok(())
}
