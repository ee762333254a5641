//! Deliberate protocol bugs, for proving that the fault harness and its
//! checkers can fail (`tests/run-faults --break WHAT`).
//!
//! A node reads `HOLDFAST_BREAK` once. The bugs are compiled only into
//! debug builds, which is what the tests run; a release build (what the
//! appliance ships) has none of this code and refuses to start when the
//! variable is set, so a harness can never believe it ran a broken node
//! that was in fact sound.

use std::sync::OnceLock;

/// A named deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Break {
    /// The volume leader acknowledges a write as soon as it receives it,
    /// and proposes it at its next tick: before a quorum (or even its own
    /// log) stores it. A leader that dies or steps down in between loses
    /// acknowledged writes.
    AckBeforeQuorum,
    /// Every replica answers reads from its own applied state, without
    /// asking whether it is (still) the leader.
    StaleRead,
}

impl Break {
    pub const NAMES: &'static str = "ack-before-quorum, stale-read";

    pub fn parse(s: &str) -> Result<Break, String> {
        match s {
            "ack-before-quorum" => Ok(Break::AckBeforeQuorum),
            "stale-read" => Ok(Break::StaleRead),
            _ => Err(format!(
                "HOLDFAST_BREAK={s:?} names no deliberate bug; known: {}",
                Break::NAMES
            )),
        }
    }
}

static ACTIVE: OnceLock<Option<Break>> = OnceLock::new();

/// Reads `HOLDFAST_BREAK`; an unknown name, or any name in a release
/// build, is an error.
pub fn init_from_env() -> Result<Option<Break>, String> {
    let parsed = match std::env::var("HOLDFAST_BREAK") {
        Err(_) => None,
        Ok(s) if s.is_empty() => None,
        Ok(s) => {
            let b = Break::parse(&s)?;
            if !cfg!(debug_assertions) {
                return Err(format!(
                    "HOLDFAST_BREAK={s} asks for a deliberate bug, but this is a release build, \
                     which has none; use a debug build"
                ));
            }
            tracing::warn!(bug = s, "running with a deliberate protocol bug");
            Some(b)
        }
    };
    Ok(*ACTIVE.get_or_init(|| parsed))
}

/// Whether bug `b` is on. Always false in release builds.
pub fn broken(b: Break) -> bool {
    cfg!(debug_assertions) && ACTIVE.get().copied().flatten() == Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_bugs_parse() {
        assert_eq!(
            Break::parse("ack-before-quorum"),
            Ok(Break::AckBeforeQuorum)
        );
        assert_eq!(Break::parse("stale-read"), Ok(Break::StaleRead));
        let e = Break::parse("ack-before-qorum").unwrap_err();
        assert!(e.contains("names no deliberate bug"), "{e}");
    }

    #[test]
    fn nothing_is_broken_unless_asked() {
        // No test sets HOLDFAST_BREAK; before `init_from_env`, and after it
        // without the variable, every bug is off.
        assert!(!broken(Break::AckBeforeQuorum));
        assert!(!broken(Break::StaleRead));
    }
}
