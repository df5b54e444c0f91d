// The codec's fast path writes the bytes fwd's Boost archives write, and refuses the
// same inputs with the same errors: compared here value by value, byte by byte.

#include <fwd/procedure.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

namespace codec_test {
enum class color : std::uint8_t { red = 1, green = 2, blue = 200 };
enum class wide : std::int64_t { low = -5, high = std::int64_t{1} << 40 };
struct point {
  static constexpr std::string_view fwd_type_name = "codec_test.point";
  int x = 0;
  int y = 0;
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar & x & y;
  }
  bool operator==(const point&) const = default;
};
}  // namespace codec_test
FWD_TYPE_NAME(codec_test::color, "codec_test.color");
FWD_TYPE_NAME(codec_test::wide, "codec_test.wide");

namespace {

using fwd::detail::fast_codable;

// --- random values of each type --------------------------------------------------------

template <class T>
struct generate;

template <class T>
T random_value(std::mt19937_64& random) {
  return generate<T>::make(random);
}

template <class T>
  requires std::is_integral_v<T>
struct generate<T> {
  static T make(std::mt19937_64& random) {
    if constexpr (std::is_same_v<T, bool>) {
      return (random() & 1) != 0;
    } else {
      // Edges as often as the rest.
      switch (random() % 4) {
        case 0: return std::numeric_limits<T>::min();
        case 1: return std::numeric_limits<T>::max();
        case 2: return static_cast<T>(random() % 3);
        default: return static_cast<T>(random());
      }
    }
  }
};

template <class T>
  requires std::is_floating_point_v<T>
struct generate<T> {
  static T make(std::mt19937_64& random) {
    switch (random() % 5) {
      case 0: return std::numeric_limits<T>::quiet_NaN();
      case 1: return -std::numeric_limits<T>::infinity();
      case 2: return static_cast<T>(-0.0);
      case 3: return std::numeric_limits<T>::denorm_min();
      default: return static_cast<T>(std::uniform_real_distribution<double>(-1e9, 1e9)(random));
    }
  }
};

template <class E>
  requires std::is_enum_v<E>
struct generate<E> {
  static E make(std::mt19937_64& random) {
    return static_cast<E>(generate<std::underlying_type_t<E>>::make(random));
  }
};

template <>
struct generate<std::string> {
  static std::string make(std::mt19937_64& random) {
    std::string s(random() % 3 == 0 ? random() % 300 : random() % 8, '\0');
    for (char& c : s) c = static_cast<char>(random());
    return s;
  }
};

template <class U>
struct generate<std::vector<U>> {
  static std::vector<U> make(std::mt19937_64& random) {
    std::vector<U> v(random() % 6);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = random_value<U>(random);
    return v;
  }
};

template <class T>
struct generate<std::optional<T>> {
  static std::optional<T> make(std::mt19937_64& random) {
    if (random() % 3 == 0) return std::nullopt;
    return random_value<T>(random);
  }
};

template <class... Ts>
struct generate<std::tuple<Ts...>> {
  static std::tuple<Ts...> make(std::mt19937_64& random) {
    return std::tuple<Ts...>{random_value<Ts>(random)...};
  }
};

template <class... Ts>
struct generate<std::variant<Ts...>> {
  static std::variant<Ts...> make(std::mt19937_64& random) {
    const std::size_t index = random() % sizeof...(Ts);
    std::variant<Ts...> v;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (void)((index == I ? (v.template emplace<I>(random_value<std::variant_alternative_t<I, std::variant<Ts...>>>(random)),
                            true)
                         : false) ||
             ...);
    }(std::index_sequence_for<Ts...>{});
    return v;
  }
};

template <>
struct generate<std::monostate> {
  static std::monostate make(std::mt19937_64&) { return {}; }
};

template <class Rep, class Period>
struct generate<std::chrono::duration<Rep, Period>> {
  static auto make(std::mt19937_64& random) { return std::chrono::duration<Rep, Period>(random_value<Rep>(random)); }
};

template <class Duration>
struct generate<std::chrono::time_point<std::chrono::system_clock, Duration>> {
  static auto make(std::mt19937_64& random) {
    return std::chrono::time_point<std::chrono::system_clock, Duration>(random_value<Duration>(random));
  }
};

// Equality that treats NaNs with the same bits as equal (a decoded value is compared by
// its encoding then).
template <class T>
bool same_value(const T& a, const T& b) {
  return fwd::detail::archive_encode(a) == fwd::detail::archive_encode(b);
}

// --- the comparisons ------------------------------------------------------------------

struct outcome {
  boost::system::error_code ec;
  std::string detail;
  std::string reencoded;  // the decoded value, encoded again (when decoding succeeded)
};

template <class T>
outcome decode_fast(std::string_view bytes) {
  outcome out;
  T value{};
  fwd::detail::fast_decode(bytes, out.ec, &out.detail, value);
  if (!out.ec) out.reencoded = fwd::detail::archive_encode(value);
  return out;
}

