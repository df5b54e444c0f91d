// The write path across processes: three fwd_node processes over the LiteFS simulation,
// driven through their demo.control procedure. Each TEST_CASE is a promise fwd makes to a
// service that writes from any node.

#include <sqlite3.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <fwd/error.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cluster_driver.hpp"
#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

int fwd_code(fwd::errc e) { return static_cast<int>(e); }

// Three node processes over a simulated cluster; node 0 is the LiteFS primary.
struct test_cluster {
  fwd_sim::cluster sim;
  std::vector<std::unique_ptr<demo::reserved_port>> reserved;
  std::vector<std::uint16_t> ports;
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  demo::controller control;

  explicit test_cluster(fwd_sim::cluster_options options = {}) : sim(std::move(options)) {
    ::setenv("FWD_NODE_TRACE", "1", 0);  // a failing test shows each node's probes and calls
    for (std::size_t i = 0; i < sim.size(); ++i) {
      reserved.push_back(std::make_unique<demo::reserved_port>());
      ports.push_back(reserved.back()->port());
    }
    nodes.resize(sim.size());
    sim.start_replication(2ms);
  }

  void start(std::size_t i, std::vector<std::string> extra = {},
             std::vector<std::uint16_t> members = {}) {
    if (members.empty()) members = ports;
    nodes[i] = std::make_unique<demo::node_process>(
        FWD_NODE_PATH,
        demo::node_arguments(sim.hostname(i), sim.mount(i).string(), ports[i], members, true,
                             extra),
        false);
  }

  bool migrated(std::size_t i, std::chrono::milliseconds timeout = 20s) {
    const bool ok = nodes[i]->wait_for("MIGRATED ", timeout).has_value();
    if (!ok) UNSCOPED_INFO("node " << i << " printed:\n" << nodes[i]->output());
    return ok;
  }

  void start_all(const std::vector<std::string>& extra = {}) {
    for (std::size_t i = 0; i < sim.size(); ++i) start(i, extra);
    for (std::size_t i = 0; i < sim.size(); ++i) REQUIRE(migrated(i));
  }

  demo::control_result append(std::size_t from, const std::string& writer, int seq,
                              std::int64_t deadline_ms = 5000, bool ryw = true) {
    return control.call(ports[from], "append", {writer, std::to_string(seq)}, deadline_ms, ryw);
  }

  std::int64_t append_runs(std::size_t i) { return control.stats_of(ports[i]).at(0); }

  // A number from the given node's copy of the database (plain unix VFS, read-only).
  std::int64_t query(std::size_t i, const std::string& sql) {
    sqlite3* db = nullptr;
    std::int64_t value = -1;
    if (sqlite3_open_v2(sim.database_path(i).c_str(), &db, SQLITE_OPEN_READONLY, "unix") ==
        SQLITE_OK) {
      sqlite3_busy_timeout(db, 2000);
      sqlite3_stmt* stmt = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
          sqlite3_step(stmt) == SQLITE_ROW) {
        value = sqlite3_column_int64(stmt, 0);
      }
      sqlite3_finalize(stmt);
    }
    sqlite3_close(db);
    return value;
  }

  std::int64_t rows(std::size_t i, const std::string& writer, int seq) {
    return query(i, "SELECT count(*) FROM events WHERE writer = '" + writer +
                        "' AND seq = " + std::to_string(seq));
  }
};

