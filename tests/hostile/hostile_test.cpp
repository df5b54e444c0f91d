// Attacks on a live fwd server in its own process, while a well-behaved client calls it.
// Each test states the bound it holds the server to: resident memory (VmHWM, the peak,
// over the baseline before the attack) or CPU time (utime + stime over a window).

#include "hostile_procedures.hpp"
#include "../support/child_process.hpp"

#include <fwd/detail/procedure_codec.hpp>
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
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <optional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

const std::string secret = "hostile-test-secret-hostile-test-secret";

class hostile_server {
 public:
  explicit hostile_server(std::vector<std::string> flags = {})
      : child_([&] {
          std::vector<std::string> argv{FWD_HOSTILE_SERVER};
          argv.insert(argv.end(), flags.begin(), flags.end());
          return argv;
        }()) {
    port_ = static_cast<std::uint16_t>(std::stoi(child_.read_until("port ")));
  }

  tcp::endpoint endpoint() const { return {asio::ip::make_address("127.0.0.1"), port_}; }
  pid_t pid() const { return child_.pid(); }

  /// A field of /proc/<pid>/status, in KiB (VmRSS, VmHWM).
  long memory_kib(const std::string& field) const {
    std::ifstream status("/proc/" + std::to_string(pid()) + "/status");
    std::string key;
    while (status >> key) {
      if (key == field + ":") {
        long kib = 0;
        status >> kib;
        return kib;
      }
      status.ignore(4096, '\n');
    }
    FAIL("no " << field << " in /proc/" << pid() << "/status");
    return -1;
  }

  /// CPU time the server used so far (user + system), in clock ticks.
  long cpu_ticks() const {
    std::ifstream stat("/proc/" + std::to_string(pid()) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    // The fields after the command name (which may hold spaces) start after the last ')'.
    std::istringstream rest(text.substr(text.rfind(')') + 2));
    std::string field;
    long utime = 0;
    long stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stol(field);
      if (i == 15) stime = std::stol(field);
    }
    return utime + stime;
  }

  struct stats {
    long refused = 0;
    long accept_failures = 0;
    long open = 0;
  };
  stats read_stats() {
    child_.write_line("stats");
    std::istringstream line(child_.read_until("stats "));
    stats s;
    std::string word;
    line >> word >> s.refused >> word >> s.accept_failures >> word >> s.open;
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
  explicit client_thread(std::chrono::milliseconds timeout = 10s,
                         const std::function<void(fwd::rpc::client_options&)>& tweak = {})
      : client(io.get_executor(), [&] {
          fwd::rpc::client_options o;
          o.secret = secret;
          o.default_timeout = timeout;
          if (tweak) tweak(o);
          return o;
        }()) {}
  ~client_thread() {
    client.close();
    work.reset();
    io.stop();
    thread.join();
  }

  std::string echo(const tcp::endpoint& peer, const std::string& text) { return client.call(peer, hostile::echo, text); }

  /// Sends `arguments` as they are for `proc`; returns the call's outcome.
  template <class Proc>
  boost::system::error_code raw(const tcp::endpoint& peer, const Proc& proc, std::string arguments,
                                std::string* detail = nullptr) {
    std::promise<boost::system::error_code> done;
    auto future = done.get_future();
    fwd::rpc::call_options options;
    options.deadline = std::chrono::steady_clock::now() + 30s;
    fwd::diagnostics why;
    options.diagnostics = &why;
    client.async_call_raw(peer, options, proc.name(), proc.signature(), std::move(arguments),
                          [&done](boost::system::error_code ec, std::string) { done.set_value(ec); });
    REQUIRE(future.wait_for(60s) == std::future_status::ready);
    if (detail != nullptr) *detail = why.message();
    return future.get();
  }

  struct outcome {
    boost::system::error_code ec;
    std::string detail;
    std::chrono::steady_clock::time_point at;  // when it completed
  };

  /// Starts a call of `proc` with `args`; its outcome arrives in the future.
  template <class Proc, class... Args>
  std::future<outcome> start(const tcp::endpoint& peer, const Proc& proc, std::chrono::milliseconds timeout,
                             const Args&... args) {
    auto done = std::make_shared<std::promise<outcome>>();
    auto why = std::make_shared<fwd::diagnostics>();
    fwd::rpc::call_options options;
    options.deadline = std::chrono::steady_clock::now() + timeout;
    options.diagnostics = why.get();
    client.async_call_raw(peer, options, proc.name(), proc.signature(), fwd::detail::encode_values(args...),
                          [done, why](boost::system::error_code ec, std::string) {
                            done->set_value(outcome{ec, why->message(), std::chrono::steady_clock::now()});
                          });
    return done->get_future();
  }

  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  fwd::rpc::client client;
  std::thread thread{[this] { io.run(); }};
};

void put_u64(std::string& out, std::uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); }
void put_u32(std::string& out, std::uint32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); }

