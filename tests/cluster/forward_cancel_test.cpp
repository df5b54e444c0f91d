// A forwarded call cancelled while it waits for read-your-writes: two fwd::node objects
// in one process over the LiteFS simulation (node-a primary, node-b replica), with
// replication stopped so that node-b's waits never end by themselves.

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <catch2/catch.hpp>
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

const fwd::procedure<std::int64_t(std::string)> add_label{"test.cancel.add_label"};

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

}  // namespace

TEST_CASE("a forwarded call cancelled during its read-your-writes wait leaves no waiter in the "
          "node's monitor") {
  fwd_sim::install_vfs();
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"node-a", "node-b"};
    return o;
  }()};
  boost::asio::io_context io;
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
  fwd::migrate(*nodes[0], {{1, "labels", "CREATE TABLE labels(id INTEGER PRIMARY KEY, label TEXT)"}}, 5s);
  fwd::node& replica = *nodes[1];
  REQUIRE(replica.role().kind == fwd::litefs::role_kind::replica);

  constexpr int calls = 8;
  for (int i = 0; i < calls; ++i) {
    boost::asio::cancellation_signal cancel;
    std::promise<boost::system::error_code> done;
    fwd::forward_options options;
    options.deadline = std::chrono::steady_clock::now() + 60s;  // far: only cancel ends it
    replica.async_call(options, add_label, "label " + std::to_string(i),
                       boost::asio::bind_cancellation_slot(
                           cancel.slot(), [&](boost::system::error_code ec, std::int64_t) { done.set_value(ec); }));
    // The write committed on node-a; node-b now waits for replication that never comes.
    REQUIRE(eventually([&] { return replica.monitor().waiters() == 1; }, 10s));
    boost::asio::post(io, [&] { cancel.emit(boost::asio::cancellation_type::terminal); });
    auto f = done.get_future();
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    CHECK(f.get() == fwd::errc::cancelled);
    // The wait went with the call, not at its deadline a minute later.
    CHECK(eventually([&] { return replica.monitor().waiters() == 0; }));
  }
  CHECK(replica.monitor().waiters() == 0);
  CHECK(sim.position(0).txid > sim.position(1).txid);  // nothing replicated meanwhile

  for (auto& n : nodes) n->stop();
  work.reset();
  io.stop();
  runner.join();
}
