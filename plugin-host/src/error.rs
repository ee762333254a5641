//! Typed errors. Each says who caused it and whether trying again can help.

use crate::grants::Capability;
use crate::hooks::World;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Culprit {
    /// The plugin's code or bytes.
    Plugin,
    /// Whoever called the host: the operator at install, or the part of
    /// holdfast that asked for a decision.
    Caller,
    /// The node itself (out of instance slots, cache folder unwritable).
    Host,
}

/// Why a component was not installed. Each message is one line and names
/// the problem; nothing is stored.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("plugin is {bytes} bytes; at most {max} are allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("not a WebAssembly file (it does not start with \\0asm)")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build a component (cargo --target wasm32-wasip2, jco componentize, componentize-py)")]
    CoreModule,
    #[error("malformed component: {0}")]
    Malformed(String),
    #[error("import `{import}` is not granted: install with --grant {capability}")]
    NotGranted {
        import: String,
        capability: Capability,
    },
    #[error("import `{0}` is not provided by holdfast (see wit/ for what plugins may import)")]
    Unavailable(String),
    #[error("wrong world: export `{export}` does not match world {world}: {detail}")]
    WrongWorld {
        world: World,
        export: String,
        detail: String,
    },
    #[error("exports no holdfast world (router or sql-router export `route`, failover-policy or deploy-strategy export `decide`); it exports: {0}")]
    NoWorld(String),
    #[error("plugin `{name}` is a {installed}; the new version is a {new}")]
    WorldChanged {
        name: String,
        installed: World,
        new: World,
    },
    #[error("plugin failed to start: {0}")]
    Start(String),
    #[error("bad plugin name `{0}`: 1 to 63 bytes of [a-z0-9-]")]
    BadName(String),
    #[error("bad setting: {0}")]
    BadSetting(String),
    #[error("too many plugins: at most {0}")]
    Full(usize),
    #[error("compiled artifact cache: {0}")]
    Cache(String),
}

impl InstallError {
    pub fn culprit(&self) -> Culprit {
        match self {
            InstallError::BadName(_)
            | InstallError::BadSetting(_)
            | InstallError::Full(_)
            | InstallError::WorldChanged { .. }
            | InstallError::NotGranted { .. } => Culprit::Caller,
            InstallError::Cache(_) => Culprit::Host,
            _ => Culprit::Plugin,
        }
    }
}

/// Why a call produced no decision from the plugin. With fail open, the
/// caller still gets the built-in decision and this error beside it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("no plugin named `{0}`")]
    NoSuchPlugin(String),
    #[error("plugin `{name}` is a {actual}, not a {expected}")]
    WrongWorld {
        name: String,
        expected: World,
        actual: World,
    },
    #[error("input is {bytes} bytes; at most {max} are allowed")]
    InputTooLarge { bytes: usize, max: usize },
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("plugin `{0}` is quarantined")]
    Quarantined(String),
    #[error("plugin ran past its {ms} ms deadline")]
    Deadline { ms: u64 },
    #[error("plugin went past its {bytes} byte memory limit")]
    MemoryLimit { bytes: u64 },
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("decision is {bytes} bytes; at most {max} are allowed")]
    OutputTooLarge { bytes: usize, max: usize },
    /// A decision that names something the input does not have.
    #[error("bad decision: {0}")]
    BadDecision(String),
    #[error("no free plugin instance slot")]
    Busy,
}

impl CallError {
    pub fn culprit(&self) -> Culprit {
        match self {
            CallError::NoSuchPlugin(_)
            | CallError::WrongWorld { .. }
            | CallError::InputTooLarge { .. }
            | CallError::BadInput(_) => Culprit::Caller,
            CallError::Busy => Culprit::Host,
            _ => Culprit::Plugin,
        }
    }

    /// Whether asking again can give a different answer (the same input to
    /// the same plugin traps again; a busy node may have room later).
    pub fn retryable(&self) -> bool {
        matches!(self, CallError::Busy | CallError::Deadline { .. })
    }

    /// Whether this counts towards quarantine.
    pub fn is_plugin_failure(&self) -> bool {
        matches!(
            self,
            CallError::Deadline { .. }
                | CallError::MemoryLimit { .. }
                | CallError::Trap(_)
                | CallError::OutputTooLarge { .. }
                | CallError::BadDecision(_)
        )
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no plugin named `{0}`")]
    NoSuchPlugin(String),
    #[error("plugin `{0}` has no previous version to roll back to")]
    NoPrevious(String),
}

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("wasmtime engine: {0}")]
    Engine(String),
    #[error("linking host functions: {0}")]
    Link(String),
    #[error("cache folder {path}: {error}")]
    Cache { path: String, error: String },
    #[error("epoch ticker thread: {0}")]
    Ticker(String),
}

/// A wasmtime error as one line: its causes joined by ": ".
pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause.to_string());
    }
    out.replace('\n', " ")
}
