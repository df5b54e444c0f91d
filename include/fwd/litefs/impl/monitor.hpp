#pragma once

// litefs::monitor's bodies: the polling thread (the only place the mount is read after
// start()) and the position waiters (on the monitor's strand).

#include <sys/stat.h>

#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <fmt/format.h>
#include <fwd/error.hpp>
#include <fwd/litefs/detail/io.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/telemetry.hpp>
#include <system_error>

#if defined(__linux__)
#include <pthread.h>
#endif

namespace fwd::litefs {

namespace detail {

inline bool is_dead_mount_errno(int err) noexcept { return err == ENOTCONN || err == ECONNABORTED; }

}  // namespace detail

inline monitor::monitor(boost::asio::any_io_executor ex, monitor_options options)
    : executor_(std::move(ex)),
      strand_(boost::asio::make_strand(executor_)),
      options_(std::move(options)),
      state_(std::make_shared<const node_state>()),
      deadline_timer_(strand_),
      events_timer_(strand_),
      events_socket_(strand_) {
  if (!options_.read_role) {
    options_.read_role = [mount = options_.mount] { return litefs::current_role(mount); };
  }
}

inline monitor::~monitor() {
  {
    std::lock_guard lock(poll_mutex_);
    poll_stopping_ = true;
  }
  poll_wake_.notify_all();
  // The polling thread holds a reference while it works: when the last one goes there,
  // this destructor runs on that thread, which then returns by itself.
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
  if (auto first = poll_once()) publish_on_strand(std::move(first));
  thread_ = std::thread([weak = weak_from_this(), exit = thread_exit_] {
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "fwd-monitor");
#endif
    run_polling_thread(weak);
    std::lock_guard lock(exit->mutex);
    exit->done = true;
    exit->done_cv.notify_all();
  });
  boost::asio::dispatch(strand_, [self = shared_from_this()] {
    self->stopped_ = false;
    if (self->options_.http) self->connect_events();
  });
}

inline void monitor::stop() {
  {
    std::lock_guard lock(poll_mutex_);
    poll_stopping_ = true;
  }
  poll_wake_.notify_all();
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

// Joins at once when the thread is between polls (it waits on a condition variable);
// a thread stuck in a FUSE call LiteFS never answers is left to finish it.
inline void monitor::join_polling_thread() {
  std::unique_lock lock(thread_exit_->mutex);
  if (thread_exit_->done_cv.wait_for(lock, options_.stop_timeout, [&] { return thread_exit_->done; })) {
    lock.unlock();
    thread_.join();
  } else {
    lock.unlock();
    thread_.detach();
  }
}

inline void monitor::poll_now() { request_poll(); }

inline void monitor::request_poll() {
  {
    std::lock_guard lock(poll_mutex_);
    poll_requested_ = true;
  }
  poll_wake_.notify_one();
}

inline void monitor::run_polling_thread(const std::weak_ptr<monitor>& weak) {
  for (;;) {
    const std::shared_ptr<monitor> self = weak.lock();
    if (!self || !self->wait_until_poll_due()) return;
    self->poll_and_publish();
  }
}

// Waits for the next poll: the interval, a request, or stop. False when stopping.
inline bool monitor::wait_until_poll_due() {
  const auto interval = waiter_count_.load() == 0 ? options_.poll_interval
                        : events_connected_.load() ? options_.wait_poll_interval_with_events
                                                   : options_.wait_poll_interval;
  std::unique_lock lock(poll_mutex_);
  poll_wake_.wait_for(lock, interval, [&] { return poll_stopping_ || poll_requested_; });
  if (poll_stopping_) return false;
  poll_requested_ = false;
  return true;
}

inline void monitor::poll_and_publish() {
  if (auto published = poll_once()) publish_on_strand(std::move(published));
}

// Reads the mount (a handful of FUSE syscalls) and stores a new state if anything
// changed; returns it then (null otherwise).
inline std::shared_ptr<const node_state> monitor::poll_once() noexcept {
  try {
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
      if (detail::is_dead_mount_errno(err)) {
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
      if (ec && detail::is_dead_mount_errno(ec.value())) {
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
          if (pos_ec && detail::is_dead_mount_errno(pos_ec.value())) dead(pos_ec.message());
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

inline std::optional<std::uint64_t> monitor::writable_generation(const std::string& db) {
  const auto s = state();
  if (s->mount_dead) return std::nullopt;
  struct stat now {};
  if (detail::stat_uncached(db, now) != 0) {
    if (errno != ENOENT) {
      request_poll();
      return std::nullopt;
    }
    // No database yet: the mount itself must still be the one the state describes.
    if (detail::stat_uncached(options_.mount.string(), now) != 0) {
      request_poll();
      return std::nullopt;
    }
  }
  if (s->mount_device != 0 && static_cast<std::uint64_t>(now.st_dev) != s->mount_device) {
    request_poll();
    return std::nullopt;
  }
  return s->mount_generation;
}

// From the polling thread (or start()): hooks and waiters see the change on the strand.
inline void monitor::publish_on_strand(std::shared_ptr<const node_state> published) {
  try {
    boost::asio::post(strand_, [self = shared_from_this(), published = std::move(published)] {
      fwd::detail::invoke_hook(self->options_.on_change, *published);
      self->wake_waiters();
    });
  } catch (...) {
    // Allocation failure: the state is stored; waiters see it at the next change.
  }
}

inline void monitor::add_waiter(std::uint64_t txid, clock::time_point deadline, wait_handler handler) {
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
  boost::asio::dispatch(strand_, [self = shared_from_this(), id, txid, deadline,
                                  h = std::move(handler)]() mutable {
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
    self->count_waiters();
    self->arm_deadline();
    if (was_idle) self->request_poll();  // from the slow poll to the fast one at once
  });
}

inline void monitor::count_waiters() { waiter_count_.store(waiters_.size(), std::memory_order_release); }

inline void monitor::wake_waiters() {
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
      complete(std::move(it->handler), make_error_code(errc::cancelled), state()->pos);
      waiters_.erase(it);
      count_waiters();
      arm_deadline();
      return;
    }
  }
}

inline void monitor::fail_waiters(boost::system::error_code ec) {
  const position now = state()->pos;
  for (auto& w : waiters_) complete(std::move(w.handler), ec, now);
  waiters_.clear();
  count_waiters();
  armed_for_.reset();
}

inline void monitor::complete(wait_handler handler, boost::system::error_code ec, position p) {
  boost::asio::post(executor_, boost::asio::append(std::move(handler), ec, p));
}

}  // namespace fwd::litefs
