// LiteFS stopped and restarted under running fwd nodes (real LiteFS, WAL, static lease):
// the service keeps running, calls fail with a classified, retryable error while LiteFS is
// down, and succeed again once LiteFS is back on the same directory (a new FUSE mount on
// top of the dead one), without restarting the service. The writer's connection on the
// dead mount is closed before it is touched again: no SIGBUS from the memory-mapped -shm.

#include <chrono>
#include <string>
#include <vector>

#include "litefs_nodes.hpp"

namespace {

// Calls until one succeeds (bounded); every call is recorded as acknowledged or refused.
bool append_until_ok(fwd_nodes& n, std::size_t from, const std::string& writer, int& seq,
                     std::vector<int>& acked, std::vector<int>& refused,
                     std::chrono::milliseconds cap, std::string& last_error) {
  const auto until = std::chrono::steady_clock::now() + cap;
  while (std::chrono::steady_clock::now() < until) {
    const int s = ++seq;
    const auto r = n.append(from, writer, s, 2000);
    if (r.category == 0) {
      acked.push_back(s);
      return true;
    }
    refused.push_back(s);
    last_error = r.detail;
  }
  return false;
}

// While LiteFS is down, a call from `from` fails with a fwd error (not a crash, not a
// SQLite I/O error): either nothing ran (retryable), or, from a replica whose own LiteFS
// is down, the write committed on the primary but cannot be seen here (replication_lag:
// then it must exist exactly once, so it joins `acked`).
void check_refused_while_down(fwd_nodes& n, std::size_t from, const std::string& writer, int& seq,
                              std::vector<int>& acked, std::vector<int>& refused) {
  const int s = ++seq;
  const auto r = n.append(from, writer, s, 1500);
  INFO("call while LiteFS is down: " << r.detail);
  CHECK(r.category == 1);
  const auto ec = make_error_code(static_cast<fwd::errc>(r.code));
  if (ec == fwd::errc::replication_lag) {
    acked.push_back(s);
  } else {
    CHECK(fwd::classify(ec) != fwd::error_class::permanent);
    refused.push_back(s);
  }
}

void check_exactly_once(litefs_cluster& c, std::size_t i, const std::string& writer,
                        const std::vector<int>& acked, const std::vector<int>& refused) {
  for (int s : acked) {
    INFO("acknowledged " << writer << " " << s << " on " << c.mount(i));
    CHECK(cli_count(c, i, "writer = '" + writer + "' AND seq = " + std::to_string(s)) == 1);
  }
  for (int s : refused) {
    INFO("refused " << writer << " " << s << " on " << c.mount(i));
    CHECK(cli_count(c, i, "writer = '" + writer + "' AND seq = " + std::to_string(s)) <= 1);
  }
}

}  // namespace

TEST_CASE(
    "real LiteFS: LiteFS killed and restarted under the running primary node - calls fail "
    "classified meanwhile, then succeed, and the node never dies (WAL)") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::static_lease});
  c.start_all();
  create_database(c, 0, true);
  fwd_nodes n(c);
  n.start_all();
  INFO(n.outputs());

  std::vector<int> acked, refused;
  int seq = 0;
  for (std::size_t from : {0, 1}) {
    const auto r = n.append(from, "p", ++seq);
    INFO(r.detail);
    REQUIRE(r.category == 0);
    acked.push_back(seq);
  }

  c.kill(0);  // the primary's LiteFS dies; its mount stays, dead (ENOTCONN)
  check_refused_while_down(n, 0, "p", seq, acked, refused);  // a local write on the primary
  check_refused_while_down(n, 1, "p", seq, acked, refused);  // a write forwarded to it
  CHECK_FALSE(n.nodes[0]->wait_exit(std::chrono::milliseconds(0)).has_value());
  CHECK_FALSE(n.nodes[1]->wait_exit(std::chrono::milliseconds(0)).has_value());

  c.start(0);  // LiteFS again, mounted on top of the dead mount
  REQUIRE(c.wait_connected(1, 20s));
  std::string last_error;
  INFO("last error: " << last_error);
  CHECK(append_until_ok(n, 0, "p", seq, acked, refused, 20s, last_error));
  CHECK(append_until_ok(n, 1, "p", seq, acked, refused, 20s, last_error));
  CHECK_FALSE(n.nodes[0]->wait_exit(std::chrono::milliseconds(0)).has_value());
  CHECK_FALSE(n.nodes[1]->wait_exit(std::chrono::milliseconds(0)).has_value());
  REQUIRE(c.wait_caught_up(0, db_name, 10s));
  check_exactly_once(c, 0, "p", acked, refused);
  check_exactly_once(c, 1, "p", acked, refused);
}

TEST_CASE(
    "real LiteFS: LiteFS killed and restarted under a running replica node - its calls fail "
    "classified meanwhile, then succeed, and the node never dies (WAL)") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::static_lease});
  c.start_all();
  create_database(c, 0, true);
  fwd_nodes n(c);
  n.start_all();
  INFO(n.outputs());

  std::vector<int> acked, refused;
  int seq = 0;
  const auto first = n.append(1, "r", ++seq);
  INFO(first.detail);
  REQUIRE(first.category == 0);
  acked.push_back(seq);

  c.kill(1);  // the replica's LiteFS dies under its running fwd node
  check_refused_while_down(n, 1, "r", seq, acked, refused);
  CHECK_FALSE(n.nodes[1]->wait_exit(std::chrono::milliseconds(0)).has_value());

  c.start(1);
  REQUIRE(c.wait_connected(1, 20s));
  std::string last_error;
  INFO("last error: " << last_error);
  CHECK(append_until_ok(n, 1, "r", seq, acked, refused, 20s, last_error));
  CHECK_FALSE(n.nodes[1]->wait_exit(std::chrono::milliseconds(0)).has_value());
  REQUIRE(c.wait_caught_up(0, db_name, 10s));
  check_exactly_once(c, 0, "r", acked, refused);
  check_exactly_once(c, 1, "r", acked, refused);
}
