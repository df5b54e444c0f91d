// A fwd server in its own process, for the transport's cross-process tests.
//   fwd_rpc_test_server [--secret S] [--max-in-flight-per-connection N] [--max-in-flight N]
//                       [--max-in-flight-per-address N]
//                       [--handshake-timeout-ms N] [--idle-timeout-ms N] [--max-frame-size N]
// Prints "port <n>" on stdout once it listens; runs until killed. Commands on stdin, one a
// line, for tests that must not go through the RPC path they are measuring:
//   held      prints "held <n>": how many test.hold calls wait
//   release   completes every held call, prints "released <n>"

#include "test_procedures.hpp"

#include <fwd/rpc/server.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  fwd::rpc::server_options options;
  options.secret = "rpc-test-cluster-secret-of-32-bytes-or-more";
  options.node_name = "test-node";
  options.litefs_hostname = "litefs-host-1";
  options.status = [] { return fwd::rpc::local_status{"primary", 42}; };
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--secret") options.secret = value;
    else if (flag == "--max-in-flight-per-connection") options.max_in_flight_per_connection = std::stoul(value);
    else if (flag == "--max-in-flight") options.max_in_flight = std::stoul(value);
    else if (flag == "--max-in-flight-per-address") options.max_in_flight_per_address = std::stoul(value);
    else if (flag == "--handshake-timeout-ms") options.handshake_timeout = std::chrono::milliseconds(std::stol(value));
    else if (flag == "--idle-timeout-ms") options.idle_timeout = std::chrono::milliseconds(std::stol(value));
    else if (flag == "--max-frame-size") options.max_frame_size = std::stoul(value);
    else {
      std::cerr << "unknown flag " << flag << "\n";
      return 2;
    }
  }

  boost::asio::io_context io;
  fwd::rpc::registry procedures;
  std::int64_t runs = 0;
  std::vector<fwd::rpc::result_handler<std::string>> held;  // touched only on the io thread

  procedures.define(test_procs::echo, [](std::string s) { return s; });
  procedures.define(test_procs::add, [](std::int64_t a, std::int64_t b) { return a + b; });
  procedures.define(test_procs::fail, [](std::string message) -> std::int64_t { throw std::runtime_error(message); });
  procedures.define(test_procs::side_effect, [&runs] { ++runs; });
  procedures.define(test_procs::runs, [&runs] { return runs; });
  // Asynchronous: replies when released.
  procedures.define(test_procs::hold, [&held](std::string, fwd::rpc::result_handler<std::string> reply) {
    held.push_back(std::move(reply));
  });
  auto release_all = [&held] {
    auto waiting = std::move(held);
    held.clear();
    for (auto& reply : waiting) reply(boost::system::error_code{}, "released");
    return static_cast<std::int64_t>(waiting.size());
  };
  procedures.define(test_procs::release, release_all);
  procedures.define(test_procs::held, [&held] { return static_cast<std::int64_t>(held.size()); });

  fwd::rpc::server server(io.get_executor(), procedures, options);
  server.start();
  std::printf("port %u\n", static_cast<unsigned>(server.local_endpoint().port()));
  std::fflush(stdout);

  boost::asio::posix::stream_descriptor input(io, ::dup(STDIN_FILENO));
  boost::asio::streambuf lines;
  std::function<void()> next_command = [&] {
    boost::asio::async_read_until(input, lines, '\n', [&](boost::system::error_code ec, std::size_t n) {
      if (ec) return;
      std::string line(boost::asio::buffers_begin(lines.data()), boost::asio::buffers_begin(lines.data()) + n);
      lines.consume(n);
      if (line == "held\n") std::printf("held %zu\n", held.size());
      if (line == "release\n") std::printf("released %lld\n", static_cast<long long>(release_all()));
      std::fflush(stdout);
      next_command();
    });
  };
  next_command();
  io.run();
}
