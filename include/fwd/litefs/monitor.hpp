#pragma once

// litefs::monitor: the one place that knows this node's LiteFS state. One poll of the
// mount serves everybody: writes read the role, and read-your-writes waiters the
// position, from an immutable snapshot with an atomic load (no FUSE syscall per write or
// per waiter). The poll runs every `poll_interval`, and every `wait_poll_interval` while
// someone waits for a position; a waiter is woken when the position reaches its TXID.
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

#include <sys/stat.h>

#include <array>
#include <atomic>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <fwd/error.hpp>
#include <fwd/litefs/detail/io.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/types.hpp>
#include <fwd/telemetry.hpp>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

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
  /// Called (on the monitor's strand) with each new state; must be quick. A hook that
  /// throws is ignored.
  std::function<void(const node_state&)> on_change;
  /// Reads the role (default: litefs::current_role(mount)); a test may replace it.
  std::function<role()> read_role;
  /// LiteFS's HTTP address (its `http.addr`, 127.0.0.1:20202 by default). When set, the
  /// monitor follows `GET /events`: every event (init, primaryChange, tx) re-reads the
  /// mount at once, so role changes and new transactions are seen within the event's
  /// delivery instead of the next poll. The stream is reconnected after
  /// `events_reconnect`; while it is down the poll alone serves.
  std::optional<boost::asio::ip::tcp::endpoint> http;
  std::chrono::milliseconds events_reconnect{500};
  /// While the event stream is up, a waiter's safety-net poll (tx events wake waiters).
  std::chrono::milliseconds wait_poll_interval_with_events{20};
};

/// How many events the monitor has received from LiteFS's `/events` stream, and whether
/// the stream is up.
struct event_stream_status {
  bool connected = false;
  std::uint64_t events = 0;
  std::uint64_t connects = 0;
};

class monitor : public std::enable_shared_from_this<monitor> {
 public:
  using clock = std::chrono::steady_clock;

  static std::shared_ptr<monitor> create(boost::asio::any_io_executor ex, monitor_options options) {
    return std::shared_ptr<monitor>(new monitor(std::move(ex), std::move(options)));
  }

  monitor(const monitor&) = delete;
  monitor& operator=(const monitor&) = delete;

