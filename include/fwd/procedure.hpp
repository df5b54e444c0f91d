#pragma once

// A procedure: the name and the typed signature of one write operation, declared once in
// a header every node compiles. Callers and the primary agree on it by name and by a
// fingerprint of its types; arguments and results travel as Boost.Serialization binary
// archives (fwd/detail/procedure_codec.hpp, included at the end of this file).

#include <fwd/detail/procedure_signature.hpp>
#include <fwd/error.hpp>

#include <fmt/format.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>

namespace fwd {

namespace detail {

template <class Parameters, class Given>
inline constexpr bool arguments_convert = false;
template <class... P, class... G>
  requires(sizeof...(P) == sizeof...(G))
inline constexpr bool arguments_convert<std::tuple<P...>, std::tuple<G...>> =
    (std::convertible_to<G, std::decay_t<P>> && ...);

/// The longest procedure name fwd accepts, in bytes.
inline constexpr std::size_t max_procedure_name = 255;

/// The blocking call forms' exception: its diagnostics are "call to <procedure>", then
/// the operation's detail when it has one.
inline fwd::error call_failure(const boost::system::error_code& ec, std::string_view procedure,
                               const diagnostics& detail) {
  diagnostics thrown;
  thrown.assign(detail.message().empty() ? fmt::format("call to {}", procedure)
                                         : fmt::format("call to {}: {}", procedure, detail.message()));
  return fwd::error(ec, std::move(thrown));
}

}  // namespace detail

template <class Signature>
class procedure;

/**
 * A remote procedure with result `R` and parameters `Args...`, identified by its name:
 *
 *     inline constexpr fwd::procedure<std::int64_t(std::string)> add_tag{"blog.add_tag"};
 *
 * Parameter and result types must be serialisable: bool, integers, floating point,
 * std::string, std::vector, std::map, std::set, std::unordered_map, std::unordered_set,
 * std::array, std::optional, std::variant, std::tuple, std::pair, std::chrono durations,
 * system_clock time points, and enums and structs that have a wire name
 * (fwd::type_name) and, for structs, a Boost `serialize()`. Anything else fails to
 * compile here, with a message that says what to do. `R` may be `void`.
 *
 * Parameters are passed by value on the wire: `void(const std::string&)` and
 * `void(std::string)` are the same signature.
 */
template <class R, class... Args>
class procedure<R(Args...)> {
  static_assert(!std::is_reference_v<R>,
                "fwd: a procedure returns a value, not a reference: declare R without '&'");
  // Checks every type (each failure says why) and computes the fingerprint.
  static_assert((detail::signature_fingerprint<R(Args...)>(), true));

 public:
  /// The result type (may be void).
  using result_type = R;
  /// The decoded arguments, as the remote side receives them.
  using arguments = std::tuple<std::decay_t<Args>...>;
  /// The declared signature.
  using signature_type = R(Args...);

  /// True when a call with arguments of types `Given...` compiles: same count, and each
  /// converts to its parameter.
  template <class... Given>
  static constexpr bool accepts = detail::arguments_convert<std::tuple<Args...>, std::tuple<Given...>>;

  /// A procedure named `name` (1 to 255 bytes; the name is not copied, so give a string
  /// that outlives the procedure, such as a literal). In a constant expression, an invalid
  /// name fails to compile; at run time it throws fwd::error(errc::bad_argument).
  constexpr explicit procedure(std::string_view name) : name_(name) {
    if (name.empty() || name.size() > detail::max_procedure_name) {
      throw error(make_error_code(errc::bad_argument),
                  "a procedure name must be 1 to 255 bytes long");
    }
  }

  /// The name callers and servers match on.
  constexpr std::string_view name() const noexcept { return name_; }

  /// The fingerprint of the signature: FNV-1a 64 of its canonical text. The same on
  /// every compiler and platform with the same type widths.
  static constexpr std::uint64_t signature() noexcept { return fingerprint_; }

  /// The canonical text the fingerprint hashes, e.g. "i64(string)": for messages.
  static std::string signature_text() { return detail::signature_text<R(Args...)>(); }

 private:
  static constexpr std::uint64_t fingerprint_ = detail::signature_fingerprint<R(Args...)>();
  std::string_view name_;
};

/// Satisfied when procedure `Proc` can be called with arguments of types `Given...`.
template <class Proc, class... Given>
concept accepts_arguments = Proc::template accepts<Given...>;

}  // namespace fwd

#include <fwd/detail/procedure_codec.hpp>
