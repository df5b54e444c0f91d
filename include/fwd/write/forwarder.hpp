#pragma once

// The write path. A call runs on the primary exactly once, wherever it starts: on the
// primary it goes to the local write executor (nothing is sent); on a replica it is sent
// to the primary found by discovery (never both). Each call has one request id for all
// its retries, so the primary's dedup table answers a repeated attempt with the stored
// result. Failures are retried by class (not sent / maybe executed / permanent) with
// full-jitter backoff, the call's deadline and a retry budget, through a circuit breaker
// per peer. With read-your-writes (the default) a forwarded call completes only once the
// local replica has replicated the primary's commit.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <fwd/write/breaker.hpp>
#include <fwd/write/builtins.hpp>
#include <fwd/cluster/discovery.hpp>
#include <fwd/detail/completion.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/path_check.hpp>
#include <fwd/procedure.hpp>
#include <fwd/write/retry.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/write/executor.hpp>
#include <fwd/telemetry.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd {

/// A call's identity, fixed across all its retries (128 random bits).
using request_id = sqlite::request_id;

/// A fresh random request id (128 bits from a per-thread generator seeded from the OS).
inline request_id make_request_id() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device(), device(), device()};
    return std::mt19937_64(seed);
  }();
  request_id id{};
  for (std::size_t i = 0; i < id.size(); i += 8) {
    const std::uint64_t word = rng();
    for (std::size_t j = 0; j < 8; ++j) id[i + j] = static_cast<std::uint8_t>(word >> (8 * j));
  }
  return id;
}

/// What happened to one call (filled in as the call runs, read after it completes).
struct call_report {
  std::uint32_t attempts = 0;  ///< attempts made (1 = no retry)
  bool ran_locally = false;    ///< the last attempt ran on this node (it was primary)
  std::string peer;            ///< the last peer the call was sent to ("address:port")
  std::uint64_t txid = 0;      ///< the primary's TXID after the commit (0 if unknown)
  bool waited_for_replication = false;
  request_id id{};  ///< the call's request id
};

/// Per-call settings of a forwarded write.
struct forward_options {
  /// When the call gives up (default: now + forwarder_options::default_deadline).
  std::optional<std::chrono::steady_clock::time_point> deadline;
  /// The request id (default: fresh random). Give the same id to repeat a call safely.
  std::optional<request_id> id;
  /// Overrides forwarder_options::read_your_writes for this call.
  std::optional<bool> read_your_writes;
  /// Receives the failure's details (remote exception, SQLite message, what was tried).
  std::shared_ptr<std::string> error_detail;
  /// Receives what happened (attempts, where it ran, TXID).
  std::shared_ptr<call_report> report;
};

/// How a forwarder finds, reaches and waits for the primary.
struct forwarder_options {
  std::filesystem::path mount;  ///< the LiteFS mount (holds `<db>-pos`)
  std::string database_name;    ///< the database's file name in the mount
  std::chrono::milliseconds default_deadline{5000};
  retry_policy retry;
  breaker_options breaker;
  /// Wait, after a forwarded write, until this replica's `<db>-pos` reaches the
  /// primary's TXID (bounded by the call's deadline).
  bool read_your_writes = true;
  /// How often the replication wait re-reads `<db>-pos` (LiteFS's own proxy: 1 ms), when
  /// no `monitor` is given.
  std::chrono::milliseconds replication_poll{1};
  /// This node's LiteFS monitor: read-your-writes waits on it (one shared poll of the
  /// mount, or LiteFS's events) instead of a poll per call.
  std::shared_ptr<litefs::monitor> monitor;
  /// The local role (default: litefs::current_role(mount)); the server side checks it
  /// before running any write.
  std::function<litefs::role()> role;
  telemetry_ptr telemetry;
};

namespace detail {

/// How a completed forwarded call reaches its caller.
struct forward_completion {
  virtual ~forward_completion() = default;
  virtual void complete(boost::system::error_code ec, std::string result, std::string detail) = 0;
};

/// The shared state of a forwarder: what every call needs, kept alive by the calls.
struct forward_core {
  boost::asio::any_io_executor executor;
  forwarder_options options;
  std::shared_ptr<rpc::client> client;
  std::shared_ptr<primary_finder> finder;
  std::shared_ptr<sqlite::write_executor> writer;  // set at start
  retry_budget budget;
  breaker_set breakers;
  std::atomic<bool> stopped{false};
  struct local_procedure {
    std::uint64_t signature;
    rpc::registry::raw_handler handler;
  };
  std::map<std::string, local_procedure, std::less<>> procedures;  // filled before start

