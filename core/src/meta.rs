//! The cluster metadata state machine: who is a member, with what role and
//! addresses, which join tokens are valid, and the cluster's CA and admin
//! token. It is replicated by the metadata consensus group (group 0) on
//! every member.
//!
//! Invariant: applying is deterministic. Time enters only as the proposer's
//! `now_ms` inside a command, never from a clock here.
//! Invariant: node ids are never reused; a removed id stays revoked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use holdfast_storage::{Batch, Engine};
use raft::prelude::{ConfChange, ConfChangeType};
use serde::{Deserialize, Serialize};

use crate::group::StateMachine;
use crate::limits;
use crate::wire;

/// The metadata group's id.
pub const META_GROUP: u64 = 0;
const STATE_KEY: &[u8] = b"s/meta/state";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Votes and (later) holds data.
    Voter,
    /// Receives the log, does not vote.
    Learner,
    /// Votes but holds no volume data.
    Witness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::Witness => "witness",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "voter" => Ok(Role::Voter),
            "learner" => Ok(Role::Learner),
            "witness" => Ok(Role::Witness),
            _ => Err(format!("unknown role {s:?} (voter, learner or witness)")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: u64,
    pub name: String,
    pub peer_addr: String,
    pub api_addr: String,
    pub role: Role,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// blake3 of the token's secret part, hex.
    pub secret_hash: String,
    pub expires_at_ms: u64,
    pub uses_max: u32,
    pub uses: u32,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("uses", &self.uses)
            .field("uses_max", &self.uses_max)
            .finish()
    }
}

/// The replicated metadata.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MetaState {
    pub cluster_id: String,
    /// The cluster CA. Its key is replicated so that any member can admit a
    /// joining node while a majority is up (see ARCHITECTURE.md, Security).
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub admin_token: String,
    pub nodes: BTreeMap<u64, NodeRecord>,
    /// Ids of removed nodes: their certificates are refused for ever.
    pub revoked: BTreeSet<u64>,
    /// Join tokens by id.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Volumes by id (the id is also the volume's consensus group).
    pub volumes: BTreeMap<u64, VolumeRecord>,
    /// Wasm plugins by name. The components themselves are not here: each
    /// node keeps them by blake3 hash (see the node's plugin store).
    pub plugins: BTreeMap<String, PluginRecord>,
    /// The last version number each plugin name was given, kept after the
    /// plugin is removed, so that a number never names two components.
    pub plugin_versions: BTreeMap<String, u64>,
}

/// The worlds a plugin may implement (`wit/`).
pub const PLUGIN_WORLDS: [&str; 4] = ["router", "sql-router", "failover-policy", "deploy-strategy"];

/// A plugin: the version every node runs and the one a rollback returns to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginRecord {
    pub name: String,
    /// One of [`PLUGIN_WORLDS`]; fixed for the name's lifetime.
    pub world: String,
    pub active: PluginVersion,
    pub previous: Option<PluginVersion>,
}

/// One installed component with the operator's settings for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginVersion {
    /// Given at apply time; 0 in a proposal.
    pub number: u64,
    /// blake3 of the component, hex.
    pub hash: String,
    pub bytes: u64,
    /// Capability names (`clocks`, `random`, `filesystem`, `sockets`).
    pub grants: Vec<String>,
    /// `open` or `closed`.
    pub fail: String,
    pub deadline_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub config: BTreeMap<String, String>,
    pub fs_root: Option<String>,
    /// The node that took the install; it holds the component for sure.
    pub origin: u64,
    pub installed_ms: u64,
}

/// A file volume and where its replicas live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: u64,
    pub name: String,
    /// Node ids holding a replica, or about to (an added replica is listed
    /// here before its volume group admits it, and a removed one after its
    /// group let it go).
    pub replicas: Vec<u64>,
    /// The replicas that write the volume's first state themselves when
    /// they first open it; a replica added later receives that state from
    /// the leader instead (writing it would let a stale configuration
    /// campaign). A removed replica leaves this list for good.
    pub bootstrap: Vec<u64>,
    pub created_ms: u64,
    /// The leadership moves to the replica that asks for most changes
    /// ([`crate::placement`]); if not, it stays where elections put it.
    pub leader_follows_writes: bool,
}

impl std::fmt::Debug for MetaState {
    // Secrets (CA key, admin token) are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaState")
            .field("cluster_id", &self.cluster_id)
            .field("nodes", &self.nodes)
            .field("revoked", &self.revoked)
            .finish()
    }
}

