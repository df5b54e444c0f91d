#pragma once

// The write executor's batches: one BEGIN IMMEDIATE ... COMMIT for many writes, each in
// its own SAVEPOINT with its dedup row, and the writer's connection kept on the live
// LiteFS mount (closed without ROLLBACK when the mount went away, reopened before the
// next batch).

#include <fmt/format.h>

#include <iterator>
#include <string>
#include <fwd/write/detail/write_executor_state.hpp>

namespace fwd::sqlite::detail {

// Called with the lock held and work queued; returns with the lock held.
inline void write_executor_state::run_one_batch(std::unique_lock<std::mutex>& lock) {
  if (options_.max_batch_delay.count() > 0 && queue_.size() < options_.max_batch) {
    const auto deadline = std::chrono::steady_clock::now() + options_.max_batch_delay;
    wake_.wait_until(lock, deadline, [&] { return stopping_ || queue_.size() >= options_.max_batch; });
    if (stopping_) return;  // not yet started: stop() cancels it
  }
  drop_expired();
  std::vector<std::shared_ptr<write_job>> batch;
  while (!queue_.empty() && batch.size() < options_.max_batch) {
    batch.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  if (batch.empty()) return;
  running_batch_ = true;
  const write_batch_event taken{batch.size(), queue_.size()};
  lock.unlock();
  fwd::detail::emit(options_.telemetry, &telemetry::write_batch, taken);
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

inline void write_executor_state::abandon_batch(const std::vector<std::shared_ptr<write_job>>& batch,
                                                const char* what) noexcept {
  try {
    end_failed_batch();
    std::vector<write_outcome> outcomes(
        batch.size(), write_outcome{make_sqlite_error(SQLITE_NOMEM),
                                    fmt::format("the write batch failed: {}", what)});
    finish(batch, outcomes, {});
  } catch (...) {
  }
}

// The mount generation before the connection is opened (a mount replaced in between
// then shows as a new generation at the first batch, not the other way round).
inline std::uint64_t write_executor_state::initial_generation(const write_options& options) {
  if (!options.mount_generation) return 0;
  const auto g = options.mount_generation();
  return g ? *g : 0;
}

// Drops the connection without touching the database: no checkpoint on close (a dead
// mount's `-shm` must not be read), no ROLLBACK (closing is the rollback). Statements go
// first. The next batch opens the database anew.
inline void write_executor_state::drop_connection() noexcept {
  forget_statements();
  if (connection_.native_handle() != nullptr) {
    int ignored = 0;
    sqlite3_db_config(connection_.native_handle(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, &ignored);
  }
  connection_.close();
  schema_ready_ = false;
  drop_pending_ = false;
}

// Before a batch: the mount is usable and the connection is open on it. Returns the
// failure that fails the batch otherwise.
inline std::optional<write_outcome> write_executor_state::ensure_connection() {
  if (options_.mount_generation) {
    const std::optional<std::uint64_t> now = options_.mount_generation();
    if (!now) {
      if (connection_.native_handle() != nullptr) drop_connection();
      return write_outcome{make_error_code(errc::not_primary),
                           fmt::format("the LiteFS mount under {} is dead (LiteFS stopped under the "
                                       "service); nothing ran: retry once LiteFS is back",
                                       path_)};
    }
    if (*now != generation_ && connection_.native_handle() != nullptr) drop_connection();
    generation_ = *now;
  }
  if (connection_.native_handle() != nullptr) return std::nullopt;
  try {
    connection_ = connection(path_, options_.open_flags, options_.busy_timeout);
    if (options_.on_open) options_.on_open(connection_);
    guard_.install(connection_.native_handle());
    note_journal_mode();
    return std::nullopt;
  } catch (const std::exception& e) {
    // Also an on_open that throws: never run a batch on a half-prepared connection.
    drop_connection();
    return write_outcome{make_error_code(errc::not_primary),
                         fmt::format("cannot reopen the database {}: {}; nothing ran: retry", path_, e.what())};
  } catch (...) {
    drop_connection();
    return write_outcome{make_error_code(errc::not_primary),
                         fmt::format("cannot reopen the database {}; nothing ran: retry", path_)};
  }
}

// After a failure: undoes the batch. A connection whose mount went away (or changed) is
// closed instead: a ROLLBACK would touch the dead mount (SIGBUS through its `-shm`).
inline void write_executor_state::end_failed_batch() noexcept {
  if (connection_.native_handle() == nullptr) return;
  if (!drop_pending_ && mount_changed()) drop_pending_ = true;
  if (drop_pending_) {
    drop_connection();
    return;
  }
  if (!connection_.autocommit()) {
    boost::system::error_code ec;
    connection_.exec("ROLLBACK", ec);
    if (ec) drop_connection();
  }
}

// Whether the database is in WAL mode (after on_open, which may have set it): what a
// failed COMMIT's lock error means depends on it.
inline void write_executor_state::note_journal_mode() noexcept {
  sqlite3_stmt* stmt = nullptr;
  wal_mode_ = false;
  if (sqlite3_prepare_v2(connection_.native_handle(), "PRAGMA journal_mode", -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    const auto* mode = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    wal_mode_ = mode != nullptr && std::string_view(mode) == "wal";
  }
  sqlite3_finalize(stmt);
}

inline bool write_executor_state::mount_changed() noexcept {
  if (!options_.mount_generation) return false;
  try {
    const std::optional<std::uint64_t> now = options_.mount_generation();
    return !now || *now != generation_;
  } catch (...) {
    return true;
  }
}

inline int write_executor_state::system_errno() const noexcept {
  return connection_.native_handle() != nullptr ? sqlite3_system_errno(connection_.native_handle()) : 0;
}

// A statement of the batch failed (before COMMIT): what the batch's writes complete with.
inline write_outcome write_executor_state::statement_failure(const boost::system::error_code& ec,
                                                             const std::string& message) {
  const int err = system_errno();
  if (kind_of_failure(ec, err) == failure_kind::mount_lost) drop_pending_ = true;
  return write_failure(ec, message, err);
}

inline void write_executor_state::run_batch(const std::vector<std::shared_ptr<write_job>>& batch) {
  std::vector<write_outcome> outcomes(batch.size());
  if (auto unusable = ensure_connection()) {
    for (auto& outcome : outcomes) outcome = *unusable;
    finish(batch, outcomes, {});
    return;
  }
  auto fail_all = [&](const write_outcome& failure) {
    end_failed_batch();
    for (auto& outcome : outcomes) outcome = failure;
    finish(batch, outcomes, {});
  };

  boost::system::error_code ec;
  std::string message;
  connection_.exec("BEGIN IMMEDIATE", ec, &message);
  if (ec) return fail_all(statement_failure(ec, message));
  if (!schema_ready_) {
    prepare_schema(ec, message);
    if (ec) return fail_all(statement_failure(ec, message));
  }

  // The position under the write lock, before anything of the batch: no other commit
  // can move it until ours, so the commit's own TXID must come after it.
  const std::optional<litefs::position> before = position_before();
  const auto changes_before = sqlite3_total_changes64(connection_.native_handle());

  const std::int64_t now_ms = unix_milliseconds();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (auto fatal = run_write(*batch[i], now_ms, outcomes[i])) return fail_all(*fatal);
  }
  if (prune_due()) {
    if (auto fatal = prune(now_ms)) return fail_all(*fatal);
  }

  connection_.exec("COMMIT", ec, &message);
  if (ec) {
    const int err = system_errno();
    if (kind_of_failure(ec, err) == failure_kind::mount_lost) drop_pending_ = true;
    return fail_all(commit_failure(ec, message, err, !connection_.autocommit(), !wal_mode_));
  }
  schema_ready_ = true;
  ++commits_since_prune_;

  const litefs::position pos = position_after();
  if (before && before->txid != 0 && pos.txid <= before->txid &&
      sqlite3_total_changes64(connection_.native_handle()) != changes_before) {
    // The position was readable before the batch, and after a COMMIT that changed the
    // database it either cannot be read (LiteFS died under the commit) or did not move
    // (LiteFS did not record the commit: the lease was lost under it). SQLite's COMMIT
    // succeeded, yet LiteFS may not keep it: a restarted LiteFS can drop it, a new
    // primary never receives it. Acknowledging it would promise what nothing here can
    // confirm, so every write the batch applied is "maybe executed".
    const std::string why =
        pos.txid == 0 ? fmt::format("LiteFS's position could not be read after it (TXID {} before the batch): "
                                    "the mount failed under the commit",
                                    before->txid)
                      : fmt::format("LiteFS's position did not move past TXID {}: LiteFS did not record the "
                                    "commit (e.g. the primary lost its lease under it)",
                                    before->txid);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      auto& outcome = outcomes[i];
      if (outcome.ec) continue;
      note_unrecorded(batch[i]->id);
      outcome = {make_error_code(errc::commit_unknown),
                 fmt::format("SQLite committed the write, but {}; LiteFS may not keep it (maybe executed). Retry "
                             "only with the same request id: if the write survived, the dedup table answers "
                             "with its stored result instead of running it again",
                             why)};
    }
  }
  if (!unrecorded_.empty()) {
    // Recorded this time (the write ran again after LiteFS dropped its first commit):
    // a repeat may be answered from the dedup row again.
    for (std::size_t i = 0; i < batch.size(); ++i)
      if (!outcomes[i].ec && !unrecorded_.empty()) unrecorded_.erase(batch[i]->id);
  }
  finish(batch, outcomes, pos);
}

inline void write_executor_state::note_unrecorded(const request_id& id) {
  if (!unrecorded_.insert(id).second) return;
  unrecorded_order_.push_back(id);
  while (unrecorded_order_.size() > max_unrecorded_ids) {
    unrecorded_.erase(unrecorded_order_.front());
    unrecorded_order_.pop_front();
  }
}

// write_options::position_before_batch's value; nothing without it, zero if it throws.
inline std::optional<litefs::position> write_executor_state::position_before() noexcept {
  if (!options_.position_before_batch) return std::nullopt;
  try {
    return options_.position_before_batch();
  } catch (...) {
    return litefs::position{};
  }
}

// write_options::position_after_commit's value; zero without it or if it throws.
inline litefs::position write_executor_state::position_after() noexcept {
  if (!options_.position_after_commit) return {};
  try {
    return options_.position_after_commit();
  } catch (...) {
    return {};
  }
}

// Runs one write inside its own SAVEPOINT. Returns a failure only when the whole batch
// must fail (the transaction is gone, LiteFS refused the write, or the mount went away).
inline std::optional<write_outcome> write_executor_state::run_write(write_job& job, std::int64_t now_ms,
                                                                    write_outcome& outcome) {
  boost::system::error_code ec;
  std::string message;

  // Exactly once: a request id already recorded answers with its stored result.
  lookup_.reset().bind(1, blob_view(job.id));
  const bool found = lookup_.step(ec);
  if (ec) {
    lookup_.reset();
    return statement_failure(ec, detail::describe_failure(connection_.native_handle(), ec.value(),
                                                          "looking up the request id", lookup_.sql()));
  }
  if (found) {
    // A row recorded before the table had its procedure column (NULL) matches any.
    const bool bound = !lookup_.column_is_null(1);
    const auto procedure = lookup_.column_text(1);
    if (bound && procedure != job.procedure) {
      outcome.ec = make_error_code(errc::bad_argument);
      outcome.result = request_id_reused(job.id, procedure, job.procedure);
    } else if (unrecorded_.count(job.id) != 0) {
      outcome.ec = make_error_code(errc::commit_unknown);
      outcome.result =
          "an earlier attempt of this request committed in SQLite on this node, but LiteFS was not seen to "
          "record that commit (its position could not be read, or did not move, after the COMMIT): "
          "whether LiteFS keeps it cannot be known here (maybe executed). If LiteFS dropped it, its row "
          "goes when LiteFS restores its history, and a retry with the same request id runs the write again";
    } else {
      const auto stored = lookup_.column_blob(0);
      outcome.result.assign(stored.begin(), stored.end());
    }
    lookup_.reset();
    return std::nullopt;
  }
  lookup_.reset();

  run_prepared(savepoint_, ec, message);
  if (ec) return statement_failure(ec, message);

  std::string refused;
  {
    // Refusing for the work alone: fwd's own statements below run unchecked.
    guard_.begin();
    const statement_cache::scope cached(work_statements_, connection_.native_handle());
    try {
      outcome.result = job.work(connection_.native_handle());
      if (connection_.autocommit()) {
        // The write ended the batch's transaction itself: what it and the writes before
        // it did may be committed or undone; the batch cannot continue either way.
        (void)guard_.end();
        return write_outcome{make_error_code(errc::bad_argument),
                             "a write ran COMMIT, ROLLBACK or END itself: a write must leave "
                             "transaction control to the write executor (use SAVEPOINTs)"};
      }
      if (has_unresolved_deferred_foreign_keys()) {
        // COMMIT would fail for the whole batch: fail this write alone instead.
        outcome.ec = make_sqlite_error(SQLITE_CONSTRAINT_FOREIGNKEY);
        outcome.result = "FOREIGN KEY constraint failed: the write left a deferred foreign key unresolved";
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
    refused = guard_.end();
  }
  if (!refused.empty()) {
    // Whatever the work did with SQLite's refusal (threw it, or swallowed it), the write
    // fails alone and is rolled back below.
    outcome.ec = make_error_code(errc::bad_argument);
    outcome.result = transaction_control_refusal(refused);
  }

  if (!outcome.ec) {
    insert_.reset()
        .bind(1, blob_view(job.id))
        .bind(2, blob_view(outcome.result.data(), outcome.result.size()))
        .bind(3, now_ms)
        .bind(4, std::string_view(job.procedure));
    insert_.step(ec);
    insert_.reset();
    if (ec) {
      outcome.ec = ec;
      outcome.result = detail::describe_failure(connection_.native_handle(), ec.value(),
                                                "recording the request id", insert_.sql());
    }
  }

  if (outcome.ec) {
    // A replica refusal, a mount gone away (an I/O error: the transaction cannot be
    // trusted, nor can the other writes commit), or an error after which SQLite rolled
    // back the whole transaction (e.g. SQLITE_FULL, SQLITE_BUSY): the batch cannot commit.
    if (kind_of_failure(outcome.ec, system_errno()) != failure_kind::other || connection_.autocommit()) {
      return statement_failure(outcome.ec, outcome.result);
    }
    run_prepared(rollback_to_, ec, message);
    if (!ec) run_prepared(release_, ec, message);
    if (ec) return statement_failure(ec, message);
    return std::nullopt;
  }
  run_prepared(release_, ec, message);
  if (ec) return statement_failure(ec, message);
  return std::nullopt;
}

// Runs one of fwd's own statements that return no rows (a savepoint's SAVEPOINT, RELEASE
// or ROLLBACK TO, prepared once per connection rather than parsed for every write).
inline void write_executor_state::run_prepared(statement& stmt, boost::system::error_code& ec,
                                               std::string& message) noexcept {
  stmt.step(ec);
  stmt.reset();
  if (ec) {
    try {
      message = detail::describe_failure(connection_.native_handle(), ec.value(), "exec", stmt.sql());
    } catch (...) {
    }
  }
}

inline bool write_executor_state::has_unresolved_deferred_foreign_keys() const noexcept {
  int current = 0;
  int highest = 0;
  sqlite3_db_status(connection_.native_handle(), SQLITE_DBSTATUS_DEFERRED_FKS, &current, &highest, 0);
  return current > 0;
}

// The dedup table, created with its procedure column, or given it (ALTER TABLE ADD COLUMN:
// old rows keep NULL there) when an earlier version created it without. Runs inside the
// batch's transaction, so a failed migration leaves nothing behind.
inline void write_executor_state::prepare_schema(boost::system::error_code& ec, std::string& message) {
  connection_.exec(fmt::format("CREATE TABLE IF NOT EXISTS {}(id BLOB PRIMARY KEY, result BLOB NOT NULL, "
                               "created_at INTEGER NOT NULL, procedure TEXT) WITHOUT ROWID",
                               dedup_table_name),
                   ec, &message);
  if (ec) return;
  bool has_procedure = false;
  {
    sqlite3_stmt* columns = nullptr;
    const std::string sql = fmt::format("SELECT name FROM pragma_table_info('{}')", dedup_table_name);
    int rc = sqlite3_prepare_v2(connection_.native_handle(), sql.c_str(), -1, &columns, nullptr);
    if (rc == SQLITE_OK) {
      while ((rc = sqlite3_step(columns)) == SQLITE_ROW) {
        const auto* name = reinterpret_cast<const char*>(sqlite3_column_text(columns, 0));
        if (name != nullptr && std::string_view(name) == "procedure") has_procedure = true;
      }
    }
    sqlite3_finalize(columns);
    if (rc != SQLITE_DONE) {
      ec = make_sqlite_error(sqlite3_extended_errcode(connection_.native_handle()));
      message = detail::describe_failure(connection_.native_handle(), ec.value(),
                                         "reading the dedup table's columns", sql);
      return;
    }
  }
  if (!has_procedure) {
    connection_.exec(fmt::format("ALTER TABLE {} ADD COLUMN procedure TEXT", dedup_table_name), ec, &message);
    if (ec) return;
  }
  try {
    lookup_ = connection_.prepare(fmt::format("SELECT result, procedure FROM {} WHERE id = ?1", dedup_table_name));
    insert_ = connection_.prepare(fmt::format(
        "INSERT INTO {}(id, result, created_at, procedure) VALUES (?1, ?2, ?3, ?4)", dedup_table_name));
    prune_ = connection_.prepare(fmt::format("DELETE FROM {} WHERE created_at < ?1", dedup_table_name));
    savepoint_ = connection_.prepare(fmt::format("SAVEPOINT {}", write_savepoint_name));
    release_ = connection_.prepare(fmt::format("RELEASE {}", write_savepoint_name));
    rollback_to_ = connection_.prepare(fmt::format("ROLLBACK TO {}", write_savepoint_name));
  } catch (const fwd::error& e) {
    ec = boost::system::error_code(e.code());
    message = e.what();
  }
}

inline bool write_executor_state::prune_due() const noexcept {
  return commits_since_prune_ + 1 >= options_.prune_every_commits ||
         std::chrono::steady_clock::now() - last_prune_ >= options_.prune_interval;
}

inline std::optional<write_outcome> write_executor_state::prune(std::int64_t now_ms) {
  boost::system::error_code ec;
  prune_.reset().bind(1, now_ms - static_cast<std::int64_t>(options_.dedup_retention.count()));
  prune_.step(ec);
  prune_.reset();
  if (ec && (kind_of_failure(ec, system_errno()) != failure_kind::other || connection_.autocommit())) {
    return statement_failure(ec, detail::describe_failure(connection_.native_handle(), ec.value(),
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

inline void write_executor_state::finish(const std::vector<std::shared_ptr<write_job>>& batch,
                                         std::vector<write_outcome>& outcomes, litefs::position pos) {
  std::vector<std::vector<std::unique_ptr<write_waiter>>> waiters(batch.size());
  {
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      pending_.erase(batch[i]->id);
      waiters[i] = std::move(batch[i]->waiters);
    }
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const litefs::position job_pos = outcomes[i].ec ? litefs::position{} : pos;
    for (std::size_t w = 0; w < waiters[i].size(); ++w) {
      std::string result = w + 1 == waiters[i].size() ? std::move(outcomes[i].result) : outcomes[i].result;
      waiters[i][w]->complete(outcomes[i].ec, std::move(result), job_pos);
    }
  }
}

}  // namespace fwd::sqlite::detail
