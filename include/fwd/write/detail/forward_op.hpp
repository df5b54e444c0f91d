#pragma once

// One forwarded call from its first attempt to its completion (fwd::detail::forward_op):
// found, sent or run locally, retried, and waited for until it is replicated here.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <fwd/write/breaker.hpp>
#include <fwd/write/detail/forward_completion.hpp>
#include <fwd/write/detail/dedup_lookup.hpp>
#include <fwd/write/detail/forward_core.hpp>
#include <fwd/write/forward_options.hpp>
#include <fwd/write/builtins.hpp>
#include <fwd/cluster/discovery.hpp>
#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs/history.hpp>
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

namespace detail {

inline bool is_transport_failure(const boost::system::error_code& ec) noexcept {
  return ec == errc::unreachable || ec == errc::connection_lost || ec == errc::protocol_error ||
         ec == errc::unauthenticated || ec == errc::version_mismatch;
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
        local_timer_(strand_),
        name_(std::move(name)),
        signature_(signature),
        arguments_(std::move(arguments)),
        id_(options.id.value_or(make_request_id())),
        deadline_(options.deadline.value_or(clock::now() + core_->options.default_deadline)),
        read_your_writes_(options.read_your_writes.value_or(core_->options.read_your_writes)),
        durability_(options.durability.value_or(core_->options.durability)),
        report_(options.report ? std::move(options.report) : std::make_shared<call_report>()),
        completion_(std::move(completion)) {
    report_->id = id_;
    core_->call_began();
  }

  ~forward_op() {
    if (!counted_out_) core_->call_ended();
  }

  void start() {
    core_->budget.record_call();  // each call earns the node a retry (retry_budget)
    boost::asio::post(strand_, [self = shared_from_this()] { self->attempt(); });
  }

  // Terminal cancellation: the call completes with cancelled now. A local write that has
  // not started is dropped from the writer's queue (it never runs); one already running,
  // or an attempt already sent, may still commit (once, under the call's request id).
  void cancel() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      if (self->done_) return;
      self->timer_.cancel();
      // A read-your-writes wait leaves the monitor now, not at its deadline.
      self->replication_wait_.emit(boost::asio::cancellation_type::terminal);
      if (self->local_waiting_ &&
          self->drop_local(make_error_code(errc::cancelled), "the call was cancelled before its write ran")) {
        self->finish(make_error_code(errc::cancelled),
                     "the call was cancelled before its write started on this node (the primary): it "
                     "never ran, nothing was applied");
        return;
      }
      self->finish(make_error_code(errc::cancelled),
                   "the call was cancelled: it may have run (or may still run) on the primary, once under "
                   "its request id; a retry with the same forward_options::id is safe and learns the outcome");
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
    if (done_) return;
    if (ec) {
      std::string why = ec == errc::no_primary
                            ? fmt::format("no primary found: {}", core_->finder->last_failure())
                            : ec.message();
      on_failure(ec, std::move(why));
      return;
    }
    on_location(where);
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
             fmt::format("procedure '{}' is not defined on this node with this signature: define it "
                         "with node.define",
                         name_));
      return;
    }
    const auto& t = core_->options.telemetry;
    const auto started = clock::now();
    fwd::detail::emit(t, &telemetry::call_started,
                      call_started_event{name_, {}, report_->attempts});
    const rpc::incoming_call call{name_, signature_, arguments_, id_, deadline_, durability_.wire()};
    // The write handler may answer from any thread: hop to the strand.
    const std::uint64_t local_attempt = ++local_attempts_;
    rpc::reply_handler reply = [self = shared_from_this(), started, local_attempt](boost::system::error_code ec,
                                                                    std::string payload) {
      boost::asio::post(self->strand_, [self, started, local_attempt, ec, payload = std::move(payload)]() mutable {
        if (self->local_attempts_ == local_attempt) {
          self->local_waiting_ = false;
          self->local_timer_.cancel();
        }
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
    // The local call ends at its deadline even when the writer is busy: a write still
    // queued is dropped then, one running is reported as maybe executed.
    local_waiting_ = true;
    local_timer_.expires_at(deadline_);
    local_timer_.async_wait([self = shared_from_this(), local_attempt](boost::system::error_code e) {
      if (e || self->done_ || !self->local_waiting_ || self->local_attempts_ != local_attempt) return;
      self->local_deadline();
    });
    try {
      found->second.handler(call, core_->executor, std::move(forward));
    } catch (...) {
      answer->fail(std::current_exception());
    }
  }

  // Drops the local write from the writer's queue if it has not started; true if dropped.
  bool drop_local(boost::system::error_code ec, const char* why) {
    const auto writer = core_->writer;
    return writer && writer->drop_queued(id_, ec, fmt::format("{}: it never ran, nothing was applied", why)) ==
                         sqlite::write_drop::dropped;
  }

  void local_deadline() {
    local_waiting_ = false;
    if (drop_local(make_error_code(errc::timeout), "the call's deadline passed before its write ran")) {
      finish(make_error_code(errc::timeout),
             "the call's deadline passed while its write was queued on this node (the primary): it "
             "never ran, nothing was applied (not executed)");
      return;
    }
    finish(make_error_code(errc::timeout),
           "the call's deadline passed while its write was running on this node (the primary): it may "
           "commit (maybe executed); a retry with the same forward_options::id is safe and learns the "
           "outcome");
  }

  void send(const primary_location& where) {
    const std::string peer = rpc::detail::endpoint_string(where.endpoint);
    report_->ran_locally = false;
    report_->peer = peer;
    circuit_breaker& breaker = core_->breakers.for_peer(peer);
    if (!breaker.allow()) {
      core_->finder->invalidate();
      on_failure(make_error_code(errc::circuit_open),
                 fmt::format("the circuit breaker for {} is open", peer));
      return;
    }
    rpc::call_options options;
    options.deadline = deadline_;
    options.request_id = id_;
    options.attempt = report_->attempts;
    options.durability = durability_.wire();
    // One attempt is in flight at a time; its handler keeps this op (and so the
    // diagnostics) alive, and the client fills them before the handler runs.
    options.diagnostics = &attempt_diagnostics_;
    core_->client->async_call_raw(
        where.endpoint, options, name_, signature_, arguments_,
        [self = shared_from_this(), peer](boost::system::error_code e, std::string p) {
          boost::asio::post(self->strand_, [self, peer, e, p = std::move(p)]() mutable {
            self->on_sent(peer, self->attempt_diagnostics_.message(), e, std::move(p));
          });
        });
  }

  void on_sent(const std::string& peer, const std::string& detail, boost::system::error_code ec,
               std::string payload) {
    circuit_breaker& b = core_->breakers.for_peer(peer);
    if (ec && (is_transport_failure(ec) || ec == errc::timeout)) {
      const breaker_state before = b.state();
      const breaker_state after = b.on_failure();
      if (before != after) breaker_changed(peer, after);
    } else {
      const breaker_state before = b.on_success();
      if (before != breaker_state::closed) breaker_changed(peer, breaker_state::closed);
    }
    if (done_) return;
    if (ec) {
      if (ec == errc::not_primary || is_transport_failure(ec)) core_->finder->invalidate();
      on_failure(ec, fmt::format("{}: {}", peer, detail));
      return;
    }
    on_reply(std::move(payload), /*remote=*/true);
  }

  void breaker_changed(const std::string& peer, breaker_state state) {
    fwd::detail::emit(core_->options.telemetry, &telemetry::breaker_changed,
                      breaker_event{peer, to_string(state)});
  }

  void on_reply(std::string payload, bool remote) {
    write_reply reply;
    if (!decode_write_reply(payload, reply)) {
      finish(make_error_code(errc::protocol_error),
             "the write's reply is shorter than its position (TXID and checksum)");
      return;
    }
    primary_position_ = reply.position;
    report_->txid = reply.position.txid;
    report_->checksum = reply.position.checksum;
    result_ = std::string(reply.result);
    if (!remote || !read_your_writes_) {
      finish({}, {});
      return;
    }
    if (primary_position_.txid == 0) {
      // The primary committed but could not read its position (its LiteFS died right
      // after the COMMIT): nothing here can confirm the write. Retried with the same
      // request id, the primary answers from its dedup table with a position.
      on_failure(make_error_code(errc::not_confirmed),
                 "the write committed on the primary, but the primary could not read its LiteFS "
                 "position after the commit, so this node cannot confirm it holds the write");
      return;
    }
    report_->waited_for_replication = true;
    replication_started_ = clock::now();
    wait_replication();
  }

  // Read-your-writes (forward_confirm.hpp): waits for the primary's position here, then
  // confirms that this node's history holds the write.
  std::string replication_lag_detail(litefs::position local) const;
  void wait_replication();
  void on_replicated(litefs::history_match match, litefs::position local);
  void look_up_dedup_row(litefs::history_match match, litefs::position local);
  void on_dedup_row(litefs::history_match match, litefs::position local, dedup_row row, const std::string& why);

  void on_failure(boost::system::error_code ec, std::string detail) {
    if (done_) return;
    if (ec == errc::not_primary) core_->finder->invalidate();
    const error_class cls = classify(ec);
    if (cls == error_class::permanent || cls == error_class::committed_not_durable) {
      finish(ec, std::move(detail));
      return;
    }
    if (core_->stopped.load()) {
      finish(ec, std::move(detail));
      return;
    }
    if (report_->attempts >= core_->options.retry.max_attempts) {
      finish(ec, fmt::format("{} (after {} attempts)", detail, report_->attempts));
      return;
    }
    const auto now = clock::now();
    if (now >= deadline_) {
      finish(ec, fmt::format("{} (the call's deadline passed)", detail));
      return;
    }
    if (!core_->budget.try_acquire(now)) {
      finish(ec, fmt::format("{} (the node's retry budget is exhausted: not retried)", detail));
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
      finish(last_ec_, fmt::format("{} (the call's deadline passed while retrying)", last_detail_));
    } else {
      finish(make_error_code(errc::timeout), "the call's deadline passed before it could be sent");
    }
  }

  void finish(boost::system::error_code ec, std::string detail) {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    local_timer_.cancel();
    if (const auto& t = core_->options.telemetry; t && t->write_finished) {
      const auto now = clock::now();
      write_finished_event event{name_, !report_->ran_locally, report_->attempts, now - started_, ec,
                                 report_->waited_for_replication, {}};
      if (event.waited_for_replication) event.replication_wait = now - replication_started_;
      fwd::detail::invoke_hook(t->write_finished, event);
    }
    auto completion = std::move(completion_);
    completion->complete(ec, ec ? std::string() : std::move(result_), std::move(detail));
    counted_out_ = true;
    core_->call_ended();
  }

  std::shared_ptr<forward_core> core_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  boost::asio::steady_timer local_timer_;  // the deadline of a local write
  boost::asio::cancellation_signal replication_wait_;  // cancels the monitor wait
  std::string name_;
  std::uint64_t signature_;
  std::string arguments_;
  request_id id_;
  clock::time_point deadline_;
  clock::time_point started_ = clock::now();
  clock::time_point replication_started_{};
  bool read_your_writes_;
  fwd::durability durability_;
  std::shared_ptr<call_report> report_;
  litefs::position primary_position_;  // the primary's position after the write (from its reply)
  std::unique_ptr<forward_completion> completion_;
  std::string result_;
  boost::system::error_code last_ec_;
  std::string last_detail_;
  diagnostics attempt_diagnostics_;  // the detail of the attempt in flight
  bool done_ = false;
  bool counted_out_ = false;          // call_ended() has been called
  bool local_waiting_ = false;       // a local write was handed to the writer, no answer yet
  std::uint64_t local_attempts_ = 0;  // tells a stale local answer or deadline from the current one
  std::uint64_t lookups_ = 0;         // dedup row lookups begun: tells a stale answer from the current one
  bool looking_up_ = false;           // a dedup row lookup runs on the monitor's thread
};

}  // namespace detail

}  // namespace fwd

#include <fwd/write/detail/forward_confirm.hpp>
