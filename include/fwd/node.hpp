#pragma once

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

#include <unistd.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <fwd/write/breaker.hpp>
#include <fwd/cluster/discovery.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/write/forwarder.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/path_check.hpp>
#include <fwd/cluster/membership.hpp>
#include <fwd/write/retry.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/server.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/write/executor.hpp>
#include <fwd/telemetry.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
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
                     std::string("the environment variable ") + name +
                         " holding the cluster secret is unset or empty: set it to the same secret "
                         "on every node");
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
                     "cannot read the cluster secret file " + path.string() +
                         ": create it (same content on every node)");
  }
  std::stringstream text;
  text << in.rdbuf();
  std::string secret = text.str();
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  if (secret.empty()) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     "the cluster secret file " + path.string() + " is empty");
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
  /// The cluster secret every node shares (secret_from_env / secret_from_file).
  std::string secret;
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
  /// Deadline of a call that sets none.
  std::chrono::milliseconds default_deadline{5000};
  retry_policy retry;
  breaker_options breaker;
  /// Forwarded writes wait until they are visible locally (see forwarder).
  bool read_your_writes = true;
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
};

/**
 * A node of a fwd cluster. Construct, define the write procedures, start(); then call
 * from any thread. Owns its server, client, membership, discovery and, once started, the
 * write executor (its one writer thread) and the LiteFS monitor (its one polling thread,
 * the only other thread fwd starts; see litefs::monitor). Built-in procedures on every node:
 * fwd::execute_statement, fwd::execute_bulk, fwd::migrate_procedure.
 */
class node {
 public:
  using executor_type = boost::asio::any_io_executor;

