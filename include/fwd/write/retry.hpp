#pragma once

// Retrying a call: exponential backoff with full jitter, an overall deadline, and a retry
// budget (a token bucket shared by every call of a node) so that a failing cluster is
// not hammered by retries of retries.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>

namespace fwd {

/// How a forwarded call retries. The defaults suit a LAN cluster with sub-second failover.
struct retry_policy {
  /// Attempts in all, the first included. 1 = never retry. The call's deadline bounds
  /// the attempts too: whichever comes first ends the call.
  std::uint32_t max_attempts = 10;
  /// The backoff cap of the first retry; each further retry doubles it (`multiplier`)
  /// up to `max_backoff`. The wait is uniform in [0, cap] ("full jitter").
  std::chrono::milliseconds initial_backoff{10};
  std::chrono::milliseconds max_backoff{1000};
  double multiplier = 2.0;
  /// The retry budget: a bucket of `budget_capacity` tokens, refilled at
  /// `budget_refill_per_second`; each retry takes one token, and a retry finding the
  /// bucket empty is not made (the call fails with its last error). 0 capacity disables
  /// the budget (unbounded retries within attempts and deadline).
  double budget_capacity = 100;
  double budget_refill_per_second = 20;
};

/**
 * The cap of the backoff before retry number `retry` (1 = the first retry):
 * `min(max_backoff, initial_backoff * multiplier^(retry-1))`.
 */
inline std::chrono::nanoseconds backoff_cap(const retry_policy& policy,
                                            std::uint32_t retry) noexcept {
  double cap = std::chrono::duration<double, std::nano>(policy.initial_backoff).count();
  const double max = std::chrono::duration<double, std::nano>(policy.max_backoff).count();
  const double multiplier = policy.multiplier < 1.0 ? 1.0 : policy.multiplier;
  for (std::uint32_t i = 1; i < retry && cap < max; ++i) cap *= multiplier;
  return std::chrono::nanoseconds(static_cast<std::int64_t>(std::min(cap, max)));
}

/**
 * The wait before retry number `retry` with full jitter: uniform in [0, backoff_cap].
 * Jitter spreads the retries of many callers that failed together (a failover) so that
 * they do not arrive at the new primary in one burst.
 */
template <class Generator>
std::chrono::nanoseconds full_jitter_backoff(const retry_policy& policy, std::uint32_t retry,
                                             Generator& rng) {
  const auto cap = backoff_cap(policy, retry).count();
  if (cap <= 0) return std::chrono::nanoseconds(0);
  std::uniform_int_distribution<std::int64_t> pick(0, cap);
  return std::chrono::nanoseconds(pick(rng));
}

/// full_jitter_backoff with a thread-local generator.
inline std::chrono::nanoseconds full_jitter_backoff(const retry_policy& policy,
                                                    std::uint32_t retry) {
  thread_local std::minstd_rand rng{std::random_device{}()};
  return full_jitter_backoff(policy, retry, rng);
}

/**
 * A token bucket limiting retries across calls. Thread-safe. A full bucket lets a burst
 * of `capacity` retries through; after that, retries are made at the refill rate.
 */
class retry_budget {
 public:
  using clock = std::chrono::steady_clock;

  /// A bucket of `capacity` tokens (starting full) refilled at `refill_per_second`.
  /// A capacity of 0 or less means "no budget": every retry is allowed.
  retry_budget(double capacity, double refill_per_second) noexcept
      : capacity_(capacity),
        refill_per_second_(refill_per_second < 0 ? 0 : refill_per_second),
        tokens_(capacity),
        last_(clock::now()) {}

  explicit retry_budget(const retry_policy& policy) noexcept
      : retry_budget(policy.budget_capacity, policy.budget_refill_per_second) {}

  /// Takes one token if there is one (at `now`). Returns whether the retry may be made.
  bool try_acquire(clock::time_point now = clock::now()) noexcept {
    if (capacity_ <= 0) return true;
    std::lock_guard lock(mutex_);
    refill(now);
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

  /// The tokens left now (for telemetry and tests).
  double available(clock::time_point now = clock::now()) noexcept {
    if (capacity_ <= 0) return 0;
    std::lock_guard lock(mutex_);
    refill(now);
    return tokens_;
  }

 private:
  void refill(clock::time_point now) noexcept {
    if (now > last_) {
      tokens_ = std::min(capacity_, tokens_ + std::chrono::duration<double>(now - last_).count() *
                                                  refill_per_second_);
      last_ = now;
    }
  }

  const double capacity_;
  const double refill_per_second_;
  std::mutex mutex_;
  double tokens_;
  clock::time_point last_;
};

}  // namespace fwd
