//! The nemesis: faults on a seeded schedule. Every kind runs once, in a
//! seeded order, then kinds are drawn at random until the time is up. Each
//! fault is healed before the next one starts.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use holdfast_tests::{free_bytes, signal, wait_until, Cluster};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::workload::History;
use crate::VOLUME;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One node cut off from all others.
    Isolate,
    /// A minority cut off from a majority.
    MajorityMinority,
    /// The leader's packets to one follower are dropped; the follower's
    /// still arrive.
    OneWay,
    /// The volume leader cut off from its followers.
    LeaderCut,
    /// `kill -9`, then a restart.
    Crash,
    /// SIGSTOP for longer than an election timeout, then SIGCONT.
    Pause,
    /// The small-disk node's data folder filled to below its reserve.
    FullDisk,
    /// SIGTERM, the others write on, then a restart (the DRBD#145 case).
    CleanRestart,
    /// A replica stopped, data written, and the replica killed again while
    /// it catches up.
    KillDuringResync,
    /// A replica (the leader half the time) removed from the volume, which
    /// its node then deletes, and added back: it copies the volume again by
    /// resync as a learner and votes once caught up.
    Membership,
}

pub const ALL: [Kind; 10] = [
    Kind::Isolate,
    Kind::MajorityMinority,
    Kind::OneWay,
    Kind::LeaderCut,
    Kind::Crash,
    Kind::Pause,
    Kind::FullDisk,
    Kind::CleanRestart,
    Kind::KillDuringResync,
    Kind::Membership,
];

pub struct Nemesis<'a> {
    pub cluster: &'a mut Cluster,
    pub rng: ChaCha8Rng,
    pub history: &'a History,
    pub mounts: Vec<std::path::PathBuf>,
    pub small_disk: usize,
    pub injected: Vec<Kind>,
}

