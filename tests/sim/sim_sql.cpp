// fwd_sim_sql: runs SQL against a database in a simulated LiteFS mount from its own
// process, as a node process would (shim VFS + plain sqlite3_open_v2).
//
//   fwd_sim_sql [--pos] <database> <sql>
//
// Prints result rows (columns joined by '|'). With --pos, prints "pos <db>-pos"
// right after the SQL returns. On a SQLite error prints "<extended code> <message>"
// to stderr and exits 1; bad usage exits 2.
#include <sqlite3.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "litefs_sim.hpp"

namespace {

int print_row(void*, int columns, char** values, char**) {
  for (int i = 0; i < columns; ++i) {
    std::fputs(i ? "|" : "", stdout);
    std::fputs(values[i] ? values[i] : "NULL", stdout);
  }
  std::fputc('\n', stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool print_pos = false;
  int arg = 1;
  if (arg < argc && std::strcmp(argv[arg], "--pos") == 0) {
    print_pos = true;
    ++arg;
  }
  if (argc - arg != 2) {
    std::fprintf(stderr, "usage: fwd_sim_sql [--pos] <database> <sql>\n");
    return 2;
  }
  const std::string path = argv[arg];
  fwd_sim::install_vfs();
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    std::fprintf(stderr, "%d %s\n", sqlite3_extended_errcode(db), sqlite3_errmsg(db));
    sqlite3_close(db);
    return 1;
  }
  sqlite3_busy_timeout(db, 10000);
  const int rc = sqlite3_exec(db, argv[arg + 1], print_row, nullptr, nullptr);
  if (print_pos) {
    std::ifstream in(path + "-pos", std::ios::binary);
    std::string pos((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::printf("pos %s", pos.c_str());
  }
  int status = 0;
  if (rc != SQLITE_OK) {
    std::fprintf(stderr, "%d %s\n", sqlite3_extended_errcode(db), sqlite3_errmsg(db));
    status = 1;
  }
  sqlite3_close(db);
  std::fflush(stdout);
  return status;
}
