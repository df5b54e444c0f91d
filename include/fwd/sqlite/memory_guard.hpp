#pragma once

// Keeps a process alive when the filesystem under SQLite's memory maps dies.
//
// In WAL mode SQLite maps the database's `-shm` file (the wal-index) into memory. On a
// LiteFS mount that file lives in FUSE: LiteFS rewrites it as it applies transactions and
// drops its cached pages, so the next access to such a page asks LiteFS for it. If LiteFS
// has died in between (killed, crashed, restarted on top of the old mount), there is no one
// to answer and the kernel sends SIGBUS to the thread that touched the page: by default the
// process dies, whichever thread, whichever connection (a read connection on a replica is
// enough). Checking the mount before each statement narrows that window; it cannot close it.
//
// install_memory_guard() closes it. It registers a SQLite VFS (a thin layer over the default
// one, made the new default) that records every `-shm` region SQLite maps, and a SIGBUS
// handler. A fault inside a recorded region replaces that region with anonymous memory (the
// faulting access then reads zeros) and marks it dead; the connection's next shared-memory
// lock fails with SQLITE_IOERR_SHMLOCK (disk I/O error), so the statement fails and the
// connection must be closed and opened again (on the new mount, once there is one). A fault
// anywhere else goes to the handler installed before (or kills the process as it would
// have). On files in FUSE, SQLite's memory-mapped I/O of the database itself (PRAGMA
// mmap_size) is turned off, for the same reason.
//
// fwd::node installs it (node_options::guard_memory_maps). Connections opened before the
// installation, or with an explicit VFS name ("unix"), are not covered.

#include <sqlite3.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>

