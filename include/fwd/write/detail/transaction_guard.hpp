#pragma once

// What keeps a write's work from taking transaction control away from the write executor:
// an SQLite authorizer that refuses, while the work runs, BEGIN, COMMIT, ROLLBACK and END,
// and any use of the executor's own savepoint.

#include <sqlite3.h>

#include <fmt/format.h>

#include <iterator>
#include <string>

namespace fwd::sqlite::detail {

/// The executor's savepoint around each write of a batch.
inline constexpr const char* write_savepoint_name = "fwd_write";

/**
 * Installed once per connection (setting an authorizer expires every prepared statement,
 * so it is not set and cleared around each write); it refuses only between begin() and
 * end(). A write's own savepoints (any other name) stay allowed: they nest inside the
 * executor's. SQLite consults it when a statement is prepared (the refusal is
 * SQLITE_AUTH), and the refusal is remembered here, so a write that swallows the error
 * still fails.
 */
class transaction_control_guard {
 public:
  transaction_control_guard() = default;
  transaction_control_guard(const transaction_control_guard&) = delete;
  transaction_control_guard& operator=(const transaction_control_guard&) = delete;

  /// Makes `db` consult this guard (replacing any authorizer set before).
  void install(sqlite3* db) noexcept { sqlite3_set_authorizer(db, &authorize, this); }

  /// The write's work starts: refuse transaction control until end().
  void begin() noexcept {
    active_ = true;
    refused_.clear();
  }

  /// The work is over: returns what was refused ("COMMIT", "RELEASE fwd_write"), empty if
  /// nothing.
  std::string end() noexcept {
    active_ = false;
    std::string refused;
    refused.swap(refused_);
    return refused;
  }

 private:
  static int authorize(void* self, int action, const char* what, const char* name, const char*,
                       const char*) noexcept {
    auto* guard = static_cast<transaction_control_guard*>(self);
    if (!guard->active_) return SQLITE_OK;
    if (action == SQLITE_TRANSACTION) return guard->refuse(what, nullptr);
    if (action == SQLITE_SAVEPOINT && name != nullptr && sqlite3_stricmp(name, write_savepoint_name) == 0)
      return guard->refuse(what, name);
    return SQLITE_OK;
  }

  int refuse(const char* what, const char* name) noexcept {
    try {
      if (refused_.empty()) {
        refused_ = what != nullptr ? what : "transaction control";
        if (name != nullptr) fmt::format_to(std::back_inserter(refused_), " {}", name);
      }
    } catch (...) {
    }
    return SQLITE_DENY;
  }

  bool active_ = false;
  std::string refused_;
};

inline std::string transaction_control_refusal(const std::string& refused) {
  return fmt::format(
      "the write ran '{}': a procedure's writer runs inside fwd's transaction; do not BEGIN, "
      "COMMIT, ROLLBACK or END there, nor touch fwd's savepoint 'fwd_write' (use SAVEPOINTs "
      "of your own names, which nest); nothing of this write was applied, the other writes of "
      "its batch commit",
      refused);
}

}  // namespace fwd::sqlite::detail
