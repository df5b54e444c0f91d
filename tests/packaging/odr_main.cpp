// Linked with odr_other.cpp: both include every header, so any non-inline definition
// in fwd's headers fails this link.
#include <fwd/forward.hpp>

const boost::system::error_category& category_seen_by_other_tu();

int main() { return &fwd::fwd_category() == &category_seen_by_other_tu() ? 0 : 1; }
