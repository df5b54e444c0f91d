#pragma once

// One incoming call as a procedure sees it: the call and its context, the reply answered
// exactly once (detail::reply_once), the completion handler an asynchronous procedure
// receives (result_handler), and how a function's style is recognised.

#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/core/demangle.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace fwd::rpc {

/// One call as the transport received it. The views need to stay valid only during
/// registry::dispatch (the registry copies what it keeps).
struct incoming_call {
  std::string_view procedure;                      ///< the procedure's name
  std::uint64_t signature = 0;                     ///< the caller's signature fingerprint
  std::string_view arguments;                      ///< the encoded arguments
  std::array<std::uint8_t, 16> request_id{};       ///< the caller's request id
  std::chrono::steady_clock::time_point deadline;  ///< when the caller stops waiting; {} = none
  std::uint16_t durability = 0;  ///< a write's durability (fwd::durability::wire(); 0: none)
};

/// What a procedure may learn about the call it serves.
struct call_context {
  std::array<std::uint8_t, 16> request_id{};       ///< the caller's request id (fixed across retries)
  std::chrono::steady_clock::time_point deadline;  ///< when the caller stops waiting; {} = none
};

/// Receives the outcome of one call: on success an empty error code and the encoded
/// result; on failure the error and a human-readable detail.
using reply_handler =
    boost::asio::any_completion_handler<void(boost::system::error_code, std::string)>;

namespace detail {

/// "<demangled exception type>: <what()>" for the exception in flight.
inline std::string describe_exception(const std::exception_ptr& exception) {
  try {
    std::rethrow_exception(exception);
  } catch (const std::exception& e) {
    return fmt::format("{}: {}", boost::core::demangle(typeid(e).name()), e.what());
  } catch (...) {
    return "an exception of a type not derived from std::exception";
  }
}

/// A peer's procedure name, quoted and bounded for use in a message.
inline std::string quoted_name(std::string_view name) {
  constexpr std::size_t shown = 128;
  return fmt::format("'{}{}'", name.substr(0, shown), name.size() > shown ? "..." : "");
}

inline std::string hex64(std::uint64_t value) {
  return fmt::format("{:#018x}", value);
}

/// Guarantees that a reply handler is called exactly once: the first completion wins,
/// later ones are ignored, and if every owner lets go without completing, the call is
/// answered with errc::remote_failure. Completes through the reply handler's associated
/// executor (or `executor`), which has outstanding work until then (a pending_completion).
class reply_once {
 public:
  reply_once(reply_handler reply, boost::asio::any_io_executor executor, std::string procedure)
      : completion_(std::move(reply), executor),
        executor_(std::move(executor)),
        procedure_(std::move(procedure)) {}

  reply_once(const reply_once&) = delete;
  reply_once& operator=(const reply_once&) = delete;

  ~reply_once() {
    if (!completion_) return;
    complete(make_error_code(errc::remote_failure),
             fmt::format("procedure {} finished without producing a result (its completion handler "
                         "was destroyed without being called)",
                         quoted_name(procedure_)));
  }

  /// Answers the call, unless it was answered already. Thread-safe. Dispatched: the reply
  /// handler is internal (the server's or the forwarder's), never a caller's initiation.
  void complete(boost::system::error_code ec, std::string payload) {
    completion_.dispatch(ec, std::move(payload));
  }

  /// Answers with errc::remote_failure describing `exception`.
  void fail(const std::exception_ptr& exception) {
    complete(make_error_code(errc::remote_failure), describe_exception(exception));
  }

  const boost::asio::any_io_executor& executor() const noexcept { return executor_; }
  const std::string& procedure() const noexcept { return procedure_; }

 private:
  fwd::detail::pending_completion<void(boost::system::error_code, std::string)> completion_;
  boost::asio::any_io_executor executor_;
  std::string procedure_;
};

template <class R>
std::string encode_procedure_result(const R& value) {
  return fwd::detail::encode_result<R>(value);
}

}  // namespace detail

/**
 * The completion handler an asynchronous procedure receives as its last argument. Call it
 * once with `(boost::system::error_code, R)` (for `void` results: `(error_code)`): an
 * empty error code sends the result, any other is sent to the caller as the error (with
 * its message as the detail). Copies share one call: the first invocation wins. If every
 * copy is destroyed without being called, the caller receives errc::remote_failure.
 * Its associated executor is the executor the procedure runs on.
 */
