#pragma once

// Encoding and decoding a procedure's arguments and result: the bytes a call carries.
//
// Arguments are written one after another into fwd's output archive (no tuple framing);
// a result is one value; a void result is no bytes at all. Decoding never trusts its
// input: any failure (truncated bytes, a count larger than the input, an invalid bool
// or variant index, bytes left over, an exception from a user's serialize()) is reported
// as errc::protocol_error, never a crash, never an allocation larger than the input
// allows.

#include <fwd/detail/serialization.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>

#include <boost/archive/archive_exception.hpp>
#include <boost/core/demangle.hpp>
#include <boost/system/error_code.hpp>

#include <exception>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace fwd::detail {

// The value as its parameter type: a reference when it already is one, else converted.
template <class Parameter, class Given>
decltype(auto) as_parameter(Given&& given) {
  if constexpr (std::is_same_v<std::remove_cvref_t<Given>, Parameter>) {
    return static_cast<const Parameter&>(given);
  } else {
    return Parameter(std::forward<Given>(given));
  }
}

template <class Parameter, class Given>
void save_parameter(output_archive& ar, Given&& given) {
  decltype(auto) value = as_parameter<Parameter>(std::forward<Given>(given));
  ar << static_cast<const Parameter&>(value);
}

template <class Write>
std::string encode_with(Write&& write) {
  std::string out;
  output_bytes buffer(out);
  {
    output_archive ar(buffer);
    std::forward<Write>(write)(ar);
  }
  return out;
}

/// Reads `bytes` with `read(input_archive&)`; reports any failure, or bytes left over,
/// as errc::protocol_error in `ec` with an explanation in `*detail` (when given).
template <class Read>
void decode_with(std::string_view bytes, boost::system::error_code& ec, std::string* detail,
                 Read&& read) {
  ec = {};
  std::string why;
  try {
    input_bytes in(bytes);
    input_archive ar(in);
    std::forward<Read>(read)(ar);
    if (in.remaining() != 0) {
      why = std::to_string(in.remaining()) + " unexpected bytes after the last value";
    }
  } catch (const boost::archive::archive_exception& e) {
    why = e.what();
  } catch (const std::exception& e) {
    why = boost::core::demangle(typeid(e).name()) + ": " + e.what();
  } catch (...) {
    why = "an exception of unknown type";
  }
  if (!why.empty()) {
    ec = make_error_code(errc::protocol_error);
    if (detail != nullptr) *detail = "undecodable payload (" + why + ")";
  }
}

/**
 * Encodes the arguments of a call to `proc`: each given argument converted to its
 * parameter type. Compiles only when `Given...` convert to the parameters (same count).
 * Throws what a user's serialize() throws, or boost::archive::archive_exception.
 */
template <class R, class... A, class... Given>
  requires procedure<R(A...)>::template accepts<Given...>
std::string encode_arguments(const procedure<R(A...)>& /*proc*/, Given&&... given) {
  return encode_with([&](output_archive& ar) {
    (save_parameter<std::decay_t<A>>(ar, std::forward<Given>(given)), ...);
  });
}

/**
 * Decodes what encode_arguments wrote for procedure type `Proc`. On failure sets `ec` to
 * errc::protocol_error, writes why into `*detail` (when not null) and returns
 * default-constructed arguments. Never throws for bad input.
 */
template <class Proc>
typename Proc::arguments decode_arguments(std::string_view bytes, boost::system::error_code& ec,
                                          std::string* detail = nullptr) {
  typename Proc::arguments args{};
  decode_with(bytes, ec, detail, [&args](input_archive& ar) {
    std::apply([&ar](auto&... value) { ((ar >> value), ...); }, args);
  });
  if (ec) return typename Proc::arguments{};
  return args;
}

/// Encodes a result of type `R` (write the procedure's result_type: encode_result<R>(v)).
template <class R>
std::string encode_result(const R& value) {
  static_assert((signature_fingerprint<R()>(), true));
  return encode_with([&value](output_archive& ar) { ar << value; });
}

/// Encodes a void result: no bytes.
inline std::string encode_result() { return {}; }

/// Encodes `value` as the result of `proc`.
template <class R, class... A>
  requires(!std::is_void_v<R>)
std::string encode_result(const procedure<R(A...)>& /*proc*/, const R& value) {
  return encode_result<R>(value);
}

/**
 * Decodes a result of type `R` (void: the payload must be empty). On failure sets `ec` to
 * errc::protocol_error, writes why into `*detail` (when not null) and returns a
 * default-constructed R. Never throws for bad input.
 */
template <class R>
R decode_result(std::string_view bytes, boost::system::error_code& ec, std::string* detail = nullptr) {
  if constexpr (std::is_void_v<R>) {
    ec = {};
    if (!bytes.empty()) {
      ec = make_error_code(errc::protocol_error);
      if (detail != nullptr) {
        *detail = "undecodable payload (a void result carries no bytes, got " +
                  std::to_string(bytes.size()) + ")";
      }
    }
  } else {
    static_assert((signature_fingerprint<R()>(), true));
    R value{};
    decode_with(bytes, ec, detail, [&value](input_archive& ar) { ar >> value; });
    if (ec) return R{};
    return value;
  }
}

}  // namespace fwd::detail
