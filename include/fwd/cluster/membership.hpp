#pragma once

// Who is in the cluster: members found in DNS (A/AAAA of a name with a port, or SRV
// records) polled with c-ares on the Asio reactor, a static list, or both. Changes are
// told as joined/left events; a snapshot of the current members costs an atomic load.
//
// A failed, empty or partial DNS answer does not drop members: a member found before is
// removed only after `remove_after_polls` consecutive definitive answers (records, "no
// such record" or NXDOMAIN) that leave it out, or once it has been left out for the
// `remove_after` grace period. A failed query (timeout, refused, SERVFAIL) counts for
// nothing (it neither counts towards removal nor resets the count): the last good set is
// kept and the failure goes to the `on_resolve_error` hook, as do NXDOMAIN and empty
// answers.

#include <fwd/cluster/detail/membership_impl.hpp>
#include <fwd/cluster/membership_types.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace fwd {

/**
 * Cluster membership: polls DNS and/or holds a static list, tells joins and leaves, and
 * keeps a snapshot of the current members.
 *
 * Thread safety: every member function may be called from any thread. Hooks and the
 * internal work run on a strand of the given executor; completion handlers run through
 * their own associated executor (default: the membership's executor).
 *
 * Destroying the membership stops it: pending operations complete with
 * `boost::asio::error::operation_aborted` (the executor must still run for that).
 */
class membership {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Throws fwd::error (errc::bad_argument) on invalid options, e.g. a malformed DNS
  /// server, and a "fwd.dns" error when c-ares cannot initialise.
  membership(executor_type executor, membership_options options)
      : impl_(std::make_shared<detail::membership_impl>(std::move(executor), std::move(options))) {}

  membership(const membership&) = delete;
  membership& operator=(const membership&) = delete;
  membership(membership&&) noexcept = default;
  membership& operator=(membership&& other) noexcept {
    if (this != &other) {
      if (impl_) impl_->stop();
      impl_ = std::move(other.impl_);
    }
    return *this;
  }

  ~membership() {
    if (impl_) impl_->stop();
  }

  executor_type get_executor() const noexcept { return impl_->executor(); }

  /// Starts polling (the first poll at once). Static members are published with the
  /// first poll's result. Calling it while polling does nothing.
  void start() { impl_->start(); }

  /// Stops polling; pending `async_wait_change` and `async_resolve_once` operations
  /// complete with `operation_aborted`. The snapshot keeps its last value; `start()`
  /// resumes.
  void stop() { impl_->stop(); }

  /// The current member set; never null (version 0 before the first poll). Cheap: an
  /// atomic load of a shared pointer.
  membership_snapshot_ptr snapshot() const noexcept { return impl_->snapshot(); }

  /// The current members, sorted by endpoint.
  std::vector<member> members() const { return snapshot()->members; }

  /**
   * Resolves every source once, now, without changing the membership's state.
   *
   * Completion signature: `void(boost::system::error_code, std::vector<member>)`: the
   * static members and what DNS found, sorted by endpoint. The error is the first
   * failed source's ("fwd.dns" category, c-ares's status: ARES_ENOTFOUND for NXDOMAIN,
   * ARES_ETIMEOUT, ARES_ECONNREFUSED, ...); the members of the other sources are still
   * given.
   *
   * **Per-Operation Cancellation**: `terminal`, `partial` and `total`: the operation
   * completes with `operation_aborted` and an empty vector; its queries finish in the
   * background and their answers are dropped. `stop()` cancels it too.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void(boost::system::error_code, std::vector<member>))
                CompletionToken>
  auto async_resolve_once(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(boost::system::error_code, std::vector<member>)>(
        [](auto handler, std::shared_ptr<detail::membership_impl> impl) {
          impl->initiate_resolve_once(std::move(handler));
        },
        token, impl_);
  }

  /**
   * Waits until the member set's version is greater than `after_version` (pass the
   * version of the snapshot you hold; 0 waits for the first poll's result).
   *
   * Completion signature: `void(boost::system::error_code, membership_snapshot_ptr)`:
   * the snapshot at completion (its `changes` are those of its own version only; compare
   * snapshots to see everything since `after_version`). Completes at once (still
   * through the handler's executor) when the version is already greater.
   *
   * **Per-Operation Cancellation**: `terminal`, `partial` and `total`: completes with
   * `operation_aborted` and a null snapshot; nothing else changes. `stop()` and the
   * destructor complete it the same way.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void(boost::system::error_code,
                                                 membership_snapshot_ptr)) CompletionToken>
  auto async_wait_change(std::uint64_t after_version, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(boost::system::error_code, membership_snapshot_ptr)>(
        [](auto handler, std::shared_ptr<detail::membership_impl> impl, std::uint64_t after) {
          impl->initiate_wait_change(std::move(handler), after);
        },
        token, impl_, after_version);
  }

 private:
  std::shared_ptr<detail::membership_impl> impl_;
};

}  // namespace fwd