template <class T>
std::string preamble(std::size_t tail) {
  const std::string empty = fwd::detail::archive_encode(T{});
  return empty.substr(0, empty.size() - tail);
}

// The largest payload a default server takes in one frame, with room for the header.
constexpr std::size_t big_payload = (std::size_t{16} << 20) - (std::size_t{64} << 10);

// vector<string> whose count is as large as the bytes allow, empty strings, and a last
// string far too long: every element up to the last decodes.
std::string strings_claiming_everything(std::size_t size) {
  std::string payload = preamble<std::vector<std::string>>(12);
  put_u64(payload, (size - payload.size() - 12) / 8);
  put_u32(payload, 0);
  payload.resize(size - 8, '\0');
  put_u64(payload, std::uint64_t{1} << 40);
  return payload;
}

// vector<optional<string>> whose count is every byte left (one byte each when empty),
// then a thousand empty ones and a flag that is neither 0 nor 1.
std::string optionals_claiming_everything(std::size_t size) {
  std::string payload = preamble<std::vector<std::optional<std::string>>>(12);
  put_u64(payload, size - payload.size() - 12);
  put_u32(payload, 0);
  payload.resize(payload.size() + 1000, '\0');
  payload.push_back('\2');
  payload.resize(size, '\0');
  return payload;
}

// A tree 150 deep whose every level claims as many children as the bytes left allow,
// then empty trees to the end.
std::string tree_claiming_everything(std::size_t size) {
  std::string payload = preamble<hostile::tree>(12);
  for (int level = 0; level < 150; ++level) {
    put_u64(payload, (size - payload.size() - 12) / 12);
    put_u32(payload, 0);
  }
  payload.resize(size, '\0');
  return payload;
}

// A plain TCP connection to `peer` (no handshake); -1 when it cannot connect.
int raw_connect(const tcp::endpoint& peer) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(peer.port());
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Whether the server closed `fd` within `bound` (end of stream or reset).
bool closed_within(int fd, std::chrono::milliseconds bound) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(bound.count())) <= 0) return false;
  char byte = 0;
  return ::recv(fd, &byte, 1, MSG_DONTWAIT) <= 0;
}

// Sends all of `bytes`; false when the connection is gone.
bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads one whole frame, sent after the handshake (so with its tag), within `bound`
// (into `buffer`, which keeps what follows it).
std::optional<fwd::wire::frame_header> read_frame(int fd, std::string& buffer, std::chrono::milliseconds bound) {
  const auto until = std::chrono::steady_clock::now() + bound;
  for (;;) {
    fwd::wire::frame_view frame;
    std::size_t consumed = 0;
    if (fwd::wire::decode_frame(buffer, std::size_t{64} << 20, frame, consumed, fwd::wire::tag_size)) {
      return std::nullopt;
    }
    if (consumed > 0) {
      const auto header = frame.header;
      buffer.erase(0, consumed);
      return header;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
    char chunk[65536];
    const ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) return std::nullopt;
    buffer.append(chunk, static_cast<std::size_t>(n));
  }
}

// A plain TCP connection that went through fwd's handshake by hand: the server takes
// frames from it as from any client (sealed by `session`, when given). -1 on failure.
int authenticated_connect(const tcp::endpoint& peer, fwd::wire::session* session = nullptr) {
  const int fd = raw_connect(peer);
  if (fd < 0) return -1;
  fwd::wire::versions local;
  local.archive = fwd::detail::archive_version();
  fwd::wire::client_handshake handshake(secret, local);
  std::string buffer;
  if (!send_all(fd, handshake.start())) return ::close(fd), -1;
  for (;;) {
    fwd::wire::frame_view frame;
    std::size_t consumed = 0;
    if (!fwd::wire::decode_frame(buffer, fwd::wire::max_handshake_frame_size, frame, consumed) && consumed > 0) {
      auto step = handshake.on_frame(frame);
      buffer.erase(0, consumed);
      if (step.ec || !send_all(fd, step.send)) return ::close(fd), -1;
      if (step.done) {
        if (session != nullptr) *session = handshake.take_session();
        return fd;
      }
      continue;
    }
    pollfd p{fd, POLLIN, 0};
    char chunk[4096];
    if (::poll(&p, 1, 5000) <= 0) return ::close(fd), -1;
    const ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) return ::close(fd), -1;
    buffer.append(chunk, static_cast<std::size_t>(n));
  }
}

