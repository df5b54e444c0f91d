// A fwd server in its own process, for the hostile tests.
//   fwd_hostile_server [--max-connections N] [--max-unauthenticated N]
//                      [--handshake-timeout-ms N] [--nofile N] [--idle-timeout-ms N]
//                      [--frame-read-timeout-ms N] [--max-partial-frame-bytes N]
//                      [--max-frame-size N] [--max-in-flight N] [--max-in-flight-per-connection N]
//                      [--max-in-flight-per-address N] [--reserved-in-flight-per-address N]
//                      [--listen ADDRESS]
// --nofile sets this process's RLIMIT_NOFILE before the server starts. Prints "port <n>"
// once it listens; runs until killed. On stdin, one command a line:
//   stats     prints "stats refused <n> accept_failures <n> open <n> in_flight <n>":
//             connections closed by a cap, accept failures reported, connections open now
//             and requests running now
//   refusals  prints "refusals <what>/<reason>=<n> ..." from the server's
//             fwd_server_refused_total metric (fed by telemetry.refused)

#include "hostile_procedures.hpp"

#include <fwd/metrics.hpp>
#include <fwd/rpc/server.hpp>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer, freed memory would stay resident in its quarantine and the
// tests' bounds on resident memory would measure that instead of the server.
extern "C" const char* __asan_default_options() { return "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"; }
#endif

namespace {

std::int64_t nodes(const hostile::tree& t) {
  std::int64_t n = 1;
  for (const auto& child : t.children) n += nodes(child);
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  fwd::rpc::server_options options;
  options.secret = "hostile-test-secret-hostile-test-secret";
  options.node_name = "hostile";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--max-connections") {
      options.max_connections = std::stoul(value);
    } else if (flag == "--max-unauthenticated") {
      options.max_unauthenticated_connections = std::stoul(value);
    } else if (flag == "--handshake-timeout-ms") {
      options.handshake_timeout = std::chrono::milliseconds(std::stol(value));
    } else if (flag == "--idle-timeout-ms") {
      options.idle_timeout = std::chrono::milliseconds(std::stol(value));
    } else if (flag == "--frame-read-timeout-ms") {
      options.frame_read_timeout = std::chrono::milliseconds(std::stol(value));
    } else if (flag == "--max-partial-frame-bytes") {
      options.max_partial_frame_bytes = std::stoul(value);
    } else if (flag == "--max-frame-size") {
      options.max_frame_size = std::stoul(value);
    } else if (flag == "--max-in-flight") {
      options.max_in_flight = std::stoul(value);
    } else if (flag == "--max-in-flight-per-connection") {
      options.max_in_flight_per_connection = std::stoul(value);
    } else if (flag == "--max-in-flight-per-address") {
      options.max_in_flight_per_address = std::stoul(value);
    } else if (flag == "--reserved-in-flight-per-address") {
      options.reserved_in_flight_per_address = std::stoul(value);
    } else if (flag == "--listen") {
      options.listen = boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address(value), 0);
    } else if (flag == "--nofile") {
      rlimit limit{};
      ::getrlimit(RLIMIT_NOFILE, &limit);
      limit.rlim_cur = std::stoul(value);
      if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
        std::perror("setrlimit");
        return 2;
      }
    } else {
      std::cerr << "unknown flag " << flag << "\n";
      return 2;
    }
  }

  std::atomic<long> refused{0};
  std::atomic<long> accept_failures{0};
  auto hooks = std::make_shared<fwd::telemetry>();
  hooks->connection_failed = [&](const fwd::connection_event& e) {
    if (e.peer.empty()) {
      ++accept_failures;
    } else if (e.reason == fwd::errc::overloaded) {
      ++refused;
    }
  };
  auto metrics = std::make_shared<fwd::metrics>();
  options.telemetry = metrics->hooks(hooks);

  boost::asio::io_context io;
  fwd::rpc::registry procedures;
  procedures.define(hostile::echo, [](std::string s) { return s; });
  procedures.define(hostile::count_strings,
                    [](std::vector<std::string> v) { return static_cast<std::int64_t>(v.size()); });
  procedures.define(hostile::count_present, [](std::vector<std::optional<std::string>> v) {
    std::int64_t n = 0;
    for (const auto& s : v) n += s ? 1 : 0;
    return n;
  });
  procedures.define(hostile::count_nodes, [](hostile::tree t) { return nodes(t); });
  procedures.define(hostile::nap, [](std::int64_t ms) -> boost::asio::awaitable<std::int64_t> {
    boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, std::chrono::milliseconds(ms));
    co_await timer.async_wait(boost::asio::use_awaitable);
    co_return ms;
  });
  procedures.define(hostile::blob, [](std::int64_t n) { return std::string(static_cast<std::size_t>(n), 'b'); });

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
      if (line == "stats\n") {
        std::printf("stats refused %ld accept_failures %ld open %zu in_flight %zu\n", refused.load(),
                    accept_failures.load(), server.connection_count(), server.in_flight());
      } else if (line == "refusals\n") {
        // Lines such as: fwd_server_refused_total{what="call",reason="overloaded"} 3
        std::string out = "refusals";
        std::istringstream text(metrics->render());
        const std::string prefix = "fwd_server_refused_total{what=\"";
        for (std::string metric; std::getline(text, metric);) {
          if (metric.rfind(prefix, 0) != 0) continue;
          const auto what_end = metric.find('"', prefix.size());
          const auto reason_at = metric.find("reason=\"", what_end) + 8;
          const auto reason_end = metric.find('"', reason_at);
          out += " " + metric.substr(prefix.size(), what_end - prefix.size()) + "/" +
                 metric.substr(reason_at, reason_end - reason_at) + "=" + metric.substr(metric.rfind(' ') + 1);
        }
        std::printf("%s\n", out.c_str());
      }
      std::fflush(stdout);
      next_command();
    });
  };
  next_command();
  io.run();
}
