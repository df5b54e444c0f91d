#pragma once

// The state a write_executor shares with its writer and its pending writes: the queue and
// the dedup of concurrent repeats (here), and the batches the writer runs
// (write_batch.hpp: group commit, the dedup table, the connection's lifetime).

#include <sqlite3.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <fmt/format.h>
#include <iterator>
#include <functional>
#include <fwd/error.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/write/detail/transaction_guard.hpp>
#include <fwd/write/detail/write_failure.hpp>
#include <fwd/write/detail/write_job.hpp>
#include <fwd/write/write_options.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fwd::sqlite {

/// What write_executor::drop_queued found.
enum class write_drop {
  dropped,  ///< the write had not started: it never runs, its callers completed
  running,  ///< the write is running: it finishes (and may commit)
  unknown,  ///< no write waits or runs under that id (completed, or never submitted)
};

namespace detail {

/// Why a write was refused: its request id is bound to another procedure.
inline std::string request_id_reused(const request_id& id, std::string_view bound, std::string_view given) {
  std::string hex;
  for (const std::uint8_t b : id) fmt::format_to(std::back_inserter(hex), "{:02x}", b);
  auto name = [](std::string_view p) { return p.empty() ? std::string("(no procedure)") : fmt::format("'{}'", p); };
  return fmt::format(
      "the request id {} is already bound to the procedure {}, not {}: a request id names one "
      "call; give each call a fresh id (fwd::make_request_id()) and repeat an id only to retry "
      "that same call; nothing ran",
      hex, name(bound), name(given));
}

/// The state shared by a write_executor, its writer and its pending operations.
class write_executor_state : public std::enable_shared_from_this<write_executor_state> {
 public:
  write_executor_state(const std::string& path, write_options options)
      : options_(std::move(options)),
        path_(path),
        generation_(initial_generation(options_)),
        connection_(path, options_.open_flags, options_.busy_timeout) {
    if (options_.max_batch == 0) options_.max_batch = 1;
    if (options_.on_open) options_.on_open(connection_);
    guard_.install(connection_.native_handle());
    note_journal_mode();
    last_prune_ = std::chrono::steady_clock::now();
  }

  const write_options& options() const noexcept { return options_; }

  /// Queues `work` for `id` (or joins the write already waiting with that id).
  void submit(const request_id& id, std::string procedure, std::function<std::string(sqlite3*)> work,
              std::unique_ptr<write_waiter> waiter) {
    if (!work) {
      waiter->complete(make_error_code(errc::bad_argument),
                       "async_write needs a work function; it was empty", {});
      return;
    }
    std::unique_lock lock(mutex_);
    if (stopping_) {
      lock.unlock();
      waiter->complete(make_error_code(errc::cancelled),
                       "the write executor is stopped; nothing was applied", {});
      return;
    }
    if (const auto it = pending_.find(id); it != pending_.end()) {
      if (it->second->procedure != procedure) {
        std::string why = request_id_reused(id, it->second->procedure, procedure);
        lock.unlock();
        waiter->complete(make_error_code(errc::bad_argument), std::move(why), {});
        return;
      }
      // The same request is already waiting or running: it runs once, both get its outcome.
      it->second->waiters.push_back(std::move(waiter));
      return;
    }
    if (queue_.size() >= options_.max_queue) {
      lock.unlock();
      waiter->complete(make_error_code(errc::overloaded),
                       fmt::format("the write executor's queue is full (max_queue {}); nothing was "
                                   "applied: retry after a backoff",
                                   options_.max_queue),
                       {});
      return;
    }
    auto job = std::make_shared<write_job>();
    job->id = id;
    job->procedure = std::move(procedure);
    job->work = std::move(work);
    job->waiters.push_back(std::move(waiter));
    pending_.emplace(id, job);
    queue_.push_back(std::move(job));
    wake_.notify_one();  // the writer thread, or a batch gathering for max_batch_delay
    if (options_.work_executor && !drain_scheduled_) {
      drain_scheduled_ = true;
      boost::asio::post(*options_.work_executor, [self = shared_from_this()] { self->drain(); });
    }
  }

