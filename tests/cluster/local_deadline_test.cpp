// A write on the primary itself (the local path) behind a slow write: its deadline, its
// cancellation and the blocking call's bound. One fwd::node, primary of a one-node
// simulated cluster; the rows are counted in the SQLite file.

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <future>
#include <fwd/migrate.hpp>
#include <fwd/node.hpp>
#include <memory>
#include <string>
#include <thread>

#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

const fwd::procedure<std::int64_t(std::string)> add_label{"test.local.add_label"};
const fwd::procedure<std::int64_t(std::string)> slow_label{"test.local.slow_label"};

std::int64_t insert_label(sqlite3* db, const std::string& label) {
  auto c = fwd::sqlite::connection::borrow(db);
  c.prepare("INSERT INTO labels(label) VALUES (?1)").bind(1, label).execute();
  return c.last_insert_rowid();
}

// Holds the writer until the test releases it (bounded, so a failing test still ends).
struct gate {
  std::atomic<int> entered{0};
  std::promise<void> open;
  std::shared_future<void> opened{open.get_future().share()};
};

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds bound = 5s) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

struct primary_fixture {
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"solo"};
    return o;
  }()};
  std::shared_ptr<gate> g = std::make_shared<gate>();
  std::shared_ptr<std::atomic<int>> local_calls = std::make_shared<std::atomic<int>>(0);
  boost::asio::io_context io;
  std::unique_ptr<fwd::node> node;
  std::thread runner;

  primary_fixture() {
    fwd_sim::install_vfs();
    fwd::node_options o;
    o.database = sim.database_path(0);
    o.secret = "cluster-test-secret-of-32-bytes-or-more";
    o.litefs_hostname = "solo";
    o.require_fuse = false;
    auto t = std::make_shared<fwd::telemetry>();
    t->call_started = [n = local_calls](const fwd::call_started_event& e) {
      if (e.procedure == add_label.name() && e.peer.empty()) ++*n;
    };
    o.telemetry = t;
    o.write.max_batch = 1;  // the slow write runs alone, the others wait in the queue
    node = std::make_unique<fwd::node>(io.get_executor(), o);
    node->define(add_label, insert_label);
    node->define(slow_label, [g = g](sqlite3* db, const std::string& label) {
      ++g->entered;
      (void)g->opened.wait_for(20s);
      return insert_label(db, label);
    });
    node->start();
    run();
    fwd::migrate(*node, {{1, "labels", "CREATE TABLE labels(id INTEGER PRIMARY KEY, label TEXT)"}}, 5s);
  }
  void run() {
    runner = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io);
      io.run();
    });
  }
  ~primary_fixture() {
    release();
    node->stop();
    io.stop();
    if (runner.joinable()) runner.join();
  }
  void release() {
    try {
      g->open.set_value();
    } catch (const std::future_error&) {
    }
  }
  // Starts the slow write and returns once the writer runs it.
  std::future<boost::system::error_code> start_slow(std::chrono::steady_clock::duration deadline = 30s) {
    auto done = std::make_shared<std::promise<boost::system::error_code>>();
    auto f = done->get_future();
    fwd::forward_options options;
    options.deadline = std::chrono::steady_clock::now() + deadline;
    node->async_call(options, slow_label, "slow",
                     [done](boost::system::error_code ec, std::int64_t) { done->set_value(ec); });
    REQUIRE(eventually([&] { return g->entered.load() == 1; }));
    return f;
  }
  std::int64_t rows(const std::string& label) {
    auto c = fwd::sqlite::connection(sim.database_path(0).string(), SQLITE_OPEN_READONLY);
    auto s = c.prepare("SELECT count(*) FROM labels WHERE label = ?1");
    s.bind(1, label);
    REQUIRE(s.step());
    return s.column_int64(0);
  }
};

}  // namespace

TEST_CASE("a local write queued behind a slow one completes with timeout at its deadline and never runs") {
  primary_fixture f;
  auto slow = f.start_slow();
  fwd::diagnostics diag;
  fwd::forward_options options;
  options.diagnostics = &diag;
  const auto started = std::chrono::steady_clock::now();
  options.deadline = started + 300ms;
  std::promise<boost::system::error_code> done;
  f.node->async_call(options, add_label, "late",
                     [&](boost::system::error_code ec, std::int64_t) { done.set_value(ec); });
  auto result = done.get_future();
  REQUIRE(result.wait_for(5s) == std::future_status::ready);  // the slow write still holds the writer
  const auto took = std::chrono::steady_clock::now() - started;
  CHECK(result.get() == fwd::errc::timeout);
  CHECK(took < 2s);
  CHECK(diag.message().find("never ran") != std::string::npos);
  f.release();
  REQUIRE(slow.wait_for(10s) == std::future_status::ready);
  CHECK(slow.get() == boost::system::error_code{});
  f.node->call(add_label, "after");  // the writer has passed the queued write's place
  CHECK(f.rows("slow") == 1);
  CHECK(f.rows("late") == 0);
  CHECK(f.rows("after") == 1);
}

