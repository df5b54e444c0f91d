// fwd::sqlite::install_memory_guard() on an ordinary filesystem: a `-shm` file cut short
// under a running reader makes its mapped pages fault with SIGBUS, as the pages of a dead
// LiteFS mount do (tests/litefs/litefs_memory_guard_test.cpp shows that on real LiteFS).
// Each reader is a separate process (tests/write/shm_reader.cpp): a SIGBUS it does not
// survive ends it, not the test.

#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <fwd/sqlite/memory_guard.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "../support/child_process.hpp"
#include "../support/temp_dir.hpp"

namespace {

void exec_sql(const std::string& db, const char* sql) {
  sqlite3* c = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &c, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, "unix") == SQLITE_OK);
  char* error = nullptr;
  const int rc = sqlite3_exec(c, sql, nullptr, nullptr, &error);
  INFO((error != nullptr ? error : ""));
  sqlite3_free(error);
  sqlite3_close(c);
  REQUIRE(rc == SQLITE_OK);
}

// A reader in `mode` reads the WAL database, its -shm is truncated to nothing, it reads
// again. Returns its wait status; `lines`: what it printed after the truncation.
int read_across_truncated_shm(const char* mode, std::vector<std::string>& lines) {
  fwd_test::temp_dir dir;
  const std::string db = (dir.path() / "app.db").string();
  exec_sql(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);");
  fwd_test::child_process reader({FWD_SHM_READER_PATH, db, mode});
  REQUIRE(reader.read_line() == "COUNT 2");
  REQUIRE(std::filesystem::exists(db + "-shm"));
  REQUIRE(::truncate((db + "-shm").c_str(), 0) == 0);
  reader.write_line("go");
  try {
    for (;;) lines.push_back(reader.read_line());
  } catch (const std::runtime_error&) {
    // stdout closed: the reader is gone
  }
  return reader.wait();
}

}  // namespace

TEST_CASE("memory guard: without it, a reader whose -shm pages vanish dies of SIGBUS") {
  std::vector<std::string> lines;
  const int status = read_across_truncated_shm("plain", lines);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGBUS);
}

TEST_CASE("memory guard: with it, the reader's statements fail with SQLITE_IOERR_SHMLOCK, it "
          "lives on, and the fault is counted") {
  std::vector<std::string> lines;
  const int status = read_across_truncated_shm("guard", lines);
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  INFO("reader printed after the truncation:\n" << all);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  REQUIRE(lines.size() == 4);
  for (std::size_t i = 0; i < 3; ++i) CHECK(lines[i].rfind("ERROR 5130 ", 0) == 0);  // SQLITE_IOERR_SHMLOCK
  CHECK(lines[3] == "FAULTS 1");
}

TEST_CASE("memory guard: installed, it is the default VFS, over the one that was, and a WAL "
          "database works through it in this process") {
  REQUIRE(fwd::sqlite::install_memory_guard());
  REQUIRE(fwd::sqlite::install_memory_guard());  // idempotent
  sqlite3_vfs* def = sqlite3_vfs_find(nullptr);
  REQUIRE(def != nullptr);
  CHECK(std::string(def->zName) == fwd::sqlite::memory_guard_vfs_name);
  fwd_test::temp_dir dir;
  const std::string db = (dir.path() / "guarded.db").string();
  sqlite3* c = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &c) == SQLITE_OK);
  CHECK(std::string(sqlite3_db_filename(c, "main")) == db);
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_exec(c, "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (7);", nullptr,
                       nullptr, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_prepare_v2(c, "SELECT sum(x) FROM t", -1, &s, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(s) == SQLITE_ROW);
  CHECK(sqlite3_column_int(s, 0) == 7);
  sqlite3_finalize(s);
  sqlite3_vfs* used = nullptr;
  REQUIRE(sqlite3_file_control(c, "main", SQLITE_FCNTL_VFS_POINTER, &used) == SQLITE_OK);
  CHECK(std::string(used->zName) == fwd::sqlite::memory_guard_vfs_name);
  sqlite3_close(c);
  CHECK(fwd::sqlite::memory_guard_faults() == 0);
}
