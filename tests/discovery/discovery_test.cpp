// Primary discovery across real node processes on simulated LiteFS mounts: each peer is
// an fwd server in its own process answering `fwd.hello` from its mount.

#include <fwd/cluster/discovery.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <memory>
#include <mutex>
#include <thread>

#include "child_process.hpp"
#include "litefs_sim.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr const char* secret = "discovery-test-secret-of-32-bytes-or-more";

// A simulated 3-node cluster (node-a primary) with one peer process per node.
struct cluster_fixture {
  fwd_sim::cluster sim{fwd_sim::cluster_options{}};
  std::vector<std::unique_ptr<fwd_test::child_process>> processes;
  std::vector<fwd::peer> peers;

  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::thread runner;
  std::unique_ptr<fwd::rpc::client> client;

  cluster_fixture() {
    for (std::size_t i = 0; i < sim.size(); ++i) {
      processes.push_back(std::make_unique<fwd_test::child_process>(std::vector<std::string>{
          FWD_DISCOVERY_PEER, sim.mount(i).string(), "app.db", sim.hostname(i), secret}));
      const auto port = static_cast<unsigned short>(std::stoi(processes.back()->read_until("PORT ")));
      peers.push_back({sim.hostname(i), {asio::ip::make_address("127.0.0.1"), port}});
    }
    fwd::rpc::client_options options;
    options.secret = secret;
    client = std::make_unique<fwd::rpc::client>(io.get_executor(), options);
    runner = std::thread([this] { io.run(); });
  }

  ~cluster_fixture() {
    asio::post(io, [this] { client->close(); });
    work.reset();
    io.stop();
    runner.join();
  }

  std::shared_ptr<fwd::primary_finder> finder_for(std::size_t node, fwd::discovery_options options = {},
                                                  std::vector<fwd::peer> members = {}) {
    options.mount = sim.mount(node);
    if (members.empty()) members = peers;
    return fwd::primary_finder::create(io.get_executor(), options,
                                       [members] { return members; }, fwd::hello_prober(*client));
  }
};

fwd::primary_location find(fwd::primary_finder& finder, std::chrono::milliseconds within) {
  auto result = finder.async_find(clock_type::now() + within, asio::use_future);
  REQUIRE(result.wait_for(within + 5s) == std::future_status::ready);
  return result.get();
}

boost::system::error_code find_error(fwd::primary_finder& finder, std::chrono::milliseconds within) {
  try {
    find(finder, within);
  } catch (const boost::system::system_error& e) {
    return e.code();
  }
  return {};
}

// Accepts TCP connections and never answers: a member that hangs.
struct black_hole {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor{io, {asio::ip::make_address("127.0.0.1"), 0}};
  std::vector<asio::ip::tcp::socket> held;
  std::thread runner;

  black_hole() {
    accept();
    runner = std::thread([this] { io.run(); });
  }
  ~black_hole() {
    io.stop();
    runner.join();
  }
  void accept() {
    acceptor.async_accept([this](boost::system::error_code ec, asio::ip::tcp::socket s) {
      if (ec) return;
      held.push_back(std::move(s));
      accept();
    });
  }
  fwd::peer as_peer() { return {"black-hole", acceptor.local_endpoint()}; }
};

}  // namespace

TEST_CASE("a replica finds the primary that its .primary names, through fwd.hello") {
  cluster_fixture cluster;
  auto finder = cluster.finder_for(1);
  const fwd::primary_location found = find(*finder, 5s);
  CHECK_FALSE(found.local);
  CHECK(found.endpoint == cluster.peers[0].endpoint);
  CHECK(found.litefs_hostname == "node-a");
}

TEST_CASE("the primary finds itself without asking anyone") {
  cluster_fixture cluster;
  std::atomic<int> probes{0};
  fwd::discovery_options options;
  options.mount = cluster.sim.mount(0);
  auto prober = fwd::hello_prober(*cluster.client);
  auto finder = fwd::primary_finder::create(
      cluster.io.get_executor(), options, [&] { return cluster.peers; },
      [&](const fwd::peer& p, clock_type::time_point d, fwd::primary_finder::probe_handler h) {
        ++probes;
        prober(p, d, std::move(h));
      });
  CHECK(find(*finder, 5s).local);
  CHECK(probes == 0);
  CHECK(finder->probe_rounds() == 0);
}

