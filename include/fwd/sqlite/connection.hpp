#pragma once

// RAII over SQLite: a connection (fwd::sqlite::connection). Every failure keeps SQLite's
// extended result code (category "fwd.sqlite") and says which SQL failed and why.

#include <fwd/sqlite/statement.hpp>

#include <sqlite3.h>

#include <chrono>
#include <string>

namespace fwd::sqlite {

inline constexpr int default_open_flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;

/**
 * A SQLite connection (sqlite3*), closed on destruction unless borrowed. Move-only.
 *
 * Extended result codes are always on, so every fwd::error carries e.g. 2067
 * (SQLITE_CONSTRAINT_UNIQUE) rather than 19. Not thread-safe: use a connection from one
 * thread at a time.
 */
class connection {
 public:
  connection() = default;

  /**
   * Opens `path` with `flags` (SQLITE_OPEN_*) and sets the busy timeout.
   * Throws fwd::error (e.g. SQLITE_CANTOPEN, 14) with the path in its message.
   */
  explicit connection(const std::string& path, int flags = default_open_flags,
                      std::chrono::milliseconds busy_timeout = std::chrono::seconds(5)) {
    boost::system::error_code ec;
    diagnostics diag;
    open_impl(path, flags, busy_timeout, ec, diag);
    fwd::detail::throw_on_error(ec, std::move(diag));
  }

  /// Opens like the throwing constructor; on failure returns an empty connection and
  /// sets `ec` (and `diag` to the detailed message: the path and SQLite's reason).
  static connection open(const std::string& path, int flags, std::chrono::milliseconds busy_timeout,
                         boost::system::error_code& ec, diagnostics& diag) {
    connection c;
    c.open_impl(path, flags, busy_timeout, ec, diag);
    return c;
  }
  static connection open(const std::string& path, int flags, std::chrono::milliseconds busy_timeout,
                         boost::system::error_code& ec) {
    diagnostics ignored;
    return open(path, flags, busy_timeout, ec, ignored);
  }

  /// A non-owning wrapper around a handle someone else owns (e.g. the `sqlite3*` a
  /// write_executor passes to a write): it never closes it.
  static connection borrow(sqlite3* db) noexcept {
    connection c;
    c.db_ = db;
    c.owned_ = false;
    return c;
  }

  connection(connection&& other) noexcept
      : db_(std::exchange(other.db_, nullptr)), owned_(std::exchange(other.owned_, false)) {}
  connection& operator=(connection&& other) noexcept {
    if (this != &other) {
      close();
      db_ = std::exchange(other.db_, nullptr);
      owned_ = std::exchange(other.owned_, false);
    }
    return *this;
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection() { close(); }

  sqlite3* native_handle() const noexcept { return db_; }
  explicit operator bool() const noexcept { return db_ != nullptr; }

  /// Closes the connection now (a no-op when empty or borrowed). Unfinalized statements
  /// keep it alive until they are finalized (sqlite3_close_v2).
  void close() noexcept {
    if (db_ != nullptr && owned_) sqlite3_close_v2(db_);
    db_ = nullptr;
    owned_ = false;
  }

  /// How long a statement waits for another connection's lock before SQLITE_BUSY.
  void busy_timeout(std::chrono::milliseconds timeout) noexcept {
    sqlite3_busy_timeout(db_, static_cast<int>(timeout.count()));
  }

  /// Runs one or more SQL statements without results. Throws fwd::error.
  void exec(std::string_view sql) {
    boost::system::error_code ec;
    diagnostics diag;
    exec(sql, ec, diag);
    fwd::detail::throw_on_error(ec, std::move(diag));
  }
  /// Runs one or more SQL statements; on failure sets `ec`.
  void exec(std::string_view sql, boost::system::error_code& ec) noexcept {
    exec_impl(sql, ec, nullptr);
  }
  /// Runs one or more SQL statements; on failure sets `ec` and `diag` (which SQL, and
  /// SQLite's reason).
  void exec(std::string_view sql, boost::system::error_code& ec, diagnostics& diag) noexcept {
    diag.clear();
    exec_impl(sql, ec, &diag);
  }
  /// Transitional: the detail as a string (write/executor.hpp still uses it). Prefer
  /// exec(sql, ec, diagnostics&); this overload goes once its callers moved.
  void exec(std::string_view sql, boost::system::error_code& ec, std::string* message) noexcept {
    diagnostics diag;
    exec_impl(sql, ec, &diag);
    if (ec && message != nullptr) {
      try {
        *message = diag.message();
      } catch (...) {
      }
    }
  }

  /// Prepares one statement. Throws fwd::error (e.g. SQLITE_ERROR for a syntax error).
  statement prepare(std::string_view sql);
  /// Prepares one statement; on failure returns an empty statement and sets `ec`.
  statement prepare(std::string_view sql, boost::system::error_code& ec) noexcept;
  /// Prepares one statement; on failure returns an empty statement and sets `ec` and
  /// `diag` (which SQL, and SQLite's reason).
  statement prepare(std::string_view sql, boost::system::error_code& ec,
                    diagnostics& diag) noexcept;

  std::int64_t last_insert_rowid() const noexcept {
    return static_cast<std::int64_t>(sqlite3_last_insert_rowid(db_));
  }
  /// Rows changed by the last INSERT, UPDATE or DELETE.
  std::int64_t changes() const noexcept {
    return static_cast<std::int64_t>(sqlite3_changes64(db_));
  }
  /// True outside any explicit transaction (SQLite's autocommit mode).
  bool autocommit() const noexcept { return sqlite3_get_autocommit(db_) != 0; }
  /// The last error's text (sqlite3_errmsg).
  std::string_view last_error_message() const noexcept { return sqlite3_errmsg(db_); }

 private:
  void exec_impl(std::string_view sql, boost::system::error_code& ec,
                 diagnostics* diag) noexcept;

  void open_impl(const std::string& path, int flags, std::chrono::milliseconds busy_timeout,
                 boost::system::error_code& ec, diagnostics& diag);

  sqlite3* db_ = nullptr;
  bool owned_ = false;
};

/// How a transaction takes its locks (BEGIN DEFERRED / IMMEDIATE / EXCLUSIVE).

}  // namespace fwd::sqlite

#if !defined(FWD_SEPARATE_COMPILATION)
#include <fwd/sqlite/impl/connection.ipp>
#endif
