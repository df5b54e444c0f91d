#pragma once

// The one way fwd completes an asynchronous operation. An operation's initiation wraps its
// handler in a pending_completion, which
//   - type-erases it (any_completion_handler: the handler's associated executor, allocator
//     and cancellation slot are kept);
//   - tracks outstanding work on the handler's associated executor (default: the
//     operation's I/O executor) until the operation completes, so that run() does not
//     return while it is pending;
//   - completes it exactly once, through that executor: post() never runs the handler
//     inside the caller (use it whenever the initiating call may still be on the stack),
//     dispatch() may run it at once when already on that executor. The first completion
//     wins, also when several threads race to complete; later ones do nothing;
//   - clears the handler's cancellation slot on the handler's executor, just before the
//     handler runs (the thread cancellation is emitted on).
// Destroying a pending completion that was never completed destroys the handler without
// calling it (owners that must always answer, like rpc::detail::reply_once, complete from
// their destructor).

#include <atomic>
#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd::detail {

template <class Signature>
class pending_completion;

/// A type-erased completion handler with work tracked on its associated executor,
/// completed at most once (see the top of this file).
template <class... Args>
class pending_completion<void(Args...)> {
 public:
  using signature = void(Args...);
  using handler_type = boost::asio::any_completion_handler<signature>;

  pending_completion() noexcept = default;

  /// Takes `handler`; `io_executor` runs it when it has no associated executor.
  template <class Handler>
  requires(!std::is_same_v<std::decay_t<Handler>, pending_completion>)
      pending_completion(Handler&& handler, const boost::asio::any_io_executor& io_executor)
      : pending_completion(track(handler, io_executor), std::forward<Handler>(handler)) {}

  pending_completion(pending_completion&& other) noexcept
      : executor_(std::move(other.executor_)),
        erased_(std::move(other.erased_)),
        direct_(other.direct_),
        handler_(std::move(other.handler_)),
        done_(other.done_.load(std::memory_order_relaxed)) {}

  pending_completion& operator=(pending_completion&& other) noexcept {
    executor_ = std::move(other.executor_);
    erased_ = std::move(other.erased_);
    direct_ = other.direct_;
    // Not handler_ = std::move(...): Boost 1.81's any_completion_handler move assignment
    // wraps the source in a new handler recursively (it forwards an lvalue).
    handler_type taken(std::move(other.handler_));
    handler_.swap(taken);
    done_.store(other.done_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    return *this;
  }

  pending_completion(const pending_completion&) = delete;
  pending_completion& operator=(const pending_completion&) = delete;

  /// Holds a handler not completed yet. Not synchronised with a concurrent completion.
  explicit operator bool() const noexcept {
    return static_cast<bool>(handler_) && !done_.load(std::memory_order_acquire);
  }

  /// The slot to install the operation's cancellation handler in (the type-erased
  /// handler's; a handler installed in the original handler's slot before the conversion
  /// would be replaced by it). Call it before the operation can complete.
  boost::asio::cancellation_slot slot() const noexcept {
    return handler_ ? handler_.get_cancellation_slot() : boost::asio::cancellation_slot();
  }

  /// Completes with `args`, posted to the handler's executor (never inline). Returns false
  /// when the operation had completed already. Thread-safe against other completions.
  bool post(Args... args) { return deliver<false>(std::move(args)...); }

  /// As post(), but runs the handler at once when the caller is on its executor. Only for
  /// completions that cannot happen inside the initiating call.
  bool dispatch(Args... args) { return deliver<true>(std::move(args)...); }

 private:
  struct tracked_executors {
    boost::asio::any_io_executor executor;
    boost::asio::any_completion_executor erased;
    bool direct = true;
  };

  // Read before the handler is moved into the type-erased one.
  template <class Handler>
  static tracked_executors track(const Handler& handler,
                                 const boost::asio::any_io_executor& io_executor) {
    auto tracked = boost::asio::prefer(boost::asio::get_associated_executor(handler, io_executor),
                                       boost::asio::execution::outstanding_work.tracked);
    if constexpr (std::is_convertible_v<decltype(tracked), boost::asio::any_io_executor>) {
      return {std::move(tracked), {}, true};
    } else {
      // E.g. a handler that is an any_completion_handler itself: its executor can only be
      // dispatched to; a post goes through the I/O executor first.
      return {io_executor, std::move(tracked), false};
    }
  }

  template <class Handler>
  pending_completion(tracked_executors executors, Handler&& handler)
      : executor_(std::move(executors.executor)),
        erased_(std::move(executors.erased)),
        direct_(executors.direct),
        handler_(std::forward<Handler>(handler)) {}

  template <bool Dispatch>
  bool deliver(Args... args) {
    if (done_.exchange(true, std::memory_order_acq_rel) || !handler_) return false;
    boost::asio::any_io_executor executor = std::move(executor_);
    boost::asio::any_completion_executor erased = std::move(erased_);
    auto allocator = boost::asio::get_associated_allocator(handler_);
    auto function = boost::asio::bind_allocator(
        allocator,
        [handler = std::move(handler_), values = std::make_tuple(std::move(args)...)]() mutable {
          auto slot = boost::asio::get_associated_cancellation_slot(handler);
          if (slot.is_connected()) slot.clear();
          std::apply(std::move(handler), std::move(values));
        });
    if (!direct_) {
      if constexpr (Dispatch) {
        boost::asio::dispatch(erased, std::move(function));
      } else {
        boost::asio::post(executor, boost::asio::bind_executor(erased, std::move(function)));
      }
    } else if constexpr (Dispatch) {
      boost::asio::dispatch(executor, std::move(function));
    } else {
      boost::asio::post(executor, std::move(function));
    }
    return true;
  }

  boost::asio::any_io_executor executor_;        // the handler's, tracking work (direct_)
  boost::asio::any_completion_executor erased_;  // the handler's, tracking work (!direct_)
  bool direct_ = true;
  handler_type handler_;
  std::atomic<bool> done_{false};
};

}  // namespace fwd::detail
