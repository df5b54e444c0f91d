#pragma once

// A SQLite VFS over the default one that fails file I/O on demand the way a LiteFS mount
// that went away does: every call on a file fails with ENOTCONN ("Transport endpoint is
// not connected", what the kernel answers once the FUSE daemon is gone), and SQLite
// reports its own code for the call (SQLITE_IOERR_READ, _WRITE, _FSYNC, _LOCK,
// SQLITE_CANTOPEN). The database is a real file; only the failures are injected.
// Open a database through it with `uri(path)` and SQLITE_OPEN_URI.

#include <sqlite3.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

namespace fwd_test {

class fault_vfs {
 public:
  /// What fails while armed.
  enum class fault {
    none,
    everything,  ///< opening, reading, writing, syncing and locking any file (a dead mount)
    wal_sync,    ///< only syncing the `-wal` file: the frames are written, the sync fails
  };

  static fault_vfs& instance() {
    static fault_vfs vfs;
    return vfs;
  }

  void arm(fault f) { fault_.store(f); }
  void disarm() { fault_.store(fault::none); }
  /// Calls failed since the last reset.
  int failures() const { return failures_.load(); }

  static std::string uri(const std::string& path) { return "file:" + path + "?vfs=fwd-fault"; }

 private:
  struct file {
    sqlite3_file base;
    sqlite3_file* real;
    bool wal;
  };

  fault_vfs() {
    real_ = sqlite3_vfs_find(nullptr);
    vfs_ = *real_;
    vfs_.zName = "fwd-fault";
    vfs_.szOsFile = static_cast<int>(sizeof(file)) + real_->szOsFile;
    vfs_.pAppData = this;
    vfs_.xOpen = &x_open;
    vfs_.pNext = nullptr;
    methods_.iVersion = 3;
    methods_.xClose = [](sqlite3_file* f) {
      auto* w = as(f);
      const int rc = w->real->pMethods ? w->real->pMethods->xClose(w->real) : SQLITE_OK;
      return rc;
    };
    methods_.xRead = [](sqlite3_file* f, void* buf, int n, sqlite3_int64 off) {
      if (instance().fails(as(f), false)) return failed(SQLITE_IOERR_READ);
      return real(f)->pMethods->xRead(real(f), buf, n, off);
    };
    methods_.xWrite = [](sqlite3_file* f, const void* buf, int n, sqlite3_int64 off) {
      if (instance().fails(as(f), false)) return failed(SQLITE_IOERR_WRITE);
      return real(f)->pMethods->xWrite(real(f), buf, n, off);
    };
    methods_.xTruncate = [](sqlite3_file* f, sqlite3_int64 size) {
      if (instance().fails(as(f), false)) return failed(SQLITE_IOERR_TRUNCATE);
      return real(f)->pMethods->xTruncate(real(f), size);
    };
    methods_.xSync = [](sqlite3_file* f, int flags) {
      if (instance().fails(as(f), true)) return failed(SQLITE_IOERR_FSYNC);
      return real(f)->pMethods->xSync(real(f), flags);
    };
    methods_.xFileSize = [](sqlite3_file* f, sqlite3_int64* size) {
      if (instance().fails(as(f), false)) return failed(SQLITE_IOERR_FSTAT);
      return real(f)->pMethods->xFileSize(real(f), size);
    };
    methods_.xLock = [](sqlite3_file* f, int level) {
      if (instance().fails(as(f), false)) return failed(SQLITE_IOERR_LOCK);
      return real(f)->pMethods->xLock(real(f), level);
    };
    // Unlocking and closing always work: dropping a connection must be possible.
    methods_.xUnlock = [](sqlite3_file* f, int level) { return real(f)->pMethods->xUnlock(real(f), level); };
    methods_.xCheckReservedLock = [](sqlite3_file* f, int* out) {
      return real(f)->pMethods->xCheckReservedLock(real(f), out);
    };
    methods_.xFileControl = [](sqlite3_file* f, int op, void* arg) {
      return real(f)->pMethods->xFileControl(real(f), op, arg);
    };
    methods_.xSectorSize = [](sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); };
    methods_.xDeviceCharacteristics = [](sqlite3_file* f) {
      return real(f)->pMethods->xDeviceCharacteristics(real(f));
    };
    methods_.xShmMap = [](sqlite3_file* f, int page, int size, int extend, void volatile** out) {
      return real(f)->pMethods->xShmMap(real(f), page, size, extend, out);
    };
    methods_.xShmLock = [](sqlite3_file* f, int offset, int n, int flags) {
      return real(f)->pMethods->xShmLock(real(f), offset, n, flags);
    };
    methods_.xShmBarrier = [](sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); };
    methods_.xShmUnmap = [](sqlite3_file* f, int del) { return real(f)->pMethods->xShmUnmap(real(f), del); };
    methods_.xFetch = [](sqlite3_file* f, sqlite3_int64 off, int n, void** out) {
      *out = nullptr;  // no memory-mapped reads through the shim
      (void)f, (void)off, (void)n;
      return SQLITE_OK;
    };
    methods_.xUnfetch = [](sqlite3_file*, sqlite3_int64, void*) { return SQLITE_OK; };
    sqlite3_vfs_register(&vfs_, 0);
  }

  static file* as(sqlite3_file* f) { return reinterpret_cast<file*>(f); }
  static sqlite3_file* real(sqlite3_file* f) { return as(f)->real; }
  static int failed(int rc) {
    instance().failures_.fetch_add(1);
    errno = ENOTCONN;  // what SQLite's xGetLastError then reports (sqlite3_system_errno)
    return rc;
  }

  bool fails(const file* f, bool syncing) const {
    switch (fault_.load()) {
      case fault::none:
        return false;
      case fault::everything:
        return true;
      case fault::wal_sync:
        return syncing && f->wal;
    }
    return false;
  }

  static int x_open(sqlite3_vfs* vfs, const char* name, sqlite3_file* out, int flags, int* out_flags) {
    auto& self = *static_cast<fault_vfs*>(vfs->pAppData);
    auto* w = as(out);
    std::memset(w, 0, sizeof(file));
    w->real = reinterpret_cast<sqlite3_file*>(w + 1);
    w->wal = (flags & SQLITE_OPEN_WAL) != 0;
    if (self.fault_.load() == fault::everything) {
      self.failures_.fetch_add(1);
      errno = ENOTCONN;
      return SQLITE_CANTOPEN;
    }
    const int rc = self.real_->xOpen(self.real_, name, w->real, flags, out_flags);
    if (rc == SQLITE_OK) {
      out->pMethods = &self.methods_;
    }
    return rc;
  }

  sqlite3_vfs* real_;
  sqlite3_vfs vfs_{};
  sqlite3_io_methods methods_{};
  std::atomic<fault> fault_{fault::none};
  std::atomic<int> failures_{0};
};

}  // namespace fwd_test