impl MetaState {
    pub fn node_by_name(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.values().find(|n| n.name == name)
    }

    pub fn volume_by_name(&self, name: &str) -> Option<&VolumeRecord> {
        self.volumes.values().find(|v| v.name == name)
    }

    /// Every component the plugin store must keep, by hash.
    pub fn plugin_hashes(&self) -> BTreeSet<&str> {
        self.plugins
            .values()
            .flat_map(|p| std::iter::once(&p.active).chain(p.previous.as_ref()))
            .map(|v| v.hash.as_str())
            .collect()
    }

    /// Whether a peer presenting a certificate for `id` may talk to us.
    pub fn admits(&self, id: u64) -> bool {
        self.nodes.contains_key(&id) && !self.revoked.contains(&id)
    }

    /// The outcome of presenting join token `token_id.secret` at `now_ms`.
    pub fn check_token(
        &self,
        token_id: &str,
        secret_hash: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        let t = self
            .tokens
            .get(token_id)
            .filter(|t| t.secret_hash == secret_hash)
            .ok_or("invalid join token")?;
        if now_ms >= t.expires_at_ms {
            return Err("join token expired".into());
        }
        if t.uses >= t.uses_max {
            return Err(format!(
                "join token already used {} time(s), its limit",
                t.uses_max
            ));
        }
        Ok(())
    }
}

/// A normal metadata command, as proposed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proposal {
    pub req_id: u64,
    pub origin: u64,
    pub cmd: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Command {
    CreateToken {
        id: String,
        secret_hash: String,
        expires_at_ms: u64,
        uses_max: u32,
        now_ms: u64,
    },
    /// Creates volume `name` with `replicas` replicas, placed here, at
    /// apply time, on the data nodes holding the fewest replicas.
    CreateVolume {
        id: u64,
        name: String,
        replicas: u8,
        leader_follows_writes: bool,
        now_ms: u64,
    },
    /// Makes `version` the active version of plugin `name` (a new plugin,
    /// or a hot swap that keeps the active version as the previous one).
    /// Proposed only once the component is stored on a majority.
    InstallPlugin {
        name: String,
        world: String,
        version: PluginVersion,
    },
    /// Swaps the active and the previous version.
    RollbackPlugin {
        name: String,
    },
    /// Lists data node `node` as a replica of `volume`, before its volume
    /// group admits it.
    AddVolumeReplica {
        volume: u64,
        node: u64,
    },
    /// Takes `node` off `volume`'s replicas, after its volume group let it
    /// go; the node then deletes its copy.
    RemoveVolumeReplica {
        volume: u64,
        node: u64,
    },
    RemovePlugin {
        name: String,
    },
}

/// What rides in a membership change's context.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfContext {
    pub req_id: u64,
    pub origin: u64,
    pub change: Change,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Change {
    Join {
        node: NodeRecord,
        token_id: String,
        secret_hash: String,
        now_ms: u64,
    },
    Remove {
        id: u64,
    },
}

impl ConfContext {
    /// The raft-rs conf change that carries this context.
    pub fn to_conf_change(&self) -> ConfChange {
        let mut cc = ConfChange::default();
        match &self.change {
            Change::Join { node, .. } => {
                cc.node_id = node.id;
                cc.set_change_type(if node.role == Role::Learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                });
            }
            Change::Remove { id } => {
                cc.node_id = *id;
                cc.set_change_type(ConfChangeType::RemoveNode);
            }
        }
        cc.context = wire::encode(self).into();
        cc
    }
}

/// What an applied command reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaEvent {
    Done {
        req_id: u64,
        origin: u64,
        outcome: Result<Outcome, String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    TokenCreated,
    VolumeCreated { id: u64 },
    Joined { id: u64 },
    Removed { id: u64 },
    VolumeReplicasChanged { replicas: Vec<u64> },
    PluginInstalled { version: u64 },
    PluginRolledBack { version: u64 },
    PluginRemoved,
}

/// [`MetaState`] as a [`StateMachine`], persisted whole under one key.
#[derive(Debug, Default)]
pub struct MetaMachine {
    state: Arc<MetaState>,
    events: Vec<MetaEvent>,
}

impl MetaMachine {
    /// Loads the state saved in `engine` (empty on a new node).
    pub fn load(engine: &dyn Engine) -> Result<Self, String> {
        let state = match engine.get(STATE_KEY).map_err(|e| e.to_string())? {
            Some(b) => wire::decode(&b, limits::FRAME_BYTES_MAX)
                .map_err(|e| format!("metadata state: {e}"))?,
            None => MetaState::default(),
        };
        Ok(Self {
            state: Arc::new(state),
            events: Vec::new(),
        })
    }

