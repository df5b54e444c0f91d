// A second floor: the same 64-byte ping-pong as tcp_pingpong.cpp, through Asio's reactor
// (async_read / async_write on one io_context thread per side, TCP_NODELAY), as fwd's
// transport runs. Between the raw floor and fwd: what the reactor itself costs, so that
// fwd over this figure is fwd's own work (framing, serialisation, dispatch, bookkeeping).
//
//   bench_rpc_asio server        listen on 127.0.0.1:0, echo every 64 bytes back
//   bench_rpc_asio latency [s]   chained round trips on the io thread: rpc.p50_us.asio, p99
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <functional>
#include <memory>

#include "../common/bench_support.hpp"

namespace {

using namespace fwd_bench;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

class echo_session : public std::enable_shared_from_this<echo_session> {
 public:
  explicit echo_session(tcp::socket socket) : socket_(std::move(socket)) {}
  void read() {
    asio::async_read(socket_, asio::buffer(buf_), [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
      if (!ec) self->write();
    });
  }

 private:
  void write() {
    asio::async_write(socket_, asio::buffer(buf_), [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
      if (!ec) self->read();
    });
  }
  tcp::socket socket_;
  std::array<char, payload_size> buf_{};
};

void accept(tcp::acceptor& acceptor) {
  acceptor.async_accept([&acceptor](boost::system::error_code ec, tcp::socket socket) {
    if (!ec) {
      socket.set_option(tcp::no_delay(true));
      std::make_shared<echo_session>(std::move(socket))->read();
    }
    accept(acceptor);
  });
}

int run_server() {
  asio::io_context io{1};
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  accept(acceptor);
  announce_port(acceptor.local_endpoint().port());
  io.run();
  return 0;
}

int run_latency(double seconds) {
  server_process server;
  asio::io_context io{1};
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server.port()));
  socket.set_option(tcp::no_delay(true));

  const std::string payload = make_payload();
  std::array<char, payload_size> reply{};
  std::vector<std::int64_t> samples;
  samples.reserve(500'000);
  const auto warm_end = clock::now() + window(0.2);
  const auto end = warm_end + window(seconds);
  clock::time_point sent;
  std::function<void()> next = [&] {
    sent = clock::now();
    asio::async_write(socket, asio::buffer(payload), [&](boost::system::error_code ec, std::size_t) {
      if (ec) die("asio client: " + ec.message());
      asio::async_read(socket, asio::buffer(reply), [&](boost::system::error_code ec2, std::size_t) {
        if (ec2) die("asio client: " + ec2.message());
        const auto now = clock::now();
        if (now >= warm_end) samples.push_back(elapsed_ns(sent, now));
        if (now < end && samples.size() < 500'000) next();
      });
    });
  };
  next();
  io.run();
  const auto s = summarise(std::move(samples));
  std::fprintf(stderr, "asio: %zu sequential round trips\n", s.samples);
  emit("rpc.p50_us.asio", s.p50_us);
  emit("rpc.p99_us.asio", s.p99_us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "server") return run_server();
  if (mode == "latency") return run_latency(seconds_arg(argc, argv, 2, 2.0));
  std::fprintf(stderr, "usage: %s server|latency [s]\n", argv[0]);
  return 2;
}
