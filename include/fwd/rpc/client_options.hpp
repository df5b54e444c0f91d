#pragma once

// How an RPC client connects, authenticates and times out, and the settings of one call.

#include <fwd/error.hpp>
#include <fwd/rpc/keepalive.hpp>
#include <fwd/rpc/tls.hpp>
#include <fwd/rpc/wire.hpp>
#include <fwd/telemetry.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fwd::rpc {

/// How a client connects, authenticates and times out.
struct client_options {
  /// The cluster secret every node shares (required, at least 32 bytes: make one with
  /// `openssl rand -base64 32`). The client proves this one.
  std::string secret;
  /// Secrets accepted from a server besides `secret`, for changing the cluster secret
  /// without downtime (see fwd/rpc/handshake.hpp). Each at least 32 bytes too.
  std::vector<std::string> accepted_secrets;
  /// The largest frame sent or accepted, header included. A call whose request would be
  /// bigger fails with `frame_too_large` and is not sent; a reply that would be bigger
  /// fails its call alone with `frame_too_large` (its bytes are skipped, the connection and
  /// its other calls go on).
  std::size_t max_frame_size = wire::default_max_frame_size;
  /// Connecting and the handshake together must finish within this time.
  std::chrono::milliseconds connect_timeout{3000};
  /// The deadline of a call that sets none.
  std::chrono::milliseconds default_timeout{30000};
  /// After a failed connection attempt, the next waits this long, doubling up to the max.
  std::chrono::milliseconds reconnect_backoff{50};
  std::chrono::milliseconds max_reconnect_backoff{2000};
  /// TCP keepalive and TCP_USER_TIMEOUT on each connection (see keepalive_options).
  keepalive_options keepalive;
  /// While calls wait for replies on a connection, fwd checks that the server still
  /// answers: after `ping_interval` with nothing received, the client sends a ping (a
  /// request for the built-in `fwd.ping`, which every server answers, if only with "no
  /// such procedure"); after `dead_peer_timeout` with nothing received, the connection is
  /// closed, its calls fail with `connection_lost` (they may have run), and the next call
  /// dials again. Finds a server that is up but stuck (stopped, swapping, deadlocked),
  /// which TCP keepalive cannot. Zero turns the check off. Make `dead_peer_timeout` longer
  /// than the server can take to answer while loaded.
  std::chrono::milliseconds ping_interval{5000};
  std::chrono::milliseconds dead_peer_timeout{15000};
  /// The Boost archive version announced in the handshake (0: this build's).
  std::uint32_t archive_version = 0;
  /// The range of protocol versions announced in the handshake (0: this build's oldest,
  /// newest): narrow it to keep a node at an older version during an upgrade.
  std::uint32_t min_protocol_version = 0;
  std::uint32_t max_protocol_version = 0;
  /// Hooks: call started/finished, connection opened/closed/failed.
  telemetry_ptr telemetry;
  /// Mutual TLS (see tls_options). Unset: plain TCP. Set: each connection runs a TLS
  /// handshake, verifying the server's certificate against `tls->ca_file` and presenting
  /// `tls->certificate_chain_file`, before fwd's handshake (`connect_timeout` covers both).
  /// A TLS failure fails the waiting calls with `unauthenticated`, OpenSSL's reason in
  /// call_options::diagnostics.
  std::optional<tls_options> tls;
};

/// Per-call settings.
struct call_options {
  /// When the call gives up with `timeout` (default: now + client_options::default_timeout).
  /// The server receives the remaining time and does not start the call after it.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  /// The request id (default: a fresh unique id). Retries of one logical call must reuse
  /// it, so that the primary runs it at most once.
  std::optional<wire::request_id> request_id;
  /// Which attempt this is, for telemetry.
  std::uint32_t attempt = 1;
  /// The durability a write asks of the primary, as fwd::durability::wire() encodes it
  /// (0: none, and the request carries no durability).
  std::uint16_t durability = 0;
  /**
   * Where the call's failure details go (the remote exception's type and message, both
   * versions on a mismatch, the connect or TLS error), like boost::mysql::diagnostics.
   * Owned by the caller and must outlive the operation. Cleared when the call is
   * initiated; on failure, filled before the completion handler is invoked (reading it
   * in the handler is safe); empty after a success. Null: the details are dropped.
   * The blocking client::call throws fwd::error carrying them in get_diagnostics().
   */
  fwd::diagnostics* diagnostics = nullptr;
};

}  // namespace fwd::rpc
