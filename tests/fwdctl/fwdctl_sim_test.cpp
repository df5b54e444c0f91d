// fwdctl as an operator runs it, against fwd_node processes over the LiteFS simulation:
// status (table and JSON), its output with a member down and with a wrong secret, doctor
// passing and failing, and watch following a failover.

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fwd/version.hpp>
#include <memory>
#include <string>
#include <vector>

#include "../support/temp_dir.hpp"
#include "cluster_driver.hpp"
#include "fwdctl_process.hpp"
#include "litefs_sim.hpp"

using namespace std::chrono_literals;
using fwdctl_test::run;

namespace {

// Three fwd_node processes over a simulated cluster (node-a primary), all started.
struct sim_cluster {
  fwd_sim::cluster sim;
  std::vector<std::unique_ptr<demo::reserved_port>> reserved;
  std::vector<std::uint16_t> ports;
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  fwd_test::temp_dir dir;
  std::filesystem::path secret_file = fwdctl_test::write_file(dir.path() / "secret", fwdctl_test::cluster_secret);

  sim_cluster() : sim(fwd_sim::cluster_options{}) {
    for (std::size_t i = 0; i < sim.size(); ++i) {
      reserved.push_back(std::make_unique<demo::reserved_port>());
      ports.push_back(reserved.back()->port());
    }
    sim.start_replication(2ms);
    nodes.resize(sim.size());
    for (std::size_t i = 0; i < sim.size(); ++i) {
      nodes[i] = std::make_unique<demo::node_process>(
          FWD_NODE_PATH,
          demo::node_arguments(sim.hostname(i), sim.mount(i).string(), ports[i], ports, true,
                               {"--secret", fwdctl_test::cluster_secret, "--ttl-ms", "200"}),
          false);
    }
    for (std::size_t i = 0; i < sim.size(); ++i) {
      const bool up = nodes[i]->wait_for("MIGRATED ", 30s).has_value();
      if (!up) UNSCOPED_INFO("node " << i << " printed:\n" << nodes[i]->output());
      REQUIRE(up);
    }
  }

  std::string address(std::size_t i) const { return "127.0.0.1:" + std::to_string(ports[i]); }
  std::string members() const { return address(0) + "," + address(1) + "," + address(2); }
  void kill(std::size_t i) {
    nodes[i]->kill_now();
    REQUIRE(nodes[i]->wait_exit(5s).has_value());
  }
};

}  // namespace

TEST_CASE("fwdctl status shows every member's role, position, version and primary, and exits 0") {
  sim_cluster c;
  const auto r = run({"status", "--members", c.members(), "--secret-file", c.secret_file.string()});
  INFO(r.output);
  CHECK(r.status == 0);
  for (const char* header : {"MEMBER", "LITEFS HOST", "ROLE", "TXID", "LAG", "VERSION", "RTT", "PRIMARY"})
    CHECK_THAT(r.output, Catch::Contains(header));
  for (std::size_t i = 0; i < 3; ++i) CHECK_THAT(r.output, Catch::Contains(c.address(i)));
  CHECK_THAT(r.output, Catch::Contains("node-a") && Catch::Contains("node-b") && Catch::Contains("node-c"));
  CHECK_THAT(r.output, Catch::Contains("primary: node-a (named by 3 of 3 members that answered)"));
  CHECK_THAT(r.output, Catch::Contains(FWD_VERSION_STRING));
  CHECK_THAT(r.output, !Catch::Contains("disagrees") && !Catch::Contains("unreachable"));
}

TEST_CASE("fwdctl status --json gives the same for scripts") {
  sim_cluster c;
  const auto r = run({"status", "--json", "--members", c.members(), "--secret-file", c.secret_file.string()});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.rfind("{\"primary\":\"node-a\",\"agree\":true,\"members\":[", 0) == 0);
  CHECK_THAT(r.output, Catch::Contains("\"role\":\"primary\"") && Catch::Contains("\"role\":\"replica\""));
  CHECK_THAT(r.output, Catch::Contains(std::string("\"version\":\"") + FWD_VERSION_STRING + "\""));
  std::size_t ok = 0;
  for (auto at = r.output.find("\"status\":\"ok\""); at != std::string::npos; at = r.output.find("\"status\":\"ok\"", at + 1)) ++ok;
  CHECK(ok == 3);
}

TEST_CASE("fwdctl status shows a member that is down as unreachable and exits 1") {
  sim_cluster c;
  c.kill(2);
  const auto r = run({"status", "--members", c.members(), "--secret-file", c.secret_file.string(),
                      "--timeout-ms", "1000"});
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Catch::Contains("x " + c.address(2)) &&
                           Catch::Contains("x " + c.address(2) + " is unreachable: "));
  CHECK_THAT(r.output, Catch::Contains("primary: node-a (named by 2 of 2 members that answered)"));
}

