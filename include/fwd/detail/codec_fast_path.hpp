#pragma once

// The codec's fast path: the values whose Boost binary encoding is fixed and simple,
// written and read without constructing an archive.
//
// A Boost archive costs far more to construct than a small payload costs to encode (it
// allocates its state and builds a std::locale with an extra facet, even with
// no_codecvt), and a call constructs four of them. For the types below, fwd's archives
// write nothing but the values themselves, in native byte order, with no class
// information and no tracking, so the bytes are known:
//
//   bool                     1 byte, 0 or 1 (reading anything else is an error)
//   char, signed/unsigned char, short, int, long, long long (and unsigned), float, double
//                            sizeof(T) bytes, native order
//   enum (fixed underlying)  its underlying type (fwd's archives write enums so)
//   std::string              size as std::size_t, then the bytes
//   std::vector<U>, U one of the arithmetic types above
//                            count as std::size_t, then the elements (bools one byte each)
//   std::tuple<Ts...>        the elements in order
//   std::optional<T>         bool engaged, then the value if engaged
//   std::variant<Ts...>      the index as std::uint32_t, then the alternative
//   std::monostate           nothing
//   std::chrono::duration    its count; a time_point: its duration since the epoch
//
// These are exactly the types whose Boost implementation level is `primitive_type` or
// `object_serializable` (Boost's collection traits give std::vector of these element
// types that level), so an archive writes no preamble for them, the first time or any
// other. Anything else (std::map, std::array, std::pair, vectors of other types, user
// structs, long double, whose padding bytes Boost copies) takes the archive path.
//
// Reading is exactly as strict as fwd's input archive, in the same order, and fails with
// the same boost::archive::archive_exception (so with the same message): a truncated
// value, a count or length whose elements cannot fit in the bytes left (refused before
// anything is allocated), a bool that is not 0 or 1, a variant index out of range.
// tests/unit/codec_fast_path_test.cpp compares both paths byte for byte and error for
// error.

#include <boost/archive/archive_exception.hpp>
#include <boost/serialization/throw_exception.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace fwd::detail {

/// Reads values from bytes someone else owns; every failure is an archive_exception.
class fast_reader {
 public:
  explicit fast_reader(std::string_view bytes) noexcept
      : next_(bytes.data()), end_(bytes.data() + bytes.size()) {}

  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - next_); }

  /// Copies `size` bytes out, or fails as a short read of Boost's does.
  void read(void* out, std::size_t size) {
    if (size > remaining()) fail(nullptr);
    if (size > 0) std::memcpy(out, next_, size);
    next_ += size;
  }

  const char* take(std::size_t size) {
    if (size > remaining()) fail(nullptr);
    const char* at = next_;
    next_ += size;
    return at;
  }

  // The exception fwd's input_archive throws (what() is "input stream error[-what]").
  [[noreturn]] static void fail(const char* what) {
    boost::serialization::throw_exception(
        boost::archive::archive_exception(boost::archive::archive_exception::input_stream_error, what));
  }

 private:
  const char* next_;
  const char* end_;
};

template <class T>
inline constexpr bool fast_arithmetic =
    std::is_same_v<T, bool> || std::is_same_v<T, char> || std::is_same_v<T, signed char> ||
    std::is_same_v<T, unsigned char> || std::is_same_v<T, short> || std::is_same_v<T, unsigned short> ||
    std::is_same_v<T, int> || std::is_same_v<T, unsigned int> || std::is_same_v<T, long> ||
    std::is_same_v<T, unsigned long> || std::is_same_v<T, long long> ||
    std::is_same_v<T, unsigned long long> || std::is_same_v<T, float> || std::is_same_v<T, double>;

static_assert(sizeof(bool) == 1, "fwd's codec writes bools as one byte");

/// How the fast path encodes T; `enabled` is false for types it leaves to the archives.
/// `depth` bounds the nesting (deeply nested types stay with the archives, whose input
/// side counts nesting).
template <class T>
struct fast_codec {
  static constexpr bool enabled = false;
  static constexpr int depth = 0;
};

template <class T>
  requires fast_arithmetic<T>
struct fast_codec<T> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1;
  static constexpr std::size_t size(const T& /*value*/) noexcept { return sizeof(T); }
  static void write(char*& out, const T& value) noexcept {
    std::memcpy(out, &value, sizeof(T));
    out += sizeof(T);
  }
  static void read(fast_reader& in, T& value) {
    if constexpr (std::is_same_v<T, bool>) {
      unsigned char byte = 0;
      in.read(&byte, 1);
      if (byte > 1) fast_reader::fail("invalid bool");
      value = byte != 0;
    } else {
      in.read(&value, sizeof(T));
    }
  }
};

