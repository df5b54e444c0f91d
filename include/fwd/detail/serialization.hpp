#pragma once

// The Boost.Serialization side of fwd's procedures:
//
// - serialisation of std::tuple, std::optional, std::variant, std::monostate,
//   std::chrono::duration and system_clock time points, which Boost 1.81 lacks;
// - fwd's two archives, Boost binary archives over a byte buffer, with the checks that
//   make decoding a peer's bytes safe: a collection or string may not claim more
//   elements than bytes remain (Boost would allocate first), a vector whose elements
//   would take far more memory than the bytes left grows as they are read (Boost would
//   reserve them all), a bool must be 0 or 1 (Boost asserts), nesting is bounded (no
//   stack exhaustion), enums travel as their underlying type (Boost narrows them to
//   int) and are read back without UB;
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

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <streambuf>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

// ---------------------------------------------------------------------------------------
// Standard types Boost 1.81 does not serialise. Declared in boost::serialization, where
// Boost's serialize_adl finds them (its version_type argument makes that namespace
// associated). None is tracked and none writes class information: they are values.

namespace boost::serialization {

template <class Archive, class... Ts>
void serialize(Archive& ar, std::tuple<Ts...>& t, const unsigned int /*version*/) {
  std::apply([&ar](auto&... element) { ((ar & element), ...); }, t);
}

template <class Archive, class T>
void save(Archive& ar, const std::optional<T>& t, const unsigned int /*version*/) {
  const bool engaged = t.has_value();
  ar << engaged;
  if (engaged) ar << *t;
}

template <class Archive, class T>
void load(Archive& ar, std::optional<T>& t, const unsigned int /*version*/) {
  bool engaged = false;
  ar >> engaged;
  if (!engaged) {
    t.reset();
    return;
  }
  ar >> t.emplace();
}

template <class Archive, class T>
void serialize(Archive& ar, std::optional<T>& t, const unsigned int version) {
  split_free(ar, t, version);
}

template <class Archive, class... Ts>
void save(Archive& ar, const std::variant<Ts...>& v, const unsigned int /*version*/) {
  static_assert(sizeof...(Ts) < 0xffff'ffffu, "variant has too many alternatives");
  if (v.valueless_by_exception()) {
    boost::serialization::throw_exception(boost::archive::archive_exception(
        boost::archive::archive_exception::output_stream_error,
        "a valueless std::variant cannot be serialised"));
  }
  const auto index = static_cast<std::uint32_t>(v.index());
  ar << index;
  std::visit([&ar](const auto& alternative) { ar << alternative; }, v);
}

template <class Archive, class... Ts>
void load(Archive& ar, std::variant<Ts...>& v, const unsigned int /*version*/) {
  std::uint32_t index = 0;
  ar >> index;
  if (index >= sizeof...(Ts)) {
    boost::serialization::throw_exception(boost::archive::archive_exception(
        boost::archive::archive_exception::input_stream_error,
        "std::variant alternative index out of range"));
  }
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (void)((index == I ? (ar >> v.template emplace<I>(), true) : false) || ...);
  }(std::index_sequence_for<Ts...>{});
}

template <class Archive, class... Ts>
void serialize(Archive& ar, std::variant<Ts...>& v, const unsigned int version) {
  split_free(ar, v, version);
}

template <class Archive>
void serialize(Archive& /*ar*/, std::monostate& /*m*/, const unsigned int /*version*/) {}

template <class Archive, class Rep, class Period>
void serialize(Archive& ar, std::chrono::duration<Rep, Period>& d, const unsigned int /*version*/) {
  Rep count = d.count();
  ar & count;
  d = std::chrono::duration<Rep, Period>(count);
}

template <class Archive, class Clock, class Duration>
void serialize(Archive& ar, std::chrono::time_point<Clock, Duration>& t,
               const unsigned int /*version*/) {
  Duration since_epoch = t.time_since_epoch();
  ar & since_epoch;
  t = std::chrono::time_point<Clock, Duration>(since_epoch);
}

// Boost reads implementation_level<T>::value and tracking_level<T>::value; partial
// specialisations for the standard templates above make them plain values.
template <class... Ts>
struct implementation_level<std::tuple<Ts...>> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <class T>
struct implementation_level<std::optional<T>> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <class... Ts>
struct implementation_level<std::variant<Ts...>> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <class Rep, class Period>
struct implementation_level<std::chrono::duration<Rep, Period>> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <class Clock, class Duration>
struct implementation_level<std::chrono::time_point<Clock, Duration>>
    : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};

template <>
struct implementation_level<std::monostate> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <>
struct tracking_level<std::monostate> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};

template <class... Ts>
struct tracking_level<std::tuple<Ts...>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};
template <class T>
struct tracking_level<std::optional<T>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};
template <class... Ts>
struct tracking_level<std::variant<Ts...>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};
template <class Rep, class Period>
struct tracking_level<std::chrono::duration<Rep, Period>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};
template <class Clock, class Duration>
struct tracking_level<std::chrono::time_point<Clock, Duration>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};

}  // namespace boost::serialization

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
  explicit input_archive(input_bytes& in) : base(in, archive_flags), in_(in) { init(archive_flags); }

  /// Bytes not yet read.
  std::size_t remaining() const noexcept { return in_.remaining(); }

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

  input_bytes& in_;
  int depth_ = 0;
};

/// Bytes of vector storage fwd's input archive reserves up front per byte of input left.
inline constexpr std::size_t max_reserve_per_input_byte = 64;

// A vector of non-primitive elements (strings, structs, containers), read by fwd's input
// archive; found by ADL from Boost's vector load, and more specialised than Boost's own.
// Boost reserves `count` elements before reading one: the count is at most the bytes
// left, but each element costs sizeof(U), so a peer's N bytes could cost N * sizeof(U)
// (a 16 MiB frame of a 200-byte struct: over 3 GiB). Here a count whose elements would
// need more than max_reserve_per_input_byte times the bytes left is grown as the elements
// are actually read, so memory follows what the input holds. Counts that fit (all honest
// ones, unless an element's memory is dozens of times its encoding) are read as Boost
// reads them, into storage reserved once, where element addresses never move.
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
  if (n <= ar.remaining() * max_reserve_per_input_byte / sizeof(U)) {
    t.reserve(n);
    boost::serialization::stl::collection_load_impl(ar, t, count, item_version);
    return;
  }
  t.clear();
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

}  // namespace fwd::detail

BOOST_SERIALIZATION_REGISTER_ARCHIVE(fwd::detail::output_archive)
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(fwd::detail::output_archive)
BOOST_SERIALIZATION_REGISTER_ARCHIVE(fwd::detail::input_archive)
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(fwd::detail::input_archive)