template <class T>
outcome decode_archive(std::string_view bytes) {
  outcome out;
  T value{};
  fwd::detail::archive_decode(bytes, out.ec, &out.detail, value);
  if (!out.ec) out.reencoded = fwd::detail::archive_encode(value);
  return out;
}

// Both decoders agree on `bytes`: both succeed with the same value, or both fail with
// the same error and the same explanation.
template <class T>
void decoders_agree(std::string_view bytes) {
  const outcome fast = decode_fast<T>(bytes);
  const outcome slow = decode_archive<T>(bytes);
  INFO("input of " << bytes.size() << " bytes; archive says: " << slow.detail);
  REQUIRE(fast.ec == slow.ec);
  REQUIRE(fast.detail == slow.detail);
  REQUIRE(fast.reencoded == slow.reencoded);
}

// For `rounds` random values of T: identical bytes, a faithful round trip, and agreement
// on every truncation, on a byte too many and on corrupted copies.
template <class T>
void compare_paths(std::mt19937_64& random, int rounds = 200) {
  STATIC_REQUIRE(fast_codable<T>);
  for (int round = 0; round < rounds; ++round) {
    const T value = random_value<T>(random);
    const std::string expected = fwd::detail::archive_encode(value);
    const std::string fast = fwd::detail::fast_encode(value);
    REQUIRE(fast == expected);
    REQUIRE(fwd::detail::encode_result<T>(value) == expected);

    boost::system::error_code ec;
    std::string detail;
    T decoded{};
    fwd::detail::fast_decode(std::string_view(expected), ec, &detail, decoded);
    INFO(detail);
    REQUIRE_FALSE(ec);
    REQUIRE(same_value(decoded, value));

    for (std::size_t length = 0; length < expected.size(); ++length) {
      decoders_agree<T>(std::string_view(expected).substr(0, length));
    }
    decoders_agree<T>(expected + '\0');
    for (int corruption = 0; corruption < 8 && !expected.empty(); ++corruption) {
      std::string bad = expected;
      bad[random() % bad.size()] = static_cast<char>(random());
      if (random() % 2 == 0) bad[random() % bad.size()] = static_cast<char>(random() % 3);
      decoders_agree<T>(bad);
    }
  }
}

}  // namespace

TEST_CASE("the fast path covers exactly the types whose archive encoding is plain values") {
  STATIC_REQUIRE(fast_codable<bool, char, signed char, unsigned char, short, unsigned short, int, unsigned, long,
                              unsigned long, long long, unsigned long long, float, double>);
  STATIC_REQUIRE(fast_codable<codec_test::color, codec_test::wide, std::string, std::vector<double>,
                              std::vector<bool>, std::vector<std::uint8_t>, std::monostate>);
  STATIC_REQUIRE(fast_codable<std::tuple<int, std::string>, std::optional<std::vector<int>>,
                              std::variant<std::monostate, std::string, std::int64_t>, std::chrono::milliseconds,
                              std::chrono::system_clock::time_point>);
  // Boost writes class information (or padding) for these: they keep the archive path.
  STATIC_REQUIRE_FALSE(fast_codable<long double>);
  STATIC_REQUIRE_FALSE(fast_codable<std::vector<std::string>>);
  STATIC_REQUIRE_FALSE(fast_codable<std::vector<codec_test::color>>);
  STATIC_REQUIRE_FALSE(fast_codable<std::map<int, int>>);
  STATIC_REQUIRE_FALSE(fast_codable<std::array<int, 2>>);
  STATIC_REQUIRE_FALSE(fast_codable<std::pair<int, int>>);
  STATIC_REQUIRE_FALSE(fast_codable<codec_test::point>);
  STATIC_REQUIRE_FALSE(fast_codable<std::optional<std::map<int, int>>>);
  STATIC_REQUIRE_FALSE(fast_codable<std::tuple<int, std::vector<std::string>>>);
  STATIC_REQUIRE_FALSE(fast_codable<int, std::pair<int, int>>);
}

TEST_CASE("fast path: arithmetic values encode to the archive's bytes and decode as strictly") {
  std::mt19937_64 random(1);
  compare_paths<bool>(random);
  compare_paths<char>(random);
  compare_paths<signed char>(random);
  compare_paths<unsigned char>(random);
  compare_paths<short>(random);
  compare_paths<unsigned short>(random);
  compare_paths<int>(random);
  compare_paths<unsigned>(random);
  compare_paths<long>(random);
  compare_paths<unsigned long>(random);
  compare_paths<long long>(random);
  compare_paths<unsigned long long>(random);
  compare_paths<float>(random);
  compare_paths<double>(random);
  compare_paths<codec_test::color>(random);
  compare_paths<codec_test::wide>(random);
}

