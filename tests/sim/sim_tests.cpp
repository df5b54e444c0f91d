// The LiteFS simulation must show applications exactly what LiteFS shows them
// (as LiteFS v0.5.14 serves them): these tests pin the files' bytes, the errors, the positions,
// replication and failover.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <fwd/litefs/monitor.hpp>
#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <iterator>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "litefs_events.hpp"
#include "litefs_sim.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using fwd_sim::cluster;
using fwd_sim::cluster_options;
using fwd_sim::journal_mode;

std::optional<std::string> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

unsigned mode_of(const fs::path& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// Polls `done` until it holds or `bound` passes; the result says which.
template <class Predicate>
bool wait_until(Predicate done, std::chrono::milliseconds bound = 5000ms) {
  const auto give_up = std::chrono::steady_clock::now() + bound;
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

const char* mode_name(journal_mode mode) {
  return mode == journal_mode::wal ? "WAL" : "DELETE";
}

cluster_options options_for(journal_mode mode) {
  cluster_options options;
  options.mode = mode;
  return options;
}

// A node process's connection: shim VFS as the default, plain sqlite3_open_v2.
struct connection {
  sqlite3* db = nullptr;
  explicit connection(const fs::path& path) {
    fwd_sim::install_vfs();
    REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
  }
  ~connection() { sqlite3_close(db); }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  int exec(const std::string& sql) { return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr); }
  void must(const std::string& sql) {
    INFO(sql);
    const int rc = exec(sql);
    INFO(sqlite3_errmsg(db));
    REQUIRE(rc == SQLITE_OK);
  }
  // Every page of the database as this connection sees it (the committed state).
  std::string image() {
    sqlite3_int64 size = 0;
    unsigned char* bytes = sqlite3_serialize(db, "main", &size, 0);
    REQUIRE(bytes != nullptr);
    std::string out(reinterpret_cast<const char*>(bytes), static_cast<std::size_t>(size));
    sqlite3_free(bytes);
    return out;
  }
  std::int64_t count(const std::string& table) {
    sqlite3_stmt* stmt = nullptr;
    const std::string sql = "SELECT count(*) FROM " + table;
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
    const std::int64_t n = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return n;
  }
};

struct process_result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs fwd_sim_sql in its own process, bounded in time.
process_result run_node_process(const std::vector<std::string>& args) {
  static int sequence = 0;
  const fs::path out_file =
      fs::temp_directory_path() / ("fwd-sim-out-" + std::to_string(::getpid()) + "-" +
                                   std::to_string(++sequence));
  const fs::path err_file = out_file.string() + ".err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out_file.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_file.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<std::string> all{FWD_SIM_SQL_PATH};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, FWD_SIM_SQL_PATH, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(spawned == 0);
  int status = 0;
  const bool exited = wait_until([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 30000ms);
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  REQUIRE(exited);
  process_result result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = read_file(out_file).value_or("");
  result.err = read_file(err_file).value_or("");
  fs::remove(out_file);
  fs::remove(err_file);
  return result;
}

const std::regex position_format("^[0-9a-f]{16}/[0-9a-f]{16}\n$");

}  // namespace

TEST_CASE("format_position and format_lag write LiteFS's exact formats") {
  CHECK(fwd_sim::format_position({0x2df417, 0xce552e44f23fbbdd}) ==
        "00000000002df417/ce552e44f23fbbdd\n");
  CHECK(fwd_sim::format_lag(0) == "+000000000\n");
  // LiteFS declares .lag 11 bytes long: readers never get more.
  CHECK(fwd_sim::format_lag(2147483647) == "+2147483647");
  CHECK(fwd_sim::format_lag(1234) == "+000001234\n");
  CHECK(fwd_sim::format_lag(999999999) == "+999999999\n");
  CHECK(fwd_sim::next_checksum(0, 1) == fwd_sim::next_checksum(0, 1));
  CHECK(fwd_sim::next_checksum(0, 1) != fwd_sim::next_checksum(0, 2));
}

TEST_CASE("install_vfs makes the shim the default VFS, once, from any thread") {
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([] { fwd_sim::install_vfs(); });
  for (auto& t : threads) t.join();
  fwd_sim::install_vfs();
  REQUIRE(sqlite3_vfs_find(nullptr) != nullptr);
  CHECK(std::string(sqlite3_vfs_find(nullptr)->zName) == fwd_sim::vfs_name);
  CHECK(sqlite3_vfs_find(fwd_sim::vfs_name) == sqlite3_vfs_find(nullptr));
}

TEST_CASE("outside a simulated mount the VFS changes nothing") {
  cluster sim(options_for(journal_mode::rollback));  // for its temporary root
  const fs::path plain = sim.root() / "plain";
  fs::create_directory(plain);
  ::chmod(plain.c_str(), 0555);  // no .lag: not a mount, even read-only
  {
    fwd_sim::install_vfs();
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open_v2((plain / "x.db").c_str(), &raw,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) == SQLITE_OK);
    CHECK(sqlite3_exec(raw, "CREATE TABLE t(x); INSERT INTO t VALUES (1)", nullptr, nullptr,
                       nullptr) == SQLITE_OK);
    sqlite3_close(raw);
  }
  CHECK_FALSE(fs::exists(plain / "x.db-pos"));
}

