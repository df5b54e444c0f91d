#pragma once

// RAII over SQLite: a prepared statement (fwd::sqlite::statement).
// Every failure keeps SQLite's extended result code (category "fwd.sqlite") and says
// which SQL failed and why (sqlite3_errmsg).

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fwd/detail/config.hpp>
#include <fwd/error.hpp>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace fwd::sqlite {

namespace detail {

/// "<what> failed: <sqlite3_errmsg> [in: <sql>]": the detail of a thrown fwd::error.
FWD_DECL std::string describe_failure(sqlite3* db, int rc, std::string_view what,
                                      std::string_view sql);

/// The extended result code of a failed call: `rc` when extended codes are on (fwd
/// always turns them on), otherwise the connection's last extended code.
inline int extended_code(sqlite3* db, int rc) noexcept {
  if (db != nullptr && (rc & 0xff) == rc && rc != SQLITE_OK) {
    const int extended = sqlite3_extended_errcode(db);
    if ((extended & 0xff) == rc) return extended;
  }
  return rc;
}

[[noreturn]] FWD_DECL void throw_failure(sqlite3* db, int rc, std::string_view what,
                                         std::string_view sql);

inline void set_error(boost::system::error_code& ec, sqlite3* db, int rc) noexcept {
  ec = make_sqlite_error(extended_code(db, rc));
}

/**
 * Prepared statements kept for reuse on one connection, while a scope of work runs on the
 * thread that holds it (the write executor's writes: a procedure that prepares its SQL on
 * every call finds it prepared already). connection::prepare takes a statement from the
 * thread's active cache when the connection is the cache's, or prepares one and lists it;
 * a listed statement goes back, reset and with its bindings cleared, when it is destroyed
 * inside the scope (outside it, or once the cache forgot it, it is finalized). At most
 * `capacity` statements are listed. Not thread-safe: one thread uses a cache.
 */
class statement_cache {
 public:
  explicit statement_cache(std::size_t capacity = 64) noexcept : capacity_(capacity) {}
  statement_cache(const statement_cache&) = delete;
  statement_cache& operator=(const statement_cache&) = delete;
  ~statement_cache() { clear(); }

  /// Makes `cache` the thread's active cache for statements prepared on `db` until the
  /// scope ends (then the previous one is active again).
  class scope {
   public:
    scope(statement_cache& cache, sqlite3* db) noexcept : previous_(active()) {
      cache.db_ = db;
      active() = &cache;
    }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;
    ~scope() { active() = previous_; }

   private:
    statement_cache* previous_;
  };

  /// The cache active on this thread for `db`, or null.
  static statement_cache* active_for(sqlite3* db) noexcept {
    statement_cache* cache = active();
    return cache != nullptr && db != nullptr && cache->db_ == db ? cache : nullptr;
  }

  /// A listed statement prepared from exactly `sql` and not in use, now in use; or null.
  sqlite3_stmt* take(std::string_view sql) noexcept {
    for (auto& e : entries_) {
      if (e.in_use || e.sql != sql) continue;
      e.in_use = true;
      return e.stmt;
    }
    return nullptr;
  }

  /// Lists `stmt`, just prepared from `sql`, as in use. False when it is not listed (the
  /// cache is full of statements in use, or out of memory): its owner finalizes it.
  bool add(sqlite3_stmt* stmt, std::string_view sql) noexcept {
    // An entry with this address is one whose owner finalized it outside the scope (SQLite
    // reuses the address now): forget it.
    std::erase_if(entries_, [stmt](const entry& e) { return e.stmt == stmt; });
    try {
      if (entries_.size() >= capacity_) {
        const auto idle = std::find_if(entries_.begin(), entries_.end(), [](const entry& e) { return !e.in_use; });
        if (idle == entries_.end()) return false;
        sqlite3_finalize(idle->stmt);
        entries_.erase(idle);
      }
      entries_.push_back(entry{std::string(sql), stmt, true});
      return true;
    } catch (...) {
      return false;
    }
  }

  /// `stmt` is no longer in use: reset, its bindings cleared, it waits for the next take.
  /// False when it is not listed (the cache forgot it): its owner finalizes it.
  bool give_back(sqlite3_stmt* stmt) noexcept {
    for (auto& e : entries_) {
      if (e.stmt != stmt) continue;
      sqlite3_reset(stmt);
      sqlite3_clear_bindings(stmt);
      e.in_use = false;
      return true;
    }
    return false;
  }

  /// Finalizes the statements not in use and forgets every one (before the connection
  /// closes; one still in use is finalized by its owner).
  void clear() noexcept {
    for (auto& e : entries_) {
      if (!e.in_use) sqlite3_finalize(e.stmt);
    }
    entries_.clear();
  }

  std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct entry {
    std::string sql;
    sqlite3_stmt* stmt;
    bool in_use;
  };
  static statement_cache*& active() noexcept {
    thread_local statement_cache* cache = nullptr;
    return cache;
  }

  std::size_t capacity_;
  sqlite3* db_ = nullptr;
  std::vector<entry> entries_;
};

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
  /// Takes `stmt` (prepared on `db`, listed in `cache`), which goes back to `cache` when
  /// destroyed while that cache is active (see detail::statement_cache).
  statement(sqlite3* db, sqlite3_stmt* stmt, detail::statement_cache* cache) noexcept
      : db_(db), stmt_(stmt), cache_(cache) {}
  statement(statement&& other) noexcept
      : db_(std::exchange(other.db_, nullptr)),
        stmt_(std::exchange(other.stmt_, nullptr)),
        cache_(std::exchange(other.cache_, nullptr)) {}
  statement& operator=(statement&& other) noexcept {
    if (this != &other) {
      finalize();
      db_ = std::exchange(other.db_, nullptr);
      stmt_ = std::exchange(other.stmt_, nullptr);
      cache_ = std::exchange(other.cache_, nullptr);
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
  int parameter_index(std::string_view name) const;
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
    if (stmt_ != nullptr) {
      const bool kept = cache_ != nullptr && detail::statement_cache::active_for(db_) == cache_ &&
                        cache_->give_back(stmt_);
      if (!kept) sqlite3_finalize(stmt_);
    }
    stmt_ = nullptr;
    cache_ = nullptr;
  }

  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
  detail::statement_cache* cache_ = nullptr;  // where it goes back to, if it came from one
};

/// Default flags of connection: read-write, create if missing, full mutex off (fwd uses a
/// connection from one thread at a time), extended result codes on.

}  // namespace fwd::sqlite

#if !defined(FWD_SEPARATE_COMPILATION)
#include <fwd/sqlite/impl/statement.ipp>
#endif
