#pragma once

// The RPC client: typed calls to fwd servers, many in flight on one connection per peer.

#include <fwd/detail/blocking_wait.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>
#include <fwd/rpc/client_options.hpp>
#include <fwd/rpc/detail/client_connection.hpp>
#include <fwd/rpc/server.hpp>  // endpoint_string
#include <fwd/rpc/wire.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd::rpc {

/**
 * A fwd RPC client: typed calls to fwd servers. It keeps one connection per peer,
 * opened on the first call, authenticated with the cluster secret, and reopened (with
 * backoff) after it breaks. Many calls run at once on a connection, matched by stream
 * id; requests queued while a write runs go out together in the next one.
 *
 * Thread-safe: calls may start from any thread. Calls complete through their handler's
 * associated executor (default: the client's executor).
 *
 * Errors, each an fwd::errc (fwd::classify() says what to do):
 *   - `unreachable` (not sent): no connection to the peer;
 *   - `connection_lost` (maybe executed): the connection broke after the request was sent;
 *   - `timeout` (maybe executed): the deadline passed;
 *   - `cancelled` (maybe executed): cancelled through the cancellation slot;
 *   - `unauthenticated`, `version_mismatch`, `protocol_error`: the handshake failed
 *     (`unauthenticated` also when TLS fails: a certificate missing or untrusted, or TLS on
 *     one side only; call_options::diagnostics has OpenSSL's reason);
 *   - `frame_too_large`: the request exceeds max_frame_size (not sent);
 *   - from the server: `unknown_procedure`, `signature_mismatch`, `remote_failure`,
 *     `overloaded`, `timeout`, or the procedure's own error (e.g. a SQLite code).
 */
class client {
 public:
  using executor_type = boost::asio::any_io_executor;
  using endpoint = boost::asio::ip::tcp::endpoint;

  client(executor_type executor, client_options options)
      : executor_(std::move(executor)), state_(std::make_shared<detail::client_state>()) {
    state_->secrets = detail::checked_secrets("client_options", options.secret, options.accepted_secrets);
    state_->versions.archive = options.archive_version != 0 ? options.archive_version : fwd::detail::archive_version();
    if (options.min_protocol_version != 0) state_->versions.protocol_min = options.min_protocol_version;
    if (options.max_protocol_version != 0) state_->versions.protocol_max = options.max_protocol_version;
    if (options.tls) state_->tls_context = detail::make_tls_context(*options.tls, false, "client_options::tls");
    state_->options = std::move(options);
    state_->id_prefix = fwd::detail::random_bytes<8>();
  }

  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// Closes every connection; calls still running complete with `cancelled`.
  ~client() { close(); }

  executor_type get_executor() const noexcept { return executor_; }

  /**
   * Calls `proc` on `peer` with `args`, then completes `token`.
   *
   * Completion signature: `void(boost::system::error_code, R)`, or
   * `void(boost::system::error_code)` when R is void. Works with callbacks, use_future,
   * use_awaitable, deferred and any other completion token.
   *
   * Completes through the handler's associated executor (default: the client's), never
   * inside this call; that executor has outstanding work until then.
   *
   * **Per-Operation Cancellation**: `terminal`, `partial` and `total` all end the call
   * with `errc::cancelled`: a request not yet written is never sent; a request already
   * sent may still run on the server, and its reply is dropped. The connection and the
   * other calls on it are unaffected.
   */
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(const endpoint& peer, const procedure<R(Params...)>& proc, ArgsAndToken&&... args_and_token) {
    return async_call(peer, call_options{}, proc, std::forward<ArgsAndToken>(args_and_token)...);
  }

