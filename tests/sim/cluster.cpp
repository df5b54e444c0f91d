// The controller side of the simulation: mounts, roles, replication, failover.
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <system_error>

#include "litefs_sim.hpp"

namespace fwd_sim {
namespace {

constexpr std::int32_t lag_never_synced = INT32_MAX;
constexpr std::int32_t lag_unknown = -1;  // nothing written by this process yet
constexpr std::chrono::seconds replication_busy_limit{10};

// Connections that bypass the shim: the replicator is LiteFS itself, not an app.
struct unix_connection {
  sqlite3* db = nullptr;
  unix_connection(const std::filesystem::path& path, int flags) {
    const int rc = sqlite3_open_v2(path.c_str(), &db, flags, "unix");
    if (rc != SQLITE_OK) {
      std::string message = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
      sqlite3_close(db);
      throw std::runtime_error("fwd_sim: cannot open " + path.string() + ": " + message);
    }
    sqlite3_busy_timeout(db, 2000);
  }
  ~unix_connection() { sqlite3_close(db); }
  unix_connection(const unix_connection&) = delete;
  unix_connection& operator=(const unix_connection&) = delete;

  void exec(const char* sql) {
    char* error = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
      std::string message = error ? error : "unknown error";
      sqlite3_free(error);
      throw std::runtime_error(std::string("fwd_sim: ") + sql + ": " + message);
    }
  }
};

void change_mode(const std::filesystem::path& path, mode_t mode) {
  if (::chmod(path.c_str(), mode) != 0) {
    throw std::system_error(errno, std::generic_category(),
                            "fwd_sim: cannot chmod " + path.string());
  }
}

void remove_quietly(const std::filesystem::path& path) {
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
}

bool valid_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

}  // namespace

cluster::cluster(cluster_options options) : options_(std::move(options)) {
  if (::geteuid() != 0) {
    // Like LiteFS, the simulation writes into 0555 mounts and 0444 databases.
    throw std::runtime_error("fwd_sim: the LiteFS simulation must run as root");
  }
  const std::size_t n = options_.hostnames.size();
  if (n == 0) throw std::invalid_argument("fwd_sim: a cluster needs at least one hostname");
  std::set<std::string> unique(options_.hostnames.begin(), options_.hostnames.end());
  if (unique.size() != n) throw std::invalid_argument("fwd_sim: hostnames must be unique");
  for (const auto& h : options_.hostnames) {
    if (!valid_file_name(h) || h[0] == '.') {
      throw std::invalid_argument("fwd_sim: hostname '" + h +
                                  "' cannot name a mount directory");
    }
  }
  if (!valid_file_name(options_.database) || options_.database[0] == '.') {
    throw std::invalid_argument("fwd_sim: database name '" + options_.database +
                                "' must be a plain file name such as app.db");
  }
  if (options_.primary >= n) {
    throw std::invalid_argument("fwd_sim: primary index is out of range");
  }
  if (options_.root.empty()) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "fwd-sim-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::system_error(errno, std::generic_category(),
                              "fwd_sim: cannot create a temporary directory");
    }
    options_.root = pattern;
    owns_root_ = true;
  }
  std::filesystem::create_directories(options_.root);
  connected_.assign(n, true);
  lag_written_.assign(n, lag_unknown);

  const std::size_t p = options_.primary;
  for (std::size_t i = 0; i < n; ++i) {
    std::filesystem::create_directories(mount(i));
    change_mode(mount(i), 0777);
    remove_quietly(mount(i) / ".primary");
    write_file_atomically(mount(i) / ".lag", format_lag(i == p ? 0 : lag_never_synced));
    lag_written_[i] = i == p ? 0 : lag_never_synced;
    if (i != p) {
      remove_quietly(database_path(i));
      remove_quietly(position_path(i));
    }
  }

  // The database is created outside the shim: its creation is TXID 1, as in LiteFS.
  remove_quietly(database_path(p));
  {
    unix_connection db(database_path(p), SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    db.exec(options_.mode == journal_mode::wal ? "PRAGMA journal_mode=WAL"
                                                : "PRAGMA journal_mode=DELETE");
    db.exec("PRAGMA user_version=1");
  }
  change_mode(database_path(p), 0666);
  write_file_atomically(position_path(p),
                        format_position({1, next_checksum(0, 1)}));

  std::lock_guard lock(mutex_);
  primary_ = p;
  for (std::size_t i = 0; i < n; ++i) {
    if (i != p) change_mode(mount(i), 0555);
  }
  write_primary_files_locked();
  if (options_.initial_sync) {
    for (std::size_t i = 0; i < n; ++i) replicate_locked(i);
  }
}

cluster::~cluster() {
  stop_replication();
  if (owns_root_) {
    std::error_code ignored;
    std::filesystem::remove_all(options_.root, ignored);
  }
}

std::size_t cluster::size() const noexcept { return options_.hostnames.size(); }

