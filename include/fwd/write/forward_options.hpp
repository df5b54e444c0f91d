#pragma once

// The settings of a forwarder and of one forwarded call, and what a call reports.

#include <fwd/error.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/write/breaker.hpp>
#include <fwd/write/executor.hpp>
#include <fwd/write/retry.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>

namespace fwd {

/// A call's identity, fixed across all its retries (128 random bits).
using request_id = sqlite::request_id;

/// A fresh random request id (128 bits from a per-thread generator seeded from the OS).
inline request_id make_request_id() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device(), device(), device()};
    return std::mt19937_64(seed);
  }();
  request_id id{};
  for (std::size_t i = 0; i < id.size(); i += 8) {
    const std::uint64_t word = rng();
    for (std::size_t j = 0; j < 8; ++j) id[i + j] = static_cast<std::uint8_t>(word >> (8 * j));
  }
  return id;
}

/// What happened to one call (filled in as the call runs, read after it completes).
struct call_report {
  std::uint32_t attempts = 0;  ///< attempts made (1 = no retry)
  bool ran_locally = false;    ///< the last attempt ran on this node (it was primary)
  std::string peer;            ///< the last peer the call was sent to ("address:port")
  std::uint64_t txid = 0;      ///< the primary's TXID after the commit (0 if unknown)
  bool waited_for_replication = false;
  request_id id{};  ///< the call's request id
};

/// Per-call settings of a forwarded write.
struct forward_options {
  /// When the call gives up (default: now + forwarder_options::default_deadline).
  std::optional<std::chrono::steady_clock::time_point> deadline;
  /// The request id (default: fresh random). Give the same id to repeat a call safely.
  std::optional<request_id> id;
  /// Overrides forwarder_options::read_your_writes for this call.
  std::optional<bool> read_your_writes;
  /**
   * Where the call's failure details go (the remote exception, SQLite's message, what
   * was tried on which peer), like boost::mysql::diagnostics. Owned by the caller and
   * must outlive the operation. Cleared when the call is initiated; on failure, filled
   * before the completion handler is invoked; empty after a success. Null: the details
   * are dropped. The blocking forms throw fwd::error carrying them in get_diagnostics().
   */
  fwd::diagnostics* diagnostics = nullptr;
  /// Receives what happened (attempts, where it ran, TXID).
  std::shared_ptr<call_report> report;
};

/// How a forwarder finds, reaches and waits for the primary.
struct forwarder_options {
  std::filesystem::path mount;  ///< the LiteFS mount (holds `<db>-pos`)
  std::string database_name;    ///< the database's file name in the mount
  std::chrono::milliseconds default_deadline{5000};
  retry_policy retry;
  breaker_options breaker;
  /// Wait, after a forwarded write, until this replica's `<db>-pos` reaches the
  /// primary's TXID (bounded by the call's deadline).
  bool read_your_writes = true;
  /// How often the replication wait re-reads `<db>-pos` (LiteFS's own proxy: 1 ms), when
  /// no `monitor` is given.
  std::chrono::milliseconds replication_poll{1};
  /// This node's LiteFS monitor: read-your-writes waits on it (one shared poll of the
  /// mount, or LiteFS's events) instead of a poll per call.
  std::shared_ptr<litefs::monitor> monitor;
  /// The local role (default: litefs::current_role(mount)); the server side checks it
  /// before running any write.
  std::function<litefs::role()> role;
  telemetry_ptr telemetry;
};

}  // namespace fwd
