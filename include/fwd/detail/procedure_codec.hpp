#pragma once

// Encoding and decoding a procedure's arguments and result: the bytes a call carries.
//
// Arguments are written one after another into fwd's output archive (no tuple framing);
// a result is one value; a void result is no bytes at all. Decoding never trusts its
// input: any failure (truncated bytes, a count larger than the input, an invalid bool
// or variant index, bytes left over, an exception from a user's serialize()) is reported
// as errc::protocol_error, never a crash, never an allocation larger than the input
// allows.
//
// Values of the common types (arithmetic, enums, strings, vectors of arithmetic, and
// tuples, optionals and variants of these: codec_fast_path.hpp) are written and read
// without a Boost archive, to the same bytes and with the same checks; the others go
// through fwd's archives. A call's arguments take the fast path when all of them can.

#include <fwd/detail/codec_fast_path.hpp>
#include <fwd/detail/serialization.hpp>
#include <fwd/error.hpp>
#include <fwd/procedure.hpp>

#include <boost/archive/archive_exception.hpp>
#include <boost/core/demangle.hpp>
#include <fmt/format.h>
#include <boost/system/error_code.hpp>

#include <cstddef>
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

/// Runs `read()`, which returns how many bytes it left unread; reports any failure, or
/// bytes left over, as errc::protocol_error in `ec` with an explanation in `*detail`
/// (when given).
template <class Read>
void decode_guarded(boost::system::error_code& ec, std::string* detail, Read&& read) {
  ec = {};
  std::string why;
  try {
    const std::size_t left = std::forward<Read>(read)();
    if (left != 0) why = fmt::format("{} unexpected bytes after the last value", left);
  } catch (const boost::archive::archive_exception& e) {
    why = e.what();
  } catch (const std::exception& e) {
    why = fmt::format("{}: {}", boost::core::demangle(typeid(e).name()), e.what());
  } catch (...) {
    why = "an exception of unknown type";
  }
  if (!why.empty()) {
    ec = make_error_code(errc::protocol_error);
    if (detail != nullptr) *detail = fmt::format("undecodable payload ({})", why);
  }
}

/// Reads `bytes` with `read(input_archive&)`; reports any failure, or bytes left over,
/// as errc::protocol_error in `ec` with an explanation in `*detail` (when given).
template <class Read>
void decode_with(std::string_view bytes, boost::system::error_code& ec, std::string* detail,
                 Read&& read) {
  decode_guarded(ec, detail, [&] {
    input_bytes in(bytes);
    input_archive ar(in);
    std::forward<Read>(read)(ar);
    return in.remaining();
  });
}

/// `values...` written one after another through fwd's output archive (never the fast
/// path: the reference the fast path is tested against).
template <class... Ts>
std::string archive_encode(const Ts&... values) {
  return encode_with([&](output_archive& ar) { ((ar << values), ...); });
}

/// Reads `values...` in order through fwd's input archive (never the fast path).
template <class... Ts>
void archive_decode(std::string_view bytes, boost::system::error_code& ec, std::string* detail, Ts&... values) {
  decode_with(bytes, ec, detail, [&](input_archive& ar) { ((ar >> values), ...); });
}

/// Reads `values...` in order without an archive; as archive_decode otherwise.
template <class... Ts>
  requires fast_codable<Ts...>
void fast_decode(std::string_view bytes, boost::system::error_code& ec, std::string* detail, Ts&... values) {
  decode_guarded(ec, detail, [&] {
    fast_reader in(bytes);
    fast_decode(in, values...);
    return in.remaining();
  });
}

/// Encodes `values...` as fwd's archives would, through the fast path when it can.
template <class... Ts>
std::string encode_values(const Ts&... values) {
  if constexpr (fast_codable<Ts...>) {
    return fast_encode(values...);
  } else {
    return archive_encode(values...);
  }
}

/// Decodes `values...` as fwd's archives would, through the fast path when it can.
template <class... Ts>
void decode_values(std::string_view bytes, boost::system::error_code& ec, std::string* detail, Ts&... values) {
  if constexpr (fast_codable<Ts...>) {
    fast_decode(bytes, ec, detail, values...);
  } else {
    archive_decode(bytes, ec, detail, values...);
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
  if constexpr (fast_codable<std::decay_t<A>...>) {
    return fast_encode<std::decay_t<A>...>(as_parameter<std::decay_t<A>>(std::forward<Given>(given))...);
  } else {
    return encode_with([&](output_archive& ar) {
      (save_parameter<std::decay_t<A>>(ar, std::forward<Given>(given)), ...);
    });
  }
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
  std::apply([&](auto&... value) { decode_values(bytes, ec, detail, value...); }, args);
  if (ec) return typename Proc::arguments{};
  return args;
}

/// Encodes a result of type `R` (write the procedure's result_type: encode_result<R>(v)).
template <class R>
std::string encode_result(const R& value) {
  static_assert((signature_fingerprint<R()>(), true));
  return encode_values(value);
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
        *detail = fmt::format("undecodable payload (a void result carries no bytes, got {})",
                              bytes.size());
      }
    }
  } else {
    static_assert((signature_fingerprint<R()>(), true));
    R value{};
    decode_values(bytes, ec, detail, value);
    if (ec) return R{};
    return value;
  }
}

}  // namespace fwd::detail
