#pragma once

// Helpers for the write tests: a temporary directory, request ids, a gate that holds the
// writer inside a write until the test opens it, and waiting for completions with a bound.

#include <stdlib.h>

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <future>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/write/executor.hpp>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace fwd_test {

/// A fresh directory under the system temp dir, removed with everything in it.
class temp_dir {
 public:
  temp_dir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "fwd-write-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

/// A request id made from a number (tests need distinct, reproducible ids).
inline fwd::sqlite::request_id make_id(std::uint64_t n) {
  fwd::sqlite::request_id id{};
  for (int i = 0; i < 8; ++i)
    id[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n >> (8 * i));
  id[15] = 0xfd;
  return id;
}

/// What one write completed with.
struct outcome {
  boost::system::error_code ec;
  std::string result;
  std::uint64_t txid = 0;
};

/// A completion handler that fulfils a future.
inline auto capture(std::shared_ptr<std::promise<outcome>> promise) {
  return [promise](boost::system::error_code ec, std::string result, fwd::litefs::position pos) {
    promise->set_value(outcome{ec, std::move(result), pos.txid});
  };
}

/// Submits a write and returns a future of its outcome.
inline std::future<outcome> submit(fwd::sqlite::write_executor& writer, std::uint64_t id,
                                   std::function<std::string(sqlite3*)> work) {
  auto promise = std::make_shared<std::promise<outcome>>();
  auto future = promise->get_future();
  writer.async_write(make_id(id), std::move(work), capture(promise));
  return future;
}

/// Waits (bounded) for a write's outcome.
inline outcome wait(std::future<outcome>& future) {
  if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    throw std::runtime_error("a write did not complete within 30 s");
  }
  return future.get();
}

/// Holds the writer inside a write until opened: everything submitted meanwhile queues.
/// Declare it after the write_executor so that it opens before the executor stops.
class gate {
 public:
  gate() : state_(std::make_shared<state>()) {}
  ~gate() { open(); }
  gate(const gate&) = delete;
  gate& operator=(const gate&) = delete;

  /// The write that blocks the writer.
  std::function<std::string(sqlite3*)> work() {
    return [s = state_](sqlite3*) {
      s->entered.set_value();
      s->released.wait();
      return std::string("gate");
    };
  }
  /// Waits (bounded) until the writer is inside the gate's write.
  void wait_entered() {
    if (state_->entered_future.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      throw std::runtime_error("the writer did not start the gate's write within 30 s");
    }
  }
  void open() {
    if (!state_->opened.exchange(true)) state_->release.set_value();
  }

 private:
  struct state {
    std::promise<void> entered;
    std::future<void> entered_future = entered.get_future();
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<bool> opened{false};
  };
  std::shared_ptr<state> state_;
};

/// Creates the tests' table: items(id INTEGER PRIMARY KEY, label TEXT UNIQUE NOT NULL).
inline void create_items(const std::string& path) {
  fwd::sqlite::connection db(path);
  db.exec("PRAGMA journal_mode=WAL");
  db.exec("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, label TEXT UNIQUE NOT NULL)");
}

/// A write that inserts `label` into items and returns the new rowid as text.
inline std::function<std::string(sqlite3*)> insert_item(std::string label) {
  return [label = std::move(label)](sqlite3* db) {
    auto conn = fwd::sqlite::connection::borrow(db);
    conn.prepare("INSERT INTO items(label) VALUES (?1)").bind(1, label).execute();
    return std::to_string(conn.last_insert_rowid());
  };
}

inline std::int64_t count(const std::string& path, const std::string& sql) {
  fwd::sqlite::connection db(path, SQLITE_OPEN_READONLY);
  auto stmt = db.prepare(sql);
  if (!stmt.step()) throw std::runtime_error("no row from " + sql);
  return stmt.column_int64(0);
}

}  // namespace fwd_test
