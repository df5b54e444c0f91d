#pragma once

// How an RPC server listens, authenticates and limits its work; the status codes its
// replies carry; the state its connections share.

#include <fwd/error.hpp>
#include <fwd/rpc/frame_buffer.hpp>
#include <fwd/rpc/detail/tls_stream.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/keepalive.hpp>
#include <fwd/rpc/tls.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/wire.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include <utility>

namespace fwd::rpc {

/// What the server says of the local node in `fwd.hello`, asked at each call.
struct local_status {
  std::string role = "unknown";  ///< "primary", "replica", "unknown" or "not_litefs"
  std::uint64_t txid = 0;
};

/// How a server listens, authenticates and bounds its work.
struct server_options {
  /// Where to listen; port 0 picks a free port (see server::local_endpoint()).
  boost::asio::ip::tcp::endpoint listen{boost::asio::ip::make_address("127.0.0.1"), 0};
  /// The cluster secret every node shares (required, at least 32 bytes: make one with
  /// `openssl rand -base64 32`). The server proves this one.
  std::string secret;
  /// Secrets accepted from a client besides `secret`, for changing the cluster secret
  /// without downtime (see fwd/rpc/handshake.hpp). Each at least 32 bytes too.
  std::vector<std::string> accepted_secrets;
  /// `fwd.hello`'s node name and LiteFS hostname.
  std::string node_name;
  std::string litefs_hostname;
  /// `fwd.hello`'s role and TXID, asked at each hello (null: "unknown", 0).
  std::function<local_status()> status;
  /// The largest frame accepted, header included; a bigger one closes that connection.
  /// Also the largest reply sent: a result that would make a bigger frame is not sent, and
  /// the call fails with `frame_too_large` instead (give every node the same value).
  std::size_t max_frame_size = wire::default_max_frame_size;
  /// Once the first byte of a frame has arrived, the whole frame must arrive within this
  /// time, or the connection is closed (a peer sending a byte at a time holds nothing
  /// for ever).
  std::chrono::milliseconds frame_read_timeout{30000};
  /// Memory that frames still being received may take, over all connections together:
  /// a frame larger than 16 KiB counts its announced size from its header until it is
  /// whole. A connection whose frame would go over is closed (`connection_closed` says
  /// `overloaded`). Smaller frames are never refused by it.
  std::size_t max_partial_frame_bytes = std::size_t{256} << 20;
  /// Requests running at once on one connection; more are answered `overloaded`.
  std::size_t max_in_flight_per_connection = 4096;
  /// Requests running at once on the whole server; more are answered `overloaded`.
  std::size_t max_in_flight = 65536;
  /// Requests running at once from one peer address, over all its connections; more are
  /// answered `overloaded`. 0: a quarter of `max_in_flight` (at least 1). With it, one
  /// peer cannot take the whole server however many connections it opens.
  std::size_t max_in_flight_per_address = 0;
  /// The share of `max_in_flight` every peer address is sure to get. A quarter of
  /// `max_in_flight` is kept in reserve: an address running `reserved_in_flight_per_address`
  /// requests or more may only use the other three quarters, so that a peer that comes
  /// while others fill the server still has its first requests run. 0: `max_in_flight`
  /// / 1024 (64 by default; no reserve when that is 0). The reserve holds for up to
  /// `max_in_flight / 4 / reserved_in_flight_per_address` addresses over their share at once
  /// (256 by default). Connections from one address share that address's share.
  std::size_t reserved_in_flight_per_address = 0;
  /// Replies waiting to be written on one connection, in bytes, beyond which the server
  /// stops reading that connection until its peer reads (bounds memory per connection).
  std::size_t max_pending_reply_bytes = std::size_t{8} << 20;
  /// Connections open at once (authenticated or not). A connection accepted beyond it is
  /// closed at once, and `telemetry.connection_failed` says `overloaded`.
  std::size_t max_connections = 4096;
  /// Connections open at once that have not finished the handshake. A connection
  /// accepted beyond it is closed at once (`connection_failed`: `overloaded`); the
  /// authenticated ones are unaffected.
  std::size_t max_unauthenticated_connections = 256;
  /// When accepting fails for lack of resources (file descriptors: EMFILE, ENFILE; or
  /// memory: ENOBUFS, ENOMEM), the server waits this long before it accepts again, twice
  /// as long after each further failure up to `max_accept_backoff`, and the first delay
  /// again once a connection is accepted. Each failure is reported through
  /// `telemetry.connection_failed`, with an empty peer.
  std::chrono::milliseconds min_accept_backoff{5};
  std::chrono::milliseconds max_accept_backoff{500};
  /// A connection must finish the handshake within this time.
  std::chrono::milliseconds handshake_timeout{5000};
  /// A connection with no request running and nothing received for this long is closed.
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(5)};
  /// TCP keepalive and TCP_USER_TIMEOUT on each connection (see keepalive_options).
  keepalive_options keepalive;
  /// The Boost archive version announced in the handshake (0: this build's).
  std::uint32_t archive_version = 0;
  /// The range of protocol versions announced in the handshake (0: this build's oldest,
  /// newest): narrow it to keep a node at an older version during an upgrade.
  std::uint32_t min_protocol_version = 0;
  std::uint32_t max_protocol_version = 0;
  /// Hooks: connection opened, closed and failed (the peer is the client's address).
  telemetry_ptr telemetry;
  /// Mutual TLS (see tls_options). Unset: connections are plain TCP. Set: every connection
  /// must complete a TLS handshake, with a client certificate signed by `tls->ca_file` (unless
  /// `require_peer_certificate` is false), before fwd's handshake (`handshake_timeout` covers
  /// both). A plain fwd client is answered `unauthenticated` ("this server requires TLS").
  std::optional<tls_options> tls;
};

