#pragma once

// Who is primary. The answer is cached: a lookup that hits the cache is two atomic loads
// and a clock read. When the cache is empty or stale, one refresh runs for all callers
// (single-flight): the local LiteFS role first (the primary needs nobody), then the
// `.primary` hostname mapped to a member through the members' earlier `fwd.hello` answers,
// and only when that does not settle it, a probe of every member in parallel.

#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/path_check.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/telemetry.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>

#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace fwd {

/// What a node says of itself when probed (its `fwd.hello` answer).
struct node_status {
  std::string node_name;
  std::string litefs_hostname;
  litefs::role_kind role = litefs::role_kind::unknown;
  std::uint64_t txid = 0;
};

/// A cluster member as discovery sees it: where its fwd server listens.
struct peer {
  std::string name;
  boost::asio::ip::tcp::endpoint endpoint;
  friend bool operator==(const peer&, const peer&) = default;
};

/// Where writes go.
struct primary_location {
  bool local = false;                       ///< this node is the primary
  boost::asio::ip::tcp::endpoint endpoint;  ///< the primary's fwd server, when !local
  std::string litefs_hostname;              ///< its LiteFS hostname, when known
  friend bool operator==(const primary_location&, const primary_location&) = default;
};

/// Observers of discovery; each is optional and costs nothing when unset.
struct discovery_hooks {
  std::function<void(const primary_location& now)> primary_changed;
  std::function<void()> cache_hit;   ///< called on every cached lookup: keep it cheap
  std::function<void()> cache_miss;  ///< a lookup that had to wait for a refresh
  std::function<void(const peer&, const boost::system::error_code&, const node_status&)>
      probe_result;
};

struct discovery_options {
  std::filesystem::path mount;                        ///< the LiteFS FUSE mount, e.g. /litefs
  std::chrono::milliseconds ttl{2000};                ///< how long an answer is trusted
  std::chrono::milliseconds probe_timeout{300};       ///< the deadline of one probe
  std::chrono::milliseconds retry_interval{25};       ///< between rounds that found no primary
  std::chrono::milliseconds role_poll_interval{100};  ///< how often `.primary` is re-read
  std::size_t max_concurrent_probes = 16;
  discovery_hooks hooks;
};

/// Finds the primary and caches the answer. Thread-safe: lookups from any thread; the
/// slow path runs on a strand of the executor given at construction.
class primary_finder : public std::enable_shared_from_this<primary_finder> {
 public:
  using clock = std::chrono::steady_clock;
  using probe_handler = boost::asio::any_completion_handler<void(boost::system::error_code, node_status)>;
  /// Asks one peer who it is, completing by the deadline at the latest.
  using probe_function = std::function<void(const peer&, clock::time_point deadline, probe_handler)>;
  /// Returns the current members (not including this node, or including it: both work).
  using members_function = std::function<std::vector<peer>()>;
  /// Reads the local role; defaults to litefs::current_role(options.mount). One that throws
  /// counts as role `unknown`.
  using role_function = std::function<litefs::role()>;

  static std::shared_ptr<primary_finder> create(boost::asio::any_io_executor ex,
                                                discovery_options options,
                                                members_function members, probe_function probe,
                                                role_function role = {}) {
    return std::shared_ptr<primary_finder>(new primary_finder(
        std::move(ex), std::move(options), std::move(members), std::move(probe), std::move(role)));
  }

  primary_finder(const primary_finder&) = delete;
  primary_finder& operator=(const primary_finder&) = delete;

  /// The cached primary if the cache is fresh, else nullptr. Costs two atomic loads and
  /// a clock read; never blocks. The pointer stays valid as long as the finder.
  const primary_location* cached() const noexcept {
    const primary_location* location = current_.load(std::memory_order_acquire);
    if (location == nullptr) return nullptr;
    if (expiry_clock_ns() >= expires_.load(std::memory_order_relaxed)) {
      return nullptr;
    }
    if (has_hit_hook_) fwd::detail::invoke_hook(options_.hooks.cache_hit);
    return location;
  }

