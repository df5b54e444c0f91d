#pragma once

// SQLite for fwd: RAII over sqlite3* (connection, statement, transaction) and the
// primary's write executor (exactly once via a dedup table, group commit).
//
//   fwd::sqlite::connection db{"/litefs/app.db"};
//   auto stmt = db.prepare("INSERT INTO tags(label) VALUES (?1)");
//   stmt.bind(1, "hello").execute();
//
//   fwd::sqlite::write_executor writer{io, "/litefs/app.db"};
//   writer.async_write(id, [](sqlite3* db) { ...; return std::string(result); },
//                      [](boost::system::error_code ec, std::string result, std::uint64_t txid)
//                      {});

#include <fwd/detail/sqlite_connection.hpp>
#include <fwd/detail/sqlite_write_executor.hpp>
