#pragma once

// What every node serves on the write path besides the user's procedures: one SQL
// statement with bound parameters, one statement over many parameter rows (bulk), and
// versioned migrations. Also the envelope of a write's reply (the primary's position, TXID
// and checksum, + the result). Their names start with "fwd_write." because the server keeps "fwd." for the
// procedures it answers itself. Includes <sqlite3.h>: only forwarder.hpp and node.hpp include this
// file.

#include <sqlite3.h>

#include <cstdint>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fmt/format.h>
#include <fwd/detail/wire_bytes.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs/types.hpp>
#include <fwd/procedure.hpp>
#include <string>
#include <string_view>
#include <tuple>
#include <variant>
#include <vector>

namespace fwd {

/// One SQL value: NULL, INTEGER, REAL, TEXT or BLOB.
using sql_value =
    std::variant<std::monostate, std::int64_t, double, std::string, std::vector<std::uint8_t>>;

/// What a built-in statement procedure returns.
struct statement_result {
  static constexpr std::string_view fwd_type_name = "fwd.statement_result";
  std::int64_t changes = 0;            ///< rows changed (summed over all rows for bulk)
  std::int64_t last_insert_rowid = 0;  ///< sqlite3_last_insert_rowid after the (last) row

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive& changes& last_insert_rowid;
  }
  friend bool operator==(const statement_result&, const statement_result&) = default;
};

/// Built-in: runs one statement with bound parameters (?1, ?2, ...) on the primary.
inline const procedure<statement_result(std::string, std::vector<sql_value>)> execute_statement{
    "fwd_write.execute"};

/// Built-in: runs one statement once per parameter row, all in one transaction (bulk insert).
inline const procedure<statement_result(std::string, std::vector<std::vector<sql_value>>)>
    execute_bulk{"fwd_write.execute_bulk"};

/// One schema migration: applied once, in version order, on the primary.
struct migration {
  static constexpr std::string_view fwd_type_name = "fwd.migration";
  std::int64_t version = 0;  ///< strictly increasing, > 0; recorded in _fwd_migrations
  std::string name;          ///< for humans (kept in the _fwd_migrations table)
  std::string sql;           ///< one or more statements

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive& version& name& sql;
  }
};

/// Built-in: applies the migrations newer than the last recorded one; returns the
/// schema version after it.
inline const procedure<std::int64_t(std::vector<migration>)> migrate_procedure{"fwd_write.migrate"};

namespace detail {

inline void bind_sql_values(sqlite::statement& stmt, const std::vector<sql_value>& values) {
  if (static_cast<int>(values.size()) != stmt.parameter_count()) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("the statement has {} parameters but {} values were given: "
                                 "give one value per parameter",
                                 stmt.parameter_count(), values.size()));
  }
  int index = 1;
  for (const auto& value : values) {
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::monostate>) {
            stmt.bind(index, nullptr);
          } else if constexpr (std::is_same_v<T, std::vector<std::uint8_t>>) {
            stmt.bind(index, sqlite::blob_view(v.data(), v.size()));
          } else {
            stmt.bind(index, v);
          }
        },
        value);
    ++index;
  }
}

inline statement_result run_statement(sqlite3* db, const std::string& sql,
                                      const std::vector<sql_value>& values) {
  auto c = sqlite::connection::borrow(db);
  auto stmt = c.prepare(sql);
  bind_sql_values(stmt, values);
  stmt.execute();
  return {c.changes(), c.last_insert_rowid()};
}

inline statement_result run_bulk(sqlite3* db, const std::string& sql,
                                 const std::vector<std::vector<sql_value>>& rows) {
  auto c = sqlite::connection::borrow(db);
  auto stmt = c.prepare(sql);
  statement_result out;
  for (const auto& row : rows) {
    stmt.reset();
    stmt.clear_bindings();
    bind_sql_values(stmt, row);
    stmt.execute();
    out.changes += c.changes();
  }
  out.last_insert_rowid = c.last_insert_rowid();
  return out;
}

// The highest migration recorded in _fwd_migrations (0 when none: the table is missing).
// fwd keeps its own table rather than SQLite's user_version, which applications and
// tools use for their own purposes.
inline std::int64_t schema_version(sqlite3* db) {
  auto c = sqlite::connection::borrow(db);
  boost::system::error_code ec;
  auto stmt = c.prepare("SELECT coalesce(max(version), 0) FROM _fwd_migrations", ec);
  if (ec) return 0;  // no migration ran yet
  stmt.step();
  return stmt.column_int64(0);
}

inline std::int64_t run_migrations(sqlite3* db, const std::vector<migration>& migrations) {
  std::int64_t previous = 0;
  for (const auto& m : migrations) {
    if (m.version <= previous) {
      throw fwd::error(make_error_code(errc::bad_argument),
                       fmt::format("migration versions must be positive and strictly "
                                   "increasing; version {} follows {}",
                                   m.version, previous));
    }
    previous = m.version;
  }
  auto c = sqlite::connection::borrow(db);
  c.exec(
      "CREATE TABLE IF NOT EXISTS _fwd_migrations(version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
      "applied_at INTEGER NOT NULL)");
  std::int64_t current = schema_version(db);
  for (const auto& m : migrations) {
    if (m.version <= current) continue;
    c.exec(m.sql);
    auto record = c.prepare(
        "INSERT INTO _fwd_migrations(version, name, applied_at) VALUES (?1, ?2, "
        "CAST(strftime('%s','now') AS INTEGER))");
    record.bind(1, m.version).bind(2, m.name).execute();
    current = m.version;
  }
  return current;
}

// A write's reply: the primary's position after the commit (its TXID, then its checksum:
// 8 bytes each, little endian; zero when the primary does not know it), then the encoded
// result. The checksum tells the replica whether the history it reaches at that TXID is
// the primary's (a failover can put another transaction at the same TXID).
struct write_reply {
  litefs::position position;
  std::string_view result;
};

inline constexpr std::size_t write_reply_header = 16;

inline std::string encode_write_reply(const litefs::position& position, std::string_view result) {
  std::string out(write_reply_header, '\0');
  detail::store_le(out.data(), position.txid);
  detail::store_le(out.data() + 8, position.checksum);
  out.append(result);
  return out;
}

/// False when `bytes` is shorter than the position.
inline bool decode_write_reply(std::string_view bytes, write_reply& out) noexcept {
  if (bytes.size() < write_reply_header) return false;
  out.position = litefs::position{detail::load_le<std::uint64_t>(bytes.data()),
                                  detail::load_le<std::uint64_t>(bytes.data() + 8)};
  out.result = bytes.substr(write_reply_header);
  return true;
}

}  // namespace detail
}  // namespace fwd
