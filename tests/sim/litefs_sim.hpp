/**
 * @file litefs_sim.hpp
 * A LiteFS cluster simulated with plain directories, for fwd's tests and demo.
 *
 * LiteFS needs FUSE and a lease, neither of which exists where fwd's tests run. This
 * library reproduces, byte for byte, what an application sees of LiteFS
 * (as LiteFS v0.5.14 serves them): the files in the mount directory and the errors SQLite reports.
 *
 * Layout. A cluster of N nodes lives under one root directory. Node i's "mount" is
 * `<root>/<hostname(i)>/` and holds:
 *   - `<db>`        the SQLite database (mode 0666 on the primary, 0444 on replicas);
 *   - `<db>-pos`    `"%016x/%016x\n"`: TXID, then checksum, lowercase hex, 34 bytes;
 *   - `.lag`        the replica's lag in milliseconds as LiteFS shows it: Go's
 *                   `"%+010d\n"` (the width of 10 includes the sign) cut to LiteFS's
 *                   declared size of 11 bytes. `+000000000\n` on the primary and on
 *                   caught-up replicas, `+2147483647` (no room left for the newline)
 *                   on a replica that never synced;
 *   - `.primary`    the primary's hostname + `"\n"`, only on replicas connected to a
 *                   primary (absent on the primary, during an election, while a
 *                   replica is disconnected).
 * The mount directory is 0777 on the primary and 0555 on replicas. Every file above is
 * replaced atomically (written to a temporary file, then renamed), so a reader never
 * sees partial contents.
 *
 * Checksum. LiteFS's checksum is a CRC over the database pages; the simulation's is a
 * running mix of what each transaction wrote instead:
 * `checksum(n) = next_checksum(checksum(n-1) ^ written(n), n)` (a splitmix64 step over
 * `checksum ^ txid`), where `written(n)` is an FNV-1a hash of the bytes (and offsets)
 * transaction n wrote to the database (rollback mode) or to the `-wal` (WAL mode), and
 * 0 before TXID 1 (the database the cluster creates is at `next_checksum(0, 1)`). So two
 * histories that reach one TXID with different transactions (a lossy failover) show
 * different checksums there, as with LiteFS. Replicas copy the primary's pair, so equal
 * positions mean equal (txid, checksum) everywhere.
 *
 * Errors on replicas. Tests run as root, so file modes alone cannot make writes fail.
 * `install_vfs()` registers a SQLite VFS (a thin shim over the default "unix" VFS) as
 * the process's default. It only acts on files whose directory contains `.lag` (a
 * simulated mount) and decides "replica" from the mount directory's mode at the moment
 * of each write (no write bit = replica):
 *   - rollback-journal mode (journal_mode=DELETE): creating the `-journal` fails with
 *     SQLITE_READONLY_DIRECTORY (1544, "attempt to write a readonly database"),
 *     exactly what the unix VFS returns when LiteFS refuses the journal with EACCES;
 *   - WAL mode: any write to the `-wal` file fails with SQLITE_IOERR_WRITE
 *     (778, "disk I/O error").
 * Reads, `-shm` writes and main-database writes (checkpoints of replicated frames)
 * work, so SELECT on a replica behaves normally.
 *
 * The primary's position. On a primary mount the shim advances `<db>-pos` by one TXID
 * per committed transaction, before that commit returns to the writer (whichever
 * process it runs in), while the writer still holds SQLite's write lock (so concurrent
 * writers in several processes bump it in commit order):
 *   - rollback mode: at the deletion of the `-journal` (the commit point), when page 1
 *     was rewritten with a new file change counter (a rollback restores the old one);
 *   - WAL mode: when the WAL write lock (shm lock slot 0, exclusive) is released and a
 *     frame with a nonzero commit field was written while it was held.
 * Only journal_mode DELETE and WAL are simulated (TRUNCATE/PERSIST never bump).
 *
 * Replication, by transaction, as LiteFS ships LTX files. When the shim advances a
 * primary's `<db>-pos` it also writes a transaction file (see ltx.hpp) into the node's
 * history, `<root>/.fwd-sim-ltx/<hostname>/<db>/`, outside the mount: the position before
 * and after, the database size in pages, and the image of every page the transaction left
 * (the pages it wrote to the database in rollback mode, the frames of its commit in WAL
 * mode). The controlling process (a test or the demo) owns a `cluster`; a replica sees
 * the primary's committed state only when replication runs for it: the transaction files
 * after the replica's position, chained checksum to checksum from it, are merged (the
 * latest image of each page) and written into the replica's database file, then the
 * replica's `<db>-pos` says their last position and the files join the replica's history
 * (so a replica promoted later serves them). The cost follows what the transactions
 * wrote, not the database's size. The pages are written as LiteFS writes them on a
 * replica: with every SQLite lock that keeps readers out (rollback: EXCLUSIVE; WAL: the
 * write, checkpoint, recovery and all read locks, after checkpointing whatever the WAL
 * held), then a new WAL-index header (WAL mode) so that every connection drops its cache,
 * and `<db>-pos` is written before the locks are released: a read transaction on a
 * replica sees exactly the state of a position the replica published, never a part of a
 * shipment, and once a reader has seen a position its next transaction sees at least
 * that. A reader in a transaction delays replication (bounded: after 10 s it fails with a
 * message) as on LiteFS. A shipment stops before a missing file (the writer of the last
 * commit may still be writing it). When the replica's next file is missing (its writer
 * died between the position and the file; a replica further behind than the 1024 files
 * each node keeps; a new replica; one on another history after a lossy failover), the
 * replicator takes the primary's write lock, which waits for a commit in progress, and
 * ships the whole database read under that lock if the files are still not there:
 * exactly at the primary's position, the replica's history restarting there. Replicas hold the
 * primary's pages byte for byte. `replicate_now()` / `replicate()` run it synchronously;
 * `start_replication(delay)` runs it in a background thread that ships commits once the
 * oldest one a replica lacks is at least `delay` old (with whatever followed it),
 * updating the `.lag` of replicas that are behind. `stats()` counts what was shipped.
 *
 * LiteFS stopping and restarting under a running service (`kill`, `restart`). Killing a
 * node's LiteFS mounts a dead FUSE filesystem over its mount directory (a FUSE mount whose
 * device was closed at once, listed in /proc/mounts as `litefs <dir> fuse ...` like
 * LiteFS's): every path under it then fails with ENOTCONN, as a real mount does once its
 * LiteFS died. What was opened before still points at the dead generation: the shim
 * fails every I/O of such a file (SQLITE_IOERR_READ, _WRITE, _LOCK, _SHMMAP...), and the
 * dead generation's `<db>-shm` is truncated, so a process that touches its memory map
 * gets SIGBUS, as with real LiteFS in WAL mode. Restarting mounts a fresh tmpfs on top
 * (a new device id, as a new FUSE mount has; the dead one stays underneath) holding the
 * node's files as they were, and the node takes its role back: a primary (static lease,
 * no election meanwhile) is primary again, a replica reconnects. While the primary's
 * LiteFS is dead its replicas show no `.primary` and a growing `.lag`. Both need
 * CAP_SYS_ADMIN and /dev/fuse; `dead_mount_unavailable()` says why they cannot run.
 *
 * HTTP API. Each live node serves LiteFS's `GET /events` and `GET /info` on
 * 127.0.0.1:`http_port(i)` (an ephemeral port, kept across restarts), with LiteFS
 * v0.5.14's bytes: a chunked `application/json` response, one JSON object and "\n" per
 * chunk, `{"type":"init","data":{"isPrimary":false,"hostname":"node-a"}}` on subscribing
 * (no `hostname` on the primary or without a primary), then `primaryChange` events of the
 * same shape whenever that view changes, and for each new position of the database
 * `{"type":"tx","db":"app.db","data":{"txID":"%016x","postApplyChecksum":"%016x",
 * "pageSize":4096,"commit":N,"timestamp":"2006-01-02T15:04:05.999Z"}}`. Positions are
 * seen through inotify on `<db>-pos`, so two commits in a row may show as one event
 * with the later position (real LiteFS sends one per transaction); `commit` is the page
 * count in the database header. A killed node's streams end and its port refuses
 * connections until it restarts.
 *
 * Node processes need nothing but `fwd_sim::install_vfs()` and `sqlite3_open_v2` on
 * `database_path(i)`: all state lives in files. The simulation needs root (as LiteFS
 * does), because it writes into 0555 directories and 0444 files.
 */
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace fwd_sim {

/** Name under which `install_vfs()` registers the shim VFS. */
inline constexpr const char* vfs_name = "fwd-litefs-sim";

/**
 * Registers the LiteFS shim VFS as the process's default SQLite VFS. Idempotent and
 * thread-safe; call it before opening any database in a simulated mount.
 * @throws std::runtime_error if SQLite refuses the registration.
 */
void install_vfs();

/** A database position as found in `<db>-pos`. */
struct db_position {
  std::uint64_t txid = 0;
  std::uint64_t checksum = 0;
  friend bool operator==(const db_position&, const db_position&) = default;
};

/** The simulation's checksum after applying `txid` on top of `checksum`. */
std::uint64_t next_checksum(std::uint64_t checksum, std::uint64_t txid) noexcept;

/** `"%016x/%016x\n"` of a position (34 bytes). */
std::string format_position(const db_position& pos);

/** A lag in milliseconds as a reader of LiteFS's `.lag` gets it: `"%+010d\n"`, cut to
 * the file's declared 11 bytes (0 -> `"+000000000\n"`, INT32_MAX -> `"+2147483647"`). */
std::string format_lag(std::int32_t milliseconds);

/** Parses a `<db>-pos` file; nullopt if absent or malformed. */
std::optional<db_position> read_position(const std::filesystem::path& pos_file);

/** Replaces `file`'s contents atomically (temporary file in the same directory, rename). */
void write_file_atomically(const std::filesystem::path& file, std::string_view contents);

/** Why `cluster::kill()` cannot run here (not root, no /dev/fuse, mounting refused), or
 * nullopt when it can. */
std::optional<std::string> dead_mount_unavailable();

/** Journal mode the cluster's database is created with (and replicated in). */
enum class journal_mode { rollback /* journal_mode=DELETE */, wal };

/** How to build a cluster. */
struct cluster_options {
  /** Directory holding one mount per node; empty = a fresh temporary directory that
   * the cluster removes when destroyed. */
  std::filesystem::path root;
  /** Database file name inside each mount. */
  std::string database = "app.db";
  /** One LiteFS hostname per node (and its mount directory's name). */
  std::vector<std::string> hostnames = {"node-a", "node-b", "node-c"};
  journal_mode mode = journal_mode::rollback;
  /** Index of the initial primary. */
  std::size_t primary = 0;
  /** Replicate the freshly created database to every replica before the constructor
   * returns; false leaves replicas without a database, `.lag` at `+2147483647`. */
  bool initial_sync = true;
  /** Serve LiteFS's HTTP API (`/events`, `/info`) for each node on a loopback port. */
  bool http = true;
};

class http_api;
struct shipment;

/** What replication has shipped since the cluster was created. */
struct replication_stats {
  /** Times a replica was brought to a new position. */
  std::uint64_t shipments = 0;
  /** Of which whole-database copies (a new replica, one on another history, or one
   * further behind than the transaction files kept). */
  std::uint64_t snapshots = 0;
  /** Transactions shipped incrementally, and pages written to replicas in all. */
  std::uint64_t transactions = 0;
  std::uint64_t pages = 0;
  /** Time spent shipping (reading what a replica lacks and writing it there). */
  std::chrono::nanoseconds busy{0};
};

/**
 * A simulated LiteFS cluster, controlled from one process.
 *
 * Thread-safety: every member function may be called from any thread; they are
 * serialised by an internal mutex (the background replicator takes it too).
 */
class cluster {
 public:
  /** Creates the mounts, the primary's database (TXID 1) and every node's files.
   * @throws std::runtime_error / std::invalid_argument on bad options or I/O errors. */
  explicit cluster(cluster_options options);
  /** Stops replication; removes the root if the cluster created it. */
  ~cluster();
  cluster(const cluster&) = delete;
  cluster& operator=(const cluster&) = delete;

  std::size_t size() const noexcept;
  const std::string& hostname(std::size_t node) const;
  /** `<root>/<hostname>`. */
  std::filesystem::path mount(std::size_t node) const;
  /** `<mount>/<db>`: what node processes open. */
  std::filesystem::path database_path(std::size_t node) const;
  /** `<mount>/<db>-pos`. */
  std::filesystem::path position_path(std::size_t node) const;
  const std::filesystem::path& root() const noexcept;
  journal_mode mode() const noexcept;

  /** The current primary; nullopt during an election. */
  std::optional<std::size_t> primary() const;
  /** Node's `<db>-pos` (a zero position if it has none yet). */
  db_position position(std::size_t node) const;
  /** Whether the node is connected (replicates and shows `.primary` when a replica). */
  bool connected(std::size_t node) const;

  /** What replication has shipped so far. */
  replication_stats stats() const;

  /** Replicates the primary's committed state to every connected replica, now. */
  void replicate_now();
  /** Replicates to one node (no-op for the primary, a disconnected node, or while
   * no primary exists). */
  void replicate(std::size_t node);

  /** Starts a background replicator that ships each commit once it is at least
   * `delay` old, and keeps `.lag` of replicas that are behind positive. Restarts it
   * with the new delay if already running. */
  void start_replication(std::chrono::milliseconds delay);
  /** Stops the background replicator (waits for it). */
  void stop_replication();

  /** Starts an election: the primary loses its role (mount 0555, database 0444) and
   * no node has `.primary`. `.lag` files stay as they are. */
  void begin_election();
  /** Ends the election with `node` as primary: mount 0777, database 0666, `.lag`
   * `+000000000\n`, TXIDs continuing from its own position; every other connected node
   * gets `.primary` = its hostname. Begins the election first if none is running.
   * @throws std::invalid_argument if the node has no database. */
  void elect(std::size_t node);
  /** How far the new primary has got when it takes over. */
  enum class promotion {
    /** It has everything the old primary committed (a candidate that was connected and
     * caught up when the primary died): fwd's exactly-once covers all of it. */
    caught_up,
    /** It has only what replication had shipped to it: LiteFS replicates
     * asynchronously, so the old primary's last transactions may be lost. */
    as_is,
  };
  /** `begin_election()`, waits `election_window`, `elect(new_primary)`. By default the
   * new primary has only what was shipped to it (`as_is`), as with LiteFS; a test that
   * needs no loss passes `caught_up` and says why. */
  void failover(std::size_t new_primary,
                std::chrono::milliseconds election_window = std::chrono::milliseconds{0},
                promotion how = promotion::as_is);

  /** LiteFS on `node` dies (SIGKILL) under whatever runs there: its mount goes dead
   * (ENOTCONN), files opened before fail, its HTTP API stops. A dead primary keeps its
   * lease (static lease): the cluster has no primary until it restarts.
   * @throws std::runtime_error if a dead mount cannot be made (see
   * dead_mount_unavailable()) or the node is already dead. */
  void kill(std::size_t node);
  /** LiteFS on `node` starts again: a new mount (new device id) over the dead one, with
   * the node's files as they were; a primary is primary again, a replica reconnects and
   * catches up. No-op on a live node. */
  void restart(std::size_t node);
  /** Whether the node's LiteFS is running (not killed). */
  bool alive(std::size_t node) const;
  /** The node's LiteFS HTTP port on 127.0.0.1 (0 when `cluster_options::http` is off). */
  std::uint16_t http_port(std::size_t node) const;

  /** Cuts a replica from the primary: no `.primary`, no replication. */
  void disconnect(std::size_t node);
  /** Reconnects a replica: `.primary` reappears (if a primary exists). */
  void reconnect(std::size_t node);

 private:
  struct commit_seen {
    std::uint64_t txid;
    std::chrono::steady_clock::time_point at;
  };

  // What one replica's catch-up did: whether it read the primary's position (`checked`,
  // `head`) and what it shipped.
  struct shipped {
    bool checked = false;
    std::uint64_t head = 0;
    bool any = false;
    bool snapshot = false;
    std::size_t transactions = 0;
    std::size_t pages = 0;
    std::chrono::steady_clock::duration busy{};
  };

  void check_node(std::size_t node) const;
  void replicate_locked(std::size_t node);
  // Catches every one of `nodes` up at once, one thread each, then prunes the primary's
  // history; the first failure is rethrown once all have finished.
  void replicate_locked(const std::vector<std::size_t>& nodes);
  shipped ship_locked(std::size_t node);
  void apply_locked(std::size_t node, const shipment& s);
  void prune_history_locked(std::size_t node, std::uint64_t head);
  void begin_election_locked();
  void write_primary_files_locked();
  void replicator_loop(std::chrono::milliseconds delay);
  void replicator_tick_locked(std::chrono::milliseconds delay);
  void publish_views_locked();
  bool primary_alive_locked() const;

  cluster_options options_;
  bool owns_root_ = false;
  std::optional<std::size_t> primary_;
  std::vector<bool> connected_;
  std::vector<std::int32_t> lag_written_;
  // LiteFS killed and restarted: per node, whether it runs, the directory fd of each
  // generation's storage (the newest last), how many mounts were stacked on the mount
  // directory, and since when the node has not heard from a primary.
  std::vector<bool> alive_;
  std::vector<std::vector<int>> generations_;
  std::vector<int> stacked_mounts_;
  std::vector<std::chrono::steady_clock::time_point> lost_primary_at_;
  // Per node, the TXID up to which its transaction files were removed.
  std::vector<std::uint64_t> pruned_;
  replication_stats stats_;
  std::unique_ptr<http_api> http_;
  std::chrono::steady_clock::time_point heartbeat_epoch_ = std::chrono::steady_clock::now();

  mutable std::mutex mutex_;
  // Background replicator.
  std::thread replicator_;
  std::condition_variable replicator_cv_;
  bool replicator_stop_ = false;
  std::uint64_t last_seen_txid_ = 0;
  std::vector<commit_seen> commits_seen_;
};

}  // namespace fwd_sim
