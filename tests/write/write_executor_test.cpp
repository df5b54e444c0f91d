// fwd::sqlite::write_executor: exactly once, group commit, savepoint isolation, failures,
// shutdown and completion tokens, on real SQLite files.

#include <atomic>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/write/executor.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "write_test_support.hpp"

using namespace std::chrono_literals;
using fwd_test::count;
using fwd_test::gate;
using fwd_test::insert_item;
using fwd_test::make_id;
using fwd_test::outcome;
using fwd_test::submit;
using fwd_test::temp_dir;
using fwd_test::wait;

namespace {

/// Options whose position callback counts commits (a stand-in for LiteFS's TXID).
fwd::sqlite::write_options counting(std::atomic<std::uint64_t>& commits) {
  fwd::sqlite::write_options options;
  options.position_after_commit = [&commits] { return fwd::litefs::position{++commits, 0}; };
  return options;
}

}  // namespace

TEST_CASE("a write runs on the writer thread, commits, and reports its result and TXID") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  std::atomic<std::uint64_t> commits{0};
  fwd::sqlite::write_executor writer(pool.get_executor(), path, counting(commits));

  std::atomic<bool> on_writer_thread{false};
  auto f = submit(writer, 1, [&](sqlite3* db) {
    on_writer_thread = std::this_thread::get_id() == writer.writer_thread_id();
    return insert_item("a")(db);
  });
  const outcome o = wait(f);
  REQUIRE_FALSE(o.ec);
  CHECK(o.result == "1");
  CHECK(o.txid == 1);
  CHECK(on_writer_thread);
  CHECK(writer.writer_thread_id() != std::this_thread::get_id());
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'a'") == 1);
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests") == 1);
}

TEST_CASE("exactly once: a repeated request id returns the stored result without running") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  std::atomic<std::uint64_t> commits{0};
  fwd::sqlite::write_executor writer(pool.get_executor(), path, counting(commits));

  std::atomic<int> runs{0};
  auto work = [&](sqlite3* db) {
    ++runs;
    return insert_item("once")(db);
  };
  auto first = submit(writer, 42, work);
  const outcome a = wait(first);
  REQUIRE_FALSE(a.ec);
  auto second = submit(writer, 42, work);
  const outcome b = wait(second);
  REQUIRE_FALSE(b.ec);
  CHECK(runs == 1);
  CHECK(b.result == a.result);
  CHECK(b.txid >= a.txid);  // read-your-writes holds for the repeat too
  CHECK(count(path, "SELECT count(*) FROM items") == 1);
}

