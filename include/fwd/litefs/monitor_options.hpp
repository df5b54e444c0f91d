#pragma once

// What litefs::monitor publishes (node_state), how it is set up (monitor_options), and
// the status of LiteFS's `/events` stream it follows.

#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <fwd/litefs/types.hpp>
#include <optional>
#include <string>

namespace fwd::litefs {

/// What the monitor knows of this node's LiteFS at one moment. Immutable once published.
struct node_state {
  role_kind role = role_kind::unknown;
  std::string primary_hostname;    ///< replica: the primary's LiteFS lease hostname
  std::string reason;              ///< what decided `role` (or what failed)
  bool mount_dead = false;         ///< LiteFS stopped under the service (ENOTCONN/ECONNABORTED)
  std::uint64_t mount_device = 0;  ///< st_dev of the mount directory (0: unreadable)
  /// Changes whenever the mount dies or is replaced by a new one: SQLite connections
  /// opened under an older generation must be closed before they are touched again.
  std::uint64_t mount_generation = 0;
  position pos;  ///< the monitored database's `<db>-pos` (zero when unreadable)
  std::chrono::milliseconds lag{0};
  std::uint64_t version = 0;  ///< bumped on each published change
};

struct monitor_options {
  std::filesystem::path mount;  ///< the LiteFS FUSE mount, e.g. /litefs
  std::string database;         ///< the database's file name in the mount, e.g. "app.db"
  std::chrono::milliseconds poll_interval{50};      ///< role and mount, when nobody waits
  std::chrono::milliseconds wait_poll_interval{1};  ///< while a position waiter waits
  /// Called (on the monitor's strand, never on its polling thread) with each new state;
  /// must be quick. A hook that throws is ignored.
  std::function<void(const node_state&)> on_change;
  /// Reads the role (default: litefs::current_role(mount)); a test may replace it. Runs
  /// on the monitor's polling thread (and once in start()).
  std::function<role()> read_role;
  /// LiteFS's HTTP address (its `http.addr`, 127.0.0.1:20202 by default). When set, the
  /// monitor follows `GET /events`: a tx event of the database publishes its position
  /// at once (no read of the mount), and every other event (init, primaryChange) re-reads
  /// the mount at once, so role changes and new transactions are seen within the event's
  /// delivery instead of the next poll. The stream is reconnected after
  /// `events_reconnect`; while it is down the poll alone serves.
  std::optional<boost::asio::ip::tcp::endpoint> http;
  std::chrono::milliseconds events_reconnect{500};
  /// While the event stream is up, a waiter's safety-net poll (tx events wake waiters).
  std::chrono::milliseconds wait_poll_interval_with_events{20};
  /// How long stop() waits for the polling thread to leave a FUSE call that LiteFS does
  /// not answer (a hung LiteFS). Past it the thread is left to finish that call on its
  /// own (it touches nothing of the service's afterwards) and stop() returns.
  std::chrono::milliseconds stop_timeout{1000};
};

/// How many events the monitor has received from LiteFS's `/events` stream, and whether
/// the stream is up.
struct event_stream_status {
  bool connected = false;
  std::uint64_t events = 0;
  std::uint64_t connects = 0;
};

}  // namespace fwd::litefs
