#pragma once

// What the session tests' server and client share: the secret and two procedures.

#include <fwd/procedure.hpp>

#include <cstdint>
#include <string>

namespace session_test {

inline constexpr const char* secret = "session-test-secret-session-test-secret";

inline constexpr fwd::procedure<std::string(std::string)> echo{"session.echo"};
/// Counts its calls (the server reports how many ran): proof that a frame was acted on.
inline constexpr fwd::procedure<std::int64_t()> mark{"session.mark"};

}  // namespace session_test
