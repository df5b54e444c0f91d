#pragma once

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
#include <fwd/litefs/detail/monitor_poller.hpp>
#include <fwd/litefs/history.hpp>
#include <fwd/litefs/monitor_options.hpp>
#include <fwd/litefs/types.hpp>
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

#include <fwd/litefs/impl/monitor.hpp>
#include <fwd/litefs/impl/monitor_events.hpp>