  forward_core(boost::asio::any_io_executor ex, forwarder_options opts,
               std::shared_ptr<rpc::client> c, std::shared_ptr<primary_finder> f)
      : executor(std::move(ex)),
        options(std::move(opts)),
        client(std::move(c)),
        finder(std::move(f)),
        budget(options.retry),
        breakers(options.breaker) {
    if (!options.role) options.role = [mount = options.mount] { return litefs::current_role(mount); };
  }
};

inline bool is_transport_failure(const boost::system::error_code& ec) noexcept {
  return ec == errc::unreachable || ec == errc::connection_lost || ec == errc::protocol_error ||
         ec == errc::unauthenticated || ec == errc::version_mismatch;
}

inline std::string hex_id(const request_id& id) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (auto b : id) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

// One forwarded call, from its first attempt to its completion. Runs on its own strand.
class forward_op : public std::enable_shared_from_this<forward_op> {
 public:
  using clock = std::chrono::steady_clock;

  forward_op(std::shared_ptr<forward_core> core, std::string name, std::uint64_t signature,
             std::string arguments, forward_options options,
             std::unique_ptr<forward_completion> completion)
      : core_(std::move(core)),
        strand_(boost::asio::make_strand(core_->executor)),
        timer_(strand_),
        name_(std::move(name)),
        signature_(signature),
        arguments_(std::move(arguments)),
        id_(options.id.value_or(make_request_id())),
        deadline_(options.deadline.value_or(clock::now() + core_->options.default_deadline)),
        read_your_writes_(options.read_your_writes.value_or(core_->options.read_your_writes)),
        report_(options.report ? std::move(options.report) : std::make_shared<call_report>()),
        completion_(std::move(completion)) {
    report_->id = id_;
  }

  void start() {
    core_->budget.record_call();  // each call earns the node a retry (retry_budget)
    boost::asio::post(strand_, [self = shared_from_this()] { self->attempt(); });
  }

