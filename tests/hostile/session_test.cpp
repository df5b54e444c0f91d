// Sessions under attack, against a fwd server in its own process: after the handshake
// every frame carries a MAC under keys only the secret's holders can derive, bound to a
// sequence number per direction. A relay of the handshake that injects a frame, a frame
// replayed, frames reordered: each closes its connection, with the server's telemetry
// saying why (tampered_frame), and nothing of such a frame runs. Also: secrets under 32
// bytes are refused, secrets rotate, and peers of different protocol ranges agree on one.

#include "session_procedures.hpp"
#include "../support/child_process.hpp"

#include <fwd/rpc/client.hpp>
#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/session.hpp>
#include <fwd/rpc/wire.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace wire = fwd::wire;
using tcp = asio::ip::tcp;

namespace {

class session_server {
 public:
  explicit session_server(std::vector<std::string> flags = {})
      : child_([&] {
          std::vector<std::string> argv{FWD_SESSION_SERVER};
          argv.insert(argv.end(), flags.begin(), flags.end());
          return argv;
        }()) {
    port_ = static_cast<std::uint16_t>(std::stoi(child_.read_until("port ")));
  }

  tcp::endpoint endpoint() const { return {asio::ip::make_address("127.0.0.1"), port_}; }

  struct stats {
    long tampered = 0;
    long marks = 0;
    unsigned protocol = 0;
  };
  stats read_stats() {
    child_.write_line("stats");
    std::istringstream line(child_.read_until("stats "));
    stats s;
    std::string word;
    line >> word >> s.tampered >> word >> s.marks >> word >> s.protocol;
    return s;
  }

  /// Waits (bounded) until `done(stats)` holds.
  template <class Done>
  stats wait_stats(Done&& done, std::chrono::milliseconds bound = 10s) {
    const auto until = std::chrono::steady_clock::now() + bound;
    for (;;) {
      stats s = read_stats();
      if (done(s)) return s;
      REQUIRE(std::chrono::steady_clock::now() < until);
      std::this_thread::sleep_for(10ms);  // polling a counter in another process
    }
  }

 private:
  fwd_test::child_process child_;
  std::uint16_t port_ = 0;
};

// A fwd client on its own thread.
struct client_thread {
  explicit client_thread(const std::function<void(fwd::rpc::client_options&)>& tweak = {})
      : client(io.get_executor(), [&] {
          fwd::rpc::client_options o;
          o.secret = session_test::secret;
          o.default_timeout = 10s;
          auto hooks = std::make_shared<fwd::telemetry>();
          hooks->connection_opened = [this](const fwd::connection_event& e) { protocol = e.protocol; };
          o.telemetry = hooks;
          if (tweak) tweak(o);
          return o;
        }()) {}
  ~client_thread() {
    client.close();
    work.reset();
    io.stop();
    thread.join();
  }

