// A process that reads a SQLite database through one connection kept open, for the memory
// guard's tests: `shm_reader <db> guard|plain`. It opens <db> read-only (after installing
// fwd's memory guard when told `guard`), prints `COUNT <n>` (rows of table t), then waits
// for a line on stdin and reads again three times on the same connection, printing
// `COUNT <n>` or `ERROR <extended code> <message>` for each, then `FAULTS <n>` (faults the
// guard absorbed), and exits 0. A SIGBUS it cannot survive kills it instead.

#include <fwd/sqlite/memory_guard.hpp>

#include <sqlite3.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

namespace {

void read_once(sqlite3* db) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &stmt, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    std::printf("COUNT %lld\n", static_cast<long long>(sqlite3_column_int64(stmt, 0)));
  } else {
    std::printf("ERROR %d %s\n", sqlite3_extended_errcode(db), sqlite3_errmsg(db));
  }
  sqlite3_finalize(stmt);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || (std::strcmp(argv[2], "guard") != 0 && std::strcmp(argv[2], "plain") != 0)) {
    std::fprintf(stderr, "usage: shm_reader <db> guard|plain\n");
    return 2;
  }
  if (std::strcmp(argv[2], "plain") == 0) {
    // The kernel's default for SIGBUS (death), also under a sanitizer that would catch it.
    std::signal(SIGBUS, SIG_DFL);
  } else if (!fwd::sqlite::install_memory_guard()) {
    std::fprintf(stderr, "shm_reader: the memory guard could not be installed\n");
    return 1;
  }
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::printf("ERROR %d %s\n", sqlite3_extended_errcode(db), sqlite3_errmsg(db));
    return 1;
  }
  sqlite3_extended_result_codes(db, 1);
  read_once(db);
  std::string line;
  std::getline(std::cin, line);
  for (int i = 0; i < 3; ++i) read_once(db);
  std::printf("FAULTS %llu\n", static_cast<unsigned long long>(fwd::sqlite::memory_guard_faults()));
  std::fflush(stdout);
  sqlite3_close(db);
  return 0;
}
