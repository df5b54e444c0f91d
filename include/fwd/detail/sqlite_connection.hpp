#pragma once

// RAII over SQLite: fwd::sqlite::connection, statement, transaction and savepoint.
// Every failure keeps SQLite's extended result code (category "fwd.sqlite") and says
// which SQL failed and why (sqlite3_errmsg).

#include <sqlite3.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fwd/error.hpp>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace fwd::sqlite {

namespace detail {

/// "<what> failed: <sqlite3_errmsg> [in: <sql>]": the detail of a thrown fwd::error.
inline std::string describe_failure(sqlite3* db, int rc, std::string_view what,
                                    std::string_view sql) {
  std::string text(what);
  text += " failed: ";
  text += db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if (!sql.empty()) {
    text += " [in: ";
    text += sql;
    text += "]";
  }
  return text;
}

/// The extended result code of a failed call: `rc` when extended codes are on (fwd
/// always turns them on), otherwise the connection's last extended code.
inline int extended_code(sqlite3* db, int rc) noexcept {
  if (db != nullptr && (rc & 0xff) == rc && rc != SQLITE_OK) {
    const int extended = sqlite3_extended_errcode(db);
    if ((extended & 0xff) == rc) return extended;
  }
  return rc;
}

[[noreturn]] inline void throw_failure(sqlite3* db, int rc, std::string_view what,
                                       std::string_view sql) {
  throw fwd::error(make_sqlite_error(extended_code(db, rc)), describe_failure(db, rc, what, sql));
}

inline void set_error(boost::system::error_code& ec, sqlite3* db, int rc) noexcept {
  ec = make_sqlite_error(extended_code(db, rc));
}

}  // namespace detail

/// Bytes to bind as a BLOB (distinct from text, which binds as TEXT).
struct blob_view {
  const void* data = nullptr;
  std::size_t size = 0;

  blob_view() = default;
  blob_view(const void* d, std::size_t n) noexcept : data(d), size(n) {}
  blob_view(std::span<const std::uint8_t> bytes) noexcept  // NOLINT: implicit on purpose
      : data(bytes.data()), size(bytes.size()) {}
  blob_view(std::span<const std::byte> bytes) noexcept  // NOLINT: implicit on purpose
      : data(bytes.data()), size(bytes.size()) {}
  /// Any contiguous range of bytes (std::vector<std::uint8_t>, std::array<std::byte, N>, ...).
  template <std::ranges::contiguous_range Range>
  requires(sizeof(std::ranges::range_value_t<Range>) == 1 &&
           !std::is_same_v<std::remove_cv_t<std::ranges::range_value_t<Range>>, char>)
      blob_view(const Range& bytes)
  noexcept  // NOLINT: implicit on purpose
      : data(std::ranges::data(bytes)), size(std::ranges::size(bytes)) {}
};

class connection;

/**
 * A prepared statement (sqlite3_stmt*), finalized on destruction. Move-only.
 *
 * Bind indexes start at 1, column indexes at 0 (as in SQLite). Every bind copies its
 * value (SQLITE_TRANSIENT), so arguments need not outlive the call. Views returned by
 * column_text/column_blob stay valid until the next step, reset or destruction.
 * Not thread-safe: use a statement from one thread at a time, like its connection.
 */
class statement {
 public:
  statement() = default;
  /// Takes ownership of `stmt` (prepared on `db`).
  statement(sqlite3* db, sqlite3_stmt* stmt) noexcept : db_(db), stmt_(stmt) {}
  statement(statement&& other) noexcept
      : db_(std::exchange(other.db_, nullptr)), stmt_(std::exchange(other.stmt_, nullptr)) {}
  statement& operator=(statement&& other) noexcept {
    if (this != &other) {
      finalize();
      db_ = std::exchange(other.db_, nullptr);
      stmt_ = std::exchange(other.stmt_, nullptr);
    }
    return *this;
  }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  ~statement() { finalize(); }

  sqlite3_stmt* native_handle() const noexcept { return stmt_; }
  explicit operator bool() const noexcept { return stmt_ != nullptr; }
  /// The SQL text this statement was prepared from.
  std::string_view sql() const noexcept {
    const char* text = stmt_ != nullptr ? sqlite3_sql(stmt_) : nullptr;
    return text != nullptr ? std::string_view(text) : std::string_view();
  }

  // --- binding (throw fwd::error on failure, e.g. SQLITE_RANGE for a bad index) ---

