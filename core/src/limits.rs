//! Every limit and timing constant of holdfast, in one place. Names carry
//! their units. A length that arrives from a peer, a client or a file is
//! checked against one of these *before* anything is allocated for it.

/// Largest frame accepted from a peer on the cluster transport.
pub const FRAME_BYTES_MAX: usize = 8 << 20;
/// Largest Raft message payload a leader packs into one append.
pub const RAFT_MSG_BYTES_MAX: u64 = 1 << 20;
/// Appends a leader may have in flight to one follower.
pub const RAFT_INFLIGHT_MSGS_MAX: usize = 256;
/// The same for volume groups, whose entries carry up to 1 MiB of data:
/// this bounds the work a catching-up replica costs the leader per round.
pub const VOLUME_INFLIGHT_MSGS_MAX: usize = 4;
/// Largest command a client may propose to the metadata group.
pub const META_COMMAND_BYTES_MAX: usize = 64 << 10;
/// Bytes of each group's newest log entries kept in memory, so that
/// replication and apply do not read back what was just written.
pub const LOG_CACHE_BYTES_MAX: u64 = 64 << 20;
/// Log entries kept behind the applied index before the log is compacted.
pub const META_LOG_ENTRIES_MAX: u64 = 1000;

/// Node names: 1 to this many bytes of `[a-z0-9-]`.
pub const NODE_NAME_BYTES_MAX: usize = 63;
/// `HOST:PORT` strings.
pub const ADDR_BYTES_MAX: usize = 255;
/// Members of one cluster (voters, learners and witnesses).
pub const NODES_MAX: usize = 64;
/// Volumes in one cluster.
pub const VOLUMES_MAX: usize = 256;
/// Join tokens alive at once.
pub const TOKENS_MAX: usize = 1024;
/// Uses one join token may allow.
pub const TOKEN_USES_MAX: u32 = 1000;
/// Longest time-to-live of a join token.
pub const TOKEN_TTL_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Largest certificate signing request in a join.
pub const CSR_BYTES_MAX: usize = 16 << 10;

/// One Raft tick.
pub const TICK_MS: u64 = 100;
/// Ticks without a leader before a follower campaigns (randomised up to 2x).
pub const ELECTION_TICKS: usize = 10;
/// Ticks between leader heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;

/// Inputs waiting for the node's consensus thread.
pub const INBOX_DEPTH_MAX: usize = 4096;
/// Inputs the consensus thread takes before it persists and sends.
pub const INBOX_BATCH_MAX: usize = 256;
/// Frames waiting to be sent to one peer; more are dropped (Raft resends).
pub const PEER_QUEUE_DEPTH_MAX: usize = 1024;
/// HTTP API requests served at once; more wait.
pub const API_REQUESTS_INFLIGHT_MAX: usize = 256;
/// Largest HTTP request body the API reads.
pub const API_BODY_BYTES_MAX: usize = 64 << 10;

/// How long a proposal may wait for its outcome before the caller is told
/// it timed out (the outcome is then unknown).
pub const PROPOSAL_TIMEOUT_MS: u64 = 10_000;

/// Linearizable reads a new leader holds until it has committed an entry
/// of its own term (the driver runs one read round per group at a time).
pub const READS_DEFERRED_MAX: usize = 64;
/// How long a joining node waits for its join to be committed.
pub const JOIN_TIMEOUT_MS: u64 = 20_000;
/// A consensus round (persist, apply, send) slower than this is logged:
/// every group on the node waits for it.
pub const CONSENSUS_ROUND_SLOW_MS: u64 = 50;
/// Free bytes a node keeps on its data disk. Below this it takes no new
/// data: as a volume leader it refuses writes with ENOSPC (and hands the
/// leadership to a replica with room); as a follower it leaves appends
/// unprocessed and lags until space is freed, then catches up.
/// RocksDB's background work (memtable flushes, compactions) needs room
/// too, so the reserve is several memtables large.
pub const DISK_RESERVE_BYTES: u64 = 192 << 20;
/// Free bytes above the reserve before a short node takes data again, so
/// that it does not flap as RocksDB's files come and go.
pub const DISK_RESERVE_HYSTERESIS_BYTES: u64 = 64 << 20;
/// How long a volume operation waits for a reachable leader before it
/// fails with EIO (a volume that lost its majority never hangs).
pub const VOLUME_WAIT_MS: u64 = 10_000;
/// How long one attempt of a volume request that is safe to repeat (a
/// read, a write of bytes at an offset) waits for the node it asked before
/// asking another: a leader that just died never answers.
pub const VOLUME_ATTEMPT_MS: u64 = 2_000;
/// How long to wait for a QUIC handshake.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How often a node pings every peer.
pub const PING_INTERVAL_MS: u64 = 500;
/// A peer heard from within this long is healthy.
pub const PEER_HEALTHY_WITHIN_MS: u64 = 2_000;
/// QUIC idle timeout: a silent connection is dropped after this long.
pub const PEER_IDLE_TIMEOUT_MS: u64 = 10_000;

/// File volumes: bytes per stored block of file data.
pub const FS_BLOCK_BYTES: u64 = 64 << 10;
/// Longest file or directory name, as in Linux.
pub const FS_NAME_BYTES_MAX: usize = 255;
/// Largest file (16 TiB).
pub const FS_FILE_BYTES_MAX: u64 = 16 << 40;
/// Written bytes of one file a mount buffers before it pushes them out
/// unasked (they are pushed at fsync and close in any case).
pub const FS_DIRTY_FILE_BYTES_MAX: u64 = 8 << 20;
/// Largest payload of one replicated write.
pub const FS_WRITE_BYTES_MAX: usize = 1 << 20;
/// Longest symlink target.
pub const FS_SYMLINK_BYTES_MAX: usize = 4096;
/// Longest extended attribute name and value, as in Linux.
pub const FS_XATTR_NAME_BYTES_MAX: usize = 255;
pub const FS_XATTR_VALUE_BYTES_MAX: usize = 64 << 10;
/// Largest replicated filesystem command (a write plus its header).
pub const FS_COMMAND_BYTES_MAX: usize = FS_WRITE_BYTES_MAX + (64 << 10);
/// Directory entries returned by one listing call.
pub const FS_READDIR_ENTRIES_MAX: usize = 1024;
/// Largest read served by one call.
pub const FS_READ_BYTES_MAX: usize = 4 << 20;
