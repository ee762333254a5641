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
pub const VOLUME_INFLIGHT_MSGS_MAX: usize = 8;
/// Largest command a client may propose to the metadata group.
pub const META_COMMAND_BYTES_MAX: usize = 64 << 10;
/// Bytes of each group's newest log entries kept in memory, so that
/// replication and apply do not read back what was just written.
pub const LOG_CACHE_BYTES_MAX: u64 = 64 << 20;
/// Log entries kept behind the applied index before the log is compacted.
pub const META_LOG_ENTRIES_MAX: u64 = 1000;
/// Volume log entries (each up to about 1 MiB) kept behind the applied
/// index. A replica further behind catches up by hash comparison
/// ([`crate::resync`]) instead of from the log.
pub const VOLUME_LOG_KEEP_ENTRIES: u64 = 8;
/// Keys of one file (blocks or extended attributes) that an unlink or a
/// truncate deletes one at a time; more go in one range deletion.
pub const FS_POINT_DELETES_MAX: usize = 1024;
/// How long a read of file data waits for this node's replica to apply what
/// the node has already seen, before it asks the leader instead.
pub const VOLUME_LOCAL_READ_WAIT_MS: u64 = 50;
/// Log entries a compaction deletes one key at a time; more go in one range
/// deletion.
pub const LOG_COMPACT_POINT_DELETES_MAX: u64 = 4096;
/// Volume log entries a leader keeps, at most, for an active follower that
/// still replicates from the log (bounds the log's disk use).
pub const VOLUME_LOG_LAG_ENTRIES_MAX: u64 = 256;
/// Keys in one page of a resync manifest or one fetch of values.
pub const RESYNC_PAGE_KEYS_MAX: usize = 16_384;
/// Bytes of values hashed for one manifest page, and fetched in one
/// request, about.
pub const RESYNC_FETCH_BYTES_MAX: usize = 2 << 20;
/// Bytes of staged changes moved into a volume's live state per write.
pub const RESYNC_APPLY_BATCH_BYTES: usize = 8 << 20;
/// Resync transfer rate, so that foreground latency holds.
pub const RESYNC_BYTES_PER_SEC: u64 = 64 << 20;
/// A snapshot served to a catching-up replica is let go after this long
/// without a request (it pins old versions on disk).
pub const RESYNC_SNAPSHOT_IDLE_MS: u64 = 30_000;

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

/// Leader placement ([`crate::placement`]): ticks per window in which a
/// volume leader counts who asks for changes.
pub const AFFINITY_WINDOW_TICKS: u64 = 20;
/// Fewest changes in a window for the leadership to follow their node.
pub const AFFINITY_MIN_CHANGES: u64 = 50;
/// Share of a window's changes (percent) one node must ask for.
pub const AFFINITY_SHARE_PERCENT: u64 = 75;
/// Ticks a new leader keeps the leadership before it may hand it on.
pub const AFFINITY_QUIET_TICKS: u64 = 100;
/// Longest wait after hand-overs that did not take.
pub const AFFINITY_QUIET_MAX_TICKS: u64 = 6000;

