#pragma once

/// fwd's version: FWD_VERSION is major * 10000 + minor * 100 + patch.
#define FWD_VERSION_MAJOR 0
#define FWD_VERSION_MINOR 1
#define FWD_VERSION_PATCH 0
#define FWD_VERSION (FWD_VERSION_MAJOR * 10000 + FWD_VERSION_MINOR * 100 + FWD_VERSION_PATCH)
/// The same as text, "major.minor.patch".
#define FWD_DETAIL_VERSION_TEXT_(x) #x
#define FWD_DETAIL_VERSION_TEXT(x) FWD_DETAIL_VERSION_TEXT_(x)
#define FWD_VERSION_STRING                                                         \
  FWD_DETAIL_VERSION_TEXT(FWD_VERSION_MAJOR)                                       \
  "." FWD_DETAIL_VERSION_TEXT(FWD_VERSION_MINOR) "." FWD_DETAIL_VERSION_TEXT(FWD_VERSION_PATCH)