void cluster::check_node(std::size_t node) const {
  if (node >= size()) {
    throw std::out_of_range("fwd_sim: node " + std::to_string(node) +
                            " does not exist (cluster of " + std::to_string(size()) +
                            ")");
  }
}

const std::string& cluster::hostname(std::size_t node) const {
  check_node(node);
  return options_.hostnames[node];
}

std::filesystem::path cluster::mount(std::size_t node) const {
  return options_.root / hostname(node);
}

std::filesystem::path cluster::database_path(std::size_t node) const {
  return mount(node) / options_.database;
}

std::filesystem::path cluster::position_path(std::size_t node) const {
  return mount(node) / (options_.database + "-pos");
}

const std::filesystem::path& cluster::root() const noexcept { return options_.root; }

journal_mode cluster::mode() const noexcept { return options_.mode; }

std::optional<std::size_t> cluster::primary() const {
  std::lock_guard lock(mutex_);
  return primary_;
}

db_position cluster::position(std::size_t node) const {
  check_node(node);
  return read_position(position_path(node)).value_or(db_position{});
}

bool cluster::connected(std::size_t node) const {
  check_node(node);
  std::lock_guard lock(mutex_);
  return connected_[node];
}

void cluster::write_primary_files_locked() {
  for (std::size_t i = 0; i < size(); ++i) {
    if (primary_ && i != *primary_ && connected_[i]) {
      write_file_atomically(mount(i) / ".primary", hostname(*primary_) + "\n");
    } else {
      remove_quietly(mount(i) / ".primary");
    }
  }
}

void cluster::replicate_now() {
  std::lock_guard lock(mutex_);
  for (std::size_t i = 0; i < size(); ++i) replicate_locked(i);
}

void cluster::replicate(std::size_t node) {
  check_node(node);
  std::lock_guard lock(mutex_);
  replicate_locked(node);
}