    /// The batch that saves `state` as the first state of a new cluster.
    pub fn initial_batch(state: &MetaState) -> Batch {
        let mut b = Batch::new();
        b.put(STATE_KEY.to_vec(), wire::encode(state));
        b
    }

    /// A cheap shared copy of the current state.
    pub fn state(&self) -> Arc<MetaState> {
        self.state.clone()
    }

    fn save(&self, batch: &mut Batch) {
        batch.put(STATE_KEY.to_vec(), wire::encode(&*self.state));
    }

    fn done(&mut self, req_id: u64, origin: u64, outcome: Result<Outcome, String>) {
        self.events.push(MetaEvent::Done {
            req_id,
            origin,
            outcome,
        });
    }

    fn apply_command(&mut self, cmd: Command) -> Result<Outcome, String> {
        match cmd {
            Command::CreateToken {
                id,
                secret_hash,
                expires_at_ms,
                uses_max,
                now_ms,
            } => {
                let st = Arc::make_mut(&mut self.state);
                st.tokens
                    .retain(|_, t| t.expires_at_ms > now_ms && t.uses < t.uses_max);
                if st.tokens.len() >= limits::TOKENS_MAX {
                    return Err(format!(
                        "too many live join tokens (limit {})",
                        limits::TOKENS_MAX
                    ));
                }
                if st.tokens.contains_key(&id) {
                    return Err("token id already exists".into());
                }
                st.tokens.insert(
                    id,
                    TokenRecord {
                        secret_hash,
                        expires_at_ms,
                        uses_max,
                        uses: 0,
                    },
                );
                Ok(Outcome::TokenCreated)
            }
            Command::CreateVolume {
                id,
                name,
                replicas,
                leader_follows_writes,
                now_ms,
            } => {
                let st = &self.state;
                wire::check_name(&name).map_err(|e| e.replace("node name", "volume name"))?;
                if st.volume_by_name(&name).is_some() {
                    return Err(format!("a volume named {name:?} already exists"));
                }
                if id == 0 || id == META_GROUP || st.volumes.contains_key(&id) {
                    return Err("volume id already used".into());
                }
                if st.volumes.len() >= limits::VOLUMES_MAX {
                    return Err(format!("too many volumes (limit {})", limits::VOLUMES_MAX));
                }
                let want = replicas as usize;
                let data_nodes: Vec<u64> = st
                    .nodes
                    .values()
                    .filter(|n| n.role == Role::Voter)
                    .map(|n| n.id)
                    .collect();
                if want == 0 || want > data_nodes.len() {
                    return Err(format!(
                        "a volume needs 1 to {} replicas here ({} data nodes), not {want}",
                        data_nodes.len(),
                        data_nodes.len()
                    ));
                }
                let load = |id: u64| {
                    st.volumes
                        .values()
                        .filter(|v| v.replicas.contains(&id))
                        .count()
                };
                let mut by_load: Vec<(usize, u64)> =
                    data_nodes.iter().map(|&n| (load(n), n)).collect();
                by_load.sort_unstable();
                let mut chosen: Vec<u64> = by_load.into_iter().take(want).map(|(_, n)| n).collect();
                chosen.sort_unstable();
                let st = Arc::make_mut(&mut self.state);
                st.volumes.insert(
                    id,
                    VolumeRecord {
                        id,
                        name,
                        bootstrap: chosen.clone(),
                        replicas: chosen,
                        created_ms: now_ms,
                        leader_follows_writes,
                    },
                );
                Ok(Outcome::VolumeCreated { id })
            }
            Command::InstallPlugin {
                name,
                world,
                version,
            } => self.install_plugin(name, world, version),
            Command::AddVolumeReplica { volume, node } => {
                let st = &self.state;
                let v = st.volumes.get(&volume).ok_or("no such volume")?;
                match st.nodes.get(&node) {
                    Some(n) if n.role == Role::Voter => {}
                    Some(n) => {
                        return Err(format!(
                            "{} is a {} node; only data (voter) nodes hold replicas",
                            n.name,
                            n.role.as_str()
                        ))
                    }
                    None => return Err("no such node".into()),
                }
                if !v.replicas.contains(&node) {
                    let st = Arc::make_mut(&mut self.state);
                    let v = st.volumes.get_mut(&volume).ok_or("no such volume")?;
                    v.replicas.push(node);
                    v.replicas.sort_unstable();
                }
                Ok(Outcome::VolumeReplicasChanged {
                    replicas: self.state.volumes[&volume].replicas.clone(),
                })
            }
            Command::RemoveVolumeReplica { volume, node } => {
                let v = self.state.volumes.get(&volume).ok_or("no such volume")?;
                if v.replicas.contains(&node) {
                    if v.replicas.len() <= 1 {
                        return Err("cannot remove the last replica of a volume".into());
                    }
                    let st = Arc::make_mut(&mut self.state);
                    let v = st.volumes.get_mut(&volume).ok_or("no such volume")?;
                    v.replicas.retain(|&n| n != node);
                    v.bootstrap.retain(|&n| n != node);
                }
                Ok(Outcome::VolumeReplicasChanged {
                    replicas: self.state.volumes[&volume].replicas.clone(),
                })
            }
            Command::RollbackPlugin { name } => {
                let st = Arc::make_mut(&mut self.state);
                let p = st
                    .plugins
                    .get_mut(&name)
                    .ok_or_else(|| format!("no plugin named {name:?}"))?;
                let previous = p
                    .previous
                    .take()
                    .ok_or_else(|| format!("plugin {name:?} has no previous version"))?;
                p.previous = Some(std::mem::replace(&mut p.active, previous));
                Ok(Outcome::PluginRolledBack {
                    version: p.active.number,
                })
            }
            Command::RemovePlugin { name } => {
                if !self.state.plugins.contains_key(&name) {
                    return Err(format!("no plugin named {name:?}"));
                }
                Arc::make_mut(&mut self.state).plugins.remove(&name);
                Ok(Outcome::PluginRemoved)
            }
        }
    }