  void cancel() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      self->timer_.cancel();
      self->finish(make_error_code(errc::cancelled),
                   "the call was cancelled; if it was sent it may still run on the primary (once)");
    });
  }

 private:
  void attempt() {
    if (done_) return;
    if (core_->stopped.load()) {
      finish(make_error_code(errc::cancelled), "the node is shutting down");
      return;
    }
    if (clock::now() >= deadline_) {
      finish_deadline();
      return;
    }
    ++report_->attempts;
    if (const primary_location* hit = core_->finder->cached()) {
      on_location(*hit);
      return;
    }
    core_->finder->async_find(
        deadline_, [self = shared_from_this()](boost::system::error_code e, primary_location w) {
          boost::asio::post(self->strand_, [self, e, w = std::move(w)] { self->on_found(e, w); });
        });
  }

  void on_found(boost::system::error_code ec, const primary_location& where) {
    {
      auto self = this;
      if (self->done_) return;
      if (ec) {
        std::string why = ec == errc::no_primary
                              ? "no primary found: " + self->core_->finder->last_failure()
                              : ec.message();
        self->on_failure(ec, std::move(why));
        return;
      }
      self->on_location(where);
    }
  }

  void on_location(const primary_location& where) {
    if (where.local) {
      run_local();
    } else {
      send(where);
    }
  }

  void run_local() {
    report_->ran_locally = true;
    report_->peer.clear();
    const auto found = core_->procedures.find(name_);
    if (found == core_->procedures.end() || found->second.signature != signature_) {
      finish(make_error_code(found == core_->procedures.end() ? errc::unknown_procedure
                                                              : errc::signature_mismatch),
             "procedure '" + name_ +
                 "' is not defined on this node with this signature: define it with node.define");
      return;
    }
    const auto& t = core_->options.telemetry;
    const auto started = clock::now();
    fwd::detail::emit(t, &telemetry::call_started,
                      call_started_event{name_, {}, report_->attempts});
    const rpc::incoming_call call{name_, signature_, arguments_, id_, deadline_};
    // The write handler may answer from any thread: hop to the strand.
    rpc::reply_handler reply = [self = shared_from_this(), started](boost::system::error_code ec,
                                                                    std::string payload) {
      boost::asio::post(self->strand_, [self, started, ec, payload = std::move(payload)]() mutable {
        const auto& tel = self->core_->options.telemetry;
        fwd::detail::emit(
            tel, &telemetry::call_finished,
            call_finished_event{
                self->name_, {}, self->report_->attempts, clock::now() - started, ec});
        if (self->done_) return;
        if (ec) {
          self->on_failure(ec, std::move(payload));
          return;
        }
        self->on_reply(std::move(payload), /*remote=*/false);
      });
    };
    // Answered exactly once, also when the handler throws or drops its reply.
    auto answer = std::make_shared<rpc::detail::reply_once>(std::move(reply), core_->executor, name_);
    rpc::reply_handler forward = [answer](boost::system::error_code ec, std::string payload) {
      answer->complete(ec, std::move(payload));
    };
    try {
      found->second.handler(call, core_->executor, std::move(forward));
    } catch (...) {
      answer->fail(std::current_exception());
    }
  }

  void send(const primary_location& where) {
    const std::string peer = rpc::detail::endpoint_string(where.endpoint);
    report_->ran_locally = false;
    report_->peer = peer;
    circuit_breaker& breaker = core_->breakers.for_peer(peer);
    if (!breaker.allow()) {
      core_->finder->invalidate();
      on_failure(make_error_code(errc::circuit_open),
                 "the circuit breaker for " + peer + " is open");
      return;
    }
    auto detail = std::make_shared<std::string>();
    rpc::call_options options;
    options.deadline = deadline_;
    options.request_id = id_;
    options.attempt = report_->attempts;
    options.error_detail = detail;
    core_->client->async_call_raw(
        where.endpoint, options, name_, signature_, arguments_,
        [self = shared_from_this(), peer, detail](boost::system::error_code e, std::string p) {
          boost::asio::post(self->strand_, [self, peer, detail, e, p = std::move(p)]() mutable {
            self->on_sent(peer, *detail, e, std::move(p));
          });
        });
  }

  void on_sent(const std::string& peer, const std::string& detail, boost::system::error_code ec,
               std::string payload) {
    {
      auto self = this;
      circuit_breaker& b = self->core_->breakers.for_peer(peer);
      if (ec && (is_transport_failure(ec) || ec == errc::timeout)) {
        const breaker_state before = b.state();
        const breaker_state after = b.on_failure();
        if (before != after) self->breaker_changed(peer, after);
      } else {
        const breaker_state before = b.on_success();
        if (before != breaker_state::closed) self->breaker_changed(peer, breaker_state::closed);
      }
      if (self->done_) return;
      if (ec) {
        if (ec == errc::not_primary || is_transport_failure(ec)) self->core_->finder->invalidate();
        self->on_failure(ec, peer + ": " + detail);
        return;
      }
      self->on_reply(std::move(payload), /*remote=*/true);
    }
  }

  void breaker_changed(const std::string& peer, breaker_state state) {
    fwd::detail::emit(core_->options.telemetry, &telemetry::breaker_changed,
                      breaker_event{peer, to_string(state)});
  }

  void on_reply(std::string payload, bool remote) {
    std::uint64_t txid = 0;
    std::string_view result;
    if (!decode_write_reply(payload, txid, result)) {
      finish(make_error_code(errc::protocol_error), "the write's reply is shorter than its TXID");
      return;
    }
    report_->txid = txid;
    result_ = std::string(result);
    if (!remote || !read_your_writes_ || txid == 0) {
      finish({}, {});
      return;
    }
    report_->waited_for_replication = true;
    wait_replication();
  }

  // Polls the local `<db>-pos` until it reaches the primary's TXID, as LiteFS's proxy does.
  void wait_replication() {
    if (done_) return;
    if (const auto& monitor = core_->options.monitor) {
      monitor->async_wait_position(
          report_->txid, deadline_,
          boost::asio::bind_executor(strand_, [self = shared_from_this()](boost::system::error_code ec,
                                                                          litefs::position local) {
            if (self->done_) return;
            if (!ec) return self->finish({}, {});
            self->finish(make_error_code(errc::replication_lag),
                         "the write COMMITTED on the primary at TXID " + std::to_string(self->report_->txid) +
                             " but this node is at TXID " + std::to_string(local.txid) +
                             " when the deadline passed: do not retry it; a local read may not see it yet");
          }));
      return;
    }
    boost::system::error_code ec;
    const litefs::position local =
        litefs::read_position(core_->options.mount, core_->options.database_name, ec);
    if (!ec && local.txid >= report_->txid) {
      finish({}, {});
      return;
    }
    if (core_->stopped.load() || clock::now() >= deadline_) {
      finish(make_error_code(errc::replication_lag),
             "the write COMMITTED on the primary at TXID " + std::to_string(report_->txid) +
                 " but this node is at TXID " + std::to_string(local.txid) +
                 " when the deadline passed: do not retry it; a local read may not see it yet");
      return;
    }
    timer_.expires_after(core_->options.replication_poll);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code e) {
      if (e) return;  // cancelled: cancel() finishes the call
      self->wait_replication();
    });
  }

  void on_failure(boost::system::error_code ec, std::string detail) {
    if (done_) return;
    if (ec == errc::not_primary) core_->finder->invalidate();
    const error_class cls = classify(ec);
    if (cls == error_class::permanent) {
      finish(ec, std::move(detail));
      return;
    }
    if (core_->stopped.load()) {
      finish(ec, std::move(detail));
      return;
    }
    if (report_->attempts >= core_->options.retry.max_attempts) {
      finish(ec, std::move(detail) + " (after " + std::to_string(report_->attempts) + " attempts)");
      return;
    }
    const auto now = clock::now();
    if (now >= deadline_) {
      finish(ec, std::move(detail) + " (the call's deadline passed)");
      return;
    }
    if (!core_->budget.try_acquire(now)) {
      finish(ec, std::move(detail) + " (the node's retry budget is exhausted: not retried)");
      return;
    }
    auto wait = full_jitter_backoff(core_->options.retry, report_->attempts);
    if (now + wait > deadline_)
      wait = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline_ - now);
    fwd::detail::emit(core_->options.telemetry, &telemetry::retry,
                      retry_event{name_, report_->attempts + 1, wait, ec});
    last_ec_ = ec;
    last_detail_ = std::move(detail);
    timer_.expires_after(wait);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code e) {
      if (e) return;
      self->attempt();
    });
  }

  void finish_deadline() {
    if (last_ec_) {
      finish(last_ec_, last_detail_ + " (the call's deadline passed while retrying)");
    } else {
      finish(make_error_code(errc::timeout), "the call's deadline passed before it could be sent");
    }
  }

  void finish(boost::system::error_code ec, std::string detail) {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    auto completion = std::move(completion_);
    completion->complete(ec, ec ? std::string() : std::move(result_), std::move(detail));
  }

  std::shared_ptr<forward_core> core_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  std::string name_;
  std::uint64_t signature_;
  std::string arguments_;
  request_id id_;
  clock::time_point deadline_;
  bool read_your_writes_;
  std::shared_ptr<call_report> report_;
  std::unique_ptr<forward_completion> completion_;
  std::string result_;
  boost::system::error_code last_ec_;
  std::string last_detail_;
  bool done_ = false;
};