  statement& bind(int index, std::nullptr_t) {
    return check(sqlite3_bind_null(stmt_, index), "bind");
  }
  template <class Integer>
  requires std::is_integral_v<Integer> statement& bind(int index, Integer value) {
    return check(sqlite3_bind_int64(stmt_, index, static_cast<sqlite3_int64>(value)), "bind");
  }
  statement& bind(int index, double value) {
    return check(sqlite3_bind_double(stmt_, index, value), "bind");
  }
  statement& bind(int index, std::string_view text) {
    return check(
        sqlite3_bind_text64(stmt_, index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8),
        "bind");
  }
  statement& bind(int index, const char* text) { return bind(index, std::string_view(text)); }
  statement& bind(int index, const std::string& text) {
    return bind(index, std::string_view(text));
  }
  statement& bind(int index, blob_view blob) {
    // A zero-length blob must still bind as a BLOB, not NULL: give SQLite a non-null pointer.
    static const char empty = 0;
    return check(sqlite3_bind_blob64(stmt_, index, blob.size != 0 ? blob.data : &empty, blob.size,
                                     SQLITE_TRANSIENT),
                 "bind");
  }

  /// Binds by parameter name, including its prefix (":id", "@id", "$id").
  template <class T>
  statement& bind(std::string_view name, T&& value) {
    return bind(parameter_index(name), std::forward<T>(value));
  }
  template <class T>
  statement& bind(const char* name, T&& value) {
    return bind(parameter_index(name), std::forward<T>(value));
  }

  /// The index of a named parameter; throws fwd::error(SQLITE_RANGE) if there is none.
  int parameter_index(std::string_view name) const {
    const std::string zname(name);
    const int index = sqlite3_bind_parameter_index(stmt_, zname.c_str());
    if (index == 0) {
      throw fwd::error(make_sqlite_error(SQLITE_RANGE),
                       "no SQL parameter named " + zname + " [in: " + std::string(sql()) + "]");
    }
    return index;
  }
  int parameter_count() const noexcept { return sqlite3_bind_parameter_count(stmt_); }
  statement& clear_bindings() {
    sqlite3_clear_bindings(stmt_);
    return *this;
  }

  // --- execution ---

  /// Runs one step: true when a row is available, false when done. Throws fwd::error.
  bool step() {
    boost::system::error_code ec;
    const bool row = step(ec);
    if (ec) detail::throw_failure(db_, ec.value(), "step", sql());
    return row;
  }
  /// Runs one step: true when a row is available; on failure false with `ec` set.
  bool step(boost::system::error_code& ec) noexcept {
    ec.clear();
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    detail::set_error(ec, db_, rc);
    return false;
  }
  /// Steps until done (for statements that return no rows, or whose rows are ignored).
  void execute() {
    while (step()) {
    }
  }
  /// Makes the statement ready to run again; bindings are kept.
  statement& reset() noexcept {
    sqlite3_reset(stmt_);
    return *this;
  }

  // --- columns of the current row ---

  int column_count() const noexcept { return sqlite3_column_count(stmt_); }
  std::string_view column_name(int column) const noexcept {
    const char* name = sqlite3_column_name(stmt_, column);
    return name != nullptr ? std::string_view(name) : std::string_view();
  }
  /// SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB or SQLITE_NULL.
  int column_type(int column) const noexcept { return sqlite3_column_type(stmt_, column); }
  bool column_is_null(int column) const noexcept { return column_type(column) == SQLITE_NULL; }
  std::int64_t column_int64(int column) const noexcept {
    return static_cast<std::int64_t>(sqlite3_column_int64(stmt_, column));
  }
  double column_double(int column) const noexcept { return sqlite3_column_double(stmt_, column); }
  std::string_view column_text(int column) const noexcept {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    const int size = sqlite3_column_bytes(stmt_, column);
    return text != nullptr ? std::string_view(text, static_cast<std::size_t>(size))
                           : std::string_view();
  }
  std::span<const std::uint8_t> column_blob(int column) const noexcept {
    const auto* data = static_cast<const std::uint8_t*>(sqlite3_column_blob(stmt_, column));
    const int size = sqlite3_column_bytes(stmt_, column);
    return data != nullptr ? std::span<const std::uint8_t>(data, static_cast<std::size_t>(size))
                           : std::span<const std::uint8_t>();
  }

