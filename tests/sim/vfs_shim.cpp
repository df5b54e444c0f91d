// A SQLite VFS over "unix" that makes simulated LiteFS mounts behave like LiteFS:
// replicas refuse writes with LiteFS's errors, and the primary's <db>-pos advances by
// one TXID per commit, before the commit returns. See litefs_sim.hpp for the rules.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "litefs_sim.hpp"
#include "ltx.hpp"

namespace fwd_sim {
namespace {

sqlite3_vfs* unix_vfs = nullptr;
sqlite3_vfs shim_vfs;

enum class file_kind { other, main_db, main_journal, wal };

// SQLite allocates szOsFile bytes per open file: this header, then the unix VFS's own
// file object, which every I/O call is forwarded to.
struct shim_file {
  sqlite3_file base;
  sqlite3_file* real;
  file_kind kind;
  bool in_mount;
  std::string mount_dir;
  std::string db_path;  // the database this file belongs to
  // The mount generation's storage this file was opened in (O_PATH), to tell when its
  // LiteFS died: cluster::kill() leaves a marker there.
  int storage_fd = -1;
};

constexpr std::size_t real_offset = (sizeof(shim_file) + 15) & ~std::size_t{15};

// What the shim tracks, per database file, to detect commits. SQLite's own locks
// make writers of one database take turns, so one record per path is enough.
struct commit_tracker {
  // Rollback mode: the file change counter (header bytes 24..27) before and after the
  // transaction's writes to page 1. A commit changes it; a rollback restores it.
  bool journal_open = false;
  bool page1_written = false;
  std::uint32_t counter_before = 0;
  std::uint32_t counter_last = 0;
  // Rollback mode: the image of each page the transaction wrote to the database, for its
  // transaction file. A write that is not one whole, aligned page (never seen from
  // SQLite) leaves the transaction without a file: replicas then take a snapshot.
  std::map<std::uint32_t, std::string> pages;
  std::uint32_t page_size = 0;
  bool pages_unusable = false;
  void keep_page(const void* bytes, int amount, sqlite3_int64 offset) {
    const auto size = static_cast<std::uint32_t>(amount);
    const bool whole = amount >= 512 && amount <= 65536 && (size & (size - 1)) == 0 &&
                       offset % amount == 0 && (page_size == 0 || page_size == size);
    if (!whole) {
      pages_unusable = true;
      return;
    }
    page_size = size;
    pages[static_cast<std::uint32_t>(offset / amount) + 1].assign(
        static_cast<const char*>(bytes), size);
  }
  void forget_pages() {
    pages.clear();
    page_size = 0;
    pages_unusable = false;
  }
  // WAL mode: the byte range written to the -wal while the write lock was held.
  bool wal_write_locked = false;
  sqlite3_int64 wal_begin = -1;
  sqlite3_int64 wal_end = 0;
  // What the transaction wrote (pages to the database, or frames to the -wal), hashed:
  // mixed into the checksum, so that two histories that reach one TXID with different
  // contents show different checksums, as LiteFS's checksum of the pages does.
  std::uint64_t content = fnv_offset;