namespace fwd::sqlite {

/// The name of the guard's VFS (also the default VFS once installed).
inline constexpr const char* memory_guard_vfs_name = "fwd-guard";

namespace detail::guard {

inline constexpr long fuse_super_magic = 0x65735546;

// The regions SQLite mapped, for the signal handler: read there without locks.
struct region {
  std::atomic<std::uintptr_t> begin{0};
  std::atomic<std::uintptr_t> end{0};
  std::atomic<bool> dead{false};
  int users = 0;  // connections sharing the mapping; under table().lock
};

inline constexpr std::size_t max_regions = 2048;

struct region_table {
  region slots[max_regions];
  std::mutex lock;
  std::atomic<std::uint64_t> faults{0};
  struct sigaction previous {};
  sqlite3_vfs vfs{};
  sqlite3_vfs* real = nullptr;
  sqlite3_io_methods methods[3]{};
  bool installed = false;
};

inline region_table& table() {
  static region_table t;
  return t;
}

// The slot of the mapping at `p` (shared by the connections that map it), or nullptr when
// the table is full (the mapping then goes unguarded).
inline region* record(void* p, int size) {
  auto& t = table();
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard<std::mutex> lock(t.lock);
  region* free_slot = nullptr;
  for (auto& r : t.slots) {
    const auto rb = r.begin.load(std::memory_order_relaxed);
    if (rb == b) {
      ++r.users;
      return &r;
    }
    if (rb == 0 && free_slot == nullptr) free_slot = &r;
  }
  if (free_slot == nullptr) return nullptr;  // the table is full: this mapping goes unguarded
  free_slot->users = 1;
  free_slot->dead.store(false, std::memory_order_relaxed);
  free_slot->end.store(b + static_cast<std::uintptr_t>(size), std::memory_order_relaxed);
  free_slot->begin.store(b, std::memory_order_release);
  return free_slot;
}

inline void forget(region* r) {
  std::lock_guard<std::mutex> lock(table().lock);
  if (--r->users == 0) {
    r->begin.store(0, std::memory_order_release);
    r->end.store(0, std::memory_order_relaxed);
  }
}

// Async-signal-safe: atomics and mmap only.
inline void on_sigbus(int sig, siginfo_t* info, void* context) {
  auto& t = table();
  const auto a = reinterpret_cast<std::uintptr_t>(info->si_addr);
  bool ours = false;
  for (auto& r : t.slots) {
    const auto b = r.begin.load(std::memory_order_acquire);
    if (b == 0 || a < b || a >= r.end.load(std::memory_order_relaxed)) continue;
    // The same pages, now anonymous and zero: the access completes, SQLite finds no valid
    // wal-index header, and the next lock (refused: dead) ends the statement.
    r.dead.store(true, std::memory_order_release);
    // The system call itself: no library wrapper (a sanitizer's, say) runs in the handler.
    ::syscall(SYS_mmap, b, r.end.load(std::memory_order_relaxed) - b, PROT_READ | PROT_WRITE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0L);
    ours = true;
  }
  if (ours) {
    t.faults.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const struct sigaction& prev = t.previous;
  if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
    prev.sa_handler(sig);
    return;
  }
  // Not ours, no handler before: the default action, as if this handler never existed
  // (returning re-executes the access, which faults again).
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGBUS, &dfl, nullptr);
}

// A file of the guard's VFS: the real file follows it in the same allocation.
struct file {
  sqlite3_file base;
  sqlite3_file* real;
  bool fuse;
  int regions;            // how many entries of map are in use
  void* map[64];          // -shm region i's address (regions beyond 64 are not guarded)
  region* slot[64];       // and its slot in the table (nullptr: unguarded)
};

inline sqlite3_file* real_of(sqlite3_file* f) { return reinterpret_cast<file*>(f)->real; }

inline void forget_all(file* g) {
  for (int i = 0; i < g->regions; ++i) {
    if (g->slot[i] != nullptr) forget(g->slot[i]);
    g->slot[i] = nullptr;
    g->map[i] = nullptr;
  }
  g->regions = 0;
}

inline int x_close(sqlite3_file* f) {
  auto* g = reinterpret_cast<file*>(f);
  forget_all(g);
  return g->real->pMethods->xClose(g->real);
}
inline int x_read(sqlite3_file* f, void* b, int n, sqlite3_int64 o) {
  return real_of(f)->pMethods->xRead(real_of(f), b, n, o);
}
inline int x_write(sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
  return real_of(f)->pMethods->xWrite(real_of(f), b, n, o);
}
inline int x_truncate(sqlite3_file* f, sqlite3_int64 size) {
  return real_of(f)->pMethods->xTruncate(real_of(f), size);
}
inline int x_sync(sqlite3_file* f, int flags) { return real_of(f)->pMethods->xSync(real_of(f), flags); }
inline int x_file_size(sqlite3_file* f, sqlite3_int64* size) {
  return real_of(f)->pMethods->xFileSize(real_of(f), size);
}
inline int x_lock(sqlite3_file* f, int l) { return real_of(f)->pMethods->xLock(real_of(f), l); }
inline int x_unlock(sqlite3_file* f, int l) { return real_of(f)->pMethods->xUnlock(real_of(f), l); }
inline int x_check_reserved(sqlite3_file* f, int* out) {
  return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}
inline int x_file_control(sqlite3_file* f, int op, void* arg) {
  auto* g = reinterpret_cast<file*>(f);
  if (op == SQLITE_FCNTL_MMAP_SIZE && g->fuse && arg != nullptr) {
    *static_cast<sqlite3_int64*>(arg) = 0;  // no memory-mapped I/O on FUSE
  }
  return g->real->pMethods->xFileControl(g->real, op, arg);
}
inline int x_sector_size(sqlite3_file* f) { return real_of(f)->pMethods->xSectorSize(real_of(f)); }
inline int x_device_characteristics(sqlite3_file* f) {
  return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}
inline bool any_dead(const file* g) {
  for (int i = 0; i < g->regions; ++i) {
    if (g->slot[i] != nullptr && g->slot[i]->dead.load(std::memory_order_acquire)) return true;
  }
  return false;
}
inline int x_shm_map(sqlite3_file* f, int index, int size, int extend, void volatile** out) {
  auto* g = reinterpret_cast<file*>(f);
  if (any_dead(g)) return SQLITE_IOERR_SHMMAP;
  const int rc = g->real->pMethods->xShmMap(g->real, index, size, extend, out);
  if (rc == SQLITE_OK && *out != nullptr && index >= 0 && index < 64) {
    void* p = const_cast<void*>(*out);
    if (index >= g->regions) {
      for (int i = g->regions; i <= index; ++i) {
        g->map[i] = nullptr;
        g->slot[i] = nullptr;
      }
      g->regions = index + 1;
    }
    if (g->map[index] != p) {
      if (g->slot[index] != nullptr) forget(g->slot[index]);
      g->slot[index] = record(p, size);
      g->map[index] = p;
    }
  }
  return rc;
}
inline int x_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
  auto* g = reinterpret_cast<file*>(f);
  // A dead region may be released (SQLite unlocks on its way out), never taken again.
  if ((flags & SQLITE_SHM_LOCK) != 0 && any_dead(g)) return SQLITE_IOERR_SHMLOCK;
  return g->real->pMethods->xShmLock(g->real, offset, n, flags);
}
inline void x_shm_barrier(sqlite3_file* f) { real_of(f)->pMethods->xShmBarrier(real_of(f)); }
inline int x_shm_unmap(sqlite3_file* f, int delete_flag) {
  auto* g = reinterpret_cast<file*>(f);
  forget_all(g);
  return g->real->pMethods->xShmUnmap(g->real, delete_flag);
}
inline int x_fetch(sqlite3_file* f, sqlite3_int64 o, int n, void** out) {
  auto* g = reinterpret_cast<file*>(f);
  if (g->fuse) {
    *out = nullptr;
    return SQLITE_OK;
  }
  return g->real->pMethods->xFetch(g->real, o, n, out);
}
inline int x_unfetch(sqlite3_file* f, sqlite3_int64 o, void* p) {
  return real_of(f)->pMethods->xUnfetch(real_of(f), o, p);
}

