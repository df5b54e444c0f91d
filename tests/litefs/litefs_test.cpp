// fwd on real LiteFS (v0.5.14, FUSE, loopback), label `litefs`: the database-path check
// on a real mount, and forwarded writes from a replica in WAL and rollback-journal mode.
// See litefs_nodes.hpp for how the nodes run and how a test is skipped.

#include "litefs_nodes.hpp"

namespace {

void forwarded_writes(bool wal) {
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::static_lease});
  c.start_all();
  create_database(c, 0, wal);
  fwd_nodes n(c);
  n.start_all();
  INFO(n.outputs());

  constexpr int writes = 20;
  for (int seq = 1; seq <= writes; ++seq) {
    const auto r = n.append(1, "replica", seq);
    INFO("append from the replica, seq " << seq << ": " << r.detail);
    REQUIRE(r.category == 0);
    CHECK_FALSE(r.ran_locally);
    CHECK(r.visible == 1);  // read-your-writes: the row is in the replica's copy on return
    CHECK(r.local_txid >= r.txid);
  }
  for (int seq = 1; seq <= 3; ++seq) {
    const auto r = n.append(0, "primary", seq);
    INFO(r.detail);
    REQUIRE(r.category == 0);
    CHECK(r.ran_locally);
  }
  REQUIRE(c.wait_caught_up(0, db_name, 10s));
  for (std::size_t i = 0; i < c.size(); ++i) {
    INFO("mount " << c.mount(i));
    CHECK(sqlite_cli(c.mount(i) / db_name, "PRAGMA journal_mode;") == (wal ? "wal" : "delete"));
    CHECK(cli_count(c, i, "writer = 'replica'") == writes);
    CHECK(cli_count(c, i, "writer = 'primary'") == 3);
    // Exactly once: no (writer, seq) twice.
    CHECK(sqlite_cli(c.mount(i) / db_name,
                     "SELECT count(*) FROM (SELECT writer, seq FROM events GROUP BY writer, seq "
                     "HAVING count(*) > 1);") == "0");
    CHECK(cli_count(c, i, "ran_on <> 'node1'") == 0);  // every body ran on the primary
  }
}

}  // namespace

TEST_CASE("real LiteFS: the database-path check accepts the FUSE mount and names the data "
          "directory mistake") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 1, .lease = fwd_test::lease_kind::static_lease});
  c.start_all();
  REQUIRE(sqlite_cli(c.mount(0) / db_name, "PRAGMA application_id=0;").rfind("ERROR", 0) != 0);

  const auto on_mount = fwd_test::check_path(c.mount(0) / db_name);
  INFO(on_mount.message);
  CHECK(on_mount.ok());
  CHECK(on_mount.mount == c.mount(0));

  const auto in_data = fwd_test::check_path(c.data_dir(0) / db_name);
  INFO(in_data.message);
  CHECK(in_data.code == fwd::errc::misconfigured_mount);
  CHECK(in_data.message.find("data directory") != std::string::npos);
  // It suggests a LiteFS mount. Which one, when several exist (tests run in parallel), is
  // checked in litefs_pending_test.cpp: fwd names the first in the mount table.
  CHECK(in_data.message.find("/mnt/" + db_name) != std::string::npos);

  const auto inside_dbs =
      fwd_test::check_path(c.data_dir(0) / "dbs" / db_name / "database");
  INFO(inside_dbs.message);
  CHECK(inside_dbs.code == fwd::errc::misconfigured_mount);

  std::filesystem::create_directories(c.root() / "plain");
  const auto plain = fwd_test::check_path(c.root() / "plain" / db_name);
  INFO(plain.message);
  CHECK(plain.code == fwd::errc::not_litefs);
}

TEST_CASE("real LiteFS: forwarded writes from a replica exactly once with read-your-writes (WAL)") {
  REQUIRE_REAL_LITEFS();
  forwarded_writes(true);
}

TEST_CASE("real LiteFS: forwarded writes from a replica exactly once with read-your-writes "
          "(rollback journal)") {
  REQUIRE_REAL_LITEFS();
  forwarded_writes(false);
}


