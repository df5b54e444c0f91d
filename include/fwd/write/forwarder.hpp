#pragma once

// The write path. A call runs on the primary exactly once, wherever it starts: on the
// primary it goes to the local write executor (nothing is sent); on a replica it is sent
// to the primary found by discovery (never both). Each call has one request id for all
// its retries, so the primary's dedup table answers a repeated attempt with the stored
// result. Failures are retried by class (not sent / maybe executed / permanent) with
// full-jitter backoff, the call's deadline and a retry budget, through a circuit breaker
// per peer. With read-your-writes (the default) a forwarded call completes only once the
// local replica has replicated the primary's commit and its history is confirmed to hold
// it (the primary's checksum at that TXID, or the write's dedup row); a write a failover
// lost is retried with its request id.

#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/cluster/discovery.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/write/detail/forward_op.hpp>
#include <fwd/write/detail/write_handler.hpp>
#include <fwd/write/executor.hpp>
#include <fwd/write/forward_options.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/post.hpp>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <variant>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd {

/**
 * Runs write procedures on the primary, from any node. Usually owned by fwd::node, which
 * wires its parts; usable alone with a client, a primary_finder and a write executor.
 *
 * Thread-safe after start: calls may start from any thread.
 */
class forwarder {
 public:
  using executor_type = boost::asio::any_io_executor;

  forwarder(executor_type executor, forwarder_options options, std::shared_ptr<rpc::client> client,
            std::shared_ptr<primary_finder> finder)
      : core_(std::make_shared<detail::forward_core>(std::move(executor), std::move(options),
                                                     std::move(client), std::move(finder))) {}

  forwarder(const forwarder&) = delete;
  forwarder& operator=(const forwarder&) = delete;
  ~forwarder() { stop(); }

  executor_type get_executor() const noexcept { return core_->executor; }

  /**
   * Serves write procedure `proc` with `fn`, the service's own writer:
   * `R fn(sqlite3*, A...)` or `R fn(fwd::sqlite::connection&, A...)`. On the primary it
   * runs on the write executor's thread, inside one transaction (with the dedup record
   * of the call's request id: exactly once), grouped with concurrent writes, each in its
   * own savepoint. It must not BEGIN/COMMIT/ROLLBACK itself (refused: the write fails
   * alone with bad_argument; savepoints of its own names are fine). A request id is bound
   * to the procedure (its name and signature) that first ran with it: the same id sent to
   * another procedure fails with bad_argument, nothing run. A fwd::error it throws
   * keeps its code (SQLite's extended code); other exceptions become remote_failure.
   * Define every procedure before start, on every node. Registers it in `registry`.
   */
  template <class R, class... A, class F>
  void define(rpc::registry& registry, const procedure<R(A...)>& proc, F&& fn) {
    using function = std::decay_t<F>;
    static_assert(std::is_invocable_v<function&, sqlite3*, std::decay_t<A>&...> ||
                      std::is_invocable_v<function&, sqlite::connection&, std::decay_t<A>&...>,
                  "fwd: a write procedure's function must be callable as R(sqlite3*, A...) or "
                  "R(fwd::sqlite::connection&, A...)");
    auto handler = detail::make_write_handler<procedure<R(A...)>>(
        std::weak_ptr<detail::forward_core>(core_),
        std::make_shared<function>(std::forward<F>(fn)),
        fmt::format("{} {}", proc.name(), procedure<R(A...)>::signature_text()));
    registry.define_raw(std::string(proc.name()), proc.signature(), handler);
    core_->procedures.emplace(std::string(proc.name()),
                              detail::forward_core::local_procedure{proc.signature(), handler});
  }

  /**
   * Answers every call of `proc`, from this node or from peers, with `code` and the
   * detail `why`, without running anything: for a built-in the service has not enabled.
   * Registers it in `registry`.
   */
  template <class Signature>
  void refuse(rpc::registry& registry, const procedure<Signature>& proc, errc code, std::string why) {
    rpc::registry::raw_handler handler = [code, why = std::move(why)](const rpc::incoming_call&,
                                                                      boost::asio::any_io_executor executor,
                                                                      rpc::reply_handler reply) {
      // The reply goes out later, never inside the dispatch that asked for it.
      boost::asio::post(executor, [code, why, reply = std::move(reply)]() mutable {
        reply(make_error_code(code), why);
      });
    };
    registry.define_raw(std::string(proc.name()), proc.signature(), handler);
    core_->procedures.emplace(std::string(proc.name()),
                              detail::forward_core::local_procedure{proc.signature(), handler});
  }

