// The controller side of the simulation: mounts, roles, replication, failover.
#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "http_api.hpp"
#include "litefs_sim.hpp"
#include "ltx.hpp"

namespace fwd_sim {
namespace {

constexpr std::int32_t lag_never_synced = INT32_MAX;
constexpr std::int32_t lag_unknown = -1;  // nothing written by this process yet
constexpr std::chrono::seconds replication_busy_limit{10};
// Transaction files each node keeps behind its position; a replica further behind gets
// a snapshot.
constexpr std::uint64_t history_retention = 1024;

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

  // The first column of the first row of `sql`, as text ("" if none).
  std::string text(const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    std::string out;
    int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr);
    if (rc == SQLITE_OK) {
      rc = sqlite3_step(stmt);
      if (rc == SQLITE_ROW) {
        const auto* t = sqlite3_column_text(stmt, 0);
        if (t != nullptr) out = reinterpret_cast<const char*>(t);
        rc = SQLITE_OK;
      } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
      }
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_OK) {
      throw std::runtime_error(std::string("fwd_sim: ") + sql + ": " + sqlite3_errmsg(db));
    }
    return out;
  }

  sqlite3_file* main_file() {
    sqlite3_file* file = nullptr;
    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &file) != SQLITE_OK ||
        file == nullptr || file->pMethods == nullptr) {
      throw std::runtime_error("fwd_sim: no file behind a replica's connection");
    }
    return file;
  }
};

// Retries `attempt` (true = done) until it succeeds or the busy limit passes: node
// processes hold SQLite's locks only for their own transactions, so the first retries
// come soon (20 us), later ones every millisecond.
template <class Attempt>
bool retry_while_busy(Attempt attempt) {
  const auto give_up = std::chrono::steady_clock::now() + replication_busy_limit;
  auto pause = std::chrono::microseconds{20};
  while (!attempt()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds{1});
  }
  return true;
}

}  // namespace

// What a replica lacks to reach a position: the pages to write and the size the database
// ends with. The pages point into `records` (shipped transaction files) or `snapshot`
// (the whole database).
struct shipment {
  db_position to;
  std::uint32_t page_size = 0;
  std::uint32_t commit = 0;
  std::vector<ltx::record> records;
  std::string snapshot;
  std::map<std::uint32_t, const char*> pages;
};

