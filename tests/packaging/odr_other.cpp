#include <fwd/forward.hpp>

const boost::system::error_category& category_seen_by_other_tu() { return fwd::fwd_category(); }
