// What decoding a hostile payload costs in memory: every allocation of this executable is
// counted (global operator new is replaced), and each crafted payload must be refused
// with a protocol error while the bytes allocated during its decoding stay within
//
//     peak <= 8 * payload size + 64 KiB
//
// A separate executable, so that the counting allocator sees nothing but these tests.

#include <fwd/detail/procedure_codec.hpp>

#include <boost/serialization/level.hpp>
#include <boost/serialization/tracking.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

std::atomic<std::size_t> live_bytes{0};
std::atomic<std::size_t> peak_bytes{0};

// Each block carries its size in front, so that delete knows what it frees.
constexpr std::size_t header = alignof(std::max_align_t);

void* counted_alloc(std::size_t size) {
  void* block = std::malloc(size + header);
  if (block == nullptr) throw std::bad_alloc();
  std::memcpy(block, &size, sizeof(size));
  const std::size_t now = live_bytes.fetch_add(size) + size;
  std::size_t peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
  return static_cast<char*>(block) + header;
}

void counted_free(void* p) noexcept {
  if (p == nullptr) return;
  void* block = static_cast<char*>(p) - header;
  std::size_t size = 0;
  std::memcpy(&size, block, sizeof(size));
  live_bytes.fetch_sub(size);
  std::free(block);
}

}  // namespace

void* operator new(std::size_t size) { return counted_alloc(size); }
void* operator new[](std::size_t size) { return counted_alloc(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(size);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }

namespace {

// The most bytes allocated at once while `decode` ran, beyond what was live before.
template <class Decode>
std::size_t peak_during(Decode&& decode) {
  const std::size_t before = live_bytes.load();
  peak_bytes.store(before);
  decode();
  return peak_bytes.load() - before;
}

std::size_t bound_for(std::size_t payload) { return 8 * payload + (std::size_t{64} << 10); }

void put_u64(std::string& out, std::uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); }
void put_u32(std::string& out, std::uint32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); }

// What fwd's archive writes before the count of an empty T: Boost's class information
// (for collections of class types), found by encoding one and dropping `tail` bytes (the
// count and what follows it).
template <class T>
std::string preamble(std::size_t tail) {
  const std::string empty = fwd::detail::archive_encode(T{});
  REQUIRE(empty.size() >= tail);
  return empty.substr(0, empty.size() - tail);
}

// Decodes `payload` as T through the archive path (and, when T has one, the fast path),
// requires a protocol error, and returns the peak bytes allocated.
template <class T>
std::size_t refused_with_peak(const std::string& payload, const char* what) {
  boost::system::error_code ec;
  std::string detail;
  const std::size_t peak = peak_during([&] {
    T value{};
    fwd::detail::archive_decode(payload, ec, &detail, value);
  });
  INFO(what << ": " << detail);
  CHECK(ec == fwd::errc::protocol_error);
  std::printf("%-58s payload %9zu B  peak %11zu B (%.2fx)\n", what, payload.size(), peak,
              static_cast<double>(peak) / static_cast<double>(payload.size()));
  if constexpr (fwd::detail::fast_codable<T>) {
    boost::system::error_code fast_ec;
    const std::size_t fast_peak = peak_during([&] {
      T value{};
      fwd::detail::fast_decode(payload, fast_ec, nullptr, value);
    });
    CHECK(fast_ec == fwd::errc::protocol_error);
    CHECK(fast_peak <= bound_for(payload.size()));
  }
  return peak;
}

// A tree of any depth: vectors nested as deep as the payload says.
struct tree {
  std::vector<tree> children;
  template <class Archive>
  void serialize(Archive& ar, const unsigned int /*version*/) {
    ar & children;
  }
  bool operator==(const tree&) const = default;
};

constexpr std::size_t mib = std::size_t{1} << 20;

}  // namespace

// A plain value: no class preamble in the archive, so each level is its count and item
// version only.
BOOST_CLASS_IMPLEMENTATION(tree, boost::serialization::object_serializable)
BOOST_CLASS_TRACKING(tree, boost::serialization::track_never)

