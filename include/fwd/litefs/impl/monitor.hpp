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
#include <fwd/litefs/detail/monitor_poller.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/telemetry.hpp>
#include <system_error>

#if defined(__linux__)
#include <pthread.h>
#endif

namespace fwd::litefs {

inline monitor::monitor(boost::asio::any_io_executor ex, monitor_options options)
    : executor_(std::move(ex)),
      strand_(boost::asio::make_strand(executor_)),
      poller_(std::make_shared<detail::monitor_poller>(std::move(options))),
      deadline_timer_(strand_),
      events_timer_(strand_),
      events_socket_(strand_) {}

inline monitor::~monitor() {
  poller_->stop();
  // The polling thread holds a reference to the monitor only while it posts a change:
  // when the last one goes there, this destructor runs on that thread, which then returns.
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
  if (auto first = poller_->poll_once()) publish_on_strand(std::move(first));
  thread_ = std::thread([poller = poller_, weak = weak_from_this()] {
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "fwd-monitor");
#endif
    run_polling_thread(poller, weak);
    poller->thread_done();
  });
  boost::asio::dispatch(strand_, [self = shared_from_this()] {
    self->stopped_ = false;
    if (self->poller_->options().http) self->connect_events();
  });
}

inline void monitor::stop() {
  poller_->stop();
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

// Joins at once when the thread is between polls (it waits on a condition variable). A
// thread stuck in a FUSE call that LiteFS never answers is left to finish it: it holds
// only the poller, and posts nothing once stopped.
inline void monitor::join_polling_thread() {
  if (poller_->wait_thread_done()) {
    thread_.join();
  } else {
    thread_.detach();
  }
}

inline void monitor::poll_now() { poller_->request(); }

inline bool monitor::polls_requested_done() const { return poller_->requests_served(); }

inline void monitor::run_polling_thread(const std::shared_ptr<detail::monitor_poller>& poller,
                                        const std::weak_ptr<monitor>& weak) {
  while (poller->wait_until_due()) {
    auto published = poller->poll_once();
    if (published && !poller->stopping()) {
      if (auto self = weak.lock()) self->publish_on_strand(std::move(published));
    }
    poller->poll_done();
  }
}

inline std::optional<std::uint64_t> monitor::writable_generation(const std::string& db) {
  const auto s = state();
  if (s->mount_dead) return std::nullopt;
  const auto& mount = poller_->options().mount;
  struct stat now {};
  if (detail::stat_uncached(db, now) != 0) {
    if (errno != ENOENT) {
      poller_->request();
      return std::nullopt;
    }
    // No database yet: the mount itself must still be the one the state describes.
    if (detail::stat_uncached(mount.string(), now) != 0) {
      poller_->request();
      return std::nullopt;
    }
  }
  if (s->mount_device != 0 && static_cast<std::uint64_t>(now.st_dev) != s->mount_device) {
    poller_->request();
    return std::nullopt;
  }
  return s->mount_generation;
}

// From the polling thread (or start()): hooks and waiters see the change on the strand.
inline void monitor::publish_on_strand(std::shared_ptr<const node_state> published) {
  try {
    boost::asio::post(strand_, [self = shared_from_this(), published = std::move(published)] {
      fwd::detail::invoke_hook(self->poller_->options().on_change, *published);
      self->wake_waiters();
    });
  } catch (...) {
    // Allocation failure: the state is stored; waiters see it at the next change.
  }
}

inline void monitor::add_waiter(waiter w) {
  auto slot = w.target ? boost::asio::get_associated_cancellation_slot(w.history_handler)
                       : boost::asio::get_associated_cancellation_slot(w.handler);
  w.id = next_id_.fetch_add(1, std::memory_order_relaxed);
  const std::uint64_t id = w.id;
  if (slot.is_connected()) {
    slot.assign([weak = weak_from_this(), id](boost::asio::cancellation_type type) {
      if (type == boost::asio::cancellation_type::none) return;
      if (auto self = weak.lock()) {
        boost::asio::dispatch(self->strand_, [self, id] { self->cancel_waiter(id); });
      }
    });
  }
  boost::asio::dispatch(strand_, [self = shared_from_this(), w = std::move(w)]() mutable {
    if (self->stopped_) {
      self->complete(w, make_error_code(errc::cancelled), self->state()->pos);
      return;
    }
    self->observe_state();
    const position now = self->state()->pos;
    if (now.txid >= w.txid) {
      self->complete(w, {}, now);
      return;
    }
    const bool was_idle = self->waiters_.empty();
    self->waiters_.push_back(std::move(w));
    self->count_waiters();
    self->arm_deadline();
    // From the slow poll to the fast one at once; with the event stream up, the tx event
    // brings the position without a read of the mount.
    if (was_idle && !self->poller_->events_connected.load()) self->poller_->request();
  });
}

// On the strand: the current state's position joins the history, which is forgotten when
// the primary, the role or the mount changed (LiteFS may then hold another history).
inline void monitor::observe_state() {
  const auto s = state();
  if (s->version == observed_version_ && observed_version_ != 0) return;
  observed_version_ = s->version;
  if (s->mount_dead || s->role != observed_role_ || s->primary_hostname != observed_primary_ ||
      s->mount_generation != observed_generation_) {
    history_.forget(s->pos);
    observed_role_ = s->role;
    observed_primary_ = s->primary_hostname;
    observed_generation_ = s->mount_generation;
  }
  if (s->mount_dead || s->pos.txid == 0) return;  // 0: `<db>-pos` unreadable, nothing held
  if (s->pos.txid < history_.last_txid()) {
    history_.rewind_to(s->pos);
  } else {
    history_.record(s->pos);
  }
}

inline void monitor::count_waiters() { poller_->waiters.store(waiters_.size(), std::memory_order_release); }

inline void monitor::wake_waiters() {
  observe_state();
  if (waiters_.empty()) return;
  const position now = state()->pos;
  const auto t = clock::now();
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (now.txid >= it->txid) {
      complete(*it, {}, now);
      it = waiters_.erase(it);
    } else if (t >= it->deadline) {
      complete(*it, make_error_code(errc::timeout), now);
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
      complete(*it, make_error_code(errc::cancelled), state()->pos);
      waiters_.erase(it);
      count_waiters();
      arm_deadline();
      return;
    }
  }
}

inline void monitor::fail_waiters(boost::system::error_code ec) {
  const position now = state()->pos;
  for (auto& w : waiters_) complete(w, ec, now);
  waiters_.clear();
  count_waiters();
  armed_for_.reset();
}

inline void monitor::complete(waiter& w, boost::system::error_code ec, position p) {
  if (w.target) {
    const history_match match = ec ? history_match::unobserved : history_.compare(*w.target);
    boost::asio::post(executor_, boost::asio::append(std::move(w.history_handler), ec, match, p));
    return;
  }
  boost::asio::post(executor_, boost::asio::append(std::move(w.handler), ec, p));
}

}  // namespace fwd::litefs