// A TCP proxy on loopback that can cut a connection right after the server starts to
// answer a request: the request reached the server (and ran), the reply never arrives.
// Other calls share the connection (the replica's position reports, the primary
// finder's probes), so the cut is armed by the request: the next bytes the server sends
// on the connection that carried a request naming `marker` (a procedure's name, which
// the frame holds as text) after it reached the server.
class cutting_proxy {
 public:
  explicit cutting_proxy(std::uint16_t upstream)
      : acceptor_(io_, {boost::asio::ip::make_address("127.0.0.1"), 0}),
        upstream_(boost::asio::ip::make_address("127.0.0.1"), upstream) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~cutting_proxy() {
    io_.stop();
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  /// Arms the cut for the next request whose bytes contain `marker`.
  void arm(std::string marker) {
    std::lock_guard lock(marker_mutex_);
    marker_ = std::move(marker);
  }
  int cuts() const { return cuts_; }

 private:
  using tcp = boost::asio::ip::tcp;
  struct session {
    tcp::socket client, server;
    std::array<char, 65536> up{}, down{};
    std::atomic<bool> cut_next_reply{false};
    explicit session(boost::asio::io_context& io) : client(io), server(io) {}
    void close() {
      boost::system::error_code ignored;
      client.close(ignored);
      server.close(ignored);
    }
  };

  void accept() {
    auto s = std::make_shared<session>(io_);
    acceptor_.async_accept(s->client, [this, s](boost::system::error_code ec) {
      if (ec) return;
      s->server.async_connect(upstream_, [this, s](boost::system::error_code e) {
        if (e) {
          s->close();
          return;
        }
        pump_up(s);
        pump_down(s);
      });
      accept();
    });
  }
  void pump_up(std::shared_ptr<session> s) {
    s->client.async_read_some(
        boost::asio::buffer(s->up), [this, s](boost::system::error_code ec, std::size_t n) {
          if (ec) return s->close();
          const bool marked = takes_marker(std::string_view(s->up.data(), n));
          boost::asio::async_write(s->server, boost::asio::buffer(s->up.data(), n),
                                   [this, s, marked](boost::system::error_code e, std::size_t) {
                                     if (e) return s->close();
                                     if (marked) s->cut_next_reply = true;  // the request is there
                                     pump_up(s);
                                   });
        });
  }
  void pump_down(std::shared_ptr<session> s) {
    s->server.async_read_some(
        boost::asio::buffer(s->down), [this, s](boost::system::error_code ec, std::size_t n) {
          if (ec) return s->close();
          if (s->cut_next_reply.exchange(false)) {
            ++cuts_;
            return s->close();  // the reply is lost
          }
          boost::asio::async_write(s->client, boost::asio::buffer(s->down.data(), n),
                                   [this, s](boost::system::error_code e, std::size_t) {
                                     if (e) return s->close();
                                     pump_down(s);
                                   });
        });
  }

  boost::asio::io_context io_;
  tcp::acceptor acceptor_;
  tcp::endpoint upstream_;
  std::thread thread_;
  // Whether `bytes` hold the armed marker; disarms it if so.
  bool takes_marker(std::string_view bytes) {
    std::lock_guard lock(marker_mutex_);
    if (marker_.empty() || bytes.find(marker_) == std::string_view::npos) return false;
    marker_.clear();
    return true;
  }

  std::mutex marker_mutex_;
  std::string marker_;  // guarded by marker_mutex_
  std::atomic<int> cuts_{0};
};

}  // namespace

TEST_CASE(
    "a write from a replica runs on the primary and returns its result, the replica never runs "
    "it") {
  test_cluster c;
  c.start_all();
  const auto r = c.append(1, "node-b", 1);
  INFO(r.detail);
  REQUIRE(r.category == 0);
  CHECK(r.value > 0);
  CHECK_FALSE(r.ran_locally);
  CHECK(r.attempts == 1);
  CHECK(c.append_runs(1) == 0);  // never attempted on the replica
  CHECK(c.append_runs(0) == 1);
  CHECK(c.query(0,
                "SELECT count(*) FROM events WHERE writer = 'node-b' AND seq = 1 AND ran_on = "
                "'node-a' AND id = " +
                    std::to_string(r.value)) == 1);
  // On the primary itself, the call runs locally and nothing is sent.
  const auto local = c.append(0, "node-a", 1);
  REQUIRE(local.category == 0);
  CHECK(local.ran_locally);
  CHECK(c.append_runs(0) == 2);
}

TEST_CASE(
    "a reply lost after the commit: the retry returns the stored result and the row exists once") {
  test_cluster c;
  cutting_proxy proxy(c.ports[0]);
  c.start(0);
  // node-b reaches the primary only through the proxy; a long TTL keeps its cache warm.
  c.start(1, {"--ttl-ms", "20000"}, {proxy.port(), c.ports[1], c.ports[2]});
  c.start(2);
  for (std::size_t i = 0; i < 3; ++i) REQUIRE(c.migrated(i));
  REQUIRE(c.append(1, "node-b", 1).category == 0);  // warm: the connection and discovery
  const auto runs_before = c.append_runs(0);

  proxy.arm("demo.append");
  const auto r = c.append(1, "node-b", 2);
  INFO(r.detail);
  REQUIRE(r.category == 0);
  CHECK(proxy.cuts() == 1);
  CHECK(r.attempts >= 2);                      // the first reply was lost
  CHECK(c.append_runs(0) == runs_before + 1);  // the function ran once
  CHECK(c.rows(0, "node-b", 2) == 1);          // the row exists once
  CHECK(c.query(0, "SELECT id FROM events WHERE writer = 'node-b' AND seq = 2") ==
        r.value);  // the stored result
}

