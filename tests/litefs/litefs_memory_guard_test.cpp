// SQLite's memory-mapped `-shm` on a LiteFS mount whose LiteFS died (real LiteFS, WAL).
//
// A replica's LiteFS drops the cached pages of `-shm` when it applies a transaction; if it
// dies before a reader touches them again, that touch has no one to answer it and the
// kernel sends SIGBUS. Without fwd's memory guard the reading process dies (the first test
// shows the hazard is real on this machine); with it, the read fails with an I/O error and
// the process lives on.

#include <sys/wait.h>

#include <catch2/catch.hpp>

#include <string>

#include "../support/child_process.hpp"
#include "litefs_nodes.hpp"

using namespace litefs_tests;

namespace {

// Starts a reader on the replica (node 1), moves the primary (node 0) one transaction on,
// waits until the replica applied it, kills the replica's LiteFS, and lets the reader read
// again. Returns the reader's wait status; `lines` gets what it printed after the kill.
int read_across_dead_mount(const char* mode, std::vector<std::string>& lines) {
  litefs_cluster c{{.nodes = 2, .lease = fwd_test::lease_kind::static_lease}};
  c.start_all();
  create_database(c, 0, true);
  REQUIRE(sqlite_cli(c.mount(0) / db_name, "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);") == "");
  REQUIRE(c.wait_caught_up(0, db_name, 10s));

  fwd_test::child_process reader({FWD_SHM_READER_PATH, (c.mount(1) / db_name).string(), mode});
  REQUIRE(reader.read_line() == "COUNT 2");
  REQUIRE(sqlite_cli(c.mount(0) / db_name, "INSERT INTO t VALUES (3);") == "");
  REQUIRE(c.wait_caught_up(0, db_name, 10s));
  c.kill(1);  // the mount stays, dead
  reader.write_line("go");
  try {
    for (;;) lines.push_back(reader.read_line());
  } catch (const std::runtime_error&) {
    // stdout closed: the reader is gone
  }
  return reader.wait();
}

}  // namespace

TEST_CASE("real LiteFS: without the memory guard, a read connection on a replica dies of SIGBUS "
          "when its LiteFS dies after applying a transaction (the hazard the guard removes)") {
  REQUIRE_REAL_LITEFS();
  std::vector<std::string> lines;
  const int status = read_across_dead_mount("plain", lines);
  INFO("reader printed " << lines.size() << " lines after the kill");
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGBUS);
}

TEST_CASE("real LiteFS: with the memory guard, the same read fails with an I/O error and the "
          "process lives on") {
  REQUIRE_REAL_LITEFS();
  std::vector<std::string> lines;
  const int status = read_across_dead_mount("guard", lines);
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  INFO("reader printed after the kill:\n" << all);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  REQUIRE(lines.size() == 4);
  for (int i = 0; i < 3; ++i) {
    CHECK(lines[static_cast<std::size_t>(i)].rfind("ERROR ", 0) == 0);
  }
  CHECK(lines[3] != "FAULTS 0");
}