TEST_CASE("every mount holds LiteFS's files with their exact bytes and modes") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  REQUIRE(sim.size() == 3);
  REQUIRE(sim.primary() == std::size_t{0});
  CHECK(sim.mount(1) == sim.root() / "node-b");
  CHECK(sim.database_path(1) == sim.root() / "node-b" / "app.db");

  const auto primary_pos = read_file(sim.position_path(0));
  REQUIRE(primary_pos);
  CHECK(primary_pos->size() == 34);
  CHECK(std::regex_match(*primary_pos, position_format));
  CHECK(*primary_pos == fwd_sim::format_position({1, fwd_sim::next_checksum(0, 1)}));
  CHECK(sim.position(0).txid == 1);

  // Primary: writable mount, .lag +0, no .primary.
  CHECK(read_file(sim.mount(0) / ".lag") == std::string("+000000000\n"));
  CHECK_FALSE(fs::exists(sim.mount(0) / ".primary"));
  CHECK(mode_of(sim.mount(0)) == 0777);
  CHECK(mode_of(sim.database_path(0)) == 0666);

  // Connected replicas: read-only mount, .primary names the primary, synced.
  for (std::size_t i : {1, 2}) {
    INFO("node " << i);
    CHECK(read_file(sim.mount(i) / ".primary") == std::string("node-a\n"));
    const auto lag = read_file(sim.mount(i) / ".lag");
    REQUIRE(lag);
    CHECK(lag->size() == 11);
    CHECK(*lag == "+000000000\n");
    CHECK(read_file(sim.position_path(i)) == primary_pos);
    CHECK(mode_of(sim.mount(i)) == 0555);
    CHECK(mode_of(sim.database_path(i)) == 0444);
  }
  // Atomic replacement leaves no temporary files behind.
  for (std::size_t i = 0; i < sim.size(); ++i) {
    for (const auto& entry : fs::directory_iterator(sim.mount(i))) {
      CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
    }
  }
}

TEST_CASE("a replica that never synced shows lag +2147483647 and has no database yet") {
  auto options = options_for(journal_mode::rollback);
  options.initial_sync = false;
  cluster sim(options);
  CHECK(read_file(sim.mount(1) / ".lag") == std::string("+2147483647"));
  CHECK_FALSE(fs::exists(sim.database_path(1)));
  CHECK_FALSE(fs::exists(sim.position_path(1)));
  CHECK(sim.position(1) == fwd_sim::db_position{});
  CHECK(read_file(sim.mount(1) / ".primary") == std::string("node-a\n"));
  sim.replicate(1);
  CHECK(read_file(sim.mount(1) / ".lag") == std::string("+000000000\n"));
  CHECK(sim.position(1) == sim.position(0));
  CHECK(read_file(sim.mount(2) / ".lag") == std::string("+2147483647"));
}

TEST_CASE("a replica refuses writes with LiteFS's SQLite error while reads work") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  {
    connection primary(sim.database_path(0));
    primary.must("CREATE TABLE t(x)");
    primary.must("INSERT INTO t VALUES (1)");
  }
  sim.replicate_now();
  const auto before = sim.position(1);

  connection replica(sim.database_path(1));
  CHECK(replica.count("t") == 1);
  const int rc = replica.exec("INSERT INTO t VALUES (2)");
  if (mode == journal_mode::rollback) {
    CHECK(rc == SQLITE_READONLY);
    CHECK(sqlite3_extended_errcode(replica.db) == 1544);  // SQLITE_READONLY_DIRECTORY
    CHECK(std::string(sqlite3_errmsg(replica.db)) == "attempt to write a readonly database");
  } else {
    CHECK(rc == SQLITE_IOERR);
    CHECK(sqlite3_extended_errcode(replica.db) == 778);  // SQLITE_IOERR_WRITE
    CHECK(std::string(sqlite3_errmsg(replica.db)) == "disk I/O error");
  }
  // Explicit transactions fail the same way, at their first write or their commit.
  CHECK(replica.exec("BEGIN; INSERT INTO t VALUES (3); COMMIT") != SQLITE_OK);
  replica.exec("ROLLBACK");
  CHECK(replica.count("t") == 1);
  CHECK(sim.position(1) == before);

  // The same error from another process.
  const auto child = run_node_process({sim.database_path(2).string(), "INSERT INTO t VALUES (4)"});
  CHECK(child.exit_code == 1);
  CHECK(child.err == (mode == journal_mode::rollback
                          ? "1544 attempt to write a readonly database\n"
                          : "778 disk I/O error\n"));
}