TEST_CASE("failover during writes from two replicas: every acknowledged write exactly once") {
  test_cluster c;
  c.start_all();
  std::map<std::pair<std::string, int>, bool> acknowledged;
  std::mutex mutex;
  std::atomic<int> done_b{0}, done_c{0};
  auto writer = [&](std::size_t node, std::atomic<int>& done) {
    const std::string name = c.sim.hostname(node);
    for (int seq = 1; seq <= 30; ++seq) {
      bool ok = false;
      try {
        ok = c.append(node, name, seq, 8000).category == 0;
      } catch (const std::exception&) {
      }
      std::lock_guard lock(mutex);
      acknowledged[{name, seq}] = ok;
      ++done;
    }
  };
  std::thread b(writer, 1, std::ref(done_b)), w(writer, 2, std::ref(done_c));
  const auto until = std::chrono::steady_clock::now() + 20s;
  while ((done_b < 10 || done_c < 10) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(1ms);  // polling the writers' progress, bounded
  }
  c.nodes[0]->kill_now();
  REQUIRE(c.nodes[0]->wait_exit(5s).has_value());
  // node-c is promoted with everything node-a committed: exactly once covers what LiteFS
  // replicated (with promotion::as_is, node-a's unshipped transactions would be lost).
  c.sim.failover(2, 150ms, fwd_sim::cluster::promotion::caught_up);
  b.join();
  w.join();
  c.sim.stop_replication();
  c.sim.replicate_now();
  int acked = 0;
  for (const auto& [key, ok] : acknowledged) {
    const auto n = c.rows(2, key.first, key.second);
    INFO(key.first << "#" << key.second);
    if (ok) {
      ++acked;
      CHECK(n == 1);
    } else {
      CHECK(n <= 1);
    }
  }
  CHECK(acked >= 50);
  CHECK(c.query(2,
                "SELECT count(*) FROM (SELECT writer, seq FROM events GROUP BY writer, seq HAVING "
                "count(*) > 1)") == 0);
}

TEST_CASE(
    "read-your-writes: with replication lag the caller's next read sees its write, without it, it "
    "may not") {
  test_cluster c;
  c.start_all();
  c.sim.start_replication(300ms);
  const auto with = c.append(1, "node-b", 1, 5000, true);
  INFO(with.detail);
  REQUIRE(with.category == 0);
  CHECK(with.local_txid >= with.txid);
  CHECK(with.visible == 1);

  const auto without = c.append(1, "node-b", 2, 5000, false);
  REQUIRE(without.category == 0);
  CHECK(without.visible == 0);  // committed on the primary, not yet here
  CHECK(c.rows(0, "node-b", 2) == 1);
}

TEST_CASE(
    "a write whose replication wait runs out is reported as committed and unconfirmed "
    "(replication_lag), not as failed") {
  test_cluster c;
  c.start_all();
  c.sim.start_replication(2000ms);
  const auto r = c.append(1, "node-b", 1, 300, true);
  CHECK(r.category == 1);
  CHECK(r.code == fwd_code(fwd::errc::replication_lag));
  // Committed on the primary, not confirmed here: a retry with the same request id is safe.
  CHECK(fwd::classify(fwd::errc::replication_lag) == fwd::error_class::unconfirmed);
  CHECK(c.rows(0, "node-b", 1) == 1);  // it did commit, once
}

TEST_CASE("a constraint violation on the primary returns SQLite's code and is not retried") {
  test_cluster c;
  c.start_all();
  REQUIRE(c.control.call(c.ports[1], "tag", {"unique-label"}).category == 0);
  const auto r = c.control.call(c.ports[1], "tag", {"unique-label"});
  CHECK(r.category == 2);
  CHECK(r.code == 2067);  // SQLITE_CONSTRAINT_UNIQUE
  CHECK(r.attempts == 1);
  CHECK(c.query(0, "SELECT count(*) FROM tags WHERE label = 'unique-label'") == 1);
}

