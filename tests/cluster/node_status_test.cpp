// node.status() and the fwd.status procedure: what a node says of itself, locally and to
// an authenticated peer; and a cluster on IPv6 (a node listening on "::", members on ::1)
// forwarding a write.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <fwd/migrate.hpp>
#include <fwd/node.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/status.hpp>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

const std::string secret = "status-test-secret-0123456789abcdef";
const fwd::procedure<std::int64_t(std::string)> add_label{"test.add_label"};

std::int64_t insert_label(sqlite3* db, const std::string& label) {
  auto c = fwd::sqlite::connection::borrow(db);
  c.prepare("INSERT INTO labels(label) VALUES (?1)").bind(1, label).execute();
  return c.last_insert_rowid();
}

// A port held on `address` (SO_REUSEADDR, not listening) until the node binds it.
struct held_port {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket{io};
  explicit held_port(const boost::asio::ip::address& address) {
    socket.open(address.is_v6() ? boost::asio::ip::tcp::v6() : boost::asio::ip::tcp::v4());
    socket.set_option(boost::asio::socket_base::reuse_address(true));
    socket.bind({address, 0});
  }
  std::uint16_t port() const { return socket.local_endpoint().port(); }
};

// Why this machine cannot run the IPv6 test (no ::1), or nullopt.
std::optional<std::string> no_ipv6_loopback() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor a(io);
  boost::system::error_code ec;
  a.open(boost::asio::ip::tcp::v6(), ec);
  if (!ec) a.bind({boost::asio::ip::make_address("::1"), 0}, ec);
  if (ec) return "IPv6 test skipped: this machine has no IPv6 loopback (::1): " + ec.message();
  return std::nullopt;
}

// Two in-process nodes over a simulated two-node LiteFS cluster; node 0 is primary.
struct two_nodes {
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"node-a", "node-b"};
    return o;
  }()};
  boost::asio::io_context io;
  std::vector<std::unique_ptr<fwd::node>> nodes;
  std::vector<boost::asio::ip::tcp::endpoint> members;
  std::thread runner;

  // listen[i]: node i's listen address; members are at `member_address` on the same ports.
  two_nodes(std::vector<boost::asio::ip::address> listen, boost::asio::ip::address member_address) {
    fwd_sim::install_vfs();
    sim.start_replication(2ms);
    std::vector<std::unique_ptr<held_port>> ports;
    for (std::size_t i = 0; i < 2; ++i) {
      ports.push_back(std::make_unique<held_port>(member_address));
      members.emplace_back(member_address, ports.back()->port());
    }
    for (std::size_t i = 0; i < 2; ++i) {
      fwd::node_options o;
      o.listen = {listen[i], ports[i]->port()};
      o.members = fwd::static_members(members);
      o.members.poll_interval = 100ms;
      o.database = sim.database_path(i);
      o.secret = secret;
      o.litefs_hostname = sim.hostname(i);
      o.require_fuse = false;
      nodes.push_back(std::make_unique<fwd::node>(io.get_executor(), o));
      nodes.back()->define(add_label, insert_label);
      nodes.back()->start();
    }
    runner = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io);
      io.run();
    });
    fwd::migrate(*nodes[1],
                 {{1, "labels", "CREATE TABLE labels(id INTEGER PRIMARY KEY, label TEXT UNIQUE)"}},
                 10s);
  }
  ~two_nodes() {
    for (auto& n : nodes) n->stop();
    io.stop();
    runner.join();
  }
};

// A client of its own, on its own thread.
struct status_client {
  boost::asio::io_context io;
  std::optional<fwd::rpc::client> client;
  std::thread runner;
  explicit status_client(const std::string& key) {
    fwd::rpc::client_options o;
    o.secret = key;
    o.connect_timeout = 2000ms;
    client.emplace(io.get_executor(), o);
    runner = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io);
      io.run();
    });
  }
  ~status_client() {
    client->close();
    io.stop();
    runner.join();
  }
  fwd::status_report ask(const boost::asio::ip::tcp::endpoint& peer) {
    fwd::rpc::call_options o;
    o.deadline = std::chrono::steady_clock::now() + 5s;
    return client->call(peer, o, fwd::status_procedure);
  }
};