    fn install_plugin(
        &mut self,
        name: String,
        world: String,
        mut version: PluginVersion,
    ) -> Result<Outcome, String> {
        check_plugin_name(&name)?;
        if !PLUGIN_WORLDS.contains(&world.as_str()) {
            return Err(format!("unknown plugin world {world:?}"));
        }
        if version.hash.len() != 64 || !version.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("plugin hash must be 64 hex digits".into());
        }
        if version.bytes == 0 || version.bytes > limits::PLUGIN_COMPONENT_BYTES_MAX as u64 {
            return Err(format!(
                "plugin component of {} bytes: 1 to {} allowed",
                version.bytes,
                limits::PLUGIN_COMPONENT_BYTES_MAX
            ));
        }
        let st = &self.state;
        match st.plugins.get(&name) {
            Some(p) if p.world != world => {
                return Err(format!(
                    "plugin {name:?} is a {} plugin, this component is a {world}; remove it first to reuse the name",
                    p.world
                ))
            }
            Some(_) => {}
            None if st.plugins.len() >= limits::PLUGINS_MAX => {
                return Err(format!("too many plugins (limit {})", limits::PLUGINS_MAX))
            }
            None if !st.plugin_versions.contains_key(&name)
                && st.plugin_versions.len() >= limits::PLUGIN_NAMES_MAX =>
            {
                return Err(format!(
                    "too many plugin names used (limit {})",
                    limits::PLUGIN_NAMES_MAX
                ))
            }
            None => {}
        }
        let before = self.state.clone();
        let st = Arc::make_mut(&mut self.state);
        let number = st.plugin_versions.get(&name).copied().unwrap_or(0) + 1;
        version.number = number;
        st.plugin_versions.insert(name.clone(), number);
        let record = match st.plugins.remove(&name) {
            Some(old) => PluginRecord {
                previous: Some(old.active),
                active: version,
                ..old
            },
            None => PluginRecord {
                name: name.clone(),
                world,
                active: version,
                previous: None,
            },
        };
        st.plugins.insert(name, record);
        // The whole state travels as one snapshot message.
        let size = wire::encode(&st.plugins).len();
        if size > limits::PLUGIN_RECORDS_BYTES_MAX {
            self.state = before;
            return Err(format!(
                "plugin settings would take {size} bytes of cluster metadata (limit {})",
                limits::PLUGIN_RECORDS_BYTES_MAX
            ));
        }
        Ok(Outcome::PluginInstalled { version: number })
    }

    fn check_change(&mut self, cc: &ConfChange, change: &Change) -> Result<Outcome, String> {
        let st = &self.state;
        match change {
            Change::Join {
                node,
                token_id,
                secret_hash,
                now_ms,
            } => {
                let want = if node.role == Role::Learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                };
                if cc.get_change_type() != want || cc.node_id != node.id || node.id == 0 {
                    return Err("conf change does not match its context".into());
                }
                st.check_token(token_id, secret_hash, *now_ms)?;
                if st.node_by_name(&node.name).is_some() {
                    return Err(format!("a node named {:?} is already a member", node.name));
                }
                if st.nodes.contains_key(&node.id) || st.revoked.contains(&node.id) {
                    return Err("node id already used".into());
                }
                if st.nodes.len() >= limits::NODES_MAX {
                    return Err(format!("cluster is full ({} nodes)", limits::NODES_MAX));
                }
                let st = Arc::make_mut(&mut self.state);
                if let Some(t) = st.tokens.get_mut(token_id) {
                    t.uses += 1;
                }
                st.nodes.insert(node.id, node.clone());
                Ok(Outcome::Joined { id: node.id })
            }
            Change::Remove { id } => {
                if cc.get_change_type() != ConfChangeType::RemoveNode || cc.node_id != *id {
                    return Err("conf change does not match its context".into());
                }
                let Some(node) = st.nodes.get(id) else {
                    return Err("no such node".into());
                };
                let voters = st
                    .nodes
                    .values()
                    .filter(|n| n.role != Role::Learner)
                    .count();
                if node.role != Role::Learner && voters <= 1 {
                    return Err("cannot remove the last voter".into());
                }
                let st = Arc::make_mut(&mut self.state);
                st.nodes.remove(id);
                st.revoked.insert(*id);
                Ok(Outcome::Removed { id: *id })
            }
        }
    }
}