// A request frame for `proc` with the arguments' bytes `body`.
template <class Proc>
std::string request_frame(const Proc& proc, std::uint64_t stream_id, std::string_view body) {
  fwd::wire::frame_header h;
  h.type = fwd::wire::frame_type::request;
  h.stream_id = stream_id;
  h.id[0] = static_cast<std::uint8_t>(stream_id);
  h.id[1] = static_cast<std::uint8_t>(stream_id >> 8);
  h.id[15] = 0x5a;
  h.aux = proc.signature();
  return fwd::wire::encode_frame(h, proc.name(), body);
}

// The same, sealed by `session` as the next frame it sends.
template <class Proc>
std::string sealed_request_frame(fwd::wire::session& session, const Proc& proc, std::uint64_t stream_id,
                                 std::string_view body) {
  std::string frame = request_frame(proc, stream_id, body);
  session.seal_tail(frame, 0);
  return frame;
}

double cpu_share(const hostile_server& server, std::chrono::milliseconds window) {
  const long ticks_before = server.cpu_ticks();
  const auto window_start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(window);  // the measurement window
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
  return static_cast<double>(server.cpu_ticks() - ticks_before) / static_cast<double>(::sysconf(_SC_CLK_TCK)) / seconds;
}

struct fds {
  std::vector<int> list;
  ~fds() { close_all(); }
  void close_all() {
    for (int fd : list) ::close(fd);
    list.clear();
  }
};

}  // namespace

TEST_CASE("a 16 MiB frame of strings claiming every byte costs the server a bounded amount of memory") {
  hostile_server server;
  client_thread good;
  client_thread attacker;
  REQUIRE(good.echo(server.endpoint(), "before") == "before");
  const long baseline = server.memory_kib("VmHWM");

  const std::string payload = strings_claiming_everything(big_payload);
  for (int i = 0; i < 3; ++i) {
    std::string detail;
    CHECK(attacker.raw(server.endpoint(), hostile::count_strings, payload, &detail) == fwd::errc::protocol_error);
    INFO(detail);
    CHECK(good.echo(server.endpoint(), "during") == "during");
  }
  const long grew = server.memory_kib("VmHWM") - baseline;
  std::printf("16 MiB vector<string> frame: server VmHWM +%ld KiB\n", grew);
  // Bound: 10 times the frame (the frame itself, then up to 2 million strings' worth of
  // storage: what an honest frame of empty strings costs too).
  CHECK(grew <= 160 * 1024);
  CHECK(good.echo(server.endpoint(), "after") == "after");
}

TEST_CASE("a 16 MiB frame of optional strings claiming every byte costs the server little more than the frame") {
  hostile_server server;
  client_thread good;
  client_thread attacker;
  REQUIRE(good.echo(server.endpoint(), "before") == "before");
  const long baseline = server.memory_kib("VmHWM");

  const std::string payload = optionals_claiming_everything(big_payload);
  for (int i = 0; i < 3; ++i) {
    CHECK(attacker.raw(server.endpoint(), hostile::count_present, payload) == fwd::errc::protocol_error);
    CHECK(good.echo(server.endpoint(), "during") == "during");
  }
  const long grew = server.memory_kib("VmHWM") - baseline;
  std::printf("16 MiB vector<optional<string>> frame: server VmHWM +%ld KiB\n", grew);
  CHECK(grew <= 64 * 1024);
}

