#pragma once

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

#include <fwd/error.hpp>
#include <fwd/metrics_registry.hpp>
#include <fwd/telemetry.hpp>

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
