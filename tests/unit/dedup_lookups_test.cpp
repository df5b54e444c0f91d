// A replica confirms a forwarded write that its position went past unseen by the write's
// dedup row in its own copy of the database. Those lookups run on the LiteFS monitor's
// polling thread, which also polls the position every waiting call needs; under load they
// are batched: the lookups queued while the thread was busy are answered together, from
// one opening of the database (counted here with inotify on the database file).

#include <sqlite3.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <fwd/litefs/monitor.hpp>
#include <fwd/write/detail/dedup_lookup.hpp>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../support/temp_dir.hpp"
#include "../support/io_thread.hpp"

namespace fs = std::filesystem;
namespace litefs = fwd::litefs;
using namespace std::chrono_literals;
using fwd::detail::dedup_row;
using fwd::sqlite::request_id;

namespace {

request_id make_id(int n) {
  request_id id{};
  id[0] = static_cast<std::uint8_t>(n);
  id[15] = 0xa5;
  return id;
}

// A database whose dedup table holds the ids 0, 2, 4, ... below `count`.
void create_database(const fs::path& path, int count) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  const std::string create =
      std::string("CREATE TABLE ") + fwd::sqlite::dedup_table_name + " (id BLOB PRIMARY KEY, result BLOB)";
  REQUIRE(sqlite3_exec(db, create.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  const std::string insert = std::string("INSERT INTO ") + fwd::sqlite::dedup_table_name + " (id) VALUES (?1)";
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, insert.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
  for (int n = 0; n < count; n += 2) {
    const request_id id = make_id(n);
    sqlite3_bind_blob(stmt, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    REQUIRE(sqlite3_step(stmt) == SQLITE_DONE);
    sqlite3_reset(stmt);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

using fwd_test::io_thread;

struct answers {
  std::mutex mutex;
  std::vector<std::pair<int, dedup_row>> rows;
  std::set<std::thread::id> threads;
  std::promise<void> all;
  std::size_t expected = 0;

  void add(int n, dedup_row row) {
    std::lock_guard lock(mutex);
    rows.emplace_back(n, row);
    threads.insert(std::this_thread::get_id());
    if (rows.size() == expected) all.set_value();
  }
};

}  // namespace

TEST_CASE("dedup-row lookups queued while the polling thread is busy are answered together, "
          "from one opening of the database, each with its own answer") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path();
  const fs::path database = mount / "app.db";
  constexpr int count = 40;
  create_database(database, count);
  fwd_test::write_file(mount / ".lag", "+000000000\n");
  fwd_test::write_file(mount / "app.db-pos", "0000000000000005/000000000000002a\n");

  io_thread runner;
  litefs::monitor_options o;
  o.mount = mount;
  o.database = "app.db";
  o.poll_interval = 60s;  // only the jobs below run on the polling thread
  auto monitor = litefs::monitor::create(runner.io.get_executor(), o);
  monitor->start();

  // Hold the polling thread until every lookup is queued.
  std::promise<void> release;
  std::promise<std::thread::id> holding;
  REQUIRE(monitor->run_on_polling_thread([&, released = release.get_future().share()] {
    holding.set_value(std::this_thread::get_id());
    released.wait_for(10s);
  }));
  auto polling_thread = holding.get_future();
  REQUIRE(polling_thread.wait_for(5s) == std::future_status::ready);

  const int inotify = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  REQUIRE(inotify >= 0);
  // Closes too: inotify merges an event into an identical one still queued, and an open
  // then a close then an open are not identical.
  REQUIRE(inotify_add_watch(inotify, database.c_str(), IN_OPEN | IN_CLOSE_NOWRITE) >= 0);

  auto lookups = std::make_shared<fwd::detail::dedup_lookups>(database.string());
  answers got;
  got.expected = count;
  for (int n = 0; n < count; ++n) {
    REQUIRE(lookups->submit(*monitor, make_id(n), 100ms,
                            [&got, n](dedup_row row, const std::string&) { got.add(n, row); }));
  }
  {
    std::lock_guard lock(got.mutex);
    CHECK(got.rows.empty());  // nothing is read on the submitting thread
  }
  release.set_value();
  REQUIRE(got.all.get_future().wait_for(10s) == std::future_status::ready);

  std::lock_guard lock(got.mutex);
  for (const auto& [n, row] : got.rows) {
    INFO("request " << n);
    CHECK(row == (n % 2 == 0 ? dedup_row::present : dedup_row::absent));
  }
  CHECK(got.threads == std::set<std::thread::id>{polling_thread.get()});

  // One opening of app.db served all of them.
  int opens = 0;
  alignas(inotify_event) char buffer[4096];
  for (;;) {
    const ssize_t n = read(inotify, buffer, sizeof buffer);
    if (n <= 0) break;
    for (ssize_t at = 0; at < n;) {
      const auto* e = reinterpret_cast<const inotify_event*>(buffer + at);
      if (e->mask & IN_OPEN) ++opens;
      at += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
    }
  }
  close(inotify);
  CHECK(opens == 1);
  monitor->stop();
}

TEST_CASE("a dedup-row lookup with the monitor stopped is refused at once and never answered") {
  fwd_test::temp_dir tmp;
  fwd_test::write_file(tmp.path() / ".lag", "+000000000\n");
  fwd_test::write_file(tmp.path() / "app.db-pos", "0000000000000005/000000000000002a\n");
  io_thread runner;
  litefs::monitor_options o;
  o.mount = tmp.path();
  o.database = "app.db";
  auto monitor = litefs::monitor::create(runner.io.get_executor(), o);
  monitor->start();
  monitor->stop();
  auto lookups = std::make_shared<fwd::detail::dedup_lookups>((tmp.path() / "app.db").string());
  bool answered = false;
  CHECK_FALSE(lookups->submit(*monitor, make_id(1), 10ms, [&](dedup_row, const std::string&) { answered = true; }));
  CHECK_FALSE(answered);
}
