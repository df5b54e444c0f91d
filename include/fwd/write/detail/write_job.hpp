#pragma once

// What the write executor queues: a write (its work and request id), everyone waiting for
// its outcome, and the outcome itself.

#include <sqlite3.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <fwd/detail/completion.hpp>
#include <fwd/write/write_options.hpp>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fwd::sqlite::detail {

/// The signature every write completes with.
using write_signature = void(boost::system::error_code, std::string, litefs::position);

/// A waiting caller: its completion (work tracked on the handler's executor until done),
/// and the serial a cancellation finds it by (never reused within a process).
class write_waiter {
 public:
  template <class Handler>
  write_waiter(std::uint64_t serial, Handler&& handler, const boost::asio::any_io_executor& io_executor,
               std::chrono::steady_clock::time_point deadline = {})
      : serial_(serial), deadline_(deadline), completion_(std::forward<Handler>(handler), io_executor) {}

  std::uint64_t serial() const noexcept { return serial_; }

  /// When this caller stops waiting ({} = never).
  std::chrono::steady_clock::time_point deadline() const noexcept { return deadline_; }

  /// The caller's deadline has passed at `now`.
  bool expired(std::chrono::steady_clock::time_point now) const noexcept {
    return deadline_ != std::chrono::steady_clock::time_point{} && deadline_ <= now;
  }

  /// The handler's cancellation slot (install the cancellation handler before submitting).
  boost::asio::cancellation_slot slot() const noexcept { return completion_.slot(); }

  /// Posts the handler with these arguments to its associated executor: a completion never
  /// runs inside async_write nor on the writer thread.
  void complete(const boost::system::error_code& ec, std::string result, litefs::position pos) {
    completion_.post(ec, std::move(result), pos);
  }

 private:
  std::uint64_t serial_;
  std::chrono::steady_clock::time_point deadline_;
  fwd::detail::pending_completion<write_signature> completion_;
};

/// One request id's write: the work, and everyone waiting for its outcome.
struct write_job {
  request_id id{};
  std::string procedure;  // what the id is bound to in the dedup table ("" for none)
  std::function<std::string(sqlite3*)> work;
  std::vector<std::unique_ptr<write_waiter>> waiters;  // guarded by the state's mutex
};

/// What one write ended with.
struct write_outcome {
  boost::system::error_code ec;
  std::string result;  // the result bytes, or on failure a description of the failure
};

inline std::int64_t unix_milliseconds() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace fwd::sqlite::detail
