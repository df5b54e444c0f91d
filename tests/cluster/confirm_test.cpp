// Read-your-writes after a lossy failover: LiteFS replicates asynchronously, so a primary
// can commit a write, answer it, and lose it in a failover whose new primary then writes
// another transaction under the same TXID. A replica that reaches that TXID must not
// report the lost write as done: it confirms the write by the primary's checksum at that
// TXID, or by the write's dedup row in its own database, and otherwise retries it with the
// same request id. Three fwd_node processes over the LiteFS simulation.

#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <fwd/error.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster_driver.hpp"
#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

// Three node processes over a simulated cluster; node 0 (node-a) is the LiteFS primary.
struct confirm_cluster {
  fwd_sim::cluster sim;
  std::vector<std::unique_ptr<demo::reserved_port>> reserved;
  std::vector<std::uint16_t> ports;
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  demo::controller control;

  // `events`: the nodes follow the simulation's LiteFS /events (tx events carry each
  // checksum); otherwise they poll `<db>-pos`.
  explicit confirm_cluster(bool events) : sim(fwd_sim::cluster_options{}) {
    ::setenv("FWD_NODE_TRACE", "1", 0);  // a failing test shows each node's probes and calls
    for (std::size_t i = 0; i < sim.size(); ++i) {
      reserved.push_back(std::make_unique<demo::reserved_port>());
      ports.push_back(reserved.back()->port());
    }
    nodes.resize(sim.size());
    sim.start_replication(2ms);
    for (std::size_t i = 0; i < sim.size(); ++i) {
      std::vector<std::string> extra;
      if (events) extra = {"--litefs-http", std::to_string(sim.http_port(i))};
      nodes[i] = std::make_unique<demo::node_process>(
          FWD_NODE_PATH, demo::node_arguments(sim.hostname(i), sim.mount(i).string(), ports[i], ports, true, extra),
          false);
    }
    for (std::size_t i = 0; i < sim.size(); ++i) {
      const bool ok = nodes[i]->wait_for("MIGRATED ", 20s).has_value();
      if (!ok) UNSCOPED_INFO("node " << i << " printed:\n" << nodes[i]->output());
      REQUIRE(ok);
    }
  }

  demo::control_result append(std::size_t from, const std::string& writer, int seq, std::int64_t deadline_ms) {
    return control.call(ports[from], "append", {writer, std::to_string(seq)}, deadline_ms, true);
  }

  std::int64_t append_runs(std::size_t i) { return control.stats_of(ports[i]).at(0); }

  // A number from node i's copy of the database (plain unix VFS, read-only).
  std::int64_t query(std::size_t i, const std::string& sql) {
    sqlite3* db = nullptr;
    std::int64_t value = -1;
    if (sqlite3_open_v2(sim.database_path(i).c_str(), &db, SQLITE_OPEN_READONLY, "unix") == SQLITE_OK) {
      sqlite3_busy_timeout(db, 2000);
      sqlite3_stmt* stmt = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW)
        value = sqlite3_column_int64(stmt, 0);
      sqlite3_finalize(stmt);
    }
    sqlite3_close(db);
    return value;
  }

  std::int64_t rows(std::size_t i, const std::string& writer, int seq) {
    return query(i, "SELECT count(*) FROM events WHERE writer = '" + writer + "' AND seq = " + std::to_string(seq));
  }

  // The new primary's own transactions, written as a service on that node would (through
  // the simulation's VFS, which advances its `<db>-pos`).
  void write_on(std::size_t i, int transactions) {
    fwd_sim::install_vfs();
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(sim.database_path(i).c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
    sqlite3_busy_timeout(db, 2000);
    for (int t = 0; t < transactions; ++t) {
      const std::string sql = "INSERT INTO tags(label) VALUES ('written by the new primary " + std::to_string(t) + "')";
      CHECK(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    }
    sqlite3_close(db);
  }
};

// Waits (bounded) until node i's position passes `txid`.
bool position_passes(fwd_sim::cluster& sim, std::size_t i, std::uint64_t txid, std::chrono::milliseconds bound) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (sim.position(i).txid <= txid) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);  // polling the simulated mount's file, bounded
  }
  return true;
}

// Waits (bounded) until node i holds node j's position.
bool holds_position_of(fwd_sim::cluster& sim, std::size_t i, std::size_t j, std::chrono::milliseconds bound) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (!(sim.position(i) == sim.position(j))) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);  // polling the simulated mounts' files, bounded
  }
  return true;
}

}  // namespace

