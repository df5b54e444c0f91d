// A replica that cannot confirm a forwarded write by its checksum looks the write's dedup
// row up in its own database, in the LiteFS mount: a read that a hung LiteFS never
// answers. It runs on the monitor's thread, never on a thread of the io_context, and the
// call's deadline bounds it. Two fwd::node objects in one process over the LiteFS
// simulation, on one io thread; the replica's database is made to point into a FUSE
// mount nobody serves (needs root and /dev/fuse: otherwise the test says why and passes).

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <fwd/migrate.hpp>
#include <fwd/node.hpp>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../support/temp_dir.hpp"
#include "../support/unanswered_fuse_mount.hpp"
#include "litefs_sim.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

const fwd::procedure<std::int64_t(std::string)> add_label{"test.lookup.add_label"};

std::int64_t insert_label(sqlite3* db, const std::string& label) {
  auto c = fwd::sqlite::connection::borrow(db);
  c.prepare("INSERT INTO labels(label) VALUES (?1)").bind(1, label).execute();
  return c.last_insert_rowid();
}

boost::asio::ip::tcp::endpoint free_endpoint() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint();
}

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds bound = 5s) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::yield();
  }
  return true;
}

struct outcome {
  boost::system::error_code ec;
  std::string detail;
  std::chrono::steady_clock::time_point at;
};

}  // namespace

TEST_CASE("a dedup row lookup stuck in a hung LiteFS ends the call at its deadline, not_confirmed, and "
          "never blocks the io_context") {
  fwd_test::temp_dir tmp;
  fwd_test::unanswered_fuse_mount hung(tmp.path() / "hung");
  if (!hung.ok()) {
    WARN(hung.why() << ": the hung-LiteFS case needs root and /dev/fuse");
    return;
  }
  fwd_sim::install_vfs();
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"node-a", "node-b"};
    return o;
  }()};
  boost::asio::io_context io;  // one io thread: anything blocking it shows
  auto work = boost::asio::make_work_guard(io);
  const std::vector<boost::asio::ip::tcp::endpoint> endpoints{free_endpoint(), free_endpoint()};
  std::vector<std::unique_ptr<fwd::node>> nodes;
  for (std::size_t i = 0; i < 2; ++i) {
    fwd::node_options o;
    o.database = sim.database_path(i);
    o.secret = "cluster-test-secret-of-32-bytes-or-more";
    o.litefs_hostname = sim.hostname(i);
    o.require_fuse = false;
    o.listen = endpoints[i];
    o.members = fwd::static_members(endpoints);
    nodes.push_back(std::make_unique<fwd::node>(io.get_executor(), o));
    nodes.back()->define(add_label, insert_label);
    nodes.back()->start();
  }
  std::thread runner([&] { io.run(); });
  // On every way out (a failed REQUIRE too): the mount answers, the nodes stop, the io
  // thread is joined.
  struct cleanup {
    std::function<void()> run;
    ~cleanup() { run(); }
  } at_exit{[&] {
    hung.answer();
    for (auto& n : nodes) n->stop();
    work.reset();
    io.stop();
    runner.join();
  }};
  fwd::migrate(*nodes[0], {{1, "labels", "CREATE TABLE labels(id INTEGER PRIMARY KEY, label TEXT)"}}, 5s);
  fwd::node& replica = *nodes[1];
  REQUIRE(replica.role().kind == fwd::litefs::role_kind::replica);

  // Nothing is shipped from now on: the replica waits for the write's TXID.
  sim.stop_replication();
  const auto before = sim.position(0);
  // Held by the handler: it may run during the cleanup of a failed test.
  auto done = std::make_shared<std::promise<outcome>>();
  auto diag = std::make_shared<fwd::diagnostics>();
  fwd::forward_options options;
  options.diagnostics = diag.get();
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  options.deadline = deadline;
  replica.async_call(options, add_label, std::string("looked up"),
                     [done, diag](boost::system::error_code ec, std::int64_t) {
                       done->set_value({ec, diag->message(), std::chrono::steady_clock::now()});
                     });
  REQUIRE(eventually([&] { return sim.position(0).txid > before.txid && replica.monitor().waiters() == 1; }));
  const auto written = sim.position(0);

  // The replica's database now lies in the hung mount, and its position reaches the
  // write's TXID with another checksum: only the dedup row could confirm the write.
  const fs::path db = sim.database_path(1);
  fs::rename(db, db.string() + ".aside");
  fs::create_symlink(tmp.path() / "hung" / db.filename(), db);
  {
    std::ofstream pos(sim.position_path(1), std::ios::trunc);
    pos << fwd_sim::format_position({written.txid, written.checksum ^ 1});
  }

  // Meanwhile the io thread keeps running timers on time, until the call completes.
  auto result = done->get_future();
  int ticks = 0;
  bool late_tick = false;
  while (result.wait_for(0s) != std::future_status::ready &&
         std::chrono::steady_clock::now() < deadline + 5s) {
    auto fired = std::make_shared<std::promise<void>>();  // the handler may run after a break
    boost::asio::steady_timer timer(io, 50ms);
    const auto armed = std::chrono::steady_clock::now();
    timer.async_wait([fired](boost::system::error_code) { fired->set_value(); });
    if (fired->get_future().wait_for(2s) != std::future_status::ready) {
      late_tick = true;
      break;
    }
    if (std::chrono::steady_clock::now() - armed > 1s) late_tick = true;
    ++ticks;
  }
  const bool completed = result.wait_for(0s) == std::future_status::ready;
  hung.answer();  // LiteFS "dies": whatever waits in the mount fails now
  CHECK_FALSE(late_tick);
  CHECK(ticks >= 20);  // the io thread ran timers all along the 3 s the call lasted
  REQUIRE(completed);
  const outcome o = result.get();
  INFO(o.detail);
  CHECK(o.ec == fwd::errc::not_confirmed);
  CHECK(o.at >= deadline);
  CHECK(o.at - deadline < 1s);
  CHECK(o.detail.find("did not end by the call's deadline") != std::string::npos);
}
