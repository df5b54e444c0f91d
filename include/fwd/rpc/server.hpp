#pragma once

// The RPC server: accepts fwd connections, authenticates them, and runs each request
// through a registry on the user's executor.

#include <fwd/error.hpp>
#include <fwd/rpc/detail/server_connection.hpp>
#include <fwd/rpc/server_options.hpp>
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
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
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

/**
 * A fwd RPC server. It listens on `options.listen`, authenticates each connection with
 * the cluster secret, and runs each request through `procedures` on `executor` (the
 * user's), with the caller's remaining deadline. It answers `fwd.hello` itself.
 *
 * Every request gets exactly one reply: the result; `unknown_procedure`,
 * `signature_mismatch` or `remote_failure` from the registry; `timeout` when the
 * caller's deadline had passed on arrival (the procedure does not run); `overloaded` when
 * more than `max_in_flight_per_connection` / `max_in_flight` requests are running (it does
 * not run); `max_in_flight_per_address` bounds one peer address's requests over all its
 * connections, and `reserved_in_flight_per_address` keeps a share for every peer (see
 * server_options). Every refusal (of a connection, a frame or a call) is reported through
 * `telemetry.refused`, with its reason. A connection that sends a malformed or oversized frame, fails the handshake,
 * or does not finish it within `handshake_timeout` is closed; nothing else is affected.
 * A connection beyond `max_connections`, or beyond `max_unauthenticated_connections`
 * still in the handshake, is closed as soon as it is accepted. When accepting fails for
 * lack of file descriptors or memory, the server accepts again after a growing delay
 * (`min_accept_backoff` to `max_accept_backoff`) instead of at once.
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
    state_->secrets = detail::checked_secrets("server_options", options.secret, options.accepted_secrets);
    if (options.tls) state_->tls_context = detail::make_tls_context(*options.tls, true, "server_options::tls");
    state_->acceptor.emplace(boost::asio::make_strand(executor));
    state_->executor = std::move(executor);
    state_->user_registry = &procedures;
    state_->versions.archive = options.archive_version != 0 ? options.archive_version : fwd::detail::archive_version();
    state_->limits = detail::in_flight_limits::from(options);
    if (options.min_protocol_version != 0) state_->versions.protocol_min = options.min_protocol_version;
    if (options.max_protocol_version != 0) state_->versions.protocol_max = options.max_protocol_version;
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

  /**
   * Serves `proc` beside `fwd.hello`, to authenticated peers only, like every request.
   * Its name must start with "fwd." (the names fwd keeps for itself). Call before start().
   * `fn` is kept with the server's connections, which may outlive the server: it must not
   * borrow what may be gone by then. Throws fwd::error(bad_argument) for another name or
   * a name already taken.
   */
  template <class R, class... A, class F>
  void define_builtin(const procedure<R(A...)>& proc, F&& fn) {
    if (!proc.name().starts_with("fwd.")) {
      throw fwd::error(make_error_code(errc::bad_argument),
                       fmt::format("built-in procedure {} must have a name starting with \"fwd.\"",
                                   proc.name()));
    }
    state_->builtins.define(proc, std::forward<F>(fn));
  }

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
      throw fwd::error(make_error_code(errc::bad_argument),
                       fmt::format("cannot listen on {}: {}: choose a free address and port",
                                   detail::endpoint_string(endpoint), ec.message()));
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
      if (state->accept_timer) state->accept_timer->cancel();
    });
    std::lock_guard lock(state_->mutex);
    for (auto& weak : state_->live) {
      if (auto connection = weak.lock()) connection->stop();
    }
  }

 private:
  static void accept(std::shared_ptr<detail::server_state> state) {
    auto& acceptor = *state->acceptor;
    acceptor.async_accept(
        boost::asio::make_strand(state->executor),
        boost::asio::bind_executor(acceptor.get_executor(), [state](boost::system::error_code ec,
                                                                      boost::asio::ip::tcp::socket socket) mutable {
          if (state->stopping.load()) return;
          if (ec == boost::asio::error::operation_aborted) return;
          if (ec) {
            if (out_of_resources(ec)) {
              back_off(std::move(state), ec);
              return;
            }
            accept(std::move(state));  // any other accept error affects one connection only
            return;
          }
          state->accept_backoff = std::chrono::milliseconds(0);
          if (!admit(*state, socket)) {
            accept(std::move(state));
            return;
          }
          auto connection = std::make_shared<detail::server_connection>(state, std::move(socket));
          {
            std::lock_guard lock(state->mutex);
            // Forget connections that are gone, so the list stays small.
            state->live.remove_if([](const auto& w) { return w.expired(); });
            state->live.push_back(connection);
          }
          connection->start();
          accept(std::move(state));
        }));
  }

  // Accept failures that the next accept would repeat at once: the process or the system
  // is out of file descriptors or memory.
  static bool out_of_resources(const boost::system::error_code& ec) noexcept {
    if (ec.category() != boost::system::system_category()) return false;
    switch (ec.value()) {
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM: return true;
      default: return false;
    }
  }

  // Retrying at once would spin (the pending connection stays in the backlog): wait,
  // longer after each failure in a row, then accept again. Connections already open keep
  // being served meanwhile.
  static void back_off(std::shared_ptr<detail::server_state> state, const boost::system::error_code& ec) {
    const auto& options = state->options;
    auto& delay = state->accept_backoff;
    delay = delay.count() == 0 ? options.min_accept_backoff : std::min(delay * 2, options.max_accept_backoff);
    delay = std::max(delay, std::chrono::milliseconds(1));
    detail::report_refused_connection(
        options, {}, "out_of_descriptors", ec,
        detail::reporting_refusals(options)
            ? fmt::format("accepting failed ({}): accepting again in {} ms", ec.message(), delay.count())
            : std::string());
    if (!state->accept_timer) state->accept_timer.emplace(state->acceptor->get_executor());
    state->accept_timer->expires_after(delay);
    state->accept_timer->async_wait([state](boost::system::error_code wait_ec) mutable {
      if (wait_ec || state->stopping.load()) return;
      accept(std::move(state));
    });
  }

  // Whether the caps on connections leave room for this one; if not, closes it at once
  // (the peer sees the connection closed) and reports it.
  static bool admit(detail::server_state& state, boost::asio::ip::tcp::socket& socket) {
    const auto& options = state.options;
    const bool total_room = state.connections.load(std::memory_order_relaxed) < options.max_connections;
    const bool handshake_room =
        state.unauthenticated.load(std::memory_order_relaxed) < options.max_unauthenticated_connections;
    if (total_room && handshake_room) return true;
    boost::system::error_code ignored;
    const auto peer = detail::endpoint_string(socket.remote_endpoint(ignored));
    socket.close(ignored);
    std::string why;
    if (detail::reporting_refusals(options)) {
      why = !total_room ? fmt::format("{} connections are open (max_connections)", options.max_connections)
                        : fmt::format("{} connections are in the handshake (max_unauthenticated_connections)",
                                      options.max_unauthenticated_connections);
    }
    detail::report_refused_connection(options, peer, !total_room ? "connection_cap" : "unauthenticated_cap",
                                      make_error_code(errc::overloaded), why);
    return false;
  }

  std::shared_ptr<detail::server_state> state_;
  boost::asio::ip::tcp::endpoint local_;
};

}  // namespace fwd::rpc
