#pragma once

// How fwd is compiled. By default fwd is header-only: every function is defined in the
// headers. With FWD_SEPARATE_COMPILATION defined (the fwd::fwd_compiled CMake target
// defines it), the headers only declare fwd's non-template functions and exactly one
// translation unit of the program includes <fwd/src.hpp>, which defines them. Templates
// stay in the headers in both modes.

#if defined(FWD_SEPARATE_COMPILATION)
#define FWD_DECL
#else
#define FWD_DECL inline
#endif