TEST_CASE("trees nested 150 deep, every level claiming every byte, cost the server a bounded amount of memory") {
  hostile_server server;
  client_thread good;
  client_thread attacker;
  REQUIRE(good.echo(server.endpoint(), "before") == "before");
  const long baseline = server.memory_kib("VmHWM");

  const std::string small = tree_claiming_everything(std::size_t{1} << 20);
  for (int i = 0; i < 3; ++i) {
    CHECK(attacker.raw(server.endpoint(), hostile::count_nodes, small) == fwd::errc::protocol_error);
    CHECK(good.echo(server.endpoint(), "during") == "during");
  }
  const long grew_small = server.memory_kib("VmHWM") - baseline;
  std::printf("1 MiB tree frame, 150 deep: server VmHWM +%ld KiB\n", grew_small);
  CHECK(grew_small <= 64 * 1024);

  const std::string big = tree_claiming_everything(big_payload);
  CHECK(attacker.raw(server.endpoint(), hostile::count_nodes, big) == fwd::errc::protocol_error);
  const long grew_big = server.memory_kib("VmHWM") - baseline;
  std::printf("16 MiB tree frame, 150 deep: server VmHWM +%ld KiB\n", grew_big);
  CHECK(grew_big <= 160 * 1024);
  CHECK(good.echo(server.endpoint(), "after") == "after");
}

TEST_CASE("with its file descriptors exhausted the server backs off instead of spinning, and serves again after") {
  // 64 descriptors, a handshake that may take a minute: 200 idle connections hold every
  // descriptor the server has, and the rest wait in the listen backlog.
  hostile_server server({"--nofile", "64", "--handshake-timeout-ms", "60000"});
  fds attacker;
  for (int i = 0; i < 200; ++i) {
    const int fd = raw_connect(server.endpoint());
    REQUIRE(fd >= 0);
    attacker.list.push_back(fd);
  }
  server.wait_stats([](const auto& s) { return s.accept_failures > 0; });

  const long ticks_before = server.cpu_ticks();
  const auto window_start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(2s);  // the measurement window
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
  const double cpu = static_cast<double>(server.cpu_ticks() - ticks_before) / static_cast<double>(::sysconf(_SC_CLK_TCK)) / seconds;
  const auto stats = server.read_stats();
  std::printf("fds exhausted: server CPU %.1f%% over %.1f s, %ld accept failures reported\n", cpu * 100, seconds,
              stats.accept_failures);
  CHECK(cpu < 0.10);
  CHECK(stats.accept_failures < 200);  // failures backed off, not retried at once

  attacker.close_all();
  client_thread good(20s);
  CHECK(good.echo(server.endpoint(), "back") == "back");
}

TEST_CASE("connections beyond the unauthenticated cap are closed at once, and authenticated ones keep being served") {
  hostile_server server({"--max-unauthenticated", "4", "--max-connections", "8", "--handshake-timeout-ms", "60000"});
  client_thread good;
  REQUIRE(good.echo(server.endpoint(), "first") == "first");

  fds attacker;
  for (int i = 0; i < 10; ++i) {
    const int fd = raw_connect(server.endpoint());
    REQUIRE(fd >= 0);
    attacker.list.push_back(fd);
  }
  server.wait_stats([](const auto& s) { return s.refused == 6; });
  int closed = 0;
  for (int fd : attacker.list) closed += closed_within(fd, 500ms) ? 1 : 0;
  CHECK(closed == 6);
  CHECK(server.read_stats().open == 5);  // the good client's and four in the handshake
  CHECK(good.echo(server.endpoint(), "still") == "still");

  // Once the idle ones go, a new client gets in.
  attacker.close_all();
  server.wait_stats([](const auto& s) { return s.open == 1; });
  client_thread late;
  CHECK(late.echo(server.endpoint(), "late") == "late");
}

TEST_CASE("connections beyond the total cap are closed at once, and reported") {
  hostile_server server({"--max-connections", "3"});
  std::vector<std::unique_ptr<client_thread>> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(std::make_unique<client_thread>());
    REQUIRE(clients.back()->echo(server.endpoint(), "in") == "in");
  }
  client_thread extra(3s);
  CHECK_THROWS_AS(extra.echo(server.endpoint(), "out"), fwd::error);
  const auto stats = server.wait_stats([](const auto& s) { return s.refused >= 1; });
  CHECK(stats.open == 3);
  for (auto& c : clients) CHECK(c->echo(server.endpoint(), "still") == "still");

  clients.pop_back();  // closes that client's connection
  server.wait_stats([](const auto& s) { return s.open == 2; });
  client_thread next;
  CHECK(next.echo(server.endpoint(), "now") == "now");
}

