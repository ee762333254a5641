//! Messages between nodes and their byte encoding. Decoding checks every
//! length against [`crate::limits`] before it allocates.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::fs::{Attr, DirEntry, Errno, FsOp, FsResult, Ino, Stats};
use crate::limits;
use crate::meta::Role;

/// What travels between members on the cluster transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum PeerMsg {
    /// A Raft message (protobuf bytes) for consensus group `group`.
    Raft {
        group: u64,
        #[serde(with = "serde_bytes")]
        msg: Vec<u8>,
    },
    /// Liveness probe; carries nothing but its sender.
    Ping,
    /// A request about a volume, on a request/response stream.
    Vol(VolRequest),
    /// A request to the plugin store, on a request/response stream.
    Blob(BlobRequest),
}

/// What a node asks another's plugin store. Components are addressed by
/// their blake3 hash (hex) and move in `PLUGIN_BLOB_CHUNK_BYTES` pieces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum BlobRequest {
    /// Piece `index` of component `hash`.
    Get { hash: String, index: u32 },
    /// Fetch component `hash` (`bytes` long) from member `from` and keep it
    /// durably; answered once it is stored.
    Fetch { hash: String, bytes: u64, from: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum BlobReply {
    Piece {
        /// The component's length.
        bytes: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Stored,
    Missing,
    Failed(String),
}

/// What a node asks a volume's replica (normally its leader).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum VolRequest {
    /// Replicate a change. Only the leader takes it.
    Op {
        volume: u64,
        op: FsOp,
        /// Lets the volume answer a repeat without applying it again.
        tag: Option<crate::fs::OpTag>,
    },
    /// Changes the volume group's replica set. Only the leader takes it,
    /// and answers once the change is proposed; whether it took effect
    /// shows in `Status` (`voters`, `learners`).
    ChangeReplica {
        volume: u64,
        node: u64,
        change: ReplicaChange,
    },
    /// A linearizable read. Only the leader answers it.
    Read { volume: u64, read: FsRead },
    /// This replica's progress (any replica answers).
    Status { volume: u64 },
    /// blake3 over this replica's whole applied state (any replica answers).
    Digest { volume: u64 },
    /// Manifest entries of the snapshot this replica serves at `index`,
    /// after key `after` ([`crate::resync`]).
    SnapshotManifest {
        volume: u64,
        index: u64,
        #[serde(with = "serde_bytes")]
        after: Vec<u8>,
    },
    /// Values of the snapshot this replica serves at `index`.
    SnapshotValues {
        volume: u64,
        index: u64,
        keys: Vec<serde_bytes::ByteBuf>,
    },
    /// The leader this replica knows, as last published by its consensus
    /// thread (answered without waiting on that thread, so a busy leader
    /// still answers at once).
    Leader { volume: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum FsRead {
    GetAttr {
        ino: Ino,
    },
    Lookup {
        parent: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    ReadDir {
        ino: Ino,
        #[serde(with = "serde_bytes")]
        after: Vec<u8>,
    },
    Read {
        ino: Ino,
        offset: u64,
        len: u32,
    },
    ReadLink {
        ino: Ino,
    },
    GetXattr {
        ino: Ino,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    ListXattr {
        ino: Ino,
    },
    Stats,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ReadReply {
    Attr(Attr),
    Entries(Vec<(Vec<u8>, DirEntry)>),
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Names(Vec<Vec<u8>>),
    Stats(Stats),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ReplicaChange {
    /// Admit as a learner: it receives the log and does not vote.
    AddLearner,
    /// Make a learner that caught up a voter.
    Promote,
    Remove,
}

/// A replica's view of its volume group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// Bytes a running resync still has to fetch.
    pub resync_bytes_left: u64,
    /// Bytes fetched by resyncs since the node started, and resyncs done.
    pub resync_bytes_fetched: u64,
    pub resyncs: u64,
    /// The group's configuration as this replica applied it.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum VolReply {
    /// The outcome of an op, and the index it was applied at (0 if it was
    /// refused before it was proposed).
    Op(FsResult, u64),
    /// A read's answer, and an index of the replica it was read from at or
    /// past everything the read can have seen (`FsView::applying`).
    Read(Result<ReadReply, Errno>, u64),
    Status(ReplicaStatus),
    /// The replica's applied index and the digest of its state there.
    Digest {
        applied: u64,
        digest: String,
    },
    /// A page of a snapshot manifest, and whether it is the last.
    Manifest {
        entries: Vec<crate::resync::ManifestEntry>,
        done: bool,
    },
    /// Snapshot values, as asked.
    Values(Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>),
    /// Ask `leader` instead (`None`: no leader known yet).
    NotLeader {
        leader: Option<u64>,
    },
    /// This node cannot serve the volume now (not a replica, busy, or
    /// stopping). Try another replica.
    Unavailable(String),
    /// A replica-set change was proposed (or was already in effect).
    Accepted,
    /// Answers `VolRequest::Leader`.
    Leader(Option<u64>),
}

/// Sent by a node that has no certificate yet, over an unauthenticated
/// connection, to ask to be let in.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinRequest {
    /// The secret part of the join token: `ID.SECRET`.
    pub token: String,
    pub name: String,
    pub peer_addr: String,
    pub api_addr: String,
    pub role: Role,
    /// A PKCS#10 certificate signing request for the joiner's own key.
    #[serde(with = "serde_bytes")]
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for JoinRequest {
    // The token is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("name", &self.name)
            .field("peer_addr", &self.peer_addr)
            .field("role", &self.role)
            .finish()
    }
}

/// A member as the joiner needs to know it before it has the metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: u64,
    pub name: String,
    pub peer_addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum JoinReply {
    Accepted {
        node_id: u64,
        cluster_id: String,
        cert_pem: String,
        ca_pem: String,
        peers: Vec<PeerInfo>,
    },
    Refused {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes `value` as one frame payload.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own in-memory types into a Vec cannot fail.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Decodes a frame payload, refusing one over `max` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(WireError::Malformed(e.to_string())),
    }
}

/// Checks a node name: 1..=63 bytes of lowercase letters, digits and `-`,
/// not starting with `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > limits::NODE_NAME_BYTES_MAX {
        return Err(format!(
            "node name must be 1 to {} bytes",
            limits::NODE_NAME_BYTES_MAX
        ));
    }
    if name.starts_with('-')
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "node name {name:?} may hold only a-z, 0-9 and '-', and may not start with '-'"
        ));
    }
    Ok(())
}