TEST_CASE("the primary's TXID is one higher when each COMMIT returns, unchanged after ROLLBACK") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection db(sim.database_path(0));
  std::uint64_t txid = sim.position(0).txid;
  std::set<std::uint64_t> checksums{sim.position(0).checksum};
  auto expect_txid = [&](std::uint64_t expected) {
    const auto pos = sim.position(0);
    CHECK(pos.txid == expected);
    CHECK(read_file(sim.position_path(0))->size() == 34);
    checksums.insert(pos.checksum);
  };

  db.must("CREATE TABLE t(x TEXT)");
  expect_txid(++txid);
  db.must("INSERT INTO t VALUES ('a')");  // autocommit
  expect_txid(++txid);
  db.must("BEGIN; INSERT INTO t VALUES ('b'); INSERT INTO t VALUES ('c'); COMMIT");
  expect_txid(++txid);
  db.must("BEGIN IMMEDIATE; INSERT INTO t VALUES ('d')");
  expect_txid(txid);  // not committed yet
  db.must("COMMIT");
  expect_txid(++txid);

  db.must("BEGIN; INSERT INTO t VALUES ('x'); ROLLBACK");
  expect_txid(txid);
  db.must("SELECT count(*) FROM t");
  db.must("BEGIN; SELECT * FROM t; COMMIT");  // a read-only transaction
  expect_txid(txid);
  db.must("CREATE UNIQUE INDEX tx ON t(x)");
  expect_txid(++txid);
  CHECK(db.exec("INSERT INTO t VALUES ('a')") == SQLITE_CONSTRAINT);  // fails, rolled back
  expect_txid(txid);

  // A transaction larger than the page cache spills pages before it ends.
  db.must("PRAGMA cache_size=10");
  const std::string big =
      "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 2000) "
      "INSERT INTO t SELECT hex(randomblob(200)) || v FROM s";
  db.must("BEGIN; " + big + "; ROLLBACK");
  expect_txid(txid);
  db.must("BEGIN; " + big + "; COMMIT");
  expect_txid(++txid);
  CHECK(db.count("t") == 2004);

  // Each commit moved the checksum to one never seen before.
  CHECK(checksums.size() == txid);
}

TEST_CASE("two histories that reach one TXID with different transactions show different checksums") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  auto run = [mode](const std::string& value) {
    cluster sim(options_for(mode));
    connection db(sim.database_path(0));
    db.must("CREATE TABLE t(x TEXT)");
    db.must("INSERT INTO t VALUES ('" + value + "')");
    return sim.position(0);
  };
  const auto a = run("written by the old primary");
  const auto b = run("written by the new primary");
  CHECK(a.txid == b.txid);
  CHECK(a.checksum != b.checksum);
  if (mode == journal_mode::rollback) CHECK(run("written by the old primary") == a);  // content decides
}

TEST_CASE("savepoints and checkpoints count as the transactions they are part of") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection db(sim.database_path(0));
  db.must("CREATE TABLE t(x)");
  const auto start = sim.position(0).txid;
  // One outer transaction with released and rolled-back savepoints: one commit.
  db.must("BEGIN; SAVEPOINT a; INSERT INTO t VALUES (1); RELEASE a;"
          "SAVEPOINT b; INSERT INTO t VALUES (2); ROLLBACK TO b; RELEASE b; COMMIT");
  CHECK(sim.position(0).txid == start + 1);
  // A savepoint opened outside a transaction is the transaction.
  db.must("SAVEPOINT c; INSERT INTO t VALUES (3); RELEASE c");
  CHECK(sim.position(0).txid == start + 2);
  // Rolled back to its start, it still commits the pages it touched (as LiteFS
  // would ship them): one TXID.
  db.must("SAVEPOINT d; INSERT INTO t VALUES (4); ROLLBACK TO d; RELEASE d");
  CHECK(sim.position(0).txid == start + 3);
  CHECK(db.count("t") == 2);
  // A checkpoint moves pages, it commits nothing; the WAL then restarts.
  if (mode == journal_mode::wal) {
    db.must("PRAGMA wal_checkpoint(TRUNCATE)");
    CHECK(sim.position(0).txid == start + 3);
    db.must("INSERT INTO t VALUES (5)");
    CHECK(sim.position(0).txid == start + 4);
    db.must("PRAGMA wal_checkpoint(PASSIVE)");
    db.must("INSERT INTO t VALUES (6)");
    CHECK(sim.position(0).txid == start + 5);
  }
}