void cluster::replicate_locked(std::size_t node) {
  if (!primary_ || node == *primary_ || !connected_[node]) return;
  const std::size_t p = *primary_;
  // Position first: the copy below holds at least this, so the replica's position
  // never claims data it does not have.
  const db_position pos = read_position(position_path(p)).value_or(db_position{});
  {
    // Read-write, so that SQLite can roll back a hot journal that a primary killed
    // mid-transaction left behind (LiteFS recovers the same way before shipping).
    unix_connection source(database_path(p), SQLITE_OPEN_READWRITE);
    unix_connection target(database_path(node), SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    sqlite3_backup* backup = sqlite3_backup_init(target.db, "main", source.db, "main");
    if (backup == nullptr) {
      throw std::runtime_error("fwd_sim: cannot start replication to " + hostname(node) +
                               ": " + sqlite3_errmsg(target.db));
    }
    // Node processes may hold locks on either file for a moment: retry, bounded.
    const auto give_up = std::chrono::steady_clock::now() + replication_busy_limit;
    int rc;
    while ((rc = sqlite3_backup_step(backup, -1)) == SQLITE_BUSY || rc == SQLITE_LOCKED ||
           rc == SQLITE_OK) {
      if (std::chrono::steady_clock::now() > give_up) break;
      sqlite3_sleep(1);
    }
    sqlite3_backup_finish(backup);
    if (rc != SQLITE_DONE) {
      throw std::runtime_error(
          "fwd_sim: replication to " + hostname(node) + " failed: " + sqlite3_errstr(rc) +
          (rc == SQLITE_BUSY || rc == SQLITE_LOCKED
               ? " (a transaction held the primary or the replica for too long; "
                 "end read transactions before replicating from the same thread)"
               : ""));
    }
  }
  change_mode(database_path(node), 0444);
  write_file_atomically(position_path(node), format_position(pos));
  if (lag_written_[node] != 0) {
    write_file_atomically(mount(node) / ".lag", format_lag(0));
    lag_written_[node] = 0;
  }
}

void cluster::start_replication(std::chrono::milliseconds delay) {
  stop_replication();
  std::lock_guard lock(mutex_);
  replicator_stop_ = false;
  last_seen_txid_ = 0;
  commits_seen_.clear();
  replicator_ = std::thread([this, delay] { replicator_loop(delay); });
}

void cluster::stop_replication() {
  std::thread thread;
  {
    std::lock_guard lock(mutex_);
    replicator_stop_ = true;
    thread = std::move(replicator_);
  }
  replicator_cv_.notify_all();
  if (thread.joinable()) thread.join();
}

void cluster::replicator_loop(std::chrono::milliseconds delay) {
  std::unique_lock lock(mutex_);
  while (!replicator_stop_) {
    try {
      replicator_tick_locked(delay);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fwd_sim: replicator: %s\n", e.what());
    }
    replicator_cv_.wait_for(lock, std::chrono::milliseconds{1},
                            [this] { return replicator_stop_; });
  }
}

void cluster::replicator_tick_locked(std::chrono::milliseconds delay) {
  if (!primary_) return;
  const auto now = std::chrono::steady_clock::now();
  const db_position head =
      read_position(position_path(*primary_)).value_or(db_position{});
  if (head.txid != last_seen_txid_) {
    // A commit's age counts from when the replicator first saw it.
    commits_seen_.push_back({head.txid, now});
    last_seen_txid_ = head.txid;
  }
  std::uint64_t oldest_needed = head.txid;
  for (std::size_t i = 0; i < size(); ++i) {
    if (i == *primary_ || !connected_[i]) continue;
    const db_position local = read_position(position_path(i)).value_or(db_position{});
    if (local == head) {
      // Caught up, .lag is the time since the primary's last frame or heartbeat (one a
      // second): a 0-1000 ms sawtooth, as real LiteFS shows it, never a steady 0.
      const auto since = std::chrono::duration_cast<std::chrono::milliseconds>(now - heartbeat_epoch_);
      const auto lag = static_cast<std::int32_t>(since.count() % 1000);
      if (lag_written_[i] < 0 || lag_written_[i] == lag_never_synced || lag < lag_written_[i] ||
          lag - lag_written_[i] >= 25) {
        write_file_atomically(mount(i) / ".lag", format_lag(lag));
        lag_written_[i] = lag;
      }
      continue;
    }
    if (local.txid >= head.txid) {
      // Ahead of or diverged from the primary (a former primary): resync at once.
      replicate_locked(i);
      continue;
    }
    auto pending = std::find_if(commits_seen_.begin(), commits_seen_.end(),
                                [&](const commit_seen& c) { return c.txid > local.txid; });
    if (pending == commits_seen_.end()) {
      replicate_locked(i);
      continue;
    }
    const auto age =
        std::chrono::duration_cast<std::chrono::milliseconds>(now - pending->at);
    if (age >= delay) {
      replicate_locked(i);
      continue;
    }
    oldest_needed = std::min(oldest_needed, local.txid);
    // While behind, .lag shows how long the oldest unshipped commit has waited.
    const auto lag = static_cast<std::int32_t>(
        std::clamp<std::int64_t>(age.count(), 1, INT32_MAX - 1));
    if (lag_written_[i] <= 0 || lag_written_[i] == lag_never_synced ||
        lag - lag_written_[i] >= 5) {
      write_file_atomically(mount(i) / ".lag", format_lag(lag));
      lag_written_[i] = lag;
    }
  }
  // Forget commits every connected replica already has.
  std::erase_if(commits_seen_, [&](const commit_seen& c) {
    return c.txid <= oldest_needed && c.txid != head.txid;
  });
}

void cluster::begin_election() {
  std::lock_guard lock(mutex_);
  begin_election_locked();
}

void cluster::begin_election_locked() {
  if (primary_) {
    const std::size_t old = *primary_;
    // The old primary loses its lease first: from now on its writes fail.
    change_mode(mount(old), 0555);
    if (std::filesystem::exists(database_path(old))) change_mode(database_path(old), 0444);
  }
  primary_.reset();
  write_primary_files_locked();  // removes every .primary
}

void cluster::elect(std::size_t node) {
  check_node(node);
  std::lock_guard lock(mutex_);
  if (primary_ && *primary_ == node) return;
  if (primary_) begin_election_locked();
  if (!std::filesystem::exists(database_path(node))) {
    throw std::invalid_argument("fwd_sim: " + hostname(node) +
                                " has no database to be primary of; replicate to it first");
  }
  change_mode(database_path(node), 0666);
  change_mode(mount(node), 0777);
  write_file_atomically(mount(node) / ".lag", format_lag(0));
  lag_written_[node] = 0;
  connected_[node] = true;
  primary_ = node;
  last_seen_txid_ = 0;
  commits_seen_.clear();
  write_primary_files_locked();
}

void cluster::failover(std::size_t new_primary, std::chrono::milliseconds election_window,
                       promotion how) {
  check_node(new_primary);
  if (how == promotion::caught_up) replicate(new_primary);
  begin_election();
  // The election window is the simulated time a new lease takes, not a wait for an event.
  if (election_window.count() > 0) std::this_thread::sleep_for(election_window);
  elect(new_primary);
}

void cluster::disconnect(std::size_t node) {
  check_node(node);
  std::lock_guard lock(mutex_);
  if (primary_ && *primary_ == node) {
    throw std::invalid_argument("fwd_sim: cannot disconnect the primary " + hostname(node) +
                                "; use begin_election() to take its role away");
  }
  connected_[node] = false;
  remove_quietly(mount(node) / ".primary");
}

void cluster::reconnect(std::size_t node) {
  check_node(node);
  std::lock_guard lock(mutex_);
  connected_[node] = true;
  write_primary_files_locked();
}

}  // namespace fwd_sim
