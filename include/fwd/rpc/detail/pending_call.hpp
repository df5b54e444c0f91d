#pragma once

// A call of the RPC client waiting for its reply, and how its reply completes the caller's
// operation (decoded, through a pending_completion); the state a client's connections share.

#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>
#include <fwd/rpc/client_options.hpp>
#include <fwd/rpc/detail/tls_stream.hpp>
#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/wire.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include <type_traits>
#include <utility>

namespace fwd::rpc::detail {


// A call waiting for its reply. Lives on its connection's strand once submitted.
struct pending_call {
  virtual ~pending_call() = default;
  // Completes the caller's operation exactly once; `payload` is the result or, on error,
  // the failure's detail.
  virtual void complete(boost::system::error_code ec, std::string payload) = 0;

  std::uint64_t stream_id = 0;
  std::string frame;  // the encoded request
  std::array<char, wire::tag_size> tag{};  // its session MAC, sealed as it is written
  std::chrono::steady_clock::time_point deadline;
  std::multimap<std::chrono::steady_clock::time_point, std::uint64_t>::iterator deadline_entry;
  std::string procedure;  // for telemetry
  std::uint32_t attempt = 1;
  std::chrono::steady_clock::time_point started;
  bool sent = false;
  bool done = false;
  bool in_initiation = false;  // submitted inline: its initiating call has not returned yet
};

template <class R>
struct call_signature_of {
  using type = void(boost::system::error_code, R);
};
template <>
struct call_signature_of<void> {
  using type = void(boost::system::error_code);
};
template <class R>
using call_signature = typename call_signature_of<R>::type;

// The result type of async_call_raw's operation: the reply's bytes, not decoded.
struct raw_reply {};

// Decodes the reply (on the connection's strand) and completes the caller's handler
// through its associated executor: dispatched, or posted while the initiating call is
// still running (nothing may complete inside it).
template <class R>
class call_op final : public pending_call {
 public:
  using signature =
      std::conditional_t<std::is_same_v<R, raw_reply>, void(boost::system::error_code, std::string),
                         call_signature<R>>;

  // `diagnostics` (the caller's, may be null) receives the failure's detail before the
  // handler is invoked.
  template <class Handler>
  call_op(Handler&& handler, const boost::asio::any_io_executor& fallback,
          fwd::diagnostics* diagnostics)
      : completion_(std::forward<Handler>(handler), fallback), diagnostics_(diagnostics) {}

  boost::asio::cancellation_slot slot() const noexcept { return completion_.slot(); }

  void complete(boost::system::error_code ec, std::string payload) override {
    if (ec) report(std::move(payload));
    if constexpr (std::is_same_v<R, raw_reply>) {
      deliver(ec, ec ? std::string() : std::move(payload));
    } else if constexpr (std::is_void_v<R>) {
      if (!ec) fwd::detail::decode_result<void>(payload, ec);
      deliver(ec);
    } else {
      if (ec) {
        deliver(ec, R{});
        return;
      }
      std::string why;
      R result = fwd::detail::decode_result<R>(payload, ec, &why);
      if (ec) report(fmt::format("the reply could not be decoded: {}", why));
      deliver(ec, std::move(result));
    }
  }

 private:
  // Runs once, before deliver(): the handler reads the caller's diagnostics after this.
  void report(std::string detail) {
    if (diagnostics_ != nullptr) diagnostics_->assign(std::move(detail));
  }

  template <class... Args>
  void deliver(Args&&... args) {
    if (in_initiation) {
      completion_.post(std::forward<Args>(args)...);
    } else {
      completion_.dispatch(std::forward<Args>(args)...);
    }
  }

  fwd::detail::pending_completion<signature> completion_;
  fwd::diagnostics* diagnostics_;
};

struct client_state {
  client_options options;
  wire::versions versions;
  std::vector<std::string> secrets;  // options.secret first, then options.accepted_secrets
  std::array<std::uint8_t, 8> id_prefix{};  // random per client; request ids add a counter
  std::atomic<std::uint64_t> next_id{1};
  std::shared_ptr<boost::asio::ssl::context> tls_context;  // set: connections use TLS
};

}  // namespace fwd::rpc::detail