TEST_CASE("a server that stops answering is found by the ping: its calls fail promptly and the next ones get through") {
  hostile_server server;
  // Small bounds for the test; the defaults are a 5 s ping and a 15 s limit.
  client_thread good(60s, [](fwd::rpc::client_options& o) {
    o.ping_interval = 200ms;
    o.dead_peer_timeout = 1000ms;
  });
  REQUIRE(good.echo(server.endpoint(), "up") == "up");

  // The process stops; its kernel still acknowledges every byte, so only fwd's ping finds it.
  REQUIRE(::kill(server.pid(), SIGSTOP) == 0);
  struct resume {
    pid_t pid;
    ~resume() { ::kill(pid, SIGCONT); }
  } resume_on_exit{server.pid()};
  const auto stopped_at = std::chrono::steady_clock::now();
  std::vector<std::future<client_thread::outcome>> calls;
  for (int i = 0; i < 3; ++i) calls.push_back(good.start(server.endpoint(), hostile::echo, 60s, std::string("lost")));
  for (auto& call : calls) {
    REQUIRE(call.wait_for(10s) == std::future_status::ready);
    const auto result = call.get();
    const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(result.at - stopped_at);
    std::printf("stopped server: call failed after %lld ms: %s\n", static_cast<long long>(after.count()),
                result.detail.c_str());
    CHECK(result.ec == fwd::errc::connection_lost);
    CHECK(after >= 900ms);   // not before the configured bound
    CHECK(after <= 3000ms);  // the bound, with room for a loaded machine
    CHECK(result.detail.find("dead_peer_timeout") != std::string::npos);
  }

  REQUIRE(::kill(server.pid(), SIGCONT) == 0);
  CHECK(good.echo(server.endpoint(), "back") == "back");
}

TEST_CASE("frames trickled a byte at a time are closed by the frame deadline, within one memory budget for all") {
  constexpr std::size_t budget = std::size_t{64} << 20;
  hostile_server server({"--frame-read-timeout-ms", "2000", "--max-partial-frame-bytes", std::to_string(budget)});
  client_thread good;
  REQUIRE(good.echo(server.endpoint(), "before") == "before");
  const long baseline = server.memory_kib("VmHWM");

  // Forty authenticated connections each announce a 16 MiB request, send 4 MiB of it at
  // once, then a byte every 100 ms.
  constexpr int attackers = 40;
  const std::size_t announced = (std::size_t{16} << 20) - 4096;
  const std::string frame = request_frame(hostile::echo, 1, std::string(announced - fwd::wire::header_size - 12, 'x'));
  const std::size_t burst = std::size_t{4} << 20;
  fds attacker;
  std::vector<std::chrono::steady_clock::time_point> started(attackers);
  std::vector<std::optional<std::chrono::milliseconds>> closed_after(attackers);
  std::vector<std::size_t> sent(attackers, 0);
  for (int i = 0; i < attackers; ++i) {
    const int fd = authenticated_connect(server.endpoint());
    REQUIRE(fd >= 0);
    attacker.list.push_back(fd);
    started[i] = std::chrono::steady_clock::now();
    if (send_all(fd, std::string_view(frame).substr(0, burst))) {
      sent[i] = burst;
    } else {
      closed_after[i] = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started[i]);
    }
  }
  const auto until = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    int open = 0;
    for (int i = 0; i < attackers; ++i) {
      if (closed_after[i]) continue;
      const int fd = attacker.list[i];
      pollfd p{fd, POLLIN, 0};
      char byte = 0;
      const bool gone = (::poll(&p, 1, 0) > 0 && ::recv(fd, &byte, 1, MSG_DONTWAIT) <= 0) ||
                        ::send(fd, frame.data() + sent[i], 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0;
      if (gone) {
        closed_after[i] = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started[i]);
      } else {
        ++sent[i];
        ++open;
      }
    }
    CHECK(good.echo(server.endpoint(), "during") == "during");
    if (open == 0 || std::chrono::steady_clock::now() > until) break;
    std::this_thread::sleep_for(100ms);  // the attack's pace: one byte a connection per round
  }
  const long grew = server.memory_kib("VmHWM") - baseline;
  int refused_at_once = 0;
  long long longest = 0;
  for (int i = 0; i < attackers; ++i) {
    REQUIRE(closed_after[i].has_value());
    longest = std::max<long long>(longest, closed_after[i]->count());
    refused_at_once += *closed_after[i] < 1000ms ? 1 : 0;
  }
  std::printf("40 trickling connections: server VmHWM +%ld KiB, %d refused by the budget at once, the last closed "
              "after %lld ms\n",
              grew, refused_at_once, longest);
  CHECK(longest <= 4000);                           // the 2 s frame deadline, with room for a loaded machine
  CHECK(refused_at_once >= attackers - 4);          // 64 MiB holds four 16 MiB frames
  CHECK(grew <= static_cast<long>(budget / 1024) + 16 * 1024);  // the budget, and room for the rest
  CHECK(good.echo(server.endpoint(), "after") == "after");
}

