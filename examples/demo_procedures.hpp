#pragma once

// The procedures of the demo service: declared once, compiled by every node and by the
// programs that drive the nodes (the demo and the cluster tests).

#include <cstdint>
#include <fwd/write/builtins.hpp>
#include <fwd/procedure.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace demo {

/// The demo cluster's secret (every node and the program driving them share it). A real
/// cluster's secret is 32 random bytes or more, from a secret store (fwd::secret_from_env).
inline constexpr const char* default_secret = "fwd-demo-cluster-secret-0123456789abcdef";

/// Appends event (writer, seq) and returns its row id. Each row records the node that ran it.
inline const fwd::procedure<std::int64_t(std::string, std::int64_t)> append{"demo.append"};
/// Inserts a tag (labels are UNIQUE) and returns its row id.
inline const fwd::procedure<std::int64_t(std::string)> add_tag{"demo.add_tag"};
/// Moves `amount` between two accounts in one transaction; fails (and changes nothing) if
/// the source would go negative. Returns the source's new balance.
inline const fwd::procedure<std::int64_t(std::int64_t, std::int64_t, std::int64_t)> transfer{
    "demo.transfer"};

/// The demo's schema, applied with fwd::migrate by every node at start.
inline std::vector<fwd::migration> schema() {
  return {
      {1, "events",
       "CREATE TABLE events(id INTEGER PRIMARY KEY, writer TEXT NOT NULL, seq INTEGER NOT NULL, "
       "ran_on TEXT NOT NULL)"},
      {2, "tags", "CREATE TABLE tags(id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE)"},
      {3, "accounts",
       "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL); "
       "INSERT INTO accounts(id, balance) VALUES (1, 100), (2, 0)"},
  };
}

/// What a node reports after running one call for its driver.
struct control_result {
  static constexpr std::string_view fwd_type_name = "demo.control_result";
  int category = 0;  // 0: success, 1: fwd::errc, 2: SQLite extended code, 3: other
  int code = 0;
  std::string detail;
  std::int64_t value = 0;
  std::uint32_t attempts = 0;
  bool ran_locally = false;
  std::uint64_t txid = 0;        // the primary's TXID after the commit
  std::uint64_t local_txid = 0;  // this node's TXID when the call completed
  std::int64_t visible = -1;     // for append: rows (writer, seq) in the local copy at completion

  template <class Archive>
  void serialize(Archive& a, unsigned /*version*/) {
    a& category& code& detail& value& attempts& ran_locally& txid& local_txid& visible;
  }
};

/// Asks a node to make one call: what ("append", "tag", "transfer", "execute", "bulk",
/// "migrate"), its arguments as text, the call's deadline in ms, read-your-writes.
inline const fwd::procedure<control_result(std::string, std::vector<std::string>, std::int64_t,
                                           bool)>
    control{"demo.control"};

/// A node's counters: [append bodies run here, calls started here, retries, schema version,
/// primary?].
inline const fwd::procedure<std::vector<std::int64_t>()> stats{"demo.stats"};

}  // namespace demo
