#pragma once

// The procedures the hostile test server defines: small ones a well-behaved client calls,
// and ones whose argument types give an attacker collections to inflate.

#include <fwd/procedure.hpp>

#include <boost/serialization/level.hpp>
#include <boost/serialization/tracking.hpp>
#include <boost/serialization/vector.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hostile {

/// A tree of vectors, as deep as its encoding says.
struct tree {
  static constexpr std::string_view fwd_type_name = "hostile.tree";
  std::vector<tree> children;
  template <class Archive>
  void serialize(Archive& ar, const unsigned int /*version*/) {
    ar & children;
  }
};

inline constexpr fwd::procedure<std::string(std::string)> echo{"hostile.echo"};
/// How many strings it was given.
inline constexpr fwd::procedure<std::int64_t(std::vector<std::string>)> count_strings{"hostile.count_strings"};
/// How many of the strings are there.
inline constexpr fwd::procedure<std::int64_t(std::vector<std::optional<std::string>>)> count_present{
    "hostile.count_present"};
/// Replies with its argument after that many milliseconds (without holding a thread).
inline constexpr fwd::procedure<std::int64_t(std::int64_t)> nap{"hostile.nap"};
/// A string of that many bytes.
inline constexpr fwd::procedure<std::string(std::int64_t)> blob{"hostile.blob"};
/// How many trees the tree holds, itself included.
inline constexpr fwd::procedure<std::int64_t(tree)> count_nodes{"hostile.count_nodes"};

}  // namespace hostile

BOOST_CLASS_IMPLEMENTATION(hostile::tree, boost::serialization::object_serializable)
BOOST_CLASS_TRACKING(hostile::tree, boost::serialization::track_never)
