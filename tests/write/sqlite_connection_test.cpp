// fwd::sqlite::connection, statement and transaction on real SQLite files.

#include <array>
#include <catch2/catch.hpp>
#include <cstdint>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/write/executor.hpp>
#include <string>
#include <vector>

#include "write_test_support.hpp"

using fwd_test::temp_dir;

TEST_CASE("statement binds int64, double, text, blob and null by index and reads them back") {
  temp_dir dir;
  fwd::sqlite::connection db(dir.file("t.db"));
  db.exec("CREATE TABLE t(i INTEGER, d REAL, s TEXT, b BLOB, n)");
  const std::vector<std::uint8_t> bytes{0, 1, 2, 255};
  auto insert = db.prepare("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)");
  insert.bind(1, std::int64_t{1} << 40)
      .bind(2, 2.5)
      .bind(3, "text")
      .bind(4, bytes)
      .bind(5, nullptr);
  insert.execute();
  CHECK(db.changes() == 1);
  CHECK(db.last_insert_rowid() == 1);

  auto select = db.prepare("SELECT i, d, s, b, n FROM t");
  REQUIRE(select.step());
  CHECK(select.column_count() == 5);
  CHECK(select.column_name(2) == "s");
  CHECK(select.column_int64(0) == (std::int64_t{1} << 40));
  CHECK(select.column_double(1) == 2.5);
  CHECK(select.column_text(2) == "text");
  CHECK(select.column_type(3) == SQLITE_BLOB);
  const auto blob = select.column_blob(3);
  CHECK(std::vector<std::uint8_t>(blob.begin(), blob.end()) == bytes);
  CHECK(select.column_is_null(4));
  CHECK_FALSE(select.step());

  // reset runs it again.
  select.reset();
  CHECK(select.step());
}