TEST_CASE("a commit made by another process advances the primary's TXID before it returns") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  {
    connection db(sim.database_path(0));
    db.must("CREATE TABLE t(x)");
  }
  const auto before = sim.position(0).txid;
  const auto child =
      run_node_process({"--pos", sim.database_path(0).string(), "INSERT INTO t VALUES (1)"});
  INFO(child.err);
  REQUIRE(child.exit_code == 0);
  // The child read <db>-pos right after its INSERT returned.
  CHECK(child.out == "pos " + fwd_sim::format_position(sim.position(0)));
  CHECK(sim.position(0).txid == before + 1);

  const auto rolled_back = run_node_process(
      {sim.database_path(0).string(), "BEGIN; INSERT INTO t VALUES (2); ROLLBACK"});
  CHECK(rolled_back.exit_code == 0);
  CHECK(sim.position(0).txid == before + 1);
}

TEST_CASE("concurrent writers in several processes advance the TXID once per commit") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  {
    connection db(sim.database_path(0));
    db.must("CREATE TABLE t(x)");
  }
  const auto before = sim.position(0).txid;
  constexpr int writers = 3;
  constexpr int commits = 15;
  std::string sql;
  for (int i = 0; i < commits; ++i) sql += "INSERT INTO t VALUES (" + std::to_string(i) + ");";
  std::vector<std::future<process_result>> children;
  for (int w = 0; w < writers; ++w) {
    children.push_back(std::async(std::launch::async, [&] {
      return run_node_process({sim.database_path(0).string(), sql});
    }));
  }
  for (auto& child : children) {
    const auto result = child.get();
    INFO(result.err);
    CHECK(result.exit_code == 0);
  }
  connection db(sim.database_path(0));
  CHECK(db.count("t") == writers * commits);
  CHECK(sim.position(0).txid == before + writers * commits);
}

TEST_CASE("a replica sees a commit only once replication runs, then holds the primary's position") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection primary(sim.database_path(0));
  primary.must("CREATE TABLE t(x)");
  sim.replicate_now();
  connection replica(sim.database_path(1));
  CHECK(replica.count("t") == 0);

  primary.must("INSERT INTO t VALUES (42)");
  CHECK(replica.count("t") == 0);
  CHECK(sim.position(1).txid == sim.position(0).txid - 1);

  sim.replicate(1);
  CHECK(replica.count("t") == 1);
  CHECK(sim.position(1) == sim.position(0));
  CHECK(read_file(sim.position_path(1)) == read_file(sim.position_path(0)));
  // Node 2 was not replicated.
  connection other(sim.database_path(2));
  CHECK(other.count("t") == 0);
  sim.replicate_now();
  CHECK(other.count("t") == 1);
  CHECK(sim.position(2) == sim.position(0));
  // Replication keeps the replica read-only.
  CHECK(mode_of(sim.database_path(1)) == 0444);
  CHECK(replica.exec("INSERT INTO t VALUES (1)") != SQLITE_OK);
}

TEST_CASE("replication waits for a replica's readers instead of failing") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection primary(sim.database_path(0));
  primary.must("CREATE TABLE t(x)");
  sim.replicate_now();
  primary.must("INSERT INTO t VALUES (1)");

  connection reader(sim.database_path(1));
  reader.must("BEGIN; SELECT count(*) FROM t");  // holds a read transaction
  auto replicated = std::async(std::launch::async, [&] { sim.replicate(1); });
  reader.must("COMMIT");
  REQUIRE(replicated.wait_for(10s) == std::future_status::ready);
  replicated.get();
  CHECK(reader.count("t") == 1);
  CHECK(sim.position(1) == sim.position(0));
}

TEST_CASE("replication ships each transaction's pages, not the database, and the replica "
          "holds the primary's pages byte for byte") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection primary(sim.database_path(0));
  primary.must("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
  // About 2,000 pages, so that a whole copy and a transaction's pages differ by far.
  primary.must("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
               "INSERT INTO t(v) SELECT randomblob(3000) FROM n");
  sim.replicate_now();
  connection replica(sim.database_path(1));
  CHECK(replica.image() == primary.image());
  const auto before = sim.stats();

  for (int i = 0; i < 5; ++i) {
    primary.must("INSERT INTO t(v) VALUES ('row " + std::to_string(i) + "')");
  }
  primary.must("UPDATE t SET v = 'changed' WHERE id = 7");
  primary.must("DELETE FROM t WHERE id > 1500");  // the database shrinks (freelist pages)
  primary.must("VACUUM");                         // and its file too
  const auto head = sim.position(0);
  sim.replicate(1);
  const auto after = sim.stats();
  CHECK(sim.position(1) == head);
  CHECK(after.shipments == before.shipments + 1);
  CHECK(after.snapshots == before.snapshots);  // no whole copy
  CHECK(after.transactions == before.transactions + 8);
  CHECK(replica.count("t") == 1500);
  CHECK(replica.image() == primary.image());

  // One small transaction ships a handful of pages, whatever the database's size.
  primary.must("INSERT INTO t(v) VALUES ('small')");
  sim.replicate(1);
  CHECK(sim.stats().pages - after.pages <= 4);
  CHECK(sim.stats().snapshots == before.snapshots);
  CHECK(replica.image() == primary.image());
  CHECK(sim.position(1) == sim.position(0));
}