inline sqlite3_vfs* real_vfs(sqlite3_vfs* v) { return static_cast<sqlite3_vfs*>(v->pAppData); }

inline int x_open(sqlite3_vfs* v, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  auto* g = reinterpret_cast<file*>(f);
  auto* real = real_vfs(v);
  g->base.pMethods = nullptr;
  g->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(f) + sizeof(file));
  g->regions = 0;
  g->fuse = false;
  const int rc = real->xOpen(real, name, g->real, flags, out_flags);
  if (rc != SQLITE_OK || g->real->pMethods == nullptr) {
    if (g->real->pMethods != nullptr) {
      g->real->pMethods->xClose(g->real);
      g->real->pMethods = nullptr;
    }
    return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
  }
  if (name != nullptr) {
    struct statfs s {};
    g->fuse = ::statfs(name, &s) == 0 && static_cast<long>(s.f_type) == fuse_super_magic;
  }
  const int version = g->real->pMethods->iVersion;
  g->base.pMethods = &table().methods[(version < 1 ? 1 : version > 3 ? 3 : version) - 1];
  return SQLITE_OK;
}
inline int x_delete(sqlite3_vfs* v, const char* name, int sync_dir) {
  return real_vfs(v)->xDelete(real_vfs(v), name, sync_dir);
}
inline int x_access(sqlite3_vfs* v, const char* name, int flags, int* out) {
  return real_vfs(v)->xAccess(real_vfs(v), name, flags, out);
}
inline int x_full_pathname(sqlite3_vfs* v, const char* name, int n, char* out) {
  return real_vfs(v)->xFullPathname(real_vfs(v), name, n, out);
}
inline void* x_dl_open(sqlite3_vfs* v, const char* name) { return real_vfs(v)->xDlOpen(real_vfs(v), name); }
inline void x_dl_error(sqlite3_vfs* v, int n, char* out) { real_vfs(v)->xDlError(real_vfs(v), n, out); }
inline void (*x_dl_sym(sqlite3_vfs* v, void* h, const char* sym))(void) {
  return real_vfs(v)->xDlSym(real_vfs(v), h, sym);
}
inline void x_dl_close(sqlite3_vfs* v, void* h) { real_vfs(v)->xDlClose(real_vfs(v), h); }
inline int x_randomness(sqlite3_vfs* v, int n, char* out) {
  return real_vfs(v)->xRandomness(real_vfs(v), n, out);
}
inline int x_sleep(sqlite3_vfs* v, int us) { return real_vfs(v)->xSleep(real_vfs(v), us); }
inline int x_current_time(sqlite3_vfs* v, double* out) {
  return real_vfs(v)->xCurrentTime(real_vfs(v), out);
}
inline int x_get_last_error(sqlite3_vfs* v, int n, char* out) {
  return real_vfs(v)->xGetLastError ? real_vfs(v)->xGetLastError(real_vfs(v), n, out) : 0;
}
inline int x_current_time_int64(sqlite3_vfs* v, sqlite3_int64* out) {
  return real_vfs(v)->xCurrentTimeInt64(real_vfs(v), out);
}
inline int x_set_system_call(sqlite3_vfs* v, const char* name, sqlite3_syscall_ptr p) {
  return real_vfs(v)->xSetSystemCall(real_vfs(v), name, p);
}
inline sqlite3_syscall_ptr x_get_system_call(sqlite3_vfs* v, const char* name) {
  return real_vfs(v)->xGetSystemCall(real_vfs(v), name);
}
inline const char* x_next_system_call(sqlite3_vfs* v, const char* name) {
  return real_vfs(v)->xNextSystemCall(real_vfs(v), name);
}

