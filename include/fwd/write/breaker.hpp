#pragma once

// A circuit breaker per peer: after repeated transport failures to one peer, calls to it
// fail at once with errc::circuit_open (nothing sent) for a cool-down, then one trial call
// decides whether the peer is back. It stops a node from queueing work for a dead peer.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace fwd {

/// A breaker's state.
enum class breaker_state {
  closed,     ///< calls pass
  open,       ///< calls fail at once with circuit_open until the cool-down ends
  half_open,  ///< after the cool-down: a limited number of trial calls pass
};

/// "closed", "open" or "half-open".
constexpr const char* to_string(breaker_state s) noexcept {
  switch (s) {
    case breaker_state::closed:
      return "closed";
    case breaker_state::open:
      return "open";
    case breaker_state::half_open:
      return "half-open";
  }
  return "?";
}

/// When a breaker opens and how long it stays open.
struct breaker_options {
  /// Consecutive failures that open the breaker. 0 disables the breaker (always closed).
  std::uint32_t failure_threshold = 5;
  /// How long an open breaker refuses calls before letting trial calls through.
  std::chrono::milliseconds open_duration{500};
  /// Trial calls allowed at once in half-open; one success closes the breaker, one
  /// failure opens it again for another open_duration.
  std::uint32_t half_open_max_calls = 1;
};

/**
 * One peer's circuit breaker. Thread-safe. Callers ask allow() before sending, and
 * report the outcome with on_success() / on_failure() (count only failures that say
 * something about the peer: unreachable, connection lost, timeout; not the procedure's
 * own errors).
 */
class circuit_breaker {
 public:
  using clock = std::chrono::steady_clock;

  explicit circuit_breaker(breaker_options options = {}) noexcept : options_(options) {}

  /// Whether a call may be sent now. In half-open, it reserves one of the trial slots:
  /// report the call's outcome.
  bool allow(clock::time_point now = clock::now()) noexcept {
    if (options_.failure_threshold == 0) return true;
    std::lock_guard lock(mutex_);
    if (state_ == breaker_state::open) {
      if (now < open_until_) return false;
      state_ = breaker_state::half_open;
      trials_ = 0;
    }
    if (state_ == breaker_state::half_open) {
      if (trials_ >= options_.half_open_max_calls) return false;
      ++trials_;
    }
    return true;
  }

  /// The call succeeded: closes the breaker. Returns the state before.
  breaker_state on_success() noexcept {
    std::lock_guard lock(mutex_);
    const breaker_state before = state_;
    failures_ = 0;
    state_ = breaker_state::closed;
    trials_ = 0;
    return before;
  }

  /// The call failed at the transport: may open the breaker. Returns the state after.
  breaker_state on_failure(clock::time_point now = clock::now()) noexcept {
    if (options_.failure_threshold == 0) return breaker_state::closed;
    std::lock_guard lock(mutex_);
    ++failures_;
    if (state_ == breaker_state::half_open || failures_ >= options_.failure_threshold) {
      state_ = breaker_state::open;
      open_until_ = now + options_.open_duration;
      trials_ = 0;
    }
    return state_;
  }

  /// The state now (an open breaker whose cool-down ended reports half_open).
  breaker_state state(clock::time_point now = clock::now()) const noexcept {
    std::lock_guard lock(mutex_);
    if (state_ == breaker_state::open && now >= open_until_) return breaker_state::half_open;
    return state_;
  }

 private:
  breaker_options options_;
  mutable std::mutex mutex_;
  breaker_state state_ = breaker_state::closed;
  std::uint32_t failures_ = 0;
  std::uint32_t trials_ = 0;
  clock::time_point open_until_{};
};

/// One breaker per peer, created on first use. Thread-safe.
class breaker_set {
 public:
  explicit breaker_set(breaker_options options = {}) : options_(options) {}

  /// The breaker of `peer` (e.g. "127.0.0.1:7070"); stays valid as long as the set.
  circuit_breaker& for_peer(std::string_view peer) {
    std::lock_guard lock(mutex_);
    auto it = breakers_.find(peer);
    if (it == breakers_.end()) {
      it = breakers_.emplace(std::string(peer), std::make_unique<circuit_breaker>(options_)).first;
    }
    return *it->second;
  }

 private:
  breaker_options options_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<circuit_breaker>, std::less<>> breakers_;
};

}  // namespace fwd
