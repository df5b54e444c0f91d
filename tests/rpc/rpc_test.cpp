// The transport end to end: a client in this process, a server in a child process
// (fwd_rpc_test_server), real TCP on loopback.

#include "test_procedures.hpp"
#include "../support/io_thread.hpp"

#include <fwd/rpc/client.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/wire.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/write.hpp>

#include <catch2/catch.hpp>

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;
namespace wire = fwd::wire;

namespace {

const std::string secret = "rpc-test-cluster-secret-of-32-bytes-or-more";

// The test server, in a child process; killed when this goes out of scope.
class child_server {
 public:
  explicit child_server(std::vector<std::string> args = {}) {
    int out[2];
    int in[2];
    REQUIRE(::pipe(out) == 0);
    REQUIRE(::pipe(in) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    posix_spawn_file_actions_addclose(&actions, in[1]);
    std::vector<std::string> argv_strings{FWD_TEST_SERVER};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    REQUIRE(::posix_spawn(&pid_, FWD_TEST_SERVER, &actions, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    ::close(in[0]);
    stdout_ = out[0];
    stdin_ = in[1];
    const std::string line = read_line(10s);
    REQUIRE(line.rfind("port ", 0) == 0);
    port_ = static_cast<std::uint16_t>(std::stoi(line.substr(5)));
  }

  child_server(const child_server&) = delete;
  child_server& operator=(const child_server&) = delete;

  ~child_server() {
    kill_now();
    ::close(stdout_);
    ::close(stdin_);
  }

  tcp::endpoint endpoint() const { return {asio::ip::make_address("127.0.0.1"), port_}; }
  pid_t pid() const { return pid_; }

  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  /// Sends a command line on the server's stdin and returns its answer line.
  std::string command(const std::string& line) {
    const std::string with_newline = line + "\n";
    REQUIRE(::write(stdin_, with_newline.data(), with_newline.size()) == static_cast<ssize_t>(with_newline.size()));
    return read_line(10s);
  }

  /// Waits (bounded) until the server holds `n` test.hold calls.
  void wait_held(std::size_t n) {
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (command("held") != "held " + std::to_string(n)) {
      REQUIRE(std::chrono::steady_clock::now() < until);
      std::this_thread::yield();
    }
  }

  /// The server's resident memory, KiB (VmRSS) or its peak (VmHWM).
  long memory_kib(const std::string& field = "VmRSS") const {
    std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
    std::string key;
    while (status >> key) {
      if (key == field + ":") {
        long kib = 0;
        status >> kib;
        return kib;
      }
      status.ignore(4096, '\n');
    }
    return -1;
  }

 private:
  std::string read_line(std::chrono::milliseconds bound) {
    const auto until = std::chrono::steady_clock::now() + bound;
    for (;;) {
      if (auto newline = pending_.find('\n'); newline != std::string::npos) {
        std::string line = pending_.substr(0, newline);
        pending_.erase(0, newline + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      REQUIRE(left.count() > 0);
      pollfd p{stdout_, POLLIN, 0};
      REQUIRE(::poll(&p, 1, static_cast<int>(left.count())) >= 0);
      char chunk[256];
      const ssize_t n = ::read(stdout_, chunk, sizeof chunk);
      REQUIRE(n > 0);
      pending_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  pid_t pid_ = -1;
  int stdout_ = -1;
  int stdin_ = -1;
  std::uint16_t port_ = 0;
  std::string pending_;
};

using fwd_test::io_thread;

fwd::rpc::client_options client_options(std::string s = secret) {
  fwd::rpc::client_options options;
  options.secret = std::move(s);
  return options;
}

// Waits for a future with a bound, so that a hung call fails the test instead of hanging it.
template <class T>
T get_within(std::future<T>& f, std::chrono::seconds bound = 20s) {
  REQUIRE(f.wait_for(bound) == std::future_status::ready);
  return f.get();
}

// The result of one call, with its error and details.
template <class R>
struct outcome {
  boost::system::error_code ec;
  std::conditional_t<std::is_void_v<R>, int, R> value{};
  std::string detail;
};

template <class R, class... Params, class... Args>
outcome<R> call_and_wait(fwd::rpc::client& client, const tcp::endpoint& peer, fwd::rpc::call_options options,
                         const fwd::procedure<R(Params...)>& proc, Args&&... args) {
  // Filled before the handler runs; the handler reads it (a stale text must not survive).
  auto diag = std::make_shared<fwd::diagnostics>();
  diag->assign("stale");
  options.diagnostics = diag.get();
  std::promise<outcome<R>> done;
  auto f = done.get_future();
  if constexpr (std::is_void_v<R>) {
    client.async_call(peer, std::move(options), proc, std::forward<Args>(args)...,
                      [&done, diag](boost::system::error_code ec) {
                        done.set_value(outcome<R>{ec, 0, diag->message()});
                      });
  } else {
    client.async_call(peer, std::move(options), proc, std::forward<Args>(args)...,
                      [&done, diag](boost::system::error_code ec, R value) {
                        done.set_value(outcome<R>{ec, std::move(value), diag->message()});
                      });
  }
  outcome<R> result = get_within(f);
  if (!result.ec) CHECK(result.detail.empty());  // cleared when the call started
  return result;
}

template <class R, class... Params, class... Args>
outcome<R> call_and_wait(fwd::rpc::client& client, const tcp::endpoint& peer, const fwd::procedure<R(Params...)>& proc,
                         Args&&... args) {
  return call_and_wait(client, peer, fwd::rpc::call_options{}, proc, std::forward<Args>(args)...);
}

// A blocking socket that speaks raw bytes to a server, to play a broken or hostile peer.
class raw_peer {
 public:
  explicit raw_peer(const tcp::endpoint& server) { socket_.connect(server); }

  void send(std::string_view bytes) { asio::write(socket_, asio::buffer(bytes.data(), bytes.size())); }

  /// Reads until a whole frame arrives; nullopt if the server closed first.
  std::optional<std::pair<wire::frame_header, std::string>> read_frame(std::chrono::milliseconds bound = 10s) {
    const auto until = std::chrono::steady_clock::now() + bound;
    for (;;) {
      wire::frame_view view;
      std::size_t used = 0;
      REQUIRE_FALSE(wire::decode_frame(pending_, wire::default_max_frame_size, view, used,
                                       session_ ? wire::tag_size : 0));
      if (used > 0) {
        if (session_) REQUIRE(session_.open(view.bytes, view.tag));
        std::pair<wire::frame_header, std::string> out{view.header, std::string(view.meta) + std::string(view.body)};
        pending_.erase(0, used);
        return out;
      }
      if (!wait_readable(until)) return std::nullopt;
      char chunk[4096];
      boost::system::error_code ec;
      const std::size_t n = socket_.read_some(asio::buffer(chunk), ec);
      if (ec) return std::nullopt;
      pending_.append(chunk, n);
    }
  }

  /// True when the server closes the connection within `bound` (reads EOF or reset).
  bool closed_by_server_within(std::chrono::milliseconds bound) {
    const auto until = std::chrono::steady_clock::now() + bound;
    for (;;) {
      if (!wait_readable(until)) return false;
      char chunk[4096];
      boost::system::error_code ec;
      socket_.read_some(asio::buffer(chunk), ec);
      if (ec) return true;
    }
  }

  /// Runs the client's side of the handshake with `key`; returns the failure if any.
  boost::system::error_code authenticate(std::string_view key, wire::versions versions = local_versions()) {
    wire::client_handshake handshake(key, versions);
    send(handshake.start());
    for (;;) {
      auto frame = read_frame();
      if (!frame) return make_error_code(fwd::errc::connection_lost);
      wire::frame_view view{frame->first, {}, frame->second, {}, {}};
      if (frame->first.type == wire::frame_type::goodbye) {
        view.meta = frame->second;
        view.body = {};
      }
      auto step = handshake.on_frame(view);
      if (step.ec) return step.ec;
      send(step.send);
      if (step.done) {
        session_ = handshake.take_session();
        return {};
      }
    }
  }

  /// Sends one frame, with its session MAC once authenticated.
  void send_frame(const wire::frame_header& h, std::string_view meta, std::string_view body) {
    std::string frame = wire::encode_frame(h, meta, body);
    if (session_) session_.seal_tail(frame, 0);
    send(frame);
  }

  static wire::versions local_versions() {
    wire::versions v;
    v.archive = fwd::detail::archive_version();
    return v;
  }

 private:
  bool wait_readable(std::chrono::steady_clock::time_point until) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{socket_.native_handle(), POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(left.count())) > 0;
  }

  asio::io_context io_;
  tcp::socket socket_{io_};
  std::string pending_;
  wire::session session_;
};

// A front for a server on loopback: it resets (RST) the first `resets` connections the
// moment it accepts them, then forwards bytes both ways to `upstream`.
class resetting_front {
 public:
  resetting_front(tcp::endpoint upstream, int resets) : upstream_(upstream), resets_(resets) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~resetting_front() {
    io_.stop();
    thread_.join();
  }
  tcp::endpoint endpoint() const { return acceptor_.local_endpoint(); }
  int reset_count() const { return reset_count_.load(); }

 private:
  struct pair {
    tcp::socket client, server;
    std::array<char, 16384> up{}, down{};
    explicit pair(asio::io_context& io) : client(io), server(io) {}
    void close() {
      boost::system::error_code ignored;
      client.close(ignored);
      server.close(ignored);
    }
  };

  void accept() {
    auto p = std::make_shared<pair>(io_);
    acceptor_.async_accept(p->client, [this, p](boost::system::error_code ec) {
      if (ec) return;
      if (reset_count_ < resets_) {
        ++reset_count_;
        boost::system::error_code ignored;
        p->client.set_option(asio::socket_base::linger(true, 0), ignored);
        p->client.close(ignored);  // linger 0: the peer gets a RST
      } else {
        p->server.async_connect(upstream_, [this, p](boost::system::error_code e) {
          if (e) return p->close();
          pump(p, p->client, p->server, p->up);
          pump(p, p->server, p->client, p->down);
        });
      }
      accept();
    });
  }
  void pump(std::shared_ptr<pair> p, tcp::socket& from, tcp::socket& to,
            std::array<char, 16384>& buf) {
    from.async_read_some(asio::buffer(buf), [this, p, &from, &to, &buf](
                                                boost::system::error_code ec, std::size_t n) {
      if (ec) return p->close();
      asio::async_write(to, asio::buffer(buf.data(), n),
                        [this, p, &from, &to, &buf](boost::system::error_code e, std::size_t) {
                          if (e) return p->close();
                          pump(p, from, to, buf);
                        });
    });
  }

  asio::io_context io_;
  tcp::acceptor acceptor_{io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
  tcp::endpoint upstream_;
  const int resets_;
  std::atomic<int> reset_count_{0};
  std::thread thread_;
};

tcp::endpoint closed_port() {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return acceptor.local_endpoint();  // closed when `acceptor` goes away: nothing listens
}

}  // namespace

TEST_CASE("a typed call crosses processes and returns the procedure's result") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  auto sum = call_and_wait(client, server.endpoint(), test_procs::add, 40, 2);
  REQUIRE_FALSE(sum.ec);
  CHECK(sum.value == 42);
  auto echoed = call_and_wait(client, server.endpoint(), test_procs::echo, std::string(100000, 'z'));
  REQUIRE_FALSE(echoed.ec);
  CHECK(echoed.value == std::string(100000, 'z'));
  CHECK(client.call(server.endpoint(), test_procs::add, 1, 1) == 2);
}

TEST_CASE("fwd.hello says who the node is: name, LiteFS hostname, role, TXID, protocol version") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  const fwd::rpc::hello_info info = client.call(server.endpoint(), fwd::rpc::hello);
  CHECK(info.node_name == "test-node");
  CHECK(info.litefs_hostname == "litefs-host-1");
  CHECK(info.role == "primary");
  CHECK(info.txid == 42);
  CHECK(info.protocol_version == wire::protocol_version);
}

TEST_CASE("async_call works with every kind of completion token") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  const auto peer = server.endpoint();

  SECTION("callback, run through the handler's executor") {
    std::promise<std::pair<boost::system::error_code, bool>> done;
    auto f = done.get_future();
    client.async_call(peer, test_procs::add, 2, 3, [&](boost::system::error_code ec, std::int64_t r) {
      done.set_value({ec, r == 5 && io.io.get_executor().running_in_this_thread()});
    });
    auto [ec, ok] = get_within(f);
    CHECK_FALSE(ec);
    CHECK(ok);
  }
  SECTION("use_future") {
    std::future<std::int64_t> f = client.async_call(peer, test_procs::add, 2, 3, asio::use_future);
    CHECK(get_within(f) == 5);
    std::future<void> v = client.async_call(peer, test_procs::side_effect, asio::use_future);
    REQUIRE(v.wait_for(20s) == std::future_status::ready);
    CHECK_NOTHROW(v.get());
    // An error arrives as an exception from the future.
    std::future<std::int64_t> failing = client.async_call(peer, test_procs::fail, "boom", asio::use_future);
    REQUIRE(failing.wait_for(20s) == std::future_status::ready);
    CHECK_THROWS_AS(failing.get(), boost::system::system_error);
  }
  SECTION("use_awaitable") {
    auto f = asio::co_spawn(
        io.io,
        [&]() -> asio::awaitable<std::int64_t> {
          std::int64_t a = co_await client.async_call(peer, test_procs::add, 2, 3, asio::use_awaitable);
          std::int64_t b = co_await client.async_call(peer, test_procs::add, a, 10, asio::use_awaitable);
          co_return b;
        },
        asio::use_future);
    CHECK(get_within(f) == 15);
  }
  SECTION("deferred: nothing is sent until the operation is launched") {
    auto op = client.async_call(peer, test_procs::side_effect, asio::deferred);
    CHECK(client.call(peer, test_procs::runs) == 0);
    std::promise<boost::system::error_code> done;
    auto f = done.get_future();
    std::move(op)([&](boost::system::error_code ec) { done.set_value(ec); });
    CHECK_FALSE(get_within(f));
    CHECK(client.call(peer, test_procs::runs) == 1);
  }
}

TEST_CASE("remote errors arrive as their fwd::errc, with details") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  const auto peer = server.endpoint();

  SECTION("a handler that throws: remote_failure with the exception's type and message") {
    auto r = call_and_wait(client, peer, test_procs::fail, std::string("disk on fire"));
    CHECK(r.ec == fwd::errc::remote_failure);
    CHECK_THAT(r.detail, Catch::Contains("runtime_error") && Catch::Contains("disk on fire"));
    try {
      client.call(peer, test_procs::fail, std::string("again"));
      FAIL("call() did not throw");
    } catch (const fwd::error& e) {
      CHECK(e.code() == fwd::errc::remote_failure);
      CHECK_THAT(e.what(), Catch::Contains("runtime_error") && Catch::Contains("again"));
      CHECK_THAT(e.get_diagnostics().message(), Catch::StartsWith("call to test.fail: ") &&
                                                    Catch::Contains("runtime_error") && Catch::Contains("again"));
    }
    // A caller's diagnostics given to the blocking form receive the detail alone.
    fwd::diagnostics mine;
    fwd::rpc::call_options options;
    options.diagnostics = &mine;
    CHECK_THROWS_AS(client.call(peer, options, test_procs::fail, std::string("third")), fwd::error);
    CHECK_THAT(mine.message(), Catch::Contains("runtime_error") && Catch::Contains("third") &&
                                   !Catch::Contains("call to"));
    // The server is unharmed.
    CHECK(client.call(peer, test_procs::add, 1, 2) == 3);
  }
  SECTION("unknown_procedure") {
    static constexpr fwd::procedure<std::int64_t(std::int64_t)> missing{"test.missing"};
    auto r = call_and_wait(client, peer, missing, 1);
    CHECK(r.ec == fwd::errc::unknown_procedure);
    CHECK(fwd::classify(r.ec) == fwd::error_class::permanent);
  }
  SECTION("signature_mismatch: same name, other types") {
    static constexpr fwd::procedure<std::int64_t(std::int64_t)> wrong_echo{"test.echo"};
    auto r = call_and_wait(client, peer, wrong_echo, 7);
    CHECK(r.ec == fwd::errc::signature_mismatch);
  }
}

TEST_CASE("a call whose deadline passes fails with timeout, expired requests do not run") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  const auto peer = server.endpoint();

  fwd::rpc::call_options options;
  options.deadline = std::chrono::steady_clock::now() + 200ms;
  const auto started = std::chrono::steady_clock::now();
  auto r = call_and_wait(client, peer, options, test_procs::hold, std::string("x"));
  CHECK(r.ec == fwd::errc::timeout);
  CHECK(std::chrono::steady_clock::now() - started >= 190ms);
  CHECK(fwd::classify(r.ec) == fwd::error_class::maybe_executed);
  CHECK(server.command("release") == "released 1");  // its late reply is dropped

  // A request that arrives with no time left is answered timeout without running.
  raw_peer raw(peer);
  REQUIRE_FALSE(raw.authenticate(secret));
  wire::frame_header h;
  h.type = wire::frame_type::request;
  h.flags = wire::frame_flags::has_deadline;
  h.stream_id = 9;
  h.deadline_ms = 0;
  h.aux = test_procs::side_effect.signature();
  raw.send_frame(h, test_procs::side_effect.name(), "");
  auto reply = raw.read_frame();
  REQUIRE(reply);
  CHECK(reply->first.type == wire::frame_type::reply);
  CHECK(reply->first.stream_id == 9);
  CHECK(fwd::rpc::detail::decode_status(reply->first.aux) == fwd::errc::timeout);
  CHECK(client.call(peer, test_procs::runs) == 0);
  // With time left, the same request runs.
  h.deadline_ms = 5000;
  raw.send_frame(h, test_procs::side_effect.name(), "");
  reply = raw.read_frame();
  REQUIRE(reply);
  CHECK_FALSE(fwd::rpc::detail::decode_status(reply->first.aux));
  CHECK(client.call(peer, test_procs::runs) == 1);
}

TEST_CASE("beyond the in-flight bounds a call is answered overloaded and does not run") {
  // Both clients come from 127.0.0.1: the address may take the whole server here.
  child_server server({"--max-in-flight-per-connection", "3", "--max-in-flight", "4", "--max-in-flight-per-address", "4"});
  io_thread io;
  fwd::rpc::client first(io.io.get_executor(), client_options());
  fwd::rpc::client second(io.io.get_executor(), client_options());
  const auto peer = server.endpoint();

  std::vector<std::future<std::string>> holds;
  for (int i = 0; i < 3; ++i) holds.push_back(first.async_call(peer, test_procs::hold, "h", asio::use_future));
  // Same connection, after the three holds: over the per-connection bound.
  auto over = call_and_wait(first, peer, test_procs::side_effect);
  CHECK(over.ec == fwd::errc::overloaded);
  CHECK(fwd::classify(over.ec) == fwd::error_class::not_sent);
  server.wait_held(3);
  // Another connection: one more fits the total bound (4); the next does not.
  holds.push_back(second.async_call(peer, test_procs::hold, "h", asio::use_future));
  server.wait_held(4);
  auto total = call_and_wait(second, peer, test_procs::side_effect);
  CHECK(total.ec == fwd::errc::overloaded);

  CHECK(server.command("release") == "released 4");
  for (auto& h : holds) CHECK(get_within(h) == "released");
  CHECK(first.call(peer, test_procs::runs) == 0);  // the refused calls never ran
  CHECK(second.call(peer, test_procs::add, 2, 2) == 4);
}

TEST_CASE("a peer nobody listens on is unreachable, and nothing was sent") {
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  auto r = call_and_wait(client, closed_port(), test_procs::add, 1, 2);
  CHECK(r.ec == fwd::errc::unreachable);
  CHECK(fwd::classify(r.ec) == fwd::error_class::not_sent);
  CHECK_THAT(r.detail, Catch::Contains("could not connect"));
}

TEST_CASE("a connection that breaks after the request was sent is connection_lost") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  auto held = client.async_call(server.endpoint(), test_procs::hold, "h", asio::use_future);
  server.wait_held(1);
  server.kill_now();
  REQUIRE(held.wait_for(20s) == std::future_status::ready);
  try {
    held.get();
    FAIL("the held call succeeded");
  } catch (const boost::system::system_error& e) {
    CHECK(e.code() == fwd::errc::connection_lost);
    CHECK(fwd::classify(e.code()) == fwd::error_class::maybe_executed);
  }
}

TEST_CASE("the client reconnects after the server comes back") {
  io_thread io;
  fwd::rpc::client_options options = client_options();
  options.reconnect_backoff = 10ms;
  fwd::rpc::client client(io.io.get_executor(), options);
  auto server = std::make_unique<child_server>();
  const auto peer = server->endpoint();
  CHECK(client.call(peer, test_procs::add, 1, 1) == 2);
  server.reset();  // killed: the connection breaks
  // A call racing the client's discovery of the break may be written to the dead socket
  // (connection_lost, honestly "maybe executed"); once the break is known, nothing listens.
  const auto first = call_and_wait(client, peer, test_procs::add, 1, 1).ec;
  CHECK((first == fwd::errc::unreachable || first == fwd::errc::connection_lost));
  CHECK(call_and_wait(client, peer, test_procs::add, 1, 1).ec == fwd::errc::unreachable);
  // A new server on another port; its calls succeed.
  child_server again;
  CHECK(client.call(again.endpoint(), test_procs::add, 2, 2) == 4);
}

TEST_CASE("a wrong secret is unauthenticated, and the server keeps serving others") {
  child_server server;
  io_thread io;
  fwd::rpc::client impostor(io.io.get_executor(), client_options("not-the-cluster-secret-but-32-bytes-long"));
  fwd::rpc::client member(io.io.get_executor(), client_options());
  auto r = call_and_wait(impostor, server.endpoint(), test_procs::side_effect);
  CHECK(r.ec == fwd::errc::unauthenticated);
  CHECK_THAT(r.detail, Catch::Contains("secret"));
  // The server checks the client's proof too: a peer that proves nothing gets a goodbye.
  raw_peer raw(server.endpoint());
  CHECK(raw.authenticate("guessing") == fwd::errc::unauthenticated);
  CHECK(member.call(server.endpoint(), test_procs::runs) == 0);  // nothing ran
}

TEST_CASE("a protocol or archive version mismatch is version_mismatch naming both versions") {
  child_server server;
  io_thread io;
  SECTION("another Boost archive version") {
    auto options = client_options();
    options.archive_version = 7;  // before Boost's binary format settled
    fwd::rpc::client client(io.io.get_executor(), options);
    auto r = call_and_wait(client, server.endpoint(), test_procs::add, 1, 2);
    CHECK(r.ec == fwd::errc::version_mismatch);
    CHECK_THAT(r.detail, Catch::Contains("Boost archive 7") &&
                             Catch::Contains("Boost archive " + std::to_string(fwd::detail::archive_version())));
  }
  SECTION("another protocol version") {
    raw_peer raw(server.endpoint());
    auto versions = raw_peer::local_versions();
    versions.protocol_min = versions.protocol_max = 99;
    CHECK(raw.authenticate(secret, versions) == fwd::errc::version_mismatch);
    CHECK(raw.closed_by_server_within(10s));
  }
  fwd::rpc::client good(io.io.get_executor(), client_options());
  CHECK(good.call(server.endpoint(), test_procs::add, 1, 2) == 3);
}

TEST_CASE("hostile bytes close that connection only, the server keeps serving") {
  child_server server({"--max-frame-size", "65536", "--handshake-timeout-ms", "300"});
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  const auto peer = server.endpoint();
  CHECK(client.call(peer, test_procs::add, 1, 2) == 3);  // a live connection, kept throughout

  SECTION("garbage bytes") {
    raw_peer raw(peer);
    raw.send("GET / HTTP/1.1\r\nHost: example\r\n\r\n" + std::string(100, '\x7f'));
    CHECK(raw.closed_by_server_within(10s));
  }
  SECTION("a truncated frame, then the peer closes its side") {
    raw_peer raw(peer);
    REQUIRE_FALSE(raw.authenticate(secret));
    wire::frame_header h;
    h.type = wire::frame_type::request;
    const std::string frame = wire::encode_frame(h, "test.echo", std::string(1000, 'a'));
    raw.send(std::string_view(frame).substr(0, frame.size() / 2));
    CHECK(call_and_wait(client, peer, test_procs::add, 2, 2).value == 4);
  }
  SECTION("an oversized frame is refused from its header, before its body arrives") {
    raw_peer raw(peer);
    REQUIRE_FALSE(raw.authenticate(secret));
    wire::frame_header h;
    h.type = wire::frame_type::request;
    h.body_size = 1u << 30;  // announces 1 GiB; sends only the header
    std::string header(wire::header_size, '\0');
    wire::encode_header(h, header.data());
    raw.send(header);
    CHECK(raw.closed_by_server_within(10s));
    CHECK(server.memory_kib("VmHWM") < 200 * 1024);
  }
  SECTION("an oversized request is refused by the client, not sent") {
    auto r = call_and_wait(client, peer, test_procs::echo, std::string(100000, 'x'));
    // The client's own limit is the default (16 MiB): the server's 64 KiB refuses it and
    // drops the connection, which the client sees as lost.
    CHECK(r.ec == fwd::errc::connection_lost);
    auto options = client_options();
    options.max_frame_size = 65536;
    fwd::rpc::client careful(io.io.get_executor(), options);
    auto refused = call_and_wait(careful, peer, test_procs::echo, std::string(100000, 'x'));
    CHECK(refused.ec == fwd::errc::frame_too_large);
    CHECK(careful.call(peer, test_procs::runs) == 0);
  }
  SECTION("a slow handshake: connect and say nothing") {
    raw_peer raw(peer);
    const auto started = std::chrono::steady_clock::now();
    CHECK(raw.closed_by_server_within(10s));
    CHECK(std::chrono::steady_clock::now() - started >= 250ms);
  }
  SECTION("a request before the handshake") {
    raw_peer raw(peer);
    wire::frame_header h;
    h.type = wire::frame_type::request;
    raw.send(wire::encode_frame(h, "test.side_effect", ""));
    CHECK(raw.closed_by_server_within(10s));
  }
  CHECK(call_and_wait(client, peer, test_procs::add, 20, 22).value == 42);
  CHECK(client.call(peer, test_procs::runs) == 0);
}

TEST_CASE("a cancelled call completes with cancelled, the connection stays usable") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  const auto peer = server.endpoint();
  asio::cancellation_signal signal;
  std::promise<boost::system::error_code> done;
  auto f = done.get_future();
  client.async_call(peer, test_procs::hold, "h",
                    asio::bind_cancellation_slot(signal.slot(), [&](boost::system::error_code ec, std::string) {
                      done.set_value(ec);
                    }));
  server.wait_held(1);
  asio::post(io.io, [&] { signal.emit(asio::cancellation_type::terminal); });
  const auto ec = get_within(f);
  CHECK(ec == fwd::errc::cancelled);
  CHECK(server.command("release") == "released 1");  // the late reply is dropped
  CHECK(client.call(peer, test_procs::add, 3, 4) == 7);
}

