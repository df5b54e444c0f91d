#pragma once

// The Boost.Serialization side of fwd's procedures:
//
// - serialisation of std::tuple, std::optional, std::variant, std::monostate,
//   std::chrono::duration and system_clock time points, which Boost 1.81 lacks;
// - fwd's two archives, Boost binary archives over a byte buffer, with the checks that
//   make decoding a peer's bytes safe: a collection or string may not claim more
//   elements than the bytes left can hold (Boost would allocate first); collections
//   reserve storage only for elements the bytes left can hold, and only within one
//   budget shared by the whole payload (a few bytes per byte of input), past which they
//   grow as their elements are actually read (Boost reserves every claimed element, at
//   every level of nesting, and rehashes to any bucket count it is sent); a bool must
//   be 0 or 1 (Boost asserts), nesting is bounded (no stack exhaustion), enums travel
//   as their underlying type (Boost narrows them to int) and are read back without UB.
//   What a payload that decodes allocates then depends only on what it holds.
// - archive_version(), which both ends of a connection must agree on.
//
// The archives are written without Boost's header (no_header): the version check is the
// handshake's job, so every call's payload carries only the values.

#include <boost/archive/basic_archive.hpp>
#include <boost/archive/binary_iarchive_impl.hpp>
#include <boost/archive/binary_oarchive_impl.hpp>
#include <boost/archive/detail/register_archive.hpp>
#include <boost/archive/archive_exception.hpp>
#include <boost/serialization/array.hpp>
#include <boost/serialization/collection_size_type.hpp>
#include <boost/serialization/collections_load_imp.hpp>
#include <boost/serialization/detail/stack_constructor.hpp>
#include <boost/serialization/item_version_type.hpp>
#include <boost/serialization/library_version_type.hpp>
#include <boost/serialization/level.hpp>
#include <boost/serialization/map.hpp>
#include <boost/serialization/nvp.hpp>
#include <boost/serialization/set.hpp>
#include <boost/serialization/split_free.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/tracking.hpp>
#include <boost/serialization/archive_input_unordered_map.hpp>
#include <boost/serialization/archive_input_unordered_set.hpp>
#include <boost/serialization/unordered_map.hpp>
#include <boost/serialization/unordered_set.hpp>
#include <boost/serialization/utility.hpp>
#include <boost/serialization/vector.hpp>

// The archive implementations are templates on the most derived archive; fwd's archives
// instantiate them here (implicitly) so that fwd stays header-only.
#include <boost/archive/impl/archive_serializer_map.ipp>
#include <boost/archive/impl/basic_binary_iarchive.ipp>
#include <boost/archive/impl/basic_binary_iprimitive.ipp>
#include <boost/archive/impl/basic_binary_oarchive.ipp>
#include <boost/archive/impl/basic_binary_oprimitive.ipp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <streambuf>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <fwd/detail/serialization_std.hpp>

namespace fwd::detail {

/// Boost's archive library version. Two nodes can exchange procedure payloads only when
/// this (and the byte order) is equal on both: the handshake compares it.
inline std::uint32_t archive_version() noexcept {
  return static_cast<std::uint32_t>(boost::archive::BOOST_ARCHIVE_VERSION());
}

/// A read-only streambuf over bytes someone else owns; knows how many remain.
class input_bytes final : public std::streambuf {
 public:
  explicit input_bytes(std::string_view bytes) {
    char* begin = const_cast<char*>(bytes.data());  // never written: get area only
    setg(begin, begin, begin + bytes.size());
  }
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(egptr() - gptr()); }
};

/// A streambuf that appends to a std::string.
class output_bytes final : public std::streambuf {
 public:
  explicit output_bytes(std::string& out) : out_(out) {}

 protected:
  int_type overflow(int_type c) override {
    if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
    out_.push_back(traits_type::to_char_type(c));
    return c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    out_.append(s, static_cast<std::size_t>(n));
    return n;
  }

 private:
  std::string& out_;
};

/// The flags both archives use: no header (the handshake checks versions), no locale.
inline constexpr unsigned archive_flags = boost::archive::no_header | boost::archive::no_codecvt;

/// Nesting deeper than this (in archive operations, a few per nested value) is refused.
inline constexpr int max_archive_depth = 512;

/// Storage fwd's input archive lets collections reserve before their elements are read,
/// per byte of input, in total over the whole payload (nested collections share it).
inline constexpr std::size_t max_reserve_per_input_byte = 2;