namespace {

// The transaction files after `from`, in order, chained checksum to checksum from
// `from`, up to `head` or the first one missing (the last commit's writer may not have
// written its file yet); nullopt if the first one is missing (not yet written, lost with
// a writer that died, pruned) or does not follow `from` (another history).
std::optional<shipment> collect_records(const std::filesystem::path& history,
                                        const db_position& from, const db_position& head) {
  if (from.txid >= head.txid) return std::nullopt;
  shipment s;
  db_position at = from;
  for (std::uint64_t txid = from.txid + 1; txid <= head.txid; ++txid) {
    auto r = ltx::read(history, txid);
    if (!r || r->pre_checksum != at.checksum ||
        (s.page_size != 0 && r->page_size != s.page_size)) {
      break;
    }
    s.page_size = r->page_size;
    at = {txid, r->post_checksum};
    s.records.push_back(std::move(*r));
  }
  if (s.records.empty()) return std::nullopt;
  s.to = at;
  s.commit = s.records.back().commit;
  for (const auto& r : s.records) {
    for (std::size_t i = 0; i < r.page_numbers.size(); ++i) {
      s.pages[r.page_numbers[i]] = r.pages.data() + i * r.page_size;
    }
  }
  s.pages.erase(s.pages.upper_bound(s.commit), s.pages.end());
  return s;
}

// The primary's database as a whole, from a connection that reads it while `frozen`
// holds its write lock.
shipment take_snapshot(const std::filesystem::path& db_path, const db_position& head) {
  unix_connection reader(db_path, SQLITE_OPEN_READONLY);
  sqlite3_int64 size = 0;
  unsigned char* bytes = sqlite3_serialize(reader.db, "main", &size, 0);
  if (bytes == nullptr && size != 0) {
    throw std::runtime_error("fwd_sim: cannot read " + db_path.string() + ": " +
                             sqlite3_errmsg(reader.db));
  }
  shipment s;
  s.to = head;
  s.snapshot.assign(reinterpret_cast<const char*>(bytes), static_cast<std::size_t>(size));
  sqlite3_free(bytes);
  if (s.snapshot.size() < 100) return s;  // an empty database: no pages
  const auto* header = reinterpret_cast<const unsigned char*>(s.snapshot.data());
  const std::uint32_t raw = (std::uint32_t{header[16]} << 8) | header[17];
  s.page_size = raw == 1 ? 65536 : raw;
  s.commit = static_cast<std::uint32_t>(s.snapshot.size() / s.page_size);
  for (std::uint32_t p = 1; p <= s.commit; ++p) {
    s.pages[p] = s.snapshot.data() + std::size_t{p - 1} * s.page_size;
  }
  return s;
}

// SQLite's WAL-index header (wal.c's WalIndexHdr, in this machine's byte order), which
// every connection compares with its own copy before each read transaction.
struct wal_index_header {
  std::uint32_t version;
  std::uint32_t unused;
  std::uint32_t change;
  std::uint8_t is_init;
  std::uint8_t big_endian_checksum;
  std::uint16_t page_size;
  std::uint32_t max_frame;
  std::uint32_t page_count;
  std::uint32_t frame_checksum[2];
  std::uint32_t salt[2];
  std::uint32_t checksum[2];
};
static_assert(sizeof(wal_index_header) == 48);

void seal_wal_index_header(wal_index_header& h) {
  const auto* words = reinterpret_cast<const std::uint32_t*>(&h);
  std::uint32_t s1 = 0, s2 = 0;
  for (std::size_t i = 0; i < offsetof(wal_index_header, checksum) / 4; i += 2) {
    s1 += words[i] + s2;
    s2 += words[i + 1] + s1;
  }
  h.checksum[0] = s1;
  h.checksum[1] = s2;
}

// SQLite's WAL lock slots: WRITE, CKPT, RECOVER and the five READ marks.
constexpr int wal_lock_slots = 8;

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

// The file the shim looks for, in a dead generation's storage, to fail every I/O of the
// files opened there (see vfs_shim.cpp).
constexpr const char* dead_marker = ".fwd-sim-dead";

// A FUSE mount whose device is closed at once: every access fails with ENOTCONN, as a
// LiteFS mount does once its LiteFS died. Listed in /proc/mounts as LiteFS's own.
void mount_dead_fuse(const std::filesystem::path& dir) {
  const int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    throw std::system_error(errno, std::generic_category(), "fwd_sim: cannot open /dev/fuse");
  }
  char options[128];
  std::snprintf(options, sizeof options, "fd=%d,rootmode=40000,user_id=0,group_id=0", fd);
  const int rc = ::mount("litefs", dir.c_str(), "fuse", MS_NOSUID | MS_NODEV, options);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    throw std::system_error(err, std::generic_category(),
                            "fwd_sim: cannot mount a dead FUSE filesystem on " + dir.string());
  }
}

// A new filesystem (a new device id) over whatever is mounted on `dir`.
void mount_fresh(const std::filesystem::path& dir) {
  if (::mount("fwd-sim", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0777") != 0) {
    throw std::system_error(errno, std::generic_category(),
                            "fwd_sim: cannot mount a new filesystem on " + dir.string());
  }
}

// Copies the regular files of the directory `from_fd` into `to` (LiteFS's files of a
// node, as its restarted LiteFS serves them again), except the shared-memory index (a
// new one is rebuilt from the WAL), the dead marker, temporaries and `.primary`.
void copy_generation(int from_fd, const std::filesystem::path& to) {
  const int dir_fd = ::openat(from_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) throw std::system_error(errno, std::generic_category(), "fwd_sim: openat");
  DIR* dir = ::fdopendir(dir_fd);
  if (dir == nullptr) {
    ::close(dir_fd);
    throw std::system_error(errno, std::generic_category(), "fwd_sim: fdopendir");
  }
  while (dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name == "." || name == ".." || name == dead_marker || name == ".primary" ||
        name.find(".tmp.") != std::string::npos ||
        (name.size() > 4 && name.compare(name.size() - 4, 4, "-shm") == 0)) {
      continue;
    }
    struct stat st {};
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    const int in = ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open((to / name).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                           st.st_mode & 07777);
    char buf[65536];
    ssize_t n = 0;
    while (in >= 0 && out >= 0 && (n = ::read(in, buf, sizeof buf)) > 0) {
      for (ssize_t done = 0; done < n;) {
        const ssize_t w = ::write(out, buf + done, static_cast<std::size_t>(n - done));
        if (w <= 0) break;
        done += w;
      }
    }
    if (in >= 0) ::close(in);
    if (out >= 0) {
      ::fchmod(out, st.st_mode & 07777);
      ::close(out);
    }
  }
  ::closedir(dir);
}

}  // namespace