TEST_CASE("a fresh answer is served from the cache without probing again") {
  cluster_fixture cluster;
  auto finder = cluster.finder_for(2);
  CHECK(finder->cached() == nullptr);
  const auto first = find(*finder, 5s);
  REQUIRE(finder->cached() != nullptr);
  CHECK(*finder->cached() == first);
  const auto rounds = finder->probe_rounds();
  CHECK(find(*finder, 5s) == first);
  CHECK(finder->probe_rounds() == rounds);
  finder->invalidate();
  CHECK(finder->cached() == nullptr);
}

TEST_CASE("discovery follows a failover, and says no_primary during the election") {
  cluster_fixture cluster;
  fwd::discovery_options options;
  options.role_poll_interval = 10ms;
  options.probe_timeout = 200ms;
  auto finder = cluster.finder_for(1, options);
  finder->start();
  REQUIRE(find(*finder, 5s).endpoint == cluster.peers[0].endpoint);

  cluster.sim.begin_election();
  // The local `.primary` disappeared: the cached answer must go, without any call failing.
  const auto until = clock_type::now() + 5s;
  while (finder->cached() != nullptr && clock_type::now() < until) std::this_thread::yield();
  CHECK(finder->cached() == nullptr);
  CHECK(find_error(*finder, 300ms) == fwd::errc::no_primary);
  CHECK(finder->last_failure().find("no member says it is primary") != std::string::npos);
  CHECK(finder->last_failure().find("node-a") != std::string::npos);

  cluster.sim.elect(2);
  const auto after = find(*finder, 5s);
  CHECK(after.endpoint == cluster.peers[2].endpoint);
  CHECK(after.litefs_hostname == "node-c");
  finder->stop();
}

TEST_CASE("a black-holed member does not delay discovery beyond one probe deadline") {
  cluster_fixture cluster;
  black_hole hole;
  cluster.sim.disconnect(1);  // no .primary: the replica must probe every member
  fwd::discovery_options options;
  options.probe_timeout = 300ms;
  std::vector<fwd::peer> members{hole.as_peer(), cluster.peers[0], cluster.peers[1], cluster.peers[2]};
  auto finder = cluster.finder_for(1, options, members);
  // The caller allows one probe deadline and a half: enough only if probes run in parallel.
  const auto found = find(*finder, 450ms);
  CHECK(found.endpoint == cluster.peers[0].endpoint);
  CHECK(finder->probe_rounds() == 1);
}

TEST_CASE("a thousand concurrent callers during a refresh cause one probe round") {
  cluster_fixture cluster;
  cluster.sim.disconnect(2);
  auto finder = cluster.finder_for(2);
  std::atomic<int> succeeded{0};
  std::atomic<int> completed{0};
  std::promise<void> all_done;
  const auto deadline = clock_type::now() + 10s;
  for (int i = 0; i < 1000; ++i) {
    finder->async_find(deadline, [&](boost::system::error_code ec, fwd::primary_location where) {
      if (!ec && where.endpoint == cluster.peers[0].endpoint) ++succeeded;
      if (++completed == 1000) all_done.set_value();
    });
  }
  REQUIRE(all_done.get_future().wait_for(15s) == std::future_status::ready);
  CHECK(succeeded == 1000);
  CHECK(finder->probe_rounds() == 1);
}

TEST_CASE("a lookup can be cancelled while it waits") {
  cluster_fixture cluster;
  cluster.sim.begin_election();  // nobody is primary: the lookup keeps waiting
  auto finder = cluster.finder_for(1);
  asio::cancellation_signal cancel;
  std::promise<boost::system::error_code> outcome;
  finder->async_find(clock_type::now() + 30s,
                     asio::bind_cancellation_slot(cancel.slot(), [&](boost::system::error_code ec, fwd::primary_location) {
                       outcome.set_value(ec);
                     }));
  asio::post(cluster.io, [&] { cancel.emit(asio::cancellation_type::terminal); });
  auto f = outcome.get_future();
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  CHECK(f.get() == fwd::errc::cancelled);
}