TEST_CASE("10,000 concurrent calls on one connection complete, with bounded server memory") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  const auto peer = server.endpoint();
  CHECK(client.call(peer, test_procs::add, 0, 0) == 0);
  const long before = server.memory_kib();

  constexpr int calls = 10000;
  std::atomic<int> ok{0};
  std::atomic<int> finished{0};
  std::mutex mutex;
  std::condition_variable all_done;
  const auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) {
    client.async_call(peer, test_procs::add, i, 1, [&, i](boost::system::error_code ec, std::int64_t r) {
      if (!ec && r == i + 1) ok.fetch_add(1);
      if (finished.fetch_add(1) + 1 == calls) {
        std::lock_guard lock(mutex);
        all_done.notify_all();
      }
    });
  }
  {
    std::unique_lock lock(mutex);
    REQUIRE(all_done.wait_for(lock, 60s, [&] { return finished.load() == calls; }));
  }
  const auto elapsed = std::chrono::steady_clock::now() - started;
  CHECK(ok.load() == calls);
  const long after = server.memory_kib("VmHWM");
  INFO("server RSS before " << before << " KiB, peak " << after << " KiB");
  WARN("10,000 concurrent calls: " << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()
                                   << " ms; server peak RSS grew " << (after - before) << " KiB");