  static constexpr std::uint64_t fnv_offset = 0xcbf29ce484222325ULL;
  void hash(const void* bytes, int amount, sqlite3_int64 offset) noexcept {
    const auto mix = [this](unsigned char b) {
      content ^= b;
      content *= 0x100000001b3ULL;
    };
    for (int i = 0; i < 8; ++i) mix(static_cast<unsigned char>(static_cast<std::uint64_t>(offset) >> (8 * i)));
    const auto* p = static_cast<const unsigned char*>(bytes);
    for (int i = 0; i < amount; ++i) mix(p[i]);
  }
};

std::mutex trackers_mutex;
std::unordered_map<std::string, commit_tracker>& trackers() {
  static auto* map = new std::unordered_map<std::string, commit_tracker>;
  return *map;
}

std::string dirname_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A simulated mount always holds .lag, as a LiteFS mount does.
bool is_mount(const std::string& dir) {
  return ::access((dir + "/.lag").c_str(), F_OK) == 0;
}

// Replica = the mount directory has no write bit (0555); read at each write so that a
// failover takes effect on connections that are already open.
bool is_replica(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return false;
  return (st.st_mode & 0222) == 0;
}

std::uint32_t big_endian32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) |
         (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

// Advances <db>-pos by one TXID, then records the transaction's pages in its
// transaction file (if `pages` holds them). Runs while the committing connection still
// holds SQLite's write lock, which serialises bumps across processes. The position comes
// first: a writer that dies between the two leaves a TXID without a file, which replicas
// cross with a snapshot, never a file that a later commit would contradict.
void bump_position(const std::string& db_path, std::uint64_t content, ltx::record* pages) {
  try {
    const std::filesystem::path pos_file = db_path + "-pos";
    db_position pos = read_position(pos_file).value_or(db_position{});
    const std::uint64_t pre_checksum = pos.checksum;
    pos.txid += 1;
    pos.checksum = next_checksum(pos.checksum ^ content, pos.txid);
    write_file_atomically(pos_file, format_position(pos));
    if (pages != nullptr) {
      pages->txid = pos.txid;
      pages->pre_checksum = pre_checksum;
      pages->post_checksum = pos.checksum;
      ltx::write(ltx::directory_of(db_path), *pages);
    }
  } catch (const std::exception& e) {
    // A C callback must not throw; a lost bump shows up as a failing position check.
    std::fprintf(stderr, "fwd_sim: cannot advance %s-pos: %s\n", db_path.c_str(), e.what());
  }
}

// Reads the transaction whose frames were written to the -wal in [begin, end): whether
// one of them commits and, if so, every page it left (the last frame of a page wins) and
// the database size in pages. Read with a separate descriptor: SQLite holds no POSIX
// locks on the -wal file, so closing it cannot drop any of SQLite's locks.
bool read_wal_transaction(const std::string& wal_path, sqlite3_int64 begin, sqlite3_int64 end,
                          ltx::record& out) {
  const int fd = ::open(wal_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool found = false;
  unsigned char header[32];
  if (::pread(fd, header, sizeof header, 0) == static_cast<ssize_t>(sizeof header)) {
    const sqlite3_int64 page_size = big_endian32(header + 8);
    if (page_size >= 512 && page_size <= 65536) {
      const sqlite3_int64 frame_size = 24 + page_size;
      sqlite3_int64 first = 0;
      if (begin > 32) first = (begin - 32 + frame_size - 1) / frame_size;
      const sqlite3_int64 from = 32 + first * frame_size;
      const sqlite3_int64 frames = end > from ? (end - from) / frame_size : 0;
      std::string bytes(static_cast<std::size_t>(frames * frame_size), '\0');
      const ssize_t got = frames > 0 ? ::pread(fd, bytes.data(), bytes.size(), from) : 0;
      std::map<std::uint32_t, const char*> latest;
      for (sqlite3_int64 i = 0; got >= 0 && (i + 1) * frame_size <= got && !found; ++i) {
        const auto* frame = reinterpret_cast<const unsigned char*>(bytes.data() + i * frame_size);
        const std::uint32_t page_number = big_endian32(frame);
        const std::uint32_t commit = big_endian32(frame + 4);
        if (page_number != 0) latest[page_number] = bytes.data() + i * frame_size + 24;
        if (commit != 0) {
          found = true;
          out.commit = commit;
        }
      }
      if (found) {
        out.page_size = static_cast<std::uint32_t>(page_size);
        for (const auto& [page_number, image] : latest) {
          if (page_number > out.commit) continue;
          out.page_numbers.push_back(page_number);
          out.pages.append(image, static_cast<std::size_t>(page_size));
        }
      }
    }
  }
  ::close(fd);
  return found;
}

shim_file* as_shim(sqlite3_file* file) { return reinterpret_cast<shim_file*>(file); }
sqlite3_file* real_of(sqlite3_file* file) { return as_shim(file)->real; }

// Whether the mount this file was opened on has died (or been replaced since): a file
// descriptor of a dead FUSE mount fails every operation, whatever is mounted there now.
bool on_dead_mount(sqlite3_file* file) {
  const shim_file* f = as_shim(file);
  return f->storage_fd >= 0 && ::faccessat(f->storage_fd, ".fwd-sim-dead", F_OK, 0) == 0;
}

// ---- I/O methods -----------------------------------------------------------------

int shim_close(sqlite3_file* file) {
  shim_file* f = as_shim(file);
  const int rc = f->real->pMethods->xClose(f->real);
  if (f->storage_fd >= 0) ::close(f->storage_fd);
  f->~shim_file();
  return rc;
}

int shim_read(sqlite3_file* file, void* buf, int amount, sqlite3_int64 offset) {
  if (on_dead_mount(file)) return SQLITE_IOERR_READ;
  return real_of(file)->pMethods->xRead(real_of(file), buf, amount, offset);
}

int shim_write(sqlite3_file* file, const void* buf, int amount, sqlite3_int64 offset) {
  shim_file* f = as_shim(file);
  if (on_dead_mount(file)) return SQLITE_IOERR_WRITE;
  if (f->in_mount && f->kind == file_kind::wal) {
    // LiteFS answers EACCES to any write on a replica; in WAL mode SQLite reports
    // that as SQLITE_IOERR_WRITE.
    if (is_replica(f->mount_dir)) return SQLITE_IOERR_WRITE;
    std::lock_guard lock(trackers_mutex);
    commit_tracker& t = trackers()[f->db_path];
    if (t.wal_begin < 0 || offset < t.wal_begin) t.wal_begin = offset;
    if (offset + amount > t.wal_end) t.wal_end = offset + amount;
    if (t.wal_write_locked) t.hash(buf, amount, offset);
  } else if (f->in_mount && f->kind == file_kind::main_db) {
    std::lock_guard lock(trackers_mutex);
    commit_tracker& t = trackers()[f->db_path];
    if (t.journal_open) {
      if (offset != 0 || amount >= 28) t.hash(buf, amount, offset);
      if (offset == 0 && amount >= 28) {
        if (!t.page1_written) {
          unsigned char before[4] = {0, 0, 0, 0};
          // A short read (new, empty database) leaves zeros: counter 0.
          (void)f->real->pMethods->xRead(f->real, before, 4, 24);
          t.counter_before = big_endian32(before);
          t.page1_written = true;
        }
        t.counter_last = big_endian32(static_cast<const unsigned char*>(buf) + 24);
      }
      t.keep_page(buf, amount, offset);
    }
  }
  return f->real->pMethods->xWrite(f->real, buf, amount, offset);
}

int shim_truncate(sqlite3_file* file, sqlite3_int64 size) {
  if (on_dead_mount(file)) return SQLITE_IOERR_TRUNCATE;
  shim_file* f = as_shim(file);
  if (f->in_mount && f->kind == file_kind::main_db) {
    // A transaction that shrinks the database: pages past the end are gone.
    std::lock_guard lock(trackers_mutex);
    commit_tracker& t = trackers()[f->db_path];
    if (t.journal_open && t.page_size > 0) {
      t.pages.erase(t.pages.upper_bound(static_cast<std::uint32_t>(size / t.page_size)),
                    t.pages.end());
    }
  }
  return real_of(file)->pMethods->xTruncate(real_of(file), size);
}
int shim_sync(sqlite3_file* file, int flags) {
  if (on_dead_mount(file)) return SQLITE_IOERR_FSYNC;
  return real_of(file)->pMethods->xSync(real_of(file), flags);
}
int shim_file_size(sqlite3_file* file, sqlite3_int64* size) {
  if (on_dead_mount(file)) return SQLITE_IOERR_FSTAT;
  return real_of(file)->pMethods->xFileSize(real_of(file), size);
}
int shim_lock(sqlite3_file* file, int level) {
  if (on_dead_mount(file)) return SQLITE_IOERR_LOCK;
  return real_of(file)->pMethods->xLock(real_of(file), level);
}
int shim_unlock(sqlite3_file* file, int level) {
  return real_of(file)->pMethods->xUnlock(real_of(file), level);
}
int shim_check_reserved_lock(sqlite3_file* file, int* out) {
  if (on_dead_mount(file)) return SQLITE_IOERR_CHECKRESERVEDLOCK;
  return real_of(file)->pMethods->xCheckReservedLock(real_of(file), out);
}
int shim_file_control(sqlite3_file* file, int op, void* arg) {
  return real_of(file)->pMethods->xFileControl(real_of(file), op, arg);
}
int shim_sector_size(sqlite3_file* file) {
  return real_of(file)->pMethods->xSectorSize(real_of(file));
}
int shim_device_characteristics(sqlite3_file* file) {
  return real_of(file)->pMethods->xDeviceCharacteristics(real_of(file));
}
int shim_shm_map(sqlite3_file* file, int region, int size, int extend, void volatile** out) {
  if (on_dead_mount(file)) return SQLITE_IOERR_SHMMAP;
  return real_of(file)->pMethods->xShmMap(real_of(file), region, size, extend, out);
}

int shim_shm_lock(sqlite3_file* file, int offset, int n, int flags) {
  shim_file* f = as_shim(file);
  // Slot 0 of the shm locks is SQLite's WAL write lock.
  const bool write_lock = offset <= 0 && 0 < offset + n && (flags & SQLITE_SHM_EXCLUSIVE);
  if (!(flags & SQLITE_SHM_UNLOCK) && on_dead_mount(file)) return SQLITE_IOERR_SHMLOCK;
  if (!f->in_mount || f->kind != file_kind::main_db || !write_lock) {
    return f->real->pMethods->xShmLock(f->real, offset, n, flags);
  }
  if (flags & SQLITE_SHM_UNLOCK) {
    commit_tracker session;
    {
      std::lock_guard lock(trackers_mutex);
      commit_tracker& t = trackers()[f->db_path];
      session.wal_write_locked = t.wal_write_locked;
      session.wal_begin = t.wal_begin;
      session.wal_end = t.wal_end;
      session.content = t.content;
      t.wal_write_locked = false;
      t.wal_begin = -1;
      t.wal_end = 0;
    }
    // The transaction's frames and the wal-index header are in place: the commit is
    // visible. Bump while the lock is still held, so bumps follow commit order.
    ltx::record pages;
    if (session.wal_write_locked && session.wal_begin >= 0 && !is_replica(f->mount_dir) &&
        read_wal_transaction(f->db_path + "-wal", session.wal_begin, session.wal_end, pages)) {
      bump_position(f->db_path, session.content, &pages);
    }
    return f->real->pMethods->xShmLock(f->real, offset, n, flags);
  }
  const int rc = f->real->pMethods->xShmLock(f->real, offset, n, flags);
  if (rc == SQLITE_OK) {
    std::lock_guard lock(trackers_mutex);
    commit_tracker& t = trackers()[f->db_path];
    t.wal_write_locked = true;
    t.wal_begin = -1;
    t.wal_end = 0;
    t.content = commit_tracker::fnv_offset;
  }
  return rc;
}

void shim_shm_barrier(sqlite3_file* file) {
  real_of(file)->pMethods->xShmBarrier(real_of(file));
}
int shim_shm_unmap(sqlite3_file* file, int delete_flag) {
  return real_of(file)->pMethods->xShmUnmap(real_of(file), delete_flag);
}
int shim_fetch(sqlite3_file* file, sqlite3_int64 offset, int amount, void** out) {
  return real_of(file)->pMethods->xFetch(real_of(file), offset, amount, out);
}
int shim_unfetch(sqlite3_file* file, sqlite3_int64 offset, void* p) {
  return real_of(file)->pMethods->xUnfetch(real_of(file), offset, p);
}

const sqlite3_io_methods shim_io_methods = {
    3,
    shim_close,
    shim_read,
    shim_write,
    shim_truncate,
    shim_sync,
    shim_file_size,
    shim_lock,
    shim_unlock,
    shim_check_reserved_lock,
    shim_file_control,
    shim_sector_size,
    shim_device_characteristics,
    shim_shm_map,
    shim_shm_lock,
    shim_shm_barrier,
    shim_shm_unmap,
    shim_fetch,
    shim_unfetch,
};

// ---- VFS methods -----------------------------------------------------------------

int shim_open(sqlite3_vfs*, const char* name, sqlite3_file* file, int flags,
              int* out_flags) {
  auto* f = new (file) shim_file{};
  f->base.pMethods = nullptr;
  f->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(file) + real_offset);
  f->real->pMethods = nullptr;
  if (flags & SQLITE_OPEN_MAIN_DB) {
    f->kind = file_kind::main_db;
  } else if (flags & SQLITE_OPEN_MAIN_JOURNAL) {
    f->kind = file_kind::main_journal;
  } else if (flags & SQLITE_OPEN_WAL) {
    f->kind = file_kind::wal;
  } else {
    f->kind = file_kind::other;
  }
  if (name != nullptr && f->kind != file_kind::other) {
    const std::string path = name;
    f->mount_dir = dirname_of(path);
    f->in_mount = is_mount(f->mount_dir);
    f->db_path = path;
    if (f->kind == file_kind::main_journal && ends_with(path, "-journal")) {
      f->db_path.resize(path.size() - 8);
    } else if (f->kind == file_kind::wal && ends_with(path, "-wal")) {
      f->db_path.resize(path.size() - 4);
    }
  }
  const bool creates_journal =
      f->in_mount && f->kind == file_kind::main_journal && (flags & SQLITE_OPEN_CREATE);
  if (creates_journal && is_replica(f->mount_dir)) {
    // What the unix VFS returns when creating the journal fails with EACCES, which
    // is what LiteFS answers on a replica.
    f->~shim_file();
    return SQLITE_READONLY_DIRECTORY;
  }
  const int rc = unix_vfs->xOpen(unix_vfs, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    if (f->real->pMethods != nullptr) f->real->pMethods->xClose(f->real);
    f->~shim_file();
    return rc;
  }
  f->base.pMethods = &shim_io_methods;
  if (f->in_mount) {
    f->storage_fd = ::open(f->mount_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  }
  if (creates_journal) {
    std::lock_guard lock(trackers_mutex);
    commit_tracker& t = trackers()[f->db_path];
    t.journal_open = true;
    t.page1_written = false;
    t.content = commit_tracker::fnv_offset;
    t.forget_pages();
  }
  return SQLITE_OK;
}

int shim_delete(sqlite3_vfs*, const char* name, int sync_dir) {
  const int rc = unix_vfs->xDelete(unix_vfs, name, sync_dir);
  if (rc != SQLITE_OK || name == nullptr) return rc;
  const std::string path = name;
  if (!ends_with(path, "-journal")) return rc;
  const std::string db_path = path.substr(0, path.size() - 8);
  bool committed = false;
  std::uint64_t content = 0;
  ltx::record pages;
  bool have_pages = false;
  {
    std::lock_guard lock(trackers_mutex);
    auto it = trackers().find(db_path);
    if (it == trackers().end() || !it->second.journal_open) return rc;
    commit_tracker& t = it->second;
    committed = t.page1_written && t.counter_last != t.counter_before;
    content = t.content;
    const auto page1 = t.pages.find(1);
    if (committed && !t.pages_unusable && page1 != t.pages.end()) {
      // The database size in pages after the transaction: header bytes 28..31.
      pages.commit = big_endian32(reinterpret_cast<const unsigned char*>(page1->second.data()) + 28);
      pages.page_size = t.page_size;
      for (auto& [page_number, image] : t.pages) {
        if (page_number > pages.commit) continue;
        pages.page_numbers.push_back(page_number);
        pages.pages += image;
      }
      have_pages = pages.commit > 0;
    }
    t.journal_open = false;
    t.page1_written = false;
    t.forget_pages();
  }
  // Deleting the journal is the commit point of journal_mode=DELETE; the writer
  // still holds its EXCLUSIVE lock here.
  const std::string dir = dirname_of(path);
  if (committed && is_mount(dir) && !is_replica(dir)) {
    bump_position(db_path, content, have_pages ? &pages : nullptr);
  }
  return rc;
}

int shim_access(sqlite3_vfs*, const char* name, int flags, int* out) {
  return unix_vfs->xAccess(unix_vfs, name, flags, out);
}
int shim_full_pathname(sqlite3_vfs*, const char* name, int size, char* out) {
  return unix_vfs->xFullPathname(unix_vfs, name, size, out);
}
void* shim_dl_open(sqlite3_vfs*, const char* name) {
  return unix_vfs->xDlOpen(unix_vfs, name);
}
void shim_dl_error(sqlite3_vfs*, int size, char* out) {
  unix_vfs->xDlError(unix_vfs, size, out);
}
void (*shim_dl_sym(sqlite3_vfs*, void* handle, const char* symbol))(void) {
  return unix_vfs->xDlSym(unix_vfs, handle, symbol);
}
void shim_dl_close(sqlite3_vfs*, void* handle) { unix_vfs->xDlClose(unix_vfs, handle); }
int shim_randomness(sqlite3_vfs*, int size, char* out) {
  return unix_vfs->xRandomness(unix_vfs, size, out);
}
int shim_sleep(sqlite3_vfs*, int microseconds) {
  return unix_vfs->xSleep(unix_vfs, microseconds);
}
int shim_current_time(sqlite3_vfs*, double* out) {
  return unix_vfs->xCurrentTime(unix_vfs, out);
}
int shim_get_last_error(sqlite3_vfs*, int size, char* out) {
  return unix_vfs->xGetLastError(unix_vfs, size, out);
}
int shim_current_time_int64(sqlite3_vfs*, sqlite3_int64* out) {
  return unix_vfs->xCurrentTimeInt64(unix_vfs, out);
}
int shim_set_system_call(sqlite3_vfs*, const char* name, sqlite3_syscall_ptr call) {
  return unix_vfs->xSetSystemCall(unix_vfs, name, call);
}
sqlite3_syscall_ptr shim_get_system_call(sqlite3_vfs*, const char* name) {
  return unix_vfs->xGetSystemCall(unix_vfs, name);
}
const char* shim_next_system_call(sqlite3_vfs*, const char* name) {
  return unix_vfs->xNextSystemCall(unix_vfs, name);
}

void register_shim() {
  if (sqlite3_initialize() != SQLITE_OK) {
    throw std::runtime_error("fwd_sim: sqlite3_initialize failed");
  }
  unix_vfs = sqlite3_vfs_find("unix");
  if (unix_vfs == nullptr) {
    throw std::runtime_error("fwd_sim: SQLite has no \"unix\" VFS to wrap");
  }
  shim_vfs = sqlite3_vfs{};
  shim_vfs.iVersion = 3;
  shim_vfs.szOsFile = static_cast<int>(real_offset) + unix_vfs->szOsFile;
  shim_vfs.mxPathname = unix_vfs->mxPathname;
  shim_vfs.zName = vfs_name;
  shim_vfs.xOpen = shim_open;
  shim_vfs.xDelete = shim_delete;
  shim_vfs.xAccess = shim_access;
  shim_vfs.xFullPathname = shim_full_pathname;
  shim_vfs.xDlOpen = shim_dl_open;
  shim_vfs.xDlError = shim_dl_error;
  shim_vfs.xDlSym = shim_dl_sym;
  shim_vfs.xDlClose = shim_dl_close;
  shim_vfs.xRandomness = shim_randomness;
  shim_vfs.xSleep = shim_sleep;
  shim_vfs.xCurrentTime = shim_current_time;
  shim_vfs.xGetLastError = shim_get_last_error;
  shim_vfs.xCurrentTimeInt64 = shim_current_time_int64;
  shim_vfs.xSetSystemCall = shim_set_system_call;
  shim_vfs.xGetSystemCall = shim_get_system_call;
  shim_vfs.xNextSystemCall = shim_next_system_call;
  const int rc = sqlite3_vfs_register(&shim_vfs, 1);
  if (rc != SQLITE_OK) {
    throw std::runtime_error(std::string("fwd_sim: cannot register the VFS: ") +
                             sqlite3_errstr(rc));
  }
}

}  // namespace

void install_vfs() {
  static std::once_flag once;
  std::call_once(once, register_shim);
}

}  // namespace fwd_sim
