#pragma once

// fwd's separately compiled part. With FWD_SEPARATE_COMPILATION defined for the whole
// program, include this header in exactly one translation unit (the fwd::fwd_compiled
// CMake target does it in its src.cpp). It defines the non-template functions that the
// headers then only declare: the error categories and classify, the LiteFS files, mount
// and path check, and SQLite's connection and error texts. Templates (the RPC layer, the
// forwarder, the codecs) stay in the headers in both modes.

#if !defined(FWD_SEPARATE_COMPILATION)
#error "<fwd/src.hpp> is for FWD_SEPARATE_COMPILATION builds; header-only builds need no source"
#endif

#include <fwd/impl/error.ipp>
#include <fwd/litefs/impl/files.ipp>
#include <fwd/litefs/impl/mount.ipp>
#include <fwd/litefs/impl/path_check.ipp>
#include <fwd/sqlite/impl/connection.ipp>
#include <fwd/sqlite/impl/statement.ipp>