void forwarded_write_and_status(two_nodes& c) {
  auto report = std::make_shared<fwd::call_report>();
  fwd::forward_options o;
  o.report = report;
  const std::int64_t id = c.nodes[1]->call(o, add_label, "from-the-replica");
  CHECK(id > 0);
  CHECK_FALSE(report->ran_locally);  // node 1 is a replica: the write went to node 0

  const fwd::status_report a = c.nodes[0]->status();
  const fwd::status_report b = c.nodes[1]->status();
  CHECK(a.role == "primary");
  CHECK(a.primary_hostname == "node-a");
  CHECK(a.litefs_hostname == "node-a");
  CHECK(b.role == "replica");
  CHECK(b.primary_hostname == "node-a");
  CHECK(b.primary_address == fwd::rpc::detail::endpoint_string(c.members[0]));
  CHECK(a.members.size() == 2);
  CHECK(b.members == a.members);
  CHECK(b.txid >= report->txid);  // read-your-writes: the forwarded write is here
  // The primary's report shows its position as its monitor last read it (every 50 ms).
  fwd::status_report later = a;
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (later.txid < report->txid && std::chrono::steady_clock::now() < until)
    later = c.nodes[0]->status();
  CHECK(later.txid >= report->txid);
  CHECK(a.started);
  CHECK(b.version == FWD_VERSION_STRING);
  CHECK(b.calls_in_flight == 0);
  CHECK(b.writer_queue == 0);
  const auto now = fwd::unix_now_ms();
  CHECK(b.unix_ms <= now);
  CHECK(b.unix_ms > now - 60000);
}

}  // namespace

TEST_CASE("node.status() says role, primary, members, position and version on each node") {
  two_nodes c({boost::asio::ip::make_address("127.0.0.1"), boost::asio::ip::make_address("127.0.0.1")},
              boost::asio::ip::make_address("127.0.0.1"));
  forwarded_write_and_status(c);
}

TEST_CASE("node.status() lists recent errors: a write that failed is there, with its procedure") {
  two_nodes c({boost::asio::ip::make_address("127.0.0.1"), boost::asio::ip::make_address("127.0.0.1")},
              boost::asio::ip::make_address("127.0.0.1"));
  CHECK(c.nodes[1]->call(add_label, "twice") > 0);
  CHECK_THROWS_AS(c.nodes[1]->call(add_label, "twice"), fwd::error);  // UNIQUE constraint
  const auto errors = c.nodes[1]->status().last_errors;
  REQUIRE_FALSE(errors.empty());
  CHECK_THAT(errors.back().what, Catch::Contains("test.add_label"));
  CHECK(errors.back().unix_ms > 0);
}

TEST_CASE("fwd.status answers an authenticated peer with the node's report, and nobody else") {
  two_nodes c({boost::asio::ip::make_address("127.0.0.1"), boost::asio::ip::make_address("127.0.0.1")},
              boost::asio::ip::make_address("127.0.0.1"));
  {
    status_client client(secret);
    const fwd::status_report r = client.ask(c.nodes[1]->local_endpoint());
    CHECK(r.node_name == "node-b");
    CHECK(r.role == "replica");
    CHECK(r.primary_hostname == "node-a");
    CHECK(r.members.size() == 2);
    CHECK(r.version == FWD_VERSION_STRING);
    CHECK(r.started);
  }
  status_client stranger("not-the-cluster-secret-0123456789abcdef");
  try {
    stranger.ask(c.nodes[1]->local_endpoint());
    FAIL("a client with another secret got a status report");
  } catch (const fwd::error& e) {
    CHECK(e.code().value() == static_cast<int>(fwd::errc::unauthenticated));
  }
}

TEST_CASE("IPv6: a node listening on :: and members on ::1 forward a write") {
  if (auto why = no_ipv6_loopback()) {
    WARN(*why);
    return;
  }
  two_nodes c({boost::asio::ip::make_address("::"), boost::asio::ip::make_address("::1")},
              boost::asio::ip::make_address("::1"));
  CHECK(c.nodes[0]->local_endpoint().address().to_string() == "::");
  forwarded_write_and_status(c);
  const auto members = c.nodes[1]->status().members;
  REQUIRE(members.size() == 2);
  CHECK(members[0].address.rfind("[::1]:", 0) == 0);
}
