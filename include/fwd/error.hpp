#pragma once

// fwd's errors: one enum (fwd::errc) with its category "fwd", SQLite's result codes kept
// in their own category "fwd.sqlite" (the value is SQLite's extended code), and a
// classification that tells every caller whether a failed call may be retried.

#include <boost/system/error_category.hpp>
#include <boost/system/error_code.hpp>
#include <fwd/detail/config.hpp>

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
#include <fwd/impl/error.ipp>
#endif
