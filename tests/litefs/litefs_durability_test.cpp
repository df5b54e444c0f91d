// Durable acknowledgement on real LiteFS (label `litefs`): the replica's node follows its
// LiteFS's /events stream and reports each position to the primary's node, which holds a
// write's reply until the replica has it. See litefs_nodes.hpp for how a test is skipped.

#include <signal.h>

#include "litefs_nodes.hpp"

TEST_CASE("real LiteFS: replicas(1) acknowledges once the replica reports the write, and a stopped "
          "replica makes it committed, not yet durable") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::static_lease});
  c.start_all();
  create_database(c, 0, true);
  fwd_nodes n(c);
  for (std::size_t i = 0; i < c.size(); ++i)
    n.extra_args.push_back({"--durability", "replicas:1", "--litefs-http", std::to_string(c.http_port(i))});
  n.start_all();
  INFO(n.outputs());

  for (int seq = 1; seq <= 5; ++seq) {
    for (std::size_t from : {0u, 1u}) {
      const auto r = n.append(from, "durable", seq * 2 + static_cast<int>(from), 5000, false);
      INFO("append from node " << from << ": " << r.detail);
      REQUIRE(r.category == 0);
    }
  }

  // The replica's node stopped: it reports nothing, although LiteFS still replicates.
  ::kill(n.nodes[1]->pid(), SIGSTOP);
  const auto started = std::chrono::steady_clock::now();
  const auto r = n.append(0, "durable", 100, 1500, false);
  const auto took = std::chrono::steady_clock::now() - started;
  ::kill(n.nodes[1]->pid(), SIGCONT);
  INFO(r.detail);
  CHECK(r.category == 1);
  CHECK(r.code == static_cast<int>(fwd::errc::not_yet_durable));
  CHECK(took < 2s);
  CHECK(cli_count(c, 0, "writer = 'durable' AND seq = 100") == 1);

  // Back: acknowledged again.
  const auto again = n.append(0, "durable", 101, 5000, false);
  INFO(again.detail);
  CHECK(again.category == 0);
}
