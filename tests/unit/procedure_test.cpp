// Specification of fwd::procedure: signatures, fingerprints, compile-time checks of calls,
// and the encoding of arguments and results, including what happens to bad bytes.

#include <fwd/procedure.hpp>

#include <boost/serialization/access.hpp>

#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace blog {

enum class status : std::uint8_t { draft = 1, published = 2, deleted = 200 };
enum class big : std::int64_t { far = std::int64_t{1} << 50 };
enum old_style : int { old_a = 1, old_b = 2 };

// Named through a static member; serialised by a public member template.
struct tag {
  static constexpr std::string_view fwd_type_name = "blog.tag";
  std::string label;
  std::int32_t weight = 0;
  template <class Archive>
  void serialize(Archive& ar, unsigned /*version*/) {
    ar & label & weight;
  }
  friend bool operator==(const tag&, const tag&) = default;
};

// Boost's documented idiom: a private serialize() reached through access.
class post {
 public:
  post() = default;
  post(std::string title, std::vector<tag> tags, status s) : title_(std::move(title)), tags_(std::move(tags)), status_(s) {}
  friend bool operator==(const post&, const post&) = default;

 private:
  friend class boost::serialization::access;
  template <class Archive>
  void serialize(Archive& ar, unsigned /*version*/) {
    ar & title_ & tags_ & status_;
  }
  std::string title_;
  std::vector<tag> tags_;
  status status_ = status::draft;
};

// A free serialize() found by argument-dependent lookup.
struct point {
  double x = 0;
  double y = 0;
  friend bool operator==(const point&, const point&) = default;
};
template <class Archive>
void serialize(Archive& ar, point& p, unsigned /*version*/) {
  ar & p.x & p.y;
}

// Has a name but no way to be serialised.
struct opaque {
  int secret = 0;
};

// Serialised by a free function in namespace boost::serialization, which fwd cannot
// detect: the user says so with fwd::is_serializable.
struct money {
  std::int64_t cents = 0;
  friend bool operator==(const money&, const money&) = default;
};

}  // namespace blog

namespace boost::serialization {
template <class Archive>
void serialize(Archive& ar, blog::money& m, const unsigned int /*version*/) {
  ar & m.cents;
}
}  // namespace boost::serialization

template <>
struct fwd::is_serializable<blog::money> : std::true_type {};
FWD_TYPE_NAME(blog::money, "blog.money");

FWD_TYPE_NAME(blog::status, "blog.status");
FWD_TYPE_NAME(blog::big, "blog.big");
FWD_TYPE_NAME(blog::old_style, "blog.old_style");
FWD_TYPE_NAME(blog::post, "blog.post");
FWD_TYPE_NAME(blog::point, "blog.point");
FWD_TYPE_NAME(blog::opaque, "blog.opaque");

namespace {

inline constexpr fwd::procedure<std::int64_t(std::string)> add_tag{"blog.add_tag"};
inline constexpr fwd::procedure<void(const std::string&, std::vector<blog::tag>)> retag{"blog.retag"};

// Whether encode_arguments(proc, given...) compiles.
template <class Proc, class... Given>
concept can_encode = requires(const Proc& proc, Given&&... given) {
  fwd::detail::encode_arguments(proc, std::forward<Given>(given)...);
};

template <class T>
constexpr std::uint64_t fp() {
  return fwd::procedure<T>::signature();
}

template <class T>
std::string text() {
  return fwd::procedure<T>::signature_text();
}

// Round-trips one value as a result and as an argument.
template <class T>
T round_trip(const T& value) {
  const std::string bytes = fwd::detail::encode_result<T>(value);
  boost::system::error_code ec;
  std::string detail;
  T decoded = fwd::detail::decode_result<T>(bytes, ec, &detail);
  INFO(detail);
  REQUIRE_FALSE(ec);

  const fwd::procedure<void(T)> proc{"test.round_trip"};
  const std::string argument_bytes = fwd::detail::encode_arguments(proc, value);
  auto args = fwd::detail::decode_arguments<fwd::procedure<void(T)>>(argument_bytes, ec, &detail);
  REQUIRE_FALSE(ec);
  REQUIRE(std::get<0>(args) == value);
  return decoded;
}

}  // namespace

