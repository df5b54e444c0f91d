// Retry backoff, the retry budget and the circuit breaker: the rules a forwarded call
// follows when the primary is slow, gone, or moving.

#include <catch2/catch.hpp>

#include <cmath>
#include <chrono>
#include <fwd/write/breaker.hpp>
#include <fwd/write/retry.hpp>
#include <random>

using namespace std::chrono_literals;

TEST_CASE("backoff caps grow exponentially from the initial backoff up to the maximum") {
  fwd::retry_policy p;
  p.initial_backoff = 10ms;
  p.max_backoff = 100ms;
  p.multiplier = 2.0;
  CHECK(fwd::backoff_cap(p, 1) == 10ms);
  CHECK(fwd::backoff_cap(p, 2) == 20ms);
  CHECK(fwd::backoff_cap(p, 3) == 40ms);
  CHECK(fwd::backoff_cap(p, 4) == 80ms);
  CHECK(fwd::backoff_cap(p, 5) == 100ms);
  CHECK(fwd::backoff_cap(p, 60) == 100ms);
}

TEST_CASE("full jitter picks waits spread over [0, cap], never above it") {
  fwd::retry_policy p;
  p.initial_backoff = 64ms;
  p.max_backoff = 64ms;
  std::mt19937 rng(42);
  std::chrono::nanoseconds lowest = 1h, highest = 0ns;
  for (int i = 0; i < 2000; ++i) {
    const auto wait = fwd::full_jitter_backoff(p, 3, rng);
    REQUIRE(wait >= 0ns);
    REQUIRE(wait <= 64ms);
    lowest = std::min(lowest, wait);
    highest = std::max(highest, wait);
  }
  // Spread over the whole range: callers failing together do not retry together.
  CHECK(lowest < 4ms);
  CHECK(highest > 60ms);
}

TEST_CASE("the retry budget allows a burst of its capacity, then only its refill rate") {
  fwd::retry_budget budget(3, 10);  // 3 tokens, 10 per second
  const auto t0 = fwd::retry_budget::clock::now();
  CHECK(budget.try_acquire(t0));
  CHECK(budget.try_acquire(t0));
  CHECK(budget.try_acquire(t0));
  CHECK_FALSE(budget.try_acquire(t0));
  CHECK_FALSE(budget.try_acquire(t0 + 50ms));  // half a token
  CHECK(budget.try_acquire(t0 + 100ms));       // one token refilled
  CHECK_FALSE(budget.try_acquire(t0 + 100ms));
  // Refill stops at the capacity.
  CHECK(budget.available(t0 + 10s) == Approx(3.0));
}

TEST_CASE("the retry budget grows with the calls made: every call of a burst can be retried once") {
  fwd::retry_budget budget(10, 0, 1.0);  // a floor of 10, one retry earned per call
  const auto t0 = fwd::retry_budget::clock::now();
  for (int i = 0; i < 64; ++i) budget.record_call(t0);
  // A failover fails all 64 at once: each gets its retry, and the floor is left over.
  for (int i = 0; i < 64; ++i) REQUIRE(budget.try_acquire(t0 + 1ms));
  CHECK(budget.available(t0 + 1ms) == Approx(10.0).epsilon(0.01));
  // Then only the floor is left (less the tiny decay of the calls' share in 1 ms):
  // retries of retries are not funded.
  int more = 0;
  while (more < 100 && budget.try_acquire(t0 + 1ms)) ++more;
  CHECK(more >= 9);
  CHECK(more <= 10);
}

TEST_CASE("retries earned by calls expire with the window, the floor stays") {
  fwd::retry_budget budget(2, 0, 1.0, 10s);
  const auto t0 = fwd::retry_budget::clock::now();
  for (int i = 0; i < 100; ++i) budget.record_call(t0);
  CHECK(budget.available(t0) == Approx(102.0));
  // Earned retries stay whole for most of the window, then go with their calls.
  CHECK(budget.available(t0 + 8s) == Approx(102.0));
  CHECK(budget.available(t0 + 11s) == Approx(2.0));
  CHECK(budget.available(t0 + 300s) == Approx(2.0));
}

