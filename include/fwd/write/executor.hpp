#pragma once

// fwd::sqlite::write_executor: the primary's writer. One connection, one writer thread (or
// an executor the user gives), BEGIN IMMEDIATE, a dedup table written in the same
// transaction as each write (exactly once), and group commit (one transaction for many
// writes, each in its own SAVEPOINT so one failing write fails alone).

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
#include <fwd/write/detail/write_executor_state.hpp>
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

/**
 * The primary's writer: runs writes on one SQLite connection, exactly once per request
 * id, many writes per transaction.
 *
 * **Thread.** All blocking SQLite work runs on one writer thread that the write executor
 * owns (named "fwd-writer" on Linux), or, if write_options::work_executor is set, on that
 * executor (one batch at a time). Completions never run there: each is posted to the
 * handler's associated executor (by default this object's executor).
 *
 * **A batch** is one `BEGIN IMMEDIATE ... COMMIT` transaction holding up to `max_batch`
 * writes that were waiting (optionally gathered for up to `max_batch_delay`). In it, each
 * write runs in its own `SAVEPOINT`: if it fails (throws, violates a constraint, leaves a
 * deferred foreign key unresolved) only it is rolled back. A write completes only after
 * its batch's COMMIT succeeded. If COMMIT fails, every write of the batch fails: with
 * COMMIT's own error when that proves nothing was committed (SQLITE_BUSY, a constraint,
 * LiteFS's refusal on a replica), otherwise with errc::commit_unknown ("maybe executed":
 * COMMIT may have reached the database; a retry with the same request id is answered
 * from the dedup table if it did).
 *
 * **Exactly once.** The table `_fwd_requests(id BLOB PRIMARY KEY, result BLOB NOT NULL,
 * created_at INTEGER NOT NULL, procedure TEXT)` (created if missing; created_at in Unix
 * milliseconds; `procedure` added by ALTER TABLE to a table an earlier version created,
 * its old rows NULL) records each successful write's request id, result and procedure in
 * the write's own transaction. A request id found there is answered with the stored
 * result without running anything, if it was recorded for the same procedure (or NULL);
 * for another procedure the write fails with errc::bad_argument, nothing run; for an id
 * whose commit LiteFS was not seen to record (write_options::position_before_batch), with
 * errc::commit_unknown, nothing run. A repeat
 * that arrives while the first is still waiting or running joins it (same procedure). Rows older
 * than `dedup_retention` are pruned inside a write transaction.
 *
 * **Replicas.** SQLITE_READONLY (e.g. 1544) and SQLITE_IOERR_WRITE (778), LiteFS's
 * refusals on a replica, fail the whole batch with errc::not_primary: nothing was applied.
 *
 * **A mount that goes away.** Any other I/O error (SQLITE_IOERR_*, SQLITE_CANTOPEN) before
 * COMMIT means the file system under the database went away (on LiteFS: LiteFS stopped or
 * restarted under the service): the whole batch fails with errc::not_primary (nothing was
 * committed: retryable), and the connection is closed without ROLLBACK (closing it is the
 * rollback; nothing touches the dead mount again) and opened anew before the next batch.
 *
 * Thread-safe: async_write and stop may be called from any thread.
 */
class write_executor {
 public:
  using executor_type = boost::asio::any_io_executor;

  /**
   * Opens `path` (write_options::open_flags) and starts the writer. The dedup table is
   * created by the first write, so opening a replica's database does not fail.
   * Throws fwd::error if the database cannot be opened.
   *
   * @param executor the default executor for completions (handlers with no associated
   *        executor run there).
   */
  write_executor(executor_type executor, const std::string& path, write_options options = {})
      : executor_(std::move(executor)),
        state_(std::make_shared<detail::write_executor_state>(path, std::move(options))) {
    if (!state_->options().work_executor) {
      writer_ = std::thread([state = state_] {
#if defined(__linux__)
        pthread_setname_np(pthread_self(), "fwd-writer");
#endif
        state->run_writer_thread();
      });
      writer_id_ = writer_.get_id();
    }
  }

  /// Uses `context`'s executor for completions.
  template <class ExecutionContext>
  requires std::is_convertible_v<ExecutionContext&, boost::asio::execution_context&> write_executor(
      ExecutionContext& context, const std::string& path, write_options options = {})
      : write_executor(executor_type(context.get_executor()), path, std::move(options)) {}