  /// The primary discovery found last, fresh or not (nullptr: none found yet, or forgotten
  /// after a failure). No hook
  /// runs; for reports, not for routing writes.
  const primary_location* last_known() const noexcept {
    return current_.load(std::memory_order_acquire);
  }

  /**
   * Finds the primary, from the cache when it is fresh.
   *
   * Completion signature: `void(boost::system::error_code, primary_location)`.
   * Fails with `errc::no_primary` when no primary is found before `deadline`
   * (`last_failure()` then tells what was tried), `errc::not_litefs` when the mount is not
   * LiteFS. Completes through the handler's associated executor (default: the finder's),
   * never inside this call; that executor has outstanding work until then.
   *
   * **Per-Operation Cancellation**: `terminal` only (`partial` and `total` are ignored):
   * the operation completes with `errc::cancelled`; the refresh it joined goes on for
   * the other callers and still updates the cache.
   */
  template <class Token>
  auto async_find(clock::time_point deadline, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, primary_location)>(
        [self = shared_from_this(), deadline](auto handler) {
          find_completion completion(std::move(handler), self->executor_);
          if (const primary_location* hit = self->cached()) {
            completion.post({}, *hit);
            return;
          }
          self->enqueue(deadline, std::move(completion));
        },
        token);
  }

  /// Forgets the cached primary: the next lookup refreshes. Call it on `not_primary` and
  /// when a connection to the primary fails. The LiteFS hostname -> endpoint entries that
  /// led to that primary are dropped too, so the refresh asks the members again instead
  /// of trusting an address that just failed (e.g. a node that came back on another port).
  void invalidate() noexcept {
    const primary_location* was = current_.exchange(nullptr, std::memory_order_acq_rel);
    expires_.store(0, std::memory_order_relaxed);
    if (was != nullptr && !was->local) {
      std::lock_guard lock(forget_mutex_);
      try {
        forget_.push_back(was->endpoint);
      } catch (...) {
        forget_all_ = true;  // no memory for the list: drop every hostname instead
      }
    }
  }

  /// Starts watching the local `.primary`: a change invalidates the cache at once.
  void start() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->stopped_ = false;
      self->watch_role();
    });
  }

  /// Stops the watch and fails waiting lookups with `errc::cancelled`.
  void stop() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->stopped_ = true;
      self->role_timer_.cancel();
      self->retry_timer_.cancel();
      self->fail_waiters(errc::cancelled, [](const waiter&) { return true; });
    });
  }

  /// Why the last refresh found no primary (what was tried), for error messages.
  std::string last_failure() const {
    std::lock_guard lock(failure_mutex_);
    return last_failure_;
  }

  /// How many probe rounds have run (each probes every member at most once).
  std::uint64_t probe_rounds() const noexcept { return probe_rounds_.load(std::memory_order_relaxed); }

 private:
  // The cache's expiry is read on every lookup: a coarse monotonic clock (a few ms of
  // resolution, a fraction of any sensible TTL) is several times cheaper to read than steady_clock.
  static std::int64_t expiry_clock_ns() noexcept {
#if defined(CLOCK_MONOTONIC_COARSE)
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
#else
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
#endif
  }

  using find_completion =
      fwd::detail::pending_completion<void(boost::system::error_code, primary_location)>;

  struct waiter {
    std::uint64_t id;
    clock::time_point deadline;
    find_completion completion;
  };

  struct round_state {
    std::vector<peer> members;
    std::size_t next = 0;
    std::size_t in_flight = 0;
    std::size_t answered = 0;
    bool done = false;
    litefs::role local;
    clock::time_point latest_deadline;
    std::vector<std::pair<peer, node_status>> claimants;
    std::string tried;
  };

  primary_finder(boost::asio::any_io_executor ex, discovery_options options,
                 members_function members, probe_function probe, role_function role)
      : executor_(std::move(ex)),
        strand_(boost::asio::make_strand(executor_)),
        options_(std::move(options)),
        members_(std::move(members)),
        probe_(std::move(probe)),
        role_(std::move(role)),
        role_timer_(strand_),
        retry_timer_(strand_),
        has_hit_hook_(static_cast<bool>(options_.hooks.cache_hit)) {
    if (!role_) {
      role_ = [mount = options_.mount] { return litefs::current_role(mount); };
    }
  }

  void enqueue(clock::time_point deadline, find_completion completion);

  template <class Predicate>
  void fail_waiters(errc why, Predicate&& which);

  // On the strand. Starts a round unless one runs (single-flight).
  void start_round();

  void launch_probes(const std::shared_ptr<round_state>& round);

  void on_probe(const std::shared_ptr<round_state>& round, const peer& target,
                boost::system::error_code ec, node_status status);

  // A round that found no primary: waiters past their deadline fail, others retry.
  void end_round(const std::shared_ptr<round_state>& round, const std::string& why);

  void finish(primary_location location);

  // Locations are kept for the finder's lifetime, so that cached() can hand out stable
  // pointers without reference counting; a cluster has few distinct primaries.
  const primary_location* intern(primary_location location);

  // The role, the members and a probe come from functions the service may supply: none
  // of them may throw into the strand (a round left half done would wedge every lookup).
  litefs::role local_role() noexcept;

  std::vector<peer> current_members() noexcept;

  // On the strand: drops the hostname entries of the primaries invalidate() gave up on.
  void forget_failed_hostnames() noexcept;

  void record_failure(std::string why);

  void watch_role();

  boost::asio::any_io_executor executor_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  discovery_options options_;
  members_function members_;
  probe_function probe_;
  role_function role_;

  // The cache: read from any thread.
  std::atomic<const primary_location*> current_{nullptr};
  std::atomic<std::int64_t> expires_{0};

  // The slow path: on the strand only.
  boost::asio::steady_timer role_timer_;
  boost::asio::steady_timer retry_timer_;
  std::deque<waiter> waiters_;
  std::shared_ptr<round_state> round_;
  std::map<std::string, boost::asio::ip::tcp::endpoint> hostnames_;
  // Endpoints whose hostname entries invalidate() dropped, applied on the strand.
  std::mutex forget_mutex_;
  std::vector<boost::asio::ip::tcp::endpoint> forget_;
  bool forget_all_ = false;
  std::vector<std::unique_ptr<const primary_location>> locations_;
  const primary_location* last_announced_ = nullptr;
  litefs::role cached_role_;
  bool stopped_ = false;

  std::atomic<std::uint64_t> next_waiter_id_{1};
  std::atomic<std::uint64_t> probe_rounds_{0};
  mutable std::mutex failure_mutex_;
  std::string last_failure_;
  const bool has_hit_hook_;
};