TEST_CASE("a directory that is not a LiteFS mount gives not_litefs") {
  cluster_fixture cluster;
  fwd::discovery_options options;
  options.mount = cluster.sim.root();  // holds the mounts, but no .lag of its own
  auto finder = fwd::primary_finder::create(cluster.io.get_executor(), options,
                                            [&] { return cluster.peers; }, fwd::hello_prober(*cluster.client));
  CHECK(find_error(*finder, 2s) == fwd::errc::not_litefs);
}

TEST_CASE("async_find works with use_awaitable and deferred") {
  cluster_fixture cluster;
  auto finder = cluster.finder_for(1);
  auto awaited = asio::co_spawn(
      cluster.io,
      [&]() -> asio::awaitable<fwd::primary_location> {
        co_return co_await finder->async_find(clock_type::now() + 5s, asio::use_awaitable);
      },
      asio::use_future);
  REQUIRE(awaited.wait_for(10s) == std::future_status::ready);
  CHECK(awaited.get().endpoint == cluster.peers[0].endpoint);

  auto op = finder->async_find(clock_type::now() + 5s, asio::deferred);
  std::promise<fwd::primary_location> deferred_result;
  std::move(op)([&](boost::system::error_code ec, fwd::primary_location where) {
    REQUIRE_FALSE(ec);
    deferred_result.set_value(where);
  });
  auto f = deferred_result.get_future();
  REQUIRE(f.wait_for(10s) == std::future_status::ready);
  CHECK(f.get().endpoint == cluster.peers[0].endpoint);
}

TEST_CASE("a primary that failed is not looked up again at its old address through its hostname") {
  cluster_fixture cluster;
  // The member list may keep a dead address for a while (static configuration, DNS).
  struct shared_members {
    std::mutex mutex;
    std::vector<fwd::peer> list;
  };
  auto members = std::make_shared<shared_members>();
  members->list = cluster.peers;
  fwd::discovery_options options;
  options.mount = cluster.sim.mount(1);
  auto finder = fwd::primary_finder::create(
      cluster.io.get_executor(), options,
      [members] {
        std::lock_guard lock(members->mutex);
        return members->list;
      },
      fwd::hello_prober(*cluster.client));
  const asio::ip::tcp::endpoint old_endpoint = cluster.peers[0].endpoint;
  REQUIRE(find(*finder, 5s).endpoint == old_endpoint);

  // The primary's fwd server comes back on another port (same node, same LiteFS hostname).
  cluster.processes[0]->kill();
  cluster.processes[0]->wait();
  cluster.processes[0] = std::make_unique<fwd_test::child_process>(std::vector<std::string>{
      FWD_DISCOVERY_PEER, cluster.sim.mount(0).string(), "app.db", cluster.sim.hostname(0), secret});
  const auto port = static_cast<unsigned short>(std::stoi(cluster.processes[0]->read_until("PORT ")));
  const asio::ip::tcp::endpoint new_endpoint{asio::ip::make_address("127.0.0.1"), port};
  REQUIRE(new_endpoint != old_endpoint);
  {
    std::lock_guard lock(members->mutex);
    members->list.push_back({cluster.sim.hostname(0), new_endpoint});
  }

  // A call to the old address fails (unreachable): the forwarder invalidates, and the
  // next lookup must not trust the hostname's old address again.
  finder->invalidate();
  const auto rounds = finder->probe_rounds();
  const fwd::primary_location found = find(*finder, 5s);
  CHECK(found.endpoint == new_endpoint);
  CHECK(found.litefs_hostname == cluster.sim.hostname(0));
  CHECK(finder->probe_rounds() == rounds + 1);
}
