#pragma once

// The state a write_executor shares with its writer and its pending writes: the queue,
// the dedup table, group commit and the writer loop.

#include <sqlite3.h>

#include <array>
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/write/write_options.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#endif

namespace fwd::sqlite {

namespace detail {

/// The signature every write completes with.
using write_signature = void(boost::system::error_code, std::string, std::uint64_t);

/// A waiting caller: its completion (work tracked on the handler's executor until done),
/// and the serial a cancellation finds it by (never reused within a process).
class write_waiter {
 public:
  template <class Handler>
  write_waiter(std::uint64_t serial, Handler&& handler, const boost::asio::any_io_executor& io_executor)
      : serial_(serial), completion_(std::forward<Handler>(handler), io_executor) {}

  std::uint64_t serial() const noexcept { return serial_; }

  /// The handler's cancellation slot (install the cancellation handler before submitting).
  boost::asio::cancellation_slot slot() const noexcept { return completion_.slot(); }

  /// Posts the handler with these arguments to its associated executor: a completion never
  /// runs inside async_write nor on the writer thread.
  void complete(const boost::system::error_code& ec, std::string result, std::uint64_t txid) {
    completion_.post(ec, std::move(result), txid);
  }

 private:
  std::uint64_t serial_;
  fwd::detail::pending_completion<write_signature> completion_;
};

/// One request id's write: the work, and everyone waiting for its outcome.
struct write_job {
  request_id id{};
  std::function<std::string(sqlite3*)> work;
  std::vector<std::unique_ptr<write_waiter>> waiters;  // guarded by the state's mutex
};

/// What one write ended with.
struct write_outcome {
  boost::system::error_code ec;
  std::string result;  // the result bytes, or on failure a description of the failure
};

/// SQLite's signs that LiteFS refused the write because this node is a replica.
inline bool is_replica_refusal(const boost::system::error_code& ec) noexcept {
  if (ec.category() != sqlite_category()) return false;
  return (ec.value() & 0xff) == SQLITE_READONLY || ec.value() == SQLITE_IOERR_WRITE;
}

/// Maps a refusal from LiteFS to not_primary, keeping SQLite's text in the message.
inline write_outcome write_failure(const boost::system::error_code& ec, std::string message) {
  if (is_replica_refusal(ec)) {
    return {make_error_code(errc::not_primary),
            message + " (SQLite extended code " + std::to_string(ec.value()) +
                "): this node is not the primary (a failover happened); nothing was applied: "
                "rediscover the primary and retry with the same request id"};
  }
  return {ec, std::move(message)};
}

inline std::int64_t unix_milliseconds() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
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
    last_prune_ = std::chrono::steady_clock::now();
  }

  const write_options& options() const noexcept { return options_; }