  /// Gives the forwarder the primary's write executor (the node opens it at start).
  void attach_writer(std::shared_ptr<sqlite::write_executor> writer) {
    core_->writer = std::move(writer);
  }

  /// Refuses new calls (cancelled); calls waiting for a retry or replication end soon.
  void stop() {
    core_->stopped.store(true);
    core_->durability->stop();
  }

  /// The positions this node's replicas report, and the writes waiting for them (the
  /// node feeds it from the built-in report_position).
  const std::shared_ptr<detail::durability_tracker>& durability_tracker() const noexcept {
    return core_->durability;
  }

  /// Runs `f` (on any thread) once no call of this forwarder is in flight: every call
  /// started has completed (its handler is posted). At once when none is.
  void when_idle(std::function<void()> f) { core_->when_idle(std::move(f)); }

  /// when_idle as a callable that stays valid after this forwarder is destroyed.
  std::function<void(std::function<void()>)> idle_notifier() const {
    return [core = core_](std::function<void()> f) { core->when_idle(std::move(f)); };
  }

  const forwarder_options& options() const noexcept { return core_->options; }

  /// Calls started on this forwarder that have not completed yet.
  std::size_t in_flight() const {
    std::lock_guard lock(core_->idle_mutex);
    return core_->in_flight;
  }

  /**
   * Runs `proc(args...)` on the primary: locally when this node is the primary,
   * forwarded otherwise; retried with the same request id on failures that allow it.
   *
   * Completion signature: `void(boost::system::error_code, R)` (`void(error_code)` for
   * void R). Errors: the procedure's own (SQLite's extended code, e.g. 2067 for a UNIQUE
   * violation; remote_failure for an exception), never retried; `no_primary`,
   * `not_primary`, `unreachable`, `connection_lost`, `timeout`, `circuit_open` after the
   * retries, the deadline or the retry budget ran out; `replication_lag`: the write
   * committed on the primary but this node had not reached its position by the deadline,
   * and `not_confirmed`: this node's history at that position does not hold it (a
   * failover lost it) and the retries ran out (both class `unconfirmed`: a retry with the
   * same request id is safe);
   * `not_yet_durable` (class committed_not_durable): the write COMMITTED on the primary
   * but fewer replicas than forward_options::durability asks reported it before the
   * deadline (a retry with the same request id is safe and waits for them again);
   * `cancelled`. forward_options::diagnostics receives the details, before the handler
   * is invoked.
   *
   * Completes through the handler's associated executor (default: the forwarder's), never
   * inside this call; that executor has outstanding work until then.
   *
   * **Per-Operation Cancellation**: `terminal` only (`partial` and `total` are ignored:
   * they promise no side effects, which a write that may already run cannot keep). The
   * call completes with `cancelled` (class "maybe executed") at once and makes no further
   * attempt; a retry or replication wait that was pending is dropped. A local write that
   * has not started is taken out of the writer's queue and never runs. An attempt already
   * sent, or a local write already running, may still commit on the primary (exactly once
   * under the call's request id): a retry with the same forward_options::id is safe and
   * learns its outcome.
   *
   * **Deadline** (forward_options::deadline, default now + default_deadline): the call
   * completes by then, also on the primary: a local write still queued at the deadline
   * never runs (`timeout`, nothing applied); one running is reported as `timeout` (maybe
   * executed).
   */
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(const procedure<R(Params...)>& proc, ArgsAndToken&&... args_and_token) {
    return async_call(forward_options{}, proc, std::forward<ArgsAndToken>(args_and_token)...);
  }

