// LiteFS stopped and restarted under running fwd nodes (real LiteFS, WAL, static lease):
// the service keeps running, calls fail with a classified, retryable error while LiteFS is
// down, and succeed again once LiteFS is back on the same directory (a new FUSE mount on
// top of the dead one), without restarting the service. The writer's connection on the
// dead mount is closed before it is touched again: no SIGBUS from the memory-mapped -shm.
// Also: forwarded writes exactly once with read-your-writes. The bodies are shared with the
// simulation (tests/cluster/litefs_scenarios_sim_test.cpp).

#include <chrono>
#include <string>

#include "litefs_nodes.hpp"
#include "litefs_scenarios.hpp"

namespace {

// Two fwd_node processes over a real two-node LiteFS cluster (node 0 primary, WAL).
struct real_env {
  litefs_cluster c{{.nodes = 2, .lease = fwd_test::lease_kind::static_lease}};
  std::unique_ptr<fwd_nodes> n;

  real_env() {
    c.start_all();
    create_database(c, 0, true);
    n = std::make_unique<fwd_nodes>(c);
    n->start_all();
  }
  demo::control_result append(std::size_t from, const std::string& writer, int seq,
                              std::int64_t deadline_ms, bool ryw = true) {
    return n->append(from, writer, seq, deadline_ms, ryw);
  }
  void kill_litefs(std::size_t i) { c.kill(i); }  // the mount stays, dead (ENOTCONN)
  void restart_litefs(std::size_t i) { c.start(i); }  // mounted on top of the dead mount
  bool wait_connected(std::size_t i, std::chrono::milliseconds t) { return c.wait_connected(i, t); }
  bool wait_caught_up(std::size_t primary, std::chrono::milliseconds t) {
    return c.wait_caught_up(primary, db_name, t);
  }
  std::int64_t count(std::size_t i, const std::string& where) { return cli_count(c, i, where); }
  bool node_running(std::size_t i) { return !n->nodes[i]->wait_exit(0ms).has_value(); }
  std::string outputs() { return n->outputs(); }
};

}  // namespace

TEST_CASE(
    "real LiteFS: LiteFS killed and restarted under the running primary node - calls fail "
    "classified meanwhile, then succeed, and the node never dies (WAL)") {
  REQUIRE_REAL_LITEFS();
  real_env env;
  litefs_scenarios::litefs_restarts_under_primary(env);
}

TEST_CASE(
    "real LiteFS: LiteFS killed and restarted under a running replica node - its calls fail "
    "classified meanwhile, then succeed, and the node never dies (WAL)") {
  REQUIRE_REAL_LITEFS();
  real_env env;
  litefs_scenarios::litefs_restarts_under_replica(env);
}

TEST_CASE("real LiteFS: writes forwarded from a replica run exactly once, and read-your-writes "
          "shows each on the calling node when the call returns (WAL)") {
  REQUIRE_REAL_LITEFS();
  real_env env;
  litefs_scenarios::forwarded_writes_exactly_once_with_read_your_writes(env);
}