TEST_CASE("a vector whose count claims every byte left is refused within a bound") {
  const std::size_t size = 16 * mib;
  using strings = std::vector<std::string>;
  const std::string head = preamble<strings>(12);

  // vector<string>: a count one larger than the bytes can hold (8 per empty string).
  std::string over = head;
  put_u64(over, (size - head.size() - 12) / 8 + 1);
  put_u32(over, 0);  // item version
  over.resize(size, '\0');
  CHECK(refused_with_peak<strings>(over, "vector<string>, count = bytes/8 + 1") <= bound_for(size));

  // A count as large as the bytes allow, empty strings, and a last one far too long.
  std::string fits = head;
  put_u64(fits, (size - head.size() - 12) / 8);
  put_u32(fits, 0);
  fits.resize(size - 8, '\0');
  put_u64(fits, std::uint64_t{1} << 40);
  CHECK(refused_with_peak<strings>(fits, "vector<string>, count = bytes/8, last bad") <= bound_for(size));

  // Optional strings: one byte each when disengaged, 40 bytes in memory, so the count
  // (every byte left) cannot be reserved within the budget: the vector grows as elements
  // arrive, and a bad flag after a thousand of them ends it.
  using optionals = std::vector<std::optional<std::string>>;
  std::string sparse = preamble<optionals>(12);
  put_u64(sparse, size - sparse.size() - 12);
  put_u32(sparse, 0);
  sparse.resize(sparse.size() + 1000, '\0');
  sparse.push_back('\2');
  sparse.resize(size, '\0');
  CHECK(refused_with_peak<optionals>(sparse, "vector<optional<string>>, count = bytes") <= std::size_t{256} << 10);

  // Arithmetic elements: a count that fits the bytes but not count * sizeof.
  std::string doubles;
  put_u64(doubles, size / 2);
  doubles.resize(size, '\0');
  CHECK(refused_with_peak<std::vector<double>>(doubles, "vector<double>, count = bytes/2") <= bound_for(size));
  using nested_doubles = std::vector<std::vector<double>>;
  std::string inner = preamble<nested_doubles>(12);
  put_u64(inner, 1);
  put_u32(inner, 0);
  CHECK(refused_with_peak<nested_doubles>(inner + doubles, "vector<vector<double>>, inner count = bytes/2") <=
        bound_for(size));
}

TEST_CASE("vectors nested 150 deep, each claiming every byte left, are refused within a bound") {
  // 150 levels: about as deep as the archive's nesting bound lets a tree go.
  constexpr int levels = 150;
  // Every level: a count as large as the bytes left allow (12 per empty tree: a count
  // and an item version) and an item version, then the first child; the innermost level
  // is followed by empty trees up to the end, one short of its count.
  const std::size_t size = mib;
  const std::string head = preamble<tree>(12);
  std::string payload = head;
  for (int level = 0; level < levels; ++level) {
    put_u64(payload, (size - payload.size() - 12) / 12);
    put_u32(payload, 0);
  }
  payload.resize(size, '\0');

  // The layout is Boost's: one child per level decodes, and encodes back the same.
  std::string one = head;
  for (int level = 0; level < levels; ++level) {
    put_u64(one, 1);
    put_u32(one, 0);
  }
  put_u64(one, 0);
  put_u32(one, 0);
  {
    boost::system::error_code ec;
    std::string detail;
    tree value;
    fwd::detail::archive_decode(one, ec, &detail, value);
    INFO(detail);
    REQUIRE_FALSE(ec);
    REQUIRE(fwd::detail::archive_encode(value) == one);
  }
  using deep = tree;
  CHECK(refused_with_peak<deep>(payload, "tree of vectors 150 deep, each count = bytes/12") <= bound_for(size));
}