#if defined(__SANITIZE_ADDRESS__)
  constexpr long bound_kib = 256 * 1024;  // ASan's quarantine keeps freed memory
#else
  constexpr long bound_kib = 64 * 1024;
#endif
  CHECK(after - before < bound_kib);
}

TEST_CASE("telemetry hooks see calls and connections") {
  child_server server;
  io_thread io;
  struct seen {
    std::mutex mutex;
    std::vector<std::string> events;
    std::chrono::nanoseconds duration{};
    std::uint32_t attempt = 0;
  };
  auto record = std::make_shared<seen>();
  auto hooks = std::make_shared<fwd::telemetry>();
  hooks->call_started = [record](const fwd::call_started_event& e) {
    std::lock_guard lock(record->mutex);
    record->events.push_back("started " + std::string(e.procedure));
  };
  hooks->call_finished = [record](const fwd::call_finished_event& e) {
    std::lock_guard lock(record->mutex);
    record->events.push_back("finished " + std::string(e.procedure) + " " + std::string(e.peer) + " " +
                             (e.outcome ? e.outcome.message().substr(0, 20) : "ok"));
    record->duration = e.duration;
    record->attempt = e.attempt;
  };
  hooks->connection_opened = [record](const fwd::connection_event& e) {
    std::lock_guard lock(record->mutex);
    record->events.push_back("opened " + std::string(e.peer));
  };
  auto options = client_options();
  options.telemetry = hooks;
  fwd::rpc::client client(io.io.get_executor(), options);
  fwd::rpc::call_options call;
  call.attempt = 3;
  CHECK(call_and_wait(client, server.endpoint(), call, test_procs::add, 1, 2).value == 3);
  const std::string peer = "127.0.0.1:" + std::to_string(server.endpoint().port());
  std::lock_guard lock(record->mutex);
  REQUIRE(record->events.size() == 3);
  CHECK(record->events[0] == "started test.add");
  CHECK(record->events[1] == "opened " + peer);
  CHECK(record->events[2] == "finished test.add " + peer + " ok");
  CHECK(record->duration > 0ns);
  CHECK(record->attempt == 3);
}