TEST_CASE("calls that outlive the idle timeout cost no CPU while they run, and idle connections close after") {
  hostile_server server({"--idle-timeout-ms", "100"});
  constexpr int connections = 300;
  fds held;
  for (int i = 0; i < connections; ++i) {
    fwd::wire::session session;
    const int fd = authenticated_connect(server.endpoint(), &session);
    REQUIRE(fd >= 0);
    held.list.push_back(fd);
    REQUIRE(send_all(fd, sealed_request_frame(session, hostile::nap, 7,
                                              fwd::detail::encode_values(std::int64_t{4000}))));
  }
  std::this_thread::sleep_for(300ms);  // every call is now past the idle timeout
  // Nothing happens on these connections until the calls end: the server should sleep.
  const double cpu = cpu_share(server, 2000ms);
  std::printf("%d connections with calls past the idle timeout: server CPU %.1f%% over 2 s\n", connections,
              cpu * 100);
  CHECK(cpu < 0.03);

  // The calls finish; then each connection, idle, is closed by the idle timeout.
  for (int fd : held.list) {
    std::string buffer;
    const auto reply = read_frame(fd, buffer, 10s);
    REQUIRE(reply.has_value());
    CHECK(reply->type == fwd::wire::frame_type::reply);
    CHECK(reply->aux == 0);
  }
  int closed = 0;
  for (int fd : held.list) closed += closed_within(fd, 3s) ? 1 : 0;
  CHECK(closed == connections);
}

TEST_CASE("a reply over the frame limit is refused by the server with its size, and only that call fails") {
  hostile_server server;  // max_frame_size 16 MiB
  client_thread client(30s, [](fwd::rpc::client_options& o) { o.max_frame_size = std::size_t{64} << 20; });
  REQUIRE(client.echo(server.endpoint(), "up") == "up");
  auto slow = client.start(server.endpoint(), hostile::nap, 30s, std::int64_t{300});
  auto big = client.start(server.endpoint(), hostile::blob, 30s, std::int64_t{17} << 20);
  REQUIRE(big.wait_for(20s) == std::future_status::ready);
  const auto result = big.get();
  std::printf("oversized result, server side: %s\n", result.detail.c_str());
  CHECK(result.ec == fwd::errc::frame_too_large);
  CHECK(result.detail.find("the result is 17825800 bytes") != std::string::npos);
  REQUIRE(slow.wait_for(20s) == std::future_status::ready);
  CHECK(!slow.get().ec);
  CHECK(client.echo(server.endpoint(), "after") == "after");
}

TEST_CASE("a reply over the client's frame limit fails that call alone and the connection goes on") {
  hostile_server server({"--max-frame-size", std::to_string(std::size_t{64} << 20)});
  std::atomic<int> opened{0};
  std::atomic<int> closed{0};
  auto hooks = std::make_shared<fwd::telemetry>();
  hooks->connection_opened = [&](const fwd::connection_event&) { ++opened; };
  hooks->connection_closed = [&](const fwd::connection_event&) { ++closed; };
  client_thread client(30s, [&](fwd::rpc::client_options& o) { o.telemetry = hooks; });  // 16 MiB
  REQUIRE(client.echo(server.endpoint(), "up") == "up");
  auto slow = client.start(server.endpoint(), hostile::nap, 30s, std::int64_t{500});
  auto big = client.start(server.endpoint(), hostile::blob, 30s, std::int64_t{17} << 20);
  REQUIRE(big.wait_for(20s) == std::future_status::ready);
  const auto result = big.get();
  std::printf("oversized result, client side: %s\n", result.detail.c_str());
  CHECK(result.ec == fwd::errc::frame_too_large);
  CHECK(result.detail.find("over max_frame_size") != std::string::npos);
  REQUIRE(slow.wait_for(20s) == std::future_status::ready);
  CHECK(!slow.get().ec);
  CHECK(client.echo(server.endpoint(), "after") == "after");
  CHECK(opened == 1);
  CHECK(closed == 0);
}