  /// The writer thread's loop (when the write executor owns a thread).
  void run_writer_thread() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (!stopping_) run_one_batch(lock);
      if (stopping_) {
        writer_exited_ = true;
        notify_stopped(lock);
        return;
      }
    }
  }

  /// Runs batches on the user's work executor until the queue is empty.
  void drain() {
    std::unique_lock lock(mutex_);
    while (!stopping_ && !queue_.empty()) run_one_batch(lock);
    drain_scheduled_ = false;
    idle_.notify_all();
    if (stopping_) notify_stopped(lock);
  }

  /// As stop(), without blocking: `done` runs once no batch runs any more (at once if none
  /// does; otherwise on the writer, when its running batch has finished).
  void async_stop(std::function<void()> done) {
    cancel_queued_for_stop();
    {
      std::lock_guard lock(mutex_);
      const bool writer_busy = running_batch_ || (!options_.work_executor && !writer_exited_);
      if (writer_busy) {
        on_stopped_.push_back(std::move(done));
        return;
      }
    }
    done();
  }

  /// Fails queued writes with cancelled, then waits for the running batch to finish
  /// (unless `wait` is false: called on the writer itself, from inside a write).
  void stop(bool wait = true) {
    cancel_queued_for_stop();
    if (!wait) return;
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return !running_batch_; });
  }

  // Marks the state stopping and fails the writes that have not started with cancelled.
  void cancel_queued_for_stop() {
    std::deque<std::shared_ptr<write_job>> cancelled;
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      cancelled.swap(queue_);
      for (const auto& job : cancelled) pending_.erase(job->id);
      wake_.notify_all();
    }
    for (const auto& job : cancelled) {
      for (auto& waiter : job->waiters) {
        waiter->complete(make_error_code(errc::cancelled),
                         "the write executor stopped before this write ran; nothing was applied",
                         {});
      }
    }
  }

  // With the lock held, once stopping and no batch runs: runs the async_stop callbacks.
  void notify_stopped(std::unique_lock<std::mutex>& lock) {
    auto hooks = std::move(on_stopped_);
    on_stopped_.clear();
    if (hooks.empty()) return;
    lock.unlock();
    for (auto& hook : hooks) {
      try {
        hook();
      } catch (...) {
      }
    }
    lock.lock();
  }

  /// Closes the connection; only once no batch can run any more (after stop and join).
  void close() noexcept {
    forget_statements();
    connection_.close();
  }

  /// Per-operation cancellation: a waiter whose write has not started leaves the queue
  /// and completes with cancelled; the write itself is dropped once nobody waits for it.
  void cancel_waiter(std::uint64_t serial) {
    std::unique_ptr<write_waiter> cancelled;
    {
      std::lock_guard lock(mutex_);
      cancelled = take_queued_waiter(serial);
    }
    if (cancelled) {
      cancelled->complete(make_error_code(errc::cancelled),
                          "the write was cancelled before it ran; nothing was applied", {});
    }
  }

  // With the lock held: removes the waiter from a write that has not started.
  std::unique_ptr<write_waiter> take_queued_waiter(std::uint64_t serial) {
    for (auto job_it = queue_.begin(); job_it != queue_.end(); ++job_it) {
      auto& waiters = (*job_it)->waiters;
      for (auto it = waiters.begin(); it != waiters.end(); ++it) {
        if ((*it)->serial() != serial) continue;
        std::unique_ptr<write_waiter> found = std::move(*it);
        waiters.erase(it);
        if (waiters.empty()) {
          pending_.erase((*job_it)->id);
          queue_.erase(job_it);
        }
        return found;
      }
    }
    return nullptr;
  }

  /// With the lock held, before a batch is taken: the callers whose deadline passed leave
  /// the queue and complete with timeout (nothing ran); a write nobody waits for any more
  /// is dropped before it runs.
  void drop_expired() {
    const auto now = std::chrono::steady_clock::now();
    for (auto job_it = queue_.begin(); job_it != queue_.end();) {
      auto& waiters = (*job_it)->waiters;
      for (auto it = waiters.begin(); it != waiters.end();) {
        if (!(*it)->expired(now)) {
          ++it;
          continue;
        }
        (*it)->complete(make_error_code(errc::timeout),
                        "the call's deadline passed while its write was queued on the primary: "
                        "it never ran, nothing was applied",
                        {});
        it = waiters.erase(it);
      }
      if (waiters.empty()) {
        pending_.erase((*job_it)->id);
        job_it = queue_.erase(job_it);
      } else {
        ++job_it;
      }
    }
  }

  /// Drops the write queued under `id` before it starts: every caller waiting for it
  /// completes with `ec` and `why`. Says whether it was dropped, is running already (it
  /// cannot be stopped), or is unknown here (not submitted, or completed).
  write_drop drop_queued(const request_id& id, const boost::system::error_code& ec, const std::string& why) {
    std::shared_ptr<write_job> dropped;
    {
      std::lock_guard lock(mutex_);
      const auto found = pending_.find(id);
      if (found == pending_.end()) return write_drop::unknown;
      for (auto it = queue_.begin(); it != queue_.end(); ++it) {
        if (*it != found->second) continue;
        dropped = std::move(*it);
        queue_.erase(it);
        break;
      }
      if (!dropped) return write_drop::running;
      pending_.erase(found);
    }
    for (auto& waiter : dropped->waiters) waiter->complete(ec, why, {});
    return write_drop::dropped;
  }

  std::uint64_t next_serial() noexcept { return next_serial_.fetch_add(1) + 1; }

  std::size_t queued() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }

 private:
  // The batches (write_batch.hpp). Only the batch that is running uses these.
  void run_one_batch(std::unique_lock<std::mutex>& lock);
  void abandon_batch(const std::vector<std::shared_ptr<write_job>>& batch, const char* what) noexcept;
  static std::uint64_t initial_generation(const write_options& options);
  void drop_connection() noexcept;
  std::optional<write_outcome> ensure_connection();
  void run_batch(const std::vector<std::shared_ptr<write_job>>& batch);
  void end_failed_batch() noexcept;
  bool mount_changed() noexcept;
  std::optional<litefs::position> position_before() noexcept;
  litefs::position position_after() noexcept;
  void note_journal_mode() noexcept;
  int system_errno() const noexcept;
  write_outcome statement_failure(const boost::system::error_code& ec, const std::string& message);
  std::optional<write_outcome> run_write(write_job& job, std::int64_t now_ms, write_outcome& outcome);
  void run_prepared(statement& stmt, boost::system::error_code& ec, std::string& message) noexcept;
  // Finalizes the statements prepared on the connection (before it is closed).
  void forget_statements() noexcept {
    work_statements_.clear();
    lookup_ = {};
    insert_ = {};
    prune_ = {};
    savepoint_ = {};
    release_ = {};
    rollback_to_ = {};
  }
  bool has_unresolved_deferred_foreign_keys() const noexcept;
  void prepare_schema(boost::system::error_code& ec, std::string& message);
  bool prune_due() const noexcept;
  std::optional<write_outcome> prune(std::int64_t now_ms);
  void finish(const std::vector<std::shared_ptr<write_job>>& batch, std::vector<write_outcome>& outcomes,
              litefs::position pos);

  write_options options_;
  std::string path_;
  std::uint64_t generation_ = 0;  // the mount generation connection_ was opened under
  connection connection_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;  // work queued, or stopping
  std::condition_variable idle_;  // a batch finished
  std::deque<std::shared_ptr<write_job>> queue_;
  std::map<request_id, std::shared_ptr<write_job>> pending_;  // queued or running, by id
  bool stopping_ = false;
  bool running_batch_ = false;
  bool drain_scheduled_ = false;
  bool writer_exited_ = false;                     // the writer thread has left its loop
  std::vector<std::function<void()>> on_stopped_;  // async_stop callbacks
  std::atomic<std::uint64_t> next_serial_{0};

  // Used only by the batch that is running.
  bool schema_ready_ = false;
  bool drop_pending_ = false;  // the mount went away: close without ROLLBACK, reopen
  bool wal_mode_ = false;      // the connection's journal mode is WAL
  transaction_control_guard guard_;  // the connection's authorizer (its address is held by SQLite)
  statement lookup_;
  statement insert_;
  statement prune_;
  statement savepoint_;    // SAVEPOINT fwd_write
  statement release_;      // RELEASE fwd_write
  statement rollback_to_;  // ROLLBACK TO fwd_write
  // Request ids whose commit SQLite made here but LiteFS was not seen to record (its
  // position unreadable or unmoved after the COMMIT). Their dedup rows may sit in this
  // file and in no history LiteFS ships: a repeat is answered "maybe executed", never
  // with a position that need not hold the write. Oldest first, at most
  // max_unrecorded_ids; an id leaves once a later run of it is recorded.
  void note_unrecorded(const request_id& id);
  static constexpr std::size_t max_unrecorded_ids = 4096;
  std::set<request_id> unrecorded_;
  std::deque<request_id> unrecorded_order_;
  statement_cache work_statements_;  // what the writes prepare, kept for the next ones
  std::uint64_t commits_since_prune_ = 0;
  std::chrono::steady_clock::time_point last_prune_;
};

}  // namespace detail

}  // namespace fwd::sqlite

#include <fwd/write/detail/write_batch.hpp>