  struct outcome {
    boost::system::error_code ec;
    std::string value;
    std::string detail;
  };
  outcome echo(const tcp::endpoint& peer, const std::string& text) {
    auto done = std::make_shared<std::promise<outcome>>();
    auto why = std::make_shared<fwd::diagnostics>();
    fwd::rpc::call_options options;
    options.diagnostics = why.get();
    client.async_call(peer, options, session_test::echo, text,
                      [done, why](boost::system::error_code ec, std::string value) {
                        done->set_value(outcome{ec, std::move(value), why->message()});
                      });
    auto future = done->get_future();
    REQUIRE(future.wait_for(30s) == std::future_status::ready);
    return future.get();
  }

  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::atomic<std::uint32_t> protocol{0};
  fwd::rpc::client client;
  std::thread thread{[this] { io.run(); }};
};

int raw_connect(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Whether the peer closed `fd` within `bound` (end of stream or reset); bytes that arrive
// before are read and dropped.
bool closed_within(int fd, std::chrono::milliseconds bound) {
  const auto until = std::chrono::steady_clock::now() + bound;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char chunk[4096];
    if (::recv(fd, chunk, sizeof chunk, 0) <= 0) return true;
  }
}

// Reads the next whole frame (tagged when `session` is given, and checked by it).
std::optional<wire::frame_header> read_frame(int fd, std::string& buffer, wire::session* session,
                                             std::chrono::milliseconds bound = 10s) {
  const auto until = std::chrono::steady_clock::now() + bound;
  for (;;) {
    wire::frame_view frame;
    std::size_t consumed = 0;
    const std::size_t tag = session != nullptr ? wire::tag_size : 0;
    if (wire::decode_frame(buffer, std::size_t{1} << 20, frame, consumed, tag)) return std::nullopt;
    if (consumed > 0) {
      if (session != nullptr && !session->open(frame.bytes, frame.tag)) return std::nullopt;
      const auto header = frame.header;
      buffer.erase(0, consumed);
      return header;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
    char chunk[4096];
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return std::nullopt;
    buffer.append(chunk, static_cast<std::size_t>(n));
  }
}

// A connection through fwd's handshake by hand; `session` seals and checks what follows.
int authenticated_connect(const tcp::endpoint& peer, wire::session& session) {
  const int fd = raw_connect(peer.port());
  if (fd < 0) return -1;
  wire::versions local;
  local.archive = fwd::detail::archive_version();
  wire::client_handshake handshake(session_test::secret, local);
  if (!send_all(fd, handshake.start())) return ::close(fd), -1;
  std::string buffer;
  for (;;) {
    wire::frame_view frame;
    std::size_t consumed = 0;
    if (wire::decode_frame(buffer, wire::max_handshake_frame_size, frame, consumed)) return ::close(fd), -1;
    if (consumed > 0) {
      auto step = handshake.on_frame(frame);
      buffer.erase(0, consumed);
      if (step.ec || !send_all(fd, step.send)) return ::close(fd), -1;
      if (step.done) {
        session = handshake.take_session();
        return fd;
      }
      continue;
    }
    pollfd p{fd, POLLIN, 0};
    char chunk[4096];
    if (::poll(&p, 1, 10000) <= 0) return ::close(fd), -1;
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return ::close(fd), -1;
    buffer.append(chunk, static_cast<std::size_t>(n));
  }
}

// A request for session.mark, unsealed.
std::string mark_request(std::uint64_t stream_id) {
  wire::frame_header h;
  h.type = wire::frame_type::request;
  h.stream_id = stream_id;
  h.id[0] = static_cast<std::uint8_t>(stream_id);
  h.id[15] = 0xa5;
  h.aux = session_test::mark.signature();
  return wire::encode_frame(h, session_test::mark.name(), "");
}

std::string sealed(wire::session& session, std::string frame) {
  session.seal_tail(frame, 0);
  return frame;
}

struct fd_guard {
  int fd = -1;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

// A host a node dials by mistake (a poisoned DNS answer, a stale member), that relays the
// node's handshake to the real server, then sends a frame of its own instead of the
// node's: a request for session.mark with a made-up tag.
class relay {
 public:
  explicit relay(std::uint16_t server_port) : server_port_(server_port) {
    listener_.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener_.fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(::listen(listener_.fd, 4) == 0);
    socklen_t size = sizeof address;
    ::getsockname(listener_.fd, reinterpret_cast<sockaddr*>(&address), &size);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~relay() { thread_.join(); }

  tcp::endpoint endpoint() const { return {asio::ip::make_address("127.0.0.1"), port_}; }

  /// Once the relay is done: whether it saw the handshake through and injected its frame,
  /// and whether the server then closed the connection (within 10 s).
  struct result {
    bool injected = false;
    bool server_closed = false;
  };
  result wait() {
    REQUIRE(done_.get_future().wait_for(30s) == std::future_status::ready);
    return result_;
  }

 private:
  void run() {
    pollfd p{listener_.fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) <= 0) return done_.set_value();
    fd_guard client{::accept(listener_.fd, nullptr, nullptr)};
    fd_guard server{raw_connect(server_port_)};
    std::string from_server;  // parsed until the welcome goes by
    bool welcome = false;
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < until) {
      pollfd both[2] = {{client.fd, POLLIN, 0}, {server.fd, POLLIN, 0}};
      if (::poll(both, 2, 100) < 0) break;
      char chunk[4096];
      if (both[0].revents != 0) {
        const ssize_t n = ::recv(client.fd, chunk, sizeof chunk, 0);
        if (n <= 0) break;
        // The handshake goes through; the node's own frames after it are held back.
        if (!welcome) send_all(server.fd, std::string_view(chunk, static_cast<std::size_t>(n)));
      }
      if (both[1].revents != 0) {
        const ssize_t n = ::recv(server.fd, chunk, sizeof chunk, 0);
        if (n <= 0) {
          result_.server_closed = result_.injected;
          break;
        }
        if (!welcome) {
          from_server.append(chunk, static_cast<std::size_t>(n));
          for (;;) {
            wire::frame_view frame;
            std::size_t consumed = 0;
            if (wire::decode_frame(from_server, wire::max_handshake_frame_size, frame, consumed) || consumed == 0) break;
            welcome = welcome || frame.header.type == wire::frame_type::welcome;
            from_server.erase(0, consumed);
          }
        }
        send_all(client.fd, std::string_view(chunk, static_cast<std::size_t>(n)));
        if (welcome && !result_.injected) {
          // The session is up between the node and the server; the relay has no key.
          result_.injected = send_all(server.fd, mark_request(1) + std::string(wire::tag_size, '\x5a'));
        }
      }
    }
    done_.set_value();
  }

  std::uint16_t server_port_;
  fd_guard listener_;
  std::uint16_t port_ = 0;
  result result_;
  std::promise<void> done_;
  std::thread thread_;
};

}  // namespace

TEST_CASE("a relay of the handshake has no session: the frame it injects closes the connection and never runs") {
  session_server server;
  client_thread good;
  REQUIRE(good.echo(server.endpoint(), "before").value == "before");

  relay host(server.endpoint().port());
  client_thread dialer;  // dials the relay, believing it a cluster member
  auto relayed = std::async(std::launch::async, [&] { return dialer.echo(host.endpoint(), "through the relay"); });
  const auto result = host.wait();
  CHECK(result.injected);
  CHECK(result.server_closed);
  const auto s = server.wait_stats([](const session_server::stats& st) { return st.tampered >= 1; });
  CHECK(s.tampered == 1);
  CHECK(s.marks == 0);  // the injected request did not run
  // The node that dialled the relay sees its connection lost, not an answer from the relay.
  CHECK(relayed.get().ec);
  CHECK(good.echo(server.endpoint(), "after").value == "after");
}

TEST_CASE("a replayed frame closes the connection, and ran only once") {
  session_server server;
  client_thread good;
  wire::session session;
  fd_guard raw{authenticated_connect(server.endpoint(), session)};
  REQUIRE(raw.fd >= 0);
  const std::string first = sealed(session, mark_request(1));
  REQUIRE(send_all(raw.fd, first));
  std::string buffer;
  const auto reply = read_frame(raw.fd, buffer, &session);
  REQUIRE(reply.has_value());
  CHECK(reply->type == wire::frame_type::reply);
  CHECK(reply->aux == 0);
  REQUIRE(send_all(raw.fd, first));  // the same bytes again, as a recording would
  CHECK(closed_within(raw.fd, 10s));
  const auto s = server.wait_stats([](const session_server::stats& st) { return st.tampered >= 1; });
  CHECK(s.tampered == 1);
  CHECK(s.marks == 1);
  CHECK(good.echo(server.endpoint(), "after").value == "after");
}

TEST_CASE("frames delivered out of order close the connection, and neither runs") {
  session_server server;
  client_thread good;
  wire::session session;
  fd_guard raw{authenticated_connect(server.endpoint(), session)};
  REQUIRE(raw.fd >= 0);
  const std::string first = sealed(session, mark_request(1));
  const std::string second = sealed(session, mark_request(2));
  REQUIRE(send_all(raw.fd, second + first));
  CHECK(closed_within(raw.fd, 10s));
  const auto s = server.wait_stats([](const session_server::stats& st) { return st.tampered >= 1; });
  CHECK(s.tampered == 1);
  CHECK(s.marks == 0);
  CHECK(good.echo(server.endpoint(), "after").value == "after");
}

TEST_CASE("a frame altered on the way closes the connection, and does not run") {
  session_server server;
  client_thread good;
  wire::session session;
  fd_guard raw{authenticated_connect(server.endpoint(), session)};
  REQUIRE(raw.fd >= 0);
  std::string frame = sealed(session, mark_request(1));
  frame[8] ^= 0x01;  // the stream id: still a well-formed request
  REQUIRE(send_all(raw.fd, frame));
  CHECK(closed_within(raw.fd, 10s));
  const auto s = server.wait_stats([](const session_server::stats& st) { return st.tampered >= 1; });
  CHECK(s.tampered == 1);
  CHECK(s.marks == 0);
  CHECK(good.echo(server.endpoint(), "after").value == "after");
}

TEST_CASE("a secret under 32 bytes is refused when the server or client is made, saying how to make one") {
  fwd_test::child_process refused({FWD_SESSION_SERVER, "--secret", "cluster-secret"});
  const std::string why = refused.read_until("error ");
  CHECK_THAT(why, Catch::Contains("server_options::secret is 14 bytes") &&
                      Catch::Contains("openssl rand -base64 32"));
  asio::io_context io;
  fwd::rpc::client_options o;
  o.secret = "short";
  CHECK_THROWS_WITH(fwd::rpc::client(io.get_executor(), o),
                    Catch::Contains("client_options::secret is 5 bytes") && Catch::Contains("openssl rand -base64 32"));
}

TEST_CASE("a server that speaks protocols 2 to 3 serves a client that speaks only 2, at 2, beside one at 3") {
  session_server server({"--max-protocol", "3"});
  client_thread old_client([](fwd::rpc::client_options& o) { o.max_protocol_version = 2; });
  client_thread new_client([](fwd::rpc::client_options& o) { o.max_protocol_version = 3; });
  for (int i = 0; i < 3; ++i) {
    CHECK(old_client.echo(server.endpoint(), "old").value == "old");
    CHECK(new_client.echo(server.endpoint(), "new").value == "new");
  }
  CHECK(old_client.protocol == 2);
  CHECK(new_client.protocol == 3);
  // A client whose range does not meet the server's is told both.
  client_thread newer([](fwd::rpc::client_options& o) {
    o.min_protocol_version = 4;
    o.max_protocol_version = 5;
  });
  const auto r = newer.echo(server.endpoint(), "x");
  CHECK(r.ec == fwd::errc::version_mismatch);
  CHECK_THAT(r.detail, Catch::Contains("protocol 4..5") && Catch::Contains("protocol 2..3"));
}

TEST_CASE("the cluster secret changes without downtime: old and new are both accepted while it rolls") {
  const std::string old_secret = session_test::secret;
  const std::string new_secret = "the-new-cluster-secret-of-32-bytes-or-more";
  // Step 2 of a rotation: this server still proves the old secret and accepts the new.
  session_server server({"--secret", old_secret, "--accepted", new_secret});
  client_thread moved([&](fwd::rpc::client_options& o) {
    o.secret = new_secret;
    o.accepted_secrets = {old_secret};
  });
  CHECK(moved.echo(server.endpoint(), "new").value == "new");
  client_thread unmoved;
  CHECK(unmoved.echo(server.endpoint(), "old").value == "old");
  // A node that dropped the old secret too early cannot check the server's proof.
  client_thread early([&](fwd::rpc::client_options& o) { o.secret = new_secret; });
  CHECK(early.echo(server.endpoint(), "x").ec == fwd::errc::unauthenticated);
}