TEST_CASE("a procedure is a constant with a name and a signature") {
  STATIC_REQUIRE(add_tag.name() == "blog.add_tag");
  STATIC_REQUIRE(std::is_same_v<decltype(add_tag)::result_type, std::int64_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(add_tag)::arguments, std::tuple<std::string>>);
  STATIC_REQUIRE(std::is_same_v<decltype(retag)::arguments, std::tuple<std::string, std::vector<blog::tag>>>);
  constexpr std::uint64_t signature = add_tag.signature();
  STATIC_REQUIRE(signature != 0);
  CHECK(add_tag.signature_text() == "i64(string)");
}

TEST_CASE("an empty procedure name is refused") {
  REQUIRE_THROWS_AS(fwd::procedure<void()>{""}, fwd::error);
  REQUIRE_THROWS_AS(fwd::procedure<void()>{std::string(256, 'x')}, fwd::error);
  try {
    fwd::procedure<void()>{""};
  } catch (const fwd::error& e) {
    CHECK(e.code() == fwd::errc::bad_argument);
  }
}

TEST_CASE("the signature text is canonical: types by width, names from the user") {
  CHECK(text<void()>() == "void()");
  CHECK(text<bool(char, signed char, unsigned char)>() == "bool(char,i8,u8)");
  CHECK(text<void(std::int16_t, std::uint16_t, std::int32_t, std::uint32_t, std::int64_t, std::uint64_t)>() ==
        "void(i16,u16,i32,u32,i64,u64)");
  CHECK(text<double(float)>() == "f64(f32)");
  CHECK(text<void(std::vector<std::map<std::string, std::set<int>>>)>() == "void(vector<map<string,set<i32>>>)");
  CHECK(text<void(std::unordered_map<std::uint8_t, std::string>, std::unordered_set<std::int64_t>)>() ==
        "void(unordered_map<u8,string>,unordered_set<i64>)");
  CHECK(text<void(std::array<std::uint8_t, 16>, std::pair<int, bool>)>() == "void(array<u8,16>,pair<i32,bool>)");
  CHECK(text<std::optional<std::variant<int, std::string>>(std::tuple<>, std::tuple<int, double>)>() ==
        "optional<variant<i32,string>>(tuple<>,tuple<i32,f64>)");
  CHECK(text<void(std::chrono::milliseconds, std::chrono::duration<double>)>() ==
        "void(duration<i64,1/1000>,duration<f64,1/1>)");
  CHECK(text<void(std::chrono::system_clock::time_point)>() ==
        "void(system_time<duration<i64,1/1000000000>>)");
  CHECK(text<blog::status(blog::big, blog::old_style)>() ==
        "enum blog.status:u8(enum blog.big:i64,enum blog.old_style:i32)");
  CHECK(text<blog::post(blog::tag, blog::point)>() == "struct blog.post(struct blog.tag,struct blog.point)");
  // Parameters travel by value: references and const do not change the signature.
  CHECK(text<void(const std::string&, std::string&&)>() == "void(string,string)");
}

TEST_CASE("the fingerprint is FNV-1a 64 of the canonical text, fixed for every compiler") {
  // Pinned values: a change here breaks interoperability between fwd versions.
  constexpr auto fnv = [](std::string_view s) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (char c : s) {
      h ^= static_cast<unsigned char>(c);
      h *= 0x100000001b3ull;
    }
    return h;
  };
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() == fnv("i64(string)"));
  STATIC_REQUIRE(fp<void()>() == fnv("void()"));
  STATIC_REQUIRE(fnv("i64(string)") == 0x14d9744700d5fadeull);
}

