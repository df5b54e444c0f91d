#pragma once

// One connection of the RPC server: the handshake, reading requests, running them through
// the registry, and writing replies in batches.

#include <fwd/error.hpp>
#include <fwd/rpc/server_options.hpp>
#include <fwd/rpc/frame_buffer.hpp>
#include <fwd/rpc/keepalive.hpp>
#include <fwd/rpc/detail/tls_stream.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/tls.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/wire.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace fwd::rpc {
namespace detail {

class server_connection : public std::enable_shared_from_this<server_connection> {
 public:
  using tcp = boost::asio::ip::tcp;

  server_connection(std::shared_ptr<server_state> state, tcp::socket socket)
      : state_(std::move(state)),
        stream_(std::move(socket)),
        strand_(socket_strand(stream_.get_executor())),
        timer_(strand_),
        handshake_(std::in_place, state_->secrets, state_->versions) {
    boost::system::error_code ignored;
    const auto remote = stream_.socket().remote_endpoint(ignored);
    peer_ = endpoint_string(remote);
    share_ = state_->share_of(remote.address());
    stream_.socket().set_option(tcp::no_delay(true), ignored);
    apply_keepalive(stream_.socket(), state_->options.keepalive);
    // Lets write() write at once without ever blocking (Asio's own operations, TLS's
    // included, are unaffected).
    stream_.socket().non_blocking(true, ignored);
  }

  // The strand the server accepted the socket on (its executor), so that the socket's
  // handlers and the connection's own work share one strand; a new strand when the socket
  // came on another executor. (A strand made over the socket's strand would put every
  // handler through two strands.)
  static boost::asio::strand<boost::asio::any_io_executor> socket_strand(
      const boost::asio::any_io_executor& executor) {
    using strand_type = boost::asio::strand<boost::asio::any_io_executor>;
    if (const auto* own = executor.target<strand_type>()) return *own;
    return boost::asio::make_strand(executor);
  }

  void start() {
    state_->connections.fetch_add(1, std::memory_order_relaxed);
    state_->unauthenticated.fetch_add(1, std::memory_order_relaxed);
    counted_ = true;
    last_activity_ = std::chrono::steady_clock::now();
    arm_at(last_activity_ + state_->options.handshake_timeout);
    if (state_->tls_context) {
      await_first_byte();
    } else {
      read();
    }
  }