template <class E>
  requires(std::is_enum_v<E> && fast_arithmetic<std::underlying_type_t<E>> &&
           !std::is_same_v<std::underlying_type_t<E>, bool>)
struct fast_codec<E> {
  using underlying = std::underlying_type_t<E>;
  static constexpr bool enabled = true;
  static constexpr int depth = 1;
  static constexpr std::size_t size(const E& /*value*/) noexcept { return sizeof(underlying); }
  static void write(char*& out, const E& value) noexcept {
    fast_codec<underlying>::write(out, static_cast<underlying>(value));
  }
  static void read(fast_reader& in, E& value) {
    underlying raw{};
    fast_codec<underlying>::read(in, raw);
    value = static_cast<E>(raw);
  }
};

template <>
struct fast_codec<std::string> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1;
  static std::size_t size(const std::string& value) noexcept { return sizeof(std::size_t) + value.size(); }
  static void write(char*& out, const std::string& value) noexcept {
    fast_codec<std::size_t>::write(out, value.size());
    if (!value.empty()) std::memcpy(out, value.data(), value.size());
    out += value.size();
  }
  static void read(fast_reader& in, std::string& value) {
    std::size_t size = 0;
    in.read(&size, sizeof(size));
    if (size > in.remaining()) fast_reader::fail("string length exceeds the input");
    value.assign(in.take(size), size);
  }
};

template <class U>
  requires fast_arithmetic<U>
struct fast_codec<std::vector<U>> {
  static constexpr bool enabled = true;
  static constexpr int depth = 2;
  static std::size_t size(const std::vector<U>& value) noexcept {
    return sizeof(std::size_t) + value.size() * sizeof(U);
  }
  static void write(char*& out, const std::vector<U>& value) noexcept {
    fast_codec<std::size_t>::write(out, value.size());
    if constexpr (std::is_same_v<U, bool>) {
      for (const bool element : value) *out++ = element ? '\1' : '\0';
    } else {
      if (!value.empty()) std::memcpy(out, value.data(), value.size() * sizeof(U));
      out += value.size() * sizeof(U);
    }
  }
  static void read(fast_reader& in, std::vector<U>& value) {
    std::size_t count = 0;
    in.read(&count, sizeof(count));
    // As the archive: the count's elements must fit in the bytes left.
    if (count > in.remaining() / sizeof(U)) fast_reader::fail("collection size exceeds the input");
    if constexpr (std::is_same_v<U, bool>) {
      value.resize(count);
      for (std::size_t i = 0; i < count; ++i) {
        bool element = false;
        fast_codec<bool>::read(in, element);
        value[i] = element;
      }
    } else {
      const char* bytes = in.take(count * sizeof(U));
      value.resize(count);
      if (count > 0) std::memcpy(value.data(), bytes, count * sizeof(U));
    }
  }
};

template <class... Ts>
  requires(fast_codec<Ts>::enabled && ...)
struct fast_codec<std::tuple<Ts...>> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1 + std::max({0, fast_codec<Ts>::depth...});
  static std::size_t size(const std::tuple<Ts...>& value) noexcept {
    return std::apply([](const auto&... element) { return (std::size_t{0} + ... + fast_codec<Ts>::size(element)); },
                      value);
  }
  static void write(char*& out, const std::tuple<Ts...>& value) {
    std::apply([&out](const auto&... element) { (fast_codec<Ts>::write(out, element), ...); }, value);
  }
  static void read(fast_reader& in, std::tuple<Ts...>& value) {
    std::apply([&in](auto&... element) { (fast_codec<Ts>::read(in, element), ...); }, value);
  }
};

template <class T>
  requires fast_codec<T>::enabled
struct fast_codec<std::optional<T>> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1 + fast_codec<T>::depth;
  static std::size_t size(const std::optional<T>& value) noexcept {
    return 1 + (value ? fast_codec<T>::size(*value) : 0);
  }
  static void write(char*& out, const std::optional<T>& value) {
    fast_codec<bool>::write(out, value.has_value());
    if (value) fast_codec<T>::write(out, *value);
  }
  static void read(fast_reader& in, std::optional<T>& value) {
    bool engaged = false;
    fast_codec<bool>::read(in, engaged);
    if (!engaged) {
      value.reset();
      return;
    }
    fast_codec<T>::read(in, value.emplace());
  }
};