TEST_CASE("equal signatures have equal fingerprints, any change in a type, arity or result changes it") {
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() == fp<std::int64_t(std::string)>());
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() == fp<long(const std::string&)>());
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() != fp<std::int32_t(std::string)>());
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() != fp<std::uint64_t(std::string)>());
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() != fp<void(std::string)>());
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() != fp<std::int64_t(std::string, std::string)>());
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() != fp<std::int64_t()>());
  STATIC_REQUIRE(fp<std::int64_t(std::string)>() != fp<std::int64_t(std::vector<std::string>)>());
  STATIC_REQUIRE(fp<void(int, std::string)>() != fp<void(std::string, int)>());
  STATIC_REQUIRE(fp<void(std::vector<int>)>() != fp<void(std::set<int>)>());
  STATIC_REQUIRE(fp<void(std::map<int, int>)>() != fp<void(std::unordered_map<int, int>)>());
  STATIC_REQUIRE(fp<void(std::chrono::seconds)>() != fp<void(std::chrono::milliseconds)>());
  STATIC_REQUIRE(fp<void(std::variant<int, bool>)>() != fp<void(std::variant<bool, int>)>());
  STATIC_REQUIRE(fp<void(std::optional<int>)>() != fp<void(int)>());
  STATIC_REQUIRE(fp<void(std::tuple<int, int>)>() != fp<void(int, int)>());
  STATIC_REQUIRE(fp<void(blog::tag)>() != fp<void(blog::point)>());
  STATIC_REQUIRE(fp<void(blog::status)>() != fp<void(std::uint8_t)>());
  STATIC_REQUIRE(fp<void(float)>() != fp<void(double)>());
  STATIC_REQUIRE(fp<void(bool)>() != fp<void(std::uint8_t)>());
  STATIC_REQUIRE(fp<void(char)>() != fp<void(signed char)>());
}

TEST_CASE("calls compile only with arguments that convert to the parameters") {
  using add_tag_t = decltype(add_tag);
  using retag_t = decltype(retag);
  STATIC_REQUIRE(can_encode<add_tag_t, std::string>);
  STATIC_REQUIRE(can_encode<add_tag_t, const char (&)[8]>);
  STATIC_REQUIRE(can_encode<add_tag_t, const std::string&>);
  STATIC_REQUIRE(!can_encode<add_tag_t, int>);
  STATIC_REQUIRE(!can_encode<add_tag_t>);
  STATIC_REQUIRE(!can_encode<add_tag_t, const char*, const char*>);
  STATIC_REQUIRE(!can_encode<add_tag_t, blog::tag>);
  STATIC_REQUIRE(!can_encode<add_tag_t, std::string_view>);  // explicit conversion only
  STATIC_REQUIRE(!can_encode<retag_t, const char*, std::vector<int>>);
  STATIC_REQUIRE(can_encode<retag_t, const char*, std::vector<blog::tag>>);
  STATIC_REQUIRE(fwd::accepts_arguments<add_tag_t, const char*>);
  STATIC_REQUIRE(!fwd::accepts_arguments<add_tag_t, std::vector<char>>);
  // The same check, written as a requires-expression at the call site.
  STATIC_REQUIRE([]<class P = add_tag_t>() { return !requires(const P& p) { fwd::detail::encode_arguments(p, 42); }; }());
}

TEST_CASE("user types are recognised by a name and a serialize() of any access") {
  STATIC_REQUIRE(fwd::detail::user_serializable<blog::tag>);
  STATIC_REQUIRE(fwd::detail::user_serializable<blog::post>);   // private, via access
  STATIC_REQUIRE(fwd::detail::user_serializable<blog::point>);  // free, via ADL
  STATIC_REQUIRE(!fwd::detail::user_serializable<blog::opaque>);
  STATIC_REQUIRE(fwd::detail::has_type_name<blog::opaque>);
  STATIC_REQUIRE(!fwd::detail::has_type_name<std::string_view>);
  STATIC_REQUIRE(fwd::detail::enum_with_fixed_underlying_type<blog::old_style>);
}

