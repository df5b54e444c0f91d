#pragma once
// fwd: write forwarding for SQLite services on LiteFS. Single-header edition.
// Generated from include/ by tools/amalgamate.cmake: do not edit; edit include/ and
// regenerate with `cmake -P tools/amalgamate.cmake`.

// ---- begin fwd/forward.hpp ----

// The one include a service needs: everything fwd offers, in the order of the write path.
//
//   node                a call on any node (node.hpp)
//   write/forwarder     is run locally or forwarded, with retries and a breaker,
//   cluster/discovery   to the primary (found from LiteFS's mount and the members),
//   rpc/                over an authenticated, multiplexed connection,
//   write/executor      where it runs exactly once (its dedup row) in a group commit.

// ---- begin fwd/version.hpp ----

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

// ---- end fwd/version.hpp ----
// ---- begin fwd/error.hpp ----

// fwd's errors: one enum (fwd::errc) with its category "fwd", SQLite's result codes kept
// in their own category "fwd.sqlite" (the value is SQLite's extended code), and a
// classification that tells every caller whether a failed call may be retried.

#include <boost/system/error_category.hpp>
#include <boost/system/error_code.hpp>
// ---- begin fwd/detail/config.hpp ----

// How fwd is compiled. By default fwd is header-only: every function is defined in the
// headers. With FWD_SEPARATE_COMPILATION defined (the fwd::fwd_compiled CMake target
// defines it), the headers only declare fwd's non-template functions and exactly one
// translation unit of the program includes <fwd/src.hpp>, which defines them. Templates
// stay in the headers in both modes.

#if defined(FWD_SEPARATE_COMPILATION)
#define FWD_DECL
#else
#define FWD_DECL inline
#endif

// ---- end fwd/detail/config.hpp ----

#include <string>
#include <system_error>
#include <type_traits>

namespace fwd {

/// Every failure fwd itself reports.
enum class errc {
  no_primary = 1,       ///< no node is known to be primary (election, reconnect, or none)
  not_primary,          ///< the node asked to write is not (or no longer) the primary
  unreachable,          ///< could not connect to the peer; nothing was sent
  connection_lost,      ///< the connection broke after the request was sent
  timeout,              ///< the call's deadline passed
  cancelled,            ///< the operation was cancelled (or the node shut down)
  remote_failure,       ///< the procedure threw on the remote node
  unknown_procedure,    ///< the remote node serves no procedure of that name
  signature_mismatch,   ///< the remote node declares the procedure with another signature
  protocol_error,       ///< the peer sent bytes that are not fwd's protocol
  frame_too_large,      ///< a frame exceeded the configured maximum size
  unauthenticated,      ///< the peer did not prove the cluster secret
  version_mismatch,     ///< the peer speaks another protocol or archive version
  overloaded,           ///< the server refused the call: too much work in flight
  circuit_open,         ///< the circuit breaker for that peer is open
  replication_lag,      ///< committed on the primary, not seen here by the deadline (retry-safe)
  not_litefs,           ///< the path is not on a LiteFS mount
  misconfigured_mount,  ///< the database path is wrong for LiteFS (e.g. its data directory)
  bad_litefs_file,      ///< a LiteFS file (.primary, .lag, <db>-pos) has unexpected contents
  bad_argument,         ///< an argument given to fwd is invalid
  commit_unknown,       ///< COMMIT failed after it may have reached the database
  not_yet_durable,      ///< the write COMMITTED on the primary; too few replicas reported it in time
  tampered_frame,       ///< a frame failed its session MAC: injected, replayed, reordered or altered
  not_confirmed,        ///< committed on the primary, missing from this node's history (failover)
};

/// What a caller may do after a failure.
enum class error_class {
  not_sent,        ///< nothing ran: safe to retry, with or without the same request id
  maybe_executed,  ///< it may have run: retry only with the same request id
  permanent,       ///< retrying cannot help
  /// It committed on the primary but is not yet known to be replicated as the call's
  /// durability asked: retry only with the same request id (answered from the dedup
  /// table, waiting for the replicas again), or accept that a failover may lose it.
  committed_not_durable,
  /// it committed on the primary but is not confirmed on this node (replication_lag,
  /// not_confirmed): retrying with the same request id is safe (the primary answers from
  /// its dedup table, or runs the write again if a failover lost it)
  unconfirmed,
};


/// The category of fwd::errc, named "fwd".
FWD_DECL const boost::system::error_category& fwd_category() noexcept;

/// The category of SQLite result codes, named "fwd.sqlite"; the value is SQLite's
/// extended result code (e.g. 2067, SQLITE_CONSTRAINT_UNIQUE).
FWD_DECL const boost::system::error_category& sqlite_category() noexcept;

inline boost::system::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), fwd_category()};
}

/// An error_code for SQLite's (extended) result code `rc`.
inline boost::system::error_code make_sqlite_error(int rc) noexcept {
  return {rc, sqlite_category()};
}

/// What a caller may do after `ec`. Errors fwd does not know are `permanent`.
FWD_DECL error_class classify(const boost::system::error_code& ec) noexcept;

inline error_class classify(const std::error_code& ec) noexcept {
  return classify(boost::system::error_code(ec));
}
inline error_class classify(errc e) noexcept { return classify(make_error_code(e)); }

/// "not sent", "maybe executed", "permanent" or "unconfirmed".
inline const char* to_string(error_class c) noexcept {
  switch (c) {
    case error_class::not_sent: return "not sent";
    case error_class::maybe_executed: return "maybe executed";
    case error_class::permanent: return "permanent";
    case error_class::committed_not_durable: return "committed, not yet durable";
    case error_class::unconfirmed: return "unconfirmed";
  }
  return "?";
}

/**
 * The detail of a failure beyond its error_code: which file, which bytes, which peer,
 * and what to do. Filled by the `(..., error_code&, diagnostics&)` form of a function;
 * the throwing form carries the same text in its fwd::error. Like boost::mysql::diagnostics.
 */
class diagnostics {
 public:
  diagnostics() = default;
  /// The detailed message; empty when the call succeeded or had nothing to add.
  const std::string& message() const noexcept { return message_; }
  void clear() noexcept { message_.clear(); }
  /// Sets the message (used by fwd's functions).
  void assign(std::string message) { message_ = std::move(message); }
  friend bool operator==(const diagnostics&, const diagnostics&) = default;

 private:
  std::string message_;
};

/// The exception the throwing forms throw: a std::system_error whose code() is the
/// failure, whose what() adds the details (file, peer, procedure, remote exception), and
/// whose get_diagnostics() holds those details alone.
class error : public std::system_error {
 public:
  explicit error(const boost::system::error_code& ec)
      : std::system_error(static_cast<std::error_code>(ec)) {}
  error(const boost::system::error_code& ec, const std::string& detail)
      : std::system_error(static_cast<std::error_code>(ec), detail) {
    diag_.assign(detail);
  }
  error(const boost::system::error_code& ec, diagnostics diag)
      : std::system_error(static_cast<std::error_code>(ec), diag.message()),
        diag_(std::move(diag)) {}
  /// What the caller may do now.
  error_class classification() const noexcept { return classify(code()); }
  /// The detail alone (what() is the detail followed by the code's message).
  const diagnostics& get_diagnostics() const noexcept { return diag_; }

 private:
  diagnostics diag_;
};

namespace detail {
/// The throwing forms' tail: throws fwd::error(ec, diag) when `ec` is set.
inline void throw_on_error(const boost::system::error_code& ec, diagnostics diag) {
  if (ec) throw fwd::error(ec, std::move(diag));
}
}  // namespace detail

}  // namespace fwd

template <>
struct boost::system::is_error_code_enum<fwd::errc> : std::true_type {};
template <>
struct std::is_error_code_enum<fwd::errc> : std::true_type {};

#if !defined(FWD_SEPARATE_COMPILATION)
// ---- begin fwd/impl/error.ipp ----

// Definitions of <fwd/error.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>


namespace fwd {

namespace detail {

inline const char* errc_message(int value) noexcept {
  switch (static_cast<errc>(value)) {
    case errc::no_primary:
      return "no primary is known (LiteFS is electing one, a replica is reconnecting, or "
             "no node holds the lease); nothing was sent: retry later, or check that a "
             "primary-candidate node is running";
    case errc::not_primary:
      return "the node that received the write is not the primary (a failover happened); "
             "nothing ran there: rediscover the primary and retry with the same request id";
    case errc::unreachable:
      return "could not connect to the peer; nothing was sent: check that the node runs "
             "and listens on that address, then retry";
    case errc::connection_lost:
      return "the connection broke after the request was sent; it may have run: retry "
             "only with the same request id";
    case errc::timeout:
      return "the call's deadline passed before a reply arrived; it may have run: retry "
             "with the same request id, or give the call a longer deadline";
    case errc::cancelled:
      return "the operation was cancelled (or the node is shutting down); if the request "
             "was sent it may have run: retry only with the same request id";
    case errc::remote_failure:
      return "the procedure threw an exception on the remote node and its transaction "
             "was rolled back: see the remote exception in the error's message";
    case errc::unknown_procedure:
      return "the remote node serves no procedure of that name: define it on every node "
             "(deploy the same procedure declarations everywhere)";
    case errc::signature_mismatch:
      return "the remote node declares this procedure with another signature: deploy the "
             "same procedure declarations on every node";
    case errc::protocol_error:
      return "the peer sent bytes that are not fwd's protocol: check that the address is "
             "a fwd node's listen address";
    case errc::frame_too_large:
      return "a frame exceeded the configured maximum frame size: send smaller arguments "
             "or raise max_frame_size on both ends";
    case errc::unauthenticated:
      return "the peer did not prove knowledge of the cluster secret: give every node the "
             "same secret";
    case errc::version_mismatch:
      return "the peer speaks another fwd protocol or Boost archive version: upgrade the "
             "nodes to compatible fwd builds";
    case errc::overloaded:
      return "the server refused the call because too much work is in flight; nothing ran: "
             "retry after a backoff";
    case errc::circuit_open:
      return "the circuit breaker for this peer is open after repeated failures; nothing "
             "was sent: retry after the breaker's cool-down";
    case errc::replication_lag:
      return "the write committed on the primary but this node had not reached that position "
             "by the deadline, so it is not confirmed here (a failover may have lost it): "
             "retrying with the same request id is safe (answered from the primary's dedup "
             "table, or run again if it was lost)";
    case errc::not_litefs:
      return "the path is not on a LiteFS FUSE mount: point SQLite at the LiteFS mount "
             "directory (the fuse.dir of litefs.yml, e.g. /litefs)";
    case errc::misconfigured_mount:
      return "the database path is wrong for LiteFS: point SQLite at the FUSE mount, not at "
             "LiteFS's data directory";
    case errc::bad_litefs_file:
      return "a LiteFS file (.primary, .lag or <db>-pos) has unexpected contents: check the "
             "LiteFS version and that the path is a LiteFS mount";
    case errc::bad_argument:
      return "an argument given to fwd is invalid: see the error's message";
    case errc::commit_unknown:
      return "COMMIT failed after it may have reached the database (e.g. LiteFS went away "
             "during it): the write may have been applied; retry only with the same request "
             "id, which the primary answers from its dedup table if the write did commit";
    case errc::not_yet_durable:
      return "the write is COMMITTED on the primary, but not enough replicas reported having it "
             "before the deadline (committed, not yet durable): a failover now could lose it; "
             "retrying with the same request id is safe (the primary answers from its dedup table "
             "and waits for the replicas again)";
    case errc::tampered_frame:
      return "a frame failed its session MAC (injected, replayed, reordered or altered between "
             "the nodes): the connection was closed; look for something on the path between "
             "the nodes that rewrites or relays traffic";
    case errc::not_confirmed:
      return "the write committed on the primary, but this node's history at that position "
             "does not hold it (a failover lost the old primary's last transactions): not "
             "confirmed here; retrying with the same request id is safe (the write runs again, "
             "or the primary answers from its dedup table)";
  }
  return "unknown fwd error";
}

class fwd_category_impl final : public boost::system::error_category {
 public:
  // A fixed id lets categories from different shared libraries compare equal.
  constexpr fwd_category_impl() noexcept
      : boost::system::error_category(0x8e1f'3c7a'5d02'4b91ull) {}
  const char* name() const noexcept override { return "fwd"; }
  std::string message(int value) const override { return errc_message(value); }
  char const* message(int value, char* /*buffer*/, std::size_t /*len*/) const noexcept override {
    return errc_message(value);
  }
};

// SQLite's primary result codes, named as sqlite3.h names them, with what to do. Kept
// here (not from <sqlite3.h>) so that error.hpp stays light.
inline const char* sqlite_message(int extended) noexcept {
  switch (extended & 0xff) {
    case 1:
      return "SQLITE_ERROR: SQL error or missing database";
    case 2:
      return "SQLITE_INTERNAL: internal SQLite error";
    case 3:
      return "SQLITE_PERM: access permission denied";
    case 4:
      return "SQLITE_ABORT: the statement was aborted";
    case 5:
      return "SQLITE_BUSY: the database is locked by another connection: retry, or raise the busy "
             "timeout";
    case 6:
      return "SQLITE_LOCKED: a table is locked by this connection: retry";
    case 7:
      return "SQLITE_NOMEM: out of memory";
    case 8:
      return "SQLITE_READONLY: attempt to write a readonly database (on LiteFS: this node is a "
             "replica)";
    case 9:
      return "SQLITE_INTERRUPT: interrupted";
    case 10:
      return "SQLITE_IOERR: disk I/O error (on LiteFS: in WAL mode this node is a replica, or "
             "the mount went away under the service)";
    case 11:
      return "SQLITE_CORRUPT: the database disk image is malformed";
    case 12:
      return "SQLITE_NOTFOUND: unknown operation";
    case 13:
      return "SQLITE_FULL: the database or disk is full";
    case 14:
      return "SQLITE_CANTOPEN: unable to open the database file: check the path";
    case 15:
      return "SQLITE_PROTOCOL: locking protocol error";
    case 17:
      return "SQLITE_SCHEMA: the database schema changed";
    case 18:
      return "SQLITE_TOOBIG: a string or blob is too big";
    case 19:
      return "SQLITE_CONSTRAINT: a constraint failed: the write was rejected, do not retry";
    case 20:
      return "SQLITE_MISMATCH: data type mismatch";
    case 21:
      return "SQLITE_MISUSE: the SQLite library was misused";
    case 23:
      return "SQLITE_AUTH: authorization denied";
    case 25:
      return "SQLITE_RANGE: a bind index is out of range";
    case 26:
      return "SQLITE_NOTADB: the file is not a database";
    default:
      return "SQLite error";
  }
}

class sqlite_category_impl final : public boost::system::error_category {
 public:
  constexpr sqlite_category_impl() noexcept
      : boost::system::error_category(0x8e1f'3c7a'5d02'4b92ull) {}
  const char* name() const noexcept override { return "fwd.sqlite"; }
  std::string message(int value) const override {
    return fmt::format("{} (extended code {})", sqlite_message(value), value);
  }
};

}  // namespace detail

/// The category of fwd::errc, named "fwd".
FWD_DECL const boost::system::error_category& fwd_category() noexcept {
  static constexpr detail::fwd_category_impl instance;
  return instance;
}

/// The category of SQLite result codes, named "fwd.sqlite"; the value is SQLite's
/// extended result code (e.g. 2067, SQLITE_CONSTRAINT_UNIQUE).
FWD_DECL const boost::system::error_category& sqlite_category() noexcept {
  static constexpr detail::sqlite_category_impl instance;
  return instance;
}

FWD_DECL error_class classify(const boost::system::error_code& ec) noexcept {
  if (ec.category() == fwd_category()) {
    switch (static_cast<errc>(ec.value())) {
      case errc::no_primary:
      case errc::not_primary:
      case errc::unreachable:
      case errc::overloaded:
      case errc::circuit_open:
        return error_class::not_sent;
      case errc::connection_lost:
      case errc::timeout:
      case errc::cancelled:
      case errc::commit_unknown:
        return error_class::maybe_executed;
      case errc::not_yet_durable:
        return error_class::committed_not_durable;
      case errc::replication_lag:
      case errc::not_confirmed:
        return error_class::unconfirmed;
      default:
        return error_class::permanent;
    }
  }
  if (ec.category() == sqlite_category()) {
    switch (ec.value() & 0xff) {
      case 5:  // SQLITE_BUSY: the transaction was rolled back, nothing applied
      case 6:  // SQLITE_LOCKED
        return error_class::not_sent;
      default:
        return error_class::permanent;
    }
  }
  const std::error_condition cond = static_cast<std::error_code>(ec).default_error_condition();
  if (cond.category() == std::generic_category()) {
    switch (static_cast<std::errc>(cond.value())) {
      case std::errc::connection_refused:
      case std::errc::host_unreachable:
      case std::errc::network_unreachable:
      case std::errc::address_not_available:
        return error_class::not_sent;
      case std::errc::connection_reset:
      case std::errc::connection_aborted:
      case std::errc::broken_pipe:
      case std::errc::timed_out:
      case std::errc::operation_canceled:
        return error_class::maybe_executed;
      default:
        break;
    }
  }
  return error_class::permanent;
}

}  // namespace fwd

// ---- end fwd/impl/error.ipp ----
#endif

// ---- end fwd/error.hpp ----
// ---- begin fwd/telemetry.hpp ----

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

// ---- end fwd/telemetry.hpp ----
// ---- begin fwd/procedure.hpp ----

// A procedure: the name and the typed signature of one write operation, declared once in
// a header every node compiles. Callers and the primary agree on it by name and by a
// fingerprint of its types; arguments and results travel as Boost.Serialization binary
// archives (fwd/detail/procedure_codec.hpp, included at the end of this file).

// ---- begin fwd/detail/procedure_signature.hpp ----

// The canonical description of a procedure's types, and its 64-bit fingerprint.
//
// Two nodes agree on a procedure when they agree on its name and on this fingerprint.
// It must be identical whichever compiler built each node, so it is computed from text
// fwd writes itself (never from typeid or __PRETTY_FUNCTION__): FNV-1a 64 over the
// canonical descriptor below. Integers are described by width and signedness (so
// `long` and `long long` agree where both are 64 bits, as their encodings do).
//
//   bool char i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 f80/f128 string monostate void
//   vector<T> map<K,V> set<T> unordered_map<K,V> unordered_set<T> array<T,N>
//   optional<T> variant<T,...> tuple<T,...> pair<A,B>
//   duration<Rep,num/den> system_time<duration<...>>
//   enum NAME:UNDERLYING   struct NAME        (NAME from fwd::type_name)
//   signature: R(A,...)

#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace fwd {

/**
 * The wire name of a user type (a struct or an enum) that appears in a procedure's
 * arguments or result. Specialise it, or give the type a static member
 * `static constexpr std::string_view fwd_type_name = "...";`:
 *
 *     template <> struct fwd::type_name<blog::post> {
 *       static constexpr std::string_view value = "blog.post";
 *     };
 *     // or, at global scope: FWD_TYPE_NAME(blog::post, "blog.post");
 *
 * The name enters the procedure's signature; the fields do not (fwd cannot see them).
 * When you change a type's layout incompatibly, change its name (e.g. "blog.post/2") so
 * that old and new nodes refuse each other's calls instead of misreading them.
 */
template <class T>
struct type_name {};

/**
 * Says that Boost.Serialization can serialise a user class through means fwd cannot
 * detect: free `serialize()` functions declared in namespace boost::serialization.
 * (A member `serialize`, `save`/`load`, or a free `serialize` found by argument-dependent
 * lookup are detected without it.)
 */
template <class T>
struct is_serializable : std::false_type {};

}  // namespace fwd

/// Names a user type for fwd's signatures; use at global scope.
#define FWD_TYPE_NAME(type, name)                   \
  template <>                                       \
  struct fwd::type_name<type> {                     \
    static constexpr std::string_view value = name; \
  }

namespace fwd::detail {

template <class T>
inline constexpr bool dependent_false = false;

template <class T, template <class...> class Template>
inline constexpr bool is_specialization_of = false;
template <template <class...> class Template, class... Ts>
inline constexpr bool is_specialization_of<Template<Ts...>, Template> = true;

template <class T>
inline constexpr bool is_std_array = false;
template <class T, std::size_t N>
inline constexpr bool is_std_array<std::array<T, N>> = true;

template <class T>
inline constexpr bool is_std_span = false;
template <class T, std::size_t N>
inline constexpr bool is_std_span<std::span<T, N>> = true;

template <class T>
inline constexpr bool is_duration = false;
template <class Rep, class Period>
inline constexpr bool is_duration<std::chrono::duration<Rep, Period>> = true;

template <class T>
inline constexpr bool is_system_time = false;
template <class Duration>
inline constexpr bool is_system_time<std::chrono::time_point<std::chrono::system_clock, Duration>> =
    true;

template <class T>
concept has_trait_name = requires {
  { std::string_view{fwd::type_name<T>::value} };
};
template <class T>
concept has_member_name = requires {
  { std::string_view{T::fwd_type_name} };
};
template <class T>
concept has_type_name = has_trait_name<T> || has_member_name<T>;

template <has_type_name T>
constexpr std::string_view user_type_name() {
  if constexpr (has_trait_name<T>) {
    return std::string_view{fwd::type_name<T>::value};
  } else {
    return std::string_view{T::fwd_type_name};
  }
}

// An archive-shaped probe: finds a user's serialize() without including Boost.
struct archive_probe {
  template <class T>
  archive_probe& operator&(T&&);
  template <class T>
  archive_probe& operator<<(T&&);
  template <class T>
  archive_probe& operator>>(T&&);
};

// Detects a member named `serialize` whatever its access (Boost's documented idiom makes
// it private with `friend class boost::serialization::access`): if T has one, naming it
// through a class that also inherits another `serialize` is ambiguous.
struct serialize_decoy {
  void serialize();
};
template <class T>
struct serialize_ambiguity : T, serialize_decoy {};
template <class T>
concept has_member_serialize_any_access =
    std::is_class_v<T> && !std::is_final_v<T> &&
    !requires { &serialize_ambiguity<T>::serialize; };

template <class T>
concept has_public_member_serialize = requires(T& t, archive_probe& ar, const unsigned int v) {
  t.serialize(ar, v);
};
template <class T>
concept has_adl_serialize = requires(T& t, archive_probe& ar, const unsigned int v) {
  serialize(ar, t, v);
};

template <class T>
concept user_serializable = fwd::is_serializable<T>::value || has_member_serialize_any_access<T> ||
                            has_public_member_serialize<T> || has_adl_serialize<T>;

// Enums with a fixed underlying type accept any value of it; fwd decodes enums by value.
template <class E>
concept enum_with_fixed_underlying_type =
    std::is_enum_v<E> && requires { E{std::underlying_type_t<E>{}}; };

/// FNV-1a 64: the fingerprint's hash. Constexpr, the same everywhere.
struct fnv1a_sink {
  std::uint64_t state = 0xcbf29ce484222325ull;
  constexpr void append(std::string_view text) {
    for (const char c : text) {
      state ^= static_cast<unsigned char>(c);
      state *= 0x100000001b3ull;
    }
  }
};

/// Collects the canonical text itself (for messages and tests).
struct text_sink {
  std::string text;
  void append(std::string_view s) { text.append(s); }
};

template <class Sink>
constexpr void append_number(Sink& sink, std::intmax_t value) {
  char digits[24] = {};
  int length = 0;
  const bool negative = value < 0;
  // Work in the negative range so that the most negative value does not overflow.
  std::intmax_t rest = negative ? value : -value;
  do {
    digits[length++] = static_cast<char>('0' - rest % 10);
    rest /= 10;
  } while (rest != 0);
  if (negative) sink.append("-");
  char text[24] = {};
  for (int i = 0; i < length; ++i) text[i] = digits[length - 1 - i];
  sink.append(std::string_view(text, static_cast<std::size_t>(length)));
}

template <class T, class Sink>
constexpr void describe(Sink& sink);

template <class... Ts, class Sink>
constexpr void describe_list(Sink& sink) {
  bool first = true;
  ((sink.append(first ? "" : ","), first = false, describe<Ts>(sink)), ...);
}

template <class T>
struct template_arguments;
template <template <class...> class Template, class... Ts>
struct template_arguments<Template<Ts...>> {
  template <class Sink>
  static constexpr void describe_all(Sink& sink) {
    describe_list<Ts...>(sink);
  }
};

// Each of these fails with a message that names what to do; the compiler's
// "required from" lines name the type.
template <class T>
constexpr void reject_unsupported() {
  if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T>) {
    static_assert(dependent_false<T>,
                  "fwd: a pointer cannot be a procedure argument or result: pass the value "
                  "(e.g. std::string instead of const char*, std::optional<T> for 'maybe')");
  } else if constexpr (is_specialization_of<T, std::basic_string_view> ||
                       is_std_span<T>) {
    static_assert(dependent_false<T>,
                  "fwd: a view (std::string_view, std::span) cannot be a procedure argument "
                  "or result: declare the owning type (std::string, std::vector<T>); callers "
                  "may still pass views where they convert");
  } else if constexpr (std::is_enum_v<T> && !has_type_name<T>) {
    static_assert(dependent_false<T>,
                  "fwd: this enum has no wire name: specialise fwd::type_name<E> with "
                  "'static constexpr std::string_view value = \"your.enum\";' or use "
                  "FWD_TYPE_NAME(E, \"your.enum\") at global scope");
  } else if constexpr (std::is_enum_v<T>) {
    static_assert(dependent_false<T>,
                  "fwd: this enum has no fixed underlying type, so not every value of it can "
                  "be decoded safely: declare it 'enum class' or give it one (enum E : int)");
  } else if constexpr (std::is_class_v<T> && !has_type_name<T>) {
    static_assert(dependent_false<T>,
                  "fwd: this type has no wire name (or is a standard type fwd does not "
                  "serialise): for your own struct, specialise fwd::type_name<T> with "
                  "'static constexpr std::string_view value = \"your.type\";', add a member "
                  "'static constexpr std::string_view fwd_type_name = \"your.type\";', or use "
                  "FWD_TYPE_NAME(T, \"your.type\") at global scope");
  } else if constexpr (std::is_class_v<T> && !user_serializable<T>) {
    static_assert(dependent_false<T>,
                  "fwd: Boost.Serialization cannot serialise this type: give it a member "
                  "'template <class Archive> void serialize(Archive& ar, unsigned) { ar & a & b; }' "
                  "(or a free serialize found by ADL); if boost::serialization has one for it, "
                  "specialise fwd::is_serializable<T> as std::true_type");
  } else if constexpr (std::is_class_v<T> && !std::is_default_constructible_v<T>) {
    static_assert(dependent_false<T>,
                  "fwd: procedure arguments and results are decoded into default-constructed "
                  "values: give this type a default constructor");
  } else {
    static_assert(dependent_false<T>,
                  "fwd: this type cannot be a procedure argument or result (supported: bool, "
                  "integers, floating point, std::string, vector, map, set, unordered_map, "
                  "unordered_set, array, optional, variant, tuple, pair, chrono durations, "
                  "system_clock time points, named enums and named structs)");
  }
}

template <class T, class Sink>
constexpr void describe(Sink& sink) {
  if constexpr (std::is_void_v<T>) {
    sink.append("void");
  } else if constexpr (std::is_same_v<T, bool>) {
    sink.append("bool");
  } else if constexpr (std::is_same_v<T, char>) {
    sink.append("char");
  } else if constexpr (std::is_integral_v<T>) {
    sink.append(std::is_signed_v<T> ? "i" : "u");
    append_number(sink, static_cast<std::intmax_t>(sizeof(T) * 8));
  } else if constexpr (std::is_floating_point_v<T>) {
    // By significand: f32, f64, f80 (x87 extended) or f128 (IEEE quadruple).
    constexpr int digits = std::numeric_limits<T>::digits;
    sink.append(digits <= 24 ? "f32" : digits <= 53 ? "f64" : digits <= 64 ? "f80" : "f128");
  } else if constexpr (std::is_enum_v<T> && has_type_name<T> && enum_with_fixed_underlying_type<T>) {
    sink.append("enum ");
    sink.append(user_type_name<T>());
    sink.append(":");
    describe<std::underlying_type_t<T>>(sink);
  } else if constexpr (std::is_same_v<T, std::string>) {
    sink.append("string");
  } else if constexpr (std::is_same_v<T, std::monostate>) {
    sink.append("monostate");
  } else if constexpr (is_specialization_of<T, std::vector>) {
    sink.append("vector<");
    describe<typename T::value_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::map>) {
    sink.append("map<");
    describe_list<typename T::key_type, typename T::mapped_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::unordered_map>) {
    sink.append("unordered_map<");
    describe_list<typename T::key_type, typename T::mapped_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::set>) {
    sink.append("set<");
    describe<typename T::key_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::unordered_set>) {
    sink.append("unordered_set<");
    describe<typename T::key_type>(sink);
    sink.append(">");
  } else if constexpr (is_std_array<T>) {
    sink.append("array<");
    describe<typename T::value_type>(sink);
    sink.append(",");
    append_number(sink, static_cast<std::intmax_t>(std::tuple_size_v<T>));
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::optional>) {
    sink.append("optional<");
    describe<typename T::value_type>(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::variant>) {
    sink.append("variant<");
    template_arguments<T>::describe_all(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::tuple>) {
    sink.append("tuple<");
    template_arguments<T>::describe_all(sink);
    sink.append(">");
  } else if constexpr (is_specialization_of<T, std::pair>) {
    sink.append("pair<");
    describe_list<typename T::first_type, typename T::second_type>(sink);
    sink.append(">");
  } else if constexpr (is_duration<T>) {
    sink.append("duration<");
    describe<typename T::rep>(sink);
    sink.append(",");
    append_number(sink, T::period::num);
    sink.append("/");
    append_number(sink, T::period::den);
    sink.append(">");
  } else if constexpr (is_system_time<T>) {
    sink.append("system_time<");
    describe<typename T::duration>(sink);
    sink.append(">");
  } else if constexpr (std::is_class_v<T> && has_type_name<T> && user_serializable<T> &&
                       std::is_default_constructible_v<T>) {
    sink.append("struct ");
    sink.append(user_type_name<T>());
  } else {
    reject_unsupported<T>();
  }
}

/// Describes a value type as it travels: references and cv-qualifiers do not matter.
template <class T, class Sink>
constexpr void describe_value(Sink& sink) {
  static_assert(!std::is_array_v<std::remove_cvref_t<T>>,
                "fwd: a C array cannot be a procedure argument or result: use std::array or "
                "std::vector");
  describe<std::remove_cvref_t<T>>(sink);
}

template <class Signature>
struct signature_traits;

template <class R, class... Args>
struct signature_traits<R(Args...)> {
  template <class Sink>
  static constexpr void describe_signature(Sink& sink) {
    describe_value<R>(sink);
    sink.append("(");
    bool first = true;
    ((sink.append(first ? "" : ","), first = false, describe_value<Args>(sink)), ...);
    sink.append(")");
  }
};

/// The fingerprint of a signature `R(Args...)`: FNV-1a 64 of its canonical text.
template <class Signature>
constexpr std::uint64_t signature_fingerprint() {
  fnv1a_sink sink;
  signature_traits<Signature>::describe_signature(sink);
  return sink.state;
}

/// The canonical text of a signature, e.g. "i64(string,vector<u8>)".
template <class Signature>
std::string signature_text() {
  text_sink sink;
  signature_traits<Signature>::describe_signature(sink);
  return std::move(sink.text);
}

}  // namespace fwd::detail

// ---- end fwd/detail/procedure_signature.hpp ----

#include <fmt/format.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>

namespace fwd {

namespace detail {

template <class Parameters, class Given>
inline constexpr bool arguments_convert = false;
template <class... P, class... G>
  requires(sizeof...(P) == sizeof...(G))
inline constexpr bool arguments_convert<std::tuple<P...>, std::tuple<G...>> =
    (std::convertible_to<G, std::decay_t<P>> && ...);

/// The longest procedure name fwd accepts, in bytes.
inline constexpr std::size_t max_procedure_name = 255;

/// The blocking call forms' exception: its diagnostics are "call to <procedure>", then
/// the operation's detail when it has one.
inline fwd::error call_failure(const boost::system::error_code& ec, std::string_view procedure,
                               const diagnostics& detail) {
  diagnostics thrown;
  thrown.assign(detail.message().empty() ? fmt::format("call to {}", procedure)
                                         : fmt::format("call to {}: {}", procedure, detail.message()));
  return fwd::error(ec, std::move(thrown));
}

}  // namespace detail

template <class Signature>
class procedure;

/**
 * A remote procedure with result `R` and parameters `Args...`, identified by its name:
 *
 *     inline constexpr fwd::procedure<std::int64_t(std::string)> add_tag{"blog.add_tag"};
 *
 * Parameter and result types must be serialisable: bool, integers, floating point,
 * std::string, std::vector, std::map, std::set, std::unordered_map, std::unordered_set,
 * std::array, std::optional, std::variant, std::tuple, std::pair, std::chrono durations,
 * system_clock time points, and enums and structs that have a wire name
 * (fwd::type_name) and, for structs, a Boost `serialize()`. Anything else fails to
 * compile here, with a message that says what to do. `R` may be `void`.
 *
 * Parameters are passed by value on the wire: `void(const std::string&)` and
 * `void(std::string)` are the same signature.
 */
template <class R, class... Args>
class procedure<R(Args...)> {
  static_assert(!std::is_reference_v<R>,
                "fwd: a procedure returns a value, not a reference: declare R without '&'");
  // Checks every type (each failure says why) and computes the fingerprint.
  static_assert((detail::signature_fingerprint<R(Args...)>(), true));

 public:
  /// The result type (may be void).
  using result_type = R;
  /// The decoded arguments, as the remote side receives them.
  using arguments = std::tuple<std::decay_t<Args>...>;
  /// The declared signature.
  using signature_type = R(Args...);

  /// True when a call with arguments of types `Given...` compiles: same count, and each
  /// converts to its parameter.
  template <class... Given>
  static constexpr bool accepts = detail::arguments_convert<std::tuple<Args...>, std::tuple<Given...>>;

  /// A procedure named `name` (1 to 255 bytes; the name is not copied, so give a string
  /// that outlives the procedure, such as a literal). In a constant expression, an invalid
  /// name fails to compile; at run time it throws fwd::error(errc::bad_argument).
  constexpr explicit procedure(std::string_view name) : name_(name) {
    if (name.empty() || name.size() > detail::max_procedure_name) {
      throw error(make_error_code(errc::bad_argument),
                  "a procedure name must be 1 to 255 bytes long");
    }
  }

  /// The name callers and servers match on.
  constexpr std::string_view name() const noexcept { return name_; }

  /// The fingerprint of the signature: FNV-1a 64 of its canonical text. The same on
  /// every compiler and platform with the same type widths.
  static constexpr std::uint64_t signature() noexcept { return fingerprint_; }

  /// The canonical text the fingerprint hashes, e.g. "i64(string)": for messages.
  static std::string signature_text() { return detail::signature_text<R(Args...)>(); }

 private:
  static constexpr std::uint64_t fingerprint_ = detail::signature_fingerprint<R(Args...)>();
  std::string_view name_;
};

/// Satisfied when procedure `Proc` can be called with arguments of types `Given...`.
template <class Proc, class... Given>
concept accepts_arguments = Proc::template accepts<Given...>;

}  // namespace fwd

// ---- begin fwd/detail/procedure_codec.hpp ----

// Encoding and decoding a procedure's arguments and result: the bytes a call carries.
//
// Arguments are written one after another into fwd's output archive (no tuple framing);
// a result is one value; a void result is no bytes at all. Decoding never trusts its
// input: any failure (truncated bytes, a count larger than the input, an invalid bool
// or variant index, bytes left over, an exception from a user's serialize()) is reported
// as errc::protocol_error, never a crash, never an allocation larger than the input
// allows.
//
// Values of the common types (arithmetic, enums, strings, vectors of arithmetic, and
// tuples, optionals and variants of these: codec_fast_path.hpp) are written and read
// without a Boost archive, to the same bytes and with the same checks; the others go
// through fwd's archives. A call's arguments take the fast path when all of them can.

// ---- begin fwd/detail/codec_fast_path.hpp ----

// The codec's fast path: the values whose Boost binary encoding is fixed and simple,
// written and read without constructing an archive.
//
// A Boost archive costs far more to construct than a small payload costs to encode (it
// allocates its state and builds a std::locale with an extra facet, even with
// no_codecvt), and a call constructs four of them. For the types below, fwd's archives
// write nothing but the values themselves, in native byte order, with no class
// information and no tracking, so the bytes are known:
//
//   bool                     1 byte, 0 or 1 (reading anything else is an error)
//   char, signed/unsigned char, short, int, long, long long (and unsigned), float, double
//                            sizeof(T) bytes, native order
//   enum (fixed underlying)  its underlying type (fwd's archives write enums so)
//   std::string              size as std::size_t, then the bytes
//   std::vector<U>, U one of the arithmetic types above
//                            count as std::size_t, then the elements (bools one byte each)
//   std::tuple<Ts...>        the elements in order
//   std::optional<T>         bool engaged, then the value if engaged
//   std::variant<Ts...>      the index as std::uint32_t, then the alternative
//   std::monostate           nothing
//   std::chrono::duration    its count; a time_point: its duration since the epoch
//
// These are exactly the types whose Boost implementation level is `primitive_type` or
// `object_serializable` (Boost's collection traits give std::vector of these element
// types that level), so an archive writes no preamble for them, the first time or any
// other. Anything else (std::map, std::array, std::pair, vectors of other types, user
// structs, long double, whose padding bytes Boost copies) takes the archive path.
//
// Reading is exactly as strict as fwd's input archive, in the same order, and fails with
// the same boost::archive::archive_exception (so with the same message): a truncated
// value, a count or length whose elements cannot fit in the bytes left (refused before
// anything is allocated), a bool that is not 0 or 1, a variant index out of range.
// tests/unit/codec_fast_path_test.cpp compares both paths byte for byte and error for
// error.

#include <boost/archive/archive_exception.hpp>
#include <boost/serialization/throw_exception.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace fwd::detail {

/// Reads values from bytes someone else owns; every failure is an archive_exception.
class fast_reader {
 public:
  explicit fast_reader(std::string_view bytes) noexcept
      : next_(bytes.data()), end_(bytes.data() + bytes.size()) {}

  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - next_); }

  /// Copies `size` bytes out, or fails as a short read of Boost's does.
  void read(void* out, std::size_t size) {
    if (size > remaining()) fail(nullptr);
    if (size > 0) std::memcpy(out, next_, size);
    next_ += size;
  }

  const char* take(std::size_t size) {
    if (size > remaining()) fail(nullptr);
    const char* at = next_;
    next_ += size;
    return at;
  }

  // The exception fwd's input_archive throws (what() is "input stream error[-what]").
  [[noreturn]] static void fail(const char* what) {
    boost::serialization::throw_exception(
        boost::archive::archive_exception(boost::archive::archive_exception::input_stream_error, what));
  }

 private:
  const char* next_;
  const char* end_;
};

template <class T>
inline constexpr bool fast_arithmetic =
    std::is_same_v<T, bool> || std::is_same_v<T, char> || std::is_same_v<T, signed char> ||
    std::is_same_v<T, unsigned char> || std::is_same_v<T, short> || std::is_same_v<T, unsigned short> ||
    std::is_same_v<T, int> || std::is_same_v<T, unsigned int> || std::is_same_v<T, long> ||
    std::is_same_v<T, unsigned long> || std::is_same_v<T, long long> ||
    std::is_same_v<T, unsigned long long> || std::is_same_v<T, float> || std::is_same_v<T, double>;

static_assert(sizeof(bool) == 1, "fwd's codec writes bools as one byte");

/// How the fast path encodes T; `enabled` is false for types it leaves to the archives.
/// `depth` bounds the nesting (deeply nested types stay with the archives, whose input
/// side counts nesting).
template <class T>
struct fast_codec {
  static constexpr bool enabled = false;
  static constexpr int depth = 0;
};

template <class T>
  requires fast_arithmetic<T>
struct fast_codec<T> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1;
  static constexpr std::size_t size(const T& /*value*/) noexcept { return sizeof(T); }
  static void write(char*& out, const T& value) noexcept {
    std::memcpy(out, &value, sizeof(T));
    out += sizeof(T);
  }
  static void read(fast_reader& in, T& value) {
    if constexpr (std::is_same_v<T, bool>) {
      unsigned char byte = 0;
      in.read(&byte, 1);
      if (byte > 1) fast_reader::fail("invalid bool");
      value = byte != 0;
    } else {
      in.read(&value, sizeof(T));
    }
  }
};

template <class E>
  requires(std::is_enum_v<E> && fast_arithmetic<std::underlying_type_t<E>> &&
           !std::is_same_v<std::underlying_type_t<E>, bool>)
struct fast_codec<E> {
  using underlying = std::underlying_type_t<E>;
  static constexpr bool enabled = true;
  static constexpr int depth = 1;
  static constexpr std::size_t size(const E& /*value*/) noexcept { return sizeof(underlying); }
  static void write(char*& out, const E& value) noexcept {
    fast_codec<underlying>::write(out, static_cast<underlying>(value));
  }
  static void read(fast_reader& in, E& value) {
    underlying raw{};
    fast_codec<underlying>::read(in, raw);
    value = static_cast<E>(raw);
  }
};

template <>
struct fast_codec<std::string> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1;
  static std::size_t size(const std::string& value) noexcept { return sizeof(std::size_t) + value.size(); }
  static void write(char*& out, const std::string& value) noexcept {
    fast_codec<std::size_t>::write(out, value.size());
    if (!value.empty()) std::memcpy(out, value.data(), value.size());
    out += value.size();
  }
  static void read(fast_reader& in, std::string& value) {
    std::size_t size = 0;
    in.read(&size, sizeof(size));
    if (size > in.remaining()) fast_reader::fail("string length exceeds the input");
    value.assign(in.take(size), size);
  }
};

template <class U>
  requires fast_arithmetic<U>
struct fast_codec<std::vector<U>> {
  static constexpr bool enabled = true;
  static constexpr int depth = 2;
  static std::size_t size(const std::vector<U>& value) noexcept {
    return sizeof(std::size_t) + value.size() * sizeof(U);
  }
  static void write(char*& out, const std::vector<U>& value) noexcept {
    fast_codec<std::size_t>::write(out, value.size());
    if constexpr (std::is_same_v<U, bool>) {
      for (const bool element : value) *out++ = element ? '\1' : '\0';
    } else {
      if (!value.empty()) std::memcpy(out, value.data(), value.size() * sizeof(U));
      out += value.size() * sizeof(U);
    }
  }
  static void read(fast_reader& in, std::vector<U>& value) {
    std::size_t count = 0;
    in.read(&count, sizeof(count));
    // As the archive: the count's elements must fit in the bytes left.
    if (count > in.remaining() / sizeof(U)) fast_reader::fail("collection size exceeds the input");
    if constexpr (std::is_same_v<U, bool>) {
      value.resize(count);
      for (std::size_t i = 0; i < count; ++i) {
        bool element = false;
        fast_codec<bool>::read(in, element);
        value[i] = element;
      }
    } else {
      const char* bytes = in.take(count * sizeof(U));
      value.resize(count);
      if (count > 0) std::memcpy(value.data(), bytes, count * sizeof(U));
    }
  }
};

template <class... Ts>
  requires(fast_codec<Ts>::enabled && ...)
struct fast_codec<std::tuple<Ts...>> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1 + std::max({0, fast_codec<Ts>::depth...});
  static std::size_t size(const std::tuple<Ts...>& value) noexcept {
    return std::apply([](const auto&... element) { return (std::size_t{0} + ... + fast_codec<Ts>::size(element)); },
                      value);
  }
  static void write(char*& out, const std::tuple<Ts...>& value) {
    std::apply([&out](const auto&... element) { (fast_codec<Ts>::write(out, element), ...); }, value);
  }
  static void read(fast_reader& in, std::tuple<Ts...>& value) {
    std::apply([&in](auto&... element) { (fast_codec<Ts>::read(in, element), ...); }, value);
  }
};

template <class T>
  requires fast_codec<T>::enabled
struct fast_codec<std::optional<T>> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1 + fast_codec<T>::depth;
  static std::size_t size(const std::optional<T>& value) noexcept {
    return 1 + (value ? fast_codec<T>::size(*value) : 0);
  }
  static void write(char*& out, const std::optional<T>& value) {
    fast_codec<bool>::write(out, value.has_value());
    if (value) fast_codec<T>::write(out, *value);
  }
  static void read(fast_reader& in, std::optional<T>& value) {
    bool engaged = false;
    fast_codec<bool>::read(in, engaged);
    if (!engaged) {
      value.reset();
      return;
    }
    fast_codec<T>::read(in, value.emplace());
  }
};

template <>
struct fast_codec<std::monostate> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1;
  static constexpr std::size_t size(const std::monostate& /*value*/) noexcept { return 0; }
  static void write(char*& /*out*/, const std::monostate& /*value*/) noexcept {}
  static void read(fast_reader& /*in*/, std::monostate& /*value*/) noexcept {}
};

template <class... Ts>
  requires(fast_codec<Ts>::enabled && ...)
struct fast_codec<std::variant<Ts...>> {
  static constexpr bool enabled = true;
  static constexpr int depth = 1 + std::max({0, fast_codec<Ts>::depth...});
  static std::size_t size(const std::variant<Ts...>& value) {
    fail_if_valueless(value);
    return sizeof(std::uint32_t) +
           std::visit([](const auto& alternative) {
             return fast_codec<std::remove_cvref_t<decltype(alternative)>>::size(alternative);
           }, value);
  }
  static void write(char*& out, const std::variant<Ts...>& value) {
    fail_if_valueless(value);
    fast_codec<std::uint32_t>::write(out, static_cast<std::uint32_t>(value.index()));
    std::visit([&out](const auto& alternative) {
      fast_codec<std::remove_cvref_t<decltype(alternative)>>::write(out, alternative);
    }, value);
  }
  static void read(fast_reader& in, std::variant<Ts...>& value) {
    std::uint32_t index = 0;
    fast_codec<std::uint32_t>::read(in, index);
    if (index >= sizeof...(Ts)) fast_reader::fail("std::variant alternative index out of range");
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (void)((index == I
                  ? (fast_codec<std::variant_alternative_t<I, std::variant<Ts...>>>::read(
                         in, value.template emplace<I>()),
                     true)
                  : false) ||
             ...);
    }(std::index_sequence_for<Ts...>{});
  }

 private:
  // What the archive's save of a variant throws.
  static void fail_if_valueless(const std::variant<Ts...>& value) {
    if (value.valueless_by_exception()) {
      boost::serialization::throw_exception(boost::archive::archive_exception(
          boost::archive::archive_exception::output_stream_error,
          "a valueless std::variant cannot be serialised"));
    }
  }
};

template <class Rep, class Period>
  requires fast_arithmetic<Rep>
struct fast_codec<std::chrono::duration<Rep, Period>> {
  using duration = std::chrono::duration<Rep, Period>;
  static constexpr bool enabled = true;
  static constexpr int depth = 2;
  static constexpr std::size_t size(const duration& /*value*/) noexcept { return sizeof(Rep); }
  static void write(char*& out, const duration& value) noexcept { fast_codec<Rep>::write(out, value.count()); }
  static void read(fast_reader& in, duration& value) {
    Rep count{};
    fast_codec<Rep>::read(in, count);
    value = duration(count);
  }
};

template <class Clock, class Duration>
  requires fast_codec<Duration>::enabled
struct fast_codec<std::chrono::time_point<Clock, Duration>> {
  using time_point = std::chrono::time_point<Clock, Duration>;
  static constexpr bool enabled = true;
  static constexpr int depth = 1 + fast_codec<Duration>::depth;
  static constexpr std::size_t size(const time_point& value) noexcept {
    return fast_codec<Duration>::size(value.time_since_epoch());
  }
  static void write(char*& out, const time_point& value) noexcept {
    fast_codec<Duration>::write(out, value.time_since_epoch());
  }
  static void read(fast_reader& in, time_point& value) {
    Duration since_epoch{};
    fast_codec<Duration>::read(in, since_epoch);
    value = time_point(since_epoch);
  }
};

/// True when every one of `Ts` takes the fast path (and none nests deeply).
template <class... Ts>
inline constexpr bool fast_codable = ((fast_codec<Ts>::enabled && fast_codec<Ts>::depth <= 32) && ...);

/// The bytes of `values...`, one after another: what an archive writes for them.
template <class... Ts>
  requires fast_codable<Ts...>
std::string fast_encode(const Ts&... values) {
  const std::size_t size = (std::size_t{0} + ... + fast_codec<Ts>::size(values));
  // Written in place, after a single allocation.
  std::string out;
  out.resize(size);
  char* next = out.data();
  (fast_codec<Ts>::write(next, values), ...);
  (void)next;  // unused when there are no values
  return out;
}

/// Reads `values...` in order from `in` (throws archive_exception on bad input).
template <class... Ts>
  requires fast_codable<Ts...>
void fast_decode(fast_reader& in, Ts&... values) {
  (fast_codec<Ts>::read(in, values), ...);
}

}  // namespace fwd::detail

// ---- end fwd/detail/codec_fast_path.hpp ----
// ---- begin fwd/detail/serialization.hpp ----

// The Boost.Serialization side of fwd's procedures:
//
// - serialisation of std::tuple, std::optional, std::variant, std::monostate,
//   std::chrono::duration and system_clock time points, which Boost 1.81 lacks;
// - fwd's two archives, Boost binary archives over a byte buffer, with the checks that
//   make decoding a peer's bytes safe: a collection or string may not claim more
//   elements than the bytes left can hold (Boost would allocate first); collections
//   reserve storage only for elements the bytes left can hold, and only within one
//   budget shared by the whole payload (a few bytes per byte of input), past which they
//   grow as their elements are actually read (Boost reserves every claimed element, at
//   every level of nesting, and rehashes to any bucket count it is sent); a bool must
//   be 0 or 1 (Boost asserts), nesting is bounded (no stack exhaustion), enums travel
//   as their underlying type (Boost narrows them to int) and are read back without UB.
//   What a payload that decodes allocates then depends only on what it holds.
// - archive_version(), which both ends of a connection must agree on.
//
// The archives are written without Boost's header (no_header): the version check is the
// handshake's job, so every call's payload carries only the values.

#include <boost/archive/basic_archive.hpp>
#include <boost/archive/binary_iarchive_impl.hpp>
#include <boost/archive/binary_oarchive_impl.hpp>
#include <boost/archive/detail/register_archive.hpp>
#include <boost/archive/archive_exception.hpp>
#include <boost/serialization/array.hpp>
#include <boost/serialization/collection_size_type.hpp>
#include <boost/serialization/collections_load_imp.hpp>
#include <boost/serialization/detail/stack_constructor.hpp>
#include <boost/serialization/item_version_type.hpp>
#include <boost/serialization/library_version_type.hpp>
#include <boost/serialization/level.hpp>
#include <boost/serialization/map.hpp>
#include <boost/serialization/nvp.hpp>
#include <boost/serialization/set.hpp>
#include <boost/serialization/split_free.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/tracking.hpp>
#include <boost/serialization/archive_input_unordered_map.hpp>
#include <boost/serialization/archive_input_unordered_set.hpp>
#include <boost/serialization/unordered_map.hpp>
#include <boost/serialization/unordered_set.hpp>
#include <boost/serialization/utility.hpp>
#include <boost/serialization/vector.hpp>

// The archive implementations are templates on the most derived archive; fwd's archives
// instantiate them here (implicitly) so that fwd stays header-only.
#include <boost/archive/impl/archive_serializer_map.ipp>
#include <boost/archive/impl/basic_binary_iarchive.ipp>
#include <boost/archive/impl/basic_binary_iprimitive.ipp>
#include <boost/archive/impl/basic_binary_oarchive.ipp>
#include <boost/archive/impl/basic_binary_oprimitive.ipp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <streambuf>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

// ---- begin fwd/detail/serialization_std.hpp ----

// Serialisation of the standard types Boost 1.81 lacks: std::tuple, std::optional,
// std::variant, std::monostate, std::chrono::duration and time points. Part of
// serialization.hpp, which every user of fwd's archives includes.

#include <boost/archive/archive_exception.hpp>
#include <boost/serialization/level.hpp>
#include <boost/serialization/throw_exception.hpp>
#include <boost/serialization/nvp.hpp>
#include <boost/serialization/split_free.hpp>
#include <boost/serialization/tracking.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

// ---------------------------------------------------------------------------------------
// Standard types Boost 1.81 does not serialise. Declared in boost::serialization, where
// Boost's serialize_adl finds them (its version_type argument makes that namespace
// associated). None is tracked and none writes class information: they are values.

namespace boost::serialization {

template <class Archive, class... Ts>
void serialize(Archive& ar, std::tuple<Ts...>& t, const unsigned int /*version*/) {
  std::apply([&ar](auto&... element) { ((ar & element), ...); }, t);
}

template <class Archive, class T>
void save(Archive& ar, const std::optional<T>& t, const unsigned int /*version*/) {
  const bool engaged = t.has_value();
  ar << engaged;
  if (engaged) ar << *t;
}

template <class Archive, class T>
void load(Archive& ar, std::optional<T>& t, const unsigned int /*version*/) {
  bool engaged = false;
  ar >> engaged;
  if (!engaged) {
    t.reset();
    return;
  }
  ar >> t.emplace();
}

template <class Archive, class T>
void serialize(Archive& ar, std::optional<T>& t, const unsigned int version) {
  split_free(ar, t, version);
}

template <class Archive, class... Ts>
void save(Archive& ar, const std::variant<Ts...>& v, const unsigned int /*version*/) {
  static_assert(sizeof...(Ts) < 0xffff'ffffu, "variant has too many alternatives");
  if (v.valueless_by_exception()) {
    boost::serialization::throw_exception(boost::archive::archive_exception(
        boost::archive::archive_exception::output_stream_error,
        "a valueless std::variant cannot be serialised"));
  }
  const auto index = static_cast<std::uint32_t>(v.index());
  ar << index;
  std::visit([&ar](const auto& alternative) { ar << alternative; }, v);
}

template <class Archive, class... Ts>
void load(Archive& ar, std::variant<Ts...>& v, const unsigned int /*version*/) {
  std::uint32_t index = 0;
  ar >> index;
  if (index >= sizeof...(Ts)) {
    boost::serialization::throw_exception(boost::archive::archive_exception(
        boost::archive::archive_exception::input_stream_error,
        "std::variant alternative index out of range"));
  }
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (void)((index == I ? (ar >> v.template emplace<I>(), true) : false) || ...);
  }(std::index_sequence_for<Ts...>{});
}

template <class Archive, class... Ts>
void serialize(Archive& ar, std::variant<Ts...>& v, const unsigned int version) {
  split_free(ar, v, version);
}

template <class Archive>
void serialize(Archive& /*ar*/, std::monostate& /*m*/, const unsigned int /*version*/) {}

template <class Archive, class Rep, class Period>
void serialize(Archive& ar, std::chrono::duration<Rep, Period>& d, const unsigned int /*version*/) {
  Rep count = d.count();
  ar & count;
  d = std::chrono::duration<Rep, Period>(count);
}

template <class Archive, class Clock, class Duration>
void serialize(Archive& ar, std::chrono::time_point<Clock, Duration>& t,
               const unsigned int /*version*/) {
  Duration since_epoch = t.time_since_epoch();
  ar & since_epoch;
  t = std::chrono::time_point<Clock, Duration>(since_epoch);
}

// Boost reads implementation_level<T>::value and tracking_level<T>::value; partial
// specialisations for the standard templates above make them plain values.
template <class... Ts>
struct implementation_level<std::tuple<Ts...>> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <class T>
struct implementation_level<std::optional<T>> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <class... Ts>
struct implementation_level<std::variant<Ts...>> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <class Rep, class Period>
struct implementation_level<std::chrono::duration<Rep, Period>> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <class Clock, class Duration>
struct implementation_level<std::chrono::time_point<Clock, Duration>>
    : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};

template <>
struct implementation_level<std::monostate> : mpl::int_<object_serializable> {
  typedef mpl::integral_c_tag tag;
};
template <>
struct tracking_level<std::monostate> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};

template <class... Ts>
struct tracking_level<std::tuple<Ts...>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};
template <class T>
struct tracking_level<std::optional<T>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};
template <class... Ts>
struct tracking_level<std::variant<Ts...>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};
template <class Rep, class Period>
struct tracking_level<std::chrono::duration<Rep, Period>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};
template <class Clock, class Duration>
struct tracking_level<std::chrono::time_point<Clock, Duration>> : mpl::int_<track_never> {
  typedef mpl::integral_c_tag tag;
};

}  // namespace boost::serialization

// ---- end fwd/detail/serialization_std.hpp ----

namespace fwd::detail {

/// Boost's archive library version. Two nodes can exchange procedure payloads only when
/// this (and the byte order) is equal on both: the handshake compares it.
inline std::uint32_t archive_version() noexcept {
  return static_cast<std::uint32_t>(boost::archive::BOOST_ARCHIVE_VERSION());
}

/// A read-only streambuf over bytes someone else owns; knows how many remain.
class input_bytes final : public std::streambuf {
 public:
  explicit input_bytes(std::string_view bytes) {
    char* begin = const_cast<char*>(bytes.data());  // never written: get area only
    setg(begin, begin, begin + bytes.size());
  }
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(egptr() - gptr()); }
};

/// A streambuf that appends to a std::string.
class output_bytes final : public std::streambuf {
 public:
  explicit output_bytes(std::string& out) : out_(out) {}

 protected:
  int_type overflow(int_type c) override {
    if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
    out_.push_back(traits_type::to_char_type(c));
    return c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    out_.append(s, static_cast<std::size_t>(n));
    return n;
  }

 private:
  std::string& out_;
};

/// The flags both archives use: no header (the handshake checks versions), no locale.
inline constexpr unsigned archive_flags = boost::archive::no_header | boost::archive::no_codecvt;

/// Nesting deeper than this (in archive operations, a few per nested value) is refused.
inline constexpr int max_archive_depth = 512;

/// Storage fwd's input archive lets collections reserve before their elements are read,
/// per byte of input, in total over the whole payload (nested collections share it).
inline constexpr std::size_t max_reserve_per_input_byte = 2;

/// fwd's output archive: Boost's binary format, enums as their underlying type.
class output_archive final
    : public boost::archive::binary_oarchive_impl<output_archive, char, std::char_traits<char>> {
  using base = boost::archive::binary_oarchive_impl<output_archive, char, std::char_traits<char>>;
  friend class boost::archive::detail::interface_oarchive<output_archive>;
  friend class boost::archive::basic_binary_oarchive<output_archive>;
  friend class boost::archive::save_access;
  friend class boost::archive::basic_binary_oprimitive<output_archive, char, std::char_traits<char>>;

 public:
  explicit output_archive(std::streambuf& out) : base(out, archive_flags) { init(archive_flags); }

 private:
  template <class T>
  void save_override(T& t) {
    if constexpr (std::is_enum_v<std::remove_cv_t<T>>) {
      const auto value = static_cast<std::underlying_type_t<std::remove_cv_t<T>>>(t);
      base::save_override(value);
    } else {
      base::save_override(t);
    }
  }
};

/// fwd's input archive: reads what output_archive writes, and treats its input as
/// untrusted (see the file comment). Every failure is an exception.
class input_archive final
    : public boost::archive::binary_iarchive_impl<input_archive, char, std::char_traits<char>> {
  using base = boost::archive::binary_iarchive_impl<input_archive, char, std::char_traits<char>>;
  using primitive = boost::archive::basic_binary_iprimitive<input_archive, char, std::char_traits<char>>;
  friend class boost::archive::detail::interface_iarchive<input_archive>;
  friend class boost::archive::basic_binary_iarchive<input_archive>;
  friend class boost::archive::load_access;
  friend primitive;

 public:
  explicit input_archive(input_bytes& in)
      : base(in, archive_flags), in_(in), reserve_budget_(reserve_budget_for(in.remaining())) {
    init(archive_flags);
  }

  /// Bytes not yet read.
  std::size_t remaining() const noexcept { return in_.remaining(); }

  /// Takes `count * element_size` bytes from the reserve budget, the storage every
  /// collection of this payload may reserve before its elements are read; false (and
  /// nothing taken) when they do not fit: that collection grows as it reads instead.
  bool take_reserve(std::size_t count, std::size_t element_size) noexcept {
    if (element_size == 0 || count > reserve_budget_ / element_size) return false;
    reserve_budget_ -= count * element_size;
    return true;
  }

  /// Reads a std::size_t as Boost writes a collection size, without checking it against
  /// the input (for sizes that are hints, not counts of what follows).
  std::size_t read_size() {
    std::size_t size = 0;
    load_binary(&size, sizeof(size));
    return size;
  }

 private:
  [[noreturn]] static void fail(const char* what) {
    boost::serialization::throw_exception(
        boost::archive::archive_exception(boost::archive::archive_exception::input_stream_error, what));
  }

  // Counts nesting on the way in, so that deeply nested garbage cannot exhaust the stack.
  struct depth_guard {
    explicit depth_guard(int& depth) : depth_(depth) {
      if (++depth_ > max_archive_depth) {
        --depth_;
        fail("values are nested too deeply");
      }
    }
    ~depth_guard() { --depth_; }
    depth_guard(const depth_guard&) = delete;
    depth_guard& operator=(const depth_guard&) = delete;
    int& depth_;
  };

  template <class T>
  void load_override(T& t) {
    depth_guard guard(depth_);
    if constexpr (std::is_enum_v<T>) {
      // Only enums with a fixed underlying type reach here (procedure.hpp checks it), so
      // every value of the underlying type is a valid enum value.
      std::underlying_type_t<T> value{};
      base::load_override(value);
      t = static_cast<T>(value);
    } else {
      base::load_override(t);
    }
  }

  // A count is at most the bytes left: Boost resizes before it reads the elements.
  void load_override(boost::serialization::collection_size_type& t) {
    base::load_override(t);
    if (static_cast<std::size_t>(t) > remaining()) fail("collection size exceeds the input");
  }

  using primitive::load;

  void load(bool& t) {
    unsigned char byte = 0;
    load_binary(&byte, 1);
    if (byte > 1) fail("invalid bool");
    t = byte != 0;
  }

  void load(std::string& s) {
    std::size_t size = 0;
    load_binary(&size, sizeof(size));
    if (size > remaining()) fail("string length exceeds the input");
    s.resize(size);
    if (size > 0) load_binary(s.data(), size);
  }

  static std::size_t reserve_budget_for(std::size_t input) noexcept {
    return input > std::size_t(-1) / max_reserve_per_input_byte ? std::size_t(-1) : input * max_reserve_per_input_byte;
  }

  input_bytes& in_;
  std::size_t reserve_budget_;
  int depth_ = 0;
};

// The fewest bytes fwd's archives write for a value of type T: a lower bound that makes a
// peer's count checkable against the bytes left before anything is allocated. 0 for types
// whose encoding fwd does not know (user types may write nothing at all).
template <class T>
struct min_encoded_size : std::integral_constant<std::size_t, 0> {};
template <class T>
  requires std::is_arithmetic_v<T>
struct min_encoded_size<T> : std::integral_constant<std::size_t, sizeof(T)> {};
template <class T>
  requires std::is_enum_v<T>
struct min_encoded_size<T> : std::integral_constant<std::size_t, sizeof(std::underlying_type_t<T>)> {};
// Strings and collections: their count (a std::size_t) at least.
template <class C, class Tr, class A>
struct min_encoded_size<std::basic_string<C, Tr, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class U, class A>
struct min_encoded_size<std::vector<U, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class V, class C, class A>
struct min_encoded_size<std::map<K, V, C, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class V, class C, class A>
struct min_encoded_size<std::multimap<K, V, C, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class C, class A>
struct min_encoded_size<std::set<K, C, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class C, class A>
struct min_encoded_size<std::multiset<K, C, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class V, class H, class E, class A>
struct min_encoded_size<std::unordered_map<K, V, H, E, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class V, class H, class E, class A>
struct min_encoded_size<std::unordered_multimap<K, V, H, E, A>>
    : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class H, class E, class A>
struct min_encoded_size<std::unordered_set<K, H, E, A>> : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class K, class H, class E, class A>
struct min_encoded_size<std::unordered_multiset<K, H, E, A>>
    : std::integral_constant<std::size_t, sizeof(std::size_t)> {};
template <class T>
struct min_encoded_size<std::optional<T>> : std::integral_constant<std::size_t, 1> {};  // the flag
template <class... Ts>
struct min_encoded_size<std::variant<Ts...>> : std::integral_constant<std::size_t, sizeof(std::uint32_t)> {};
template <class... Ts>
struct min_encoded_size<std::tuple<Ts...>>
    : std::integral_constant<std::size_t, (std::size_t{0} + ... + min_encoded_size<std::remove_cv_t<Ts>>::value)> {};
template <class A, class B>
struct min_encoded_size<std::pair<A, B>>
    : std::integral_constant<std::size_t, min_encoded_size<std::remove_cv_t<A>>::value +
                                              min_encoded_size<std::remove_cv_t<B>>::value> {};
template <class Rep, class Period>
struct min_encoded_size<std::chrono::duration<Rep, Period>> : min_encoded_size<Rep> {};
template <class Clock, class Duration>
struct min_encoded_size<std::chrono::time_point<Clock, Duration>> : min_encoded_size<Duration> {};

// Checks a peer's count of T elements against the bytes left: each element takes at
// least min_encoded_size<T> bytes (the archive already checked count <= bytes left).
template <class T>
void check_count(const input_archive& ar, std::size_t count) {
  constexpr std::size_t min = min_encoded_size<std::remove_cv_t<T>>::value;
  if constexpr (min > 1) {
    if (count > ar.remaining() / min) {
      boost::serialization::throw_exception(boost::archive::archive_exception(
          boost::archive::archive_exception::input_stream_error, "collection size exceeds the input"));
    }
  }
}

// How many T elements the bytes left can hold at most (an upper bound).
template <class T>
std::size_t elements_that_fit(const input_archive& ar) {
  constexpr std::size_t min = min_encoded_size<std::remove_cv_t<T>>::value;
  return min > 1 ? ar.remaining() / min : ar.remaining();
}

// A vector of non-primitive elements (strings, structs, containers), read by fwd's input
// archive; found by ADL from Boost's vector load, and more specialised than Boost's own.
// Boost reserves `count` elements before reading one, and a nested vector does the same
// inside the first element, and so on: a 1 MiB frame of vectors nested 170 deep made it
// reserve gigabytes. Here storage is reserved up front only for the elements the bytes
// left can hold, and only while the archive's reserve budget (a few bytes of storage per
// byte of input, shared by every collection in the payload) lasts; past that the vector
// grows as its elements are actually read, so memory follows what the input holds.
template <class U, class Allocator>
void load(input_archive& ar, std::vector<U, Allocator>& t, const unsigned int /*version*/,
          boost::mpl::false_ /*not bitwise*/) {
  boost::serialization::collection_size_type count;
  boost::serialization::item_version_type item_version(0);
  ar >> BOOST_SERIALIZATION_NVP(count);
  if (boost::serialization::library_version_type(3) < ar.get_library_version()) {
    ar >> BOOST_SERIALIZATION_NVP(item_version);
  }
  const std::size_t n = count;
  check_count<U>(ar, n);
  t.clear();
  const std::size_t expected = std::min(n, elements_that_fit<U>(ar));
  if (ar.take_reserve(expected, sizeof(U))) t.reserve(expected);
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_default_constructible_v<U>) {
      ar >> boost::serialization::make_nvp("item", t.emplace_back());
    } else {
      // As Boost's load for such elements: built on the stack, then moved in.
      boost::serialization::detail::stack_construct<input_archive, U> u(ar, item_version);
      ar >> boost::serialization::make_nvp("item", u.reference());
      t.push_back(std::move(u.reference()));
      ar.reset_object_address(&t.back(), u.address());
    }
  }
}

// A vector of bitwise elements (arithmetic types), read by fwd's input archive. Boost
// resizes to `count` and then reads: the count must cover count * sizeof(U) bytes that
// are really there, or a count of N bytes would allocate up to 8 N.
template <class U, class Allocator>
void load(input_archive& ar, std::vector<U, Allocator>& t, const unsigned int /*version*/,
          boost::mpl::true_ /*bitwise*/) {
  boost::serialization::collection_size_type count;
  ar >> BOOST_SERIALIZATION_NVP(count);
  if (BOOST_SERIALIZATION_VECTOR_VERSIONED(ar.get_library_version())) {
    unsigned int item_version = 0;
    ar >> BOOST_SERIALIZATION_NVP(item_version);
  }
  const std::size_t n = count;
  if (n > ar.remaining() / sizeof(U)) {
    boost::serialization::throw_exception(boost::archive::archive_exception(
        boost::archive::archive_exception::input_stream_error, "collection size exceeds the input"));
  }
  t.resize(n);
  if (n > 0) ar >> boost::serialization::make_array<U, boost::serialization::collection_size_type>(t.data(), count);
}

// Unordered containers: Boost rehashes to the peer's bucket count (any number: each
// bucket a pointer) before reading an element. Here the bucket count is read and
// ignored; buckets are reserved only for the elements the bytes left can hold, within
// the reserve budget, and otherwise grow as elements are inserted.
template <class Container, class InputFunction>
void load_unordered(input_archive& ar, Container& s) {
  boost::serialization::collection_size_type count;
  boost::serialization::item_version_type item_version(0);
  ar >> BOOST_SERIALIZATION_NVP(count);
  (void)ar.read_size();  // the sender's bucket count: a hint fwd does not follow
  if (boost::serialization::library_version_type(3) < ar.get_library_version()) {
    ar >> BOOST_SERIALIZATION_NVP(item_version);
  }
  const std::size_t n = count;
  check_count<typename Container::value_type>(ar, n);
  s.clear();
  const std::size_t expected = std::min(n, elements_that_fit<typename Container::value_type>(ar));
  if (ar.take_reserve(expected, 2 * sizeof(void*))) s.reserve(expected);
  InputFunction read_one;
  for (std::size_t i = 0; i < n; ++i) read_one(ar, s, item_version);
}

template <class K, class V, class H, class E, class A>
void load(input_archive& ar, std::unordered_map<K, V, H, E, A>& t, const unsigned int /*version*/) {
  using C = std::unordered_map<K, V, H, E, A>;
  load_unordered<C, boost::serialization::stl::archive_input_unordered_map<input_archive, C>>(ar, t);
}
template <class K, class V, class H, class E, class A>
void load(input_archive& ar, std::unordered_multimap<K, V, H, E, A>& t, const unsigned int /*version*/) {
  using C = std::unordered_multimap<K, V, H, E, A>;
  load_unordered<C, boost::serialization::stl::archive_input_unordered_multimap<input_archive, C>>(ar, t);
}
template <class K, class H, class E, class A>
void load(input_archive& ar, std::unordered_set<K, H, E, A>& t, const unsigned int /*version*/) {
  using C = std::unordered_set<K, H, E, A>;
  load_unordered<C, boost::serialization::stl::archive_input_unordered_set<input_archive, C>>(ar, t);
}
template <class K, class H, class E, class A>
void load(input_archive& ar, std::unordered_multiset<K, H, E, A>& t, const unsigned int /*version*/) {
  using C = std::unordered_multiset<K, H, E, A>;
  load_unordered<C, boost::serialization::stl::archive_input_unordered_multiset<input_archive, C>>(ar, t);
}

}  // namespace fwd::detail

BOOST_SERIALIZATION_REGISTER_ARCHIVE(fwd::detail::output_archive)
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(fwd::detail::output_archive)
BOOST_SERIALIZATION_REGISTER_ARCHIVE(fwd::detail::input_archive)
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(fwd::detail::input_archive)

// ---- end fwd/detail/serialization.hpp ----

#include <boost/archive/archive_exception.hpp>
#include <boost/core/demangle.hpp>
#include <fmt/format.h>
#include <boost/system/error_code.hpp>

#include <cstddef>
#include <exception>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

namespace fwd::detail {

// The value as its parameter type: a reference when it already is one, else converted.
template <class Parameter, class Given>
decltype(auto) as_parameter(Given&& given) {
  if constexpr (std::is_same_v<std::remove_cvref_t<Given>, Parameter>) {
    return static_cast<const Parameter&>(given);
  } else {
    return Parameter(std::forward<Given>(given));
  }
}

template <class Parameter, class Given>
void save_parameter(output_archive& ar, Given&& given) {
  decltype(auto) value = as_parameter<Parameter>(std::forward<Given>(given));
  ar << static_cast<const Parameter&>(value);
}

template <class Write>
std::string encode_with(Write&& write) {
  std::string out;
  output_bytes buffer(out);
  {
    output_archive ar(buffer);
    std::forward<Write>(write)(ar);
  }
  return out;
}

/// Runs `read()`, which returns how many bytes it left unread; reports any failure, or
/// bytes left over, as errc::protocol_error in `ec` with an explanation in `*detail`
/// (when given).
template <class Read>
void decode_guarded(boost::system::error_code& ec, std::string* detail, Read&& read) {
  ec = {};
  std::string why;
  try {
    const std::size_t left = std::forward<Read>(read)();
    if (left != 0) why = fmt::format("{} unexpected bytes after the last value", left);
  } catch (const boost::archive::archive_exception& e) {
    why = e.what();
  } catch (const std::exception& e) {
    why = fmt::format("{}: {}", boost::core::demangle(typeid(e).name()), e.what());
  } catch (...) {
    why = "an exception of unknown type";
  }
  if (!why.empty()) {
    ec = make_error_code(errc::protocol_error);
    if (detail != nullptr) *detail = fmt::format("undecodable payload ({})", why);
  }
}

/// Reads `bytes` with `read(input_archive&)`; reports any failure, or bytes left over,
/// as errc::protocol_error in `ec` with an explanation in `*detail` (when given).
template <class Read>
void decode_with(std::string_view bytes, boost::system::error_code& ec, std::string* detail,
                 Read&& read) {
  decode_guarded(ec, detail, [&] {
    input_bytes in(bytes);
    input_archive ar(in);
    std::forward<Read>(read)(ar);
    return in.remaining();
  });
}

/// `values...` written one after another through fwd's output archive (never the fast
/// path: the reference the fast path is tested against).
template <class... Ts>
std::string archive_encode(const Ts&... values) {
  return encode_with([&](output_archive& ar) { ((ar << values), ...); });
}

/// Reads `values...` in order through fwd's input archive (never the fast path).
template <class... Ts>
void archive_decode(std::string_view bytes, boost::system::error_code& ec, std::string* detail, Ts&... values) {
  decode_with(bytes, ec, detail, [&](input_archive& ar) { ((ar >> values), ...); });
}

/// Reads `values...` in order without an archive; as archive_decode otherwise.
template <class... Ts>
  requires fast_codable<Ts...>
void fast_decode(std::string_view bytes, boost::system::error_code& ec, std::string* detail, Ts&... values) {
  decode_guarded(ec, detail, [&] {
    fast_reader in(bytes);
    fast_decode(in, values...);
    return in.remaining();
  });
}

/// Encodes `values...` as fwd's archives would, through the fast path when it can.
template <class... Ts>
std::string encode_values(const Ts&... values) {
  if constexpr (fast_codable<Ts...>) {
    return fast_encode(values...);
  } else {
    return archive_encode(values...);
  }
}

/// Decodes `values...` as fwd's archives would, through the fast path when it can.
template <class... Ts>
void decode_values(std::string_view bytes, boost::system::error_code& ec, std::string* detail, Ts&... values) {
  if constexpr (fast_codable<Ts...>) {
    fast_decode(bytes, ec, detail, values...);
  } else {
    archive_decode(bytes, ec, detail, values...);
  }
}

/**
 * Encodes the arguments of a call to `proc`: each given argument converted to its
 * parameter type. Compiles only when `Given...` convert to the parameters (same count).
 * Throws what a user's serialize() throws, or boost::archive::archive_exception.
 */
template <class R, class... A, class... Given>
  requires procedure<R(A...)>::template accepts<Given...>
std::string encode_arguments(const procedure<R(A...)>& /*proc*/, Given&&... given) {
  if constexpr (fast_codable<std::decay_t<A>...>) {
    return fast_encode<std::decay_t<A>...>(as_parameter<std::decay_t<A>>(std::forward<Given>(given))...);
  } else {
    return encode_with([&](output_archive& ar) {
      (save_parameter<std::decay_t<A>>(ar, std::forward<Given>(given)), ...);
    });
  }
}

/**
 * Decodes what encode_arguments wrote for procedure type `Proc`. On failure sets `ec` to
 * errc::protocol_error, writes why into `*detail` (when not null) and returns
 * default-constructed arguments. Never throws for bad input.
 */
template <class Proc>
typename Proc::arguments decode_arguments(std::string_view bytes, boost::system::error_code& ec,
                                          std::string* detail = nullptr) {
  typename Proc::arguments args{};
  std::apply([&](auto&... value) { decode_values(bytes, ec, detail, value...); }, args);
  if (ec) return typename Proc::arguments{};
  return args;
}

/// Encodes a result of type `R` (write the procedure's result_type: encode_result<R>(v)).
template <class R>
std::string encode_result(const R& value) {
  static_assert((signature_fingerprint<R()>(), true));
  return encode_values(value);
}

/// Encodes a void result: no bytes.
inline std::string encode_result() { return {}; }

/// Encodes `value` as the result of `proc`.
template <class R, class... A>
  requires(!std::is_void_v<R>)
std::string encode_result(const procedure<R(A...)>& /*proc*/, const R& value) {
  return encode_result<R>(value);
}

/**
 * Decodes a result of type `R` (void: the payload must be empty). On failure sets `ec` to
 * errc::protocol_error, writes why into `*detail` (when not null) and returns a
 * default-constructed R. Never throws for bad input.
 */
template <class R>
R decode_result(std::string_view bytes, boost::system::error_code& ec, std::string* detail = nullptr) {
  if constexpr (std::is_void_v<R>) {
    ec = {};
    if (!bytes.empty()) {
      ec = make_error_code(errc::protocol_error);
      if (detail != nullptr) {
        *detail = fmt::format("undecodable payload (a void result carries no bytes, got {})",
                              bytes.size());
      }
    }
  } else {
    static_assert((signature_fingerprint<R()>(), true));
    R value{};
    decode_values(bytes, ec, detail, value);
    if (ec) return R{};
    return value;
  }
}

}  // namespace fwd::detail

// ---- end fwd/detail/procedure_codec.hpp ----

// ---- end fwd/procedure.hpp ----
// ---- begin fwd/litefs/types.hpp ----

// What fwd knows of LiteFS, as values: the files' limits and names, a position
// (TXID, checksum), the local role, and the result of the database-path check.


#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace fwd::litefs {

/// The largest LiteFS control file (.primary, .lag, <db>-pos) fwd reads; a larger file
/// is reported as bad_litefs_file rather than read into memory.
inline constexpr std::size_t max_file_size = 4096;

/// Size of a `<db>-pos` file: `"%016x/%016x\n"`.
inline constexpr std::size_t position_size = 34;

/// The value of `.lag` before this node has ever synced with a primary (Go's MaxInt32).
inline constexpr std::chrono::milliseconds lag_never_synced{2147483647};

/// `statfs().f_type` of every FUSE mount (FUSE_SUPER_MAGIC).
inline constexpr std::uint64_t fuse_super_magic = 0x65735546;

/// Where LiteFS's FUSE mount usually is (`fuse.dir` in litefs.yml), used in suggestions
/// when /proc/self/mounts shows none.
inline constexpr std::string_view default_mount = "/litefs";

inline constexpr std::string_view lag_filename = ".lag";
inline constexpr std::string_view primary_filename = ".primary";
inline constexpr std::string_view position_suffix = "-pos";

/// True when `lag` is LiteFS's "never synced" value.
constexpr bool never_synced(std::chrono::milliseconds lag) noexcept {
  return lag == lag_never_synced;
}

/// A database's replication position, as in `<db>-pos`.
struct position {
  std::uint64_t txid = 0;      ///< the last applied transaction id
  std::uint64_t checksum = 0;  ///< the database checksum after applying it
  friend bool operator==(const position&, const position&) = default;
};

/// What this node is, as far as its LiteFS mount tells.
enum class role_kind {
  primary,     ///< this node holds the lease: writes run here
  replica,     ///< a replica connected to `primary_hostname`
  unknown,     ///< no primary known (election, reconnect, none): writes must wait
  not_litefs,  ///< the directory is not a LiteFS mount (no `.lag`)
};

/// "primary", "replica", "unknown" or "not_litefs".
constexpr const char* to_string(role_kind k) noexcept {
  switch (k) {
    case role_kind::primary:
      return "primary";
    case role_kind::replica:
      return "replica";
    case role_kind::unknown:
      return "unknown";
    case role_kind::not_litefs:
      return "not_litefs";
  }
  return "?";
}

/// The local role and why it was decided (for logs).
struct role {
  role_kind kind = role_kind::unknown;
  std::string primary_hostname;  ///< the LiteFS lease hostname; set for replica only
  std::string reason;            ///< the signals that decided `kind`
};

/// One line of /proc/self/mounts, octal escapes (`\040`) decoded.
struct mount_entry {
  std::string source;
  std::filesystem::path mount_point;
  std::string type;
  std::string options;
};

/// Options of check_database_path.
struct path_check_options {
  /// Require the database's directory to be a FUSE mount. The LiteFS simulation used by
  /// tests and the demo is a plain directory and sets this to false.
  bool require_fuse = true;
  /// Where to read the mount table (default /proc/self/mounts), for the suggestion in
  /// messages; tests give a fixture.
  std::optional<std::filesystem::path> mounts_file;
};

}  // namespace fwd::litefs

// ---- end fwd/litefs/types.hpp ----
// ---- begin fwd/litefs/files.hpp ----

// The exact bytes of LiteFS's control files (<db>-pos, .lag, .primary, /proc/mounts):
// formatting and parsing, with errors that show the offending bytes and say what to do.
//
// Every function that can fail comes in Asio's two forms:
//   f(args..., boost::system::error_code& ec[, fwd::diagnostics& diag])
//       never throws; sets `ec`, and `diag` (when given) to the detailed message
//   f(args...)
//       throws fwd::error, whose what() and get_diagnostics() carry the detailed message


#include <optional>
#include <vector>

namespace fwd::litefs {

// ---------------------------------------------------------------------------------------
// Pure formatting and parsing over bytes
// ---------------------------------------------------------------------------------------

/// The exact bytes LiteFS writes in `<db>-pos`: `"%016x/%016x\n"`.
FWD_DECL std::string format_position(position p);

/// The exact bytes LiteFS writes in `.lag`: Go's `"%+010d\n"`, where the width 10
/// counts the sign: `+000000000\n` (11 bytes) for 0, `+2147483647\n` for never synced.
FWD_DECL std::string format_lag(std::chrono::milliseconds lag);

/**
 * Parses the contents of a `<db>-pos` file: exactly `"%016x/%016x\n"` (34 bytes,
 * lowercase hex: TXID, then the post-apply checksum). Anything else is bad_litefs_file
 * with a message naming `source` and the offending bytes; never a wrong number.
 */
FWD_DECL position parse_position(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                               std::string_view source = "<db>-pos");

FWD_DECL position parse_position(std::string_view bytes, boost::system::error_code& ec,
                               std::string_view source = "<db>-pos");

/// Throws fwd::error (bad_litefs_file) with the detailed message.
FWD_DECL position parse_position(std::string_view bytes, std::string_view source = "<db>-pos");

/**
 * Parses the contents of `.lag`: milliseconds of replication lag written by Go's
 * `"%+010d\n"`: a sign, digits zero-padded to a width of 10 counting the sign (9 digits
 * for values below 10^9, 10 above), and a newline. 10 zero-padded digits (`+0000000000`)
 * are accepted too. A 10-digit value of exactly 11 bytes without its newline is
 * accepted: LiteFS advertises `.lag` as 11 bytes, so the kernel may cut the newline off
 * `+2147483647\n`. The result may be negative (clock skew between nodes); compare with
 * lag_never_synced (or never_synced()) for "never synced". Anything else is
 * bad_litefs_file naming `source` and the bytes.
 */
FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                                           std::string_view source = ".lag");

FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec,
                                           std::string_view source = ".lag");

/// Throws fwd::error (bad_litefs_file) with the detailed message.
FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes,
                                           std::string_view source = ".lag");

/**
 * Parses the contents of `.primary`: the primary's LiteFS lease hostname and a newline
 * (not a URL). Surrounding whitespace is trimmed; an empty result, a control byte, NUL
 * or a space inside, or more than max_file_size bytes is bad_litefs_file.
 */
FWD_DECL std::string parse_primary(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                                 std::string_view source = ".primary");

FWD_DECL std::string parse_primary(std::string_view bytes, boost::system::error_code& ec,
                                 std::string_view source = ".primary");

/// Throws fwd::error (bad_litefs_file) with the detailed message.
FWD_DECL std::string parse_primary(std::string_view bytes, std::string_view source = ".primary");

/// Parses a mount table in the format of /proc/self/mounts (`source target type options
/// freq passno`, octal escapes decoded). Lines with fewer than 3 fields are skipped.
FWD_DECL std::vector<mount_entry> parse_mounts(std::string_view text);

/// True for a LiteFS FUSE mount: source `litefs`, type `fuse` (or `fuse.litefs`).
FWD_DECL bool is_litefs_mount(const mount_entry& e) noexcept;

/// The first LiteFS FUSE mount point in a mount table's text, if any.
FWD_DECL std::optional<std::filesystem::path> find_litefs_mount(std::string_view mounts_text);

}  // namespace fwd::litefs

#if !defined(FWD_SEPARATE_COMPILATION)
// ---- begin fwd/litefs/impl/files.ipp ----

// Definitions of <fwd/litefs/files.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>

// ---- begin fwd/litefs/detail/io.hpp ----

// Bounded reads of LiteFS's control files, byte escaping for error messages, and the
// other small helpers the LiteFS headers share. Internal.

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>


#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <iterator>
#include <system_error>

namespace fwd::litefs {

namespace detail {

inline bool is_lower_hex(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}
inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
inline unsigned hex_value(char c) noexcept {
  return c <= '9' ? static_cast<unsigned>(c - '0') : static_cast<unsigned>(c - 'a' + 10);
}

inline void append_escaped_byte(std::string& out, unsigned char c) {
  switch (c) {
    case '\n':
      out += "\\n";
      return;
    case '\r':
      out += "\\r";
      return;
    case '\t':
      out += "\\t";
      return;
    case '\\':
      out += "\\\\";
      return;
    case '"':
      out += "\\\"";
      return;
    default:
      break;
  }
  if (c >= 0x20 && c < 0x7f) {
    out += static_cast<char>(c);
  } else {
    fmt::format_to(std::back_inserter(out), "\\x{:02x}", c);
  }
}

/// `bytes` quoted and C-escaped, at most `shown` bytes of it, with its size:
/// `"ab\n" (3 bytes)` or `"abc..." (5000 bytes, first 48 shown)`.
inline std::string escape_bytes(std::string_view bytes, std::size_t shown = 48) {
  std::string out = "\"";
  const std::size_t n = bytes.size() < shown ? bytes.size() : shown;
  for (std::size_t i = 0; i < n; ++i)
    append_escaped_byte(out, static_cast<unsigned char>(bytes[i]));
  if (n < bytes.size()) {
    fmt::format_to(std::back_inserter(out), "...\" ({} bytes, first {} shown)", bytes.size(), n);
  } else {
    fmt::format_to(std::back_inserter(out), "\" ({} {})", bytes.size(),
                   bytes.size() == 1 ? "byte" : "bytes");
  }
  return out;
}

/// `'A' (0x41)`, for messages about one byte.
inline std::string describe_byte(char c) {
  std::string out = "'";
  append_escaped_byte(out, static_cast<unsigned char>(c));
  fmt::format_to(std::back_inserter(out), "' (0x{:02x})", static_cast<unsigned char>(c));
  return out;
}

inline std::string errno_text(int err) { return std::generic_category().message(err); }

inline void set_failure(boost::system::error_code& ec, diagnostics& diag, errc e, std::string message) {
  ec = make_error_code(e);
  diag.assign(std::move(message));
}

inline void set_errno_failure(boost::system::error_code& ec, diagnostics& diag, int err, std::string message) {
  ec = boost::system::error_code(err, boost::system::system_category());
  diag.assign(std::move(message));
}

// stat() that asks the filesystem instead of the kernel's attribute cache (statx with
// AT_STATX_FORCE_SYNC: a FUSE getattr), for the attributes LiteFS changes under a running
// service. Only st_mode, st_dev and st_ino are filled. Returns 0, or -1 with errno set.
inline int stat_uncached(const std::string& path, struct stat& out) noexcept {
#if defined(STATX_MODE) && defined(AT_STATX_FORCE_SYNC)
  struct statx x {};
  if (::statx(AT_FDCWD, path.c_str(), AT_STATX_FORCE_SYNC, STATX_TYPE | STATX_MODE | STATX_INO, &x) == 0) {
    out = {};
    out.st_mode = x.stx_mode;
    out.st_ino = x.stx_ino;
    out.st_dev = makedev(x.stx_dev_major, x.stx_dev_minor);
    return 0;
  }
  if (errno != ENOSYS) return -1;
#endif
  return ::stat(path.c_str(), &out);
}

// Closes a file descriptor on scope exit.
class fd_guard {
 public:
  explicit fd_guard(int fd) noexcept : fd_(fd) {}
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  int fd_;
};

enum class read_outcome { ok, not_found, too_large, not_regular, io_error };

struct file_read {
  read_outcome outcome = read_outcome::ok;
  int error = 0;  ///< errno for not_found and io_error
  std::string bytes;
};

/// Reads a whole file of at most `limit` bytes with open/read (LiteFS's files are
/// virtual: their size from stat is not to be trusted, and they may vanish between
/// calls). Retries on EINTR; ENOENT at open or read is `not_found`.
inline file_read read_bounded(const std::string& path, std::size_t limit) {
  file_read result;
  int fd;
  do {
    // O_NONBLOCK: a FIFO planted in place of a control file must not hang the open.
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    result.error = errno;
    result.outcome = result.error == ENOENT ? read_outcome::not_found : read_outcome::io_error;
    return result;
  }
  fd_guard guard{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    result.error = errno;
    result.outcome = read_outcome::io_error;
    return result;
  }
  if (!S_ISREG(st.st_mode)) {
    result.outcome = read_outcome::not_regular;
    return result;
  }
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      result.error = errno;
      result.outcome = result.error == ENOENT ? read_outcome::not_found : read_outcome::io_error;
      result.bytes.clear();
      return result;
    }
    if (n == 0) break;
    if (result.bytes.size() + static_cast<std::size_t>(n) > limit) {
      result.outcome = read_outcome::too_large;
      result.bytes.clear();
      return result;
    }
    result.bytes.append(buffer, static_cast<std::size_t>(n));
  }
  return result;
}

/// Turns a failed read into a failure naming the file. `what` says what the file is.
inline void set_read_failure(boost::system::error_code& ec, diagnostics& diag, const file_read& r, const std::string& path,
                             std::string_view what) {
  switch (r.outcome) {
    case read_outcome::ok:
      return;
    case read_outcome::not_found:
      set_errno_failure(ec, diag, ENOENT,
                        fmt::format("{} ({}) does not exist: check that the directory is a "
                                    "LiteFS mount and that LiteFS is running",
                                    path, what));
      return;
    case read_outcome::too_large:
      set_failure(ec, diag, errc::bad_litefs_file,
          fmt::format("{} ({}) is larger than {} bytes; LiteFS's control files are a few bytes: "
                      "check that the directory is a LiteFS mount",
                      path, what, max_file_size));
      return;
    case read_outcome::not_regular:
      set_failure(ec, diag, errc::bad_litefs_file,
                  fmt::format("{} ({}) is not a regular file; LiteFS serves it as one: check "
                              "that the directory is a LiteFS mount",
                              path, what));
      return;
    case read_outcome::io_error:
      set_errno_failure(ec, diag, r.error,
                        fmt::format("cannot read {} ({}): {}: check the permissions and that "
                                    "LiteFS is running",
                                    path, what, errno_text(r.error)));
      return;
  }
}

inline std::string path_string(const std::filesystem::path& mount, std::string_view name) {
  return (mount / std::filesystem::path(std::string(name))).string();
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash) the kernel writes in /proc/self/mounts fields.
inline std::string decode_mount_field(std::string_view field) {
  std::string out;
  out.reserve(field.size());
  for (std::size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && field[i + 1] >= '0' && field[i + 1] <= '3' &&
        field[i + 2] >= '0' && field[i + 2] <= '7' && field[i + 3] >= '0' && field[i + 3] <= '7') {
      out += static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                               (field[i + 3] - '0'));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

inline const char* filesystem_name(std::uint64_t magic) noexcept {
  switch (magic) {
    case 0xef53:
      return "ext2/ext3/ext4";
    case 0x01021994:
      return "tmpfs";
    case 0x794c7630:
      return "overlayfs";
    case 0x58465342:
      return "xfs";
    case 0x9123683e:
      return "btrfs";
    case 0x6969:
      return "nfs";
    case 0x2fc12fc1:
      return "zfs";
    case 0xff534d42:
      return "cifs";
    case 0x65735546:
      return "fuse";
    default:
      return nullptr;
  }
}

}  // namespace detail

}  // namespace fwd::litefs

// ---- end fwd/litefs/detail/io.hpp ----

namespace fwd::litefs {

FWD_DECL std::string format_position(position p) {
  return fmt::format("{:016x}/{:016x}\n", p.txid, p.checksum);
}

FWD_DECL std::string format_lag(std::chrono::milliseconds lag) {
  return fmt::format("{:+010}\n", lag.count());
}

FWD_DECL position parse_position(std::string_view bytes, boost::system::error_code& ec,
                                 diagnostics& diag, std::string_view source) {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes \"%016x/%016x\\n\" (34 bytes, lowercase hex, e.g. "
      "\"00000000002df417/ce552e44f23fbbdd\\n\"): check that the path is on a LiteFS mount";
  if (bytes.empty()) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} is empty; {}", src, expected));
    return {};
  }
  const std::string shown = detail::escape_bytes(bytes);
  const std::size_t n = bytes.size() < position_size ? bytes.size() : position_size;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = bytes[i];
    std::string problem;
    if (i == 16) {
      if (c != '/') problem = "expected '/' between TXID and checksum";
    } else if (i == 33) {
      if (c != '\n') problem = "expected the final newline";
    } else if (!detail::is_lower_hex(c)) {
      problem = (c >= 'A' && c <= 'F') ? "uppercase hex; LiteFS writes lowercase"
                                       : "expected a lowercase hex digit";
    }
    if (!problem.empty()) {
      detail::set_failure(ec, diag, errc::bad_litefs_file,
                          fmt::format("{} holds {}, not a position: byte {} is {}, {}. {}", src,
                                      shown, i, detail::describe_byte(c), problem, expected));
      return {};
    }
  }
  if (bytes.size() < position_size) {
    detail::set_failure(
        ec, diag, errc::bad_litefs_file,
        fmt::format(
            "{} holds {}, not a position: it ends after {} bytes{}. {}", src, shown, bytes.size(),
            bytes.size() == position_size - 1 ? " (the final newline is missing)" : "", expected));
    return {};
  }
  if (bytes.size() > position_size) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} holds {}, not a position: {} unexpected bytes follow the "
                                    "newline. {}",
                                    src, shown, bytes.size() - position_size, expected));
    return {};
  }
  position p;
  for (std::size_t i = 0; i < 16; ++i) {
    p.txid = (p.txid << 4) | detail::hex_value(bytes[i]);
    p.checksum = (p.checksum << 4) | detail::hex_value(bytes[17 + i]);
  }
  return p;
}

FWD_DECL position parse_position(std::string_view bytes, boost::system::error_code& ec,
                                 std::string_view source) {
  diagnostics ignored;
  return parse_position(bytes, ec, ignored, source);
}

FWD_DECL position parse_position(std::string_view bytes, std::string_view source) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_position(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec,
                                             diagnostics& diag, std::string_view source) {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes \"%+010d\\n\" (e.g. \"+000000000\\n\" on the primary, \"+2147483647\\n\" "
      "before the first sync): check that the path is a LiteFS mount";
  auto bad = [&](const std::string& problem) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} holds {}, not a lag: {}. {}", src,
                                    detail::escape_bytes(bytes), problem, expected));
    return std::chrono::milliseconds{0};
  };
  if (bytes.empty()) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} is empty; {}", src, expected));
    return std::chrono::milliseconds{0};
  }
  if (bytes[0] != '+' && bytes[0] != '-')
    return bad(fmt::format("byte 0 is {}, expected '+' or '-'", detail::describe_byte(bytes[0])));
  std::size_t i = 1;
  while (i < bytes.size() && i <= 11 && detail::is_digit(bytes[i])) ++i;
  const std::size_t digits = i - 1;
  if (digits > 10) return bad("more than 10 digits");
  if (i == bytes.size()) {
    // Only the kernel's cut at LiteFS's advertised size (11 bytes) drops the newline.
    if (!(digits == 10 && bytes.size() == 11)) return bad("the final newline is missing");
  } else if (bytes[i] != '\n') {
    return bad(fmt::format("byte {} is {}, expected a digit or the final newline", i,
                           detail::describe_byte(bytes[i])));
  } else if (i + 1 != bytes.size()) {
    return bad(fmt::format("{} unexpected bytes follow the newline", bytes.size() - i - 1));
  }
  if (digits < 9) return bad(fmt::format("only {} digits, expected 9 or 10 (zero-padded)", digits));
  long long value = 0;
  for (std::size_t k = 1; k <= digits; ++k) value = value * 10 + (bytes[k] - '0');
  if (bytes[0] == '-') value = -value;
  if (value > 2147483647LL || value < -2147483648LL)
    return bad("the value is outside a 32-bit integer");
  return std::chrono::milliseconds{value};
}

FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec,
                                             std::string_view source) {
  diagnostics ignored;
  return parse_lag(bytes, ec, ignored, source);
}

FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, std::string_view source) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_lag(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL std::string parse_primary(std::string_view bytes, boost::system::error_code& ec,
                                   diagnostics& diag, std::string_view source) {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes the primary's lease hostname and a newline (e.g. \"e829424aee6108\\n\"): "
      "check lease.hostname in the primary's litefs.yml";
  if (bytes.size() > max_file_size) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} holds {}, more than {} bytes: not a hostname. {}", src,
                                    detail::escape_bytes(bytes), max_file_size, expected));
    return {};
  }
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  };
  std::size_t begin = 0, end = bytes.size();
  while (begin < end && is_space(bytes[begin])) ++begin;
  while (end > begin && is_space(bytes[end - 1])) --end;
  if (begin == end) {
    detail::set_failure(
        ec, diag, errc::bad_litefs_file,
        fmt::format("{} holds {}: no hostname. {}", src, detail::escape_bytes(bytes), expected));
    return {};
  }
  for (std::size_t i = begin; i < end; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c <= 0x20 || c == 0x7f) {
      detail::set_failure(
          ec, diag, errc::bad_litefs_file,
          fmt::format("{} holds {}, not a hostname: byte {} is {}. {}", src,
                      detail::escape_bytes(bytes), i, detail::describe_byte(bytes[i]), expected));
      return {};
    }
  }
  return std::string(bytes.substr(begin, end - begin));
}

FWD_DECL std::string parse_primary(std::string_view bytes, boost::system::error_code& ec,
                                   std::string_view source) {
  diagnostics ignored;
  return parse_primary(bytes, ec, ignored, source);
}

FWD_DECL std::string parse_primary(std::string_view bytes, std::string_view source) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_primary(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL std::vector<mount_entry> parse_mounts(std::string_view text) {
  std::vector<mount_entry> entries;
  while (!text.empty()) {
    const std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view{} : text.substr(eol + 1);
    std::vector<std::string_view> fields;
    std::size_t i = 0;
    while (i < line.size() && fields.size() < 4) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      const std::size_t start = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      if (i > start) fields.push_back(line.substr(start, i - start));
    }
    if (fields.size() < 3) continue;
    mount_entry e;
    e.source = detail::decode_mount_field(fields[0]);
    e.mount_point = detail::decode_mount_field(fields[1]);
    e.type = detail::decode_mount_field(fields[2]);
    if (fields.size() > 3) e.options = detail::decode_mount_field(fields[3]);
    entries.push_back(std::move(e));
  }
  return entries;
}

FWD_DECL bool is_litefs_mount(const mount_entry& e) noexcept {
  return e.source == "litefs" && (e.type == "fuse" || e.type == "fuse.litefs");
}

FWD_DECL std::optional<std::filesystem::path> find_litefs_mount(std::string_view mounts_text) {
  for (const auto& e : parse_mounts(mounts_text)) {
    if (is_litefs_mount(e)) return e.mount_point;
  }
  return std::nullopt;
}
}  // namespace fwd::litefs

// ---- end fwd/litefs/impl/files.ipp ----
#endif

// ---- end fwd/litefs/files.hpp ----
// ---- begin fwd/litefs/mount.hpp ----

// Reading a LiteFS mount directory: this node's position, lag and role, in the two
// forms of files.hpp. The role never comes from `.primary`'s absence alone.


namespace fwd::litefs {

// ---------------------------------------------------------------------------------------
// Reading a mount directory
// ---------------------------------------------------------------------------------------

/**
 * Reads `<mount>/<db_name>-pos`. `db_name` is the database's file name in the mount
 * (e.g. "blog.db"); a name with '/', NUL, or "."/".." is bad_argument. A missing file is
 * the system error ENOENT (the database does not exist on this mount); bad contents are
 * bad_litefs_file.
 */
FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name,
                              boost::system::error_code& ec, diagnostics& diag);

FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name,
                              boost::system::error_code& ec);

/// Throws fwd::error with the detailed message.
FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name);

/// Reads `<mount>/.lag` (see parse_lag). A missing file is not_litefs.
FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount, boost::system::error_code& ec, diagnostics& diag);

FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount,
                                          boost::system::error_code& ec);

/// Throws fwd::error with the detailed message.
FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount);

/**
 * Decides this node's role from its LiteFS mount:
 *  - no `.lag` (or no such directory): not_litefs;
 *  - `.primary` present and readable: replica, primary_hostname = its trimmed content;
 *  - `.primary` absent, or present at lstat but gone at open/read (LiteFS re-checks it on
 *    every access: ENOENT then means absent, never an error): primary only if the mount
 *    root's mode has a write bit (LiteFS: 0777 on the primary, 0555 on replicas) AND
 *    `.lag` reads 0; otherwise unknown (election, reconnect, no primary): writes must
 *    wait, never run locally.
 * `reason` says which signals decided. Failures: I/O errors other than ENOENT (system
 * category) and malformed `.primary`/`.lag` (bad_litefs_file); the role is then unknown.
 *
 * The presence of `.primary` is tested with lstat (LiteFS serves no symlinks), so a
 * dangling symlink reproduces "present at stat, ENOENT at open".
 */
FWD_DECL role read_role(const std::filesystem::path& mount, boost::system::error_code& ec, diagnostics& diag);

FWD_DECL role read_role(const std::filesystem::path& mount, boost::system::error_code& ec);

/// Throws fwd::error on I/O failures other than ENOENT and on malformed files.
FWD_DECL role read_role(const std::filesystem::path& mount);

/**
 * The local role for code that must not throw (handlers, timers, hooks): any failure to
 * read the mount (ENOTCONN or ECONNABORTED once LiteFS stopped under the service, EIO, a
 * malformed file) is `role_kind::unknown`, its reason saying what failed. Writes wait or
 * fail with a retryable error while the role is unknown; nothing crashes.
 */
FWD_DECL role current_role(const std::filesystem::path& mount) noexcept;

}  // namespace fwd::litefs

#if !defined(FWD_SEPARATE_COMPILATION)
// ---- begin fwd/litefs/impl/mount.ipp ----

// Definitions of <fwd/litefs/mount.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>


namespace fwd::litefs {

FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name,
                                boost::system::error_code& ec, diagnostics& diag) {
  ec.clear();
  diag.clear();
  if (db_name.empty() || db_name == "." || db_name == ".." ||
      db_name.find('/') != std::string_view::npos || db_name.find('\0') != std::string_view::npos) {
    detail::set_failure(
        ec, diag, errc::bad_argument,
        fmt::format("read_position: database name {} is not a file name in the mount: give the "
                    "database's file name, e.g. \"blog.db\"",
                    detail::escape_bytes(db_name)));
    return {};
  }
  const std::string path =
      detail::path_string(mount, fmt::format("{}{}", db_name, position_suffix));
  const detail::file_read r = detail::read_bounded(path, max_file_size);
  if (r.outcome == detail::read_outcome::not_found) {
    detail::set_errno_failure(
        ec, diag, ENOENT,
        fmt::format("{} does not exist: the database {} does not exist on this LiteFS mount yet "
                    "(create it through the mount), or {} is not a LiteFS mount",
                    path, db_name, mount.string()));
    return {};
  }
  detail::set_read_failure(ec, diag, r, path, "the database's LiteFS position");
  if (ec) return {};
  return parse_position(r.bytes, ec, diag, path);
}

FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name,
                                boost::system::error_code& ec) {
  diagnostics ignored;
  return read_position(mount, db_name, ec, ignored);
}

FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = read_position(mount, db_name, ec, diag);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount,
                                            boost::system::error_code& ec, diagnostics& diag) {
  ec.clear();
  diag.clear();
  const std::string path = detail::path_string(mount, lag_filename);
  const detail::file_read r = detail::read_bounded(path, max_file_size);
  if (r.outcome == detail::read_outcome::not_found) {
    detail::set_failure(
        ec, diag, errc::not_litefs,
        fmt::format("{} does not exist: {} is not a LiteFS mount (LiteFS always serves .lag): "
                    "use the fuse.dir of litefs.yml, e.g. {}",
                    path, mount.string(), default_mount));
    return {};
  }
  detail::set_read_failure(ec, diag, r, path, "LiteFS's replication lag");
  if (ec) return {};
  return parse_lag(r.bytes, ec, diag, path);
}

FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount,
                                            boost::system::error_code& ec) {
  diagnostics ignored;
  return read_lag(mount, ec, ignored);
}

FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = read_lag(mount, ec, diag);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL role read_role(const std::filesystem::path& mount, boost::system::error_code& ec,
                        diagnostics& diag) {
  ec.clear();
  diag.clear();
  role result;
  const std::string mount_str = mount.string();
  auto fail_role = [&]() {
    result.kind = role_kind::unknown;
    result.reason = diag.message();
    return result;
  };

  struct stat root {};
  // The root's mode tells the role, but the kernel caches it for up to 60 s after LiteFS
  // changes role (LiteFS sets no attribute validity): read it with AT_STATX_FORCE_SYNC.
  if (detail::stat_uncached(mount_str, root) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      result.kind = role_kind::not_litefs;
      result.reason = fmt::format("{} does not exist ({}): not a LiteFS mount", mount_str,
                                  detail::errno_text(err));
      return result;
    }
    detail::set_errno_failure(
        ec, diag, err,
        fmt::format("cannot stat the LiteFS mount {}: {}", mount_str, detail::errno_text(err)));
    return fail_role();
  }
  if (!S_ISDIR(root.st_mode)) {
    result.kind = role_kind::not_litefs;
    result.reason = fmt::format("{} is not a directory: not a LiteFS mount", mount_str);
    return result;
  }

  const std::string lag_path = detail::path_string(mount, lag_filename);
  struct stat lag_st {};
  if (::stat(lag_path.c_str(), &lag_st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      result.kind = role_kind::not_litefs;
      result.reason =
          fmt::format("{} has no .lag: not a LiteFS mount (LiteFS always serves .lag)", mount_str);
      return result;
    }
    detail::set_errno_failure(ec, diag, err,
                              fmt::format("cannot stat {}: {}", lag_path, detail::errno_text(err)));
    return fail_role();
  }

  const std::string primary_path = detail::path_string(mount, primary_filename);
  std::string absent_why = "no .primary";
  struct stat primary_st {};
  if (::lstat(primary_path.c_str(), &primary_st) == 0) {
    const detail::file_read r = detail::read_bounded(primary_path, max_file_size);
    if (r.outcome == detail::read_outcome::ok) {
      std::string host = parse_primary(r.bytes, ec, diag, primary_path);
      if (ec) return fail_role();
      result.kind = role_kind::replica;
      result.reason = fmt::format("{} names the primary {}", primary_path, host);
      result.primary_hostname = std::move(host);
      return result;
    }
    if (r.outcome != detail::read_outcome::not_found) {
      detail::set_read_failure(ec, diag, r, primary_path, "the primary's hostname");
      return fail_role();
    }
    absent_why = ".primary vanished between stat and read (ENOENT: LiteFS lost its primary)";
  } else if (errno != ENOENT) {
    const int err = errno;
    detail::set_errno_failure(
        ec, diag, err, fmt::format("cannot stat {}: {}", primary_path, detail::errno_text(err)));
    return fail_role();
  }

  const detail::file_read lag_read = detail::read_bounded(lag_path, max_file_size);
  if (lag_read.outcome == detail::read_outcome::not_found) {
    result.kind = role_kind::not_litefs;
    result.reason =
        fmt::format("{} vanished while reading it: the LiteFS mount went away", lag_path);
    return result;
  }
  detail::set_read_failure(ec, diag, lag_read, lag_path, "LiteFS's replication lag");
  if (ec) return fail_role();
  const std::chrono::milliseconds lag = parse_lag(lag_read.bytes, ec, diag, lag_path);
  if (ec) return fail_role();

  const unsigned mode = static_cast<unsigned>(root.st_mode & 07777);
  const bool writable = (root.st_mode & 0222) != 0;
  const std::string lag_text = never_synced(lag) ? std::string("never synced (+2147483647)")
                                                 : fmt::format("{} ms", lag.count());
  if (writable && lag.count() == 0) {
    result.kind = role_kind::primary;
    result.reason =
        fmt::format("{}, mount root writable (mode {:04o}) and .lag 0: this node is the primary",
                    absent_why, mode);
    return result;
  }
  result.kind = role_kind::unknown;
  result.reason = fmt::format(
      "{}, mount root mode {:04o} {}, .lag {}: no primary known (election, reconnect, or none); "
      "writes must wait",
      absent_why, mode, writable ? "(writable)" : "(read-only: a replica)", lag_text);
  return result;
}

FWD_DECL role read_role(const std::filesystem::path& mount, boost::system::error_code& ec) {
  diagnostics ignored;
  return read_role(mount, ec, ignored);
}

FWD_DECL role read_role(const std::filesystem::path& mount) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = read_role(mount, ec, diag);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL role current_role(const std::filesystem::path& mount) noexcept {
  try {
    // The role is already `unknown` with the failure as its reason.
    boost::system::error_code ignored;
    return read_role(mount, ignored);
  } catch (...) {
    role r;
    r.kind = role_kind::unknown;
    return r;
  }
}
}  // namespace fwd::litefs

// ---- end fwd/litefs/impl/mount.ipp ----
#endif

// ---- end fwd/litefs/mount.hpp ----
// ---- begin fwd/litefs/path_check.hpp ----

// The database-path check: a database must be on a LiteFS FUSE mount, never in LiteFS's
// data directory (where nothing replicates: every node silently gets its own database).


namespace fwd::litefs {

// ---------------------------------------------------------------------------------------
// The database-path check
// ---------------------------------------------------------------------------------------

/**
 * Checks that `db` is a database path on a LiteFS FUSE mount, in this order:
 *  1. empty path, a NUL byte, or a path naming no file ("/", "dir/", ".", "..") is bad_argument;
 *  2. a path inside LiteFS's data directory (an ancestor holding `dbs/`) is
 *     misconfigured_mount: nothing written there replicates;
 *  3. the database's directory must be a FUSE mount (`statfs().f_type == 0x65735546`),
 *     unless `options.require_fuse` is false: otherwise not_litefs;
 *  4. that directory must hold `.lag`: otherwise not_litefs.
 * Relative paths are taken from the current directory. Other I/O failures keep their
 * system error code. Returns the LiteFS mount directory (the database's directory),
 * empty on failure.
 */
FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                 const path_check_options& options,
                                                 boost::system::error_code& ec,
                                                 diagnostics& diag);

FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                 const path_check_options& options,
                                                 boost::system::error_code& ec);

/// Throws fwd::error with the detailed message when the check fails.
FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                 const path_check_options& options = {});

}  // namespace fwd::litefs

#if !defined(FWD_SEPARATE_COMPILATION)
// ---- begin fwd/litefs/impl/path_check.ipp ----

// Definitions of <fwd/litefs/path_check.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>


namespace fwd::litefs {

namespace detail {

/// A LiteFS data directory holds `dbs/`, whose entries are `<name>/` directories with a
/// `database` file or an `ltx/` directory. An empty `dbs/` counts too (no database yet).
inline bool looks_like_data_directory(const std::filesystem::path& dir) {
  std::error_code ec;
  const std::filesystem::path dbs = dir / "dbs";
  if (!std::filesystem::is_directory(dbs, ec)) return false;
  std::filesystem::directory_iterator it(dbs, ec);
  if (ec) return false;
  bool empty = true;
  // Bounded: a huge unrelated directory must not make the check slow.
  for (int seen = 0; it != std::filesystem::directory_iterator() && seen < 256;
       it.increment(ec), ++seen) {
    if (ec) return false;
    empty = false;
    const std::filesystem::path entry = it->path();
    std::error_code e1, e2;
    if (std::filesystem::is_directory(entry, e1) &&
        (std::filesystem::exists(entry / "database", e1) ||
         std::filesystem::is_directory(entry / "ltx", e2))) {
      return true;
    }
  }
  return empty;
}

/// The LiteFS FUSE mount in `mounts_file` (default /proc/self/mounts) to suggest for a
/// database found under the data directory `near`: with several LiteFS mounts, the one
/// that shares the longest path with it (a LiteFS's mount and data directory usually sit
/// side by side, e.g. /litefs and /var/lib/litefs, or <dir>/mnt and <dir>/data); else the
/// first; else /litefs.
inline std::filesystem::path suggested_mount(const std::optional<std::filesystem::path>& mounts_file,
                                             const std::filesystem::path& near = {}) {
  const std::string file = mounts_file ? mounts_file->string() : std::string("/proc/self/mounts");
  const file_read r = read_bounded(file, 1u << 20);
  if (r.outcome != read_outcome::ok) return std::filesystem::path(std::string(default_mount));
  std::optional<std::filesystem::path> best;
  std::size_t best_shared = 0;
  for (const auto& e : parse_mounts(r.bytes)) {
    if (!is_litefs_mount(e)) continue;
    const std::filesystem::path mount(e.mount_point);
    std::size_t shared = 0;
    for (auto a = mount.begin(), b = near.begin(); a != mount.end() && b != near.end() && *a == *b; ++a, ++b) {
      ++shared;
    }
    if (!best || shared > best_shared) {
      best = mount;
      best_shared = shared;
    }
  }
  return best ? *best : std::filesystem::path(std::string(default_mount));
}

}  // namespace detail

FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                   const path_check_options& options,
                                                   boost::system::error_code& ec,
                                                   diagnostics& diag) {
  ec.clear();
  diag.clear();
  auto fail = [&](boost::system::error_code code, std::string message) {
    ec = code;
    diag.assign(std::move(message));
    return std::filesystem::path();
  };
  const std::string raw = db.string();
  if (raw.empty()) {
    return fail(errc::bad_argument,
                "the database path is empty: give the database's path on the LiteFS mount, e.g. "
                "/litefs/blog.db");
  }
  if (raw.find('\0') != std::string::npos) {
    return fail(errc::bad_argument,
                fmt::format("the database path {} contains a NUL byte: give the database's "
                            "path on the LiteFS mount, e.g. /litefs/blog.db",
                            detail::escape_bytes(raw)));
  }
  std::error_code fs_ec;
  std::filesystem::path absolute = std::filesystem::absolute(db, fs_ec);
  if (fs_ec) {
    return fail(boost::system::error_code(fs_ec.value(), boost::system::system_category()),
                fmt::format("cannot make the database path {} absolute: {}", raw, fs_ec.message()));
  }
  const std::string name = db.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return fail(errc::bad_argument,
                fmt::format("the database path {} names a directory, not a database file: give "
                            "the database's path on the LiteFS mount, e.g. /litefs/blog.db",
                            raw));
  }
  absolute = absolute.lexically_normal();
  const std::filesystem::path dir = absolute.parent_path();

  // 2. Inside LiteFS's data directory: the mistake that silently splits the cluster.
  for (std::filesystem::path ancestor = dir;; ancestor = ancestor.parent_path()) {
    if (detail::looks_like_data_directory(ancestor)) {
      // For <data>/dbs/<name>/database, suggest <name>; otherwise the file's own name.
      std::string suggested_name = absolute.filename().string();
      const std::filesystem::path rel = absolute.lexically_relative(ancestor);
      auto part = rel.begin();
      if (part != rel.end() && *part == "dbs" && ++part != rel.end() &&
          std::next(part) != rel.end()) {
        suggested_name = part->string();
      }
      const std::filesystem::path suggestion =
          detail::suggested_mount(options.mounts_file, ancestor) / suggested_name;
      return fail(errc::misconfigured_mount,
                  fmt::format("{} is inside LiteFS's data directory ({}); nothing written there "
                              "replicates. Point SQLite at the FUSE mount, e.g. {}",
                              absolute.string(), ancestor.string(), suggestion.string()));
    }
    if (ancestor == ancestor.parent_path() || ancestor.empty()) break;
  }

  // 3. A FUSE mount.
  struct statfs fs_info {};
  if (::statfs(dir.c_str(), &fs_info) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return fail(errc::not_litefs,
                  fmt::format("the directory {} of the database {} does not exist ({}): point "
                              "SQLite at the LiteFS FUSE mount, e.g. {}, and start LiteFS before "
                              "the application",
                              dir.string(), absolute.string(), detail::errno_text(err),
                              (detail::suggested_mount(options.mounts_file) / name).string()));
    }
    return fail(boost::system::error_code(err, boost::system::system_category()),
                fmt::format("cannot statfs {} (the directory of {}): {}", dir.string(),
                            absolute.string(), detail::errno_text(err)));
  }
  const auto magic = static_cast<std::uint64_t>(static_cast<unsigned long>(fs_info.f_type));
  if (options.require_fuse && magic != fuse_super_magic) {
    const char* fs_name = detail::filesystem_name(magic);
    return fail(
        errc::not_litefs,
        fmt::format("{} (the directory of {}) is not a FUSE mount: its filesystem magic is "
                    "{:#x}{}, a LiteFS mount has {:#x} (FUSE), so nothing written there "
                    "replicates. Point SQLite at the LiteFS FUSE mount, e.g. {} (for a LiteFS "
                    "simulation in tests, set path_check_options::require_fuse = false)",
                    dir.string(), absolute.string(), magic,
                    fs_name ? fmt::format(" ({})", fs_name) : std::string(), fuse_super_magic,
                    (detail::suggested_mount(options.mounts_file) / name).string()));
  }

  // 4. `.lag`, which LiteFS always serves.
  const std::string lag_path = detail::path_string(dir, lag_filename);
  struct stat st {};
  if (::stat(lag_path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      return fail(
          errc::not_litefs,
          fmt::format("{} {}; LiteFS always serves .lag in its mount. Point SQLite at the LiteFS "
                      "FUSE mount, e.g. {}",
                      dir.string(),
                      options.require_fuse
                          ? "is a FUSE mount but has no .lag: not a LiteFS mount"
                          : "has no .lag: not a LiteFS mount nor a LiteFS simulation",
                      (detail::suggested_mount(options.mounts_file) / name).string()));
    }
    return fail(boost::system::error_code(err, boost::system::system_category()),
                fmt::format("cannot stat {}: {}", lag_path, detail::errno_text(err)));
  }
  return dir;
}

FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                   const path_check_options& options,
                                                   boost::system::error_code& ec) {
  diagnostics ignored;
  return check_database_path(db, options, ec, ignored);
}

FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                   const path_check_options& options) {
  boost::system::error_code ec;
  diagnostics diag;
  auto mount = check_database_path(db, options, ec, diag);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return mount;
}
}  // namespace fwd::litefs

// ---- end fwd/litefs/impl/path_check.ipp ----
#endif

// ---- end fwd/litefs/path_check.hpp ----
// ---- begin fwd/litefs/monitor_options.hpp ----

// What litefs::monitor publishes (node_state), how it is set up (monitor_options), and
// the status of LiteFS's `/events` stream it follows.

#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
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

// ---- end fwd/litefs/monitor_options.hpp ----
// ---- begin fwd/litefs/monitor.hpp ----

// litefs::monitor: the one place that knows this node's LiteFS state. One poll of the
// mount serves everybody: writes read the role, and read-your-writes waiters the
// position, from an immutable snapshot with an atomic load (no FUSE syscall per write or
// per waiter). The poll runs every `poll_interval`, and every `wait_poll_interval` while
// someone waits for a position; a waiter is woken when the position reaches its TXID.
// With LiteFS's `/events` stream (monitor_options::http), each tx event publishes the
// position it carries without reading the mount, and other events trigger a poll.
//
// The poll runs on the monitor's own thread ("fwd-monitor"), the one thread fwd starts
// besides the write executor's: a FUSE request that LiteFS never answers (a hung LiteFS)
// blocks that thread, never a thread running the user's io_context. After start() no
// FUSE syscall happens on an io_context thread; the thread publishes each state with an
// atomic store and posts what changed (on_change, waiters) to the monitor's strand.
// Waiter deadlines are kept by a timer on the strand, so they pass on time even while a
// poll is stuck.
//
// It also notices what LiteFS does under a running service:
//   - a dead mount (LiteFS stopped: ECONNABORTED, then ENOTCONN on every access): the
//     role is `unknown`, `mount_dead` is set, and `mount_generation` changes, so that
//     whoever holds SQLite connections on the mount closes them before touching them;
//   - a replaced mount (LiteFS restarted: a new FUSE mount on top of the dead one, a new
//     device id): `mount_generation` changes again, and connections are reopened;
//   - a role change at once, not after the kernel's attribute cache expires (the root's
//     mode is re-read with AT_STATX_FORCE_SYNC by litefs::read_role).
// It never throws into the executor; every change goes to `on_change`.

#include <array>
#include <atomic>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
// ---- begin fwd/litefs/detail/monitor_poller.hpp ----

// The part of litefs::monitor that its polling thread owns a share of: what to read, the
// published state, and what wakes the thread. It holds no I/O object of the user's
// io_context, so a polling thread stuck in a FUSE call that LiteFS never answers can
// outlive the monitor (and the io_context) safely. Internal.

#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <fmt/format.h>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>

namespace fwd::litefs::detail {

inline bool is_dead_mount_errno(int err) noexcept { return err == ENOTCONN || err == ECONNABORTED; }

class monitor_poller {
 public:
  explicit monitor_poller(monitor_options options) : options_(std::move(options)) {
    if (!options_.read_role) {
      options_.read_role = [mount = options_.mount] { return litefs::current_role(mount); };
    }
  }

  const monitor_options& options() const noexcept { return options_; }

  std::shared_ptr<const node_state> state() const noexcept { return state_.load(std::memory_order_acquire); }
  role_kind current_role_kind() const noexcept { return role_kind_.load(std::memory_order_acquire); }

  /// Wakes the thread for a poll now (any thread).
  void request() {
    {
      std::lock_guard lock(mutex_);
      requested_ = true;
      ++requests_;
    }
    wake_.notify_one();
  }

  /// Ends the thread's loop at once (it may still be inside a poll).
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
  }

  bool stopping() {
    std::lock_guard lock(mutex_);
    return stopping_;
  }

  /// Queues `job` for the thread, which runs it between polls (any thread). False when
  /// the thread is stopping or gone: the job is dropped.
  bool submit(std::function<void()> job) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_ || thread_done_) return false;
      jobs_.push_back(std::move(job));
    }
    wake_.notify_one();
    return true;
  }

  /// The thread: waits for the next poll (interval, request or stop), running the jobs
  /// submitted meanwhile. False when stopping.
  bool wait_until_due() {
    const auto interval = waiters.load() == 0    ? options_.poll_interval
                          : events_connected.load() ? options_.wait_poll_interval_with_events
                                                    : options_.wait_poll_interval;
    const auto due = std::chrono::steady_clock::now() + interval;
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait_until(lock, due, [&] { return stopping_ || requested_ || !jobs_.empty(); });
      if (stopping_) return false;
      if (jobs_.empty()) break;
      // Jobs run outside the lock, so that submit() never waits for one stuck in FUSE.
      std::deque<std::function<void()>> jobs;
      jobs.swap(jobs_);
      lock.unlock();
      for (auto& job : jobs) {
        try {
          job();
        } catch (...) {
          // A job reports its own failures; nothing escapes the thread.
        }
      }
      jobs.clear();
      lock.lock();
    }
    requested_ = false;
    serving_ = requests_;
    return true;
  }

  /// The thread has finished the poll that wait_until_due() let it start.
  void poll_done() {
    std::lock_guard lock(mutex_);
    served_ = serving_;
  }

  /// True when every poll requested so far has run to its end (any thread).
  bool requests_served() {
    std::lock_guard lock(mutex_);
    return served_ == requests_;
  }

  /// The thread says it has returned; stop_and_wait() may then join it.
  void thread_done() {
    {
      std::lock_guard lock(mutex_);
      thread_done_ = true;
    }
    wake_.notify_all();
  }

  /// Waits up to options().stop_timeout for thread_done(). False when the thread is stuck.
  bool wait_thread_done() {
    std::unique_lock lock(mutex_);
    return wake_.wait_for(lock, options_.stop_timeout, [&] { return thread_done_; });
  }

  /// Reads the mount (a handful of FUSE syscalls) and stores a new state if anything
  /// changed; returns it then (null otherwise).
  std::shared_ptr<const node_state> poll_once() noexcept;

  /// A position LiteFS announced (a tx event of the monitored database): stores a state
  /// with it, no FUSE syscall, when it is ahead of the state's; returns that state (null
  /// otherwise). A position that goes back (another history after a failover) is left
  /// to the next poll: an event never moves the position backwards.
  std::shared_ptr<const node_state> publish_position(position p) noexcept;

  std::atomic<std::size_t> waiters{0};      // position waiters registered (the fast poll)
  std::atomic<bool> events_connected{false};  // the /events stream is up

 private:
  monitor_options options_;
  std::atomic<std::shared_ptr<const node_state>> state_{std::make_shared<const node_state>()};
  std::atomic<role_kind> role_kind_{role_kind::unknown};
  std::mutex mutex_;
  std::condition_variable wake_;
  // Serialises the stores of a poll and of tx events; counts the positions events stored,
  // so that a poll that read `<db>-pos` before an event's store does not undo it.
  std::mutex publish_mutex_;
  std::uint64_t event_positions_ = 0;
  bool requested_ = false;
  std::uint64_t requests_ = 0;  // request() calls so far
  std::uint64_t serving_ = 0;   // requests_ when the running (or last) poll began
  std::uint64_t served_ = 0;    // requests_ when the last finished poll began
  bool stopping_ = false;
  bool thread_done_ = false;
  std::deque<std::function<void()>> jobs_;  // submit(): run by the thread between polls
};

inline std::shared_ptr<const node_state> monitor_poller::poll_once() noexcept {
  try {
    std::uint64_t events_before = 0;
    {
      std::lock_guard lock(publish_mutex_);
      events_before = event_positions_;
    }
    auto before = state();
    auto next = std::make_shared<node_state>();
    next->mount_generation = before->mount_generation;
    const std::string mount = options_.mount.string();
    auto dead = [&](const std::string& why) {
      next->mount_dead = true;
      next->role = role_kind::unknown;  // never "primary" on a dead mount
      next->reason = fmt::format("the LiteFS mount {} is dead ({}): LiteFS stopped under the service",
                                 mount, why);
    };

    struct stat root {};
    if (::stat(options_.mount.c_str(), &root) != 0) {
      const int err = errno;
      if (is_dead_mount_errno(err)) {
        dead(std::generic_category().message(err));
      } else {
        next->role = role_kind::unknown;
        next->reason = fmt::format("cannot stat the LiteFS mount {}: {}", mount,
                                   std::generic_category().message(err));
      }
    } else {
      next->mount_device = static_cast<std::uint64_t>(root.st_dev);
      // `.lag` always exists on a live mount; reading it tells a dead mount at once.
      boost::system::error_code ec;
      next->lag = read_lag(options_.mount, ec);
      if (ec && is_dead_mount_errno(ec.value())) {
        dead(ec.message());
      } else {
        role r;
        try {
          r = options_.read_role();
        } catch (const std::exception& e) {
          r.reason = fmt::format("reading the role failed: {}", e.what());
        }
        next->role = r.kind;
        next->primary_hostname = std::move(r.primary_hostname);
        next->reason = std::move(r.reason);
        if (!options_.database.empty()) {
          boost::system::error_code pos_ec;
          next->pos = read_position(options_.mount, options_.database, pos_ec);
          if (pos_ec && is_dead_mount_errno(pos_ec.value())) dead(pos_ec.message());
        }
      }
    }
    // A mount that died, or came back as another filesystem, is a new generation.
    if (next->mount_dead != before->mount_dead ||
        (next->mount_device != 0 && before->mount_device != 0 && next->mount_device != before->mount_device)) {
      ++next->mount_generation;
    }
    if (next->mount_dead) next->mount_device = 0;
    std::lock_guard lock(publish_mutex_);
    if (event_positions_ != events_before) {
      // A tx event stored a position while this poll ran: the file was read before it or
      // after it; keep the newer of the two (the next poll reads the file again).
      const auto latest = state();
      if (!next->mount_dead && next->mount_generation == latest->mount_generation &&
          latest->pos.txid > next->pos.txid) {
        next->pos = latest->pos;
      }
      before = latest;
    }
    const bool changed = next->role != before->role || next->primary_hostname != before->primary_hostname ||
                         next->mount_dead != before->mount_dead ||
                         next->mount_generation != before->mount_generation || next->pos != before->pos ||
                         before->version == 0;
    if (changed) {
      next->version = before->version + 1;
      std::shared_ptr<const node_state> published = std::move(next);
      state_.store(published, std::memory_order_release);
      role_kind_.store(published->role, std::memory_order_release);
      return published;
    }
    if (next->lag != before->lag) {
      // The lag moves all the time (a 0-1000 ms sawtooth on a caught-up replica): kept
      // fresh without a change event.
      next->version = before->version;
      state_.store(std::shared_ptr<const node_state>(std::move(next)), std::memory_order_release);
    }
  } catch (...) {
    // Allocation failure: keep the last state; the next poll tries again.
  }
  return nullptr;
}

inline std::shared_ptr<const node_state> monitor_poller::publish_position(position p) noexcept {
  try {
    std::lock_guard lock(publish_mutex_);
    const auto before = state();
    if (before->mount_dead || before->version == 0 || p.txid <= before->pos.txid) return nullptr;
    auto next = std::make_shared<node_state>(*before);
    next->pos = p;
    next->version = before->version + 1;
    std::shared_ptr<const node_state> published = std::move(next);
    state_.store(published, std::memory_order_release);
    ++event_positions_;
    return published;
  } catch (...) {
    return nullptr;  // allocation failure: the next poll reads the file
  }
}

}  // namespace fwd::litefs::detail

// ---- end fwd/litefs/detail/monitor_poller.hpp ----
// ---- begin fwd/litefs/history.hpp ----

// What a replica knows of its own history: the (TXID, checksum) pairs its database held
// recently. A forwarded write's reply carries the primary's position after the commit;
// reaching that TXID proves nothing on its own, since a failover that lost the old
// primary's last transactions lets the new primary write another transaction under the
// same TXID. LiteFS's checksum is one of the whole database after that transaction, so an
// equal checksum at that TXID means the same database, the write included.


#include <cstddef>
#include <cstdint>
#include <map>

namespace fwd::litefs {

/// How a position reported by the primary compares with this node's history.
enum class history_match {
  same,        ///< this node held that TXID with that checksum: the primary's history
  diverged,    ///< this node held that TXID with another checksum: another history
  unobserved,  ///< this node has not seen that TXID's checksum (it went past it unseen)
};

/// "same", "diverged" or "unobserved".
constexpr const char* to_string(history_match m) noexcept {
  switch (m) {
    case history_match::same:
      return "same";
    case history_match::diverged:
      return "diverged";
    case history_match::unobserved:
      return "unobserved";
  }
  return "?";
}

/// How `local`, a position this node held, compares with `wanted` (same TXID or not).
constexpr history_match compare_at(position wanted, position local) noexcept {
  if (local.txid != wanted.txid) return history_match::unobserved;
  return local.checksum == wanted.checksum ? history_match::same : history_match::diverged;
}

/**
 * The positions this node's database held since its history last may have been replaced
 * (a new primary, a new mount), most recent `capacity` TXIDs. Not thread-safe: one owner
 * (litefs::monitor keeps one on its strand).
 */
class position_history {
 public:
  explicit position_history(std::size_t capacity = 4096) : capacity_(capacity == 0 ? 1 : capacity) {}

  /// The database held `p` (a later observation of the same TXID replaces the earlier).
  void record(position p) {
    if (p.txid == 0 || p == carried_over_) return;
    seen_[p.txid] = p.checksum;
    while (seen_.size() > capacity_) seen_.erase(seen_.begin());
  }

  /// The database went back to `p` (LiteFS restored another history): what was recorded
  /// past it belongs to a history the database no longer holds.
  void rewind_to(position p) {
    seen_.erase(seen_.upper_bound(p.txid), seen_.end());
    record(p);
  }

  /// The history may be replaced from now on (another primary, a new mount): forget it
  /// all. `held`, what the database holds at this moment, was written under the old one:
  /// it is not recorded again (the new primary may send a snapshot of another history
  /// past it at any time, and nothing would tell that one from a continuation).
  void forget(position held = {}) noexcept {
    seen_.clear();
    carried_over_ = held;
  }

  /// How `wanted` compares with what this node held.
  history_match compare(position wanted) const noexcept {
    const auto it = seen_.find(wanted.txid);
    if (it == seen_.end()) return history_match::unobserved;
    return compare_at(wanted, position{it->first, it->second});
  }

  /// The highest TXID recorded (0 when none).
  std::uint64_t last_txid() const noexcept { return seen_.empty() ? 0 : seen_.rbegin()->first; }

  std::size_t size() const noexcept { return seen_.size(); }

 private:
  std::map<std::uint64_t, std::uint64_t> seen_;  // TXID -> checksum
  std::size_t capacity_;
  position carried_over_;  // held when the history was last forgotten
};

}  // namespace fwd::litefs

// ---- end fwd/litefs/history.hpp ----
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

namespace fwd::litefs {

/**
 * This node's LiteFS state, read by one polling thread and shared by everybody.
 *
 * **Threads.** start() reads the mount once on the calling thread, then starts the
 * monitor's polling thread (named "fwd-monitor" on Linux), which does every later read
 * of the mount. on_change hooks and waiter completions run on the executor given to
 * create() (the hooks on the monitor's strand). stop() joins the thread.
 *
 * Thread-safe: every member function may be called from any thread.
 */
class monitor : public std::enable_shared_from_this<monitor> {
 public:
  using clock = std::chrono::steady_clock;

  static std::shared_ptr<monitor> create(boost::asio::any_io_executor ex, monitor_options options) {
    return std::shared_ptr<monitor>(new monitor(std::move(ex), std::move(options)));
  }

  monitor(const monitor&) = delete;
  monitor& operator=(const monitor&) = delete;
  ~monitor();

  /// Reads the mount once at once (so that state() is meaningful when this returns), then
  /// starts the polling thread. Runs once; later calls do nothing.
  void start();

  /// Stops polling and joins the polling thread (within options().stop_timeout); waiters
  /// complete with errc::cancelled.
  void stop();

  /// The current state: an atomic load, no syscall. Never null.
  std::shared_ptr<const node_state> state() const noexcept { return poller_->state(); }

  /// The current role: an atomic load, no syscall.
  role_kind current_role_kind() const noexcept { return poller_->current_role_kind(); }

  /**
   * Waits until the monitored database's position reaches `txid` (or the deadline).
   *
   * Completion signature: `void(boost::system::error_code, position)`: empty on success
   * with the position reached; `errc::timeout` when the deadline passed first (with the
   * last position seen; on time even while a poll is stuck in LiteFS); `errc::cancelled`
   * on stop() or per-operation cancellation. Completes through the handler's associated
   * executor, never inside this call.
   *
   * **Per-Operation Cancellation**: terminal, partial and total; the waiter is removed at
   * once (waiters() no longer counts it) and nothing else changes.
   */
  template <class Token>
  auto async_wait_position(std::uint64_t txid, clock::time_point deadline, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, position)>(
        [self = shared_from_this(), txid, deadline](auto handler) {
          self->add_waiter(waiter(txid, deadline, wait_handler(std::move(handler))));
        },
        token);
  }

  /**
   * Read-your-writes with history: waits until the database reaches `target.txid` (or the
   * deadline), then tells how `target` (the primary's position after a write) compares
   * with what this node held at that TXID: `same` (the checksum matches: the write is
   * here), `diverged` (another transaction holds that TXID here: a failover lost the
   * write, or it is elsewhere in this history), or `unobserved` (this node went past that
   * TXID without seeing its checksum, or its history was replaced since). Only `same`
   * proves the write is here; otherwise look for it in the database.
   *
   * The history is what this node's database held since its primary (or mount) last
   * changed, from every `<db>-pos` read and every tx event of LiteFS's `/events`.
   *
   * Completion signature: `void(boost::system::error_code, history_match, position)`
   * (the position reached); errors and cancellation as async_wait_position (the match is
   * then `unobserved`).
   */
  template <class Token>
  auto async_wait_history(position target, clock::time_point deadline, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, history_match, position)>(
        [self = shared_from_this(), target, deadline](auto handler) {
          self->add_waiter(waiter(target, deadline, history_wait_handler(std::move(handler))));
        },
        token);
  }

  /**
   * Runs `job` on the polling thread, between two polls: for a blocking read of the mount
   * (a FUSE syscall, an SQLite read of a database in it) that must not run on a thread of
   * the user's io_context. Returns at once; false when the polling thread is not running
   * (before start(), after stop()): the job is dropped then. Jobs run one at a time, in
   * order. A job stuck in a FUSE call that LiteFS never answers holds up the polls (and
   * jobs) behind it, as a stuck poll holds up the jobs: whoever waits for a job's result
   * bounds the wait with its own timer. An exception thrown by `job` is swallowed.
   */
  bool run_on_polling_thread(std::function<void()> job) {
    if (!started_.load(std::memory_order_acquire)) return false;
    return poller_->submit(std::move(job));
  }

  /// Position waiters registered now (for telemetry and tests).
  std::size_t waiters() const noexcept { return poller_->waiters.load(std::memory_order_acquire); }

  /// Asks the polling thread to re-read the mount now; returns at once (any thread).
  void poll_now();

  /// True when every re-read asked for so far (by poll_now(), an event other than `tx`, a
  /// reconnected event stream, a waiter) has run to its end, so the published state
  /// reflects the mount as read after the last such request (any thread).
  bool polls_requested_done() const;

  const monitor_options& options() const noexcept { return poller_->options(); }

  /**
   * For a writer, right before it touches the database `db` (a path in the mount): the
   * mount generation to use, or nullopt when the mount cannot be used now (dead, or
   * replaced since the last poll: a new poll is requested). One forced getattr of `db`
   * (a FUSE round trip, on the caller's thread: the writer's), so that a mount that died
   * or was replaced since the last poll is caught before SQLite maps its `-shm`. A
   * missing `db` (not created yet) is fine.
   */
  std::optional<std::uint64_t> writable_generation(const std::string& db);

  /// The `/events` stream's status (for telemetry and tests).
  event_stream_status events() const noexcept {
    return {poller_->events_connected.load(), events_seen_.load(), events_connects_.load()};
  }

 private:
  using wait_handler =
      boost::asio::any_completion_handler<void(boost::system::error_code, position)>;
  using history_wait_handler =
      boost::asio::any_completion_handler<void(boost::system::error_code, history_match, position)>;
  // Built whole: Boost 1.81's any_completion_handler cannot be move-assigned (its
  // operator= recurses), only move-constructed.
  struct waiter {
    waiter(std::uint64_t t, clock::time_point d, wait_handler h)
        : txid(t), deadline(d), handler(std::move(h)) {}
    waiter(position target_position, clock::time_point d, history_wait_handler h)
        : txid(target_position.txid), deadline(d), target(target_position), history_handler(std::move(h)) {}
    std::uint64_t id = 0;
    std::uint64_t txid = 0;
    clock::time_point deadline;
    wait_handler handler;                  // async_wait_position
    std::optional<position> target;        // async_wait_history: the position compared
    history_wait_handler history_handler;  // async_wait_history
  };

  monitor(boost::asio::any_io_executor ex, monitor_options options);

  // The polling thread (impl/monitor.hpp). It shares the poller, and reaches the monitor
  // only through a weak pointer to post what changed.
  static void run_polling_thread(const std::shared_ptr<detail::monitor_poller>& poller,
                                 const std::weak_ptr<monitor>& weak);
  void join_polling_thread();

  // Waiters, on the strand (impl/monitor.hpp).
  void add_waiter(waiter w);
  void observe_state();
  void publish_on_strand(std::shared_ptr<const node_state> published);
  void wake_waiters();
  void arm_deadline();
  void cancel_waiter(std::uint64_t id);
  void fail_waiters(boost::system::error_code ec);
  void complete(waiter& w, boost::system::error_code ec, position p);
  void count_waiters();

  // LiteFS's /events stream, on the strand (impl/monitor_events.hpp).
  void connect_events();
  void read_events_header();
  void read_events_body();
  void on_event_bytes(std::string_view bytes);
  void events_broke();

  static constexpr std::size_t max_event_line = 64 * 1024;

  boost::asio::any_io_executor executor_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  std::shared_ptr<detail::monitor_poller> poller_;  // options, state, what wakes the thread
  std::thread thread_;
  std::atomic<bool> started_{false};

  // On the strand.
  bool stopped_ = true;
  std::list<waiter> waiters_;
  std::atomic<std::uint64_t> next_id_{1};
  boost::asio::steady_timer deadline_timer_;
  std::optional<clock::time_point> armed_for_;
  // What the database held since its primary or mount last changed (read-your-writes).
  position_history history_;
  std::uint64_t observed_version_ = 0;
  role_kind observed_role_ = role_kind::unknown;
  std::string observed_primary_;
  std::uint64_t observed_generation_ = 0;

  // The /events stream, on the strand.
  boost::asio::steady_timer events_timer_;
  boost::asio::ip::tcp::socket events_socket_;
  boost::beast::http::request<boost::beast::http::empty_body> events_request_;
  std::optional<boost::beast::http::response_parser<boost::beast::http::buffer_body>>
      events_parser_;
  boost::beast::flat_buffer events_buffer_;
  std::array<char, 4096> events_chunk_{};
  std::string events_line_;
  std::atomic<std::uint64_t> events_seen_{0};
  std::atomic<std::uint64_t> events_connects_{0};
};

}  // namespace fwd::litefs

// ---- begin fwd/litefs/impl/monitor.hpp ----

// litefs::monitor's bodies: the polling thread (the only place the mount is read after
// start()) and the position waiters (on the monitor's strand).

#include <sys/stat.h>

#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <fmt/format.h>
#include <system_error>

#if defined(__linux__)
#include <pthread.h>
#endif

namespace fwd::litefs {

inline monitor::monitor(boost::asio::any_io_executor ex, monitor_options options)
    : executor_(std::move(ex)),
      strand_(boost::asio::make_strand(executor_)),
      poller_(std::make_shared<detail::monitor_poller>(std::move(options))),
      deadline_timer_(strand_),
      events_timer_(strand_),
      events_socket_(strand_) {}

inline monitor::~monitor() {
  poller_->stop();
  // The polling thread holds a reference to the monitor only while it posts a change:
  // when the last one goes there, this destructor runs on that thread, which then returns.
  if (thread_.joinable()) {
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();
    } else {
      join_polling_thread();
    }
  }
}

inline void monitor::start() {
  if (started_.exchange(true)) return;  // once
  if (auto first = poller_->poll_once()) publish_on_strand(std::move(first));
  thread_ = std::thread([poller = poller_, weak = weak_from_this()] {
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "fwd-monitor");
#endif
    run_polling_thread(poller, weak);
    poller->thread_done();
  });
  boost::asio::dispatch(strand_, [self = shared_from_this()] {
    self->stopped_ = false;
    if (self->poller_->options().http) self->connect_events();
  });
}

inline void monitor::stop() {
  poller_->stop();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) join_polling_thread();
  boost::asio::dispatch(strand_, [self = shared_from_this()] {
    self->stopped_ = true;
    self->deadline_timer_.cancel();
    self->events_timer_.cancel();
    boost::system::error_code ignored;
    self->events_socket_.close(ignored);
    self->fail_waiters(make_error_code(errc::cancelled));
  });
}

// Joins at once when the thread is between polls (it waits on a condition variable). A
// thread stuck in a FUSE call that LiteFS never answers is left to finish it: it holds
// only the poller, and posts nothing once stopped.
inline void monitor::join_polling_thread() {
  if (poller_->wait_thread_done()) {
    thread_.join();
  } else {
    thread_.detach();
  }
}

inline void monitor::poll_now() { poller_->request(); }

inline bool monitor::polls_requested_done() const { return poller_->requests_served(); }

inline void monitor::run_polling_thread(const std::shared_ptr<detail::monitor_poller>& poller,
                                        const std::weak_ptr<monitor>& weak) {
  while (poller->wait_until_due()) {
    auto published = poller->poll_once();
    if (published && !poller->stopping()) {
      if (auto self = weak.lock()) self->publish_on_strand(std::move(published));
    }
    poller->poll_done();
  }
}

inline std::optional<std::uint64_t> monitor::writable_generation(const std::string& db) {
  const auto s = state();
  if (s->mount_dead) return std::nullopt;
  const auto& mount = poller_->options().mount;
  struct stat now {};
  if (detail::stat_uncached(db, now) != 0) {
    if (errno != ENOENT) {
      poller_->request();
      return std::nullopt;
    }
    // No database yet: the mount itself must still be the one the state describes.
    if (detail::stat_uncached(mount.string(), now) != 0) {
      poller_->request();
      return std::nullopt;
    }
  }
  if (s->mount_device != 0 && static_cast<std::uint64_t>(now.st_dev) != s->mount_device) {
    poller_->request();
    return std::nullopt;
  }
  return s->mount_generation;
}

// From the polling thread (or start()): hooks and waiters see the change on the strand.
inline void monitor::publish_on_strand(std::shared_ptr<const node_state> published) {
  try {
    boost::asio::post(strand_, [self = shared_from_this(), published = std::move(published)] {
      fwd::detail::invoke_hook(self->poller_->options().on_change, *published);
      self->wake_waiters();
    });
  } catch (...) {
    // Allocation failure: the state is stored; waiters see it at the next change.
  }
}

inline void monitor::add_waiter(waiter w) {
  auto slot = w.target ? boost::asio::get_associated_cancellation_slot(w.history_handler)
                       : boost::asio::get_associated_cancellation_slot(w.handler);
  w.id = next_id_.fetch_add(1, std::memory_order_relaxed);
  const std::uint64_t id = w.id;
  if (slot.is_connected()) {
    slot.assign([weak = weak_from_this(), id](boost::asio::cancellation_type type) {
      if (type == boost::asio::cancellation_type::none) return;
      if (auto self = weak.lock()) {
        boost::asio::dispatch(self->strand_, [self, id] { self->cancel_waiter(id); });
      }
    });
  }
  boost::asio::dispatch(strand_, [self = shared_from_this(), w = std::move(w)]() mutable {
    if (self->stopped_) {
      self->complete(w, make_error_code(errc::cancelled), self->state()->pos);
      return;
    }
    self->observe_state();
    const position now = self->state()->pos;
    if (now.txid >= w.txid) {
      self->complete(w, {}, now);
      return;
    }
    const bool was_idle = self->waiters_.empty();
    self->waiters_.push_back(std::move(w));
    self->count_waiters();
    self->arm_deadline();
    // From the slow poll to the fast one at once; with the event stream up, the tx event
    // brings the position without a read of the mount.
    if (was_idle && !self->poller_->events_connected.load()) self->poller_->request();
  });
}

// On the strand: the current state's position joins the history, which is forgotten when
// the primary, the role or the mount changed (LiteFS may then hold another history).
inline void monitor::observe_state() {
  const auto s = state();
  if (s->version == observed_version_ && observed_version_ != 0) return;
  observed_version_ = s->version;
  if (s->mount_dead || s->role != observed_role_ || s->primary_hostname != observed_primary_ ||
      s->mount_generation != observed_generation_) {
    history_.forget(s->pos);
    observed_role_ = s->role;
    observed_primary_ = s->primary_hostname;
    observed_generation_ = s->mount_generation;
  }
  if (s->mount_dead || s->pos.txid == 0) return;  // 0: `<db>-pos` unreadable, nothing held
  if (s->pos.txid < history_.last_txid()) {
    history_.rewind_to(s->pos);
  } else {
    history_.record(s->pos);
  }
}

inline void monitor::count_waiters() { poller_->waiters.store(waiters_.size(), std::memory_order_release); }

inline void monitor::wake_waiters() {
  observe_state();
  if (waiters_.empty()) return;
  const position now = state()->pos;
  const auto t = clock::now();
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (now.txid >= it->txid) {
      complete(*it, {}, now);
      it = waiters_.erase(it);
    } else if (t >= it->deadline) {
      complete(*it, make_error_code(errc::timeout), now);
      it = waiters_.erase(it);
    } else {
      ++it;
    }
  }
  count_waiters();
  arm_deadline();
}

// Keeps the strand's timer on the earliest waiter deadline: deadlines pass on time
// whatever the polling thread is doing.
inline void monitor::arm_deadline() {
  if (waiters_.empty()) {
    if (armed_for_) deadline_timer_.cancel();
    armed_for_.reset();
    return;
  }
  clock::time_point earliest = waiters_.front().deadline;
  for (const auto& w : waiters_) earliest = std::min(earliest, w.deadline);
  if (armed_for_ == earliest) return;
  armed_for_ = earliest;
  deadline_timer_.expires_at(earliest);
  deadline_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (ec) return;  // re-armed or stopped
    self->armed_for_.reset();
    self->wake_waiters();
  });
}

inline void monitor::cancel_waiter(std::uint64_t id) {
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (it->id == id) {
      complete(*it, make_error_code(errc::cancelled), state()->pos);
      waiters_.erase(it);
      count_waiters();
      arm_deadline();
      return;
    }
  }
}

inline void monitor::fail_waiters(boost::system::error_code ec) {
  const position now = state()->pos;
  for (auto& w : waiters_) complete(w, ec, now);
  waiters_.clear();
  count_waiters();
  armed_for_.reset();
}

inline void monitor::complete(waiter& w, boost::system::error_code ec, position p) {
  if (w.target) {
    const history_match match = ec ? history_match::unobserved : history_.compare(*w.target);
    boost::asio::post(executor_, boost::asio::append(std::move(w.history_handler), ec, match, p));
    return;
  }
  boost::asio::post(executor_, boost::asio::append(std::move(w.handler), ec, p));
}

}  // namespace fwd::litefs

// ---- end fwd/litefs/impl/monitor.hpp ----
// ---- begin fwd/litefs/impl/monitor_events.hpp ----

// litefs::monitor following LiteFS's `/events` stream: newline-delimited JSON objects in
// an HTTP response that never ends. A `tx` event of the monitored database carries its
// new position (TXID and checksum, the values `<db>-pos` shows once LiteFS sends the
// event): it is published as is, with no FUSE syscall, and wakes the waiters it satisfies.
// Every other event (init, primaryChange, anything unknown or unreadable) makes the
// polling thread re-read the mount at once (its files are the truth for the role); a tx
// event of another database changes nothing. Runs on the monitor's strand (network I/O
// only: no FUSE syscall here).

#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
// ---- begin fwd/litefs/detail/event_line.hpp ----

// One line of LiteFS's `GET /events` stream, as litefs::monitor reads it. LiteFS v0.5.14
// writes one JSON object per line (store.go: Event{type, db, data}):
//
//   {"type":"init","data":{"isPrimary":true}}
//   {"type":"primaryChange","data":{"isPrimary":false,"hostname":"node1"}}
//   {"type":"tx","db":"app.db","data":{"txID":"0000000000000003",
//     "postApplyChecksum":"a7dd8f28ea1b904d","pageSize":4096,"commit":2,"timestamp":"..."}}
//
// A tx event is sent after LiteFS has set the database's position (the one `<db>-pos`
// shows), both on the primary (at commit) and on a replica (once the transaction is
// applied): its TXID and checksum are the position. Internal.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace fwd::litefs::detail {

enum class event_kind {
  tx,           ///< a transaction on the monitored database: `position` holds it
  tx_other_db,  ///< a transaction on another database of the mount
  other,        ///< anything else (init, primaryChange, unknown or malformed)
};

struct event_line {
  event_kind kind = event_kind::other;
  position pos;
};

// The 16 lowercase hex digits after `"<key>":"` in `line`, followed by `"`.
inline std::optional<std::uint64_t> event_hex_field(std::string_view line, std::string_view key) {
  std::size_t at = 0;
  for (;;) {
    at = line.find(key, at);
    if (at == std::string_view::npos) return std::nullopt;
    // The key must be a whole JSON key: `"key":"`.
    if (at > 0 && line[at - 1] == '"' && line.substr(at + key.size(), 3) == "\":\"") break;
    at += key.size();
  }
  const std::string_view digits = line.substr(at + key.size() + 3);
  if (digits.size() < 17 || digits[16] != '"') return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 16; ++i) {
    const char c = digits[i];
    unsigned d = 0;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a' + 10);
    } else {
      return std::nullopt;
    }
    v = (v << 4) | d;
  }
  return v;
}

/// Classifies one event line (without its newline) for the database `db` (its file name in
/// the mount). Only a tx line of the exact form above yields a position; a tx line that
/// cannot be read (another form, an escaped name) is `other`, so that the caller reads the
/// mount instead.
inline event_line parse_event_line(std::string_view line, std::string_view db) {
  event_line out;
  constexpr std::string_view tx_prefix = R"({"type":"tx","db":")";
  if (line.substr(0, tx_prefix.size()) != tx_prefix) return out;
  const std::string_view rest = line.substr(tx_prefix.size());
  const std::size_t name_end = rest.find('"');
  if (name_end == std::string_view::npos) return out;
  const std::string_view name = rest.substr(0, name_end);
  if (name.find('\\') != std::string_view::npos) return out;  // escaped: not compared
  if (rest.substr(name_end, 10) != R"(","data":{)") return out;
  const std::string_view data = rest.substr(name_end + 10);
  if (name != db) {
    out.kind = event_kind::tx_other_db;
    return out;
  }
  const auto txid = event_hex_field(data, "txID");
  const auto checksum = event_hex_field(data, "postApplyChecksum");
  if (!txid || !checksum) return out;
  out.kind = event_kind::tx;
  out.pos = position{*txid, *checksum};
  return out;
}

}  // namespace fwd::litefs::detail

// ---- end fwd/litefs/detail/event_line.hpp ----

namespace fwd::litefs {

inline void monitor::connect_events() {
  if (stopped_) return;
  boost::system::error_code ignored;
  events_socket_.close(ignored);
  events_socket_ = boost::asio::ip::tcp::socket(strand_);
  events_socket_.async_connect(*poller_->options().http, [self = shared_from_this()](boost::system::error_code ec) {
    if (ec) return self->events_broke();
    self->events_request_.method(boost::beast::http::verb::get);
    self->events_request_.target("/events");
    self->events_request_.version(11);
    self->events_request_.set(boost::beast::http::field::host, "litefs");
    boost::beast::http::async_write(self->events_socket_, self->events_request_,
                                    [self](boost::system::error_code e, std::size_t) {
                                      if (e) return self->events_broke();
                                      self->events_parser_.emplace();
                                      self->events_parser_->body_limit(boost::none);
                                      self->events_buffer_.clear();
                                      self->events_line_.clear();
                                      self->read_events_header();
                                    });
  });
}

inline void monitor::read_events_header() {
  boost::beast::http::async_read_header(
      events_socket_, events_buffer_, *events_parser_,
      [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
        if (ec || self->events_parser_->get().result() != boost::beast::http::status::ok) {
          return self->events_broke();
        }
        self->poller_->events_connected.store(true);
        self->events_connects_.fetch_add(1);
        // A (re)connected stream may have missed changes: read the mount now.
        self->poller_->request();
        self->read_events_body();
      });
}

inline void monitor::read_events_body() {
  auto& body = events_parser_->get().body();
  body.data = events_chunk_.data();
  body.size = events_chunk_.size();
  boost::beast::http::async_read_some(
      events_socket_, events_buffer_, *events_parser_,
      [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
        if (ec == boost::beast::http::error::need_buffer) ec = {};
        const std::size_t got = self->events_chunk_.size() - self->events_parser_->get().body().size;
        self->on_event_bytes(std::string_view(self->events_chunk_.data(), got));
        if (ec || self->events_parser_->is_done()) return self->events_broke();
        self->read_events_body();
      });
}

inline void monitor::on_event_bytes(std::string_view bytes) {
  bool poll = false;
  std::optional<position> announced;
  auto take_line = [&] {
    if (events_line_.empty()) return;
    events_seen_.fetch_add(1);
    if (events_line_.size() >= max_event_line) {
      poll = true;  // cut: unreadable
      return;
    }
    const detail::event_line e = detail::parse_event_line(events_line_, poller_->options().database);
    if (e.kind == detail::event_kind::tx) {
      if (!announced || e.pos.txid > announced->txid) announced = e.pos;
      // Every transaction's checksum, also those a later one in this chunk hides.
      history_.record(e.pos);
    } else if (e.kind == detail::event_kind::other) {
      poll = true;
      // In the stream's order: tx events after an init or primaryChange may come from
      // another history than those before it.
      history_.forget(state()->pos);
    }
  };
  for (char c : bytes) {
    if (c == '\n') {
      take_line();
      events_line_.clear();
    } else if (events_line_.size() < max_event_line) {
      events_line_ += c;
    }
  }
  if (announced) {
    if (auto published = poller_->publish_position(*announced)) {
      fwd::detail::invoke_hook(poller_->options().on_change, *published);
      wake_waiters();
    }
  }
  if (poll) poller_->request();
}

inline void monitor::events_broke() {
  poller_->events_connected.store(false);
  boost::system::error_code ignored;
  events_socket_.close(ignored);
  if (stopped_) return;
  events_timer_.expires_after(poller_->options().events_reconnect);
  events_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (!ec) self->connect_events();
  });
}

}  // namespace fwd::litefs

// ---- end fwd/litefs/impl/monitor_events.hpp ----

// ---- end fwd/litefs/monitor.hpp ----
// ---- begin fwd/sqlite/statement.hpp ----

// RAII over SQLite: a prepared statement (fwd::sqlite::statement).
// Every failure keeps SQLite's extended result code (category "fwd.sqlite") and says
// which SQL failed and why (sqlite3_errmsg).

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace fwd::sqlite {

namespace detail {

/// "<what> failed: <sqlite3_errmsg> [in: <sql>]": the detail of a thrown fwd::error.
FWD_DECL std::string describe_failure(sqlite3* db, int rc, std::string_view what,
                                      std::string_view sql);

/// The extended result code of a failed call: `rc` when extended codes are on (fwd
/// always turns them on), otherwise the connection's last extended code.
inline int extended_code(sqlite3* db, int rc) noexcept {
  if (db != nullptr && (rc & 0xff) == rc && rc != SQLITE_OK) {
    const int extended = sqlite3_extended_errcode(db);
    if ((extended & 0xff) == rc) return extended;
  }
  return rc;
}

[[noreturn]] FWD_DECL void throw_failure(sqlite3* db, int rc, std::string_view what,
                                         std::string_view sql);

inline void set_error(boost::system::error_code& ec, sqlite3* db, int rc) noexcept {
  ec = make_sqlite_error(extended_code(db, rc));
}

/**
 * Prepared statements kept for reuse on one connection, while a scope of work runs on the
 * thread that holds it (the write executor's writes: a procedure that prepares its SQL on
 * every call finds it prepared already). connection::prepare takes a statement from the
 * thread's active cache when the connection is the cache's, or prepares one and lists it;
 * a listed statement goes back, reset and with its bindings cleared, when it is destroyed
 * inside the scope (outside it, or once the cache forgot it, it is finalized). At most
 * `capacity` statements are listed. Not thread-safe: one thread uses a cache.
 */
class statement_cache {
 public:
  explicit statement_cache(std::size_t capacity = 64) noexcept : capacity_(capacity) {}
  statement_cache(const statement_cache&) = delete;
  statement_cache& operator=(const statement_cache&) = delete;
  ~statement_cache() { clear(); }

  /// Makes `cache` the thread's active cache for statements prepared on `db` until the
  /// scope ends (then the previous one is active again).
  class scope {
   public:
    scope(statement_cache& cache, sqlite3* db) noexcept : previous_(active()) {
      cache.db_ = db;
      active() = &cache;
    }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;
    ~scope() { active() = previous_; }

   private:
    statement_cache* previous_;
  };

  /// The cache active on this thread for `db`, or null.
  static statement_cache* active_for(sqlite3* db) noexcept {
    statement_cache* cache = active();
    return cache != nullptr && db != nullptr && cache->db_ == db ? cache : nullptr;
  }

  /// A listed statement prepared from exactly `sql` and not in use, now in use; or null.
  sqlite3_stmt* take(std::string_view sql) noexcept {
    for (auto& e : entries_) {
      if (e.in_use || e.sql != sql) continue;
      e.in_use = true;
      return e.stmt;
    }
    return nullptr;
  }

  /// Lists `stmt`, just prepared from `sql`, as in use. False when it is not listed (the
  /// cache is full of statements in use, or out of memory): its owner finalizes it.
  bool add(sqlite3_stmt* stmt, std::string_view sql) noexcept {
    // An entry with this address is one whose owner finalized it outside the scope (SQLite
    // reuses the address now): forget it.
    std::erase_if(entries_, [stmt](const entry& e) { return e.stmt == stmt; });
    try {
      if (entries_.size() >= capacity_) {
        const auto idle = std::find_if(entries_.begin(), entries_.end(), [](const entry& e) { return !e.in_use; });
        if (idle == entries_.end()) return false;
        sqlite3_finalize(idle->stmt);
        entries_.erase(idle);
      }
      entries_.push_back(entry{std::string(sql), stmt, true});
      return true;
    } catch (...) {
      return false;
    }
  }

  /// `stmt` is no longer in use: reset, its bindings cleared, it waits for the next take.
  /// False when it is not listed (the cache forgot it): its owner finalizes it.
  bool give_back(sqlite3_stmt* stmt) noexcept {
    for (auto& e : entries_) {
      if (e.stmt != stmt) continue;
      sqlite3_reset(stmt);
      sqlite3_clear_bindings(stmt);
      e.in_use = false;
      return true;
    }
    return false;
  }

  /// Finalizes the statements not in use and forgets every one (before the connection
  /// closes; one still in use is finalized by its owner).
  void clear() noexcept {
    for (auto& e : entries_) {
      if (!e.in_use) sqlite3_finalize(e.stmt);
    }
    entries_.clear();
  }

  std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct entry {
    std::string sql;
    sqlite3_stmt* stmt;
    bool in_use;
  };
  static statement_cache*& active() noexcept {
    thread_local statement_cache* cache = nullptr;
    return cache;
  }

  std::size_t capacity_;
  sqlite3* db_ = nullptr;
  std::vector<entry> entries_;
};

}  // namespace detail

/// Bytes to bind as a BLOB (distinct from text, which binds as TEXT).
struct blob_view {
  const void* data = nullptr;
  std::size_t size = 0;

  blob_view() = default;
  blob_view(const void* d, std::size_t n) noexcept : data(d), size(n) {}
  blob_view(std::span<const std::uint8_t> bytes) noexcept  // NOLINT: implicit on purpose
      : data(bytes.data()), size(bytes.size()) {}
  blob_view(std::span<const std::byte> bytes) noexcept  // NOLINT: implicit on purpose
      : data(bytes.data()), size(bytes.size()) {}
  /// Any contiguous range of bytes (std::vector<std::uint8_t>, std::array<std::byte, N>, ...).
  template <std::ranges::contiguous_range Range>
  requires(sizeof(std::ranges::range_value_t<Range>) == 1 &&
           !std::is_same_v<std::remove_cv_t<std::ranges::range_value_t<Range>>, char>)
      blob_view(const Range& bytes)
  noexcept  // NOLINT: implicit on purpose
      : data(std::ranges::data(bytes)), size(std::ranges::size(bytes)) {}
};

class connection;

/**
 * A prepared statement (sqlite3_stmt*), finalized on destruction. Move-only.
 *
 * Bind indexes start at 1, column indexes at 0 (as in SQLite). Every bind copies its
 * value (SQLITE_TRANSIENT), so arguments need not outlive the call. Views returned by
 * column_text/column_blob stay valid until the next step, reset or destruction.
 * Not thread-safe: use a statement from one thread at a time, like its connection.
 */
class statement {
 public:
  statement() = default;
  /// Takes ownership of `stmt` (prepared on `db`).
  statement(sqlite3* db, sqlite3_stmt* stmt) noexcept : db_(db), stmt_(stmt) {}
  /// Takes `stmt` (prepared on `db`, listed in `cache`), which goes back to `cache` when
  /// destroyed while that cache is active (see detail::statement_cache).
  statement(sqlite3* db, sqlite3_stmt* stmt, detail::statement_cache* cache) noexcept
      : db_(db), stmt_(stmt), cache_(cache) {}
  statement(statement&& other) noexcept
      : db_(std::exchange(other.db_, nullptr)),
        stmt_(std::exchange(other.stmt_, nullptr)),
        cache_(std::exchange(other.cache_, nullptr)) {}
  statement& operator=(statement&& other) noexcept {
    if (this != &other) {
      finalize();
      db_ = std::exchange(other.db_, nullptr);
      stmt_ = std::exchange(other.stmt_, nullptr);
      cache_ = std::exchange(other.cache_, nullptr);
    }
    return *this;
  }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  ~statement() { finalize(); }

  sqlite3_stmt* native_handle() const noexcept { return stmt_; }
  explicit operator bool() const noexcept { return stmt_ != nullptr; }
  /// The SQL text this statement was prepared from.
  std::string_view sql() const noexcept {
    const char* text = stmt_ != nullptr ? sqlite3_sql(stmt_) : nullptr;
    return text != nullptr ? std::string_view(text) : std::string_view();
  }

  // --- binding (throw fwd::error on failure, e.g. SQLITE_RANGE for a bad index) ---

  statement& bind(int index, std::nullptr_t) {
    return check(sqlite3_bind_null(stmt_, index), "bind");
  }
  template <class Integer>
  requires std::is_integral_v<Integer> statement& bind(int index, Integer value) {
    return check(sqlite3_bind_int64(stmt_, index, static_cast<sqlite3_int64>(value)), "bind");
  }
  statement& bind(int index, double value) {
    return check(sqlite3_bind_double(stmt_, index, value), "bind");
  }
  statement& bind(int index, std::string_view text) {
    return check(
        sqlite3_bind_text64(stmt_, index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8),
        "bind");
  }
  statement& bind(int index, const char* text) { return bind(index, std::string_view(text)); }
  statement& bind(int index, const std::string& text) {
    return bind(index, std::string_view(text));
  }
  statement& bind(int index, blob_view blob) {
    // A zero-length blob must still bind as a BLOB, not NULL: give SQLite a non-null pointer.
    static const char empty = 0;
    return check(sqlite3_bind_blob64(stmt_, index, blob.size != 0 ? blob.data : &empty, blob.size,
                                     SQLITE_TRANSIENT),
                 "bind");
  }

  /// Binds by parameter name, including its prefix (":id", "@id", "$id").
  template <class T>
  statement& bind(std::string_view name, T&& value) {
    return bind(parameter_index(name), std::forward<T>(value));
  }
  template <class T>
  statement& bind(const char* name, T&& value) {
    return bind(parameter_index(name), std::forward<T>(value));
  }

  /// The index of a named parameter; throws fwd::error(SQLITE_RANGE) if there is none.
  int parameter_index(std::string_view name) const;
  int parameter_count() const noexcept { return sqlite3_bind_parameter_count(stmt_); }
  statement& clear_bindings() {
    sqlite3_clear_bindings(stmt_);
    return *this;
  }

  // --- execution ---

  /// Runs one step: true when a row is available, false when done. Throws fwd::error.
  bool step() {
    boost::system::error_code ec;
    const bool row = step(ec);
    if (ec) detail::throw_failure(db_, ec.value(), "step", sql());
    return row;
  }
  /// Runs one step: true when a row is available; on failure false with `ec` set.
  bool step(boost::system::error_code& ec) noexcept {
    ec.clear();
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    detail::set_error(ec, db_, rc);
    return false;
  }
  /// Steps until done (for statements that return no rows, or whose rows are ignored).
  void execute() {
    while (step()) {
    }
  }
  /// Makes the statement ready to run again; bindings are kept.
  statement& reset() noexcept {
    sqlite3_reset(stmt_);
    return *this;
  }

  // --- columns of the current row ---

  int column_count() const noexcept { return sqlite3_column_count(stmt_); }
  std::string_view column_name(int column) const noexcept {
    const char* name = sqlite3_column_name(stmt_, column);
    return name != nullptr ? std::string_view(name) : std::string_view();
  }
  /// SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB or SQLITE_NULL.
  int column_type(int column) const noexcept { return sqlite3_column_type(stmt_, column); }
  bool column_is_null(int column) const noexcept { return column_type(column) == SQLITE_NULL; }
  std::int64_t column_int64(int column) const noexcept {
    return static_cast<std::int64_t>(sqlite3_column_int64(stmt_, column));
  }
  double column_double(int column) const noexcept { return sqlite3_column_double(stmt_, column); }
  std::string_view column_text(int column) const noexcept {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    const int size = sqlite3_column_bytes(stmt_, column);
    return text != nullptr ? std::string_view(text, static_cast<std::size_t>(size))
                           : std::string_view();
  }
  std::span<const std::uint8_t> column_blob(int column) const noexcept {
    const auto* data = static_cast<const std::uint8_t*>(sqlite3_column_blob(stmt_, column));
    const int size = sqlite3_column_bytes(stmt_, column);
    return data != nullptr ? std::span<const std::uint8_t>(data, static_cast<std::size_t>(size))
                           : std::span<const std::uint8_t>();
  }

 private:
  statement& check(int rc, std::string_view what) {
    if (rc != SQLITE_OK) detail::throw_failure(db_, rc, what, sql());
    return *this;
  }
  void finalize() noexcept {
    if (stmt_ != nullptr) {
      const bool kept = cache_ != nullptr && detail::statement_cache::active_for(db_) == cache_ &&
                        cache_->give_back(stmt_);
      if (!kept) sqlite3_finalize(stmt_);
    }
    stmt_ = nullptr;
    cache_ = nullptr;
  }

  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
  detail::statement_cache* cache_ = nullptr;  // where it goes back to, if it came from one
};

/// Default flags of connection: read-write, create if missing, full mutex off (fwd uses a
/// connection from one thread at a time), extended result codes on.

}  // namespace fwd::sqlite

#if !defined(FWD_SEPARATE_COMPILATION)
// ---- begin fwd/sqlite/impl/statement.ipp ----

// Definitions of <fwd/sqlite/statement.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>


namespace fwd::sqlite {

namespace detail {

FWD_DECL std::string describe_failure(sqlite3* db, int rc, std::string_view what,
                                      std::string_view sql) {
  const char* reason = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if (sql.empty()) return fmt::format("{} failed: {}", what, reason);
  return fmt::format("{} failed: {} [in: {}]", what, reason, sql);
}

[[noreturn]] FWD_DECL void throw_failure(sqlite3* db, int rc, std::string_view what,
                                         std::string_view sql) {
  throw fwd::error(make_sqlite_error(extended_code(db, rc)), describe_failure(db, rc, what, sql));
}

}  // namespace detail

FWD_DECL int statement::parameter_index(std::string_view name) const {
  const std::string zname(name);
  const int index = sqlite3_bind_parameter_index(stmt_, zname.c_str());
  if (index == 0) {
    throw fwd::error(make_sqlite_error(SQLITE_RANGE),
                     fmt::format("no SQL parameter named {} [in: {}]", zname, sql()));
  }
  return index;
}
}  // namespace fwd::sqlite

// ---- end fwd/sqlite/impl/statement.ipp ----
#endif

// ---- end fwd/sqlite/statement.hpp ----
// ---- begin fwd/sqlite/connection.hpp ----

// RAII over SQLite: a connection (fwd::sqlite::connection). Every failure keeps SQLite's
// extended result code (category "fwd.sqlite") and says which SQL failed and why.


#include <sqlite3.h>

#include <chrono>
#include <string>

namespace fwd::sqlite {

inline constexpr int default_open_flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;

/**
 * A SQLite connection (sqlite3*), closed on destruction unless borrowed. Move-only.
 *
 * Extended result codes are always on, so every fwd::error carries e.g. 2067
 * (SQLITE_CONSTRAINT_UNIQUE) rather than 19. Not thread-safe: use a connection from one
 * thread at a time.
 */
class connection {
 public:
  connection() = default;

  /**
   * Opens `path` with `flags` (SQLITE_OPEN_*) and sets the busy timeout.
   * Throws fwd::error (e.g. SQLITE_CANTOPEN, 14) with the path in its message.
   */
  explicit connection(const std::string& path, int flags = default_open_flags,
                      std::chrono::milliseconds busy_timeout = std::chrono::seconds(5)) {
    boost::system::error_code ec;
    diagnostics diag;
    open_impl(path, flags, busy_timeout, ec, diag);
    fwd::detail::throw_on_error(ec, std::move(diag));
  }

  /// Opens like the throwing constructor; on failure returns an empty connection and
  /// sets `ec` (and `diag` to the detailed message: the path and SQLite's reason).
  static connection open(const std::string& path, int flags, std::chrono::milliseconds busy_timeout,
                         boost::system::error_code& ec, diagnostics& diag) {
    connection c;
    c.open_impl(path, flags, busy_timeout, ec, diag);
    return c;
  }
  static connection open(const std::string& path, int flags, std::chrono::milliseconds busy_timeout,
                         boost::system::error_code& ec) {
    diagnostics ignored;
    return open(path, flags, busy_timeout, ec, ignored);
  }

  /// A non-owning wrapper around a handle someone else owns (e.g. the `sqlite3*` a
  /// write_executor passes to a write): it never closes it.
  static connection borrow(sqlite3* db) noexcept {
    connection c;
    c.db_ = db;
    c.owned_ = false;
    return c;
  }

  connection(connection&& other) noexcept
      : db_(std::exchange(other.db_, nullptr)), owned_(std::exchange(other.owned_, false)) {}
  connection& operator=(connection&& other) noexcept {
    if (this != &other) {
      close();
      db_ = std::exchange(other.db_, nullptr);
      owned_ = std::exchange(other.owned_, false);
    }
    return *this;
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection() { close(); }

  sqlite3* native_handle() const noexcept { return db_; }
  explicit operator bool() const noexcept { return db_ != nullptr; }

  /// Closes the connection now (a no-op when empty or borrowed). Unfinalized statements
  /// keep it alive until they are finalized (sqlite3_close_v2).
  void close() noexcept {
    if (db_ != nullptr && owned_) sqlite3_close_v2(db_);
    db_ = nullptr;
    owned_ = false;
  }

  /// How long a statement waits for another connection's lock before SQLITE_BUSY.
  void busy_timeout(std::chrono::milliseconds timeout) noexcept {
    sqlite3_busy_timeout(db_, static_cast<int>(timeout.count()));
  }

  /// Runs one or more SQL statements without results. Throws fwd::error.
  void exec(std::string_view sql) {
    boost::system::error_code ec;
    diagnostics diag;
    exec(sql, ec, diag);
    fwd::detail::throw_on_error(ec, std::move(diag));
  }
  /// Runs one or more SQL statements; on failure sets `ec`.
  void exec(std::string_view sql, boost::system::error_code& ec) noexcept {
    exec_impl(sql, ec, nullptr);
  }
  /// Runs one or more SQL statements; on failure sets `ec` and `diag` (which SQL, and
  /// SQLite's reason).
  void exec(std::string_view sql, boost::system::error_code& ec, diagnostics& diag) noexcept {
    diag.clear();
    exec_impl(sql, ec, &diag);
  }
  /// Transitional: the detail as a string (write/executor.hpp still uses it). Prefer
  /// exec(sql, ec, diagnostics&); this overload goes once its callers moved.
  void exec(std::string_view sql, boost::system::error_code& ec, std::string* message) noexcept {
    diagnostics diag;
    exec_impl(sql, ec, &diag);
    if (ec && message != nullptr) {
      try {
        *message = diag.message();
      } catch (...) {
      }
    }
  }

  /// Prepares one statement. Throws fwd::error (e.g. SQLITE_ERROR for a syntax error).
  statement prepare(std::string_view sql);
  /// Prepares one statement; on failure returns an empty statement and sets `ec`.
  statement prepare(std::string_view sql, boost::system::error_code& ec) noexcept;
  /// Prepares one statement; on failure returns an empty statement and sets `ec` and
  /// `diag` (which SQL, and SQLite's reason).
  statement prepare(std::string_view sql, boost::system::error_code& ec,
                    diagnostics& diag) noexcept;

  std::int64_t last_insert_rowid() const noexcept {
    return static_cast<std::int64_t>(sqlite3_last_insert_rowid(db_));
  }
  /// Rows changed by the last INSERT, UPDATE or DELETE.
  std::int64_t changes() const noexcept {
    return static_cast<std::int64_t>(sqlite3_changes64(db_));
  }
  /// True outside any explicit transaction (SQLite's autocommit mode).
  bool autocommit() const noexcept { return sqlite3_get_autocommit(db_) != 0; }
  /// The last error's text (sqlite3_errmsg).
  std::string_view last_error_message() const noexcept { return sqlite3_errmsg(db_); }

 private:
  void exec_impl(std::string_view sql, boost::system::error_code& ec,
                 diagnostics* diag) noexcept;

  void open_impl(const std::string& path, int flags, std::chrono::milliseconds busy_timeout,
                 boost::system::error_code& ec, diagnostics& diag);

  sqlite3* db_ = nullptr;
  bool owned_ = false;
};

/// How a transaction takes its locks (BEGIN DEFERRED / IMMEDIATE / EXCLUSIVE).

}  // namespace fwd::sqlite

#if !defined(FWD_SEPARATE_COMPILATION)
// ---- begin fwd/sqlite/impl/connection.ipp ----

// Definitions of <fwd/sqlite/connection.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>


namespace fwd::sqlite {

FWD_DECL statement connection::prepare(std::string_view sql) {
  boost::system::error_code ec;
  statement stmt = prepare(sql, ec);
  if (ec) detail::throw_failure(db_, ec.value(), "prepare", sql);
  return stmt;
}

FWD_DECL statement connection::prepare(std::string_view sql,
                                       boost::system::error_code& ec) noexcept {
  ec.clear();
  // Inside a write executor's write: the statement may be prepared already.
  detail::statement_cache* cache = detail::statement_cache::active_for(db_);
  if (cache != nullptr) {
    if (sqlite3_stmt* kept = cache->take(sql)) return statement(db_, kept, cache);
  }
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    detail::set_error(ec, db_, rc);
    return {};
  }
  if (cache != nullptr && stmt != nullptr && cache->add(stmt, sql)) return statement(db_, stmt, cache);
  return statement(db_, stmt);
}

FWD_DECL statement connection::prepare(std::string_view sql, boost::system::error_code& ec,
                                       diagnostics& diag) noexcept {
  diag.clear();
  statement stmt = prepare(sql, ec);
  if (ec) {
    try {
      diag.assign(detail::describe_failure(db_, ec.value(), "prepare", sql));
    } catch (...) {
    }
  }
  return stmt;
}

FWD_DECL void connection::exec_impl(std::string_view sql, boost::system::error_code& ec,
                                    diagnostics* diag) noexcept {
  ec.clear();
  // sqlite3_exec needs a NUL-terminated string; SQL text is short, the copy is cheap.
  std::string zsql;
  try {
    zsql.assign(sql);
  } catch (...) {
    ec = make_sqlite_error(SQLITE_NOMEM);
    return;
  }
  const int rc = sqlite3_exec(db_, zsql.c_str(), nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    detail::set_error(ec, db_, rc);
    if (diag != nullptr) {
      try {
        diag->assign(detail::describe_failure(db_, rc, "exec", sql));
      } catch (...) {
      }
    }
  }
}

FWD_DECL void connection::open_impl(const std::string& path, int flags,
                                    std::chrono::milliseconds busy_timeout,
                                    boost::system::error_code& ec, diagnostics& diag) {
  ec.clear();
  diag.clear();
  close();
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    const int code = db != nullptr ? sqlite3_extended_errcode(db) : rc;
    ec = make_sqlite_error(code);
    diag.assign(fmt::format(
        "opening SQLite database {} failed: {}: check that the path exists and is accessible", path,
        db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    sqlite3_close_v2(db);
    return;
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, static_cast<int>(busy_timeout.count()));
  db_ = db;
  owned_ = true;
}
}  // namespace fwd::sqlite

// ---- end fwd/sqlite/impl/connection.ipp ----
#endif

// ---- end fwd/sqlite/connection.hpp ----
// ---- begin fwd/sqlite/transaction.hpp ----

// A transaction guard over fwd::sqlite::connection: BEGIN on construction, ROLLBACK
// on destruction unless committed.


namespace fwd::sqlite {

enum class transaction_kind { deferred, immediate, exclusive };

/**
 * A transaction guard: BEGIN on construction, ROLLBACK on destruction unless commit()
 * (or rollback()) was called. Defaults to BEGIN IMMEDIATE, which takes the write lock at
 * once, so a write never fails half-way with SQLITE_BUSY on lock upgrade.
 */
class transaction {
 public:
  explicit transaction(connection& conn, transaction_kind kind = transaction_kind::immediate)
      : conn_(&conn) {
    switch (kind) {
      case transaction_kind::deferred:
        conn.exec("BEGIN DEFERRED");
        break;
      case transaction_kind::immediate:
        conn.exec("BEGIN IMMEDIATE");
        break;
      case transaction_kind::exclusive:
        conn.exec("BEGIN EXCLUSIVE");
        break;
    }
    active_ = true;
  }
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;
  ~transaction() {
    if (active_ && !conn_->autocommit()) {
      boost::system::error_code ignored;
      conn_->exec("ROLLBACK", ignored);
    }
  }

  /// COMMIT. On failure throws fwd::error; the destructor then rolls back.
  void commit() {
    conn_->exec("COMMIT");
    active_ = false;
  }
  /// ROLLBACK now.
  void rollback() {
    active_ = false;
    if (!conn_->autocommit()) conn_->exec("ROLLBACK");
  }
  bool active() const noexcept { return active_; }

 private:
  connection* conn_;
  bool active_ = false;
};

}  // namespace fwd::sqlite

// ---- end fwd/sqlite/transaction.hpp ----
// ---- begin fwd/rpc/wire.hpp ----

// fwd's wire format: frames, as pure functions over bytes (the connection handshake is in
// fwd/rpc/handshake.hpp). Nothing here touches a socket, so every decoder can be fuzzed on
// its own.
//
// A frame is a fixed 52-byte header followed by `meta_size` bytes of metadata (a procedure
// name, an error message) and `body_size` bytes of payload (a Boost archive). Once the
// handshake is over, every frame is followed by a `tag_size`-byte tag, its session MAC
// (fwd/rpc/session.hpp); handshake frames have none. All header fields are little-endian:
//
//   offset size field
//        0    4 magic "FWD1"
//        4    1 type (frame_type)
//        5    1 flags (frame_flags)
//        6    2 a request's durability (with flag has_durability), otherwise zero
//        8    8 stream id: matches a reply to its request on one connection
//       16   16 request id: the caller's id, fixed across retries (exactly once)
//       32    4 remaining deadline in milliseconds (meaningful with flag has_deadline)
//       36    8 aux: a request's signature fingerprint, a reply's status (0 or fwd::errc),
//                a hello's oldest protocol version (0: the same as its newest)
//       44    4 meta size
//       48    4 body size
//
// ---- begin fwd/detail/wire_bytes.hpp ----

// Little-endian integer (de)serialisation for the wire codec. The wire's own fields are
// little-endian on every host; only Boost archives inside payloads use native order (which
// is why the handshake compares byte orders).

#include <cstddef>
#include <cstdint>

namespace fwd::detail {

template <class T>
inline void store_le(char* out, T value) noexcept {
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    out[i] = static_cast<char>(static_cast<std::uint8_t>(static_cast<std::uint64_t>(value) >> (8 * i)));
  }
}

template <class T>
inline T load_le(const char* in) noexcept {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    value |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(in[i])) << (8 * i);
  }
  return static_cast<T>(value);
}

}  // namespace fwd::detail

// ---- end fwd/detail/wire_bytes.hpp ----

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace fwd::wire {

/// The newest protocol version this build speaks. Version 1 had no session keys and
/// no frame MACs, and a write's reply carried the primary's TXID alone; version 2 adds
/// session keys and frame MACs (fwd/rpc/session.hpp) and the primary's checksum in a
/// write's reply.
inline constexpr std::uint32_t protocol_version = 2;
/// The oldest protocol version this build speaks. Two peers use the highest version both
/// speak (fwd/rpc/handshake.hpp).
inline constexpr std::uint32_t min_protocol_version = 2;
/// "FWD1", the first four bytes of every frame.
inline constexpr std::uint32_t magic = 0x31445746u;
/// Bytes in a frame header.
inline constexpr std::size_t header_size = 52;
/// Bytes of the session MAC after each frame once the handshake is over.
inline constexpr std::size_t tag_size = 16;
/// The default largest frame (header included) either side accepts: 16 MiB.
inline constexpr std::size_t default_max_frame_size = std::size_t{16} << 20;

enum class frame_type : std::uint8_t {
  client_hello = 1,  ///< body: hello (versions, client nonce)
  server_hello = 2,  ///< body: hello (versions, server nonce) + server proof
  client_proof = 3,  ///< body: client proof
  welcome = 4,       ///< handshake accepted; empty
  request = 5,       ///< meta: procedure name; body: arguments; aux: signature fingerprint
  reply = 6,         ///< meta: error detail; body: result; aux: 0 or an fwd::errc value
  goodbye = 7,       ///< the sender closes: aux: fwd::errc value; meta: why
};

/// Flag bits of a frame header.
namespace frame_flags {
inline constexpr std::uint8_t has_deadline = 0x01;  ///< deadline_ms is the remaining time
/// A request's bytes 6-7 hold the durability its write asks for (fwd::durability::wire()).
inline constexpr std::uint8_t has_durability = 0x02;
inline constexpr std::uint8_t all = has_deadline | has_durability;
}  // namespace frame_flags

/// A caller's request id: 128 bits, unique per call across the cluster, kept across retries.
using request_id = std::array<std::uint8_t, 16>;

struct frame_header {
  frame_type type = frame_type::request;
  std::uint8_t flags = 0;
  std::uint64_t stream_id = 0;
  request_id id{};
  std::uint32_t deadline_ms = 0;
  std::uint16_t durability = 0;  ///< with flag has_durability (requests only)
  std::uint64_t aux = 0;
  std::uint32_t meta_size = 0;
  std::uint32_t body_size = 0;
};

/// A decoded frame; `meta` and `body` point into the decoded buffer.
struct frame_view {
  frame_header header;
  std::string_view meta;
  std::string_view body;
  std::string_view bytes;  ///< the whole frame, header to body, without its tag
  std::string_view tag;    ///< the session MAC that followed it (empty in the handshake)
};

/// Offset of the deadline field, which a sender refreshes just before writing a frame.
inline constexpr std::size_t deadline_offset = 32;

/// Writes `h` (with sizes as given in `h`) into `out[0, header_size)`.
inline void encode_header(const frame_header& h, char* out) noexcept {
  detail::store_le<std::uint32_t>(out, magic);
  out[4] = static_cast<char>(h.type);
  out[5] = static_cast<char>(h.flags);
  detail::store_le<std::uint16_t>(out + 6, (h.flags & frame_flags::has_durability) != 0 ? h.durability : 0);
  detail::store_le<std::uint64_t>(out + 8, h.stream_id);
  std::memcpy(out + 16, h.id.data(), h.id.size());
  detail::store_le<std::uint32_t>(out + deadline_offset, h.deadline_ms);
  detail::store_le<std::uint64_t>(out + 36, h.aux);
  detail::store_le<std::uint32_t>(out + 44, h.meta_size);
  detail::store_le<std::uint32_t>(out + 48, h.body_size);
}

/// Appends one frame to `out` (so that many frames can be coalesced into one write). The
/// sizes in `h` are ignored: those of `meta` and `body` are written.
inline void append_frame(std::string& out, frame_header h, std::string_view meta, std::string_view body) {
  h.meta_size = static_cast<std::uint32_t>(meta.size());
  h.body_size = static_cast<std::uint32_t>(body.size());
  const std::size_t at = out.size();
  out.resize(at + header_size);
  encode_header(h, out.data() + at);
  out.append(meta);
  out.append(body);
}

/// One frame as a string.
inline std::string encode_frame(const frame_header& h, std::string_view meta = {}, std::string_view body = {}) {
  std::string out;
  out.reserve(header_size + meta.size() + body.size());
  append_frame(out, h, meta, body);
  return out;
}

/// The whole size of a frame with that header.
inline std::uint64_t frame_size(const frame_header& h) noexcept {
  return header_size + std::uint64_t{h.meta_size} + h.body_size;
}

/**
 * Decodes the header at the start of `bytes` (which must hold at least header_size bytes).
 * Fails with errc::protocol_error when the bytes are not a fwd header, and with
 * errc::frame_too_large when the frame it announces exceeds `max_frame_size`, before
 * anything is allocated for it.
 */
inline boost::system::error_code decode_header(std::string_view bytes, std::size_t max_frame_size,
                                               frame_header& out) noexcept {
  if (bytes.size() < header_size) return make_error_code(errc::protocol_error);
  const char* in = bytes.data();
  if (detail::load_le<std::uint32_t>(in) != magic) return make_error_code(errc::protocol_error);
  const auto type = static_cast<std::uint8_t>(in[4]);
  if (type < static_cast<std::uint8_t>(frame_type::client_hello) ||
      type > static_cast<std::uint8_t>(frame_type::goodbye)) {
    return make_error_code(errc::protocol_error);
  }
  const auto flags = static_cast<std::uint8_t>(in[5]);
  if ((flags & ~frame_flags::all) != 0) return make_error_code(errc::protocol_error);
  // Bytes 6-7 are zero unless a request carries its durability there.
  const auto durability = detail::load_le<std::uint16_t>(in + 6);
  const bool has_durability = (flags & frame_flags::has_durability) != 0;
  if (has_durability ? type != static_cast<std::uint8_t>(frame_type::request) : durability != 0) {
    return make_error_code(errc::protocol_error);
  }
  frame_header h;
  h.durability = durability;
  h.type = static_cast<frame_type>(type);
  h.flags = flags;
  h.stream_id = detail::load_le<std::uint64_t>(in + 8);
  std::memcpy(h.id.data(), in + 16, h.id.size());
  h.deadline_ms = detail::load_le<std::uint32_t>(in + deadline_offset);
  h.aux = detail::load_le<std::uint64_t>(in + 36);
  h.meta_size = detail::load_le<std::uint32_t>(in + 44);
  h.body_size = detail::load_le<std::uint32_t>(in + 48);
  if (frame_size(h) > max_frame_size) return make_error_code(errc::frame_too_large);
  out = h;
  return {};
}

/**
 * Decodes the first frame in `buffer`, followed by a tag of `tag_bytes` (0 in the
 * handshake, tag_size after it; `max_frame_size` does not count it). On success with a
 * whole frame, sets `out` and `consumed` (the frame's size, tag included); with only part
 * of a frame, returns success and sets `consumed` to 0 (read more and call again). Errors
 * as decode_header.
 */
inline boost::system::error_code decode_frame(std::string_view buffer, std::size_t max_frame_size,
                                              frame_view& out, std::size_t& consumed,
                                              std::size_t tag_bytes = 0) noexcept {
  consumed = 0;
  if (buffer.size() < header_size) return {};
  frame_header h;
  if (auto ec = decode_header(buffer, max_frame_size, h)) return ec;
  const std::uint64_t size = frame_size(h);
  if (buffer.size() < size + tag_bytes) return {};
  out.header = h;
  out.meta = buffer.substr(header_size, h.meta_size);
  out.body = buffer.substr(header_size + h.meta_size, h.body_size);
  out.bytes = buffer.substr(0, static_cast<std::size_t>(size));
  out.tag = buffer.substr(static_cast<std::size_t>(size), tag_bytes);
  consumed = static_cast<std::size_t>(size + tag_bytes);
  return {};
}

}  // namespace fwd::wire

// ---- end fwd/rpc/wire.hpp ----
// ---- begin fwd/rpc/handshake.hpp ----

// The handshake of a fwd connection, as pure functions over frames (fwd/rpc/wire.hpp):
// versions, nonces, proofs of the cluster secret and the session keys. Nothing here
// touches a socket.
//
// The handshake, before any other frame: the client sends `client_hello` (the range of
// protocol versions it speaks, its archive version and byte order, a nonce); the server
// answers `server_hello` (its own, its nonce, and its proof: an HMAC-SHA256 under its
// cluster secret of the transcript, both hellos' versions and nonces); the client checks
// the proof and sends `client_proof` (its own HMAC of the transcript, with another label);
// the server checks it and sends `welcome`. Either side that finds no common version or a
// wrong proof stops: the server says why in a `goodbye` frame. Requests are only decoded
// after `welcome`, so no byte from an unauthenticated peer reaches Boost.Serialization.
//
// Versions: each side announces [oldest, newest] (the newest in the hello's body, the
// oldest in its header's aux, which builds that spoke protocol 1 left 0), and both use the
// highest version in both ranges. The Boost archive versions need not be equal; see
// archives_compatible().
//
// Secrets: each side proves the first of its secrets and accepts any of them, so that a
// cluster can change its secret without downtime (add the new one to every node as an
// accepted secret, then make it the first everywhere, then drop the old one). A side finds
// which secret the peer used by checking the peer's proof under each of its own: nothing
// but the two proofs goes on the wire, as before.
//
// Session: once both proofs check, each side derives the session keys (fwd/rpc/session.hpp)
// with HKDF-SHA256: input key material both proven secrets, salt the transcript, and one
// label per direction. From then on every frame carries a MAC under its direction's key.

// ---- begin fwd/detail/hmac.hpp ----

// HMAC-SHA256, HKDF-SHA256, GMAC (AES-256-GCM), constant-time comparison and random bytes,
// from OpenSSL. Kept apart so that only the handshake and the session layer pull OpenSSL's
// headers in.


#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/modes.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

namespace fwd::detail {

using sha256_digest = std::array<std::uint8_t, 32>;

[[noreturn]] inline void openssl_failed(const char* what) {
  throw fwd::error(make_error_code(errc::bad_argument),
                   std::string("OpenSSL could not compute ") + what + ": check the OpenSSL installation");
}

/// HMAC-SHA256 of the concatenation of `parts`, keyed by `key`.
inline sha256_digest hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts) {
  std::string message;
  for (std::string_view part : parts) message.append(part);
  sha256_digest out{};
  unsigned int length = 0;
  const unsigned char* done =
      HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), out.data(), &length);
  if (done == nullptr || length != out.size()) openssl_failed("HMAC-SHA256");
  return out;
}

/// HKDF-SHA256 (RFC 5869): a 32-byte key from input keying material `ikm`, `salt` and the
/// context string `info`.
inline sha256_digest hkdf_sha256(std::string_view ikm, std::string_view salt, std::string_view info) {
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr),
                                                                  &EVP_PKEY_CTX_free);
  sha256_digest out{};
  std::size_t length = out.size();
  const auto bytes = [](std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); };
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) <= 0 || EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) <= 0 ||
      EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), bytes(salt), static_cast<int>(salt.size())) <= 0 ||
      EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), bytes(ikm), static_cast<int>(ikm.size())) <= 0 ||
      EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), bytes(info), static_cast<int>(info.size())) <= 0 ||
      EVP_PKEY_derive(ctx.get(), out.data(), &length) <= 0 || length != out.size()) {
    openssl_failed("HKDF-SHA256");
  }
  return out;
}

/**
 * GMAC: AES-256-GCM with nothing to encrypt, the message as additional authenticated data,
 * so that the tag authenticates it. One key for many messages, each under its own 96-bit
 * nonce (which must never repeat under a key).
 *
 * Built on OpenSSL's GCM mode directly (CRYPTO_gcm128, which uses carry-less multiply
 * where the CPU has it) over an AES-256 block cipher context: the key schedule and the
 * hash key are computed once, and each message costs a nonce, the hash of its bytes and
 * one AES block, with nothing allocated. Through EVP_EncryptInit_ex, re-keying the nonce
 * alone costs three times as much on a small frame.
 */
class gmac_context {
 public:
  static constexpr std::size_t tag_size = 16;
  using tag = std::array<std::uint8_t, tag_size>;

  gmac_context() = default;
  explicit gmac_context(const sha256_digest& key) : aes_(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free) {
    if (!aes_ || EVP_EncryptInit_ex(aes_.get(), EVP_aes_256_ecb(), nullptr, key.data(), nullptr) != 1 ||
        EVP_CIPHER_CTX_set_padding(aes_.get(), 0) != 1) {
      openssl_failed("AES-256");
    }
    gcm_.reset(CRYPTO_gcm128_new(aes_.get(), &encrypt_block));
    if (!gcm_) openssl_failed("GCM");
  }

  explicit operator bool() const noexcept { return static_cast<bool>(gcm_); }

  /// Starts a message under the nonce 0^32 || `counter` (little-endian).
  void begin(std::uint64_t counter) noexcept {
    unsigned char iv[12] = {};
    for (int i = 0; i < 8; ++i) iv[4 + i] = static_cast<unsigned char>(counter >> (8 * i));
    CRYPTO_gcm128_setiv(gcm_.get(), iv, sizeof iv);
  }
  void update(const void* data, std::size_t size) {
    if (CRYPTO_gcm128_aad(gcm_.get(), static_cast<const unsigned char*>(data), size) != 0) {
      openssl_failed("GMAC (a message over 2^61 bytes)");
    }
  }
  tag finish() noexcept {
    tag out{};
    CRYPTO_gcm128_tag(gcm_.get(), out.data(), out.size());
    return out;
  }

 private:
  // One AES block, as GCM asks for it (the context is ECB without padding: no state).
  static void encrypt_block(const unsigned char in[16], unsigned char out[16], const void* aes) {
    int length = 0;
    EVP_EncryptUpdate(static_cast<EVP_CIPHER_CTX*>(const_cast<void*>(aes)), out, &length, in, 16);
  }

  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> aes_{nullptr, &EVP_CIPHER_CTX_free};
  std::unique_ptr<GCM128_CONTEXT, decltype(&CRYPTO_gcm128_release)> gcm_{nullptr, &CRYPTO_gcm128_release};
};

/// True when the two digests are equal, in time that does not depend on where they differ.
inline bool digests_equal(const sha256_digest& a, const sha256_digest& b) noexcept {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

/// Cryptographically random bytes.
template <std::size_t N>
std::array<std::uint8_t, N> random_bytes() {
  std::array<std::uint8_t, N> out{};
  if (RAND_bytes(out.data(), static_cast<int>(N)) != 1) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     "OpenSSL's random generator failed: check the system's entropy source");
  }
  return out;
}

}  // namespace fwd::detail

// ---- end fwd/detail/hmac.hpp ----
// ---- begin fwd/rpc/session.hpp ----

// A connection's session after the handshake: every frame, both ways, carries a MAC under
// a key of its direction, over an implicit sequence number and the frame's bytes. Pure
// functions over bytes, like the rest of fwd/rpc/wire.hpp.
//
// The keys come from the handshake (fwd/rpc/handshake.hpp): HKDF-SHA256 over the cluster
// secrets each side proved, salted with the transcript (both nonces, both version ranges),
// one key per direction. Whoever relays a handshake sees the nonces but not the secret, so
// it has no key, and any frame it injects fails its MAC.
//
// The MAC is GMAC with AES-256 (AES-256-GCM with nothing encrypted: the frame's header,
// meta and body are the authenticated data), 16-byte tag. Its nonce is the frame's sequence
// number in its direction (counted from 0 after the handshake, never sent), so a frame
// injected, replayed, dropped or moved fails the check at the receiver, which closes the
// connection.
//
// Why GMAC rather than HMAC-SHA256: both give integrity and origin, which is what fwd
// needs (TLS, when on, gives secrecy; without it payloads travel in clear, as before).
// GMAC costs a tenth of HMAC-SHA256 on a small frame (about 60 ns against 600 for a
// 130-byte frame here) and a sixth on a 64 KiB one, with carry-less multiply; and each
// frame allocates nothing, where OpenSSL 3's HMAC duplicates two digest contexts per
// message. GMAC's one hazard, a nonce
// used twice under a key, cannot happen here: the keys are new for every connection
// (HKDF over both sides' fresh nonces) and the counter only grows. A forger must guess a
// 128-bit tag with no oracle: a wrong tag closes the connection, and the next connection
// has other keys.


#include <openssl/crypto.h>

static_assert(fwd::detail::gmac_context::tag_size == fwd::wire::tag_size);

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace fwd::wire {

/// The keys of one connection, as the handshake derives them.
struct session_keys {
  fwd::detail::sha256_digest send{};     ///< MACs this side's frames
  fwd::detail::sha256_digest receive{};  ///< checks the peer's frames
  std::uint32_t protocol = 0;            ///< the protocol version both sides agreed on
};

/**
 * Seals the frames one side sends and checks those it receives. Frames must be sealed in
 * the order they are written, and opened in the order they arrive.
 */
class session {
 public:
  session() = default;
  explicit session(const session_keys& keys)
      : send_(keys.send), receive_(keys.receive), protocol_(keys.protocol) {}

  /// True once made from a handshake's keys.
  explicit operator bool() const noexcept { return static_cast<bool>(send_); }

  /// The protocol version both sides agreed on.
  std::uint32_t protocol() const noexcept { return protocol_; }

  /// Writes the tag of `frame` (header, meta and body), the next frame this side sends,
  /// into `tag` (tag_size bytes).
  void seal(std::string_view frame, char* tag) {
    send_.begin(send_sequence_++);
    send_.update(frame.data(), frame.size());
    const auto mac = send_.finish();
    std::memcpy(tag, mac.data(), tag_size);
  }

  /// Appends the tag of the frame that starts at `at` in `out` and runs to its end.
  void seal_tail(std::string& out, std::size_t at) {
    char tag[tag_size];
    seal(std::string_view(out).substr(at), tag);
    out.append(tag, tag_size);
  }

  /// True when `frame` is the next frame the peer sent and `tag` its tag. Once false, the
  /// connection must be closed: the sequence has moved on.
  bool open(std::string_view frame, std::string_view tag) {
    begin_open();
    add(frame);
    return end_open(tag);
  }

  // A frame checked piece by piece, for one that is skipped rather than kept whole:
  // begin_open(), add() every byte of the frame, then end_open() with its tag.
  void begin_open() { receive_.begin(receive_sequence_++); }
  void add(std::string_view bytes) { receive_.update(bytes.data(), bytes.size()); }
  bool end_open(std::string_view tag) {
    const auto mac = receive_.finish();
    return tag.size() == tag_size && CRYPTO_memcmp(mac.data(), tag.data(), tag_size) == 0;
  }

 private:
  fwd::detail::gmac_context send_;
  fwd::detail::gmac_context receive_;
  std::uint64_t send_sequence_ = 0;
  std::uint64_t receive_sequence_ = 0;
  std::uint32_t protocol_ = 0;
};

}  // namespace fwd::wire

// ---- end fwd/rpc/session.hpp ----

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fwd::wire {

/// What two peers must share to understand each other's payloads.
struct versions {
  std::uint32_t protocol_min = min_protocol_version;  ///< the oldest protocol version spoken
  std::uint32_t protocol_max = protocol_version;      ///< the newest protocol version spoken
  std::uint32_t archive = 0;  ///< Boost.Serialization's library version
  std::uint8_t byte_order = std::endian::native == std::endian::little ? 1 : 2;  ///< 1 little, 2 big

  friend bool operator==(const versions&, const versions&) = default;
};

/// "protocol 2..3, Boost archive 19, little-endian"
inline std::string to_string(const versions& v) {
  return fmt::format("protocol {}, Boost archive {}, {}",
                     v.protocol_min == v.protocol_max ? fmt::format("{}", v.protocol_max)
                                                      : fmt::format("{}..{}", v.protocol_min, v.protocol_max),
                     v.archive,
                     v.byte_order == 1   ? "little-endian"
                     : v.byte_order == 2 ? "big-endian"
                                         : "unknown byte order");
}

/**
 * The oldest Boost archive library version whose binary archives encode what fwd writes
 * as this build does. fwd's archives are written without Boost's header (no_header), so a
 * reader decodes with its own library version, never the writer's. In Boost's binary
 * archives (1.81), every format difference between library versions is at version 7 or
 * below (class ids, object versions, collection sizes, item versions); from 8 to 19 the
 * bytes of every type fwd's codec writes are the same (tests/unit/codec_fast_path_test.cpp
 * pins them byte for byte, so a Boost whose binary format changes fails it).
 */
inline constexpr std::uint32_t min_compatible_archive_version = 8;

/// Whether peers with these archive versions read each other's payloads: equal, or both
/// at least min_compatible_archive_version.
inline constexpr bool archives_compatible(std::uint32_t a, std::uint32_t b) noexcept {
  return a == b || (a >= min_compatible_archive_version && b >= min_compatible_archive_version);
}

/// The protocol version two peers use: the highest both speak; nullopt when they have
/// none in common, or cannot read each other's payloads (archive, byte order).
inline std::optional<std::uint32_t> negotiate(const versions& local, const versions& peer) noexcept {
  const std::uint32_t low = std::max(local.protocol_min, peer.protocol_min);
  const std::uint32_t high = std::min(local.protocol_max, peer.protocol_max);
  if (low > high || high < min_protocol_version || local.byte_order != peer.byte_order ||
      !archives_compatible(local.archive, peer.archive)) {
    return std::nullopt;
  }
  return high;
}

using nonce = std::array<std::uint8_t, 32>;
using proof = detail::sha256_digest;

/// A fresh random nonce (OpenSSL's RAND_bytes).
inline nonce random_nonce() { return detail::random_bytes<32>(); }

/// Bytes of a hello body: newest protocol u32, archive u32, byte order u8, nonce.
inline constexpr std::size_t hello_size = 4 + 4 + 1 + 32;
inline constexpr std::size_t proof_size = 32;

/// The fewest bytes a cluster secret may have.
inline constexpr std::size_t min_secret_size = 32;

/// Empty when `secret` is long enough; otherwise why not and how to make one. `what`
/// names the setting, e.g. "node_options::secret".
inline std::string secret_problem(std::string_view what, std::string_view secret) {
  if (secret.size() >= min_secret_size) return {};
  return fmt::format(
      "{} is {} bytes; a cluster secret needs at least {} (a short one falls to offline guessing "
      "from a recorded handshake): make one with `openssl rand -base64 32` and give it to every node",
      what, secret.size(), min_secret_size);
}

namespace detail {

inline std::string encode_hello(const versions& v, const nonce& n) {
  std::string out(hello_size, '\0');
  fwd::detail::store_le<std::uint32_t>(out.data(), v.protocol_max);
  fwd::detail::store_le<std::uint32_t>(out.data() + 4, v.archive);
  out[8] = static_cast<char>(v.byte_order);
  std::memcpy(out.data() + 9, n.data(), n.size());
  return out;
}

inline void decode_hello(const frame_header& h, std::string_view in, versions& v, nonce& n) noexcept {
  v.protocol_max = fwd::detail::load_le<std::uint32_t>(in.data());
  v.archive = fwd::detail::load_le<std::uint32_t>(in.data() + 4);
  v.byte_order = static_cast<std::uint8_t>(in[8]);
  // A build that spoke only protocol 1 left aux 0; a range upside down is taken as its newest.
  v.protocol_min = h.aux == 0 || h.aux > v.protocol_max ? v.protocol_max : static_cast<std::uint32_t>(h.aux);
  std::memcpy(n.data(), in.data() + 9, n.size());
}

inline std::string_view as_chars(const nonce& n) noexcept {
  return {reinterpret_cast<const char*>(n.data()), n.size()};
}

// What both proofs and the session keys are bound to: both sides' version ranges and
// nonces, in a fixed layout (a relay that edits a range breaks both proofs).
inline std::string transcript(const versions& client, const nonce& client_nonce, const versions& server,
                              const nonce& server_nonce) {
  std::string out = "fwd handshake v2";
  for (const auto* side : {&client, &server}) {
    char fields[13];
    fwd::detail::store_le<std::uint32_t>(fields, side->protocol_min);
    fwd::detail::store_le<std::uint32_t>(fields + 4, side->protocol_max);
    fwd::detail::store_le<std::uint32_t>(fields + 8, side->archive);
    fields[12] = static_cast<char>(side->byte_order);
    out.append(fields, sizeof fields);
    out.append(as_chars(side == &client ? client_nonce : server_nonce));
  }
  return out;
}

// Distinct labels, so that neither side's proof can be replayed as the other's.
inline proof server_proof(std::string_view secret, std::string_view transcript) {
  return fwd::detail::hmac_sha256(secret, {"fwd server proof v2", transcript});
}
inline proof client_proof(std::string_view secret, std::string_view transcript) {
  return fwd::detail::hmac_sha256(secret, {"fwd client proof v2", transcript});
}

// The secret among `secrets` under which `claimed` is the proof `make` computes; checks
// every one (no early exit), and returns the index of the match, or -1.
template <class Make>
int find_prover(const std::vector<std::string>& secrets, const proof& claimed, Make&& make) {
  int found = -1;
  for (std::size_t i = 0; i < secrets.size(); ++i) {
    if (fwd::detail::digests_equal(claimed, make(secrets[i])) && found < 0) found = static_cast<int>(i);
  }
  return found;
}

inline std::string length_prefixed(std::string_view a, std::string_view b) {
  std::string out;
  char size[4];
  for (std::string_view part : {a, b}) {
    fwd::detail::store_le<std::uint32_t>(size, static_cast<std::uint32_t>(part.size()));
    out.append(size, sizeof size);
    out.append(part);
  }
  return out;
}

// The session keys, from the secret the server proved, the one the client proved, and
// the transcript.
inline session_keys derive_keys(std::string_view server_secret, std::string_view client_secret,
                                std::string_view transcript, std::uint32_t protocol, bool for_client) {
  const std::string ikm = length_prefixed(server_secret, client_secret);
  const auto to_server = fwd::detail::hkdf_sha256(ikm, transcript, "fwd session v2 client to server");
  const auto to_client = fwd::detail::hkdf_sha256(ikm, transcript, "fwd session v2 server to client");
  session_keys keys;
  keys.send = for_client ? to_server : to_client;
  keys.receive = for_client ? to_client : to_server;
  keys.protocol = protocol;
  return keys;
}

inline std::string mismatch_message(const versions& local, const versions& peer) {
  return fmt::format(
      "this node speaks {}; the peer speaks {}: no protocol version in common, or payloads "
      "neither can read (Boost archive versions 8 and up interoperate; byte orders must match): "
      "run fwd builds whose protocol ranges overlap on every node",
      to_string(local), to_string(peer));
}

inline std::vector<std::string> one_secret(std::string_view secret) { return {std::string(secret)}; }

}  // namespace detail

/// What a handshake step asks of its caller.
struct handshake_step {
  boost::system::error_code ec;  ///< set: the handshake failed; send `send`, then close
  std::string send;              ///< frames to write to the peer (may be empty)
  bool done = false;             ///< the peer is authenticated: requests may flow
  std::string detail;            ///< with ec: what went wrong, for the error's message

  static handshake_step failure(errc code, std::string why) {
    handshake_step step;
    step.ec = make_error_code(code);
    step.detail = std::move(why);
    return step;
  }
};

/// A goodbye frame: the sender closes the connection because of `code`.
inline std::string encode_goodbye(errc code, std::string_view why) {
  frame_header h;
  h.type = frame_type::goodbye;
  h.aux = static_cast<std::uint64_t>(code);
  return encode_frame(h, why);
}

/**
 * The client's side of the handshake. Call start() and send its bytes; then pass each
 * frame received to on_frame() until a step is done or has an error. Once done,
 * take_session() gives the session that seals and checks every later frame.
 *
 * `secrets`: the first is proved, every one is accepted from the server (see above).
 */
class client_handshake {
 public:
  client_handshake(std::vector<std::string> secrets, versions local, nonce client_nonce = random_nonce())
      : secrets_(std::move(secrets)), local_(local), client_nonce_(client_nonce) {}
  client_handshake(std::string_view secret, versions local, nonce client_nonce = random_nonce())
      : client_handshake(detail::one_secret(secret), local, client_nonce) {}

  /// The client hello frame.
  std::string start() const {
    frame_header h;
    h.type = frame_type::client_hello;
    h.aux = local_.protocol_min;
    return encode_frame(h, {}, detail::encode_hello(local_, client_nonce_));
  }

  handshake_step on_frame(const frame_view& frame) {
    handshake_step step;
    if (secrets_.empty()) return fail(errc::unauthenticated, "no cluster secret to prove");
    if (state_ == state::failed || state_ == state::done) {
      return fail(errc::protocol_error, "the handshake is already over");
    }
    if (frame.header.type == frame_type::goodbye) {
      return from_goodbye(frame);
    }
    if (state_ == state::wait_server_hello) {
      if (frame.header.type != frame_type::server_hello || frame.body.size() != hello_size + proof_size ||
          !frame.meta.empty()) {
        return fail(errc::protocol_error, "the peer did not answer with a fwd server hello: is it a fwd node?");
      }
      versions peer;
      nonce server_nonce;
      detail::decode_hello(frame.header, frame.body.substr(0, hello_size), peer, server_nonce);
      const auto agreed = negotiate(local_, peer);
      if (!agreed) {
        return fail(errc::version_mismatch, detail::mismatch_message(local_, peer));
      }
      const std::string transcript = detail::transcript(local_, client_nonce_, peer, server_nonce);
      proof claimed;
      std::memcpy(claimed.data(), frame.body.data() + hello_size, proof_size);
      const int server_secret = detail::find_prover(
          secrets_, claimed, [&](const std::string& s) { return detail::server_proof(s, transcript); });
      if (server_secret < 0) {
        return fail(errc::unauthenticated,
                    "the server did not prove the cluster secret: give every node the same secret "
                    "(or, while changing it, the new one among each node's accepted secrets)");
      }
      const proof mine = detail::client_proof(secrets_.front(), transcript);
      keys_ = detail::derive_keys(secrets_[static_cast<std::size_t>(server_secret)], secrets_.front(), transcript,
                                  *agreed, true);
      frame_header h;
      h.type = frame_type::client_proof;
      step.send = encode_frame(h, {}, std::string_view(reinterpret_cast<const char*>(mine.data()), mine.size()));
      state_ = state::wait_welcome;
      return step;
    }
    // wait_welcome
    if (frame.header.type != frame_type::welcome || !frame.body.empty() || !frame.meta.empty()) {
      return fail(errc::protocol_error, "the peer broke the fwd handshake (expected welcome)");
    }
    state_ = state::done;
    step.done = true;
    return step;
  }

  /// Once a step was done: the session (keys and protocol version agreed on).
  session take_session() const { return session(keys_); }

 private:
  enum class state { wait_server_hello, wait_welcome, done, failed };

  handshake_step fail(errc code, std::string detail) {
    state_ = state::failed;
    return handshake_step::failure(code, std::move(detail));
  }

  handshake_step from_goodbye(const frame_view& frame) {
    const std::uint64_t code = frame.header.aux;
    const bool known = code == static_cast<std::uint64_t>(errc::unauthenticated) ||
                       code == static_cast<std::uint64_t>(errc::version_mismatch) ||
                       code == static_cast<std::uint64_t>(errc::overloaded) ||
                       code == static_cast<std::uint64_t>(errc::protocol_error);
    return fail(known ? static_cast<errc>(code) : errc::protocol_error,
                fmt::format("the server refused the connection: {}", frame.meta.substr(0, 1024)));
  }

  std::vector<std::string> secrets_;
  versions local_;
  nonce client_nonce_;
  session_keys keys_;
  state state_ = state::wait_server_hello;
};

/**
 * The server's side of the handshake: pass each frame received to on_frame(), send what
 * each step asks, and close on an error (after sending the step's bytes). Once done,
 * take_session() gives the session that seals and checks every later frame.
 *
 * `secrets`: the first is proved, every one is accepted from the client.
 */
class server_handshake {
 public:
  server_handshake(std::vector<std::string> secrets, versions local, nonce server_nonce = random_nonce())
      : secrets_(std::move(secrets)), local_(local), server_nonce_(server_nonce) {}
  server_handshake(std::string_view secret, versions local, nonce server_nonce = random_nonce())
      : server_handshake(detail::one_secret(secret), local, server_nonce) {}

  handshake_step on_frame(const frame_view& frame) {
    handshake_step step;
    if (secrets_.empty()) return fail(errc::unauthenticated, "no cluster secret to prove");
    if (state_ == state::wait_client_hello) {
      if (frame.header.type != frame_type::client_hello || frame.body.size() != hello_size || !frame.meta.empty()) {
        return fail(errc::protocol_error, "expected a fwd client hello");
      }
      versions peer;
      nonce client_nonce;
      detail::decode_hello(frame.header, frame.body, peer, client_nonce);
      frame_header h;
      h.type = frame_type::server_hello;
      h.aux = local_.protocol_min;
      std::string body = detail::encode_hello(local_, server_nonce_);
      agreed_ = negotiate(local_, peer).value_or(0);
      if (agreed_ == 0) {
        // Still say who we are, so that the client can name both versions.
        body.append(proof_size, '\0');
        step = fail(errc::version_mismatch, detail::mismatch_message(local_, peer));
        step.send = encode_frame(h, {}, body);
        step.send += encode_goodbye(errc::version_mismatch, step.detail);
        return step;
      }
      transcript_ = detail::transcript(peer, client_nonce, local_, server_nonce_);
      const proof mine = detail::server_proof(secrets_.front(), transcript_);
      body.append(reinterpret_cast<const char*>(mine.data()), mine.size());
      step.send = encode_frame(h, {}, body);
      state_ = state::wait_client_proof;
      return step;
    }
    if (state_ == state::wait_client_proof) {
      if (frame.header.type != frame_type::client_proof || frame.body.size() != proof_size || !frame.meta.empty()) {
        return fail(errc::protocol_error, "expected a fwd client proof");
      }
      proof claimed;
      std::memcpy(claimed.data(), frame.body.data(), proof_size);
      const int client_secret = detail::find_prover(
          secrets_, claimed, [&](const std::string& s) { return detail::client_proof(s, transcript_); });
      if (client_secret < 0) {
        step = fail(errc::unauthenticated,
                    "the client did not prove the cluster secret: give every node the same secret "
                    "(or, while changing it, the new one among each node's accepted secrets)");
        step.send = encode_goodbye(errc::unauthenticated, step.detail);
        return step;
      }
      keys_ = detail::derive_keys(secrets_.front(), secrets_[static_cast<std::size_t>(client_secret)], transcript_,
                                  agreed_, false);
      frame_header h;
      h.type = frame_type::welcome;
      step.send = encode_frame(h);
      step.done = true;
      state_ = state::done;
      return step;
    }
    return fail(errc::protocol_error, "the handshake is already over");
  }

  /// Once a step was done: the session (keys and protocol version agreed on).
  session take_session() const { return session(keys_); }

 private:
  enum class state { wait_client_hello, wait_client_proof, done, failed };

  handshake_step fail(errc code, std::string detail) {
    state_ = state::failed;
    return handshake_step::failure(code, std::move(detail));
  }

  std::vector<std::string> secrets_;
  versions local_;
  nonce server_nonce_;
  std::uint32_t agreed_ = 0;
  std::string transcript_;
  session_keys keys_;
  state state_ = state::wait_client_hello;
};

/// The most bytes any handshake frame may have; a server decodes handshake frames with
/// this limit, so an unauthenticated peer cannot make it allocate more.
inline constexpr std::size_t max_handshake_frame_size = header_size + hello_size + proof_size + 1024;

}  // namespace fwd::wire

namespace fwd::rpc::detail {

// The secrets a client or server proves and accepts: `secret` first, then `accepted`.
// Throws fwd::error(bad_argument) when one is shorter than wire::min_secret_size.
inline std::vector<std::string> checked_secrets(std::string_view options, const std::string& secret,
                                                const std::vector<std::string>& accepted) {
  std::vector<std::string> all{secret};
  all.insert(all.end(), accepted.begin(), accepted.end());
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::string what =
        i == 0 ? fmt::format("{}::secret", options) : fmt::format("{}::accepted_secrets[{}]", options, i - 1);
    if (std::string problem = wire::secret_problem(what, all[i]); !problem.empty()) {
      throw fwd::error(make_error_code(errc::bad_argument), problem);
    }
  }
  return all;
}

}  // namespace fwd::rpc::detail

// ---- end fwd/rpc/handshake.hpp ----
// ---- begin fwd/rpc/registry.hpp ----

// The server side of procedures: which functions a node serves, under which names and
// signatures, and how one incoming call is decoded, run on the user's executor and
// answered exactly once.

// ---- begin fwd/detail/completion.hpp ----

// The one way fwd completes an asynchronous operation. An operation's initiation wraps its
// handler in a pending_completion, which
//   - type-erases it (any_completion_handler: the handler's associated executor, allocator
//     and cancellation slot are kept);
//   - tracks outstanding work on the handler's associated executor (default: the
//     operation's I/O executor) until the operation completes, so that run() does not
//     return while it is pending;
//   - completes it exactly once, through that executor: post() never runs the handler
//     inside the caller (use it whenever the initiating call may still be on the stack),
//     dispatch() may run it at once when already on that executor. The first completion
//     wins, also when several threads race to complete; later ones do nothing;
//   - clears the handler's cancellation slot on the handler's executor, just before the
//     handler runs (the thread cancellation is emitted on).
// Destroying a pending completion that was never completed destroys the handler without
// calling it (owners that must always answer, like rpc::detail::reply_once, complete from
// their destructor).

#include <atomic>
#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd::detail {

template <class Signature>
class pending_completion;

/// A type-erased completion handler with work tracked on its associated executor,
/// completed at most once (see the top of this file).
template <class... Args>
class pending_completion<void(Args...)> {
 public:
  using signature = void(Args...);
  using handler_type = boost::asio::any_completion_handler<signature>;

  pending_completion() noexcept = default;

  /// Takes `handler`; `io_executor` runs it when it has no associated executor.
  template <class Handler>
  requires(!std::is_same_v<std::decay_t<Handler>, pending_completion>)
      pending_completion(Handler&& handler, const boost::asio::any_io_executor& io_executor)
      : pending_completion(track(handler, io_executor), std::forward<Handler>(handler)) {}

  pending_completion(pending_completion&& other) noexcept
      : executor_(std::move(other.executor_)),
        erased_(std::move(other.erased_)),
        direct_(other.direct_),
        handler_(std::move(other.handler_)),
        done_(other.done_.load(std::memory_order_relaxed)) {}

  pending_completion& operator=(pending_completion&& other) noexcept {
    executor_ = std::move(other.executor_);
    erased_ = std::move(other.erased_);
    direct_ = other.direct_;
    // Not handler_ = std::move(...): Boost 1.81's any_completion_handler move assignment
    // wraps the source in a new handler recursively (it forwards an lvalue).
    handler_type taken(std::move(other.handler_));
    handler_.swap(taken);
    done_.store(other.done_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    return *this;
  }

  pending_completion(const pending_completion&) = delete;
  pending_completion& operator=(const pending_completion&) = delete;

  /// Holds a handler not completed yet. Not synchronised with a concurrent completion.
  explicit operator bool() const noexcept {
    return static_cast<bool>(handler_) && !done_.load(std::memory_order_acquire);
  }

  /// The slot to install the operation's cancellation handler in (the type-erased
  /// handler's; a handler installed in the original handler's slot before the conversion
  /// would be replaced by it). Call it before the operation can complete.
  boost::asio::cancellation_slot slot() const noexcept {
    return handler_ ? handler_.get_cancellation_slot() : boost::asio::cancellation_slot();
  }

  /// Completes with `args`, posted to the handler's executor (never inline). Returns false
  /// when the operation had completed already. Thread-safe against other completions.
  bool post(Args... args) { return deliver<false>(std::move(args)...); }

  /// As post(), but runs the handler at once when the caller is on its executor. Only for
  /// completions that cannot happen inside the initiating call.
  bool dispatch(Args... args) { return deliver<true>(std::move(args)...); }

 private:
  struct tracked_executors {
    boost::asio::any_io_executor executor;
    boost::asio::any_completion_executor erased;
    bool direct = true;
  };

  // Read before the handler is moved into the type-erased one.
  template <class Handler>
  static tracked_executors track(const Handler& handler,
                                 const boost::asio::any_io_executor& io_executor) {
    auto tracked = boost::asio::prefer(boost::asio::get_associated_executor(handler, io_executor),
                                       boost::asio::execution::outstanding_work.tracked);
    if constexpr (std::is_convertible_v<decltype(tracked), boost::asio::any_io_executor>) {
      return {std::move(tracked), {}, true};
    } else {
      // E.g. a handler that is an any_completion_handler itself: its executor can only be
      // dispatched to; a post goes through the I/O executor first.
      return {io_executor, std::move(tracked), false};
    }
  }

  template <class Handler>
  pending_completion(tracked_executors executors, Handler&& handler)
      : executor_(std::move(executors.executor)),
        erased_(std::move(executors.erased)),
        direct_(executors.direct),
        handler_(std::forward<Handler>(handler)) {}

  template <bool Dispatch>
  bool deliver(Args... args) {
    if (done_.exchange(true, std::memory_order_acq_rel) || !handler_) return false;
    boost::asio::any_io_executor executor = std::move(executor_);
    boost::asio::any_completion_executor erased = std::move(erased_);
    auto allocator = boost::asio::get_associated_allocator(handler_);
    auto function = boost::asio::bind_allocator(
        allocator,
        [handler = std::move(handler_), values = std::make_tuple(std::move(args)...)]() mutable {
          auto slot = boost::asio::get_associated_cancellation_slot(handler);
          if (slot.is_connected()) slot.clear();
          std::apply(std::move(handler), std::move(values));
        });
    if (!direct_) {
      if constexpr (Dispatch) {
        boost::asio::dispatch(erased, std::move(function));
      } else {
        boost::asio::post(executor, boost::asio::bind_executor(erased, std::move(function)));
      }
    } else if constexpr (Dispatch) {
      boost::asio::dispatch(executor, std::move(function));
    } else {
      boost::asio::post(executor, std::move(function));
    }
    return true;
  }

  boost::asio::any_io_executor executor_;        // the handler's, tracking work (direct_)
  boost::asio::any_completion_executor erased_;  // the handler's, tracking work (!direct_)
  bool direct_ = true;
  handler_type handler_;
  std::atomic<bool> done_{false};
};

}  // namespace fwd::detail

// ---- end fwd/detail/completion.hpp ----
// ---- begin fwd/rpc/result_handler.hpp ----

// One incoming call as a procedure sees it: the call and its context, the reply answered
// exactly once (detail::reply_once), the completion handler an asynchronous procedure
// receives (result_handler), and how a function's style is recognised.


#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/core/demangle.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace fwd::rpc {

/// One call as the transport received it. The views need to stay valid only during
/// registry::dispatch (the registry copies what it keeps).
struct incoming_call {
  std::string_view procedure;                      ///< the procedure's name
  std::uint64_t signature = 0;                     ///< the caller's signature fingerprint
  std::string_view arguments;                      ///< the encoded arguments
  std::array<std::uint8_t, 16> request_id{};       ///< the caller's request id
  std::chrono::steady_clock::time_point deadline;  ///< when the caller stops waiting; {} = none
  std::uint16_t durability = 0;  ///< a write's durability (fwd::durability::wire(); 0: none)
};

/// What a procedure may learn about the call it serves.
struct call_context {
  std::array<std::uint8_t, 16> request_id{};       ///< the caller's request id (fixed across retries)
  std::chrono::steady_clock::time_point deadline;  ///< when the caller stops waiting; {} = none
};

/// Receives the outcome of one call: on success an empty error code and the encoded
/// result; on failure the error and a human-readable detail.
using reply_handler =
    boost::asio::any_completion_handler<void(boost::system::error_code, std::string)>;

namespace detail {

/// "<demangled exception type>: <what()>" for the exception in flight.
inline std::string describe_exception(const std::exception_ptr& exception) {
  try {
    std::rethrow_exception(exception);
  } catch (const std::exception& e) {
    return fmt::format("{}: {}", boost::core::demangle(typeid(e).name()), e.what());
  } catch (...) {
    return "an exception of a type not derived from std::exception";
  }
}

/// A peer's procedure name, quoted and bounded for use in a message.
inline std::string quoted_name(std::string_view name) {
  constexpr std::size_t shown = 128;
  return fmt::format("'{}{}'", name.substr(0, shown), name.size() > shown ? "..." : "");
}

inline std::string hex64(std::uint64_t value) {
  return fmt::format("{:#018x}", value);
}

/// Guarantees that a reply handler is called exactly once: the first completion wins,
/// later ones are ignored, and if every owner lets go without completing, the call is
/// answered with errc::remote_failure. Completes through the reply handler's associated
/// executor (or `executor`), which has outstanding work until then (a pending_completion).
class reply_once {
 public:
  reply_once(reply_handler reply, boost::asio::any_io_executor executor, std::string procedure)
      : completion_(std::move(reply), executor),
        executor_(std::move(executor)),
        procedure_(std::move(procedure)) {}

  reply_once(const reply_once&) = delete;
  reply_once& operator=(const reply_once&) = delete;

  ~reply_once() {
    if (!completion_) return;
    complete(make_error_code(errc::remote_failure),
             fmt::format("procedure {} finished without producing a result (its completion handler "
                         "was destroyed without being called)",
                         quoted_name(procedure_)));
  }

  /// Answers the call, unless it was answered already. Thread-safe. Dispatched: the reply
  /// handler is internal (the server's or the forwarder's), never a caller's initiation.
  void complete(boost::system::error_code ec, std::string payload) {
    completion_.dispatch(ec, std::move(payload));
  }

  /// Answers with errc::remote_failure describing `exception`.
  void fail(const std::exception_ptr& exception) {
    complete(make_error_code(errc::remote_failure), describe_exception(exception));
  }

  const boost::asio::any_io_executor& executor() const noexcept { return executor_; }
  const std::string& procedure() const noexcept { return procedure_; }

 private:
  fwd::detail::pending_completion<void(boost::system::error_code, std::string)> completion_;
  boost::asio::any_io_executor executor_;
  std::string procedure_;
};

template <class R>
std::string encode_procedure_result(const R& value) {
  return fwd::detail::encode_result<R>(value);
}

}  // namespace detail

/**
 * The completion handler an asynchronous procedure receives as its last argument. Call it
 * once with `(boost::system::error_code, R)` (for `void` results: `(error_code)`): an
 * empty error code sends the result, any other is sent to the caller as the error (with
 * its message as the detail). Copies share one call: the first invocation wins. If every
 * copy is destroyed without being called, the caller receives errc::remote_failure.
 * Its associated executor is the executor the procedure runs on.
 */
template <class R>
class result_handler {
 public:
  using executor_type = boost::asio::any_io_executor;

  explicit result_handler(std::shared_ptr<detail::reply_once> reply) : reply_(std::move(reply)) {}

  executor_type get_executor() const noexcept { return reply_->executor(); }

  /// Completes the call with `value`, or with `ec` when it is set.
  void operator()(boost::system::error_code ec, R value) const {
    if (ec) {
      reply_->complete(ec, ec.message());
      return;
    }
    try {
      reply_->complete({}, detail::encode_procedure_result<R>(value));
    } catch (...) {
      reply_->fail(std::current_exception());
    }
  }

 private:
  std::shared_ptr<detail::reply_once> reply_;
};

/// The completion handler of an asynchronous procedure whose result is void.
template <>
class result_handler<void> {
 public:
  using executor_type = boost::asio::any_io_executor;

  explicit result_handler(std::shared_ptr<detail::reply_once> reply) : reply_(std::move(reply)) {}

  executor_type get_executor() const noexcept { return reply_->executor(); }

  /// Completes the call (with `ec` as the error when it is set).
  void operator()(boost::system::error_code ec = {}) const {
    reply_->complete(ec, ec ? ec.message() : std::string());
  }

 private:
  std::shared_ptr<detail::reply_once> reply_;
};

namespace detail {

template <class T>
inline constexpr bool is_awaitable = false;
template <class T, class Executor>
inline constexpr bool is_awaitable<boost::asio::awaitable<T, Executor>> = true;

template <class T>
struct awaitable_value;
template <class T, class Executor>
struct awaitable_value<boost::asio::awaitable<T, Executor>> {
  using type = T;
};

enum class handler_style { synchronous, asynchronous, coroutine };

// How a user's function `F` serves procedure `R(Ds...)` (Ds: decayed parameters):
// whether it takes a call_context first, and in which style it returns its result.
template <class F, class R, class... Ds>
struct handler_traits {
  static constexpr bool async_with_context =
      std::is_invocable_v<F&, const call_context&, Ds&&..., result_handler<R>>;
  static constexpr bool async_plain = std::is_invocable_v<F&, Ds&&..., result_handler<R>>;
  static constexpr bool direct_with_context = std::is_invocable_v<F&, const call_context&, Ds&&...>;
  static constexpr bool direct_plain = std::is_invocable_v<F&, Ds&&...>;

  static constexpr bool with_context =
      async_with_context || (!async_plain && direct_with_context);
  static constexpr bool asynchronous = async_with_context || async_plain;
  static constexpr bool usable = asynchronous || direct_with_context || direct_plain;

  static auto direct_result() {
    if constexpr (asynchronous || !usable) {
      return std::type_identity<void>{};
    } else if constexpr (with_context) {
      return std::type_identity<std::invoke_result_t<F&, const call_context&, Ds&&...>>{};
    } else {
      return std::type_identity<std::invoke_result_t<F&, Ds&&...>>{};
    }
  }
  using result = typename decltype(direct_result())::type;

  static constexpr handler_style style = asynchronous              ? handler_style::asynchronous
                                         : is_awaitable<result>    ? handler_style::coroutine
                                                                   : handler_style::synchronous;
};

// Calls `fn` with the context (when it takes one), the arguments (moved out of `args`)
// and `extra...` (the completion handler, for asynchronous procedures).
template <bool WithContext, class F, class Tuple, class... Extra>
decltype(auto) invoke_procedure(F& fn, const call_context& context, Tuple& args, Extra&&... extra) {
  return std::apply(
      [&](auto&... values) -> decltype(auto) {
        if constexpr (WithContext) {
          return std::invoke(fn, context, std::move(values)..., std::forward<Extra>(extra)...);
        } else {
          return std::invoke(fn, std::move(values)..., std::forward<Extra>(extra)...);
        }
      },
      args);
}

// The coroutine that owns the arguments (and keeps the function alive) while the user's
// coroutine runs: a user coroutine may take its parameters by reference.
template <class R, bool WithContext, class F, class Tuple>
boost::asio::awaitable<R> run_coroutine(std::shared_ptr<F> fn, call_context context, Tuple args) {
  if constexpr (std::is_void_v<R>) {
    co_await invoke_procedure<WithContext>(*fn, context, args);
  } else {
    co_return co_await invoke_procedure<WithContext>(*fn, context, args);
  }
}

}  // namespace detail

}  // namespace fwd::rpc

// ---- end fwd/rpc/result_handler.hpp ----

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/core/demangle.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace fwd::rpc {

/**
 * The procedures a node serves. Define them all before the server starts: `define` and
 * `define_raw` are not synchronised with `dispatch`; `dispatch`, `contains`, `names` and
 * `signature_of` are const and may run concurrently. Functions may be invoked
 * concurrently when the executor given to `dispatch` runs on several threads.
 */
class registry {
 public:
  /// A procedure working on bytes: receives the call (its views valid only during this
  /// invocation), the executor it runs on, and the reply to call once.
  using raw_handler =
      std::function<void(const incoming_call&, boost::asio::any_io_executor, reply_handler)>;

  registry() = default;

  /**
   * Serves `proc` with `fn`, which may be any of:
   *
   *  - synchronous: `R fn(A...)`: its return value (or exception) is the reply;
   *  - asynchronous: `void fn(A..., result_handler<R> handler)`: call `handler(ec, r)`
   *    (for void: `handler(ec)`) once, from any thread;
   *  - coroutine: `boost::asio::awaitable<R> fn(A...)`, spawned on the dispatch executor;
   *
   * each optionally taking a first parameter `const fwd::rpc::call_context&` (request id,
   * deadline). Arguments are passed as rvalues of the decayed parameter types, so `fn`
   * may take them by value, by const reference or by rvalue reference. An exception from
   * `fn` (or from encoding its result) is answered with errc::remote_failure and the
   * detail "<exception type>: <what()>". Throws fwd::error(errc::bad_argument) when a
   * procedure of that name is already defined. `fn` is kept (moved or copied) until the
   * registry and every call it started are gone.
   */
  template <class R, class... A, class F>
  void define(const procedure<R(A...)>& proc, F&& fn) {
    using function = std::decay_t<F>;
    using traits = detail::handler_traits<function, R, std::decay_t<A>...>;
    static_assert(traits::usable,
                  "fwd: this function cannot serve the procedure: it must be callable as "
                  "R(A...), void(A..., fwd::rpc::result_handler<R>) or "
                  "boost::asio::awaitable<R>(A...), optionally with a first parameter "
                  "'const fwd::rpc::call_context&'");
    if constexpr (traits::style == detail::handler_style::synchronous) {
      static_assert(std::is_void_v<R> || std::is_convertible_v<typename traits::result, R>,
                    "fwd: the function's return type does not convert to the procedure's "
                    "result type");
    } else if constexpr (traits::style == detail::handler_style::coroutine) {
      using value = typename detail::awaitable_value<typename traits::result>::type;
      static_assert(std::is_void_v<R> ? std::is_void_v<value> : std::is_convertible_v<value, R>,
                    "fwd: the coroutine's awaitable<T> does not match the procedure's result type");
    }
    using procedure_type = procedure<R(A...)>;
    auto shared_fn = std::make_shared<function>(std::forward<F>(fn));
    add(std::string(proc.name()), proc.signature(), procedure_type::signature_text(), nullptr,
        [shared_fn](const incoming_call& call, const boost::asio::any_io_executor& executor,
                    std::shared_ptr<detail::reply_once> answer) {
          run_typed<procedure_type, traits>(shared_fn, call, executor, std::move(answer));
        });
  }

  /**
   * Serves a procedure that works on bytes (fwd's own, such as `fwd.hello`). `handler`
   * runs on the dispatch executor and must call its reply once; if it throws, or drops
   * the reply, the call is answered with errc::remote_failure. Throws
   * fwd::error(errc::bad_argument) when the name is taken or empty.
   */
  void define_raw(std::string name, std::uint64_t signature, raw_handler handler) {
    if (!handler) {
      throw error(make_error_code(errc::bad_argument),
                  fmt::format("procedure {} needs a handler", detail::quoted_name(name)));
    }
    add(std::move(name), signature, {}, std::move(handler), nullptr);
  }

  /**
   * Runs one call. Looks the procedure up by name and compares signatures here; then
   * posts the work to `executor` (never running anything inside this call): decoding the
   * arguments, running the function, encoding its result. `reply` is called exactly once,
   * through its associated executor (default: `executor`), never inside `dispatch`:
   *
   *  - success: `({}, encoded result)` (empty for void);
   *  - errc::unknown_procedure: no procedure of that name (the detail names it);
   *  - errc::signature_mismatch: defined with another signature (nothing is decoded);
   *  - errc::timeout: the call's deadline passed before the procedure started (it did
   *    not run);
   *  - errc::protocol_error: the arguments could not be decoded (it did not run);
   *  - errc::remote_failure: the function threw ("<type>: <what()>"), or dropped its
   *    completion handler;
   *  - any error code an asynchronous procedure completes with (detail: its message).
   */
  void dispatch(const incoming_call& call, boost::asio::any_io_executor executor,
                reply_handler reply) const {
    auto answer = std::make_shared<detail::reply_once>(std::move(reply), executor,
                                                       std::string(call.procedure.substr(0, 256)));
    const auto found = entries_.find(call.procedure);
    if (found == entries_.end()) {
      post_failure(executor, std::move(answer), errc::unknown_procedure,
                   fmt::format("no procedure named {} is defined on this node: define it on every node",
                               detail::quoted_name(call.procedure)));
      return;
    }
    std::shared_ptr<const entry> target = found->second;
    if (target->signature != call.signature) {
      std::string detail = fmt::format(
          "procedure {} is defined on this node with signature {}{} but the caller's is {}: deploy the "
          "same procedure declarations on every node",
          detail::quoted_name(call.procedure), detail::hex64(target->signature),
          target->signature_text.empty() ? std::string() : fmt::format(" ({})", target->signature_text),
          detail::hex64(call.signature));
      post_failure(executor, std::move(answer), errc::signature_mismatch, std::move(detail));
      return;
    }
    boost::asio::post(executor, [target = std::move(target), answer = std::move(answer),
                                 executor, request_id = call.request_id, deadline = call.deadline,
                                 durability = call.durability, arguments = std::string(call.arguments)]() mutable {
      if (deadline != std::chrono::steady_clock::time_point{} &&
          std::chrono::steady_clock::now() >= deadline) {
        answer->complete(make_error_code(errc::timeout),
                         fmt::format("the deadline of the call to {} passed before it started; it did not run",
                                     detail::quoted_name(target->name)));
        return;
      }
      const incoming_call owned{target->name, target->signature, arguments, request_id, deadline, durability};
      if (target->typed) {
        // A typed procedure answers through `answer` itself.
        try {
          target->typed(owned, executor, answer);
        } catch (...) {
          answer->fail(std::current_exception());
        }
        return;
      }
      // The handler gets a reply that answers through `answer`, so that a throwing or
      // forgetful raw handler still answers exactly once.
      reply_handler forward = [answer](boost::system::error_code ec, std::string payload) {
        answer->complete(ec, std::move(payload));
      };
      try {
        target->handler(owned, executor, std::move(forward));
      } catch (...) {
        answer->fail(std::current_exception());
      }
    });
  }

  /// Whether a procedure named `name` is defined.
  bool contains(std::string_view name) const { return entries_.find(name) != entries_.end(); }

  /// The names of the defined procedures, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
  }

  /// The signature fingerprint `name` is defined with, if it is defined.
  std::optional<std::uint64_t> signature_of(std::string_view name) const {
    const auto found = entries_.find(name);
    if (found == entries_.end()) return std::nullopt;
    return found->second->signature;
  }

 private:
  // Runs a typed procedure's call, answering through the reply given.
  using typed_handler = std::function<void(const incoming_call&, const boost::asio::any_io_executor&,
                                           std::shared_ptr<detail::reply_once>)>;

  struct entry {
    std::string name;
    std::uint64_t signature = 0;
    std::string signature_text;  // empty for raw procedures
    raw_handler handler;         // raw procedures
    typed_handler typed;         // typed procedures
  };

  void add(std::string name, std::uint64_t signature, std::string signature_text, raw_handler handler,
           typed_handler typed) {
    if (name.empty()) {
      throw error(make_error_code(errc::bad_argument), "a procedure name cannot be empty");
    }
    if (entries_.contains(name)) {
      throw error(make_error_code(errc::bad_argument),
                  fmt::format("procedure {} is already defined: each name can be defined once",
                              detail::quoted_name(name)));
    }
    auto e = std::make_shared<entry>(
        entry{name, signature, std::move(signature_text), std::move(handler), std::move(typed)});
    entries_.emplace(std::move(name), std::move(e));
  }

  static void post_failure(const boost::asio::any_io_executor& executor,
                           std::shared_ptr<detail::reply_once> answer, errc code, std::string detail) {
    boost::asio::post(executor, [answer = std::move(answer), code, detail = std::move(detail)]() mutable {
      answer->complete(make_error_code(code), std::move(detail));
    });
  }

  // Decodes, runs and answers one call of a typed procedure. Runs on the executor.
  template <class Proc, class Traits, class F>
  static void run_typed(const std::shared_ptr<F>& fn, const incoming_call& call,
                        const boost::asio::any_io_executor& executor, std::shared_ptr<detail::reply_once> answer) {
    using R = typename Proc::result_type;
    boost::system::error_code ec;
    std::string why;
    auto args = fwd::detail::decode_arguments<Proc>(call.arguments, ec, &why);
    if (ec) {
      answer->complete(ec, fmt::format("the arguments of {} could not be decoded as {}: {}",
                                       detail::quoted_name(call.procedure), Proc::signature_text(), why));
      return;
    }
    const call_context context{call.request_id, call.deadline};
    try {
      if constexpr (Traits::style == detail::handler_style::asynchronous) {
        detail::invoke_procedure<Traits::with_context>(*fn, context, args, result_handler<R>(answer));
      } else if constexpr (Traits::style == detail::handler_style::coroutine) {
        auto on_done = [answer](std::exception_ptr exception, auto&&... value) {
          if (exception) {
            answer->fail(exception);
            return;
          }
          if constexpr (sizeof...(value) == 0) {
            answer->complete({}, std::string());
          } else {
            try {
              answer->complete({}, detail::encode_procedure_result<R>(static_cast<R>(value)...));
            } catch (...) {
              answer->fail(std::current_exception());
            }
          }
        };
        boost::asio::co_spawn(
            executor,
            detail::run_coroutine<R, Traits::with_context>(fn, context, std::move(args)),
            std::move(on_done));
      } else if constexpr (std::is_void_v<R>) {
        detail::invoke_procedure<Traits::with_context>(*fn, context, args);
        answer->complete({}, std::string());
      } else {
        const R result = detail::invoke_procedure<Traits::with_context>(*fn, context, args);
        answer->complete({}, detail::encode_procedure_result<R>(result));
      }
    } catch (...) {
      answer->fail(std::current_exception());
    }
  }

  std::map<std::string, std::shared_ptr<const entry>, std::less<>> entries_;
};

}  // namespace fwd::rpc

// ---- end fwd/rpc/registry.hpp ----
// ---- begin fwd/rpc/hello.hpp ----

// `fwd.hello`, the procedure every fwd server answers: who the node is and what it knows
// of LiteFS. Discovery calls it.


#include <cstdint>
#include <string>
#include <string_view>

namespace fwd::rpc {

/// A node's answer to `fwd.hello`.
struct hello_info {
  static constexpr std::string_view fwd_type_name = "fwd.hello_info";

  std::string node_name;        ///< the server's configured name
  std::string litefs_hostname;  ///< the node's LiteFS hostname (what `.primary` names)
  std::string role;             ///< "primary", "replica", "unknown" or "not_litefs"
  std::uint64_t txid = 0;       ///< the database's TXID on that node (`<db>-pos`)
  std::uint32_t protocol_version = wire::protocol_version;

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & node_name & litefs_hostname & role & txid & protocol_version;
  }
};

/// The built-in procedure: `client.async_call(peer, fwd::rpc::hello, token)`.
inline const fwd::procedure<hello_info()> hello{"fwd.hello"};

}  // namespace fwd::rpc

// ---- end fwd/rpc/hello.hpp ----
// ---- begin fwd/rpc/server_options.hpp ----

// How an RPC server listens, authenticates and limits its work; the status codes its
// replies carry; the state its connections share.

// ---- begin fwd/rpc/frame_buffer.hpp ----

// A read buffer that yields whole frames: bytes are read into its free tail, frames are
// decoded in place, and it grows only to the size of the frame being received (which the
// decoder has already checked against the maximum).


#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>

namespace fwd::rpc {

class frame_buffer {
 public:
  explicit frame_buffer(std::size_t initial = 16 * 1024) : capacity_(initial), data_(new char[initial]) {}

  /// Room to read into: at least `min_free` bytes, or as much as the pending frame needs.
  std::pair<char*, std::size_t> prepare(std::size_t min_free = 4096) {
    if (begin_ == end_) begin_ = end_ = 0;
    std::size_t want = std::max(min_free, needed_);
    if (capacity_ - end_ < want) {
      if (begin_ > 0) {  // slide the partial frame to the front
        std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
      }
      if (capacity_ - end_ < want) {
        std::size_t grown = std::max(capacity_ * 2, end_ + want);
        std::unique_ptr<char[]> bigger(new char[grown]);
        std::memcpy(bigger.get(), data_.get(), end_);
        data_ = std::move(bigger);
        capacity_ = grown;
      }
    }
    return {data_.get() + end_, capacity_ - end_};
  }

  void commit(std::size_t n) noexcept { end_ += n; }

  /**
   * The next whole frame, if any: returns true with `out` set (valid until the next
   * prepare()). Returns false when more bytes are needed, or with `ec` set when the bytes
   * are not a valid frame. Each frame is followed by a tag of `tag_bytes` (see
   * wire::decode_frame).
   */
  bool next(std::size_t max_frame_size, wire::frame_view& out, boost::system::error_code& ec,
            std::size_t tag_bytes = 0) {
    std::size_t consumed = 0;
    const std::string_view bytes(data_.get() + begin_, end_ - begin_);
    ec = wire::decode_frame(bytes, max_frame_size, out, consumed, tag_bytes);
    if (ec) return false;
    if (consumed == 0) {
      // Remember how much the pending frame needs, so that prepare() makes room for it.
      wire::frame_header h;
      needed_ = bytes.size() >= wire::header_size && !wire::decode_header(bytes, max_frame_size, h)
                    ? static_cast<std::size_t>(wire::frame_size(h)) + tag_bytes - bytes.size()
                    : 0;
      return false;
    }
    needed_ = 0;
    begin_ += consumed;
    return true;
  }

  /// The bytes received and not yet taken as a frame (valid until the next prepare()).
  std::string_view data() const noexcept { return {data_.get() + begin_, end_ - begin_}; }

  /// Bytes received and not yet taken as a frame (part of the next frame).
  std::size_t buffered() const noexcept { return end_ - begin_; }

  /// The whole size of the frame being received, once its header is in and next() has
  /// looked at it; 0 otherwise.
  std::size_t partial_frame_size() const noexcept { return needed_ == 0 ? 0 : buffered() + needed_; }

  /// Drops up to `n` buffered bytes (those of a frame being skipped); returns how many.
  std::size_t discard(std::size_t n) noexcept {
    const std::size_t dropped = std::min(n, buffered());
    begin_ += dropped;
    needed_ = 0;
    return dropped;
  }

  /// Shrinks back after a large frame, so that an idle connection holds little memory.
  void shrink(std::size_t initial = 16 * 1024) {
    if (begin_ == end_ && capacity_ > 4 * initial) {
      data_.reset(new char[initial]);
      capacity_ = initial;
      begin_ = end_ = 0;
    }
  }

 private:
  std::size_t capacity_;
  std::unique_ptr<char[]> data_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::size_t needed_ = 0;
};

}  // namespace fwd::rpc

// ---- end fwd/rpc/frame_buffer.hpp ----
// ---- begin fwd/rpc/detail/tls_stream.hpp ----

// The byte stream under an RPC connection: a plain TCP socket, or TLS over one, chosen when
// the connection is set up. Each operation branches once on which it is instead of going
// through a virtual call, so that the plain path costs what a bare socket costs.

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <fmt/format.h>
#include <cstddef>
// ---- begin fwd/rpc/tls.hpp ----

// Optional mutual TLS for the RPC transport: what a node presents and whom it trusts.
// Only strings here, so that the options can be named without pulling in OpenSSL.

#include <string>

namespace fwd::rpc {

/**
 * TLS settings of a server (`server_options::tls`) or a client (`client_options::tls`).
 *
 * With TLS, each connection runs a TLS handshake (TLS 1.2 at least; 1.3 when both sides
 * have it) before fwd's own handshake, which still proves the cluster secret: a peer needs
 * both a certificate the other side trusts and the secret. Mutual: a server asks every
 * client for its certificate and verifies it against `ca_file`; a client verifies the
 * server's.
 *
 * Files are PEM. They are read once, when the server or client is constructed; a file that
 * cannot be read or parsed, or a key that does not match its certificate, throws
 * fwd::error (`bad_argument`) naming the file and OpenSSL's reason.
 *
 * A TLS failure (no certificate, a certificate from another CA, a plain fwd client against
 * a TLS server, a TLS client against a plain server) closes that connection only. The
 * client's calls fail with `unauthenticated` and OpenSSL's reason in
 * `call_options::diagnostics`; the server reports `telemetry::connection_failed` with
 * OpenSSL's error (category "asio.ssl"), or `unauthenticated` for a plain fwd client.
 */
struct tls_options {
  /// This node's certificate, then any intermediate CA certificates. Required on a server;
  /// on a client, needed whenever the server requires client certificates (the default).
  std::string certificate_chain_file;
  /// The private key of that certificate (unencrypted PEM). Required with the certificate.
  std::string private_key_file;
  /// The CA certificates a peer's certificate must chain to: the cluster's CA. Empty: the
  /// system's default trust store (rarely what a cluster wants).
  std::string ca_file;
  /// Server: refuse a client that presents no valid certificate (mutual TLS). False: a
  /// client certificate is verified when one is presented, and not required.
  /// Client: verify the server's certificate. False: accept any server certificate; then only
  /// the cluster secret authenticates the server: a relaying man-in-the-middle cannot inject
  /// or alter frames (they carry session MACs) but reads them all. For tests only.
  bool require_peer_certificate = true;
  /// Client only: the name the server's certificate must carry (a DNS name, or an IP address
  /// matched against its IP subjectAltNames); a DNS name is also sent as SNI. Empty: the
  /// certificate's chain is verified, not its name. A server ignores it.
  std::string verify_hostname;
};

}  // namespace fwd::rpc

// ---- end fwd/rpc/tls.hpp ----
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace fwd::rpc::detail {

/**
 * The SSL context of one side, built from `options`. `owner` names the options in errors
 * ("server_options::tls"). Throws fwd::error (bad_argument) naming the file and OpenSSL's
 * reason when a file cannot be loaded.
 */
inline std::shared_ptr<boost::asio::ssl::context> make_tls_context(const tls_options& options,
                                                                   bool server,
                                                                   std::string_view owner) {
  namespace ssl = boost::asio::ssl;
  auto context =
      std::make_shared<ssl::context>(server ? ssl::context::tls_server : ssl::context::tls_client);
  SSL_CTX* native = context->native_handle();
  auto fail = [&](const std::string& what, const boost::system::error_code& ec) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     ec ? fmt::format("{}: {}: {}", owner, what, ec.message()) : fmt::format("{}: {}", owner, what));
  };
  // TLS 1.2 at least; OpenSSL negotiates 1.3 when the peer has it.
  if (SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1)
    fail("cannot require TLS 1.2", {});
  context->set_options(ssl::context::default_workarounds | ssl::context::no_compression);
  SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION);
  boost::system::error_code ec;
  const bool has_certificate =
      !options.certificate_chain_file.empty() || !options.private_key_file.empty();
  if (has_certificate) {
    if (options.certificate_chain_file.empty() || options.private_key_file.empty()) {
      fail("set both certificate_chain_file and private_key_file (PEM), or neither", {});
    }
    context->use_certificate_chain_file(options.certificate_chain_file, ec);
    if (ec)
      fail(fmt::format("cannot load the certificate chain {} (PEM expected)", options.certificate_chain_file), ec);
    context->use_private_key_file(options.private_key_file, ssl::context::pem, ec);
    if (ec)
      fail(fmt::format("cannot load the private key {} (unencrypted PEM expected)", options.private_key_file), ec);
    if (SSL_CTX_check_private_key(native) != 1) {
      fail(fmt::format("the private key {} does not match the certificate {}", options.private_key_file,
                       options.certificate_chain_file),
           {});
    }
  } else if (server) {
    fail("a TLS server needs certificate_chain_file and private_key_file", {});
  }
  if (!options.ca_file.empty()) {
    context->load_verify_file(options.ca_file, ec);
    if (ec) fail(fmt::format("cannot load the CA certificates {} (PEM expected)", options.ca_file), ec);
  } else {
    context->set_default_verify_paths(ec);
    if (ec) fail("cannot load the system's trust store; set ca_file", ec);
  }
  if (server) {
    context->set_verify_mode(options.require_peer_certificate
                                 ? ssl::verify_peer | ssl::verify_fail_if_no_peer_cert
                                 : ssl::verify_peer);
    if (!options.ca_file.empty()) {
      // Tell clients which CAs are acceptable, so that one holding several certificates picks
      // right.
      if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.ca_file.c_str())) {
        SSL_CTX_set_client_CA_list(native, names);
      }
    }
    // Clients do not resume sessions (each connection is long-lived): send no tickets.
    SSL_CTX_set_num_tickets(native, 0);
  } else {
    context->set_verify_mode(options.require_peer_certificate ? ssl::verify_peer
                                                              : ssl::verify_none);
  }
  return context;
}

/// True when `ec` came from TLS (OpenSSL's reasons, alerts, a truncated TLS stream).
inline bool is_tls_error(const boost::system::error_code& ec) noexcept {
  return ec.category() == boost::asio::error::get_ssl_category() ||
         ec.category() == boost::asio::ssl::error::get_stream_category();
}

/**
 * A plain TCP socket, or TLS over one (after start_tls()). Movable; one read and one write
 * may run at once, on the socket's executor (a strand). A TLS stream lives until its last
 * operation completes, even when this object is reassigned for the next connection.
 */
class transport_stream {
 public:
  using tcp = boost::asio::ip::tcp;
  using executor_type = tcp::socket::executor_type;
  using tls_stream_type = boost::asio::ssl::stream<tcp::socket>;

  explicit transport_stream(tcp::socket socket) : socket_(std::move(socket)) {}

  executor_type get_executor() noexcept { return socket().get_executor(); }

  /// The TCP socket (under TLS, the TLS stream's).
  tcp::socket& socket() noexcept { return tls_ ? tls_->stream.next_layer() : socket_; }

  bool is_tls() const noexcept { return tls_ != nullptr; }

  /// From now on, bytes go through TLS with `context` (call before any byte is exchanged).
  void start_tls(boost::asio::ssl::context& context) {
    tls_ = std::make_shared<tls_session>(std::move(socket_), context);
  }

  /// Client side: the server's certificate must carry `name`; a DNS name also goes as SNI.
  void expect_server_name(const std::string& name) {
    if (!tls_ || name.empty()) return;
    SSL* ssl = tls_->stream.native_handle();
    boost::system::error_code not_address;
    boost::asio::ip::make_address(name, not_address);
    // OpenSSL's own checks, so that a mismatch has its own verify error ("hostname mismatch").
    if (not_address) {
      SSL_set_tlsext_host_name(ssl, name.c_str());
      SSL_set1_host(ssl, name.c_str());
    } else {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str());
    }
  }

  /// OpenSSL's reason for a TLS failure, with the certificate verification's when it failed.
  std::string tls_failure_reason(const boost::system::error_code& ec) const {
    if (tls_) {
      const long verify = SSL_get_verify_result(tls_->stream.native_handle());
      if (verify != X509_V_OK) return fmt::format("{} ({})", ec.message(), X509_verify_cert_error_string(verify));
    }
    return ec.message();
  }

  /// The TLS handshake, as `type`; completes `handler(error_code)` on the socket's executor.
  template <class Handler>
  void async_tls_handshake(boost::asio::ssl::stream_base::handshake_type type, Handler&& handler) {
    auto& stream = tls_->stream;
    stream.async_handshake(type, [keep = tls_, h = std::forward<Handler>(handler)](
                                     boost::system::error_code ec) mutable { std::move(h)(ec); });
  }

  /// AsyncReadStream: `void(error_code, std::size_t)`.
  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
        [this](auto handler, const MutableBuffers& b) {
          if (!tls_) {
            socket_.async_read_some(b, std::move(handler));
            return;
          }
          auto& stream = tls_->stream;
          stream.async_read_some(
              b, [keep = tls_, h = std::move(handler)](
                     boost::system::error_code ec, std::size_t n) mutable { std::move(h)(ec, n); });
        },
        token, buffers);
  }

  /// AsyncWriteStream: `void(error_code, std::size_t)`.
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
        [this](auto handler, const ConstBuffers& b) {
          if (!tls_) {
            socket_.async_write_some(b, std::move(handler));
            return;
          }
          // TLS writes one buffer at a time; gather many small frames into one, so that
          // coalesced frames still make few TLS records and few system calls.
          const auto data = tls_->gather(b);
          auto& stream = tls_->stream;
          stream.async_write_some(data, [keep = tls_, h = std::move(handler)](
                                            boost::system::error_code ec, std::size_t n) mutable {
            std::move(h)(ec, n);
          });
        },
        token, buffers);
  }

  /// Closes the connection at once (no TLS close_notify: fwd's goodbye frame says why).
  void close() noexcept {
    boost::system::error_code ignored;
    socket().shutdown(tcp::socket::shutdown_both, ignored);
    socket().close(ignored);
  }

 private:
  struct tls_session {
    tls_session(tcp::socket socket, boost::asio::ssl::context& context)
        : stream(std::move(socket), context) {}

    template <class ConstBuffers>
    boost::asio::const_buffer gather(const ConstBuffers& buffers) {
      auto it = boost::asio::buffer_sequence_begin(buffers);
      const auto end = boost::asio::buffer_sequence_end(buffers);
      if (it == end) return {};
      boost::asio::const_buffer first(*it);
      if (std::next(it) == end || first.size() >= gather_limit) return first;
      gathered.clear();
      for (; it != end && gathered.size() < gather_limit; ++it) {
        boost::asio::const_buffer b(*it);
        const std::size_t take = std::min(b.size(), gather_limit - gathered.size());
        gathered.append(static_cast<const char*>(b.data()), take);
      }
      return boost::asio::buffer(gathered);
    }

    static constexpr std::size_t gather_limit = 64 * 1024;
    tls_stream_type stream;
    std::string gathered;  // one write at a time, so one buffer serves them all
  };

  tcp::socket socket_;                // the connection, until start_tls()
  std::shared_ptr<tls_session> tls_;  // after start_tls(): owns the socket
};

}  // namespace fwd::rpc::detail

// ---- end fwd/rpc/detail/tls_stream.hpp ----
// ---- begin fwd/rpc/keepalive.hpp ----

// TCP keepalive and TCP_USER_TIMEOUT on a connected socket, so that the kernel gives up on
// a peer that vanished without a reset (a host powered off, a link dropped).

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/socket_base.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <chrono>
#include <string_view>

namespace fwd::rpc {

/**
 * The kernel's side of finding a dead peer, on every connection (client and server). With
 * the defaults, a silent peer is given up on within about 15 s: keepalive probes start
 * after 5 s without traffic and three unanswered ones, 3 s apart, end the connection
 * (5 + 3 * 3 = 14 s); data sent and not acknowledged for 15 s ends it too
 * (TCP_USER_TIMEOUT). Zero leaves the system's default for that setting. Where the
 * platform lacks a setting it is skipped. The kernel answers for a process that is alive
 * but stuck: fwd's own ping (client_options::ping_interval) covers that case.
 */
struct keepalive_options {
  std::chrono::seconds idle{5};      ///< TCP_KEEPIDLE: silence before the first probe
  std::chrono::seconds interval{3};  ///< TCP_KEEPINTVL: between probes
  int count = 3;                     ///< TCP_KEEPCNT: unanswered probes that end it
  std::chrono::milliseconds user_timeout{15000};  ///< TCP_USER_TIMEOUT: unacknowledged data
};

namespace detail {

/// The procedure a client calls to see that a server still answers. A server answers it at
/// once with an empty result; one that does not know it answers "no such procedure",
/// which proves as much.
inline constexpr std::string_view ping_procedure = "fwd.ping";

/// Sets keepalive on (always) and its timings where the platform has them. Errors are
/// ignored: a socket without them still works, only finds a dead peer later.
inline void apply_keepalive(boost::asio::ip::tcp::socket& socket, const keepalive_options& l) {
  boost::system::error_code ignored;
  socket.set_option(boost::asio::socket_base::keep_alive(true), ignored);
  [[maybe_unused]] const auto fd = socket.native_handle();
  [[maybe_unused]] auto set = [fd](int name, int value) {
    if (value > 0) ::setsockopt(fd, IPPROTO_TCP, name, &value, sizeof(value));
  };
#if defined(TCP_KEEPIDLE)
  set(TCP_KEEPIDLE, static_cast<int>(l.idle.count()));
#endif
#if defined(TCP_KEEPINTVL)
  set(TCP_KEEPINTVL, static_cast<int>(l.interval.count()));
#endif
#if defined(TCP_KEEPCNT)
  set(TCP_KEEPCNT, l.count);
#endif
#if defined(TCP_USER_TIMEOUT)
  set(TCP_USER_TIMEOUT, static_cast<int>(l.user_timeout.count()));
#endif
}

}  // namespace detail
}  // namespace fwd::rpc

// ---- end fwd/rpc/keepalive.hpp ----

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

// ---- end fwd/rpc/server_options.hpp ----
// ---- begin fwd/rpc/server.hpp ----

// The RPC server: accepts fwd connections, authenticates them, and runs each request
// through a registry on the user's executor.

// ---- begin fwd/rpc/detail/server_connection.hpp ----

// One connection of the RPC server: the handshake, reading requests, running them through
// the registry, and writing replies in batches.


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
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace fwd::rpc {
namespace detail {

class server_connection : public std::enable_shared_from_this<server_connection> {
 public:
  using tcp = boost::asio::ip::tcp;

  server_connection(std::shared_ptr<server_state> state, tcp::socket socket)
      : state_(std::move(state)),
        stream_(std::move(socket)),
        strand_(socket_strand(stream_.get_executor())),
        timer_(strand_),
        handshake_(std::in_place, state_->secrets, state_->versions) {
    boost::system::error_code ignored;
    const auto remote = stream_.socket().remote_endpoint(ignored);
    peer_ = endpoint_string(remote);
    share_ = state_->share_of(remote.address());
    stream_.socket().set_option(tcp::no_delay(true), ignored);
    apply_keepalive(stream_.socket(), state_->options.keepalive);
    // Lets write() write at once without ever blocking (Asio's own operations, TLS's
    // included, are unaffected).
    stream_.socket().non_blocking(true, ignored);
  }

  // The strand the server accepted the socket on (its executor), so that the socket's
  // handlers and the connection's own work share one strand; a new strand when the socket
  // came on another executor. (A strand made over the socket's strand would put every
  // handler through two strands.)
  static boost::asio::strand<boost::asio::any_io_executor> socket_strand(
      const boost::asio::any_io_executor& executor) {
    using strand_type = boost::asio::strand<boost::asio::any_io_executor>;
    if (const auto* own = executor.target<strand_type>()) return *own;
    return boost::asio::make_strand(executor);
  }

  void start() {
    state_->connections.fetch_add(1, std::memory_order_relaxed);
    state_->unauthenticated.fetch_add(1, std::memory_order_relaxed);
    counted_ = true;
    last_activity_ = std::chrono::steady_clock::now();
    arm_at(last_activity_ + state_->options.handshake_timeout);
    if (state_->tls_context) {
      await_first_byte();
    } else {
      read();
    }
  }

  /// Graceful stop: read nothing more; close once every running request has replied.
  void stop() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->draining_ = true;
      self->maybe_close_drained();
    });
  }

  ~server_connection() {
    state_->connections.fetch_sub(1, std::memory_order_relaxed);
    if (counted_ && !authenticated_) state_->unauthenticated.fetch_sub(1, std::memory_order_relaxed);
    release_partial();
  }

 private:
  struct running_call {
    std::uint64_t stream_id = 0;
    wire::request_id id{};
    bool replied = false;
  };

  // One timer serves the handshake deadline, the idle timeout and the deadline of a frame
  // being received. It is armed only for an earlier time than it already is (each change
  // is a system call); when it fires, on_timer() arms it for whatever is due next, or
  // leaves it unarmed when nothing is (calls running and no partial frame: on_reply()
  // arms it again once the last call is done).
  void arm_at(std::chrono::steady_clock::time_point at) {
    if (timer_armed_ && timer_at_ <= at) return;
    timer_armed_ = true;
    timer_at_ = at;
    timer_.expires_at(at);
    timer_.async_wait([self = shared_from_this(), generation = ++timer_generation_](boost::system::error_code ec) {
      if (ec || generation != self->timer_generation_ || self->closed_) return;
      self->timer_armed_ = false;
      self->on_timer();
    });
  }

  void schedule_timer() {
    if (partial_since_) arm_at(*partial_since_ + state_->options.frame_read_timeout);
    if (in_flight_ == 0) arm_at(last_activity_ + state_->options.idle_timeout);
  }

  void on_timer();

  // Counts the frame being received against the server's budget for partial frames;
  // closes the connection (and returns false) when it would go over.
  bool charge_partial();

  void release_partial() noexcept {
    if (charged_ == 0) return;
    state_->partial_frame_bytes.fetch_sub(charged_, std::memory_order_relaxed);
    charged_ = 0;
  }

  // --- TLS, before fwd's handshake -------------------------------------------------------

  // Looks at the first byte without consuming it: a TLS client opens with a handshake record
  // (0x16); a plain fwd client with fwd's magic, and is told that TLS is required.
  void await_first_byte();

  void refuse_plain_client();

  // --- frames ------------------------------------------------------------------------------

  void read() {
    if (closed_ || draining_ || reading_) return;
    if (pending_reply_bytes() > state_->options.max_pending_reply_bytes) return;  // resumed after a write
    reading_ = true;
    auto [data, size] = buffer_.prepare();
    stream_.async_read_some(boost::asio::buffer(data, size),
                            [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
                              self->reading_ = false;
                              self->on_read(ec, n);
                            });
  }

  void on_read(boost::system::error_code ec, std::size_t n);

  void on_frame(const wire::frame_view& frame);

  void on_request(const wire::frame_view& frame);

  void on_reply(running_call& call, boost::system::error_code ec, std::string result);

  // Takes a place for one more request under every in-flight bound; or says which bound
  // refused it (and takes nothing).
  std::optional<std::string> take_place();

  void release_place() noexcept {
    --in_flight_;
    share_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    state_->in_flight.fetch_sub(1, std::memory_order_relaxed);
  }

  // Reports a refusal of this connection, one of its frames or one of its calls.
  void report(std::string_view what, std::string_view reason, const boost::system::error_code& ec,
              std::string_view detail) const noexcept {
    report_refusal(state_->options, peer_, what, reason, ec, detail);
  }
  bool reporting() const noexcept { return reporting_refusals(state_->options); }

  // Refuses the connection before it is authenticated: reports it (connection_failed and
  // refused) and closes it.
  void refuse_connection(std::string_view reason, boost::system::error_code ec, std::string_view detail);

  // Records and reports (connection_failed and refused) the first refusal of this connection
  // before it is authenticated; the caller closes it, at once or once its goodbye is written.
  void note_refused(std::string_view reason, boost::system::error_code ec, std::string_view detail);

  // Refuses the frame being received or just received: reports it and closes the connection.
  void refuse_frame(std::string_view reason, boost::system::error_code ec, std::string_view detail);

  void reply(std::uint64_t stream_id, const wire::request_id& id, boost::system::error_code ec, std::string_view why) {
    wire::frame_header h;
    h.type = wire::frame_type::reply;
    h.stream_id = stream_id;
    h.id = id;
    h.aux = encode_status(ec);
    append_sealed(h, why.substr(0, 64 * 1024), {});
    write();
  }

  // Queues a frame after the handshake, with its session MAC: frames are sealed in the
  // order they are queued, which is the order they are written.
  void append_sealed(const wire::frame_header& h, std::string_view meta, std::string_view body) {
    const std::size_t at = queued_.size();
    wire::append_frame(queued_, h, meta, body);
    session_.seal_tail(queued_, at);
  }

  void queue(std::string_view bytes) {
    queued_.append(bytes);
    write();
  }

  std::size_t pending_reply_bytes() const noexcept { return queued_.size() + writing_.size(); }

  // Replies are coalesced: while one write runs, later replies gather in `queued_` and go
  // out together in the next write.
  void write();

  void maybe_close_drained() {
    if (closed_) return;
    if (in_flight_ == 0 && !writing_in_progress_ && queued_.empty()) close(failed_);
  }

  void close(boost::system::error_code why);

  std::shared_ptr<server_state> state_;
  transport_stream stream_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  std::optional<wire::server_handshake> handshake_;
  wire::session session_;  // after the handshake: checks requests, seals replies
  std::string peer_;
  std::shared_ptr<address_share> share_;  // requests running from the peer's address
  frame_buffer buffer_;
  std::string queued_;
  std::string writing_;
  std::size_t in_flight_ = 0;
  std::size_t received_ = 0;  // bytes read so far (for what the telemetry says)
  std::uint64_t timer_generation_ = 0;
  std::chrono::steady_clock::time_point last_activity_;
  std::chrono::steady_clock::time_point timer_at_;
  std::optional<std::chrono::steady_clock::time_point> partial_since_;  // a frame's first byte
  std::size_t charged_ = 0;  // bytes of state_->partial_frame_bytes this connection holds
  bool timer_armed_ = false;
  boost::system::error_code failed_;
  bool authenticated_ = false;
  bool counted_ = false;  // in state_->unauthenticated until authenticated_
  bool reading_ = false;
  bool writing_in_progress_ = false;
  bool draining_ = false;
  bool closed_ = false;
};

}  // namespace detail

}  // namespace fwd::rpc

// ---- begin fwd/rpc/detail/impl/server_connection.hpp ----

// The bodies of the RPC server's connection: the first byte (TLS or not), reading frames,
// running requests and writing their replies, closing. Included at the end of
// fwd/rpc/detail/server_connection.hpp.


namespace fwd::rpc::detail {

inline void server_connection::on_timer() {
  const auto now = std::chrono::steady_clock::now();
  if (!authenticated_) {
    // A slow (or silent) handshake.
    refuse_connection("handshake_timeout", boost::asio::error::timed_out,
                      reporting() ? fmt::format("the handshake was not finished within handshake_timeout ({} ms)",
                                                state_->options.handshake_timeout.count())
                                  : std::string());
    return;
  }
  if (partial_since_ && now - *partial_since_ >= state_->options.frame_read_timeout) {
    // A frame that arrives too slowly.
    refuse_frame("frame_read_timeout", boost::asio::error::timed_out,
                 reporting() ? fmt::format("a frame was not whole within frame_read_timeout ({} ms) of its first "
                                           "byte; {} bytes had arrived",
                                           state_->options.frame_read_timeout.count(), buffer_.buffered())
                             : std::string());
    return;
  }
  if (in_flight_ == 0 && now - last_activity_ >= state_->options.idle_timeout) {
    close({});
    return;
  }
  schedule_timer();
}

inline bool server_connection::charge_partial() {
  // A frame that fits the buffer every connection keeps anyway costs nothing extra.
  constexpr std::size_t free_size = 16 * 1024;
  std::size_t want = buffer_.partial_frame_size();
  if (want <= free_size) want = 0;
  if (want > charged_) {
    const std::size_t extra = want - charged_;
    const std::size_t before = state_->partial_frame_bytes.fetch_add(extra, std::memory_order_relaxed);
    if (before + extra > state_->options.max_partial_frame_bytes) {
      state_->partial_frame_bytes.fetch_sub(extra, std::memory_order_relaxed);
      refuse_frame("partial_frame_budget", make_error_code(errc::overloaded),
                   reporting() ? fmt::format("a frame of {} bytes would take frames being received over "
                                             "max_partial_frame_bytes ({} bytes; {} taken)",
                                             want, state_->options.max_partial_frame_bytes, before)
                               : std::string());
      return false;
    }
  } else if (want < charged_) {
    state_->partial_frame_bytes.fetch_sub(charged_ - want, std::memory_order_relaxed);
  }
  charged_ = want;
  return true;
}

inline void server_connection::await_first_byte() {
  stream_.socket().async_wait(
      tcp::socket::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
        if (self->closed_) return;
        if (ec) {
          self->close(ec);
          return;
        }
        char first = 0;
        const std::size_t n = self->stream_.socket().receive(boost::asio::buffer(&first, 1),
                                                             tcp::socket::message_peek, ec);
        if (ec || n == 0) {
          self->refuse_connection("closed_before_handshake", ec ? ec : boost::asio::error::eof,
                                  "the peer closed the connection before the handshake");
          return;
        }
        if (first == static_cast<char>(wire::magic & 0xff)) {
          self->refuse_plain_client();
          return;
        }
        self->stream_.start_tls(*self->state_->tls_context);
        self->stream_.async_tls_handshake(
            boost::asio::ssl::stream_base::server, [self](boost::system::error_code handshake_ec) {
              if (self->closed_) return;
              if (handshake_ec) {
                // The peer's certificate is missing or untrusted, or it
                // does not speak TLS: OpenSSL's reason says which.
                self->refuse_connection("tls_failed", handshake_ec,
                                        self->reporting() ? fmt::format("TLS handshake failed: {}",
                                                                        handshake_ec.message())
                                                          : std::string());
                return;
              }
              self->read();
            });
      });
}

inline void server_connection::refuse_plain_client() {
  note_refused("tls_required", make_error_code(errc::unauthenticated),
               "a plain client came to a server that requires TLS");
  // Take in what the client sent (its hello), so that closing does not reset the
  // connection before the client reads why.
  boost::system::error_code ignored;
  const std::size_t available = std::min<std::size_t>(stream_.socket().available(ignored), 4096);
  if (!ignored && available > 0) {
    std::string sink(available, '\0');
    stream_.socket().receive(boost::asio::buffer(sink), 0, ignored);
  }
  queue(wire::encode_goodbye(
      errc::unauthenticated,
      "this server requires TLS: set client_options::tls (the node's certificate, its "
      "key and the cluster's CA)"));
  draining_ = true;
  maybe_close_drained();
}

inline void server_connection::on_read(boost::system::error_code ec, std::size_t n) {
  if (closed_) return;
  if (ec) {
    // A TLS peer that just closes its socket truncates the TLS stream: an ordinary close too.
    const bool closed_by_peer =
        ec == boost::asio::error::eof || ec == boost::asio::ssl::error::stream_truncated;
    if (!authenticated_) {
      // A bare connect-and-close lands here, as does a peer that gave up mid-handshake
      // (a client closes after the server's proof when it holds another secret).
      const auto why = closed_by_peer ? boost::system::error_code(boost::asio::error::eof) : ec;
      if (received_ == 0) {
        refuse_connection("closed_before_handshake", why, "the peer closed the connection before the handshake");
      } else {
        refuse_connection("closed_during_handshake", why,
                          reporting() ? fmt::format("the peer closed the connection during the handshake, after "
                                                    "{} bytes (a client that refuses the server's versions or "
                                                    "proof of the secret closes here)",
                                                    received_)
                                      : std::string());
      }
      return;
    }
    close(closed_by_peer ? boost::system::error_code{} : ec);
    return;
  }
  buffer_.commit(n);
  received_ += n;
  last_activity_ = std::chrono::steady_clock::now();
  wire::frame_view frame;
  bool took_frame = false;
  while (!closed_ && !draining_) {
    const std::size_t limit =
        authenticated_ ? state_->options.max_frame_size : wire::max_handshake_frame_size;
    if (!buffer_.next(limit, frame, ec, authenticated_ ? wire::tag_size : 0)) break;
    took_frame = true;
    on_frame(frame);
  }
  if (ec) {
    // Malformed or oversized: this connection only.
    if (!authenticated_) {
      refuse_connection("handshake_failed", ec,
                        reporting() ? fmt::format("the handshake frame was refused: {}", ec.message())
                                    : std::string());
    } else if (ec == errc::frame_too_large) {
      refuse_frame("frame_too_large", ec,
                   reporting() ? fmt::format("a frame announced over max_frame_size ({} bytes)",
                                             state_->options.max_frame_size)
                               : std::string());
    } else {
      refuse_frame("malformed_frame", ec,
                   reporting() ? fmt::format("a frame header is malformed: {}", ec.message()) : std::string());
    }
    return;
  }
  if (closed_) return;
  if (authenticated_) {
    // The deadline of the frame being received runs from its first byte.
    if (buffer_.buffered() == 0) {
      partial_since_.reset();
    } else if (took_frame || !partial_since_) {
      partial_since_ = last_activity_;
      schedule_timer();
    }
    if (!charge_partial()) return;
  }
  if (in_flight_ == 0) buffer_.shrink();
  read();
}

inline void server_connection::on_frame(const wire::frame_view& frame) {
  if (!authenticated_) {
    auto step = handshake_->on_frame(frame);
    if (!step.send.empty()) queue(step.send);
    if (step.ec) {
      note_refused("handshake_failed", step.ec,
                   reporting() ? fmt::format("the handshake failed: {}", step.ec.message()) : std::string());
      draining_ = true;  // write the goodbye, then close
      maybe_close_drained();
      return;
    }
    if (step.done) {
      authenticated_ = true;
      state_->unauthenticated.fetch_sub(1, std::memory_order_relaxed);
      session_ = handshake_->take_session();
      handshake_.reset();
      fwd::detail::emit(state_->options.telemetry, &telemetry::connection_opened,
                        connection_event{peer_, {}, true, session_.protocol()});
      timer_armed_ = false;  // armed for the handshake's deadline: re-armed for what is next
      schedule_timer();
    }
    return;
  }
  if (!session_.open(frame.bytes, frame.tag)) {
    // Injected (a relay of the handshake has no key), replayed, reordered or altered:
    // nothing of it is looked at, and the connection goes.
    refuse_frame("tampered_frame", make_error_code(errc::tampered_frame),
                 "a frame failed its session MAC (injected, replayed, reordered or altered on the way)");
    return;
  }
  if (frame.header.type == wire::frame_type::goodbye) {
    draining_ = true;
    maybe_close_drained();
    return;
  }
  if (frame.header.type != wire::frame_type::request) {
    refuse_frame("unexpected_frame", make_error_code(errc::protocol_error),
                 reporting() ? fmt::format("a frame of type {} where a request was expected",
                                           static_cast<unsigned>(frame.header.type))
                             : std::string());
    return;
  }
  on_request(frame);
}

inline void server_connection::on_request(const wire::frame_view& frame) {
  const auto& h = frame.header;
  if (frame.meta == ping_procedure) {
    // A client checking that this server still answers: at once, outside every limit.
    wire::frame_header answer;
    answer.type = wire::frame_type::reply;
    answer.stream_id = h.stream_id;
    answer.id = h.id;
    append_sealed(answer, {}, {});
    write();
    return;
  }
  const auto refuse_call = [&](std::string_view reason, errc code, std::string_view why) {
    const auto ec = make_error_code(code);
    report("call", reason, ec, why);
    reply(h.stream_id, h.id, ec, why);
  };
  if (state_->stopping.load(std::memory_order_relaxed)) {
    refuse_call("shutting_down", errc::overloaded, "the server is shutting down");
    return;
  }
  if ((h.flags & wire::frame_flags::has_deadline) != 0 && h.deadline_ms == 0) {
    // The caller's deadline passed before the request got here: do not run it.
    refuse_call("deadline_passed", errc::timeout, "the deadline had passed when the request arrived");
    return;
  }
  if (auto bound = take_place()) {
    refuse_call("overloaded", errc::overloaded, *bound);
    return;
  }
  auto call = std::make_shared<running_call>();
  call->stream_id = h.stream_id;
  call->id = h.id;

  // The views are valid during dispatch() only; the registry copies what it keeps.
  incoming_call incoming;
  incoming.procedure = frame.meta;
  incoming.signature = h.aux;
  incoming.arguments = frame.body;
  incoming.request_id = h.id;
  if ((h.flags & wire::frame_flags::has_durability) != 0) incoming.durability = h.durability;
  if ((h.flags & wire::frame_flags::has_deadline) != 0) {
    incoming.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(h.deadline_ms);
  }

  // Bound to the strand: the registry completes every reply through the reply handler's
  // associated executor (reply_once), so this runs on the strand already.
  auto on_done = [self = shared_from_this(), call](boost::system::error_code ec, std::string result) {
    self->on_reply(*call, ec, std::move(result));
  };
  const registry& target =
      incoming.procedure.starts_with("fwd.") ? state_->builtins : *state_->user_registry;
  try {
    target.dispatch(incoming, state_->executor,
                    boost::asio::bind_executor(strand_, std::move(on_done)));
  } catch (const std::exception& e) {
    on_reply(*call, make_error_code(errc::remote_failure),
             fmt::format("dispatch failed: {}", e.what()));
  }
}

inline void server_connection::on_reply(running_call& call, boost::system::error_code ec,
                                        std::string result) {
  if (call.replied) return;
  call.replied = true;
  release_place();
  if (ec && reporting()) {
    // The registry's own refusals: the procedure did not run.
    if (ec == errc::unknown_procedure) report("call", "unknown_procedure", ec, result);
    if (ec == errc::signature_mismatch) report("call", "signature_mismatch", ec, result);
    if (ec == errc::protocol_error) report("call", "decode_failure", ec, result);
  }
  if (closed_) return;
  if (in_flight_ == 0) {
    // The idle timeout counts again from now (the timer was left unarmed while calls ran).
    last_activity_ = std::chrono::steady_clock::now();
    schedule_timer();
  }
  const std::size_t max_result = state_->options.max_frame_size - wire::header_size;
  if (!ec && result.size() > max_result) {
    // The client would refuse the frame: say why instead of sending it.
    const std::string why =
        fmt::format("the result is {} bytes, over the limit of {} bytes a reply may carry "
                    "(max_frame_size {} less the {}-byte header)",
                    result.size(), max_result, state_->options.max_frame_size, wire::header_size);
    report("call", "reply_too_large", make_error_code(errc::frame_too_large), why);
    reply(call.stream_id, call.id, make_error_code(errc::frame_too_large), why);
    if (draining_) maybe_close_drained();
    return;
  }
  if (ec) {
    reply(call.stream_id, call.id, ec, result);
  } else {
    wire::frame_header h;
    h.type = wire::frame_type::reply;
    h.stream_id = call.stream_id;
    h.id = call.id;
    append_sealed(h, {}, result);
    write();
  }
  if (draining_) maybe_close_drained();
}

inline void server_connection::write() {
  if (writing_in_progress_ || queued_.empty() || closed_) return;
  writing_in_progress_ = true;
  std::swap(queued_, writing_);
  if (!stream_.is_tls() && stream_.socket().non_blocking() && in_flight_ == 0) {
    // Plain TCP, and no other call of this connection running: what the socket takes now
    // is written now, which spares the trip through the scheduler that an asynchronous
    // write's completion costs. The rest, and any error, go through async_write below.
    // With calls running, the asynchronous write is kept: replies that come while it
    // completes go out together in the next write.
    boost::system::error_code ec;
    std::size_t written = stream_.socket().write_some(boost::asio::buffer(writing_), ec);
    if (ec) written = 0;
    if (written == writing_.size()) {
      writing_in_progress_ = false;
      writing_.clear();
      if (writing_.capacity() > (std::size_t{1} << 20)) writing_.shrink_to_fit();
      if (draining_ || !reading_) {
        // What a write's completion does next, outside this call (on_read calls it).
        boost::asio::post(strand_, [self = shared_from_this()] {
          if (self->draining_) self->maybe_close_drained();
          self->read();
        });
      }
      return;
    }
    writing_.erase(0, written);
  }
  boost::asio::async_write(stream_, boost::asio::buffer(writing_),
                           [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                             self->writing_in_progress_ = false;
                             self->writing_.clear();
                             if (self->writing_.capacity() > (std::size_t{1} << 20))
                               self->writing_.shrink_to_fit();
                             if (ec) {
                               self->close(ec);
                               return;
                             }
                             self->write();
                             if (self->draining_) self->maybe_close_drained();
                             self->read();  // reading pauses while too many replies wait
                           });
}

inline void server_connection::close(boost::system::error_code why) {
  if (closed_) return;
  closed_ = true;
  release_partial();
  timer_.cancel();
  stream_.close();
  if (authenticated_) {
    fwd::detail::emit(state_->options.telemetry, &telemetry::connection_closed,
                      connection_event{peer_, why, true});
  } else if (!failed_) {
    // Not refused by refuse_connection: the server stopped, or the socket failed.
    fwd::detail::emit(state_->options.telemetry, &telemetry::connection_failed,
                      connection_event{peer_, why ? why : make_error_code(errc::cancelled), true});
  }
}

inline std::optional<std::string> server_connection::take_place() {
  const auto& limits = state_->limits;
  if (in_flight_ >= limits.per_connection) {
    return fmt::format("too many requests in flight on this connection ({}, max_in_flight_per_connection)",
                       limits.per_connection);
  }
  const std::size_t mine = share_->in_flight.fetch_add(1, std::memory_order_relaxed);
  if (mine >= limits.per_address) {
    share_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    return fmt::format("too many requests in flight from this address ({}, max_in_flight_per_address)",
                       limits.per_address);
  }
  // An address past its reserved share may use only the shared part of the server.
  const bool reserved = mine < limits.reserved_per_address;
  const std::size_t limit = reserved ? limits.total : limits.shared;
  const std::size_t total = state_->in_flight.fetch_add(1, std::memory_order_relaxed);
  if (total >= limit) {
    state_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    share_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    return reserved ? fmt::format("too many requests in flight on the server ({}, max_in_flight)", limits.total)
                    : fmt::format("too many requests in flight on the server: this address runs {}, and the "
                                  "server keeps its last {} places for addresses running fewer than {}",
                                  mine, limits.total - limits.shared, limits.reserved_per_address);
  }
  ++in_flight_;
  return std::nullopt;
}

inline void server_connection::refuse_connection(std::string_view reason, boost::system::error_code ec,
                                                 std::string_view detail) {
  if (closed_) return;
  note_refused(reason, ec, detail);
  close(ec);
}

inline void server_connection::note_refused(std::string_view reason, boost::system::error_code ec,
                                            std::string_view detail) {
  if (failed_) return;
  failed_ = ec;
  report_refused_connection(state_->options, peer_, reason, ec, detail);
}

inline void server_connection::refuse_frame(std::string_view reason, boost::system::error_code ec,
                                            std::string_view detail) {
  if (closed_) return;
  report("frame", reason, ec, detail);
  close(ec);
}

}  // namespace fwd::rpc::detail

// ---- end fwd/rpc/detail/impl/server_connection.hpp ----

// ---- end fwd/rpc/detail/server_connection.hpp ----

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
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace fwd::rpc {

/**
 * A fwd RPC server. It listens on `options.listen`, authenticates each connection with
 * the cluster secret, and runs each request through `procedures` on `executor` (the
 * user's), with the caller's remaining deadline. It answers `fwd.hello` itself.
 *
 * Every request gets exactly one reply: the result; `unknown_procedure`,
 * `signature_mismatch` or `remote_failure` from the registry; `timeout` when the
 * caller's deadline had passed on arrival (the procedure does not run); `overloaded` when
 * more than `max_in_flight_per_connection` / `max_in_flight` requests are running (it does
 * not run); `max_in_flight_per_address` bounds one peer address's requests over all its
 * connections, and `reserved_in_flight_per_address` keeps a share for every peer (see
 * server_options). Every refusal (of a connection, a frame or a call) is reported through
 * `telemetry.refused`, with its reason. A connection that sends a malformed or oversized frame, fails the handshake,
 * or does not finish it within `handshake_timeout` is closed; nothing else is affected.
 * A connection beyond `max_connections`, or beyond `max_unauthenticated_connections`
 * still in the handshake, is closed as soon as it is accepted. When accepting fails for
 * lack of file descriptors or memory, the server accepts again after a growing delay
 * (`min_accept_backoff` to `max_accept_backoff`) instead of at once.
 *
 * With `options.tls`, connections run mutual TLS under fwd's handshake (see tls_options);
 * a connection that fails TLS is closed the same way, and the others keep being served.
 *
 * `procedures` must outlive the server's connections. Thread-safe: start(), stop() and
 * local_endpoint() may be called from any thread.
 */
class server {
 public:
  using executor_type = boost::asio::any_io_executor;

  server(executor_type executor, const registry& procedures, server_options options)
      : state_(std::make_shared<detail::server_state>()) {
    state_->secrets = detail::checked_secrets("server_options", options.secret, options.accepted_secrets);
    if (options.tls) state_->tls_context = detail::make_tls_context(*options.tls, true, "server_options::tls");
    state_->acceptor.emplace(boost::asio::make_strand(executor));
    state_->executor = std::move(executor);
    state_->user_registry = &procedures;
    state_->versions.archive = options.archive_version != 0 ? options.archive_version : fwd::detail::archive_version();
    state_->limits = detail::in_flight_limits::from(options);
    if (options.min_protocol_version != 0) state_->versions.protocol_min = options.min_protocol_version;
    if (options.max_protocol_version != 0) state_->versions.protocol_max = options.max_protocol_version;
    state_->options = std::move(options);
    std::weak_ptr<detail::server_state> weak = state_;
    state_->builtins.define(hello, [weak]() {
      hello_info info;
      if (auto state = weak.lock()) {
        info.node_name = state->options.node_name;
        info.litefs_hostname = state->options.litefs_hostname;
        if (state->options.status) {
          local_status status = state->options.status();
          info.role = std::move(status.role);
          info.txid = status.txid;
        } else {
          info.role = "unknown";
        }
      }
      return info;
    });
  }

  server(const server&) = delete;
  server& operator=(const server&) = delete;
  ~server() { stop(); }

  /**
   * Serves `proc` beside `fwd.hello`, to authenticated peers only, like every request.
   * Its name must start with "fwd." (the names fwd keeps for itself). Call before start().
   * `fn` is kept with the server's connections, which may outlive the server: it must not
   * borrow what may be gone by then. Throws fwd::error(bad_argument) for another name or
   * a name already taken.
   */
  template <class R, class... A, class F>
  void define_builtin(const procedure<R(A...)>& proc, F&& fn) {
    if (!proc.name().starts_with("fwd.")) {
      throw fwd::error(make_error_code(errc::bad_argument),
                       fmt::format("built-in procedure {} must have a name starting with \"fwd.\"",
                                   proc.name()));
    }
    state_->builtins.define(proc, std::forward<F>(fn));
  }

  /// Binds and starts accepting. Throws fwd::error (bad_argument) when it cannot listen.
  void start() {
    boost::system::error_code ec;
    const auto& endpoint = state_->options.listen;
    auto& acceptor = *state_->acceptor;
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(boost::asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(boost::asio::socket_base::max_listen_connections, ec);
    if (ec) {
      throw fwd::error(make_error_code(errc::bad_argument),
                       fmt::format("cannot listen on {}: {}: choose a free address and port",
                                   detail::endpoint_string(endpoint), ec.message()));
    }
    local_ = acceptor.local_endpoint(ec);
    accept(state_);
  }

  /// The address the server listens on (with the port picked when options.listen had 0).
  boost::asio::ip::tcp::endpoint local_endpoint() const { return local_; }

  /// Requests running now, across all connections.
  std::size_t in_flight() const noexcept { return state_->in_flight.load(std::memory_order_relaxed); }
  /// Connections open now (authenticated or not).
  std::size_t connection_count() const noexcept { return state_->connections.load(std::memory_order_relaxed); }

  /**
   * Graceful stop: accepts no more connections; every connection reads no more requests,
   * finishes those running, writes their replies and closes. Returns at once.
   */
  void stop() {
    if (state_->stopping.exchange(true)) return;
    boost::asio::dispatch(state_->acceptor->get_executor(), [state = state_] {
      boost::system::error_code ignored;
      state->acceptor->close(ignored);
      if (state->accept_timer) state->accept_timer->cancel();
    });
    std::lock_guard lock(state_->mutex);
    for (auto& weak : state_->live) {
      if (auto connection = weak.lock()) connection->stop();
    }
  }

 private:
  static void accept(std::shared_ptr<detail::server_state> state) {
    auto& acceptor = *state->acceptor;
    acceptor.async_accept(
        boost::asio::make_strand(state->executor),
        boost::asio::bind_executor(acceptor.get_executor(), [state](boost::system::error_code ec,
                                                                      boost::asio::ip::tcp::socket socket) mutable {
          if (state->stopping.load()) return;
          if (ec == boost::asio::error::operation_aborted) return;
          if (ec) {
            if (out_of_resources(ec)) {
              back_off(std::move(state), ec);
              return;
            }
            accept(std::move(state));  // any other accept error affects one connection only
            return;
          }
          state->accept_backoff = std::chrono::milliseconds(0);
          if (!admit(*state, socket)) {
            accept(std::move(state));
            return;
          }
          auto connection = std::make_shared<detail::server_connection>(state, std::move(socket));
          {
            std::lock_guard lock(state->mutex);
            // Forget connections that are gone, so the list stays small.
            state->live.remove_if([](const auto& w) { return w.expired(); });
            state->live.push_back(connection);
          }
          connection->start();
          accept(std::move(state));
        }));
  }

  // Accept failures that the next accept would repeat at once: the process or the system
  // is out of file descriptors or memory.
  static bool out_of_resources(const boost::system::error_code& ec) noexcept {
    if (ec.category() != boost::system::system_category()) return false;
    switch (ec.value()) {
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM: return true;
      default: return false;
    }
  }

  // Retrying at once would spin (the pending connection stays in the backlog): wait,
  // longer after each failure in a row, then accept again. Connections already open keep
  // being served meanwhile.
  static void back_off(std::shared_ptr<detail::server_state> state, const boost::system::error_code& ec) {
    const auto& options = state->options;
    auto& delay = state->accept_backoff;
    delay = delay.count() == 0 ? options.min_accept_backoff : std::min(delay * 2, options.max_accept_backoff);
    delay = std::max(delay, std::chrono::milliseconds(1));
    detail::report_refused_connection(
        options, {}, "out_of_descriptors", ec,
        detail::reporting_refusals(options)
            ? fmt::format("accepting failed ({}): accepting again in {} ms", ec.message(), delay.count())
            : std::string());
    if (!state->accept_timer) state->accept_timer.emplace(state->acceptor->get_executor());
    state->accept_timer->expires_after(delay);
    state->accept_timer->async_wait([state](boost::system::error_code wait_ec) mutable {
      if (wait_ec || state->stopping.load()) return;
      accept(std::move(state));
    });
  }

  // Whether the caps on connections leave room for this one; if not, closes it at once
  // (the peer sees the connection closed) and reports it.
  static bool admit(detail::server_state& state, boost::asio::ip::tcp::socket& socket) {
    const auto& options = state.options;
    const bool total_room = state.connections.load(std::memory_order_relaxed) < options.max_connections;
    const bool handshake_room =
        state.unauthenticated.load(std::memory_order_relaxed) < options.max_unauthenticated_connections;
    if (total_room && handshake_room) return true;
    boost::system::error_code ignored;
    const auto peer = detail::endpoint_string(socket.remote_endpoint(ignored));
    socket.close(ignored);
    std::string why;
    if (detail::reporting_refusals(options)) {
      why = !total_room ? fmt::format("{} connections are open (max_connections)", options.max_connections)
                        : fmt::format("{} connections are in the handshake (max_unauthenticated_connections)",
                                      options.max_unauthenticated_connections);
    }
    detail::report_refused_connection(options, peer, !total_room ? "connection_cap" : "unauthenticated_cap",
                                      make_error_code(errc::overloaded), why);
    return false;
  }

  std::shared_ptr<detail::server_state> state_;
  boost::asio::ip::tcp::endpoint local_;
};

}  // namespace fwd::rpc

// ---- end fwd/rpc/server.hpp ----
// ---- begin fwd/rpc/client_options.hpp ----

// How an RPC client connects, authenticates and times out, and the settings of one call.


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

// ---- end fwd/rpc/client_options.hpp ----
// ---- begin fwd/rpc/client.hpp ----

// The RPC client: typed calls to fwd servers, many in flight on one connection per peer.

// ---- begin fwd/detail/blocking_wait.hpp ----

// The result of an asynchronous operation that a thread blocks for (rpc::client::call): the
// operation's completion sets it once, on another thread; the blocked thread takes it.
//
// The waiting thread first polls for a short while (yielding its core between polls), and
// only then sleeps on a condition variable: most calls complete within that while, and
// are then taken without the wake-up of a sleeping thread, which costs several
// microseconds (a futex wake, then the scheduler running the thread). A completion that
// finds nobody asleep sets a flag and takes an uncontended lock; it never makes a system
// call.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

namespace fwd::detail {

/// How long a thread blocked for a result polls before it sleeps.
inline constexpr std::chrono::microseconds blocking_poll_time{50};

template <class T>
class blocking_result {
 public:
  /// Sets the value (once; the completion's thread).
  template <class... V>
  void set_value(V&&... value) {
    if constexpr (!std::is_void_v<T>) value_.emplace(std::forward<V>(value)...);
    publish();
  }

  /// Sets the failure (once; the completion's thread).
  void set_exception(std::exception_ptr exception) {
    exception_ = std::move(exception);
    publish();
  }

  /// Waits for the value or failure (the blocked thread), then returns or rethrows it.
  T get() {
    wait();
    if (exception_) std::rethrow_exception(exception_);
    if constexpr (!std::is_void_v<T>) return std::move(*value_);
  }

 private:
  void publish() {
    std::lock_guard lock(mutex_);
    ready_.store(true, std::memory_order_release);
    if (sleeping_) woken_.notify_one();
  }

  void wait() {
    const auto until = std::chrono::steady_clock::now() + blocking_poll_time;
    while (!ready_.load(std::memory_order_acquire)) {
      if (std::chrono::steady_clock::now() >= until) {
        std::unique_lock lock(mutex_);
        sleeping_ = true;
        woken_.wait(lock, [this] { return ready_.load(std::memory_order_acquire); });
        return;
      }
      std::this_thread::yield();
    }
  }

  std::atomic<bool> ready_{false};
  std::mutex mutex_;
  std::condition_variable woken_;
  bool sleeping_ = false;  // under mutex_
  std::optional<std::conditional_t<std::is_void_v<T>, char, T>> value_;
  std::exception_ptr exception_;
};

}  // namespace fwd::detail

// ---- end fwd/detail/blocking_wait.hpp ----
// ---- begin fwd/rpc/detail/client_connection.hpp ----

// One connection of the RPC client to one peer: connecting (with backoff), the handshake,
// many calls in flight matched by stream id, deadlines, and the calls' completions.

// ---- begin fwd/rpc/detail/pending_call.hpp ----

// A call of the RPC client waiting for its reply, and how its reply completes the caller's
// operation (decoded, through a pending_completion); the state a client's connections share.


#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include <type_traits>
#include <utility>

namespace fwd::rpc::detail {


// A call waiting for its reply. Lives on its connection's strand once submitted.
struct pending_call {
  virtual ~pending_call() = default;
  // Completes the caller's operation exactly once; `payload` is the result or, on error,
  // the failure's detail.
  virtual void complete(boost::system::error_code ec, std::string payload) = 0;

  std::uint64_t stream_id = 0;
  std::string frame;  // the encoded request
  std::array<char, wire::tag_size> tag{};  // its session MAC, sealed as it is written
  std::chrono::steady_clock::time_point deadline;
  std::multimap<std::chrono::steady_clock::time_point, std::uint64_t>::iterator deadline_entry;
  std::string procedure;  // for telemetry
  std::uint32_t attempt = 1;
  std::chrono::steady_clock::time_point started;
  bool sent = false;
  bool done = false;
  bool in_initiation = false;  // submitted inline: its initiating call has not returned yet
};

template <class R>
struct call_signature_of {
  using type = void(boost::system::error_code, R);
};
template <>
struct call_signature_of<void> {
  using type = void(boost::system::error_code);
};
template <class R>
using call_signature = typename call_signature_of<R>::type;

// The result type of async_call_raw's operation: the reply's bytes, not decoded.
struct raw_reply {};

// Decodes the reply (on the connection's strand) and completes the caller's handler
// through its associated executor: dispatched, or posted while the initiating call is
// still running (nothing may complete inside it).
template <class R>
class call_op final : public pending_call {
 public:
  using signature =
      std::conditional_t<std::is_same_v<R, raw_reply>, void(boost::system::error_code, std::string),
                         call_signature<R>>;

  // `diagnostics` (the caller's, may be null) receives the failure's detail before the
  // handler is invoked.
  template <class Handler>
  call_op(Handler&& handler, const boost::asio::any_io_executor& fallback,
          fwd::diagnostics* diagnostics)
      : completion_(std::forward<Handler>(handler), fallback), diagnostics_(diagnostics) {}

  boost::asio::cancellation_slot slot() const noexcept { return completion_.slot(); }

  void complete(boost::system::error_code ec, std::string payload) override {
    if (ec) report(std::move(payload));
    if constexpr (std::is_same_v<R, raw_reply>) {
      deliver(ec, ec ? std::string() : std::move(payload));
    } else if constexpr (std::is_void_v<R>) {
      if (!ec) fwd::detail::decode_result<void>(payload, ec);
      deliver(ec);
    } else {
      if (ec) {
        deliver(ec, R{});
        return;
      }
      std::string why;
      R result = fwd::detail::decode_result<R>(payload, ec, &why);
      if (ec) report(fmt::format("the reply could not be decoded: {}", why));
      deliver(ec, std::move(result));
    }
  }

 private:
  // Runs once, before deliver(): the handler reads the caller's diagnostics after this.
  void report(std::string detail) {
    if (diagnostics_ != nullptr) diagnostics_->assign(std::move(detail));
  }

  template <class... Args>
  void deliver(Args&&... args) {
    if (in_initiation) {
      completion_.post(std::forward<Args>(args)...);
    } else {
      completion_.dispatch(std::forward<Args>(args)...);
    }
  }

  fwd::detail::pending_completion<signature> completion_;
  fwd::diagnostics* diagnostics_;
};

struct client_state {
  client_options options;
  wire::versions versions;
  std::vector<std::string> secrets;  // options.secret first, then options.accepted_secrets
  std::array<std::uint8_t, 8> id_prefix{};  // random per client; request ids add a counter
  std::atomic<std::uint64_t> next_id{1};
  std::shared_ptr<boost::asio::ssl::context> tls_context;  // set: connections use TLS
};

}  // namespace fwd::rpc::detail

// ---- end fwd/rpc/detail/pending_call.hpp ----

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fwd::rpc {

namespace detail {

class client_connection : public std::enable_shared_from_this<client_connection> {
 public:
  using tcp = boost::asio::ip::tcp;
  using clock = std::chrono::steady_clock;

  client_connection(boost::asio::any_io_executor executor, tcp::endpoint peer, std::shared_ptr<client_state> state)
      : strand_(boost::asio::make_strand(executor)),
        peer_(peer),
        peer_name_(endpoint_string(peer)),
        state_(std::move(state)),
        stream_(tcp::socket(strand_)),
        connect_timer_(strand_),
        deadline_timer_(strand_),
        ping_timer_(strand_),
        backoff_(state_->options.reconnect_backoff) {}

  const boost::asio::strand<boost::asio::any_io_executor>& strand() const noexcept { return strand_; }
  std::uint64_t next_stream_id() noexcept { return next_stream_.fetch_add(1, std::memory_order_relaxed); }

  /// Takes ownership of a call; runs on the strand.
  void submit(std::shared_ptr<pending_call> call) {
    if (strand_.running_in_this_thread()) {
      // A call started from a completion on this connection (callers chain calls so): taken
      // at once, without a hop through the scheduler. Whatever completes it before the
      // initiating call returns (a closed client, a frame too large) posts the completion.
      auto taken = call;
      taken->in_initiation = true;
      on_submit(std::move(call));
      taken->in_initiation = false;
      return;
    }
    // post, not dispatch: nothing may complete inside the initiating call.
    boost::asio::post(strand_, [self = shared_from_this(), call = std::move(call)]() mutable {
      self->on_submit(std::move(call));
    });
  }

  /// Cancels a call (terminal): it completes with `cancelled`; a reply is ignored.
  void cancel(std::uint64_t stream_id) {
    boost::asio::post(strand_, [self = shared_from_this(), stream_id] {
      self->finish(stream_id, make_error_code(errc::cancelled), "the call was cancelled");
    });
  }

  /// Fails every call with `cancelled` and closes (the client is going away).
  void shutdown() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->shut_down_ = true;
      self->close_socket(make_error_code(errc::cancelled));
      self->fail_all(make_error_code(errc::cancelled), "the client was closed", true);
      self->connect_timer_.cancel();
      self->deadline_timer_.cancel();
      self->ping_timer_.cancel();
    });
  }

 private:
  enum class state { idle, backoff, connecting, handshaking, ready };

  void on_submit(std::shared_ptr<pending_call> call);

  // --- connecting ---------------------------------------------------------------------

  void connect();

  void on_connected();

  // fwd's own handshake (after TLS, when on): versions, then the cluster secret.
  void start_handshake() {
    handshake_.emplace(state_->secrets, state_->versions);
    control_ = handshake_->start();
    buffer_ = frame_buffer();
    read();
    flush();
  }

  // Nothing was sent: the waiting calls fail with `ec`, and the next attempt waits.
  void connect_failed(boost::system::error_code ec, std::string detail);

  void close_socket(boost::system::error_code /*why*/) {
    stream_.close();
    control_.clear();
    handshake_.reset();
    session_ = wire::session();
    // The write in flight belonged to this connection: its completion is stale (generation)
    // and will not clear this, so the next connection's first flush() must not wait for it.
    // (A reset during the handshake left this set, and no later handshake was ever sent.)
    writing_ = false;
    buffers_.clear();
    batch_.clear();
    control_in_flight_.clear();
    // The deadline timer outlives its last call only while connected (arm_deadline_timer).
    if (deadlines_.empty()) cancel_deadline_timer();
  }

  // --- reading --------------------------------------------------------------------------

  void read() {
    auto [data, size] = buffer_.prepare();
    stream_.async_read_some(boost::asio::buffer(data, size),
                            [self = shared_from_this(), generation = generation_](boost::system::error_code ec,
                                                                                   std::size_t n) {
                              if (generation != self->generation_) return;
                              self->on_read(ec, n);
                            });
  }

  void on_read(boost::system::error_code ec, std::size_t n);

  void on_frame(const wire::frame_view& frame);

  // A reply too large for max_frame_size at the front of the buffer: skips its bytes
  // (checking its MAC as they go) and then fails its call. False when the frame is not a
  // reply (the connection must go).
  bool skip_oversized_reply();

  // Takes the skipped reply's bytes out of the buffer; false when its MAC failed (the
  // connection was closed).
  bool skip_buffered();

  // The connection must go: a frame failed its session MAC.
  void tampered();

  // --- a peer that stops answering ------------------------------------------------------

  // Arms the ping timer, unless armed for this connection already; runs while calls wait.
  void watch_peer();

  void on_ping_timer();

  void send_ping();

  // The connection broke: calls already sent may have run (connection_lost); the others
  // were never sent and wait for the next connection.
  void connection_broke(boost::system::error_code why, const std::string& detail);

  // --- writing --------------------------------------------------------------------------

  // Frames are coalesced: every call queued while a write runs goes out in the next one,
  // as one gathered write.
  void flush();

  // --- completion -----------------------------------------------------------------------

  void finish(std::uint64_t stream_id, boost::system::error_code ec, std::string payload) {
    auto it = calls_.find(stream_id);
    if (it == calls_.end()) return;  // already done (timed out, cancelled): drop the reply
    auto call = std::move(it->second);
    calls_.erase(it);
    complete(*call, ec, std::move(payload));
  }

  void complete(pending_call& call, boost::system::error_code ec, std::string payload) {
    if (call.done) return;
    call.done = true;
    const bool was_first = call.deadline_entry == deadlines_.begin();
    deadlines_.erase(call.deadline_entry);
    if (was_first) arm_deadline_timer();
    emit_finished(call, ec);
    call.frame.clear();
    call.frame.shrink_to_fit();
    call.complete(ec, std::move(payload));
  }

  void emit_finished(const pending_call& call, boost::system::error_code ec) {
    if (state_->options.telemetry && state_->options.telemetry->call_finished) {
      fwd::detail::invoke_hook(state_->options.telemetry->call_finished, call_finished_event{
          call.procedure, peer_name_, call.attempt, clock::now() - call.started, ec});
    }
  }

  // Fails the calls already sent, and also those not sent yet when `include_unsent`.
  void fail_all(boost::system::error_code ec, const std::string& detail, bool include_unsent);

  // Re-arms the timer only for an earlier deadline, since each change is a system call:
  // when the earliest deadline moves later (calls finish in order), the timer fires early
  // once and is then armed for the earliest. While connected it also stays armed after
  // the last call (a read is pending anyway), so a call at a time costs no timer change.
  void arm_deadline_timer();

  void cancel_deadline_timer() {
    if (!timer_armed_) return;
    timer_armed_ = false;
    deadline_timer_.cancel();
  }

  void on_deadlines();

  boost::asio::strand<boost::asio::any_io_executor> strand_;
  tcp::endpoint peer_;
  std::string peer_name_;
  std::shared_ptr<client_state> state_;
  transport_stream stream_;
  boost::asio::steady_timer connect_timer_;
  boost::asio::steady_timer deadline_timer_;
  boost::asio::steady_timer ping_timer_;
  std::chrono::milliseconds backoff_;
  std::atomic<std::uint64_t> next_stream_{1};

  state state_now_ = state::idle;
  std::uint64_t generation_ = 0;  // bumped per connection attempt: stale handlers do nothing
  std::optional<wire::client_handshake> handshake_;
  wire::session session_;  // after the handshake: seals requests, checks replies
  frame_buffer buffer_;
  std::unordered_map<std::uint64_t, std::shared_ptr<pending_call>> calls_;
  std::deque<std::shared_ptr<pending_call>> unsent_;
  std::multimap<clock::time_point, std::uint64_t> deadlines_;
  clock::time_point armed_for_{};
  bool timer_armed_ = false;
  std::string control_;            // handshake frames to write
  std::string control_in_flight_;  // ... being written
  std::vector<boost::asio::const_buffer> buffers_;
  std::vector<std::shared_ptr<pending_call>> batch_;  // keeps written frames alive
  bool writing_ = false;
  bool shut_down_ = false;
  std::uint64_t skip_ = 0;               // bytes left of an oversized reply being skipped
  std::uint64_t skip_frame_ = 0;         // ... of them, before its tag
  std::uint64_t skip_stream_ = 0;        // its call
  std::string skip_tag_;                 // its tag, as it arrives
  std::string skip_detail_;              // what its call fails with
  clock::time_point quiet_since_{};      // last bytes received (or when watching began)
  std::uint64_t ping_generation_ = 0;    // the connection the ping timer watches
  bool ping_armed_ = false;
  bool pinged_ = false;                  // a ping went out since the last bytes received
};

}  // namespace detail

}  // namespace fwd::rpc

// ---- begin fwd/rpc/detail/impl/client_connection.hpp ----

// The bodies of the RPC client's connection: connecting and its handshake, reading
// replies, writing requests, failures and deadlines. Included at the end of
// fwd/rpc/detail/client_connection.hpp.


namespace fwd::rpc::detail {

inline void client_connection::on_submit(std::shared_ptr<pending_call> call) {
  if (shut_down_) {
    call->done = true;
    emit_finished(*call, make_error_code(errc::cancelled));
    call->complete(make_error_code(errc::cancelled), "the client was closed");
    return;
  }
  if (call->frame.size() > state_->options.max_frame_size) {
    call->done = true;
    auto ec = make_error_code(errc::frame_too_large);
    emit_finished(*call, ec);
    call->complete(ec, fmt::format("the request is {} bytes; max_frame_size is {}",
                                   call->frame.size(), state_->options.max_frame_size));
    return;
  }
  call->deadline_entry = deadlines_.emplace(call->deadline, call->stream_id);
  if (call->deadline_entry == deadlines_.begin()) arm_deadline_timer();
  unsent_.push_back(call);
  calls_.emplace(call->stream_id, std::move(call));
  switch (state_now_) {
    case state::ready:
      flush();
      break;
    case state::idle:
      connect();
      break;
    default:
      break;  // sent once the connection is up
  }
}

inline void client_connection::connect() {
  state_now_ = state::connecting;
  const std::uint64_t generation = ++generation_;
  stream_.close();
  stream_ = transport_stream(tcp::socket(strand_));
  connect_timer_.expires_after(state_->options.connect_timeout);
  connect_timer_.async_wait([self = shared_from_this(), generation](boost::system::error_code ec) {
    if (ec || generation != self->generation_) return;
    if (self->state_now_ == state::connecting || self->state_now_ == state::handshaking) {
      self->connect_failed(
          make_error_code(errc::unreachable),
          fmt::format("no connection to {} within the connect timeout", self->peer_name_));
    }
  });
  stream_.socket().async_connect(
      peer_, [self = shared_from_this(), generation](boost::system::error_code ec) {
        if (generation != self->generation_ || self->state_now_ != state::connecting) return;
        if (ec) {
          self->connect_failed(
              make_error_code(errc::unreachable),
              fmt::format("could not connect to {}: {}", self->peer_name_, ec.message()));
          return;
        }
        self->on_connected();
      });
}

inline void client_connection::on_connected() {
  boost::system::error_code ignored;
  stream_.socket().set_option(tcp::no_delay(true), ignored);
  apply_keepalive(stream_.socket(), state_->options.keepalive);
  state_now_ = state::handshaking;
  skip_ = 0;
  if (!state_->tls_context) {
    // Lets flush() write at once without ever blocking (Asio's own operations are
    // unaffected).
    stream_.socket().non_blocking(true, ignored);
    start_handshake();
    return;
  }
  stream_.start_tls(*state_->tls_context);
  stream_.expect_server_name(state_->options.tls->verify_hostname);
  stream_.async_tls_handshake(
      boost::asio::ssl::stream_base::client,
      [self = shared_from_this(), generation = generation_](boost::system::error_code ec) {
        if (generation != self->generation_ || self->state_now_ != state::handshaking) return;
        if (ec) {
          // Nothing was sent; a certificate or TLS mismatch is not
          // fixed by retrying, hence unauthenticated.
          self->connect_failed(make_error_code(errc::unauthenticated),
                               fmt::format("the TLS handshake with {} failed: {}: check "
                                           "both nodes' certificates and CA, and that "
                                           "the server has TLS on",
                                           self->peer_name_, self->stream_.tls_failure_reason(ec)));
          return;
        }
        self->start_handshake();
      });
}

inline void client_connection::connect_failed(boost::system::error_code ec, std::string detail) {
  ++generation_;
  close_socket(ec);
  fwd::detail::emit(state_->options.telemetry, &telemetry::connection_failed,
                    connection_event{peer_name_, ec});
  fail_all(ec, detail, true);
  state_now_ = state::backoff;
  connect_timer_.expires_after(backoff_);
  backoff_ = std::min(backoff_ * 2, state_->options.max_reconnect_backoff);
  connect_timer_.async_wait(
      [self = shared_from_this(), generation = generation_](boost::system::error_code e) {
        if (e || generation != self->generation_ || self->state_now_ != state::backoff) return;
        self->state_now_ = state::idle;
        if (!self->unsent_.empty()) self->connect();
      });
}

inline void client_connection::on_read(boost::system::error_code ec, std::size_t n) {
  if (ec) {
    connection_broke(ec, fmt::format("the connection to {} broke: {}", peer_name_, ec.message()));
    return;
  }
  buffer_.commit(n);
  if (ping_armed_) {
    quiet_since_ = clock::now();
    pinged_ = false;
  }
  wire::frame_view frame;
  const std::uint64_t generation = generation_;
  while (generation == generation_) {
    if (skip_ > 0) {
      if (!skip_buffered()) return;
      if (skip_ > 0) break;
      continue;
    }
    const bool ready = state_now_ == state::ready;
    const std::size_t limit = ready ? state_->options.max_frame_size : wire::max_handshake_frame_size;
    if (!buffer_.next(limit, frame, ec, ready ? wire::tag_size : 0)) {
      if (ec == errc::frame_too_large && state_now_ == state::ready && skip_oversized_reply()) {
        ec = {};
        continue;
      }
      break;
    }
    on_frame(frame);
  }
  if (generation != generation_) return;
  if (ec) {
    connection_broke(
        ec, fmt::format("the server at {} sent bytes that are not fwd's protocol", peer_name_));
    return;
  }
  if (calls_.empty()) buffer_.shrink();
  read();
}

inline void client_connection::on_frame(const wire::frame_view& frame) {
  if (state_now_ == state::handshaking) {
    auto step = handshake_->on_frame(frame);
    if (step.ec) {
      connect_failed(step.ec, step.detail);  // nothing was sent yet
      return;
    }
    if (!step.send.empty()) {
      control_ += step.send;
      flush();
    }
    if (step.done) {
      state_now_ = state::ready;
      session_ = handshake_->take_session();
      handshake_.reset();
      connect_timer_.cancel();
      backoff_ = state_->options.reconnect_backoff;
      fwd::detail::emit(state_->options.telemetry, &telemetry::connection_opened,
                        connection_event{peer_name_, {}, false, session_.protocol()});
      flush();
    }
    return;
  }
  if (!session_.open(frame.bytes, frame.tag)) {
    tampered();
    return;
  }
  if (frame.header.type != wire::frame_type::reply) {
    connection_broke(make_error_code(errc::protocol_error),
                     fmt::format("the server at {} sent an unexpected frame", peer_name_));
    return;
  }
  const auto ec = decode_status(frame.header.aux);
  finish(frame.header.stream_id, ec, std::string(ec ? frame.meta : frame.body));
}

inline bool client_connection::skip_oversized_reply() {
  wire::frame_header h;
  if (wire::decode_header(buffer_.data(), std::numeric_limits<std::size_t>::max(), h) ||
      h.type != wire::frame_type::reply) {
    return false;
  }
  skip_frame_ = wire::frame_size(h);
  skip_ = skip_frame_ + wire::tag_size;
  skip_detail_ = fmt::format("the reply from {} is {} bytes, over max_frame_size ({} bytes): the call ran, "
                             "its result was dropped",
                             peer_name_, skip_frame_, state_->options.max_frame_size);
  skip_stream_ = h.stream_id;
  skip_tag_.clear();
  session_.begin_open();
  return true;
}

inline bool client_connection::skip_buffered() {
  const std::string_view bytes = buffer_.data().substr(0, static_cast<std::size_t>(std::min<std::uint64_t>(
                                                              skip_, buffer_.buffered())));
  const std::size_t frame_part = static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), skip_frame_));
  session_.add(bytes.substr(0, frame_part));
  skip_tag_.append(bytes.substr(frame_part));
  skip_frame_ -= frame_part;
  skip_ -= buffer_.discard(bytes.size());
  if (skip_ > 0) return true;
  if (!session_.end_open(skip_tag_)) {
    tampered();
    return false;
  }
  finish(skip_stream_, make_error_code(errc::frame_too_large), std::move(skip_detail_));
  return true;
}

inline void client_connection::tampered() {
  connection_broke(make_error_code(errc::tampered_frame),
                   fmt::format("a frame from {} failed its session MAC (injected, replayed, reordered "
                               "or altered on the way): the connection was closed",
                               peer_name_));
}

inline void client_connection::watch_peer() {
  const auto& o = state_->options;
  if (o.ping_interval.count() <= 0 && o.dead_peer_timeout.count() <= 0) return;
  if (ping_armed_ && ping_generation_ == generation_) return;
  ping_armed_ = true;
  ping_generation_ = generation_;
  quiet_since_ = clock::now();
  pinged_ = false;
  on_ping_timer();
}

inline void client_connection::on_ping_timer() {
  if (ping_generation_ != generation_ || state_now_ != state::ready || calls_.empty()) {
    ping_armed_ = false;  // nothing to watch: the next call sent arms it again
    return;
  }
  const auto& o = state_->options;
  const auto now = clock::now();
  const auto quiet = now - quiet_since_;
  if (o.dead_peer_timeout.count() > 0 && quiet >= o.dead_peer_timeout) {
    connection_broke(
        make_error_code(errc::timeout),
        fmt::format("{} sent nothing for {} ms with calls waiting (dead_peer_timeout), not even "
                    "an answer to a ping: the connection was closed",
                    peer_name_, std::chrono::duration_cast<std::chrono::milliseconds>(quiet).count()));
    return;
  }
  if (o.ping_interval.count() > 0 && !pinged_ && quiet >= o.ping_interval) {
    pinged_ = true;
    send_ping();
  }
  auto next = clock::time_point::max();
  if (o.ping_interval.count() > 0 && !pinged_) next = std::min(next, quiet_since_ + o.ping_interval);
  if (o.dead_peer_timeout.count() > 0) next = std::min(next, quiet_since_ + o.dead_peer_timeout);
  if (next == clock::time_point::max()) {
    ping_armed_ = false;
    return;
  }
  ping_timer_.expires_at(next);
  ping_timer_.async_wait([self = shared_from_this(), generation = ping_generation_](boost::system::error_code ec) {
    if (ec || generation != self->ping_generation_) return;
    self->on_ping_timer();
  });
}

inline void client_connection::send_ping() {
  wire::frame_header h;
  h.type = wire::frame_type::request;
  h.stream_id = next_stream_id();  // its reply matches no call, and is dropped
  std::memcpy(h.id.data(), state_->id_prefix.data(), 8);
  fwd::detail::store_le<std::uint64_t>(reinterpret_cast<char*>(h.id.data() + 8),
                                       state_->next_id.fetch_add(1, std::memory_order_relaxed));
  const std::size_t at = control_.size();
  wire::append_frame(control_, h, ping_procedure, {});
  session_.seal_tail(control_, at);  // sealed now: control_ goes out before later calls
  flush();
}

inline void client_connection::connection_broke(boost::system::error_code why,
                                                const std::string& detail) {
  const bool was_ready = state_now_ == state::ready;
  if (!was_ready && stream_.is_tls() && why.category() == boost::asio::error::get_ssl_category()) {
    // Under TLS 1.3 the server checks the client's certificate after the client's side of
    // the TLS handshake is done: its refusal arrives here, as an alert.
    connect_failed(
        make_error_code(errc::unauthenticated),
        fmt::format("TLS with {} failed: {}: check this node's certificate and the CA the "
                    "server trusts",
                    peer_name_, stream_.tls_failure_reason(why)));
    return;
  }
  if (!was_ready) {
    connect_failed(why == errc::protocol_error ? why : make_error_code(errc::unreachable), detail);
    return;
  }
  ++generation_;
  close_socket(why);
  fwd::detail::emit(state_->options.telemetry, &telemetry::connection_closed,
                    connection_event{peer_name_, why});
  fail_all(make_error_code(errc::connection_lost), detail, false);
  state_now_ = state::idle;
  if (!unsent_.empty()) connect();
}

inline void client_connection::flush() {
  if (writing_) return;
  buffers_.clear();
  batch_.clear();
  if (!control_.empty()) {
    control_in_flight_.swap(control_);
    control_.clear();
    buffers_.push_back(boost::asio::buffer(control_in_flight_));
  }
  if (state_now_ == state::ready) {
    const auto now = clock::now();
    std::size_t bytes = 0;
    while (!unsent_.empty() && batch_.size() < 1024 && bytes < (std::size_t{1} << 22)) {
      auto call = std::move(unsent_.front());
      unsent_.pop_front();
      if (call->done) continue;
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(call->deadline - now).count();
      if (left <= 0) {
        finish(call->stream_id, make_error_code(errc::timeout),
               "the deadline passed before the call was sent");
        continue;
      }
      // The remaining time, as of now: the server drops the request if it runs out.
      fwd::detail::store_le<std::uint32_t>(
          call->frame.data() + wire::deadline_offset,
          static_cast<std::uint32_t>(std::min<long long>(left, 0xffffffffLL)));
      call->sent = true;
      session_.seal(call->frame, call->tag.data());
      bytes += call->frame.size() + wire::tag_size;
      buffers_.push_back(boost::asio::buffer(call->frame));
      buffers_.push_back(boost::asio::buffer(call->tag));
      batch_.push_back(std::move(call));
    }
  }
  if (!batch_.empty()) watch_peer();
  if (buffers_.empty()) return;
  writing_ = true;
  if (!stream_.is_tls() && stream_.socket().non_blocking() && batch_.size() == calls_.size()) {
    // Plain TCP, and no other call waits for a reply: what the socket takes now is written
    // now, which spares the trip through the scheduler that an asynchronous write's
    // completion costs. The rest, and any error, go through async_write below. With
    // other calls in flight, the asynchronous write is kept: calls started while it
    // completes (as replies arrive) go out together in the next write.
    boost::system::error_code ec;
    std::size_t written = stream_.socket().write_some(buffers_, ec);
    if (ec) written = 0;
    if (written == boost::asio::buffer_size(buffers_)) {
      writing_ = false;
      batch_.clear();
      control_in_flight_.clear();
      flush();  // what the batch limits left behind
      return;
    }
    auto first = buffers_.begin();
    while (written >= first->size()) written -= (first++)->size();
    buffers_.erase(buffers_.begin(), first);
    buffers_.front() += written;
  }
  boost::asio::async_write(
      stream_, buffers_,
      [self = shared_from_this(), generation = generation_](boost::system::error_code ec,
                                                            std::size_t) {
        if (generation != self->generation_) return;
        self->writing_ = false;
        self->batch_.clear();
        self->control_in_flight_.clear();
        if (ec && self->state_now_ == state::handshaking && self->stream_.is_tls()) {
          // A server that refuses this TLS client resets the connection
          // after its alert: the pending read reports the alert (or the
          // connect timeout ends the attempt).
          return;
        }
        if (ec) {
          self->connection_broke(
              ec, fmt::format("writing to {} failed: {}", self->peer_name_, ec.message()));
          return;
        }
        self->flush();
      });
}

inline void client_connection::fail_all(boost::system::error_code ec, const std::string& detail,
                                        bool include_unsent) {
  std::vector<std::shared_ptr<pending_call>> failing;
  for (auto it = calls_.begin(); it != calls_.end();) {
    if (it->second->sent || include_unsent) {
      failing.push_back(std::move(it->second));
      it = calls_.erase(it);
    } else {
      ++it;
    }
  }
  if (include_unsent) unsent_.clear();
  for (auto& call : failing) complete(*call, ec, detail);
}

inline void client_connection::arm_deadline_timer() {
  if (deadlines_.empty()) {
    if (!stream_.socket().is_open()) cancel_deadline_timer();
    return;
  }
  const auto first = deadlines_.begin()->first;
  if (timer_armed_ && armed_for_ <= first) return;
  timer_armed_ = true;
  armed_for_ = first;
  deadline_timer_.expires_at(first);
  deadline_timer_.async_wait([self = shared_from_this(), first](boost::system::error_code ec) {
    if (ec || !self->timer_armed_ || self->armed_for_ != first) return;
    self->timer_armed_ = false;
    self->on_deadlines();
  });
}

inline void client_connection::on_deadlines() {
  const auto now = clock::now();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    finish(deadlines_.begin()->second, make_error_code(errc::timeout),
           fmt::format("no reply from {} before the call's deadline", peer_name_));
  }
  arm_deadline_timer();
}

}  // namespace fwd::rpc::detail

// ---- end fwd/rpc/detail/impl/client_connection.hpp ----

// ---- end fwd/rpc/detail/client_connection.hpp ----

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd::rpc {

/**
 * A fwd RPC client: typed calls to fwd servers. It keeps one connection per peer,
 * opened on the first call, authenticated with the cluster secret, and reopened (with
 * backoff) after it breaks. Many calls run at once on a connection, matched by stream
 * id; requests queued while a write runs go out together in the next one.
 *
 * Thread-safe: calls may start from any thread. Calls complete through their handler's
 * associated executor (default: the client's executor).
 *
 * Errors, each an fwd::errc (fwd::classify() says what to do):
 *   - `unreachable` (not sent): no connection to the peer;
 *   - `connection_lost` (maybe executed): the connection broke after the request was sent;
 *   - `timeout` (maybe executed): the deadline passed;
 *   - `cancelled` (maybe executed): cancelled through the cancellation slot;
 *   - `unauthenticated`, `version_mismatch`, `protocol_error`: the handshake failed
 *     (`unauthenticated` also when TLS fails: a certificate missing or untrusted, or TLS on
 *     one side only; call_options::diagnostics has OpenSSL's reason);
 *   - `frame_too_large`: the request exceeds max_frame_size (not sent);
 *   - from the server: `unknown_procedure`, `signature_mismatch`, `remote_failure`,
 *     `overloaded`, `timeout`, or the procedure's own error (e.g. a SQLite code).
 */
class client {
 public:
  using executor_type = boost::asio::any_io_executor;
  using endpoint = boost::asio::ip::tcp::endpoint;

  client(executor_type executor, client_options options)
      : executor_(std::move(executor)), state_(std::make_shared<detail::client_state>()) {
    state_->secrets = detail::checked_secrets("client_options", options.secret, options.accepted_secrets);
    state_->versions.archive = options.archive_version != 0 ? options.archive_version : fwd::detail::archive_version();
    if (options.min_protocol_version != 0) state_->versions.protocol_min = options.min_protocol_version;
    if (options.max_protocol_version != 0) state_->versions.protocol_max = options.max_protocol_version;
    if (options.tls) state_->tls_context = detail::make_tls_context(*options.tls, false, "client_options::tls");
    state_->options = std::move(options);
    state_->id_prefix = fwd::detail::random_bytes<8>();
  }

  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// Closes every connection; calls still running complete with `cancelled`.
  ~client() { close(); }

  executor_type get_executor() const noexcept { return executor_; }

  /**
   * Calls `proc` on `peer` with `args`, then completes `token`.
   *
   * Completion signature: `void(boost::system::error_code, R)`, or
   * `void(boost::system::error_code)` when R is void. Works with callbacks, use_future,
   * use_awaitable, deferred and any other completion token.
   *
   * Completes through the handler's associated executor (default: the client's), never
   * inside this call; that executor has outstanding work until then.
   *
   * **Per-Operation Cancellation**: `terminal`, `partial` and `total` all end the call
   * with `errc::cancelled`: a request not yet written is never sent; a request already
   * sent may still run on the server, and its reply is dropped. The connection and the
   * other calls on it are unaffected.
   */
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(const endpoint& peer, const procedure<R(Params...)>& proc, ArgsAndToken&&... args_and_token) {
    return async_call(peer, call_options{}, proc, std::forward<ArgsAndToken>(args_and_token)...);
  }

  /// As above, with per-call options (deadline, request id, attempt, diagnostics).
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(const endpoint& peer, call_options options, const procedure<R(Params...)>& proc,
                  ArgsAndToken&&... args_and_token) {
    static_assert(sizeof...(ArgsAndToken) == sizeof...(Params) + 1,
                  "async_call takes the procedure's arguments, then a completion token");
    auto all = std::forward_as_tuple(std::forward<ArgsAndToken>(args_and_token)...);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      static_assert((std::is_convertible_v<std::tuple_element_t<I, std::tuple<ArgsAndToken...>>, Params> && ...),
                    "an argument of async_call does not convert to the procedure's parameter type");
      std::string arguments = fwd::detail::encode_arguments(proc, std::get<I>(all)...);
      return start<R>(peer, std::move(options), proc.name(), proc.signature(), std::move(arguments),
                      std::forward<std::tuple_element_t<sizeof...(Params), std::tuple<ArgsAndToken...>>>(
                          std::get<sizeof...(Params)>(all)));
    }(std::make_index_sequence<sizeof...(Params)>{});
  }

  /**
   * Calls a procedure by name with already-encoded arguments; completes with
   * `void(boost::system::error_code, std::string)`, the encoded result. For layers that
   * forward calls without knowing their types. Cancellation as async_call.
   */
  template <class Token>
  auto async_call_raw(const endpoint& peer, call_options options, std::string_view procedure_name,
                      std::uint64_t signature, std::string arguments, Token&& token) {
    return start<raw_result>(peer, std::move(options), procedure_name, signature, std::move(arguments),
                             std::forward<Token>(token));
  }

  /**
   * Blocking call: returns the result or throws fwd::error: its code, and in
   * get_diagnostics() "call to <procedure>: <details>" (what() adds the code's message).
   * call_options::diagnostics, when set, receives the details alone. Must not be called
   * from a thread that runs the client's executor (it waits for that executor). The thread
   * polls for the reply for up to 50 microseconds (yielding its core between polls), then
   * sleeps until it comes: a reply that fast is taken without waking a sleeping thread.
   */
  template <class R, class... Params, class... Args>
  R call(const endpoint& peer, const procedure<R(Params...)>& proc, Args&&... args) {
    return call(peer, call_options{}, proc, std::forward<Args>(args)...);
  }

  template <class R, class... Params, class... Args>
  R call(const endpoint& peer, call_options options, const procedure<R(Params...)>& proc, Args&&... args) {
    fwd::diagnostics local;
    fwd::diagnostics* diag = options.diagnostics != nullptr ? options.diagnostics : &local;
    options.diagnostics = diag;
    // Shared with the completion, which may still be inside set_value() when get() returns.
    auto result = std::make_shared<fwd::detail::blocking_result<R>>();
    if constexpr (std::is_void_v<R>) {
      async_call(peer, std::move(options), proc, std::forward<Args>(args)...,
                 [result, diag, p = proc.name()](boost::system::error_code ec) {
                   if (ec) {
                     result->set_exception(std::make_exception_ptr(fwd::detail::call_failure(ec, p, *diag)));
                   } else {
                     result->set_value();
                   }
                 });
      result->get();
    } else {
      async_call(peer, std::move(options), proc, std::forward<Args>(args)...,
                 [result, diag, p = proc.name()](boost::system::error_code ec, R value) {
                   if (ec) {
                     result->set_exception(std::make_exception_ptr(fwd::detail::call_failure(ec, p, *diag)));
                   } else {
                     result->set_value(std::move(value));
                   }
                 });
      return result->get();
    }
  }

  /// Closes every connection; calls still running complete with `cancelled`.
  void close() {
    std::lock_guard lock(mutex_);
    for (auto& [peer, connection] : connections_) connection->shutdown();
    connections_.clear();
  }

 private:
  struct raw_result {};

  std::shared_ptr<detail::client_connection> connection_to(const endpoint& peer) {
    std::lock_guard lock(mutex_);
    auto& slot = connections_[peer];
    if (!slot) slot = std::make_shared<detail::client_connection>(executor_, peer, state_);
    return slot;
  }

  template <class R>
  struct initiation {
    std::shared_ptr<detail::client_connection> connection;
    std::shared_ptr<detail::client_state> state;
    executor_type fallback;

    template <class Handler>
    void operator()(Handler&& handler, call_options options, std::string procedure_name, std::uint64_t signature,
                    std::string arguments) const {
      using op_t =
          detail::call_op<std::conditional_t<std::is_same_v<R, raw_result>, detail::raw_reply, R>>;
      if (options.diagnostics != nullptr) options.diagnostics->clear();
      auto op = std::make_shared<op_t>(std::forward<Handler>(handler), fallback, options.diagnostics);
      auto slot = op->slot();
      std::shared_ptr<detail::pending_call> call = std::move(op);
      const auto now = std::chrono::steady_clock::now();
      call->stream_id = connection->next_stream_id();
      call->deadline = options.deadline.value_or(now + state->options.default_timeout);
      call->attempt = options.attempt;
      const auto& telemetry = state->options.telemetry;
      if (telemetry && (telemetry->call_started || telemetry->call_finished)) {
        call->procedure = procedure_name;
        call->started = now;
        fwd::detail::emit(telemetry, &fwd::telemetry::call_started,
                          call_started_event{call->procedure, {}, call->attempt});
      }
      wire::frame_header h;
      h.type = wire::frame_type::request;
      h.flags = wire::frame_flags::has_deadline;
      if (options.durability != 0) {
        h.flags |= wire::frame_flags::has_durability;
        h.durability = options.durability;
      }
      h.stream_id = call->stream_id;
      if (options.request_id) {
        h.id = *options.request_id;
      } else {
        std::memcpy(h.id.data(), state->id_prefix.data(), 8);
        fwd::detail::store_le<std::uint64_t>(reinterpret_cast<char*>(h.id.data() + 8),
                                             state->next_id.fetch_add(1, std::memory_order_relaxed));
      }
      h.aux = signature;
      call->frame = wire::encode_frame(h, procedure_name, arguments);
      if (slot.is_connected()) {
        slot.assign([weak = std::weak_ptr<detail::client_connection>(connection),
                     stream_id = call->stream_id](boost::asio::cancellation_type type) {
          if (type == boost::asio::cancellation_type::none) return;
          if (auto c = weak.lock()) c->cancel(stream_id);
        });
      }
      connection->submit(std::move(call));
    }
  };

  template <class R, class Token>
  auto start(const endpoint& peer, call_options options, std::string_view procedure_name, std::uint64_t signature,
             std::string arguments, Token&& token) {
    using signature_t = std::conditional_t<std::is_same_v<R, raw_result>,
                                           void(boost::system::error_code, std::string), detail::call_signature<R>>;
    return boost::asio::async_initiate<Token, signature_t>(
        initiation<R>{connection_to(peer), state_, executor_}, token, std::move(options),
        std::string(procedure_name), signature, std::move(arguments));
  }

  executor_type executor_;
  std::shared_ptr<detail::client_state> state_;
  std::mutex mutex_;
  std::map<endpoint, std::shared_ptr<detail::client_connection>> connections_;
};

}  // namespace fwd::rpc

// ---- end fwd/rpc/client.hpp ----
// ---- begin fwd/cluster/membership_types.hpp ----

// What cluster membership is made of: members, DNS sources, snapshots, hooks, options.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>
#include <chrono>
#include <cstdint>
#include <functional>
// ---- begin fwd/detail/cares_channel.hpp ----

// A c-ares channel driven by the Asio reactor: the sockets c-ares opens are watched with
// Asio descriptors (assigned with c-ares's fd, released without closing it, since c-ares
// owns and closes it), and c-ares's timeouts are kept by an Asio steady_timer. Nothing
// blocks and nothing polls: work happens only when a socket is ready or a timeout is due.
//
// Every query asks the server: c-ares's query cache (1.23 and later, on by default since
// 1.31, keeping answers up to an hour) is turned off, since membership polls exist to see
// changes as soon as the server has them.

#include <ares.h>

#include <algorithm>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
// ---- begin fwd/detail/cares_api.hpp ----

// What differs between c-ares versions, behind one interface: sending a query and reading
// its answer's records. From c-ares 1.28 on, queries go through ares_query_dnsrec and
// ares_search_dnsrec and answers are read from the parsed ares_dns_record_t (the older
// functions are deprecated there); before 1.28 (Debian 12 ships 1.18), ares_query and
// ares_search hand over the raw answer, read with ares_parse_{a,aaaa,srv}_reply.
//
// FWD_CARES_LEGACY_API=1 selects the older functions on any version (they are still
// exported); their deprecation warnings are silenced locally either way.

#include <ares.h>

#include <algorithm>
#include <array>
#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if !defined(FWD_CARES_LEGACY_API)
#if ARES_VERSION >= 0x011c00
#define FWD_CARES_LEGACY_API 0
#else
#define FWD_CARES_LEGACY_API 1
#endif
#endif

#if !FWD_CARES_LEGACY_API
#include <ares_dns_record.h>
#endif

namespace fwd::detail {

inline constexpr int dns_type_a = 1;      // ns_t_a
inline constexpr int dns_type_aaaa = 28;  // ns_t_aaaa
inline constexpr int dns_type_srv = 33;   // ns_t_srv

/// One record of an answer, of the type asked for.
struct dns_record {
  boost::asio::ip::address address;  ///< A, AAAA
  std::string target;                ///< SRV
  std::uint16_t port = 0;            ///< SRV
  /// Seconds the server lets the record be cached; unknown for SRV before c-ares 1.28.
  std::optional<std::uint32_t> ttl;
};

/// Called once per query: c-ares's status and, on success, the records of the type asked
/// for (a successful answer without any is reported as ARES_ENODATA).
using dns_answer_callback = std::function<void(int status, std::vector<dns_record>&& records)>;

namespace cares_api {

// More records than this in one answer are cut: a cluster of more nodes than one answer
// carries needs SRV or several names.
inline constexpr std::size_t max_records = 256;

struct query_context {
  int type;
  dns_answer_callback callback;
};

inline void deliver(void* arg, int status, std::vector<dns_record>&& records) {
  std::unique_ptr<query_context> context(static_cast<query_context*>(arg));
  if (status == ARES_SUCCESS && records.empty()) status = ARES_ENODATA;
  if (status != ARES_SUCCESS) records.clear();
  context->callback(status, std::move(records));
}

#if FWD_CARES_LEGACY_API

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif

inline int read_records(int type, const unsigned char* answer, int length,
                        std::vector<dns_record>& out) {
  int count = static_cast<int>(max_records);
  if (type == dns_type_a) {
    std::array<ares_addrttl, max_records> records{};
    const int status = ares_parse_a_reply(answer, length, nullptr, records.data(), &count);
    for (int k = 0; status == ARES_SUCCESS && k < count; ++k) {
      boost::asio::ip::address_v4::bytes_type bytes;
      std::memcpy(bytes.data(), &records[k].ipaddr, bytes.size());
      out.push_back({boost::asio::ip::address_v4(bytes), {}, 0,
                     static_cast<std::uint32_t>(std::max(records[k].ttl, 0))});
    }
    return status;
  }
  if (type == dns_type_aaaa) {
    std::array<ares_addr6ttl, max_records> records{};
    const int status = ares_parse_aaaa_reply(answer, length, nullptr, records.data(), &count);
    for (int k = 0; status == ARES_SUCCESS && k < count; ++k) {
      boost::asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), &records[k].ip6addr, bytes.size());
      out.push_back({boost::asio::ip::address_v6(bytes), {}, 0,
                     static_cast<std::uint32_t>(std::max(records[k].ttl, 0))});
    }
    return status;
  }
  ares_srv_reply* records = nullptr;
  const int status = ares_parse_srv_reply(answer, length, &records);
  for (auto* r = records; status == ARES_SUCCESS && r != nullptr; r = r->next) {
    if (r->host != nullptr && out.size() < max_records) out.push_back({{}, r->host, r->port, {}});
  }
  if (records != nullptr) ares_free_data(records);
  return status;
}

inline void on_answer(void* arg, int status, int /*timeouts*/, unsigned char* answer, int length) {
  std::vector<dns_record> records;
  if (status == ARES_SUCCESS) {
    status = read_records(static_cast<query_context*>(arg)->type, answer, length, records);
  }
  deliver(arg, status, std::move(records));
}

/// Sends the query; `callback` runs exactly once, maybe inside this call.
inline void send(ares_channel channel, const std::string& name, int type, bool search,
                 dns_answer_callback callback) {
  auto* context = new query_context{type, std::move(callback)};
  if (search) {
    ares_search(channel, name.c_str(), 1 /* C_IN */, type, &on_answer, context);
  } else {
    ares_query(channel, name.c_str(), 1 /* C_IN */, type, &on_answer, context);
  }
}

/// Handles what is ready on `read_fd` / `write_fd` (ARES_SOCKET_BAD: none) and what has
/// timed out.
inline void process(ares_channel channel, ares_socket_t read_fd, ares_socket_t write_fd) {
  ares_process_fd(channel, read_fd, write_fd);
}

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#else  // FWD_CARES_LEGACY_API

inline void read_records(int type, const ares_dns_record_t* answer, std::vector<dns_record>& out) {
  const std::size_t count = ares_dns_record_rr_cnt(answer, ARES_SECTION_ANSWER);
  for (std::size_t k = 0; k < count && out.size() < max_records; ++k) {
    const ares_dns_rr_t* rr = ares_dns_record_rr_get_const(answer, ARES_SECTION_ANSWER, k);
    if (rr == nullptr || static_cast<int>(ares_dns_rr_get_type(rr)) != type) continue;
    const std::uint32_t ttl = ares_dns_rr_get_ttl(rr);
    if (type == dns_type_a) {
      const in_addr* a = ares_dns_rr_get_addr(rr, ARES_RR_A_ADDR);
      if (a == nullptr) continue;
      boost::asio::ip::address_v4::bytes_type bytes;
      std::memcpy(bytes.data(), a, bytes.size());
      out.push_back({boost::asio::ip::address_v4(bytes), {}, 0, ttl});
    } else if (type == dns_type_aaaa) {
      const ares_in6_addr* a = ares_dns_rr_get_addr6(rr, ARES_RR_AAAA_ADDR);
      if (a == nullptr) continue;
      boost::asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), a, bytes.size());
      out.push_back({boost::asio::ip::address_v6(bytes), {}, 0, ttl});
    } else {
      const char* target = ares_dns_rr_get_str(rr, ARES_RR_SRV_TARGET);
      if (target == nullptr) continue;
      out.push_back({{}, target, ares_dns_rr_get_u16(rr, ARES_RR_SRV_PORT), ttl});
    }
  }
}

inline void on_answer(void* arg, ares_status_t status, std::size_t /*timeouts*/,
                      const ares_dns_record_t* answer) {
  std::vector<dns_record> records;
  if (status == ARES_SUCCESS && answer != nullptr) {
    read_records(static_cast<query_context*>(arg)->type, answer, records);
  }
  deliver(arg, status, std::move(records));
}

/// Sends the query; `callback` runs exactly once, maybe inside this call.
inline void send(ares_channel_t* channel, const std::string& name, int type, bool search,
                 dns_answer_callback callback) {
  auto* context = new query_context{type, std::move(callback)};
  const auto rr_type = static_cast<ares_dns_rec_type_t>(type);
  if (!search) {
    // The callback runs on every failure too.
    ares_query_dnsrec(channel, name.c_str(), ARES_CLASS_IN, rr_type, &on_answer, context, nullptr);
    return;
  }
  ares_dns_record_t* query = nullptr;
  ares_status_t status =
      ares_dns_record_create(&query, 0, ARES_FLAG_RD, ARES_OPCODE_QUERY, ARES_RCODE_NOERROR);
  if (status == ARES_SUCCESS) {
    status = ares_dns_record_query_add(query, name.c_str(), rr_type, ARES_CLASS_IN);
  }
  if (status == ARES_SUCCESS) {
    // The callback runs on every failure but a null argument; the query is copied.
    ares_search_dnsrec(channel, query, &on_answer, context);
  } else {
    deliver(context, status, {});
  }
  ares_dns_record_destroy(query);
}

/// Handles what is ready on `read_fd` / `write_fd` (ARES_SOCKET_BAD: none) and what has
/// timed out.
inline void process(ares_channel_t* channel, ares_socket_t read_fd, ares_socket_t write_fd) {
#if ARES_VERSION >= 0x012200
  // ares_process_fds (1.34) handles the events and the timeouts in one pass.
  ares_fd_events_t events[2];
  std::size_t count = 0;
  if (read_fd != ARES_SOCKET_BAD) events[count++] = {read_fd, ARES_FD_EVENT_READ};
  if (write_fd != ARES_SOCKET_BAD) events[count++] = {write_fd, ARES_FD_EVENT_WRITE};
  ares_process_fds(channel, count == 0 ? nullptr : events, count, ARES_PROCESS_FLAG_NONE);
#else
  ares_process_fd(channel, read_fd, write_fd);
#endif
}

#endif  // FWD_CARES_LEGACY_API

}  // namespace cares_api

}  // namespace fwd::detail

// ---- end fwd/detail/cares_api.hpp ----
// ---- begin fwd/detail/cares_error.hpp ----

// DNS resolver errors: c-ares's status codes kept as they are (ARES_ENOTFOUND stays 4) in
// their own category "fwd.dns", with c-ares's message followed by what to do.

#include <ares.h>

#include <boost/system/error_category.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <string>
#include <system_error>
#include <type_traits>

namespace fwd {

/// c-ares's status codes, under fwd's names; the values are c-ares's own.
enum class dns_errc {
  no_data = ARES_ENODATA,                  ///< the name exists but has no record of that type
  format_error = ARES_EFORMERR,            ///< the server could not read the query
  server_failure = ARES_ESERVFAIL,         ///< the server failed (SERVFAIL)
  not_found = ARES_ENOTFOUND,              ///< the name does not exist (NXDOMAIN)
  not_implemented = ARES_ENOTIMP,          ///< the server does not implement that query
  refused = ARES_EREFUSED,                 ///< the server refused to answer
  bad_query = ARES_EBADQUERY,              ///< the query was malformed
  bad_name = ARES_EBADNAME,                ///< the name is not a valid DNS name
  bad_response = ARES_EBADRESP,            ///< the answer was malformed
  connection_refused = ARES_ECONNREFUSED,  ///< no DNS server answered on its port
  timeout = ARES_ETIMEOUT,                 ///< no answer within the query timeout
  out_of_memory = ARES_ENOMEM,             ///< c-ares ran out of memory
  destroyed = ARES_EDESTRUCTION,           ///< the resolver was destroyed mid-query
  bad_string = ARES_EBADSTR,               ///< a configuration string (e.g. a server) is malformed
  not_initialized = ARES_ENOTINITIALIZED,  ///< c-ares's library initialisation failed
  cancelled = ARES_ECANCELLED,             ///< the query was cancelled
};

namespace detail {

// What to do after each c-ares status, appended to ares_strerror's text.
inline const char* dns_advice(int status) noexcept {
  switch (status) {
    case ARES_ENODATA:
      return "the name exists but has no record of the requested type: add A/AAAA (or SRV) "
             "records for the cluster's nodes";
    case ARES_EFORMERR:
    case ARES_EBADQUERY:
      return "the server could not parse the query: check the name and the DNS server";
    case ARES_ESERVFAIL:
      return "the DNS server failed to answer: check its upstream and its logs; members "
             "from the last good answer are kept";
    case ARES_ENOTFOUND:
      return "the name does not exist (NXDOMAIN): check the configured name and the DNS "
             "zone; members are removed only after repeated NXDOMAIN answers";
    case ARES_ENOTIMP:
      return "the DNS server does not implement this query type: use another server or "
             "A/AAAA records instead of SRV";
    case ARES_EREFUSED:
      return "the DNS server refused the query: check that it serves this zone to this host";
    case ARES_EBADNAME:
      return "the name is not a valid DNS name: fix the configured name";
    case ARES_EBADRESP:
      return "the DNS answer was malformed: check the DNS server";
    case ARES_ECONNREFUSED:
      return "no DNS server answered on its address and port: check that the server runs "
             "and the configured servers (host:port); members from the last good answer "
             "are kept";
    case ARES_ETIMEOUT:
      return "no DNS answer within the query timeout: check the server and the network, or "
             "raise the query timeout; members from the last good answer are kept";
    case ARES_ENOMEM:
      return "out of memory";
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
      return "the resolver was stopped or destroyed before the answer arrived";
    case ARES_EBADSTR:
      return "a DNS server must be written as an IP address with an optional port: "
             "\"10.0.0.2:53\" or \"[fd00::2]:53\"";
    case ARES_ENOTINITIALIZED:
      return "c-ares could not initialise: check the resolver configuration "
             "(/etc/resolv.conf) or give explicit DNS servers";
    default:
      return "see c-ares's documentation for this status";
  }
}

class dns_category_impl final : public boost::system::error_category {
 public:
  // A fixed id lets categories from different shared libraries compare equal.
  constexpr dns_category_impl() noexcept
      : boost::system::error_category(0x8e1f'3c7a'5d02'4b93ull) {}
  const char* name() const noexcept override { return "fwd.dns"; }
  std::string message(int status) const override {
    return fmt::format("{} (c-ares status {}): {}", ares_strerror(status), status,
                       dns_advice(status));
  }
};

}  // namespace detail

/// The category of c-ares status codes, named "fwd.dns"; the value is c-ares's status
/// (e.g. ARES_ENOTFOUND, 4).
inline const boost::system::error_category& dns_category() noexcept {
  static constexpr detail::dns_category_impl instance;
  return instance;
}

/// An error_code for c-ares's status `status`.
inline boost::system::error_code make_dns_error(int status) noexcept {
  return {status, dns_category()};
}

inline boost::system::error_code make_error_code(dns_errc e) noexcept {
  return make_dns_error(static_cast<int>(e));
}

}  // namespace fwd

template <>
struct boost::system::is_error_code_enum<fwd::dns_errc> : std::true_type {};
template <>
struct std::is_error_code_enum<fwd::dns_errc> : std::true_type {};

// ---- end fwd/detail/cares_error.hpp ----
#include <fmt/format.h>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace fwd::detail {

/// Initialises the c-ares library once per process, thread-safely; throws fwd::error.
inline void cares_library_init() {
  // A function-local static is initialised once even when threads race to it; if the
  // initialisation throws, the next call tries again.
  static const bool initialised = [] {
    const int status = ares_library_init(ARES_LIB_INIT_ALL);
    if (status != ARES_SUCCESS) {
      throw fwd::error(make_dns_error(status), "ares_library_init failed");
    }
    return true;
  }();
  (void)initialised;
}

struct cares_channel_options {
  /// Explicit servers ("10.0.0.2", "10.0.0.2:5353", "[fd00::2]:53"); empty = the resolver
  /// configuration in `resolv_conf`.
  std::vector<std::string> servers;
  /// The resolver configuration read when `servers` is empty; empty: /etc/resolv.conf.
  std::string resolv_conf;
  /// The port of the servers `resolv_conf` names (its syntax has none); 0: 53.
  std::uint16_t resolv_conf_port = 0;
  std::chrono::milliseconds timeout{2000};  ///< per try
  int tries = 2;
};

/// Checks one server string and returns it in c-ares's CSV syntax; throws fwd::error
/// (errc::bad_argument) with what to write instead.
inline std::string cares_server_csv_entry(const std::string& server) {
  const auto fail = [&server] {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("bad DNS server \"{}\": write an IP address with an optional "
                                 "port, e.g. \"10.0.0.2\", \"127.0.0.1:5353\" or "
                                 "\"[fd00::2]:53\" (names are not resolved)",
                                 server));
  };
  std::string host = server;
  std::string port;
  if (!server.empty() && server.front() == '[') {
    const auto close = server.find(']');
    if (close == std::string::npos) fail();
    host = server.substr(1, close - 1);
    if (close + 1 < server.size()) {
      if (server[close + 1] != ':') fail();
      port = server.substr(close + 2);
    }
  } else if (std::count(server.begin(), server.end(), ':') == 1) {
    const auto colon = server.find(':');
    host = server.substr(0, colon);
    port = server.substr(colon + 1);
  }
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(host, ec);
  if (ec) fail();
  if (!port.empty()) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) fail();
    const long value = std::stol(port);
    if (value < 1 || value > 65535) fail();
  }
  const std::string host_part =
      address.is_v6() ? fmt::format("[{}]", address.to_string()) : address.to_string();
  return port.empty() ? host_part : fmt::format("{}:{}", host_part, port);
}

/// One c-ares channel on a strand. Every member function must be called on that strand;
/// c-ares's callbacks (query completions, socket state) run on it too.
class cares_channel : public std::enable_shared_from_this<cares_channel> {
 public:
  using strand_type = boost::asio::strand<boost::asio::any_io_executor>;
  /// Called once per query with c-ares's status and, on success, the records.
  using answer_callback = dns_answer_callback;

  /// Creates a channel; throws fwd::error on bad options or when c-ares cannot start.
  static std::shared_ptr<cares_channel> create(strand_type strand,
                                               const cares_channel_options& options) {
    cares_library_init();
    std::string csv;
    for (const auto& server : options.servers) {
      if (!csv.empty()) csv += ',';
      csv += cares_server_csv_entry(server);
    }
    auto channel = std::shared_ptr<cares_channel>(new cares_channel(std::move(strand)));
    ares_options opts{};
    opts.sock_state_cb = &cares_channel::on_socket_state;
    opts.sock_state_cb_data = channel.get();
    opts.timeout = static_cast<int>(options.timeout.count());
    opts.tries = options.tries;
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
#if defined(ARES_OPT_QUERY_CACHE)
    opts.qcache_max_ttl = 0;  // no cache: every poll asks the server
    mask |= ARES_OPT_QUERY_CACHE;
#endif
    if (options.servers.empty() && !options.resolv_conf.empty()) {
      opts.resolvconf_path = const_cast<char*>(options.resolv_conf.c_str());  // copied
      mask |= ARES_OPT_RESOLVCONF;
    }
    if (options.servers.empty() && options.resolv_conf_port != 0) {
      opts.udp_port = options.resolv_conf_port;
      opts.tcp_port = options.resolv_conf_port;
      mask |= ARES_OPT_UDP_PORT | ARES_OPT_TCP_PORT;
    }
    int status = ares_init_options(&channel->channel_, &opts, mask);
    if (status != ARES_SUCCESS) {
      channel->channel_ = nullptr;
      throw fwd::error(make_dns_error(status), "ares_init_options failed");
    }
    if (!csv.empty()) {
      status = ares_set_servers_ports_csv(channel->channel_, csv.c_str());
      if (status != ARES_SUCCESS) {
        throw fwd::error(make_dns_error(status), fmt::format("ares_set_servers_ports_csv(\"{}\")", csv));
      }
    }
    return channel;
  }

  cares_channel(const cares_channel&) = delete;
  cares_channel& operator=(const cares_channel&) = delete;

  /// Pending queries complete with ARES_EDESTRUCTION, inside the destructor.
  ~cares_channel() {
    if (channel_ != nullptr) ares_destroy(channel_);  // calls on_socket_state(fd, 0, 0)
    for (auto& [fd, watcher] : watchers_) release(*watcher);
  }

  const strand_type& strand() const noexcept { return strand_; }

  /// Sends a query of `type` (ns_t_a, ns_t_aaaa, ns_t_srv) for `name`, class IN; `search`
  /// applies the resolver's search domains (ares_search) rather than the name as given
  /// (ares_query). `callback` may run inside this call when c-ares fails at once.
  void query(const std::string& name, int type, bool search, answer_callback callback) {
    ++pending_;
    cares_api::send(channel_, name, type, search,
                    [this, callback = std::move(callback)](int status,
                                                           std::vector<dns_record>&& records) {
                      --pending_;
                      callback(status, std::move(records));
                    });
    arm_timeout();
  }

  /// How many queries have not completed yet.
  std::size_t pending() const noexcept { return pending_; }

  /// Completes every pending query with ARES_ECANCELLED, inside this call.
  void cancel() {
    ares_cancel(channel_);
    arm_timeout();
  }

  /// How many sockets c-ares has open now (for tests and diagnostics).
  std::size_t open_sockets() const noexcept { return watchers_.size(); }

 private:
  struct socket_watcher {
    explicit socket_watcher(const strand_type& strand) : descriptor(strand) {}
    boost::asio::posix::stream_descriptor descriptor;
    int fd = -1;
    bool want_read = false;
    bool want_write = false;
    bool read_pending = false;
    bool write_pending = false;
    bool closed = false;
  };

  explicit cares_channel(strand_type strand) : strand_(std::move(strand)), timer_(strand_) {}

  static void on_socket_state(void* data, ares_socket_t fd, int readable, int writable) {
    static_cast<cares_channel*>(data)->update_watch(fd, readable != 0, writable != 0);
  }

  static void release(socket_watcher& watcher) {
    if (watcher.closed) return;
    watcher.closed = true;
    // release() deregisters the fd from the reactor (pending waits complete with
    // operation_aborted) and leaves it open: c-ares closes it right after this callback.
    if (watcher.descriptor.is_open()) watcher.descriptor.release();
  }

  void update_watch(int fd, bool readable, bool writable) {
    auto found = watchers_.find(fd);
    if (!readable && !writable) {
      if (found != watchers_.end()) {
        release(*found->second);
        watchers_.erase(found);
      }
      return;
    }
    if (found == watchers_.end()) {
      auto watcher = std::make_shared<socket_watcher>(strand_);
      watcher->fd = fd;
      boost::system::error_code ec;
      watcher->descriptor.assign(fd, ec);
      if (ec) {
        // The reactor refused the fd: c-ares's own timeout will fail the query, so the
        // caller still gets an answer; nothing is watched for this socket.
        watcher->closed = true;
      }
      found = watchers_.emplace(fd, std::move(watcher)).first;
    }
    auto& watcher = found->second;
    watcher->want_read = readable;
    watcher->want_write = writable;
    arm_waits(watcher);
  }

  void arm_waits(const std::shared_ptr<socket_watcher>& watcher) {
    if (watcher->closed) return;
    if (watcher->want_read && !watcher->read_pending) {
      watcher->read_pending = true;
      watcher->descriptor.async_wait(
          boost::asio::posix::descriptor_base::wait_read,
          boost::asio::bind_executor(
              strand_, [self = shared_from_this(), watcher](const boost::system::error_code& ec) {
                watcher->read_pending = false;
                if (watcher->closed || ec == boost::asio::error::operation_aborted) return;
                if (watcher->want_read) self->process(watcher->fd, ARES_SOCKET_BAD);
                self->arm_waits(watcher);
              }));
    }
    if (watcher->want_write && !watcher->write_pending) {
      watcher->write_pending = true;
      watcher->descriptor.async_wait(
          boost::asio::posix::descriptor_base::wait_write,
          boost::asio::bind_executor(
              strand_, [self = shared_from_this(), watcher](const boost::system::error_code& ec) {
                watcher->write_pending = false;
                if (watcher->closed || ec == boost::asio::error::operation_aborted) return;
                if (watcher->want_write) self->process(ARES_SOCKET_BAD, watcher->fd);
                self->arm_waits(watcher);
              }));
    }
  }

  void process(ares_socket_t read_fd, ares_socket_t write_fd) {
    cares_api::process(channel_, read_fd, write_fd);
    arm_timeout();
  }

  // Sets the timer to c-ares's next timeout, or leaves it idle when nothing is pending.
  void arm_timeout() {
    timeval tv{};
    const timeval* next = ares_timeout(channel_, nullptr, &tv);
    const std::uint64_t generation = ++timer_generation_;
    if (next == nullptr) {
      timer_.cancel();
      return;
    }
    timer_.expires_after(std::chrono::seconds(next->tv_sec) +
                         std::chrono::microseconds(next->tv_usec));
    timer_.async_wait(boost::asio::bind_executor(
        strand_, [self = shared_from_this(), generation](const boost::system::error_code& ec) {
          if (ec || generation != self->timer_generation_) return;
          self->process(ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // handles the expired queries
        }));
  }

  ares_channel channel_ = nullptr;
  strand_type strand_;
  boost::asio::steady_timer timer_;
  std::uint64_t timer_generation_ = 0;
  std::size_t pending_ = 0;
  std::unordered_map<int, std::shared_ptr<socket_watcher>> watchers_;
};

}  // namespace fwd::detail

// ---- end fwd/detail/cares_channel.hpp ----
// ---- begin fwd/detail/cares_resolve.hpp ----

// One resolution round over several DNS sources on a cares_channel: A and AAAA of a name
// (with a fixed port), or SRV of a name (each target's A and AAAA, with the SRV port).
// Every source ends with what it found and whether its answer was definitive: an answer
// is definitive when every query got one (records, "no such record" or NXDOMAIN), and
// not when a query failed (timeout, refused, SERVFAIL, malformed answer, cancelled).

#include <ares.h>

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <functional>
#include <fmt/format.h>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fwd::detail {

struct dns_query_spec {
  bool srv = false;  ///< SRV records of `name`, else A/AAAA of `name`
  std::string name;
  std::uint16_t port = 0;  ///< for A/AAAA
};

struct dns_found_address {
  std::string host;  ///< the name the address belongs to (the SRV target for SRV)
  boost::asio::ip::address address;
  std::uint16_t port = 0;
};

struct dns_source_answer {
  bool definitive = true;
  std::vector<dns_found_address> found;
  /// The first failed query (definitive == false), or, when nothing was found, why
  /// (ARES_ENOTFOUND before ARES_ENODATA); empty otherwise.
  boost::system::error_code error;
  std::string failed_query;  ///< e.g. "AAAA node1.cluster.test"
  /// The shortest TTL of the records found (seconds), when the answer carried TTLs.
  std::optional<std::uint32_t> min_ttl;

  // While the round runs: the best "empty" status seen, for when nothing is found.
  int empty_status = ARES_SUCCESS;
  std::string empty_query;
};

/// A round of queries; `done` runs on the channel's strand once every query has
/// answered, unless the channel is destroyed first (then nothing runs).
class dns_resolve_round : public std::enable_shared_from_this<dns_resolve_round> {
 public:
  using done_callback = std::function<void(std::vector<dns_source_answer>&&)>;

  dns_resolve_round(cares_channel* channel, std::vector<dns_query_spec> specs, bool ipv4, bool ipv6,
                    done_callback done)
      : channel_(channel),
        specs_(std::move(specs)),
        ipv4_(ipv4),
        ipv6_(ipv6),
        answers_(specs_.size()),
        done_(std::move(done)) {}

  /// Must run on the channel's strand.
  void start() {
    ++outstanding_;  // held until every query is sent, so `done` cannot run early
    for (std::size_t i = 0; i < specs_.size(); ++i) {
      const auto& spec = specs_[i];
      if (spec.srv) {
        send(spec.name, dns_type_srv, true,
             [self = shared_from_this(), i](int status, std::vector<dns_record>&& records) {
               self->on_srv(i, status, std::move(records));
             });
      } else {
        resolve_addresses(i, spec.name, spec.port, true);
      }
    }
    finish_one();
  }

 private:
  void send(const std::string& name, int type, bool search, cares_channel::answer_callback cb) {
    ++outstanding_;
    channel_->query(name, type, search, std::move(cb));
  }

  void resolve_addresses(std::size_t i, const std::string& name, std::uint16_t port, bool search) {
    if (ipv4_) {
      send(name, dns_type_a, search,
           [self = shared_from_this(), i, name, port](int status,
                                                      std::vector<dns_record>&& records) {
             self->on_address(i, name, port, dns_type_a, status, std::move(records));
           });
    }
    if (ipv6_) {
      send(name, dns_type_aaaa, search,
           [self = shared_from_this(), i, name, port](int status,
                                                      std::vector<dns_record>&& records) {
             self->on_address(i, name, port, dns_type_aaaa, status, std::move(records));
           });
    }
  }

  void note(std::size_t i, int status, std::string query) {
    auto& answer = answers_[i];
    if (status == ARES_SUCCESS) return;
    if (status == ARES_EDESTRUCTION) destroyed_ = true;
    if (status == ARES_ENODATA || status == ARES_ENOTFOUND) {
      if (answer.empty_status == ARES_SUCCESS ||
          (answer.empty_status == ARES_ENODATA && status == ARES_ENOTFOUND)) {
        answer.empty_status = status;
        answer.empty_query = std::move(query);
      }
      return;
    }
    if (answer.definitive) {
      answer.definitive = false;
      answer.error = make_dns_error(status);
      answer.failed_query = std::move(query);
    }
  }

  void note_ttl(std::size_t i, const dns_record& record) {
    if (!record.ttl) return;
    auto& min_ttl = answers_[i].min_ttl;
    min_ttl = min_ttl ? std::min(*min_ttl, *record.ttl) : *record.ttl;
  }

  void on_address(std::size_t i, const std::string& name, std::uint16_t port, int type, int status,
                  std::vector<dns_record>&& records) {
    for (const auto& record : records) {
      answers_[i].found.push_back({name, record.address, port});
      note_ttl(i, record);
    }
    note(i, status, (type == dns_type_a ? "A " : "AAAA ") + name);
    finish_one();
  }

  void on_srv(std::size_t i, int status, std::vector<dns_record>&& records) {
    std::vector<std::pair<std::string, std::uint16_t>> targets;
    for (const auto& record : records) {
      // A target of "." says the service is deliberately not offered there.
      if (!record.target.empty() && record.target != ".") {
        targets.emplace_back(record.target, record.port);
        note_ttl(i, record);
      }
    }
    if (status == ARES_SUCCESS && targets.empty()) status = ARES_ENODATA;
    if (!destroyed_) {
      for (const auto& [target, port] : targets) resolve_addresses(i, target, port, false);
    }
    note(i, status, fmt::format("SRV {}", specs_[i].name));
    finish_one();
  }

  void finish_one() {
    if (--outstanding_ > 0) return;
    if (destroyed_) return;  // the channel is being destroyed: nobody waits for this round
    for (auto& answer : answers_) {
      if (answer.definitive && answer.found.empty() && answer.empty_status != ARES_SUCCESS) {
        answer.error = make_dns_error(answer.empty_status);
        answer.failed_query = answer.empty_query;
      }
    }
    auto done = std::move(done_);
    done(std::move(answers_));
  }

  cares_channel* channel_;  // alive while queries are pending: it owns them
  std::vector<dns_query_spec> specs_;
  bool ipv4_;
  bool ipv6_;
  std::vector<dns_source_answer> answers_;
  done_callback done_;
  std::size_t outstanding_ = 0;
  bool destroyed_ = false;
};

}  // namespace fwd::detail

// ---- end fwd/detail/cares_resolve.hpp ----
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fwd {

/// A cluster member: the name it was found under and the address fwd connects to.
/// Members are equal, ordered and hashed by `endpoint` only.
struct member {
  std::string host;  ///< the DNS name (SRV target for SRV), or a static member's label
  boost::asio::ip::tcp::endpoint endpoint;

  friend bool operator==(const member& a, const member& b) noexcept {
    return a.endpoint == b.endpoint;
  }
  friend bool operator<(const member& a, const member& b) noexcept {
    return a.endpoint < b.endpoint;
  }
  friend std::ostream& operator<<(std::ostream& out, const member& m) {
    return out << m.host << " (" << m.endpoint << ")";
  }
};

/// "host (address:port)".
inline std::string to_string(const member& m) {
  const auto address = m.endpoint.address();
  return address.is_v6() ? fmt::format("{} ([{}]:{})", m.host, address.to_string(), m.endpoint.port())
                         : fmt::format("{} ({}:{})", m.host, address.to_string(), m.endpoint.port());
}

/// Hashes a member by its endpoint.
struct member_hash {
  std::size_t operator()(const member& m) const noexcept {
    return std::hash<boost::asio::ip::tcp::endpoint>{}(m.endpoint);
  }
};

/// A DNS name whose records are cluster members.
struct dns_source {
  enum class record_type {
    address,  ///< A and AAAA records of `name`, each member on `port`
    srv,      ///< SRV records of `name`: each target's A and AAAA, on the record's port
  };
  record_type type = record_type::address;
  std::string name;
  std::uint16_t port = 0;  ///< for `address`

  /// A and AAAA records of `name`, every member listening on `port`.
  static dns_source address(std::string name, std::uint16_t port) {
    return {record_type::address, std::move(name), port};
  }
  /// SRV records of `name` (e.g. "_fwd._tcp.cluster.internal").
  static dns_source srv(std::string name) { return {record_type::srv, std::move(name), 0}; }
};

/// One change of the member set.
struct membership_event {
  enum class kind { joined, left };
  kind what;
  member who;
};

/// The member set at one moment. Immutable once published.
struct membership_snapshot {
  /// 0 until the first poll has completed; then +1 at each change.
  std::uint64_t version = 0;
  /// Current members, sorted by endpoint.
  std::vector<member> members;
  /// The events that turned the previous version into this one.
  std::vector<membership_event> changes;

  bool contains(const boost::asio::ip::tcp::endpoint& endpoint) const noexcept {
    for (const auto& m : members) {
      if (m.endpoint == endpoint) return true;
    }
    return false;
  }
};

using membership_snapshot_ptr = std::shared_ptr<const membership_snapshot>;

/// Telemetry hooks; each runs on the membership's strand and must not block. Unset hooks
/// cost nothing.
struct membership_hooks {
  std::function<void(const member&)> on_joined;
  std::function<void(const member&)> on_left;
  /// A DNS query failed, or a name answered NXDOMAIN or no records; `message` says which
  /// query and what is done about it (members kept, or counted towards removal).
  std::function<void(const boost::system::error_code&, std::string_view message)> on_resolve_error;
};

struct membership_options {
  /// DNS names to poll; may be combined with `static_members`.
  std::vector<dns_source> dns;
  /// Members that are always present (never removed by DNS answers).
  std::vector<member> static_members;
  /// DNS servers as "ip", "ip:port" or "[ipv6]:port"; empty: the servers and search
  /// domains of `resolv_conf`.
  std::vector<std::string> dns_servers;
  /// The resolver configuration used when `dns_servers` is empty; empty: /etc/resolv.conf.
  /// Its content is compared before every poll: a change (other nameservers, search
  /// domains) takes effect at that poll.
  std::string resolv_conf;
  /// The port of the nameservers `resolv_conf` names (its syntax has none); 0: 53.
  std::uint16_t resolv_conf_port = 0;
  /// The longest time between the end of one poll and the start of the next. When the
  /// records found carry a shorter TTL (above 0 s), the next poll comes when it ends, so
  /// that a change in DNS is seen within the records' TTL. Answers are never cached.
  std::chrono::milliseconds poll_interval{std::chrono::seconds(5)};
  /// c-ares's timeout for one try of one query, and how many tries.
  std::chrono::milliseconds query_timeout{std::chrono::seconds(2)};
  int query_tries = 2;
  /// A member left out of this many consecutive definitive answers is removed.
  unsigned remove_after_polls = 3;
  /// If non-zero, a member left out of definitive answers for this long is removed too,
  /// even before `remove_after_polls` answers.
  std::chrono::milliseconds remove_after{0};
  /// Which address families to look up.
  bool ipv4 = true;
  bool ipv6 = true;
  membership_hooks hooks;
};

}  // namespace fwd

template <>
struct std::hash<fwd::member> {
  std::size_t operator()(const fwd::member& m) const noexcept { return fwd::member_hash{}(m); }
};

// ---- end fwd/cluster/membership_types.hpp ----
// ---- begin fwd/cluster/membership.hpp ----

// Who is in the cluster: members found in DNS (A/AAAA of a name with a port, or SRV
// records) polled with c-ares on the Asio reactor, a static list, or both. Changes are
// told as joined/left events; a snapshot of the current members costs an atomic load.
//
// A failed, empty or partial DNS answer does not drop members: a member found before is
// removed only after `remove_after_polls` consecutive definitive answers (records, "no
// such record" or NXDOMAIN) that leave it out, or once it has been left out for the
// `remove_after` grace period. A failed query (timeout, refused, SERVFAIL) counts for
// nothing (it neither counts towards removal nor resets the count): the last good set is
// kept and the failure goes to the `on_resolve_error` hook, as do NXDOMAIN and empty
// answers.

// ---- begin fwd/cluster/detail/membership_impl.hpp ----

// The state and work of a membership: DNS polling on a strand, the snapshot, and the
// pending async_wait_change and async_resolve_once operations.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>
#include <chrono>
#include <cstdint>
#include <functional>
// ---- begin fwd/detail/cares_reload.hpp ----

// A c-ares channel that follows its resolver configuration. c-ares reads resolv.conf
// once, when a channel is created (only its own event thread, which fwd does not use
// since the Asio reactor drives the sockets, reloads it by itself). So fwd compares the
// file's content before each round and, when it changed, builds a new channel from it;
// queries pending on the replaced channel finish there, and it is dropped after.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/strand.hpp>

#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fwd::detail {

class cares_reloading_channel {
 public:
  using strand_type = cares_channel::strand_type;

  /// Throws fwd::error like cares_channel::create.
  cares_reloading_channel(strand_type strand, cares_channel_options options)
      : strand_(std::move(strand)), options_(std::move(options)) {
    if (options_.servers.empty()) {
      watched_ = options_.resolv_conf.empty() ? std::string("/etc/resolv.conf") : options_.resolv_conf;
      content_ = read(watched_);  // read before c-ares does: a change in between is seen later
    }
    current_ = cares_channel::create(strand_, options_);
  }

  cares_reloading_channel(const cares_reloading_channel&) = delete;
  cares_reloading_channel& operator=(const cares_reloading_channel&) = delete;

  /// The channel new queries go to. Must be used on the strand, like everything here.
  cares_channel* get() const noexcept { return current_.get(); }

  /// The file whose changes are followed; empty with explicit servers.
  const std::string& watched() const noexcept { return watched_; }

  /// Re-reads the configuration and replaces the channel when its content changed (an
  /// unreadable file changes nothing). Returns whether it replaced the channel; throws
  /// fwd::error when the new channel cannot be created, and then keeps the old one and
  /// tries again at the next call.
  bool refresh() {
    std::erase_if(retired_, [](const auto& channel) { return channel->pending() == 0; });
    if (watched_.empty()) return false;
    auto content = read(watched_);
    if (!content || content == content_) return false;
    auto replacement = cares_channel::create(strand_, options_);
    if (current_->pending() > 0) retired_.push_back(std::move(current_));
    current_ = std::move(replacement);
    content_ = std::move(content);
    return true;
  }

  /// Completes every pending query, on every channel, with ARES_ECANCELLED.
  void cancel() {
    current_->cancel();
    for (auto& channel : retired_) channel->cancel();
  }

 private:
  static std::optional<std::string> read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    if (in.bad()) return std::nullopt;
    return text;
  }

  strand_type strand_;
  cares_channel_options options_;
  std::string watched_;
  std::optional<std::string> content_;
  std::shared_ptr<cares_channel> current_;
  std::vector<std::shared_ptr<cares_channel>> retired_;  // replaced, queries still pending
};

}  // namespace fwd::detail

// ---- end fwd/detail/cares_reload.hpp ----
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fwd {

namespace detail {

inline std::string describe(const dns_source& source) {
  if (source.type == dns_source::record_type::srv) return fmt::format("SRV records of {}", source.name);
  return fmt::format("A/AAAA records of {} (port {})", source.name, source.port);
}

class membership_impl : public std::enable_shared_from_this<membership_impl> {
 public:
  using strand_type = boost::asio::strand<boost::asio::any_io_executor>;
  using wait_completion =
      fwd::detail::pending_completion<void(boost::system::error_code, membership_snapshot_ptr)>;
  using resolve_completion =
      fwd::detail::pending_completion<void(boost::system::error_code, std::vector<member>)>;

  membership_impl(boost::asio::any_io_executor executor, membership_options options)
      : executor_(executor),
        strand_(boost::asio::make_strand(executor)),
        options_(std::move(options)),
        poll_timer_(strand_),
        snapshot_(std::make_shared<const membership_snapshot>()),
        tracked_(options_.dns.size()) {
    validate();
    for (const auto& source : options_.dns) {
      specs_.push_back({source.type == dns_source::record_type::srv, source.name, source.port});
    }
    if (!options_.dns.empty()) {
      channel_ = std::make_unique<cares_reloading_channel>(
          strand_, cares_channel_options{options_.dns_servers, options_.resolv_conf,
                                         options_.resolv_conf_port, options_.query_timeout,
                                         options_.query_tries});
    }
  }

  const boost::asio::any_io_executor& executor() const noexcept { return executor_; }

  membership_snapshot_ptr snapshot() const noexcept {
    return snapshot_.load(std::memory_order_acquire);
  }

  void start() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      if (self->polling_) return;
      self->polling_ = true;
      self->poll(++self->poll_generation_);
    });
  }

  void stop() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      self->polling_ = false;
      ++self->poll_generation_;
      self->poll_timer_.cancel();
      if (self->channel_) self->channel_->cancel();  // pending rounds end with ECANCELLED
      auto waiters = std::move(self->waiters_);
      self->waiters_.clear();
      for (auto& [id, w] : waiters) self->finish_wait(w, boost::asio::error::operation_aborted);
    });
  }

  template <class Handler>
  void initiate_resolve_once(Handler&& handler) {
    auto op = std::make_shared<resolve_op>();
    op->completion = resolve_completion(std::forward<Handler>(handler), executor_);
    if (auto slot = op->completion.slot(); slot.is_connected()) {
      // A weak reference: the slot belongs to the handler the operation holds.
      slot.assign([weak = weak_from_this(), weak_op = std::weak_ptr<resolve_op>(op)](
                      boost::asio::cancellation_type type) {
        if (!(type &
              (boost::asio::cancellation_type::terminal | boost::asio::cancellation_type::partial |
               boost::asio::cancellation_type::total))) {
          return;
        }
        auto self = weak.lock();
        auto op = weak_op.lock();
        if (self && op) {
          boost::asio::post(self->strand_, [op] {
            finish_resolve(*op, boost::asio::error::operation_aborted, {});
          });
        }
      });
    }
    boost::asio::post(strand_, [self = shared_from_this(), op] {
      if (!op->completion) return;  // cancelled before it started
      self->resolve([weak = self->weak_from_this(), op](std::vector<dns_source_answer>&& answers) {
        auto self = weak.lock();
        if (!self) return;
        boost::system::error_code ec;
        for (const auto& answer : answers) {
          if (answer.error == make_dns_error(ARES_ECANCELLED)) {
            ec = boost::asio::error::operation_aborted;
            break;
          }
          if (!ec && answer.error) ec = answer.error;
        }
        std::vector<member> members;
        for (auto& [endpoint, m] : self->merge(answers)) members.push_back(std::move(m));
        finish_resolve(*op, ec, std::move(members));
      });
    });
  }

  template <class Handler>
  void initiate_wait_change(Handler&& handler, std::uint64_t after_version) {
    const std::uint64_t id = next_waiter_id_.fetch_add(1, std::memory_order_relaxed);
    waiter w;
    w.after_version = after_version;
    w.completion = wait_completion(std::forward<Handler>(handler), executor_);
    if (auto slot = w.completion.slot(); slot.is_connected()) {
      slot.assign([weak = weak_from_this(), id](boost::asio::cancellation_type type) {
        if (!(type &
              (boost::asio::cancellation_type::terminal | boost::asio::cancellation_type::partial |
               boost::asio::cancellation_type::total))) {
          return;
        }
        if (auto self = weak.lock()) {
          boost::asio::post(self->strand_, [self, id] {
            auto found = self->waiters_.find(id);
            if (found == self->waiters_.end()) return;
            auto w = std::move(found->second);
            self->waiters_.erase(found);
            self->finish_wait(w, boost::asio::error::operation_aborted);
          });
        }
      });
    }
    boost::asio::post(strand_, [self = shared_from_this(), id, w = std::move(w)]() mutable {
      if (self->snapshot()->version > w.after_version) {
        self->finish_wait(w, {});
      } else {
        self->waiters_.emplace(id, std::move(w));
      }
    });
  }

 private:
  struct tracked_member {
    member who;
    unsigned missed_polls = 0;
    std::chrono::steady_clock::time_point first_missed{};
  };

  struct waiter {
    std::uint64_t after_version = 0;
    wait_completion completion;
  };

  struct resolve_op {
    resolve_completion completion;
  };

  static void finish_resolve(resolve_op& op, boost::system::error_code ec,
                             std::vector<member> members) {
    op.completion.post(ec, std::move(members));
  }

  void finish_wait(waiter& w, boost::system::error_code ec) {
    if (!w.completion) return;
    w.completion.post(ec, ec ? membership_snapshot_ptr{} : snapshot());
  }

  void validate() const {
    const auto bad = [](const std::string& what) {
      throw fwd::error(make_error_code(errc::bad_argument), fmt::format("membership_options: {}", what));
    };
    for (const auto& source : options_.dns) {
      if (source.name.empty()) bad("a DNS source has an empty name: give the cluster's DNS name");
      if (source.type == dns_source::record_type::address && source.port == 0) {
        bad(fmt::format("DNS source {} has port 0: give the port members listen on", source.name));
      }
    }
    if (options_.poll_interval <= std::chrono::milliseconds::zero()) {
      bad("poll_interval must be positive");
    }
    if (options_.query_timeout <= std::chrono::milliseconds::zero() || options_.query_tries < 1) {
      bad("query_timeout must be positive and query_tries at least 1");
    }
    if (!options_.ipv4 && !options_.ipv6) bad("enable ipv4, ipv6 or both");
  }

  // Resolves every DNS source once; `done` runs on the strand.
  void resolve(std::function<void(std::vector<dns_source_answer>&&)> done) {
    if (!channel_) {
      done({});
      return;
    }
    try {
      channel_->refresh();
    } catch (const fwd::error& e) {
      report(e.code(), fmt::format("{} changed but c-ares cannot use it ({}); the previous "
                                   "configuration is kept",
                                   channel_->watched(), e.what()));
    }
    std::make_shared<dns_resolve_round>(channel_->get(), specs_, options_.ipv4, options_.ipv6,
                                        std::move(done))
        ->start();
  }

  // Static members and what the answers found, by endpoint.
  std::map<boost::asio::ip::tcp::endpoint, member> merge(
      const std::vector<dns_source_answer>& answers) const {
    std::map<boost::asio::ip::tcp::endpoint, member> merged;
    for (const auto& m : options_.static_members) merged.emplace(m.endpoint, m);
    for (const auto& answer : answers) {
      for (const auto& found : answer.found) {
        boost::asio::ip::tcp::endpoint endpoint(found.address, found.port);
        merged.emplace(endpoint, member{found.host, endpoint});
      }
    }
    return merged;
  }

  void poll(std::uint64_t generation) {
    resolve([weak = weak_from_this(), generation](std::vector<dns_source_answer>&& answers) {
      auto self = weak.lock();
      if (!self || !self->polling_ || generation != self->poll_generation_) return;
      self->apply(answers);
      if (!self->channel_) return;  // a static list alone never changes: nothing to poll
      self->poll_timer_.expires_after(self->next_poll_delay(answers));
      self->poll_timer_.async_wait(boost::asio::bind_executor(
          self->strand_, [weak, generation](const boost::system::error_code& ec) {
            auto self = weak.lock();
            if (ec || !self || !self->polling_ || generation != self->poll_generation_) return;
            self->poll(generation);
          }));
    });
  }

  // poll_interval, or sooner when a record found expires sooner (a TTL of 0 sets no bound).
  std::chrono::milliseconds next_poll_delay(const std::vector<dns_source_answer>& answers) const {
    auto delay = options_.poll_interval;
    for (const auto& answer : answers) {
      if (answer.min_ttl && *answer.min_ttl > 0) {
        delay = std::min<std::chrono::milliseconds>(delay, std::chrono::seconds(*answer.min_ttl));
      }
    }
    return delay;
  }

  void report(const boost::system::error_code& ec, const std::string& message) {
    // Runs inside c-ares's callback: nothing may unwind through its C frames.
    fwd::detail::invoke_hook(options_.hooks.on_resolve_error, ec, message);
  }

  // Folds one poll's answers into the tracked members and publishes what changed.
  void apply(const std::vector<dns_source_answer>& answers) {
    const auto now = std::chrono::steady_clock::now();
    const unsigned polls_to_remove = std::max(1u, options_.remove_after_polls);
    for (std::size_t i = 0; i < answers.size(); ++i) {
      const auto& answer = answers[i];
      auto& tracked = tracked_[i];
      const std::string what = describe(options_.dns[i]);
      if (!answer.definitive) {
        report(answer.error,
               fmt::format("DNS query {} for {} failed: {}; keeping the {} member(s) of the last good answer",
                           answer.failed_query, what, answer.error.message(), tracked.size()));
        continue;
      }
      if (answer.error) {
        report(answer.error, fmt::format("DNS query {} for {} found no member: {}; {} member(s) are removed "
                                         "after {} such answer(s)",
                                         answer.failed_query, what, answer.error.message(), tracked.size(),
                                         polls_to_remove));
      }
      std::unordered_map<boost::asio::ip::tcp::endpoint, const dns_found_address*> found;
      for (const auto& f : answer.found) {
        found.emplace(boost::asio::ip::tcp::endpoint(f.address, f.port), &f);
      }
      for (const auto& [endpoint, f] : found) {
        tracked[endpoint] = tracked_member{member{f->host, endpoint}, 0, {}};
      }
      for (auto it = tracked.begin(); it != tracked.end();) {
        auto& t = it->second;
        if (found.count(it->first) != 0) {
          ++it;
          continue;
        }
        if (t.missed_polls++ == 0) t.first_missed = now;
        const bool grace_over = options_.remove_after > std::chrono::milliseconds::zero() &&
                                now - t.first_missed >= options_.remove_after;
        if (t.missed_polls >= polls_to_remove || grace_over) {
          it = tracked.erase(it);
        } else {
          ++it;
        }
      }
    }

    std::map<boost::asio::ip::tcp::endpoint, member> next;
    for (const auto& m : options_.static_members) next.emplace(m.endpoint, m);
    for (const auto& tracked : tracked_) {
      for (const auto& [endpoint, t] : tracked) next.emplace(endpoint, t.who);
    }

    const auto previous = snapshot();
    std::vector<membership_event> changes;
    for (const auto& m : previous->members) {
      if (next.count(m.endpoint) == 0) changes.push_back({membership_event::kind::left, m});
    }
    for (const auto& [endpoint, m] : next) {
      if (!previous->contains(endpoint)) changes.push_back({membership_event::kind::joined, m});
    }
    if (changes.empty() && previous->version != 0) return;

    auto published = std::make_shared<membership_snapshot>();
    published->version = previous->version + 1;
    for (auto& [endpoint, m] : next) published->members.push_back(std::move(m));
    published->changes = std::move(changes);
    snapshot_.store(published, std::memory_order_release);

    for (const auto& event : published->changes) {
      const auto& hook = event.what == membership_event::kind::joined ? options_.hooks.on_joined
                                                                      : options_.hooks.on_left;
      fwd::detail::invoke_hook(hook, event.who);
    }
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (published->version > it->second.after_version) {
        finish_wait(it->second, {});
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }

  boost::asio::any_io_executor executor_;
  strand_type strand_;
  membership_options options_;
  std::vector<dns_query_spec> specs_;
  std::unique_ptr<cares_reloading_channel> channel_;
  boost::asio::steady_timer poll_timer_;
  std::atomic<membership_snapshot_ptr> snapshot_;
  // Per DNS source: the members its answers found, with how often they were missed since.
  std::vector<std::unordered_map<boost::asio::ip::tcp::endpoint, tracked_member>> tracked_;
  std::map<std::uint64_t, waiter> waiters_;
  std::atomic<std::uint64_t> next_waiter_id_{1};
  bool polling_ = false;
  std::uint64_t poll_generation_ = 0;
};

}  // namespace detail

}  // namespace fwd

// ---- end fwd/cluster/detail/membership_impl.hpp ----

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace fwd {

/**
 * Cluster membership: polls DNS and/or holds a static list, tells joins and leaves, and
 * keeps a snapshot of the current members.
 *
 * Thread safety: every member function may be called from any thread. Hooks and the
 * internal work run on a strand of the given executor; completion handlers run through
 * their own associated executor (default: the membership's executor).
 *
 * Destroying the membership stops it: pending operations complete with
 * `boost::asio::error::operation_aborted` (the executor must still run for that).
 */
class membership {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Throws fwd::error (errc::bad_argument) on invalid options, e.g. a malformed DNS
  /// server, and a "fwd.dns" error when c-ares cannot initialise.
  membership(executor_type executor, membership_options options)
      : impl_(std::make_shared<detail::membership_impl>(std::move(executor), std::move(options))) {}

  membership(const membership&) = delete;
  membership& operator=(const membership&) = delete;
  membership(membership&&) noexcept = default;
  membership& operator=(membership&& other) noexcept {
    if (this != &other) {
      if (impl_) impl_->stop();
      impl_ = std::move(other.impl_);
    }
    return *this;
  }

  ~membership() {
    if (impl_) impl_->stop();
  }

  executor_type get_executor() const noexcept { return impl_->executor(); }

  /// Starts polling (the first poll at once). Static members are published with the
  /// first poll's result. Calling it while polling does nothing.
  void start() { impl_->start(); }

  /// Stops polling; pending `async_wait_change` and `async_resolve_once` operations
  /// complete with `operation_aborted`. The snapshot keeps its last value; `start()`
  /// resumes.
  void stop() { impl_->stop(); }

  /// The current member set; never null (version 0 before the first poll). Cheap: an
  /// atomic load of a shared pointer.
  membership_snapshot_ptr snapshot() const noexcept { return impl_->snapshot(); }

  /// The current members, sorted by endpoint.
  std::vector<member> members() const { return snapshot()->members; }

  /**
   * Resolves every source once, now, without changing the membership's state.
   *
   * Completion signature: `void(boost::system::error_code, std::vector<member>)`: the
   * static members and what DNS found, sorted by endpoint. The error is the first
   * failed source's ("fwd.dns" category, c-ares's status: ARES_ENOTFOUND for NXDOMAIN,
   * ARES_ETIMEOUT, ARES_ECONNREFUSED, ...); the members of the other sources are still
   * given.
   *
   * **Per-Operation Cancellation**: `terminal`, `partial` and `total`: the operation
   * completes with `operation_aborted` and an empty vector; its queries finish in the
   * background and their answers are dropped. `stop()` cancels it too.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void(boost::system::error_code, std::vector<member>))
                CompletionToken>
  auto async_resolve_once(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(boost::system::error_code, std::vector<member>)>(
        [](auto handler, std::shared_ptr<detail::membership_impl> impl) {
          impl->initiate_resolve_once(std::move(handler));
        },
        token, impl_);
  }

  /**
   * Waits until the member set's version is greater than `after_version` (pass the
   * version of the snapshot you hold; 0 waits for the first poll's result).
   *
   * Completion signature: `void(boost::system::error_code, membership_snapshot_ptr)`:
   * the snapshot at completion (its `changes` are those of its own version only; compare
   * snapshots to see everything since `after_version`). Completes at once (still
   * through the handler's executor) when the version is already greater.
   *
   * **Per-Operation Cancellation**: `terminal`, `partial` and `total`: completes with
   * `operation_aborted` and a null snapshot; nothing else changes. `stop()` and the
   * destructor complete it the same way.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void(boost::system::error_code,
                                                 membership_snapshot_ptr)) CompletionToken>
  auto async_wait_change(std::uint64_t after_version, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken,
                                       void(boost::system::error_code, membership_snapshot_ptr)>(
        [](auto handler, std::shared_ptr<detail::membership_impl> impl, std::uint64_t after) {
          impl->initiate_wait_change(std::move(handler), after);
        },
        token, impl_, after_version);
  }

 private:
  std::shared_ptr<detail::membership_impl> impl_;
};

}  // namespace fwd

// ---- end fwd/cluster/membership.hpp ----
// ---- begin fwd/cluster/discovery.hpp ----

// Who is primary. The answer is cached: a lookup that hits the cache is two atomic loads
// and a clock read. When the cache is empty or stale, one refresh runs for all callers
// (single-flight): the local LiteFS role first (the primary needs nobody), then the
// `.primary` hostname mapped to a member through the members' earlier `fwd.hello` answers,
// and only when that does not settle it, a probe of every member in parallel.


#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>

#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace fwd {

/// What a node says of itself when probed (its `fwd.hello` answer).
struct node_status {
  std::string node_name;
  std::string litefs_hostname;
  litefs::role_kind role = litefs::role_kind::unknown;
  std::uint64_t txid = 0;
};

/// A cluster member as discovery sees it: where its fwd server listens.
struct peer {
  std::string name;
  boost::asio::ip::tcp::endpoint endpoint;
  friend bool operator==(const peer&, const peer&) = default;
};

/// Where writes go.
struct primary_location {
  bool local = false;                       ///< this node is the primary
  boost::asio::ip::tcp::endpoint endpoint;  ///< the primary's fwd server, when !local
  std::string litefs_hostname;              ///< its LiteFS hostname, when known
  friend bool operator==(const primary_location&, const primary_location&) = default;
};

/// Observers of discovery; each is optional and costs nothing when unset.
struct discovery_hooks {
  std::function<void(const primary_location& now)> primary_changed;
  std::function<void()> cache_hit;   ///< called on every cached lookup: keep it cheap
  std::function<void()> cache_miss;  ///< a lookup that had to wait for a refresh
  std::function<void(const peer&, const boost::system::error_code&, const node_status&)>
      probe_result;
};

struct discovery_options {
  std::filesystem::path mount;                        ///< the LiteFS FUSE mount, e.g. /litefs
  std::chrono::milliseconds ttl{2000};                ///< how long an answer is trusted
  std::chrono::milliseconds probe_timeout{300};       ///< the deadline of one probe
  std::chrono::milliseconds retry_interval{25};       ///< between rounds that found no primary
  std::chrono::milliseconds role_poll_interval{100};  ///< how often `.primary` is re-read
  std::size_t max_concurrent_probes = 16;
  discovery_hooks hooks;
};

/// Finds the primary and caches the answer. Thread-safe: lookups from any thread; the
/// slow path runs on a strand of the executor given at construction.
class primary_finder : public std::enable_shared_from_this<primary_finder> {
 public:
  using clock = std::chrono::steady_clock;
  using probe_handler = boost::asio::any_completion_handler<void(boost::system::error_code, node_status)>;
  /// Asks one peer who it is, completing by the deadline at the latest.
  using probe_function = std::function<void(const peer&, clock::time_point deadline, probe_handler)>;
  /// Returns the current members (not including this node, or including it: both work).
  using members_function = std::function<std::vector<peer>()>;
  /// Reads the local role; defaults to litefs::current_role(options.mount). One that throws
  /// counts as role `unknown`.
  using role_function = std::function<litefs::role()>;

  static std::shared_ptr<primary_finder> create(boost::asio::any_io_executor ex,
                                                discovery_options options,
                                                members_function members, probe_function probe,
                                                role_function role = {}) {
    return std::shared_ptr<primary_finder>(new primary_finder(
        std::move(ex), std::move(options), std::move(members), std::move(probe), std::move(role)));
  }

  primary_finder(const primary_finder&) = delete;
  primary_finder& operator=(const primary_finder&) = delete;

  /// The cached primary if the cache is fresh, else nullptr. Costs two atomic loads and
  /// a clock read; never blocks. The pointer stays valid as long as the finder.
  const primary_location* cached() const noexcept {
    const primary_location* location = current_.load(std::memory_order_acquire);
    if (location == nullptr) return nullptr;
    if (expiry_clock_ns() >= expires_.load(std::memory_order_relaxed)) {
      return nullptr;
    }
    if (has_hit_hook_) fwd::detail::invoke_hook(options_.hooks.cache_hit);
    return location;
  }

  /// The primary discovery found last, fresh or not (nullptr: none found yet, or forgotten
  /// after a failure). No hook
  /// runs; for reports, not for routing writes.
  const primary_location* last_known() const noexcept {
    return current_.load(std::memory_order_acquire);
  }

  /**
   * Finds the primary, from the cache when it is fresh.
   *
   * Completion signature: `void(boost::system::error_code, primary_location)`.
   * Fails with `errc::no_primary` when no primary is found before `deadline`
   * (`last_failure()` then tells what was tried), `errc::not_litefs` when the mount is not
   * LiteFS. Completes through the handler's associated executor (default: the finder's),
   * never inside this call; that executor has outstanding work until then.
   *
   * **Per-Operation Cancellation**: `terminal` only (`partial` and `total` are ignored):
   * the operation completes with `errc::cancelled`; the refresh it joined goes on for
   * the other callers and still updates the cache.
   */
  template <class Token>
  auto async_find(clock::time_point deadline, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, primary_location)>(
        [self = shared_from_this(), deadline](auto handler) {
          find_completion completion(std::move(handler), self->executor_);
          if (const primary_location* hit = self->cached()) {
            completion.post({}, *hit);
            return;
          }
          self->enqueue(deadline, std::move(completion));
        },
        token);
  }

  /// Forgets the cached primary: the next lookup refreshes. Call it on `not_primary` and
  /// when a connection to the primary fails. The LiteFS hostname -> endpoint entries that
  /// led to that primary are dropped too, so the refresh asks the members again instead
  /// of trusting an address that just failed (e.g. a node that came back on another port).
  void invalidate() noexcept {
    const primary_location* was = current_.exchange(nullptr, std::memory_order_acq_rel);
    expires_.store(0, std::memory_order_relaxed);
    if (was != nullptr && !was->local) {
      std::lock_guard lock(forget_mutex_);
      try {
        forget_.push_back(was->endpoint);
      } catch (...) {
        forget_all_ = true;  // no memory for the list: drop every hostname instead
      }
    }
  }

  /// Starts watching the local `.primary`: a change invalidates the cache at once.
  void start() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->stopped_ = false;
      self->watch_role();
    });
  }

  /// Stops the watch and fails waiting lookups with `errc::cancelled`.
  void stop() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->stopped_ = true;
      self->role_timer_.cancel();
      self->retry_timer_.cancel();
      self->fail_waiters(errc::cancelled, [](const waiter&) { return true; });
    });
  }

  /// Why the last refresh found no primary (what was tried), for error messages.
  std::string last_failure() const {
    std::lock_guard lock(failure_mutex_);
    return last_failure_;
  }

  /// How many probe rounds have run (each probes every member at most once).
  std::uint64_t probe_rounds() const noexcept { return probe_rounds_.load(std::memory_order_relaxed); }

 private:
  // The cache's expiry is read on every lookup: a coarse monotonic clock (a few ms of
  // resolution, a fraction of any sensible TTL) is several times cheaper to read than steady_clock.
  static std::int64_t expiry_clock_ns() noexcept {
#if defined(CLOCK_MONOTONIC_COARSE)
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
#else
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
#endif
  }

  using find_completion =
      fwd::detail::pending_completion<void(boost::system::error_code, primary_location)>;

  struct waiter {
    std::uint64_t id;
    clock::time_point deadline;
    find_completion completion;
  };

  struct round_state {
    std::vector<peer> members;
    std::size_t next = 0;
    std::size_t in_flight = 0;
    std::size_t answered = 0;
    bool done = false;
    litefs::role local;
    clock::time_point latest_deadline;
    std::vector<std::pair<peer, node_status>> claimants;
    std::string tried;
  };

  primary_finder(boost::asio::any_io_executor ex, discovery_options options,
                 members_function members, probe_function probe, role_function role)
      : executor_(std::move(ex)),
        strand_(boost::asio::make_strand(executor_)),
        options_(std::move(options)),
        members_(std::move(members)),
        probe_(std::move(probe)),
        role_(std::move(role)),
        role_timer_(strand_),
        retry_timer_(strand_),
        has_hit_hook_(static_cast<bool>(options_.hooks.cache_hit)) {
    if (!role_) {
      role_ = [mount = options_.mount] { return litefs::current_role(mount); };
    }
  }

  void enqueue(clock::time_point deadline, find_completion completion);

  template <class Predicate>
  void fail_waiters(errc why, Predicate&& which);

  // On the strand. Starts a round unless one runs (single-flight).
  void start_round();

  void launch_probes(const std::shared_ptr<round_state>& round);

  void on_probe(const std::shared_ptr<round_state>& round, const peer& target,
                boost::system::error_code ec, node_status status);

  // A round that found no primary: waiters past their deadline fail, others retry.
  void end_round(const std::shared_ptr<round_state>& round, const std::string& why);

  void finish(primary_location location);

  // Locations are kept for the finder's lifetime, so that cached() can hand out stable
  // pointers without reference counting; a cluster has few distinct primaries.
  const primary_location* intern(primary_location location);

  // The role, the members and a probe come from functions the service may supply: none
  // of them may throw into the strand (a round left half done would wedge every lookup).
  litefs::role local_role() noexcept;

  std::vector<peer> current_members() noexcept;

  // On the strand: drops the hostname entries of the primaries invalidate() gave up on.
  void forget_failed_hostnames() noexcept;

  void record_failure(std::string why);

  void watch_role();

  boost::asio::any_io_executor executor_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  discovery_options options_;
  members_function members_;
  probe_function probe_;
  role_function role_;

  // The cache: read from any thread.
  std::atomic<const primary_location*> current_{nullptr};
  std::atomic<std::int64_t> expires_{0};

  // The slow path: on the strand only.
  boost::asio::steady_timer role_timer_;
  boost::asio::steady_timer retry_timer_;
  std::deque<waiter> waiters_;
  std::shared_ptr<round_state> round_;
  std::map<std::string, boost::asio::ip::tcp::endpoint> hostnames_;
  // Endpoints whose hostname entries invalidate() dropped, applied on the strand.
  std::mutex forget_mutex_;
  std::vector<boost::asio::ip::tcp::endpoint> forget_;
  bool forget_all_ = false;
  std::vector<std::unique_ptr<const primary_location>> locations_;
  const primary_location* last_announced_ = nullptr;
  litefs::role cached_role_;
  bool stopped_ = false;

  std::atomic<std::uint64_t> next_waiter_id_{1};
  std::atomic<std::uint64_t> probe_rounds_{0};
  mutable std::mutex failure_mutex_;
  std::string last_failure_;
  const bool has_hit_hook_;
};

/// The role a `fwd.hello` answer names ("primary", "replica", "unknown", "not_litefs").
inline litefs::role_kind role_from_string(std::string_view name) noexcept {
  if (name == "primary") return litefs::role_kind::primary;
  if (name == "replica") return litefs::role_kind::replica;
  if (name == "not_litefs") return litefs::role_kind::not_litefs;
  return litefs::role_kind::unknown;
}

/// A probe that asks each peer `fwd.hello` through `client`, which must outlive the
/// finder that uses the probe.
inline primary_finder::probe_function hello_prober(rpc::client& client) {
  return [&client](const peer& target, primary_finder::clock::time_point deadline,
                   primary_finder::probe_handler handler) {
    rpc::call_options options;
    options.deadline = deadline;
    client.async_call(target.endpoint, options, rpc::hello,
                      [h = std::move(handler)](boost::system::error_code ec,
                                               rpc::hello_info info) mutable {
                        node_status status;
                        if (!ec) {
                          status.node_name = std::move(info.node_name);
                          status.litefs_hostname = std::move(info.litefs_hostname);
                          status.role = role_from_string(info.role);
                          status.txid = info.txid;
                        }
                        std::move(h)(ec, std::move(status));
                      });
  };
}

}  // namespace fwd

// ---- begin fwd/cluster/impl/discovery.hpp ----

// The bodies of fwd::primary_finder's refresh: the queue of lookups, the probe rounds and
// the watch of the local role. Included at the end of fwd/cluster/discovery.hpp.


namespace fwd {

inline void primary_finder::enqueue(clock::time_point deadline, find_completion completion) {
  auto slot = completion.slot();
  const std::uint64_t id = next_waiter_id_.fetch_add(1, std::memory_order_relaxed);
  if (slot.is_connected()) {
    slot.assign([weak = weak_from_this(), id](boost::asio::cancellation_type type) {
      if ((type & boost::asio::cancellation_type::terminal) == boost::asio::cancellation_type::none)
        return;
      if (auto self = weak.lock()) {
        boost::asio::dispatch(self->strand_, [self, id] {
          self->fail_waiters(errc::cancelled, [id](const waiter& w) { return w.id == id; });
        });
      }
    });
  }
  boost::asio::dispatch(
      strand_, [self = shared_from_this(), id, deadline, c = std::move(completion)]() mutable {
        fwd::detail::invoke_hook(self->options_.hooks.cache_miss);
        if (self->stopped_) {
          c.post(make_error_code(errc::cancelled), {});
          return;
        }
        self->waiters_.push_back(waiter{id, deadline, std::move(c)});
        self->start_round();
      });
}

template <class Predicate>
inline void primary_finder::fail_waiters(errc why, Predicate&& which) {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (which(*it)) {
      it->completion.post(make_error_code(why), {});
      it = waiters_.erase(it);
    } else {
      ++it;
    }
  }
}

inline void primary_finder::start_round() {
  if (round_ || waiters_.empty()) return;
  if (const primary_location* hit = cached()) {
    finish(*hit);
    return;
  }
  auto round = std::make_shared<round_state>();
  round_ = round;
  // No probe outlives the most patient caller.
  round->latest_deadline = clock::now();
  for (const auto& w : waiters_)
    round->latest_deadline = std::max(round->latest_deadline, w.deadline);

  round->local = local_role();
  forget_failed_hostnames();
  switch (round->local.kind) {
    case litefs::role_kind::primary:
      finish(primary_location{true, {}, {}});
      return;
    case litefs::role_kind::not_litefs:
      round_.reset();
      record_failure(fmt::format("the mount is not LiteFS: {}", round->local.reason));
      fail_waiters(errc::not_litefs, [](const waiter&) { return true; });
      return;
    case litefs::role_kind::replica:
      if (auto it = hostnames_.find(round->local.primary_hostname); it != hostnames_.end()) {
        for (const peer& p : current_members()) {
          if (p.endpoint == it->second) {
            finish(primary_location{false, p.endpoint, round->local.primary_hostname});
            return;
          }
        }
      }
      break;
    case litefs::role_kind::unknown:
      break;
  }
  probe_rounds_.fetch_add(1, std::memory_order_relaxed);
  round->members = current_members();
  if (round->members.empty()) {
    end_round(round, "no members are known");
    return;
  }
  launch_probes(round);
}

inline void primary_finder::launch_probes(const std::shared_ptr<round_state>& round) {
  while (!round->done && round->in_flight < options_.max_concurrent_probes &&
         round->next < round->members.size()) {
    const peer target = round->members[round->next++];
    ++round->in_flight;
    // Each probe gets its own deadline, so members queued behind a slow one (when
    // max_concurrent_probes is below the member count) still get a full probe.
    const clock::time_point deadline =
        std::min(clock::now() + options_.probe_timeout, round->latest_deadline);
    // The answer hops onto the strand itself: a probe function may invoke its handler
    // directly from any thread (calling an executor_binder does not switch executors),
    // and on_probe must never run beside another strand handler.
    auto on_answer = [self = shared_from_this(), round, target](boost::system::error_code ec,
                                                                node_status status) {
      boost::asio::dispatch(self->strand_,
                            [self, round, target, ec, status = std::move(status)]() mutable {
                              self->on_probe(round, target, ec, std::move(status));
                            });
    };
    try {
      if (!probe_) throw std::logic_error("no probe function");
      probe_(target, deadline, std::move(on_answer));
    } catch (...) {
      // The probe never started: it answers as unreachable, after this call returns.
      boost::asio::post(strand_, [self = shared_from_this(), round, target] {
        self->on_probe(round, target, make_error_code(errc::unreachable), {});
      });
    }
  }
}

inline void primary_finder::on_probe(const std::shared_ptr<round_state>& round, const peer& target,
                                     boost::system::error_code ec, node_status status) {
  --round->in_flight;
  ++round->answered;
  fwd::detail::invoke_hook(options_.hooks.probe_result, target, ec, status);
  if (round->done) return;
  auto tried = std::back_inserter(round->tried);
  const std::string who = target.name.empty() ? target.endpoint.address().to_string() : target.name;
  if (ec) {
    fmt::format_to(tried, "{} ({}); ", who, ec.message().substr(0, 60));
  } else {
    fmt::format_to(tried, "{} ({}); ", who, litefs::to_string(status.role));
    if (!status.litefs_hostname.empty()) hostnames_[status.litefs_hostname] = target.endpoint;
    if (status.role == litefs::role_kind::primary) {
      // The member that the local `.primary` names settles it at once.
      if (round->local.kind == litefs::role_kind::replica &&
          status.litefs_hostname == round->local.primary_hostname) {
        round->done = true;
        round_.reset();
        finish(primary_location{false, target.endpoint, status.litefs_hostname});
        return;
      }
      round->claimants.emplace_back(target, std::move(status));
    }
  }
  if (round->next < round->members.size()) {
    launch_probes(round);
    return;
  }
  if (round->in_flight > 0) return;
  // Every member answered or timed out.
  round->done = true;
  if (round->claimants.size() == 1 && round->local.kind != litefs::role_kind::replica) {
    const auto& [p, s] = round->claimants.front();
    round_.reset();
    finish(primary_location{false, p.endpoint, s.litefs_hostname});
    return;
  }
  std::string why;
  if (round->claimants.empty()) {
    why = "no member says it is primary";
  } else if (round->local.kind == litefs::role_kind::replica) {
    // A member that is primary but announces another LiteFS hostname than the one
    // LiteFS names: that node's fwd hostname is not its LiteFS lease hostname.
    const auto& [p, st] = round->claimants.front();
    why = fmt::format(
        "LiteFS names the primary {}, but the member {} that is primary announces the LiteFS "
        "hostname "
        "'{}': set that node's litefs_hostname to its LiteFS lease hostname (lease.hostname in its "
        "litefs.yml; on Fly.io the machine id)",
        round->local.primary_hostname, rpc::detail::endpoint_string(p.endpoint),
        st.litefs_hostname);
  } else {
    why = fmt::format("{} members claim to be primary", round->claimants.size());
  }
  end_round(round, fmt::format("{}; probed: {}", why, round->tried));
}

inline void primary_finder::end_round(const std::shared_ptr<round_state>& round,
                                      const std::string& why) {
  round->done = true;
  round_.reset();
  record_failure(why);
  const auto now = clock::now();
  fail_waiters(errc::no_primary, [now](const waiter& w) { return w.deadline <= now; });
  if (waiters_.empty() || stopped_) return;
  retry_timer_.expires_after(options_.retry_interval);
  retry_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (!ec) self->start_round();
  });
}

inline void primary_finder::finish(primary_location location) {
  round_.reset();
  const primary_location* stored = intern(std::move(location));
  const primary_location* before = current_.exchange(stored, std::memory_order_acq_rel);
  expires_.store(expiry_clock_ns() + std::chrono::nanoseconds(options_.ttl).count(),
                 std::memory_order_relaxed);
  if (stored != before && stored != last_announced_) {
    last_announced_ = stored;
    fwd::detail::invoke_hook(options_.hooks.primary_changed, *stored);
  }
  cached_role_ = local_role();
  for (auto& w : waiters_) w.completion.post({}, *stored);
  waiters_.clear();
}

inline const primary_location* primary_finder::intern(primary_location location) {
  for (const auto& known : locations_) {
    if (*known == location) return known.get();
  }
  locations_.push_back(std::make_unique<const primary_location>(std::move(location)));
  return locations_.back().get();
}

inline litefs::role primary_finder::local_role() noexcept {
  try {
    return role_();
  } catch (const std::exception& e) {
    litefs::role r;
    r.reason = fmt::format("reading the local role failed: {}", e.what());
    return r;
  } catch (...) {
    return litefs::role{};
  }
}

inline std::vector<peer> primary_finder::current_members() noexcept {
  try {
    return members_ ? members_() : std::vector<peer>{};
  } catch (...) {
    return {};
  }
}

inline void primary_finder::forget_failed_hostnames() noexcept {
  std::vector<boost::asio::ip::tcp::endpoint> failed;
  bool all = false;
  {
    std::lock_guard lock(forget_mutex_);
    failed.swap(forget_);
    all = std::exchange(forget_all_, false);
  }
  if (all) {
    hostnames_.clear();
    return;
  }
  for (const auto& endpoint : failed) {
    std::erase_if(hostnames_, [&](const auto& entry) { return entry.second == endpoint; });
  }
}

inline void primary_finder::record_failure(std::string why) {
  std::lock_guard lock(failure_mutex_);
  last_failure_ = std::move(why);
}

inline void primary_finder::watch_role() {
  if (stopped_) return;
  role_timer_.expires_after(options_.role_poll_interval);
  role_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (ec || self->stopped_) return;
    if (self->current_.load(std::memory_order_acquire) != nullptr) {
      const litefs::role now = self->local_role();
      if (now.kind != self->cached_role_.kind ||
          now.primary_hostname != self->cached_role_.primary_hostname) {
        self->invalidate();
      }
    }
    self->watch_role();
  });
}

}  // namespace fwd

// ---- end fwd/cluster/impl/discovery.hpp ----

// ---- end fwd/cluster/discovery.hpp ----
// ---- begin fwd/write/write_options.hpp ----

// The settings of the primary's write executor, and a write's identity.


#include <boost/asio/any_io_executor.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>

namespace fwd::sqlite {

/// A write's identity, fixed across all retries of one call (128 random bits).
using request_id = std::array<std::uint8_t, 16>;

/// The name of the dedup table the write executor keeps in the user's database.
inline constexpr const char* dedup_table_name = "_fwd_requests";

/// Settings of a write_executor. The defaults suit a LiteFS primary.
struct write_options {
  /// Most writes run in one transaction (group commit). At least 1.
  std::size_t max_batch = 128;
  /// How long the writer may wait for a batch to fill once a write is waiting. Zero (the
  /// default) batches only what queued up while the previous batch ran: no added latency.
  std::chrono::microseconds max_batch_delay{0};
  /// Most writes waiting for the writer; beyond it async_write completes with
  /// errc::overloaded (nothing ran). Repeats of a request id already waiting don't count.
  std::size_t max_queue = 10000;
  /// How long BEGIN IMMEDIATE (and every statement) waits for another connection's lock.
  std::chrono::milliseconds busy_timeout{5000};
  /// sqlite3_open_v2 flags.
  int open_flags = default_open_flags;
  /// Dedup rows older than this are pruned: a retry arriving later runs again. Keep it far
  /// longer than any caller's retry deadline.
  std::chrono::milliseconds dedup_retention = std::chrono::hours(24);
  /// Prune (inside a write transaction) after this many commits...
  std::uint64_t prune_every_commits = 1000;
  /// ...or when this long has passed since the last prune, whichever comes first.
  std::chrono::milliseconds prune_interval = std::chrono::minutes(1);
  /// Called once with the new connection, before any write (e.g. PRAGMAs, hooks). An
  /// authorizer set here is replaced: the executor installs its own after on_open (to
  /// refuse transaction control inside a write).
  std::function<void(connection&)> on_open;
  /// Called on the writer thread after each successful COMMIT; its value is passed to
  /// every write of that batch as its position (on LiteFS: the TXID and checksum read
  /// from `<db>-pos`). Without it the position is zero. If it throws, it is zero.
  std::function<litefs::position()> position_after_commit;
  /// Called on the writer thread once a batch holds the write lock, before its first
  /// write: the same position as position_after_commit reads. No other commit can move
  /// it until the batch's own, so a batch that changed the database must find a higher
  /// TXID after its COMMIT. If the position was readable here (TXID above zero) and after
  /// the COMMIT it cannot be read (LiteFS died under the commit) or did not move (LiteFS
  /// did not record the commit, e.g. its lease was lost under it), LiteFS may not keep
  /// the commit: every write the batch applied completes with errc::commit_unknown
  /// ("maybe executed") instead of success, and so does a repeat of its request id that
  /// finds its dedup row (the row may be in this file and in no history LiteFS ships);
  /// once LiteFS's history drops the commit, the row goes and a repeat runs the write
  /// again. Without it, the position after the commit is trusted as is.
  std::function<litefs::position()> position_before_batch;
  /// Run the blocking SQLite work on this executor instead of a thread the write
  /// executor owns. At most one batch runs at a time; a batch may block a thread of this
  /// executor for as long as its writes take (plus max_batch_delay).
  std::optional<boost::asio::any_io_executor> work_executor;
  /// Called on the writer thread before each batch: the generation of the mount the
  /// database lives on (litefs::monitor's `mount_generation`), or nullopt when the mount
  /// cannot be used (LiteFS stopped under the service). A dead mount fails the batch with
  /// errc::not_primary (nothing ran: retryable) and closes the connection, so that nothing
  /// touches the dead mount's memory-mapped `-shm` again (SIGBUS); a new generation (LiteFS
  /// restarted: a new mount) closes the connection and opens the database anew first.
  /// Unset: the connection is kept for the executor's lifetime.
  std::function<std::optional<std::uint64_t>()> mount_generation;
  /// Told of each batch (telemetry::write_batch), on the writer thread.
  telemetry_ptr telemetry;
};

}  // namespace fwd::sqlite

// ---- end fwd/write/write_options.hpp ----
// ---- begin fwd/write/executor.hpp ----

// fwd::sqlite::write_executor: the primary's writer. One connection, one writer thread (or
// an executor the user gives), BEGIN IMMEDIATE, a dedup table written in the same
// transaction as each write (exactly once), and group commit (one transaction for many
// writes, each in its own SAVEPOINT so one failing write fails alone).

#include <sqlite3.h>

#include <array>
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
// ---- begin fwd/write/detail/write_executor_state.hpp ----

// The state a write_executor shares with its writer and its pending writes: the queue and
// the dedup of concurrent repeats (here), and the batches the writer runs
// (write_batch.hpp: group commit, the dedup table, the connection's lifetime).

#include <sqlite3.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <fmt/format.h>
#include <iterator>
#include <functional>
// ---- begin fwd/write/detail/transaction_guard.hpp ----

// What keeps a write's work from taking transaction control away from the write executor:
// an SQLite authorizer that refuses, while the work runs, BEGIN, COMMIT, ROLLBACK and END,
// and any use of the executor's own savepoint.

#include <sqlite3.h>

#include <fmt/format.h>

#include <iterator>
#include <string>

namespace fwd::sqlite::detail {

/// The executor's savepoint around each write of a batch.
inline constexpr const char* write_savepoint_name = "fwd_write";

/**
 * Installed once per connection (setting an authorizer expires every prepared statement,
 * so it is not set and cleared around each write); it refuses only between begin() and
 * end(). A write's own savepoints (any other name) stay allowed: they nest inside the
 * executor's. SQLite consults it when a statement is prepared (the refusal is
 * SQLITE_AUTH), and the refusal is remembered here, so a write that swallows the error
 * still fails.
 */
class transaction_control_guard {
 public:
  transaction_control_guard() = default;
  transaction_control_guard(const transaction_control_guard&) = delete;
  transaction_control_guard& operator=(const transaction_control_guard&) = delete;

  /// Makes `db` consult this guard (replacing any authorizer set before).
  void install(sqlite3* db) noexcept { sqlite3_set_authorizer(db, &authorize, this); }

  /// The write's work starts: refuse transaction control until end().
  void begin() noexcept {
    active_ = true;
    refused_.clear();
  }

  /// The work is over: returns what was refused ("COMMIT", "RELEASE fwd_write"), empty if
  /// nothing.
  std::string end() noexcept {
    active_ = false;
    std::string refused;
    refused.swap(refused_);
    return refused;
  }

 private:
  static int authorize(void* self, int action, const char* what, const char* name, const char*,
                       const char*) noexcept {
    auto* guard = static_cast<transaction_control_guard*>(self);
    if (!guard->active_) return SQLITE_OK;
    if (action == SQLITE_TRANSACTION) return guard->refuse(what, nullptr);
    if (action == SQLITE_SAVEPOINT && name != nullptr && sqlite3_stricmp(name, write_savepoint_name) == 0)
      return guard->refuse(what, name);
    return SQLITE_OK;
  }

  int refuse(const char* what, const char* name) noexcept {
    try {
      if (refused_.empty()) {
        refused_ = what != nullptr ? what : "transaction control";
        if (name != nullptr) fmt::format_to(std::back_inserter(refused_), " {}", name);
      }
    } catch (...) {
    }
    return SQLITE_DENY;
  }

  bool active_ = false;
  std::string refused_;
};

inline std::string transaction_control_refusal(const std::string& refused) {
  return fmt::format(
      "the write ran '{}': a procedure's writer runs inside fwd's transaction; do not BEGIN, "
      "COMMIT, ROLLBACK or END there, nor touch fwd's savepoint 'fwd_write' (use SAVEPOINTs "
      "of your own names, which nest); nothing of this write was applied, the other writes of "
      "its batch commit",
      refused);
}

}  // namespace fwd::sqlite::detail

// ---- end fwd/write/detail/transaction_guard.hpp ----
// ---- begin fwd/write/detail/write_failure.hpp ----

// What a failed statement on the writer's connection means, and what its writes complete
// with. On LiteFS a failure says one of three things:
//   - LiteFS refused the write because this node is a replica (SQLITE_READONLY in
//     rollback-journal mode, SQLITE_IOERR_WRITE with EACCES in WAL mode): nothing was
//     applied; errc::not_primary;
//   - the mount went away under the service (LiteFS stopped or restarted: an I/O error,
//     ENOTCONN/ECONNABORTED underneath): the connection must be closed without touching
//     the database again (no ROLLBACK: closing it is the rollback) and reopened; before
//     COMMIT nothing was committed, so errc::not_primary (retryable);
//   - anything else keeps SQLite's code.
// A failed COMMIT is different: unless the error proves that nothing was committed, the
// writes may have been applied (errc::commit_unknown, "maybe executed").

#include <sqlite3.h>

#include <cerrno>
#include <fmt/format.h>
// ---- begin fwd/write/detail/write_job.hpp ----

// What the write executor queues: a write (its work and request id), everyone waiting for
// its outcome, and the outcome itself.

#include <sqlite3.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fwd::sqlite::detail {

/// The signature every write completes with.
using write_signature = void(boost::system::error_code, std::string, litefs::position);

/// A waiting caller: its completion (work tracked on the handler's executor until done),
/// and the serial a cancellation finds it by (never reused within a process).
class write_waiter {
 public:
  template <class Handler>
  write_waiter(std::uint64_t serial, Handler&& handler, const boost::asio::any_io_executor& io_executor,
               std::chrono::steady_clock::time_point deadline = {})
      : serial_(serial), deadline_(deadline), completion_(std::forward<Handler>(handler), io_executor) {}

  std::uint64_t serial() const noexcept { return serial_; }

  /// When this caller stops waiting ({} = never).
  std::chrono::steady_clock::time_point deadline() const noexcept { return deadline_; }

  /// The caller's deadline has passed at `now`.
  bool expired(std::chrono::steady_clock::time_point now) const noexcept {
    return deadline_ != std::chrono::steady_clock::time_point{} && deadline_ <= now;
  }

  /// The handler's cancellation slot (install the cancellation handler before submitting).
  boost::asio::cancellation_slot slot() const noexcept { return completion_.slot(); }

  /// Posts the handler with these arguments to its associated executor: a completion never
  /// runs inside async_write nor on the writer thread.
  void complete(const boost::system::error_code& ec, std::string result, litefs::position pos) {
    completion_.post(ec, std::move(result), pos);
  }

 private:
  std::uint64_t serial_;
  std::chrono::steady_clock::time_point deadline_;
  fwd::detail::pending_completion<write_signature> completion_;
};

/// One request id's write: the work, and everyone waiting for its outcome.
struct write_job {
  request_id id{};
  std::string procedure;  // what the id is bound to in the dedup table ("" for none)
  std::function<std::string(sqlite3*)> work;
  std::vector<std::unique_ptr<write_waiter>> waiters;  // guarded by the state's mutex
};

/// What one write ended with.
struct write_outcome {
  boost::system::error_code ec;
  std::string result;  // the result bytes, or on failure a description of the failure
};

inline std::int64_t unix_milliseconds() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace fwd::sqlite::detail

// ---- end fwd/write/detail/write_job.hpp ----
#include <string>
#include <system_error>

namespace fwd::sqlite::detail {

/// What a failed statement says about the node and its connection.
enum class failure_kind {
  replica_refusal,  ///< LiteFS refused the write: this node is not the primary
  mount_lost,       ///< the file system under the database went away
  other,            ///< the statement's own failure (constraint, busy, full, ...)
};

/// `ec` a SQLite error; `system_errno` sqlite3_system_errno() right after it (0: unknown).
inline failure_kind kind_of_failure(const boost::system::error_code& ec, int system_errno) noexcept {
  if (ec.category() != sqlite_category()) return failure_kind::other;
  const int primary = ec.value() & 0xff;
  if (primary == SQLITE_READONLY) return failure_kind::replica_refusal;
  // LiteFS answers a replica's WAL write with EACCES; ENOTCONN there is a dead mount.
  if (ec.value() == SQLITE_IOERR_WRITE && (system_errno == 0 || system_errno == EACCES || system_errno == EPERM)) {
    return failure_kind::replica_refusal;
  }
  if (primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN) return failure_kind::mount_lost;
  return failure_kind::other;
}

inline std::string errno_note(int system_errno) {
  if (system_errno == 0) return {};
  return fmt::format(", {} underneath", std::generic_category().message(system_errno));
}

/// A statement before COMMIT failed with `ec`: nothing of the batch was committed.
inline write_outcome write_failure(const boost::system::error_code& ec, const std::string& message,
                                   int system_errno = 0) {
  switch (kind_of_failure(ec, system_errno)) {
    case failure_kind::replica_refusal:
      return {make_error_code(errc::not_primary),
              fmt::format("{} (SQLite extended code {}): this node is not the primary (a failover "
                          "happened); nothing was applied: rediscover the primary and retry with the "
                          "same request id",
                          message, ec.value())};
    case failure_kind::mount_lost:
      return {make_error_code(errc::not_primary),
              fmt::format("{} (SQLite extended code {}{}): the file system under the database went "
                          "away (on LiteFS: LiteFS stopped or restarted under the service); nothing "
                          "was committed and the connection is reopened: retry with the same request id",
                          message, ec.value(), errno_note(system_errno))};
    case failure_kind::other:
      break;
  }
  return {ec, message};
}

/// COMMIT failed with `ec`. `still_open`: SQLite kept the transaction open (then nothing
/// was committed: e.g. SQLITE_BUSY before the commit could take its lock).
/// `rollback_journal`: the database is in a rollback-journal mode (not WAL).
inline write_outcome commit_failure(const boost::system::error_code& ec, const std::string& message,
                                    int system_errno, bool still_open, bool rollback_journal) {
  const int primary = ec.category() == sqlite_category() ? (ec.value() & 0xff) : 0;
  const failure_kind kind = kind_of_failure(ec, system_errno);
  // Proofs that nothing was committed: SQLite kept the transaction, could not take a
  // lock (in rollback-journal mode COMMIT takes the EXCLUSIVE lock before it writes the
  // database file; in WAL mode an error after the commit, from the automatic checkpoint,
  // may carry the same code), turned COMMIT into a rollback itself (commit hook, deferred
  // foreign key), or LiteFS refused the write (it refuses every write on a replica).
  const bool lock_refused = ec.value() == SQLITE_IOERR_LOCK && rollback_journal;
  if (still_open || primary == SQLITE_BUSY || primary == SQLITE_LOCKED || primary == SQLITE_CONSTRAINT ||
      lock_refused || kind == failure_kind::replica_refusal) {
    write_outcome failure = write_failure(ec, message, system_errno);
    if (failure.ec == ec) failure.result = fmt::format("COMMIT failed: {}; nothing was committed", message);
    return failure;
  }
  return {make_error_code(errc::commit_unknown),
          fmt::format("COMMIT failed ({}, SQLite extended code {}{}) after it may have reached the "
                      "database: each write of the batch may have been applied. Retry only with the "
                      "same request id: if the write did commit, the dedup table answers the retry with "
                      "its stored result instead of running it again",
                      message, ec.value(), errno_note(system_errno))};
}

}  // namespace fwd::sqlite::detail

// ---- end fwd/write/detail/write_failure.hpp ----
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fwd::sqlite {

/// What write_executor::drop_queued found.
enum class write_drop {
  dropped,  ///< the write had not started: it never runs, its callers completed
  running,  ///< the write is running: it finishes (and may commit)
  unknown,  ///< no write waits or runs under that id (completed, or never submitted)
};

namespace detail {

/// Why a write was refused: its request id is bound to another procedure.
inline std::string request_id_reused(const request_id& id, std::string_view bound, std::string_view given) {
  std::string hex;
  for (const std::uint8_t b : id) fmt::format_to(std::back_inserter(hex), "{:02x}", b);
  auto name = [](std::string_view p) { return p.empty() ? std::string("(no procedure)") : fmt::format("'{}'", p); };
  return fmt::format(
      "the request id {} is already bound to the procedure {}, not {}: a request id names one "
      "call; give each call a fresh id (fwd::make_request_id()) and repeat an id only to retry "
      "that same call; nothing ran",
      hex, name(bound), name(given));
}

/// The state shared by a write_executor, its writer and its pending operations.
class write_executor_state : public std::enable_shared_from_this<write_executor_state> {
 public:
  write_executor_state(const std::string& path, write_options options)
      : options_(std::move(options)),
        path_(path),
        generation_(initial_generation(options_)),
        connection_(path, options_.open_flags, options_.busy_timeout) {
    if (options_.max_batch == 0) options_.max_batch = 1;
    if (options_.on_open) options_.on_open(connection_);
    guard_.install(connection_.native_handle());
    note_journal_mode();
    last_prune_ = std::chrono::steady_clock::now();
  }

  const write_options& options() const noexcept { return options_; }

  /// Queues `work` for `id` (or joins the write already waiting with that id).
  void submit(const request_id& id, std::string procedure, std::function<std::string(sqlite3*)> work,
              std::unique_ptr<write_waiter> waiter) {
    if (!work) {
      waiter->complete(make_error_code(errc::bad_argument),
                       "async_write needs a work function; it was empty", {});
      return;
    }
    std::unique_lock lock(mutex_);
    if (stopping_) {
      lock.unlock();
      waiter->complete(make_error_code(errc::cancelled),
                       "the write executor is stopped; nothing was applied", {});
      return;
    }
    if (const auto it = pending_.find(id); it != pending_.end()) {
      if (it->second->procedure != procedure) {
        std::string why = request_id_reused(id, it->second->procedure, procedure);
        lock.unlock();
        waiter->complete(make_error_code(errc::bad_argument), std::move(why), {});
        return;
      }
      // The same request is already waiting or running: it runs once, both get its outcome.
      it->second->waiters.push_back(std::move(waiter));
      return;
    }
    if (queue_.size() >= options_.max_queue) {
      lock.unlock();
      waiter->complete(make_error_code(errc::overloaded),
                       fmt::format("the write executor's queue is full (max_queue {}); nothing was "
                                   "applied: retry after a backoff",
                                   options_.max_queue),
                       {});
      return;
    }
    auto job = std::make_shared<write_job>();
    job->id = id;
    job->procedure = std::move(procedure);
    job->work = std::move(work);
    job->waiters.push_back(std::move(waiter));
    pending_.emplace(id, job);
    queue_.push_back(std::move(job));
    wake_.notify_one();  // the writer thread, or a batch gathering for max_batch_delay
    if (options_.work_executor && !drain_scheduled_) {
      drain_scheduled_ = true;
      boost::asio::post(*options_.work_executor, [self = shared_from_this()] { self->drain(); });
    }
  }

  /// The writer thread's loop (when the write executor owns a thread).
  void run_writer_thread() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (!stopping_) run_one_batch(lock);
      if (stopping_) {
        writer_exited_ = true;
        notify_stopped(lock);
        return;
      }
    }
  }

  /// Runs batches on the user's work executor until the queue is empty.
  void drain() {
    std::unique_lock lock(mutex_);
    while (!stopping_ && !queue_.empty()) run_one_batch(lock);
    drain_scheduled_ = false;
    idle_.notify_all();
    if (stopping_) notify_stopped(lock);
  }

  /// As stop(), without blocking: `done` runs once no batch runs any more (at once if none
  /// does; otherwise on the writer, when its running batch has finished).
  void async_stop(std::function<void()> done) {
    cancel_queued_for_stop();
    {
      std::lock_guard lock(mutex_);
      const bool writer_busy = running_batch_ || (!options_.work_executor && !writer_exited_);
      if (writer_busy) {
        on_stopped_.push_back(std::move(done));
        return;
      }
    }
    done();
  }

  /// Fails queued writes with cancelled, then waits for the running batch to finish
  /// (unless `wait` is false: called on the writer itself, from inside a write).
  void stop(bool wait = true) {
    cancel_queued_for_stop();
    if (!wait) return;
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return !running_batch_; });
  }

  // Marks the state stopping and fails the writes that have not started with cancelled.
  void cancel_queued_for_stop() {
    std::deque<std::shared_ptr<write_job>> cancelled;
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      cancelled.swap(queue_);
      for (const auto& job : cancelled) pending_.erase(job->id);
      wake_.notify_all();
    }
    for (const auto& job : cancelled) {
      for (auto& waiter : job->waiters) {
        waiter->complete(make_error_code(errc::cancelled),
                         "the write executor stopped before this write ran; nothing was applied",
                         {});
      }
    }
  }

  // With the lock held, once stopping and no batch runs: runs the async_stop callbacks.
  void notify_stopped(std::unique_lock<std::mutex>& lock) {
    auto hooks = std::move(on_stopped_);
    on_stopped_.clear();
    if (hooks.empty()) return;
    lock.unlock();
    for (auto& hook : hooks) {
      try {
        hook();
      } catch (...) {
      }
    }
    lock.lock();
  }

  /// Closes the connection; only once no batch can run any more (after stop and join).
  void close() noexcept {
    forget_statements();
    connection_.close();
  }

  /// Per-operation cancellation: a waiter whose write has not started leaves the queue
  /// and completes with cancelled; the write itself is dropped once nobody waits for it.
  void cancel_waiter(std::uint64_t serial) {
    std::unique_ptr<write_waiter> cancelled;
    {
      std::lock_guard lock(mutex_);
      cancelled = take_queued_waiter(serial);
    }
    if (cancelled) {
      cancelled->complete(make_error_code(errc::cancelled),
                          "the write was cancelled before it ran; nothing was applied", {});
    }
  }

  // With the lock held: removes the waiter from a write that has not started.
  std::unique_ptr<write_waiter> take_queued_waiter(std::uint64_t serial) {
    for (auto job_it = queue_.begin(); job_it != queue_.end(); ++job_it) {
      auto& waiters = (*job_it)->waiters;
      for (auto it = waiters.begin(); it != waiters.end(); ++it) {
        if ((*it)->serial() != serial) continue;
        std::unique_ptr<write_waiter> found = std::move(*it);
        waiters.erase(it);
        if (waiters.empty()) {
          pending_.erase((*job_it)->id);
          queue_.erase(job_it);
        }
        return found;
      }
    }
    return nullptr;
  }

  /// With the lock held, before a batch is taken: the callers whose deadline passed leave
  /// the queue and complete with timeout (nothing ran); a write nobody waits for any more
  /// is dropped before it runs.
  void drop_expired() {
    const auto now = std::chrono::steady_clock::now();
    for (auto job_it = queue_.begin(); job_it != queue_.end();) {
      auto& waiters = (*job_it)->waiters;
      for (auto it = waiters.begin(); it != waiters.end();) {
        if (!(*it)->expired(now)) {
          ++it;
          continue;
        }
        (*it)->complete(make_error_code(errc::timeout),
                        "the call's deadline passed while its write was queued on the primary: "
                        "it never ran, nothing was applied",
                        {});
        it = waiters.erase(it);
      }
      if (waiters.empty()) {
        pending_.erase((*job_it)->id);
        job_it = queue_.erase(job_it);
      } else {
        ++job_it;
      }
    }
  }

  /// Drops the write queued under `id` before it starts: every caller waiting for it
  /// completes with `ec` and `why`. Says whether it was dropped, is running already (it
  /// cannot be stopped), or is unknown here (not submitted, or completed).
  write_drop drop_queued(const request_id& id, const boost::system::error_code& ec, const std::string& why) {
    std::shared_ptr<write_job> dropped;
    {
      std::lock_guard lock(mutex_);
      const auto found = pending_.find(id);
      if (found == pending_.end()) return write_drop::unknown;
      for (auto it = queue_.begin(); it != queue_.end(); ++it) {
        if (*it != found->second) continue;
        dropped = std::move(*it);
        queue_.erase(it);
        break;
      }
      if (!dropped) return write_drop::running;
      pending_.erase(found);
    }
    for (auto& waiter : dropped->waiters) waiter->complete(ec, why, {});
    return write_drop::dropped;
  }

  std::uint64_t next_serial() noexcept { return next_serial_.fetch_add(1) + 1; }

  std::size_t queued() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }

 private:
  // The batches (write_batch.hpp). Only the batch that is running uses these.
  void run_one_batch(std::unique_lock<std::mutex>& lock);
  void abandon_batch(const std::vector<std::shared_ptr<write_job>>& batch, const char* what) noexcept;
  static std::uint64_t initial_generation(const write_options& options);
  void drop_connection() noexcept;
  std::optional<write_outcome> ensure_connection();
  void run_batch(const std::vector<std::shared_ptr<write_job>>& batch);
  void end_failed_batch() noexcept;
  bool mount_changed() noexcept;
  std::optional<litefs::position> position_before() noexcept;
  litefs::position position_after() noexcept;
  void note_journal_mode() noexcept;
  int system_errno() const noexcept;
  write_outcome statement_failure(const boost::system::error_code& ec, const std::string& message);
  std::optional<write_outcome> run_write(write_job& job, std::int64_t now_ms, write_outcome& outcome);
  void run_prepared(statement& stmt, boost::system::error_code& ec, std::string& message) noexcept;
  // Finalizes the statements prepared on the connection (before it is closed).
  void forget_statements() noexcept {
    work_statements_.clear();
    lookup_ = {};
    insert_ = {};
    prune_ = {};
    savepoint_ = {};
    release_ = {};
    rollback_to_ = {};
  }
  bool has_unresolved_deferred_foreign_keys() const noexcept;
  void prepare_schema(boost::system::error_code& ec, std::string& message);
  bool prune_due() const noexcept;
  std::optional<write_outcome> prune(std::int64_t now_ms);
  void finish(const std::vector<std::shared_ptr<write_job>>& batch, std::vector<write_outcome>& outcomes,
              litefs::position pos);

  write_options options_;
  std::string path_;
  std::uint64_t generation_ = 0;  // the mount generation connection_ was opened under
  connection connection_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;  // work queued, or stopping
  std::condition_variable idle_;  // a batch finished
  std::deque<std::shared_ptr<write_job>> queue_;
  std::map<request_id, std::shared_ptr<write_job>> pending_;  // queued or running, by id
  bool stopping_ = false;
  bool running_batch_ = false;
  bool drain_scheduled_ = false;
  bool writer_exited_ = false;                     // the writer thread has left its loop
  std::vector<std::function<void()>> on_stopped_;  // async_stop callbacks
  std::atomic<std::uint64_t> next_serial_{0};

  // Used only by the batch that is running.
  bool schema_ready_ = false;
  bool drop_pending_ = false;  // the mount went away: close without ROLLBACK, reopen
  bool wal_mode_ = false;      // the connection's journal mode is WAL
  transaction_control_guard guard_;  // the connection's authorizer (its address is held by SQLite)
  statement lookup_;
  statement insert_;
  statement prune_;
  statement savepoint_;    // SAVEPOINT fwd_write
  statement release_;      // RELEASE fwd_write
  statement rollback_to_;  // ROLLBACK TO fwd_write
  // Request ids whose commit SQLite made here but LiteFS was not seen to record (its
  // position unreadable or unmoved after the COMMIT). Their dedup rows may sit in this
  // file and in no history LiteFS ships: a repeat is answered "maybe executed", never
  // with a position that need not hold the write. Oldest first, at most
  // max_unrecorded_ids; an id leaves once a later run of it is recorded.
  void note_unrecorded(const request_id& id);
  static constexpr std::size_t max_unrecorded_ids = 4096;
  std::set<request_id> unrecorded_;
  std::deque<request_id> unrecorded_order_;
  statement_cache work_statements_;  // what the writes prepare, kept for the next ones
  std::uint64_t commits_since_prune_ = 0;
  std::chrono::steady_clock::time_point last_prune_;
};

}  // namespace detail

}  // namespace fwd::sqlite

// ---- begin fwd/write/detail/write_batch.hpp ----

// The write executor's batches: one BEGIN IMMEDIATE ... COMMIT for many writes, each in
// its own SAVEPOINT with its dedup row, and the writer's connection kept on the live
// LiteFS mount (closed without ROLLBACK when the mount went away, reopened before the
// next batch).

#include <fmt/format.h>

#include <iterator>
#include <string>

namespace fwd::sqlite::detail {

// Called with the lock held and work queued; returns with the lock held.
inline void write_executor_state::run_one_batch(std::unique_lock<std::mutex>& lock) {
  if (options_.max_batch_delay.count() > 0 && queue_.size() < options_.max_batch) {
    const auto deadline = std::chrono::steady_clock::now() + options_.max_batch_delay;
    wake_.wait_until(lock, deadline, [&] { return stopping_ || queue_.size() >= options_.max_batch; });
    if (stopping_) return;  // not yet started: stop() cancels it
  }
  drop_expired();
  std::vector<std::shared_ptr<write_job>> batch;
  while (!queue_.empty() && batch.size() < options_.max_batch) {
    batch.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  if (batch.empty()) return;
  running_batch_ = true;
  const write_batch_event taken{batch.size(), queue_.size()};
  lock.unlock();
  fwd::detail::emit(options_.telemetry, &telemetry::write_batch, taken);
  try {
    run_batch(batch);
  } catch (const std::exception& e) {
    // Only resource exhaustion gets here (e.g. std::bad_alloc): fail the batch, keep going.
    abandon_batch(batch, e.what());
  }
  lock.lock();
  running_batch_ = false;
  idle_.notify_all();
}

inline void write_executor_state::abandon_batch(const std::vector<std::shared_ptr<write_job>>& batch,
                                                const char* what) noexcept {
  try {
    end_failed_batch();
    std::vector<write_outcome> outcomes(
        batch.size(), write_outcome{make_sqlite_error(SQLITE_NOMEM),
                                    fmt::format("the write batch failed: {}", what)});
    finish(batch, outcomes, {});
  } catch (...) {
  }
}

// The mount generation before the connection is opened (a mount replaced in between
// then shows as a new generation at the first batch, not the other way round).
inline std::uint64_t write_executor_state::initial_generation(const write_options& options) {
  if (!options.mount_generation) return 0;
  const auto g = options.mount_generation();
  return g ? *g : 0;
}

// Drops the connection without touching the database: no checkpoint on close (a dead
// mount's `-shm` must not be read), no ROLLBACK (closing is the rollback). Statements go
// first. The next batch opens the database anew.
inline void write_executor_state::drop_connection() noexcept {
  forget_statements();
  if (connection_.native_handle() != nullptr) {
    int ignored = 0;
    sqlite3_db_config(connection_.native_handle(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, &ignored);
  }
  connection_.close();
  schema_ready_ = false;
  drop_pending_ = false;
}

// Before a batch: the mount is usable and the connection is open on it. Returns the
// failure that fails the batch otherwise.
inline std::optional<write_outcome> write_executor_state::ensure_connection() {
  if (options_.mount_generation) {
    const std::optional<std::uint64_t> now = options_.mount_generation();
    if (!now) {
      if (connection_.native_handle() != nullptr) drop_connection();
      return write_outcome{make_error_code(errc::not_primary),
                           fmt::format("the LiteFS mount under {} is dead (LiteFS stopped under the "
                                       "service); nothing ran: retry once LiteFS is back",
                                       path_)};
    }
    if (*now != generation_ && connection_.native_handle() != nullptr) drop_connection();
    generation_ = *now;
  }
  if (connection_.native_handle() != nullptr) return std::nullopt;
  try {
    connection_ = connection(path_, options_.open_flags, options_.busy_timeout);
    if (options_.on_open) options_.on_open(connection_);
    guard_.install(connection_.native_handle());
    note_journal_mode();
    return std::nullopt;
  } catch (const std::exception& e) {
    // Also an on_open that throws: never run a batch on a half-prepared connection.
    drop_connection();
    return write_outcome{make_error_code(errc::not_primary),
                         fmt::format("cannot reopen the database {}: {}; nothing ran: retry", path_, e.what())};
  } catch (...) {
    drop_connection();
    return write_outcome{make_error_code(errc::not_primary),
                         fmt::format("cannot reopen the database {}; nothing ran: retry", path_)};
  }
}

// After a failure: undoes the batch. A connection whose mount went away (or changed) is
// closed instead: a ROLLBACK would touch the dead mount (SIGBUS through its `-shm`).
inline void write_executor_state::end_failed_batch() noexcept {
  if (connection_.native_handle() == nullptr) return;
  if (!drop_pending_ && mount_changed()) drop_pending_ = true;
  if (drop_pending_) {
    drop_connection();
    return;
  }
  if (!connection_.autocommit()) {
    boost::system::error_code ec;
    connection_.exec("ROLLBACK", ec);
    if (ec) drop_connection();
  }
}

// Whether the database is in WAL mode (after on_open, which may have set it): what a
// failed COMMIT's lock error means depends on it.
inline void write_executor_state::note_journal_mode() noexcept {
  sqlite3_stmt* stmt = nullptr;
  wal_mode_ = false;
  if (sqlite3_prepare_v2(connection_.native_handle(), "PRAGMA journal_mode", -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    const auto* mode = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    wal_mode_ = mode != nullptr && std::string_view(mode) == "wal";
  }
  sqlite3_finalize(stmt);
}

inline bool write_executor_state::mount_changed() noexcept {
  if (!options_.mount_generation) return false;
  try {
    const std::optional<std::uint64_t> now = options_.mount_generation();
    return !now || *now != generation_;
  } catch (...) {
    return true;
  }
}

inline int write_executor_state::system_errno() const noexcept {
  return connection_.native_handle() != nullptr ? sqlite3_system_errno(connection_.native_handle()) : 0;
}

// A statement of the batch failed (before COMMIT): what the batch's writes complete with.
inline write_outcome write_executor_state::statement_failure(const boost::system::error_code& ec,
                                                             const std::string& message) {
  const int err = system_errno();
  if (kind_of_failure(ec, err) == failure_kind::mount_lost) drop_pending_ = true;
  return write_failure(ec, message, err);
}

inline void write_executor_state::run_batch(const std::vector<std::shared_ptr<write_job>>& batch) {
  std::vector<write_outcome> outcomes(batch.size());
  if (auto unusable = ensure_connection()) {
    for (auto& outcome : outcomes) outcome = *unusable;
    finish(batch, outcomes, {});
    return;
  }
  auto fail_all = [&](const write_outcome& failure) {
    end_failed_batch();
    for (auto& outcome : outcomes) outcome = failure;
    finish(batch, outcomes, {});
  };

  boost::system::error_code ec;
  std::string message;
  connection_.exec("BEGIN IMMEDIATE", ec, &message);
  if (ec) return fail_all(statement_failure(ec, message));
  if (!schema_ready_) {
    prepare_schema(ec, message);
    if (ec) return fail_all(statement_failure(ec, message));
  }

  // The position under the write lock, before anything of the batch: no other commit
  // can move it until ours, so the commit's own TXID must come after it.
  const std::optional<litefs::position> before = position_before();
  const auto changes_before = sqlite3_total_changes64(connection_.native_handle());

  const std::int64_t now_ms = unix_milliseconds();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (auto fatal = run_write(*batch[i], now_ms, outcomes[i])) return fail_all(*fatal);
  }
  if (prune_due()) {
    if (auto fatal = prune(now_ms)) return fail_all(*fatal);
  }

  connection_.exec("COMMIT", ec, &message);
  if (ec) {
    const int err = system_errno();
    if (kind_of_failure(ec, err) == failure_kind::mount_lost) drop_pending_ = true;
    return fail_all(commit_failure(ec, message, err, !connection_.autocommit(), !wal_mode_));
  }
  schema_ready_ = true;
  ++commits_since_prune_;

  const litefs::position pos = position_after();
  if (before && before->txid != 0 && pos.txid <= before->txid &&
      sqlite3_total_changes64(connection_.native_handle()) != changes_before) {
    // The position was readable before the batch, and after a COMMIT that changed the
    // database it either cannot be read (LiteFS died under the commit) or did not move
    // (LiteFS did not record the commit: the lease was lost under it). SQLite's COMMIT
    // succeeded, yet LiteFS may not keep it: a restarted LiteFS can drop it, a new
    // primary never receives it. Acknowledging it would promise what nothing here can
    // confirm, so every write the batch applied is "maybe executed".
    const std::string why =
        pos.txid == 0 ? fmt::format("LiteFS's position could not be read after it (TXID {} before the batch): "
                                    "the mount failed under the commit",
                                    before->txid)
                      : fmt::format("LiteFS's position did not move past TXID {}: LiteFS did not record the "
                                    "commit (e.g. the primary lost its lease under it)",
                                    before->txid);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      auto& outcome = outcomes[i];
      if (outcome.ec) continue;
      note_unrecorded(batch[i]->id);
      outcome = {make_error_code(errc::commit_unknown),
                 fmt::format("SQLite committed the write, but {}; LiteFS may not keep it (maybe executed). Retry "
                             "only with the same request id: if the write survived, the dedup table answers "
                             "with its stored result instead of running it again",
                             why)};
    }
  }
  if (!unrecorded_.empty()) {
    // Recorded this time (the write ran again after LiteFS dropped its first commit):
    // a repeat may be answered from the dedup row again.
    for (std::size_t i = 0; i < batch.size(); ++i)
      if (!outcomes[i].ec && !unrecorded_.empty()) unrecorded_.erase(batch[i]->id);
  }
  finish(batch, outcomes, pos);
}

inline void write_executor_state::note_unrecorded(const request_id& id) {
  if (!unrecorded_.insert(id).second) return;
  unrecorded_order_.push_back(id);
  while (unrecorded_order_.size() > max_unrecorded_ids) {
    unrecorded_.erase(unrecorded_order_.front());
    unrecorded_order_.pop_front();
  }
}

// write_options::position_before_batch's value; nothing without it, zero if it throws.
inline std::optional<litefs::position> write_executor_state::position_before() noexcept {
  if (!options_.position_before_batch) return std::nullopt;
  try {
    return options_.position_before_batch();
  } catch (...) {
    return litefs::position{};
  }
}

// write_options::position_after_commit's value; zero without it or if it throws.
inline litefs::position write_executor_state::position_after() noexcept {
  if (!options_.position_after_commit) return {};
  try {
    return options_.position_after_commit();
  } catch (...) {
    return {};
  }
}

// Runs one write inside its own SAVEPOINT. Returns a failure only when the whole batch
// must fail (the transaction is gone, LiteFS refused the write, or the mount went away).
inline std::optional<write_outcome> write_executor_state::run_write(write_job& job, std::int64_t now_ms,
                                                                    write_outcome& outcome) {
  boost::system::error_code ec;
  std::string message;

  // Exactly once: a request id already recorded answers with its stored result.
  lookup_.reset().bind(1, blob_view(job.id));
  const bool found = lookup_.step(ec);
  if (ec) {
    lookup_.reset();
    return statement_failure(ec, detail::describe_failure(connection_.native_handle(), ec.value(),
                                                          "looking up the request id", lookup_.sql()));
  }
  if (found) {
    // A row recorded before the table had its procedure column (NULL) matches any.
    const bool bound = !lookup_.column_is_null(1);
    const auto procedure = lookup_.column_text(1);
    if (bound && procedure != job.procedure) {
      outcome.ec = make_error_code(errc::bad_argument);
      outcome.result = request_id_reused(job.id, procedure, job.procedure);
    } else if (unrecorded_.count(job.id) != 0) {
      outcome.ec = make_error_code(errc::commit_unknown);
      outcome.result =
          "an earlier attempt of this request committed in SQLite on this node, but LiteFS was not seen to "
          "record that commit (its position could not be read, or did not move, after the COMMIT): "
          "whether LiteFS keeps it cannot be known here (maybe executed). If LiteFS dropped it, its row "
          "goes when LiteFS restores its history, and a retry with the same request id runs the write again";
    } else {
      const auto stored = lookup_.column_blob(0);
      outcome.result.assign(stored.begin(), stored.end());
    }
    lookup_.reset();
    return std::nullopt;
  }
  lookup_.reset();

  run_prepared(savepoint_, ec, message);
  if (ec) return statement_failure(ec, message);

  std::string refused;
  {
    // Refusing for the work alone: fwd's own statements below run unchecked.
    guard_.begin();
    const statement_cache::scope cached(work_statements_, connection_.native_handle());
    try {
      outcome.result = job.work(connection_.native_handle());
      if (connection_.autocommit()) {
        // The write ended the batch's transaction itself: what it and the writes before
        // it did may be committed or undone; the batch cannot continue either way.
        (void)guard_.end();
        return write_outcome{make_error_code(errc::bad_argument),
                             "a write ran COMMIT, ROLLBACK or END itself: a write must leave "
                             "transaction control to the write executor (use SAVEPOINTs)"};
      }
      if (has_unresolved_deferred_foreign_keys()) {
        // COMMIT would fail for the whole batch: fail this write alone instead.
        outcome.ec = make_sqlite_error(SQLITE_CONSTRAINT_FOREIGNKEY);
        outcome.result = "FOREIGN KEY constraint failed: the write left a deferred foreign key unresolved";
      }
    } catch (const fwd::error& e) {
      outcome.ec = boost::system::error_code(e.code());
      outcome.result = e.what();
    } catch (const std::exception& e) {
      outcome.ec = make_error_code(errc::remote_failure);
      outcome.result = e.what();
    } catch (...) {
      outcome.ec = make_error_code(errc::remote_failure);
      outcome.result = "the write threw an exception that is not a std::exception";
    }
    refused = guard_.end();
  }
  if (!refused.empty()) {
    // Whatever the work did with SQLite's refusal (threw it, or swallowed it), the write
    // fails alone and is rolled back below.
    outcome.ec = make_error_code(errc::bad_argument);
    outcome.result = transaction_control_refusal(refused);
  }

  if (!outcome.ec) {
    insert_.reset()
        .bind(1, blob_view(job.id))
        .bind(2, blob_view(outcome.result.data(), outcome.result.size()))
        .bind(3, now_ms)
        .bind(4, std::string_view(job.procedure));
    insert_.step(ec);
    insert_.reset();
    if (ec) {
      outcome.ec = ec;
      outcome.result = detail::describe_failure(connection_.native_handle(), ec.value(),
                                                "recording the request id", insert_.sql());
    }
  }

  if (outcome.ec) {
    // A replica refusal, a mount gone away (an I/O error: the transaction cannot be
    // trusted, nor can the other writes commit), or an error after which SQLite rolled
    // back the whole transaction (e.g. SQLITE_FULL, SQLITE_BUSY): the batch cannot commit.
    if (kind_of_failure(outcome.ec, system_errno()) != failure_kind::other || connection_.autocommit()) {
      return statement_failure(outcome.ec, outcome.result);
    }
    run_prepared(rollback_to_, ec, message);
    if (!ec) run_prepared(release_, ec, message);
    if (ec) return statement_failure(ec, message);
    return std::nullopt;
  }
  run_prepared(release_, ec, message);
  if (ec) return statement_failure(ec, message);
  return std::nullopt;
}

// Runs one of fwd's own statements that return no rows (a savepoint's SAVEPOINT, RELEASE
// or ROLLBACK TO, prepared once per connection rather than parsed for every write).
inline void write_executor_state::run_prepared(statement& stmt, boost::system::error_code& ec,
                                               std::string& message) noexcept {
  stmt.step(ec);
  stmt.reset();
  if (ec) {
    try {
      message = detail::describe_failure(connection_.native_handle(), ec.value(), "exec", stmt.sql());
    } catch (...) {
    }
  }
}

inline bool write_executor_state::has_unresolved_deferred_foreign_keys() const noexcept {
  int current = 0;
  int highest = 0;
  sqlite3_db_status(connection_.native_handle(), SQLITE_DBSTATUS_DEFERRED_FKS, &current, &highest, 0);
  return current > 0;
}

// The dedup table, created with its procedure column, or given it (ALTER TABLE ADD COLUMN:
// old rows keep NULL there) when an earlier version created it without. Runs inside the
// batch's transaction, so a failed migration leaves nothing behind.
inline void write_executor_state::prepare_schema(boost::system::error_code& ec, std::string& message) {
  connection_.exec(fmt::format("CREATE TABLE IF NOT EXISTS {}(id BLOB PRIMARY KEY, result BLOB NOT NULL, "
                               "created_at INTEGER NOT NULL, procedure TEXT) WITHOUT ROWID",
                               dedup_table_name),
                   ec, &message);
  if (ec) return;
  bool has_procedure = false;
  {
    sqlite3_stmt* columns = nullptr;
    const std::string sql = fmt::format("SELECT name FROM pragma_table_info('{}')", dedup_table_name);
    int rc = sqlite3_prepare_v2(connection_.native_handle(), sql.c_str(), -1, &columns, nullptr);
    if (rc == SQLITE_OK) {
      while ((rc = sqlite3_step(columns)) == SQLITE_ROW) {
        const auto* name = reinterpret_cast<const char*>(sqlite3_column_text(columns, 0));
        if (name != nullptr && std::string_view(name) == "procedure") has_procedure = true;
      }
    }
    sqlite3_finalize(columns);
    if (rc != SQLITE_DONE) {
      ec = make_sqlite_error(sqlite3_extended_errcode(connection_.native_handle()));
      message = detail::describe_failure(connection_.native_handle(), ec.value(),
                                         "reading the dedup table's columns", sql);
      return;
    }
  }
  if (!has_procedure) {
    connection_.exec(fmt::format("ALTER TABLE {} ADD COLUMN procedure TEXT", dedup_table_name), ec, &message);
    if (ec) return;
  }
  try {
    lookup_ = connection_.prepare(fmt::format("SELECT result, procedure FROM {} WHERE id = ?1", dedup_table_name));
    insert_ = connection_.prepare(fmt::format(
        "INSERT INTO {}(id, result, created_at, procedure) VALUES (?1, ?2, ?3, ?4)", dedup_table_name));
    prune_ = connection_.prepare(fmt::format("DELETE FROM {} WHERE created_at < ?1", dedup_table_name));
    savepoint_ = connection_.prepare(fmt::format("SAVEPOINT {}", write_savepoint_name));
    release_ = connection_.prepare(fmt::format("RELEASE {}", write_savepoint_name));
    rollback_to_ = connection_.prepare(fmt::format("ROLLBACK TO {}", write_savepoint_name));
  } catch (const fwd::error& e) {
    ec = boost::system::error_code(e.code());
    message = e.what();
  }
}

inline bool write_executor_state::prune_due() const noexcept {
  return commits_since_prune_ + 1 >= options_.prune_every_commits ||
         std::chrono::steady_clock::now() - last_prune_ >= options_.prune_interval;
}

inline std::optional<write_outcome> write_executor_state::prune(std::int64_t now_ms) {
  boost::system::error_code ec;
  prune_.reset().bind(1, now_ms - static_cast<std::int64_t>(options_.dedup_retention.count()));
  prune_.step(ec);
  prune_.reset();
  if (ec && (kind_of_failure(ec, system_errno()) != failure_kind::other || connection_.autocommit())) {
    return statement_failure(ec, detail::describe_failure(connection_.native_handle(), ec.value(),
                                                          "pruning old request ids", prune_.sql()));
  }
  // A failed prune alone does not fail the writes: SQLite undid the statement, and the
  // next prune tries again.
  if (!ec) {
    commits_since_prune_ = 0;
    last_prune_ = std::chrono::steady_clock::now();
  }
  return std::nullopt;
}

inline void write_executor_state::finish(const std::vector<std::shared_ptr<write_job>>& batch,
                                         std::vector<write_outcome>& outcomes, litefs::position pos) {
  std::vector<std::vector<std::unique_ptr<write_waiter>>> waiters(batch.size());
  {
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      pending_.erase(batch[i]->id);
      waiters[i] = std::move(batch[i]->waiters);
    }
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const litefs::position job_pos = outcomes[i].ec ? litefs::position{} : pos;
    for (std::size_t w = 0; w < waiters[i].size(); ++w) {
      std::string result = w + 1 == waiters[i].size() ? std::move(outcomes[i].result) : outcomes[i].result;
      waiters[i][w]->complete(outcomes[i].ec, std::move(result), job_pos);
    }
  }
}

}  // namespace fwd::sqlite::detail

// ---- end fwd/write/detail/write_batch.hpp ----

// ---- end fwd/write/detail/write_executor_state.hpp ----
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#endif

namespace fwd::sqlite {

/**
 * The primary's writer: runs writes on one SQLite connection, exactly once per request
 * id, many writes per transaction.
 *
 * **Thread.** All blocking SQLite work runs on one writer thread that the write executor
 * owns (named "fwd-writer" on Linux), or, if write_options::work_executor is set, on that
 * executor (one batch at a time). Completions never run there: each is posted to the
 * handler's associated executor (by default this object's executor).
 *
 * **A batch** is one `BEGIN IMMEDIATE ... COMMIT` transaction holding up to `max_batch`
 * writes that were waiting (optionally gathered for up to `max_batch_delay`). In it, each
 * write runs in its own `SAVEPOINT`: if it fails (throws, violates a constraint, leaves a
 * deferred foreign key unresolved) only it is rolled back. A write completes only after
 * its batch's COMMIT succeeded. If COMMIT fails, every write of the batch fails: with
 * COMMIT's own error when that proves nothing was committed (SQLITE_BUSY, a constraint,
 * LiteFS's refusal on a replica), otherwise with errc::commit_unknown ("maybe executed":
 * COMMIT may have reached the database; a retry with the same request id is answered
 * from the dedup table if it did).
 *
 * **Exactly once.** The table `_fwd_requests(id BLOB PRIMARY KEY, result BLOB NOT NULL,
 * created_at INTEGER NOT NULL, procedure TEXT)` (created if missing; created_at in Unix
 * milliseconds; `procedure` added by ALTER TABLE to a table an earlier version created,
 * its old rows NULL) records each successful write's request id, result and procedure in
 * the write's own transaction. A request id found there is answered with the stored
 * result without running anything, if it was recorded for the same procedure (or NULL);
 * for another procedure the write fails with errc::bad_argument, nothing run; for an id
 * whose commit LiteFS was not seen to record (write_options::position_before_batch), with
 * errc::commit_unknown, nothing run. A repeat
 * that arrives while the first is still waiting or running joins it (same procedure). Rows older
 * than `dedup_retention` are pruned inside a write transaction.
 *
 * **Replicas.** SQLITE_READONLY (e.g. 1544) and SQLITE_IOERR_WRITE (778), LiteFS's
 * refusals on a replica, fail the whole batch with errc::not_primary: nothing was applied.
 *
 * **A mount that goes away.** Any other I/O error (SQLITE_IOERR_*, SQLITE_CANTOPEN) before
 * COMMIT means the file system under the database went away (on LiteFS: LiteFS stopped or
 * restarted under the service): the whole batch fails with errc::not_primary (nothing was
 * committed: retryable), and the connection is closed without ROLLBACK (closing it is the
 * rollback; nothing touches the dead mount again) and opened anew before the next batch.
 *
 * Thread-safe: async_write and stop may be called from any thread.
 */
class write_executor {
 public:
  using executor_type = boost::asio::any_io_executor;

  /**
   * Opens `path` (write_options::open_flags) and starts the writer. The dedup table is
   * created by the first write, so opening a replica's database does not fail.
   * Throws fwd::error if the database cannot be opened.
   *
   * @param executor the default executor for completions (handlers with no associated
   *        executor run there).
   */
  write_executor(executor_type executor, const std::string& path, write_options options = {})
      : executor_(std::move(executor)),
        state_(std::make_shared<detail::write_executor_state>(path, std::move(options))) {
    if (!state_->options().work_executor) {
      writer_ = std::thread([state = state_] {
#if defined(__linux__)
        pthread_setname_np(pthread_self(), "fwd-writer");
#endif
        state->run_writer_thread();
      });
      writer_id_ = writer_.get_id();
    }
  }

  /// Uses `context`'s executor for completions.
  template <class ExecutionContext>
  requires std::is_convertible_v<ExecutionContext&, boost::asio::execution_context&> write_executor(
      ExecutionContext& context, const std::string& path, write_options options = {})
      : write_executor(executor_type(context.get_executor()), path, std::move(options)) {}

  write_executor(const write_executor&) = delete;
  write_executor& operator=(const write_executor&) = delete;

  /// Stops (see stop()).
  ~write_executor() { stop(); }

  executor_type get_executor() const noexcept { return executor_; }

  /// The id of the writer thread, or a default id when work runs on a work_executor.
  std::thread::id writer_thread_id() const noexcept { return writer_id_; }

  /// Writes waiting for the writer (not counting the batch that is running).
  std::size_t queued() const { return state_->queued(); }

  /**
   * Runs `work` once for request id `id`, inside a transaction on the writer, and
   * completes with its result after COMMIT.
   *
   * `work(db)` runs its SQL on `db` (wrap it with connection::borrow(db) if useful) and
   * returns the result bytes, which are stored with `id`. It runs inside the executor's
   * transaction: BEGIN, COMMIT, ROLLBACK, END and any use of the executor's savepoint
   * `fwd_write` are refused while it runs (the connection's SQLite authorizer, which
   * refuses only while a work runs: SQLITE_AUTH at prepare), and the write then fails alone with
   * errc::bad_argument, rolled back, while the rest of its batch commits. Savepoints of its
   * own names are fine (they nest). The work must not install an authorizer of its own
   * (the executor's replaces it while the work runs). If it throws, it alone is rolled
   * back: a fwd::error keeps its code (SQLite's extended code, e.g. 2067
   * SQLITE_CONSTRAINT_UNIQUE); any other exception completes with errc::remote_failure.
   *
   * **Completion signature** `void(boost::system::error_code ec, std::string result,
   * litefs::position pos)`: on success `result` is what `work` returned (or returned the
   * first time `id` ran) and `pos` is write_options::position_after_commit's value after
   * the COMMIT (zero without it); on failure `result` describes the failure (the exception's
   * text, or SQLite's message and SQL) and `pos` is zero. Errors: SQLite's codes;
   * errc::not_primary (LiteFS refused, or its mount went away: nothing applied);
   * errc::commit_unknown (COMMIT failed and may have committed, or it succeeded but LiteFS's
   * position shows LiteFS may not keep it: see write_options::position_before_batch; retry
   * with the same id);
   * errc::remote_failure;
   * errc::overloaded (queue full: nothing ran); errc::cancelled (stopped before it ran);
   * errc::timeout (with a deadline, below: it passed before the write ran; nothing ran);
   * errc::bad_argument (empty `work`). The handler runs on its associated executor
   * (default: get_executor()), never inside this call.
   *
   * **Per-Operation Cancellation** (`cancellation_type::terminal`, `partial` or `total`,
   * emitted on the handler's executor): a write that has not started yet is dropped and
   * completes with errc::cancelled, nothing applied (if other callers wait on the same
   * `id`, the write still runs for them). A write that has started runs to its COMMIT
   * and completes normally. stop() cancels every write that has not started.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(detail::write_signature)
                WriteToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_write(const request_id& id, std::function<std::string(sqlite3*)> work,
                   WriteToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<WriteToken, detail::write_signature>(
        initiate_write{state_, executor_}, token, id, std::string(), std::move(work),
        std::chrono::steady_clock::time_point{});
  }

  /**
   * As above, with the request id bound to `procedure` (a name for what `work` does, e.g.
   * a procedure's name and signature): the dedup row records it, and the same id given
   * with another procedure (waiting, running or recorded) is refused with
   * errc::bad_argument, nothing run, instead of answering with the other write's result.
   * The forms without `procedure` bind the id to the empty name. A row recorded before the
   * dedup table had its `procedure` column matches any procedure.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(detail::write_signature)
                WriteToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_write(const request_id& id, std::string procedure, std::function<std::string(sqlite3*)> work,
                   WriteToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<WriteToken, detail::write_signature>(
        initiate_write{state_, executor_}, token, id, std::move(procedure), std::move(work),
        std::chrono::steady_clock::time_point{});
  }

  /**
   * As above, for a caller that stops waiting at `deadline` ({} = never): if the deadline
   * has passed when the writer takes its next batch and the write has not started, it is
   * dropped for this caller, who completes with errc::timeout: it never ran, nothing was
   * applied (the write still runs if another caller of the same `id` has time left). A
   * write that has started runs to its COMMIT whatever the deadline.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(detail::write_signature)
                WriteToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_write(const request_id& id, std::function<std::string(sqlite3*)> work,
                   std::chrono::steady_clock::time_point deadline,
                   WriteToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<WriteToken, detail::write_signature>(
        initiate_write{state_, executor_}, token, id, std::string(), std::move(work), deadline);
  }

  /// Both: the id bound to `procedure`, and a caller that stops waiting at `deadline`.
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(detail::write_signature)
                WriteToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_write(const request_id& id, std::string procedure, std::function<std::string(sqlite3*)> work,
                   std::chrono::steady_clock::time_point deadline,
                   WriteToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<WriteToken, detail::write_signature>(
        initiate_write{state_, executor_}, token, id, std::move(procedure), std::move(work), deadline);
  }

  /**
   * Makes sure the write queued under `id` never runs, if it has not started: it leaves
   * the queue and every caller waiting for it completes with `ec` (e.g. errc::cancelled or
   * errc::timeout) and `why`; nothing was applied. Returns write_drop::dropped then;
   * write_drop::running when the write has started (it runs to its COMMIT and completes
   * normally); write_drop::unknown when no write waits or runs under `id`. Thread-safe.
   */
  write_drop drop_queued(const request_id& id, boost::system::error_code ec, const std::string& why) {
    return state_->drop_queued(id, ec, why);
  }

  /**
   * Stops the writer: the batch that is running finishes (and completes normally); writes
   * still waiting complete with errc::cancelled; later async_write calls complete with
   * errc::cancelled. Blocks until the running batch is done and the writer thread has
   * exited, then closes the connection. Idempotent. From inside a write's `work` it does
   * not wait (the batch is the caller's own).
   */
  void stop() {
    const bool on_writer = std::this_thread::get_id() == writer_id_;
    state_->stop(/*wait=*/!on_writer);
    if (writer_.joinable() && !on_writer) writer_.join();
    if (!writer_.joinable()) state_->close();
  }

  /**
   * Stops without blocking: as stop(), but `handler` (signature `void()`) completes once
   * the running batch, if any, has finished and every write it held has completed.
   * The connection is closed later, by stop() or the destructor.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void()) StopToken =
                boost::asio::default_completion_token_t<executor_type>>
  auto async_stop(StopToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<StopToken, void()>(
        [state = state_, executor = executor_](auto handler) {
          auto done = std::make_shared<fwd::detail::pending_completion<void()>>(std::move(handler), executor);
          state->async_stop([done] { done->post(); });
        },
        token);
  }

 private:
  struct initiate_write {
    std::shared_ptr<detail::write_executor_state> state;
    executor_type executor;

    /// Dispatches a cancellation to the write executor, if it still exists.
    struct cancel_handler {
      cancel_handler(const std::shared_ptr<detail::write_executor_state>& s, std::uint64_t n)
          : state(s), serial(n) {}
      std::weak_ptr<detail::write_executor_state> state;
      std::uint64_t serial;
      void operator()(boost::asio::cancellation_type type) const {
        using boost::asio::cancellation_type;
        if ((type & (cancellation_type::terminal | cancellation_type::partial |
                     cancellation_type::total)) == cancellation_type::none) {
          return;
        }
        if (auto s = state.lock()) s->cancel_waiter(serial);
      }
    };

    template <class Handler>
    void operator()(Handler&& handler, const request_id& id, std::string procedure,
                    std::function<std::string(sqlite3*)> work,
                    std::chrono::steady_clock::time_point deadline) const {
      const std::uint64_t serial = state->next_serial();
      auto waiter = std::make_unique<detail::write_waiter>(serial, std::forward<Handler>(handler),
                                                           executor, deadline);
      // Installed before the write is queued, so that nothing else touches the slot yet.
      auto slot = waiter->slot();
      if (slot.is_connected()) slot.template emplace<cancel_handler>(state, serial);
      state->submit(id, std::move(procedure), std::move(work), std::move(waiter));
    }
  };

  executor_type executor_;
  std::shared_ptr<detail::write_executor_state> state_;
  std::thread writer_;
  std::thread::id writer_id_;
};

}  // namespace fwd::sqlite

// ---- end fwd/write/executor.hpp ----
// ---- begin fwd/write/builtins.hpp ----

// What every node serves on the write path besides the user's procedures: one SQL
// statement with bound parameters, one statement over many parameter rows (bulk), and
// versioned migrations. Also the envelope of a write's reply (the primary's position, TXID
// and checksum, + the result). Their names start with "fwd_write." because the server keeps "fwd." for the
// procedures it answers itself. Includes <sqlite3.h>: only forwarder.hpp and node.hpp include this
// file.

#include <sqlite3.h>

#include <cstdint>
#include <fmt/format.h>
#include <string>
#include <string_view>
#include <tuple>
#include <variant>
#include <vector>

namespace fwd {

/// One SQL value: NULL, INTEGER, REAL, TEXT or BLOB.
using sql_value =
    std::variant<std::monostate, std::int64_t, double, std::string, std::vector<std::uint8_t>>;

/// What a built-in statement procedure returns.
struct statement_result {
  static constexpr std::string_view fwd_type_name = "fwd.statement_result";
  std::int64_t changes = 0;            ///< rows changed (summed over all rows for bulk)
  std::int64_t last_insert_rowid = 0;  ///< sqlite3_last_insert_rowid after the (last) row

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive& changes& last_insert_rowid;
  }
  friend bool operator==(const statement_result&, const statement_result&) = default;
};

/// Built-in: runs one statement with bound parameters (?1, ?2, ...) on the primary.
inline const procedure<statement_result(std::string, std::vector<sql_value>)> execute_statement{
    "fwd_write.execute"};

/// Built-in: runs one statement once per parameter row, all in one transaction (bulk insert).
inline const procedure<statement_result(std::string, std::vector<std::vector<sql_value>>)>
    execute_bulk{"fwd_write.execute_bulk"};

/// One schema migration: applied once, in version order, on the primary.
struct migration {
  static constexpr std::string_view fwd_type_name = "fwd.migration";
  std::int64_t version = 0;  ///< strictly increasing, > 0; recorded in _fwd_migrations
  std::string name;          ///< for humans (kept in the _fwd_migrations table)
  std::string sql;           ///< one or more statements

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive& version& name& sql;
  }
};

/// Built-in: applies the migrations newer than the last recorded one; returns the
/// schema version after it.
inline const procedure<std::int64_t(std::vector<migration>)> migrate_procedure{"fwd_write.migrate"};

namespace detail {

inline void bind_sql_values(sqlite::statement& stmt, const std::vector<sql_value>& values) {
  if (static_cast<int>(values.size()) != stmt.parameter_count()) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("the statement has {} parameters but {} values were given: "
                                 "give one value per parameter",
                                 stmt.parameter_count(), values.size()));
  }
  int index = 1;
  for (const auto& value : values) {
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::monostate>) {
            stmt.bind(index, nullptr);
          } else if constexpr (std::is_same_v<T, std::vector<std::uint8_t>>) {
            stmt.bind(index, sqlite::blob_view(v.data(), v.size()));
          } else {
            stmt.bind(index, v);
          }
        },
        value);
    ++index;
  }
}

inline statement_result run_statement(sqlite3* db, const std::string& sql,
                                      const std::vector<sql_value>& values) {
  auto c = sqlite::connection::borrow(db);
  auto stmt = c.prepare(sql);
  bind_sql_values(stmt, values);
  stmt.execute();
  return {c.changes(), c.last_insert_rowid()};
}

inline statement_result run_bulk(sqlite3* db, const std::string& sql,
                                 const std::vector<std::vector<sql_value>>& rows) {
  auto c = sqlite::connection::borrow(db);
  auto stmt = c.prepare(sql);
  statement_result out;
  for (const auto& row : rows) {
    stmt.reset();
    stmt.clear_bindings();
    bind_sql_values(stmt, row);
    stmt.execute();
    out.changes += c.changes();
  }
  out.last_insert_rowid = c.last_insert_rowid();
  return out;
}

// The highest migration recorded in _fwd_migrations (0 when none: the table is missing).
// fwd keeps its own table rather than SQLite's user_version, which applications and
// tools use for their own purposes.
inline std::int64_t schema_version(sqlite3* db) {
  auto c = sqlite::connection::borrow(db);
  boost::system::error_code ec;
  auto stmt = c.prepare("SELECT coalesce(max(version), 0) FROM _fwd_migrations", ec);
  if (ec) return 0;  // no migration ran yet
  stmt.step();
  return stmt.column_int64(0);
}

inline std::int64_t run_migrations(sqlite3* db, const std::vector<migration>& migrations) {
  std::int64_t previous = 0;
  for (const auto& m : migrations) {
    if (m.version <= previous) {
      throw fwd::error(make_error_code(errc::bad_argument),
                       fmt::format("migration versions must be positive and strictly "
                                   "increasing; version {} follows {}",
                                   m.version, previous));
    }
    previous = m.version;
  }
  auto c = sqlite::connection::borrow(db);
  c.exec(
      "CREATE TABLE IF NOT EXISTS _fwd_migrations(version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
      "applied_at INTEGER NOT NULL)");
  std::int64_t current = schema_version(db);
  for (const auto& m : migrations) {
    if (m.version <= current) continue;
    c.exec(m.sql);
    auto record = c.prepare(
        "INSERT INTO _fwd_migrations(version, name, applied_at) VALUES (?1, ?2, "
        "CAST(strftime('%s','now') AS INTEGER))");
    record.bind(1, m.version).bind(2, m.name).execute();
    current = m.version;
  }
  return current;
}

// A write's reply: the primary's position after the commit (its TXID, then its checksum:
// 8 bytes each, little endian; zero when the primary does not know it), then the encoded
// result. The checksum tells the replica whether the history it reaches at that TXID is
// the primary's (a failover can put another transaction at the same TXID).
struct write_reply {
  litefs::position position;
  std::string_view result;
};

inline constexpr std::size_t write_reply_header = 16;

inline std::string encode_write_reply(const litefs::position& position, std::string_view result) {
  std::string out(write_reply_header, '\0');
  detail::store_le(out.data(), position.txid);
  detail::store_le(out.data() + 8, position.checksum);
  out.append(result);
  return out;
}

/// False when `bytes` is shorter than the position.
inline bool decode_write_reply(std::string_view bytes, write_reply& out) noexcept {
  if (bytes.size() < write_reply_header) return false;
  out.position = litefs::position{detail::load_le<std::uint64_t>(bytes.data()),
                                  detail::load_le<std::uint64_t>(bytes.data() + 8)};
  out.result = bytes.substr(write_reply_header);
  return true;
}

}  // namespace detail
}  // namespace fwd

// ---- end fwd/write/builtins.hpp ----
// ---- begin fwd/write/retry.hpp ----

// Retrying a call: exponential backoff with full jitter, an overall deadline, and a retry
// budget shared by every call of a node, in proportion to the calls it makes, so that a
// failing cluster is not hammered by retries of retries while a failover under load can
// still retry every call.

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>

namespace fwd {

/// How a forwarded call retries. The defaults suit a LAN cluster with sub-second failover.
struct retry_policy {
  /// Attempts in all, the first included. 1 = never retry. The call's deadline bounds
  /// the attempts too: whichever comes first ends the call.
  std::uint32_t max_attempts = 10;
  /// The backoff cap of the first retry; each further retry doubles it (`multiplier`)
  /// up to `max_backoff`. The wait is uniform in [0, cap] ("full jitter").
  std::chrono::milliseconds initial_backoff{10};
  std::chrono::milliseconds max_backoff{1000};
  double multiplier = 2.0;
  /// The node's retry budget (see retry_budget): each call earns `budget_ratio` retries,
  /// counted over the last `budget_window`; on top of that a floor of `budget_capacity`
  /// tokens refilled at `budget_refill_per_second`. Each retry takes one token; a retry
  /// finding none is not made (the call fails with its last error). A capacity and a
  /// ratio of 0 disable the budget (unbounded retries within attempts and deadline).
  double budget_capacity = 100;
  double budget_refill_per_second = 20;
  double budget_ratio = 1.0;
  std::chrono::milliseconds budget_window{10000};
};

/**
 * The cap of the backoff before retry number `retry` (1 = the first retry):
 * `min(max_backoff, initial_backoff * multiplier^(retry-1))`.
 */
inline std::chrono::nanoseconds backoff_cap(const retry_policy& policy,
                                            std::uint32_t retry) noexcept {
  double cap = std::chrono::duration<double, std::nano>(policy.initial_backoff).count();
  const double max = std::chrono::duration<double, std::nano>(policy.max_backoff).count();
  const double multiplier = policy.multiplier < 1.0 ? 1.0 : policy.multiplier;
  for (std::uint32_t i = 1; i < retry && cap < max; ++i) cap *= multiplier;
  return std::chrono::nanoseconds(static_cast<std::int64_t>(std::min(cap, max)));
}

/**
 * The wait before retry number `retry` with full jitter: uniform in [0, backoff_cap].
 * Jitter spreads the retries of many callers that failed together (a failover) so that
 * they do not arrive at the new primary in one burst.
 */
template <class Generator>
std::chrono::nanoseconds full_jitter_backoff(const retry_policy& policy, std::uint32_t retry,
                                             Generator& rng) {
  const auto cap = backoff_cap(policy, retry).count();
  if (cap <= 0) return std::chrono::nanoseconds(0);
  std::uniform_int_distribution<std::int64_t> pick(0, cap);
  return std::chrono::nanoseconds(pick(rng));
}

/// full_jitter_backoff with a thread-local generator.
inline std::chrono::nanoseconds full_jitter_backoff(const retry_policy& policy,
                                                    std::uint32_t retry) {
  thread_local std::minstd_rand rng{std::random_device{}()};
  return full_jitter_backoff(policy, retry, rng);
}

/**
 * The node's retry budget: retries in proportion to the calls it makes, with a floor.
 * Thread-safe.
 *
 * Every call deposits `ratio` tokens (record_call()) and every retry takes one
 * (try_acquire()); on top of that the bucket refills at `floor_per_second` up to
 * `floor_capacity`, so that a node with few calls can still retry. The bucket holds at
 * most `floor_capacity` plus `ratio` times the calls of the last `window`, counted in ten
 * slots of a tenth of the window each: a call's tokens stay whole for at least 90% of the
 * window, then go at once (a lone call after a long idle can always be retried, even with
 * no floor). So a node that serves many calls can retry each of them through a failover
 * (with the default ratio of 1, every call of the last window once more), while a
 * cluster that keeps failing sees at most `ratio` retries per call made, not retries of
 * retries (gRPC's retry throttling and Finagle's retry budget work the same way).
 */
class retry_budget {
 public:
  using clock = std::chrono::steady_clock;

  /// A bucket starting full at `floor_capacity` tokens. A `floor_capacity` of 0 or less
  /// with a `ratio` of 0 or less means "no budget": every retry is allowed.
  retry_budget(double floor_capacity, double floor_per_second, double ratio = 1.0,
               std::chrono::milliseconds window = std::chrono::seconds(10)) noexcept
      : floor_capacity_(floor_capacity < 0 ? 0 : floor_capacity),
        floor_per_second_(floor_per_second < 0 ? 0 : floor_per_second),
        ratio_(ratio < 0 ? 0 : ratio),
        slot_seconds_(std::max(0.001, std::chrono::duration<double>(window).count()) / slot_count),
        tokens_(floor_capacity_),
        last_(clock::now()),
        origin_(last_) {}

  explicit retry_budget(const retry_policy& policy) noexcept
      : retry_budget(policy.budget_capacity, policy.budget_refill_per_second, policy.budget_ratio,
                     policy.budget_window) {}

  /// A call started (its first attempt): it earns `ratio` retries for the node.
  void record_call(clock::time_point now = clock::now()) noexcept {
    if (unlimited()) return;
    std::lock_guard lock(mutex_);
    refill(now);
    slot_calls_[static_cast<std::size_t>(newest_slot_ % slot_count)] += 1.0;
    recent_calls_ += 1.0;
    tokens_ = std::min(capacity(), tokens_ + ratio_);
  }

  /// Takes one token if there is one (at `now`). Returns whether the retry may be made.
  bool try_acquire(clock::time_point now = clock::now()) noexcept {
    if (unlimited()) return true;
    std::lock_guard lock(mutex_);
    refill(now);
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

  /// The tokens left now (for telemetry and tests).
  double available(clock::time_point now = clock::now()) noexcept {
    if (unlimited()) return 0;
    std::lock_guard lock(mutex_);
    refill(now);
    return tokens_;
  }

 private:
  bool unlimited() const noexcept { return floor_capacity_ <= 0 && ratio_ <= 0; }
  double capacity() const noexcept { return floor_capacity_ + ratio_ * recent_calls_; }

  void refill(clock::time_point now) noexcept {
    drop_old_calls(now);
    if (now <= last_) return;
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    if (tokens_ < floor_capacity_) tokens_ = std::min(floor_capacity_, tokens_ + elapsed * floor_per_second_);
    tokens_ = std::min(tokens_, capacity());  // earned tokens go with their calls' slot
  }

  // Moves the window to `now`: the slots that fell out of it forget their calls.
  void drop_old_calls(clock::time_point now) noexcept {
    if (now <= origin_) return;
    const auto slot = static_cast<std::int64_t>(
        std::chrono::duration<double>(now - origin_).count() / slot_seconds_);
    if (slot <= newest_slot_) return;
    const std::int64_t steps = std::min<std::int64_t>(slot - newest_slot_, slot_count);
    for (std::int64_t i = 1; i <= steps; ++i)
      slot_calls_[static_cast<std::size_t>((newest_slot_ + i) % slot_count)] = 0;
    newest_slot_ = slot;
    recent_calls_ = 0;
    for (double calls : slot_calls_) recent_calls_ += calls;
  }

  static constexpr std::int64_t slot_count = 10;

  const double floor_capacity_;
  const double floor_per_second_;
  const double ratio_;
  const double slot_seconds_;
  std::mutex mutex_;
  double tokens_;
  double recent_calls_ = 0;  // the sum of slot_calls_
  std::array<double, slot_count> slot_calls_{};
  std::int64_t newest_slot_ = 0;  // slots since origin_
  clock::time_point last_;
  clock::time_point origin_;
};

}  // namespace fwd

// ---- end fwd/write/retry.hpp ----
// ---- begin fwd/write/breaker.hpp ----

// A circuit breaker per peer: after repeated transport failures to one peer, calls to it
// fail at once with errc::circuit_open (nothing sent) for a cool-down, then one trial call
// decides whether the peer is back. It stops a node from queueing work for a dead peer.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace fwd {

/// A breaker's state.
enum class breaker_state {
  closed,     ///< calls pass
  open,       ///< calls fail at once with circuit_open until the cool-down ends
  half_open,  ///< after the cool-down: a limited number of trial calls pass
};

/// "closed", "open" or "half-open".
constexpr const char* to_string(breaker_state s) noexcept {
  switch (s) {
    case breaker_state::closed:
      return "closed";
    case breaker_state::open:
      return "open";
    case breaker_state::half_open:
      return "half-open";
  }
  return "?";
}

/// When a breaker opens and how long it stays open.
struct breaker_options {
  /// Consecutive failures that open the breaker. 0 disables the breaker (always closed).
  std::uint32_t failure_threshold = 5;
  /// How long an open breaker refuses calls before letting trial calls through.
  std::chrono::milliseconds open_duration{500};
  /// Trial calls allowed at once in half-open; one success closes the breaker, one
  /// failure opens it again for another open_duration.
  std::uint32_t half_open_max_calls = 1;
};

/**
 * One peer's circuit breaker. Thread-safe. Callers ask allow() before sending, and
 * report the outcome with on_success() / on_failure() (count only failures that say
 * something about the peer: unreachable, connection lost, timeout; not the procedure's
 * own errors).
 */
class circuit_breaker {
 public:
  using clock = std::chrono::steady_clock;

  explicit circuit_breaker(breaker_options options = {}) noexcept : options_(options) {}

  /// Whether a call may be sent now. In half-open, it reserves one of the trial slots:
  /// report the call's outcome.
  bool allow(clock::time_point now = clock::now()) noexcept {
    if (options_.failure_threshold == 0) return true;
    std::lock_guard lock(mutex_);
    if (state_ == breaker_state::open) {
      if (now < open_until_) return false;
      state_ = breaker_state::half_open;
      trials_ = 0;
    }
    if (state_ == breaker_state::half_open) {
      if (trials_ >= options_.half_open_max_calls) return false;
      ++trials_;
    }
    return true;
  }

  /// The call succeeded: closes the breaker. Returns the state before.
  breaker_state on_success() noexcept {
    std::lock_guard lock(mutex_);
    const breaker_state before = state_;
    failures_ = 0;
    state_ = breaker_state::closed;
    trials_ = 0;
    return before;
  }

  /// The call failed at the transport: may open the breaker. Returns the state after.
  breaker_state on_failure(clock::time_point now = clock::now()) noexcept {
    if (options_.failure_threshold == 0) return breaker_state::closed;
    std::lock_guard lock(mutex_);
    ++failures_;
    if (state_ == breaker_state::half_open || failures_ >= options_.failure_threshold) {
      state_ = breaker_state::open;
      open_until_ = now + options_.open_duration;
      trials_ = 0;
    }
    return state_;
  }

  /// The state now (an open breaker whose cool-down ended reports half_open).
  breaker_state state(clock::time_point now = clock::now()) const noexcept {
    std::lock_guard lock(mutex_);
    if (state_ == breaker_state::open && now >= open_until_) return breaker_state::half_open;
    return state_;
  }

 private:
  breaker_options options_;
  mutable std::mutex mutex_;
  breaker_state state_ = breaker_state::closed;
  std::uint32_t failures_ = 0;
  std::uint32_t trials_ = 0;
  clock::time_point open_until_{};
};

/// One breaker per peer, created on first use. Thread-safe.
class breaker_set {
 public:
  explicit breaker_set(breaker_options options = {}) : options_(options) {}

  /// The breaker of `peer` (e.g. "127.0.0.1:7070"); stays valid as long as the set.
  circuit_breaker& for_peer(std::string_view peer) {
    std::lock_guard lock(mutex_);
    auto it = breakers_.find(peer);
    if (it == breakers_.end()) {
      it = breakers_.emplace(std::string(peer), std::make_unique<circuit_breaker>(options_)).first;
    }
    return *it->second;
  }

 private:
  breaker_options options_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<circuit_breaker>, std::less<>> breakers_;
};

}  // namespace fwd

// ---- end fwd/write/breaker.hpp ----
// ---- begin fwd/write/forward_options.hpp ----

// The settings of a forwarder and of one forwarded call, and what a call reports.

#include <fmt/format.h>
// ---- begin fwd/write/durability.hpp ----

// Durable acknowledgement: how many replicas must hold a write before the primary
// acknowledges it (fwd::durability), and what a replica tells the primary about its
// LiteFS position (position_report, sent with the built-in report_position).
//
// LiteFS replicates asynchronously: a primary that dies before shipping its last
// transactions loses them when a candidate that lacks them is promoted. With a
// durability other than none(), the primary holds a write's reply until enough replicas
// have reported a position at or past the write's commit TXID; if they do not before
// the call's deadline, the call fails with errc::not_yet_durable (committed on the
// primary, not yet known to be replicated: a retry with the same request id is safe).


#include <cstdint>
#include <string>
#include <string_view>

namespace fwd {

/// How many replicas must report a write before the primary acknowledges it.
class durability {
 public:
  enum class kind : std::uint8_t {
    none,        ///< acknowledged once committed on the primary (LiteFS's own guarantee)
    replicas,    ///< once `count()` replicas hold it
    candidates,  ///< once every LiteFS candidate for promotion the primary knows holds it
  };

  /// none().
  constexpr durability() noexcept = default;

  /// Acknowledged once committed on the primary: a failover may lose it.
  static constexpr durability none() noexcept { return {}; }

  /// Acknowledged once `n` replicas have reported a position at or past the write (0: none()).
  static constexpr durability replicas(std::uint16_t n) noexcept {
    if (n == 0) return {};
    return durability(kind::replicas, n > max_replicas ? max_replicas : n);
  }

  /**
   * Acknowledged once every LiteFS candidate for promotion (`lease.candidate: true`) that
   * the primary has heard from recently has reported a position at or past the write, and
   * at least one has: then no promotion of a candidate it knows can lose the write.
   */
  static constexpr durability candidates() noexcept { return durability(kind::candidates, 0); }

  constexpr kind type() const noexcept { return kind_; }
  /// For replicas(n): n; otherwise 0.
  constexpr std::uint16_t count() const noexcept { return count_; }

  /// Its two bytes in a request frame: 0 none, 1..0xfffe replicas(n), 0xffff candidates.
  constexpr std::uint16_t wire() const noexcept {
    switch (kind_) {
      case kind::none: return 0;
      case kind::replicas: return count_;
      case kind::candidates: return 0xffff;
    }
    return 0;
  }
  static constexpr durability from_wire(std::uint16_t value) noexcept {
    if (value == 0xffff) return candidates();
    return replicas(value);
  }

  friend constexpr bool operator==(const durability&, const durability&) = default;

 private:
  static constexpr std::uint16_t max_replicas = 0xfffe;
  constexpr durability(kind k, std::uint16_t n) noexcept : kind_(k), count_(n) {}
  kind kind_ = kind::none;
  std::uint16_t count_ = 0;
};

/// "none", "replicas(N)" or "candidates".
inline std::string to_string(const durability& d) {
  switch (d.type()) {
    case durability::kind::none: return "none";
    case durability::kind::replicas: return "replicas(" + std::to_string(d.count()) + ")";
    case durability::kind::candidates: return "candidates";
  }
  return "?";
}

/// What a replica tells the primary: who it is, which primary its LiteFS follows, and
/// its position in the database.
struct position_report {
  static constexpr std::string_view fwd_type_name = "fwd.position_report";
  std::string hostname;       ///< the replica's LiteFS hostname
  std::string primary;        ///< the primary's LiteFS hostname, as the replica's `.primary` names it
  bool candidate = false;     ///< the replica is a LiteFS candidate for promotion
  std::uint64_t txid = 0;     ///< its `<db>-pos` TXID
  std::uint64_t checksum = 0; ///< and the checksum after it

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive& hostname& primary& candidate& txid& checksum;
  }
};

/// Built-in, served by every node: a replica's position. Answers whether writes waited for
/// durability on this primary lately (the replica then reports each new position at once).
inline const procedure<bool(position_report)> report_position{"fwd_durable.position"};

}  // namespace fwd

// ---- end fwd/write/durability.hpp ----

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#if defined(__linux__)
#include <sys/random.h>
#include <sys/types.h>
#else
#include <openssl/rand.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace fwd {

/// A call's identity, fixed across all its retries (128 bits: see make_request_id()).
using request_id = sqlite::request_id;

namespace detail {

/// Counts fork()s in this process's ancestry: a child bumps it, so every thread's random
/// buffer (copied into the child) is refilled there instead of repeating the parent's bytes.
inline std::atomic<std::uint64_t>& fork_generation() noexcept {
  static std::atomic<std::uint64_t> generation{0};
  return generation;
}

inline void watch_forks() noexcept {
#if defined(__unix__) || defined(__APPLE__)
  static const int registered =
      ::pthread_atfork(nullptr, nullptr, [] { fork_generation().fetch_add(1, std::memory_order_relaxed); });
  (void)registered;
#endif
}

/// Fills `out` with `size` bytes from the operating system's CSPRNG (getrandom(2) on
/// Linux, OpenSSL's RAND_bytes elsewhere). Throws fwd::error if it cannot.
inline void os_random_bytes(std::uint8_t* out, std::size_t size) {
#if defined(__linux__)
  while (size > 0) {
    const ssize_t got = ::getrandom(out, size, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw fwd::error(make_error_code(errc::bad_argument),
                       fmt::format("getrandom(2) failed: {}", std::strerror(errno)));
    }
    out += got;
    size -= static_cast<std::size_t>(got);
  }
#else
  if (::RAND_bytes(out, static_cast<int>(size)) != 1) {
    throw fwd::error(make_error_code(errc::bad_argument), std::string("OpenSSL's RAND_bytes failed"));
  }
#endif
}

/// Per-thread random bytes drawn from the OS in blocks (one getrandom per 25 ids), and
/// dropped after a fork.
class random_buffer {
 public:
  void take(std::uint8_t* out, std::size_t size) {
    const std::uint64_t generation = fork_generation().load(std::memory_order_relaxed);
    if (generation != generation_) {
      used_ = bytes_.size();
      generation_ = generation;
    }
    while (size > 0) {
      if (used_ == bytes_.size()) {
        os_random_bytes(bytes_.data(), bytes_.size());
        used_ = 0;
      }
      const std::size_t n = std::min(size, bytes_.size() - used_);
      std::memcpy(out, bytes_.data() + used_, n);
      // Bytes handed out are not kept in memory.
      std::memset(bytes_.data() + used_, 0, n);
      used_ += n;
      out += n;
      size -= n;
    }
  }

 private:
  std::array<std::uint8_t, 250> bytes_{};
  std::size_t used_ = bytes_.size();
  std::uint64_t generation_ = ~std::uint64_t{0};
};

}  // namespace detail

/**
 * A fresh request id, time-ordered like a UUIDv7: the first 48 bits are the Unix time in
 * milliseconds (big-endian, so ids sort by creation time and the dedup table's B-tree
 * grows at its end), the other 80 bits come from the operating system's CSPRNG (buffered
 * per thread; a child process after fork() never repeats its parent's bytes).
 * Throws fwd::error if the OS has no randomness to give.
 */
inline request_id make_request_id() {
  detail::watch_forks();
  thread_local detail::random_buffer buffer;
  request_id id{};
  const auto ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 std::chrono::system_clock::now().time_since_epoch())
                                                 .count());
  for (std::size_t i = 0; i < 6; ++i) id[i] = static_cast<std::uint8_t>(ms >> (8 * (5 - i)));
  buffer.take(id.data() + 6, id.size() - 6);
  return id;
}

/// How a forwarded write was confirmed on this node (read-your-writes).
enum class write_confirmation {
  none,       ///< not confirmed here (ran locally, read_your_writes off, or it failed)
  checksum,   ///< this node held the primary's TXID with the primary's checksum
  dedup_row,  ///< this node's database holds the write's dedup row (its request id)
};

/// What happened to one call (filled in as the call runs, read after it completes).
struct call_report {
  std::uint32_t attempts = 0;  ///< attempts made (1 = no retry)
  bool ran_locally = false;    ///< the last attempt ran on this node (it was primary)
  std::string peer;            ///< the last peer the call was sent to ("address:port")
  std::uint64_t txid = 0;      ///< the primary's TXID after the commit (0 if unknown)
  std::uint64_t checksum = 0;  ///< the primary's checksum at that TXID (0 if unknown)
  bool waited_for_replication = false;
  write_confirmation confirmation = write_confirmation::none;
  request_id id{};  ///< the call's request id
};

/// Per-call settings of a forwarded write.
struct forward_options {
  /// When the call gives up (default: now + forwarder_options::default_deadline).
  std::optional<std::chrono::steady_clock::time_point> deadline;
  /// The request id (default: fresh random). Give the same id to repeat a call safely.
  std::optional<request_id> id;
  /// Overrides forwarder_options::read_your_writes for this call.
  std::optional<bool> read_your_writes;
  /// Overrides forwarder_options::durability for this call: the primary acknowledges the
  /// write only once that many replicas report having it, else the call fails with
  /// errc::not_yet_durable (committed on the primary) a little before its deadline.
  std::optional<fwd::durability> durability;
  /**
   * Where the call's failure details go (the remote exception, SQLite's message, what
   * was tried on which peer), like boost::mysql::diagnostics. Owned by the caller and
   * must outlive the operation. Cleared when the call is initiated; on failure, filled
   * before the completion handler is invoked; empty after a success. Null: the details
   * are dropped. The blocking forms throw fwd::error carrying them in get_diagnostics().
   */
  fwd::diagnostics* diagnostics = nullptr;
  /// Receives what happened (attempts, where it ran, TXID).
  std::shared_ptr<call_report> report;
};

/// How a forwarder finds, reaches and waits for the primary.
struct forwarder_options {
  std::filesystem::path mount;  ///< the LiteFS mount (holds `<db>-pos`)
  std::string database_name;    ///< the database's file name in the mount
  std::chrono::milliseconds default_deadline{5000};
  retry_policy retry;
  breaker_options breaker;
  /// Wait, after a forwarded write, until this replica's `<db>-pos` reaches the
  /// primary's TXID (bounded by the call's deadline), and confirm that the history it
  /// reached holds the write: the primary's checksum at that TXID, or else the write's
  /// dedup row in the local database. A write that is not there (a failover lost it) is
  /// retried with the same request id while the deadline allows.
  bool read_your_writes = true;
  /// What the primary waits for before it acknowledges a write (see fwd::durability).
  fwd::durability durability;
  /// On the primary: a replica that has not reported its position for this long no longer
  /// counts towards durability (nor is waited for by durability::candidates()).
  std::chrono::milliseconds durability_forget_after{10000};
  /// How often the replication wait re-reads `<db>-pos` (LiteFS's own proxy: 1 ms), when
  /// no `monitor` is given.
  std::chrono::milliseconds replication_poll{1};
  /// This node's LiteFS monitor: read-your-writes waits on it (one shared poll of the
  /// mount, or LiteFS's events) instead of a poll per call.
  std::shared_ptr<litefs::monitor> monitor;
  /// The local role (default: litefs::current_role(mount)); the server side checks it
  /// before running any write.
  std::function<litefs::role()> role;
  telemetry_ptr telemetry;
};

}  // namespace fwd

// ---- end fwd/write/forward_options.hpp ----
// ---- begin fwd/write/forwarder.hpp ----

// The write path. A call runs on the primary exactly once, wherever it starts: on the
// primary it goes to the local write executor (nothing is sent); on a replica it is sent
// to the primary found by discovery (never both). Each call has one request id for all
// its retries, so the primary's dedup table answers a repeated attempt with the stored
// result. Failures are retried by class (not sent / maybe executed / permanent) with
// full-jitter backoff, the call's deadline and a retry budget, through a circuit breaker
// per peer. With read-your-writes (the default) a forwarded call completes only once the
// local replica has replicated the primary's commit and its history is confirmed to hold
// it (the primary's checksum at that TXID, or the write's dedup row); a write a failover
// lost is retried with its request id.

// ---- begin fwd/write/detail/forward_op.hpp ----

// One forwarded call from its first attempt to its completion (fwd::detail::forward_op):
// found, sent or run locally, retried, and waited for until it is replicated here.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
// ---- begin fwd/write/detail/forward_completion.hpp ----

// How a forwarded call reaches its caller: the result is decoded (on the call's strand),
// the caller's diagnostics are filled, and the handler completes through its associated
// executor (a pending_completion).


#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <string>
#include <type_traits>
#include <utility>

namespace fwd::detail {

/// How a completed forwarded call reaches its caller.
struct forward_completion {
  virtual ~forward_completion() = default;
  virtual void complete(boost::system::error_code ec, std::string result, std::string detail) = 0;
};

template <class R>
struct forward_signature_of {
  using type = void(boost::system::error_code, R);
};
template <>
struct forward_signature_of<void> {
  using type = void(boost::system::error_code);
};

// Decodes the result (on the call's strand) and completes the caller's handler through
// its associated executor.
template <class R>
class typed_completion final : public forward_completion {
 public:
  // `diagnostics` (the caller's, may be null) receives the failure's detail before the
  // handler is invoked.
  template <class Handler>
  typed_completion(Handler&& handler, const boost::asio::any_io_executor& fallback,
                   fwd::diagnostics* diagnostics)
      : completion_(std::forward<Handler>(handler), fallback), diagnostics_(diagnostics) {}

  boost::asio::cancellation_slot slot() const noexcept { return completion_.slot(); }

  void complete(boost::system::error_code ec, std::string result, std::string why) override {
    if (ec) report(std::move(why));
    // Posted: the call may complete before its initiating call returns (a stopped node).
    if constexpr (std::is_void_v<R>) {
      if (!ec) {
        fwd::detail::decode_result<void>(result, ec);
        if (ec) report("the result could not be decoded");
      }
      completion_.post(ec);
    } else {
      R value{};
      if (!ec) {
        std::string decode_why;
        value = fwd::detail::decode_result<R>(result, ec, &decode_why);
        if (ec) report(fmt::format("the result could not be decoded: {}", decode_why));
      }
      completion_.post(ec, std::move(value));
    }
  }

 private:
  void report(std::string detail) {
    if (diagnostics_ != nullptr) diagnostics_->assign(std::move(detail));
  }

  fwd::detail::pending_completion<typename forward_signature_of<R>::type> completion_;
  fwd::diagnostics* diagnostics_;
};

}  // namespace fwd::detail

// ---- end fwd/write/detail/forward_completion.hpp ----
// ---- begin fwd/write/detail/dedup_lookup.hpp ----

// Whether a write's dedup row (`_fwd_requests`, keyed by its request id) is in this node's
// copy of the database: the proof that a forwarded write is here when the position's
// checksum cannot tell (the replica went past the write's TXID without seeing it). Read
// only, on a connection opened for a batch of lookups and closed after it (a connection
// kept across a LiteFS restart would point at the dead mount). Internal.

#include <sqlite3.h>


#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace fwd::detail {

enum class dedup_row {
  present,  ///< the row is there: the write is in this node's database
  absent,   ///< no such row (or no dedup table yet): the write is not here
  unknown,  ///< the database could not be read (busy, missing, unreadable)
};

/// Looks every id of `ids` up in the database at `path`, read-only, on one connection,
/// waiting at most `busy` for a lock: the answer for `ids[i]` is `rows[i]`. `why` receives
/// the failure when an answer is `unknown`.
inline std::vector<dedup_row> find_dedup_rows(const std::string& path, const std::vector<sqlite::request_id>& ids,
                                              std::chrono::milliseconds busy, std::string& why) {
  std::vector<dedup_row> rows(ids.size(), dedup_row::unknown);
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    why = fmt::format("cannot open {} read-only: {}", path, db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close(db);
    return rows;
  }
  sqlite3_busy_timeout(db, static_cast<int>(busy.count()));
  sqlite3_stmt* stmt = nullptr;
  const std::string sql = fmt::format("SELECT 1 FROM {} WHERE id = ?1", sqlite::dedup_table_name);
  rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    // No dedup table: no write ever committed in this history.
    const bool no_table = rc == SQLITE_ERROR &&
                          std::string(sqlite3_errmsg(db)).find("no such table") != std::string::npos;
    if (no_table) {
      std::fill(rows.begin(), rows.end(), dedup_row::absent);
    } else {
      why = fmt::format("cannot read {} in {}: {}", sqlite::dedup_table_name, path, sqlite3_errmsg(db));
    }
  } else {
    // One read transaction for all of them: one snapshot, one lock taken.
    const bool in_transaction = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      sqlite3_bind_blob(stmt, 1, ids[i].data(), static_cast<int>(ids[i].size()), SQLITE_STATIC);
      rc = sqlite3_step(stmt);
      if (rc == SQLITE_ROW) {
        rows[i] = dedup_row::present;
      } else if (rc == SQLITE_DONE) {
        rows[i] = dedup_row::absent;
      } else {
        why = fmt::format("cannot read {} in {}: {}", sqlite::dedup_table_name, path, sqlite3_errmsg(db));
      }
      sqlite3_reset(stmt);
    }
    if (in_transaction) sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return rows;
}

/// Looks `id` up in the database at `path`, read-only, waiting at most `busy` for a lock.
/// `why` receives the failure when the answer is `unknown`.
inline dedup_row find_dedup_row(const std::string& path, const sqlite::request_id& id,
                                std::chrono::milliseconds busy, std::string& why) {
  return find_dedup_rows(path, std::vector<sqlite::request_id>{id}, busy, why).front();
}

/**
 * The dedup-row lookups of one node's calls, run on the LiteFS monitor's polling thread
 * (never on an io_context thread: a hung mount may never answer) and batched there: the
 * lookups queued while the thread was busy (polling, or answering the last batch) are
 * answered from one connection and one read transaction. Under load, a replica confirms
 * many writes that went past unseen at once; opening a connection for each (several FUSE
 * calls on LiteFS) made the polling thread, which also polls the position the calls wait
 * for, the bottleneck.
 */
class dedup_lookups : public std::enable_shared_from_this<dedup_lookups> {
 public:
  /// Receives the answer and, when it is `unknown`, why; on the polling thread.
  using answer = std::function<void(dedup_row, std::string)>;

  explicit dedup_lookups(std::string path) : path_(std::move(path)) {}

  /// Queues a lookup of `id`, waiting at most `busy` for a lock. False when the polling
  /// thread is not running: nothing was queued and `done` is never called.
  bool submit(litefs::monitor& monitor, const sqlite::request_id& id, std::chrono::milliseconds busy, answer done) {
    std::uint64_t ticket;
    {
      std::lock_guard lock(mutex_);
      ticket = ++next_ticket_;
      pending_.push_back({ticket, id, busy, std::move(done)});
    }
    // One job per lookup keeps the queue simple; the first job to run answers every lookup
    // queued by then, and the rest find nothing left to do.
    if (monitor.run_on_polling_thread([weak = weak_from_this()] {
          if (const auto self = weak.lock()) self->answer_pending();
        })) {
      return true;
    }
    std::lock_guard lock(mutex_);
    std::erase_if(pending_, [ticket](const lookup& l) { return l.ticket == ticket; });
    return false;
  }

 private:
  struct lookup {
    std::uint64_t ticket;
    sqlite::request_id id;
    std::chrono::milliseconds busy;
    answer done;
  };

  void answer_pending() {
    std::vector<lookup> batch;
    {
      std::lock_guard lock(mutex_);
      batch.swap(pending_);
    }
    if (batch.empty()) return;
    std::vector<sqlite::request_id> ids;
    ids.reserve(batch.size());
    std::chrono::milliseconds busy{0};
    for (const auto& l : batch) {
      ids.push_back(l.id);
      busy = std::max(busy, l.busy);
    }
    std::string why;
    const std::vector<dedup_row> rows = find_dedup_rows(path_, ids, busy, why);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      batch[i].done(rows[i], rows[i] == dedup_row::unknown ? why : std::string{});
    }
  }

  const std::string path_;
  std::mutex mutex_;
  std::uint64_t next_ticket_ = 0;  // guarded by mutex_
  std::vector<lookup> pending_;    // guarded by mutex_
};

}  // namespace fwd::detail

// ---- end fwd/write/detail/dedup_lookup.hpp ----
// ---- begin fwd/write/detail/forward_core.hpp ----

// The state a forwarder's calls share: its executor and options, the RPC client, the
// primary finder, the local writer, the retry budget, the breakers and the procedures
// served locally. Kept alive by the calls.

// ---- begin fwd/write/detail/durability_tracker.hpp ----

// The primary's side of durable acknowledgement: the positions its replicas report, and
// the writes waiting until enough of them have reached their commit TXID. All the writes
// of one group-commit batch wait for the same TXID, so one report releases them together.
//
// A TXID alone does not show that a replica holds this primary's history: a replica that
// still holds a lost history (a former primary's last transactions, not yet replaced by
// LiteFS's resync) can report a TXID at or past a write that it does not have. So the
// tracker remembers this primary's recent commits (TXID -> checksum: those fwd's writer
// made, and every position the node's LiteFS monitor saw, which includes the commits of
// the service's own connections) and counts a replica only while its position is one of
// them with the same checksum, or older than any it remembers; a replica ahead of this
// primary's last commit, or at one of its TXIDs with another checksum, is on another
// history and does not count until it reports again.


#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace fwd::detail {

class durability_tracker : public std::enable_shared_from_this<durability_tracker> {
 public:
  using clock = std::chrono::steady_clock;
  /// Receives success, or errc::not_yet_durable / errc::cancelled and why.
  using handler = std::function<void(boost::system::error_code, std::string)>;

  /// `forget_after`: a replica that has not reported for that long no longer counts (nor,
  /// for candidates(), is waited for). `hurry_for`: how long after a durable write the
  /// replicas are told to report every new position at once.
  durability_tracker(boost::asio::any_io_executor executor, std::chrono::milliseconds forget_after,
                     std::chrono::milliseconds hurry_for = std::chrono::milliseconds(2000))
      : executor_(std::move(executor)), forget_after_(forget_after), hurry_for_(hurry_for) {}

  /// Records a replica's position (from a replica of this primary). Returns whether
  /// durable writes waited lately.
  bool report(const position_report& r) {
    std::vector<std::shared_ptr<waiter>> released;
    bool hurry = false;
    {
      std::lock_guard lock(mutex_);
      const auto now = clock::now();
      replica& entry = replicas_[r.hostname];
      entry.txid = r.txid;
      entry.checksum = r.checksum;
      entry.candidate = r.candidate;
      entry.seen = now;
      release_satisfied_locked(now, released);
      hurry = !waiters_.empty() || now - last_wait_ < hurry_for_;
    }
    for (auto& w : released) finish(w, {}, {});
    return hurry;
  }

  /// Records a commit of this node's history (any thread, any order): a write's commit
  /// (the writes of one batch share it), or a position its LiteFS monitor saw. A TXID
  /// recorded again with another checksum starts a new history: the commits recorded at
  /// or after it are forgotten.
  void note_commit(std::uint64_t txid, std::uint64_t checksum) {
    if (txid == 0) return;
    std::vector<std::shared_ptr<waiter>> released;
    {
      std::lock_guard lock(mutex_);
      // Commits may be noted out of order (their replies run on any io thread): only the
      // same TXID with another checksum tells of a new history.
      const auto same = commits_.find(txid);
      if (same != commits_.end()) {
        if (same->second == checksum) return;
        commits_.erase(same, commits_.end());
      }
      commits_.emplace(txid, checksum);
      while (commits_.size() > commits_kept) commits_.erase(commits_.begin());
      // A replica that reported this commit before it was noted here counts from now on.
      if (!waiters_.empty()) release_satisfied_locked(clock::now(), released);
    }
    for (auto& w : released) finish(w, {}, {});
  }

  /**
   * Calls `done` (posted to the executor, exactly once) when `d` holds for `txid`, or
   * with errc::not_yet_durable at `deadline` or on stop().
   */
  void async_wait(std::uint64_t txid, durability d, clock::time_point deadline, handler done) {
    auto w = std::make_shared<waiter>(executor_);
    w->txid = txid;
    w->required = d;
    w->done = std::move(done);
    {
      std::lock_guard lock(mutex_);
      const auto now = clock::now();
      last_wait_ = now;
      if (stopped_) {
        post_done(std::move(w->done), make_error_code(errc::not_yet_durable), stopped_detail(*w));
        return;
      }
      if (satisfied(*w, now)) {
        post_done(std::move(w->done), {}, {});
        return;
      }
      waiters_.push_back(w);
      // Armed under the lock: a report that releases the waiter cancels the timer after.
      w->timer.expires_at(deadline);
      w->timer.async_wait([weak = weak_from_this(), w](boost::system::error_code ec) {
        if (ec) return;
        if (auto self = weak.lock()) self->expire(w);
      });
    }
  }

  /// Fails every waiter with not_yet_durable; later waits fail so at once.
  void stop() {
    std::list<std::shared_ptr<waiter>> all;
    {
      std::lock_guard lock(mutex_);
      stopped_ = true;
      all.swap(waiters_);
    }
    for (auto& w : all) finish(w, make_error_code(errc::not_yet_durable), stopped_detail(*w));
  }

  /// Writes waiting now (for tests and telemetry).
  std::size_t waiting() const {
    std::lock_guard lock(mutex_);
    return waiters_.size();
  }

 private:
  struct replica {
    std::uint64_t txid = 0;
    std::uint64_t checksum = 0;
    bool candidate = false;
    clock::time_point seen;
  };
  struct waiter {
    explicit waiter(const boost::asio::any_io_executor& ex) : timer(ex) {}
    std::uint64_t txid = 0;
    durability required;
    handler done;
    boost::asio::steady_timer timer;
  };

  bool fresh(const replica& r, clock::time_point now) const noexcept { return now - r.seen < forget_after_; }

  // With the lock held: whether the replica's position can be on this primary's history
  // (see the top of this file). Positions older than every commit remembered cannot be
  // checked and count, as they did before any commit was remembered.
  bool on_this_history(const replica& r) const {
    if (commits_.empty() || r.txid < commits_.begin()->first) return true;
    if (r.txid > commits_.rbegin()->first) return false;
    const auto at = commits_.find(r.txid);
    return at == commits_.end() || at->second == r.checksum;
  }

  // With the lock held: the replica counts for a write at `txid`.
  bool holds(const replica& r, std::uint64_t txid, clock::time_point now) const {
    return fresh(r, now) && r.txid >= txid && on_this_history(r);
  }

  // With the lock held: takes the waiters whose durability now holds.
  void release_satisfied_locked(clock::time_point now, std::vector<std::shared_ptr<waiter>>& released) {
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (satisfied(**it, now)) {
        released.push_back(std::move(*it));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // With the lock held.
  bool satisfied(const waiter& w, clock::time_point now) const {
    if (w.required.type() == durability::kind::replicas) {
      std::size_t holding = 0;
      for (const auto& [name, r] : replicas_)
        if (holds(r, w.txid, now)) ++holding;
      return holding >= w.required.count();
    }
    if (w.required.type() == durability::kind::candidates) {
      std::size_t known = 0;
      for (const auto& [name, r] : replicas_) {
        if (!r.candidate || !fresh(r, now)) continue;
        if (!holds(r, w.txid, now)) return false;
        ++known;
      }
      return known > 0;
    }
    return true;
  }

  void expire(const std::shared_ptr<waiter>& w) {
    std::string why;
    {
      std::lock_guard lock(mutex_);
      bool found = false;
      for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
        if (*it != w) continue;
        waiters_.erase(it);
        found = true;
        break;
      }
      if (!found) return;  // released (or stopped) meanwhile
      why = describe(*w, clock::now());
    }
    finish(w, make_error_code(errc::not_yet_durable), std::move(why));
  }

  // With the lock held: what the primary saw when the wait ran out.
  std::string describe(const waiter& w, clock::time_point now) const {
    std::string seen;
    for (const auto& [name, r] : replicas_) {
      if (!fresh(r, now)) continue;
      if (w.required.type() == durability::kind::candidates && !r.candidate) continue;
      fmt::format_to(std::back_inserter(seen), "{}{} at TXID {}{}", seen.empty() ? "" : ", ", name, r.txid,
                     on_this_history(r) ? "" : " of another history");
    }
    if (seen.empty()) seen = w.required.type() == durability::kind::candidates ? "no candidate has reported"
                                                                               : "no replica has reported";
    return fmt::format(
        "the write committed on the primary at TXID {}, but durability {} was not reached before the "
        "deadline ({}): it is not yet known to be replicated; retrying with the same request id is safe",
        w.txid, to_string(w.required), seen);
  }

  static std::string stopped_detail(const waiter& w) {
    return fmt::format(
        "the write committed on the primary at TXID {}, but the node stopped before durability {} was "
        "reached: retrying with the same request id is safe",
        w.txid, to_string(w.required));
  }

  void finish(const std::shared_ptr<waiter>& w, boost::system::error_code ec, std::string why) {
    w->timer.cancel();
    post_done(std::move(w->done), ec, std::move(why));
  }

  void post_done(handler done, boost::system::error_code ec, std::string why) {
    boost::asio::post(executor_, [done = std::move(done), ec, why = std::move(why)]() mutable {
      done(ec, std::move(why));
    });
  }

  boost::asio::any_io_executor executor_;
  std::chrono::milliseconds forget_after_;
  std::chrono::milliseconds hurry_for_;
  mutable std::mutex mutex_;
  std::map<std::string, replica, std::less<>> replicas_;
  std::list<std::shared_ptr<waiter>> waiters_;
  static constexpr std::size_t commits_kept = 4096;
  std::map<std::uint64_t, std::uint64_t> commits_;  // this primary's recent TXID -> checksum
  clock::time_point last_wait_{};
  bool stopped_ = false;
};

}  // namespace fwd::detail

// ---- end fwd/write/detail/durability_tracker.hpp ----

#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>
#include <cstddef>
#include <string>
#include <utility>

namespace fwd::detail {

/// The shared state of a forwarder: what every call needs, kept alive by the calls.
struct forward_core {
  boost::asio::any_io_executor executor;
  forwarder_options options;
  std::shared_ptr<rpc::client> client;
  std::shared_ptr<primary_finder> finder;
  std::shared_ptr<sqlite::write_executor> writer;  // set at start
  // The replicas' positions, and the writes this node (as primary) holds until durable.
  std::shared_ptr<durability_tracker> durability;
  // Read-your-writes' dedup-row lookups, batched on the monitor's polling thread.
  std::shared_ptr<dedup_lookups> lookups;
  retry_budget budget;
  breaker_set breakers;
  std::atomic<bool> stopped{false};
  struct local_procedure {
    std::uint64_t signature;
    rpc::registry::raw_handler handler;
  };
  std::map<std::string, local_procedure, std::less<>> procedures;  // filled before start

  /// A call began: it counts until it has completed.
  void call_began() {
    std::lock_guard lock(idle_mutex);
    ++in_flight;
  }

  /// A call completed (its handler is posted): runs the when_idle callbacks at the last.
  void call_ended() {
    std::vector<std::function<void()>> ready;
    {
      std::lock_guard lock(idle_mutex);
      if (--in_flight == 0) ready.swap(on_idle);
    }
    for (auto& f : ready) f();
  }

  /// Runs `f` once no call is in flight (at once if none is).
  void when_idle(std::function<void()> f) {
    {
      std::lock_guard lock(idle_mutex);
      if (in_flight != 0) {
        on_idle.push_back(std::move(f));
        return;
      }
    }
    f();
  }

  std::mutex idle_mutex;
  std::size_t in_flight = 0;                     // guarded by idle_mutex
  std::vector<std::function<void()>> on_idle;    // guarded by idle_mutex

  forward_core(boost::asio::any_io_executor ex, forwarder_options opts,
               std::shared_ptr<rpc::client> c, std::shared_ptr<primary_finder> f)
      : executor(std::move(ex)),
        options(std::move(opts)),
        client(std::move(c)),
        finder(std::move(f)),
        durability(std::make_shared<durability_tracker>(executor, options.durability_forget_after)),
        lookups(std::make_shared<dedup_lookups>((options.mount / options.database_name).string())),
        budget(options.retry),
        breakers(options.breaker) {
    if (!options.role) options.role = [mount = options.mount] { return litefs::current_role(mount); };
  }
};

}  // namespace fwd::detail

// ---- end fwd/write/detail/forward_core.hpp ----
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd {

namespace detail {

inline bool is_transport_failure(const boost::system::error_code& ec) noexcept {
  return ec == errc::unreachable || ec == errc::connection_lost || ec == errc::protocol_error ||
         ec == errc::unauthenticated || ec == errc::version_mismatch;
}

// One forwarded call, from its first attempt to its completion. Runs on its own strand.
class forward_op : public std::enable_shared_from_this<forward_op> {
 public:
  using clock = std::chrono::steady_clock;

  forward_op(std::shared_ptr<forward_core> core, std::string name, std::uint64_t signature,
             std::string arguments, forward_options options,
             std::unique_ptr<forward_completion> completion)
      : core_(std::move(core)),
        strand_(boost::asio::make_strand(core_->executor)),
        timer_(strand_),
        local_timer_(strand_),
        name_(std::move(name)),
        signature_(signature),
        arguments_(std::move(arguments)),
        id_(options.id.value_or(make_request_id())),
        deadline_(options.deadline.value_or(clock::now() + core_->options.default_deadline)),
        read_your_writes_(options.read_your_writes.value_or(core_->options.read_your_writes)),
        durability_(options.durability.value_or(core_->options.durability)),
        report_(options.report ? std::move(options.report) : std::make_shared<call_report>()),
        completion_(std::move(completion)) {
    report_->id = id_;
    core_->call_began();
  }

  ~forward_op() {
    if (!counted_out_) core_->call_ended();
  }

  void start() {
    core_->budget.record_call();  // each call earns the node a retry (retry_budget)
    boost::asio::post(strand_, [self = shared_from_this()] { self->attempt(); });
  }

  // Terminal cancellation: the call completes with cancelled now. A local write that has
  // not started is dropped from the writer's queue (it never runs); one already running,
  // or an attempt already sent, may still commit (once, under the call's request id).
  void cancel() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      if (self->done_) return;
      self->timer_.cancel();
      // A read-your-writes wait leaves the monitor now, not at its deadline.
      self->replication_wait_.emit(boost::asio::cancellation_type::terminal);
      if (self->local_waiting_ &&
          self->drop_local(make_error_code(errc::cancelled), "the call was cancelled before its write ran")) {
        self->finish(make_error_code(errc::cancelled),
                     "the call was cancelled before its write started on this node (the primary): it "
                     "never ran, nothing was applied");
        return;
      }
      self->finish(make_error_code(errc::cancelled),
                   "the call was cancelled: it may have run (or may still run) on the primary, once under "
                   "its request id; a retry with the same forward_options::id is safe and learns the outcome");
    });
  }

 private:
  void attempt() {
    if (done_) return;
    if (core_->stopped.load()) {
      finish(make_error_code(errc::cancelled), "the node is shutting down");
      return;
    }
    if (clock::now() >= deadline_) {
      finish_deadline();
      return;
    }
    ++report_->attempts;
    if (const primary_location* hit = core_->finder->cached()) {
      on_location(*hit);
      return;
    }
    core_->finder->async_find(
        deadline_, [self = shared_from_this()](boost::system::error_code e, primary_location w) {
          boost::asio::post(self->strand_, [self, e, w = std::move(w)] { self->on_found(e, w); });
        });
  }

  void on_found(boost::system::error_code ec, const primary_location& where) {
    if (done_) return;
    if (ec) {
      std::string why = ec == errc::no_primary
                            ? fmt::format("no primary found: {}", core_->finder->last_failure())
                            : ec.message();
      on_failure(ec, std::move(why));
      return;
    }
    on_location(where);
  }

  void on_location(const primary_location& where) {
    if (where.local) {
      run_local();
    } else {
      send(where);
    }
  }

  void run_local() {
    report_->ran_locally = true;
    report_->peer.clear();
    const auto found = core_->procedures.find(name_);
    if (found == core_->procedures.end() || found->second.signature != signature_) {
      finish(make_error_code(found == core_->procedures.end() ? errc::unknown_procedure
                                                              : errc::signature_mismatch),
             fmt::format("procedure '{}' is not defined on this node with this signature: define it "
                         "with node.define",
                         name_));
      return;
    }
    const auto& t = core_->options.telemetry;
    const auto started = clock::now();
    fwd::detail::emit(t, &telemetry::call_started,
                      call_started_event{name_, {}, report_->attempts});
    const rpc::incoming_call call{name_, signature_, arguments_, id_, deadline_, durability_.wire()};
    // The write handler may answer from any thread: hop to the strand.
    const std::uint64_t local_attempt = ++local_attempts_;
    rpc::reply_handler reply = [self = shared_from_this(), started, local_attempt](boost::system::error_code ec,
                                                                    std::string payload) {
      boost::asio::post(self->strand_, [self, started, local_attempt, ec, payload = std::move(payload)]() mutable {
        if (self->local_attempts_ == local_attempt) {
          self->local_waiting_ = false;
          self->local_timer_.cancel();
        }
        const auto& tel = self->core_->options.telemetry;
        fwd::detail::emit(
            tel, &telemetry::call_finished,
            call_finished_event{
                self->name_, {}, self->report_->attempts, clock::now() - started, ec});
        if (self->done_) return;
        if (ec) {
          self->on_failure(ec, std::move(payload));
          return;
        }
        self->on_reply(std::move(payload), /*remote=*/false);
      });
    };
    // Answered exactly once, also when the handler throws or drops its reply.
    auto answer = std::make_shared<rpc::detail::reply_once>(std::move(reply), core_->executor, name_);
    rpc::reply_handler forward = [answer](boost::system::error_code ec, std::string payload) {
      answer->complete(ec, std::move(payload));
    };
    // The local call ends at its deadline even when the writer is busy: a write still
    // queued is dropped then, one running is reported as maybe executed.
    local_waiting_ = true;
    local_timer_.expires_at(deadline_);
    local_timer_.async_wait([self = shared_from_this(), local_attempt](boost::system::error_code e) {
      if (e || self->done_ || !self->local_waiting_ || self->local_attempts_ != local_attempt) return;
      self->local_deadline();
    });
    try {
      found->second.handler(call, core_->executor, std::move(forward));
    } catch (...) {
      answer->fail(std::current_exception());
    }
  }

  // Drops the local write from the writer's queue if it has not started; true if dropped.
  bool drop_local(boost::system::error_code ec, const char* why) {
    const auto writer = core_->writer;
    return writer && writer->drop_queued(id_, ec, fmt::format("{}: it never ran, nothing was applied", why)) ==
                         sqlite::write_drop::dropped;
  }

  void local_deadline() {
    local_waiting_ = false;
    if (drop_local(make_error_code(errc::timeout), "the call's deadline passed before its write ran")) {
      finish(make_error_code(errc::timeout),
             "the call's deadline passed while its write was queued on this node (the primary): it "
             "never ran, nothing was applied (not executed)");
      return;
    }
    finish(make_error_code(errc::timeout),
           "the call's deadline passed while its write was running on this node (the primary): it may "
           "commit (maybe executed); a retry with the same forward_options::id is safe and learns the "
           "outcome");
  }

  void send(const primary_location& where) {
    const std::string peer = rpc::detail::endpoint_string(where.endpoint);
    report_->ran_locally = false;
    report_->peer = peer;
    circuit_breaker& breaker = core_->breakers.for_peer(peer);
    if (!breaker.allow()) {
      core_->finder->invalidate();
      on_failure(make_error_code(errc::circuit_open),
                 fmt::format("the circuit breaker for {} is open", peer));
      return;
    }
    rpc::call_options options;
    options.deadline = deadline_;
    options.request_id = id_;
    options.attempt = report_->attempts;
    options.durability = durability_.wire();
    // One attempt is in flight at a time; its handler keeps this op (and so the
    // diagnostics) alive, and the client fills them before the handler runs.
    options.diagnostics = &attempt_diagnostics_;
    core_->client->async_call_raw(
        where.endpoint, options, name_, signature_, arguments_,
        [self = shared_from_this(), peer](boost::system::error_code e, std::string p) {
          boost::asio::post(self->strand_, [self, peer, e, p = std::move(p)]() mutable {
            self->on_sent(peer, self->attempt_diagnostics_.message(), e, std::move(p));
          });
        });
  }

  void on_sent(const std::string& peer, const std::string& detail, boost::system::error_code ec,
               std::string payload) {
    circuit_breaker& b = core_->breakers.for_peer(peer);
    if (ec && (is_transport_failure(ec) || ec == errc::timeout)) {
      const breaker_state before = b.state();
      const breaker_state after = b.on_failure();
      if (before != after) breaker_changed(peer, after);
    } else {
      const breaker_state before = b.on_success();
      if (before != breaker_state::closed) breaker_changed(peer, breaker_state::closed);
    }
    if (done_) return;
    if (ec) {
      if (ec == errc::not_primary || is_transport_failure(ec)) core_->finder->invalidate();
      on_failure(ec, fmt::format("{}: {}", peer, detail));
      return;
    }
    on_reply(std::move(payload), /*remote=*/true);
  }

  void breaker_changed(const std::string& peer, breaker_state state) {
    fwd::detail::emit(core_->options.telemetry, &telemetry::breaker_changed,
                      breaker_event{peer, to_string(state)});
  }

  void on_reply(std::string payload, bool remote) {
    write_reply reply;
    if (!decode_write_reply(payload, reply)) {
      finish(make_error_code(errc::protocol_error),
             "the write's reply is shorter than its position (TXID and checksum)");
      return;
    }
    primary_position_ = reply.position;
    report_->txid = reply.position.txid;
    report_->checksum = reply.position.checksum;
    result_ = std::string(reply.result);
    if (!remote || !read_your_writes_) {
      finish({}, {});
      return;
    }
    if (primary_position_.txid == 0) {
      // The primary committed but could not read its position (its LiteFS died right
      // after the COMMIT): nothing here can confirm the write. Retried with the same
      // request id, the primary answers from its dedup table with a position.
      on_failure(make_error_code(errc::not_confirmed),
                 "the write committed on the primary, but the primary could not read its LiteFS "
                 "position after the commit, so this node cannot confirm it holds the write");
      return;
    }
    report_->waited_for_replication = true;
    replication_started_ = clock::now();
    wait_replication();
  }

  // Read-your-writes (forward_confirm.hpp): waits for the primary's position here, then
  // confirms that this node's history holds the write.
  std::string replication_lag_detail(litefs::position local) const;
  void wait_replication();
  void on_replicated(litefs::history_match match, litefs::position local);
  void look_up_dedup_row(litefs::history_match match, litefs::position local);
  void on_dedup_row(litefs::history_match match, litefs::position local, dedup_row row, const std::string& why);

  void on_failure(boost::system::error_code ec, std::string detail) {
    if (done_) return;
    if (ec == errc::not_primary) core_->finder->invalidate();
    const error_class cls = classify(ec);
    if (cls == error_class::permanent || cls == error_class::committed_not_durable) {
      finish(ec, std::move(detail));
      return;
    }
    if (core_->stopped.load()) {
      finish(ec, std::move(detail));
      return;
    }
    if (report_->attempts >= core_->options.retry.max_attempts) {
      finish(ec, fmt::format("{} (after {} attempts)", detail, report_->attempts));
      return;
    }
    const auto now = clock::now();
    if (now >= deadline_) {
      finish(ec, fmt::format("{} (the call's deadline passed)", detail));
      return;
    }
    if (!core_->budget.try_acquire(now)) {
      finish(ec, fmt::format("{} (the node's retry budget is exhausted: not retried)", detail));
      return;
    }
    auto wait = full_jitter_backoff(core_->options.retry, report_->attempts);
    if (now + wait > deadline_)
      wait = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline_ - now);
    fwd::detail::emit(core_->options.telemetry, &telemetry::retry,
                      retry_event{name_, report_->attempts + 1, wait, ec});
    last_ec_ = ec;
    last_detail_ = std::move(detail);
    timer_.expires_after(wait);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code e) {
      if (e) return;
      self->attempt();
    });
  }

  void finish_deadline() {
    if (last_ec_) {
      finish(last_ec_, fmt::format("{} (the call's deadline passed while retrying)", last_detail_));
    } else {
      finish(make_error_code(errc::timeout), "the call's deadline passed before it could be sent");
    }
  }

  void finish(boost::system::error_code ec, std::string detail) {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    local_timer_.cancel();
    if (const auto& t = core_->options.telemetry; t && t->write_finished) {
      const auto now = clock::now();
      write_finished_event event{name_, !report_->ran_locally, report_->attempts, now - started_, ec,
                                 report_->waited_for_replication, {}};
      if (event.waited_for_replication) event.replication_wait = now - replication_started_;
      fwd::detail::invoke_hook(t->write_finished, event);
    }
    auto completion = std::move(completion_);
    completion->complete(ec, ec ? std::string() : std::move(result_), std::move(detail));
    counted_out_ = true;
    core_->call_ended();
  }

  std::shared_ptr<forward_core> core_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  boost::asio::steady_timer local_timer_;  // the deadline of a local write
  boost::asio::cancellation_signal replication_wait_;  // cancels the monitor wait
  std::string name_;
  std::uint64_t signature_;
  std::string arguments_;
  request_id id_;
  clock::time_point deadline_;
  clock::time_point started_ = clock::now();
  clock::time_point replication_started_{};
  bool read_your_writes_;
  fwd::durability durability_;
  std::shared_ptr<call_report> report_;
  litefs::position primary_position_;  // the primary's position after the write (from its reply)
  std::unique_ptr<forward_completion> completion_;
  std::string result_;
  boost::system::error_code last_ec_;
  std::string last_detail_;
  diagnostics attempt_diagnostics_;  // the detail of the attempt in flight
  bool done_ = false;
  bool counted_out_ = false;          // call_ended() has been called
  bool local_waiting_ = false;       // a local write was handed to the writer, no answer yet
  std::uint64_t local_attempts_ = 0;  // tells a stale local answer or deadline from the current one
  std::uint64_t lookups_ = 0;         // dedup row lookups begun: tells a stale answer from the current one
  bool looking_up_ = false;           // a dedup row lookup runs on the monitor's thread
};

}  // namespace detail

}  // namespace fwd

// ---- begin fwd/write/detail/forward_confirm.hpp ----

// fwd::detail::forward_op's read-your-writes: after a forwarded write, wait until this
// node reaches the primary's position (TXID, checksum) from the reply, then confirm that
// the history it reached holds the write. A TXID alone proves nothing after a failover
// that lost the old primary's last transactions (the new primary may have written another
// transaction under it): the same checksum at that TXID does, or else the write's dedup
// row in this node's database. A write that is not here is retried with its request id.


#include <algorithm>
#include <chrono>
#include <string>

namespace fwd::detail {

inline std::string forward_op::replication_lag_detail(litefs::position local) const {
  return fmt::format(
      "the write committed on the primary at TXID {} but this node was at TXID {} when the "
      "deadline passed: not confirmed here; a retry with the same forward_options::id is safe "
      "(answered from the primary's dedup table, or run again if a failover lost it)",
      primary_position_.txid, local.txid);
}

// Waits until the local position reaches the primary's TXID (one shared wait on the
// monitor, or a poll of `<db>-pos` as LiteFS's proxy does), then confirms the history.
inline void forward_op::wait_replication() {
  if (done_) return;
  if (const auto& monitor = core_->options.monitor) {
    monitor->async_wait_history(
        primary_position_, deadline_,
        boost::asio::bind_cancellation_slot(
            replication_wait_.slot(),
            boost::asio::bind_executor(
                strand_, [self = shared_from_this()](boost::system::error_code ec, litefs::history_match match,
                                                     litefs::position local) {
                  if (self->done_) return;
                  if (ec) return self->finish(make_error_code(errc::replication_lag), self->replication_lag_detail(local));
                  self->on_replicated(match, local);
                })));
    return;
  }
  boost::system::error_code ec;
  const litefs::position local =
      litefs::read_position(core_->options.mount, core_->options.database_name, ec);
  if (!ec && local.txid >= primary_position_.txid) {
    on_replicated(litefs::compare_at(primary_position_, local), local);
    return;
  }
  if (core_->stopped.load() || clock::now() >= deadline_) {
    finish(make_error_code(errc::replication_lag), replication_lag_detail(local));
    return;
  }
  timer_.expires_after(core_->options.replication_poll);
  timer_.async_wait([self = shared_from_this()](boost::system::error_code e) {
    if (e) return;  // cancelled: cancel() finishes the call
    self->wait_replication();
  });
}

// This node has reached the primary's TXID. The same checksum there proves the write is
// here; otherwise (another transaction at that TXID, or a TXID passed unseen) its dedup
// row decides. A write that is not here was lost in a failover: retried with its id.
inline void forward_op::on_replicated(litefs::history_match match, litefs::position local) {
  if (match == litefs::history_match::same) {
    report_->confirmation = write_confirmation::checksum;
    finish({}, {});
    return;
  }
  look_up_dedup_row(match, local);
}

// The dedup row is read from the database in the mount: a read that a hung LiteFS may never
// answer. With a monitor it runs on the monitor's polling thread (never on an io_context
// thread), batched with the other calls' lookups (dedup_lookups), and the call's deadline
// bounds the wait for its answer; the answer comes back on the strand. Without a monitor,
// the call already reads the mount on its strand (the position's poll), and so does the
// lookup.
inline void forward_op::look_up_dedup_row(litefs::history_match match, litefs::position local) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - clock::now());
  const auto busy = std::clamp(left, std::chrono::milliseconds(1), std::chrono::milliseconds(100));
  const auto& monitor = core_->options.monitor;
  if (!monitor) {
    std::string why;
    const dedup_row row =
        find_dedup_row((core_->options.mount / core_->options.database_name).string(), id_, busy, why);
    on_dedup_row(match, local, row, why);
    return;
  }
  const std::uint64_t lookup = ++lookups_;
  looking_up_ = true;
  // The answer holds the call weakly: a lookup stuck in FUSE past the call's end keeps
  // nothing of the io_context alive. The deadline timer below holds the call until then.
  const bool queued = core_->lookups->submit(
      *monitor, id_, busy, [weak = weak_from_this(), match, local, lookup](dedup_row row, std::string why) {
        if (auto self = weak.lock()) {
          boost::asio::post(self->strand_, [self, match, local, lookup, row, why = std::move(why)] {
            if (self->done_ || !self->looking_up_ || lookup != self->lookups_) return;
            self->looking_up_ = false;
            self->timer_.cancel();
            self->on_dedup_row(match, local, row, why);
          });
        }
      });
  if (!queued) {
    looking_up_ = false;
    on_dedup_row(match, local, dedup_row::unknown, "the LiteFS monitor is stopped");
    return;
  }
  timer_.expires_at(deadline_);
  timer_.async_wait([self = shared_from_this(), match, local, lookup](boost::system::error_code e) {
    if (e || self->done_ || !self->looking_up_ || lookup != self->lookups_) return;
    self->looking_up_ = false;
    self->on_dedup_row(match, local, dedup_row::unknown,
                       "the read did not end by the call's deadline (is the LiteFS mount hung?)");
  });
}

inline void forward_op::on_dedup_row(litefs::history_match match, litefs::position local, dedup_row row,
                                     const std::string& why) {
  if (done_) return;
  if (row == dedup_row::present) {
    report_->confirmation = write_confirmation::dedup_row;
    finish({}, {});
    return;
  }
  // The primary that answered may be gone: find the primary again.
  core_->finder->invalidate();
  const char* seen = match == litefs::history_match::diverged
                         ? "holds another transaction at that TXID"
                         : "went past that TXID without seeing its checksum";
  std::string detail =
      row == dedup_row::absent
          ? fmt::format("the write committed on the primary at TXID {} (checksum {:016x}), but this node "
                        "(now at TXID {}, checksum {:016x}) {} and has no dedup row for its request id: "
                        "a failover lost it",
                        primary_position_.txid, primary_position_.checksum, local.txid, local.checksum, seen)
          : fmt::format("the write committed on the primary at TXID {} (checksum {:016x}), but this node "
                        "(now at TXID {}) {} and its dedup row could not be read: {}",
                        primary_position_.txid, primary_position_.checksum, local.txid, seen, why);
  on_failure(make_error_code(errc::not_confirmed), std::move(detail));
}

}  // namespace fwd::detail

// ---- end fwd/write/detail/forward_confirm.hpp ----

// ---- end fwd/write/detail/forward_op.hpp ----
// ---- begin fwd/write/detail/write_handler.hpp ----

// The server side of a write procedure (also run directly for a local call): checks the
// local role, decodes the arguments and runs the user's function on the write executor.


#include <boost/asio/any_io_executor.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <iterator>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd::detail {

template <class F, class... Ds>
decltype(auto) invoke_writer(F& fn, sqlite3* db, std::tuple<Ds...>& args) {
  return std::apply(
      [&](auto&... values) -> decltype(auto) {
        if constexpr (std::is_invocable_v<F&, sqlite3*, Ds&...>) {
          return std::invoke(fn, db, values...);
        } else {
          auto c = sqlite::connection::borrow(db);
          return std::invoke(fn, c, values...);
        }
      },
      args);
}

// After the commit, with a durability asked: replies once enough replicas have reported a
// position at or past `txid`, or with not_yet_durable a little before the caller's
// deadline (so that the answer reaches it in time). Every write of a batch waits for the
// batch's TXID: one report releases them all.
inline void wait_durable(const std::weak_ptr<forward_core>& weak, rpc::reply_handler reply, durability required,
                         std::chrono::steady_clock::time_point deadline, std::uint64_t txid, std::string payload) {
  const auto core = weak.lock();
  if (!core || txid == 0) {
    std::move(reply)(make_error_code(errc::not_yet_durable),
                     fmt::format("the write committed on the primary, but {}: durability {} cannot be "
                                 "confirmed; retrying with the same request id is safe",
                                 core ? "its TXID is not known (LiteFS's position could not be read, or did not "
                                        "move with the commit)"
                                      : "the node is shutting down",
                                 to_string(required)));
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (deadline == std::chrono::steady_clock::time_point{}) deadline = now + core->options.default_deadline;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
  deadline -= std::clamp(left / 10, std::chrono::milliseconds(2), std::chrono::milliseconds(100));
  auto shared_reply = std::make_shared<rpc::reply_handler>(std::move(reply));
  core->durability->async_wait(txid, required, deadline,
                               [shared_reply, payload = std::move(payload)](boost::system::error_code ec,
                                                                            std::string why) mutable {
                                 if (ec) {
                                   std::move (*shared_reply)(ec, std::move(why));
                                 } else {
                                   std::move (*shared_reply)(boost::system::error_code{}, std::move(payload));
                                 }
                               });
}

// The server side of a write procedure (also run directly for local calls): checks the
// local role, decodes the arguments, and runs the user's function through the write
// executor with the call's request id; replies with the position envelope.
template <class Proc, class F>
rpc::registry::raw_handler make_write_handler(std::weak_ptr<forward_core> weak,
                                              std::shared_ptr<F> fn, std::string procedure_key) {
  return [weak, fn, procedure_key](const rpc::incoming_call& call, boost::asio::any_io_executor /*executor*/,
                    rpc::reply_handler reply) {
    auto core = weak.lock();
    if (!core || core->stopped.load()) {
      std::move(reply)(make_error_code(errc::cancelled), "the node is shutting down; nothing ran");
      return;
    }
    litefs::role role;
    try {
      role = core->options.role();
    } catch (const std::exception& e) {
      role.reason = fmt::format("reading the local role failed: {}", e.what());
    } catch (...) {
      role.reason = "reading the local role failed";
    }
    if (role.kind != litefs::role_kind::primary) {
      std::string why = fmt::format("this node is not the primary ({}); nothing ran", role.reason);
      if (role.kind == litefs::role_kind::replica)
        fmt::format_to(std::back_inserter(why), "; LiteFS names the primary {}", role.primary_hostname);
      std::move(reply)(make_error_code(errc::not_primary), std::move(why));
      return;
    }
    auto writer = core->writer;
    if (!writer) {
      std::move(reply)(make_error_code(errc::not_primary),
                       "this node has not started its writer; nothing ran");
      return;
    }
    boost::system::error_code ec;
    std::string why;
    auto args = std::make_shared<typename Proc::arguments>(
        fwd::detail::decode_arguments<Proc>(call.arguments, ec, &why));
    if (ec) {
      std::move(reply)(ec, fmt::format("the arguments of '{}' could not be decoded as {}: {}", call.procedure,
                                       Proc::signature_text(), why));
      return;
    }
    using R = typename Proc::result_type;
    writer->async_write(
        call.request_id, procedure_key,
        [fn, args](sqlite3* db) -> std::string {
          if constexpr (std::is_void_v<R>) {
            invoke_writer(*fn, db, *args);
            return {};
          } else {
            return fwd::detail::encode_result<R>(static_cast<R>(invoke_writer(*fn, db, *args)));
          }
        },
        call.deadline,  // dropped before it runs once the caller has stopped waiting
        [reply = std::move(reply), weak, required = durability::from_wire(call.durability),
         deadline = call.deadline](boost::system::error_code e, std::string result, litefs::position pos) mutable {
          if (e) {
            std::move(reply)(e, std::move(result));
            return;
          }
          if (pos.txid != 0) {
            if (const auto core = weak.lock()) core->durability->note_commit(pos.txid, pos.checksum);
          }
          if (required == durability::none()) {
            std::move(reply)(boost::system::error_code{}, encode_write_reply(pos, result));
          } else {
            wait_durable(weak, std::move(reply), required, deadline, pos.txid, encode_write_reply(pos, result));
          }
        });
  };
}

}  // namespace fwd::detail

// ---- end fwd/write/detail/write_handler.hpp ----

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/post.hpp>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <variant>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd {

/**
 * Runs write procedures on the primary, from any node. Usually owned by fwd::node, which
 * wires its parts; usable alone with a client, a primary_finder and a write executor.
 *
 * Thread-safe after start: calls may start from any thread.
 */
class forwarder {
 public:
  using executor_type = boost::asio::any_io_executor;

  forwarder(executor_type executor, forwarder_options options, std::shared_ptr<rpc::client> client,
            std::shared_ptr<primary_finder> finder)
      : core_(std::make_shared<detail::forward_core>(std::move(executor), std::move(options),
                                                     std::move(client), std::move(finder))) {}

  forwarder(const forwarder&) = delete;
  forwarder& operator=(const forwarder&) = delete;
  ~forwarder() { stop(); }

  executor_type get_executor() const noexcept { return core_->executor; }

  /**
   * Serves write procedure `proc` with `fn`, the service's own writer:
   * `R fn(sqlite3*, A...)` or `R fn(fwd::sqlite::connection&, A...)`. On the primary it
   * runs on the write executor's thread, inside one transaction (with the dedup record
   * of the call's request id: exactly once), grouped with concurrent writes, each in its
   * own savepoint. It must not BEGIN/COMMIT/ROLLBACK itself (refused: the write fails
   * alone with bad_argument; savepoints of its own names are fine). A request id is bound
   * to the procedure (its name and signature) that first ran with it: the same id sent to
   * another procedure fails with bad_argument, nothing run. A fwd::error it throws
   * keeps its code (SQLite's extended code); other exceptions become remote_failure.
   * Define every procedure before start, on every node. Registers it in `registry`.
   */
  template <class R, class... A, class F>
  void define(rpc::registry& registry, const procedure<R(A...)>& proc, F&& fn) {
    using function = std::decay_t<F>;
    static_assert(std::is_invocable_v<function&, sqlite3*, std::decay_t<A>&...> ||
                      std::is_invocable_v<function&, sqlite::connection&, std::decay_t<A>&...>,
                  "fwd: a write procedure's function must be callable as R(sqlite3*, A...) or "
                  "R(fwd::sqlite::connection&, A...)");
    auto handler = detail::make_write_handler<procedure<R(A...)>>(
        std::weak_ptr<detail::forward_core>(core_),
        std::make_shared<function>(std::forward<F>(fn)),
        fmt::format("{} {}", proc.name(), procedure<R(A...)>::signature_text()));
    registry.define_raw(std::string(proc.name()), proc.signature(), handler);
    core_->procedures.emplace(std::string(proc.name()),
                              detail::forward_core::local_procedure{proc.signature(), handler});
  }

  /**
   * Answers every call of `proc`, from this node or from peers, with `code` and the
   * detail `why`, without running anything: for a built-in the service has not enabled.
   * Registers it in `registry`.
   */
  template <class Signature>
  void refuse(rpc::registry& registry, const procedure<Signature>& proc, errc code, std::string why) {
    rpc::registry::raw_handler handler = [code, why = std::move(why)](const rpc::incoming_call&,
                                                                      boost::asio::any_io_executor executor,
                                                                      rpc::reply_handler reply) {
      // The reply goes out later, never inside the dispatch that asked for it.
      boost::asio::post(executor, [code, why, reply = std::move(reply)]() mutable {
        reply(make_error_code(code), why);
      });
    };
    registry.define_raw(std::string(proc.name()), proc.signature(), handler);
    core_->procedures.emplace(std::string(proc.name()),
                              detail::forward_core::local_procedure{proc.signature(), handler});
  }

  /// Gives the forwarder the primary's write executor (the node opens it at start).
  void attach_writer(std::shared_ptr<sqlite::write_executor> writer) {
    core_->writer = std::move(writer);
  }

  /// Refuses new calls (cancelled); calls waiting for a retry or replication end soon.
  void stop() {
    core_->stopped.store(true);
    core_->durability->stop();
  }

  /// The positions this node's replicas report, and the writes waiting for them (the
  /// node feeds it from the built-in report_position).
  const std::shared_ptr<detail::durability_tracker>& durability_tracker() const noexcept {
    return core_->durability;
  }

  /// Runs `f` (on any thread) once no call of this forwarder is in flight: every call
  /// started has completed (its handler is posted). At once when none is.
  void when_idle(std::function<void()> f) { core_->when_idle(std::move(f)); }

  /// when_idle as a callable that stays valid after this forwarder is destroyed.
  std::function<void(std::function<void()>)> idle_notifier() const {
    return [core = core_](std::function<void()> f) { core->when_idle(std::move(f)); };
  }

  const forwarder_options& options() const noexcept { return core_->options; }

  /// Calls started on this forwarder that have not completed yet.
  std::size_t in_flight() const {
    std::lock_guard lock(core_->idle_mutex);
    return core_->in_flight;
  }

  /**
   * Runs `proc(args...)` on the primary: locally when this node is the primary,
   * forwarded otherwise; retried with the same request id on failures that allow it.
   *
   * Completion signature: `void(boost::system::error_code, R)` (`void(error_code)` for
   * void R). Errors: the procedure's own (SQLite's extended code, e.g. 2067 for a UNIQUE
   * violation; remote_failure for an exception), never retried; `no_primary`,
   * `not_primary`, `unreachable`, `connection_lost`, `timeout`, `circuit_open` after the
   * retries, the deadline or the retry budget ran out; `replication_lag`: the write
   * committed on the primary but this node had not reached its position by the deadline,
   * and `not_confirmed`: this node's history at that position does not hold it (a
   * failover lost it) and the retries ran out (both class `unconfirmed`: a retry with the
   * same request id is safe);
   * `not_yet_durable` (class committed_not_durable): the write COMMITTED on the primary
   * but fewer replicas than forward_options::durability asks reported it before the
   * deadline (a retry with the same request id is safe and waits for them again);
   * `cancelled`. forward_options::diagnostics receives the details, before the handler
   * is invoked.
   *
   * Completes through the handler's associated executor (default: the forwarder's), never
   * inside this call; that executor has outstanding work until then.
   *
   * **Per-Operation Cancellation**: `terminal` only (`partial` and `total` are ignored:
   * they promise no side effects, which a write that may already run cannot keep). The
   * call completes with `cancelled` (class "maybe executed") at once and makes no further
   * attempt; a retry or replication wait that was pending is dropped. A local write that
   * has not started is taken out of the writer's queue and never runs. An attempt already
   * sent, or a local write already running, may still commit on the primary (exactly once
   * under the call's request id): a retry with the same forward_options::id is safe and
   * learns its outcome.
   *
   * **Deadline** (forward_options::deadline, default now + default_deadline): the call
   * completes by then, also on the primary: a local write still queued at the deadline
   * never runs (`timeout`, nothing applied); one running is reported as `timeout` (maybe
   * executed).
   */
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(const procedure<R(Params...)>& proc, ArgsAndToken&&... args_and_token) {
    return async_call(forward_options{}, proc, std::forward<ArgsAndToken>(args_and_token)...);
  }

  /// As above, with per-call options.
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(forward_options options, const procedure<R(Params...)>& proc,
                  ArgsAndToken&&... args_and_token) {
    static_assert(sizeof...(ArgsAndToken) == sizeof...(Params) + 1,
                  "async_call takes the procedure's arguments, then a completion token");
    auto all = std::forward_as_tuple(std::forward<ArgsAndToken>(args_and_token)...);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      static_assert(
          (std::is_convertible_v<std::tuple_element_t<I, std::tuple<ArgsAndToken...>>, Params> &&
           ...),
          "an argument of async_call does not convert to the procedure's parameter type");
      std::string arguments = fwd::detail::encode_arguments(proc, std::get<I>(all)...);
      using signature_t = typename detail::forward_signature_of<R>::type;
      return boost::asio::async_initiate<
          std::tuple_element_t<sizeof...(Params), std::tuple<ArgsAndToken...>>, signature_t>(
          initiation<R>{core_}, std::get<sizeof...(Params)>(all), std::move(options),
          std::string(proc.name()), proc.signature(), std::move(arguments));
    }
    (std::make_index_sequence<sizeof...(Params)>{});
  }

  /**
   * Blocking call: returns the result or throws fwd::error: its code, and in
   * get_diagnostics() "call to <procedure>: <details>" (what() adds the code's message).
   * forward_options::diagnostics, when set, receives the details alone. Must not be
   * called from a thread that runs the forwarder's executor.
   *
   * Bounded by the call's deadline: if the outcome has not arrived by the deadline plus
   * blocking_call_grace (e.g. nothing runs the executor), throws fwd::error(timeout)
   * ("maybe executed": a retry with the same forward_options::id is safe); the operation
   * then completes later with nobody waiting.
   */
  template <class R, class... Params, class... Args>
  R call(const procedure<R(Params...)>& proc, Args&&... args) {
    return call(forward_options{}, proc, std::forward<Args>(args)...);
  }

  template <class R, class... Params, class... Args>
  R call(forward_options options, const procedure<R(Params...)>& proc, Args&&... args) {
    using value_type = std::conditional_t<std::is_void_v<R>, std::monostate, R>;
    // Shared with the completion, which may outlive this call once the wait runs out.
    struct outcome {
      std::mutex mutex;
      std::condition_variable done_cv;
      bool done = false;
      boost::system::error_code ec;
      std::optional<value_type> value;
      fwd::diagnostics diag;
    };
    auto state = std::make_shared<outcome>();
    fwd::diagnostics* user_diag = options.diagnostics;
    options.diagnostics = &state->diag;  // owned by the completion's state, not by this frame
    const auto deadline =
        options.deadline.value_or(std::chrono::steady_clock::now() + core_->options.default_deadline);
    options.deadline = deadline;
    auto deliver = [state](boost::system::error_code ec, std::optional<value_type> value) {
      std::lock_guard lock(state->mutex);
      state->ec = ec;
      state->value = std::move(value);
      state->done = true;
      state->done_cv.notify_all();
    };
    if constexpr (std::is_void_v<R>) {
      async_call(std::move(options), proc, std::forward<Args>(args)...,
                 [deliver](boost::system::error_code ec) {
                   deliver(ec, ec ? std::nullopt : std::optional<value_type>(std::monostate{}));
                 });
    } else {
      async_call(std::move(options), proc, std::forward<Args>(args)...,
                 [deliver](boost::system::error_code ec, R result) {
                   deliver(ec, ec ? std::nullopt : std::optional<value_type>(std::move(result)));
                 });
    }
    std::unique_lock lock(state->mutex);
    if (!state->done_cv.wait_until(lock, deadline + blocking_call_grace, [&] { return state->done; })) {
      // state->diag is still the operation's: report from a copy of nothing.
      fwd::diagnostics timed_out;
      timed_out.assign(fmt::format(
          "the call's deadline passed and its outcome did not arrive (is the forwarder's executor "
          "running?); it may still run on the primary, once: a retry with the same "
          "forward_options::id is safe"));
      if (user_diag != nullptr) user_diag->assign(std::string(timed_out.message()));
      throw fwd::detail::call_failure(make_error_code(errc::timeout), proc.name(), timed_out);
    }
    if (user_diag != nullptr) user_diag->assign(std::string(state->diag.message()));
    if (state->ec) throw fwd::detail::call_failure(state->ec, proc.name(), state->diag);
    if constexpr (!std::is_void_v<R>) return std::move(*state->value);
  }

  /// How long the blocking call() waits past the call's deadline for its outcome.
  static constexpr std::chrono::milliseconds blocking_call_grace{250};

 private:
  template <class R>
  struct initiation {
    std::shared_ptr<detail::forward_core> core;

    template <class Handler>
    void operator()(Handler&& handler, forward_options options, std::string name,
                    std::uint64_t signature, std::string arguments) const {
      if (options.diagnostics != nullptr) options.diagnostics->clear();
      auto completion = std::make_unique<detail::typed_completion<R>>(
          std::forward<Handler>(handler), core->executor, options.diagnostics);
      auto slot = completion->slot();
      auto op = std::make_shared<detail::forward_op>(core, std::move(name), signature,
                                                     std::move(arguments), std::move(options),
                                                     std::move(completion));
      if (slot.is_connected()) {
        slot.assign(
            [weak = std::weak_ptr<detail::forward_op>(op)](boost::asio::cancellation_type type) {
              // Terminal only: partial and total promise no side effects, which a write
              // that may be running on the primary cannot keep.
              if ((type & boost::asio::cancellation_type::terminal) ==
                  boost::asio::cancellation_type::none)
                return;
              if (auto o = weak.lock()) o->cancel();
            });
      }
      op->start();
    }
  };

  std::shared_ptr<detail::forward_core> core_;
};

}  // namespace fwd

// ---- end fwd/write/forwarder.hpp ----
// ---- begin fwd/migrate.hpp ----

// Schema migrations for a LiteFS cluster: ordered, versioned, run on the primary only
// (through the write path, so exactly once even when every node asks at start), and
// waited for on replicas until the schema version has replicated to them.
//
//   const std::vector<fwd::migration> schema = {
//       {1, "tags", "CREATE TABLE tags(id INTEGER PRIMARY KEY, label TEXT UNIQUE)"},
//       {2, "tags.created", "ALTER TABLE tags ADD COLUMN created INTEGER"}};
//   fwd::migrate(node, schema, std::chrono::seconds(30));   // on every node, at start

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <future>
#include <fmt/format.h>
// ---- begin fwd/node.hpp ----

// fwd::node: one service instance in a LiteFS cluster. It serves its write procedures to
// the other nodes, finds the primary, and runs every write on the primary exactly once,
// wherever the call starts.
//
//   fwd::node node{io.get_executor(), fwd::node_options{
//       .listen = {boost::asio::ip::make_address("0.0.0.0"), 7070},
//       .members = fwd::dns_members("blog.internal", 7070),
//       .database = "/litefs/blog.db",
//       .secret = fwd::secret_from_env("FWD_SECRET")}};
//   node.define(add_tag, insert_tag);   // std::int64_t insert_tag(sqlite3*, const std::string&)
//   node.start();
//   std::int64_t id = node.call(add_tag, "hello");   // on any node

// ---- begin fwd/litefs/detail/position_reader.hpp ----

// The primary's writer reads `<db>-pos` after each COMMIT (the TXID a forwarded write's
// reply carries for read-your-writes). Opening the file each time costs LiteFS an open, a
// read and a flush and release; this reader keeps the file open and reads it with one
// pread (one FUSE read) instead.
//
// Why a kept descriptor reads the new position: LiteFS serves `<db>-pos` through the
// kernel's page cache, but sets the position (DB.setPos) before it answers the FUSE
// request that commits the transaction, and setPos invalidates the file's cached pages
// (a FUSE notify, processed by the kernel before LiteFS goes on). So once COMMIT has
// returned, a pread reaches LiteFS and returns the new position (tested on real LiteFS:
// tests/litefs). That holds for LiteFS's FUSE mount only: elsewhere (a plain directory
// whose `-pos` is replaced by rename, as the simulation does) the file is opened anew
// for each read, as before.
//
// The descriptor is dropped when the mount generation changes (LiteFS stopped or
// restarted: it points at the old mount) and after any failed or malformed read; the
// read is then made by path. Used by one thread at a time (the writer's). Internal.

#include <fcntl.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>

namespace fwd::litefs::detail {

class position_reader {
 public:
  /// `generation` returns the mount generation now (litefs::monitor's), or is empty.
  position_reader(std::filesystem::path mount, std::string db_name,
                  std::function<std::uint64_t()> generation = {})
      : mount_(std::move(mount)), db_name_(std::move(db_name)), generation_(std::move(generation)) {}

  position_reader(const position_reader&) = delete;
  position_reader& operator=(const position_reader&) = delete;
  ~position_reader() { drop(); }

  /// The database's position now; ec set (and a zero position) when it cannot be read.
  position read(boost::system::error_code& ec) {
    ec.clear();
    const std::uint64_t generation = generation_ ? generation_() : 0;
    if (fd_ >= 0 && generation != fd_generation_) drop();
    if (fd_ < 0 && plain_generation_ != generation) open_kept(generation);
    if (fd_ >= 0) {
      char bytes[position_size + 1];
      ssize_t n;
      do {
        n = ::pread(fd_, bytes, sizeof bytes, 0);
      } while (n < 0 && errno == EINTR);
      if (n > 0) {
        const position p = parse_position(std::string_view(bytes, static_cast<std::size_t>(n)), ec);
        if (!ec) return p;
      }
      drop();  // read by path below; the next read opens the file again
    }
    return read_position(mount_, db_name_, ec);
  }

  /// Whether a descriptor is kept now (for tests).
  bool kept() const noexcept { return fd_ >= 0; }

 private:
  // Keeps the file open when it is on a FUSE mount (LiteFS's); otherwise reads by path.
  void open_kept(std::uint64_t generation) {
    const std::string path = (mount_ / (db_name_ + std::string(position_suffix))).string();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct statfs fs {};
    if (::fstatfs(fd, &fs) != 0) {
      ::close(fd);
      return;
    }
    if (static_cast<std::uint64_t>(fs.f_type) != fuse_super_magic) {
      ::close(fd);
      plain_generation_ = generation;  // not LiteFS's mount: by path until it changes
      return;
    }
    fd_ = fd;
    fd_generation_ = generation;
  }

  void drop() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  std::filesystem::path mount_;
  std::string db_name_;
  std::function<std::uint64_t()> generation_;
  int fd_ = -1;
  std::uint64_t fd_generation_ = 0;
  std::optional<std::uint64_t> plain_generation_;  // the file was not on FUSE then
};

}  // namespace fwd::litefs::detail

// ---- end fwd/litefs/detail/position_reader.hpp ----
// ---- begin fwd/node_options.hpp ----

// Everything a fwd::node needs (node_options), and the helpers that fill it: the cluster
// secret from the environment or a file, the members from a list or from DNS, addresses
// and member lists from text, and all of it from the environment (node_options::from_env).

#include <unistd.h>


#include <boost/asio/ip/tcp.hpp>
#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fwd {

/// What the node does when the database path is not on a LiteFS mount.
enum class path_check_mode {
  refuse,  ///< start() throws fwd::error (not_litefs / misconfigured_mount)
  warn,    ///< start() reports the problem through node_options::on_warning and goes on
  off,     ///< no check
};

/**
 * The cluster secret from environment variable `name`. Throws fwd::error(bad_argument)
 * when it is unset or empty, saying what to set.
 */
inline std::string secret_from_env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("the environment variable {} holding the cluster secret is unset or "
                                 "empty: set it to the same secret on every node",
                                 name));
  }
  return value;
}

/**
 * The cluster secret from the file at `path` (trailing newlines removed). Throws
 * fwd::error(bad_argument) when it cannot be read or is empty.
 */
inline std::string secret_from_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("cannot read the cluster secret file {}: create it (same content on "
                                 "every node)",
                                 path.string()));
  }
  std::string secret{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  if (secret.empty()) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("the cluster secret file {} is empty", path.string()));
  }
  return secret;
}

/// Members from a fixed list of fwd listen addresses.
inline membership_options static_members(
    const std::vector<boost::asio::ip::tcp::endpoint>& endpoints) {
  membership_options options;
  for (const auto& e : endpoints)
    options.static_members.push_back(member{e.address().to_string(), e});
  return options;
}

/// Members from DNS: every A/AAAA address of `name`, at fwd port `port`.
inline membership_options dns_members(std::string name, std::uint16_t port) {
  membership_options options;
  options.dns.push_back(dns_source::address(std::move(name), port));
  return options;
}

/**
 * An address with its port, as text: "10.0.0.5:7070", "[fdaa::3]:7070", "[::]:7070".
 * An IPv6 address needs its brackets. With `allow_empty_host`, ":7070" means
 * 127.0.0.1:7070 (LiteFS's way of writing its `http.addr`). nullopt when the text is not
 * of that form or the port is not 1..65535.
 */
inline std::optional<boost::asio::ip::tcp::endpoint> parse_endpoint(std::string_view text,
                                                                    bool allow_empty_host = false) {
  std::string_view host, port_text;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return std::nullopt;
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // IPv6 without brackets
  }
  unsigned port = 0;
  const auto [end, err] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (err != std::errc{} || end != port_text.data() + port_text.size() || port == 0 || port > 65535)
    return std::nullopt;
  boost::system::error_code ec;
  boost::asio::ip::address address;
  if (host.empty()) {
    if (!allow_empty_host) return std::nullopt;
    address = boost::asio::ip::make_address_v4("127.0.0.1");
  } else {
    address = boost::asio::ip::make_address(std::string(host), ec);
    if (ec) return std::nullopt;
  }
  return boost::asio::ip::tcp::endpoint(address, static_cast<std::uint16_t>(port));
}

/**
 * Members from text: one `host:port` or several, separated by commas. An IP address
 * ("10.0.0.5:7070", "[fdaa::3]:7070") is a static member; a name ("app.internal:7070")
 * is polled in DNS, every A and AAAA address of it a member on that port. On a malformed
 * entry, `ec` is errc::bad_argument and `diag` names the entry and the form expected.
 */
inline membership_options parse_members(std::string_view text, boost::system::error_code& ec,
                                        diagnostics& diag) {
  ec.clear();
  membership_options out;
  auto fail = [&](std::string why) {
    ec = make_error_code(errc::bad_argument);
    diag.assign(std::move(why));
    return membership_options{};
  };
  std::size_t start = 0;
  bool any = false;
  while (start <= text.size()) {
    const auto comma = text.find(',', start);
    std::string_view entry = text.substr(start, comma == std::string_view::npos ? text.npos : comma - start);
    start = comma == std::string_view::npos ? text.size() + 1 : comma + 1;
    while (!entry.empty() && entry.front() == ' ') entry.remove_prefix(1);
    while (!entry.empty() && entry.back() == ' ') entry.remove_suffix(1);
    if (entry.empty()) continue;
    any = true;
    if (auto endpoint = parse_endpoint(entry)) {
      out.static_members.push_back(member{endpoint->address().to_string(), *endpoint});
      continue;
    }
    const auto colon = entry.rfind(':');
    unsigned port = 0;
    const std::string_view name = colon == entry.npos ? std::string_view{} : entry.substr(0, colon);
    const std::string_view port_text = colon == entry.npos ? std::string_view{} : entry.substr(colon + 1);
    const auto [end, err] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    const bool name_ok = !name.empty() && name.find_first_of(":[]/ ") == std::string_view::npos;
    if (!name_ok || err != std::errc{} || end != port_text.data() + port_text.size() || port == 0 ||
        port > 65535) {
      return fail(fmt::format("member \"{}\" is not host:port: write a DNS name or an address with "
                              "its fwd port, e.g. app.internal:7070, 10.0.0.5:7070 or "
                              "[fdaa::3]:7070 (IPv6 in brackets), several separated by commas",
                              entry));
    }
    out.dns.push_back(dns_source::address(std::string(name), static_cast<std::uint16_t>(port)));
  }
  if (!any) {
    return fail("no member given: write a DNS name with the fwd port (app.internal:7070) or a "
                "comma-separated list of host:port");
  }
  return out;
}

/// The OS hostname (LiteFS's default lease hostname).
inline std::string os_hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return {};
  return name;
}

/// Everything a node needs. Only `database` and a secret (or `insecure`) are required.
struct node_options {
  /// Where this node's fwd server listens (port 0: a free port, see local_endpoint()).
  boost::asio::ip::tcp::endpoint listen{boost::asio::ip::make_address("127.0.0.1"), 0};
  /// The cluster's members (their listen addresses): static_members() or dns_members().
  membership_options members;
  /// The LiteFS mount (default: the database's directory).
  std::filesystem::path mount;
  /// The database inside the mount, e.g. /litefs/blog.db.
  std::filesystem::path database;
  /// The cluster secret every node shares (secret_from_env / secret_from_file): at least
  /// 32 bytes, e.g. `openssl rand -base64 32`. This node proves it to its peers.
  std::string secret;
  /// Secrets accepted from peers besides `secret`, so that the cluster's secret can change
  /// without downtime: give every node the new secret here, then make it each node's
  /// `secret` (keeping the old one here), then drop the old one. At least 32 bytes each.
  std::vector<std::string> accepted_secrets;
  /// Run without a secret (a fixed, public one): only for tests on a private machine.
  bool insecure = false;
  /// This node's LiteFS hostname, what replicas see in `.primary` (default: OS hostname).
  std::string litefs_hostname;
  /// A name for logs and `fwd.hello` (default: the LiteFS hostname).
  std::string name;
  /// The database-path check at start, and whether the mount must be FUSE (false for
  /// the LiteFS simulation).
  path_check_mode path_check = path_check_mode::refuse;
  bool require_fuse = true;
  /// Install fwd::sqlite::install_memory_guard() when the node is made: a SQLite VFS and a
  /// SIGBUS handler, so that a LiteFS that dies under SQLite's memory-mapped `-shm` fails
  /// the connection that touches it with an I/O error (SQLITE_IOERR_SHMLOCK) instead of
  /// killing the process. It covers every connection the process opens afterwards with the
  /// default VFS, the application's own reads included. Turn it off only when something
  /// else in the process must own SIGBUS.
  bool guard_memory_maps = true;
  /// Deadline of a call that sets none.
  std::chrono::milliseconds default_deadline{5000};
  retry_policy retry;
  breaker_options breaker;
  /// Forwarded writes wait until they are visible locally (see forwarder).
  bool read_your_writes = true;
  /// Serve the raw-SQL built-ins, fwd::execute_statement and fwd::execute_bulk: any
  /// statement a caller sends runs on the primary. Off (the default), they are answered
  /// `unknown_procedure` with a detail that says how to turn them on, and nothing runs.
  /// The primary's setting is the one that counts: turn it on on every node that may become
  /// primary. fwd::migrate_procedure is served either way.
  bool enable_raw_sql = false;
  /// What the primary waits for before it acknowledges a write (default none(): once
  /// committed on the primary); forward_options::durability overrides it per call. Needs
  /// every node to run this version (older peers refuse a request that carries it).
  fwd::durability durability;
  /// Whether this node's LiteFS is a candidate for promotion (`lease.candidate` in
  /// litefs.yml, `candidate` in LiteFS's `GET /info`): durability::candidates() waits
  /// for the candidates only. Set it as litefs.yml does.
  bool litefs_candidate = true;
  /// As a replica, how often this node tells the primary its LiteFS position when nothing
  /// changed (a changed position is told at once while durable writes wait on the
  /// primary, within `litefs_poll` otherwise). The primary stops counting a replica it has
  /// not heard from for `durability_forget_after`.
  std::chrono::milliseconds position_heartbeat{1000};
  std::chrono::milliseconds durability_forget_after{10000};
  /// Discovery: how long the primary's address is trusted, and one probe's deadline.
  std::chrono::milliseconds discovery_ttl{2000};
  std::chrono::milliseconds probe_timeout{300};
  /// Connecting to a peer (and its handshake) must finish within this.
  std::chrono::milliseconds connect_timeout{1000};
  /// The primary's writer (group commit, dedup retention, busy timeout...).
  sqlite::write_options write;
  /// LiteFS's HTTP address (its `http.addr`; LiteFS's default is 127.0.0.1:20202). When
  /// set, the node follows LiteFS's `/events` stream and sees role changes and new
  /// transactions as they happen; without it, the mount is polled (`litefs_poll`).
  std::optional<boost::asio::ip::tcp::endpoint> litefs_http;
  /// How often the node's litefs::monitor re-reads the mount when nobody waits for a
  /// position (while one waits: every millisecond, shared by all waiters).
  std::chrono::milliseconds litefs_poll{50};
  /// The local LiteFS role read from the mount (default: litefs::current_role). For tests;
  /// the node itself reads the role from its monitor, which calls this.
  std::function<litefs::role()> role;
  telemetry_ptr telemetry;
  /// Mutual TLS between the nodes (under fwd's own secret check), for networks that are
  /// not private. Every node needs its certificate, its key and the cluster's CA.
  std::optional<rpc::tls_options> tls;
  /// Receives warnings (path check in warn mode). Default: stderr.
  std::function<void(std::string_view)> on_warning;

  /// The smallest cluster secret from_env() accepts, in bytes.
  static constexpr std::size_t min_secret_size = 32;

  /**
   * Options from the environment, the rest left at their defaults:
   *  - FWD_LISTEN (required): this node's listen address, "0.0.0.0:7070", "[::]:7070"
   *    (IPv6 in brackets; "::" accepts IPv4 too where the system maps it);
   *  - FWD_MEMBERS (required): see parse_members(): "app.internal:7070" (DNS, A and
   *    AAAA) or "10.0.0.5:7070,10.0.0.6:7070";
   *  - FWD_DATABASE (required): the database's absolute path in the LiteFS mount;
   *  - FWD_SECRET or FWD_SECRET_FILE (one of them): the cluster secret, at least
   *    min_secret_size bytes (a file's trailing newlines are removed);
   *  - FWD_LITEFS_HTTP (optional): LiteFS's HTTP address, "127.0.0.1:20202" or ":20202".
   * On the first problem, `ec` is errc::bad_argument and `diag` names the variable, what
   * is wrong, and what a valid value looks like.
   */
  static node_options from_env(boost::system::error_code& ec, diagnostics& diag);
  /// As above; throws fwd::error(bad_argument) instead.
  static node_options from_env() {
    boost::system::error_code ec;
    diagnostics diag;
    node_options options = from_env(ec, diag);
    if (ec) throw fwd::error(ec, std::move(diag));
    return options;
  }
};

inline node_options node_options::from_env(boost::system::error_code& ec, diagnostics& diag) {
  ec.clear();
  diag.clear();
  node_options options;
  auto fail = [&](std::string why) {
    ec = make_error_code(errc::bad_argument);
    diag.assign(std::move(why));
    return node_options{};
  };
  auto get = [](const char* name) -> std::optional<std::string> {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') return std::nullopt;
    return std::string(value);
  };

  const auto listen = get("FWD_LISTEN");
  if (!listen) return fail("FWD_LISTEN is unset: set it to this node's listen address, e.g. 0.0.0.0:7070 or [::]:7070");
  if (auto endpoint = parse_endpoint(*listen)) {
    options.listen = *endpoint;
  } else {
    return fail(fmt::format("FWD_LISTEN=\"{}\" is not an address:port: write e.g. 0.0.0.0:7070, "
                            "10.0.0.5:7070 or [::]:7070 (IPv6 in brackets; a name is not accepted)",
                            *listen));
  }

  const auto members = get("FWD_MEMBERS");
  if (!members) {
    return fail("FWD_MEMBERS is unset: set it to the members' DNS name with the fwd port "
                "(app.internal:7070) or a comma-separated list of host:port");
  }
  boost::system::error_code member_ec;
  diagnostics member_diag;
  options.members = parse_members(*members, member_ec, member_diag);
  if (member_ec) return fail(fmt::format("FWD_MEMBERS=\"{}\": {}", *members, member_diag.message()));

  const auto database = get("FWD_DATABASE");
  if (!database) return fail("FWD_DATABASE is unset: set it to the database's path in the LiteFS mount, e.g. /litefs/app.db");
  options.database = *database;
  if (!options.database.is_absolute() || !options.database.has_filename()) {
    return fail(fmt::format("FWD_DATABASE=\"{}\" is not an absolute path to a file: write the "
                            "database's path in the LiteFS mount, e.g. /litefs/app.db",
                            *database));
  }

  const auto secret = get("FWD_SECRET");
  const auto secret_file = get("FWD_SECRET_FILE");
  const char* secret_source = "FWD_SECRET";
  if (secret && secret_file) {
    return fail("FWD_SECRET and FWD_SECRET_FILE are both set: set only one of them");
  } else if (secret) {
    options.secret = *secret;
  } else if (secret_file) {
    secret_source = "FWD_SECRET_FILE";
    try {
      options.secret = secret_from_file(*secret_file);
    } catch (const fwd::error& e) {
      return fail(fmt::format("FWD_SECRET_FILE=\"{}\": {}", *secret_file, e.get_diagnostics().message()));
    }
  } else {
    return fail("neither FWD_SECRET nor FWD_SECRET_FILE is set: give every node the same secret "
                "of at least 32 bytes, e.g. from `openssl rand -hex 32`");
  }
  if (options.secret.size() < min_secret_size) {
    return fail(fmt::format("the secret from {} is {} bytes: it must be at least {} bytes, the same "
                            "on every node, e.g. from `openssl rand -hex 32`",
                            secret_source, options.secret.size(), min_secret_size));
  }

  if (const auto http = get("FWD_LITEFS_HTTP")) {
    if (auto endpoint = parse_endpoint(*http, true)) {
      options.litefs_http = *endpoint;
    } else {
      return fail(fmt::format("FWD_LITEFS_HTTP=\"{}\" is not an address:port: write LiteFS's "
                              "http.addr, e.g. 127.0.0.1:20202 or :20202",
                              *http));
    }
  }
  return options;
}

}  // namespace fwd

// ---- end fwd/node_options.hpp ----
// ---- begin fwd/sqlite/memory_guard.hpp ----

// Keeps a process alive when the filesystem under SQLite's memory maps dies.
//
// In WAL mode SQLite maps the database's `-shm` file (the wal-index) into memory. On a
// LiteFS mount that file lives in FUSE: LiteFS rewrites it as it applies transactions and
// drops its cached pages, so the next access to such a page asks LiteFS for it. If LiteFS
// has died in between (killed, crashed, restarted on top of the old mount), there is no one
// to answer and the kernel sends SIGBUS to the thread that touched the page: by default the
// process dies, whichever thread, whichever connection (a read connection on a replica is
// enough). Checking the mount before each statement narrows that window; it cannot close it.
//
// install_memory_guard() closes it. It registers a SQLite VFS (a thin layer over the default
// one, made the new default) that records every `-shm` region SQLite maps, and a SIGBUS
// handler. A fault inside a recorded region replaces that region with anonymous memory (the
// faulting access then reads zeros) and marks it dead; the connection's next shared-memory
// lock fails with SQLITE_IOERR_SHMLOCK (disk I/O error), so the statement fails and the
// connection must be closed and opened again (on the new mount, once there is one). A fault
// anywhere else goes to the handler installed before (or kills the process as it would
// have). On files in FUSE, SQLite's memory-mapped I/O of the database itself (PRAGMA
// mmap_size) is turned off, for the same reason.
//
// fwd::node installs it (node_options::guard_memory_maps). Connections opened before the
// installation, or with an explicit VFS name ("unix"), are not covered.

#include <sqlite3.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>

namespace fwd::sqlite {

/// The name of the guard's VFS (also the default VFS once installed).
inline constexpr const char* memory_guard_vfs_name = "fwd-guard";

namespace detail::guard {

inline constexpr long fuse_super_magic = 0x65735546;

// The regions SQLite mapped, for the signal handler: read there without locks.
struct region {
  std::atomic<std::uintptr_t> begin{0};
  std::atomic<std::uintptr_t> end{0};
  std::atomic<bool> dead{false};
  int users = 0;  // connections sharing the mapping; under table().lock
};

inline constexpr std::size_t max_regions = 2048;

struct region_table {
  region slots[max_regions];
  std::mutex lock;
  std::atomic<std::uint64_t> faults{0};
  struct sigaction previous {};
  sqlite3_vfs vfs{};
  sqlite3_vfs* real = nullptr;
  sqlite3_io_methods methods[3]{};
  bool installed = false;
};

inline region_table& table() {
  static region_table t;
  return t;
}

// The slot of the mapping at `p` (shared by the connections that map it), or nullptr when
// the table is full (the mapping then goes unguarded).
inline region* record(void* p, int size) {
  auto& t = table();
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard<std::mutex> lock(t.lock);
  region* free_slot = nullptr;
  for (auto& r : t.slots) {
    const auto rb = r.begin.load(std::memory_order_relaxed);
    if (rb == b) {
      ++r.users;
      return &r;
    }
    if (rb == 0 && free_slot == nullptr) free_slot = &r;
  }
  if (free_slot == nullptr) return nullptr;  // the table is full: this mapping goes unguarded
  free_slot->users = 1;
  free_slot->dead.store(false, std::memory_order_relaxed);
  free_slot->end.store(b + static_cast<std::uintptr_t>(size), std::memory_order_relaxed);
  free_slot->begin.store(b, std::memory_order_release);
  return free_slot;
}

inline void forget(region* r) {
  std::lock_guard<std::mutex> lock(table().lock);
  if (--r->users == 0) {
    r->begin.store(0, std::memory_order_release);
    r->end.store(0, std::memory_order_relaxed);
  }
}

// Async-signal-safe: atomics and mmap only.
inline void on_sigbus(int sig, siginfo_t* info, void* context) {
  auto& t = table();
  const auto a = reinterpret_cast<std::uintptr_t>(info->si_addr);
  bool ours = false;
  for (auto& r : t.slots) {
    const auto b = r.begin.load(std::memory_order_acquire);
    if (b == 0 || a < b || a >= r.end.load(std::memory_order_relaxed)) continue;
    // The same pages, now anonymous and zero: the access completes, SQLite finds no valid
    // wal-index header, and the next lock (refused: dead) ends the statement.
    r.dead.store(true, std::memory_order_release);
    // The system call itself: no library wrapper (a sanitizer's, say) runs in the handler.
    ::syscall(SYS_mmap, b, r.end.load(std::memory_order_relaxed) - b, PROT_READ | PROT_WRITE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0L);
    ours = true;
  }
  if (ours) {
    t.faults.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const struct sigaction& prev = t.previous;
  if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
    prev.sa_handler(sig);
    return;
  }
  // Not ours, no handler before: the default action, as if this handler never existed
  // (returning re-executes the access, which faults again).
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGBUS, &dfl, nullptr);
}

// A file of the guard's VFS: the real file follows it in the same allocation.
struct file {
  sqlite3_file base;
  sqlite3_file* real;
  bool fuse;
  int regions;            // how many entries of map are in use
  void* map[64];          // -shm region i's address (regions beyond 64 are not guarded)
  region* slot[64];       // and its slot in the table (nullptr: unguarded)
};

inline sqlite3_file* real_of(sqlite3_file* f) { return reinterpret_cast<file*>(f)->real; }

inline void forget_all(file* g) {
  for (int i = 0; i < g->regions; ++i) {
    if (g->slot[i] != nullptr) forget(g->slot[i]);
    g->slot[i] = nullptr;
    g->map[i] = nullptr;
  }
  g->regions = 0;
}

inline int x_close(sqlite3_file* f) {
  auto* g = reinterpret_cast<file*>(f);
  forget_all(g);
  return g->real->pMethods->xClose(g->real);
}
inline int x_read(sqlite3_file* f, void* b, int n, sqlite3_int64 o) {
  return real_of(f)->pMethods->xRead(real_of(f), b, n, o);
}
inline int x_write(sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
  return real_of(f)->pMethods->xWrite(real_of(f), b, n, o);
}
inline int x_truncate(sqlite3_file* f, sqlite3_int64 size) {
  return real_of(f)->pMethods->xTruncate(real_of(f), size);
}
inline int x_sync(sqlite3_file* f, int flags) { return real_of(f)->pMethods->xSync(real_of(f), flags); }
inline int x_file_size(sqlite3_file* f, sqlite3_int64* size) {
  return real_of(f)->pMethods->xFileSize(real_of(f), size);
}
inline int x_lock(sqlite3_file* f, int l) { return real_of(f)->pMethods->xLock(real_of(f), l); }
inline int x_unlock(sqlite3_file* f, int l) { return real_of(f)->pMethods->xUnlock(real_of(f), l); }
inline int x_check_reserved(sqlite3_file* f, int* out) {
  return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}
inline int x_file_control(sqlite3_file* f, int op, void* arg) {
  auto* g = reinterpret_cast<file*>(f);
  if (op == SQLITE_FCNTL_MMAP_SIZE && g->fuse && arg != nullptr) {
    *static_cast<sqlite3_int64*>(arg) = 0;  // no memory-mapped I/O on FUSE
  }
  return g->real->pMethods->xFileControl(g->real, op, arg);
}
inline int x_sector_size(sqlite3_file* f) { return real_of(f)->pMethods->xSectorSize(real_of(f)); }
inline int x_device_characteristics(sqlite3_file* f) {
  return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}
inline bool any_dead(const file* g) {
  for (int i = 0; i < g->regions; ++i) {
    if (g->slot[i] != nullptr && g->slot[i]->dead.load(std::memory_order_acquire)) return true;
  }
  return false;
}
inline int x_shm_map(sqlite3_file* f, int index, int size, int extend, void volatile** out) {
  auto* g = reinterpret_cast<file*>(f);
  if (any_dead(g)) return SQLITE_IOERR_SHMMAP;
  const int rc = g->real->pMethods->xShmMap(g->real, index, size, extend, out);
  if (rc == SQLITE_OK && *out != nullptr && index >= 0 && index < 64) {
    void* p = const_cast<void*>(*out);
    if (index >= g->regions) {
      for (int i = g->regions; i <= index; ++i) {
        g->map[i] = nullptr;
        g->slot[i] = nullptr;
      }
      g->regions = index + 1;
    }
    if (g->map[index] != p) {
      if (g->slot[index] != nullptr) forget(g->slot[index]);
      g->slot[index] = record(p, size);
      g->map[index] = p;
    }
  }
  return rc;
}
inline int x_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
  auto* g = reinterpret_cast<file*>(f);
  // A dead region may be released (SQLite unlocks on its way out), never taken again.
  if ((flags & SQLITE_SHM_LOCK) != 0 && any_dead(g)) return SQLITE_IOERR_SHMLOCK;
  return g->real->pMethods->xShmLock(g->real, offset, n, flags);
}
inline void x_shm_barrier(sqlite3_file* f) { real_of(f)->pMethods->xShmBarrier(real_of(f)); }
inline int x_shm_unmap(sqlite3_file* f, int delete_flag) {
  auto* g = reinterpret_cast<file*>(f);
  forget_all(g);
  return g->real->pMethods->xShmUnmap(g->real, delete_flag);
}
inline int x_fetch(sqlite3_file* f, sqlite3_int64 o, int n, void** out) {
  auto* g = reinterpret_cast<file*>(f);
  if (g->fuse) {
    *out = nullptr;
    return SQLITE_OK;
  }
  return g->real->pMethods->xFetch(g->real, o, n, out);
}
inline int x_unfetch(sqlite3_file* f, sqlite3_int64 o, void* p) {
  return real_of(f)->pMethods->xUnfetch(real_of(f), o, p);
}

inline sqlite3_vfs* real_vfs(sqlite3_vfs* v) { return static_cast<sqlite3_vfs*>(v->pAppData); }

inline int x_open(sqlite3_vfs* v, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  auto* g = reinterpret_cast<file*>(f);
  auto* real = real_vfs(v);
  g->base.pMethods = nullptr;
  g->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(f) + sizeof(file));
  g->regions = 0;
  g->fuse = false;
  const int rc = real->xOpen(real, name, g->real, flags, out_flags);
  if (rc != SQLITE_OK || g->real->pMethods == nullptr) {
    if (g->real->pMethods != nullptr) {
      g->real->pMethods->xClose(g->real);
      g->real->pMethods = nullptr;
    }
    return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
  }
  if (name != nullptr) {
    struct statfs s {};
    g->fuse = ::statfs(name, &s) == 0 && static_cast<long>(s.f_type) == fuse_super_magic;
  }
  const int version = g->real->pMethods->iVersion;
  g->base.pMethods = &table().methods[(version < 1 ? 1 : version > 3 ? 3 : version) - 1];
  return SQLITE_OK;
}
inline int x_delete(sqlite3_vfs* v, const char* name, int sync_dir) {
  return real_vfs(v)->xDelete(real_vfs(v), name, sync_dir);
}
inline int x_access(sqlite3_vfs* v, const char* name, int flags, int* out) {
  return real_vfs(v)->xAccess(real_vfs(v), name, flags, out);
}
inline int x_full_pathname(sqlite3_vfs* v, const char* name, int n, char* out) {
  return real_vfs(v)->xFullPathname(real_vfs(v), name, n, out);
}
inline void* x_dl_open(sqlite3_vfs* v, const char* name) { return real_vfs(v)->xDlOpen(real_vfs(v), name); }
inline void x_dl_error(sqlite3_vfs* v, int n, char* out) { real_vfs(v)->xDlError(real_vfs(v), n, out); }
inline void (*x_dl_sym(sqlite3_vfs* v, void* h, const char* sym))(void) {
  return real_vfs(v)->xDlSym(real_vfs(v), h, sym);
}
inline void x_dl_close(sqlite3_vfs* v, void* h) { real_vfs(v)->xDlClose(real_vfs(v), h); }
inline int x_randomness(sqlite3_vfs* v, int n, char* out) {
  return real_vfs(v)->xRandomness(real_vfs(v), n, out);
}
inline int x_sleep(sqlite3_vfs* v, int us) { return real_vfs(v)->xSleep(real_vfs(v), us); }
inline int x_current_time(sqlite3_vfs* v, double* out) {
  return real_vfs(v)->xCurrentTime(real_vfs(v), out);
}
inline int x_get_last_error(sqlite3_vfs* v, int n, char* out) {
  return real_vfs(v)->xGetLastError ? real_vfs(v)->xGetLastError(real_vfs(v), n, out) : 0;
}
inline int x_current_time_int64(sqlite3_vfs* v, sqlite3_int64* out) {
  return real_vfs(v)->xCurrentTimeInt64(real_vfs(v), out);
}
inline int x_set_system_call(sqlite3_vfs* v, const char* name, sqlite3_syscall_ptr p) {
  return real_vfs(v)->xSetSystemCall(real_vfs(v), name, p);
}
inline sqlite3_syscall_ptr x_get_system_call(sqlite3_vfs* v, const char* name) {
  return real_vfs(v)->xGetSystemCall(real_vfs(v), name);
}
inline const char* x_next_system_call(sqlite3_vfs* v, const char* name) {
  return real_vfs(v)->xNextSystemCall(real_vfs(v), name);
}

inline bool install() {
  auto& t = table();
  sqlite3_initialize();
  sqlite3_vfs* real = sqlite3_vfs_find(nullptr);
  if (real == nullptr) return false;
  t.real = real;
  for (int i = 0; i < 3; ++i) {
    auto& m = t.methods[i];
    m.iVersion = i + 1;
    m.xClose = x_close;
    m.xRead = x_read;
    m.xWrite = x_write;
    m.xTruncate = x_truncate;
    m.xSync = x_sync;
    m.xFileSize = x_file_size;
    m.xLock = x_lock;
    m.xUnlock = x_unlock;
    m.xCheckReservedLock = x_check_reserved;
    m.xFileControl = x_file_control;
    m.xSectorSize = x_sector_size;
    m.xDeviceCharacteristics = x_device_characteristics;
    if (i >= 1) {
      m.xShmMap = x_shm_map;
      m.xShmLock = x_shm_lock;
      m.xShmBarrier = x_shm_barrier;
      m.xShmUnmap = x_shm_unmap;
    }
    if (i >= 2) {
      m.xFetch = x_fetch;
      m.xUnfetch = x_unfetch;
    }
  }
  auto& v = t.vfs;
  v.iVersion = real->iVersion < 3 ? real->iVersion : 3;
  v.szOsFile = static_cast<int>(sizeof(file)) + real->szOsFile;
  v.mxPathname = real->mxPathname;
  v.zName = memory_guard_vfs_name;
  v.pAppData = real;
  v.xOpen = x_open;
  v.xDelete = x_delete;
  v.xAccess = x_access;
  v.xFullPathname = x_full_pathname;
  v.xDlOpen = real->xDlOpen ? x_dl_open : nullptr;
  v.xDlError = real->xDlError ? x_dl_error : nullptr;
  v.xDlSym = real->xDlSym ? x_dl_sym : nullptr;
  v.xDlClose = real->xDlClose ? x_dl_close : nullptr;
  v.xRandomness = x_randomness;
  v.xSleep = x_sleep;
  v.xCurrentTime = x_current_time;
  v.xGetLastError = x_get_last_error;
  if (v.iVersion >= 2) v.xCurrentTimeInt64 = x_current_time_int64;
  if (v.iVersion >= 3) {
    v.xSetSystemCall = x_set_system_call;
    v.xGetSystemCall = x_get_system_call;
    v.xNextSystemCall = x_next_system_call;
  }
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO;
  ::sigemptyset(&action.sa_mask);
  if (::sigaction(SIGBUS, &action, &t.previous) != 0) return false;
  if (sqlite3_vfs_register(&v, 1) != SQLITE_OK) {
    ::sigaction(SIGBUS, &t.previous, nullptr);
    return false;
  }
  t.installed = true;
  return true;
}

}  // namespace detail::guard

/**
 * Installs the guard (see the top of this header): a SQLite VFS over the current default,
 * made the default, and a SIGBUS handler that turns a fault in SQLite's shared memory into
 * an I/O error of the connection that touched it. Idempotent and thread-safe; true once
 * installed. Call it before opening connections (fwd::node does, unless
 * node_options::guard_memory_maps is false).
 */
inline bool install_memory_guard() {
  static std::once_flag once;
  std::call_once(once, [] { detail::guard::install(); });
  return detail::guard::table().installed;
}

/// How many faults the guard absorbed so far (each one a connection that met a dead mount).
inline std::uint64_t memory_guard_faults() noexcept {
  return detail::guard::table().faults.load(std::memory_order_relaxed);
}

}  // namespace fwd::sqlite

// ---- end fwd/sqlite/memory_guard.hpp ----
// ---- begin fwd/status.hpp ----

// What a node says about itself: fwd::status_report, returned by node::status() and by
// the built-in procedure `fwd.status` that every node serves to its authenticated peers
// (fwdctl asks each member for it). Also the bounded log of a node's recent errors.



#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace fwd {

/// One error a node saw recently.
struct status_error {
  static constexpr std::string_view fwd_type_name = "fwd.status_error";
  std::int64_t unix_ms = 0;  ///< when (the node's clock, milliseconds since the epoch)
  std::string what;          ///< e.g. "write shop.order: timeout: ..."

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & unix_ms & what;
  }
};

/// A member as a node's membership lists it.
struct status_member {
  static constexpr std::string_view fwd_type_name = "fwd.status_member";
  std::string host;     ///< the DNS name it was found under, or a static member's label
  std::string address;  ///< its fwd address, "ip:port" or "[ipv6]:port"

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & host & address;
  }
  friend bool operator==(const status_member&, const status_member&) = default;
};

/**
 * A node's state at one moment. Cheap to make (atomic loads and a few short locks, no
 * I/O); see node::status().
 */
struct status_report {
  static constexpr std::string_view fwd_type_name = "fwd.status_report";

  std::string node_name;        ///< node_options::name
  std::string litefs_hostname;  ///< this node's LiteFS lease hostname
  std::string role;             ///< "primary", "replica", "unknown" or "not_litefs"
  std::string role_reason;      ///< what decided the role (or what failed)
  /// The primary's LiteFS hostname as this node sees it: its own when primary, the
  /// mount's `.primary` when replica, empty when unknown.
  std::string primary_hostname;
  /// The primary's fwd address as discovery last found it ("local": this node; empty:
  /// not found yet). May be older than discovery's TTL.
  std::string primary_address;
  std::vector<status_member> members;  ///< the member set, sorted by address
  /// The database's position (`<db>-pos`) as the node's LiteFS monitor last read it: at
  /// most node_options::litefs_poll old.
  std::uint64_t txid = 0;
  std::uint64_t checksum = 0;
  std::int64_t lag_ms = 0;             ///< replication lag LiteFS reports (`.lag`)
  bool mount_dead = false;             ///< LiteFS stopped under the service
  std::uint64_t writer_queue = 0;      ///< writes queued for this node's writer thread
  std::uint64_t calls_in_flight = 0;   ///< calls started on this node, not completed yet
  std::uint64_t requests_in_flight = 0;  ///< requests from peers this node is running
  std::uint64_t connections = 0;       ///< connections this node's server holds open
  std::vector<status_error> last_errors;  ///< the most recent errors, oldest first
  std::string version = FWD_VERSION_STRING;  ///< fwd's version on that node
  std::int64_t unix_ms = 0;  ///< the node's clock when it made the report (for clock skew)
  bool started = false;      ///< start() has completed and stop() has not been called

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & node_name & litefs_hostname & role & role_reason & primary_hostname &
        primary_address & members & txid & checksum & lag_ms & mount_dead & writer_queue &
        calls_in_flight & requests_in_flight & connections & last_errors & version & unix_ms &
        started;
  }
};

/// The built-in procedure every node serves: `client.async_call(peer, fwd::status_procedure, token)`.
inline const procedure<status_report()> status_procedure{"fwd.status"};

/// Milliseconds since the epoch on this machine's clock.
inline std::int64_t unix_now_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace detail {

// The last `capacity` errors, thread-safe. Recording is a short lock and one string.
class error_log {
 public:
  explicit error_log(std::size_t capacity = 16) : capacity_(capacity) {}

  void record(std::string what) {
    std::lock_guard lock(mutex_);
    if (capacity_ == 0) return;
    if (errors_.size() == capacity_) errors_.pop_front();
    errors_.push_back(status_error{unix_now_ms(), std::move(what)});
  }

  std::vector<status_error> snapshot() const {
    std::lock_guard lock(mutex_);
    return {errors_.begin(), errors_.end()};
  }

 private:
  std::size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<status_error> errors_;
};

}  // namespace detail
}  // namespace fwd

// ---- end fwd/status.hpp ----
// ---- begin fwd/write/detail/position_reporter.hpp ----

// The replica's side of durable acknowledgement: it tells the primary its LiteFS position
// (TXID, checksum) over fwd's authenticated connection, driven by the LiteFS monitor.
//
// While the primary says durable writes wait on it, the reporter waits on the monitor for
// the next TXID (the monitor then polls the mount every millisecond, or follows LiteFS's
// tx events) and reports each new position at once. Otherwise it looks at the monitor's
// state (an atomic load) every `idle_check` and reports a changed position, and at least
// every `heartbeat`, so that the primary knows its replicas before a durable write comes.


#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>

namespace fwd::detail {

class position_reporter : public std::enable_shared_from_this<position_reporter> {
 public:
  using clock = std::chrono::steady_clock;

  struct settings {
    std::string hostname;  // this node's LiteFS hostname
    bool candidate = true;
    std::chrono::milliseconds heartbeat{1000};
    std::chrono::milliseconds idle_check{50};
    std::chrono::milliseconds hurry_for{2000};  // after the primary said writes wait
  };

  static std::shared_ptr<position_reporter> create(boost::asio::any_io_executor ex, settings s,
                                                   std::weak_ptr<litefs::monitor> monitor,
                                                   std::weak_ptr<rpc::client> client,
                                                   std::weak_ptr<primary_finder> finder) {
    return std::shared_ptr<position_reporter>(new position_reporter(
        std::move(ex), std::move(s), std::move(monitor), std::move(client), std::move(finder)));
  }

  void start() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      self->stopped_ = false;
      self->step();
    });
  }

  void stop() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      self->stopped_ = true;
      self->timer_.cancel();
      self->wait_.emit(boost::asio::cancellation_type::terminal);
    });
  }

 private:
  position_reporter(boost::asio::any_io_executor ex, settings s, std::weak_ptr<litefs::monitor> monitor,
                    std::weak_ptr<rpc::client> client, std::weak_ptr<primary_finder> finder)
      : strand_(boost::asio::make_strand(ex)),
        timer_(strand_),
        settings_(std::move(s)),
        monitor_(std::move(monitor)),
        client_(std::move(client)),
        finder_(std::move(finder)) {}

  // On the strand: report if there is something new, then wait for the next change.
  void step() {
    if (stopped_ || sending_ || waiting_) return;
    const auto monitor = monitor_.lock();
    if (!monitor) return;
    const auto state = monitor->state();
    const auto now = clock::now();
    if (state->role == litefs::role_kind::replica && (state->pos != reported_ || now >= next_heartbeat_)) {
      send(*state);
      return;
    }
    if (state->role == litefs::role_kind::replica && now < hurry_until_) {
      // The next TXID, as soon as the monitor sees it.
      waiting_ = true;
      monitor->async_wait_position(
          state->pos.txid + 1, std::min(hurry_until_, next_heartbeat_),
          boost::asio::bind_cancellation_slot(
              wait_.slot(), boost::asio::bind_executor(strand_, [self = shared_from_this()](
                                                                    boost::system::error_code, litefs::position) {
                self->waiting_ = false;
                self->step();
              })));
      return;
    }
    timer_.expires_after(settings_.idle_check);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->step();
    });
  }

  void send(const litefs::node_state& state) {
    const auto finder = finder_.lock();
    const auto client = client_.lock();
    if (!finder || !client) return;
    sending_ = true;
    position_report report{settings_.hostname, state.primary_hostname, settings_.candidate, state.pos.txid,
                           state.pos.checksum};
    const auto deadline = clock::now() + settings_.heartbeat;
    finder->async_find(deadline, boost::asio::bind_executor(strand_, [self = shared_from_this(), report,
                                                                      deadline](boost::system::error_code ec,
                                                                                primary_location where) {
      if (ec || where.local || self->stopped_) return self->sent(false, false, {});
      const auto c = self->client_.lock();
      if (!c) return self->sent(false, false, {});
      rpc::call_options options;
      options.deadline = deadline;
      c->async_call(where.endpoint, options, report_position, report,
                    boost::asio::bind_executor(self->strand_, [self, report](boost::system::error_code e, bool hurry) {
                      if (e == errc::not_primary || e == errc::unreachable || e == errc::connection_lost) {
                        if (const auto f = self->finder_.lock()) f->invalidate();
                      }
                      self->sent(!e, hurry, litefs::position{report.txid, report.checksum});
                    }));
    }));
  }

  void sent(bool ok, bool hurry, litefs::position reported) {
    sending_ = false;
    const auto now = clock::now();
    if (ok) {
      reported_ = reported;
      next_heartbeat_ = now + settings_.heartbeat;
      if (hurry) hurry_until_ = now + settings_.hurry_for;
      step();
      return;
    }
    // No primary reached: try again after a pause.
    if (stopped_) return;
    timer_.expires_after(settings_.idle_check);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->step();
    });
  }

  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  boost::asio::cancellation_signal wait_;
  settings settings_;
  std::weak_ptr<litefs::monitor> monitor_;
  std::weak_ptr<rpc::client> client_;
  std::weak_ptr<primary_finder> finder_;
  bool stopped_ = true;
  bool sending_ = false;
  bool waiting_ = false;
  litefs::position reported_{~std::uint64_t{0}, 0};
  clock::time_point next_heartbeat_{};
  clock::time_point hurry_until_{};
};

}  // namespace fwd::detail

// ---- end fwd/write/detail/position_reporter.hpp ----

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fwd {

/**
 * A node of a fwd cluster. Construct, define the write procedures, start(); then call
 * from any thread. Owns its server, client, membership, discovery and, once started, the
 * write executor (its one writer thread) and the LiteFS monitor (its one polling thread,
 * the only other thread fwd starts; see litefs::monitor). Built-in procedures on every node:
 * fwd::migrate_procedure; fwd::report_position, by which each replica tells the primary
 * its LiteFS position (see fwd::durability); fwd.status (fwd::status_procedure: what
 * status() returns, for an authenticated peer or fwdctl); and, with
 * node_options::enable_raw_sql, fwd::execute_statement and fwd::execute_bulk (off, they
 * answer unknown_procedure and say how to turn them on).
 */
class node {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Throws fwd::error(bad_argument) on a missing database or secret.
  node(executor_type executor, node_options options);

  node(const node&) = delete;
  node& operator=(const node&) = delete;

  /// Stops the node (see stop()). What the node's pending operations still use when it is
  /// gone (the membership, the registry, the writer) is shared with them, never borrowed.
  ~node() {
    status_link_->detach();
    stop();
  }

  executor_type get_executor() const noexcept { return executor_; }

  /**
   * Serves write procedure `proc` with the service's own writer `fn`:
   * `R fn(sqlite3*, A...)` or `R fn(fwd::sqlite::connection&, A...)`, run on the primary
   * inside one transaction, exactly once per call. Define before start(), on every node.
   * Throws fwd::error(bad_argument) if the name is taken.
   */
  template <class R, class... A, class F>
  void define(const procedure<R(A...)>& proc, F&& fn) {
    forwarder_->define(*registry_, proc, std::forward<F>(fn));
  }

  /**
   * Checks the database path, opens the write executor, starts membership, discovery
   * and the server. Throws fwd::error: not_litefs / misconfigured_mount (path check in
   * refuse mode), bad_argument (cannot listen), a SQLite code (cannot open the database).
   */
  void start() {
    if (options_.path_check != path_check_mode::off) {
      litefs::path_check_options check_options;
      check_options.require_fuse = options_.require_fuse;
      boost::system::error_code ec;
      diagnostics diag;
      litefs::check_database_path(options_.database, check_options, ec, diag);
      if (ec) {
        if (options_.path_check == path_check_mode::refuse) throw fwd::error(ec, diag);
        options_.on_warning(diag.message());
      }
    }
    monitor_->start();
    sqlite::write_options write = options_.write;
    if (!write.mount_generation) {
      write.mount_generation = [monitor = monitor_, db = options_.database.string()] {
        return monitor->writable_generation(db);
      };
    }
    if (!write.position_after_commit) {
      // One pread of a kept `<db>-pos` per commit on LiteFS (see position_reader); the
      // writer thread is its only user.
      auto reader = std::make_shared<litefs::detail::position_reader>(
          options_.mount, options_.database.filename().string(),
          [monitor = std::weak_ptr<litefs::monitor>(monitor_)]() -> std::uint64_t {
            const auto m = monitor.lock();
            return m ? m->state()->mount_generation : 0;
          });
      write.position_after_commit = [reader] {
        boost::system::error_code ec;
        const litefs::position p = reader->read(ec);
        return ec ? litefs::position{} : p;
      };
      // The same read under the write lock before each batch: a commit that LiteFS did
      // not record (the lease lost under it) then gets no TXID instead of the last one.
      if (!write.position_before_batch) write.position_before_batch = write.position_after_commit;
    }
    if (!write.telemetry) write.telemetry = options_.telemetry;
    writer_ = std::make_shared<sqlite::write_executor>(executor_, options_.database.string(),
                                                       std::move(write));
    forwarder_->attach_writer(writer_);

    rpc::server_options server_options;
    server_options.listen = options_.listen;
    server_options.secret = options_.secret;
    server_options.accepted_secrets = options_.accepted_secrets;
    server_options.node_name = options_.name;
    server_options.litefs_hostname = options_.litefs_hostname;
    server_options.telemetry = options_.telemetry;
    server_options.tls = options_.tls;
    // The server's connections outlive it (and this node) until their last handler has run:
    // their state holds these options, so the registry goes with them, not with the node.
    server_options.status = [monitor = monitor_, keep_registry = registry_] {
      const auto state = monitor->state();
      rpc::local_status status;
      status.role = litefs::to_string(state->role);
      status.txid = state->pos.txid;
      return status;
    };
    server_ = std::make_unique<rpc::server>(executor_, *registry_, std::move(server_options));
    // Connections may outlive the node: the procedure reaches it through the link, which
    // the destructor cuts (waiting for a report being made).
    server_->define_builtin(status_procedure, [link = status_link_] { return link->report(); });
    server_->start();
    membership_->start();
    finder_->start();
    reporter_->start();
    started_.store(true, std::memory_order_release);
  }

  /**
   * Clean shutdown: new calls and calls waiting to retry complete with `cancelled`; the
   * server answers the calls it is running and closes; the writer finishes its running
   * batch (committed or rolled back as a whole, never half-written) and fails the writes
   * still queued with `cancelled`. Blocks until the writer is stopped. Idempotent.
   *
   * May be called from any thread, also one that runs the node's executor (nothing it
   * waits for needs that executor: it blocks that thread for the running batch, at most)
   * and from inside a write procedure (it then does not wait for the batch it is part
   * of). Calls in flight complete through the executor afterwards: keep running it (or
   * use async_stop) to see them complete.
   */
  void stop() {
    begin_stop();
    if (writer_) writer_->stop();
  }

  /**
   * Stops as stop() does, without blocking, and completes (signature `void()`, through the
   * handler's associated executor, default: the node's) once in-flight work is drained:
   * the writer has finished its running batch and every call started on this node has
   * completed. The node may be destroyed once it has completed. Idempotent (each
   * async_stop completes).
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void()) StopToken =
                boost::asio::default_completion_token_t<executor_type>>
  auto async_stop(StopToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<StopToken, void()>(
        [this](auto handler) {
          auto done = std::make_shared<fwd::detail::pending_completion<void()>>(std::move(handler), executor_);
          begin_stop();
          // Borrows nothing from the node: it may be destroyed before this completes.
          auto calls_drained = [when_idle = forwarder_->idle_notifier(), done] {
            when_idle([done] { done->post(); });
          };
          if (writer_) {
            writer_->async_stop(boost::asio::bind_executor(
                executor_, [calls_drained = std::move(calls_drained)] { calls_drained(); }));
          } else {
            calls_drained();
          }
        },
        token);
  }

  /// Where the server listens (after start()).
  boost::asio::ip::tcp::endpoint local_endpoint() const {
    return server_ ? server_->local_endpoint() : options_.listen;
  }

  const node_options& options() const noexcept { return options_; }
  rpc::registry& registry() noexcept { return *registry_; }
  primary_finder& discovery() noexcept { return *finder_; }
  fwd::membership& members() noexcept { return *membership_; }
  fwd::forwarder& forwarder() noexcept { return *forwarder_; }

  /// This node's role as LiteFS tells it now.
  litefs::role role() const { return role_(); }

  /// This node's LiteFS state as its monitor last saw it (role, position, lag, a dead or
  /// replaced mount): an atomic load.
  std::shared_ptr<const litefs::node_state> litefs_state() const noexcept { return monitor_->state(); }
  litefs::monitor& monitor() noexcept { return *monitor_; }

  /**
   * Read-your-writes across requests: waits until this node's copy of the database has
   * reached TXID `txid` (what a write reported in call_report::txid, handed to a client
   * and sent back with its next request, as LiteFS's proxy does with its `__txid` cookie).
   * On the primary, and on a replica already there, it completes at once; otherwise the
   * node's LiteFS monitor wakes it when its position gets there (one poll of the mount for
   * all waiters, or LiteFS's `/events` stream). Call after start().
   *
   * Completion signature: `void(boost::system::error_code, litefs::position)`: empty with
   * the position reached; `errc::timeout` when `deadline` passed first (with the last
   * position seen: the read would not see the write yet); `errc::cancelled` when the node
   * stops. Completes through the handler's associated executor (default: the node's),
   * never inside this call.
   *
   * **Per-Operation Cancellation**: terminal, partial and total (completes with
   * `errc::cancelled`).
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void(boost::system::error_code, litefs::position))
                WaitToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_wait_position(std::uint64_t txid, std::chrono::steady_clock::time_point deadline,
                           WaitToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return monitor_->async_wait_position(txid, deadline, std::forward<WaitToken>(token));
  }

  /// As above, with a timeout from now.
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void(boost::system::error_code, litefs::position))
                WaitToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_wait_position(std::uint64_t txid, std::chrono::milliseconds timeout,
                           WaitToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return monitor_->async_wait_position(txid, std::chrono::steady_clock::now() + timeout,
                                         std::forward<WaitToken>(token));
  }

  /**
   * What this node is and sees now: role, LiteFS hostname, the primary as it sees it,
   * the members, its position, its recent errors (the last 16: failed writes, connections
   * that failed, DNS errors, probes that failed), the depths of its queues, fwd's version
   * and its clock. Thread-safe, from any thread, also before start() and after stop();
   * cheap (atomic loads and short locks, no I/O, nothing waits for the executor). Peers
   * get the same report from the built-in procedure fwd.status (fwd::status_procedure).
   */
  status_report status() const;

  /// This node's `<db>-pos` TXID now (0 if unreadable).
  std::uint64_t local_txid() const {
    boost::system::error_code ec;
    return litefs::read_position(options_.mount, options_.database.filename().string(), ec).txid;
  }

  /**
   * Runs `proc(args...)` on the primary: locally when this node is the primary, forwarded
   * otherwise (see forwarder::async_call for the errors and forward_options). Completion
   * signature: `void(boost::system::error_code, R)` (`void(error_code)` for void R), run
   * through the handler's associated executor (default: the node's), never inside this
   * call; the executor has outstanding work until then.
   *
   * **Per-Operation Cancellation**: `terminal` only (see forwarder::async_call): the call
   * completes with `errc::cancelled` at once, "maybe executed", and makes no further
   * attempt. A local write not started yet never runs; an attempt already sent (or a
   * local write already running) may still commit on the primary, exactly once under the
   * call's request id: a retry with the same forward_options::id is safe and learns it.
   */
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(const procedure<R(Params...)>& proc, ArgsAndToken&&... args_and_token) {
    return forwarder_->async_call(proc, std::forward<ArgsAndToken>(args_and_token)...);
  }

  /// As above, with per-call options (deadline, request id, read-your-writes, diagnostics).
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(forward_options options, const procedure<R(Params...)>& proc,
                  ArgsAndToken&&... args_and_token) {
    return forwarder_->async_call(std::move(options), proc,
                                  std::forward<ArgsAndToken>(args_and_token)...);
  }

  /// Blocking: the result, or throws fwd::error. Not from a thread running the executor.
  template <class R, class... Params, class... Args>
  R call(const procedure<R(Params...)>& proc, Args&&... args) {
    return forwarder_->call(proc, std::forward<Args>(args)...);
  }
  template <class R, class... Params, class... Args>
  R call(forward_options options, const procedure<R(Params...)>& proc, Args&&... args) {
    return forwarder_->call(std::move(options), proc, std::forward<Args>(args)...);
  }

 private:
  // Everything but the server's transport stops here; the writer is stopped by the caller.
  void begin_stop() {
    std::lock_guard lock(stop_mutex_);
    if (stopped_) return;
    stopped_ = true;
    forwarder_->stop();
    reporter_->stop();
    if (server_) server_->stop();
    finder_->stop();
    membership_->stop();
    monitor_->stop();
    client_->close();
  }

  // How the fwd.status procedure reaches the node while it exists.
  class status_link {
   public:
    explicit status_link(const node* owner) : owner_(owner) {}
    status_report report() const {
      std::lock_guard lock(mutex_);
      if (owner_ == nullptr) return status_report{};
      return owner_->status();
    }
    void detach() {
      std::lock_guard lock(mutex_);
      owner_ = nullptr;
    }

   private:
    mutable std::mutex mutex_;
    const node* owner_;
  };

  // Records the errors status() lists, then passes each event on to the user's hooks.
  static telemetry_ptr recording_errors(telemetry_ptr user, std::shared_ptr<detail::error_log> log);

  executor_type executor_;
  node_options options_;
  std::shared_ptr<detail::error_log> errors_ = std::make_shared<detail::error_log>(16);
  std::shared_ptr<status_link> status_link_ = std::make_shared<status_link>(this);
  std::shared_ptr<rpc::registry> registry_ = std::make_shared<rpc::registry>();
  std::shared_ptr<rpc::client> client_;
  std::shared_ptr<fwd::membership> membership_;
  std::shared_ptr<litefs::monitor> monitor_;
  // The forwarder's durability tracker, for the monitor's hook (which is made first).
  std::shared_ptr<std::weak_ptr<detail::durability_tracker>> own_commits_ =
      std::make_shared<std::weak_ptr<detail::durability_tracker>>();
  std::function<litefs::role()> role_;
  std::shared_ptr<primary_finder> finder_;
  std::unique_ptr<fwd::forwarder> forwarder_;
  std::shared_ptr<detail::position_reporter> reporter_;
  std::shared_ptr<sqlite::write_executor> writer_;
  std::unique_ptr<rpc::server> server_;
  std::mutex stop_mutex_;
  std::atomic<bool> stopped_{false};
  std::atomic<bool> started_{false};
};

}  // namespace fwd

// ---- begin fwd/impl/node.hpp ----

// fwd::node's constructor: how a node wires its monitor, client, membership, discovery
// and forwarder, and defines the built-in procedures. Included at the end of
// fwd/node.hpp.


namespace fwd {

inline node::node(executor_type executor, node_options options)
    : executor_(std::move(executor)), options_(std::move(options)) {
  if (options_.database.empty()) {
    throw fwd::error(
        make_error_code(errc::bad_argument),
        "node_options::database is empty: give the database's path in the LiteFS mount, e.g. "
        "/litefs/app.db");
  }
  if (options_.secret.empty()) {
    if (!options_.insecure) {
      throw fwd::error(make_error_code(errc::bad_argument),
                       "node_options::secret is empty: give every node the same cluster secret of at "
                       "least 32 bytes (make one with `openssl rand -base64 32`; read it with "
                       "fwd::secret_from_env(\"FWD_SECRET\")), or set insecure = true on a "
                       "private test machine");
    }
    options_.secret = "fwd-insecure-no-secret-fwd-insecure-no-secret";
  }
  options_.telemetry = recording_errors(std::move(options_.telemetry), errors_);
  // Before anything opens the database: a SIGBUS from a dead mount must not kill the process.
  if (options_.guard_memory_maps) sqlite::install_memory_guard();
  // Refused here, before anything starts, rather than by the client or server inside.
  (void)rpc::detail::checked_secrets("node_options", options_.secret, options_.accepted_secrets);
  if (options_.mount.empty()) options_.mount = options_.database.parent_path();
  if (options_.litefs_hostname.empty()) options_.litefs_hostname = os_hostname();
  if (options_.name.empty()) options_.name = options_.litefs_hostname;
  if (!options_.role)
    options_.role = [mount = options_.mount] { return litefs::current_role(mount); };
  {
    litefs::monitor_options m;
    m.mount = options_.mount;
    m.database = options_.database.filename().string();
    m.poll_interval = options_.litefs_poll;
    m.http = options_.litefs_http;
    m.read_role = options_.role;
    // Every position of the local database the monitor sees is a commit of this node's
    // history: the durability tracker learns of the commits fwd did not make itself (the
    // service's own connections, a shell), so a replica that reports one of them is not
    // taken for a replica on another history. Set below, once the forwarder exists; the
    // monitor calls this only after start().
    m.on_change = [t = options_.telemetry, tracker = own_commits_](const litefs::node_state& s) {
      if (s.pos.txid != 0) {
        if (const auto durable = tracker->lock()) durable->note_commit(s.pos.txid, s.pos.checksum);
      }
      if (t && t->litefs_changed) {
        t->litefs_changed(litefs_event{litefs::to_string(s.role), s.primary_hostname, s.mount_dead,
                                       s.mount_generation, s.pos.txid, s.reason});
      }
    };
    monitor_ = litefs::monitor::create(executor_, std::move(m));
  }
  // Everything in the node reads the role from the monitor: an atomic load, no syscall.
  role_ = [monitor = monitor_] {
    const auto state = monitor->state();
    litefs::role r;
    r.kind = state->role;
    r.primary_hostname = state->primary_hostname;
    r.reason = state->reason;
    return r;
  };
  if (!options_.on_warning) {
    options_.on_warning = [](std::string_view text) {
      fmt::print(stderr, "fwd: warning: {}\n", text);
    };
  }

  rpc::client_options client_options;
  client_options.secret = options_.secret;
  client_options.accepted_secrets = options_.accepted_secrets;
  client_options.connect_timeout = options_.connect_timeout;
  client_options.default_timeout = options_.default_deadline;
  client_options.reconnect_backoff = std::chrono::milliseconds(10);
  client_options.max_reconnect_backoff = std::chrono::milliseconds(200);
  client_options.telemetry = options_.telemetry;
  client_options.tls = options_.tls;
  client_ = std::make_shared<rpc::client>(executor_, std::move(client_options));

  membership_options members_options = options_.members;
  if (const telemetry_ptr& t = options_.telemetry) {
    if (t->member_joined && !members_options.hooks.on_joined) {
      members_options.hooks.on_joined = [t](const member& m) {
        t->member_joined(member_event{to_string(m)});
      };
    }
    if (t->member_left && !members_options.hooks.on_left) {
      members_options.hooks.on_left = [t](const member& m) {
        t->member_left(member_event{to_string(m)});
      };
    }
    if (t->resolver_error && !members_options.hooks.on_resolve_error) {
      members_options.hooks.on_resolve_error = [t](const boost::system::error_code& ec,
                                                   std::string_view message) {
        t->resolver_error(resolver_error_event{ec, message});
      };
    }
  }
  membership_ = std::make_shared<membership>(executor_, std::move(members_options));

  discovery_options discovery;
  discovery.mount = options_.mount;
  discovery.ttl = options_.discovery_ttl;
  discovery.probe_timeout = options_.probe_timeout;
  if (options_.telemetry && options_.telemetry->primary_changed) {
    discovery.hooks.primary_changed =
        [t = options_.telemetry,
         previous = std::make_shared<std::string>()](const primary_location& now) {
          const std::string current =
              now.local ? std::string("local") : rpc::detail::endpoint_string(now.endpoint);
          t->primary_changed(primary_changed_event{*previous, current});
          *previous = current;
        };
  }
  if (const telemetry_ptr& t = options_.telemetry) {
    if (t->discovery_lookup) {
      discovery.hooks.cache_hit = [t] { t->discovery_lookup(discovery_lookup_event{true}); };
      discovery.hooks.cache_miss = [t] { t->discovery_lookup(discovery_lookup_event{false}); };
    }
    if (t->probe_finished) {
      discovery.hooks.probe_result = [t](const peer& p, const boost::system::error_code& ec,
                                         const node_status& status) {
        const std::string where = rpc::detail::endpoint_string(p.endpoint);
        t->probe_finished(probe_event{where, litefs::to_string(status.role), ec});
      };
    }
  }
  std::weak_ptr<rpc::client> weak_client = client_;
  // Discovery may outlive the node (calls in flight hold it): it borrows nothing.
  std::weak_ptr<membership> weak_members = membership_;
  finder_ = primary_finder::create(
      executor_, std::move(discovery),
      [weak_members] {
        std::vector<peer> out;
        const auto members = weak_members.lock();
        if (!members) return out;
        for (const auto& m : members->snapshot()->members) out.push_back(peer{m.host, m.endpoint});
        return out;
      },
      [weak_client](const peer& p, primary_finder::clock::time_point deadline,
                    primary_finder::probe_handler done) {
        auto c = weak_client.lock();
        if (!c) {
          std::move(done)(make_error_code(errc::cancelled), node_status{});
          return;
        }
        rpc::call_options call;
        call.deadline = deadline;
        c->async_call(
            p.endpoint, call, rpc::hello,
            [done = std::move(done)](boost::system::error_code ec, rpc::hello_info info) mutable {
              node_status status;
              status.node_name = std::move(info.node_name);
              status.litefs_hostname = std::move(info.litefs_hostname);
              status.role = role_from_string(info.role);
              status.txid = info.txid;
              std::move(done)(ec, std::move(status));
            });
      },
      role_);

  forwarder_options forwarding;
  forwarding.mount = options_.mount;
  forwarding.database_name = options_.database.filename().string();
  forwarding.default_deadline = options_.default_deadline;
  forwarding.retry = options_.retry;
  forwarding.breaker = options_.breaker;
  forwarding.read_your_writes = options_.read_your_writes;
  forwarding.durability = options_.durability;
  forwarding.durability_forget_after = options_.durability_forget_after;
  forwarding.monitor = monitor_;
  forwarding.role = role_;
  forwarding.telemetry = options_.telemetry;
  forwarder_ = std::make_unique<fwd::forwarder>(executor_, std::move(forwarding), client_, finder_);
  *own_commits_ = forwarder_->durability_tracker();

  // As primary: the replicas' positions, for durable acknowledgement. A report from a
  // replica whose LiteFS follows another primary (or while this node is not primary) is
  // not recorded: its position belongs to another history.
  registry_->define(report_position,
                    [tracker = std::weak_ptr<detail::durability_tracker>(forwarder_->durability_tracker()),
                     role = role_, hostname = options_.litefs_hostname](
                        position_report report, rpc::result_handler<bool> done) {
                      const auto t = tracker.lock();
                      if (!t) return done(make_error_code(errc::cancelled), false);
                      if (role().kind != litefs::role_kind::primary) return done(make_error_code(errc::not_primary), false);
                      if (report.primary != hostname) return done({}, false);
                      done({}, t->report(report));
                    });
  {
    detail::position_reporter::settings reporting;
    reporting.hostname = options_.litefs_hostname;
    reporting.candidate = options_.litefs_candidate;
    reporting.heartbeat = options_.position_heartbeat;
    reporting.idle_check = options_.litefs_poll;
    reporter_ = detail::position_reporter::create(executor_, std::move(reporting), monitor_, client_, finder_);
  }
  if (options_.enable_raw_sql) {
    forwarder_->define(*registry_, execute_statement,
                       [](sqlite3* db, const std::string& sql, const std::vector<sql_value>& values) {
                         return detail::run_statement(db, sql, values);
                       });
    forwarder_->define(
        *registry_, execute_bulk,
        [](sqlite3* db, const std::string& sql, const std::vector<std::vector<sql_value>>& rows) {
          return detail::run_bulk(db, sql, rows);
        });
  } else {
    const auto why = [this](std::string_view name) {
      return fmt::format(
          "{} (raw SQL) is not enabled on node {}: set node_options::enable_raw_sql = true on every node "
          "that may become primary to let callers run any statement; nothing ran",
          name, options_.name);
    };
    forwarder_->refuse(*registry_, execute_statement, errc::unknown_procedure, why(execute_statement.name()));
    forwarder_->refuse(*registry_, execute_bulk, errc::unknown_procedure, why(execute_bulk.name()));
  }
  forwarder_->define(*registry_, migrate_procedure,
                     [](sqlite3* db, const std::vector<migration>& migrations) {
                       return detail::run_migrations(db, migrations);
                     });
}

inline telemetry_ptr node::recording_errors(telemetry_ptr user,
                                            std::shared_ptr<detail::error_log> log) {
  auto t = std::make_shared<telemetry>(user ? *user : telemetry{});
  t->write_finished = [log, next = std::move(t->write_finished)](const write_finished_event& e) {
    if (e.outcome) {
      log->record(fmt::format("write {} failed after {} attempt(s): {}", e.procedure, e.attempts,
                              e.outcome.message()));
    }
    if (next) next(e);
  };
  t->connection_failed = [log, next = std::move(t->connection_failed)](const connection_event& e) {
    log->record(fmt::format("{} connection {} {}: {}", e.inbound ? "inbound" : "outbound",
                            e.inbound ? "from" : "to", e.peer.empty() ? "?" : e.peer,
                            e.reason.message()));
    if (next) next(e);
  };
  t->resolver_error = [log, next = std::move(t->resolver_error)](const resolver_error_event& e) {
    log->record(fmt::format("membership DNS: {}", e.message));
    if (next) next(e);
  };
  t->probe_finished = [log, next = std::move(t->probe_finished)](const probe_event& e) {
    if (e.outcome) log->record(fmt::format("probe of {} failed: {}", e.peer, e.outcome.message()));
    if (next) next(e);
  };
  return t;
}

inline status_report node::status() const {
  status_report r;
  r.node_name = options_.name;
  r.litefs_hostname = options_.litefs_hostname;
  const auto state = monitor_->state();
  r.role = litefs::to_string(state->role);
  r.role_reason = state->reason;
  if (state->role == litefs::role_kind::primary) {
    r.primary_hostname = options_.litefs_hostname;
  } else if (state->role == litefs::role_kind::replica) {
    r.primary_hostname = state->primary_hostname;
  }
  if (const primary_location* p = finder_->last_known()) {
    r.primary_address = p->local ? std::string("local") : rpc::detail::endpoint_string(p->endpoint);
  }
  for (const auto& m : membership_->snapshot()->members)
    r.members.push_back(status_member{m.host, rpc::detail::endpoint_string(m.endpoint)});
  r.txid = state->pos.txid;
  r.checksum = state->pos.checksum;
  r.lag_ms = state->lag.count();
  r.mount_dead = state->mount_dead;
  r.calls_in_flight = forwarder_->in_flight();
  // writer_ and server_ are set once, before started_ (release) is.
  if (started_.load(std::memory_order_acquire)) {
    if (writer_) r.writer_queue = writer_->queued();
    if (server_) {
      r.requests_in_flight = server_->in_flight();
      r.connections = server_->connection_count();
    }
    r.started = !stopped_.load();
  }
  r.last_errors = errors_->snapshot();
  r.unix_ms = unix_now_ms();
  return r;
}

}  // namespace fwd

// ---- end fwd/impl/node.hpp ----

// ---- end fwd/node.hpp ----
#include <memory>
#include <string>
#include <vector>

namespace fwd {

/**
 * The schema version of the local copy of the database (the last migration recorded in
 * `_fwd_migrations`; 0 before any), read with a read-only connection. Throws fwd::error.
 */
inline std::int64_t local_schema_version(const std::filesystem::path& database) {
  sqlite::connection db(database.string(), SQLITE_OPEN_READONLY, std::chrono::milliseconds(1000));
  return detail::schema_version(db.native_handle());
}

/**
 * Brings the cluster's schema to the last of `migrations` (versions > 0, strictly
 * increasing), then waits until the local copy has it.
 *
 * The migrations newer than the database's schema version run on the primary, in
 * order, in one transaction, each recorded in `_fwd_migrations`.
 * Called on a replica, the request is forwarded (and, while no primary exists yet, retried
 * until one does, within `timeout`); the call completes once the local copy shows the
 * version. Every node may call it at start: the primary applies each migration once.
 *
 * Completion signature: `void(boost::system::error_code, std::int64_t version)`. Errors:
 * those of node::async_call (no_primary, timeout, a SQLite code from a failing
 * migration, whose transaction is rolled back), and errc::replication_lag when the
 * migrations committed but this replica had not received them within `timeout` (a retry
 * is safe: applied migrations are skipped).
 *
 * Per-Operation Cancellation: as node::async_call.
 */
template <class Token>
auto async_migrate(node& n, std::vector<migration> migrations, std::chrono::milliseconds timeout,
                   Token&& token) {
  forward_options options;
  options.deadline = std::chrono::steady_clock::now() + timeout;
  options.read_your_writes = true;
  return n.async_call(std::move(options), migrate_procedure, std::move(migrations),
                      std::forward<Token>(token));
}

/// Blocking async_migrate: the schema version, or throws fwd::error.
inline std::int64_t migrate(node& n, std::vector<migration> migrations,
                            std::chrono::milliseconds timeout) {
  forward_options options;
  options.deadline = std::chrono::steady_clock::now() + timeout;
  options.read_your_writes = true;
  const std::int64_t target = migrations.empty() ? 0 : migrations.back().version;
  const std::int64_t version = n.call(std::move(options), migrate_procedure, std::move(migrations));
  // Read-your-writes waited for the TXID; the schema version must now be here too.
  const std::int64_t local = local_schema_version(n.options().database);
  if (local < target) {
    throw fwd::error(make_error_code(errc::replication_lag),
                     fmt::format("the migrations committed on the primary (version {}) but "
                                 "the local copy shows version {}",
                                 version, local));
  }
  return version;
}

}  // namespace fwd

// ---- end fwd/migrate.hpp ----
// ---- begin fwd/metrics.hpp ----

// Prometheus metrics fed by the telemetry hooks.
//
//   auto m = std::make_shared<fwd::metrics>();
//   options.telemetry = m->hooks(my_hooks);       // my_hooks (may be null) still run
//   ...
//   std::string body = m->render();              // GET /metrics, fwd::metrics_content_type
//
// Names follow Prometheus practice and OpenTelemetry's RPC conventions: base units
// (seconds), counters end in `_total`, and labels are few-valued (procedure, outcome,
// reason, role, state): never a request id, a peer's address or a port.
//
// The families and their registry are in metrics_registry.hpp.

// ---- begin fwd/metrics_registry.hpp ----

// Metric families (counter, gauge, histogram) and a registry that renders them in
// Prometheus' text exposition format, version 0.0.4. fwd::metrics (metrics.hpp) builds
// fwd's own families on one registry; a service may add its own to it.
//
// Each family has its own mutex: an update holds it for one map lookup and an addition;
// render() copies a family's values under its mutex and formats them after releasing it.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fwd {


/// The Content-Type of metrics_registry::render()'s text.
inline constexpr const char* metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

namespace detail {

// A sample value as Prometheus reads it: integers without a fraction, +Inf/-Inf/NaN.
inline std::string metric_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

// A label value between double quotes: backslash, double quote and newline escaped.
inline void append_label_value(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
}

// HELP text: backslash and newline escaped.
inline std::string help_text(std::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// `{a="x",b="y"}` (plus `extra` such as `le="0.5"`), or nothing without labels.
inline std::string label_set(const std::vector<std::string>& names, const std::vector<std::string>& values,
                             std::string_view extra = {}) {
  if (names.empty() && extra.empty()) return {};
  std::string out = "{";
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) out += ',';
    out += names[i];
    out += "=\"";
    append_label_value(out, i < values.size() ? values[i] : std::string());
    out += '"';
  }
  if (!extra.empty()) {
    if (!names.empty()) out += ',';
    out += extra;
  }
  out += '}';
  return out;
}

class metric_family {
 public:
  metric_family(std::string name, std::string help, std::vector<std::string> labels)
      : name_(std::move(name)), help_(std::move(help)), labels_(std::move(labels)) {}
  virtual ~metric_family() = default;
  metric_family(const metric_family&) = delete;
  metric_family& operator=(const metric_family&) = delete;

  const std::string& name() const noexcept { return name_; }
  virtual void render(std::string& out) const = 0;

 protected:
  void header(std::string& out, const char* type) const {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name_, help_text(help_), name_, type);
  }

  std::string name_;
  std::string help_;
  std::vector<std::string> labels_;
  mutable std::mutex mutex_;
};

}  // namespace detail

/// Label values, in the order of the family's label names.
using metric_labels = std::vector<std::string>;

namespace detail {

/// A family with one number per label set: what counters and gauges share.
class scalar_family : public metric_family {
 public:
  using metric_family::metric_family;

  void add(const metric_labels& labels, double by) {
    std::lock_guard lock(mutex_);
    values_[labels] += by;
  }
  double value(const metric_labels& labels = {}) const {
    std::lock_guard lock(mutex_);
    const auto it = values_.find(labels);
    return it == values_.end() ? 0 : it->second;
  }

 protected:
  void render_as(std::string& out, const char* type) const {
    std::map<metric_labels, double> copy;
    {
      std::lock_guard lock(mutex_);
      copy = values_;
    }
    header(out, type);
    for (const auto& [labels, v] : copy)
      out += fmt::format("{}{} {}\n", name_, label_set(labels_, labels), metric_number(v));
  }

  std::map<metric_labels, double> values_;
};

}  // namespace detail

/// A counter family: values only go up. Its name should end in `_total`.
class counter_family : public detail::scalar_family {
 public:
  using scalar_family::scalar_family;

  void add(const metric_labels& labels, double by = 1) { scalar_family::add(labels, by); }
  void inc(const metric_labels& labels = {}) { add(labels, 1); }
  void render(std::string& out) const override { render_as(out, "counter"); }
};

/// A gauge family: values go up and down.
class gauge_family : public detail::scalar_family {
 public:
  using scalar_family::scalar_family;

  void set(const metric_labels& labels, double v) {
    std::lock_guard lock(mutex_);
    values_[labels] = v;
  }
  void render(std::string& out) const override { render_as(out, "gauge"); }
};

/// A histogram family: observations counted in buckets by upper bound (`le`), rendered
/// cumulative with a final `+Inf` bucket, `_sum` and `_count`.
class histogram_family : public detail::metric_family {
 public:
  histogram_family(std::string name, std::string help, std::vector<std::string> labels,
                   std::vector<double> bounds)
      : metric_family(std::move(name), std::move(help), std::move(labels)), bounds_(std::move(bounds)) {
    std::sort(bounds_.begin(), bounds_.end());
    bounds_.erase(std::unique(bounds_.begin(), bounds_.end()), bounds_.end());
    if (!bounds_.empty() && std::isinf(bounds_.back())) bounds_.pop_back();  // +Inf is implicit
  }

  void observe(const metric_labels& labels, double v) {
    // The bucket is found before the lock is taken.
    const std::size_t bucket = static_cast<std::size_t>(
        std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
    std::lock_guard lock(mutex_);
    series& s = values_[labels];
    if (s.buckets.empty()) s.buckets.assign(bounds_.size() + 1, 0);
    ++s.buckets[bucket];
    s.sum += v;
    ++s.count;
  }
  /// Observations so far for these labels.
  std::uint64_t count(const metric_labels& labels = {}) const {
    std::lock_guard lock(mutex_);
    const auto it = values_.find(labels);
    return it == values_.end() ? 0 : it->second.count;
  }

  void render(std::string& out) const override {
    std::map<metric_labels, series> copy;
    {
      std::lock_guard lock(mutex_);
      copy = values_;
    }
    header(out, "histogram");
    for (const auto& [labels, s] : copy) {
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i <= bounds_.size(); ++i) {
        cumulative += s.buckets[i];
        const std::string le =
            fmt::format("le=\"{}\"", i < bounds_.size() ? detail::metric_number(bounds_[i]) : "+Inf");
        out += fmt::format("{}_bucket{} {}\n", name_, detail::label_set(labels_, labels, le), cumulative);
      }
      const std::string set = detail::label_set(labels_, labels);
      out += fmt::format("{}_sum{} {}\n", name_, set, detail::metric_number(s.sum));
      out += fmt::format("{}_count{} {}\n", name_, set, s.count);
    }
  }

 private:
  struct series {
    std::vector<std::uint64_t> buckets;  // per bucket, not cumulative; the last is +Inf
    double sum = 0;
    std::uint64_t count = 0;
  };
  std::vector<double> bounds_;
  std::map<metric_labels, series> values_;
};

/// Families rendered together, in the order they were added.
class metrics_registry {
 public:
  metrics_registry() = default;
  metrics_registry(const metrics_registry&) = delete;
  metrics_registry& operator=(const metrics_registry&) = delete;

  counter_family& counter(std::string name, std::string help, std::vector<std::string> labels = {}) {
    return add<counter_family>(std::move(name), std::move(help), std::move(labels));
  }
  gauge_family& gauge(std::string name, std::string help, std::vector<std::string> labels = {}) {
    return add<gauge_family>(std::move(name), std::move(help), std::move(labels));
  }
  histogram_family& histogram(std::string name, std::string help, std::vector<std::string> labels,
                              std::vector<double> bounds) {
    return add<histogram_family>(std::move(name), std::move(help), std::move(labels), std::move(bounds));
  }

  /// Every family in the text exposition format (version 0.0.4).
  std::string render() const {
    std::vector<detail::metric_family*> families;
    {
      std::lock_guard lock(mutex_);
      for (const auto& f : families_) families.push_back(f.get());
    }
    std::string out;
    for (const auto* f : families) f->render(out);
    return out;
  }

 private:
  template <class Family, class... Args>
  Family& add(Args&&... args) {
    auto family = std::make_unique<Family>(std::forward<Args>(args)...);
    Family& ref = *family;
    std::lock_guard lock(mutex_);
    families_.push_back(std::move(family));
    return ref;
  }

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<detail::metric_family>> families_;
};

}  // namespace fwd

// ---- end fwd/metrics_registry.hpp ----

#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/error.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fwd {

/// A short, few-valued name for an outcome: "ok", fwd's errc name ("not_primary"), "sqlite"
/// for SQLite's codes, "eof", or "<category>:<value>" for other system errors.
inline std::string outcome_label(const boost::system::error_code& ec) {
  if (!ec) return "ok";
  if (ec.category() == fwd_category()) {
    switch (static_cast<errc>(ec.value())) {
      case errc::no_primary: return "no_primary";
      case errc::not_primary: return "not_primary";
      case errc::unreachable: return "unreachable";
      case errc::connection_lost: return "connection_lost";
      case errc::timeout: return "timeout";
      case errc::cancelled: return "cancelled";
      case errc::remote_failure: return "remote_failure";
      case errc::unknown_procedure: return "unknown_procedure";
      case errc::signature_mismatch: return "signature_mismatch";
      case errc::protocol_error: return "protocol_error";
      case errc::frame_too_large: return "frame_too_large";
      case errc::unauthenticated: return "unauthenticated";
      case errc::version_mismatch: return "version_mismatch";
      case errc::overloaded: return "overloaded";
      case errc::circuit_open: return "circuit_open";
      case errc::replication_lag: return "replication_lag";
      case errc::not_litefs: return "not_litefs";
      case errc::misconfigured_mount: return "misconfigured_mount";
      case errc::bad_litefs_file: return "bad_litefs_file";
      case errc::bad_argument: return "bad_argument";
      case errc::commit_unknown: return "commit_unknown";
      case errc::not_yet_durable: return "not_yet_durable";
      case errc::tampered_frame: return "tampered_frame";
      case errc::not_confirmed: return "not_confirmed";
    }
    return "fwd";
  }
  if (ec.category() == sqlite_category()) return "sqlite";
  if (ec == boost::asio::error::eof) return "eof";
  if (ec == boost::system::errc::connection_refused) return "connection_refused";
  if (ec == boost::system::errc::connection_reset) return "connection_reset";
  if (ec == boost::system::errc::timed_out) return "timed_out";
  if (ec == boost::system::errc::operation_canceled) return "operation_canceled";
  return fmt::format("{}:{}", ec.category().name(), ec.value());
}

/**
 * fwd's metrics, fed by the telemetry hooks. Make one (shared: the hooks keep it alive),
 * give `hooks()` to node_options::telemetry (or forwarder_options, server_options,
 * client_options), and serve `render()`. Every hook only takes one family's mutex.
 */
class metrics : public std::enable_shared_from_this<metrics> {
 public:
  /// Upper bounds, in seconds, of the duration histograms.
  static std::vector<double> duration_buckets() {
    return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  }

  metrics()
      : call_duration_(registry_.histogram(
            "fwd_rpc_call_duration_seconds",
            "One attempt of a call, from sending it (or running it here) to its reply.",
            {"procedure", "outcome", "target"}, duration_buckets())),
        write_duration_(registry_.histogram(
            "fwd_write_duration_seconds",
            "A write from the call to its completion, retries and read-your-writes wait included.",
            {"procedure", "outcome", "path"}, duration_buckets())),
        writes_(registry_.counter("fwd_writes_total",
                                  "Writes completed, by where they ran: on this node (local) or "
                                  "forwarded to the primary.",
                                  {"path"})),
        retries_(registry_.counter("fwd_retries_total", "Attempts of a call retried, by the failure.",
                                   {"procedure", "reason"})),
        replication_wait_(registry_.histogram(
            "fwd_replication_wait_seconds",
            "Read-your-writes: the wait for this node to reach a forwarded write's TXID.",
            {"outcome"}, duration_buckets())),
        primary_changes_(registry_.counter("fwd_primary_changes_total",
                                           "Times the node believed to be primary changed.")),
        primary_known_(registry_.gauge("fwd_primary_known",
                                       "1 when a primary is known, 0 when none is.")),
        litefs_changes_(registry_.counter("fwd_litefs_state_changes_total",
                                          "Changes of this node's LiteFS role, primary or mount (not of its position), by the new "
                                          "role.",
                                          {"role"})),
        litefs_role_(registry_.gauge("fwd_litefs_role", "1 for this node's current LiteFS role.",
                                     {"role"})),
        litefs_txid_(registry_.gauge("fwd_litefs_txid", "This node's LiteFS position (TXID).")),
        litefs_mount_dead_(registry_.gauge("fwd_litefs_mount_dead",
                                           "1 while LiteFS is stopped under the service.")),
        members_(registry_.gauge("fwd_cluster_members", "Members of the cluster now.")),
        member_changes_(registry_.counter("fwd_cluster_member_changes_total",
                                          "Members that joined or left.", {"change"})),
        breakers_(registry_.gauge("fwd_breakers", "Peers whose circuit breaker is open or half-open.",
                                  {"state"})),
        breaker_changes_(registry_.counter("fwd_breaker_transitions_total",
                                           "Circuit breaker changes, by the new state.", {"state"})),
        queue_depth_(registry_.gauge("fwd_writer_queue_depth",
                                     "Writes waiting for the writer when it last took a batch.")),
        batch_size_(registry_.histogram("fwd_writer_batch_size",
                                        "Writes per group commit (one transaction).", {},
                                        {1, 2, 4, 8, 16, 32, 64, 128, 256, 512})),
        connections_(registry_.gauge("fwd_rpc_connections", "Open connections, by direction.",
                                     {"direction"})),
        refused_(registry_.counter("fwd_rpc_connections_refused_total",
                                   "Connections this node's server refused or lost before they "
                                   "were usable, by reason.",
                                   {"reason"})),
        server_refused_(registry_.counter("fwd_server_refused_total",
                                          "Connections, frames and calls this node's server refused, "
                                          "by what and why (see fwd::refusal_event).",
                                          {"what", "reason"})),
        connect_failures_(registry_.counter("fwd_rpc_connect_failures_total",
                                            "Connections to peers that failed to open, by reason.",
                                            {"reason"})),
        lookups_(registry_.counter("fwd_discovery_lookups_total",
                                   "Primary lookups, served from the cache (hit) or not (miss).",
                                   {"result"})),
        probes_(registry_.counter("fwd_discovery_probes_total", "Discovery probes, by outcome.",
                                  {"outcome"})),
        resolver_errors_(registry_.counter("fwd_membership_resolve_errors_total",
                                           "DNS polls of the membership that failed or came back "
                                           "empty.")) {
    primary_known_.set({}, 0);
    members_.set({}, 0);
    litefs_mount_dead_.set({}, 0);
    for (const char* s : {"open", "half-open"}) breakers_.set({s}, 0);
    for (const char* d : {"inbound", "outbound"}) connections_.set({d}, 0);
  }

  metrics(const metrics&) = delete;
  metrics& operator=(const metrics&) = delete;

  /// The families (to add your own, or to read values in tests).
  metrics_registry& registry() noexcept { return registry_; }

  /// Everything, in the text exposition format 0.0.4 (serve with metrics_content_type).
  std::string render() const { return registry_.render(); }

  /**
   * Hooks that update these metrics, then call `next`'s hook of the same event (when
   * `next` is set and has it). The hooks share ownership of this object, which must be
   * owned by a std::shared_ptr (std::make_shared<fwd::metrics>()).
   */
  telemetry_ptr hooks(telemetry_ptr next = {}) {
    std::shared_ptr<metrics> self = shared_from_this();
    auto t = std::make_shared<fwd::telemetry>();
    const auto then = [next](auto hook, const auto& event) {
      if (next) fwd::detail::emit(next, hook, event);
    };
    if (next && next->call_started) t->call_started = next->call_started;
    t->call_finished = [self, then](const call_finished_event& e) {
      self->call_duration_.observe({std::string(e.procedure), outcome_label(e.outcome),
                                    e.peer.empty() ? "local" : "remote"},
                                   seconds(e.duration));
      then(&fwd::telemetry::call_finished, e);
    };
    t->write_finished = [self, then](const write_finished_event& e) {
      const char* path = e.forwarded ? "forwarded" : "local";
      const std::string outcome = outcome_label(e.outcome);
      self->write_duration_.observe({std::string(e.procedure), outcome, path}, seconds(e.duration));
      self->writes_.inc({path});
      if (e.waited_for_replication) self->replication_wait_.observe({outcome}, seconds(e.replication_wait));
      then(&fwd::telemetry::write_finished, e);
    };
    t->retry = [self, then](const retry_event& e) {
      self->retries_.inc({std::string(e.procedure), outcome_label(e.reason)});
      then(&fwd::telemetry::retry, e);
    };
    t->primary_changed = [self, then](const primary_changed_event& e) {
      self->primary_changes_.inc();
      self->primary_known_.set({}, e.current.empty() ? 0 : 1);
      then(&fwd::telemetry::primary_changed, e);
    };
    t->litefs_changed = [self, then](const litefs_event& e) {
      const std::string role(e.role);
      bool changed = false;  // a new position alone is not a state change
      {
        std::lock_guard lock(self->mutex_);
        litefs_seen& was = self->litefs_now_;
        changed = !was.known || role != was.role || e.primary_hostname != was.primary ||
                  e.mount_dead != was.mount_dead || e.mount_generation != was.generation;
        if (role != was.role) {
          if (!was.role.empty()) self->litefs_role_.set({was.role}, 0);
          self->litefs_role_.set({role}, 1);
        }
        was = {true, role, std::string(e.primary_hostname), e.mount_dead, e.mount_generation};
      }
      if (changed) self->litefs_changes_.inc({role});
      self->litefs_txid_.set({}, static_cast<double>(e.txid));
      self->litefs_mount_dead_.set({}, e.mount_dead ? 1 : 0);
      then(&fwd::telemetry::litefs_changed, e);
    };
    t->member_joined = [self, then](const member_event& e) {
      self->members_.add({}, 1);
      self->member_changes_.inc({"joined"});
      then(&fwd::telemetry::member_joined, e);
    };
    t->member_left = [self, then](const member_event& e) {
      self->members_.add({}, -1);
      self->member_changes_.inc({"left"});
      then(&fwd::telemetry::member_left, e);
    };
    t->breaker_changed = [self, then](const breaker_event& e) {
      const std::string state(e.state);
      {
        // Peers are not labels: only how many are in each state.
        std::lock_guard lock(self->mutex_);
        // A peer not in the map is closed; closed peers are not kept.
        const std::string peer(e.peer);
        const auto it = self->breaker_by_peer_.find(peer);
        const std::string before = it == self->breaker_by_peer_.end() ? "closed" : it->second;
        if (before != state) {
          if (before != "closed") self->breakers_.add({before}, -1);
          if (state != "closed") self->breakers_.add({state}, 1);
        }
        if (state == "closed") {
          if (it != self->breaker_by_peer_.end()) self->breaker_by_peer_.erase(it);
        } else {
          self->breaker_by_peer_[peer] = state;
        }
      }
      self->breaker_changes_.inc({state});
      then(&fwd::telemetry::breaker_changed, e);
    };
    t->write_batch = [self, then](const write_batch_event& e) {
      self->batch_size_.observe({}, static_cast<double>(e.size));
      self->queue_depth_.set({}, static_cast<double>(e.queued));
      then(&fwd::telemetry::write_batch, e);
    };
    t->connection_opened = [self, then](const connection_event& e) {
      self->connections_.add({e.inbound ? "inbound" : "outbound"}, 1);
      then(&fwd::telemetry::connection_opened, e);
    };
    t->connection_closed = [self, then](const connection_event& e) {
      self->connections_.add({e.inbound ? "inbound" : "outbound"}, -1);
      then(&fwd::telemetry::connection_closed, e);
    };
    t->connection_failed = [self, then](const connection_event& e) {
      (e.inbound ? self->refused_ : self->connect_failures_).inc({outcome_label(e.reason)});
      then(&fwd::telemetry::connection_failed, e);
    };
    t->refused = [self, then](const refusal_event& e) {
      self->server_refused_.inc({std::string(e.what), std::string(e.reason)});
      then(&fwd::telemetry::refused, e);
    };
    t->discovery_lookup = [self, then](const discovery_lookup_event& e) {
      self->lookups_.inc({e.hit ? "hit" : "miss"});
      then(&fwd::telemetry::discovery_lookup, e);
    };
    t->probe_finished = [self, then](const probe_event& e) {
      self->probes_.inc({outcome_label(e.outcome)});
      then(&fwd::telemetry::probe_finished, e);
    };
    t->resolver_error = [self, then](const resolver_error_event& e) {
      self->resolver_errors_.inc();
      then(&fwd::telemetry::resolver_error, e);
    };
    return t;
  }

 private:
  static double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

  metrics_registry registry_;
  histogram_family& call_duration_;
  histogram_family& write_duration_;
  counter_family& writes_;
  counter_family& retries_;
  histogram_family& replication_wait_;
  counter_family& primary_changes_;
  gauge_family& primary_known_;
  counter_family& litefs_changes_;
  gauge_family& litefs_role_;
  gauge_family& litefs_txid_;
  gauge_family& litefs_mount_dead_;
  gauge_family& members_;
  counter_family& member_changes_;
  gauge_family& breakers_;
  counter_family& breaker_changes_;
  gauge_family& queue_depth_;
  histogram_family& batch_size_;
  gauge_family& connections_;
  counter_family& refused_;
  counter_family& server_refused_;
  counter_family& connect_failures_;
  counter_family& lookups_;
  counter_family& probes_;
  counter_family& resolver_errors_;

  struct litefs_seen {
    bool known = false;
    std::string role;
    std::string primary;
    bool mount_dead = false;
    std::uint64_t generation = 0;
  };
  std::mutex mutex_;  // the two below
  litefs_seen litefs_now_;
  std::map<std::string, std::string> breaker_by_peer_;
};

}  // namespace fwd

// ---- end fwd/metrics.hpp ----

// ---- end fwd/forward.hpp ----