TEST_CASE("a commit LiteFS may not keep (its position unmoved or unreadable after COMMIT) is maybe "
          "executed, never acknowledged, not even by a retry answered from its dedup row") {
  // A stand-in for LiteFS: each recorded commit moves the TXID by one; a commit that
  // LiteFS does not record (its lease lost under the commit) leaves it where it was, and
  // a dead mount makes the read after the commit fail.
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  std::atomic<std::uint64_t> txid{7};
  std::atomic<bool> recorded{true};
  std::atomic<bool> dies_after_commit{false};
  fwd::sqlite::write_options options;
  options.position_before_batch = [&] { return fwd::litefs::position{txid.load(), 0}; };
  options.position_after_commit = [&] {
    if (dies_after_commit) throw std::runtime_error("ENOTCONN: the mount is gone");
    if (recorded) ++txid;
    return fwd::litefs::position{txid.load(), 0};
  };
  fwd::sqlite::write_executor writer(pool.get_executor(), path, options);

  auto first = submit(writer, 1, insert_item("recorded"));
  const outcome a = wait(first);
  REQUIRE_FALSE(a.ec);
  CHECK(a.txid == 8);

  // The position read after this commit is the last one's: replicas holding TXID 8 do
  // not hold this write, and LiteFS may drop it. It must be neither acknowledged nor
  // claim 8.
  recorded = false;
  auto second = submit(writer, 2, insert_item("unrecorded"));
  const outcome b = wait(second);
  CHECK(b.ec == fwd::errc::commit_unknown);
  CHECK(fwd::classify(b.ec) == fwd::error_class::maybe_executed);
  CHECK(b.result.find("did not record") != std::string::npos);
  CHECK(b.txid == 0);

  // LiteFS dies right after the COMMIT: its position cannot be read.
  recorded = true;
  dies_after_commit = true;
  auto third = submit(writer, 3, insert_item("unreadable"));
  const outcome c = wait(third);
  CHECK(c.ec == fwd::errc::commit_unknown);
  CHECK(c.result.find("could not be read") != std::string::npos);
  CHECK(c.txid == 0);
  dies_after_commit = false;

  // SQLite did commit both here, yet LiteFS was not seen to record either: a retry with
  // the same id runs nothing and is answered "maybe executed" again, never with a
  // position that need not hold the write.
  std::atomic<int> reruns{0};
  auto rerun = [&](sqlite3* db) {
    ++reruns;
    return insert_item("again")(db);
  };
  for (std::uint64_t id : {2, 3}) {
    auto retry = submit(writer, id, rerun);
    const outcome r = wait(retry);
    CHECK(r.ec == fwd::errc::commit_unknown);
    CHECK(r.result.find("earlier attempt") != std::string::npos);
    CHECK(r.txid == 0);
  }
  CHECK(reruns == 0);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'unrecorded'") == 1);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'unreadable'") == 1);

  // LiteFS restores its history without the unrecorded commit (as a new primary's
  // snapshot would): the row is gone, and the retry runs the write again, now recorded.
  {
    fwd::sqlite::connection db(path);
    db.exec("DELETE FROM items WHERE label = 'unrecorded'");
    db.exec("DELETE FROM _fwd_requests WHERE id = X'020000000000000000000000000000fd'");
  }
  auto after_restore = submit(writer, 2, rerun);
  const outcome e = wait(after_restore);
  REQUIRE_FALSE(e.ec);
  CHECK(e.txid > 8);
  CHECK(reruns == 1);
  // Recorded this time: a repeat is answered from the dedup row, with nothing run.
  auto repeat_recorded = submit(writer, 2, rerun);
  const outcome f = wait(repeat_recorded);
  REQUIRE_FALSE(f.ec);
  CHECK(f.result == e.result);
  CHECK(reruns == 1);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'again'") == 1);

  // A repeat changes nothing: the unmoved position is at or past its first commit.
  auto repeat = submit(writer, 1, insert_item("recorded"));
  const outcome d = wait(repeat);
  REQUIRE_FALSE(d.ec);
  CHECK(d.txid >= 8);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'recorded'") == 1);
}

TEST_CASE("exactly once: repeats that arrive while the first is queued run once, all answered") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  std::atomic<std::uint64_t> commits{0};
  fwd::sqlite::write_executor writer(pool.get_executor(), path, counting(commits));
  gate g;

  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  std::atomic<int> runs{0};
  auto work = [&](sqlite3* db) {
    ++runs;
    return insert_item("queued")(db);
  };
  std::vector<std::future<outcome>> repeats;
  for (int i = 0; i < 3; ++i) repeats.push_back(submit(writer, 7, work));
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  std::vector<outcome> results;
  for (auto& f : repeats) results.push_back(wait(f));
  CHECK(runs == 1);
  for (const auto& o : results) {
    REQUIRE_FALSE(o.ec);
    CHECK(o.result == results[0].result);
    CHECK(o.txid == results[0].txid);
  }
  CHECK(count(path, "SELECT count(*) FROM items") == 1);
}

TEST_CASE("exactly once: a repeated id is found after the executor restarts on the same file") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  std::string first_result;
  {
    fwd::sqlite::write_executor writer(pool.get_executor(), path);
    auto f = submit(writer, 99, insert_item("survives"));
    const outcome o = wait(f);
    REQUIRE_FALSE(o.ec);
    first_result = o.result;
  }
  fwd::sqlite::write_executor restarted(pool.get_executor(), path);
  std::atomic<bool> ran{false};
  auto f = submit(restarted, 99, [&](sqlite3*) {
    ran = true;
    return std::string("ran again");
  });
  const outcome o = wait(f);
  REQUIRE_FALSE(o.ec);
  CHECK_FALSE(ran);
  CHECK(o.result == first_result);
  CHECK(count(path, "SELECT count(*) FROM items") == 1);
}