TEST_CASE("a call whose deadline has passed fails with timeout and writes nothing") {
  test_cluster c;
  c.start_all();
  const auto r = c.append(1, "node-b", 1, 0);
  CHECK(r.category == 1);
  CHECK(r.code == fwd_code(fwd::errc::timeout));
  CHECK(c.rows(0, "node-b", 1) == 0);
}

TEST_CASE(
    "with no primary (an election) a write fails with no_primary by its deadline, then works once "
    "one is elected") {
  test_cluster c;
  c.start_all();
  c.sim.begin_election();
  const auto start = std::chrono::steady_clock::now();
  const auto r = c.append(1, "node-b", 1, 400);
  const auto took = std::chrono::steady_clock::now() - start;
  INFO(r.detail);
  CHECK(r.category == 1);
  CHECK(r.code == fwd_code(fwd::errc::no_primary));
  CHECK(took < 3s);
  c.sim.elect(0);
  const auto after = c.append(1, "node-b", 2, 5000);
  INFO(after.detail);
  CHECK(after.category == 0);
  CHECK(c.rows(0, "node-b", 1) == 0);
  CHECK(c.rows(0, "node-b", 2) == 1);
}

TEST_CASE("a bulk insert from a replica is one forwarded call, all rows in one transaction") {
  test_cluster c;
  c.start_all({"--raw-sql"});
  const auto txid_before = c.sim.position(0).txid;
  const auto r =
      c.control.call(c.ports[2], "bulk", {"INSERT INTO tags(label) VALUES (?1)", "200", "bulk-"});
  INFO(r.detail);
  REQUIRE(r.category == 0);
  CHECK(r.value == 200);
  CHECK(c.query(0, "SELECT count(*) FROM tags WHERE label LIKE 'bulk-%'") == 200);
  CHECK(c.sim.position(0).txid == txid_before + 1);  // one transaction
  // A failing row fails the whole bulk call: nothing of it is applied.
  const auto dup =
      c.control.call(c.ports[2], "bulk", {"INSERT INTO tags(label) VALUES (?1)", "201", "bulk-"});
  CHECK(dup.category == 2);
  CHECK(c.query(0, "SELECT count(*) FROM tags WHERE label LIKE 'bulk-%'") == 200);
}

TEST_CASE("a user's multi-statement transaction function runs whole or not at all on the primary") {
  test_cluster c;
  c.start_all();
  const auto ok = c.control.call(c.ports[1], "transfer", {"1", "2", "30"});
  INFO(ok.detail);
  REQUIRE(ok.category == 0);
  CHECK(ok.value == 70);
  const auto refused = c.control.call(c.ports[1], "transfer", {"1", "2", "100"});
  CHECK(refused.category == 1);
  CHECK(refused.code == fwd_code(fwd::errc::remote_failure));
  CHECK(refused.detail.find("insufficient funds") != std::string::npos);
  CHECK(c.query(0, "SELECT balance FROM accounts WHERE id = 1") == 70);
  CHECK(c.query(0, "SELECT balance FROM accounts WHERE id = 2") == 30);
}

TEST_CASE(
    "migrations: replicas that start before the primary wait, the primary applies each migration "
    "once") {
  test_cluster c;
  c.start(1);
  c.start(2);
  REQUIRE(c.nodes[1]->wait_for("READY ", 10s));
  REQUIRE(c.nodes[2]->wait_for("READY ", 10s));
  CHECK_FALSE(c.migrated(1, 300ms));  // no fwd primary yet: they wait
  c.start(0);
  for (std::size_t i = 0; i < 3; ++i) REQUIRE(c.migrated(i));
  CHECK(c.query(0, "SELECT count(*) FROM _fwd_migrations") == 3);
  CHECK(c.query(1, "SELECT max(version) FROM _fwd_migrations") == 3);
  CHECK(c.query(2, "SELECT max(version) FROM _fwd_migrations") == 3);
  CHECK(c.query(
            0, "SELECT count(*) FROM sqlite_master WHERE name IN ('events', 'tags', 'accounts')") ==
        3);
}
