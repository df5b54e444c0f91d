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

  const auto on_mount = fwd::litefs::check_database_path(c.mount(0) / db_name);
  INFO(on_mount.message);
  CHECK(on_mount.ok());
  CHECK(on_mount.mount == c.mount(0));

  const auto in_data = fwd::litefs::check_database_path(c.data_dir(0) / db_name);
  INFO(in_data.message);
  CHECK(in_data.code == fwd::errc::misconfigured_mount);
  CHECK(in_data.message.find("data directory") != std::string::npos);
  CHECK(in_data.message.find(c.mount(0).string()) != std::string::npos);  // suggests the mount

  const auto inside_dbs =
      fwd::litefs::check_database_path(c.data_dir(0) / "dbs" / db_name / "database");
  INFO(inside_dbs.message);
  CHECK(inside_dbs.code == fwd::errc::misconfigured_mount);

  std::filesystem::create_directories(c.root() / "plain");
  const auto plain = fwd::litefs::check_database_path(c.root() / "plain" / db_name);
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