TEST_CASE("with no floor, a lone call after a long idle can still be retried once") {
  fwd::retry_budget budget(0, 0, 1.0, 10s);
  const auto t0 = fwd::retry_budget::clock::now();
  // Idle for an hour, then one call that fails a moment later.
  budget.record_call(t0 + 1h);
  CHECK(budget.try_acquire(t0 + 1h + 1ms));
  CHECK_FALSE(budget.try_acquire(t0 + 1h + 2ms));  // its one retry only
  // A call's retry is still there late in the window, and gone after it.
  budget.record_call(t0 + 2h);
  CHECK(budget.try_acquire(t0 + 2h + 8s));
  budget.record_call(t0 + 3h);
  CHECK_FALSE(budget.try_acquire(t0 + 3h + 11s));
}

TEST_CASE("a retry budget with no floor and no ratio never refuses") {
  fwd::retry_budget budget(0, 0, 0);
  for (int i = 0; i < 1000; ++i) REQUIRE(budget.try_acquire());
}

TEST_CASE("a breaker opens after the threshold of consecutive failures and refuses calls") {
  fwd::circuit_breaker b(
      {.failure_threshold = 3, .open_duration = 100ms, .half_open_max_calls = 1});
  const auto t0 = fwd::circuit_breaker::clock::now();
  CHECK(b.allow(t0));
  b.on_failure(t0);
  b.on_failure(t0);
  CHECK(b.state(t0) == fwd::breaker_state::closed);
  CHECK(b.on_failure(t0) == fwd::breaker_state::open);
  CHECK_FALSE(b.allow(t0));
  CHECK_FALSE(b.allow(t0 + 99ms));
}

TEST_CASE("a success between failures resets the count: only consecutive failures open it") {
  fwd::circuit_breaker b(
      {.failure_threshold = 2, .open_duration = 100ms, .half_open_max_calls = 1});
  b.on_failure();
  b.on_success();
  b.on_failure();
  CHECK(b.state() == fwd::breaker_state::closed);
  CHECK(b.allow());
}

TEST_CASE("after the cool-down one trial call passes, its success closes the breaker") {
  fwd::circuit_breaker b(
      {.failure_threshold = 1, .open_duration = 100ms, .half_open_max_calls = 1});
  const auto t0 = fwd::circuit_breaker::clock::now();
  b.on_failure(t0);
  CHECK(b.state(t0 + 100ms) == fwd::breaker_state::half_open);
  CHECK(b.allow(t0 + 100ms));
  CHECK_FALSE(b.allow(t0 + 100ms));  // only one trial at a time
  CHECK(b.on_success() == fwd::breaker_state::half_open);
  CHECK(b.state(t0 + 100ms) == fwd::breaker_state::closed);
  CHECK(b.allow(t0 + 100ms));
}

TEST_CASE("a failed trial call opens the breaker again for another cool-down") {
  fwd::circuit_breaker b(
      {.failure_threshold = 1, .open_duration = 100ms, .half_open_max_calls = 1});
  const auto t0 = fwd::circuit_breaker::clock::now();
  b.on_failure(t0);
  REQUIRE(b.allow(t0 + 100ms));
  CHECK(b.on_failure(t0 + 100ms) == fwd::breaker_state::open);
  CHECK_FALSE(b.allow(t0 + 150ms));
  CHECK(b.allow(t0 + 200ms));
}

TEST_CASE("breakers are kept per peer: one dead peer does not block another") {
  fwd::breaker_set set({.failure_threshold = 1, .open_duration = 1s, .half_open_max_calls = 1});
  set.for_peer("127.0.0.1:1").on_failure();
  CHECK_FALSE(set.for_peer("127.0.0.1:1").allow());
  CHECK(set.for_peer("127.0.0.1:2").allow());
  CHECK(&set.for_peer("127.0.0.1:1") == &set.for_peer("127.0.0.1:1"));
}
