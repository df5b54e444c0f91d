#pragma once

// The one include a service needs: everything fwd offers.

#include <fwd/version.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs.hpp>
#include <fwd/procedure.hpp>
#include <fwd/wire.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/server.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/membership.hpp>
#include <fwd/discovery.hpp>
#include <fwd/sqlite.hpp>
#include <fwd/retry.hpp>
#include <fwd/breaker.hpp>
#include <fwd/forwarder.hpp>
#include <fwd/migrate.hpp>
#include <fwd/node.hpp>