TEST_CASE("fast path: strings and vectors encode to the archive's bytes and decode as strictly") {
  std::mt19937_64 random(2);
  compare_paths<std::string>(random);
  compare_paths<std::vector<bool>>(random);
  compare_paths<std::vector<char>>(random);
  compare_paths<std::vector<std::uint8_t>>(random);
  compare_paths<std::vector<std::int16_t>>(random);
  compare_paths<std::vector<std::int32_t>>(random);
  compare_paths<std::vector<std::uint64_t>>(random);
  compare_paths<std::vector<float>>(random);
  compare_paths<std::vector<double>>(random);
}

TEST_CASE("fast path: tuples, optionals, variants and time encode to the archive's bytes and decode as strictly") {
  std::mt19937_64 random(3);
  compare_paths<std::tuple<>>(random, 5);
  compare_paths<std::tuple<int, std::string, bool>>(random);
  compare_paths<std::optional<std::string>>(random);
  compare_paths<std::optional<std::optional<bool>>>(random);
  compare_paths<std::variant<int, bool>>(random);
  compare_paths<std::variant<std::monostate, std::string, std::vector<double>, codec_test::color>>(random);
  compare_paths<std::optional<std::variant<std::int64_t, std::tuple<std::string, std::vector<bool>>>>>(random);
  compare_paths<std::chrono::milliseconds>(random);
  compare_paths<std::chrono::duration<double, std::ratio<1, 3>>>(random);
  compare_paths<std::chrono::time_point<std::chrono::system_clock, std::chrono::microseconds>>(random);
}

TEST_CASE("fast path: a call's arguments are the archive's bytes of each argument in turn") {
  std::mt19937_64 random(4);
  const fwd::procedure<std::int64_t(std::string, const std::vector<double>&, std::optional<codec_test::color>, bool)>
      proc{"test.fast_arguments"};
  using args = decltype(proc)::arguments;
  for (int round = 0; round < 200; ++round) {
    const auto [s, v, c, b] = random_value<args>(random);
    const std::string bytes = fwd::detail::encode_arguments(proc, s, v, c, b);
    REQUIRE(bytes == fwd::detail::archive_encode(s, v, c, b));
    boost::system::error_code ec;
    auto decoded = fwd::detail::decode_arguments<decltype(proc)>(bytes, ec);
    REQUIRE_FALSE(ec);
    REQUIRE(fwd::detail::archive_encode(decoded) == fwd::detail::archive_encode(std::tuple{s, v, c, b}));
    for (std::size_t length = 0; length < bytes.size(); ++length) {
      decoders_agree<args>(std::string_view(bytes).substr(0, length));
    }
  }
  // Arguments given as other types are converted to the parameters first, as before.
  const fwd::procedure<void(std::string, std::int64_t)> convert{"test.fast_convert"};
  CHECK(fwd::detail::encode_arguments(convert, "text", 7) ==
        fwd::detail::archive_encode(std::string("text"), std::int64_t{7}));
}

TEST_CASE("fast path: hostile input is refused with the archive's explanation") {
  std::string huge(8, '\0');
  const std::uint64_t count = std::uint64_t{1} << 62;
  std::memcpy(huge.data(), &count, sizeof(count));
  decoders_agree<std::string>(huge);
  decoders_agree<std::vector<std::int64_t>>(huge);
  decoders_agree<std::vector<bool>>(huge + "\x01");

  std::string two(8, '\0');
  two[0] = 2;
  decoders_agree<std::vector<std::int32_t>>(two + "abcde");  // 2 elements need 8 bytes: refused before resizing
  decoders_agree<std::vector<bool>>(two + "\x01\x05");       // a bool that is neither 0 nor 1

  std::string detail;
  boost::system::error_code ec;
  std::vector<std::int32_t> ints;
  fwd::detail::fast_decode(two + "abcde", ec, &detail, ints);
  CHECK(ec == fwd::errc::protocol_error);
  CHECK(detail == "undecodable payload (input stream error-collection size exceeds the input)");
  bool flag = false;
  fwd::detail::fast_decode(std::string_view("\x02"), ec, &detail, flag);
  CHECK(ec == fwd::errc::protocol_error);
  CHECK(detail == "undecodable payload (input stream error-invalid bool)");
  std::variant<int, bool> alternative;
  fwd::detail::fast_decode(std::string_view("\x03\0\0\0\0\0\0\0", 8), ec, &detail, alternative);
  CHECK(ec == fwd::errc::protocol_error);
  CHECK(detail == "undecodable payload (input stream error-std::variant alternative index out of range)");

  // Random bytes: both decoders agree on every input.
  std::mt19937_64 random(5);
  for (int round = 0; round < 3000; ++round) {
    std::string bytes(random() % 40, '\0');
    for (char& c : bytes) c = static_cast<char>(random() % 4 == 0 ? random() % 3 : random());
    decoders_agree<std::tuple<std::string, std::optional<std::variant<bool, std::vector<std::uint16_t>>>>>(bytes);
    decoders_agree<std::vector<bool>>(bytes);
    decoders_agree<std::optional<std::string>>(bytes);
  }
}
