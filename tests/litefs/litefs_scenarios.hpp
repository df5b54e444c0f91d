#pragma once

// Scenarios that run both on the LiteFS simulation (tests/cluster, label cluster) and on
// real LiteFS (tests/litefs, label litefs): one body, two environments. An environment `E`
// runs fwd_node processes over a two-node LiteFS cluster (node 0 primary, WAL) and has:
//
//   demo::control_result append(std::size_t from, const std::string& writer, int seq,
//                               std::int64_t deadline_ms, bool read_your_writes = true);
//   void kill_litefs(std::size_t i);     // SIGKILL LiteFS: the mount stays, dead (ENOTCONN)
//   void restart_litefs(std::size_t i);  // LiteFS again, a new mount over the dead one
//   bool wait_connected(std::size_t replica, std::chrono::milliseconds);  // .primary shown
//   bool wait_caught_up(std::size_t primary, std::chrono::milliseconds);
//   std::int64_t count(std::size_t i, const std::string& where);  // rows in `events` on i
//   bool node_running(std::size_t i);    // the fwd_node process is still alive
//   std::string outputs();               // the fwd_node processes' output, for failures

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fwd/error.hpp>
#include <string>
#include <vector>

#include "cluster_driver.hpp"

namespace litefs_scenarios {

using namespace std::chrono_literals;

struct ledger {
  std::vector<int> acked;    // acknowledged: must exist exactly once
  std::vector<int> refused;  // refused: at most once
  int seq = 0;
};

// Calls until one succeeds (bounded); every call goes in the ledger.
template <class E>
bool append_until_ok(E& env, std::size_t from, const std::string& writer, ledger& l,
                     std::chrono::milliseconds cap, std::string& last_error) {
  const auto until = std::chrono::steady_clock::now() + cap;
  while (std::chrono::steady_clock::now() < until) {
    const int s = ++l.seq;
    const auto r = env.append(from, writer, s, 2000);
    if (r.category == 0) {
      l.acked.push_back(s);
      return true;
    }
    l.refused.push_back(s);
    last_error = r.detail;
  }
  return false;
}

// While LiteFS is down a call fails with a fwd error, not a crash or a raw SQLite I/O
// error: nothing ran (retryable), or, from a replica whose own LiteFS is down, the write
// committed on the primary but cannot be seen here (replication_lag: it must then exist
// exactly once, so it joins the acknowledged ones).
template <class E>
void check_refused_while_down(E& env, std::size_t from, const std::string& writer, ledger& l) {
  const int s = ++l.seq;
  const auto r = env.append(from, writer, s, 1500);
  INFO("call while LiteFS is down: " << r.detail);
  std::printf("call from node %zu while LiteFS is down: %s\n", from, r.detail.substr(0, 160).c_str());
  std::fflush(stdout);
  CHECK(r.category == 1);
  const auto ec = make_error_code(static_cast<fwd::errc>(r.code));
  if (ec == fwd::errc::replication_lag) {
    l.acked.push_back(s);
  } else {
    CHECK(fwd::classify(ec) != fwd::error_class::permanent);
    l.refused.push_back(s);
  }
}

template <class E>
void check_exactly_once(E& env, std::size_t i, const std::string& writer, const ledger& l) {
  for (int s : l.acked) {
    INFO("acknowledged " << writer << " " << s << " on node " << i);
    CHECK(env.count(i, "writer = '" + writer + "' AND seq = " + std::to_string(s)) == 1);
  }
  for (int s : l.refused) {
    INFO("refused " << writer << " " << s << " on node " << i);
    CHECK(env.count(i, "writer = '" + writer + "' AND seq = " + std::to_string(s)) <= 1);
  }
}

/// LiteFS killed and restarted under the running primary node: calls (local and
/// forwarded) fail with a classified, retryable error meanwhile, succeed after without a
/// restart of the service, every acknowledged write exactly once, no node dies (no SIGBUS
/// from the dead mount's -shm).
template <class E>
void litefs_restarts_under_primary(E& env) {
  INFO(env.outputs());
  ledger l;
  for (std::size_t from : {0, 1}) {
    const auto r = env.append(from, "p", ++l.seq, 5000);
    INFO(r.detail);
    REQUIRE(r.category == 0);
    l.acked.push_back(l.seq);
  }

  env.kill_litefs(0);
  check_refused_while_down(env, 0, "p", l);  // a local write on the primary
  check_refused_while_down(env, 1, "p", l);  // a write forwarded to it
  CHECK(env.node_running(0));
  CHECK(env.node_running(1));

  env.restart_litefs(0);
  REQUIRE(env.wait_connected(1, 20s));
  std::string last_error;
  INFO("last error: " << last_error);
  CHECK(append_until_ok(env, 0, "p", l, 20s, last_error));
  CHECK(append_until_ok(env, 1, "p", l, 20s, last_error));
  CHECK(env.node_running(0));
  CHECK(env.node_running(1));
  REQUIRE(env.wait_caught_up(0, 10s));
  check_exactly_once(env, 0, "p", l);
  check_exactly_once(env, 1, "p", l);
}

/// LiteFS killed and restarted under a running replica node: its calls fail classified
/// meanwhile, then succeed, exactly once, and the node never dies.
template <class E>
void litefs_restarts_under_replica(E& env) {
  INFO(env.outputs());
  ledger l;
  const auto first = env.append(1, "r", ++l.seq, 5000);
  INFO(first.detail);
  REQUIRE(first.category == 0);
  l.acked.push_back(l.seq);

  env.kill_litefs(1);
  check_refused_while_down(env, 1, "r", l);
  CHECK(env.node_running(1));

  env.restart_litefs(1);
  REQUIRE(env.wait_connected(1, 20s));
  std::string last_error;
  INFO("last error: " << last_error);
  CHECK(append_until_ok(env, 1, "r", l, 20s, last_error));
  CHECK(env.node_running(1));
  REQUIRE(env.wait_caught_up(0, 10s));
  check_exactly_once(env, 0, "r", l);
  check_exactly_once(env, 1, "r", l);
}

/// Writes forwarded from the replica, and local ones on the primary: each acknowledged
/// write runs exactly once, and with read-your-writes the calling node's own copy shows
/// it when the call returns.
template <class E>
void forwarded_writes_exactly_once_with_read_your_writes(E& env) {
  INFO(env.outputs());
  ledger l;
  for (int k = 0; k < 20; ++k) {
    const std::size_t from = k % 4 == 3 ? 0 : 1;
    const auto r = env.append(from, "f", ++l.seq, 5000, /*ryw=*/true);
    INFO("call " << l.seq << " from node " << from << ": " << r.detail);
    REQUIRE(r.category == 0);
    CHECK(r.visible == 1);
    CHECK(r.ran_locally == (from == 0));
    l.acked.push_back(l.seq);
  }
  REQUIRE(env.wait_caught_up(0, 10s));
  check_exactly_once(env, 0, "f", l);
  check_exactly_once(env, 1, "f", l);
  CHECK(env.count(1, "writer = 'f'") == 20);
}

}  // namespace litefs_scenarios