  /// As above, with per-call options (deadline, request id, attempt, diagnostics).
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(const endpoint& peer, call_options options, const procedure<R(Params...)>& proc,
                  ArgsAndToken&&... args_and_token) {
    static_assert(sizeof...(ArgsAndToken) == sizeof...(Params) + 1,
                  "async_call takes the procedure's arguments, then a completion token");
    auto all = std::forward_as_tuple(std::forward<ArgsAndToken>(args_and_token)...);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      static_assert((std::is_convertible_v<std::tuple_element_t<I, std::tuple<ArgsAndToken...>>, Params> && ...),
                    "an argument of async_call does not convert to the procedure's parameter type");
      std::string arguments = fwd::detail::encode_arguments(proc, std::get<I>(all)...);
      return start<R>(peer, std::move(options), proc.name(), proc.signature(), std::move(arguments),
                      std::forward<std::tuple_element_t<sizeof...(Params), std::tuple<ArgsAndToken...>>>(
                          std::get<sizeof...(Params)>(all)));
    }(std::make_index_sequence<sizeof...(Params)>{});
  }

  /**
   * Calls a procedure by name with already-encoded arguments; completes with
   * `void(boost::system::error_code, std::string)`, the encoded result. For layers that
   * forward calls without knowing their types. Cancellation as async_call.
   */
  template <class Token>
  auto async_call_raw(const endpoint& peer, call_options options, std::string_view procedure_name,
                      std::uint64_t signature, std::string arguments, Token&& token) {
    return start<raw_result>(peer, std::move(options), procedure_name, signature, std::move(arguments),
                             std::forward<Token>(token));
  }

  /**
   * Blocking call: returns the result or throws fwd::error: its code, and in
   * get_diagnostics() "call to <procedure>: <details>" (what() adds the code's message).
   * call_options::diagnostics, when set, receives the details alone. Must not be called
   * from a thread that runs the client's executor (it waits for that executor). The thread
   * polls for the reply for up to 50 microseconds (yielding its core between polls), then
   * sleeps until it comes: a reply that fast is taken without waking a sleeping thread.
   */
  template <class R, class... Params, class... Args>
  R call(const endpoint& peer, const procedure<R(Params...)>& proc, Args&&... args) {
    return call(peer, call_options{}, proc, std::forward<Args>(args)...);
  }

  template <class R, class... Params, class... Args>
  R call(const endpoint& peer, call_options options, const procedure<R(Params...)>& proc, Args&&... args) {
    fwd::diagnostics local;
    fwd::diagnostics* diag = options.diagnostics != nullptr ? options.diagnostics : &local;
    options.diagnostics = diag;
    // Shared with the completion, which may still be inside set_value() when get() returns.
    auto result = std::make_shared<fwd::detail::blocking_result<R>>();
    if constexpr (std::is_void_v<R>) {
      async_call(peer, std::move(options), proc, std::forward<Args>(args)...,
                 [result, diag, p = proc.name()](boost::system::error_code ec) {
                   if (ec) {
                     result->set_exception(std::make_exception_ptr(fwd::detail::call_failure(ec, p, *diag)));
                   } else {
                     result->set_value();
                   }
                 });
      result->get();
    } else {
      async_call(peer, std::move(options), proc, std::forward<Args>(args)...,
                 [result, diag, p = proc.name()](boost::system::error_code ec, R value) {
                   if (ec) {
                     result->set_exception(std::make_exception_ptr(fwd::detail::call_failure(ec, p, *diag)));
                   } else {
                     result->set_value(std::move(value));
                   }
                 });
      return result->get();
    }
  }

  /// Closes every connection; calls still running complete with `cancelled`.
  void close() {
    std::lock_guard lock(mutex_);
    for (auto& [peer, connection] : connections_) connection->shutdown();
    connections_.clear();
  }

 private:
  struct raw_result {};

  std::shared_ptr<detail::client_connection> connection_to(const endpoint& peer) {
    std::lock_guard lock(mutex_);
    auto& slot = connections_[peer];
    if (!slot) slot = std::make_shared<detail::client_connection>(executor_, peer, state_);
    return slot;
  }

  template <class R>
  struct initiation {
    std::shared_ptr<detail::client_connection> connection;
    std::shared_ptr<detail::client_state> state;
    executor_type fallback;

    template <class Handler>
    void operator()(Handler&& handler, call_options options, std::string procedure_name, std::uint64_t signature,
                    std::string arguments) const {
      using op_t =
          detail::call_op<std::conditional_t<std::is_same_v<R, raw_result>, detail::raw_reply, R>>;
      if (options.diagnostics != nullptr) options.diagnostics->clear();
      auto op = std::make_shared<op_t>(std::forward<Handler>(handler), fallback, options.diagnostics);
      auto slot = op->slot();
      std::shared_ptr<detail::pending_call> call = std::move(op);
      const auto now = std::chrono::steady_clock::now();
      call->stream_id = connection->next_stream_id();
      call->deadline = options.deadline.value_or(now + state->options.default_timeout);
      call->attempt = options.attempt;
      const auto& telemetry = state->options.telemetry;
      if (telemetry && (telemetry->call_started || telemetry->call_finished)) {
        call->procedure = procedure_name;
        call->started = now;
        fwd::detail::emit(telemetry, &fwd::telemetry::call_started,
                          call_started_event{call->procedure, {}, call->attempt});
      }
      wire::frame_header h;
      h.type = wire::frame_type::request;
      h.flags = wire::frame_flags::has_deadline;
      if (options.durability != 0) {
        h.flags |= wire::frame_flags::has_durability;
        h.durability = options.durability;
      }
      h.stream_id = call->stream_id;
      if (options.request_id) {
        h.id = *options.request_id;
      } else {
        std::memcpy(h.id.data(), state->id_prefix.data(), 8);
        fwd::detail::store_le<std::uint64_t>(reinterpret_cast<char*>(h.id.data() + 8),
                                             state->next_id.fetch_add(1, std::memory_order_relaxed));
      }
      h.aux = signature;
      call->frame = wire::encode_frame(h, procedure_name, arguments);
      if (slot.is_connected()) {
        slot.assign([weak = std::weak_ptr<detail::client_connection>(connection),
                     stream_id = call->stream_id](boost::asio::cancellation_type type) {
          if (type == boost::asio::cancellation_type::none) return;
          if (auto c = weak.lock()) c->cancel(stream_id);
        });
      }
      connection->submit(std::move(call));
    }
  };

  template <class R, class Token>
  auto start(const endpoint& peer, call_options options, std::string_view procedure_name, std::uint64_t signature,
             std::string arguments, Token&& token) {
    using signature_t = std::conditional_t<std::is_same_v<R, raw_result>,
                                           void(boost::system::error_code, std::string), detail::call_signature<R>>;
    return boost::asio::async_initiate<Token, signature_t>(
        initiation<R>{connection_to(peer), state_, executor_}, token, std::move(options),
        std::string(procedure_name), signature, std::move(arguments));
  }

  executor_type executor_;
  std::shared_ptr<detail::client_state> state_;
  std::mutex mutex_;
  std::map<endpoint, std::shared_ptr<detail::client_connection>> connections_;
};

}  // namespace fwd::rpc