TEST_CASE("group commit: each write in a batch fails alone, the others commit together") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  std::atomic<std::uint64_t> commits{0};
  fwd::sqlite::write_executor writer(pool.get_executor(), path, counting(commits));
  gate g;

  {  // an existing row for the unique violation
    auto f = submit(writer, 1000, insert_item("taken"));
    REQUIRE_FALSE(wait(f).ec);
  }
  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  std::vector<std::future<outcome>> writes;
  for (int i = 0; i < 10; ++i) {
    if (i == 3) {
      writes.push_back(submit(writer, 100 + i, [](sqlite3* db) {
        insert_item("half-done")(db);  // rolled back with its savepoint
        return insert_item("taken")(db);
      }));
    } else if (i == 6) {
      writes.push_back(submit(writer, 100 + i, [](sqlite3* db) -> std::string {
        insert_item("before-throw")(db);
        throw std::runtime_error("the service's writer refused: label too long");
      }));
    } else {
      writes.push_back(submit(writer, 100 + i, insert_item("ok-" + std::to_string(i))));
    }
  }
  const auto commits_before = commits.load();
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  std::vector<outcome> results;
  for (auto& f : writes) results.push_back(wait(f));

  CHECK(results[3].ec == fwd::make_sqlite_error(2067));  // SQLITE_CONSTRAINT_UNIQUE kept
  CHECK(results[3].result.find("UNIQUE constraint failed: items.label") != std::string::npos);
  CHECK(results[3].txid == 0);
  CHECK(results[6].ec == fwd::errc::remote_failure);
  CHECK(results[6].result == "the service's writer refused: label too long");
  CHECK(results[6].txid == 0);
  for (int i : {0, 1, 2, 4, 5, 7, 8, 9}) {
    INFO("write " << i);
    CHECK_FALSE(results[static_cast<std::size_t>(i)].ec);
    CHECK(results[static_cast<std::size_t>(i)].txid == results[0].txid);  // one batch
  }
  CHECK(commits.load() == commits_before + 2);  // the gate's COMMIT, then one for all ten
  CHECK(count(path, "SELECT count(*) FROM items WHERE label LIKE 'ok-%'") == 8);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label IN ('half-done', 'before-throw')") ==
        0);
  // A failed write records no request id: a retry runs again.
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests") == 1 + 1 + 8);
  auto retry = submit(writer, 103, insert_item("retried"));
  CHECK_FALSE(wait(retry).ec);
}

TEST_CASE("group commit: a write leaving a deferred foreign key unresolved fails alone") {
  temp_dir dir;
  const auto path = dir.file("db");
  {
    fwd::sqlite::connection db(path);
    db.exec("CREATE TABLE parent(id INTEGER PRIMARY KEY)");
    db.exec(
        "CREATE TABLE child(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) "
        "DEFERRABLE INITIALLY DEFERRED)");
  }
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_options options;
  options.on_open = [](fwd::sqlite::connection& db) { db.exec("PRAGMA foreign_keys=ON"); };
  fwd::sqlite::write_executor writer(pool.get_executor(), path, options);
  gate g;
  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  auto good = submit(writer, 2, [](sqlite3* db) {
    fwd::sqlite::connection::borrow(db).exec(
        "INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1)");
    return std::string("ok");
  });
  auto orphan = submit(writer, 3, [](sqlite3* db) {
    fwd::sqlite::connection::borrow(db).exec("INSERT INTO child VALUES (2, 77)");
    return std::string("orphan");
  });
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  CHECK_FALSE(wait(good).ec);
  CHECK(wait(orphan).ec == fwd::make_sqlite_error(787));  // SQLITE_CONSTRAINT_FOREIGNKEY
  CHECK(count(path, "SELECT count(*) FROM child") == 1);
}

TEST_CASE("group commit: if COMMIT fails, every write of the batch fails and none is applied") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  static std::atomic<bool> refuse_commit{false};
  refuse_commit = false;
  fwd::sqlite::write_options options;
  options.on_open = [](fwd::sqlite::connection& db) {
    // A commit hook that returns non-zero turns COMMIT into a rollback.
    sqlite3_commit_hook(
        db.native_handle(), [](void*) -> int { return refuse_commit ? 1 : 0; }, nullptr);
  };
  fwd::sqlite::write_executor writer(pool.get_executor(), path, options);
  gate g;
  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  std::vector<std::future<outcome>> writes;
  for (int i = 0; i < 5; ++i) {
    writes.push_back(submit(writer, 10 + i, [i](sqlite3* db) {
      if (i == 4) refuse_commit = true;  // the batch's last write arms the failure
      return insert_item("doomed-" + std::to_string(i))(db);
    }));
  }
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  for (auto& f : writes) {
    const outcome o = wait(f);
    CHECK(o.ec == fwd::make_sqlite_error(SQLITE_CONSTRAINT_COMMITHOOK));
    CHECK(o.txid == 0);
  }
  CHECK(count(path, "SELECT count(*) FROM items") == 0);
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests WHERE result = CAST('gate' AS BLOB)") == 1);
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests") == 1);

  // Nothing was recorded, so the retries (same ids) run and commit.
  refuse_commit = false;
  auto retry = submit(writer, 10, [](sqlite3* db) { return insert_item("doomed-0")(db); });
  CHECK_FALSE(wait(retry).ec);
  CHECK(count(path, "SELECT count(*) FROM items") == 1);
}

