#pragma once

// A transaction guard over fwd::sqlite::connection: BEGIN on construction, ROLLBACK
// on destruction unless committed.

#include <fwd/sqlite/connection.hpp>

namespace fwd::sqlite {

enum class transaction_kind { deferred, immediate, exclusive };

/**
 * A transaction guard: BEGIN on construction, ROLLBACK on destruction unless commit()
 * (or rollback()) was called. Defaults to BEGIN IMMEDIATE, which takes the write lock at
 * once, so a write never fails half-way with SQLITE_BUSY on lock upgrade.
 */
class transaction {
 public:
  explicit transaction(connection& conn, transaction_kind kind = transaction_kind::immediate)
      : conn_(&conn) {
    switch (kind) {
      case transaction_kind::deferred:
        conn.exec("BEGIN DEFERRED");
        break;
      case transaction_kind::immediate:
        conn.exec("BEGIN IMMEDIATE");
        break;
      case transaction_kind::exclusive:
        conn.exec("BEGIN EXCLUSIVE");
        break;
    }
    active_ = true;
  }
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;
  ~transaction() {
    if (active_ && !conn_->autocommit()) {
      boost::system::error_code ignored;
      conn_->exec("ROLLBACK", ignored);
    }
  }

  /// COMMIT. On failure throws fwd::error; the destructor then rolls back.
  void commit() {
    conn_->exec("COMMIT");
    active_ = false;
  }
  /// ROLLBACK now.
  void rollback() {
    active_ = false;
    if (!conn_->autocommit()) conn_->exec("ROLLBACK");
  }
  bool active() const noexcept { return active_; }

 private:
  connection* conn_;
  bool active_ = false;
};

}  // namespace fwd::sqlite
