//! The clients and the history they leave.
//!
//! Each client is its own process (this binary, started with
//! `HOLDFAST_FAULTS_CLIENT` set), so that the harness itself never holds a
//! file open on a mount: every close of a FUSE file, including the ones a
//! fork makes at exec, asks the FUSE server, and a server cut off from its
//! majority would stall the nemesis. A client prints one JSON line per
//! event on stdout and stops when its stdin closes.
//!
//! - An append client appends numbered records to its own file and fsyncs
//!   each; a record is acknowledged when its fsync returns. After an error
//!   it reads its file back (once the volume answers), counts acknowledged
//!   records that are missing as lost, and goes on after what is there.
//! - A register client writes small files whole (open, write at 0, fsync,
//!   close) and reads them (open, read). Every operation goes into the
//!   history with its invoke and complete times for the linearizability
//!   checker; a write that failed has an unknown outcome.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast_check::{append, register};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// Register values are written as this many decimal digits.
pub const VALUE_WIDTH: usize = 16;
pub const KEYS: usize = 3;
const CLIENT_ENV: &str = "HOLDFAST_FAULTS_CLIENT";

pub fn key_name(k: usize) -> String {
    format!("k{k}")
}

pub fn encode_value(v: u64) -> String {
    format!("{v:0VALUE_WIDTH$}")
}

/// A value that no client writes: what a read that returns garbage is
/// recorded as, so that the checker rejects it.
const GARBAGE: u64 = u64::MAX;

/// Nanoseconds on the system clock, which every process shares.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Everything that happened, as JSON lines, plus the register operations.
#[derive(Debug)]
pub struct History {
    start_ns: u64,
    out: Mutex<std::io::BufWriter<File>>,
    pub registers: Mutex<Vec<register::Op>>,
}

impl History {
    pub fn create(path: &Path) -> Arc<History> {
        let f = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Arc::new(History {
            start_ns: now_ns(),
            out: Mutex::new(std::io::BufWriter::new(f)),
            registers: Mutex::new(Vec::new()),
        })
    }

    /// Nanoseconds since the run started.
    fn since_start(&self, ns: u64) -> u64 {
        ns.saturating_sub(self.start_ns)
    }

    pub fn record(&self, mut event: Value) {
        if event.get("t_ns").is_none() {
            event["t_ns"] = json!(self.since_start(now_ns()));
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{event}");
    }

    pub fn nemesis(&self, what: &str) {
        let t = self.since_start(now_ns()) as f64 / 1e9;
        eprintln!("  [{t:>6.1}s] {what}");
        self.record(json!({ "nemesis": what }));
    }

    pub fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }

    /// Takes one line a client printed.
    fn take(&self, mut event: Value) -> Option<Tally> {
        for k in ["t_ns", "invoke_ns", "complete_ns"] {
            if let Some(t) = event.get(k).and_then(Value::as_u64) {
                event[k] = json!(self.since_start(t));
            }
        }
        if let Some(t) = event.get("tally") {
            return serde_json::from_value(t.clone()).ok();
        }
        if let (Some(key), Some(client)) = (event["register"].as_str(), event["client"].as_u64()) {
            let kind = match (event["write"].as_u64(), event["read"].as_u64()) {
                (Some(v), _) => Some(register::Kind::Write(v)),
                (None, Some(v)) => Some(register::Kind::Read(v)),
                _ => None,
            };
            if let (Some(kind), Some(invoke)) = (kind, event["invoke_ns"].as_u64()) {
                self.registers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(register::Op {
                        client,
                        key: key.to_string(),
                        kind,
                        invoke,
                        complete: event["complete_ns"].as_u64(),
                    });
            }
        }
        self.record(event);
        None
    }
}

/// What one client did.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub ops: u64,
    pub acknowledged: u64,
    pub lost: u64,
    pub corrupt: Vec<String>,
    /// Append clients: records acknowledged and not yet found lost.
    pub acked_now: u64,
}

/// Which workload a client process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Append,
    Register,
}

