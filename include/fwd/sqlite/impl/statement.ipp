#pragma once

// Definitions of <fwd/sqlite/statement.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>

#include <fwd/sqlite/statement.hpp>

namespace fwd::sqlite {

namespace detail {

FWD_DECL std::string describe_failure(sqlite3* db, int rc, std::string_view what,
                                      std::string_view sql) {
  const char* reason = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if (sql.empty()) return fmt::format("{} failed: {}", what, reason);
  return fmt::format("{} failed: {} [in: {}]", what, reason, sql);
}

[[noreturn]] FWD_DECL void throw_failure(sqlite3* db, int rc, std::string_view what,
                                         std::string_view sql) {
  throw fwd::error(make_sqlite_error(extended_code(db, rc)), describe_failure(db, rc, what, sql));
}

}  // namespace detail

FWD_DECL int statement::parameter_index(std::string_view name) const {
  const std::string zname(name);
  const int index = sqlite3_bind_parameter_index(stmt_, zname.c_str());
  if (index == 0) {
    throw fwd::error(make_sqlite_error(SQLITE_RANGE),
                     fmt::format("no SQL parameter named {} [in: {}]", zname, sql()));
  }
  return index;
}
}  // namespace fwd::sqlite