impl Nemesis<'_> {
    /// Runs faults until `deadline`, each kind at least once.
    pub fn run(&mut self, deadline: Instant) {
        let mut first = ALL.to_vec();
        first.shuffle(&mut self.rng);
        let mut queue = first.into_iter();
        loop {
            let kind = match queue.next() {
                Some(k) => k,
                None if Instant::now() < deadline => *ALL.choose(&mut self.rng).expect("kinds"),
                None => break,
            };
            self.inject(kind);
            self.injected.push(kind);
            // Quiet time for the cluster to settle, so faults do not pile
            // up into a run without any majority.
            self.pause_ms(1000..2000);
        }
    }

    fn pause_ms(&mut self, range: std::ops::Range<u64>) {
        std::thread::sleep(Duration::from_millis(self.rng.gen_range(range)));
    }

    fn n(&self) -> usize {
        self.cluster.nodes.len()
    }

    fn name(&self, i: usize) -> String {
        self.cluster.nodes[i].name.clone()
    }

    /// The volume's leader, asked of the first node that knows one.
    fn leader(&self) -> usize {
        let name = wait_until("a volume leader", Duration::from_secs(60), || {
            (0..self.n()).find_map(|i| {
                self.cluster.volume_status(i, VOLUME)?["leader"]
                    .as_str()
                    .map(str::to_string)
            })
        });
        self.cluster.index_of(&name)
    }

    fn net(&self) -> &holdfast_tests::net::Net {
        self.cluster.net.as_ref().expect("nodes in namespaces")
    }

    fn hold(&mut self) {
        self.pause_ms(2000..4500);
    }

    fn heal(&mut self) {
        self.history.nemesis("healing the network");
        self.net().heal();
        self.history.nemesis("healed");
    }

    fn restart(&mut self, i: usize) {
        self.cluster.nodes[i].restart();
        self.cluster.wait_api(i);
        self.history.nemesis(&format!("{} restarted", self.name(i)));
    }

    /// Runs `volume ACTION web NODE` through node `via` until it succeeds.
    /// Each step of a change is idempotent, so a try cut short is finished
    /// by the next.
    fn change_replica(&mut self, via: usize, action: &str, node: usize) {
        let name = self.name(node);
        self.history
            .nemesis(&format!("volume {action} {VOLUME} {name}"));
        let cluster = &*self.cluster;
        let history = self.history;
        wait_until(
            &format!("volume {action} {VOLUME} {name}"),
            Duration::from_secs(300),
            || {
                let o = cluster.cli(via, &["volume", action, VOLUME, &name]);
                if o.status.success() {
                    return Some(());
                }
                history.nemesis(&format!(
                    "volume {action} failed, trying again: {}",
                    holdfast_tests::stderr(&o).trim()
                ));
                std::thread::sleep(Duration::from_secs(1));
                None
            },
        );
        self.history
            .nemesis(&format!("volume {action} {VOLUME} {name}: done"));
    }

    fn inject(&mut self, kind: Kind) {
        let n = self.n();
        match kind {
            Kind::Isolate => {
                let i = self.rng.gen_range(0..n);
                let others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                self.history.nemesis(&format!("isolate {}", self.name(i)));
                self.net().split(&[i], &others);
                self.hold();
                self.heal();
            }
            Kind::MajorityMinority => {
                let mut all: Vec<usize> = (0..n).collect();
                all.shuffle(&mut self.rng);
                let (minority, majority) = all.split_at((n - 1) / 2);
                let names = |v: &[usize]| {
                    v.iter()
                        .map(|&i| self.name(i))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                self.history.nemesis(&format!(
                    "split minority {} from majority {}",
                    names(minority),
                    names(majority)
                ));
                self.net().split(minority, majority);
                self.hold();
                self.heal();
            }
            Kind::OneWay => {
                let leader = self.leader();
                let others: Vec<usize> = (0..n).filter(|&j| j != leader).collect();
                let to = *others.choose(&mut self.rng).expect("a follower");
                self.history.nemesis(&format!(
                    "one-way cut: {} -> {} dropped",
                    self.name(leader),
                    self.name(to)
                ));
                self.net().cut(leader, to);
                self.hold();
                self.heal();
            }
            Kind::LeaderCut => {
                let leader = self.leader();
                let others: Vec<usize> = (0..n).filter(|&j| j != leader).collect();
                self.history.nemesis(&format!(
                    "cut leader {} off from its followers",
                    self.name(leader)
                ));
                self.net().split(&[leader], &others);
                // Long enough for the majority to elect a new leader and
                // commit in its term, so whatever the old leader took alone
                // is overwritten when it comes back.
                self.pause_ms(5000..8000);
                self.heal();
            }
            Kind::Crash => {
                // Half the time the leader, which is the harder case.
                let i = if self.rng.gen_bool(0.5) {
                    self.leader()
                } else {
                    self.rng.gen_range(0..n)
                };
                self.history.nemesis(&format!("kill -9 {}", self.name(i)));
                self.cluster.nodes[i].kill9();
                self.pause_ms(500..3000);
                self.restart(i);
            }
            Kind::Pause => {
                let i = if self.rng.gen_bool(0.5) {
                    self.leader()
                } else {
                    self.rng.gen_range(0..n)
                };
                self.history.nemesis(&format!("SIGSTOP {}", self.name(i)));
                let child = self.cluster.nodes[i].child.as_ref().expect("running");
                signal(child, "STOP");
                self.hold();
                let child = self.cluster.nodes[i].child.as_ref().expect("running");
                signal(child, "CONT");
                self.history.nemesis(&format!("SIGCONT {}", self.name(i)));
            }
            Kind::FullDisk => {
                let i = self.small_disk;
                let filler = self.cluster.nodes[i].data.join("filler");
                let free = free_bytes(&self.cluster.nodes[i].data);
                // Leave half the node's reserve free: below the reserve, so
                // the node must refuse new data, but not at zero bytes.
                let size = free.saturating_sub(holdfast_core::limits::DISK_RESERVE_BYTES / 2);
                self.history.nemesis(&format!(
                    "fill the disk of {} ({} MiB)",
                    self.name(i),
                    size >> 20
                ));
                let ok = Command::new("fallocate")
                    .arg("-l")
                    .arg(size.to_string())
                    .arg(&filler)
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "fallocate {}", filler.display());
                self.hold();
                self.hold();
                std::fs::remove_file(&filler).expect("remove filler");
                self.history
                    .nemesis(&format!("free the disk of {}", self.name(i)));
            }
            Kind::CleanRestart => {
                let i = self.rng.gen_range(0..n);
                self.history
                    .nemesis(&format!("clean stop (SIGTERM) of {}", self.name(i)));
                let status = self.cluster.nodes[i].stop();
                assert!(status.success(), "{} stopped with {status}", self.name(i));
                self.hold();
                self.restart(i);
            }
            Kind::Membership => {
                let i = if self.rng.gen_bool(0.5) {
                    self.leader()
                } else {
                    self.rng.gen_range(0..n)
                };
                let via = (i + 1 + self.rng.gen_range(0..n - 1)) % n;
                self.change_replica(via, "remove-replica", i);
                self.hold();
                self.change_replica(via, "add-replica", i);
            }
            Kind::KillDuringResync => {
                let leader = self.leader();
                let i = (0..n)
                    .filter(|&j| j != leader)
                    .collect::<Vec<_>>()
                    .choose(&mut self.rng)
                    .copied()
                    .expect("a follower");
                self.history.nemesis(&format!("kill -9 {}", self.name(i)));
                self.cluster.nodes[i].kill9();
                // Something to catch up on: 16 MiB through another mount.
                let via = (i + 1) % n;
                let bulk = self.mounts[via].join("bulk");
                let wrote = std::fs::File::create(&bulk).and_then(|mut f| {
                    for k in 0..16u8 {
                        f.write_all(&[k; 1 << 20])?;
                    }
                    f.sync_all()
                });
                self.history.nemesis(&format!(
                    "wrote 16 MiB while {} was down: {wrote:?}",
                    self.name(i)
                ));
                self.restart(i);
                self.pause_ms(100..800);
                self.history
                    .nemesis(&format!("kill -9 {} during resync", self.name(i)));
                self.cluster.nodes[i].kill9();
                self.pause_ms(500..1500);
                self.restart(i);
            }
        }
    }
}
