// fwd::sqlite::write_executor when the file system under the database goes away in the
// middle of a batch, as a LiteFS mount does when LiteFS stops under the service: real
// SQLite files, the failures injected by a VFS that answers ENOTCONN (fault_vfs.hpp).

#include <sqlite3.h>

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <catch2/catch.hpp>
#include <fwd/error.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/write/executor.hpp>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fault_vfs.hpp"
#include "write_test_support.hpp"

using fwd_test::count;
using fwd_test::fault_vfs;
using fwd_test::gate;
using fwd_test::insert_item;
using fwd_test::outcome;
using fwd_test::submit;
using fwd_test::temp_dir;
using fwd_test::wait;

namespace {

// What the writer's connections did: how many were opened, and the statements they ran
// while the fault was armed.
struct connection_log {
  std::atomic<int> opens{0};
  std::atomic<bool> recording{false};
  std::mutex mutex;
  std::vector<std::string> statements;

  bool ran_rollback() {
    std::lock_guard lock(mutex);
    for (const auto& s : statements)
      if (s.rfind("ROLLBACK", 0) == 0) return true;
    return false;
  }
};

fwd::sqlite::write_options logged(connection_log& log, bool full_sync) {
  fwd::sqlite::write_options options;
  options.open_flags = fwd::sqlite::default_open_flags | SQLITE_OPEN_URI;
  options.on_open = [&log, full_sync](fwd::sqlite::connection& db) {
    ++log.opens;
    if (full_sync) db.exec("PRAGMA synchronous=FULL");
    sqlite3_trace_v2(
        db.native_handle(), SQLITE_TRACE_STMT,
        [](unsigned, void* context, void* stmt, void*) -> int {
          auto* l = static_cast<connection_log*>(context);
          if (!l->recording) return 0;
          std::lock_guard lock(l->mutex);
          l->statements.emplace_back(sqlite3_sql(static_cast<sqlite3_stmt*>(stmt)));
          return 0;
        },
        &log);
  };
  return options;
}

// Disarms the fault whatever happens in the test.
struct disarm_at_end {
  ~disarm_at_end() { fault_vfs::instance().disarm(); }
};

}  // namespace

TEST_CASE("a write's statement failing with an I/O error (the mount went away) fails its batch "
          "retryable, without ROLLBACK, and the connection is reopened") {
  temp_dir dir;
  const auto path = dir.file("db");
  {
    fwd::sqlite::connection db(path);
    db.exec("PRAGMA journal_mode=DELETE");
    db.exec("CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT UNIQUE NOT NULL)");
  }
  auto& vfs = fault_vfs::instance();
  disarm_at_end disarm;
  connection_log log;
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), fault_vfs::uri(path), logged(log, false));
  gate g;
  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  // One batch: the mount goes away inside the first write, whose INSERT then fails (the
  // journal cannot be created); the second write never had a chance.
  auto lost = submit(writer, 2, [&](sqlite3* db) {
    log.recording = true;
    vfs.arm(fault_vfs::fault::everything);
    return insert_item("lost")(db);
  });
  auto other = submit(writer, 3, insert_item("other"));
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  const outcome a = wait(lost);
  const outcome b = wait(other);
  log.recording = false;
  vfs.disarm();
  INFO(a.result);
  CHECK(vfs.failures() > 0);
  CHECK(a.ec == fwd::errc::not_primary);
  CHECK(fwd::classify(a.ec) == fwd::error_class::not_sent);
  CHECK(a.result.find("went away") != std::string::npos);
  CHECK(b.ec == fwd::errc::not_primary);
  CHECK(fwd::classify(b.ec) == fwd::error_class::not_sent);
  CHECK_FALSE(log.ran_rollback());  // closing the connection was the rollback
  CHECK(count(path, "SELECT count(*) FROM items") == 0);

  // The mount is back: the next batch runs on a new connection, and the retries commit.
  auto retried = submit(writer, 2, insert_item("lost"));
  auto retried_other = submit(writer, 3, insert_item("other"));
  CHECK_FALSE(wait(retried).ec);
  CHECK_FALSE(wait(retried_other).ec);
  CHECK(log.opens == 2);
  CHECK(count(path, "SELECT count(*) FROM items") == 2);
}

TEST_CASE("a COMMIT that fails after its frames were written completes its writes as maybe "
          "executed, and a retry with the same request id gets the stored result") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);  // WAL
  auto& vfs = fault_vfs::instance();
  disarm_at_end disarm;
  connection_log log;
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), fault_vfs::uri(path), logged(log, true));
  gate g;
  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  std::atomic<int> runs{0};
  auto first = submit(writer, 10, [&](sqlite3* db) {
    ++runs;
    return insert_item("first")(db);
  });
  auto second = submit(writer, 11, [&](sqlite3* db) {
    ++runs;
    std::string rowid = insert_item("second")(db);
    // The WAL frames of this batch's COMMIT get written; syncing them fails, as it does
    // when LiteFS dies in the middle of the commit.
    log.recording = true;
    vfs.arm(fault_vfs::fault::wal_sync);
    return rowid;
  });
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  const outcome a = wait(first);
  const outcome b = wait(second);
  log.recording = false;
  vfs.disarm();
  INFO(a.result);
  CHECK(vfs.failures() > 0);
  for (const outcome& o : {a, b}) {
    CHECK(o.ec == fwd::errc::commit_unknown);
    CHECK(fwd::classify(o.ec) == fwd::error_class::maybe_executed);
    CHECK(o.result.find("same request id") != std::string::npos);
    CHECK(o.txid == 0);
  }
  CHECK_FALSE(log.ran_rollback());
  // "Maybe" was right: the frames reached the database file, so the writes did commit.
  CHECK(count(path, "SELECT count(*) FROM items") == 2);

  // The retries carry the same ids: the dedup table answers them, nothing runs twice.
  auto again = submit(writer, 10, [&](sqlite3* db) {
    ++runs;
    return insert_item("first, twice")(db);
  });
  const outcome c = wait(again);
  CHECK_FALSE(c.ec);
  CHECK(runs == 2);
  CHECK(count(path, "SELECT count(*) FROM items") == 2);
  CHECK(log.opens == 2);  // the connection was dropped after the failed COMMIT
}

TEST_CASE("a COMMIT refused for its lock (SQLITE_BUSY) proves nothing committed: not sent") {
  temp_dir dir;
  const auto path = dir.file("db");
  {
    fwd::sqlite::connection db(path);
    db.exec("PRAGMA journal_mode=DELETE");
    db.exec("CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT UNIQUE NOT NULL)");
  }
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_options options;
  options.busy_timeout = std::chrono::milliseconds(0);
  fwd::sqlite::write_executor writer(pool.get_executor(), path, options);
  // A reader holding a SHARED lock keeps COMMIT from taking its EXCLUSIVE lock.
  fwd::sqlite::connection reader(path, SQLITE_OPEN_READONLY);
  reader.exec("BEGIN");
  auto rows = reader.prepare("SELECT count(*) FROM items");
  REQUIRE(rows.step());
  auto busy = submit(writer, 20, insert_item("busy"));
  const outcome o = wait(busy);
  INFO(o.result);
  CHECK((o.ec.value() & 0xff) == SQLITE_BUSY);
  CHECK(fwd::classify(o.ec) == fwd::error_class::not_sent);
  rows.reset();
  reader.exec("COMMIT");
  CHECK(count(path, "SELECT count(*) FROM items") == 0);
  auto retried = submit(writer, 20, insert_item("busy"));
  CHECK_FALSE(wait(retried).ec);
  CHECK(count(path, "SELECT count(*) FROM items") == 1);
}