template <class R>
struct forward_signature_of {
  using type = void(boost::system::error_code, R);
};
template <>
struct forward_signature_of<void> {
  using type = void(boost::system::error_code);
};

// Decodes the result (on the call's strand) and completes the caller's handler through
// its associated executor.
template <class R>
class typed_completion final : public forward_completion {
 public:
  template <class Handler>
  typed_completion(Handler&& handler, const boost::asio::any_io_executor& fallback,
                   std::shared_ptr<std::string> detail)
      : completion_(std::forward<Handler>(handler), fallback), detail_(std::move(detail)) {}

  boost::asio::cancellation_slot slot() const noexcept { return completion_.slot(); }

  void complete(boost::system::error_code ec, std::string result, std::string why) override {
    if (ec) {
      if (detail_) *detail_ = std::move(why);
    }
    // Posted: the call may complete before its initiating call returns (a stopped node).
    if constexpr (std::is_void_v<R>) {
      if (!ec) {
        fwd::detail::decode_result<void>(result, ec);
        if (ec && detail_) *detail_ = "the result could not be decoded";
      }
      completion_.post(ec);
    } else {
      R value{};
      if (!ec) {
        std::string decode_why;
        value = fwd::detail::decode_result<R>(result, ec, &decode_why);
        if (ec && detail_) *detail_ = "the result could not be decoded: " + decode_why;
      }
      completion_.post(ec, std::move(value));
    }
  }

