// A cluster member for discovery tests: an fwd RPC server that answers `fwd.hello` from
// its simulated LiteFS mount. Prints "PORT <n>" once listening; exits when its stdin
// closes.
//
//   fwd_discovery_peer <mount> <database name> <litefs hostname> <secret>

#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/path_check.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/server.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <unistd.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s <mount> <database name> <litefs hostname> <secret>\n", argv[0]);
    return 2;
  }
  const std::filesystem::path mount = argv[1];
  const std::string database = argv[2];
  boost::asio::io_context io;
  fwd::rpc::registry procedures;
  fwd::rpc::server_options options;
  options.secret = argv[4];
  options.node_name = argv[3];
  options.litefs_hostname = argv[3];
  options.status = [mount, database] {
    boost::system::error_code failed;
    const fwd::litefs::role role = fwd::litefs::read_role(mount, failed);
    fwd::rpc::local_status status;
    status.role = fwd::litefs::to_string(role.kind);
    boost::system::error_code no_position;
    status.txid = fwd::litefs::read_position(mount, database, no_position).txid;
    return status;
  };
  fwd::rpc::server server(io.get_executor(), procedures, options);
  server.start();
  std::printf("PORT %u\n", static_cast<unsigned>(server.local_endpoint().port()));
  std::fflush(stdout);

  boost::asio::posix::stream_descriptor input(io, ::dup(STDIN_FILENO));
  char byte;
  std::function<void(boost::system::error_code, std::size_t)> on_input =
      [&](boost::system::error_code ec, std::size_t) {
        if (ec) {
          server.stop();
          io.stop();
          return;
        }
        input.async_read_some(boost::asio::buffer(&byte, 1), on_input);
      };
  input.async_read_some(boost::asio::buffer(&byte, 1), on_input);
  io.run();
  return 0;
}
