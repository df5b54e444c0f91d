// The consumer's one translation unit that compiles fwd (FWD_SEPARATE_COMPILATION).
#include <fwd/src.hpp>
