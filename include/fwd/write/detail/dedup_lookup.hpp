#pragma once

// Whether a write's dedup row (`_fwd_requests`, keyed by its request id) is in this node's
// copy of the database: the proof that a forwarded write is here when the position's
// checksum cannot tell (the replica went past the write's TXID without seeing it). Read
// only, on a connection opened for the lookup and closed after it (a connection kept
// across a LiteFS restart would point at the dead mount). Internal.

#include <sqlite3.h>

#include <fwd/write/write_options.hpp>

#include <fmt/format.h>

#include <chrono>
#include <string>

namespace fwd::detail {

enum class dedup_row {
  present,  ///< the row is there: the write is in this node's database
  absent,   ///< no such row (or no dedup table yet): the write is not here
  unknown,  ///< the database could not be read (busy, missing, unreadable)
};

/// Looks `id` up in the database at `path`, read-only, waiting at most `busy` for a lock.
/// `why` receives the failure when the answer is `unknown`.
inline dedup_row find_dedup_row(const std::string& path, const sqlite::request_id& id,
                                std::chrono::milliseconds busy, std::string& why) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    why = fmt::format("cannot open {} read-only: {}", path, db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close(db);
    return dedup_row::unknown;
  }
  sqlite3_busy_timeout(db, static_cast<int>(busy.count()));
  sqlite3_stmt* stmt = nullptr;
  const std::string sql = fmt::format("SELECT 1 FROM {} WHERE id = ?1", sqlite::dedup_table_name);
  rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr);
  dedup_row found = dedup_row::unknown;
  if (rc != SQLITE_OK) {
    // No dedup table: no write ever committed in this history.
    const bool no_table = rc == SQLITE_ERROR &&
                          std::string(sqlite3_errmsg(db)).find("no such table") != std::string::npos;
    if (no_table) {
      found = dedup_row::absent;
    } else {
      why = fmt::format("cannot read {} in {}: {}", sqlite::dedup_table_name, path, sqlite3_errmsg(db));
    }
  } else {
    sqlite3_bind_blob(stmt, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
      found = dedup_row::present;
    } else if (rc == SQLITE_DONE) {
      found = dedup_row::absent;
    } else {
      why = fmt::format("cannot read {} in {}: {}", sqlite::dedup_table_name, path, sqlite3_errmsg(db));
    }
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return found;
}

}  // namespace fwd::detail
