#pragma once

// Whether a write's dedup row (`_fwd_requests`, keyed by its request id) is in this node's
// copy of the database: the proof that a forwarded write is here when the position's
// checksum cannot tell (the replica went past the write's TXID without seeing it). Read
// only, on a connection opened for a batch of lookups and closed after it (a connection
// kept across a LiteFS restart would point at the dead mount). Internal.

#include <sqlite3.h>

#include <fwd/litefs/monitor.hpp>
#include <fwd/write/write_options.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace fwd::detail {

enum class dedup_row {
  present,  ///< the row is there: the write is in this node's database
  absent,   ///< no such row (or no dedup table yet): the write is not here
  unknown,  ///< the database could not be read (busy, missing, unreadable)
};

/// Looks every id of `ids` up in the database at `path`, read-only, on one connection,
/// waiting at most `busy` for a lock: the answer for `ids[i]` is `rows[i]`. `why` receives
/// the failure when an answer is `unknown`.
inline std::vector<dedup_row> find_dedup_rows(const std::string& path, const std::vector<sqlite::request_id>& ids,
                                              std::chrono::milliseconds busy, std::string& why) {
  std::vector<dedup_row> rows(ids.size(), dedup_row::unknown);
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    why = fmt::format("cannot open {} read-only: {}", path, db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close(db);
    return rows;
  }
  sqlite3_busy_timeout(db, static_cast<int>(busy.count()));
  sqlite3_stmt* stmt = nullptr;
  const std::string sql = fmt::format("SELECT 1 FROM {} WHERE id = ?1", sqlite::dedup_table_name);
  rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    // No dedup table: no write ever committed in this history.
    const bool no_table = rc == SQLITE_ERROR &&
                          std::string(sqlite3_errmsg(db)).find("no such table") != std::string::npos;
    if (no_table) {
      std::fill(rows.begin(), rows.end(), dedup_row::absent);
    } else {
      why = fmt::format("cannot read {} in {}: {}", sqlite::dedup_table_name, path, sqlite3_errmsg(db));
    }
  } else {
    // One read transaction for all of them: one snapshot, one lock taken.
    const bool in_transaction = sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      sqlite3_bind_blob(stmt, 1, ids[i].data(), static_cast<int>(ids[i].size()), SQLITE_STATIC);
      rc = sqlite3_step(stmt);
      if (rc == SQLITE_ROW) {
        rows[i] = dedup_row::present;
      } else if (rc == SQLITE_DONE) {
        rows[i] = dedup_row::absent;
      } else {
        why = fmt::format("cannot read {} in {}: {}", sqlite::dedup_table_name, path, sqlite3_errmsg(db));
      }
      sqlite3_reset(stmt);
    }
    if (in_transaction) sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return rows;
}

/// Looks `id` up in the database at `path`, read-only, waiting at most `busy` for a lock.
/// `why` receives the failure when the answer is `unknown`.
inline dedup_row find_dedup_row(const std::string& path, const sqlite::request_id& id,
                                std::chrono::milliseconds busy, std::string& why) {
  return find_dedup_rows(path, std::vector<sqlite::request_id>{id}, busy, why).front();
}

/**
 * The dedup-row lookups of one node's calls, run on the LiteFS monitor's polling thread
 * (never on an io_context thread: a hung mount may never answer) and batched there: the
 * lookups queued while the thread was busy (polling, or answering the last batch) are
 * answered from one connection and one read transaction. Under load, a replica confirms
 * many writes that went past unseen at once; opening a connection for each (several FUSE
 * calls on LiteFS) made the polling thread, which also polls the position the calls wait
 * for, the bottleneck.
 */
class dedup_lookups : public std::enable_shared_from_this<dedup_lookups> {
 public:
  /// Receives the answer and, when it is `unknown`, why; on the polling thread.
  using answer = std::function<void(dedup_row, std::string)>;

  explicit dedup_lookups(std::string path) : path_(std::move(path)) {}

  /// Queues a lookup of `id`, waiting at most `busy` for a lock. False when the polling
  /// thread is not running: nothing was queued and `done` is never called.
  bool submit(litefs::monitor& monitor, const sqlite::request_id& id, std::chrono::milliseconds busy, answer done) {
    std::uint64_t ticket;
    {
      std::lock_guard lock(mutex_);
      ticket = ++next_ticket_;
      pending_.push_back({ticket, id, busy, std::move(done)});
    }
    // One job per lookup keeps the queue simple; the first job to run answers every lookup
    // queued by then, and the rest find nothing left to do.
    if (monitor.run_on_polling_thread([weak = weak_from_this()] {
          if (const auto self = weak.lock()) self->answer_pending();
        })) {
      return true;
    }
    std::lock_guard lock(mutex_);
    std::erase_if(pending_, [ticket](const lookup& l) { return l.ticket == ticket; });
    return false;
  }

 private:
  struct lookup {
    std::uint64_t ticket;
    sqlite::request_id id;
    std::chrono::milliseconds busy;
    answer done;
  };

  void answer_pending() {
    std::vector<lookup> batch;
    {
      std::lock_guard lock(mutex_);
      batch.swap(pending_);
    }
    if (batch.empty()) return;
    std::vector<sqlite::request_id> ids;
    ids.reserve(batch.size());
    std::chrono::milliseconds busy{0};
    for (const auto& l : batch) {
      ids.push_back(l.id);
      busy = std::max(busy, l.busy);
    }
    std::string why;
    const std::vector<dedup_row> rows = find_dedup_rows(path_, ids, busy, why);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      batch[i].done(rows[i], rows[i] == dedup_row::unknown ? why : std::string{});
    }
  }

  const std::string path_;
  std::mutex mutex_;
  std::uint64_t next_ticket_ = 0;  // guarded by mutex_
  std::vector<lookup> pending_;    // guarded by mutex_
};

}  // namespace fwd::detail
