// libFuzzer target: decoding a call's arguments and result, the bytes an authenticated
// peer sends that reach Boost.Serialization. The first input byte picks a procedure
// signature; the rest is decoded as its arguments and as its result.
//
// Properties, for any input:
// - decoding never crashes, leaks or throws; a failure is errc::protocol_error with an
//   explanation, and leaves default-constructed values;
// - no allocation during a decode is larger than a small multiple of the input (plus a
//   constant), and all of them together stay proportional to it;
// - fast-path signatures (codec_fast_path.hpp) decode the same bytes through fwd's Boost
//   archive too: both succeed or both fail (with the same explanation), the values are
//   the same, and re-encoding them gives back exactly the input;
// - archive-path signatures: what decodes re-encodes to bytes that decode again, to
//   values that encode to those same bytes.
//
// The seed corpus (tests/fuzz/corpus/arguments/) holds valid encodings of each signature;
// regenerate it with
//   FWD_FUZZ_WRITE_SEEDS=tests/fuzz/corpus/arguments build/fuzz/tests/fuzz/fwd_fuzz_arguments -runs=0

#include <fwd/procedure.hpp>

#include <sanitizer/allocator_interface.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace fuzz_arguments {

enum class color : std::uint8_t { red = 1, green = 2, blue = 200 };
enum class level : std::int64_t { low = -5, high = std::int64_t{1} << 40 };

struct address {
  static constexpr std::string_view fwd_type_name = "fuzz.address";
  std::string city;
  std::vector<int> zip;
  template <class Archive>
  void serialize(Archive& ar, unsigned /*version*/) {
    ar & city & zip;
  }
};

struct post {
  static constexpr std::string_view fwd_type_name = "fuzz.post";
  std::int64_t id = 0;
  std::string title;
  std::vector<std::string> tags;
  std::optional<std::string> body;
  color hue = color::red;
  address where;
  std::map<std::string, int> counts;
  template <class Archive>
  void serialize(Archive& ar, unsigned /*version*/) {
    ar & id & title & tags & body & hue & where & counts;
  }
};

}  // namespace fuzz_arguments

FWD_TYPE_NAME(fuzz_arguments::color, "fuzz.color");
FWD_TYPE_NAME(fuzz_arguments::level, "fuzz.level");