template <class R>
class result_handler {
 public:
  using executor_type = boost::asio::any_io_executor;

  explicit result_handler(std::shared_ptr<detail::reply_once> reply) : reply_(std::move(reply)) {}

  executor_type get_executor() const noexcept { return reply_->executor(); }

  /// Completes the call with `value`, or with `ec` when it is set.
  void operator()(boost::system::error_code ec, R value) const {
    if (ec) {
      reply_->complete(ec, ec.message());
      return;
    }
    try {
      reply_->complete({}, detail::encode_procedure_result<R>(value));
    } catch (...) {
      reply_->fail(std::current_exception());
    }
  }

 private:
  std::shared_ptr<detail::reply_once> reply_;
};

/// The completion handler of an asynchronous procedure whose result is void.
template <>
class result_handler<void> {
 public:
  using executor_type = boost::asio::any_io_executor;

  explicit result_handler(std::shared_ptr<detail::reply_once> reply) : reply_(std::move(reply)) {}

  executor_type get_executor() const noexcept { return reply_->executor(); }

  /// Completes the call (with `ec` as the error when it is set).
  void operator()(boost::system::error_code ec = {}) const {
    reply_->complete(ec, ec ? ec.message() : std::string());
  }

 private:
  std::shared_ptr<detail::reply_once> reply_;
};

namespace detail {

template <class T>
inline constexpr bool is_awaitable = false;
template <class T, class Executor>
inline constexpr bool is_awaitable<boost::asio::awaitable<T, Executor>> = true;

template <class T>
struct awaitable_value;
template <class T, class Executor>
struct awaitable_value<boost::asio::awaitable<T, Executor>> {
  using type = T;
};

enum class handler_style { synchronous, asynchronous, coroutine };

// How a user's function `F` serves procedure `R(Ds...)` (Ds: decayed parameters):
// whether it takes a call_context first, and in which style it returns its result.
template <class F, class R, class... Ds>
struct handler_traits {
  static constexpr bool async_with_context =
      std::is_invocable_v<F&, const call_context&, Ds&&..., result_handler<R>>;
  static constexpr bool async_plain = std::is_invocable_v<F&, Ds&&..., result_handler<R>>;
  static constexpr bool direct_with_context = std::is_invocable_v<F&, const call_context&, Ds&&...>;
  static constexpr bool direct_plain = std::is_invocable_v<F&, Ds&&...>;

  static constexpr bool with_context =
      async_with_context || (!async_plain && direct_with_context);
  static constexpr bool asynchronous = async_with_context || async_plain;
  static constexpr bool usable = asynchronous || direct_with_context || direct_plain;

  static auto direct_result() {
    if constexpr (asynchronous || !usable) {
      return std::type_identity<void>{};
    } else if constexpr (with_context) {
      return std::type_identity<std::invoke_result_t<F&, const call_context&, Ds&&...>>{};
    } else {
      return std::type_identity<std::invoke_result_t<F&, Ds&&...>>{};
    }
  }
  using result = typename decltype(direct_result())::type;

  static constexpr handler_style style = asynchronous              ? handler_style::asynchronous
                                         : is_awaitable<result>    ? handler_style::coroutine
                                                                   : handler_style::synchronous;
};

// Calls `fn` with the context (when it takes one), the arguments (moved out of `args`)
// and `extra...` (the completion handler, for asynchronous procedures).
template <bool WithContext, class F, class Tuple, class... Extra>
decltype(auto) invoke_procedure(F& fn, const call_context& context, Tuple& args, Extra&&... extra) {
  return std::apply(
      [&](auto&... values) -> decltype(auto) {
        if constexpr (WithContext) {
          return std::invoke(fn, context, std::move(values)..., std::forward<Extra>(extra)...);
        } else {
          return std::invoke(fn, std::move(values)..., std::forward<Extra>(extra)...);
        }
      },
      args);
}

// The coroutine that owns the arguments (and keeps the function alive) while the user's
// coroutine runs: a user coroutine may take its parameters by reference.
template <class R, bool WithContext, class F, class Tuple>
boost::asio::awaitable<R> run_coroutine(std::shared_ptr<F> fn, call_context context, Tuple args) {
  if constexpr (std::is_void_v<R>) {
    co_await invoke_procedure<WithContext>(*fn, context, args);
  } else {
    co_return co_await invoke_procedure<WithContext>(*fn, context, args);
  }
}

}  // namespace detail

}  // namespace fwd::rpc
