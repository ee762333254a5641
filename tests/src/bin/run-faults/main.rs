//! `run-faults`: real `holdfast` nodes, each in its own network namespace,
//! a replicated volume mounted on every node, clients appending and
//! writing registers through those mounts, and a nemesis injecting faults
//! on a seeded schedule. After the faults heal it checks that every
//! acknowledged record is there and that the register history is
//! linearizable. Its last line is
//! `faults: seed=N ops=N acknowledged=N lost=N linearizable=true|false`,
//! and it exits 0 only when nothing was lost, nothing was corrupt, the
//! replicas agree and the history is linearizable.
//!
//! Run it through `tests/run-faults`, which builds it first.

mod nemesis;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use holdfast_check::register;
use holdfast_tests::{wait_until, Cluster, ClusterOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use workload::{ClientProcess, History, Tally, Workload};

pub const VOLUME: &str = "faults";

#[derive(Parser, Debug)]
#[command(
    name = "run-faults",
    about = "Fault injection against real holdfast nodes"
)]
struct Args {
    /// How long the nemesis keeps injecting faults after it has injected
    /// each kind once.
    #[arg(long, default_value_t = 45)]
    seconds: u64,
    /// Seed of the fault schedule and of the clients (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    nodes: u8,
    /// Runs the nodes with a deliberate protocol bug (debug builds only):
    /// ack-before-quorum or stale-read. The run must then fail.
    #[arg(long = "break", value_name = "WHAT")]
    break_: Option<String>,
    /// Where the history (and, on failure, the node logs) go.
    #[arg(long, default_value = "/var/tmp/holdfast-faults")]
    out: PathBuf,
}