/// fwd's output archive: Boost's binary format, enums as their underlying type.
class output_archive final
    : public boost::archive::binary_oarchive_impl<output_archive, char, std::char_traits<char>> {
  using base = boost::archive::binary_oarchive_impl<output_archive, char, std::char_traits<char>>;
  friend class boost::archive::detail::interface_oarchive<output_archive>;
  friend class boost::archive::basic_binary_oarchive<output_archive>;
  friend class boost::archive::save_access;
  friend class boost::archive::basic_binary_oprimitive<output_archive, char, std::char_traits<char>>;

 public:
  explicit output_archive(std::streambuf& out) : base(out, archive_flags) { init(archive_flags); }

 private:
  template <class T>
  void save_override(T& t) {
    if constexpr (std::is_enum_v<std::remove_cv_t<T>>) {
      const auto value = static_cast<std::underlying_type_t<std::remove_cv_t<T>>>(t);
      base::save_override(value);
    } else {
      base::save_override(t);
    }
  }
};

/// fwd's input archive: reads what output_archive writes, and treats its input as
/// untrusted (see the file comment). Every failure is an exception.
class input_archive final
    : public boost::archive::binary_iarchive_impl<input_archive, char, std::char_traits<char>> {
  using base = boost::archive::binary_iarchive_impl<input_archive, char, std::char_traits<char>>;
  using primitive = boost::archive::basic_binary_iprimitive<input_archive, char, std::char_traits<char>>;
  friend class boost::archive::detail::interface_iarchive<input_archive>;
  friend class boost::archive::basic_binary_iarchive<input_archive>;
  friend class boost::archive::load_access;
  friend primitive;

 public:
  explicit input_archive(input_bytes& in)
      : base(in, archive_flags), in_(in), reserve_budget_(reserve_budget_for(in.remaining())) {
    init(archive_flags);
  }

  /// Bytes not yet read.
  std::size_t remaining() const noexcept { return in_.remaining(); }

  /// Takes `count * element_size` bytes from the reserve budget, the storage every
  /// collection of this payload may reserve before its elements are read; false (and
  /// nothing taken) when they do not fit: that collection grows as it reads instead.
  bool take_reserve(std::size_t count, std::size_t element_size) noexcept {
    if (element_size == 0 || count > reserve_budget_ / element_size) return false;
    reserve_budget_ -= count * element_size;
    return true;
  }

  /// Reads a std::size_t as Boost writes a collection size, without checking it against
  /// the input (for sizes that are hints, not counts of what follows).
  std::size_t read_size() {
    std::size_t size = 0;
    load_binary(&size, sizeof(size));
    return size;
  }

 private:
  [[noreturn]] static void fail(const char* what) {
    boost::serialization::throw_exception(
        boost::archive::archive_exception(boost::archive::archive_exception::input_stream_error, what));
  }

  // Counts nesting on the way in, so that deeply nested garbage cannot exhaust the stack.
  struct depth_guard {
    explicit depth_guard(int& depth) : depth_(depth) {
      if (++depth_ > max_archive_depth) {
        --depth_;
        fail("values are nested too deeply");
      }
    }
    ~depth_guard() { --depth_; }
    depth_guard(const depth_guard&) = delete;
    depth_guard& operator=(const depth_guard&) = delete;
    int& depth_;
  };

  template <class T>
  void load_override(T& t) {
    depth_guard guard(depth_);
    if constexpr (std::is_enum_v<T>) {
      // Only enums with a fixed underlying type reach here (procedure.hpp checks it), so
      // every value of the underlying type is a valid enum value.
      std::underlying_type_t<T> value{};
      base::load_override(value);
      t = static_cast<T>(value);
    } else {
      base::load_override(t);
    }
  }

  // A count is at most the bytes left: Boost resizes before it reads the elements.
  void load_override(boost::serialization::collection_size_type& t) {
    base::load_override(t);
    if (static_cast<std::size_t>(t) > remaining()) fail("collection size exceeds the input");
  }

  using primitive::load;

  void load(bool& t) {
    unsigned char byte = 0;
    load_binary(&byte, 1);
    if (byte > 1) fail("invalid bool");
    t = byte != 0;
  }

  void load(std::string& s) {
    std::size_t size = 0;
    load_binary(&size, sizeof(size));
    if (size > remaining()) fail("string length exceeds the input");
    s.resize(size);
    if (size > 0) load_binary(s.data(), size);
  }

  static std::size_t reserve_budget_for(std::size_t input) noexcept {
    return input > std::size_t(-1) / max_reserve_per_input_byte ? std::size_t(-1) : input * max_reserve_per_input_byte;
  }

  input_bytes& in_;
  std::size_t reserve_budget_;
  int depth_ = 0;
};

