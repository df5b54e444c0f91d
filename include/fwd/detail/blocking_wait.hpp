#pragma once

// The result of an asynchronous operation that a thread blocks for (rpc::client::call): the
// operation's completion sets it once, on another thread; the blocked thread takes it.
//
// The waiting thread first polls for a short while (yielding its core between polls), and
// only then sleeps on a condition variable: most calls complete within that while, and
// are then taken without the wake-up of a sleeping thread, which costs several
// microseconds (a futex wake, then the scheduler running the thread). A completion that
// finds nobody asleep sets a flag and takes an uncontended lock; it never makes a system
// call.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

namespace fwd::detail {

/// How long a thread blocked for a result polls before it sleeps.
inline constexpr std::chrono::microseconds blocking_poll_time{50};

template <class T>
class blocking_result {
 public:
  /// Sets the value (once; the completion's thread).
  template <class... V>
  void set_value(V&&... value) {
    if constexpr (!std::is_void_v<T>) value_.emplace(std::forward<V>(value)...);
    publish();
  }

  /// Sets the failure (once; the completion's thread).
  void set_exception(std::exception_ptr exception) {
    exception_ = std::move(exception);
    publish();
  }

  /// Waits for the value or failure (the blocked thread), then returns or rethrows it.
  T get() {
    wait();
    if (exception_) std::rethrow_exception(exception_);
    if constexpr (!std::is_void_v<T>) return std::move(*value_);
  }

 private:
  void publish() {
    std::lock_guard lock(mutex_);
    ready_.store(true, std::memory_order_release);
    if (sleeping_) woken_.notify_one();
  }

  void wait() {
    const auto until = std::chrono::steady_clock::now() + blocking_poll_time;
    while (!ready_.load(std::memory_order_acquire)) {
      if (std::chrono::steady_clock::now() >= until) {
        std::unique_lock lock(mutex_);
        sleeping_ = true;
        woken_.wait(lock, [this] { return ready_.load(std::memory_order_acquire); });
        return;
      }
      std::this_thread::yield();
    }
  }

  std::atomic<bool> ready_{false};
  std::mutex mutex_;
  std::condition_variable woken_;
  bool sleeping_ = false;  // under mutex_
  std::optional<std::conditional_t<std::is_void_v<T>, char, T>> value_;
  std::exception_ptr exception_;
};

}  // namespace fwd::detail
