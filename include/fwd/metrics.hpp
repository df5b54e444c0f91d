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
// A metrics_registry is a set of counter, gauge and histogram families rendered in the
// text exposition format, version 0.0.4. Each family has its own mutex: a hook holds it
// for one map lookup and an addition; render() copies a family's values under its mutex
// and formats them after releasing it.

#include <fwd/error.hpp>
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
