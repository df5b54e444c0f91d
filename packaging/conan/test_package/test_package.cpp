// Uses fwd the way a service does, without a cluster: declares a procedure, builds a
// node's options, classifies an error. Exits 0 when everything answers as documented.

#include <cstdio>
#include <fwd/forward.hpp>
#include <string>

namespace {
const fwd::procedure<std::int64_t(std::string)> add_tag{"test_package.add_tag"};
}

int main() {
  boost::asio::io_context io;
  fwd::node_options options;
  options.database = "/litefs/app.db";
  options.secret = "test-package-secret-0123456789abcdefghij";
  options.members = fwd::static_members({{boost::asio::ip::make_address("127.0.0.1"), 7070}});
  fwd::node node(io.get_executor(), options);
  node.define(add_tag, [](fwd::sqlite::connection& db, const std::string& label) {
    db.prepare("INSERT INTO tags(label) VALUES (?1)").bind(1, label).execute();
    return db.last_insert_rowid();
  });
  const bool ok = fwd::classify(fwd::errc::unreachable) == fwd::error_class::not_sent &&
                  fwd::classify(fwd::errc::connection_lost) == fwd::error_class::maybe_executed;
  std::printf("fwd %d.%d.%d: %s\n", FWD_VERSION_MAJOR, FWD_VERSION_MINOR, FWD_VERSION_PATCH,
              ok ? "ok" : "unexpected error classes");
  return ok ? 0 : 1;
}