impl StateMachine for MetaMachine {
    type Event = MetaEvent;

    fn apply(&mut self, _index: u64, data: &[u8], batch: &mut Batch) {
        match wire::decode::<Proposal>(data, limits::META_COMMAND_BYTES_MAX) {
            Ok(p) => {
                let outcome = self.apply_command(p.cmd);
                self.done(p.req_id, p.origin, outcome);
                self.save(batch);
            }
            // Proposals are checked before they enter the log; one that
            // does not decode is skipped on every node alike.
            Err(e) => tracing::warn!(error = %e, "skipped undecodable metadata entry"),
        }
    }

    fn check_conf_change(&mut self, _index: u64, cc: &ConfChange, batch: &mut Batch) -> bool {
        let ctx = match wire::decode::<ConfContext>(&cc.context, limits::META_COMMAND_BYTES_MAX) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "refused conf change without a valid context");
                return false;
            }
        };
        let outcome = self.check_change(cc, &ctx.change);
        let ok = outcome.is_ok();
        self.done(ctx.req_id, ctx.origin, outcome);
        if ok {
            self.save(batch);
        }
        ok
    }

    fn snapshot(&mut self, _index: u64) -> Vec<u8> {
        wire::encode(&*self.state)
    }

    fn restore(
        &mut self,
        _meta: &raft::prelude::SnapshotMetadata,
        data: &[u8],
        batch: &mut Batch,
    ) -> Result<(), String> {
        let st: MetaState =
            wire::decode(data, limits::FRAME_BYTES_MAX).map_err(|e| e.to_string())?;
        self.state = Arc::new(st);
        self.save(batch);
        Ok(())
    }

    fn take_events(&mut self) -> Vec<MetaEvent> {
        std::mem::take(&mut self.events)
    }
}

/// A plugin name: 1 to `PLUGIN_NAME_BYTES_MAX` bytes of a-z, 0-9 and '-'.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= limits::PLUGIN_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?} must be 1 to {} bytes of a-z, 0-9 and '-'",
            limits::PLUGIN_NAME_BYTES_MAX
        ))
    }
}

/// A join token as handed to an operator: `hf1.<ca-fingerprint>.<id>.<secret>`.
/// The CA fingerprint lets the joiner authenticate the cluster before it
/// has any certificate; id and secret authenticate the joiner.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("id", &self.id).finish()
    }
}

impl JoinToken {
    pub fn to_token_string(&self) -> String {
        format!("hf1.{}.{}.{}", self.ca_fingerprint, self.id, self.secret)
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || "malformed join token (expected hf1.<fingerprint>.<id>.<secret>)".to_string();
        if s.len() > 256 {
            return Err(bad());
        }
        let mut parts = s.trim().split('.');
        let (Some("hf1"), Some(fp), Some(id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let hex_of = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_of(fp, 64) || !hex_of(id, 16) || !hex_of(secret, 32) {
            return Err(bad());
        }
        Ok(Self {
            ca_fingerprint: fp.to_string(),
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// What the metadata stores in place of the secret.
    pub fn secret_hash(secret: &str) -> String {
        blake3::hash(secret.as_bytes()).to_hex().to_string()
    }
}
