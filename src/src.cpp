// The one translation unit of the fwd::fwd_compiled library (FWD_SEPARATE_COMPILATION).
#include <fwd/src.hpp>
