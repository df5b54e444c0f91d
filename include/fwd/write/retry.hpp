#pragma once

// Retrying a call: exponential backoff with full jitter, an overall deadline, and a retry
// budget shared by every call of a node, in proportion to the calls it makes, so that a
// failing cluster is not hammered by retries of retries while a failover under load can
// still retry every call.

#include <algorithm>
#include <array>
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
  /// The node's retry budget (see retry_budget): each call earns `budget_ratio` retries,
  /// counted over the last `budget_window`; on top of that a floor of `budget_capacity`
  /// tokens refilled at `budget_refill_per_second`. Each retry takes one token; a retry
  /// finding none is not made (the call fails with its last error). A capacity and a
  /// ratio of 0 disable the budget (unbounded retries within attempts and deadline).
  double budget_capacity = 100;
  double budget_refill_per_second = 20;
  double budget_ratio = 1.0;
  std::chrono::milliseconds budget_window{10000};
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
 * The node's retry budget: retries in proportion to the calls it makes, with a floor.
 * Thread-safe.
 *
 * Every call deposits `ratio` tokens (record_call()) and every retry takes one
 * (try_acquire()); on top of that the bucket refills at `floor_per_second` up to
 * `floor_capacity`, so that a node with few calls can still retry. The bucket holds at
 * most `floor_capacity` plus `ratio` times the calls of the last `window`, counted in ten
 * slots of a tenth of the window each: a call's tokens stay whole for at least 90% of the
 * window, then go at once (a lone call after a long idle can always be retried, even with
 * no floor). So a node that serves many calls can retry each of them through a failover
 * (with the default ratio of 1, every call of the last window once more), while a
 * cluster that keeps failing sees at most `ratio` retries per call made, not retries of
 * retries (gRPC's retry throttling and Finagle's retry budget work the same way).
 */
class retry_budget {
 public:
  using clock = std::chrono::steady_clock;

  /// A bucket starting full at `floor_capacity` tokens. A `floor_capacity` of 0 or less
  /// with a `ratio` of 0 or less means "no budget": every retry is allowed.
  retry_budget(double floor_capacity, double floor_per_second, double ratio = 1.0,
               std::chrono::milliseconds window = std::chrono::seconds(10)) noexcept
      : floor_capacity_(floor_capacity < 0 ? 0 : floor_capacity),
        floor_per_second_(floor_per_second < 0 ? 0 : floor_per_second),
        ratio_(ratio < 0 ? 0 : ratio),
        slot_seconds_(std::max(0.001, std::chrono::duration<double>(window).count()) / slot_count),
        tokens_(floor_capacity_),
        last_(clock::now()),
        origin_(last_) {}

  explicit retry_budget(const retry_policy& policy) noexcept
      : retry_budget(policy.budget_capacity, policy.budget_refill_per_second, policy.budget_ratio,
                     policy.budget_window) {}

  /// A call started (its first attempt): it earns `ratio` retries for the node.
  void record_call(clock::time_point now = clock::now()) noexcept {
    if (unlimited()) return;
    std::lock_guard lock(mutex_);
    refill(now);
    slot_calls_[static_cast<std::size_t>(newest_slot_ % slot_count)] += 1.0;
    recent_calls_ += 1.0;
    tokens_ = std::min(capacity(), tokens_ + ratio_);
  }

  /// Takes one token if there is one (at `now`). Returns whether the retry may be made.
  bool try_acquire(clock::time_point now = clock::now()) noexcept {
    if (unlimited()) return true;
    std::lock_guard lock(mutex_);
    refill(now);
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

  /// The tokens left now (for telemetry and tests).
  double available(clock::time_point now = clock::now()) noexcept {
    if (unlimited()) return 0;
    std::lock_guard lock(mutex_);
    refill(now);
    return tokens_;
  }

 private:
  bool unlimited() const noexcept { return floor_capacity_ <= 0 && ratio_ <= 0; }
  double capacity() const noexcept { return floor_capacity_ + ratio_ * recent_calls_; }

  void refill(clock::time_point now) noexcept {
    drop_old_calls(now);
    if (now <= last_) return;
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    if (tokens_ < floor_capacity_) tokens_ = std::min(floor_capacity_, tokens_ + elapsed * floor_per_second_);
    tokens_ = std::min(tokens_, capacity());  // earned tokens go with their calls' slot
  }

  // Moves the window to `now`: the slots that fell out of it forget their calls.
  void drop_old_calls(clock::time_point now) noexcept {
    if (now <= origin_) return;
    const auto slot = static_cast<std::int64_t>(
        std::chrono::duration<double>(now - origin_).count() / slot_seconds_);
    if (slot <= newest_slot_) return;
    const std::int64_t steps = std::min<std::int64_t>(slot - newest_slot_, slot_count);
    for (std::int64_t i = 1; i <= steps; ++i)
      slot_calls_[static_cast<std::size_t>((newest_slot_ + i) % slot_count)] = 0;
    newest_slot_ = slot;
    recent_calls_ = 0;
    for (double calls : slot_calls_) recent_calls_ += calls;
  }

  static constexpr std::int64_t slot_count = 10;

  const double floor_capacity_;
  const double floor_per_second_;
  const double ratio_;
  const double slot_seconds_;
  std::mutex mutex_;
  double tokens_;
  double recent_calls_ = 0;  // the sum of slot_calls_
  std::array<double, slot_count> slot_calls_{};
  std::int64_t newest_slot_ = 0;  // slots since origin_
  clock::time_point last_;
  clock::time_point origin_;
};

}  // namespace fwd
