#pragma once

// One connection of the RPC client to one peer: connecting (with backoff), the handshake,
// many calls in flight matched by stream id, deadlines, and the calls' completions.

#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>
#include <fwd/rpc/client_options.hpp>
#include <fwd/rpc/detail/pending_call.hpp>
#include <fwd/rpc/frame_buffer.hpp>
#include <fwd/rpc/detail/tls_stream.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/server.hpp>  // status codes on the wire, endpoint_string
#include <fwd/rpc/tls.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/rpc/wire.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fwd::rpc {

namespace detail {

class client_connection : public std::enable_shared_from_this<client_connection> {
 public:
  using tcp = boost::asio::ip::tcp;
  using clock = std::chrono::steady_clock;

  client_connection(boost::asio::any_io_executor executor, tcp::endpoint peer, std::shared_ptr<client_state> state)
      : strand_(boost::asio::make_strand(executor)),
        peer_(peer),
        peer_name_(endpoint_string(peer)),
        state_(std::move(state)),
        stream_(tcp::socket(strand_)),
        connect_timer_(strand_),
        deadline_timer_(strand_),
        backoff_(state_->options.reconnect_backoff) {}

  const boost::asio::strand<boost::asio::any_io_executor>& strand() const noexcept { return strand_; }
  std::uint64_t next_stream_id() noexcept { return next_stream_.fetch_add(1, std::memory_order_relaxed); }

  /// Takes ownership of a call; runs on the strand.
  void submit(std::shared_ptr<pending_call> call) {
    if (strand_.running_in_this_thread()) {
      // A call started from a completion on this connection (callers chain calls so): taken
      // at once, without a hop through the scheduler. Whatever completes it before the
      // initiating call returns (a closed client, a frame too large) posts the completion.
      auto taken = call;
      taken->in_initiation = true;
      on_submit(std::move(call));
      taken->in_initiation = false;
      return;
    }
    // post, not dispatch: nothing may complete inside the initiating call.
    boost::asio::post(strand_, [self = shared_from_this(), call = std::move(call)]() mutable {
      self->on_submit(std::move(call));
    });
  }

  /// Cancels a call (terminal): it completes with `cancelled`; a reply is ignored.
  void cancel(std::uint64_t stream_id) {
    boost::asio::post(strand_, [self = shared_from_this(), stream_id] {
      self->finish(stream_id, make_error_code(errc::cancelled), "the call was cancelled");
    });
  }