TEST_CASE("statement binds by parameter name, and an unknown name is SQLITE_RANGE") {
  temp_dir dir;
  fwd::sqlite::connection db(dir.file("t.db"));
  db.exec("CREATE TABLE t(a INTEGER, b TEXT)");
  auto insert = db.prepare("INSERT INTO t VALUES (:a, :b)");
  insert.bind(":a", 7).bind(":b", std::string("seven")).execute();
  auto select = db.prepare("SELECT a, b FROM t WHERE a = @a");
  select.bind("@a", 7);
  REQUIRE(select.step());
  CHECK(select.column_text(1) == "seven");
  try {
    select.bind(":missing", 1);
    FAIL("bind to a missing name did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code() == std::error_code(fwd::make_sqlite_error(SQLITE_RANGE)));
    CHECK(std::string(e.what()).find(":missing") != std::string::npos);
  }
}

TEST_CASE("a zero-length blob binds as an empty BLOB, not NULL") {
  temp_dir dir;
  fwd::sqlite::connection db(dir.file("t.db"));
  auto stmt = db.prepare("SELECT typeof(?1), length(?1)");
  stmt.bind(1, std::vector<std::uint8_t>{});
  REQUIRE(stmt.step());
  CHECK(stmt.column_text(0) == "blob");
  CHECK(stmt.column_int64(1) == 0);
}

TEST_CASE("SQL errors throw fwd::error with SQLite's extended code, its message and the SQL") {
  temp_dir dir;
  fwd::sqlite::connection db(dir.file("t.db"));
  db.exec("CREATE TABLE t(k TEXT UNIQUE)");
  db.exec("INSERT INTO t VALUES ('x')");

  try {
    db.prepare("SELEKT 1");
    FAIL("a syntax error did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code() == std::error_code(fwd::make_sqlite_error(SQLITE_ERROR)));
    CHECK(std::string(e.what()).find("SELEKT 1") != std::string::npos);
    CHECK(std::string(e.what()).find("syntax error") != std::string::npos);
  }

  auto insert = db.prepare("INSERT INTO t VALUES (?1)");
  insert.bind(1, "x");
  try {
    insert.step();
    FAIL("a unique violation did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code().value() == 2067);  // SQLITE_CONSTRAINT_UNIQUE, not 19
    CHECK(std::string(e.code().category().name()) == "fwd.sqlite");
    CHECK(std::string(e.what()).find("UNIQUE constraint failed: t.k") != std::string::npos);
    CHECK(std::string(e.what()).find("INSERT INTO t VALUES (?1)") != std::string::npos);
    CHECK(e.classification() == fwd::error_class::permanent);
  }

  try {
    db.exec("INSERT INTO t VALUES ('x')");
    FAIL("exec of a unique violation did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code().value() == 2067);
  }
}

TEST_CASE("error_code overloads report failures without throwing, the detail in diagnostics") {
  temp_dir dir;
  fwd::sqlite::connection db(dir.file("t.db"));
  db.exec("CREATE TABLE t(k TEXT UNIQUE)");
  boost::system::error_code ec;
  fwd::diagnostics diag;
  db.exec("INSERT INTO t VALUES ('a'); INSERT INTO t VALUES ('a')", ec, diag);
  CHECK(ec == fwd::make_sqlite_error(2067));
  CHECK(diag.message().find("UNIQUE") != std::string::npos);
  try {
    db.exec("INSERT INTO t VALUES ('a')");
    FAIL("a duplicate key did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code().value() == 2067);
    CHECK(e.get_diagnostics().message().find("UNIQUE") != std::string::npos);
  }

  auto bad = db.prepare("NOT SQL", ec);
  CHECK(ec == fwd::make_sqlite_error(SQLITE_ERROR));
  CHECK_FALSE(bad);
  CHECK_FALSE(db.prepare("NOT SQL", ec, diag));
  CHECK(diag.message().find("NOT SQL") != std::string::npos);

  auto insert = db.prepare("INSERT INTO t VALUES ('a')", ec);
  REQUIRE_FALSE(ec);
  CHECK_FALSE(insert.step(ec));
  CHECK(ec.value() == 2067);

  auto missing =
      fwd::sqlite::connection::open(dir.file("no/such/dir/x.db"), fwd::sqlite::default_open_flags,
                                    std::chrono::milliseconds(0), ec, diag);
  CHECK((ec.value() & 0xff) == SQLITE_CANTOPEN);
  CHECK_FALSE(missing);
  CHECK(diag.message().find("no/such/dir/x.db") != std::string::npos);
  try {
    fwd::sqlite::connection throwing(dir.file("no/such/dir/x.db"));
    FAIL("opening a path in a missing directory did not throw");
  } catch (const fwd::error& e) {
    CHECK(std::string(e.what()).find("no/such/dir/x.db") != std::string::npos);
  }
}

TEST_CASE("transaction guard rolls back unless committed") {
  temp_dir dir;
  fwd::sqlite::connection db(dir.file("t.db"));
  db.exec("CREATE TABLE t(v INTEGER)");
  {
    fwd::sqlite::transaction tx(db);
    CHECK_FALSE(db.autocommit());
    db.exec("INSERT INTO t VALUES (1)");
  }  // destroyed without commit
  CHECK(db.autocommit());
  {
    fwd::sqlite::transaction tx(db, fwd::sqlite::transaction_kind::deferred);
    db.exec("INSERT INTO t VALUES (2)");
    tx.commit();
  }
  auto stmt = db.prepare("SELECT group_concat(v) FROM t");
  REQUIRE(stmt.step());
  CHECK(stmt.column_text(0) == "2");
}

TEST_CASE("BEGIN IMMEDIATE waits for the busy timeout, then fails with SQLITE_BUSY") {
  temp_dir dir;
  fwd::sqlite::connection first(dir.file("t.db"));
  fwd::sqlite::connection second(dir.file("t.db"), fwd::sqlite::default_open_flags,
                                 std::chrono::milliseconds(20));
  fwd::sqlite::transaction holding(first);
  try {
    fwd::sqlite::transaction blocked(second);
    FAIL("a second writer got the write lock");
  } catch (const fwd::error& e) {
    CHECK((e.code().value() & 0xff) == SQLITE_BUSY);
    CHECK(e.classification() == fwd::error_class::not_sent);
  }
}

TEST_CASE("a borrowed connection never closes the handle it wraps") {
  temp_dir dir;
  fwd::sqlite::connection owner(dir.file("t.db"));
  {
    auto borrowed = fwd::sqlite::connection::borrow(owner.native_handle());
    borrowed.exec("CREATE TABLE t(v)");
  }
  owner.exec("INSERT INTO t VALUES (1)");  // still open
  CHECK(owner.changes() == 1);
}
