#pragma once

// What a failed statement on the writer's connection means, and what its writes complete
// with. On LiteFS a failure says one of three things:
//   - LiteFS refused the write because this node is a replica (SQLITE_READONLY in
//     rollback-journal mode, SQLITE_IOERR_WRITE with EACCES in WAL mode): nothing was
//     applied; errc::not_primary;
//   - the mount went away under the service (LiteFS stopped or restarted: an I/O error,
//     ENOTCONN/ECONNABORTED underneath): the connection must be closed without touching
//     the database again (no ROLLBACK: closing it is the rollback) and reopened; before
//     COMMIT nothing was committed, so errc::not_primary (retryable);
//   - anything else keeps SQLite's code.
// A failed COMMIT is different: unless the error proves that nothing was committed, the
// writes may have been applied (errc::commit_unknown, "maybe executed").

#include <sqlite3.h>

#include <cerrno>
#include <fmt/format.h>
#include <fwd/error.hpp>
#include <fwd/write/detail/write_job.hpp>
#include <string>
#include <system_error>

namespace fwd::sqlite::detail {

/// What a failed statement says about the node and its connection.
enum class failure_kind {
  replica_refusal,  ///< LiteFS refused the write: this node is not the primary
  mount_lost,       ///< the file system under the database went away
  other,            ///< the statement's own failure (constraint, busy, full, ...)
};

/// `ec` a SQLite error; `system_errno` sqlite3_system_errno() right after it (0: unknown).
inline failure_kind kind_of_failure(const boost::system::error_code& ec, int system_errno) noexcept {
  if (ec.category() != sqlite_category()) return failure_kind::other;
  const int primary = ec.value() & 0xff;
  if (primary == SQLITE_READONLY) return failure_kind::replica_refusal;
  // LiteFS answers a replica's WAL write with EACCES; ENOTCONN there is a dead mount.
  if (ec.value() == SQLITE_IOERR_WRITE && (system_errno == 0 || system_errno == EACCES || system_errno == EPERM)) {
    return failure_kind::replica_refusal;
  }
  if (primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN) return failure_kind::mount_lost;
  return failure_kind::other;
}

inline std::string errno_note(int system_errno) {
  if (system_errno == 0) return {};
  return fmt::format(", {} underneath", std::generic_category().message(system_errno));
}

/// A statement before COMMIT failed with `ec`: nothing of the batch was committed.
inline write_outcome write_failure(const boost::system::error_code& ec, const std::string& message,
                                   int system_errno = 0) {
  switch (kind_of_failure(ec, system_errno)) {
    case failure_kind::replica_refusal:
      return {make_error_code(errc::not_primary),
              fmt::format("{} (SQLite extended code {}): this node is not the primary (a failover "
                          "happened); nothing was applied: rediscover the primary and retry with the "
                          "same request id",
                          message, ec.value())};
    case failure_kind::mount_lost:
      return {make_error_code(errc::not_primary),
              fmt::format("{} (SQLite extended code {}{}): the file system under the database went "
                          "away (on LiteFS: LiteFS stopped or restarted under the service); nothing "
                          "was committed and the connection is reopened: retry with the same request id",
                          message, ec.value(), errno_note(system_errno))};
    case failure_kind::other:
      break;
  }
  return {ec, message};
}

/// COMMIT failed with `ec`. `still_open`: SQLite kept the transaction open (then nothing
/// was committed: e.g. SQLITE_BUSY before the commit could take its lock).
/// `rollback_journal`: the database is in a rollback-journal mode (not WAL).
inline write_outcome commit_failure(const boost::system::error_code& ec, const std::string& message,
                                    int system_errno, bool still_open, bool rollback_journal) {
  const int primary = ec.category() == sqlite_category() ? (ec.value() & 0xff) : 0;
  const failure_kind kind = kind_of_failure(ec, system_errno);
  // Proofs that nothing was committed: SQLite kept the transaction, could not take a
  // lock (in rollback-journal mode COMMIT takes the EXCLUSIVE lock before it writes the
  // database file; in WAL mode an error after the commit, from the automatic checkpoint,
  // may carry the same code), turned COMMIT into a rollback itself (commit hook, deferred
  // foreign key), or LiteFS refused the write (it refuses every write on a replica).
  const bool lock_refused = ec.value() == SQLITE_IOERR_LOCK && rollback_journal;
  if (still_open || primary == SQLITE_BUSY || primary == SQLITE_LOCKED || primary == SQLITE_CONSTRAINT ||
      lock_refused || kind == failure_kind::replica_refusal) {
    write_outcome failure = write_failure(ec, message, system_errno);
    if (failure.ec == ec) failure.result = fmt::format("COMMIT failed: {}; nothing was committed", message);
    return failure;
  }
  return {make_error_code(errc::commit_unknown),
          fmt::format("COMMIT failed ({}, SQLite extended code {}{}) after it may have reached the "
                      "database: each write of the batch may have been applied. Retry only with the "
                      "same request id: if the write did commit, the dedup table answers the retry with "
                      "its stored result instead of running it again",
                      message, ec.value(), errno_note(system_errno))};
}

}  // namespace fwd::sqlite::detail