std::optional<std::string> dead_mount_unavailable() {
  static const std::optional<std::string> why = []() -> std::optional<std::string> {
    if (::geteuid() != 0) return "not root (mounting needs CAP_SYS_ADMIN)";
    if (::access("/dev/fuse", R_OK | W_OK) != 0) return "no usable /dev/fuse";
    char pattern[] = "/tmp/fwd-sim-probe-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) return "cannot create a temporary directory";
    std::optional<std::string> result;
    try {
      mount_dead_fuse(pattern);
      struct stat st {};
      const bool dead = ::stat(pattern, &st) != 0 && errno == ENOTCONN;
      try {
        mount_fresh(pattern);
        ::umount2(pattern, MNT_DETACH);
      } catch (const std::exception& e) {
        result = e.what();
      }
      ::umount2(pattern, MNT_DETACH);
      if (!dead && !result) result = "a FUSE mount without its daemon does not fail with ENOTCONN";
    } catch (const std::exception& e) {
      result = e.what();
    }
    ::rmdir(pattern);
    return result;
  }();
  return why;
}

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
  alive_.assign(n, true);
  generations_.assign(n, {});
  stacked_mounts_.assign(n, 0);
  lost_primary_at_.assign(n, std::chrono::steady_clock::now());
  pruned_.assign(n, 0);
  ltx::clear(options_.root / ".fwd-sim-ltx");  // histories of an earlier cluster there

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
  if (options_.http) {
    std::vector<http_api::node> nodes;
    for (std::size_t i = 0; i < n; ++i) nodes.push_back({hostname(i), mount(i)});
    char id[24];
    std::snprintf(id, sizeof id, "LFSC%016" PRIX64,
                  static_cast<std::uint64_t>(std::hash<std::string>{}(options_.root.string())));
    http_ = std::make_unique<http_api>(std::move(nodes), options_.database, id);
    publish_views_locked();
  }
}

