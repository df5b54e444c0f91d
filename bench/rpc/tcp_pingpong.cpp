// The floor for fwd's call latency: a raw TCP ping-pong of the same 64-byte payload over
// loopback, blocking sockets with TCP_NODELAY on both ends, one message in flight. No
// framing, no serialisation, no authentication: only the kernel's round trip.
//
//   bench_rpc_tcp server     listen on 127.0.0.1:0, echo every 64 bytes back
//   bench_rpc_tcp latency    start the server half, print rpc.p50_us.tcp / rpc.p99_us.tcp
//   bench_rpc_tcp throughput N...  keep N messages in flight on one connection, print
//                            rpc.tput.tcp.N (messages echoed per second)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <thread>

#include "../common/bench_support.hpp"

namespace {

using namespace fwd_bench;

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool read_exact(int fd, char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

sockaddr_in loopback(unsigned short port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int run_server() {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr = loopback(0);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener, 1024) != 0) {
    die("tcp server: cannot listen on 127.0.0.1");
  }
  socklen_t len = sizeof addr;
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  announce_port(ntohs(addr.sin_port));
  for (;;) {
    const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    set_nodelay(fd);
    // Echoes bytes as they come: one 64-byte message per read when one is in flight, many
    // per read when the client pipelines.
    std::thread([fd] {
      std::vector<char> buf(std::size_t{64} << 10);
      for (;;) {
        const ssize_t r = ::read(fd, buf.data(), buf.size());
        if (r <= 0 || !write_all(fd, buf.data(), static_cast<std::size_t>(r))) break;
      }
      ::close(fd);
    }).detach();
  }
}

int connect_to(const server_process& server) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = loopback(server.port());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    die("tcp client: cannot connect");
  }
  set_nodelay(fd);
  return fd;
}

int run_latency(double seconds) {
  server_process server;
  const int fd = connect_to(server);
  const std::string payload = make_payload();
  char reply[payload_size];
  const auto s = sequential_latency([&] {
    if (!write_all(fd, payload.data(), payload.size()) || !read_exact(fd, reply, sizeof reply)) {
      die("tcp client: connection lost");
    }
  }, seconds);
  ::close(fd);
  std::fprintf(stderr, "tcp: %zu sequential round trips\n", s.samples);
  emit("rpc.p50_us.tcp", s.p50_us);
  emit("rpc.p99_us.tcp", s.p99_us);
  return 0;
}

/** One connection, `depth` messages in flight: every message echoed back sends another. */
int run_throughput(const std::vector<std::size_t>& depths) {
  server_process server;
  for (const std::size_t depth : depths) {
    const int fd = connect_to(server);
    std::string burst;
    for (std::size_t i = 0; i < depth; ++i) burst += make_payload();
    std::vector<char> buf(std::size_t{64} << 10);
    std::uint64_t bytes_back = 0;
    if (!write_all(fd, burst.data(), burst.size())) die("tcp client: connection lost");
    auto pump = [&] {
      const ssize_t r = ::read(fd, buf.data(), buf.size());
      if (r <= 0) die("tcp client: connection lost");
      const std::uint64_t before = bytes_back / payload_size;
      bytes_back += static_cast<std::uint64_t>(r);
      const std::uint64_t done = bytes_back / payload_size - before;
      if (!write_all(fd, burst.data(), done * payload_size)) die("tcp client: connection lost");
    };
    const auto warm_end = clock::now() + window(0.2);
    while (clock::now() < warm_end) pump();
    const std::uint64_t c0 = bytes_back / payload_size;
    const auto t0 = clock::now();
    const auto end = t0 + window(0.6);
    while (clock::now() < end) pump();
    const std::uint64_t c1 = bytes_back / payload_size;
    const auto t1 = clock::now();
    ::close(fd);
    const double rate = static_cast<double>(c1 - c0) / (static_cast<double>(elapsed_ns(t0, t1)) / 1e9);
    std::fprintf(stderr, "tcp: %zu in flight: %.0f messages/s\n", depth, rate);
    emit("rpc.tput.tcp." + std::to_string(depth), rate, 0);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "server") return run_server();
  if (mode == "latency") return run_latency(seconds_arg(argc, argv, 2, 2.0));
  if (mode == "throughput") {
    std::vector<std::size_t> depths;
    for (int i = 2; i < argc; ++i) depths.push_back(std::stoul(argv[i]));
    if (depths.empty()) depths = {1, 16, 64, 256};
    return run_throughput(depths);
  }
  std::fprintf(stderr, "usage: %s server|latency|throughput [N...]\n", argv[0]);
  return 2;
}
