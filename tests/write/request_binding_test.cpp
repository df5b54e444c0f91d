// A request id is bound to the procedure that first ran with it.

#include <fwd/sqlite/connection.hpp>
#include <fwd/write/executor.hpp>

#include <boost/asio/thread_pool.hpp>
#include <catch2/catch.hpp>

#include <future>
#include <memory>
#include <string>

#include "write_test_support.hpp"

using fwd_test::count;
using fwd_test::gate;
using fwd_test::insert_item;
using fwd_test::make_id;
using fwd_test::outcome;
using fwd_test::temp_dir;
using fwd_test::wait;

namespace {

std::future<outcome> submit_as(fwd::sqlite::write_executor& writer, std::uint64_t id, std::string procedure,
                               std::function<std::string(sqlite3*)> work) {
  auto promise = std::make_shared<std::promise<outcome>>();
  auto future = promise->get_future();
  writer.async_write(make_id(id), std::move(procedure), std::move(work), fwd_test::capture(promise));
  return future;
}

std::string text(const std::string& path, const std::string& sql) {
  fwd::sqlite::connection db(path, SQLITE_OPEN_READONLY);
  auto stmt = db.prepare(sql);
  if (!stmt.step()) return "(no row)";
  return stmt.column_is_null(0) ? "(null)" : std::string(stmt.column_text(0));
}

void check_refusal(const outcome& o, const std::string& bound, const std::string& given) {
  CHECK(o.ec == fwd::errc::bad_argument);
  CHECK(fwd::classify(o.ec) == fwd::error_class::permanent);
  CHECK(o.result.find("already bound to the procedure '" + bound + "', not '" + given + "'") !=
        std::string::npos);
  CHECK(o.result.find("nothing ran") != std::string::npos);
}

}  // namespace

TEST_CASE("a request id reused with another procedure is refused, never answered with its result") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path);

  auto first = submit_as(writer, 1, "add_item i64(string)", insert_item("a"));
  const outcome a = wait(first);
  INFO(a.result);
  REQUIRE_FALSE(a.ec);
  CHECK(text(path, "SELECT procedure FROM _fwd_requests") == "add_item i64(string)");

  // The same id for another procedure: refused, its work never runs.
  bool ran = false;
  auto other = submit_as(writer, 1, "remove_item void(i64)", [&ran](sqlite3* db) {
    ran = true;
    return insert_item("b")(db);
  });
  const outcome b = wait(other);
  check_refusal(b, "add_item i64(string)", "remove_item void(i64)");
  CHECK(b.result != a.result);
  CHECK_FALSE(ran);
  CHECK(count(path, "SELECT count(*) FROM items WHERE label = 'b'") == 0);

  // The form without a procedure is bound to none: it is another procedure too.
  auto unnamed = fwd_test::submit(writer, 1, insert_item("c"));
  const outcome c = wait(unnamed);
  CHECK(c.ec == fwd::errc::bad_argument);
  CHECK(c.result.find("(no procedure)") != std::string::npos);

  // A retry of the same procedure is answered from the dedup table.
  auto retry = submit_as(writer, 1, "add_item i64(string)", insert_item("a"));
  const outcome r = wait(retry);
  CHECK_FALSE(r.ec);
  CHECK(r.result == a.result);
  CHECK(count(path, "SELECT count(*) FROM items") == 1);
}

TEST_CASE("a reused request id with another procedure does not join the write that waits") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path);
  gate g;
  auto held = submit_as(writer, 9, "gate", g.work());
  g.wait_entered();
  auto first = submit_as(writer, 1, "add_item i64(string)", insert_item("a"));
  auto other = submit_as(writer, 1, "rename_item void(i64,string)", insert_item("b"));
  auto same = submit_as(writer, 1, "add_item i64(string)", insert_item("a"));
  // Refused at once, while the first still waits behind the gate.
  check_refusal(wait(other), "add_item i64(string)", "rename_item void(i64,string)");
  g.open();
  REQUIRE_FALSE(wait(held).ec);
  const outcome a = wait(first);
  REQUIRE_FALSE(a.ec);
  const outcome s = wait(same);
  CHECK_FALSE(s.ec);
  CHECK(s.result == a.result);
  CHECK(count(path, "SELECT count(*) FROM items") == 1);
}

TEST_CASE("a dedup table from before the procedure column is migrated in place") {
  temp_dir dir;
  const auto path = dir.file("db");
  fwd_test::create_items(path);
  {
    // The table as earlier versions created it, with one recorded request.
    fwd::sqlite::connection db(path);
    db.exec("CREATE TABLE _fwd_requests(id BLOB PRIMARY KEY, result BLOB NOT NULL, "
            "created_at INTEGER NOT NULL) WITHOUT ROWID");
    const auto id = make_id(1);
    db.prepare("INSERT INTO _fwd_requests(id, result, created_at) VALUES (?1, ?2, ?3)")
        .bind(1, fwd::sqlite::blob_view(id))
        .bind(2, std::string_view("old result"))
        .bind(3, std::int64_t{4102444800000})  // far in the future: never pruned here
        .execute();
  }
  boost::asio::thread_pool pool(1);
  fwd::sqlite::write_executor writer(pool.get_executor(), path);

  // The old row, with no procedure, still answers its retry (whatever procedure asks).
  auto retry = submit_as(writer, 1, "add_item i64(string)", insert_item("dup"));
  const outcome r = wait(retry);
  CHECK_FALSE(r.ec);
  CHECK(r.result == "old result");
  CHECK(count(path, "SELECT count(*) FROM items") == 0);

  // New rows record their procedure; the old one keeps NULL.
  auto fresh = submit_as(writer, 2, "add_item i64(string)", insert_item("new"));
  REQUIRE_FALSE(wait(fresh).ec);
  CHECK(count(path, "SELECT count(*) FROM pragma_table_info('_fwd_requests') WHERE name = 'procedure'") == 1);
  CHECK(text(path, "SELECT procedure FROM _fwd_requests WHERE procedure IS NOT NULL") == "add_item i64(string)");
  CHECK(count(path, "SELECT count(*) FROM _fwd_requests WHERE procedure IS NULL") == 1);
  auto other = submit_as(writer, 2, "remove_item void(i64)", insert_item("x"));
  check_refusal(wait(other), "add_item i64(string)", "remove_item void(i64)");
}
