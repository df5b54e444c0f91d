#pragma once

// The settings of a forwarder and of one forwarded call, and what a call reports.

#include <fmt/format.h>
#include <fwd/error.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/write/breaker.hpp>
#include <fwd/write/durability.hpp>
#include <fwd/write/executor.hpp>
#include <fwd/write/retry.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#if defined(__linux__)
#include <sys/random.h>
#include <sys/types.h>
#else
#include <openssl/rand.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace fwd {

/// A call's identity, fixed across all its retries (128 bits: see make_request_id()).
using request_id = sqlite::request_id;

namespace detail {

/// Counts fork()s in this process's ancestry: a child bumps it, so every thread's random
/// buffer (copied into the child) is refilled there instead of repeating the parent's bytes.
inline std::atomic<std::uint64_t>& fork_generation() noexcept {
  static std::atomic<std::uint64_t> generation{0};
  return generation;
}

inline void watch_forks() noexcept {
#if defined(__unix__) || defined(__APPLE__)
  static const int registered =
      ::pthread_atfork(nullptr, nullptr, [] { fork_generation().fetch_add(1, std::memory_order_relaxed); });
  (void)registered;
#endif
}

/// Fills `out` with `size` bytes from the operating system's CSPRNG (getrandom(2) on
/// Linux, OpenSSL's RAND_bytes elsewhere). Throws fwd::error if it cannot.
inline void os_random_bytes(std::uint8_t* out, std::size_t size) {
#if defined(__linux__)
  while (size > 0) {
    const ssize_t got = ::getrandom(out, size, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw fwd::error(make_error_code(errc::bad_argument),
                       fmt::format("getrandom(2) failed: {}", std::strerror(errno)));
    }
    out += got;
    size -= static_cast<std::size_t>(got);
  }
#else
  if (::RAND_bytes(out, static_cast<int>(size)) != 1) {
    throw fwd::error(make_error_code(errc::bad_argument), std::string("OpenSSL's RAND_bytes failed"));
  }
#endif
}

/// Per-thread random bytes drawn from the OS in blocks (one getrandom per 25 ids), and
/// dropped after a fork.
class random_buffer {
 public:
  void take(std::uint8_t* out, std::size_t size) {
    const std::uint64_t generation = fork_generation().load(std::memory_order_relaxed);
    if (generation != generation_) {
      used_ = bytes_.size();
      generation_ = generation;
    }
    while (size > 0) {
      if (used_ == bytes_.size()) {
        os_random_bytes(bytes_.data(), bytes_.size());
        used_ = 0;
      }
      const std::size_t n = std::min(size, bytes_.size() - used_);
      std::memcpy(out, bytes_.data() + used_, n);
      // Bytes handed out are not kept in memory.
      std::memset(bytes_.data() + used_, 0, n);
      used_ += n;
      out += n;
      size -= n;
    }
  }

 private:
  std::array<std::uint8_t, 250> bytes_{};
  std::size_t used_ = bytes_.size();
  std::uint64_t generation_ = ~std::uint64_t{0};
};

}  // namespace detail

/**
 * A fresh request id, time-ordered like a UUIDv7: the first 48 bits are the Unix time in
 * milliseconds (big-endian, so ids sort by creation time and the dedup table's B-tree
 * grows at its end), the other 80 bits come from the operating system's CSPRNG (buffered
 * per thread; a child process after fork() never repeats its parent's bytes).
 * Throws fwd::error if the OS has no randomness to give.
 */
inline request_id make_request_id() {
  detail::watch_forks();
  thread_local detail::random_buffer buffer;
  request_id id{};
  const auto ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 std::chrono::system_clock::now().time_since_epoch())
                                                 .count());
  for (std::size_t i = 0; i < 6; ++i) id[i] = static_cast<std::uint8_t>(ms >> (8 * (5 - i)));
  buffer.take(id.data() + 6, id.size() - 6);
  return id;
}

/// How a forwarded write was confirmed on this node (read-your-writes).
enum class write_confirmation {
  none,       ///< not confirmed here (ran locally, read_your_writes off, or it failed)
  checksum,   ///< this node held the primary's TXID with the primary's checksum
  dedup_row,  ///< this node's database holds the write's dedup row (its request id)
};

/// What happened to one call (filled in as the call runs, read after it completes).
struct call_report {
  std::uint32_t attempts = 0;  ///< attempts made (1 = no retry)
  bool ran_locally = false;    ///< the last attempt ran on this node (it was primary)
  std::string peer;            ///< the last peer the call was sent to ("address:port")
  std::uint64_t txid = 0;      ///< the primary's TXID after the commit (0 if unknown)
  std::uint64_t checksum = 0;  ///< the primary's checksum at that TXID (0 if unknown)
  bool waited_for_replication = false;
  write_confirmation confirmation = write_confirmation::none;
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
  /// Overrides forwarder_options::durability for this call: the primary acknowledges the
  /// write only once that many replicas report having it, else the call fails with
  /// errc::not_yet_durable (committed on the primary) a little before its deadline.
  std::optional<fwd::durability> durability;
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
  /// primary's TXID (bounded by the call's deadline), and confirm that the history it
  /// reached holds the write: the primary's checksum at that TXID, or else the write's
  /// dedup row in the local database. A write that is not there (a failover lost it) is
  /// retried with the same request id while the deadline allows.
  bool read_your_writes = true;
  /// What the primary waits for before it acknowledges a write (see fwd::durability).
  fwd::durability durability;
  /// On the primary: a replica that has not reported its position for this long no longer
  /// counts towards durability (nor is waited for by durability::candidates()).
  std::chrono::milliseconds durability_forget_after{10000};
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
