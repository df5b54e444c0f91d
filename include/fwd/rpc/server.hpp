#pragma once

// The RPC server: accepts fwd connections, authenticates them, and runs each request
// through a registry on the user's executor.

#include <fwd/error.hpp>
#include <fwd/rpc/frame_buffer.hpp>
#include <fwd/rpc/detail/tls_stream.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/tls.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/rpc/wire.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

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

/// What the server says of the local node in `fwd.hello`, asked at each call.
struct local_status {
  std::string role = "unknown";  ///< "primary", "replica", "unknown" or "not_litefs"
  std::uint64_t txid = 0;
};

/// How a server listens, authenticates and bounds its work.
struct server_options {
  /// Where to listen; port 0 picks a free port (see server::local_endpoint()).
  boost::asio::ip::tcp::endpoint listen{boost::asio::ip::make_address("127.0.0.1"), 0};
  /// The cluster secret every node shares (required, non-empty).
  std::string secret;
  /// `fwd.hello`'s node name and LiteFS hostname.
  std::string node_name;
  std::string litefs_hostname;
  /// `fwd.hello`'s role and TXID, asked at each hello (null: "unknown", 0).
  std::function<local_status()> status;
  /// The largest frame accepted, header included; a bigger one closes that connection.
  std::size_t max_frame_size = wire::default_max_frame_size;
  /// Requests running at once on one connection; more are answered `overloaded`.
  std::size_t max_in_flight_per_connection = 4096;
  /// Requests running at once on the whole server; more are answered `overloaded`.
  std::size_t max_in_flight = 65536;
  /// Replies waiting to be written on one connection, in bytes, beyond which the server
  /// stops reading that connection until its peer reads (bounds memory per connection).
  std::size_t max_pending_reply_bytes = std::size_t{8} << 20;
  /// A connection must finish the handshake within this time.
  std::chrono::milliseconds handshake_timeout{5000};
  /// A connection with no request running and nothing received for this long is closed.
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(5)};
  /// The Boost archive version announced in the handshake (0: this build's).
  std::uint32_t archive_version = 0;
  /// Hooks: connection opened, closed and failed (the peer is the client's address).
  telemetry_ptr telemetry;
  /// Mutual TLS (see tls_options). Unset: connections are plain TCP. Set: every connection
  /// must complete a TLS handshake, with a client certificate signed by `tls->ca_file` (unless
  /// `require_peer_certificate` is false), before fwd's handshake (`handshake_timeout` covers
  /// both). A plain fwd client is answered `unauthenticated` ("this server requires TLS").
  std::optional<tls_options> tls;
};

namespace detail {

// How an error crosses the wire in a reply's aux field: the category in the high half,
// the value in the low half. Categories other than fwd's and SQLite's become remote_failure.
inline constexpr std::uint64_t status_fwd = 1;
inline constexpr std::uint64_t status_sqlite = 2;

inline std::uint64_t encode_status(const boost::system::error_code& ec) noexcept {
  if (!ec) return 0;
  if (ec.category() == fwd_category()) return (status_fwd << 32) | static_cast<std::uint32_t>(ec.value());
  if (ec.category() == sqlite_category()) return (status_sqlite << 32) | static_cast<std::uint32_t>(ec.value());
  return (status_fwd << 32) | static_cast<std::uint32_t>(errc::remote_failure);
}

inline boost::system::error_code decode_status(std::uint64_t aux) noexcept {
  if (aux == 0) return {};
  const auto value = static_cast<int>(static_cast<std::uint32_t>(aux));
  switch (aux >> 32) {
    case status_fwd: return {value, fwd_category()};
    case status_sqlite: return {value, sqlite_category()};
    default: return make_error_code(errc::protocol_error);
  }
}

inline std::string endpoint_string(const boost::asio::ip::tcp::endpoint& e) {
  const auto address = e.address();
  return (address.is_v6() ? "[" + address.to_string() + "]" : address.to_string()) + ":" + std::to_string(e.port());
}

class server_connection;

struct server_state {
  boost::asio::any_io_executor executor;
  const registry* user_registry = nullptr;
  registry builtins;
  server_options options;
  wire::versions versions;
  std::atomic<std::size_t> in_flight{0};
  std::atomic<std::size_t> connections{0};
  std::atomic<bool> stopping{false};
  std::mutex mutex;  // guards live
  std::list<std::weak_ptr<server_connection>> live;
  std::optional<boost::asio::ip::tcp::acceptor> acceptor;  // used on its own strand
  std::shared_ptr<boost::asio::ssl::context> tls_context;  // set: connections use TLS
};

class server_connection : public std::enable_shared_from_this<server_connection> {
 public:
  using tcp = boost::asio::ip::tcp;