TEST_CASE("group commit: 200 concurrent writes take far fewer than 200 commits") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(2);
  std::atomic<std::uint64_t> commits{0};
  auto options = counting(commits);
  options.max_batch = 64;
  fwd::sqlite::write_executor writer(pool.get_executor(), path, options);
  gate g;
  auto held = submit(writer, 1, g.work());
  g.wait_entered();

  // Four threads submit 199 writes while the writer is busy.
  std::vector<std::future<outcome>> writes(199);
  std::vector<std::thread> submitters;
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&, t] {
      for (std::size_t i = static_cast<std::size_t>(t); i < writes.size(); i += 4) {
        writes[i] = submit(writer, 100 + i, insert_item("row-" + std::to_string(i)));
      }
    });
  }
  for (auto& s : submitters) s.join();
  CHECK(writer.queued() == 199);
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  for (auto& f : writes) CHECK_FALSE(wait(f).ec);
  // The gate's batch, then 199 writes in batches of at most 64: 64 + 64 + 64 + 7.
  CHECK(commits.load() == 5);
  CHECK(count(path, "SELECT count(*) FROM items") == 199);
}

TEST_CASE("group commit: a full batch does not wait for max_batch_delay, a partial one does") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  std::atomic<std::uint64_t> commits{0};
  auto options = counting(commits);
  options.max_batch = 50;
  options.max_batch_delay = 60s;  // far longer than the test may take
  fwd::sqlite::write_executor writer(pool.get_executor(), path, options);

  std::vector<std::future<outcome>> writes;
  for (int i = 0; i < 50; ++i)
    writes.push_back(submit(writer, 100 + i, insert_item(std::to_string(i))));
  for (auto& f : writes) CHECK(wait(f).txid == 1);  // all in the first and only commit
  CHECK(commits.load() == 1);

  writer.stop();
  options.max_batch_delay = 50ms;
  fwd::sqlite::write_executor delayed(pool.get_executor(), path, options);
  const auto start = std::chrono::steady_clock::now();
  auto lone = submit(delayed, 1, insert_item("lone"));
  CHECK_FALSE(wait(lone).ec);
  CHECK(std::chrono::steady_clock::now() - start >= 50ms);
}

TEST_CASE("old request ids are pruned inside a write transaction") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_options options;
  options.prune_every_commits = 1;
  options.dedup_retention = std::chrono::hours(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path, options);
  auto first = submit(writer, 1, insert_item("first"));
  REQUIRE_FALSE(wait(first).ec);
  {  // age id 1's row by two hours, and add a row from 1970
    fwd::sqlite::connection db(path);
    db.exec("UPDATE _fwd_requests SET created_at = created_at - 7200000");
    db.exec("INSERT INTO _fwd_requests(id, result, created_at) VALUES (x'00', x'00', 0)");
  }
  auto second = submit(writer, 2, insert_item("second"));
  REQUIRE_FALSE(wait(second).ec);
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests") == 1);  // only id 2's
  // A repeat of a pruned id runs again: retention must outlast every retry.
  auto again = submit(writer, 1, insert_item("first"));
  CHECK(wait(again).ec == fwd::make_sqlite_error(2067));
}

TEST_CASE("beyond max_queue a write completes at once with overloaded, never inside the call") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::io_context io;
  fwd::sqlite::write_options options;
  options.max_queue = 2;
  fwd::sqlite::write_executor writer(io, path, options);
  gate g;
  boost::system::error_code held_ec = fwd::errc::timeout;
  writer.async_write(
      make_id(1), g.work(),
      [&](boost::system::error_code ec, std::string, fwd::litefs::position) { held_ec = ec; });
  g.wait_entered();
  int queued_done = 0;
  for (int i = 0; i < 2; ++i) {
    writer.async_write(make_id(10 + static_cast<std::uint64_t>(i)), insert_item(std::to_string(i)),
                       [&](boost::system::error_code ec, std::string, fwd::litefs::position) {
                         CHECK_FALSE(ec);
                         ++queued_done;
                       });
  }
  bool refused = false;
  std::string why;
  writer.async_write(make_id(20), insert_item("too many"),
                     [&](boost::system::error_code ec, std::string result, fwd::litefs::position) {
                       refused = ec == fwd::errc::overloaded;
                       why = result;
                     });
  CHECK_FALSE(refused);  // not inside the initiating call
  io.run_one();          // the refusal is ready without the writer
  CHECK(refused);
  CHECK(why.find("max_queue 2") != std::string::npos);
  CHECK(fwd::classify(fwd::make_error_code(fwd::errc::overloaded)) == fwd::error_class::not_sent);
  g.open();
  io.run();  // the held write and the two queued ones
  CHECK_FALSE(held_ec);
  CHECK(queued_done == 2);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'too many'") == 0);
}

