#pragma once

// Schema migrations for a LiteFS cluster: ordered, versioned, run on the primary only
// (through the write path, so exactly once even when every node asks at start), and
// waited for on replicas until the schema version has replicated to them.
//
//   const std::vector<fwd::migration> schema = {
//       {1, "tags", "CREATE TABLE tags(id INTEGER PRIMARY KEY, label TEXT UNIQUE)"},
//       {2, "tags.created", "ALTER TABLE tags ADD COLUMN created INTEGER"}};
//   fwd::migrate(node, schema, std::chrono::seconds(30));   // on every node, at start

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <future>
#include <fwd/write/builtins.hpp>
#include <fmt/format.h>
#include <fwd/error.hpp>
#include <fwd/node.hpp>
#include <memory>
#include <string>
#include <vector>

namespace fwd {

/**
 * The schema version of the local copy of the database (the last migration recorded in
 * `_fwd_migrations`; 0 before any), read with a read-only connection. Throws fwd::error.
 */
inline std::int64_t local_schema_version(const std::filesystem::path& database) {
  sqlite::connection db(database.string(), SQLITE_OPEN_READONLY, std::chrono::milliseconds(1000));
  return detail::schema_version(db.native_handle());
}

/**
 * Brings the cluster's schema to the last of `migrations` (versions > 0, strictly
 * increasing), then waits until the local copy has it.
 *
 * The migrations newer than the database's schema version run on the primary, in
 * order, in one transaction, each recorded in `_fwd_migrations`.
 * Called on a replica, the request is forwarded (and, while no primary exists yet, retried
 * until one does, within `timeout`); the call completes once the local copy shows the
 * version. Every node may call it at start: the primary applies each migration once.
 *
 * Completion signature: `void(boost::system::error_code, std::int64_t version)`. Errors:
 * those of node::async_call (no_primary, timeout, a SQLite code from a failing
 * migration, whose transaction is rolled back), and errc::replication_lag when the
 * migrations committed but this replica had not received them within `timeout` (a retry
 * is safe: applied migrations are skipped).
 *
 * Per-Operation Cancellation: as node::async_call.
 */
template <class Token>
auto async_migrate(node& n, std::vector<migration> migrations, std::chrono::milliseconds timeout,
                   Token&& token) {
  forward_options options;
  options.deadline = std::chrono::steady_clock::now() + timeout;
  options.read_your_writes = true;
  return n.async_call(std::move(options), migrate_procedure, std::move(migrations),
                      std::forward<Token>(token));
}

/// Blocking async_migrate: the schema version, or throws fwd::error.
inline std::int64_t migrate(node& n, std::vector<migration> migrations,
                            std::chrono::milliseconds timeout) {
  forward_options options;
  options.deadline = std::chrono::steady_clock::now() + timeout;
  options.read_your_writes = true;
  const std::int64_t target = migrations.empty() ? 0 : migrations.back().version;
  const std::int64_t version = n.call(std::move(options), migrate_procedure, std::move(migrations));
  // Read-your-writes waited for the TXID; the schema version must now be here too.
  const std::int64_t local = local_schema_version(n.options().database);
  if (local < target) {
    throw fwd::error(make_error_code(errc::replication_lag),
                     fmt::format("the migrations committed on the primary (version {}) but "
                                 "the local copy shows version {}",
                                 version, local));
  }
  return version;
}

}  // namespace fwd