  /// Fails every call with `cancelled` and closes (the client is going away).
  void shutdown() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->shut_down_ = true;
      self->close_socket(make_error_code(errc::cancelled));
      self->fail_all(make_error_code(errc::cancelled), "the client was closed", true);
      self->connect_timer_.cancel();
      self->deadline_timer_.cancel();
    });
  }

 private:
  enum class state { idle, backoff, connecting, handshaking, ready };

  void on_submit(std::shared_ptr<pending_call> call) {
    if (shut_down_) {
      call->done = true;
      emit_finished(*call, make_error_code(errc::cancelled));
      call->complete(make_error_code(errc::cancelled), "the client was closed");
      return;
    }
    if (call->frame.size() > state_->options.max_frame_size) {
      call->done = true;
      auto ec = make_error_code(errc::frame_too_large);
      emit_finished(*call, ec);
      call->complete(ec, "the request is " + std::to_string(call->frame.size()) +
                             " bytes; max_frame_size is " + std::to_string(state_->options.max_frame_size));
      return;
    }
    call->deadline_entry = deadlines_.emplace(call->deadline, call->stream_id);
    if (call->deadline_entry == deadlines_.begin()) arm_deadline_timer();
    unsent_.push_back(call);
    calls_.emplace(call->stream_id, std::move(call));
    switch (state_now_) {
      case state::ready: flush(); break;
      case state::idle: connect(); break;
      default: break;  // sent once the connection is up
    }
  }

  // --- connecting ---------------------------------------------------------------------

  void connect() {
    state_now_ = state::connecting;
    const std::uint64_t generation = ++generation_;
    stream_.close();
    stream_ = transport_stream(tcp::socket(strand_));
    connect_timer_.expires_after(state_->options.connect_timeout);
    connect_timer_.async_wait([self = shared_from_this(), generation](boost::system::error_code ec) {
      if (ec || generation != self->generation_) return;
      if (self->state_now_ == state::connecting || self->state_now_ == state::handshaking) {
        self->connect_failed(make_error_code(errc::unreachable),
                             "no connection to " + self->peer_name_ + " within the connect timeout");
      }
    });
    stream_.socket().async_connect(peer_, [self = shared_from_this(), generation](boost::system::error_code ec) {
      if (generation != self->generation_ || self->state_now_ != state::connecting) return;
      if (ec) {
        self->connect_failed(make_error_code(errc::unreachable),
                             "could not connect to " + self->peer_name_ + ": " + ec.message());
        return;
      }
      self->on_connected();
    });
  }

  void on_connected() {
    boost::system::error_code ignored;
    stream_.socket().set_option(tcp::no_delay(true), ignored);
    stream_.socket().set_option(boost::asio::socket_base::keep_alive(true), ignored);
    state_now_ = state::handshaking;
    if (!state_->tls_context) {
      // Lets flush() write at once without ever blocking (Asio's own operations are
      // unaffected).
      stream_.socket().non_blocking(true, ignored);
      start_handshake();
      return;
    }
    stream_.start_tls(*state_->tls_context);
    stream_.expect_server_name(state_->options.tls->verify_hostname);
    stream_.async_tls_handshake(boost::asio::ssl::stream_base::client,
                                [self = shared_from_this(), generation = generation_](boost::system::error_code ec) {
                                  if (generation != self->generation_ || self->state_now_ != state::handshaking) return;
                                  if (ec) {
                                    // Nothing was sent; a certificate or TLS mismatch is not
                                    // fixed by retrying, hence unauthenticated.
                                    self->connect_failed(make_error_code(errc::unauthenticated),
                                                         "the TLS handshake with " + self->peer_name_ +
                                                             " failed: " + self->stream_.tls_failure_reason(ec) +
                                                             ": check both nodes' certificates and CA, and that "
                                                             "the server has TLS on");
                                    return;
                                  }
                                  self->start_handshake();
                                });
  }

  // fwd's own handshake (after TLS, when on): versions, then the cluster secret.
  void start_handshake() {
    handshake_.emplace(state_->options.secret, state_->versions);
    control_ = handshake_->start();
    buffer_ = frame_buffer();
    read();
    flush();
  }

  // Nothing was sent: the waiting calls fail with `ec`, and the next attempt waits.
  void connect_failed(boost::system::error_code ec, std::string detail) {
    ++generation_;
    close_socket(ec);
    fwd::detail::emit(state_->options.telemetry, &telemetry::connection_failed, connection_event{peer_name_, ec});
    fail_all(ec, detail, true);
    state_now_ = state::backoff;
    connect_timer_.expires_after(backoff_);
    backoff_ = std::min(backoff_ * 2, state_->options.max_reconnect_backoff);
    connect_timer_.async_wait([self = shared_from_this(), generation = generation_](boost::system::error_code e) {
      if (e || generation != self->generation_ || self->state_now_ != state::backoff) return;
      self->state_now_ = state::idle;
      if (!self->unsent_.empty()) self->connect();
    });
  }

  void close_socket(boost::system::error_code /*why*/) {
    stream_.close();
    control_.clear();
    handshake_.reset();
    // The write in flight belonged to this connection: its completion is stale (generation)
    // and will not clear this, so the next connection's first flush() must not wait for it.
    // (A reset during the handshake left this set, and no later handshake was ever sent.)
    writing_ = false;
    buffers_.clear();
    batch_.clear();
    control_in_flight_.clear();
    // The deadline timer outlives its last call only while connected (arm_deadline_timer).
    if (deadlines_.empty()) cancel_deadline_timer();
  }

  // --- reading --------------------------------------------------------------------------

  void read() {
    auto [data, size] = buffer_.prepare();
    stream_.async_read_some(boost::asio::buffer(data, size),
                            [self = shared_from_this(), generation = generation_](boost::system::error_code ec,
                                                                                   std::size_t n) {
                              if (generation != self->generation_) return;
                              self->on_read(ec, n);
                            });
  }

  void on_read(boost::system::error_code ec, std::size_t n) {
    if (ec) {
      connection_broke(ec, "the connection to " + peer_name_ + " broke: " + ec.message());
      return;
    }
    buffer_.commit(n);
    wire::frame_view frame;
    const std::uint64_t generation = generation_;
    while (generation == generation_) {
      const std::size_t limit =
          state_now_ == state::ready ? state_->options.max_frame_size : wire::max_handshake_frame_size;
      if (!buffer_.next(limit, frame, ec)) break;
      on_frame(frame);
    }
    if (generation != generation_) return;
    if (ec) {
      connection_broke(ec, "the server at " + peer_name_ + " sent bytes that are not fwd's protocol");
      return;
    }
    if (calls_.empty()) buffer_.shrink();
    read();
  }

  void on_frame(const wire::frame_view& frame) {
    if (state_now_ == state::handshaking) {
      auto step = handshake_->on_frame(frame);
      if (step.ec) {
        connect_failed(step.ec, step.detail);  // nothing was sent yet
        return;
      }
      if (!step.send.empty()) {
        control_ += step.send;
        flush();
      }
      if (step.done) {
        state_now_ = state::ready;
        handshake_.reset();
        connect_timer_.cancel();
        backoff_ = state_->options.reconnect_backoff;
        fwd::detail::emit(state_->options.telemetry, &telemetry::connection_opened, connection_event{peer_name_, {}});
        flush();
      }
      return;
    }
    if (frame.header.type != wire::frame_type::reply) {
      connection_broke(make_error_code(errc::protocol_error),
                       "the server at " + peer_name_ + " sent an unexpected frame");
      return;
    }
    const auto ec = decode_status(frame.header.aux);
    finish(frame.header.stream_id, ec, std::string(ec ? frame.meta : frame.body));
  }

  // The connection broke: calls already sent may have run (connection_lost); the others
  // were never sent and wait for the next connection.
  void connection_broke(boost::system::error_code why, const std::string& detail) {
    const bool was_ready = state_now_ == state::ready;
    if (!was_ready && stream_.is_tls() && why.category() == boost::asio::error::get_ssl_category()) {
      // Under TLS 1.3 the server checks the client's certificate after the client's side of
      // the TLS handshake is done: its refusal arrives here, as an alert.
      connect_failed(make_error_code(errc::unauthenticated), "TLS with " + peer_name_ + " failed: " +
                                                                 stream_.tls_failure_reason(why) +
                                                                 ": check this node's certificate and the CA "
                                                                 "the server trusts");
      return;
    }
    if (!was_ready) {
      connect_failed(why == errc::protocol_error ? why : make_error_code(errc::unreachable), detail);
      return;
    }
    ++generation_;
    close_socket(why);
    fwd::detail::emit(state_->options.telemetry, &telemetry::connection_closed, connection_event{peer_name_, why});
    fail_all(make_error_code(errc::connection_lost), detail, false);
    state_now_ = state::idle;
    if (!unsent_.empty()) connect();
  }

  // --- writing --------------------------------------------------------------------------

  // Frames are coalesced: every call queued while a write runs goes out in the next one,
  // as one gathered write.
  void flush() {
    if (writing_) return;
    buffers_.clear();
    batch_.clear();
    if (!control_.empty()) {
      control_in_flight_.swap(control_);
      control_.clear();
      buffers_.push_back(boost::asio::buffer(control_in_flight_));
    }
    if (state_now_ == state::ready) {
      const auto now = clock::now();
      std::size_t bytes = 0;
      while (!unsent_.empty() && batch_.size() < 1024 && bytes < (std::size_t{1} << 22)) {
        auto call = std::move(unsent_.front());
        unsent_.pop_front();
        if (call->done) continue;
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(call->deadline - now).count();
        if (left <= 0) {
          finish(call->stream_id, make_error_code(errc::timeout), "the deadline passed before the call was sent");
          continue;
        }
        // The remaining time, as of now: the server drops the request if it runs out.
        fwd::detail::store_le<std::uint32_t>(call->frame.data() + wire::deadline_offset,
                                             static_cast<std::uint32_t>(std::min<long long>(left, 0xffffffffLL)));
        call->sent = true;
        bytes += call->frame.size();
        buffers_.push_back(boost::asio::buffer(call->frame));
        batch_.push_back(std::move(call));
      }
    }
    if (buffers_.empty()) return;
    writing_ = true;
    if (!stream_.is_tls() && stream_.socket().non_blocking() && batch_.size() == calls_.size()) {
      // Plain TCP, and no other call waits for a reply: what the socket takes now is written
      // now, which spares the trip through the scheduler that an asynchronous write's
      // completion costs. The rest, and any error, go through async_write below. With
      // other calls in flight, the asynchronous write is kept: calls started while it
      // completes (as replies arrive) go out together in the next write.
      boost::system::error_code ec;
      std::size_t written = stream_.socket().write_some(buffers_, ec);
      if (ec) written = 0;
      if (written == boost::asio::buffer_size(buffers_)) {
        writing_ = false;
        batch_.clear();
        control_in_flight_.clear();
        flush();  // what the batch limits left behind
        return;
      }
      auto first = buffers_.begin();
      while (written >= first->size()) written -= (first++)->size();
      buffers_.erase(buffers_.begin(), first);
      buffers_.front() += written;
    }
    boost::asio::async_write(stream_, buffers_,
                             [self = shared_from_this(), generation = generation_](boost::system::error_code ec,
                                                                                    std::size_t) {
                               if (generation != self->generation_) return;
                               self->writing_ = false;
                               self->batch_.clear();
                               self->control_in_flight_.clear();
                               if (ec && self->state_now_ == state::handshaking && self->stream_.is_tls()) {
                                 // A server that refuses this TLS client resets the connection
                                 // after its alert: the pending read reports the alert (or the
                                 // connect timeout ends the attempt).
                                 return;
                               }
                               if (ec) {
                                 self->connection_broke(ec, "writing to " + self->peer_name_ + " failed: " + ec.message());
                                 return;
                               }
                               self->flush();
                             });
  }

  // --- completion -----------------------------------------------------------------------

  void finish(std::uint64_t stream_id, boost::system::error_code ec, std::string payload) {
    auto it = calls_.find(stream_id);
    if (it == calls_.end()) return;  // already done (timed out, cancelled): drop the reply
    auto call = std::move(it->second);
    calls_.erase(it);
    complete(*call, ec, std::move(payload));
  }

  void complete(pending_call& call, boost::system::error_code ec, std::string payload) {
    if (call.done) return;
    call.done = true;
    const bool was_first = call.deadline_entry == deadlines_.begin();
    deadlines_.erase(call.deadline_entry);
    if (was_first) arm_deadline_timer();
    emit_finished(call, ec);
    call.frame.clear();
    call.frame.shrink_to_fit();
    call.complete(ec, std::move(payload));
  }

  void emit_finished(const pending_call& call, boost::system::error_code ec) {
    if (state_->options.telemetry && state_->options.telemetry->call_finished) {
      fwd::detail::invoke_hook(state_->options.telemetry->call_finished, call_finished_event{
          call.procedure, peer_name_, call.attempt, clock::now() - call.started, ec});
    }
  }

  // Fails every call (only the unsent ones when `include_sent` is false is not what this
  // does: sent calls always fail; unsent ones fail only when `include_unsent`).
  void fail_all(boost::system::error_code ec, const std::string& detail, bool include_unsent) {
    std::vector<std::shared_ptr<pending_call>> failing;
    for (auto it = calls_.begin(); it != calls_.end();) {
      if (it->second->sent || include_unsent) {
        failing.push_back(std::move(it->second));
        it = calls_.erase(it);
      } else {
        ++it;
      }
    }
    if (include_unsent) unsent_.clear();
    for (auto& call : failing) complete(*call, ec, detail);
  }

  // Re-arms the timer only for an earlier deadline, since each change is a system call:
  // when the earliest deadline moves later (calls finish in order), the timer fires early
  // once and is then armed for the earliest. While connected it also stays armed after
  // the last call (a read is pending anyway), so a call at a time costs no timer change.
  void arm_deadline_timer() {
    if (deadlines_.empty()) {
      if (!stream_.socket().is_open()) cancel_deadline_timer();
      return;
    }
    const auto first = deadlines_.begin()->first;
    if (timer_armed_ && armed_for_ <= first) return;
    timer_armed_ = true;
    armed_for_ = first;
    deadline_timer_.expires_at(first);
    deadline_timer_.async_wait([self = shared_from_this(), first](boost::system::error_code ec) {
      if (ec || !self->timer_armed_ || self->armed_for_ != first) return;
      self->timer_armed_ = false;
      self->on_deadlines();
    });
  }

  void cancel_deadline_timer() {
    if (!timer_armed_) return;
    timer_armed_ = false;
    deadline_timer_.cancel();
  }

  void on_deadlines() {
    const auto now = clock::now();
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      finish(deadlines_.begin()->second, make_error_code(errc::timeout),
             "no reply from " + peer_name_ + " before the call's deadline");
    }
    arm_deadline_timer();
  }

  boost::asio::strand<boost::asio::any_io_executor> strand_;
  tcp::endpoint peer_;
  std::string peer_name_;
  std::shared_ptr<client_state> state_;
  transport_stream stream_;
  boost::asio::steady_timer connect_timer_;
  boost::asio::steady_timer deadline_timer_;
  std::chrono::milliseconds backoff_;
  std::atomic<std::uint64_t> next_stream_{1};

  state state_now_ = state::idle;
  std::uint64_t generation_ = 0;  // bumped per connection attempt: stale handlers do nothing
  std::optional<wire::client_handshake> handshake_;
  frame_buffer buffer_;
  std::unordered_map<std::uint64_t, std::shared_ptr<pending_call>> calls_;
  std::deque<std::shared_ptr<pending_call>> unsent_;
  std::multimap<clock::time_point, std::uint64_t> deadlines_;
  clock::time_point armed_for_{};
  bool timer_armed_ = false;
  std::string control_;            // handshake frames to write
  std::string control_in_flight_;  // ... being written
  std::vector<boost::asio::const_buffer> buffers_;
  std::vector<std::shared_ptr<pending_call>> batch_;  // keeps written frames alive
  bool writing_ = false;
  bool shut_down_ = false;
};

}  // namespace detail

}  // namespace fwd::rpc
