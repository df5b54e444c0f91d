#pragma once

// The settings of the primary's write executor, and a write's identity.

#include <fwd/litefs/types.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/telemetry.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>

namespace fwd::sqlite {

/// A write's identity, fixed across all retries of one call (128 random bits).
using request_id = std::array<std::uint8_t, 16>;

/// The name of the dedup table the write executor keeps in the user's database.
inline constexpr const char* dedup_table_name = "_fwd_requests";

/// Settings of a write_executor. The defaults suit a LiteFS primary.
struct write_options {
  /// Most writes run in one transaction (group commit). At least 1.
  std::size_t max_batch = 128;
  /// How long the writer may wait for a batch to fill once a write is waiting. Zero (the
  /// default) batches only what queued up while the previous batch ran: no added latency.
  std::chrono::microseconds max_batch_delay{0};
  /// Most writes waiting for the writer; beyond it async_write completes with
  /// errc::overloaded (nothing ran). Repeats of a request id already waiting don't count.
  std::size_t max_queue = 10000;
  /// How long BEGIN IMMEDIATE (and every statement) waits for another connection's lock.
  std::chrono::milliseconds busy_timeout{5000};
  /// sqlite3_open_v2 flags.
  int open_flags = default_open_flags;
  /// Dedup rows older than this are pruned: a retry arriving later runs again. Keep it far
  /// longer than any caller's retry deadline.
  std::chrono::milliseconds dedup_retention = std::chrono::hours(24);
  /// Prune (inside a write transaction) after this many commits...
  std::uint64_t prune_every_commits = 1000;
  /// ...or when this long has passed since the last prune, whichever comes first.
  std::chrono::milliseconds prune_interval = std::chrono::minutes(1);
  /// Called once with the new connection, before any write (e.g. PRAGMAs, hooks). An
  /// authorizer set here is replaced: the executor installs its own after on_open (to
  /// refuse transaction control inside a write).
  std::function<void(connection&)> on_open;
  /// Called on the writer thread after each successful COMMIT; its value is passed to
  /// every write of that batch as its position (on LiteFS: the TXID and checksum read
  /// from `<db>-pos`). Without it the position is zero. If it throws, it is zero.
  std::function<litefs::position()> position_after_commit;
  /// Called on the writer thread once a batch holds the write lock, before its first
  /// write: the same position as position_after_commit reads. No other commit can move
  /// it until the batch's own, so a batch that changed the database must find a higher
  /// TXID after its COMMIT. If the position was readable here (TXID above zero) and after
  /// the COMMIT it cannot be read (LiteFS died under the commit) or did not move (LiteFS
  /// did not record the commit, e.g. its lease was lost under it), LiteFS may not keep
  /// the commit: every write the batch applied completes with errc::commit_unknown
  /// ("maybe executed") instead of success, and so does a repeat of its request id that
  /// finds its dedup row (the row may be in this file and in no history LiteFS ships);
  /// once LiteFS's history drops the commit, the row goes and a repeat runs the write
  /// again. Without it, the position after the commit is trusted as is.
  std::function<litefs::position()> position_before_batch;
  /// Run the blocking SQLite work on this executor instead of a thread the write
  /// executor owns. At most one batch runs at a time; a batch may block a thread of this
  /// executor for as long as its writes take (plus max_batch_delay).
  std::optional<boost::asio::any_io_executor> work_executor;
  /// Called on the writer thread before each batch: the generation of the mount the
  /// database lives on (litefs::monitor's `mount_generation`), or nullopt when the mount
  /// cannot be used (LiteFS stopped under the service). A dead mount fails the batch with
  /// errc::not_primary (nothing ran: retryable) and closes the connection, so that nothing
  /// touches the dead mount's memory-mapped `-shm` again (SIGBUS); a new generation (LiteFS
  /// restarted: a new mount) closes the connection and opens the database anew first.
  /// Unset: the connection is kept for the executor's lifetime.
  std::function<std::optional<std::uint64_t>()> mount_generation;
  /// Told of each batch (telemetry::write_batch), on the writer thread.
  telemetry_ptr telemetry;
};

}  // namespace fwd::sqlite