  server_connection(std::shared_ptr<server_state> state, tcp::socket socket)
      : state_(std::move(state)),
        stream_(std::move(socket)),
        strand_(stream_.get_executor()),
        timer_(strand_),
        handshake_(std::in_place, state_->options.secret, state_->versions) {
    boost::system::error_code ignored;
    peer_ = endpoint_string(stream_.socket().remote_endpoint(ignored));
    stream_.socket().set_option(tcp::no_delay(true), ignored);
    stream_.socket().set_option(boost::asio::socket_base::keep_alive(true), ignored);
    // Lets write() write at once without ever blocking (Asio's own operations, TLS's
    // included, are unaffected).
    stream_.socket().non_blocking(true, ignored);
  }

  void start() {
    state_->connections.fetch_add(1, std::memory_order_relaxed);
    last_activity_ = std::chrono::steady_clock::now();
    arm_timer(state_->options.handshake_timeout);
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

  ~server_connection() { state_->connections.fetch_sub(1, std::memory_order_relaxed); }

 private:
  struct running_call {
    std::uint64_t stream_id = 0;
    wire::request_id id{};
    bool replied = false;
  };

  void arm_timer(std::chrono::milliseconds after) {
    timer_.expires_after(after);
    timer_.async_wait([self = shared_from_this(), generation = ++timer_generation_](boost::system::error_code ec) {
      if (ec || generation != self->timer_generation_ || self->closed_) return;
      self->on_timer();
    });
  }

  void on_timer() {
    const auto now = std::chrono::steady_clock::now();
    if (!authenticated_) {
      close(make_error_code(errc::timeout));  // slow (or silent) handshake
      return;
    }
    const auto idle_for = now - last_activity_;
    if (in_flight_ == 0 && idle_for >= state_->options.idle_timeout) {
      close({});
      return;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(state_->options.idle_timeout - idle_for);
    arm_timer(std::max(left, std::chrono::milliseconds(1)));
  }

  // --- TLS, before fwd's handshake -------------------------------------------------------

  // Looks at the first byte without consuming it: a TLS client opens with a handshake record
  // (0x16); a plain fwd client with fwd's magic, and is told that TLS is required.
  void await_first_byte() {
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
      if (self->closed_) return;
      if (ec) {
        self->close(ec);
        return;
      }
      char first = 0;
      const std::size_t n =
          self->stream_.socket().receive(boost::asio::buffer(&first, 1), tcp::socket::message_peek, ec);
      if (ec || n == 0) {
        self->close(ec == boost::asio::error::eof ? boost::system::error_code{} : ec);
        return;
      }
      if (first == static_cast<char>(wire::magic & 0xff)) {
        self->refuse_plain_client();
        return;
      }
      self->stream_.start_tls(*self->state_->tls_context);
      self->stream_.async_tls_handshake(boost::asio::ssl::stream_base::server,
                                        [self](boost::system::error_code handshake_ec) {
                                          if (self->closed_) return;
                                          if (handshake_ec) {
                                            // The peer's certificate is missing or untrusted, or it
                                            // does not speak TLS: OpenSSL's reason says which.
                                            self->failed_ = handshake_ec;
                                            fwd::detail::emit(self->state_->options.telemetry,
                                                              &telemetry::connection_failed,
                                                              connection_event{self->peer_, handshake_ec});
                                            self->close(handshake_ec);
                                            return;
                                          }
                                          self->read();
                                        });
    });
  }

  void refuse_plain_client() {
    failed_ = make_error_code(errc::unauthenticated);
    fwd::detail::emit(state_->options.telemetry, &telemetry::connection_failed, connection_event{peer_, failed_});
    // Take in what the client sent (its hello), so that closing does not reset the
    // connection before the client reads why.
    boost::system::error_code ignored;
    const std::size_t available = std::min<std::size_t>(stream_.socket().available(ignored), 4096);
    if (!ignored && available > 0) {
      std::string sink(available, '\0');
      stream_.socket().receive(boost::asio::buffer(sink), 0, ignored);
    }
    queue(wire::encode_goodbye(errc::unauthenticated,
                               "this server requires TLS: set client_options::tls (the node's certificate, its "
                               "key and the cluster's CA)"));
    draining_ = true;
    maybe_close_drained();
  }

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

