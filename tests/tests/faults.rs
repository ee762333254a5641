//! Fault injection with real processes in CI: a `run-faults` run must lose
//! nothing and stay linearizable, and a run with a deliberate protocol bug
//! must be caught. Both print their seed; `tests/run-faults --seed N`
//! replays the schedule.

use std::process::{Command, Stdio};

use holdfast_tests::holdfast_bin;

/// Runs `run-faults ARGS`; returns whether it succeeded and its last line.
fn run_faults(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_run-faults"))
        .args(args)
        .env("HOLDFAST_BIN", holdfast_bin())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run run-faults");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    (out.status.success(), last)
}

/// Parses `faults: seed=N ops=N acknowledged=N lost=N linearizable=B`.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

#[test]
fn a_fault_run_loses_nothing_and_stays_linearizable() {
    let (ok, last) = run_faults(&["--seconds", "30"]);
    assert!(last.starts_with("faults: seed="), "last line: {last:?}");
    assert_eq!(field(&last, "lost"), "0", "{last}");
    assert_eq!(field(&last, "linearizable"), "true", "{last}");
    let acknowledged: u64 = field(&last, "acknowledged").parse().expect("a number");
    assert!(
        acknowledged > 100,
        "too little work to prove anything: {last}"
    );
    assert!(ok, "run-faults failed: {last}");
}

#[test]
fn a_deliberate_protocol_bug_is_caught() {
    let (ok, last) = run_faults(&["--seconds", "0", "--break", "ack-before-quorum"]);
    assert!(last.starts_with("faults: seed="), "last line: {last:?}");
    assert!(
        field(&last, "lost") != "0" || field(&last, "linearizable") == "false",
        "the bug went unnoticed: {last}"
    );
    assert!(!ok, "run-faults exited 0 with a deliberate bug: {last}");
}
