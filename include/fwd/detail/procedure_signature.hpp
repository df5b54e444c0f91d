#pragma once

// The canonical description of a procedure's types, and its 64-bit fingerprint.
//
// Two nodes agree on a procedure when they agree on its name and on this fingerprint.
// It must be identical whichever compiler built each node, so it is computed from text
// fwd writes itself (never from typeid or __PRETTY_FUNCTION__): FNV-1a 64 over the
// canonical descriptor below. Integers are described by width and signedness (so
// `long` and `long long` agree where both are 64 bits, as their encodings do).
//
//   bool char i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 f80/f128 string monostate void
//   vector<T> map<K,V> set<T> unordered_map<K,V> unordered_set<T> array<T,N>
//   optional<T> variant<T,...> tuple<T,...> pair<A,B>
//   duration<Rep,num/den> system_time<duration<...>>
//   enum NAME:UNDERLYING   struct NAME        (NAME from fwd::type_name)
//   signature: R(A,...)

#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace fwd {

/**
 * The wire name of a user type (a struct or an enum) that appears in a procedure's
 * arguments or result. Specialise it, or give the type a static member
 * `static constexpr std::string_view fwd_type_name = "...";`:
 *
 *     template <> struct fwd::type_name<blog::post> {
 *       static constexpr std::string_view value = "blog.post";
 *     };
 *     // or, at global scope: FWD_TYPE_NAME(blog::post, "blog.post");
 *
 * The name enters the procedure's signature; the fields do not (fwd cannot see them).
 * When you change a type's layout incompatibly, change its name (e.g. "blog.post/2") so
 * that old and new nodes refuse each other's calls instead of misreading them.
 */
template <class T>
struct type_name {};

/**
 * Says that Boost.Serialization can serialise a user class through means fwd cannot
 * detect: free `serialize()` functions declared in namespace boost::serialization.
 * (A member `serialize`, `save`/`load`, or a free `serialize` found by argument-dependent
 * lookup are detected without it.)
 */
template <class T>
struct is_serializable : std::false_type {};

}  // namespace fwd

/// Names a user type for fwd's signatures; use at global scope.
#define FWD_TYPE_NAME(type, name)                   \
  template <>                                       \
  struct fwd::type_name<type> {                     \
    static constexpr std::string_view value = name; \
  }