/// Entries a voter may lag its leader and still be handed the leadership
/// by placement.
pub const TRANSFER_LAG_ENTRIES_MAX: u64 = 64;

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
/// The results a volume keeps for repeated ops (`fs::OpTag`) are deleted
/// in blocks of this many sequence numbers of a node.
pub const FS_OP_RESULTS_BLOCK: u64 = 1024;
/// Free bytes a node keeps on its data disk. Below this it takes no new
/// data: as a volume leader it refuses writes with ENOSPC (and hands the
/// leadership to a replica with room); as a follower it leaves appends
/// unprocessed and lags until space is freed, then catches up.
/// RocksDB's background work needs room too: a flush of what its
/// memtables hold, and a compaction.
pub const DISK_RESERVE_BYTES: u64 = MEMTABLES.unflushed_bytes() + (128 << 20);
/// A node's RocksDB memtables, two of 64 MiB in each of its two column
/// families (file blocks, `fs::FsMachine::STORAGE_SPLIT`, and the rest):
/// up to 256 MiB of memory per node. A volume's Raft log entry deleted
/// (unlogged) in the memtable it was written to never reaches a file; one
/// still alive when its memtable is flushed (entries are kept until every
/// replica has them, and a follower learns of a commit one round late)
/// is written to a blob file. Both families flush together, so larger
/// memtables leave fewer of them: for a 1 GiB write, 2.6 GiB reached the
/// disk per replica with four of 32 MiB, 2.3 GiB with two of 64 MiB
/// (3.1 GiB before applies skipped the WAL; BENCHMARKS.md, session 12).
pub const MEMTABLES: holdfast_storage::Memtables = holdfast_storage::Memtables {
    bytes: 64 << 20,
    count: 2,
};
/// Free bytes above the reserve before a short node takes data again, so
/// that it does not flap as RocksDB's files come and go.
pub const DISK_RESERVE_HYSTERESIS_BYTES: u64 = 64 << 20;
/// How long a volume operation waits for a reachable leader before it
/// fails with EIO (a volume that lost its majority never hangs).
pub const VOLUME_WAIT_MS: u64 = 10_000;
/// While a volume request that is safe to repeat (a read, a tagged change)
/// waits for the leader it asked, how often that leader is asked whether
/// it still leads; one that does not answer within `VOLUME_PROBE_MS`, or no
/// longer leads, is given up on and the request asked of another replica
/// (a leader that just died never answers). So a node without a replica
/// of the volume finds a dead leader out within about a second, while the
/// election takes one to two.
pub const VOLUME_ATTEMPT_MS: u64 = 500;
/// How long after a read-index round *started* its leader answers reads
/// at its commit index without another round (a read lease). The
/// heartbeat that confirmed the round left after it started, and a voter
/// that heard it elects no other leader for an election timeout
/// (`ELECTION_TICKS` ticks, at least 900 ms of real time; a node that just
/// started waits as long before it votes). The rest is margin.
pub const VOLUME_READ_LEASE_MS: u64 = 500;
/// How long that question waits for its answer (it is answered without
/// waiting on the consensus thread).
pub const VOLUME_PROBE_MS: u64 = 750;
/// How long a replica that left a request unanswered is not asked again
/// within one call: an election timeout and more, after which followers no
/// longer name a dead leader.
pub const VOLUME_SILENT_MS: u64 = 2 * ELECTION_TICKS as u64 * TICK_MS;
/// How often a request that waits on a volume's leader looks whether this
/// node's replica of the volume follows another leader meanwhile.
pub const VOLUME_LEADER_WATCH_MS: u64 = 50;
/// How long to wait for a QUIC handshake.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How often a node pings every peer.
pub const PING_INTERVAL_MS: u64 = 500;
/// A peer heard from within this long is healthy.
pub const PEER_HEALTHY_WITHIN_MS: u64 = 2_000;
/// QUIC idle timeout: a silent connection is dropped after this long.
pub const PEER_IDLE_TIMEOUT_MS: u64 = 10_000;
/// Largest UDP payload path MTU discovery tries between peers: a jumbo
/// frame of 9000 bytes, less IPv6 and UDP headers.
pub const PEER_UDP_PAYLOAD_BYTES_MAX: u16 = 8952;
/// Receive and send buffer of the peer UDP socket (the kernel caps it at
/// net.core.rmem_max and wmem_max).
pub const PEER_SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Bytes a peer may have unread on one stream (QUIC flow control).
pub const PEER_STREAM_WINDOW_BYTES: u32 = 8 << 20;

/// File volumes: bytes per stored block of file data.
pub const FS_BLOCK_BYTES: u64 = 16 << 10;
/// Longest file or directory name, as in Linux.
pub const FS_NAME_BYTES_MAX: usize = 255;
/// Largest file (16 TiB).
pub const FS_FILE_BYTES_MAX: u64 = 16 << 40;
/// Written bytes of one file a mount buffers before it pushes them out
/// unasked (they are pushed at fsync and close in any case).
pub const FS_DIRTY_FILE_BYTES_MAX: u64 = 8 << 20;
/// Largest payload of one replicated write.
pub const FS_WRITE_BYTES_MAX: usize = 1 << 20;
/// Readahead the kernel may ask of a mount in one request.
pub const FS_READAHEAD_BYTES: u32 = 1 << 20;
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

// Wasm plugins (holdfast-plugin). Defaults first, then the global maximums
// an operator's per-plugin setting may not exceed.

