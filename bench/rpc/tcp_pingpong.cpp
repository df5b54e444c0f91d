// The floor for fwd's call latency: a raw TCP ping-pong of the same 64-byte payload over
// loopback, blocking sockets with TCP_NODELAY on both ends, one message in flight. No
// framing, no serialisation, no authentication: only the kernel's round trip.
//
//   bench_rpc_tcp server     listen on 127.0.0.1:0, echo every 64 bytes back
//   bench_rpc_tcp latency    start the server half, print rpc.p50_us.tcp / rpc.p99_us.tcp
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
    std::thread([fd] {
      char buf[payload_size];
      while (read_exact(fd, buf, sizeof buf) && write_all(fd, buf, sizeof buf)) {
      }
      ::close(fd);
    }).detach();
  }
}

int run_latency() {
  server_process server;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = loopback(server.port());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    die("tcp client: cannot connect");
  }
  set_nodelay(fd);
  const std::string payload = make_payload();
  char reply[payload_size];
  const auto s = sequential_latency([&] {
    if (!write_all(fd, payload.data(), payload.size()) || !read_exact(fd, reply, sizeof reply)) {
      die("tcp client: connection lost");
    }
  });
  ::close(fd);
  std::fprintf(stderr, "tcp: %zu sequential round trips\n", s.samples);
  emit("rpc.p50_us.tcp", s.p50_us);
  emit("rpc.p99_us.tcp", s.p99_us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "server") return run_server();
  if (mode == "latency") return run_latency();
  std::fprintf(stderr, "usage: %s server|latency\n", argv[0]);
  return 2;
}