TEST_CASE("a reader on a replica only ever sees the state of a published position, never a "
          "half-applied one") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection primary(sim.database_path(0));
  primary.must("CREATE TABLE a(x); CREATE TABLE b(x)");
  sim.replicate_now();
  const std::uint64_t base = sim.position(0).txid;
  sim.start_replication(0ms);

  // Each transaction adds one row to each table, with a page-sized value so that a
  // transaction spans several pages: after TXID base + n, both tables hold n rows.
  std::atomic<bool> done{false};
  std::atomic<int> reads{0};
  std::string failure;
  std::thread reader([&] {
    connection replica(sim.database_path(1));
    while (!done && failure.empty()) {
      const auto seen_before = sim.position(1).txid;
      sqlite3_stmt* stmt = nullptr;
      if (sqlite3_prepare_v2(replica.db,
                             "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)", -1,
                             &stmt, nullptr) != SQLITE_OK) {
        continue;  // the schema is not there yet
      }
      if (sqlite3_step(stmt) == SQLITE_ROW) {
        const auto in_a = static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 0));
        const auto in_b = static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 1));
        const auto seen_after = sim.position(1).txid;
        if (in_a != in_b) {
          failure = "torn: " + std::to_string(in_a) + " rows in a, " + std::to_string(in_b) + " in b";
        } else if (in_a < seen_before - base || in_a > seen_after - base) {
          failure = std::to_string(in_a) + " rows between positions " +
                    std::to_string(seen_before - base) + " and " + std::to_string(seen_after - base);
        }
        ++reads;
      }
      sqlite3_finalize(stmt);
    }
  });
  for (int i = 0; i < 200 && failure.empty(); ++i) {
    primary.must("BEGIN; INSERT INTO a VALUES (randomblob(5000)); INSERT INTO b VALUES (randomblob(5000)); COMMIT");
  }
  const auto head = sim.position(0);
  CHECK(wait_until([&] { return sim.position(1) == head; }, 10000ms));
  done = true;
  reader.join();
  sim.stop_replication();
  CHECK(failure == "");
  CHECK(reads > 0);
  connection replica(sim.database_path(1));
  CHECK(replica.count("a") == 200);
  CHECK(replica.image() == primary.image());
}

TEST_CASE("a replica whose next transaction file is missing catches up with a whole copy") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection primary(sim.database_path(0));
  primary.must("CREATE TABLE t(x)");
  sim.replicate_now();
  primary.must("INSERT INTO t VALUES (1)");
  primary.must("INSERT INTO t VALUES (2)");
  // As if the writer of the first commit died between its position and its file.
  const auto history = sim.root() / ".fwd-sim-ltx" / "node-a" / "app.db";
  char name[32];
  std::snprintf(name, sizeof name, "%016llx.ltx",
                static_cast<unsigned long long>(sim.position(0).txid - 1));
  REQUIRE(fs::remove(history / name));
  const auto before = sim.stats();
  sim.replicate(1);
  CHECK(sim.stats().snapshots == before.snapshots + 1);
  CHECK(sim.position(1) == sim.position(0));
  connection replica(sim.database_path(1));
  CHECK(replica.count("t") == 2);
  CHECK(replica.image() == primary.image());
}

TEST_CASE("delayed background replication shows a positive lag, then catches up") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection primary(sim.database_path(0));
  primary.must("CREATE TABLE t(x)");
  sim.replicate_now();
  connection replica(sim.database_path(1));

  constexpr auto delay = 300ms;
  sim.start_replication(delay);
  // The replicator may see the commit before INSERT returns here: the delay counts from
  // a moment no later than the commit, so the clock starts before the statement.
  const auto before_commit = std::chrono::steady_clock::now();
  primary.must("INSERT INTO t VALUES (7)");
  const auto target = sim.position(0);

  // Behind: .lag turns positive while the row is not there yet.
  REQUIRE(wait_until([&] {
    const auto lag = read_file(sim.mount(1) / ".lag");
    return lag && lag->size() == 11 && (*lag)[0] == '+' && *lag != "+000000000\n";
  }));
  CHECK(replica.count("t") == 0);
  CHECK(sim.position(1).txid < target.txid);

  // Then it catches up, no sooner than the delay.
  REQUIRE(wait_until([&] { return sim.position(1).txid >= target.txid; }));
  CHECK(std::chrono::steady_clock::now() - before_commit >= delay);
  CHECK(replica.count("t") == 1);
  CHECK(wait_until([&] { return sim.position(2) == target; }));
  // Caught up, the lag is the time since the primary's last frame or heartbeat (one a
  // second): under a second, and not held at 0, as real LiteFS shows it.
  auto caught_up_lag = [&](std::size_t node) {
    const auto lag = read_file(sim.mount(node) / ".lag");
    return lag && lag->size() == 11 && std::stoi(lag->substr(1)) < 1000;
  };
  CHECK(wait_until([&] { return caught_up_lag(1) && caught_up_lag(2); }));
  CHECK(wait_until([&] {
    const auto lag = read_file(sim.mount(1) / ".lag");
    return lag && *lag != "+000000000\n";
  }));
  sim.stop_replication();
  CHECK(read_file(sim.mount(0) / ".lag") == std::string("+000000000\n"));
}

