#pragma once

// Definitions of <fwd/error.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>

#include <fwd/error.hpp>

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