  write_executor(const write_executor&) = delete;
  write_executor& operator=(const write_executor&) = delete;

  /// Stops (see stop()).
  ~write_executor() { stop(); }

  executor_type get_executor() const noexcept { return executor_; }

  /// The id of the writer thread, or a default id when work runs on a work_executor.
  std::thread::id writer_thread_id() const noexcept { return writer_id_; }

  /// Writes waiting for the writer (not counting the batch that is running).
  std::size_t queued() const { return state_->queued(); }

  /**
   * Runs `work` once for request id `id`, inside a transaction on the writer, and
   * completes with its result after COMMIT.
   *
   * `work(db)` runs its SQL on `db` (wrap it with connection::borrow(db) if useful) and
   * returns the result bytes, which are stored with `id`. It runs inside the executor's
   * transaction: BEGIN, COMMIT, ROLLBACK, END and any use of the executor's savepoint
   * `fwd_write` are refused while it runs (the connection's SQLite authorizer, which
   * refuses only while a work runs: SQLITE_AUTH at prepare), and the write then fails alone with
   * errc::bad_argument, rolled back, while the rest of its batch commits. Savepoints of its
   * own names are fine (they nest). The work must not install an authorizer of its own
   * (the executor's replaces it while the work runs). If it throws, it alone is rolled
   * back: a fwd::error keeps its code (SQLite's extended code, e.g. 2067
   * SQLITE_CONSTRAINT_UNIQUE); any other exception completes with errc::remote_failure.
   *
   * **Completion signature** `void(boost::system::error_code ec, std::string result,
   * litefs::position pos)`: on success `result` is what `work` returned (or returned the
   * first time `id` ran) and `pos` is write_options::position_after_commit's value after
   * the COMMIT (zero without it); on failure `result` describes the failure (the exception's
   * text, or SQLite's message and SQL) and `pos` is zero. Errors: SQLite's codes;
   * errc::not_primary (LiteFS refused, or its mount went away: nothing applied);
   * errc::commit_unknown (COMMIT failed and may have committed, or it succeeded but LiteFS's
   * position shows LiteFS may not keep it: see write_options::position_before_batch; retry
   * with the same id);
   * errc::remote_failure;
   * errc::overloaded (queue full: nothing ran); errc::cancelled (stopped before it ran);
   * errc::timeout (with a deadline, below: it passed before the write ran; nothing ran);
   * errc::bad_argument (empty `work`). The handler runs on its associated executor
   * (default: get_executor()), never inside this call.
   *
   * **Per-Operation Cancellation** (`cancellation_type::terminal`, `partial` or `total`,
   * emitted on the handler's executor): a write that has not started yet is dropped and
   * completes with errc::cancelled, nothing applied (if other callers wait on the same
   * `id`, the write still runs for them). A write that has started runs to its COMMIT
   * and completes normally. stop() cancels every write that has not started.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(detail::write_signature)
                WriteToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_write(const request_id& id, std::function<std::string(sqlite3*)> work,
                   WriteToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<WriteToken, detail::write_signature>(
        initiate_write{state_, executor_}, token, id, std::string(), std::move(work),
        std::chrono::steady_clock::time_point{});
  }

  /**
   * As above, with the request id bound to `procedure` (a name for what `work` does, e.g.
   * a procedure's name and signature): the dedup row records it, and the same id given
   * with another procedure (waiting, running or recorded) is refused with
   * errc::bad_argument, nothing run, instead of answering with the other write's result.
   * The forms without `procedure` bind the id to the empty name. A row recorded before the
   * dedup table had its `procedure` column matches any procedure.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(detail::write_signature)
                WriteToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_write(const request_id& id, std::string procedure, std::function<std::string(sqlite3*)> work,
                   WriteToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<WriteToken, detail::write_signature>(
        initiate_write{state_, executor_}, token, id, std::move(procedure), std::move(work),
        std::chrono::steady_clock::time_point{});
  }

  /**
   * As above, for a caller that stops waiting at `deadline` ({} = never): if the deadline
   * has passed when the writer takes its next batch and the write has not started, it is
   * dropped for this caller, who completes with errc::timeout: it never ran, nothing was
   * applied (the write still runs if another caller of the same `id` has time left). A
   * write that has started runs to its COMMIT whatever the deadline.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(detail::write_signature)
                WriteToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_write(const request_id& id, std::function<std::string(sqlite3*)> work,
                   std::chrono::steady_clock::time_point deadline,
                   WriteToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<WriteToken, detail::write_signature>(
        initiate_write{state_, executor_}, token, id, std::string(), std::move(work), deadline);
  }

  /// Both: the id bound to `procedure`, and a caller that stops waiting at `deadline`.
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(detail::write_signature)
                WriteToken = boost::asio::default_completion_token_t<executor_type>>
  auto async_write(const request_id& id, std::string procedure, std::function<std::string(sqlite3*)> work,
                   std::chrono::steady_clock::time_point deadline,
                   WriteToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<WriteToken, detail::write_signature>(
        initiate_write{state_, executor_}, token, id, std::move(procedure), std::move(work), deadline);
  }

  /**
   * Makes sure the write queued under `id` never runs, if it has not started: it leaves
   * the queue and every caller waiting for it completes with `ec` (e.g. errc::cancelled or
   * errc::timeout) and `why`; nothing was applied. Returns write_drop::dropped then;
   * write_drop::running when the write has started (it runs to its COMMIT and completes
   * normally); write_drop::unknown when no write waits or runs under `id`. Thread-safe.
   */
  write_drop drop_queued(const request_id& id, boost::system::error_code ec, const std::string& why) {
    return state_->drop_queued(id, ec, why);
  }

