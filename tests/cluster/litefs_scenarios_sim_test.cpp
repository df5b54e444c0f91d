// The scenarios of tests/litefs/litefs_scenarios.hpp on the LiteFS simulation: fwd_node
// processes over fwd_sim mounts, LiteFS killed (a dead FUSE mount) and restarted (a new
// mount on top), and forwarded writes with read-your-writes. The same bodies run on real LiteFS in tests/litefs (label litefs).

#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cluster_driver.hpp"
#include "litefs_scenarios.hpp"
#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

// Two fwd_node processes over a simulated two-node cluster (node 0 primary, WAL).
struct sim_env {
  fwd_sim::cluster sim;
  std::vector<std::unique_ptr<demo::reserved_port>> reserved;
  std::vector<std::uint16_t> ports;
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  demo::controller control;

  static fwd_sim::cluster_options options() {
    fwd_sim::cluster_options o;
    o.hostnames = {"node1", "node2"};
    o.mode = fwd_sim::journal_mode::wal;
    return o;
  }

  sim_env() : sim(options()) {
    ::setenv("FWD_NODE_TRACE", "1", 0);
    for (std::size_t i = 0; i < sim.size(); ++i) {
      reserved.push_back(std::make_unique<demo::reserved_port>());
      ports.push_back(reserved.back()->port());
    }
    sim.start_replication(2ms);
    for (std::size_t i = 0; i < sim.size(); ++i) {
      nodes.push_back(std::make_unique<demo::node_process>(
          FWD_NODE_PATH,
          demo::node_arguments(sim.hostname(i), sim.mount(i).string(), ports[i], ports, true),
          false));
    }
    for (auto& n : nodes) {
      const bool ok = n->wait_for("MIGRATED ", 30s).has_value();
      if (!ok) UNSCOPED_INFO(n->output());
      REQUIRE(ok);
    }
  }

  demo::control_result append(std::size_t from, const std::string& writer, int seq,
                              std::int64_t deadline_ms, bool ryw = true) {
    return control.call(ports[from], "append", {writer, std::to_string(seq)}, deadline_ms, ryw);
  }
  void kill_litefs(std::size_t i) { sim.kill(i); }
  void restart_litefs(std::size_t i) { sim.restart(i); }
  template <class Predicate>
  static bool wait_until(Predicate done, std::chrono::milliseconds bound) {
    const auto until = std::chrono::steady_clock::now() + bound;
    while (!done()) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(1ms);  // polling files: there is no event to wait on
    }
    return true;
  }
  bool wait_connected(std::size_t i, std::chrono::milliseconds bound) {
    return wait_until([&] { return std::filesystem::exists(sim.mount(i) / ".primary"); }, bound);
  }
  bool wait_caught_up(std::size_t primary, std::chrono::milliseconds bound) {
    return wait_until(
        [&] {
          for (std::size_t i = 0; i < sim.size(); ++i)
            if (sim.position(i) != sim.position(primary)) return false;
          return true;
        },
        bound);
  }
  std::int64_t count(std::size_t i, const std::string& where) {
    sqlite3* db = nullptr;
    std::int64_t value = -1;
    const std::string sql = "SELECT count(*) FROM events WHERE " + where;
    if (sqlite3_open_v2(sim.database_path(i).c_str(), &db, SQLITE_OPEN_READONLY, "unix") ==
        SQLITE_OK) {
      sqlite3_busy_timeout(db, 2000);
      sqlite3_stmt* stmt = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
          sqlite3_step(stmt) == SQLITE_ROW)
        value = sqlite3_column_int64(stmt, 0);
      sqlite3_finalize(stmt);
    }
    sqlite3_close(db);
    return value;
  }
  bool node_running(std::size_t i) { return !nodes[i]->wait_exit(0ms).has_value(); }
  std::string outputs() {
    std::string all;
    for (std::size_t i = 0; i < nodes.size(); ++i)
      all += "--- fwd node " + std::to_string(i) + ":\n" + nodes[i]->output();
    return all;
  }
};

#define REQUIRE_DEAD_MOUNTS()                                                  \
  do {                                                                         \
    if (auto why_ = fwd_sim::dead_mount_unavailable()) {                       \
      std::printf("SKIPPED (dead mounts unavailable): %s\n", why_->c_str());   \
      std::fflush(stdout);                                                     \
      return;                                                                  \
    }                                                                          \
  } while (false)

}  // namespace

TEST_CASE("simulated LiteFS: LiteFS killed and restarted under the running primary node - calls "
          "fail classified meanwhile, then succeed exactly once, and the node never dies (WAL)") {
  REQUIRE_DEAD_MOUNTS();
  sim_env env;
  litefs_scenarios::litefs_restarts_under_primary(env);
}

TEST_CASE("simulated LiteFS: LiteFS killed and restarted under a running replica node - its "
          "calls fail classified meanwhile, then succeed exactly once, and the node never dies "
          "(WAL)") {
  REQUIRE_DEAD_MOUNTS();
  sim_env env;
  litefs_scenarios::litefs_restarts_under_replica(env);
}

TEST_CASE("simulated LiteFS: writes forwarded from a replica run exactly once, and read-your-writes "
          "shows each on the calling node when the call returns (WAL)") {
  sim_env env;
  litefs_scenarios::forwarded_writes_exactly_once_with_read_your_writes(env);
}