namespace fwd::detail {

template <class T>
inline constexpr bool dependent_false = false;

template <class T, template <class...> class Template>
inline constexpr bool is_specialization_of = false;
template <template <class...> class Template, class... Ts>
inline constexpr bool is_specialization_of<Template<Ts...>, Template> = true;

template <class T>
inline constexpr bool is_std_array = false;
template <class T, std::size_t N>
inline constexpr bool is_std_array<std::array<T, N>> = true;

template <class T>
inline constexpr bool is_std_span = false;
template <class T, std::size_t N>
inline constexpr bool is_std_span<std::span<T, N>> = true;

template <class T>
inline constexpr bool is_duration = false;
template <class Rep, class Period>
inline constexpr bool is_duration<std::chrono::duration<Rep, Period>> = true;

template <class T>
inline constexpr bool is_system_time = false;
template <class Duration>
inline constexpr bool is_system_time<std::chrono::time_point<std::chrono::system_clock, Duration>> =
    true;

template <class T>
concept has_trait_name = requires {
  { std::string_view{fwd::type_name<T>::value} };
};
template <class T>
concept has_member_name = requires {
  { std::string_view{T::fwd_type_name} };
};
template <class T>
concept has_type_name = has_trait_name<T> || has_member_name<T>;

template <has_type_name T>
constexpr std::string_view user_type_name() {
  if constexpr (has_trait_name<T>) {
    return std::string_view{fwd::type_name<T>::value};
  } else {
    return std::string_view{T::fwd_type_name};
  }
}

// An archive-shaped probe: finds a user's serialize() without including Boost.
struct archive_probe {
  template <class T>
  archive_probe& operator&(T&&);
  template <class T>
  archive_probe& operator<<(T&&);
  template <class T>
  archive_probe& operator>>(T&&);
};

// Detects a member named `serialize` whatever its access (Boost's documented idiom makes
// it private with `friend class boost::serialization::access`): if T has one, naming it
// through a class that also inherits another `serialize` is ambiguous.
struct serialize_decoy {
  void serialize();
};
template <class T>
struct serialize_ambiguity : T, serialize_decoy {};
template <class T>
concept has_member_serialize_any_access =
    std::is_class_v<T> && !std::is_final_v<T> &&
    !requires { &serialize_ambiguity<T>::serialize; };

template <class T>
concept has_public_member_serialize = requires(T& t, archive_probe& ar, const unsigned int v) {
  t.serialize(ar, v);
};
template <class T>
concept has_adl_serialize = requires(T& t, archive_probe& ar, const unsigned int v) {
  serialize(ar, t, v);
};

template <class T>
concept user_serializable = fwd::is_serializable<T>::value || has_member_serialize_any_access<T> ||
                            has_public_member_serialize<T> || has_adl_serialize<T>;

// Enums with a fixed underlying type accept any value of it; fwd decodes enums by value.
template <class E>
concept enum_with_fixed_underlying_type =
    std::is_enum_v<E> && requires { E{std::underlying_type_t<E>{}}; };

/// FNV-1a 64: the fingerprint's hash. Constexpr, the same everywhere.
struct fnv1a_sink {
  std::uint64_t state = 0xcbf29ce484222325ull;
  constexpr void append(std::string_view text) {
    for (const char c : text) {
      state ^= static_cast<unsigned char>(c);
      state *= 0x100000001b3ull;
    }
  }
};

/// Collects the canonical text itself (for messages and tests).
struct text_sink {
  std::string text;
  void append(std::string_view s) { text.append(s); }
};

template <class Sink>
constexpr void append_number(Sink& sink, std::intmax_t value) {
  char digits[24] = {};
  int length = 0;
  const bool negative = value < 0;
  // Work in the negative range so that the most negative value does not overflow.
  std::intmax_t rest = negative ? value : -value;
  do {
    digits[length++] = static_cast<char>('0' - rest % 10);
    rest /= 10;
  } while (rest != 0);
  if (negative) sink.append("-");
  char text[24] = {};
  for (int i = 0; i < length; ++i) text[i] = digits[length - 1 - i];
  sink.append(std::string_view(text, static_cast<std::size_t>(length)));
}

template <class T, class Sink>
constexpr void describe(Sink& sink);

template <class... Ts, class Sink>
constexpr void describe_list(Sink& sink) {
  bool first = true;
  ((sink.append(first ? "" : ","), first = false, describe<Ts>(sink)), ...);
}

template <class T>
struct template_arguments;
template <template <class...> class Template, class... Ts>
struct template_arguments<Template<Ts...>> {
  template <class Sink>
  static constexpr void describe_all(Sink& sink) {
    describe_list<Ts...>(sink);
  }
};

// Each of these fails with a message that names what to do; the compiler's
// "required from" lines name the type.
template <class T>
constexpr void reject_unsupported() {
  if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T>) {
    static_assert(dependent_false<T>,
                  "fwd: a pointer cannot be a procedure argument or result: pass the value "
                  "(e.g. std::string instead of const char*, std::optional<T> for 'maybe')");
  } else if constexpr (is_specialization_of<T, std::basic_string_view> ||
                       is_std_span<T>) {
    static_assert(dependent_false<T>,
                  "fwd: a view (std::string_view, std::span) cannot be a procedure argument "
                  "or result: declare the owning type (std::string, std::vector<T>); callers "
                  "may still pass views where they convert");
  } else if constexpr (std::is_enum_v<T> && !has_type_name<T>) {
    static_assert(dependent_false<T>,
                  "fwd: this enum has no wire name: specialise fwd::type_name<E> with "
                  "'static constexpr std::string_view value = \"your.enum\";' or use "
                  "FWD_TYPE_NAME(E, \"your.enum\") at global scope");
  } else if constexpr (std::is_enum_v<T>) {
    static_assert(dependent_false<T>,
                  "fwd: this enum has no fixed underlying type, so not every value of it can "
                  "be decoded safely: declare it 'enum class' or give it one (enum E : int)");
  } else if constexpr (std::is_class_v<T> && !has_type_name<T>) {
    static_assert(dependent_false<T>,
                  "fwd: this type has no wire name (or is a standard type fwd does not "
                  "serialise): for your own struct, specialise fwd::type_name<T> with "
                  "'static constexpr std::string_view value = \"your.type\";', add a member "
                  "'static constexpr std::string_view fwd_type_name = \"your.type\";', or use "
                  "FWD_TYPE_NAME(T, \"your.type\") at global scope");
  } else if constexpr (std::is_class_v<T> && !user_serializable<T>) {
    static_assert(dependent_false<T>,
                  "fwd: Boost.Serialization cannot serialise this type: give it a member "
                  "'template <class Archive> void serialize(Archive& ar, unsigned) { ar & a & b; }' "
                  "(or a free serialize found by ADL); if boost::serialization has one for it, "
                  "specialise fwd::is_serializable<T> as std::true_type");
  } else if constexpr (std::is_class_v<T> && !std::is_default_constructible_v<T>) {
    static_assert(dependent_false<T>,
                  "fwd: procedure arguments and results are decoded into default-constructed "
                  "values: give this type a default constructor");
  } else {
    static_assert(dependent_false<T>,
                  "fwd: this type cannot be a procedure argument or result (supported: bool, "
                  "integers, floating point, std::string, vector, map, set, unordered_map, "
                  "unordered_set, array, optional, variant, tuple, pair, chrono durations, "
                  "system_clock time points, named enums and named structs)");
  }
}

