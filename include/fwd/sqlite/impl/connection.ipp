#pragma once

// Definitions of <fwd/sqlite/connection.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>

#include <fwd/sqlite/connection.hpp>

namespace fwd::sqlite {

FWD_DECL statement connection::prepare(std::string_view sql) {
  boost::system::error_code ec;
  statement stmt = prepare(sql, ec);
  if (ec) detail::throw_failure(db_, ec.value(), "prepare", sql);
  return stmt;
}

FWD_DECL statement connection::prepare(std::string_view sql,
                                       boost::system::error_code& ec) noexcept {
  ec.clear();
  // Inside a write executor's write: the statement may be prepared already.
  detail::statement_cache* cache = detail::statement_cache::active_for(db_);
  if (cache != nullptr) {
    if (sqlite3_stmt* kept = cache->take(sql)) return statement(db_, kept, cache);
  }
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    detail::set_error(ec, db_, rc);
    return {};
  }
  if (cache != nullptr && stmt != nullptr && cache->add(stmt, sql)) return statement(db_, stmt, cache);
  return statement(db_, stmt);
}

FWD_DECL statement connection::prepare(std::string_view sql, boost::system::error_code& ec,
                                       diagnostics& diag) noexcept {
  diag.clear();
  statement stmt = prepare(sql, ec);
  if (ec) {
    try {
      diag.assign(detail::describe_failure(db_, ec.value(), "prepare", sql));
    } catch (...) {
    }
  }
  return stmt;
}

FWD_DECL void connection::exec_impl(std::string_view sql, boost::system::error_code& ec,
                                    diagnostics* diag) noexcept {
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
    if (diag != nullptr) {
      try {
        diag->assign(detail::describe_failure(db_, rc, "exec", sql));
      } catch (...) {
      }
    }
  }
}

FWD_DECL void connection::open_impl(const std::string& path, int flags,
                                    std::chrono::milliseconds busy_timeout,
                                    boost::system::error_code& ec, diagnostics& diag) {
  ec.clear();
  diag.clear();
  close();
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    const int code = db != nullptr ? sqlite3_extended_errcode(db) : rc;
    ec = make_sqlite_error(code);
    diag.assign(fmt::format(
        "opening SQLite database {} failed: {}: check that the path exists and is accessible", path,
        db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    sqlite3_close_v2(db);
    return;
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, static_cast<int>(busy_timeout.count()));
  db_ = db;
  owned_ = true;
}
}  // namespace fwd::sqlite