fn main() {
    workload::client_main_if_asked();
    let args = Args::parse();
    if args.nodes == 4 {
        eprintln!("error: --nodes takes 3 or 5");
        std::process::exit(2);
    }
    let nodes = args.nodes as usize;
    let seed = args.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    let out = args.out.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("output folder");
    let history_path = out.join("history.jsonl");
    let history = History::create(&history_path);
    eprintln!(
        "run-faults: seed {seed}, {} nodes, {} s of faults after one of each kind{}; history in {}",
        nodes,
        args.seconds,
        args.break_
            .as_deref()
            .map(|b| format!(", deliberate bug {b}"))
            .unwrap_or_default(),
        history_path.display()
    );
    history.record(json!({ "run": { "seed": seed, "nodes": nodes, "seconds": args.seconds, "break": args.break_ } }));

    let small_disk = nodes - 1;
    let mut c = Cluster::start_with(
        nodes,
        ClusterOptions {
            netns: true,
            env: args
                .break_
                .iter()
                .map(|b| ("HOLDFAST_BREAK".to_string(), b.clone()))
                .collect(),
            // Volume logs are not compacted yet (see ARCHITECTURE.md), so a
            // replica's disk use only grows: sized for an hour-long soak.
            small_disk: Some((small_disk, 2048)),
        },
    );
    c.wait_converged(0, nodes);
    c.create_volume(VOLUME, nodes);
    wait_until("the volume's first leader", Duration::from_secs(60), || {
        c.volume_status(0, VOLUME)?["leader"].as_str().map(|_| ())
    });
    let mounts: Vec<PathBuf> = (0..nodes).map(|i| c.mount(i, VOLUME)).collect();
    for k in 0..workload::KEYS {
        let p = mounts[0].join(workload::key_name(k));
        std::fs::write(&p, workload::encode_value(0)).expect("initial register");
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .expect("sync register");
    }

    let mut appenders = Vec::new();
    let mut registers = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let node = &c.nodes[i].name;
        appenders.push(ClientProcess::spawn(
            Workload::Append,
            i as u64,
            node,
            m,
            seed,
            history.clone(),
        ));
        registers.push(ClientProcess::spawn(
            Workload::Register,
            100 + i as u64,
            node,
            m,
            seed,
            history.clone(),
        ));
    }

    let started = Instant::now();
    let mut nemesis = nemesis::Nemesis {
        cluster: &mut c,
        rng: ChaCha8Rng::seed_from_u64(seed),
        history: &history,
        mounts: mounts.clone(),
        small_disk,
        injected: Vec::new(),
    };
    nemesis.run(started + Duration::from_secs(args.seconds));
    let injected = std::mem::take(&mut nemesis.injected);
    history.nemesis("all faults healed");

    // The healed cluster must serve again: clients keep going for a while.
    let mut problems = Vec::new();
    let healed = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let mut tallies: Vec<(u64, Tally)> = appenders
        .into_iter()
        .map(|p| (p.client, p.stop()))
        .collect();
    let register_tallies: Vec<Tally> = registers.into_iter().map(ClientProcess::stop).collect();
    eprintln!(
        "clients stopped {:.1} s after the heal",
        healed.elapsed().as_secs_f64()
    );

    // Every replica converges to the same state.
    let converged = wait_for_equal_digests(&c);
    if let Err(e) = &converged {
        problems.push(e.clone());
    }

    // Every acknowledged record, seen from every node.
    for (client, t) in tallies.iter_mut() {
        let path = format!("append-{client}");
        for (i, m) in mounts.iter().enumerate() {
            let content = match std::fs::read(m.join(&path)) {
                Ok(c) => c,
                // A missing file loses every acknowledged record.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    problems.push(format!("cannot read {path} from {}: {e}", c.nodes[i].name));
                    continue;
                }
            };
            let node = &c.nodes[i].name;
            let report =
                workload::final_append_check(*client, &content, t.acked_now, node, &history);
            if report.lost > 0 {
                eprintln!(
                    "  LOST: client {client}: {} acknowledged records missing at the end (seen from {node})",
                    report.lost
                );
            }
            // Count a loss once per client, however many nodes see it.
            if i == 0 {
                t.lost += report.lost;
            } else if report.lost > 0 {
                problems.push(format!(
                    "client {client}: {} records lost as seen from {node}",
                    report.lost
                ));
            }
            if let Some(bad) = report.corrupt {
                problems.push(format!("client {client}, seen from {node}: {bad}"));
            }
        }
    }

    let ops: Vec<register::Op> = history
        .registers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let linearizable = match register::check(&ops, 0) {
        Ok(()) => true,
        Err(v) => {
            eprintln!("NOT LINEARIZABLE: {v}");
            history.record(json!({ "violation": v.to_string() }));
            false
        }
    };

    let all = tallies
        .iter()
        .map(|(_, t)| t)
        .chain(register_tallies.iter());
    let (mut n_ops, mut acknowledged, mut lost) = (0, 0, 0);
    for t in all {
        n_ops += t.ops;
        acknowledged += t.acknowledged;
        lost += t.lost;
        for c in &t.corrupt {
            problems.push(format!("corrupt: {c}"));
        }
    }
    history.record(
        json!({ "result": { "ops": n_ops, "acknowledged": acknowledged, "lost": lost,
        "linearizable": linearizable, "problems": problems } }),
    );
    history.flush();

    let kinds: std::collections::BTreeMap<String, usize> =
        injected.iter().fold(Default::default(), |mut m, k| {
            *m.entry(format!("{k:?}")).or_default() += 1;
            m
        });
    eprintln!(
        "faults injected ({}): {kinds:?}; {} register ops checked",
        injected.len(),
        ops.len()
    );
    let ok = lost == 0 && linearizable && problems.is_empty();
    if !ok {
        for p in &problems {
            eprintln!("PROBLEM: {p}");
        }
        for n in &c.nodes {
            let _ = std::fs::write(out.join(format!("{}.log", n.name)), n.log());
        }
        eprintln!("history and node logs kept in {}", out.display());
    }
    println!(
        "faults: seed={seed} ops={n_ops} acknowledged={acknowledged} lost={lost} linearizable={linearizable}"
    );
    drop(c);
    std::process::exit(if ok { 0 } else { 1 });
}

/// Waits until every replica reports the same applied state digest.
fn wait_for_equal_digests(c: &Cluster) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        for i in 0..c.nodes.len() {
            if let Some(d) = c.try_digests(i, VOLUME) {
                if d.len() == c.nodes.len()
                    && d.iter()
                        .all(|r| r.2.is_some() && r.2 == d[0].2 && r.1 == d[0].1)
                {
                    return Ok(());
                }
                last = d;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("replicas did not converge within 120 s: {last:?}"))
}
