#pragma once

// The procedures the test server defines and the tests call.

#include <fwd/procedure.hpp>

#include <cstdint>
#include <string>

namespace test_procs {

inline constexpr fwd::procedure<std::string(std::string)> echo{"test.echo"};
inline constexpr fwd::procedure<std::int64_t(std::int64_t, std::int64_t)> add{"test.add"};
/// Throws std::runtime_error with the given message.
inline constexpr fwd::procedure<std::int64_t(std::string)> fail{"test.fail"};
/// Records that it ran (see runs).
inline constexpr fwd::procedure<void()> side_effect{"test.side_effect"};
/// How many times side_effect ran.
inline constexpr fwd::procedure<std::int64_t()> runs{"test.runs"};
/// Replies only once release is called (or never): holds a slot in flight.
inline constexpr fwd::procedure<std::string(std::string)> hold{"test.hold"};
/// Completes every held call; returns how many there were.
inline constexpr fwd::procedure<std::int64_t()> release{"test.release"};
/// How many held calls wait now.
inline constexpr fwd::procedure<std::int64_t()> held{"test.held"};

}  // namespace test_procs
