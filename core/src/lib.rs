//! The sans-I/O heart of holdfast: consensus groups ([`group::RaftGroup`],
//! raft-rs over a storage [`holdfast_storage::Engine`]), the cluster
//! metadata state machine ([`meta`]), the peer wire format ([`wire`]) and
//! every limit ([`limits`]).
//!
//! This crate opens no socket, spawns no thread or task, and reads no clock:
//! time arrives as ticks and as `now_ms` values inside commands. That is
//! what lets the same code run in the node daemon and in deterministic
//! simulation.

pub mod fs;
pub mod group;
pub mod limits;
pub mod meta;
pub mod placement;
pub mod resync;
pub mod wire;

pub use raft::prelude::{ConfChange, Message as RaftMessage, MessageType as RaftMessageType};
pub use raft::StateRole;

/// Encodes a Raft message for the wire.
pub fn encode_raft(msg: &RaftMessage) -> Vec<u8> {
    use protobuf::Message as _;
    msg.write_to_bytes().unwrap_or_default()
}

/// Decodes a Raft message from a peer.
pub fn decode_raft(bytes: &[u8]) -> Result<RaftMessage, wire::WireError> {
    use protobuf::Message as _;
    if bytes.len() > limits::FRAME_BYTES_MAX {
        return Err(wire::WireError::TooLarge {
            len: bytes.len(),
            max: limits::FRAME_BYTES_MAX,
        });
    }
    RaftMessage::parse_from_bytes(bytes).map_err(|e| wire::WireError::Malformed(e.to_string()))
}