// The fewest bytes fwd's archives write for a value of type T: a lower bound that makes a
// peer's count checkable against the bytes left before anything is allocated. 0 for types
// whose encoding fwd does not know (user types may write nothing at all).
template <class T>
struct min_encoded_size : std::integral_constant<std::size_t, 0> {};
template <class T>
  requires std::is_arithmetic_v<T>
struct min_encoded_size<T> : std::integral_constant<std::size_t, sizeof(T)> {};
template <class T>
  requires std::is_enum_v<T>
struct min_encoded_size<T> : std::integral_constant<std::size_t, sizeof(std::underlying_type_t<T>)> {};
// Strings and collections: their count (a std::size_t) at least.
template <class C, class Tr, class A>
struct min_encoded_size<std::basic_string<C, Tr, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class U, class A>
struct min_encoded_size<std::vector<U, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class V, class C, class A>
struct min_encoded_size<std::map<K, V, C, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class V, class C, class A>
struct min_encoded_size<std::multimap<K, V, C, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class C, class A>
struct min_encoded_size<std::set<K, C, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class C, class A>
struct min_encoded_size<std::multiset<K, C, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class V, class H, class E, class A>
struct min_encoded_size<std::unordered_map<K, V, H, E, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class V, class H, class E, class A>
struct min_encoded_size<std::unordered_multimap<K, V, H, E, A>>
    : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class H, class E, class A>
struct min_encoded_size<std::unordered_set<K, H, E, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class H, class E, class A>
struct min_encoded_size<std::unordered_multiset<K, H, E, A>>
    : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class T>
struct min_encoded_size<std::optional<T>> : std::integral_constant<std::size_t, 1> {};  // the flag
template <class... Ts>
struct min_encoded_size<std::variant<Ts...>> : std::integral_constant<std::size_t, sizeof(std::uint32_t)> {};
template <class... Ts>
struct min_encoded_size<std::tuple<Ts...>>
    : std::integral_constant<std::size_t, (std::size_t{0} + ... + min_encoded_size<std::remove_cv_t<Ts>>::value)> {};
template <class A, class B>
struct min_encoded_size<std::pair<A, B>>
    : std::integral_constant<std::size_t, min_encoded_size<std::remove_cv_t<A>>::value +
                                              min_encoded_size<std::remove_cv_t<B>>::value> {};
template <class Rep, class Period>
struct min_encoded_size<std::chrono::duration<Rep, Period>> : min_encoded_size<Rep> {};
template <class Clock, class Duration>
struct min_encoded_size<std::chrono::time_point<Clock, Duration>> : min_encoded_size<Duration> {};

// Checks a peer's count of T elements against the bytes left: each element takes at
// least min_encoded_size<T> bytes (the archive already checked count <= bytes left).
template <class T>
void check_count(const input_archive& ar, std::size_t count) {
  constexpr std::size_t min = min_encoded_size<std::remove_cv_t<T>>::value;
  if constexpr (min > 1) {
    if (count > ar.remaining() / min) {
      boost::serialization::throw_exception(boost::archive::archive_exception(
          boost::archive::archive_exception::input_stream_error, "collection size exceeds the input"));
    }
  }
}

// How many T elements the bytes left can hold at most (an upper bound).
template <class T>
std::size_t elements_that_fit(const input_archive& ar) {
  constexpr std::size_t min = min_encoded_size<std::remove_cv_t<T>>::value;
  return min > 1 ? ar.remaining() / min : ar.remaining();
}

// A vector of non-primitive elements (strings, structs, containers), read by fwd's input
// archive; found by ADL from Boost's vector load, and more specialised than Boost's own.
// Boost reserves `count` elements before reading one, and a nested vector does the same
// inside the first element, and so on: a 1 MiB frame of vectors nested 170 deep made it
// reserve gigabytes. Here storage is reserved up front only for the elements the bytes
// left can hold, and only while the archive's reserve budget (a few bytes of storage per
// byte of input, shared by every collection in the payload) lasts; past that the vector
// grows as its elements are actually read, so memory follows what the input holds.
template <class U, class Allocator>
void load(input_archive& ar, std::vector<U, Allocator>& t, const unsigned int /*version*/,
          boost::mpl::false_ /*not bitwise*/) {
  boost::serialization::collection_size_type count;
  boost::serialization::item_version_type item_version(0);
  ar >> BOOST_SERIALIZATION_NVP(count);
  if (boost::serialization::library_version_type(3) < ar.get_library_version()) {
    ar >> BOOST_SERIALIZATION_NVP(item_version);
  }
  const std::size_t n = count;
  check_count<U>(ar, n);
  t.clear();
  const std::size_t expected = std::min(n, elements_that_fit<U>(ar));
  if (ar.take_reserve(expected, sizeof(U))) t.reserve(expected);
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_default_constructible_v<U>) {
      ar >> boost::serialization::make_nvp("item", t.emplace_back());
    } else {
      // As Boost's load for such elements: built on the stack, then moved in.
      boost::serialization::detail::stack_construct<input_archive, U> u(ar, item_version);
      ar >> boost::serialization::make_nvp("item", u.reference());
      t.push_back(std::move(u.reference()));
      ar.reset_object_address(&t.back(), u.address());
    }
  }
}