TEST_CASE("every supported type survives encoding and decoding") {
  CHECK(round_trip(true) == true);
  CHECK(round_trip(false) == false);
  CHECK(round_trip('x') == 'x');
  CHECK(round_trip(std::int8_t{-5}) == -5);
  CHECK(round_trip(std::uint16_t{65535}) == 65535);
  CHECK(round_trip(std::int32_t{-123456}) == -123456);
  CHECK(round_trip(std::numeric_limits<std::int64_t>::min()) == std::numeric_limits<std::int64_t>::min());
  CHECK(round_trip(std::numeric_limits<std::uint64_t>::max()) == std::numeric_limits<std::uint64_t>::max());
  CHECK(round_trip(2.5f) == 2.5f);
  CHECK(round_trip(-1e300) == -1e300);
  CHECK(round_trip(std::string()) == "");
  CHECK(round_trip(std::string("hello\0world", 11)) == std::string("hello\0world", 11));
  CHECK(round_trip(std::string(100000, 'z')) == std::string(100000, 'z'));
  CHECK(round_trip(std::vector<std::int64_t>{1, -2, 3}) == std::vector<std::int64_t>{1, -2, 3});
  CHECK(round_trip(std::vector<bool>{true, false, true}) == std::vector<bool>{true, false, true});
  CHECK(round_trip(std::vector<std::string>{"a", "", "ccc"}) == std::vector<std::string>{"a", "", "ccc"});
  CHECK(round_trip(std::map<std::string, int>{{"a", 1}, {"b", 2}}) == std::map<std::string, int>{{"a", 1}, {"b", 2}});
  CHECK(round_trip(std::set<int>{3, 1, 2}) == std::set<int>{1, 2, 3});
  CHECK(round_trip(std::unordered_map<int, std::string>{{1, "x"}, {2, "y"}}) ==
        std::unordered_map<int, std::string>{{1, "x"}, {2, "y"}});
  CHECK(round_trip(std::unordered_set<std::string>{"p", "q"}) == std::unordered_set<std::string>{"p", "q"});
  CHECK(round_trip(std::array<std::uint8_t, 4>{1, 2, 3, 4}) == std::array<std::uint8_t, 4>{1, 2, 3, 4});
  CHECK(round_trip(std::pair<int, std::string>{7, "seven"}) == std::pair<int, std::string>{7, "seven"});
  CHECK(round_trip(std::tuple<>{}) == std::tuple<>{});
  CHECK(round_trip(std::tuple<int, std::string, bool>{1, "one", true}) ==
        std::tuple<int, std::string, bool>{1, "one", true});
  CHECK(round_trip(std::optional<std::string>{}) == std::nullopt);
  CHECK(round_trip(std::optional<std::string>{"set"}) == std::optional<std::string>{"set"});
  using choice = std::variant<std::monostate, int, std::string, std::vector<int>>;
  CHECK(round_trip(choice{}) == choice{});
  CHECK(round_trip(choice{42}) == choice{42});
  CHECK(round_trip(choice{std::string("str")}) == choice{std::string("str")});
  CHECK(round_trip(choice{std::vector<int>{1, 2}}) == choice{std::vector<int>{1, 2}});
  CHECK(round_trip(blog::status::deleted) == blog::status::deleted);
  CHECK(round_trip(blog::big::far) == blog::big::far);  // Boost alone would narrow to int
  CHECK(round_trip(blog::old_b) == blog::old_b);
  CHECK(round_trip(std::chrono::milliseconds{-1234}) == std::chrono::milliseconds{-1234});
  CHECK(round_trip(std::chrono::duration<double>{0.25}) == std::chrono::duration<double>{0.25});
  const auto now = std::chrono::system_clock::now();
  CHECK(round_trip(now) == now);
  CHECK(round_trip(blog::tag{"urgent", 3}) == blog::tag{"urgent", 3});
  CHECK(round_trip(blog::point{1.5, -2}) == blog::point{1.5, -2});
  CHECK(round_trip(blog::money{-250}) == blog::money{-250});
  const blog::post post{"title", {{"a", 1}, {"b", 2}}, blog::status::published};
  CHECK(round_trip(post) == post);
  using nested = std::map<std::string, std::vector<std::optional<std::tuple<blog::tag, std::variant<int, blog::post>>>>>;
  const nested deep{{"k", {std::nullopt, std::tuple{blog::tag{"t", 1}, std::variant<int, blog::post>{post}}}}, {"e", {}}};
  CHECK(round_trip(deep) == deep);
}