inline bool install() {
  auto& t = table();
  sqlite3_initialize();
  sqlite3_vfs* real = sqlite3_vfs_find(nullptr);
  if (real == nullptr) return false;
  t.real = real;
  for (int i = 0; i < 3; ++i) {
    auto& m = t.methods[i];
    m.iVersion = i + 1;
    m.xClose = x_close;
    m.xRead = x_read;
    m.xWrite = x_write;
    m.xTruncate = x_truncate;
    m.xSync = x_sync;
    m.xFileSize = x_file_size;
    m.xLock = x_lock;
    m.xUnlock = x_unlock;
    m.xCheckReservedLock = x_check_reserved;
    m.xFileControl = x_file_control;
    m.xSectorSize = x_sector_size;
    m.xDeviceCharacteristics = x_device_characteristics;
    if (i >= 1) {
      m.xShmMap = x_shm_map;
      m.xShmLock = x_shm_lock;
      m.xShmBarrier = x_shm_barrier;
      m.xShmUnmap = x_shm_unmap;
    }
    if (i >= 2) {
      m.xFetch = x_fetch;
      m.xUnfetch = x_unfetch;
    }
  }
  auto& v = t.vfs;
  v.iVersion = real->iVersion < 3 ? real->iVersion : 3;
  v.szOsFile = static_cast<int>(sizeof(file)) + real->szOsFile;
  v.mxPathname = real->mxPathname;
  v.zName = memory_guard_vfs_name;
  v.pAppData = real;
  v.xOpen = x_open;
  v.xDelete = x_delete;
  v.xAccess = x_access;
  v.xFullPathname = x_full_pathname;
  v.xDlOpen = real->xDlOpen ? x_dl_open : nullptr;
  v.xDlError = real->xDlError ? x_dl_error : nullptr;
  v.xDlSym = real->xDlSym ? x_dl_sym : nullptr;
  v.xDlClose = real->xDlClose ? x_dl_close : nullptr;
  v.xRandomness = x_randomness;
  v.xSleep = x_sleep;
  v.xCurrentTime = x_current_time;
  v.xGetLastError = x_get_last_error;
  if (v.iVersion >= 2) v.xCurrentTimeInt64 = x_current_time_int64;
  if (v.iVersion >= 3) {
    v.xSetSystemCall = x_set_system_call;
    v.xGetSystemCall = x_get_system_call;
    v.xNextSystemCall = x_next_system_call;
  }
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO;
  ::sigemptyset(&action.sa_mask);
  if (::sigaction(SIGBUS, &action, &t.previous) != 0) return false;
  if (sqlite3_vfs_register(&v, 1) != SQLITE_OK) {
    ::sigaction(SIGBUS, &t.previous, nullptr);
    return false;
  }
  t.installed = true;
  return true;
}

}  // namespace detail::guard

/**
 * Installs the guard (see the top of this header): a SQLite VFS over the current default,
 * made the default, and a SIGBUS handler that turns a fault in SQLite's shared memory into
 * an I/O error of the connection that touched it. Idempotent and thread-safe; true once
 * installed. Call it before opening connections (fwd::node does, unless
 * node_options::guard_memory_maps is false).
 */
inline bool install_memory_guard() {
  static std::once_flag once;
  std::call_once(once, [] { detail::guard::install(); });
  return detail::guard::table().installed;
}

/// How many faults the guard absorbed so far (each one a connection that met a dead mount).
inline std::uint64_t memory_guard_faults() noexcept {
  return detail::guard::table().faults.load(std::memory_order_relaxed);
}

}  // namespace fwd::sqlite
