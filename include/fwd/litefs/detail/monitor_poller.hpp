#pragma once

// The part of litefs::monitor that its polling thread owns a share of: what to read, the
// published state, and what wakes the thread. It holds no I/O object of the user's
// io_context, so a polling thread stuck in a FUSE call that LiteFS never answers can
// outlive the monitor (and the io_context) safely. Internal.

#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <fmt/format.h>
#include <fwd/litefs/detail/io.hpp>
#include <fwd/litefs/monitor_options.hpp>
#include <fwd/litefs/mount.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>

namespace fwd::litefs::detail {

inline bool is_dead_mount_errno(int err) noexcept { return err == ENOTCONN || err == ECONNABORTED; }

class monitor_poller {
 public:
  explicit monitor_poller(monitor_options options) : options_(std::move(options)) {
    if (!options_.read_role) {
      options_.read_role = [mount = options_.mount] { return litefs::current_role(mount); };
    }
  }

  const monitor_options& options() const noexcept { return options_; }

  std::shared_ptr<const node_state> state() const noexcept { return state_.load(std::memory_order_acquire); }
  role_kind current_role_kind() const noexcept { return role_kind_.load(std::memory_order_acquire); }

  /// Wakes the thread for a poll now (any thread).
  void request() {
    {
      std::lock_guard lock(mutex_);
      requested_ = true;
      ++requests_;
    }
    wake_.notify_one();
  }

  /// Ends the thread's loop at once (it may still be inside a poll).
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
  }

  bool stopping() {
    std::lock_guard lock(mutex_);
    return stopping_;
  }

  /// Queues `job` for the thread, which runs it between polls (any thread). False when
  /// the thread is stopping or gone: the job is dropped.
  bool submit(std::function<void()> job) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_ || thread_done_) return false;
      jobs_.push_back(std::move(job));
    }
    wake_.notify_one();
    return true;
  }

  /// The thread: waits for the next poll (interval, request or stop), running the jobs
  /// submitted meanwhile. False when stopping.
  bool wait_until_due() {
    const auto interval = waiters.load() == 0    ? options_.poll_interval
                          : events_connected.load() ? options_.wait_poll_interval_with_events
                                                    : options_.wait_poll_interval;
    const auto due = std::chrono::steady_clock::now() + interval;
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait_until(lock, due, [&] { return stopping_ || requested_ || !jobs_.empty(); });
      if (stopping_) return false;
      if (jobs_.empty()) break;
      // Jobs run outside the lock, so that submit() never waits for one stuck in FUSE.
      std::deque<std::function<void()>> jobs;
      jobs.swap(jobs_);
      lock.unlock();
      for (auto& job : jobs) {
        try {
          job();
        } catch (...) {
          // A job reports its own failures; nothing escapes the thread.
        }
      }
      jobs.clear();
      lock.lock();
    }
    requested_ = false;
    serving_ = requests_;
    return true;
  }

  /// The thread has finished the poll that wait_until_due() let it start.
  void poll_done() {
    std::lock_guard lock(mutex_);
    served_ = serving_;
  }

  /// True when every poll requested so far has run to its end (any thread).
  bool requests_served() {
    std::lock_guard lock(mutex_);
    return served_ == requests_;
  }

  /// The thread says it has returned; stop_and_wait() may then join it.
  void thread_done() {
    {
      std::lock_guard lock(mutex_);
      thread_done_ = true;
    }
    wake_.notify_all();
  }

  /// Waits up to options().stop_timeout for thread_done(). False when the thread is stuck.
  bool wait_thread_done() {
    std::unique_lock lock(mutex_);
    return wake_.wait_for(lock, options_.stop_timeout, [&] { return thread_done_; });
  }

  /// Reads the mount (a handful of FUSE syscalls) and stores a new state if anything
  /// changed; returns it then (null otherwise).
  std::shared_ptr<const node_state> poll_once() noexcept;

  /// A position LiteFS announced (a tx event of the monitored database): stores a state
  /// with it, no FUSE syscall, when it is ahead of the state's; returns that state (null
  /// otherwise). A position that goes back (another history after a failover) is left
  /// to the next poll: an event never moves the position backwards.
  std::shared_ptr<const node_state> publish_position(position p) noexcept;

  std::atomic<std::size_t> waiters{0};      // position waiters registered (the fast poll)
  std::atomic<bool> events_connected{false};  // the /events stream is up

 private:
  monitor_options options_;
  std::atomic<std::shared_ptr<const node_state>> state_{std::make_shared<const node_state>()};
  std::atomic<role_kind> role_kind_{role_kind::unknown};
  std::mutex mutex_;
  std::condition_variable wake_;
  // Serialises the stores of a poll and of tx events; counts the positions events stored,
  // so that a poll that read `<db>-pos` before an event's store does not undo it.
  std::mutex publish_mutex_;
  std::uint64_t event_positions_ = 0;
  bool requested_ = false;
  std::uint64_t requests_ = 0;  // request() calls so far
  std::uint64_t serving_ = 0;   // requests_ when the running (or last) poll began
  std::uint64_t served_ = 0;    // requests_ when the last finished poll began
  bool stopping_ = false;
  bool thread_done_ = false;
  std::deque<std::function<void()>> jobs_;  // submit(): run by the thread between polls
};

inline std::shared_ptr<const node_state> monitor_poller::poll_once() noexcept {
  try {
    std::uint64_t events_before = 0;
    {
      std::lock_guard lock(publish_mutex_);
      events_before = event_positions_;
    }
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
      if (is_dead_mount_errno(err)) {
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
      if (ec && is_dead_mount_errno(ec.value())) {
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
          if (pos_ec && is_dead_mount_errno(pos_ec.value())) dead(pos_ec.message());
        }
      }
    }
    // A mount that died, or came back as another filesystem, is a new generation.
    if (next->mount_dead != before->mount_dead ||
        (next->mount_device != 0 && before->mount_device != 0 && next->mount_device != before->mount_device)) {
      ++next->mount_generation;
    }
    if (next->mount_dead) next->mount_device = 0;
    std::lock_guard lock(publish_mutex_);
    if (event_positions_ != events_before) {
      // A tx event stored a position while this poll ran: the file was read before it or
      // after it; keep the newer of the two (the next poll reads the file again).
      const auto latest = state();
      if (!next->mount_dead && next->mount_generation == latest->mount_generation &&
          latest->pos.txid > next->pos.txid) {
        next->pos = latest->pos;
      }
      before = latest;
    }
    const bool changed = next->role != before->role || next->primary_hostname != before->primary_hostname ||
                         next->mount_dead != before->mount_dead ||
                         next->mount_generation != before->mount_generation || next->pos != before->pos ||
                         before->version == 0;
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

inline std::shared_ptr<const node_state> monitor_poller::publish_position(position p) noexcept {
  try {
    std::lock_guard lock(publish_mutex_);
    const auto before = state();
    if (before->mount_dead || before->version == 0 || p.txid <= before->pos.txid) return nullptr;
    auto next = std::make_shared<node_state>(*before);
    next->pos = p;
    next->version = before->version + 1;
    std::shared_ptr<const node_state> published = std::move(next);
    state_.store(published, std::memory_order_release);
    ++event_positions_;
    return published;
  } catch (...) {
    return nullptr;  // allocation failure: the next poll reads the file
  }
}

}  // namespace fwd::litefs::detail