  /**
   * Stops the writer: the batch that is running finishes (and completes normally); writes
   * still waiting complete with errc::cancelled; later async_write calls complete with
   * errc::cancelled. Blocks until the running batch is done and the writer thread has
   * exited, then closes the connection. Idempotent. From inside a write's `work` it does
   * not wait (the batch is the caller's own).
   */
  void stop() {
    const bool on_writer = std::this_thread::get_id() == writer_id_;
    state_->stop(/*wait=*/!on_writer);
    if (writer_.joinable() && !on_writer) writer_.join();
    if (!writer_.joinable()) state_->close();
  }

  /**
   * Stops without blocking: as stop(), but `handler` (signature `void()`) completes once
   * the running batch, if any, has finished and every write it held has completed.
   * The connection is closed later, by stop() or the destructor.
   */
  template <BOOST_ASIO_COMPLETION_TOKEN_FOR(void()) StopToken =
                boost::asio::default_completion_token_t<executor_type>>
  auto async_stop(StopToken&& token = boost::asio::default_completion_token_t<executor_type>()) {
    return boost::asio::async_initiate<StopToken, void()>(
        [state = state_, executor = executor_](auto handler) {
          auto done = std::make_shared<fwd::detail::pending_completion<void()>>(std::move(handler), executor);
          state->async_stop([done] { done->post(); });
        },
        token);
  }

 private:
  struct initiate_write {
    std::shared_ptr<detail::write_executor_state> state;
    executor_type executor;

    /// Dispatches a cancellation to the write executor, if it still exists.
    struct cancel_handler {
      cancel_handler(const std::shared_ptr<detail::write_executor_state>& s, std::uint64_t n)
          : state(s), serial(n) {}
      std::weak_ptr<detail::write_executor_state> state;
      std::uint64_t serial;
      void operator()(boost::asio::cancellation_type type) const {
        using boost::asio::cancellation_type;
        if ((type & (cancellation_type::terminal | cancellation_type::partial |
                     cancellation_type::total)) == cancellation_type::none) {
          return;
        }
        if (auto s = state.lock()) s->cancel_waiter(serial);
      }
    };

    template <class Handler>
    void operator()(Handler&& handler, const request_id& id, std::string procedure,
                    std::function<std::string(sqlite3*)> work,
                    std::chrono::steady_clock::time_point deadline) const {
      const std::uint64_t serial = state->next_serial();
      auto waiter = std::make_unique<detail::write_waiter>(serial, std::forward<Handler>(handler),
                                                           executor, deadline);
      // Installed before the write is queued, so that nothing else touches the slot yet.
      auto slot = waiter->slot();
      if (slot.is_connected()) slot.template emplace<cancel_handler>(state, serial);
      state->submit(id, std::move(procedure), std::move(work), std::move(waiter));
    }
  };

  executor_type executor_;
  std::shared_ptr<detail::write_executor_state> state_;
  std::thread writer_;
  std::thread::id writer_id_;
};

}  // namespace fwd::sqlite
