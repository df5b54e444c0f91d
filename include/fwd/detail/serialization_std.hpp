#pragma once

// Serialisation of the standard types Boost 1.81 lacks: std::tuple, std::optional,
// std::variant, std::monostate, std::chrono::duration and time points. Part of
// serialization.hpp, which every user of fwd's archives includes.

#include <boost/archive/archive_exception.hpp>
#include <boost/serialization/level.hpp>
#include <boost/serialization/throw_exception.hpp>
#include <boost/serialization/nvp.hpp>
#include <boost/serialization/split_free.hpp>
#include <boost/serialization/tracking.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

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