  /// Graceful stop: read nothing more; close once every running request has replied.
  void stop() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->draining_ = true;
      self->maybe_close_drained();
    });
  }

  ~server_connection() {
    state_->connections.fetch_sub(1, std::memory_order_relaxed);
    if (counted_ && !authenticated_) state_->unauthenticated.fetch_sub(1, std::memory_order_relaxed);
    release_partial();
  }

 private:
  struct running_call {
    std::uint64_t stream_id = 0;
    wire::request_id id{};
    bool replied = false;
  };

  // One timer serves the handshake deadline, the idle timeout and the deadline of a frame
  // being received. It is armed only for an earlier time than it already is (each change
  // is a system call); when it fires, on_timer() arms it for whatever is due next, or
  // leaves it unarmed when nothing is (calls running and no partial frame: on_reply()
  // arms it again once the last call is done).
  void arm_at(std::chrono::steady_clock::time_point at) {
    if (timer_armed_ && timer_at_ <= at) return;
    timer_armed_ = true;
    timer_at_ = at;
    timer_.expires_at(at);
    timer_.async_wait([self = shared_from_this(), generation = ++timer_generation_](boost::system::error_code ec) {
      if (ec || generation != self->timer_generation_ || self->closed_) return;
      self->timer_armed_ = false;
      self->on_timer();
    });
  }

  void schedule_timer() {
    if (partial_since_) arm_at(*partial_since_ + state_->options.frame_read_timeout);
    if (in_flight_ == 0) arm_at(last_activity_ + state_->options.idle_timeout);
  }

  void on_timer();

  // Counts the frame being received against the server's budget for partial frames;
  // closes the connection (and returns false) when it would go over.
  bool charge_partial();

  void release_partial() noexcept {
    if (charged_ == 0) return;
    state_->partial_frame_bytes.fetch_sub(charged_, std::memory_order_relaxed);
    charged_ = 0;
  }

  // --- TLS, before fwd's handshake -------------------------------------------------------

  // Looks at the first byte without consuming it: a TLS client opens with a handshake record
  // (0x16); a plain fwd client with fwd's magic, and is told that TLS is required.
  void await_first_byte();

  void refuse_plain_client();

  // --- frames ------------------------------------------------------------------------------

  void read() {
    if (closed_ || draining_ || reading_) return;
    if (pending_reply_bytes() > state_->options.max_pending_reply_bytes) return;  // resumed after a write
    reading_ = true;
    auto [data, size] = buffer_.prepare();
    stream_.async_read_some(boost::asio::buffer(data, size),
                            [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
                              self->reading_ = false;
                              self->on_read(ec, n);
                            });
  }

  void on_read(boost::system::error_code ec, std::size_t n);

  void on_frame(const wire::frame_view& frame);

  void on_request(const wire::frame_view& frame);

  void on_reply(running_call& call, boost::system::error_code ec, std::string result);

  // Takes a place for one more request under every in-flight bound; or says which bound
  // refused it (and takes nothing).
  std::optional<std::string> take_place();

  void release_place() noexcept {
    --in_flight_;
    share_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    state_->in_flight.fetch_sub(1, std::memory_order_relaxed);
  }

  // Reports a refusal of this connection, one of its frames or one of its calls.
  void report(std::string_view what, std::string_view reason, const boost::system::error_code& ec,
              std::string_view detail) const noexcept {
    report_refusal(state_->options, peer_, what, reason, ec, detail);
  }
  bool reporting() const noexcept { return reporting_refusals(state_->options); }

  // Refuses the connection before it is authenticated: reports it (connection_failed and
  // refused) and closes it.
  void refuse_connection(std::string_view reason, boost::system::error_code ec, std::string_view detail);

  // Records and reports (connection_failed and refused) the first refusal of this connection
  // before it is authenticated; the caller closes it, at once or once its goodbye is written.
  void note_refused(std::string_view reason, boost::system::error_code ec, std::string_view detail);

  // Refuses the frame being received or just received: reports it and closes the connection.
  void refuse_frame(std::string_view reason, boost::system::error_code ec, std::string_view detail);

  void reply(std::uint64_t stream_id, const wire::request_id& id, boost::system::error_code ec, std::string_view why) {
    wire::frame_header h;
    h.type = wire::frame_type::reply;
    h.stream_id = stream_id;
    h.id = id;
    h.aux = encode_status(ec);
    append_sealed(h, why.substr(0, 64 * 1024), {});
    write();
  }

  // Queues a frame after the handshake, with its session MAC: frames are sealed in the
  // order they are queued, which is the order they are written.
  void append_sealed(const wire::frame_header& h, std::string_view meta, std::string_view body) {
    const std::size_t at = queued_.size();
    wire::append_frame(queued_, h, meta, body);
    session_.seal_tail(queued_, at);
  }

  void queue(std::string_view bytes) {
    queued_.append(bytes);
    write();
  }

  std::size_t pending_reply_bytes() const noexcept { return queued_.size() + writing_.size(); }

  // Replies are coalesced: while one write runs, later replies gather in `queued_` and go
  // out together in the next write.
  void write();

  void maybe_close_drained() {
    if (closed_) return;
    if (in_flight_ == 0 && !writing_in_progress_ && queued_.empty()) close(failed_);
  }

  void close(boost::system::error_code why);

  std::shared_ptr<server_state> state_;
  transport_stream stream_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  std::optional<wire::server_handshake> handshake_;
  wire::session session_;  // after the handshake: checks requests, seals replies
  std::string peer_;
  std::shared_ptr<address_share> share_;  // requests running from the peer's address
  frame_buffer buffer_;
  std::string queued_;
  std::string writing_;
  std::size_t in_flight_ = 0;
  std::size_t received_ = 0;  // bytes read so far (for what the telemetry says)
  std::uint64_t timer_generation_ = 0;
  std::chrono::steady_clock::time_point last_activity_;
  std::chrono::steady_clock::time_point timer_at_;
  std::optional<std::chrono::steady_clock::time_point> partial_since_;  // a frame's first byte
  std::size_t charged_ = 0;  // bytes of state_->partial_frame_bytes this connection holds
  bool timer_armed_ = false;
  boost::system::error_code failed_;
  bool authenticated_ = false;
  bool counted_ = false;  // in state_->unauthenticated until authenticated_
  bool reading_ = false;
  bool writing_in_progress_ = false;
  bool draining_ = false;
  bool closed_ = false;
};

}  // namespace detail

}  // namespace fwd::rpc

#include <fwd/rpc/detail/impl/server_connection.hpp>