TEST_CASE("real LiteFS consul lease: after the primary dies a survivor is promoted - no "
          "survivor's role reads primary meanwhile and the old primary rejoins as a replica") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 3, .lease = fwd_test::lease_kind::consul});
  c.start_all();
  REQUIRE(c.is_primary(0));
  create_database(c, 0, true);
  // fwd nodes on the survivors: they keep reading their mounts through the outage.
  fwd_nodes n(c);
  n.start_all();
  INFO(n.outputs());
  const auto before = n.append(1, "f", 1);
  INFO(before.detail);
  REQUIRE(before.category == 0);
  REQUIRE(c.wait_caught_up(0, db_name, 10s));

  const auto killed = std::chrono::steady_clock::now();
  n.kill(0);
  c.kill(0);
  // Sample both survivors' role with fwd::litefs::current_role until LiteFS promotes one;
  // a sample counts only when /info showed no primary both before and after it.
  int samples = 0, read_primary = 0;
  std::string reason;
  std::optional<std::size_t> promoted;
  const auto until = killed + 20s;
  while (!promoted && std::chrono::steady_clock::now() < until) {
    const bool none_before = !c.is_primary(1) && !c.is_primary(2);
    const auto r1 = fwd::litefs::current_role(c.mount(1));
    const auto r2 = fwd::litefs::current_role(c.mount(2));
    for (std::size_t i : {1u, 2u})
      if (c.is_primary(i)) promoted = i;
    if (!none_before || promoted) continue;
    samples += 2;
    for (const auto* r : {&r1, &r2}) {
      if (r->kind == fwd::litefs::role_kind::primary) {
        ++read_primary;
        reason = r->reason;
      }
    }
  }
  const double promoted_ms = ms_since(killed);
  std::printf("real LiteFS failover (consul stand-in, TTL 2s, lock-delay 500ms): %s promoted "
              "%.0f ms after the kill; %d role samples during the outage, %d read primary\n",
              promoted ? c.hostname(*promoted).c_str() : "nobody", promoted_ms, samples,
              read_primary);
  std::fflush(stdout);
  REQUIRE(promoted);
  INFO("a survivor read primary while none was elected: " << reason);
  CHECK(read_primary == 0);
  CHECK(samples > 0);
  // Promotion waits for the dead primary's session TTL (2 s) plus the lock-delay; generous
  // upper bound for a loaded machine.
  CHECK(promoted_ms > 1000);
  CHECK(promoted_ms < 15000);

  // The old primary restarts and rejoins as a replica of the new one, with its data.
  c.restart(0);
  REQUIRE(c.wait_connected(0, 20s));
  CHECK_FALSE(c.is_primary(0));
  REQUIRE(c.wait_caught_up(*promoted, db_name, 10s));
  CHECK(cli_count(c, 0, "writer = 'f' AND seq = 1") == 1);
  const auto role0 = fwd::litefs::current_role(c.mount(0));
  INFO(role0.reason);
  CHECK(role0.kind == fwd::litefs::role_kind::replica);
  CHECK(role0.primary_hostname == c.hostname(*promoted));
}

TEST_CASE("real LiteFS consul lease: POST /promote hands the lease to a replica - the old "
          "primary reads replica of the new one") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::consul});
  c.start_all();
  REQUIRE(c.is_primary(0));
  const auto asked = std::chrono::steady_clock::now();
  std::string why;
  const bool accepted = c.promote(1, &why);
  INFO("POST /promote: " << why << "\nnode1:\n" << c.log(0) << "\nnode2:\n" << c.log(1));
  REQUIRE(accepted);
  REQUIRE(c.wait_primary(10s, 0) == std::optional<std::size_t>(1));
  const double handoff_ms = ms_since(asked);
  REQUIRE(c.wait_connected(0, 10s));
  std::printf("real LiteFS planned handoff (consul stand-in): node2 primary %.0f ms after POST "
              "/promote\n",
              handoff_ms);
  std::fflush(stdout);
  CHECK_FALSE(c.is_primary(0));
  const auto role0 = fwd::litefs::current_role(c.mount(0));
  INFO(role0.reason);
  CHECK(role0.kind == fwd::litefs::role_kind::replica);
  CHECK(role0.primary_hostname == "node2");
  CHECK(c.consul()->holder("litefs/primary").has_value());
}
