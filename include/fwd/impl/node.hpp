#pragma once

// fwd::node's constructor: how a node wires its monitor, client, membership, discovery
// and forwarder, and defines the built-in procedures. Included at the end of
// fwd/node.hpp.

#include <fwd/node.hpp>

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
