#pragma once

// The one include a service needs: everything fwd offers.

#include <fwd/version.hpp>
#include <fwd/error.hpp>