TEST_CASE("an authenticated connection that stays idle is closed after the idle timeout") {
  child_server server({"--idle-timeout-ms", "300"});
  raw_peer raw(server.endpoint());
  REQUIRE_FALSE(raw.authenticate(secret));
  const auto started = std::chrono::steady_clock::now();
  CHECK(raw.closed_by_server_within(10s));
  CHECK(std::chrono::steady_clock::now() - started >= 250ms);
}

TEST_CASE("a graceful stop finishes the calls in flight, then refuses new connections") {
  io_thread server_io;
  fwd::rpc::registry procedures;
  std::mutex mutex;
  std::vector<fwd::rpc::result_handler<std::string>> held;
  procedures.define(test_procs::hold, [&](std::string s, fwd::rpc::result_handler<std::string> reply) {
    std::lock_guard lock(mutex);
    held.push_back(std::move(reply));
    (void)s;
  });
  fwd::rpc::server_options options;
  options.secret = secret;
  fwd::rpc::server server(server_io.io.get_executor(), procedures, options);
  server.start();
  const auto peer = server.local_endpoint();
  REQUIRE(peer.port() != 0);

  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  auto in_flight = client.async_call(peer, test_procs::hold, "h", asio::use_future);
  const auto until = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    {
      std::lock_guard lock(mutex);
      if (!held.empty()) break;
    }
    REQUIRE(std::chrono::steady_clock::now() < until);
    std::this_thread::yield();
  }
  CHECK(server.in_flight() == 1);
  server.stop();
  {
    std::lock_guard lock(mutex);
    REQUIRE(held.size() == 1);
    held.front()(boost::system::error_code{}, "finished");
  }
  CHECK(get_within(in_flight) == "finished");
  fwd::rpc::client late(io.io.get_executor(), client_options());
  CHECK(call_and_wait(late, peer, test_procs::hold, std::string("h")).ec == fwd::errc::unreachable);
}