TEST_CASE("stop lets the running batch finish, cancels queued writes, and refuses new ones") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path);
  gate g;
  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  auto queued_a = submit(writer, 2, insert_item("a"));
  auto queued_b = submit(writer, 3, insert_item("b"));
  auto stopping = std::async(std::launch::async, [&] { writer.stop(); });
  // Queued writes are cancelled while the running batch still holds the writer.
  CHECK(wait(queued_a).ec == fwd::errc::cancelled);
  CHECK(wait(queued_b).ec == fwd::errc::cancelled);
  CHECK(stopping.wait_for(0s) == std::future_status::timeout);
  g.open();
  CHECK_FALSE(wait(held).ec);  // the running batch committed
  REQUIRE(stopping.wait_for(30s) == std::future_status::ready);
  auto late = submit(writer, 4, insert_item("late"));
  CHECK(wait(late).ec == fwd::errc::cancelled);
  CHECK(count(path, "SELECT count(*) FROM items") == 0);
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests") == 1);
  writer.stop();  // idempotent
}

TEST_CASE("completion token: callback runs on the handler's associated executor") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::io_context io;
  fwd::sqlite::write_executor writer(io.get_executor(), path);
  std::thread::id ran_on;
  std::string result;
  writer.async_write(make_id(1), insert_item("cb"),
                     [&](boost::system::error_code ec, std::string r, fwd::litefs::position) {
                       CHECK_FALSE(ec);
                       result = r;
                       ran_on = std::this_thread::get_id();
                     });
  io.run();  // returns only after the completion: the pending write keeps io busy
  CHECK(result == "1");
  CHECK(ran_on == std::this_thread::get_id());
}

TEST_CASE("completion token: use_future") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  std::atomic<std::uint64_t> commits{0};
  fwd::sqlite::write_executor writer(pool.get_executor(), path, counting(commits));
  std::future<std::tuple<std::string, fwd::litefs::position>> f =
      writer.async_write(make_id(1), insert_item("future"), boost::asio::use_future);
  REQUIRE(f.wait_for(30s) == std::future_status::ready);
  const auto [result, pos] = f.get();
  CHECK(result == "1");
  CHECK(pos.txid == 1);

  auto failing = writer.async_write(make_id(2), insert_item("future"), boost::asio::use_future);
  REQUIRE(failing.wait_for(30s) == std::future_status::ready);
  try {
    failing.get();
    FAIL("a unique violation did not throw through the future");
  } catch (const boost::system::system_error& e) {
    CHECK(e.code() == fwd::make_sqlite_error(2067));
  }
}

TEST_CASE("completion token: use_awaitable") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::io_context io;
  fwd::sqlite::write_executor writer(io.get_executor(), path);
  std::string result;
  boost::system::error_code caught;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        auto [r, txid] =
            co_await writer.async_write(make_id(1), insert_item("co"), boost::asio::use_awaitable);
        result = r;
        (void)txid;
        try {
          co_await writer.async_write(make_id(2), insert_item("co"), boost::asio::use_awaitable);
        } catch (const boost::system::system_error& e) {
          caught = e.code();
        }
      },
      boost::asio::detached);
  io.run();
  CHECK(result == "1");
  CHECK(caught == fwd::make_sqlite_error(2067));
}

TEST_CASE("completion token: deferred starts nothing until invoked") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::io_context io;
  fwd::sqlite::write_executor writer(io.get_executor(), path);
  std::atomic<bool> ran{false};
  auto op = writer.async_write(
      make_id(1),
      [&](sqlite3* db) {
        ran = true;
        return insert_item("deferred")(db);
      },
      boost::asio::deferred);
  io.run();
  CHECK_FALSE(ran);
  io.restart();
  std::string result;
  std::move(op)([&](boost::system::error_code ec, std::string r, fwd::litefs::position) {
    CHECK_FALSE(ec);
    result = r;
  });
  io.run();
  CHECK(ran);
  CHECK(result == "1");
}