TEST_CASE("once a replica's position reaches a commit's TXID, the replica shows that commit") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  connection primary(sim.database_path(0));
  primary.must("CREATE TABLE t(x)");
  sim.replicate_now();
  connection replica(sim.database_path(2));
  sim.start_replication(20ms);
  for (int i = 1; i <= 20; ++i) {
    primary.must("INSERT INTO t VALUES (" + std::to_string(i) + ")");
    const auto txid = sim.position(0).txid;  // what the primary would reply with
    REQUIRE(wait_until([&] { return sim.position(2).txid >= txid; }));
    CHECK(replica.count("t") >= i);
  }
  sim.stop_replication();
}

TEST_CASE("failover: no .primary and no writes during the election, then the new primary writes on") {
  const auto mode = GENERATE(journal_mode::rollback, journal_mode::wal);
  INFO(mode_name(mode));
  cluster sim(options_for(mode));
  {
    connection a(sim.database_path(0));
    a.must("CREATE TABLE t(x)");
    a.must("INSERT INTO t VALUES (1)");
  }
  sim.replicate_now();
  const auto replicated = sim.position(0);
  // An old connection on the old primary stays open across the failover.
  connection old_primary(sim.database_path(0));

  sim.begin_election();
  CHECK_FALSE(sim.primary());
  for (std::size_t i = 0; i < sim.size(); ++i) {
    INFO("node " << i);
    CHECK_FALSE(fs::exists(sim.mount(i) / ".primary"));
  }
  CHECK(mode_of(sim.mount(0)) == 0555);
  CHECK(mode_of(sim.database_path(0)) == 0444);
  CHECK(read_file(sim.mount(1) / ".lag") == std::string("+000000000\n"));
  const int rc = old_primary.exec("INSERT INTO t VALUES (2)");
  CHECK(sqlite3_extended_errcode(old_primary.db) ==
        (mode == journal_mode::rollback ? 1544 : 778));
  CHECK(rc != SQLITE_OK);
  CHECK(sim.position(0) == replicated);

  sim.elect(1);
  CHECK(sim.primary() == std::size_t{1});
  CHECK(mode_of(sim.mount(1)) == 0777);
  CHECK(mode_of(sim.database_path(1)) == 0666);
  CHECK(read_file(sim.mount(1) / ".lag") == std::string("+000000000\n"));
  CHECK_FALSE(fs::exists(sim.mount(1) / ".primary"));
  CHECK(read_file(sim.mount(0) / ".primary") == std::string("node-b\n"));
  CHECK(read_file(sim.mount(2) / ".primary") == std::string("node-b\n"));

  connection b(sim.database_path(1));
  b.must("INSERT INTO t VALUES (3)");
  CHECK(sim.position(1).txid == replicated.txid + 1);
  CHECK(sim.position(1).checksum != replicated.checksum);
  CHECK(old_primary.exec("INSERT INTO t VALUES (4)") != SQLITE_OK);

  sim.replicate_now();
  CHECK(sim.position(0) == sim.position(1));
  CHECK(sim.position(2) == sim.position(1));
  CHECK(old_primary.count("t") == 2);
  CHECK(old_primary.image() == b.image());

  // failover() does both steps (node-c is caught up here: nothing is lost either way).
  sim.failover(2, 5ms);
  CHECK(sim.primary() == std::size_t{2});
  connection c(sim.database_path(2));
  c.must("INSERT INTO t VALUES (5)");
  CHECK(sim.position(2).txid == replicated.txid + 2);
  CHECK(read_file(sim.mount(0) / ".primary") == std::string("node-c\n"));
  CHECK(read_file(sim.mount(1) / ".primary") == std::string("node-c\n"));
  CHECK(b.exec("INSERT INTO t VALUES (6)") != SQLITE_OK);
}

TEST_CASE("a disconnected replica has no .primary and misses replication until it reconnects") {
  cluster sim(options_for(journal_mode::wal));
  connection primary(sim.database_path(0));
  primary.must("CREATE TABLE t(x)");
  sim.disconnect(2);
  CHECK_FALSE(sim.connected(2));
  CHECK_FALSE(fs::exists(sim.mount(2) / ".primary"));
  CHECK(read_file(sim.mount(1) / ".primary") == std::string("node-a\n"));
  CHECK(mode_of(sim.mount(2)) == 0555);  // still a replica, just not connected
  sim.replicate_now();
  CHECK(sim.position(1) == sim.position(0));
  CHECK(sim.position(2).txid < sim.position(0).txid);
  CHECK_THROWS_AS(sim.disconnect(0), std::invalid_argument);

  sim.reconnect(2);
  CHECK(read_file(sim.mount(2) / ".primary") == std::string("node-a\n"));
  sim.replicate_now();
  CHECK(sim.position(2) == sim.position(0));
}