namespace detail {

// How an error crosses the wire in a reply's aux field: the category in the high half,
// the value in the low half. Categories other than fwd's and SQLite's become remote_failure.
inline constexpr std::uint64_t status_fwd = 1;
inline constexpr std::uint64_t status_sqlite = 2;

inline std::uint64_t encode_status(const boost::system::error_code& ec) noexcept {
  if (!ec) return 0;
  if (ec.category() == fwd_category()) return (status_fwd << 32) | static_cast<std::uint32_t>(ec.value());
  if (ec.category() == sqlite_category()) return (status_sqlite << 32) | static_cast<std::uint32_t>(ec.value());
  return (status_fwd << 32) | static_cast<std::uint32_t>(errc::remote_failure);
}

inline boost::system::error_code decode_status(std::uint64_t aux) noexcept {
  if (aux == 0) return {};
  const auto value = static_cast<int>(static_cast<std::uint32_t>(aux));
  switch (aux >> 32) {
    case status_fwd: return {value, fwd_category()};
    case status_sqlite: return {value, sqlite_category()};
    default: return make_error_code(errc::protocol_error);
  }
}

inline std::string endpoint_string(const boost::asio::ip::tcp::endpoint& e) {
  const auto address = e.address();
  return address.is_v6() ? fmt::format("[{}]:{}", address.to_string(), e.port())
                         : fmt::format("{}:{}", address.to_string(), e.port());
}

class server_connection;

// Requests running for one peer address, over all its connections.
struct address_share {
  std::atomic<std::size_t> in_flight{0};
};

// The in-flight bounds, the derived ones resolved (see server_options).
struct in_flight_limits {
  std::size_t per_connection = 0;
  std::size_t per_address = 0;
  std::size_t total = 0;
  std::size_t reserved_per_address = 0;  // below it, an address may use the reserve
  std::size_t shared = 0;                // the total less the reserve

  static in_flight_limits from(const server_options& o) noexcept {
    in_flight_limits l;
    l.per_connection = o.max_in_flight_per_connection;
    l.total = o.max_in_flight;
    l.per_address = o.max_in_flight_per_address != 0 ? o.max_in_flight_per_address
                                                     : std::max<std::size_t>(o.max_in_flight / 4, 1);
    l.reserved_per_address = o.reserved_in_flight_per_address != 0 ? o.reserved_in_flight_per_address
                                                                    : o.max_in_flight / 1024;
    l.shared = l.reserved_per_address == 0 ? l.total : l.total - l.total / 4;
    return l;
  }
};

// Whether a refusal is reported (to build its detail only then).
inline bool reporting_refusals(const server_options& o) noexcept { return o.telemetry && o.telemetry->refused; }

inline void report_refusal(const server_options& o, std::string_view peer, std::string_view what,
                           std::string_view reason, const boost::system::error_code& ec,
                           std::string_view detail) noexcept {
  fwd::detail::emit(o.telemetry, &telemetry::refused, refusal_event{peer, what, reason, ec, detail});
}

// A connection refused before it is authenticated: reported as connection_failed and
// as refused.
inline void report_refused_connection(const server_options& o, std::string_view peer, std::string_view reason,
                                      const boost::system::error_code& ec, std::string_view detail) noexcept {
  fwd::detail::emit(o.telemetry, &telemetry::connection_failed, connection_event{peer, ec, true});
  report_refusal(o, peer, "connection", reason, ec, detail);
}

struct server_state {
  boost::asio::any_io_executor executor;
  const registry* user_registry = nullptr;
  registry builtins;
  server_options options;
  wire::versions versions;
  in_flight_limits limits;
  std::vector<std::string> secrets;  // options.secret first, then options.accepted_secrets
  std::atomic<std::size_t> in_flight{0};
  std::atomic<std::size_t> connections{0};
  std::atomic<std::size_t> unauthenticated{0};  // connections still in the handshake
  std::atomic<std::size_t> partial_frame_bytes{0};  // see max_partial_frame_bytes
  std::atomic<bool> stopping{false};
  std::mutex mutex;  // guards live and shares
  std::list<std::weak_ptr<server_connection>> live;
  std::map<boost::asio::ip::address, std::weak_ptr<address_share>> shares;

  // The share of `address`, made when its first connection comes; gone with its last.
  std::shared_ptr<address_share> share_of(const boost::asio::ip::address& address) {
    std::lock_guard lock(mutex);
    auto& slot = shares[address];
    auto share = slot.lock();
    if (!share) {
      share = std::make_shared<address_share>();
      slot = share;
      if (shares.size() > 2 * shares_kept) {
        std::erase_if(shares, [](const auto& entry) { return entry.second.expired(); });
        shares_kept = std::max<std::size_t>(64, shares.size());
      }
    }
    return share;
  }
  std::size_t shares_kept = 64;  // under mutex: the map is swept when it doubles past it
  std::optional<boost::asio::ip::tcp::acceptor> acceptor;  // used on its own strand
  std::optional<boost::asio::steady_timer> accept_timer;    // on the acceptor's strand
  std::chrono::milliseconds accept_backoff{0};             // on the acceptor's strand
  std::shared_ptr<boost::asio::ssl::context> tls_context;  // set: connections use TLS
};

}  // namespace detail
}  // namespace fwd::rpc