/// Deadline of one call to a router or SQL router plugin.
pub const PLUGIN_ROUTER_DEADLINE_MS: u64 = 1;
/// Deadline of one call to a failover policy or deploy strategy plugin.
pub const PLUGIN_POLICY_DEADLINE_MS: u64 = 50;
/// Largest per-plugin deadline an operator may set.
pub const PLUGIN_DEADLINE_MS_MAX: u64 = 1_000;
/// How often the plugin host advances the Wasm epoch while calls run:
/// deadlines are accurate to one tick.
pub const PLUGIN_EPOCH_TICK_US: u64 = 250;
/// Linear memory of a router or SQL router plugin instance.
pub const PLUGIN_ROUTER_MEMORY_BYTES: u64 = 16 << 20;
/// Linear memory of a failover policy or deploy strategy plugin instance.
pub const PLUGIN_POLICY_MEMORY_BYTES: u64 = 64 << 20;
/// Largest per-plugin memory an operator may set (also the size of one
/// slot of the pooling allocator). Python and JavaScript plugins carry
/// their interpreter's heap and need more than the defaults.
pub const PLUGIN_MEMORY_BYTES_MAX: u64 = 256 << 20;
/// Plugin instances alive at once on a node (calls in flight); a call
/// beyond this fails at once, it does not wait.
pub const PLUGIN_INSTANCES_MAX: u32 = 256;
/// Table elements of one plugin instance.
pub const PLUGIN_TABLE_ELEMENTS_MAX: usize = 100_000;
/// Largest component accepted at install (an interpreter-based Python
/// component is about 20 MiB).
pub const PLUGIN_COMPONENT_BYTES_MAX: usize = 64 << 20;
/// Plugins installed on a cluster (names, each with two versions kept).
pub const PLUGINS_MAX: usize = 256;
/// How long `volume add-replica`/`remove-replica` work at a change before
/// they give up (the command can be run again; each step is idempotent).
pub const VOLUME_REPLICA_CHANGE_MS: u64 = 30 * 60 * 1000;
/// A learner this close to the leader's commit index is promoted to voter.
pub const VOLUME_PROMOTE_LAG_ENTRIES: u64 = 64;
/// Plugin names ever used in a cluster (their version counters are kept).
pub const PLUGIN_NAMES_MAX: usize = 1024;
/// The encoded plugin records (settings, not components) in the metadata,
/// which travels whole in one snapshot frame.
pub const PLUGIN_RECORDS_BYTES_MAX: usize = 2 << 20;
/// The piece of a plugin component one transport exchange carries.
pub const PLUGIN_BLOB_CHUNK_BYTES: usize = 1 << 20;
/// How long an install waits for the component to reach a majority.
pub const PLUGIN_REPLICATE_TIMEOUT_MS: u64 = 30_000;
/// How long an unreferenced component is kept before it is deleted (an
/// install in flight stores it before its record commits).
pub const PLUGIN_BLOB_GRACE_MS: u64 = 300_000;
/// Plugin names: 1 to this many bytes of `[a-z0-9-]`.
pub const PLUGIN_NAME_BYTES_MAX: usize = 63;
/// Largest input of one plugin call (strings, lists and fields summed).
pub const PLUGIN_INPUT_BYTES_MAX: usize = 64 << 10;
/// Largest decision a plugin may return.
pub const PLUGIN_OUTPUT_BYTES_MAX: usize = 16 << 10;
/// Calls from a plugin into the host during one call; one more traps.
pub const PLUGIN_HOST_CALLS_MAX: u32 = 1_024;
/// Log lines a plugin may write in one call; more are dropped and counted.
pub const PLUGIN_LOG_LINES_MAX: u32 = 16;
/// Longest log line a plugin may write; longer ones are cut.
pub const PLUGIN_LOG_LINE_BYTES_MAX: usize = 1024;
/// Bytes of stdout and stderr kept per call (a panic message lands here).
pub const PLUGIN_STDIO_BYTES_MAX: usize = 4096;
/// Metric names a plugin may declare.
pub const PLUGIN_METRICS_MAX: usize = 32;
/// Longest metric name.
pub const PLUGIN_METRIC_NAME_BYTES_MAX: usize = 64;
/// Settings of one plugin, and the longest key and value.
pub const PLUGIN_CONFIG_ENTRIES_MAX: usize = 64;
pub const PLUGIN_CONFIG_KEY_BYTES_MAX: usize = 64;
pub const PLUGIN_CONFIG_VALUE_BYTES_MAX: usize = 4096;
/// Entries of one plugin's key-value store, and the largest key and value.
pub const PLUGIN_KV_ENTRIES_MAX: usize = 1024;
pub const PLUGIN_KV_KEY_BYTES_MAX: usize = 256;
pub const PLUGIN_KV_VALUE_BYTES_MAX: usize = 4096;
/// A plugin that fails this many calls (trap, deadline, memory, bad
/// output) within `PLUGIN_QUARANTINE_WINDOW_MS` is quarantined.
pub const PLUGIN_QUARANTINE_FAILURES: usize = 5;
pub const PLUGIN_QUARANTINE_WINDOW_MS: u64 = 60_000;
/// A plugin's deadline counts the CPU time of the thread running it, so
/// that a call the kernel descheduled on a busy node is not timed out for
/// it; wall-clock time is still cut off at this many times the deadline.
pub const PLUGIN_DEADLINE_WALL_FACTOR: u64 = 10;
/// Plugin instances kept between calls (each holds a slot of the pooling
/// allocator), per version and on the whole node. An instance is kept only
/// after a call that succeeded; any failure discards it.
pub const PLUGIN_IDLE_PER_VERSION_MAX: usize = 8;
pub const PLUGIN_IDLE_INSTANCES_MAX: usize = 128;