/// The role a `fwd.hello` answer names ("primary", "replica", "unknown", "not_litefs").
inline litefs::role_kind role_from_string(std::string_view name) noexcept {
  if (name == "primary") return litefs::role_kind::primary;
  if (name == "replica") return litefs::role_kind::replica;
  if (name == "not_litefs") return litefs::role_kind::not_litefs;
  return litefs::role_kind::unknown;
}

/// A probe that asks each peer `fwd.hello` through `client`, which must outlive the
/// finder that uses the probe.
inline primary_finder::probe_function hello_prober(rpc::client& client) {
  return [&client](const peer& target, primary_finder::clock::time_point deadline,
                   primary_finder::probe_handler handler) {
    rpc::call_options options;
    options.deadline = deadline;
    client.async_call(target.endpoint, options, rpc::hello,
                      [h = std::move(handler)](boost::system::error_code ec,
                                               rpc::hello_info info) mutable {
                        node_status status;
                        if (!ec) {
                          status.node_name = std::move(info.node_name);
                          status.litefs_hostname = std::move(info.litefs_hostname);
                          status.role = role_from_string(info.role);
                          status.txid = info.txid;
                        }
                        std::move(h)(ec, std::move(status));
                      });
  };
}

}  // namespace fwd

#include <fwd/cluster/impl/discovery.hpp>