namespace {

using namespace fuzz_arguments;
using fwd::detail::fast_codable;
using fwd::procedure;
using std::chrono::milliseconds;
using std::chrono::system_clock;
using str = std::string;

// --- the signatures --------------------------------------------------------------------

// Fast path: every argument and the result.
using scalars = procedure<color(int, bool, double, color, level, char, unsigned short, float, long long)>;
using strings = procedure<str(str, std::vector<int>, std::vector<bool>, std::vector<double>)>;
using composites = procedure<std::variant<std::monostate, int, str, std::vector<int>>(
    std::tuple<int, str, std::optional<double>>, std::variant<std::monostate, int, str, std::vector<int>>,
    std::optional<std::vector<int>>)>;
using times = procedure<std::optional<system_clock::time_point>(
    milliseconds, system_clock::time_point, std::chrono::duration<double>,
    std::tuple<std::optional<str>, std::variant<bool, level>>)>;
using nothing = procedure<void()>;
using nested = procedure<std::tuple<std::vector<unsigned char>, std::optional<std::tuple<str, std::optional<bool>>>>(
    std::variant<str, std::tuple<int, std::vector<char>>, std::optional<std::variant<color, double>>>)>;

// Archive path.
using index_map = procedure<std::map<str, std::vector<str>>(std::map<str, std::vector<str>>)>;
using user_struct = procedure<post(post, std::vector<post>)>;
using nested_strings = procedure<std::vector<std::vector<str>>(std::vector<std::vector<str>>, std::pair<int, str>)>;
using sets = procedure<std::set<str>(std::set<str>, std::pair<std::set<int>, std::vector<std::pair<str, double>>>)>;
using mixed = procedure<std::optional<post>(std::variant<int, post>, std::map<int, std::set<str>>, std::vector<color>)>;

// --- allocation accounting -------------------------------------------------------------

// Counted only while a decode runs (libFuzzer runs inputs on one thread).
bool counting = false;
// FWD_FUZZ_VERBOSE=1: say how each decode of an input ended (to read a reproducer).
bool verbose = false;
std::size_t largest_allocation = 0;
std::size_t total_allocated = 0;

void on_malloc(const volatile void* /*ptr*/, std::size_t size) {
  if (!counting) return;
  if (size > largest_allocation) largest_allocation = size;
  total_allocated += size;
}
void on_free(const volatile void* /*ptr*/) {}

[[noreturn]] void fail(const char* signature, const char* what, const std::string& a = {},
                       const std::string& b = {}) {
  std::fprintf(stderr, "fwd_fuzz_arguments: %s: %s\n", signature, what);
  if (!a.empty()) std::fprintf(stderr, "  first:  %s\n", a.c_str());
  if (!b.empty()) std::fprintf(stderr, "  second: %s\n", b.c_str());
  std::abort();
}

template <class Tuple>
std::string archive_encode_all(const Tuple& values) {
  return std::apply([](const auto&... v) { return fwd::detail::archive_encode(v...); }, values);
}

template <class Tuple>
void archive_decode_all(std::string_view bytes, boost::system::error_code& ec, std::string* detail,
                        Tuple& values) {
  std::apply([&](auto&... v) { fwd::detail::archive_decode(bytes, ec, detail, v...); }, values);
}

template <class Tuple>
inline constexpr bool fast_tuple = false;
template <class... Ts>
inline constexpr bool fast_tuple<std::tuple<Ts...>> = fast_codable<Ts...>;

/// Checks one decode of `bytes` into `decoded` (by the production entry point, which
/// took the fast path when it could).
template <class Tuple>
void check(const char* signature, std::string_view bytes, const Tuple& decoded,
           const boost::system::error_code& ec, const std::string& detail) {
  if (verbose) std::fprintf(stderr, "%s: %s\n", signature, ec ? detail.c_str() : "decoded");
  if (ec) {
    if (ec != fwd::make_error_code(fwd::errc::protocol_error)) fail(signature, "not a protocol_error", ec.message());
    if (detail.empty()) fail(signature, "a failure without an explanation");
    if (archive_encode_all(decoded) != archive_encode_all(Tuple{})) fail(signature, "failure left values behind");
  }

  if constexpr (fast_tuple<Tuple>) {
    // Differential: the same bytes through the archive.
    Tuple reference{};
    boost::system::error_code reference_ec;
    std::string reference_detail;
    archive_decode_all(bytes, reference_ec, &reference_detail, reference);
    if (static_cast<bool>(ec) != static_cast<bool>(reference_ec)) {
      fail(signature, ec ? "the fast path refuses what the archive accepts"
                         : "the fast path accepts what the archive refuses",
           ec ? detail : std::string("fast path: ok"),
           reference_ec ? reference_detail : std::string("archive: ok"));
    }
    if (ec) {
      if (detail != reference_detail) fail(signature, "the two paths explain a failure differently", detail, reference_detail);
      return;
    }
    const std::string fast_bytes = std::apply([](const auto&... v) { return fwd::detail::fast_encode(v...); }, decoded);
    const std::string archive_bytes = archive_encode_all(reference);
    if (fast_bytes != archive_bytes) fail(signature, "the two paths decode different values");
    if (fast_bytes != bytes) fail(signature, "decoded values do not re-encode to the input");
  } else if (!ec) {
    // Archive path: a decoded value is a fixed point of encode-then-decode.
    const std::string again = archive_encode_all(decoded);
    Tuple second{};
    boost::system::error_code second_ec;
    std::string second_detail;
    archive_decode_all(again, second_ec, &second_detail, second);
    if (second_ec) fail(signature, "re-encoded values do not decode", second_detail);
    if (archive_encode_all(second) != again) fail(signature, "re-encoded values decode to different values");
  }
}

template <class Proc>
void exercise(const char* signature, std::string_view bytes) {
  {
    boost::system::error_code ec;
    std::string detail;
    const auto args = fwd::detail::decode_arguments<Proc>(bytes, ec, &detail);
    check(signature, bytes, args, ec, detail);
  }
  using R = typename Proc::result_type;
  boost::system::error_code ec;
  std::string detail;
  if constexpr (std::is_void_v<R>) {
    fwd::detail::decode_result<void>(bytes, ec, &detail);
    if (static_cast<bool>(ec) != !bytes.empty()) fail(signature, "a void result accepts bytes or refuses none");
  } else {
    const R result = fwd::detail::decode_result<R>(bytes, ec, &detail);
    check(signature, bytes, std::tuple<R>(result), ec, detail);
  }
}

struct entry {
  const char* name;
  void (*run)(const char*, std::string_view);
};

const entry signatures[] = {
    {"scalars", exercise<scalars>},       {"strings", exercise<strings>},
    {"composites", exercise<composites>}, {"times", exercise<times>},
    {"nothing", exercise<nothing>},       {"nested", exercise<nested>},
    {"index_map", exercise<index_map>},   {"user_struct", exercise<user_struct>},
    {"nested_strings", exercise<nested_strings>}, {"sets", exercise<sets>},
    {"mixed", exercise<mixed>},
};
constexpr std::size_t signature_count = sizeof(signatures) / sizeof(signatures[0]);

static_assert(fast_tuple<scalars::arguments> && fast_tuple<strings::arguments> &&
              fast_tuple<composites::arguments> && fast_tuple<times::arguments> &&
              fast_tuple<nested::arguments>);
static_assert(!fast_tuple<index_map::arguments> && !fast_tuple<user_struct::arguments> &&
              !fast_tuple<nested_strings::arguments> && !fast_tuple<sets::arguments> &&
              !fast_tuple<mixed::arguments>);

// --- seeds -----------------------------------------------------------------------------

void write_seed(const std::string& dir, const char* name, std::size_t selector, const std::string& payload) {
  std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
  out.put(static_cast<char>(selector));
  out << payload;
  if (!out) {
    std::fprintf(stderr, "fwd_fuzz_arguments: cannot write %s/%s\n", dir.c_str(), name);
    std::exit(1);
  }
}

std::size_t selector_of(std::string_view name) {
  for (std::size_t i = 0; i < signature_count; ++i) {
    if (name == signatures[i].name) return i;
  }
  std::abort();
}

void write_seeds(const std::string& dir) {
  using fwd::detail::encode_values;
  auto seed = [&](const char* file, const char* signature, const std::string& payload) {
    write_seed(dir, file, selector_of(signature), payload);
  };
  post p;
  p.id = 42;
  p.title = "hello";
  p.tags = {"a", "bc"};
  p.body = "text";
  p.hue = color::blue;
  p.where = {"Lyon", {6, 9}};
  p.counts = {{"x", 1}, {"y", -2}};

  seed("scalars", "scalars", encode_values(7, true, -0.5, color::green, level::high, 'z', static_cast<unsigned short>(9), 1.5f, -3LL));
  seed("scalars_result", "scalars", encode_values(color::blue));
  seed("strings", "strings", encode_values(str("abc"), std::vector<int>{1, -2, 3}, std::vector<bool>{true, false}, std::vector<double>{0.25}));
  seed("strings_result", "strings", encode_values(str("result")));
  seed("composites", "composites",
       encode_values(std::tuple<int, str, std::optional<double>>{1, "t", 2.0},
                     std::variant<std::monostate, int, str, std::vector<int>>{std::vector<int>{4, 5}},
                     std::optional<std::vector<int>>{std::vector<int>{6}}));
  seed("composites_result", "composites", encode_values(std::variant<std::monostate, int, str, std::vector<int>>{str("v")}));
  seed("times", "times",
       encode_values(milliseconds(1500), system_clock::time_point(std::chrono::seconds(1700000000)),
                     std::chrono::duration<double>(0.125),
                     std::tuple<std::optional<str>, std::variant<bool, level>>{str("o"), level::low}));
  seed("nothing", "nothing", std::string());
  seed("nested", "nested",
       encode_values(std::variant<str, std::tuple<int, std::vector<char>>, std::optional<std::variant<color, double>>>{
           std::optional<std::variant<color, double>>{color::green}}));
  seed("index_map", "index_map", encode_values(std::map<str, std::vector<str>>{{"k", {"v1", "v2"}}, {"", {}}}));
  seed("user_struct", "user_struct", encode_values(p, std::vector<post>{p, post{}}));
  seed("user_struct_result", "user_struct", encode_values(p));
  seed("nested_strings", "nested_strings",
       encode_values(std::vector<std::vector<str>>{{"a"}, {}, {"b", "c"}}, std::pair<int, str>{3, "p"}));
  seed("sets", "sets",
       encode_values(std::set<str>{"s", "t"},
                     std::pair<std::set<int>, std::vector<std::pair<str, double>>>{{1, 2}, {{"d", 1.0}}}));
  seed("mixed", "mixed",
       encode_values(std::variant<int, post>{p}, std::map<int, std::set<str>>{{1, {"m"}}},
                     std::vector<color>{color::red, color::blue}));
  seed("mixed_result", "mixed", encode_values(std::optional<post>{p}));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  if (const char* dir = std::getenv("FWD_FUZZ_WRITE_SEEDS")) {
    write_seeds(dir);
    std::fprintf(stderr, "fwd_fuzz_arguments: seeds written to %s\n", dir);
  }
  verbose = std::getenv("FWD_FUZZ_VERBOSE") != nullptr;
  __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const entry& chosen = signatures[data[0] % signature_count];
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);

  largest_allocation = 0;
  total_allocated = 0;
  counting = true;
  chosen.run(chosen.name, bytes);
  counting = false;

  // Each decode may allocate its archive and a few element-sized multiples of the input
  // (a collection of N elements needs N bytes of input at least); the run above makes a
  // handful of decodes and encodes. Anything beyond these bounds grows with a count the
  // peer chose, not with the bytes it sent.
  const std::size_t n = bytes.size();
  if (largest_allocation > 64 * n + 64 * 1024) {
    fail(chosen.name, "an allocation out of proportion to the input",
         std::to_string(largest_allocation) + " bytes for " + std::to_string(n) + " input bytes");
  }
  if (total_allocated > 1024 * n + 4 * 1024 * 1024) {
    fail(chosen.name, "allocations out of proportion to the input",
         std::to_string(total_allocated) + " bytes for " + std::to_string(n) + " input bytes");
  }
  return 0;
}