// Catch2 v2's console reporter indents a failing test's name past its first ": ", and
// aborts when that is past the console's width: such names keep any ": " near the start
// (and no ';', which splits a name in ctest's discovery).
TEST_CASE(
    "lossy promotion, a write the old primary committed and answered, then lost, is not reported "
    "done but retried with its request id and applied once") {
  const bool events = GENERATE(false, true);
  // 1: the new primary writes another transaction at the lost write's TXID (the checksum
  // differs there); 2: it writes two, and the replica goes past that TXID unseen.
  const int new_primary_writes = GENERATE(1, 2);
  INFO((events ? "following /events" : "polling <db>-pos") << ", the new primary writes " << new_primary_writes);
  confirm_cluster c(events);
  REQUIRE(c.append(1, "node-b", 0, 5000).category == 0);  // warm: connection and discovery

  // node-c, promoted below, must hold all node-a had before the write (the read-your-writes
  // wait of the warm call covered node-b only), so that the write's TXID is the one node-c
  // writes next.
  REQUIRE(holds_position_of(c.sim, 2, 0, 5s));
  // node-a's commits stay on node-a: nothing is shipped until the failover is over.
  c.sim.stop_replication();
  const auto before = c.sim.position(0);
  REQUIRE(c.sim.position(2) == before);
  demo::control_result r;
  // Joined on every way out (a failed REQUIRE too); the call is bounded by its deadline.
  std::jthread caller([&] { r = c.append(1, "node-b", 1, 10000); });
  const bool committed = position_passes(c.sim, 0, before.txid, 5s);
  const auto lost = c.sim.position(0);  // the write, committed and answered by node-a
  // node-c, which has only what was shipped, takes over and writes its own transactions.
  c.sim.failover(2, 0ms, fwd_sim::cluster::promotion::as_is);
  c.write_on(2, new_primary_writes);
  const auto other = c.sim.position(2);
  c.sim.start_replication(2ms);
  caller.join();
  REQUIRE(committed);
  CHECK(lost.txid == before.txid + 1);
  CHECK(other.txid == before.txid + static_cast<std::uint64_t>(new_primary_writes));
  if (new_primary_writes == 1) CHECK(other.checksum != lost.checksum);  // same TXID, another history

  INFO(r.detail);
  INFO("node-b printed:\n" << c.nodes[1]->output());
  CHECK(r.category == 0);  // done, for real: retried on node-c
  CHECK(r.attempts >= 2);
  CHECK(r.visible == 1);  // read-your-writes holds
  CHECK(c.append_runs(2) == 1);  // ran once more, on the new primary
  c.sim.stop_replication();
  c.sim.replicate_now();
  CHECK(c.rows(2, "node-b", 1) == 1);
  CHECK(c.rows(1, "node-b", 1) == 1);
}

TEST_CASE(
    "lossy promotion under 64 concurrent callers on a replica: no call with deadline left fails, every "
    "acknowledged write exactly once") {
  confirm_cluster c(false);
  constexpr int callers = 64;
  constexpr int calls_each = 6;
  std::mutex mutex;
  std::condition_variable progressed;
  std::map<std::pair<int, int>, demo::control_result> outcomes;
  std::vector<std::jthread> threads;  // joined on every way out, each call bounded
  for (int w = 0; w < callers; ++w) {
    threads.emplace_back([&, w] {
      for (int seq = 1; seq <= calls_each; ++seq) {
        demo::control_result r;
        try {
          r = c.append(1, "caller-" + std::to_string(w), seq, 15000);
        } catch (const std::exception& e) {
          r.category = 3;
          r.detail = e.what();
        }
        std::lock_guard lock(mutex);
        outcomes[{w, seq}] = r;
        progressed.notify_all();
      }
    });
  }
  // The primary dies under load, and node-c is promoted with what was shipped to it.
  {
    std::unique_lock lock(mutex);
    progressed.wait_for(lock, 30s, [&] { return outcomes.size() >= static_cast<std::size_t>(callers); });
  }
  c.nodes[0]->kill_now();
  REQUIRE(c.nodes[0]->wait_exit(5s).has_value());
  c.sim.failover(2, 150ms, fwd_sim::cluster::promotion::as_is);
  for (auto& t : threads) t.join();
  c.sim.stop_replication();
  c.sim.replicate_now();

  int acked = 0;
  int failed = 0;
  int retried = 0;
  for (const auto& [key, r] : outcomes) {
    const std::string writer = "caller-" + std::to_string(key.first);
    INFO(writer << " #" << key.second << ": " << r.detail);
    const auto n = c.rows(2, writer, key.second);
    if (r.attempts > 1) ++retried;
    if (r.category == 0) {
      ++acked;
      CHECK(n == 1);
      CHECK(r.visible == 1);
    } else {
      ++failed;
      CHECK(n <= 1);
    }
  }
  INFO("node-b printed:\n" << c.nodes[1]->output());
  CHECK(outcomes.size() == static_cast<std::size_t>(callers * calls_each));
  CHECK(retried > 0);  // the failover hit calls in flight
  CHECK(failed == 0);  // every call had deadline left
  CHECK(acked == callers * calls_each);
  CHECK(c.query(2, "SELECT count(*) FROM (SELECT writer, seq FROM events GROUP BY writer, seq HAVING count(*) > 1)") ==
        0);
}