TEST_CASE("arguments are encoded in order and converted to their parameter types") {
  const fwd::procedure<std::string(std::string, std::int64_t, std::optional<blog::status>)> proc{"test.mixed"};
  const std::string bytes = fwd::detail::encode_arguments(proc, "text", 7, blog::status::published);
  boost::system::error_code ec;
  auto args = fwd::detail::decode_arguments<decltype(proc)>(bytes, ec);
  REQUIRE_FALSE(ec);
  CHECK(std::get<0>(args) == "text");
  CHECK(std::get<1>(args) == 7);
  CHECK(std::get<2>(args) == blog::status::published);

  const fwd::procedure<void()> none{"test.none"};
  CHECK(fwd::detail::encode_arguments(none).empty());
  fwd::detail::decode_arguments<decltype(none)>("", ec);
  CHECK_FALSE(ec);
}

TEST_CASE("a void result is no bytes, and bytes where none belong are an error") {
  CHECK(fwd::detail::encode_result().empty());
  boost::system::error_code ec;
  fwd::detail::decode_result<void>("", ec);
  CHECK_FALSE(ec);
  fwd::detail::decode_result<void>("x", ec);
  CHECK(ec == fwd::errc::protocol_error);
}

namespace {

// Decodes `bytes` as T; returns the error (and never crashes).
template <class T>
boost::system::error_code decode_as(std::string_view bytes) {
  boost::system::error_code ec;
  std::string detail;
  (void)fwd::detail::decode_result<T>(bytes, ec, &detail);
  if (ec) CHECK_FALSE(detail.empty());
  return ec;
}

// Every proper prefix of a valid encoding must be refused as protocol_error.
template <class T>
void every_truncation_fails(const T& value) {
  const std::string bytes = fwd::detail::encode_result<T>(value);
  REQUIRE_FALSE(decode_as<T>(bytes));
  for (std::size_t length = 0; length < bytes.size(); ++length) {
    INFO("prefix of " << length << " of " << bytes.size() << " bytes");
    REQUIRE(decode_as<T>(std::string_view(bytes).substr(0, length)) == fwd::errc::protocol_error);
  }
  // One byte too many is an error too: the payload must be exactly the values.
  REQUIRE(decode_as<T>(bytes + '\0') == fwd::errc::protocol_error);
}

}  // namespace

TEST_CASE("truncated payloads are protocol errors") {
  every_truncation_fails(std::string("hello"));
  every_truncation_fails(std::vector<std::string>{"a", "bb", "ccc"});
  every_truncation_fails(std::map<std::int32_t, std::optional<std::string>>{{1, "x"}, {2, std::nullopt}});
  every_truncation_fails(std::tuple<bool, std::variant<int, std::string>, std::chrono::seconds>{true, "v", std::chrono::seconds{3}});
  every_truncation_fails(blog::post{"p", {{"a", 1}}, blog::status::draft});
  every_truncation_fails(std::unordered_map<std::string, blog::point>{{"o", {0, 0}}});
}

