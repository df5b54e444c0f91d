#pragma once

// The server side of procedures: which functions a node serves, under which names and
// signatures, and how one incoming call is decoded, run on the user's executor and
// answered exactly once.

#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>
#include <fwd/rpc/result_handler.hpp>

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

/**
 * The procedures a node serves. Define them all before the server starts: `define` and
 * `define_raw` are not synchronised with `dispatch`; `dispatch`, `contains`, `names` and
 * `signature_of` are const and may run concurrently. Functions may be invoked
 * concurrently when the executor given to `dispatch` runs on several threads.
 */
class registry {
 public:
  /// A procedure working on bytes: receives the call (its views valid only during this
  /// invocation), the executor it runs on, and the reply to call once.
  using raw_handler =
      std::function<void(const incoming_call&, boost::asio::any_io_executor, reply_handler)>;

  registry() = default;

  /**
   * Serves `proc` with `fn`, which may be any of:
   *
   *  - synchronous: `R fn(A...)`: its return value (or exception) is the reply;
   *  - asynchronous: `void fn(A..., result_handler<R> handler)`: call `handler(ec, r)`
   *    (for void: `handler(ec)`) once, from any thread;
   *  - coroutine: `boost::asio::awaitable<R> fn(A...)`, spawned on the dispatch executor;
   *
   * each optionally taking a first parameter `const fwd::rpc::call_context&` (request id,
   * deadline). Arguments are passed as rvalues of the decayed parameter types, so `fn`
   * may take them by value, by const reference or by rvalue reference. An exception from
   * `fn` (or from encoding its result) is answered with errc::remote_failure and the
   * detail "<exception type>: <what()>". Throws fwd::error(errc::bad_argument) when a
   * procedure of that name is already defined. `fn` is kept (moved or copied) until the
   * registry and every call it started are gone.
   */
  template <class R, class... A, class F>
  void define(const procedure<R(A...)>& proc, F&& fn) {
    using function = std::decay_t<F>;
    using traits = detail::handler_traits<function, R, std::decay_t<A>...>;
    static_assert(traits::usable,
                  "fwd: this function cannot serve the procedure: it must be callable as "
                  "R(A...), void(A..., fwd::rpc::result_handler<R>) or "
                  "boost::asio::awaitable<R>(A...), optionally with a first parameter "
                  "'const fwd::rpc::call_context&'");
    if constexpr (traits::style == detail::handler_style::synchronous) {
      static_assert(std::is_void_v<R> || std::is_convertible_v<typename traits::result, R>,
                    "fwd: the function's return type does not convert to the procedure's "
                    "result type");
    } else if constexpr (traits::style == detail::handler_style::coroutine) {
      using value = typename detail::awaitable_value<typename traits::result>::type;
      static_assert(std::is_void_v<R> ? std::is_void_v<value> : std::is_convertible_v<value, R>,
                    "fwd: the coroutine's awaitable<T> does not match the procedure's result type");
    }
    using procedure_type = procedure<R(A...)>;
    auto shared_fn = std::make_shared<function>(std::forward<F>(fn));
    add(std::string(proc.name()), proc.signature(), procedure_type::signature_text(), nullptr,
        [shared_fn](const incoming_call& call, const boost::asio::any_io_executor& executor,
                    std::shared_ptr<detail::reply_once> answer) {
          run_typed<procedure_type, traits>(shared_fn, call, executor, std::move(answer));
        });
  }

  /**
   * Serves a procedure that works on bytes (fwd's own, such as `fwd.hello`). `handler`
   * runs on the dispatch executor and must call its reply once; if it throws, or drops
   * the reply, the call is answered with errc::remote_failure. Throws
   * fwd::error(errc::bad_argument) when the name is taken or empty.
   */
  void define_raw(std::string name, std::uint64_t signature, raw_handler handler) {
    if (!handler) {
      throw error(make_error_code(errc::bad_argument),
                  fmt::format("procedure {} needs a handler", detail::quoted_name(name)));
    }
    add(std::move(name), signature, {}, std::move(handler), nullptr);
  }

