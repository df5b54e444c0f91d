// The primary's write executor on real LiteFS (static lease) when LiteFS is killed in the
// middle of a batch: the batch fails with a retryable error (rollback journal: COMMIT
// cannot take its lock, nothing was committed; WAL: COMMIT's write fails, which cannot
// prove nothing committed: maybe executed), the connection on the dead mount is closed
// without ROLLBACK, the process survives, and once LiteFS is back the retries, with the
// same request ids, commit exactly once.

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <fwd/litefs/detail/position_reader.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/write/executor.hpp>
#include <memory>
#include <string>
#include <thread>

#include "litefs_nodes.hpp"

namespace {

using outcome = std::pair<boost::system::error_code, std::string>;

std::future<outcome> write(fwd::sqlite::write_executor& writer, std::uint8_t id,
                           std::function<std::string(sqlite3*)> work) {
  auto done = std::make_shared<std::promise<outcome>>();
  auto f = done->get_future();
  fwd::sqlite::request_id rid{};
  rid[0] = id;
  writer.async_write(rid, std::move(work), [done](boost::system::error_code ec, std::string r, fwd::litefs::position) {
    done->set_value({ec, std::move(r)});
  });
  return f;
}

std::function<std::string(sqlite3*)> insert(std::string label) {
  return [label](sqlite3* db) {
    auto c = fwd::sqlite::connection::borrow(db);
    c.prepare("INSERT INTO items(label) VALUES (?1)").bind(1, label).execute();
    return label;
  };
}

outcome get(std::future<outcome>& f) {
  REQUIRE(f.wait_for(20s) == std::future_status::ready);
  return f.get();
}

void kill_litefs_during_a_batch(const std::string& journal_mode, fwd::errc batch_error) {
  litefs_cluster c({.nodes = 1});
  c.start_all();
  const std::string db = (c.mount(0) / litefs_tests::db_name).string();
  {
    fwd::sqlite::connection setup(db);
    setup.exec("PRAGMA journal_mode=" + journal_mode);
    setup.exec("CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT NOT NULL)");
  }

  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  fwd::litefs::monitor_options mo;
  mo.mount = c.mount(0);
  mo.database = litefs_tests::db_name;
  mo.poll_interval = 10ms;
  auto monitor = fwd::litefs::monitor::create(io.get_executor(), mo);
  monitor->start();
  REQUIRE(monitor->state()->role == fwd::litefs::role_kind::primary);

  std::atomic<int> opens{0};
  fwd::sqlite::write_options wo;
  wo.mount_generation = [monitor, db] { return monitor->writable_generation(db); };
  wo.on_open = [&opens](fwd::sqlite::connection&) { ++opens; };
  auto writer = std::make_unique<fwd::sqlite::write_executor>(io.get_executor(), db, wo);

  // The first write of the batch reads the table, then holds the writer while LiteFS dies.
  std::promise<void> entered, release;
  auto released = release.get_future().share();
  auto held = write(*writer, 1, [&](sqlite3* h) {
    auto conn = fwd::sqlite::connection::borrow(h);
    auto rows = conn.prepare("SELECT count(*) FROM items");
    rows.step();
    entered.set_value();
    released.wait();
    return std::string("held");
  });
  REQUIRE(entered.get_future().wait_for(20s) == std::future_status::ready);
  auto queued = write(*writer, 2, insert("queued"));
  c.kill(0);  // SIGKILL: the mount stays, dead (ECONNABORTED, then ENOTCONN)
  release.set_value();

  const outcome a = get(held);
  const outcome b = get(queued);
  INFO(a.second);
  INFO(b.second);
  CHECK(a.first == batch_error);
  CHECK(fwd::classify(a.first) != fwd::error_class::permanent);
  CHECK(b.first == fwd::errc::not_primary);  // the next batch: nothing ran on the dead mount
  CHECK(fwd::classify(b.first) == fwd::error_class::not_sent);

  c.restart(0);
  // Retries carry the same ids; they fail retryable until the writer is on the new mount.
  const auto until = std::chrono::steady_clock::now() + 20s;
  outcome again{make_error_code(fwd::errc::not_primary), {}};
  while (again.first && std::chrono::steady_clock::now() < until) {
    auto f = write(*writer, 2, insert("queued"));
    again = get(f);
    if (again.first) CHECK(fwd::classify(again.first) != fwd::error_class::permanent);
  }
  INFO(again.second);
  REQUIRE_FALSE(again.first);
  auto repeat = write(*writer, 2, insert("queued"));
  CHECK_FALSE(get(repeat).first);  // answered from the dedup table
  auto held_again = write(*writer, 1, [](sqlite3*) { return std::string("held"); });
  CHECK_FALSE(get(held_again).first);
  CHECK(opens >= 2);                // reopened on the new mount

  writer->stop();
  monitor->stop();
  work.reset();
  runner.join();
  CHECK(litefs_tests::sqlite_cli(db, "SELECT count(*) FROM items WHERE label = 'queued'") == "1");
}

}  // namespace

TEST_CASE("real LiteFS killed during a batch (rollback journal): COMMIT cannot lock, nothing "
          "committed, not sent, and the retries commit exactly once after LiteFS restarts") {
  REQUIRE_REAL_LITEFS();
  kill_litefs_during_a_batch("DELETE", fwd::errc::not_primary);
}

TEST_CASE("real LiteFS killed during a batch (WAL): COMMIT's write fails, maybe executed, the "
          "process survives, and the retries commit exactly once after LiteFS restarts") {
  REQUIRE_REAL_LITEFS();
  kill_litefs_during_a_batch("WAL", fwd::errc::commit_unknown);
}

TEST_CASE("real LiteFS: the writer's kept <db>-pos descriptor reads each COMMIT's new position, "
          "and after LiteFS restarts it is opened anew on the new mount") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 1});
  c.start_all();
  const std::string db = (c.mount(0) / litefs_tests::db_name).string();
  fwd::sqlite::connection conn(db);
  conn.exec("PRAGMA journal_mode=WAL");
  conn.exec("CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT NOT NULL)");
  std::uint64_t generation = 1;
  fwd::litefs::detail::position_reader reader(c.mount(0), litefs_tests::db_name,
                                              [&generation] { return generation; });
  boost::system::error_code ec;
  fwd::litefs::position last = reader.read(ec);
  REQUIRE_FALSE(ec);
  CHECK(reader.kept());  // on LiteFS's FUSE mount
  for (int i = 0; i < 200; ++i) {
    conn.exec("INSERT INTO items(label) VALUES ('x')");
    const fwd::litefs::position now = reader.read(ec);
    REQUIRE_FALSE(ec);
    // Each commit is one new transaction: the kept descriptor never shows a cached page.
    REQUIRE(now.txid == last.txid + 1);
    REQUIRE(now == fwd::litefs::read_position(c.mount(0), litefs_tests::db_name));
    last = now;
  }

  // LiteFS restarted: the descriptor points at the dead mount. A read then still gives
  // the new mount's position (by path), and a new generation opens the file anew.
  conn.close();
  c.stop(0);
  c.restart(0);
  const fwd::litefs::position after_restart = reader.read(ec);
  REQUIRE_FALSE(ec);
  CHECK(after_restart == fwd::litefs::read_position(c.mount(0), litefs_tests::db_name));
  generation = 2;
  fwd::sqlite::connection again(db);
  again.exec("INSERT INTO items(label) VALUES ('y')");
  const fwd::litefs::position next = reader.read(ec);
  REQUIRE_FALSE(ec);
  CHECK(reader.kept());
  CHECK(next.txid == after_restart.txid + 1);
}