TEST_CASE("a string whose length claims far more than the input is refused at once") {
  std::string payload;
  put_u64(payload, std::uint64_t{1} << 62);
  payload.resize(mib, 'x');
  CHECK(refused_with_peak<std::string>(payload, "string, length 2^62") <= std::size_t{64} << 10);
  std::string just_over;
  put_u64(just_over, mib - 8 + 1);
  just_over.resize(mib, 'x');
  CHECK(refused_with_peak<std::vector<std::string>>(preamble<std::vector<std::string>>(12) + std::string(12, '\0') + just_over, "vector<string>, one string 1 byte too long") <=
        bound_for(just_over.size() + 12));
}

TEST_CASE("maps, sets and unordered containers claiming every byte left are refused within a bound") {
  const std::size_t size = 4 * mib;
  using map = std::map<std::string, std::vector<std::string>>;
  std::string map_payload = preamble<map>(12);
  put_u64(map_payload, size / 16);
  put_u32(map_payload, 0);
  map_payload.resize(size, '\0');
  CHECK(refused_with_peak<map>(map_payload, "map<string, vector<string>>, count = bytes/16") <= bound_for(size));

  // An unordered set's bucket count is the sender's word: Boost rehashed to it.
  using set = std::unordered_set<std::int32_t>;
  std::string buckets = preamble<set>(20);
  put_u64(buckets, 1);
  put_u64(buckets, size);  // bucket count
  put_u32(buckets, 0);
  buckets.resize(size, '\0');  // one int, then bytes left over
  CHECK(refused_with_peak<set>(buckets, "unordered_set<int32>, bucket count = bytes") <= bound_for(size));

  // Many empty unordered maps, each with a bucket count of a thousand.
  using maps = std::vector<std::unordered_map<std::int32_t, std::int32_t>>;
  std::string many = preamble<maps>(12);
  const std::size_t element = 8 + 8 + 4;
  put_u64(many, size / element);
  put_u32(many, 0);
  many += preamble<std::unordered_map<std::int32_t, std::int32_t>>(20);
  while (many.size() + element <= size) {
    put_u64(many, 0);
    put_u64(many, 1000);
    put_u32(many, 0);
  }
  CHECK(refused_with_peak<maps>(many, "vector<unordered_map>, each bucket count = 1000") <= bound_for(many.size()));
}

TEST_CASE("honest payloads still decode, large ones included") {
  std::vector<std::string> strings(200000, "value");
  const std::string bytes = fwd::detail::archive_encode(strings);
  boost::system::error_code ec;
  std::vector<std::string> back;
  fwd::detail::archive_decode(bytes, ec, nullptr, back);
  REQUIRE_FALSE(ec);
  CHECK(back == strings);

  std::vector<std::optional<std::string>> sparse(100000);
  sparse[5] = "x";
  std::vector<std::optional<std::string>> sparse_back;
  fwd::detail::archive_decode(fwd::detail::archive_encode(sparse), ec, nullptr, sparse_back);
  REQUIRE_FALSE(ec);
  CHECK(sparse_back == sparse);

  std::unordered_map<std::string, std::int32_t> table;
  for (int i = 0; i < 1000; ++i) table.emplace(std::to_string(i), i);
  std::unordered_map<std::string, std::int32_t> table_back;
  fwd::detail::archive_decode(fwd::detail::archive_encode(table), ec, nullptr, table_back);
  REQUIRE_FALSE(ec);
  CHECK(table_back == table);

  // A bucket count far larger than the input (a table that grew, then shrank) is not refused.
  std::unordered_set<std::int32_t> shrunk;
  for (int i = 0; i < 100000; ++i) shrunk.insert(i);
  for (int i = 1; i < 100000; ++i) shrunk.erase(i);
  std::unordered_set<std::int32_t> shrunk_back;
  fwd::detail::archive_decode(fwd::detail::archive_encode(shrunk), ec, nullptr, shrunk_back);
  REQUIRE_FALSE(ec);
  CHECK(shrunk_back == shrunk);
}