  void on_read(boost::system::error_code ec, std::size_t n) {
    if (closed_) return;
    if (ec) {
      // A TLS peer that just closes its socket truncates the TLS stream: an ordinary close too.
      const bool closed_by_peer = ec == boost::asio::error::eof || ec == boost::asio::ssl::error::stream_truncated;
      close(closed_by_peer ? boost::system::error_code{} : ec);
      return;
    }
    buffer_.commit(n);
    last_activity_ = std::chrono::steady_clock::now();
    wire::frame_view frame;
    while (!closed_ && !draining_) {
      const std::size_t limit = authenticated_ ? state_->options.max_frame_size : wire::max_handshake_frame_size;
      if (!buffer_.next(limit, frame, ec)) break;
      on_frame(frame);
    }
    if (ec) {
      close(ec);  // malformed or oversized: this connection only
      return;
    }
    if (in_flight_ == 0) buffer_.shrink();
    read();
  }

  void on_frame(const wire::frame_view& frame) {
    if (!authenticated_) {
      auto step = handshake_->on_frame(frame);
      if (!step.send.empty()) queue(step.send);
      if (step.ec) {
        failed_ = step.ec;
        fwd::detail::emit(state_->options.telemetry, &telemetry::connection_failed, connection_event{peer_, step.ec});
        draining_ = true;  // write the goodbye, then close
        maybe_close_drained();
        return;
      }
      if (step.done) {
        authenticated_ = true;
        handshake_.reset();
        fwd::detail::emit(state_->options.telemetry, &telemetry::connection_opened, connection_event{peer_, {}});
        arm_timer(state_->options.idle_timeout);
      }
      return;
    }
    if (frame.header.type == wire::frame_type::goodbye) {
      draining_ = true;
      maybe_close_drained();
      return;
    }
    if (frame.header.type != wire::frame_type::request) {
      close(make_error_code(errc::protocol_error));
      return;
    }
    on_request(frame);
  }

  void on_request(const wire::frame_view& frame) {
    const auto& h = frame.header;
    if (state_->stopping.load(std::memory_order_relaxed)) {
      reply(h.stream_id, h.id, make_error_code(errc::overloaded), "the server is shutting down");
      return;
    }
    if ((h.flags & wire::frame_flags::has_deadline) != 0 && h.deadline_ms == 0) {
      // The caller's deadline passed before the request got here: do not run it.
      reply(h.stream_id, h.id, make_error_code(errc::timeout), "the deadline had passed when the request arrived");
      return;
    }
    if (in_flight_ >= state_->options.max_in_flight_per_connection ||
        state_->in_flight.fetch_add(1, std::memory_order_relaxed) >= state_->options.max_in_flight) {
      if (in_flight_ < state_->options.max_in_flight_per_connection) {
        state_->in_flight.fetch_sub(1, std::memory_order_relaxed);
      }
      reply(h.stream_id, h.id, make_error_code(errc::overloaded), "too many requests in flight on the server");
      return;
    }
    ++in_flight_;
    auto call = std::make_shared<running_call>();
    call->stream_id = h.stream_id;
    call->id = h.id;

    // The views are valid during dispatch() only; the registry copies what it keeps.
    incoming_call incoming;
    incoming.procedure = frame.meta;
    incoming.signature = h.aux;
    incoming.arguments = frame.body;
    incoming.request_id = h.id;
    if ((h.flags & wire::frame_flags::has_deadline) != 0) {
      incoming.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(h.deadline_ms);
    }

    auto on_done = [self = shared_from_this(), call](boost::system::error_code ec, std::string result) mutable {
      boost::asio::dispatch(self->strand_, [self, call = std::move(call), ec, result = std::move(result)]() mutable {
        self->on_reply(*call, ec, std::move(result));
      });
    };
    const registry& target = incoming.procedure.starts_with("fwd.") ? state_->builtins : *state_->user_registry;
    try {
      target.dispatch(incoming, state_->executor, boost::asio::bind_executor(strand_, std::move(on_done)));
    } catch (const std::exception& e) {
      on_reply(*call, make_error_code(errc::remote_failure), std::string("dispatch failed: ") + e.what());
    }
  }