TEST_CASE("a completion bound to a strand of any_io_executor runs on that strand") {
  child_server server;
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options());
  asio::strand<asio::any_io_executor> strand(asio::any_io_executor(io.io.get_executor()));
  std::promise<std::pair<int, bool>> done;
  client.async_call(server.endpoint(), test_procs::add, 20, 22,
                    asio::bind_executor(strand, [&](boost::system::error_code ec, std::int64_t sum) {
                      done.set_value({ec ? -1 : static_cast<int>(sum), strand.running_in_this_thread()});
                    }));
  auto f = done.get_future();
  const auto [sum, on_strand] = get_within(f);
  CHECK(sum == 42);
  CHECK(on_strand);
}

TEST_CASE("a call that fails at once from inside a completion handler still completes after async_call returns") {
  child_server server;
  io_thread io;
  auto options = client_options();
  options.max_frame_size = 4096;
  fwd::rpc::client client(io.io.get_executor(), options);
  // Warm the connection up, then start an oversized call from inside a completion.
  std::promise<std::pair<bool, boost::system::error_code>> done;
  client.async_call(server.endpoint(), test_procs::add, 1, 2, [&](boost::system::error_code, std::int64_t) {
    auto initiating = std::make_shared<bool>(true);
    client.async_call(server.endpoint(), test_procs::echo, std::string(10000, 'x'),
                      [&done, initiating](boost::system::error_code ec, std::string) {
                        done.set_value({*initiating, ec});
                      });
    *initiating = false;
  });
  auto f = done.get_future();
  const auto [completed_inside, ec] = get_within(f);
  CHECK_FALSE(completed_inside);
  CHECK(ec == fwd::errc::frame_too_large);
}