TEST_CASE("a replica's refusal (SQLITE_READONLY) fails the write with not_primary") {
  // LiteFS refuses writes on a replica with SQLITE_READONLY (1544) or SQLITE_IOERR (778).
  // Here a query_only connection and a read-only connection refuse the same way; the
  // LiteFS simulation's tests cover the replica's exact errors.
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);

  SECTION("PRAGMA query_only") {
    fwd::sqlite::write_options options;
    options.on_open = [](fwd::sqlite::connection& db) { db.exec("PRAGMA query_only=1"); };
    fwd::sqlite::write_executor writer(pool.get_executor(), path, options);
    auto f = submit(writer, 1, insert_item("refused"));
    const outcome o = wait(f);
    CHECK(o.ec == fwd::errc::not_primary);
    CHECK(o.result.find("readonly") != std::string::npos);
    CHECK(fwd::classify(o.ec) == fwd::error_class::not_sent);
  }
  SECTION("opened read-only, with the dedup table present") {
    {
      fwd::sqlite::write_executor primary(pool.get_executor(), path);
      auto f = submit(primary, 1, insert_item("on the primary"));
      REQUIRE_FALSE(wait(f).ec);
    }
    fwd::sqlite::write_options options;
    options.open_flags = SQLITE_OPEN_READONLY;
    fwd::sqlite::write_executor writer(pool.get_executor(), path, options);
    std::vector<std::future<outcome>> writes;
    for (int i = 0; i < 3; ++i)
      writes.push_back(submit(writer, 10 + i, insert_item(std::to_string(i))));
    for (auto& f : writes) CHECK(wait(f).ec == fwd::errc::not_primary);
  }
  CHECK(count(path, "SELECT count(*) FROM items WHERE label != 'on the primary'") == 0);
}

TEST_CASE("SQLITE_IOERR_WRITE (778) inside a write fails the whole batch with not_primary") {
  // In WAL mode LiteFS refuses a replica's write with 778: the node lost the primary role,
  // so no write of the batch may commit there.
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path);
  gate g;
  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  auto good = submit(writer, 2, insert_item("good"));
  auto refused = submit(writer, 3, [](sqlite3* db) -> std::string {
    insert_item("refused")(db);
    throw fwd::error(fwd::make_sqlite_error(SQLITE_IOERR_WRITE), "disk I/O error");
  });
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  const outcome a = wait(good);
  const outcome b = wait(refused);
  CHECK(a.ec == fwd::errc::not_primary);
  CHECK(b.ec == fwd::errc::not_primary);
  CHECK(b.result.find("778") != std::string::npos);
  CHECK(count(path, "SELECT count(*) FROM items") == 0);
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests") == 1);  // the gate's only
}

namespace {

// The batch: a good write, one that runs transaction control, a good write.
void check_refused_alone(const std::string& statement, bool swallow) {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path);
  gate g;
  auto held = submit(writer, 1, g.work());
  g.wait_entered();
  auto before = submit(writer, 2, insert_item("before"));
  auto rogue = submit(writer, 3, [statement, swallow](sqlite3* db) {
    insert_item("rogue")(db);
    if (swallow) {
      // SQLite's refusal ignored: the write must fail all the same.
      sqlite3_exec(db, statement.c_str(), nullptr, nullptr, nullptr);
    } else {
      fwd::sqlite::connection::borrow(db).exec(statement);
    }
    insert_item("rogue after")(db);
    return std::string("rogue");
  });
  auto after = submit(writer, 4, insert_item("after"));
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  CHECK_FALSE(wait(before).ec);
  CHECK_FALSE(wait(after).ec);
  const outcome r = wait(rogue);
  CHECK(r.ec == fwd::errc::bad_argument);
  CHECK(fwd::classify(r.ec) == fwd::error_class::permanent);
  CHECK(r.result.find("runs inside fwd's transaction") != std::string::npos);
  CHECK(r.result.find("do not BEGIN, COMMIT") != std::string::npos);
  // The two good writes committed once each, nothing of the rogue one.
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'before'") == 1);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'after'") == 1);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label LIKE 'rogue%'") == 0);
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests") == 3);  // the gate, before, after
  // A retry of the good ones is answered from the dedup table, not run again.
  auto again = submit(writer, 2, insert_item("before"));
  CHECK_FALSE(wait(again).ec);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'before'") == 1);
  // The writer goes on, and fwd's own savepoint still works for the next writes.
  auto later = submit(writer, 5, insert_item("later"));
  CHECK_FALSE(wait(later).ec);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'later'") == 1);
}

}  // namespace