// A vector of bitwise elements (arithmetic types), read by fwd's input archive. Boost
// resizes to `count` and then reads: the count must cover count * sizeof(U) bytes that
// are really there, or a count of N bytes would allocate up to 8 N.
template <class U, class Allocator>
void load(input_archive& ar, std::vector<U, Allocator>& t, const unsigned int /*version*/,
          boost::mpl::true_ /*bitwise*/) {
  boost::serialization::collection_size_type count;
  ar >> BOOST_SERIALIZATION_NVP(count);
  if (BOOST_SERIALIZATION_VECTOR_VERSIONED(ar.get_library_version())) {
    unsigned int item_version = 0;
    ar >> BOOST_SERIALIZATION_NVP(item_version);
  }
  const std::size_t n = count;
  if (n > ar.remaining() / sizeof(U)) {
    boost::serialization::throw_exception(boost::archive::archive_exception(
        boost::archive::archive_exception::input_stream_error, "collection size exceeds the input"));
  }
  t.resize(n);
  if (n > 0) ar >> boost::serialization::make_array<U, boost::serialization::collection_size_type>(t.data(), count);
}

// Unordered containers: Boost rehashes to the peer's bucket count (any number: each
// bucket a pointer) before reading an element. Here the bucket count is read and
// ignored; buckets are reserved only for the elements the bytes left can hold, within
// the reserve budget, and otherwise grow as elements are inserted.
template <class Container, class InputFunction>
void load_unordered(input_archive& ar, Container& s) {
  boost::serialization::collection_size_type count;
  boost::serialization::item_version_type item_version(0);
  ar >> BOOST_SERIALIZATION_NVP(count);
  (void)ar.read_size();  // the sender's bucket count: a hint fwd does not follow
  if (boost::serialization::library_version_type(3) < ar.get_library_version()) {
    ar >> BOOST_SERIALIZATION_NVP(item_version);
  }
  const std::size_t n = count;
  check_count<typename Container::value_type>(ar, n);
  s.clear();
  const std::size_t expected = std::min(n, elements_that_fit<typename Container::value_type>(ar));
  if (ar.take_reserve(expected, 2 * sizeof(void*))) s.reserve(expected);
  InputFunction read_one;
  for (std::size_t i = 0; i < n; ++i) read_one(ar, s, item_version);
}

template <class K, class V, class H, class E, class A>
void load(input_archive& ar, std::unordered_map<K, V, H, E, A>& t, const unsigned int /*version*/) {
  using C = std::unordered_map<K, V, H, E, A>;
  load_unordered<C, boost::serialization::stl::archive_input_unordered_map<input_archive, C>>(ar, t);
}
template <class K, class V, class H, class E, class A>
void load(input_archive& ar, std::unordered_multimap<K, V, H, E, A>& t, const unsigned int /*version*/) {
  using C = std::unordered_multimap<K, V, H, E, A>;
  load_unordered<C, boost::serialization::stl::archive_input_unordered_multimap<input_archive, C>>(ar, t);
}
template <class K, class H, class E, class A>
void load(input_archive& ar, std::unordered_set<K, H, E, A>& t, const unsigned int /*version*/) {
  using C = std::unordered_set<K, H, E, A>;
  load_unordered<C, boost::serialization::stl::archive_input_unordered_set<input_archive, C>>(ar, t);
}
template <class K, class H, class E, class A>
void load(input_archive& ar, std::unordered_multiset<K, H, E, A>& t, const unsigned int /*version*/) {
  using C = std::unordered_multiset<K, H, E, A>;
  load_unordered<C, boost::serialization::stl::archive_input_unordered_multiset<input_archive, C>>(ar, t);
}

}  // namespace fwd::detail

BOOST_SERIALIZATION_REGISTER_ARCHIVE(fwd::detail::output_archive)
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(fwd::detail::output_archive)
BOOST_SERIALIZATION_REGISTER_ARCHIVE(fwd::detail::input_archive)
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(fwd::detail::input_archive)
