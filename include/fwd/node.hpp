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

#include <fwd/cluster/discovery.hpp>
#include <fwd/detail/completion.hpp>
#include <fwd/cluster/membership.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs/detail/position_reader.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/path_check.hpp>
#include <fwd/node_options.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/hello.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/server.hpp>
#include <fwd/sqlite/memory_guard.hpp>
#include <fwd/status.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/version.hpp>
#include <fwd/write/builtins.hpp>
#include <fwd/write/detail/position_reporter.hpp>
#include <fwd/write/executor.hpp>
#include <fwd/write/forwarder.hpp>

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

#include <fwd/impl/node.hpp>
