#pragma once

// What a node says about itself: fwd::status_report, returned by node::status() and by
// the built-in procedure `fwd.status` that every node serves to its authenticated peers
// (fwdctl asks each member for it). Also the bounded log of a node's recent errors.

#include <fwd/procedure.hpp>
#include <fwd/version.hpp>


#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace fwd {

/// One error a node saw recently.
struct status_error {
  static constexpr std::string_view fwd_type_name = "fwd.status_error";
  std::int64_t unix_ms = 0;  ///< when (the node's clock, milliseconds since the epoch)
  std::string what;          ///< e.g. "write shop.order: timeout: ..."

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & unix_ms & what;
  }
};

/// A member as a node's membership lists it.
struct status_member {
  static constexpr std::string_view fwd_type_name = "fwd.status_member";
  std::string host;     ///< the DNS name it was found under, or a static member's label
  std::string address;  ///< its fwd address, "ip:port" or "[ipv6]:port"

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & host & address;
  }
  friend bool operator==(const status_member&, const status_member&) = default;
};

/**
 * A node's state at one moment. Cheap to make (atomic loads and a few short locks, no
 * I/O); see node::status().
 */
struct status_report {
  static constexpr std::string_view fwd_type_name = "fwd.status_report";

  std::string node_name;        ///< node_options::name
  std::string litefs_hostname;  ///< this node's LiteFS lease hostname
  std::string role;             ///< "primary", "replica", "unknown" or "not_litefs"
  std::string role_reason;      ///< what decided the role (or what failed)
  /// The primary's LiteFS hostname as this node sees it: its own when primary, the
  /// mount's `.primary` when replica, empty when unknown.
  std::string primary_hostname;
  /// The primary's fwd address as discovery last found it ("local": this node; empty:
  /// not found yet). May be older than discovery's TTL.
  std::string primary_address;
  std::vector<status_member> members;  ///< the member set, sorted by address
  /// The database's position (`<db>-pos`) as the node's LiteFS monitor last read it: at
  /// most node_options::litefs_poll old.
  std::uint64_t txid = 0;
  std::uint64_t checksum = 0;
  std::int64_t lag_ms = 0;             ///< replication lag LiteFS reports (`.lag`)
  bool mount_dead = false;             ///< LiteFS stopped under the service
  std::uint64_t writer_queue = 0;      ///< writes queued for this node's writer thread
  std::uint64_t calls_in_flight = 0;   ///< calls started on this node, not completed yet
  std::uint64_t requests_in_flight = 0;  ///< requests from peers this node is running
  std::uint64_t connections = 0;       ///< connections this node's server holds open
  std::vector<status_error> last_errors;  ///< the most recent errors, oldest first
  std::string version = FWD_VERSION_STRING;  ///< fwd's version on that node
  std::int64_t unix_ms = 0;  ///< the node's clock when it made the report (for clock skew)
  bool started = false;      ///< start() has completed and stop() has not been called

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & node_name & litefs_hostname & role & role_reason & primary_hostname &
        primary_address & members & txid & checksum & lag_ms & mount_dead & writer_queue &
        calls_in_flight & requests_in_flight & connections & last_errors & version & unix_ms &
        started;
  }
};

/// The built-in procedure every node serves: `client.async_call(peer, fwd::status_procedure, token)`.
inline const procedure<status_report()> status_procedure{"fwd.status"};

/// Milliseconds since the epoch on this machine's clock.
inline std::int64_t unix_now_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace detail {

// The last `capacity` errors, thread-safe. Recording is a short lock and one string.
class error_log {
 public:
  explicit error_log(std::size_t capacity = 16) : capacity_(capacity) {}

  void record(std::string what) {
    std::lock_guard lock(mutex_);
    if (capacity_ == 0) return;
    if (errors_.size() == capacity_) errors_.pop_front();
    errors_.push_back(status_error{unix_now_ms(), std::move(what)});
  }

  std::vector<status_error> snapshot() const {
    std::lock_guard lock(mutex_);
    return {errors_.begin(), errors_.end()};
  }

 private:
  std::size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<status_error> errors_;
};

}  // namespace detail
}  // namespace fwd