  /**
   * Runs one call. Looks the procedure up by name and compares signatures here; then
   * posts the work to `executor` (never running anything inside this call): decoding the
   * arguments, running the function, encoding its result. `reply` is called exactly once,
   * through its associated executor (default: `executor`), never inside `dispatch`:
   *
   *  - success: `({}, encoded result)` (empty for void);
   *  - errc::unknown_procedure: no procedure of that name (the detail names it);
   *  - errc::signature_mismatch: defined with another signature (nothing is decoded);
   *  - errc::timeout: the call's deadline passed before the procedure started (it did
   *    not run);
   *  - errc::protocol_error: the arguments could not be decoded (it did not run);
   *  - errc::remote_failure: the function threw ("<type>: <what()>"), or dropped its
   *    completion handler;
   *  - any error code an asynchronous procedure completes with (detail: its message).
   */
  void dispatch(const incoming_call& call, boost::asio::any_io_executor executor,
                reply_handler reply) const {
    auto answer = std::make_shared<detail::reply_once>(std::move(reply), executor,
                                                       std::string(call.procedure.substr(0, 256)));
    const auto found = entries_.find(call.procedure);
    if (found == entries_.end()) {
      post_failure(executor, std::move(answer), errc::unknown_procedure,
                   fmt::format("no procedure named {} is defined on this node: define it on every node",
                               detail::quoted_name(call.procedure)));
      return;
    }
    std::shared_ptr<const entry> target = found->second;
    if (target->signature != call.signature) {
      std::string detail = fmt::format(
          "procedure {} is defined on this node with signature {}{} but the caller's is {}: deploy the "
          "same procedure declarations on every node",
          detail::quoted_name(call.procedure), detail::hex64(target->signature),
          target->signature_text.empty() ? std::string() : fmt::format(" ({})", target->signature_text),
          detail::hex64(call.signature));
      post_failure(executor, std::move(answer), errc::signature_mismatch, std::move(detail));
      return;
    }
    boost::asio::post(executor, [target = std::move(target), answer = std::move(answer),
                                 executor, request_id = call.request_id, deadline = call.deadline,
                                 durability = call.durability, arguments = std::string(call.arguments)]() mutable {
      if (deadline != std::chrono::steady_clock::time_point{} &&
          std::chrono::steady_clock::now() >= deadline) {
        answer->complete(make_error_code(errc::timeout),
                         fmt::format("the deadline of the call to {} passed before it started; it did not run",
                                     detail::quoted_name(target->name)));
        return;
      }
      const incoming_call owned{target->name, target->signature, arguments, request_id, deadline, durability};
      if (target->typed) {
        // A typed procedure answers through `answer` itself.
        try {
          target->typed(owned, executor, answer);
        } catch (...) {
          answer->fail(std::current_exception());
        }
        return;
      }
      // The handler gets a reply that answers through `answer`, so that a throwing or
      // forgetful raw handler still answers exactly once.
      reply_handler forward = [answer](boost::system::error_code ec, std::string payload) {
        answer->complete(ec, std::move(payload));
      };
      try {
        target->handler(owned, executor, std::move(forward));
      } catch (...) {
        answer->fail(std::current_exception());
      }
    });
  }

  /// Whether a procedure named `name` is defined.
  bool contains(std::string_view name) const { return entries_.find(name) != entries_.end(); }

  /// The names of the defined procedures, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
  }

  /// The signature fingerprint `name` is defined with, if it is defined.
  std::optional<std::uint64_t> signature_of(std::string_view name) const {
    const auto found = entries_.find(name);
    if (found == entries_.end()) return std::nullopt;
    return found->second->signature;
  }

 private:
  // Runs a typed procedure's call, answering through the reply given.
  using typed_handler = std::function<void(const incoming_call&, const boost::asio::any_io_executor&,
                                           std::shared_ptr<detail::reply_once>)>;

  struct entry {
    std::string name;
    std::uint64_t signature = 0;
    std::string signature_text;  // empty for raw procedures
    raw_handler handler;         // raw procedures
    typed_handler typed;         // typed procedures
  };

  void add(std::string name, std::uint64_t signature, std::string signature_text, raw_handler handler,
           typed_handler typed) {
    if (name.empty()) {
      throw error(make_error_code(errc::bad_argument), "a procedure name cannot be empty");
    }
    if (entries_.contains(name)) {
      throw error(make_error_code(errc::bad_argument),
                  fmt::format("procedure {} is already defined: each name can be defined once",
                              detail::quoted_name(name)));
    }
    auto e = std::make_shared<entry>(
        entry{name, signature, std::move(signature_text), std::move(handler), std::move(typed)});
    entries_.emplace(std::move(name), std::move(e));
  }

  static void post_failure(const boost::asio::any_io_executor& executor,
                           std::shared_ptr<detail::reply_once> answer, errc code, std::string detail) {
    boost::asio::post(executor, [answer = std::move(answer), code, detail = std::move(detail)]() mutable {
      answer->complete(make_error_code(code), std::move(detail));
    });
  }

  // Decodes, runs and answers one call of a typed procedure. Runs on the executor.
  template <class Proc, class Traits, class F>
  static void run_typed(const std::shared_ptr<F>& fn, const incoming_call& call,
                        const boost::asio::any_io_executor& executor, std::shared_ptr<detail::reply_once> answer) {
    using R = typename Proc::result_type;
    boost::system::error_code ec;
    std::string why;
    auto args = fwd::detail::decode_arguments<Proc>(call.arguments, ec, &why);
    if (ec) {
      answer->complete(ec, fmt::format("the arguments of {} could not be decoded as {}: {}",
                                       detail::quoted_name(call.procedure), Proc::signature_text(), why));
      return;
    }
    const call_context context{call.request_id, call.deadline};
    try {
      if constexpr (Traits::style == detail::handler_style::asynchronous) {
        detail::invoke_procedure<Traits::with_context>(*fn, context, args, result_handler<R>(answer));
      } else if constexpr (Traits::style == detail::handler_style::coroutine) {
        auto on_done = [answer](std::exception_ptr exception, auto&&... value) {
          if (exception) {
            answer->fail(exception);
            return;
          }
          if constexpr (sizeof...(value) == 0) {
            answer->complete({}, std::string());
          } else {
            try {
              answer->complete({}, detail::encode_procedure_result<R>(static_cast<R>(value)...));
            } catch (...) {
              answer->fail(std::current_exception());
            }
          }
        };
        boost::asio::co_spawn(
            executor,
            detail::run_coroutine<R, Traits::with_context>(fn, context, std::move(args)),
            std::move(on_done));
      } else if constexpr (std::is_void_v<R>) {
        detail::invoke_procedure<Traits::with_context>(*fn, context, args);
        answer->complete({}, std::string());
      } else {
        const R result = detail::invoke_procedure<Traits::with_context>(*fn, context, args);
        answer->complete({}, detail::encode_procedure_result<R>(result));
      }
    } catch (...) {
      answer->fail(std::current_exception());
    }
  }

  std::map<std::string, std::shared_ptr<const entry>, std::less<>> entries_;
};

}  // namespace fwd::rpc