TEST_CASE("a local write running at its deadline reports timeout as maybe executed") {
  primary_fixture f;
  fwd::diagnostics diag;
  fwd::forward_options options;
  options.diagnostics = &diag;
  options.deadline = std::chrono::steady_clock::now() + 300ms;
  std::promise<boost::system::error_code> done;
  f.node->async_call(options, slow_label, "running",
                     [&](boost::system::error_code ec, std::int64_t) { done.set_value(ec); });
  REQUIRE(eventually([&] { return f.g->entered.load() == 1; }));
  auto result = done.get_future();
  REQUIRE(result.wait_for(5s) == std::future_status::ready);
  CHECK(result.get() == fwd::errc::timeout);
  CHECK(diag.message().find("maybe executed") != std::string::npos);
  CHECK(diag.message().find("never ran") == std::string::npos);
  f.release();
  f.node->call(add_label, "after");
  CHECK(f.rows("running") == 1);  // it did run: the report was honest
}

TEST_CASE("a cancelled local write queued behind a slow one never runs and partial cancellation is ignored") {
  primary_fixture f;
  auto slow = f.start_slow();

  boost::asio::cancellation_signal cancel;
  fwd::diagnostics diag;
  fwd::forward_options options;
  options.diagnostics = &diag;
  std::promise<boost::system::error_code> cancelled;
  f.node->async_call(options, add_label, "cancelled",
                     boost::asio::bind_cancellation_slot(cancel.slot(), [&](boost::system::error_code ec, std::int64_t) {
                       cancelled.set_value(ec);
                     }));
  boost::asio::cancellation_signal partial;
  std::promise<boost::system::error_code> kept;
  f.node->async_call(add_label, "kept",
                     boost::asio::bind_cancellation_slot(partial.slot(), [&](boost::system::error_code ec, std::int64_t) {
                       kept.set_value(ec);
                     }));
  // Both have reached the writer's queue: the call's strand hands it over right after
  // call_started, and a cancellation runs on that strand after it.
  REQUIRE(eventually([&] { return f.local_calls->load() == 2; }));
  boost::asio::post(f.io, [&] {
    cancel.emit(boost::asio::cancellation_type::terminal);
    partial.emit(boost::asio::cancellation_type::partial | boost::asio::cancellation_type::total);
  });
  auto c = cancelled.get_future();
  REQUIRE(c.wait_for(5s) == std::future_status::ready);
  CHECK(c.get() == fwd::errc::cancelled);
  CHECK(diag.message().find("never ran") != std::string::npos);
  auto k = kept.get_future();
  CHECK(k.wait_for(200ms) == std::future_status::timeout);  // still queued behind the slow one
  f.release();
  REQUIRE(slow.wait_for(10s) == std::future_status::ready);
  REQUIRE(k.wait_for(10s) == std::future_status::ready);
  CHECK(k.get() == boost::system::error_code{});
  f.node->call(add_label, "after");
  CHECK(f.rows("cancelled") == 0);
  CHECK(f.rows("kept") == 1);
}

TEST_CASE("the blocking call is bounded by its deadline when its completion cannot run") {
  primary_fixture f;
  f.io.stop();  // nothing runs the node's executor now
  f.runner.join();
  fwd::forward_options options;
  options.deadline = std::chrono::steady_clock::now() + 300ms;
  auto blocked = std::async(std::launch::async, [&] {
    try {
      f.node->call(options, add_label, "unrun");
      return boost::system::error_code{};
    } catch (const fwd::error& e) {
      return boost::system::error_code(e.code());
    }
  });
  const auto status = blocked.wait_for(5s);
  f.io.restart();  // lets the call complete if it is still blocked, so the test ends
  f.run();
  REQUIRE(status == std::future_status::ready);
  CHECK(blocked.get() == fwd::errc::timeout);
}