TEST_CASE("a count larger than the input is refused before anything is allocated") {
  // A string or vector claiming 2^62 bytes or elements, followed by almost nothing.
  std::string huge(8, '\0');
  const std::uint64_t count = std::uint64_t{1} << 62;
  std::memcpy(huge.data(), &count, sizeof(count));
  CHECK(decode_as<std::string>(huge) == fwd::errc::protocol_error);
  CHECK(decode_as<std::vector<std::int64_t>>(huge) == fwd::errc::protocol_error);
  CHECK(decode_as<std::vector<std::string>>(huge + std::string(4, '\0')) == fwd::errc::protocol_error);
  CHECK(decode_as<std::map<int, int>>(huge + std::string(4, '\0')) == fwd::errc::protocol_error);
  CHECK(decode_as<std::unordered_set<int>>(huge + huge + std::string(4, '\0')) == fwd::errc::protocol_error);
  // A count of a billion with a few bytes behind it.
  std::string billion(8, '\0');
  const std::uint64_t one_billion = 1'000'000'000;
  std::memcpy(billion.data(), &one_billion, sizeof(one_billion));
  CHECK(decode_as<std::vector<std::uint8_t>>(billion + "abc") == fwd::errc::protocol_error);
}

TEST_CASE("invalid bools and variant indexes are protocol errors, not undefined behaviour") {
  CHECK(decode_as<bool>(std::string(1, '\x02')) == fwd::errc::protocol_error);
  CHECK(decode_as<std::optional<int>>(std::string(1, '\x07')) == fwd::errc::protocol_error);
  std::string index(4, '\0');
  index[0] = 3;  // std::variant<int, bool> has alternatives 0 and 1
  CHECK(decode_as<std::variant<int, bool>>(index + std::string(4, '\0')) == fwd::errc::protocol_error);
}

namespace {
struct tree {
  static constexpr std::string_view fwd_type_name = "test.tree";
  std::vector<tree> children;
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar & children;
  }
};
}  // namespace

TEST_CASE("deeply nested input is refused instead of exhausting the stack") {
  tree shallow;
  shallow.children.resize(2);
  shallow.children[0].children.resize(1);
  boost::system::error_code ec;
  (void)fwd::detail::decode_result<tree>(fwd::detail::encode_result(shallow), ec);
  REQUIRE_FALSE(ec);

  // Build the encoding of a tree nested 100000 deep from the encodings of shallow ones:
  // level0 = head + tail, level1 = head + unit + tail, where unit is one more level.
  tree one_child;
  one_child.children.resize(1);
  const std::string level0 = fwd::detail::encode_result(tree{});
  const std::string level1 = fwd::detail::encode_result(one_child);
  std::size_t head = 0;
  while (head < level0.size() && level0[head] == level1[head]) ++head;
  const std::string unit = level1.substr(head, level1.size() - level0.size());
  std::string deep = level1.substr(0, head);
  for (int i = 0; i < 100000; ++i) deep += unit;
  deep += level0.substr(head);
  std::string detail;
  (void)fwd::detail::decode_result<tree>(deep, ec, &detail);
  CHECK(ec == fwd::errc::protocol_error);
  CHECK(detail.find("nested") != std::string::npos);
}

TEST_CASE("random bytes never crash the decoder") {
  std::mt19937_64 random(20240611);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<std::size_t> length(0, 64);
  int errors = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string bytes(length(random), '\0');
    for (char& c : bytes) c = static_cast<char>(byte(random));
    boost::system::error_code ec;
    using args = fwd::procedure<void(std::string, std::vector<blog::tag>, std::optional<std::variant<int, blog::post>>,
                                      std::map<std::int64_t, blog::status>)>;
    (void)fwd::detail::decode_arguments<args>(bytes, ec);
    if (ec) {
      ++errors;
      REQUIRE(ec == fwd::errc::protocol_error);
    }
  }
  // Nearly all random inputs are invalid (and none crashed or allocated without bound).
  CHECK(errors > 19000);
}