template <class T, class Sink>
constexpr void describe(Sink& sink) {
  if constexpr (std::is_void_v<T>) {
    sink.append("void");
  } else if constexpr (std::is_same_v<T, bool>) {
    sink.append("bool");
  } else if constexpr (std::is_same_v<T, char>) {
    sink.append("char");
  } else if constexpr (std::is_integral_v<T>) {
    sink.append(std::is_signed_v<T> ? "i" : "u");
    append_number(sink, static_cast<std::intmax_t>(sizeof(T) * 8));
  } else if constexpr (std::is_floating_point_v<T>) {
    // By significand: f32, f64, f80 (x87 extended) or f128 (IEEE quadruple).
    constexpr int digits = std::numeric_limits<T>::digits;
    sink.append(digits <= 24 ? "f32" : digits <= 53 ? "f64" : digits <= 64 ? "f80" : "f128");
  } else if constexpr (std::is_enum_v<T> && has_type_name<T> && enum_with_fixed_underlying_type<T>) {
    sink.append("enum ");
    sink.append(user_type_name<T>());
    sink.append(":");
    describe<std::underlying_type_t<T>>(sink);
  } else if constexpr (std::is_same_v<T, std::string>) {
    sink.append("string");
  } else if constexpr (std::is_same_v<T, std::monostate>) {
    sink.append("monostate");
  } else if constexpr (is_specialization_of<T, std::vector>) {
    sink.append("vector<");
    describe<typename T::value_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::map>) {
    sink.append("map<");
    describe_list<typename T::key_type, typename T::mapped_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::unordered_map>) {
    sink.append("unordered_map<");
    describe_list<typename T::key_type, typename T::mapped_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::set>) {
    sink.append("set<");
    describe<typename T::key_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::unordered_set>) {
    sink.append("unordered_set<");
    describe<typename T::key_type>(sink);
    sink.append(">");
  } else if constexpr (is_std_array<T>) {
    sink.append("array<");
    describe<typename T::value_type>(sink);
    sink.append(",");
    append_number(sink, static_cast<std::intmax_t>(std::tuple_size_v<T>));
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::optional>) {
    sink.append("optional<");
    describe<typename T::value_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::variant>) {
    sink.append("variant<");
    template_arguments<T>::describe_all(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::tuple>) {
    sink.append("tuple<");
    template_arguments<T>::describe_all(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::pair>) {
    sink.append("pair<");
    describe_list<typename T::first_type, typename T::second_type>(sink);
    sink.append(">");
  } else if constexpr (is_duration<T>) {
    sink.append("duration<");
    describe<typename T::rep>(sink);
    sink.append(",");
    append_number(sink, T::period::num);
    sink.append("/");
    append_number(sink, T::period::den);
    sink.append(">");
  } else if constexpr (is_system_time<T>) {
    sink.append("system_time<");
    describe<typename T::duration>(sink);
    sink.append(">");
  } else if constexpr (std::is_class_v<T> && has_type_name<T> && user_serializable<T> &&
                       std::is_default_constructible_v<T>) {
    sink.append("struct ");
    sink.append(user_type_name<T>());
  } else {
    reject_unsupported<T>();
  }
}

/// Describes a value type as it travels: references and cv-qualifiers do not matter.
template <class T, class Sink>
constexpr void describe_value(Sink& sink) {
  static_assert(!std::is_array_v<std::remove_cvref_t<T>>,
                "fwd: a C array cannot be a procedure argument or result: use std::array or "
                "std::vector");
  describe<std::remove_cvref_t<T>>(sink);
}

template <class Signature>
struct signature_traits;

template <class R, class... Args>
struct signature_traits<R(Args...)> {
  template <class Sink>
  static constexpr void describe_signature(Sink& sink) {
    describe_value<R>(sink);
    sink.append("(");
    bool first = true;
    ((sink.append(first ? "" : ","), first = false, describe_value<Args>(sink)), ...);
    sink.append(")");
  }
};

/// The fingerprint of a signature `R(Args...)`: FNV-1a 64 of its canonical text.
template <class Signature>
constexpr std::uint64_t signature_fingerprint() {
  fnv1a_sink sink;
  signature_traits<Signature>::describe_signature(sink);
  return sink.state;
}

/// The canonical text of a signature, e.g. "i64(string,vector<u8>)".
template <class Signature>
std::string signature_text() {
  text_sink sink;
  signature_traits<Signature>::describe_signature(sink);
  return std::move(sink.text);
}

}  // namespace fwd::detail