TEST_CASE("a write that runs transaction control is refused alone, and its batch commits") {
  SECTION("COMMIT") { check_refused_alone("COMMIT", false); }
  SECTION("ROLLBACK") { check_refused_alone("ROLLBACK", false); }
  SECTION("END") { check_refused_alone("END", false); }
  SECTION("BEGIN") { check_refused_alone("BEGIN", false); }
  SECTION("RELEASE of fwd's savepoint") { check_refused_alone("RELEASE fwd_write", false); }
  SECTION("ROLLBACK TO fwd's savepoint") { check_refused_alone("ROLLBACK TO FWD_WRITE", false); }
  SECTION("COMMIT, its error swallowed") { check_refused_alone("COMMIT", true); }
}

TEST_CASE("a write's own savepoints nest inside fwd's") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path);
  auto w = submit(writer, 1, [](sqlite3* db) {
    auto c = fwd::sqlite::connection::borrow(db);
    c.exec("SAVEPOINT mine");
    insert_item("kept")(db);
    c.exec("SAVEPOINT inner");
    insert_item("undone")(db);
    c.exec("ROLLBACK TO inner");
    c.exec("RELEASE inner");
    c.exec("RELEASE mine");
    return std::string("ok");
  });
  const outcome o = wait(w);
  CHECK_FALSE(o.ec);
  CHECK(o.result == "ok");
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'kept'") == 1);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'undone'") == 0);
}

TEST_CASE("a write's fwd::error keeps its code, an empty work function is bad_argument") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path);
  auto first = submit(writer, 1, insert_item("dup"));
  REQUIRE_FALSE(wait(first).ec);
  auto checked = submit(writer, 2, [](sqlite3* db) -> std::string {
    throw fwd::error(fwd::make_error_code(fwd::errc::bad_argument), "label must not be empty");
    (void)db;
  });
  const outcome o = wait(checked);
  CHECK(o.ec == fwd::errc::bad_argument);
  CHECK(o.result.find("label must not be empty") != std::string::npos);
  auto empty = submit(writer, 3, {});
  CHECK(wait(empty).ec == fwd::errc::bad_argument);
}

TEST_CASE("writes can run on an executor the user gives instead of an owned thread") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool completions(1);
  boost::asio::thread_pool blocking(2);
  std::atomic<std::uint64_t> commits{0};
  auto options = counting(commits);
  options.work_executor = blocking.get_executor();
  fwd::sqlite::write_executor writer(completions.get_executor(), path, options);
  CHECK(writer.writer_thread_id() == std::thread::id());

  std::atomic<bool> in_pool{false};
  auto f = submit(writer, 1, [&](sqlite3* db) {
    in_pool = blocking.get_executor().running_in_this_thread();
    return insert_item("pooled")(db);
  });
  const outcome o = wait(f);
  REQUIRE_FALSE(o.ec);
  CHECK(in_pool);

  std::vector<std::future<outcome>> writes;
  for (int i = 0; i < 100; ++i)
    writes.push_back(submit(writer, 100 + i, insert_item(std::to_string(i))));
  for (auto& w : writes) CHECK_FALSE(wait(w).ec);
  CHECK(count(path, "SELECT count(*) FROM items") == 101);
  writer.stop();
  auto late = submit(writer, 5, insert_item("late"));
  CHECK(wait(late).ec == fwd::errc::cancelled);
}

TEST_CASE("per-operation cancellation drops a write that has not started") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::io_context io;
  fwd::sqlite::write_executor writer(io.get_executor(), path);
  gate g;
  boost::system::error_code held_ec = fwd::errc::timeout;
  writer.async_write(
      make_id(1), g.work(),
      [&](boost::system::error_code ec, std::string, fwd::litefs::position) { held_ec = ec; });
  g.wait_entered();

  std::atomic<int> runs{0};
  auto work = [&](sqlite3* db) {
    ++runs;
    return insert_item("shared")(db);
  };
  boost::asio::cancellation_signal cancel_alone;
  boost::asio::cancellation_signal cancel_one_of_two;
  std::vector<boost::system::error_code> ecs(3, fwd::errc::timeout);
  auto record = [&](std::size_t i) {
    return [&ecs, i](boost::system::error_code ec, std::string, fwd::litefs::position) { ecs[i] = ec; };
  };
  // A write with a single caller: cancelling drops it.
  writer.async_write(make_id(2), insert_item("dropped"),
                     boost::asio::bind_cancellation_slot(cancel_alone.slot(), record(0)));
  // A write two callers wait for: cancelling one leaves it running for the other.
  writer.async_write(make_id(3), work,
                     boost::asio::bind_cancellation_slot(cancel_one_of_two.slot(), record(1)));
  writer.async_write(make_id(3), work, record(2));
  CHECK(writer.queued() == 2);
  cancel_alone.emit(boost::asio::cancellation_type::terminal);
  cancel_one_of_two.emit(boost::asio::cancellation_type::partial);
  CHECK(writer.queued() == 1);
  g.open();
  io.run();
  CHECK_FALSE(held_ec);
  CHECK(ecs[0] == fwd::errc::cancelled);
  CHECK(ecs[1] == fwd::errc::cancelled);
  CHECK_FALSE(ecs[2]);
  CHECK(runs == 1);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'dropped'") == 0);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'shared'") == 1);
}

