#pragma once

// How a forwarded call reaches its caller: the result is decoded (on the call's strand),
// the caller's diagnostics are filled, and the handler completes through its associated
// executor (a pending_completion).

#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <string>
#include <type_traits>
#include <utility>

namespace fwd::detail {

/// How a completed forwarded call reaches its caller.
struct forward_completion {
  virtual ~forward_completion() = default;
  virtual void complete(boost::system::error_code ec, std::string result, std::string detail) = 0;
};

template <class R>
struct forward_signature_of {
  using type = void(boost::system::error_code, R);
};
template <>
struct forward_signature_of<void> {
  using type = void(boost::system::error_code);
};

// Decodes the result (on the call's strand) and completes the caller's handler through
// its associated executor.
template <class R>
class typed_completion final : public forward_completion {
 public:
  // `diagnostics` (the caller's, may be null) receives the failure's detail before the
  // handler is invoked.
  template <class Handler>
  typed_completion(Handler&& handler, const boost::asio::any_io_executor& fallback,
                   fwd::diagnostics* diagnostics)
      : completion_(std::forward<Handler>(handler), fallback), diagnostics_(diagnostics) {}

  boost::asio::cancellation_slot slot() const noexcept { return completion_.slot(); }

  void complete(boost::system::error_code ec, std::string result, std::string why) override {
    if (ec) report(std::move(why));
    // Posted: the call may complete before its initiating call returns (a stopped node).
    if constexpr (std::is_void_v<R>) {
      if (!ec) {
        fwd::detail::decode_result<void>(result, ec);
        if (ec) report("the result could not be decoded");
      }
      completion_.post(ec);
    } else {
      R value{};
      if (!ec) {
        std::string decode_why;
        value = fwd::detail::decode_result<R>(result, ec, &decode_why);
        if (ec) report(fmt::format("the result could not be decoded: {}", decode_why));
      }
      completion_.post(ec, std::move(value));
    }
  }

 private:
  void report(std::string detail) {
    if (diagnostics_ != nullptr) diagnostics_->assign(std::move(detail));
  }

  fwd::detail::pending_completion<typename forward_signature_of<R>::type> completion_;
  fwd::diagnostics* diagnostics_;
};

}  // namespace fwd::detail