/// A client process and the thread that reads what it prints.
#[derive(Debug)]
pub struct ClientProcess {
    pub client: u64,
    child: Child,
    reader: std::thread::JoinHandle<Option<Tally>>,
}

impl ClientProcess {
    pub fn spawn(
        workload: Workload,
        client: u64,
        node: &str,
        dir: &Path,
        seed: u64,
        history: Arc<History>,
    ) -> ClientProcess {
        let spec = json!({
            "workload": if workload == Workload::Append { "append" } else { "register" },
            "client": client, "node": node, "dir": dir, "seed": seed,
        });
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(CLIENT_ENV, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a client process");
        let stdout = child.stdout.take().expect("client stdout");
        let reader = std::thread::spawn(move || {
            let mut tally = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => tally = history.take(v).or(tally),
                    Err(_) => history.record(json!({ "client": client, "garbled": line })),
                }
            }
            tally
        });
        ClientProcess {
            client,
            child,
            reader,
        }
    }

    /// Closes the client's stdin (its signal to stop) and waits for its
    /// tally.
    pub fn stop(mut self) -> Tally {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        self.reader
            .join()
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("client {} died without a tally", self.client))
    }
}

/// In a client process: runs the client `HOLDFAST_FAULTS_CLIENT` describes
/// and exits. Returns if this is not a client process.
pub fn client_main_if_asked() {
    let Ok(spec) = std::env::var(CLIENT_ENV) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("client spec");
    let client = spec["client"].as_u64().expect("client");
    let node = spec["node"].as_str().expect("node").to_string();
    let dir = PathBuf::from(spec["dir"].as_str().expect("dir"));
    let seed = spec["seed"].as_u64().expect("seed");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let out = Out { client, node };
    let tally = match spec["workload"].as_str() {
        Some("append") => append_client(&out, &dir, &stop),
        _ => register_client(&out, &dir, seed, &stop),
    };
    out.emit(json!({ "tally": tally }));
    std::process::exit(0);
}

/// A client's stdout.
struct Out {
    client: u64,
    node: String,
}

impl Out {
    fn emit(&self, mut event: Value) {
        event["client"] = json!(self.client);
        event["node"] = json!(self.node);
        if event.get("t_ns").is_none() {
            event["t_ns"] = json!(now_ns());
        }
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{event}");
        let _ = o.flush();
    }
}

