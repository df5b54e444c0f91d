// Durable acknowledgement across processes: three fwd_node processes over the LiteFS
// simulation; node 0 is the primary. A replica whose process is stopped (SIGSTOP) reports
// nothing; a replica the simulation does not replicate to reports an old position.

#include <signal.h>
#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fwd/error.hpp>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cluster_driver.hpp"
#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

constexpr int not_yet_durable = static_cast<int>(fwd::errc::not_yet_durable);

struct durable_cluster {
  fwd_sim::cluster sim;
  std::vector<std::unique_ptr<demo::reserved_port>> reserved;
  std::vector<std::uint16_t> ports;
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  std::vector<bool> paused;
  demo::controller control;

  // `extra[i]`: node i's extra fwd_node arguments.
  explicit durable_cluster(const std::vector<std::vector<std::string>>& extra) : sim(fwd_sim::cluster_options{}) {
    ::setenv("FWD_NODE_TRACE", "1", 0);
    for (std::size_t i = 0; i < sim.size(); ++i) {
      reserved.push_back(std::make_unique<demo::reserved_port>());
      ports.push_back(reserved.back()->port());
    }
    nodes.resize(sim.size());
    paused.resize(sim.size(), false);
    sim.start_replication(2ms);
    for (std::size_t i = 0; i < sim.size(); ++i) {
      nodes[i] = std::make_unique<demo::node_process>(
          FWD_NODE_PATH, demo::node_arguments(sim.hostname(i), sim.mount(i).string(), ports[i], ports, true, extra[i]),
          false);
    }
    for (std::size_t i = 0; i < sim.size(); ++i) {
      const bool ok = nodes[i]->wait_for("MIGRATED ", 30s).has_value();
      if (!ok) UNSCOPED_INFO("node " << i << " printed:\n" << nodes[i]->output());
      REQUIRE(ok);
    }
  }

  ~durable_cluster() {
    for (std::size_t i = 0; i < nodes.size(); ++i) resume(i);
  }

  void pause(std::size_t i) {
    ::kill(nodes[i]->pid(), SIGSTOP);
    paused[i] = true;
  }
  void resume(std::size_t i) {
    if (!paused[i]) return;
    ::kill(nodes[i]->pid(), SIGCONT);
    paused[i] = false;
  }

  demo::control_result append(std::size_t from, const std::string& writer, int seq, std::int64_t deadline_ms = 3000) {
    return control.call(ports[from], "append", {writer, std::to_string(seq)}, deadline_ms, false);
  }

  std::int64_t rows_on_primary(const std::string& writer, int seq) {
    sqlite3* db = nullptr;
    std::int64_t value = -1;
    const std::string sql = "SELECT count(*) FROM events WHERE writer = '" + writer + "' AND seq = " + std::to_string(seq);
    if (sqlite3_open_v2(sim.database_path(0).c_str(), &db, SQLITE_OPEN_READONLY, "unix") == SQLITE_OK) {
      sqlite3_busy_timeout(db, 2000);
      sqlite3_stmt* stmt = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW)
        value = sqlite3_column_int64(stmt, 0);
      sqlite3_finalize(stmt);
    }
    sqlite3_close(db);
    return value;
  }
};

std::vector<std::vector<std::string>> every_node(std::vector<std::string> args) { return {args, args, args}; }

}  // namespace

TEST_CASE("durability replicas(1): a write is acknowledged once a replica reports it, and only then") {
  durable_cluster c(every_node({"--durability", "replicas:1"}));

  // Locally on the primary, and forwarded from a replica (the durability travels with it).
  for (std::size_t from : {0u, 1u}) {
    const auto r = c.append(from, "d1", static_cast<int>(from));
    INFO(r.detail);
    REQUIRE(r.category == 0);
    // Acknowledged: some replica holds the commit.
    CHECK(std::max(c.sim.position(1).txid, c.sim.position(2).txid) >= r.txid);
  }

  // Without replication no replica can report the write: not acknowledged.
  c.sim.stop_replication();
  const auto started = std::chrono::steady_clock::now();
  const auto r = c.append(0, "d1", 10, 1500);
  const auto took = std::chrono::steady_clock::now() - started;
  INFO(r.detail);
  CHECK(r.category == 1);
  CHECK(r.code == not_yet_durable);
  CHECK(took < 1500ms + 500ms);
  CHECK(c.rows_on_primary("d1", 10) == 1);

  // Replication back: the next write is acknowledged again.
  c.sim.start_replication(2ms);
  const auto again = c.append(0, "d1", 11);
  INFO(again.detail);
  CHECK(again.category == 0);
}

