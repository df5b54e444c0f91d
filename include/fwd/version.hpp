#pragma once

/// fwd's version: FWD_VERSION is major * 10000 + minor * 100 + patch.
#define FWD_VERSION_MAJOR 0
#define FWD_VERSION_MINOR 1
#define FWD_VERSION_PATCH 0
#define FWD_VERSION (FWD_VERSION_MAJOR * 10000 + FWD_VERSION_MINOR * 100 + FWD_VERSION_PATCH)