  /// Reads the mount once at once (so that state() is meaningful when this returns), then
  /// polls until stop().
  void start() {
    if (started_.exchange(true)) return;  // once: a second start() would poll off the strand
    poll_once();
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->stopped_ = false;
      self->schedule();
      if (self->options_.http) self->connect_events();
    });
  }

  /// Stops polling; waiters complete with errc::cancelled.
  void stop() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] {
      self->stopped_ = true;
      self->timer_.cancel();
      self->events_timer_.cancel();
      boost::system::error_code ignored;
      self->events_socket_.close(ignored);
      self->fail_waiters(make_error_code(errc::cancelled));
    });
  }

  /// The current state: an atomic load, no syscall. Never null.
  std::shared_ptr<const node_state> state() const noexcept {
    return state_.load(std::memory_order_acquire);
  }

  /// The current role: an atomic load, no syscall.
  role_kind current_role_kind() const noexcept {
    return role_kind_.load(std::memory_order_acquire);
  }

  /**
   * Waits until the monitored database's position reaches `txid` (or the deadline).
   *
   * Completion signature: `void(boost::system::error_code, position)`: empty on success
   * with the position reached; `errc::timeout` when the deadline passed first (with the
   * last position seen); `errc::cancelled` on stop() or per-operation cancellation.
   * Completes through the handler's associated executor, never inside this call.
   *
   * **Per-Operation Cancellation**: terminal, partial and total; the waiter is removed and
   * nothing else changes.
   */
  template <class Token>
  auto async_wait_position(std::uint64_t txid, clock::time_point deadline, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, position)>(
        [self = shared_from_this(), txid, deadline](auto handler) {
          self->add_waiter(txid, deadline, std::move(handler));
        },
        token);
  }

  /// Re-reads the mount now (from any thread); useful right after a local commit.
  void poll_now() {
    boost::asio::dispatch(strand_, [self = shared_from_this()] { self->poll_once(); });
  }

  const monitor_options& options() const noexcept { return options_; }

  /**
   * For a writer, right before it touches the database `db` (a path in the mount): the
   * mount generation to use, or nullopt when the mount cannot be used now (dead, or
   * replaced since the last poll: a new poll is started). One forced getattr of `db`
   * (a FUSE round trip), so that a mount that died or was replaced since the last poll is
   * caught before SQLite maps its `-shm`. A missing `db` (not created yet) is fine.
   */
  std::optional<std::uint64_t> writable_generation(const std::string& db) {
    const auto s = state();
    if (s->mount_dead) return std::nullopt;
    struct stat now {};
    if (detail::stat_uncached(db, now) != 0) {
      if (errno != ENOENT) {
        poll_now();
        return std::nullopt;
      }
      // No database yet: the mount itself must still be the one the state describes.
      if (detail::stat_uncached(options_.mount.string(), now) != 0) {
        poll_now();
        return std::nullopt;
      }
    }
    if (s->mount_device != 0 && static_cast<std::uint64_t>(now.st_dev) != s->mount_device) {
      poll_now();
      return std::nullopt;
    }
    return s->mount_generation;
  }

  /// The `/events` stream's status (for telemetry and tests).
  event_stream_status events() const noexcept {
    return {events_connected_.load(), events_seen_.load(), events_connects_.load()};
  }

 private:
  using wait_handler =
      boost::asio::any_completion_handler<void(boost::system::error_code, position)>;
  struct waiter {
    std::uint64_t id;
    std::uint64_t txid;
    clock::time_point deadline;
    wait_handler handler;
  };

  monitor(boost::asio::any_io_executor ex, monitor_options options)
      : executor_(std::move(ex)),
        strand_(boost::asio::make_strand(executor_)),
        options_(std::move(options)),
        timer_(strand_),
        events_timer_(strand_),
        events_socket_(strand_),
        state_(std::make_shared<const node_state>()) {
    if (!options_.read_role) {
      options_.read_role = [mount = options_.mount] { return litefs::current_role(mount); };
    }
  }

  static bool is_dead_mount_errno(int err) noexcept {
    return err == ENOTCONN || err == ECONNABORTED;
  }

  // Reads the mount (a handful of syscalls) and publishes a new state if anything changed.
  void poll_once() noexcept {
    try {
      auto before = state();
      auto next = std::make_shared<node_state>();
      next->mount_generation = before->mount_generation;

      struct stat root {};
      if (::stat(options_.mount.c_str(), &root) != 0) {
        const int err = errno;
        next->mount_dead = is_dead_mount_errno(err);
        next->role = role_kind::unknown;
        next->reason = "cannot stat the LiteFS mount " + options_.mount.string() + ": " +
                       std::generic_category().message(err) +
                       (next->mount_dead ? " (LiteFS stopped under the service)" : "");
      } else {
        next->mount_device = static_cast<std::uint64_t>(root.st_dev);
        // `.lag` always exists on a live mount; reading it tells a dead mount at once.
        boost::system::error_code ec;
        next->lag = read_lag(options_.mount, ec);
        if (ec && is_dead_mount_errno(ec.value())) {
          next->mount_dead = true;
          next->role = role_kind::unknown;
          next->reason = "the LiteFS mount " + options_.mount.string() + " is dead (" +
                         ec.message() + "): LiteFS stopped under the service";
        } else {
          role r;
          try {
            r = options_.read_role();
          } catch (const std::exception& e) {
            r.reason = std::string("reading the role failed: ") + e.what();
          }
          next->role = r.kind;
          next->primary_hostname = std::move(r.primary_hostname);
          next->reason = std::move(r.reason);
          if (!options_.database.empty()) {
            boost::system::error_code pos_ec;
            next->pos = read_position(options_.mount, options_.database, pos_ec);
            if (pos_ec && is_dead_mount_errno(pos_ec.value())) {
              next->mount_dead = true;
              next->role = role_kind::unknown;  // never "primary" on a dead mount
              next->reason = "the LiteFS mount " + options_.mount.string() + " is dead (" + pos_ec.message() +
                             "): LiteFS stopped under the service";
            }
          }
        }
      }
      // A mount that died, or came back as another filesystem, is a new generation.
      if (next->mount_dead != before->mount_dead ||
          (next->mount_device != 0 && before->mount_device != 0 &&
           next->mount_device != before->mount_device)) {
        ++next->mount_generation;
      }
      if (next->mount_dead) next->mount_device = 0;
      const bool changed = next->role != before->role ||
                           next->primary_hostname != before->primary_hostname ||
                           next->mount_dead != before->mount_dead ||
                           next->mount_generation != before->mount_generation ||
                           next->pos != before->pos || before->version == 0;
      if (changed) {
        next->version = before->version + 1;
        std::shared_ptr<const node_state> published = std::move(next);
        state_.store(published, std::memory_order_release);
        role_kind_.store(published->role, std::memory_order_release);
        fwd::detail::invoke_hook(options_.on_change, *published);
      } else if (next->lag != before->lag) {
        // The lag moves all the time (a 0-1000 ms sawtooth on a caught-up replica): kept
        // fresh without a change event.
        next->version = before->version;
        state_.store(std::shared_ptr<const node_state>(std::move(next)), std::memory_order_release);
      }
    } catch (...) {
      // Allocation failure: keep the last state; the next poll tries again.
    }
  }

  // On the strand.
  void schedule() {
    if (stopped_) return;
    const auto interval = waiters_.empty()           ? options_.poll_interval
                          : events_connected_.load() ? options_.wait_poll_interval_with_events
                                                     : options_.wait_poll_interval;
    timer_.expires_after(interval);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->stopped_) return;
      self->poll_once();
      self->wake_waiters();
      self->schedule();
    });
  }

  template <class Handler>
  void add_waiter(std::uint64_t txid, clock::time_point deadline, Handler&& original) {
    wait_handler handler(std::forward<Handler>(original));
    auto slot = boost::asio::get_associated_cancellation_slot(handler);
    const std::uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
    if (slot.is_connected()) {
      slot.assign([weak = weak_from_this(), id](boost::asio::cancellation_type type) {
        if (type == boost::asio::cancellation_type::none) return;
        if (auto self = weak.lock()) {
          boost::asio::dispatch(self->strand_, [self, id] { self->cancel_waiter(id); });
        }
      });
    }
    boost::asio::dispatch(
        strand_, [self = shared_from_this(), id, txid, deadline, h = std::move(handler)]() mutable {
          if (self->stopped_) {
            self->complete(std::move(h), make_error_code(errc::cancelled), self->state()->pos);
            return;
          }
          const position now = self->state()->pos;
          if (now.txid >= txid) {
            self->complete(std::move(h), {}, now);
            return;
          }
          const bool was_idle = self->waiters_.empty();
          self->waiters_.push_back(waiter{id, txid, deadline, std::move(h)});
          // From the slow poll to the fast one at once.
          if (was_idle) {
            self->timer_.cancel();
            self->poll_once();
            self->wake_waiters();
            self->schedule();
          }
        });
  }

  void wake_waiters() {
    if (waiters_.empty()) return;
    const position now = state()->pos;
    const auto t = clock::now();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (now.txid >= it->txid) {
        complete(std::move(it->handler), {}, now);
        it = waiters_.erase(it);
      } else if (t >= it->deadline) {
        complete(std::move(it->handler), make_error_code(errc::timeout), now);
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void cancel_waiter(std::uint64_t id) {
    for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
      if (it->id == id) {
        complete(std::move(it->handler), make_error_code(errc::cancelled), state()->pos);
        waiters_.erase(it);
        return;
      }
    }
  }

  void fail_waiters(boost::system::error_code ec) {
    const position now = state()->pos;
    for (auto& w : waiters_) complete(std::move(w.handler), ec, now);
    waiters_.clear();
  }

  void complete(wait_handler handler, boost::system::error_code ec, position p) {
    boost::asio::post(executor_, boost::asio::append(std::move(handler), ec, p));
  }

  // --- LiteFS's /events stream ------------------------------------------------------
  // Newline-delimited JSON objects in an HTTP response that never ends. Each complete
  // line is an event; its content is not trusted for anything but "something changed":
  // the mount is re-read at once (its files are the truth), and waiters are woken.

  void connect_events() {
    if (stopped_) return;
    boost::system::error_code ignored;
    events_socket_.close(ignored);
    events_socket_ = boost::asio::ip::tcp::socket(strand_);
    events_socket_.async_connect(
        *options_.http, [self = shared_from_this()](boost::system::error_code ec) {
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

  void read_events_header() {
    boost::beast::http::async_read_header(
        events_socket_, events_buffer_, *events_parser_,
        [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
          if (ec || self->events_parser_->get().result() != boost::beast::http::status::ok) {
            return self->events_broke();
          }
          self->events_connected_.store(true);
          self->events_connects_.fetch_add(1);
          // A (re)connected stream may have missed changes: read the mount now.
          self->poll_once();
          self->wake_waiters();
          self->read_events_body();
        });
  }

  void read_events_body() {
    auto& body = events_parser_->get().body();
    body.data = events_chunk_.data();
    body.size = events_chunk_.size();
    boost::beast::http::async_read_some(
        events_socket_, events_buffer_, *events_parser_,
        [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
          if (ec == boost::beast::http::error::need_buffer) ec = {};
          const std::size_t got =
              self->events_chunk_.size() - self->events_parser_->get().body().size;
          self->on_event_bytes(std::string_view(self->events_chunk_.data(), got));
          if (ec || self->events_parser_->is_done()) return self->events_broke();
          self->read_events_body();
        });
  }

  void on_event_bytes(std::string_view bytes) {
    bool any = false;
    for (char c : bytes) {
      if (c == '\n') {
        if (!events_line_.empty()) any = true;
        events_line_.clear();
      } else if (events_line_.size() < max_event_line) {
        events_line_ += c;
      }
    }
    if (!any) return;
    events_seen_.fetch_add(1);
    poll_once();
    wake_waiters();
  }

  void events_broke() {
    events_connected_.store(false);
    boost::system::error_code ignored;
    events_socket_.close(ignored);
    if (stopped_) return;
    events_timer_.expires_after(options_.events_reconnect);
    events_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->connect_events();
    });
  }

  static constexpr std::size_t max_event_line = 64 * 1024;

  boost::asio::any_io_executor executor_;
  boost::asio::strand<boost::asio::any_io_executor> strand_;
  monitor_options options_;
  boost::asio::steady_timer timer_;
  boost::asio::steady_timer events_timer_;
  boost::asio::ip::tcp::socket events_socket_;
  boost::beast::http::request<boost::beast::http::empty_body> events_request_;
  std::optional<boost::beast::http::response_parser<boost::beast::http::buffer_body>>
      events_parser_;
  boost::beast::flat_buffer events_buffer_;
  std::array<char, 4096> events_chunk_{};
  std::string events_line_;
  std::atomic<bool> events_connected_{false};
  std::atomic<std::uint64_t> events_seen_{0};
  std::atomic<std::uint64_t> events_connects_{0};
  std::atomic<std::shared_ptr<const node_state>> state_;
  std::atomic<role_kind> role_kind_{role_kind::unknown};
  std::list<waiter> waiters_;
  std::atomic<std::uint64_t> next_id_{1};
  bool stopped_ = true;
  std::atomic<bool> started_{false};
};

}  // namespace fwd::litefs