template <>
struct fast_codec<std::monostate> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1;
  static constexpr std::size_t size(const std::monostate& /*value*/) noexcept { return 0; }
  static void write(char*& /*out*/, const std::monostate& /*value*/) noexcept {}
  static void read(fast_reader& /*in*/, std::monostate& /*value*/) noexcept {}
};

template <class... Ts>
  requires(fast_codec<Ts>::enabled && ...)
struct fast_codec<std::variant<Ts...>> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1 + std::max({0, fast_codec<Ts>::depth...});
  static std::size_t size(const std::variant<Ts...>& value) {
    fail_if_valueless(value);
    return sizeof(std::uint32_t) +
           std::visit([](const auto& alternative) {
             return fast_codec<std::remove_cvref_t<decltype(alternative)>>::size(alternative);
           }, value);
  }
  static void write(char*& out, const std::variant<Ts...>& value) {
    fail_if_valueless(value);
    fast_codec<std::uint32_t>::write(out, static_cast<std::uint32_t>(value.index()));
    std::visit([&out](const auto& alternative) {
      fast_codec<std::remove_cvref_t<decltype(alternative)>>::write(out, alternative);
    }, value);
  }
  static void read(fast_reader& in, std::variant<Ts...>& value) {
    std::uint32_t index = 0;
    fast_codec<std::uint32_t>::read(in, index);
    if (index >= sizeof...(Ts)) fast_reader::fail("std::variant alternative index out of range");
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (void)((index == I
                  ? (fast_codec<std::variant_alternative_t<I, std::variant<Ts...>>>::read(
                         in, value.template emplace<I>()),
                     true)
                  : false) ||
             ...);
    }(std::index_sequence_for<Ts...>{});
  }

 private:
  // What the archive's save of a variant throws.
  static void fail_if_valueless(const std::variant<Ts...>& value) {
    if (value.valueless_by_exception()) {
      boost::serialization::throw_exception(boost::archive::archive_exception(
          boost::archive::archive_exception::output_stream_error,
          "a valueless std::variant cannot be serialised"));
    }
  }
};

template <class Rep, class Period>
  requires fast_arithmetic<Rep>
struct fast_codec<std::chrono::duration<Rep, Period>> {
  using duration = std::chrono::duration<Rep, Period>;
  static constexpr bool enabled = true;
  static constexpr int depth = 2;
  static constexpr std::size_t size(const duration& /*value*/) noexcept { return sizeof(Rep); }
  static void write(char*& out, const duration& value) noexcept { fast_codec<Rep>::write(out, value.count()); }
  static void read(fast_reader& in, duration& value) {
    Rep count{};
    fast_codec<Rep>::read(in, count);
    value = duration(count);
  }
};

template <class Clock, class Duration>
  requires fast_codec<Duration>::enabled
struct fast_codec<std::chrono::time_point<Clock, Duration>> {
  using time_point = std::chrono::time_point<Clock, Duration>;
  static constexpr bool enabled = true;
  static constexpr int depth = 1 + fast_codec<Duration>::depth;
  static constexpr std::size_t size(const time_point& value) noexcept {
    return fast_codec<Duration>::size(value.time_since_epoch());
  }
  static void write(char*& out, const time_point& value) noexcept {
    fast_codec<Duration>::write(out, value.time_since_epoch());
  }
  static void read(fast_reader& in, time_point& value) {
    Duration since_epoch{};
    fast_codec<Duration>::read(in, since_epoch);
    value = time_point(since_epoch);
  }
};

/// True when every one of `Ts` takes the fast path (and none nests deeply).
template <class... Ts>
inline constexpr bool fast_codable = ((fast_codec<Ts>::enabled && fast_codec<Ts>::depth <= 32) && ...);

/// The bytes of `values...`, one after another: what an archive writes for them.
template <class... Ts>
  requires fast_codable<Ts...>
std::string fast_encode(const Ts&... values) {
  const std::size_t size = (std::size_t{0} + ... + fast_codec<Ts>::size(values));
  // Written in place, after a single allocation.
  std::string out;
  out.resize(size);
  char* next = out.data();
  (fast_codec<Ts>::write(next, values), ...);
  (void)next;  // unused when there are no values
  return out;
}

/// Reads `values...` in order from `in` (throws archive_exception on bad input).
template <class... Ts>
  requires fast_codable<Ts...>
void fast_decode(fast_reader& in, Ts&... values) {
  (fast_codec<Ts>::read(in, values), ...);
}

}  // namespace fwd::detail
