#pragma once

// The one include a service needs: everything fwd offers, in the order of the write path.
//
//   node                a call on any node (node.hpp)
//   write/forwarder     is run locally or forwarded, with retries and a breaker,
//   cluster/discovery   to the primary (found from LiteFS's mount and the members),
//   rpc/                over an authenticated, multiplexed connection,
//   write/executor      where it runs exactly once (its dedup row) in a group commit.

#include <fwd/version.hpp>
#include <fwd/error.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/procedure.hpp>
#include <fwd/litefs/types.hpp>
#include <fwd/litefs/files.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/path_check.hpp>
#include <fwd/litefs/monitor_options.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/sqlite/statement.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/rpc/wire.hpp>
#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/result_handler.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/server_options.hpp>
#include <fwd/rpc/server.hpp>
#include <fwd/rpc/client_options.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/cluster/membership_types.hpp>
#include <fwd/cluster/membership.hpp>
#include <fwd/cluster/discovery.hpp>
#include <fwd/write/write_options.hpp>
#include <fwd/write/executor.hpp>
#include <fwd/write/builtins.hpp>
#include <fwd/write/retry.hpp>
#include <fwd/write/breaker.hpp>
#include <fwd/write/forward_options.hpp>
#include <fwd/write/forwarder.hpp>
#include <fwd/migrate.hpp>
#include <fwd/node_options.hpp>
#include <fwd/node.hpp>
#include <fwd/metrics.hpp>
#include <fwd/metrics_registry.hpp>