  /// As above, with per-call options.
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(forward_options options, const procedure<R(Params...)>& proc,
                  ArgsAndToken&&... args_and_token) {
    static_assert(sizeof...(ArgsAndToken) == sizeof...(Params) + 1,
                  "async_call takes the procedure's arguments, then a completion token");
    auto all = std::forward_as_tuple(std::forward<ArgsAndToken>(args_and_token)...);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      static_assert(
          (std::is_convertible_v<std::tuple_element_t<I, std::tuple<ArgsAndToken...>>, Params> &&
           ...),
          "an argument of async_call does not convert to the procedure's parameter type");
      std::string arguments = fwd::detail::encode_arguments(proc, std::get<I>(all)...);
      using signature_t = typename detail::forward_signature_of<R>::type;
      return boost::asio::async_initiate<
          std::tuple_element_t<sizeof...(Params), std::tuple<ArgsAndToken...>>, signature_t>(
          initiation<R>{core_}, std::get<sizeof...(Params)>(all), std::move(options),
          std::string(proc.name()), proc.signature(), std::move(arguments));
    }
    (std::make_index_sequence<sizeof...(Params)>{});
  }

  /**
   * Blocking call: returns the result or throws fwd::error: its code, and in
   * get_diagnostics() "call to <procedure>: <details>" (what() adds the code's message).
   * forward_options::diagnostics, when set, receives the details alone. Must not be
   * called from a thread that runs the forwarder's executor.
   *
   * Bounded by the call's deadline: if the outcome has not arrived by the deadline plus
   * blocking_call_grace (e.g. nothing runs the executor), throws fwd::error(timeout)
   * ("maybe executed": a retry with the same forward_options::id is safe); the operation
   * then completes later with nobody waiting.
   */
  template <class R, class... Params, class... Args>
  R call(const procedure<R(Params...)>& proc, Args&&... args) {
    return call(forward_options{}, proc, std::forward<Args>(args)...);
  }

  template <class R, class... Params, class... Args>
  R call(forward_options options, const procedure<R(Params...)>& proc, Args&&... args) {
    using value_type = std::conditional_t<std::is_void_v<R>, std::monostate, R>;
    // Shared with the completion, which may outlive this call once the wait runs out.
    struct outcome {
      std::mutex mutex;
      std::condition_variable done_cv;
      bool done = false;
      boost::system::error_code ec;
      std::optional<value_type> value;
      fwd::diagnostics diag;
    };
    auto state = std::make_shared<outcome>();
    fwd::diagnostics* user_diag = options.diagnostics;
    options.diagnostics = &state->diag;  // owned by the completion's state, not by this frame
    const auto deadline =
        options.deadline.value_or(std::chrono::steady_clock::now() + core_->options.default_deadline);
    options.deadline = deadline;
    auto deliver = [state](boost::system::error_code ec, std::optional<value_type> value) {
      std::lock_guard lock(state->mutex);
      state->ec = ec;
      state->value = std::move(value);
      state->done = true;
      state->done_cv.notify_all();
    };
    if constexpr (std::is_void_v<R>) {
      async_call(std::move(options), proc, std::forward<Args>(args)...,
                 [deliver](boost::system::error_code ec) {
                   deliver(ec, ec ? std::nullopt : std::optional<value_type>(std::monostate{}));
                 });
    } else {
      async_call(std::move(options), proc, std::forward<Args>(args)...,
                 [deliver](boost::system::error_code ec, R result) {
                   deliver(ec, ec ? std::nullopt : std::optional<value_type>(std::move(result)));
                 });
    }
    std::unique_lock lock(state->mutex);
    if (!state->done_cv.wait_until(lock, deadline + blocking_call_grace, [&] { return state->done; })) {
      // state->diag is still the operation's: report from a copy of nothing.
      fwd::diagnostics timed_out;
      timed_out.assign(fmt::format(
          "the call's deadline passed and its outcome did not arrive (is the forwarder's executor "
          "running?); it may still run on the primary, once: a retry with the same "
          "forward_options::id is safe"));
      if (user_diag != nullptr) user_diag->assign(std::string(timed_out.message()));
      throw fwd::detail::call_failure(make_error_code(errc::timeout), proc.name(), timed_out);
    }
    if (user_diag != nullptr) user_diag->assign(std::string(state->diag.message()));
    if (state->ec) throw fwd::detail::call_failure(state->ec, proc.name(), state->diag);
    if constexpr (!std::is_void_v<R>) return std::move(*state->value);
  }

  /// How long the blocking call() waits past the call's deadline for its outcome.
  static constexpr std::chrono::milliseconds blocking_call_grace{250};

 private:
  template <class R>
  struct initiation {
    std::shared_ptr<detail::forward_core> core;

    template <class Handler>
    void operator()(Handler&& handler, forward_options options, std::string name,
                    std::uint64_t signature, std::string arguments) const {
      if (options.diagnostics != nullptr) options.diagnostics->clear();
      auto completion = std::make_unique<detail::typed_completion<R>>(
          std::forward<Handler>(handler), core->executor, options.diagnostics);
      auto slot = completion->slot();
      auto op = std::make_shared<detail::forward_op>(core, std::move(name), signature,
                                                     std::move(arguments), std::move(options),
                                                     std::move(completion));
      if (slot.is_connected()) {
        slot.assign(
            [weak = std::weak_ptr<detail::forward_op>(op)](boost::asio::cancellation_type type) {
              // Terminal only: partial and total promise no side effects, which a write
              // that may be running on the primary cannot keep.
              if ((type & boost::asio::cancellation_type::terminal) ==
                  boost::asio::cancellation_type::none)
                return;
              if (auto o = weak.lock()) o->cancel();
            });
      }
      op->start();
    }
  };

  std::shared_ptr<detail::forward_core> core_;
};

}  // namespace fwd
