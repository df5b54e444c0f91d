// In a FWD_SEPARATE_COMPILATION build the headers declare and the library defines: calls
// into the LiteFS files, the SQLite error texts and the categories must link.
#include <fwd/forward.hpp>

#if !defined(FWD_SEPARATE_COMPILATION)
#error "this consumer must be built with FWD_SEPARATE_COMPILATION (from fwd::fwd_compiled)"
#endif

#include <string>

std::string separately_compiled_calls() {
  boost::system::error_code ec;
  fwd::diagnostics diag;
  fwd::litefs::parse_position("bad", ec, diag);
  return fwd::litefs::format_position({1, 2}) + diag.message() +
         fwd::make_sqlite_error(19).message();
}
