#pragma once

// Telemetry hooks: what fwd tells a service about its calls, connections and cluster.
// Every hook is optional. Components hold a `std::shared_ptr<const telemetry>`; when it is
// null (the default) the only cost is one pointer test per event: no clock is read and no
// event is built.

#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <string_view>

namespace fwd {

/// A call is about to be sent (or run locally).
struct call_started_event {
  std::string_view procedure;
  std::string_view peer;  ///< "address:port", or empty when the call runs locally
  std::uint32_t attempt = 1;
};

/// A call completed, one way or another.
struct call_finished_event {
  std::string_view procedure;
  std::string_view peer;
  std::uint32_t attempt = 1;
  std::chrono::nanoseconds duration{};
  boost::system::error_code outcome;  ///< empty on success
};

/// A connection opened (handshake done), closed, or failed to open.
struct connection_event {
  std::string_view peer;
  boost::system::error_code reason;  ///< why it closed or failed; empty for opened
  bool inbound = false;  ///< a connection this node's server accepted (or refused)
  std::uint32_t protocol = 0;  ///< opened: the protocol version both sides agreed on
};

/// What a server refused, and why. `reason` is one of a few fixed words, true to what
/// happened:
///  - connection: "connection_cap" (max_connections), "unauthenticated_cap"
///    (max_unauthenticated_connections), "out_of_descriptors" (accept failed for lack of
///    file descriptors or memory; the peer is empty), "closed_before_handshake" (the peer
///    closed without sending a byte), "closed_during_handshake" (the peer closed after
///    starting it: a client that refuses the server's proof of the secret does), "handshake_timeout" (not finished within
///    handshake_timeout), "handshake_failed" (wrong secret, versions, or bytes that are not
///    fwd's handshake: `error` says which), "tls_failed", "tls_required";
///  - frame (the connection is closed): "frame_too_large", "frame_read_timeout" (a frame
///    not whole within frame_read_timeout), "malformed_frame", "partial_frame_budget"
///    (max_partial_frame_bytes), "unexpected_frame", "tampered_frame" (a frame failed its
///    session MAC: injected, replayed, reordered or altered);
///  - call (answered with `error`, the connection goes on): "overloaded", "deadline_passed"
///    (the caller's deadline had passed on arrival), "unknown_procedure",
///    "signature_mismatch", "decode_failure" (the arguments did not decode), "reply_too_large".
struct refusal_event {
  std::string_view peer;     ///< "address:port" (empty when no connection was accepted)
  std::string_view what;     ///< "connection", "frame" or "call"
  std::string_view reason;   ///< see above
  boost::system::error_code error;  ///< what the peer is told, or the system's error
  std::string_view detail;   ///< a sentence for logs (the limit, the procedure, ...)
};

/// A call is retried after `reason`.
struct retry_event {
  std::string_view procedure;
  std::uint32_t next_attempt = 2;
  std::chrono::nanoseconds backoff{};
  boost::system::error_code reason;
};

/// The node believed to be primary changed (empty: none known).
struct primary_changed_event {
  std::string_view previous;
  std::string_view current;
};

/// A member joined or left the cluster.
struct member_event {
  std::string_view member;
};

/// A primary lookup: served from the cache (hit) or waiting for a refresh (miss).
struct discovery_lookup_event {
  bool hit = false;
};

/// One member answered a discovery probe, or failed to.
struct probe_event {
  std::string_view peer;
  std::string_view role;  ///< what the member says it is ("primary", "replica", ...)
  boost::system::error_code outcome;
};

/// A DNS poll of the membership failed or came back empty; members are kept until
/// answers agree (see membership_options).
struct resolver_error_event {
  boost::system::error_code error;  ///< category "fwd.dns" keeps c-ares's status
  std::string_view message;
};

/// This node's LiteFS state changed (litefs::monitor): role, primary, a dead or replaced
/// mount (a new mount generation), or the position.
struct litefs_event {
  std::string_view role;              ///< "primary", "replica", "unknown", "not_litefs"
  std::string_view primary_hostname;  ///< replica: the primary's LiteFS hostname
  bool mount_dead = false;            ///< LiteFS stopped under the service
  std::uint64_t mount_generation = 0;
  std::uint64_t txid = 0;
  std::string_view reason;
};

/// A peer's circuit breaker changed state ("closed", "open", "half-open").
struct breaker_event {
  std::string_view peer;
  std::string_view state;
};

/// A write (node.async_call / forwarder) completed: run here or forwarded to the primary.
struct write_finished_event {
  std::string_view procedure;
  bool forwarded = false;  ///< last attempt sent (or meant for) the primary; false: ran here
  std::uint32_t attempts = 1;
  std::chrono::nanoseconds duration{};  ///< from the call to its completion
  boost::system::error_code outcome;    ///< empty on success
  bool waited_for_replication = false;  ///< read-your-writes waited for the primary's TXID
  std::chrono::nanoseconds replication_wait{};
};

/// The write executor took a batch (group commit) off its queue. Runs on the writer thread.
struct write_batch_event {
  std::size_t size = 0;    ///< writes in this transaction
  std::size_t queued = 0;  ///< writes still waiting behind it
};

/**
 * The hooks. Set the ones you want; they may run on any thread that runs fwd's work
 * (the executors you give it), so they must be thread-safe and quick: copy what you need
 * (the string_views live only during the call).
 */
struct telemetry {
  std::function<void(const call_started_event&)> call_started;
  std::function<void(const call_finished_event&)> call_finished;
  std::function<void(const connection_event&)> connection_opened;
  std::function<void(const connection_event&)> connection_closed;
  std::function<void(const connection_event&)> connection_failed;
  /// A server refused a connection, a frame or a call (see refusal_event).
  std::function<void(const refusal_event&)> refused;
  std::function<void(const retry_event&)> retry;
  std::function<void(const primary_changed_event&)> primary_changed;
  std::function<void(const member_event&)> member_joined;
  std::function<void(const member_event&)> member_left;
  std::function<void(const breaker_event&)> breaker_changed;
  /// Called on every primary lookup, hits included: keep it to a counter increment.
  std::function<void(const discovery_lookup_event&)> discovery_lookup;
  std::function<void(const probe_event&)> probe_finished;
  std::function<void(const resolver_error_event&)> resolver_error;
  std::function<void(const litefs_event&)> litefs_changed;
  std::function<void(const write_finished_event&)> write_finished;
  std::function<void(const write_batch_event&)> write_batch;
};

/// Shared, immutable hooks; null means "no telemetry".
using telemetry_ptr = std::shared_ptr<const telemetry>;

namespace detail {

// Runs an observer the service supplied (a telemetry or discovery/membership hook), if
// set. Observers should not throw; one that does is ignored here, because an exception
// from inside fwd's handlers would leave an operation half done (a call that never
// completes) or escape into the service's io_context::run().
template <class F, class... Args>
inline void invoke_hook(const F& hook, Args&&... args) noexcept {
  if (!hook) return;
  try {
    hook(std::forward<Args>(args)...);
  } catch (...) {
  }
}

// Calls `hook` if telemetry is on and that hook is set; never throws.
template <class Hook, class Event>
inline void emit(const telemetry_ptr& t, Hook telemetry::*hook, const Event& event) noexcept {
  if (t && (*t).*hook) invoke_hook((*t).*hook, event);
}

}  // namespace detail

}  // namespace fwd
