// Shutting a node down while it works: async_stop drains the calls and the writer's batch;
// a node destroyed in the middle of discovery or of a write leaves nothing behind that
// its pending handlers still use (run under AddressSanitizer: asan preset).

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <future>
#include <fwd/migrate.hpp>
#include <fwd/node.hpp>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

const fwd::procedure<std::int64_t(std::string)> add_label{"test.shutdown.add_label"};
const fwd::procedure<std::int64_t(std::string)> slow_label{"test.shutdown.slow_label"};

std::int64_t insert_label(sqlite3* db, const std::string& label) {
  auto c = fwd::sqlite::connection::borrow(db);
  c.prepare("INSERT INTO labels(label) VALUES (?1)").bind(1, label).execute();
  return c.last_insert_rowid();
}

struct gate {
  std::atomic<int> entered{0};
  std::promise<void> open;
  std::shared_future<void> opened{open.get_future().share()};
  void release() {
    try {
      open.set_value();
    } catch (const std::future_error&) {
    }
  }
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

// Counts completions: each call must complete exactly once.
struct tally {
  std::atomic<int> done{0};
  std::atomic<int> ok{0};
  auto handler() {
    return [this](boost::system::error_code ec, std::int64_t) {
      if (!ec) ++ok;
      ++done;
    };
  }
};

struct running_io {
  boost::asio::io_context io;
  std::thread runner;
  running_io() {
    runner = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io);
      io.run();
    });
  }
  ~running_io() {
    io.stop();
    runner.join();
  }
};

std::unique_ptr<fwd::node> make_primary(fwd_sim::cluster& sim, boost::asio::io_context& io,
                                        const std::shared_ptr<gate>& g) {
  fwd_sim::install_vfs();
  fwd::node_options o;
  o.database = sim.database_path(0);
  o.secret = "cluster-test-secret-of-32-bytes-or-more";
  o.litefs_hostname = sim.hostname(0);
  o.require_fuse = false;
  o.write.max_batch = 1;
  auto node = std::make_unique<fwd::node>(io.get_executor(), o);
  node->define(add_label, insert_label);
  node->define(slow_label, [g](sqlite3* db, const std::string& label) {
    ++g->entered;
    (void)g->opened.wait_for(20s);
    return insert_label(db, label);
  });
  node->start();
  fwd::migrate(*node, {{1, "labels", "CREATE TABLE labels(id INTEGER PRIMARY KEY, label TEXT)"}}, 5s);
  return node;
}

fwd_sim::cluster_options solo() {
  fwd_sim::cluster_options o;
  o.hostnames = {"solo"};
  return o;
}

}  // namespace

TEST_CASE("node::async_stop completes once the running batch and every call in flight have completed") {
  fwd_sim::install_vfs();
  fwd_sim::cluster sim{solo()};
  auto g = std::make_shared<gate>();
  auto t = std::make_shared<tally>();
  running_io r;
  auto node = make_primary(sim, r.io, g);
  node->async_call(slow_label, "slow", t->handler());
  REQUIRE(eventually([&] { return g->entered.load() == 1; }));
  node->async_call(add_label, "queued", t->handler());
  std::promise<void> stopped;
  node->async_stop([&] { stopped.set_value(); });
  auto f = stopped.get_future();
  CHECK(f.wait_for(100ms) == std::future_status::timeout);  // the batch still runs
  g->release();
  REQUIRE(f.wait_for(10s) == std::future_status::ready);
  CHECK(t->done.load() == 2);  // both calls completed before async_stop did
  CHECK(t->ok.load() == 1);    // the running write committed, the queued one was cancelled
  node.reset();
}

TEST_CASE("a node destroyed in the middle of a write leaves its calls to complete without it") {
  fwd_sim::install_vfs();
  fwd_sim::cluster sim{solo()};
  auto g = std::make_shared<gate>();
  auto t = std::make_shared<tally>();
  running_io r;
  auto node = make_primary(sim, r.io, g);
  node->async_call(slow_label, "slow", t->handler());
  REQUIRE(eventually([&] { return g->entered.load() == 1; }));
  for (int i = 0; i < 4; ++i) node->async_call(add_label, "queued " + std::to_string(i), t->handler());
  auto destroyed = std::async(std::launch::async, [&] { node.reset(); });
  g->release();
  REQUIRE(destroyed.wait_for(10s) == std::future_status::ready);
  CHECK(eventually([&] { return t->done.load() == 5; }));
  CHECK(t->ok.load() >= 1);
}

TEST_CASE("a node destroyed in the middle of discovery leaves its calls to complete without it") {
  fwd_sim::install_vfs();
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"node-a", "node-b"};
    return o;
  }()};
  running_io r;
  // A peer that accepts connections and never answers: every probe waits for its timeout.
  boost::asio::io_context silent_io;
  boost::asio::ip::tcp::acceptor silent(silent_io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  silent.listen();
  auto t = std::make_shared<tally>();
  for (int round = 0; round < 3; ++round) {
    fwd::node_options o;
    o.database = sim.database_path(1);
    o.secret = "cluster-test-secret-of-32-bytes-or-more";
    o.litefs_hostname = sim.hostname(1);
    o.require_fuse = false;
    o.listen = {boost::asio::ip::make_address("127.0.0.1"), 0};
    o.members = fwd::static_members({silent.local_endpoint()});
    o.probe_timeout = 2s;
    auto node = std::make_unique<fwd::node>(r.io.get_executor(), o);
    node->define(add_label, insert_label);
    node->start();
    REQUIRE(node->role().kind == fwd::litefs::role_kind::replica);
    for (int i = 0; i < 4; ++i) {
      fwd::forward_options call;
      call.deadline = std::chrono::steady_clock::now() + 3s;
      node->async_call(call, add_label, "lost", t->handler());
    }
    node.reset();  // with the probes and the calls in flight
  }
  CHECK(eventually([&] { return t->done.load() == 12; }, 10s));
  CHECK(t->ok.load() == 0);
}