 private:
  statement& check(int rc, std::string_view what) {
    if (rc != SQLITE_OK) detail::throw_failure(db_, rc, what, sql());
    return *this;
  }
  void finalize() noexcept {
    if (stmt_ != nullptr) sqlite3_finalize(stmt_);
    stmt_ = nullptr;
  }

  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

/// Default flags of connection: read-write, create if missing, full mutex off (fwd uses a
/// connection from one thread at a time), extended result codes on.
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
    std::string message;
    open(path, flags, busy_timeout, ec, &message);
    if (ec) throw fwd::error(ec, message);
  }

  /// Opens like the throwing constructor; on failure returns an empty connection and sets ec.
  static connection open(const std::string& path, int flags, std::chrono::milliseconds busy_timeout,
                         boost::system::error_code& ec) {
    connection c;
    c.open(path, flags, busy_timeout, ec, nullptr);
    return c;
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
    std::string message;
    exec(sql, ec, &message);
    if (ec) throw fwd::error(ec, message);
  }
  /// Runs one or more SQL statements; on failure sets `ec` (and `message`, if given).
  void exec(std::string_view sql, boost::system::error_code& ec,
            std::string* message = nullptr) noexcept {
    ec.clear();
    // sqlite3_exec needs a NUL-terminated string; SQL text is short, the copy is cheap.
    std::string zsql;
    try {
      zsql.assign(sql);
    } catch (...) {
      ec = make_sqlite_error(SQLITE_NOMEM);
      return;
    }
    const int rc = sqlite3_exec(db_, zsql.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      detail::set_error(ec, db_, rc);
      if (message != nullptr) {
        try {
          *message = detail::describe_failure(db_, rc, "exec", sql);
        } catch (...) {
        }
      }
    }
  }

  /// Prepares one statement. Throws fwd::error (e.g. SQLITE_ERROR for a syntax error).
  statement prepare(std::string_view sql) {
    sqlite3_stmt* stmt = nullptr;
    const int rc =
        sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
    if (rc != SQLITE_OK) detail::throw_failure(db_, rc, "prepare", sql);
    return statement(db_, stmt);
  }
  /// Prepares one statement; on failure returns an empty statement and sets `ec`.
  statement prepare(std::string_view sql, boost::system::error_code& ec) noexcept {
    ec.clear();
    sqlite3_stmt* stmt = nullptr;
    const int rc =
        sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
    if (rc != SQLITE_OK) {
      detail::set_error(ec, db_, rc);
      return {};
    }
    return statement(db_, stmt);
  }

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
  void open(const std::string& path, int flags, std::chrono::milliseconds busy_timeout,
            boost::system::error_code& ec, std::string* message) {
    ec.clear();
    close();
    sqlite3* db = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
    if (rc != SQLITE_OK) {
      const int code = db != nullptr ? sqlite3_extended_errcode(db) : rc;
      ec = make_sqlite_error(code);
      if (message != nullptr) {
        *message = "opening SQLite database " + path +
                   " failed: " + (db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc)) +
                   ": check that the path exists and is accessible";
      }
      sqlite3_close_v2(db);
      return;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, static_cast<int>(busy_timeout.count()));
    db_ = db;
    owned_ = true;
  }

  sqlite3* db_ = nullptr;
  bool owned_ = false;
};

/// How a transaction takes its locks (BEGIN DEFERRED / IMMEDIATE / EXCLUSIVE).
enum class transaction_kind { deferred, immediate, exclusive };

/**
 * A transaction guard: BEGIN on construction, ROLLBACK on destruction unless commit()
 * (or rollback()) was called. Defaults to BEGIN IMMEDIATE, which takes the write lock at
 * once, so a write never fails half-way with SQLITE_BUSY on lock upgrade.
 */
class transaction {
 public:
  explicit transaction(connection& conn, transaction_kind kind = transaction_kind::immediate)
      : conn_(&conn) {
    switch (kind) {
      case transaction_kind::deferred:
        conn.exec("BEGIN DEFERRED");
        break;
      case transaction_kind::immediate:
        conn.exec("BEGIN IMMEDIATE");
        break;
      case transaction_kind::exclusive:
        conn.exec("BEGIN EXCLUSIVE");
        break;
    }
    active_ = true;
  }
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;
  ~transaction() {
    if (active_ && !conn_->autocommit()) {
      boost::system::error_code ignored;
      conn_->exec("ROLLBACK", ignored);
    }
  }

  /// COMMIT. On failure throws fwd::error; the destructor then rolls back.
  void commit() {
    conn_->exec("COMMIT");
    active_ = false;
  }
  /// ROLLBACK now.
  void rollback() {
    active_ = false;
    if (!conn_->autocommit()) conn_->exec("ROLLBACK");
  }
  bool active() const noexcept { return active_; }

 private:
  connection* conn_;
  bool active_ = false;
};

}  // namespace fwd::sqlite