 private:
  fwd::detail::pending_completion<typename forward_signature_of<R>::type> completion_;
  std::shared_ptr<std::string> detail_;
};

template <class F, class... Ds>
decltype(auto) invoke_writer(F& fn, sqlite3* db, std::tuple<Ds...>& args) {
  return std::apply(
      [&](auto&... values) -> decltype(auto) {
        if constexpr (std::is_invocable_v<F&, sqlite3*, Ds&...>) {
          return std::invoke(fn, db, values...);
        } else {
          auto c = sqlite::connection::borrow(db);
          return std::invoke(fn, c, values...);
        }
      },
      args);
}

// The server side of a write procedure (also run directly for local calls): checks the
// local role, decodes the arguments, and runs the user's function through the write
// executor with the call's request id; replies with the TXID envelope.
template <class Proc, class F>
rpc::registry::raw_handler make_write_handler(std::weak_ptr<forward_core> weak,
                                              std::shared_ptr<F> fn) {
  return [weak, fn](const rpc::incoming_call& call, boost::asio::any_io_executor /*executor*/,
                    rpc::reply_handler reply) {
    auto core = weak.lock();
    if (!core || core->stopped.load()) {
      std::move(reply)(make_error_code(errc::cancelled), "the node is shutting down; nothing ran");
      return;
    }
    litefs::role role;
    try {
      role = core->options.role();
    } catch (const std::exception& e) {
      role.reason = std::string("reading the local role failed: ") + e.what();
    } catch (...) {
      role.reason = "reading the local role failed";
    }
    if (role.kind != litefs::role_kind::primary) {
      std::string why = "this node is not the primary (" + role.reason + "); nothing ran";
      if (role.kind == litefs::role_kind::replica)
        why += "; LiteFS names the primary " + role.primary_hostname;
      std::move(reply)(make_error_code(errc::not_primary), std::move(why));
      return;
    }
    auto writer = core->writer;
    if (!writer) {
      std::move(reply)(make_error_code(errc::not_primary),
                       "this node has not started its writer; nothing ran");
      return;
    }
    boost::system::error_code ec;
    std::string why;
    auto args = std::make_shared<typename Proc::arguments>(
        fwd::detail::decode_arguments<Proc>(call.arguments, ec, &why));
    if (ec) {
      std::move(reply)(ec, "the arguments of '" + std::string(call.procedure) +
                               "' could not be decoded as " + Proc::signature_text() + ": " + why);
      return;
    }
    using R = typename Proc::result_type;
    writer->async_write(
        call.request_id,
        [fn, args](sqlite3* db) -> std::string {
          if constexpr (std::is_void_v<R>) {
            invoke_writer(*fn, db, *args);
            return {};
          } else {
            return fwd::detail::encode_result<R>(static_cast<R>(invoke_writer(*fn, db, *args)));
          }
        },
        [reply = std::move(reply)](boost::system::error_code e, std::string result,
                                   std::uint64_t txid) mutable {
          if (e) {
            std::move(reply)(e, std::move(result));
          } else {
            std::move(reply)(boost::system::error_code{}, encode_write_reply(txid, result));
          }
        });
  };
}

}  // namespace detail

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
   * own savepoint. It must not BEGIN/COMMIT/ROLLBACK itself. A fwd::error it throws
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
        std::make_shared<function>(std::forward<F>(fn)));
    registry.define_raw(std::string(proc.name()), proc.signature(), handler);
    core_->procedures.emplace(std::string(proc.name()),
                              detail::forward_core::local_procedure{proc.signature(), handler});
  }

  /// Gives the forwarder the primary's write executor (the node opens it at start).
  void attach_writer(std::shared_ptr<sqlite::write_executor> writer) {
    core_->writer = std::move(writer);
  }

  /// Refuses new calls (cancelled); calls waiting for a retry or replication end soon.
  void stop() { core_->stopped.store(true); }

  const forwarder_options& options() const noexcept { return core_->options; }

  /**
   * Runs `proc(args...)` on the primary: locally when this node is the primary,
   * forwarded otherwise; retried with the same request id on failures that allow it.
   *
   * Completion signature: `void(boost::system::error_code, R)` (`void(error_code)` for
   * void R). Errors: the procedure's own (SQLite's extended code, e.g. 2067 for a UNIQUE
   * violation; remote_failure for an exception), never retried; `no_primary`,
   * `not_primary`, `unreachable`, `connection_lost`, `timeout`, `circuit_open` after the
   * retries, the deadline or the retry budget ran out; `replication_lag`: the write
   * COMMITTED but this node had not replicated it by the deadline (do not retry);
   * `cancelled`. forward_options::error_detail receives the details.
   *
   * Completes through the handler's associated executor (default: the forwarder's), never
   * inside this call; that executor has outstanding work until then.
   *
   * **Per-Operation Cancellation**: `terminal`, `partial` and `total`: the call completes
   * with `cancelled` at once (a retry or replication wait that was pending is dropped) and
   * makes no further attempt. An attempt already sent, or a local write already queued,
   * may still run on the primary (exactly once under the call's request id) and its
   * outcome is dropped: repeat the call with the same forward_options::id to learn it.
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
   * Blocking call: returns the result or throws fwd::error (its what() carries the
   * details). Must not be called from a thread that runs the forwarder's executor.
   */
  template <class R, class... Params, class... Args>
  R call(const procedure<R(Params...)>& proc, Args&&... args) {
    return call(forward_options{}, proc, std::forward<Args>(args)...);
  }

  template <class R, class... Params, class... Args>
  R call(forward_options options, const procedure<R(Params...)>& proc, Args&&... args) {
    auto detail = options.error_detail ? options.error_detail : std::make_shared<std::string>();
    options.error_detail = detail;
    auto fail = [&](boost::system::error_code ec) {
      return fwd::error(
          ec, "call to " + std::string(proc.name()) + (detail->empty() ? "" : ": " + *detail));
    };
    if constexpr (std::is_void_v<R>) {
      std::promise<void> promise;
      auto future = promise.get_future();
      async_call(std::move(options), proc, std::forward<Args>(args)...,
                 [&](boost::system::error_code ec) {
                   if (ec)
                     promise.set_exception(std::make_exception_ptr(fail(ec)));
                   else
                     promise.set_value();
                 });
      future.get();
    } else {
      std::promise<R> promise;
      auto future = promise.get_future();
      async_call(std::move(options), proc, std::forward<Args>(args)...,
                 [&](boost::system::error_code ec, R result) {
                   if (ec)
                     promise.set_exception(std::make_exception_ptr(fail(ec)));
                   else
                     promise.set_value(std::move(result));
                 });
      return future.get();
    }
  }

 private:
  template <class R>
  struct initiation {
    std::shared_ptr<detail::forward_core> core;

    template <class Handler>
    void operator()(Handler&& handler, forward_options options, std::string name,
                    std::uint64_t signature, std::string arguments) const {
      auto detail = options.error_detail;
      auto completion = std::make_unique<detail::typed_completion<R>>(
          std::forward<Handler>(handler), core->executor, std::move(detail));
      auto slot = completion->slot();
      auto op = std::make_shared<detail::forward_op>(core, std::move(name), signature,
                                                     std::move(arguments), std::move(options),
                                                     std::move(completion));
      if (slot.is_connected()) {
        slot.assign(
            [weak = std::weak_ptr<detail::forward_op>(op)](boost::asio::cancellation_type type) {
              if (type == boost::asio::cancellation_type::none) return;
              if (auto o = weak.lock()) o->cancel();
            });
      }
      op->start();
    }
  };

  std::shared_ptr<detail::forward_core> core_;
};

}  // namespace fwd