TEST_CASE("bad cluster options are refused with a clear error") {
  cluster_options no_hosts;
  no_hosts.hostnames.clear();
  CHECK_THROWS_AS(cluster(no_hosts), std::invalid_argument);
  cluster_options twice;
  twice.hostnames = {"a", "a"};
  CHECK_THROWS_AS(cluster(twice), std::invalid_argument);
  cluster_options slash;
  slash.database = "dir/app.db";
  CHECK_THROWS_AS(cluster(slash), std::invalid_argument);
  cluster_options out_of_range;
  out_of_range.primary = 3;
  CHECK_THROWS_AS(cluster(out_of_range), std::invalid_argument);
}

TEST_CASE("failover loses what was not shipped by default (as_is), as LiteFS does, and caught_up promotes with everything") {
  for (auto how : {cluster::promotion::caught_up, cluster::promotion::as_is}) {
    cluster sim(options_for(journal_mode::wal));
    {
      connection primary(sim.database_path(0));
      primary.must("CREATE TABLE t(x)");
      sim.replicate_now();
      primary.must("INSERT INTO t VALUES (1)");  // committed on node-a, not yet shipped
    }
    const auto committed = sim.position(0);
    REQUIRE(sim.position(2).txid < committed.txid);
    sim.failover(2, 0ms, how);
    connection c(sim.database_path(2));
    if (how == cluster::promotion::caught_up) {
      CHECK(sim.position(2).txid == committed.txid);
      CHECK(c.count("t") == 1);
    } else {
      CHECK(sim.position(2).txid < committed.txid);
      CHECK(c.count("t") == 0);
    }
    // The old primary follows the new history, whatever it had of its own.
    c.must("INSERT INTO t VALUES (2)");
    c.must("INSERT INTO t VALUES (3)");
    sim.replicate_now();
    connection a(sim.database_path(0));
    CHECK(sim.position(0) == sim.position(2));
    CHECK(sim.position(1) == sim.position(2));
    CHECK(a.image() == c.image());
    CHECK(a.count("t") == c.count("t"));
  }
}

TEST_CASE("GET /events serves LiteFS's init, tx and primaryChange lines, byte for byte") {
  cluster_options o = options_for(journal_mode::rollback);
  o.hostnames = {"node-a", "node-b"};
  cluster sim(o);
  REQUIRE(sim.http_port(0) != 0);
  litefs_events::stream primary(sim.http_port(0));
  litefs_events::stream replica(sim.http_port(1));
  INFO(primary.head());
  REQUIRE(primary.ok());
  REQUIRE(replica.ok());
  CHECK(primary.head().find("Content-Type: application/json\r\n") != std::string::npos);
  CHECK(primary.head().find("Transfer-Encoding: chunked\r\n") != std::string::npos);
  CHECK(primary.next(2s) == std::optional<std::string>(R"({"type":"init","data":{"isPrimary":true}})"));
  CHECK(replica.next(2s) ==
        std::optional<std::string>(R"({"type":"init","data":{"isPrimary":false,"hostname":"node-a"}})"));

  {
    connection c(sim.database_path(0));
    c.must("CREATE TABLE t(x)");
  }
  const auto tx = primary.next(2s);
  REQUIRE(tx);
  INFO(*tx);
  CHECK(litefs_events::well_formed(*tx));
  const auto pos = read_file(sim.position_path(0));
  REQUIRE(pos);
  CHECK(litefs_events::tx_position(*tx, "app.db").value_or("") + "\n" == *pos);
  sim.replicate_now();  // the replica applies it: its own tx event, the same position
  const auto applied = replica.next(2s);
  REQUIRE(applied);
  CHECK(litefs_events::tx_position(*applied, "app.db").value_or("") + "\n" == *pos);

  sim.failover(1);
  CHECK(replica.next_matching(litefs_events::primary_change_line, 2s) ==
        std::optional<std::string>(R"({"type":"primaryChange","data":{"isPrimary":false}})"));
  CHECK(replica.next_matching(litefs_events::primary_change_line, 2s) ==
        std::optional<std::string>(R"({"type":"primaryChange","data":{"isPrimary":true}})"));
  CHECK(primary.next_matching(litefs_events::primary_change_line, 2s) ==
        std::optional<std::string>(R"({"type":"primaryChange","data":{"isPrimary":false}})"));
  CHECK(primary.next_matching(litefs_events::primary_change_line, 2s) ==
        std::optional<std::string>(
            R"({"type":"primaryChange","data":{"isPrimary":false,"hostname":"node-b"}})"));
}

