// A consumer program: the one include, a call into each layer it can use without a
// cluster, and an exit status that says whether they behaved.
#include <fwd/forward.hpp>

#include <cstdio>
#include <string>

int main() {
  static_assert(FWD_VERSION >= 100, "fwd's version macro");
  const boost::system::error_code ec = fwd::errc::not_primary;
  if (fwd::classify(ec) != fwd::error_class::not_sent) return 1;
  if (std::string(ec.category().name()) != "fwd") return 2;
  std::printf("fwd %d.%d.%d: %s\n", FWD_VERSION_MAJOR, FWD_VERSION_MINOR, FWD_VERSION_PATCH,
              ec.message().c_str());
  return 0;
}
