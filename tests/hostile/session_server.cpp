// A fwd server in its own process, for the session tests: frames that fail their MAC,
// relayed handshakes, protocol ranges and secrets.
//   fwd_session_server [--secret S] [--accepted S] [--min-protocol N] [--max-protocol N]
// Prints "port <n>" once it listens, or "error <message>" and exits 2 when the server
// refuses its options. On stdin, one command a line:
//   stats   prints "stats tampered <n> marks <n> protocol <n>": connections closed because
//           a frame failed its MAC, calls of session.mark that ran, and the protocol version
//           of the last connection opened

#include "session_procedures.hpp"

#include <fwd/rpc/server.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

int main(int argc, char** argv) {
  fwd::rpc::server_options options;
  options.secret = session_test::secret;
  options.node_name = "session";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--secret") {
      options.secret = value;
    } else if (flag == "--accepted") {
      options.accepted_secrets.push_back(value);
    } else if (flag == "--min-protocol") {
      options.min_protocol_version = static_cast<std::uint32_t>(std::stoul(value));
    } else if (flag == "--max-protocol") {
      options.max_protocol_version = static_cast<std::uint32_t>(std::stoul(value));
    } else {
      std::cerr << "unknown flag " << flag << "\n";
      return 2;
    }
  }

  std::atomic<long> tampered{0};
  std::atomic<long> marks{0};
  std::atomic<std::uint32_t> protocol{0};
  auto hooks = std::make_shared<fwd::telemetry>();
  hooks->connection_closed = [&](const fwd::connection_event& e) {
    if (e.reason == fwd::errc::tampered_frame) ++tampered;
  };
  hooks->connection_opened = [&](const fwd::connection_event& e) { protocol = e.protocol; };
  options.telemetry = hooks;

  boost::asio::io_context io;
  fwd::rpc::registry procedures;
  procedures.define(session_test::echo, [](std::string s) { return s; });
  procedures.define(session_test::mark, [&] { return ++marks; });

  std::optional<fwd::rpc::server> server;
  try {
    server.emplace(io.get_executor(), procedures, options);
  } catch (const fwd::error& e) {
    std::printf("error %s\n", e.what());
    std::fflush(stdout);
    return 2;
  }
  server->start();
  std::printf("port %u\n", static_cast<unsigned>(server->local_endpoint().port()));
  std::fflush(stdout);

  boost::asio::posix::stream_descriptor input(io, ::dup(STDIN_FILENO));
  boost::asio::streambuf lines;
  std::function<void()> next_command = [&] {
    boost::asio::async_read_until(input, lines, '\n', [&](boost::system::error_code ec, std::size_t n) {
      if (ec) return;
      std::string line(boost::asio::buffers_begin(lines.data()), boost::asio::buffers_begin(lines.data()) + n);
      lines.consume(n);
      if (line == "stats\n") {
        std::printf("stats tampered %ld marks %ld protocol %u\n", tampered.load(), marks.load(),
                    static_cast<unsigned>(protocol.load()));
      }
      std::fflush(stdout);
      next_command();
    });
  };
  next_command();
  io.run();
}