  /// Throws fwd::error(bad_argument) on a missing database or secret.
  node(executor_type executor, node_options options)
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
                         "node_options::secret is empty: give every node the same cluster secret "
                         "(fwd::secret_from_env(\"FWD_SECRET\")), or set insecure = true on a "
                         "private test machine");
      }
      options_.secret = "fwd-insecure-no-secret";
    }
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
      if (const telemetry_ptr& t = options_.telemetry; t && t->litefs_changed) {
        m.on_change = [t](const litefs::node_state& s) {
          t->litefs_changed(litefs_event{litefs::to_string(s.role), s.primary_hostname, s.mount_dead,
                                         s.mount_generation, s.pos.txid, s.reason});
        };
      }
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
        std::fprintf(stderr, "fwd: warning: %.*s\n", static_cast<int>(text.size()), text.data());
      };
    }

    rpc::client_options client_options;
    client_options.secret = options_.secret;
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
    membership_ = std::make_unique<membership>(executor_, std::move(members_options));

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
    membership* members = membership_.get();
    finder_ = primary_finder::create(
        executor_, std::move(discovery),
        [members] {
          std::vector<peer> out;
          for (const auto& m : members->snapshot()->members)
            out.push_back(peer{m.host, m.endpoint});
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
                status.role = role_from_text(info.role);
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
    forwarding.monitor = monitor_;
    forwarding.role = role_;
    forwarding.telemetry = options_.telemetry;
    forwarder_ =
        std::make_unique<fwd::forwarder>(executor_, std::move(forwarding), client_, finder_);

    forwarder_->define(
        registry_, execute_statement,
        [](sqlite3* db, const std::string& sql, const std::vector<sql_value>& values) {
          return detail::run_statement(db, sql, values);
        });
    forwarder_->define(
        registry_, execute_bulk,
        [](sqlite3* db, const std::string& sql, const std::vector<std::vector<sql_value>>& rows) {
          return detail::run_bulk(db, sql, rows);
        });
    forwarder_->define(registry_, migrate_procedure,
                       [](sqlite3* db, const std::vector<migration>& migrations) {
                         return detail::run_migrations(db, migrations);
                       });
  }

  node(const node&) = delete;
  node& operator=(const node&) = delete;

  /// Stops the node (see stop()).
  ~node() { stop(); }

  executor_type get_executor() const noexcept { return executor_; }

  /**
   * Serves write procedure `proc` with the service's own writer `fn`:
   * `R fn(sqlite3*, A...)` or `R fn(fwd::sqlite::connection&, A...)`, run on the primary
   * inside one transaction, exactly once per call. Define before start(), on every node.
   * Throws fwd::error(bad_argument) if the name is taken.
   */
  template <class R, class... A, class F>
  void define(const procedure<R(A...)>& proc, F&& fn) {
    forwarder_->define(registry_, proc, std::forward<F>(fn));
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
      write.position_after_commit = [mount = options_.mount,
                                     db = options_.database.filename().string()] {
        return litefs::read_position(mount, db).txid;
      };
    }
    writer_ = std::make_shared<sqlite::write_executor>(executor_, options_.database.string(),
                                                       std::move(write));
    forwarder_->attach_writer(writer_);

    rpc::server_options server_options;
    server_options.listen = options_.listen;
    server_options.secret = options_.secret;
    server_options.node_name = options_.name;
    server_options.litefs_hostname = options_.litefs_hostname;
    server_options.telemetry = options_.telemetry;
    server_options.tls = options_.tls;
    server_options.status = [monitor = monitor_] {
      const auto state = monitor->state();
      rpc::local_status status;
      status.role = litefs::to_string(state->role);
      status.txid = state->pos.txid;
      return status;
    };
    server_ = std::make_unique<rpc::server>(executor_, registry_, std::move(server_options));
    server_->start();
    membership_->start();
    finder_->start();
    started_ = true;
  }

  /**
   * Clean shutdown: new calls and calls waiting to retry complete with `cancelled`; the
   * server answers the calls it is running and closes; the writer finishes its running
   * batch (committed or rolled back as a whole, never half-written) and fails the writes
   * still queued with `cancelled`. Blocks until the writer is stopped. Idempotent.
   */
  void stop() {
    std::lock_guard lock(stop_mutex_);
    if (stopped_) return;
    stopped_ = true;
    forwarder_->stop();
    if (server_) server_->stop();
    finder_->stop();
    membership_->stop();
    monitor_->stop();
    client_->close();
    if (writer_) writer_->stop();
  }

  /// Where the server listens (after start()).
  boost::asio::ip::tcp::endpoint local_endpoint() const {
    return server_ ? server_->local_endpoint() : options_.listen;
  }

  const node_options& options() const noexcept { return options_; }
  rpc::registry& registry() noexcept { return registry_; }
  primary_finder& discovery() noexcept { return *finder_; }
  fwd::membership& members() noexcept { return *membership_; }
  fwd::forwarder& forwarder() noexcept { return *forwarder_; }

  /// This node's role as LiteFS tells it now.
  litefs::role role() const { return role_(); }

  /// This node's LiteFS state as its monitor last saw it (role, position, lag, a dead or
  /// replaced mount): an atomic load.
  std::shared_ptr<const litefs::node_state> litefs_state() const noexcept { return monitor_->state(); }
  litefs::monitor& monitor() noexcept { return *monitor_; }

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
   * **Per-Operation Cancellation**: `terminal`, `partial` and `total`: the call completes
   * with `errc::cancelled` at once and makes no further attempt. An attempt already sent
   * (or a local write already queued) may still run on the primary, exactly once under
   * the call's request id, and its outcome is dropped: repeat the call with the same
   * forward_options::id to learn it. Nothing else is left behind.
   */
  template <class R, class... Params, class... ArgsAndToken>
  auto async_call(const procedure<R(Params...)>& proc, ArgsAndToken&&... args_and_token) {
    return forwarder_->async_call(proc, std::forward<ArgsAndToken>(args_and_token)...);
  }

  /// As above, with per-call options (deadline, request id, read-your-writes, detail).
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
  static litefs::role_kind role_from_text(std::string_view text) noexcept {
    if (text == "primary") return litefs::role_kind::primary;
    if (text == "replica") return litefs::role_kind::replica;
    if (text == "not_litefs") return litefs::role_kind::not_litefs;
    return litefs::role_kind::unknown;
  }

  executor_type executor_;
  node_options options_;
  rpc::registry registry_;
  std::shared_ptr<rpc::client> client_;
  std::unique_ptr<fwd::membership> membership_;
  std::shared_ptr<litefs::monitor> monitor_;
  std::function<litefs::role()> role_;
  std::shared_ptr<primary_finder> finder_;
  std::unique_ptr<fwd::forwarder> forwarder_;
  std::shared_ptr<sqlite::write_executor> writer_;
  std::unique_ptr<rpc::server> server_;
  std::mutex stop_mutex_;
  bool stopped_ = false;
  bool started_ = false;
};

}  // namespace fwd