/// Retries `f` until it succeeds or `stop` is set.
fn until_ok<T>(stop: &AtomicBool, mut f: impl FnMut() -> std::io::Result<T>) -> Option<T> {
    loop {
        match f() {
            Ok(v) => return Some(v),
            Err(_) if stop.load(Ordering::Relaxed) => return None,
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Whether `f` lives on the mount at `dir` (another device than the folder
/// the mount point is in), not in the bare mount point.
fn on_mount(f: &File, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().and_then(|p| std::fs::metadata(p).ok());
    match (f.metadata(), parent) {
        (Ok(m), Some(p)) => m.dev() != p.dev(),
        _ => false,
    }
}

/// The whole file at `path`, if it is on the mount at `dir`. While the
/// node restarts, the bare mount point may hold an empty file of the same
/// name (made by an open that `on_mount` then refused); reading that would
/// count every acknowledged record as lost.
fn read_all(path: &Path, dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    if !on_mount(&f, dir) {
        return Err(std::io::Error::other("the volume is not mounted here now"));
    }
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Appends records to `dir/append-<client>` until `stop`.
fn append_client(out: &Out, dir: &Path, stop: &AtomicBool) -> Tally {
    let client = out.client;
    let path = dir.join(format!("append-{client}"));
    let mut t = Tally::default();
    let mut seq = 0u64;
    let mut offset = 0u64;
    let mut file: Option<File> = None;
    while !stop.load(Ordering::Relaxed) {
        let f = match file.as_ref() {
            Some(f) => f,
            None => {
                match OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                {
                    // While the node restarts, its mount point is a plain
                    // folder of the local disk: a file made there is not on
                    // the volume, and writes to it prove nothing.
                    Ok(f) if on_mount(&f, dir) => file = Some(f),
                    Ok(_) => std::thread::sleep(Duration::from_millis(200)),
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
                continue;
            }
        };
        let rec = append::record(client, seq);
        t.ops += 1;
        let r = f
            .write_all_at(rec.as_bytes(), offset)
            .and_then(|()| f.sync_all());
        match r {
            Ok(()) => {
                t.acknowledged += 1;
                t.acked_now = seq + 1;
                seq += 1;
                offset += rec.len() as u64;
                out.emit(json!({ "append": seq - 1, "ok": true }));
            }
            Err(e) => {
                out.emit(json!({ "append": seq, "ok": false, "error": e.to_string() }));
                // Outcome unknown: close, then learn what is there.
                file = None;
                let Some(content) = until_ok(stop, || read_all(&path, dir)) else {
                    break;
                };
                let report = append::check(client, &content, t.acked_now);
                account(&mut t, out, &report);
                seq = report.present;
                offset = (0..seq)
                    .map(|s| append::record(client, s).len() as u64)
                    .sum();
                t.acked_now = seq;
            }
        }
    }
    t
}

/// Adds a check of an append file to the tally.
fn account(t: &mut Tally, out: &Out, report: &append::AppendReport) {
    if report.lost > 0 {
        t.lost += report.lost;
        eprintln!(
            "  LOST: client {}: {} acknowledged records missing (seen from {})",
            out.client, report.lost, out.node
        );
    }
    if let Some(c) = &report.corrupt {
        t.corrupt
            .push(format!("client {} (from {}): {c}", out.client, out.node));
    }
    out.emit(json!({ "check": {
        "present": report.present, "lost": report.lost, "corrupt": report.corrupt } }));
}

/// Checks append file `client` as read from one node after the run.
pub fn final_append_check(
    client: u64,
    content: &[u8],
    acknowledged: u64,
    node: &str,
    history: &History,
) -> append::AppendReport {
    let report = append::check(client, content, acknowledged);
    history.record(json!({ "client": client, "node": node, "final_check": {
        "present": report.present, "lost": report.lost, "corrupt": report.corrupt } }));
    report
}

/// Writes and reads registers `k0..` in `dir` until `stop`.
fn register_client(out: &Out, dir: &Path, seed: u64, stop: &AtomicBool) -> Tally {
    let client = out.client;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ client.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut t = Tally::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = key_name(rng.gen_range(0..KEYS));
        let path = dir.join(&key);
        let invoke = now_ns();
        t.ops += 1;
        if rng.gen_bool(0.5) {
            n += 1;
            let v = client * 1_000_000_000 + n;
            let r = OpenOptions::new().write(true).open(&path).and_then(|f| {
                f.write_all_at(encode_value(v).as_bytes(), 0)?;
                f.sync_all()?;
                // Nothing is buffered after the fsync, so the close that
                // follows cannot fail the write.
                drop(f);
                Ok(())
            });
            let complete = r.is_ok().then(now_ns);
            out.emit(json!({ "register": key, "write": v, "invoke_ns": invoke,
                "complete_ns": complete, "error": r.as_ref().err().map(|e| e.to_string()) }));
            if r.is_ok() {
                t.acknowledged += 1;
            } else {
                std::thread::sleep(Duration::from_millis(200));
            }
        } else {
            let r = read_all(&path, dir);
            let complete = now_ns();
            match r {
                Ok(bytes) => {
                    let v = std::str::from_utf8(&bytes)
                        .ok()
                        .filter(|s| s.len() == VALUE_WIDTH)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(GARBAGE);
                    out.emit(
                        json!({ "register": key, "read": v, "raw": String::from_utf8_lossy(&bytes),
                        "invoke_ns": invoke, "complete_ns": complete }),
                    );
                }
                Err(e) => {
                    // A failed read changes nothing and tells nothing.
                    out.emit(
                        json!({ "register": key, "read": null, "error": e.to_string(),
                        "invoke_ns": invoke }),
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    t
}