TEST_CASE("durability replicas(1) with every replica stopped: committed, not yet durable, within the deadline") {
  durable_cluster c(every_node({"--durability", "replicas:1"}));
  REQUIRE(c.append(0, "d2", 0).category == 0);

  c.pause(1);
  c.pause(2);
  for (int seq = 1; seq <= 2; ++seq) {
    const auto started = std::chrono::steady_clock::now();
    const auto r = c.append(0, "d2", seq, 1200);
    const auto took = std::chrono::steady_clock::now() - started;
    INFO(r.detail);
    CHECK(r.category == 1);
    CHECK(r.code == not_yet_durable);
    CHECK(r.detail.find("committed on the primary") != std::string::npos);
    CHECK(r.detail.find("same request id is safe") != std::string::npos);
    CHECK(took < 1200ms + 300ms);
    CHECK(c.rows_on_primary("d2", seq) == 1);
  }
  CHECK(fwd::classify(fwd::errc::not_yet_durable) == fwd::error_class::committed_not_durable);

  // One replica back is enough.
  c.resume(2);
  const auto r = c.append(0, "d2", 3, 5000);
  INFO(r.detail);
  CHECK(r.category == 0);
}

TEST_CASE("durability candidates(): the primary waits for the LiteFS candidates, not for the others") {
  // Node 1 is a candidate, node 2 is not.
  durable_cluster c({{"--durability", "candidates"},
                     {"--durability", "candidates"},
                     {"--durability", "candidates", "--not-candidate"}});
  REQUIRE(c.append(0, "d3", 0).category == 0);

  // The non-candidate stopped: nothing changes.
  c.pause(2);
  {
    const auto r = c.append(0, "d3", 1);
    INFO(r.detail);
    CHECK(r.category == 0);
  }
  c.resume(2);

  // The candidate stopped: the other replica's report is not enough.
  c.pause(1);
  {
    const auto r = c.append(0, "d3", 2, 1200);
    INFO(r.detail);
    CHECK(r.category == 1);
    CHECK(r.code == not_yet_durable);
    CHECK(c.rows_on_primary("d3", 2) == 1);
  }
  c.resume(1);
  const auto r = c.append(0, "d3", 3, 5000);
  INFO(r.detail);
  CHECK(r.category == 0);
}

TEST_CASE("durability none(): acknowledged at commit, whatever the replicas do") {
  durable_cluster c(every_node({"--durability", "none"}));
  c.sim.stop_replication();
  c.pause(1);
  c.pause(2);
  const auto started = std::chrono::steady_clock::now();
  const auto r = c.append(0, "d4", 0);
  INFO(r.detail);
  CHECK(r.category == 0);
  CHECK(std::chrono::steady_clock::now() - started < 1s);
  CHECK(c.rows_on_primary("d4", 0) == 1);
}

TEST_CASE("durability replicas(1): a replica that reports a commit the service made on the primary outside fwd "
          "counts, it is not taken for a replica on another history") {
  durable_cluster c(every_node({"--durability", "replicas:1"}));
  REQUIRE(c.append(0, "d5", 0).category == 0);

  // No shipment until both commits are made: the replicas go from before the durable
  // write straight past it, to a commit fwd did not make.
  c.sim.stop_replication();
  auto durable = std::async(std::launch::async, [&c] { return c.append(0, "d5", 1, 8000); });
  const auto committed_by = std::chrono::steady_clock::now() + 8s;
  while (c.rows_on_primary("d5", 1) != 1 && std::chrono::steady_clock::now() < committed_by)
    std::this_thread::sleep_for(5ms);
  REQUIRE(c.rows_on_primary("d5", 1) == 1);
  const auto fwd_commit = c.sim.position(0).txid;

  // The service's own connection on the primary, through the LiteFS simulation.
  fwd_sim::install_vfs();
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(c.sim.database_path(0).c_str(), &db, SQLITE_OPEN_READWRITE, fwd_sim::vfs_name) ==
          SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  const int rc = sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS outside(x); INSERT INTO outside VALUES (1)", nullptr,
                              nullptr, nullptr);
  INFO(sqlite3_errmsg(db));
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
  REQUIRE(c.sim.position(0).txid > fwd_commit);

  c.sim.start_replication(2ms);
  const auto r = durable.get();
  INFO(r.detail);
  CHECK(r.category == 0);
  CHECK(std::max(c.sim.position(1).txid, c.sim.position(2).txid) > fwd_commit);
}