  void on_reply(running_call& call, boost::system::error_code ec, std::string result) {
    if (call.replied) return;
    call.replied = true;
    --in_flight_;
    state_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    if (closed_) return;
    if (ec) {
      reply(call.stream_id, call.id, ec, result);
    } else {
      wire::frame_header h;
      h.type = wire::frame_type::reply;
      h.stream_id = call.stream_id;
      h.id = call.id;
      wire::append_frame(queued_, h, {}, result);
      write();
    }
    if (draining_) maybe_close_drained();
  }

  void reply(std::uint64_t stream_id, const wire::request_id& id, boost::system::error_code ec, std::string_view why) {
    wire::frame_header h;
    h.type = wire::frame_type::reply;
    h.stream_id = stream_id;
    h.id = id;
    h.aux = encode_status(ec);
    wire::append_frame(queued_, h, why.substr(0, 64 * 1024), {});
    write();
  }

  void queue(std::string_view bytes) {
    queued_.append(bytes);
    write();
  }

  std::size_t pending_reply_bytes() const noexcept { return queued_.size() + writing_.size(); }

  // Replies are coalesced: while one write runs, later replies gather in `queued_` and go
  // out together in the next write.
  void write() {
    if (writing_in_progress_ || queued_.empty() || closed_) return;
    writing_in_progress_ = true;
    std::swap(queued_, writing_);
    if (!stream_.is_tls() && stream_.socket().non_blocking() && in_flight_ == 0) {
      // Plain TCP, and no other call of this connection running: what the socket takes now
      // is written now, which spares the trip through the scheduler that an asynchronous
      // write's completion costs. The rest, and any error, go through async_write below.
      // With calls running, the asynchronous write is kept: replies that come while it
      // completes go out together in the next write.
      boost::system::error_code ec;
      std::size_t written = stream_.socket().write_some(boost::asio::buffer(writing_), ec);
      if (ec) written = 0;
      if (written == writing_.size()) {
        writing_in_progress_ = false;
        writing_.clear();
        if (writing_.capacity() > (std::size_t{1} << 20)) writing_.shrink_to_fit();
        if (draining_ || !reading_) {
          // What a write's completion does next, outside this call (on_read calls it).
          boost::asio::post(strand_, [self = shared_from_this()] {
            if (self->draining_) self->maybe_close_drained();
            self->read();
          });
        }
        return;
      }
      writing_.erase(0, written);
    }
    boost::asio::async_write(stream_, boost::asio::buffer(writing_),
                             [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                               self->writing_in_progress_ = false;
                               self->writing_.clear();
                               if (self->writing_.capacity() > (std::size_t{1} << 20)) self->writing_.shrink_to_fit();
                               if (ec) {
                                 self->close(ec);
                                 return;
                               }
                               self->write();
                               if (self->draining_) self->maybe_close_drained();
                               self->read();  // reading pauses while too many replies wait
                             });
  }

  void maybe_close_drained() {
    if (closed_) return;
    if (in_flight_ == 0 && !writing_in_progress_ && queued_.empty()) close(failed_);
  }

  void close(boost::system::error_code why) {
    if (closed_) return;
    closed_ = true;
    timer_.cancel();
    stream_.close();
    if (authenticated_) {
      fwd::detail::emit(state_->options.telemetry, &telemetry::connection_closed, connection_event{peer_, why});
    } else if (!failed_) {
      fwd::detail::emit(state_->options.telemetry, &telemetry::connection_failed,
                   connection_event{peer_, why ? why : make_error_code(errc::protocol_error)});
    }
  }

  std::shared_ptr<server_state> state_;
  transport_stream stream_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  std::optional<wire::server_handshake> handshake_;
  std::string peer_;
  frame_buffer buffer_;
  std::string queued_;
  std::string writing_;
  std::size_t in_flight_ = 0;
  std::uint64_t timer_generation_ = 0;
  std::chrono::steady_clock::time_point last_activity_;
  boost::system::error_code failed_;
  bool authenticated_ = false;
  bool reading_ = false;
  bool writing_in_progress_ = false;
  bool draining_ = false;
  bool closed_ = false;
};

}  // namespace detail

/**
 * A fwd RPC server. It listens on `options.listen`, authenticates each connection with
 * the cluster secret, and runs each request through `procedures` on `executor` (the
 * user's), with the caller's remaining deadline. It answers `fwd.hello` itself.
 *
 * Every request gets exactly one reply: the result; `unknown_procedure`,
 * `signature_mismatch` or `remote_failure` from the registry; `timeout` when the
 * caller's deadline had passed on arrival (the procedure does not run); `overloaded` when
 * more than `max_in_flight_per_connection` / `max_in_flight` requests are running (it does
 * not run). A connection that sends a malformed or oversized frame, fails the handshake,
 * or does not finish it within `handshake_timeout` is closed; nothing else is affected.
 *
 * With `options.tls`, connections run mutual TLS under fwd's handshake (see tls_options);
 * a connection that fails TLS is closed the same way, and the others keep being served.
 *
 * `procedures` must outlive the server's connections. Thread-safe: start(), stop() and
 * local_endpoint() may be called from any thread.
 */