cluster::~cluster() {
  http_.reset();
  stop_replication();
  for (std::size_t i = 0; i < size(); ++i) {
    for (int k = 0; k < stacked_mounts_[i]; ++k) ::umount2(mount(i).c_str(), MNT_DETACH);
    for (int fd : generations_[i]) ::close(fd);
  }
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

bool cluster::primary_alive_locked() const { return primary_ && alive_[*primary_]; }

void cluster::publish_views_locked() {
  if (!http_) return;
  for (std::size_t i = 0; i < size(); ++i) {
    const bool is_primary = primary_ && *primary_ == i;
    // LiteFS names the primary on replicas only, and only while connected to it.
    const bool knows = !is_primary && primary_alive_locked() && connected_[i];
    http_->set_view(i, is_primary, knows ? hostname(*primary_) : std::string());
  }
}

bool cluster::alive(std::size_t node) const {
  check_node(node);
  std::lock_guard lock(mutex_);
  return alive_[node];
}

std::uint16_t cluster::http_port(std::size_t node) const {
  check_node(node);
  return http_ ? http_->port(node) : 0;
}

void cluster::kill(std::size_t node) {
  check_node(node);
  if (auto why = dead_mount_unavailable()) {
    throw std::runtime_error("fwd_sim: cannot simulate a dead LiteFS mount here: " + *why);
  }
  std::lock_guard lock(mutex_);
  if (!alive_[node]) {
    throw std::invalid_argument("fwd_sim: LiteFS on " + hostname(node) + " is already dead");
  }
  // The storage of the generation that dies, kept for restart() to serve again.
  const int storage = ::open(mount(node).c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (storage < 0) {
    throw std::system_error(errno, std::generic_category(),
                            "fwd_sim: cannot open " + mount(node).string());
  }
  try {
    mount_dead_fuse(mount(node));
  } catch (...) {
    ::close(storage);
    throw;
  }
  generations_[node].push_back(storage);
  ++stacked_mounts_[node];
  alive_[node] = false;
  // Files opened before now fail (the shim sees the marker), and a memory map of the
  // -shm faults (SIGBUS), as on a real dead mount.
  const int marker = ::openat(storage, dead_marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (marker >= 0) ::close(marker);
  const int shm = ::openat(storage, (options_.database + "-shm").c_str(), O_WRONLY | O_CLOEXEC);
  if (shm >= 0) {
    [[maybe_unused]] const int rc = ::ftruncate(shm, 0);
    ::close(shm);
  }
  if (http_) http_->set_alive(node, false);
  if (primary_ && *primary_ == node) {
    const auto now = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < size(); ++i) lost_primary_at_[i] = now;
  }
  write_primary_files_locked();
  publish_views_locked();
}

void cluster::restart(std::size_t node) {
  check_node(node);
  std::lock_guard lock(mutex_);
  if (alive_[node]) return;
  mount_fresh(mount(node));
  ++stacked_mounts_[node];
  copy_generation(generations_[node].back(), mount(node));
  alive_[node] = true;
  const bool is_primary = primary_ && *primary_ == node;
  if (is_primary) {
    change_mode(mount(node), 0777);
    if (std::filesystem::exists(database_path(node))) change_mode(database_path(node), 0666);
    write_file_atomically(mount(node) / ".lag", format_lag(0));
    lag_written_[node] = 0;
    last_seen_txid_ = 0;
    commits_seen_.clear();
  } else {
    change_mode(mount(node), 0555);
    if (std::filesystem::exists(database_path(node))) change_mode(database_path(node), 0444);
    write_file_atomically(mount(node) / ".lag", format_lag(lag_never_synced));
    lag_written_[node] = lag_never_synced;
  }
  if (http_) http_->set_alive(node, true);
  write_primary_files_locked();
  // Replicas catch up at once: a restarted one from its primary, all of them from a
  // restarted primary.
  std::vector<std::size_t> catching_up;
  for (std::size_t i = 0; i < size(); ++i) {
    if (is_primary || i == node) catching_up.push_back(i);
  }
  replicate_locked(catching_up);
  publish_views_locked();
}

void cluster::write_primary_files_locked() {
  for (std::size_t i = 0; i < size(); ++i) {
    if (!alive_[i]) continue;  // a dead mount has no files to change
    if (primary_alive_locked() && i != *primary_ && connected_[i]) {
      write_file_atomically(mount(i) / ".primary", hostname(*primary_) + "\n");
    } else {
      remove_quietly(mount(i) / ".primary");
    }
  }
}

replication_stats cluster::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void cluster::replicate_now() {
  std::lock_guard lock(mutex_);
  std::vector<std::size_t> all(size());
  for (std::size_t i = 0; i < size(); ++i) all[i] = i;
  replicate_locked(all);
}

void cluster::replicate(std::size_t node) {
  check_node(node);
  std::lock_guard lock(mutex_);
  replicate_locked(node);
}

void cluster::replicate_locked(std::size_t node) { replicate_locked(std::vector<std::size_t>{node}); }

void cluster::replicate_locked(const std::vector<std::size_t>& nodes) {
  // Each replica on its own thread, as LiteFS streams to each replica on its own
  // connection: a commit reaches every replica after one shipment's time, not after one
  // per replica. ship_locked() touches only that replica's state and reads the primary's.
  std::vector<shipped> results(nodes.size());
  std::vector<std::exception_ptr> errors(nodes.size());
  const auto ship = [&](std::size_t k) {
    try {
      results[k] = ship_locked(nodes[k]);
    } catch (...) {
      errors[k] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (std::size_t k = 1; k < nodes.size(); ++k) threads.emplace_back(ship, k);
  if (!nodes.empty()) ship(0);
  for (auto& t : threads) t.join();
  std::uint64_t head = 0;
  for (const auto& r : results) {
    if (!r.checked) continue;
    head = std::max(head, r.head);
    if (!r.any) continue;
    ++stats_.shipments;
    if (r.snapshot) ++stats_.snapshots;
    stats_.transactions += r.transactions;
    stats_.pages += r.pages;
    stats_.busy += r.busy;
  }
  if (primary_ && head != 0) prune_history_locked(*primary_, head);
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

cluster::shipped cluster::ship_locked(std::size_t node) {
  shipped result;
  if (!primary_ || node == *primary_ || !connected_[node] || !alive_[node] ||
      !alive_[*primary_]) {
    return result;
  }
  const std::size_t p = *primary_;
  const auto started = std::chrono::steady_clock::now();
  const std::filesystem::path history = ltx::directory_of(database_path(p));
  db_position head = read_position(position_path(p)).value_or(db_position{});
  const std::optional<db_position> local =
      std::filesystem::exists(database_path(node)) ? read_position(position_path(node))
                                                   : std::nullopt;
  std::optional<shipment> s;
  if (local && *local != head) s = collect_records(history, *local, head);
  if (!s && local && *local != head) {
    // The next transaction file is missing: its writer may be writing it right now.
    std::this_thread::sleep_for(std::chrono::microseconds{200});
    head = read_position(position_path(p)).value_or(db_position{});
    if (*local != head) s = collect_records(history, *local, head);
  }
  if (!s && local != head) {
    // Still missing (or the replica is on another history, or has no database): wait
    // for any commit in progress by taking the primary's write lock; if the files are
    // still not there, ship the whole database, read while that lock stops writers, so
    // that it is exactly at the position read.
    // Read-write, so that SQLite can roll back a hot journal that a primary killed
    // mid-transaction left behind (LiteFS recovers the same way before shipping).
    unix_connection frozen(database_path(p), SQLITE_OPEN_READWRITE);
    sqlite3_busy_timeout(frozen.db, 0);  // retried below, more finely than SQLite's handler
    if (!retry_while_busy([&] {
          return sqlite3_exec(frozen.db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
        })) {
      throw std::runtime_error("fwd_sim: replication to " + hostname(node) +
                               " failed: the primary stayed locked (a transaction held it "
                               "for too long)");
    }
    head = read_position(position_path(p)).value_or(db_position{});
    if (local && *local != head) s = collect_records(history, *local, head);
    if ((!s || s->to != head) && local != head) s = take_snapshot(database_path(p), head);
    sqlite3_exec(frozen.db, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  if (s) {
    apply_locked(node, *s);
    result.any = true;
    result.snapshot = s->records.empty();
    result.transactions = s->records.size();
    result.pages = s->pages.size();
    result.busy = std::chrono::steady_clock::now() - started;
  }
  change_mode(database_path(node), 0444);
  if (lag_written_[node] != 0) {
    write_file_atomically(mount(node) / ".lag", format_lag(0));
    lag_written_[node] = 0;
  }
  prune_history_locked(node, head.txid);
  result.checked = true;
  result.head = head.txid;
  return result;
}

void cluster::apply_locked(std::size_t node, const shipment& s) {
  const std::filesystem::path history = ltx::directory_of(database_path(node));
  // The replica's history follows its database: the shipped transaction files, or
  // nothing before a snapshot's position.
  if (s.records.empty()) {
    ltx::clear(history);
    pruned_[node] = s.to.txid;
  }
  for (const auto& r : s.records) {
    ltx::link(ltx::directory_of(database_path(*primary_)), history, r.txid);
  }

  // The replica's own connection, outside the shim (this is LiteFS writing), opens the
  // database as a reader would: it rolls back a hot journal and opens the WAL-index.
  unix_connection target(database_path(node), SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  target.text("PRAGMA schema_version");
  const bool wal = target.text("PRAGMA journal_mode") == "wal";
  sqlite3_file* file = target.main_file();
  const auto failed = [&](const char* what) {
    return std::runtime_error("fwd_sim: replication to " + hostname(node) + " failed: " + what +
                              " (a transaction held the replica for too long; end read "
                              "transactions before replicating from the same thread)");
  };
  volatile void* region = nullptr;
  if (wal) {
    // As LiteFS does: every WAL lock (no writer, no checkpointer, no reader in a
    // transaction), an empty WAL (a former primary's frames are checkpointed first),
    // the pages written to the database file, then a new WAL-index header, so that
    // every connection drops its cache before its next read.
    const bool locked = retry_while_busy([&] {
      if (file->pMethods->xShmLock(file, 0, wal_lock_slots,
                                   SQLITE_SHM_LOCK | SQLITE_SHM_EXCLUSIVE) != SQLITE_OK) {
        return false;
      }
      if (file->pMethods->xShmMap(file, 0, 32768, 0, &region) == SQLITE_OK && region != nullptr) {
        wal_index_header h;
        std::memcpy(&h, const_cast<const void*>(region), sizeof h);
        if (h.max_frame == 0) return true;
      }
      file->pMethods->xShmLock(file, 0, wal_lock_slots, SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE);
      sqlite3_exec(target.db, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
      return false;
    });
    if (!locked) throw failed("the replica's WAL stayed in use");
  } else {
    // Rollback journal: an EXCLUSIVE lock (no reader), as a committing writer takes it.
    const bool locked = retry_while_busy([&] {
      return file->pMethods->xLock(file, SQLITE_LOCK_SHARED) == SQLITE_OK &&
             file->pMethods->xLock(file, SQLITE_LOCK_RESERVED) == SQLITE_OK &&
             file->pMethods->xLock(file, SQLITE_LOCK_EXCLUSIVE) == SQLITE_OK;
    });
    if (!locked) {
      file->pMethods->xUnlock(file, SQLITE_LOCK_NONE);
      throw failed("the replica's readers did not let go");
    }
  }
  const auto unlock = [&] {
    if (wal) {
      file->pMethods->xShmLock(file, 0, wal_lock_slots, SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE);
    } else {
      file->pMethods->xUnlock(file, SQLITE_LOCK_SHARED);
      file->pMethods->xUnlock(file, SQLITE_LOCK_NONE);
    }
  };
  try {
    for (const auto& [page_number, image] : s.pages) {
      const int rc = file->pMethods->xWrite(file, image, static_cast<int>(s.page_size),
                                            sqlite3_int64{page_number - 1} * s.page_size);
      if (rc != SQLITE_OK) throw std::runtime_error(std::string("write: ") + sqlite3_errstr(rc));
    }
    sqlite3_int64 size = 0;
    const sqlite3_int64 end = sqlite3_int64{s.commit} * s.page_size;
    if (file->pMethods->xFileSize(file, &size) == SQLITE_OK && size > end) {
      file->pMethods->xTruncate(file, end);
    }
    if (wal && s.page_size > 0) {
      wal_index_header h;
      std::memcpy(&h, const_cast<const void*>(region), sizeof h);
      h.version = 3007000;
      h.change += 1;
      h.is_init = 1;
      h.page_size = static_cast<std::uint16_t>((s.page_size & 0xff00) | (s.page_size >> 16));
      h.page_count = s.commit;
      seal_wal_index_header(h);
      auto* copies = static_cast<char*>(const_cast<void*>(region));
      std::memcpy(copies + sizeof h, &h, sizeof h);
      file->pMethods->xShmBarrier(file);
      std::memcpy(copies, &h, sizeof h);
    }
    // Published while no reader can start a transaction: once a reader sees this
    // position, its next transaction sees exactly this database.
    write_file_atomically(position_path(node), format_position(s.to));
  } catch (const std::exception& e) {
    unlock();
    throw std::runtime_error("fwd_sim: replication to " + hostname(node) + " failed: " + e.what());
  }
  unlock();
}

void cluster::prune_history_locked(std::size_t node, std::uint64_t head) {
  if (head <= history_retention) return;
  const std::uint64_t upto = head - history_retention;
  if (pruned_[node] >= upto) return;
  const std::filesystem::path history = ltx::directory_of(database_path(node));
  for (std::uint64_t txid = pruned_[node] + 1; txid <= upto; ++txid) {
    ::unlink(ltx::file_of(history, txid).c_str());
  }
  pruned_[node] = upto;
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
    const std::uint64_t shipped = stats_.shipments;
    try {
      replicator_tick_locked(delay);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fwd_sim: replicator: %s\n", e.what());
    }
    // After a tick that shipped, the next commits are likely already there (the primary
    // kept writing while this one shipped): look again soon, as LiteFS streams them.
    // Either way the lock is let go, so that the controller's calls get their turn.
    const auto pause = stats_.shipments != shipped ? std::chrono::microseconds{100}
                                                   : std::chrono::microseconds{1000};
    replicator_cv_.wait_for(lock, pause, [this] { return replicator_stop_; });
  }
}

void cluster::replicator_tick_locked(std::chrono::milliseconds delay) {
  if (!primary_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!alive_[*primary_]) {
    // The primary's LiteFS is dead: its replicas have not heard from it since.
    for (std::size_t i = 0; i < size(); ++i) {
      if (!alive_[i] || i == *primary_) continue;
      const auto since =
          std::chrono::duration_cast<std::chrono::milliseconds>(now - lost_primary_at_[i]);
      const auto lag = static_cast<std::int32_t>(std::clamp<std::int64_t>(since.count(), 1, INT32_MAX - 1));
      if (lag_written_[i] == lag_never_synced || lag_written_[i] < 0 || lag - lag_written_[i] >= 50) {
        write_file_atomically(mount(i) / ".lag", format_lag(lag));
        lag_written_[i] = lag;
      }
    }
    return;
  }
  const db_position head =
      read_position(position_path(*primary_)).value_or(db_position{});
  if (head.txid != last_seen_txid_) {
    // A commit's age counts from when the replicator first saw it.
    commits_seen_.push_back({head.txid, now});
    last_seen_txid_ = head.txid;
  }
  std::uint64_t oldest_needed = head.txid;
  std::vector<std::size_t> to_ship;
  for (std::size_t i = 0; i < size(); ++i) {
    if (i == *primary_ || !connected_[i] || !alive_[i]) continue;
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
      to_ship.push_back(i);
      continue;
    }
    auto pending = std::find_if(commits_seen_.begin(), commits_seen_.end(),
                                [&](const commit_seen& c) { return c.txid > local.txid; });
    if (pending == commits_seen_.end()) {
      to_ship.push_back(i);
      continue;
    }
    const auto age =
        std::chrono::duration_cast<std::chrono::milliseconds>(now - pending->at);
    if (age >= delay) {
      to_ship.push_back(i);
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
  replicate_locked(to_ship);
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
  if (primary_ && alive_[*primary_]) {
    const std::size_t old = *primary_;
    // The old primary loses its lease first: from now on its writes fail.
    change_mode(mount(old), 0555);
    if (std::filesystem::exists(database_path(old))) change_mode(database_path(old), 0444);
  }
  primary_.reset();
  write_primary_files_locked();  // removes every .primary
  publish_views_locked();
}

void cluster::elect(std::size_t node) {
  check_node(node);
  std::lock_guard lock(mutex_);
  if (primary_ && *primary_ == node) return;
  if (primary_) begin_election_locked();
  if (!alive_[node]) {
    throw std::invalid_argument("fwd_sim: LiteFS on " + hostname(node) +
                                " is dead; restart() it before electing it");
  }
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
  publish_views_locked();
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
  if (alive_[node]) remove_quietly(mount(node) / ".primary");
  publish_views_locked();
}

void cluster::reconnect(std::size_t node) {
  check_node(node);
  std::lock_guard lock(mutex_);
  connected_[node] = true;
  write_primary_files_locked();
  publish_views_locked();
}

}  // namespace fwd_sim