  /// Queues `work` for `id` (or joins the write already waiting with that id).
  void submit(const request_id& id, std::function<std::string(sqlite3*)> work,
              std::unique_ptr<write_waiter> waiter) {
    if (!work) {
      waiter->complete(make_error_code(errc::bad_argument),
                       "async_write needs a work function; it was empty", 0);
      return;
    }
    std::unique_lock lock(mutex_);
    if (stopping_) {
      lock.unlock();
      waiter->complete(make_error_code(errc::cancelled),
                       "the write executor is stopped; nothing was applied", 0);
      return;
    }
    if (const auto it = pending_.find(id); it != pending_.end()) {
      // The same request is already waiting or running: it runs once, both get its outcome.
      it->second->waiters.push_back(std::move(waiter));
      return;
    }
    if (queue_.size() >= options_.max_queue) {
      lock.unlock();
      waiter->complete(make_error_code(errc::overloaded),
                       "the write executor's queue is full (max_queue " +
                           std::to_string(options_.max_queue) +
                           "); nothing was applied: retry after a backoff",
                       0);
      return;
    }
    auto job = std::make_shared<write_job>();
    job->id = id;
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
      if (stopping_) return;
      run_one_batch(lock);
    }
  }

  /// Runs batches on the user's work executor until the queue is empty.
  void drain() {
    std::unique_lock lock(mutex_);
    while (!stopping_ && !queue_.empty()) run_one_batch(lock);
    drain_scheduled_ = false;
    idle_.notify_all();
  }

  /// Fails queued writes with cancelled, then waits for the running batch to finish.
  void stop() {
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
                         0);
      }
    }
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return !running_batch_; });
  }

  /// Closes the connection; only once no batch can run any more (after stop and join).
  void close() noexcept {
    lookup_ = {};
    insert_ = {};
    prune_ = {};
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
                          "the write was cancelled before it ran; nothing was applied", 0);
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

  std::uint64_t next_serial() noexcept { return next_serial_.fetch_add(1) + 1; }

  std::size_t queued() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }

 private:
  // Called with the lock held and work queued; returns with the lock held.
  void run_one_batch(std::unique_lock<std::mutex>& lock) {
    if (options_.max_batch_delay.count() > 0 && queue_.size() < options_.max_batch) {
      const auto deadline = std::chrono::steady_clock::now() + options_.max_batch_delay;
      wake_.wait_until(lock, deadline,
                       [&] { return stopping_ || queue_.size() >= options_.max_batch; });
      if (stopping_) return;  // not yet started: stop() cancels it
    }
    std::vector<std::shared_ptr<write_job>> batch;
    while (!queue_.empty() && batch.size() < options_.max_batch) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    if (batch.empty()) return;
    running_batch_ = true;
    lock.unlock();
    try {
      run_batch(batch);
    } catch (const std::exception& e) {
      // Only resource exhaustion gets here (e.g. std::bad_alloc): fail the batch, keep going.
      abandon_batch(batch, e.what());
    }
    lock.lock();
    running_batch_ = false;
    idle_.notify_all();
  }

  void abandon_batch(const std::vector<std::shared_ptr<write_job>>& batch,
                     const char* what) noexcept {
    try {
      if (connection_.native_handle() != nullptr && !connection_.autocommit()) {
        boost::system::error_code ignored;
        connection_.exec("ROLLBACK", ignored);
      }
      std::vector<write_outcome> outcomes(
          batch.size(), write_outcome{make_sqlite_error(SQLITE_NOMEM),
                                      std::string("the write batch failed: ") + what});
      finish(batch, outcomes, 0);
    } catch (...) {
    }
  }

  // The mount generation before the connection is opened (a mount replaced in between
  // then shows as a new generation at the first batch, not the other way round).
  static std::uint64_t initial_generation(const write_options& options) {
    if (!options.mount_generation) return 0;
    const auto g = options.mount_generation();
    return g ? *g : 0;
  }

  // Drops the connection without touching the database: no checkpoint on close (a dead
  // mount's `-shm` must not be read). Statements go first.
  void drop_connection() noexcept {
    lookup_ = {};
    insert_ = {};
    prune_ = {};
    if (connection_.native_handle() != nullptr) {
      int ignored = 0;
      sqlite3_db_config(connection_.native_handle(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, &ignored);
    }
    connection_.close();
    schema_ready_ = false;
  }

  // Before a batch: the mount is usable and the connection is on it. Returns the failure
  // that fails the batch otherwise.
  std::optional<write_outcome> ensure_connection() {
    if (!options_.mount_generation) return std::nullopt;
    const std::optional<std::uint64_t> now = options_.mount_generation();
    if (!now) {
      if (connection_.native_handle() != nullptr) drop_connection();
      return write_outcome{make_error_code(errc::not_primary),
                           "the LiteFS mount under " + path_ +
                               " is dead (LiteFS stopped under the service); nothing ran: retry once "
                               "LiteFS is back"};
    }
    if (*now != generation_ && connection_.native_handle() != nullptr) drop_connection();
    generation_ = *now;
    if (connection_.native_handle() == nullptr) {
      boost::system::error_code ec;
      try {
        connection_ = connection(path_, options_.open_flags, options_.busy_timeout);
        if (options_.on_open) options_.on_open(connection_);
      } catch (const std::exception& e) {
        // Also an on_open that throws: never run a batch on a half-prepared connection.
        drop_connection();
        return write_outcome{make_error_code(errc::not_primary),
                             std::string("cannot reopen the database on the new LiteFS mount: ") + e.what() +
                                 "; nothing ran: retry"};
      } catch (...) {
        drop_connection();
        return write_outcome{make_error_code(errc::not_primary),
                             "cannot reopen the database on the new LiteFS mount; nothing ran: retry"};
      }
    }
    return std::nullopt;
  }

  void run_batch(const std::vector<std::shared_ptr<write_job>>& batch) {
    std::vector<write_outcome> outcomes(batch.size());
    if (auto unusable = ensure_connection()) {
      for (auto& outcome : outcomes) outcome = *unusable;
      finish(batch, outcomes, 0);
      return;
    }
    auto fail_all = [&](const write_outcome& failure) {
      if (connection_.native_handle() != nullptr && !connection_.autocommit()) {
        boost::system::error_code ignored;
        connection_.exec("ROLLBACK", ignored);
      }
      for (auto& outcome : outcomes) outcome = failure;
      finish(batch, outcomes, 0);
    };

    boost::system::error_code ec;
    std::string message;
    connection_.exec("BEGIN IMMEDIATE", ec, &message);
    if (ec) return fail_all(write_failure(ec, message));
    if (!schema_ready_) {
      prepare_schema(ec, message);
      if (ec) return fail_all(write_failure(ec, message));
    }

    const std::int64_t now_ms = unix_milliseconds();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (auto fatal = run_write(*batch[i], now_ms, outcomes[i])) return fail_all(*fatal);
    }
    if (prune_due()) {
      if (auto fatal = prune(now_ms)) return fail_all(*fatal);
    }

    connection_.exec("COMMIT", ec, &message);
    if (ec) return fail_all(write_failure(ec, message));
    schema_ready_ = true;
    ++commits_since_prune_;

    std::uint64_t txid = 0;
    if (options_.position_after_commit) {
      try {
        txid = options_.position_after_commit();
      } catch (...) {
        txid = 0;
      }
    }
    finish(batch, outcomes, txid);
  }

  // Runs one write inside its own SAVEPOINT. Returns a failure only when the whole batch
  // must fail (the transaction is gone, or LiteFS refused the write).
  std::optional<write_outcome> run_write(write_job& job, std::int64_t now_ms,
                                         write_outcome& outcome) {
    boost::system::error_code ec;
    std::string message;

    // Exactly once: a request id already recorded answers with its stored result.
    lookup_.reset().bind(1, blob_view(job.id));
    const bool found = lookup_.step(ec);
    if (ec) {
      lookup_.reset();
      return write_failure(ec,
                           detail::describe_failure(connection_.native_handle(), ec.value(),
                                                    "looking up the request id", lookup_.sql()));
    }
    if (found) {
      const auto stored = lookup_.column_blob(0);
      outcome.result.assign(stored.begin(), stored.end());
      lookup_.reset();
      return std::nullopt;
    }
    lookup_.reset();

    connection_.exec("SAVEPOINT fwd_write", ec, &message);
    if (ec) return write_failure(ec, message);

    try {
      outcome.result = job.work(connection_.native_handle());
      if (connection_.autocommit()) {
        // The write ended the batch's transaction itself: what it and the writes before
        // it did may be committed or undone; the batch cannot continue either way.
        return write_outcome{make_error_code(errc::bad_argument),
                             "a write ran COMMIT, ROLLBACK or END itself: a write must leave "
                             "transaction control to the write executor (use SAVEPOINTs)"};
      }
      if (has_unresolved_deferred_foreign_keys()) {
        // COMMIT would fail for the whole batch: fail this write alone instead.
        outcome.ec = make_sqlite_error(SQLITE_CONSTRAINT_FOREIGNKEY);
        outcome.result =
            "FOREIGN KEY constraint failed: the write left a deferred foreign key unresolved";
      }
    } catch (const fwd::error& e) {
      outcome.ec = boost::system::error_code(e.code());
      outcome.result = e.what();
    } catch (const std::exception& e) {
      outcome.ec = make_error_code(errc::remote_failure);
      outcome.result = e.what();
    } catch (...) {
      outcome.ec = make_error_code(errc::remote_failure);
      outcome.result = "the write threw an exception that is not a std::exception";
    }

    if (!outcome.ec) {
      insert_.reset()
          .bind(1, blob_view(job.id))
          .bind(2, blob_view(outcome.result.data(), outcome.result.size()))
          .bind(3, now_ms);
      insert_.step(ec);
      insert_.reset();
      if (ec) {
        outcome.ec = ec;
        outcome.result = detail::describe_failure(connection_.native_handle(), ec.value(),
                                                  "recording the request id", insert_.sql());
      }
    }

    if (outcome.ec) {
      // A replica refusal, or an error after which SQLite rolled back the whole
      // transaction (e.g. SQLITE_FULL, SQLITE_BUSY): the batch cannot commit.
      if (is_replica_refusal(outcome.ec) || connection_.autocommit()) {
        return write_failure(outcome.ec, outcome.result);
      }
      connection_.exec("ROLLBACK TO fwd_write", ec, &message);
      if (!ec) connection_.exec("RELEASE fwd_write", ec, &message);
      if (ec) return write_failure(ec, message);
      return std::nullopt;
    }
    connection_.exec("RELEASE fwd_write", ec, &message);
    if (ec) return write_failure(ec, message);
    return std::nullopt;
  }

  bool has_unresolved_deferred_foreign_keys() const noexcept {
    int current = 0;
    int highest = 0;
    sqlite3_db_status(connection_.native_handle(), SQLITE_DBSTATUS_DEFERRED_FKS, &current, &highest,
                      0);
    return current > 0;
  }

  void prepare_schema(boost::system::error_code& ec, std::string& message) {
    connection_.exec(std::string("CREATE TABLE IF NOT EXISTS ") + dedup_table_name +
                         "(id BLOB PRIMARY KEY, result BLOB NOT NULL, created_at INTEGER NOT "
                         "NULL) WITHOUT ROWID",
                     ec, &message);
    if (ec) return;
    const std::string table = dedup_table_name;
    try {
      lookup_ = connection_.prepare("SELECT result FROM " + table + " WHERE id = ?1");
      insert_ = connection_.prepare("INSERT INTO " + table +
                                    "(id, result, created_at) VALUES (?1, ?2, ?3)");
      prune_ = connection_.prepare("DELETE FROM " + table + " WHERE created_at < ?1");
    } catch (const fwd::error& e) {
      ec = boost::system::error_code(e.code());
      message = e.what();
    }
  }

  bool prune_due() const noexcept {
    return commits_since_prune_ + 1 >= options_.prune_every_commits ||
           std::chrono::steady_clock::now() - last_prune_ >= options_.prune_interval;
  }

  std::optional<write_outcome> prune(std::int64_t now_ms) {
    boost::system::error_code ec;
    prune_.reset().bind(1, now_ms - static_cast<std::int64_t>(options_.dedup_retention.count()));
    prune_.step(ec);
    prune_.reset();
    if (ec && (is_replica_refusal(ec) || connection_.autocommit())) {
      return write_failure(ec, detail::describe_failure(connection_.native_handle(), ec.value(),
                                                        "pruning old request ids", prune_.sql()));
    }
    // A failed prune alone does not fail the writes: SQLite undid the statement, and the
    // next prune tries again.
    if (!ec) {
      commits_since_prune_ = 0;
      last_prune_ = std::chrono::steady_clock::now();
    }
    return std::nullopt;
  }

  void finish(const std::vector<std::shared_ptr<write_job>>& batch,
              std::vector<write_outcome>& outcomes, std::uint64_t txid) {
    std::vector<std::vector<std::unique_ptr<write_waiter>>> waiters(batch.size());
    {
      std::lock_guard lock(mutex_);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        pending_.erase(batch[i]->id);
        waiters[i] = std::move(batch[i]->waiters);
      }
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const std::uint64_t job_txid = outcomes[i].ec ? 0 : txid;
      for (std::size_t w = 0; w < waiters[i].size(); ++w) {
        std::string result =
            w + 1 == waiters[i].size() ? std::move(outcomes[i].result) : outcomes[i].result;
        waiters[i][w]->complete(outcomes[i].ec, std::move(result), job_txid);
      }
    }
  }

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
  std::atomic<std::uint64_t> next_serial_{0};

  // Used only by the batch that is running.
  bool schema_ready_ = false;
  statement lookup_;
  statement insert_;
  statement prune_;
  std::uint64_t commits_since_prune_ = 0;
  std::chrono::steady_clock::time_point last_prune_;
};

}  // namespace detail

}  // namespace fwd::sqlite