TEST_CASE("per-operation cancellation does not stop a write that has started") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::io_context io;
  fwd::sqlite::write_executor writer(io.get_executor(), path);
  gate g;
  boost::asio::cancellation_signal cancel;
  boost::system::error_code ec = fwd::errc::timeout;
  writer.async_write(
      make_id(1), g.work(),
      boost::asio::bind_cancellation_slot(
          cancel.slot(), [&](boost::system::error_code e, std::string, fwd::litefs::position) { ec = e; }));
  g.wait_entered();
  cancel.emit(boost::asio::cancellation_type::terminal);
  g.open();
  io.run();
  CHECK_FALSE(ec);
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests") == 1);
}

TEST_CASE("what a write prepares is kept for the next write: reset and its bindings cleared") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd::sqlite::connection(path).exec("PRAGMA journal_mode=WAL; CREATE TABLE notes(id INTEGER PRIMARY KEY, label TEXT)");
  boost::asio::thread_pool pool(1);
  std::atomic<std::uint64_t> commits{0};
  fwd::sqlite::write_executor writer(pool.get_executor(), path, counting(commits));

  const std::string insert = "INSERT INTO notes(label) VALUES (?1)";
  const std::string select = "SELECT label FROM notes ORDER BY id";
  sqlite3_stmt* first_insert = nullptr;
  sqlite3_stmt* first_select = nullptr;
  auto first = submit(writer, 1, [&](sqlite3* db) {
    auto conn = fwd::sqlite::connection::borrow(db);
    auto stmt = conn.prepare(insert);
    first_insert = stmt.native_handle();
    stmt.bind(1, "a").execute();
    stmt.reset().bind(1, "b").execute();
    auto rows = conn.prepare(select);
    first_select = rows.native_handle();
    rows.step();  // left on its first row
    return std::string("1");
  });
  REQUIRE_FALSE(wait(first).ec);

  sqlite3_stmt* second_insert = nullptr;
  sqlite3_stmt* nested_insert = nullptr;
  std::string first_label;
  auto second = submit(writer, 2, [&](sqlite3* db) {
    auto conn = fwd::sqlite::connection::borrow(db);
    auto stmt = conn.prepare(insert);
    second_insert = stmt.native_handle();
    // The same SQL while the kept statement is in use: another statement.
    auto nested = conn.prepare(insert);
    nested_insert = nested.native_handle();
    stmt.execute();  // nothing bound: label NULL
    auto rows = conn.prepare(select);
    if (rows.step()) first_label = std::string(rows.column_text(0));
    return std::string("2");
  });
  REQUIRE_FALSE(wait(second).ec);
  CHECK(second_insert == first_insert);
  CHECK(nested_insert != first_insert);
  CHECK(first_label == "a");  // from the first row again
  CHECK(count(path, "SELECT count(*) FROM notes WHERE label IS NULL") == 1);
  CHECK(count(path, "SELECT count(*) FROM notes") == 3);
  (void)first_select;

  // A statement kept beyond its write is finalized by its owner and never handed out again.
  fwd::sqlite::statement kept;
  auto third = submit(writer, 3, [&](sqlite3* db) {
    kept = fwd::sqlite::connection::borrow(db).prepare("SELECT count(*) FROM notes");
    return std::string("3");
  });
  REQUIRE_FALSE(wait(third).ec);
  kept = {};
  for (std::uint64_t id = 4; id < 8; ++id) {
    auto next = submit(writer, id, [&](sqlite3* db) {
      auto conn = fwd::sqlite::connection::borrow(db);
      conn.prepare(insert).bind(1, "more").execute();
      auto stmt = conn.prepare("SELECT count(*) FROM notes");
      if (!stmt.step()) throw std::runtime_error("no count");
      return std::to_string(stmt.column_int64(0));
    });
    const outcome o = wait(next);
    REQUIRE_FALSE(o.ec);
    CHECK(o.result == std::to_string(id));
  }
  writer.stop();
}