TEST_CASE(
    "a client whose connection attempts are reset during the handshake connects once the peer "
    "serves") {
  child_server server;
  constexpr int resets = 40;
  resetting_front front(server.endpoint(), resets);
  // Two threads run the client: a reset's read error and the handshake's failed write then
  // complete on different threads, in either order.
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  std::thread t1([&] { io.run(); }), t2([&] { io.run(); });
  fwd::rpc::client_options options = client_options();
  options.reconnect_backoff = 1ms;
  options.max_reconnect_backoff = 1ms;
  options.connect_timeout = 2s;
  fwd::rpc::client client(io.get_executor(), options);
  int refused = 0;
  while (front.reset_count() < resets) {
    fwd::rpc::call_options call;
    call.deadline = std::chrono::steady_clock::now() + 3s;
    const auto r = call_and_wait(client, front.endpoint(), call, test_procs::add, 1, 2);
    if (r.ec) {
      ++refused;
      CHECK(fwd::classify(r.ec) == fwd::error_class::not_sent);
    }
  }
  CHECK(refused > 0);
  // Every attempt after the resets reaches the server: the handshake is sent on the new
  // connection, not held back by the write that the reset interrupted.
  fwd::rpc::call_options call;
  call.deadline = std::chrono::steady_clock::now() + 5s;
  const auto r = call_and_wait(client, front.endpoint(), call, test_procs::add, 1, 2);
  INFO(r.detail);
  CHECK_FALSE(r.ec);
  CHECK(r.value == 3);
  client.close();
  work.reset();
  t1.join();
  t2.join();
}
