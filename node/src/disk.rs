//! A node's data folder: who it is (`node.json`), its TLS files, the admin
//! token, and the RocksDB database.
//!
//! ```text
//! DIR/node.json        identity: cluster id, node id, name, addresses
//! DIR/tls/ca.crt       the cluster CA certificate
//! DIR/tls/node.crt     this node's certificate
//! DIR/tls/node.key     this node's private key (0600)
//! DIR/admin.token      the cluster admin token (0600)
//! DIR/db/              RocksDB: Raft logs and state machines
//! ```
//! `node.json` is written last: a folder without it holds no node.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::NodeError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeFile {
    pub cluster_id: String,
    pub node_id: u64,
    pub name: String,
    pub listen: String,
    pub api: String,
    /// blake3 of the CA certificate: the cluster this folder belongs to.
    pub ca_fingerprint: String,
    /// The members named in the join reply. A node admits and dials them
    /// until its own copy of the metadata arrives, also across a restart
    /// that comes before that.
    #[serde(default)]
    pub seed_peers: Vec<holdfast_core::wire::PeerInfo>,
}

#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    pub fn node_file(&self) -> PathBuf {
        self.root.join("node.json")
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }
    pub fn tls(&self, file: &str) -> PathBuf {
        self.root.join("tls").join(file)
    }
    /// Compiled plugin artifacts, by blake3 of their component.
    pub fn plugin_cache(&self) -> PathBuf {
        self.root.join("plugin-cache")
    }

    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }

    /// The node that lives here, if any.
    pub fn load(&self) -> Result<Option<NodeFile>, NodeError> {
        let path = self.node_file();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(NodeError::Local(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        if bytes.len() > 64 << 10 {
            return Err(NodeError::Local(format!(
                "{} is too large to be a node file",
                path.display()
            )));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| NodeError::Local(format!("{} is damaged: {e}", path.display())))
    }

    /// Refuses a folder that holds anything: a new node needs an empty one.
    pub fn check_empty(&self) -> Result<(), NodeError> {
        match std::fs::read_dir(&self.root) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Err(NodeError::Usage(format!(
                        "{} is not empty and holds no holdfast node; use an empty folder",
                        self.root.display()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NodeError::Local(format!(
                "cannot read {}: {e}",
                self.root.display()
            ))),
        }
    }

    pub fn read_text(&self, path: &Path) -> Result<String, NodeError> {
        std::fs::read_to_string(path)
            .map_err(|e| NodeError::Local(format!("cannot read {}: {e}", path.display())))
    }

    /// Writes `contents` to `path` atomically (write, fsync, rename).
    pub fn write_file(&self, path: &Path, contents: &[u8], secret: bool) -> Result<(), NodeError> {
        let err =
            |e: std::io::Error| NodeError::Local(format!("cannot write {}: {e}", path.display()));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp)
            .map_err(err)?;
        f.write_all(contents).map_err(err)?;
        f.sync_all().map_err(err)?;
        if secret {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(())
    }
}