TEST_CASE("LiteFS killed: the mount fails with ENOTCONN and open files fail - restarted: a new "
          "device with the same files, and the role back") {
  if (auto why = fwd_sim::dead_mount_unavailable()) {
    std::printf("SKIPPED (dead mounts unavailable): %s\n", why->c_str());
    return;
  }
  cluster_options o = options_for(journal_mode::rollback);
  o.hostnames = {"node-a", "node-b"};
  cluster sim(o);
  connection old(sim.database_path(0));
  old.must("CREATE TABLE t(x); INSERT INTO t VALUES (1)");
  sim.replicate_now();
  const auto before = sim.position(0);
  struct stat st {};
  REQUIRE(::stat(sim.mount(0).c_str(), &st) == 0);
  const dev_t device = st.st_dev;
  litefs_events::stream replica(sim.http_port(1));
  REQUIRE(replica.next(2s));  // init

  sim.kill(0);
  CHECK_FALSE(sim.alive(0));
  errno = 0;
  CHECK(::stat(sim.mount(0).c_str(), &st) != 0);
  CHECK(errno == ENOTCONN);
  CHECK(::access((sim.mount(0) / ".lag").c_str(), F_OK) != 0);
  CHECK(errno == ENOTCONN);
  // The connection opened before points at the dead mount: its locks fail.
  CHECK(old.exec("INSERT INTO t VALUES (2)") != SQLITE_OK);
  CHECK(sqlite3_extended_errcode(old.db) == SQLITE_IOERR_LOCK);
  // The primary's HTTP API is gone; its replica has lost it.
  litefs_events::stream gone(sim.http_port(0), 500ms);
  CHECK_FALSE(gone.ok());
  CHECK(replica.next_matching(litefs_events::primary_change_line, 2s) ==
        std::optional<std::string>(R"({"type":"primaryChange","data":{"isPrimary":false}})"));
  CHECK_FALSE(fs::exists(sim.mount(1) / ".primary"));

  sim.restart(0);
  REQUIRE(::stat(sim.mount(0).c_str(), &st) == 0);
  CHECK(st.st_dev != device);
  CHECK(mode_of(sim.mount(0)) == 0777);
  CHECK(mode_of(sim.database_path(0)) == 0666);
  CHECK(sim.position(0) == before);
  CHECK(read_file(sim.mount(0) / ".lag") == std::optional<std::string>("+000000000\n"));
  CHECK(read_file(sim.mount(1) / ".primary") == std::optional<std::string>("node-a\n"));
  CHECK(replica.next_matching(litefs_events::primary_change_line, 2s) ==
        std::optional<std::string>(R"({"type":"primaryChange","data":{"isPrimary":false,"hostname":"node-a"}})"));
  // The old connection stays dead; a new one works on the new mount and moves the position.
  CHECK(old.exec("INSERT INTO t VALUES (3)") != SQLITE_OK);
  connection fresh(sim.database_path(0));
  CHECK(fresh.count("t") == 1);
  fresh.must("INSERT INTO t VALUES (4)");
  CHECK(sim.position(0).txid == before.txid + 1);
  litefs_events::stream back(sim.http_port(0));
  CHECK(back.next(2s) == std::optional<std::string>(R"({"type":"init","data":{"isPrimary":true}})"));
}

TEST_CASE("fwd's monitor follows the simulation's /events as it follows LiteFS's - new "
          "positions and a failover arrive through the stream alone") {
  cluster_options o = options_for(journal_mode::wal);
  o.hostnames = {"node-a", "node-b"};
  cluster sim(o);
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  fwd::litefs::monitor_options m;
  m.mount = sim.mount(1);
  m.database = "app.db";
  m.poll_interval = std::chrono::minutes(1);  // only events can wake it
  m.wait_poll_interval = std::chrono::minutes(1);
  m.wait_poll_interval_with_events = std::chrono::minutes(1);
  m.http = boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"),
                                          sim.http_port(1));
  m.events_reconnect = 50ms;
  auto monitor = fwd::litefs::monitor::create(io.get_executor(), m);
  monitor->start();
  std::thread runner([&] { io.run(); });
  CHECK(monitor->state()->role == fwd::litefs::role_kind::replica);
  REQUIRE(wait_until([&] { return monitor->events().connected; }));

  const auto start = monitor->state()->pos;
  auto waiting = monitor->async_wait_position(start.txid + 1, std::chrono::steady_clock::now() + 30s,
                                              boost::asio::use_future);
  {
    connection c(sim.database_path(0));
    c.must("CREATE TABLE t(x)");
  }
  sim.replicate_now();
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  CHECK(waiting.get() == fwd::litefs::position{sim.position(1).txid, sim.position(1).checksum});

  sim.failover(1, 0ms, cluster::promotion::caught_up);  // the test needs no loss
  CHECK(wait_until([&] { return monitor->state()->role == fwd::litefs::role_kind::primary; }));
  CHECK(monitor->events().events >= 3);  // init, tx, primaryChange...
  monitor->stop();
  work.reset();
  runner.join();
}
