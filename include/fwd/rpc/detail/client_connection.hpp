#pragma once

// One connection of the RPC client to one peer: connecting (with backoff), the handshake,
// many calls in flight matched by stream id, deadlines, and the calls' completions.

#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>
#include <fwd/rpc/client_options.hpp>
#include <fwd/rpc/detail/pending_call.hpp>
#include <fwd/rpc/frame_buffer.hpp>
#include <fwd/rpc/keepalive.hpp>
#include <fwd/rpc/detail/tls_stream.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/server.hpp>  // status codes on the wire, endpoint_string
#include <fwd/rpc/tls.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/rpc/handshake.hpp>
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
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <future>
#include <limits>
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
        ping_timer_(strand_),
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
      self->ping_timer_.cancel();
    });
  }

 private:
  enum class state { idle, backoff, connecting, handshaking, ready };

  void on_submit(std::shared_ptr<pending_call> call);

  // --- connecting ---------------------------------------------------------------------

  void connect();

  void on_connected();

  // fwd's own handshake (after TLS, when on): versions, then the cluster secret.
  void start_handshake() {
    handshake_.emplace(state_->secrets, state_->versions);
    control_ = handshake_->start();
    buffer_ = frame_buffer();
    read();
    flush();
  }

  // Nothing was sent: the waiting calls fail with `ec`, and the next attempt waits.
  void connect_failed(boost::system::error_code ec, std::string detail);

  void close_socket(boost::system::error_code /*why*/) {
    stream_.close();
    control_.clear();
    handshake_.reset();
    session_ = wire::session();
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

  void on_read(boost::system::error_code ec, std::size_t n);

  void on_frame(const wire::frame_view& frame);

  // A reply too large for max_frame_size at the front of the buffer: skips its bytes
  // (checking its MAC as they go) and then fails its call. False when the frame is not a
  // reply (the connection must go).
  bool skip_oversized_reply();

  // Takes the skipped reply's bytes out of the buffer; false when its MAC failed (the
  // connection was closed).
  bool skip_buffered();

  // The connection must go: a frame failed its session MAC.
  void tampered();

  // --- a peer that stops answering ------------------------------------------------------

  // Arms the ping timer, unless armed for this connection already; runs while calls wait.
  void watch_peer();

  void on_ping_timer();

  void send_ping();

  // The connection broke: calls already sent may have run (connection_lost); the others
  // were never sent and wait for the next connection.
  void connection_broke(boost::system::error_code why, const std::string& detail);

  // --- writing --------------------------------------------------------------------------

  // Frames are coalesced: every call queued while a write runs goes out in the next one,
  // as one gathered write.
  void flush();

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

  // Fails the calls already sent, and also those not sent yet when `include_unsent`.
  void fail_all(boost::system::error_code ec, const std::string& detail, bool include_unsent);

  // Re-arms the timer only for an earlier deadline, since each change is a system call:
  // when the earliest deadline moves later (calls finish in order), the timer fires early
  // once and is then armed for the earliest. While connected it also stays armed after
  // the last call (a read is pending anyway), so a call at a time costs no timer change.
  void arm_deadline_timer();

  void cancel_deadline_timer() {
    if (!timer_armed_) return;
    timer_armed_ = false;
    deadline_timer_.cancel();
  }

  void on_deadlines();

  boost::asio::strand<boost::asio::any_io_executor> strand_;
  tcp::endpoint peer_;
  std::string peer_name_;
  std::shared_ptr<client_state> state_;
  transport_stream stream_;
  boost::asio::steady_timer connect_timer_;
  boost::asio::steady_timer deadline_timer_;
  boost::asio::steady_timer ping_timer_;
  std::chrono::milliseconds backoff_;
  std::atomic<std::uint64_t> next_stream_{1};

  state state_now_ = state::idle;
  std::uint64_t generation_ = 0;  // bumped per connection attempt: stale handlers do nothing
  std::optional<wire::client_handshake> handshake_;
  wire::session session_;  // after the handshake: seals requests, checks replies
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
  std::uint64_t skip_ = 0;               // bytes left of an oversized reply being skipped
  std::uint64_t skip_frame_ = 0;         // ... of them, before its tag
  std::uint64_t skip_stream_ = 0;        // its call
  std::string skip_tag_;                 // its tag, as it arrives
  std::string skip_detail_;              // what its call fails with
  clock::time_point quiet_since_{};      // last bytes received (or when watching began)
  std::uint64_t ping_generation_ = 0;    // the connection the ping timer watches
  bool ping_armed_ = false;
  bool pinged_ = false;                  // a ping went out since the last bytes received
};

}  // namespace detail

}  // namespace fwd::rpc

#include <fwd/rpc/detail/impl/client_connection.hpp>