class server {
 public:
  using executor_type = boost::asio::any_io_executor;

  server(executor_type executor, const registry& procedures, server_options options)
      : state_(std::make_shared<detail::server_state>()) {
    if (options.secret.empty()) {
      throw fwd::error(make_error_code(errc::bad_argument),
                       "server_options::secret is empty: give every node the same cluster secret");
    }
    if (options.tls) state_->tls_context = detail::make_tls_context(*options.tls, true, "server_options::tls");
    state_->acceptor.emplace(boost::asio::make_strand(executor));
    state_->executor = std::move(executor);
    state_->user_registry = &procedures;
    state_->versions.archive = options.archive_version != 0 ? options.archive_version : fwd::detail::archive_version();
    state_->options = std::move(options);
    std::weak_ptr<detail::server_state> weak = state_;
    state_->builtins.define(hello, [weak]() {
      hello_info info;
      if (auto state = weak.lock()) {
        info.node_name = state->options.node_name;
        info.litefs_hostname = state->options.litefs_hostname;
        if (state->options.status) {
          local_status status = state->options.status();
          info.role = std::move(status.role);
          info.txid = status.txid;
        } else {
          info.role = "unknown";
        }
      }
      return info;
    });
  }

  server(const server&) = delete;
  server& operator=(const server&) = delete;
  ~server() { stop(); }

  /// Binds and starts accepting. Throws fwd::error (bad_argument) when it cannot listen.
  void start() {
    boost::system::error_code ec;
    const auto& endpoint = state_->options.listen;
    auto& acceptor = *state_->acceptor;
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(boost::asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(boost::asio::socket_base::max_listen_connections, ec);
    if (ec) {
      throw fwd::error(make_error_code(errc::bad_argument), "cannot listen on " + detail::endpoint_string(endpoint) +
                                                                ": " + ec.message() +
                                                                ": choose a free address and port");
    }
    local_ = acceptor.local_endpoint(ec);
    accept(state_);
  }

  /// The address the server listens on (with the port picked when options.listen had 0).
  boost::asio::ip::tcp::endpoint local_endpoint() const { return local_; }

  /// Requests running now, across all connections.
  std::size_t in_flight() const noexcept { return state_->in_flight.load(std::memory_order_relaxed); }
  /// Connections open now (authenticated or not).
  std::size_t connection_count() const noexcept { return state_->connections.load(std::memory_order_relaxed); }

  /**
   * Graceful stop: accepts no more connections; every connection reads no more requests,
   * finishes those running, writes their replies and closes. Returns at once.
   */
  void stop() {
    if (state_->stopping.exchange(true)) return;
    boost::asio::dispatch(state_->acceptor->get_executor(), [state = state_] {
      boost::system::error_code ignored;
      state->acceptor->close(ignored);
    });
    std::lock_guard lock(state_->mutex);
    for (auto& weak : state_->live) {
      if (auto connection = weak.lock()) connection->stop();
    }
  }

 private:
  static void accept(std::shared_ptr<detail::server_state> state) {
    auto& acceptor = *state->acceptor;
    acceptor.async_accept(boost::asio::make_strand(state->executor),
                           [state](boost::system::error_code ec, boost::asio::ip::tcp::socket socket) {
                             if (state->stopping.load()) return;
                             if (!ec) {
                               auto connection = std::make_shared<detail::server_connection>(state, std::move(socket));
                               {
                                 std::lock_guard lock(state->mutex);
                                 // Forget connections that are gone, so the list stays small.
                                 state->live.remove_if([](const auto& w) { return w.expired(); });
                                 state->live.push_back(connection);
                               }
                               connection->start();
                             } else if (ec == boost::asio::error::operation_aborted) {
                               return;
                             }
                             accept(std::move(state));  // an accept error (EMFILE...) affects one connection only
                           });
  }

  std::shared_ptr<detail::server_state> state_;
  boost::asio::ip::tcp::endpoint local_;
};

}  // namespace fwd::rpc