TEST_CASE("fwdctl status marks a member that names no primary, explains under the table, and exits 1") {
  sim_cluster c;
  c.sim.disconnect(2);  // node-c loses its primary: no .primary
  // The node's monitor sees it within its poll; status is asked until it does (bounded).
  fwdctl_test::result r;
  const auto until = std::chrono::steady_clock::now() + 20s;
  do {
    r = run({"status", "--members", c.members(), "--secret-file", c.secret_file.string()});
  } while (r.output.find("disagrees") == std::string::npos && std::chrono::steady_clock::now() < until);
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Catch::Contains("! " + c.address(2)));
  CHECK_THAT(r.output, Catch::Contains("! " + c.address(2) +
                                       " (node-c) disagrees: it says the primary is (none), the others say node-a"));
}

TEST_CASE("fwdctl status with a wrong secret says every member refuses it and exits 1") {
  sim_cluster c;
  const auto wrong = fwdctl_test::write_file(c.dir.path() / "wrong", fwdctl_test::other_secret);
  const auto r = run({"status", "--members", c.members(), "--secret-file", wrong.string()});
  INFO(r.output);
  CHECK(r.status == 1);
  for (std::size_t i = 0; i < 3; ++i)
    CHECK_THAT(r.output, Catch::Contains("x " + c.address(i) + " is unauthenticated"));
}

TEST_CASE("fwdctl status refuses a secret shorter than 32 bytes, saying how to make one") {
  fwd_test::temp_dir dir;
  const auto short_secret = fwdctl_test::write_file(dir.path() / "short", "too-short");
  const auto r = run({"status", "--members", "127.0.0.1:1", "--secret-file", short_secret.string()});
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Catch::Contains("9 bytes, fewer than 32") && Catch::Contains("openssl rand -hex 32"));
}

TEST_CASE("fwdctl doctor passes every check on a healthy cluster and exits 0") {
  sim_cluster c;
  const auto r = run({"doctor", "--database", c.sim.database_path(1).string(), "--no-require-fuse",
                      "--members", c.members(), "--secret-file", c.secret_file.string(),
                      "--litefs-http", "127.0.0.1:" + std::to_string(c.sim.http_port(1))});
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK_THAT(r.output, Catch::Contains("ok    database path") && Catch::Contains("ok    LiteFS HTTP API"));
  CHECK_THAT(r.output, Catch::Contains("this node is a replica, its primary is node-a"));
  CHECK_THAT(r.output, Catch::Contains("node-a is primary and every member that answered agrees"));
  CHECK_THAT(r.output, Catch::Contains("ok    clock skew"));
  CHECK_THAT(r.output, Catch::Contains("checks passed") && !Catch::Contains("FAIL"));
}

TEST_CASE("fwdctl doctor fails on a data directory, a dead LiteFS API, a member down, and says what to do") {
  sim_cluster c;
  c.kill(2);
  // A directory shaped like LiteFS's data directory (it holds dbs/).
  const auto data = c.dir.path() / "litefs-data";
  std::filesystem::create_directories(data / "dbs" / "app.db" / "ltx");
  const auto r = run({"doctor", "--database", (data / "app.db").string(), "--no-require-fuse",
                      "--members", c.members(), "--secret-file", c.secret_file.string(),
                      "--litefs-http", "127.0.0.1:1", "--timeout-ms", "1000"});
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Catch::Contains("FAIL  database path") &&
                           Catch::Contains("what to do: open the database through LiteFS's FUSE mount"));
  CHECK_THAT(r.output, Catch::Contains("FAIL  LiteFS HTTP API") && Catch::Contains("is LiteFS running"));
  CHECK_THAT(r.output, Catch::Contains("FAIL  member " + c.address(2)) &&
                           Catch::Contains("is the service running there"));
  CHECK_THAT(r.output, Catch::Contains("ok    member " + c.address(0)));
  CHECK_THAT(r.output, Catch::Contains("checks failed"));
}

TEST_CASE("fwdctl watch prints the primary, a failover and a member that stops answering") {
  sim_cluster c;
  fwdctl_test::process watch({"watch", "--members", c.members(), "--secret-file",
                              c.secret_file.string(), "--interval-ms", "100", "--timeout-ms", "1000"});
  INFO(watch.output());
  REQUIRE(watch.wait_for_text("primary is node-a", 20s));
  c.sim.failover(1, 0ms, fwd_sim::cluster::promotion::caught_up);
  CHECK(watch.wait_for_text("-> node-b", 20s));  // perhaps through "(none)" during the election
  c.kill(2);
  CHECK(watch.wait_for_text("member " + c.address(2) + " does not answer", 20s));
  watch.terminate();
  CHECK(watch.wait_exit(10s) == 0);
  CHECK_THAT(watch.output(), Catch::Contains("stopped"));
}