/// Checks a `HOST:PORT` address string.
pub fn check_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.len() > limits::ADDR_BYTES_MAX {
        return Err(format!(
            "address must be 1 to {} bytes",
            limits::ADDR_BYTES_MAX
        ));
    }
    addr.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("address {addr:?} is not HOST:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_refuses_oversized_and_garbage() {
        let big = vec![0u8; 100];
        assert_eq!(
            decode::<PeerMsg>(&big, 10),
            Err(WireError::TooLarge { len: 100, max: 10 })
        );
        assert!(matches!(
            decode::<PeerMsg>(&[9, 9, 9], 100),
            Err(WireError::Malformed(_))
        ));
        // A length prefix that claims more bytes than the frame holds.
        assert!(matches!(
            decode::<PeerMsg>(&[0, 0, 0xff, 0xff, 0xff, 0x0f], 100),
            Err(WireError::Malformed(_))
        ));
        let m = PeerMsg::Raft {
            group: 3,
            msg: vec![1, 2, 3],
        };
        assert_eq!(decode::<PeerMsg>(&encode(&m), 100), Ok(m));
        // A longer message must not pass for a shorter one.
        let refused = encode(&JoinReply::Refused {
            reason: "no".into(),
        });
        assert!(matches!(
            decode::<PeerMsg>(&refused, 100),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn names_and_addrs() {
        for ok in ["n1", "web-01", "a"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "UP", "a b", "ä", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_addr("127.0.0.1:7000").is_ok());
        assert!(check_addr("nohost").is_err());
    }
}
