// fwd's RPC transport: a procedure that returns its 64-byte string argument, served by
// fwd::rpc::server and called with fwd::rpc::client over one authenticated connection on
// loopback. Client and server each run one io_context on one thread.
//
//   bench_rpc_fwd server            serve bench.echo on 127.0.0.1:0
//   bench_rpc_fwd latency [s]       sequential async_call chain: rpc.p50_us.fwd, p99; the
//                                   same with telemetry hooks set (.fwd_telemetry) and
//                                   through the blocking call() (.fwd_blocking);
//                                   FWD_BENCH_RPC_ONLY=async|telemetry|blocking: that one
//   bench_rpc_fwd throughput N...   calls/s with N calls in flight (.fwd.N); when N is 64,
//                                   also with telemetry hooks set (.fwd_telemetry.64)
//   bench_rpc_fwd memory            server RSS per idle connection, and with 10,000 calls
//                                   sent at once (burst) and held in flight
//   bench_rpc_fwd codec             in process, no sockets: the four codec steps of a round
//                                   trip (rpc.codec_ns.*), and, for scale, building one
//                                   std::locale with an extra facet, which Boost 1.81's
//                                   binary archives do in every constructor
//                                   (basic_binary_[io]primitive's archive_locale member)
#include <fwd/procedure.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/server.hpp>
#include <fwd/telemetry.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <future>
#include <locale>
#include <memory>
#include <thread>

#include "../common/bench_support.hpp"

namespace {

using namespace fwd_bench;
using endpoint = boost::asio::ip::tcp::endpoint;

inline constexpr fwd::procedure<std::string(std::string)> echo{"bench.echo"};
// Answers nothing until `burst_calls` calls wait in it, then all of them: the server then
// holds that many calls in flight at once.
inline constexpr fwd::procedure<std::string(std::string)> hold{"bench.hold"};
inline constexpr const char* secret = "fwd-bench-secret-of-32-bytes-or-more";

// The burst of the memory figure must be admitted whole (the default bound per connection
// is 4096 running requests; beyond it calls are answered `overloaded`).
inline constexpr std::size_t burst_calls = 10'000;
// Connections opened at once for the idle-connection memory figure.
inline constexpr std::size_t idle_connections = 1000;

int run_server() {
  boost::asio::io_context io{1};
  fwd::rpc::registry procedures;
  procedures.define(echo, [](std::string payload) { return payload; });
  using parked_call = std::pair<std::string, fwd::rpc::result_handler<std::string>>;
  auto parked = std::make_shared<std::vector<parked_call>>();
  procedures.define(hold, [parked](std::string payload, fwd::rpc::result_handler<std::string> reply) {
    // One io thread runs every handler: no lock needed.
    parked->emplace_back(std::move(payload), std::move(reply));
    if (parked->size() < burst_calls) return;
    std::vector<parked_call> ready;
    ready.swap(*parked);
    for (auto& [p, r] : ready) r({}, std::move(p));
  });
  fwd::rpc::server_options options;
  options.secret = secret;
  options.max_in_flight_per_connection = 2 * burst_calls;
  // The idle-connection figure opens 1000 connections at once: all may be in the handshake
  // together (the default bound, 256, would refuse the rest).
  options.max_unauthenticated_connections = 2 * idle_connections;
  fwd::rpc::server server{io.get_executor(), procedures, std::move(options)};
  server.start();
  announce_port(server.local_endpoint().port());
  io.run();
  return 0;
}

/** The client side: one io_context run by one background thread. */
class client_side {
 public:
  explicit client_side(unsigned short port)
      : peer_(boost::asio::ip::make_address("127.0.0.1"), port), thread_([this] { io_.run(); }) {}
  client_side(const client_side&) = delete;
  client_side& operator=(const client_side&) = delete;
  ~client_side() {
    clients_.clear();  // closes their connections on the io thread's executor
    work_.reset();
    io_.stop();
    thread_.join();
  }

  fwd::rpc::client& new_client(fwd::telemetry_ptr telemetry = nullptr) {
    fwd::rpc::client_options options;
    options.secret = secret;
    options.telemetry = std::move(telemetry);
    clients_.push_back(std::make_unique<fwd::rpc::client>(io_.get_executor(), std::move(options)));
    return *clients_.back();
  }
  const endpoint& peer() const { return peer_; }
  boost::asio::io_context& io() { return io_; }

 private:
  boost::asio::io_context io_{1};
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{io_.get_executor()};
  endpoint peer_;
  std::vector<std::unique_ptr<fwd::rpc::client>> clients_;
  std::thread thread_;
};

void check_reply(boost::system::error_code ec, const std::string& reply) {
  if (ec) die("fwd call failed: " + ec.message());
  if (reply.size() != payload_size) die("fwd call returned " + std::to_string(reply.size()) + " bytes");
}

/** Hooks that count, as a service's metrics would: to show what a set hook costs. */
fwd::telemetry_ptr counting_telemetry() {
  static std::atomic<std::uint64_t> started{0}, finished{0};
  auto t = std::make_shared<fwd::telemetry>();
  t->call_started = [](const fwd::call_started_event&) { started.fetch_add(1, std::memory_order_relaxed); };
  t->call_finished = [](const fwd::call_finished_event&) { finished.fetch_add(1, std::memory_order_relaxed); };
  return t;
}

/**
 * One call at a time, each issued from the completion of the previous one (on the client's
 * io thread): the latency of async_call with no thread hand-off.
 */
latency_summary chained_latency(client_side& side, fwd::rpc::client& client, double seconds) {
  struct chain {
    chain(fwd::rpc::client& c, const endpoint& p) : client(c), peer(p) {}
    fwd::rpc::client& client;
    const endpoint& peer;
    const std::string payload = make_payload();
    clock::time_point warm_end{}, end{}, sent{};
    std::vector<std::int64_t> samples{};
    std::promise<void> done{};

    void next() {
      sent = clock::now();
      client.async_call(peer, echo, payload, [this](boost::system::error_code ec, std::string reply) {
        const auto now = clock::now();
        check_reply(ec, reply);
        if (now >= warm_end) samples.push_back(elapsed_ns(sent, now));
        if (now >= end || samples.size() >= 500'000) {
          done.set_value();
          return;
        }
        next();
      });
    }
  } c(client, side.peer());
  c.samples.reserve(500'000);
  c.warm_end = clock::now() + window(0.2);
  c.end = c.warm_end + window(seconds);
  auto finished = c.done.get_future();
  boost::asio::post(side.io(), [&c] { c.next(); });
  finished.wait();
  return summarise(std::move(c.samples));
}

// FWD_BENCH_RPC_ONLY=async|telemetry|blocking measures only that latency figure (for perf,
// strace or callgrind).
bool measured(const char* figure) {
  const char* only = std::getenv("FWD_BENCH_RPC_ONLY");
  return only == nullptr || *only == '\0' || std::string_view(only) == figure;
}

int run_latency(double seconds) {
  server_process server;
  client_side side(server.port());
  if (measured("async")) {
    const auto s = chained_latency(side, side.new_client(), seconds);
    std::fprintf(stderr, "fwd: %zu sequential calls\n", s.samples);
    emit("rpc.p50_us.fwd", s.p50_us);
    emit("rpc.p99_us.fwd", s.p99_us);
  }
  if (measured("telemetry")) {
    const auto s = chained_latency(side, side.new_client(counting_telemetry()), seconds);
    emit("rpc.p50_us.fwd_telemetry", s.p50_us);
    emit("rpc.p99_us.fwd_telemetry", s.p99_us);
  }
  if (measured("blocking")) {
    // The blocking convenience, from this thread while the io thread runs the client.
    auto& client = side.new_client();
    const std::string payload = make_payload();
    const auto s = sequential_latency([&] { check_reply({}, client.call(side.peer(), echo, payload)); }, seconds);
    emit("rpc.p50_us.fwd_blocking", s.p50_us);
    emit("rpc.p99_us.fwd_blocking", s.p99_us);
  }
  return 0;
}

/** Keeps `depth` calls in flight on one client: each completion issues the next call. */
class pipeline {
 public:
  pipeline(fwd::rpc::client& client, const endpoint& peer, std::size_t depth)
      : client_(client), peer_(peer), depth_(depth) {}

  void start() {
    active_ = depth_;
    for (std::size_t i = 0; i < depth_; ++i) issue();
  }
  std::uint64_t completed() const { return completed_.load(std::memory_order_relaxed); }
  void stop() { stop_ = true; }
  void wait_drained() { drained_.get_future().wait(); }

 private:
  void issue() {
    client_.async_call(peer_, echo, payload_, [this](boost::system::error_code ec, std::string reply) {
      check_reply(ec, reply);
      completed_.fetch_add(1, std::memory_order_relaxed);
      if (!stop_.load(std::memory_order_relaxed)) {
        issue();
      } else if (--active_ == 0) {
        drained_.set_value();
      }
    });
  }

  fwd::rpc::client& client_;
  const endpoint& peer_;
  const std::size_t depth_;
  const std::string payload_ = make_payload();
  std::atomic<std::uint64_t> completed_{0};
  std::atomic<bool> stop_{false};
  std::size_t active_ = 0;  // only touched by completions, all on the io thread
  std::promise<void> drained_;
};

double measure_throughput(client_side& side, fwd::rpc::client& client, std::size_t depth) {
  pipeline p(client, side.peer(), depth);
  boost::asio::post(side.io(), [&p] { p.start(); });
  std::this_thread::sleep_for(window(0.2));  // warm-up, not measured
  const auto c0 = p.completed();
  const auto t0 = clock::now();
  std::this_thread::sleep_for(window(0.6));  // the measurement window
  const auto c1 = p.completed();
  const auto t1 = clock::now();
  p.stop();
  p.wait_drained();
  return static_cast<double>(c1 - c0) / (static_cast<double>(elapsed_ns(t0, t1)) / 1e9);
}

int run_throughput(const std::vector<std::size_t>& depths) {
  server_process server;
  client_side side(server.port());
  auto& client = side.new_client();
  for (const std::size_t depth : depths) {
    const double rate = measure_throughput(side, client, depth);
    std::fprintf(stderr, "fwd: %zu in flight: %.0f calls/s\n", depth, rate);
    emit("rpc.tput.fwd." + std::to_string(depth), rate, 0);
    if (depth == 64) {
      // Right after, so that both see the same machine: what set hooks cost.
      auto& hooked = side.new_client(counting_telemetry());
      const double hooked_rate = measure_throughput(side, hooked, 64);
      std::fprintf(stderr, "fwd: 64 in flight, telemetry hooks set: %.0f calls/s\n", hooked_rate);
      emit("rpc.tput.fwd_telemetry.64", hooked_rate, 0);
      emit("rpc.tput_ratio.fwd_telemetry_over_fwd.64", hooked_rate / rate, 2);
    }
  }
  return 0;
}

/** Issues `count` calls at once (on `clients`, round robin) and waits for all of them. */
std::size_t call_all(client_side& side, const std::vector<fwd::rpc::client*>& clients, std::size_t count,
                     const fwd::procedure<std::string(std::string)>& proc = echo) {
  const std::string payload = make_payload();
  std::atomic<std::size_t> done{0}, overloaded{0};
  std::promise<void> all_done;
  for (std::size_t i = 0; i < count; ++i) {
    clients[i % clients.size()]->async_call(
        side.peer(), proc, payload, [&](boost::system::error_code ec, std::string reply) {
          if (ec == fwd::errc::overloaded) {
            overloaded.fetch_add(1);
          } else {
            check_reply(ec, reply);
          }
          if (done.fetch_add(1) + 1 == count) all_done.set_value();
        });
  }
  if (all_done.get_future().wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    die("fwd: calls did not complete within 60 s");
  }
  return overloaded.load();
}

int run_memory() {
  {
    // Idle connections: each client has its own, connected, authenticated and used once.
    server_process server;
    client_side side(server.port());
    std::vector<fwd::rpc::client*> warm{&side.new_client()};
    for (int i = 0; i < 100; ++i) call_all(side, warm, 1);
    const long before = settled_rss_kib(server);
    std::vector<fwd::rpc::client*> idle;
    for (std::size_t i = 0; i < idle_connections; ++i) idle.push_back(&side.new_client());
    call_all(side, idle, idle.size());
    const long after = settled_rss_kib(server);
    std::fprintf(stderr, "fwd: server RSS %ld -> %ld KiB with %zu idle connections\n", before, after,
                 idle_connections);
    emit("rpc.rss_kib_per_idle_conn",
         static_cast<double>(after - before) / static_cast<double>(idle_connections), 2);
  }
  // 10,000 calls issued at once on one connection: echoed as they come (burst), then held
  // by the server until all have arrived (in flight). The server's peak RSS growth.
  for (const bool held : {false, true}) {
    server_process server;
    client_side side(server.port());
    std::vector<fwd::rpc::client*> one{&side.new_client()};
    for (int i = 0; i < 100; ++i) call_all(side, one, 1);
    const long before = settled_rss_kib(server);
    const bool peak_reset = reset_peak_rss(server);
    const std::size_t overloaded = call_all(side, one, burst_calls, held ? hold : echo);
    const long peak = server.peak_rss_kib();
    std::fprintf(stderr, "fwd: server RSS %ld KiB, peak %ld KiB during %zu calls %s%s%s\n", before, peak,
                 burst_calls, held ? "held in flight" : "sent at once", peak_reset ? "" : " (peak not reset: upper bound)",
                 overloaded ? (", " + std::to_string(overloaded) + " answered overloaded").c_str() : "");
    emit(held ? "rpc.rss_kib_10k_inflight" : "rpc.rss_kib_10k_burst", static_cast<double>(peak - before), 0);
  }
  return 0;
}

/* ---- codec -------------------------------------------------------------------------- */

// Keeps the optimiser from dropping the measured work.
std::size_t sink = 0;

/** Nanoseconds per call of `op`, over ~0.3 s after a short warm-up. */
template <class Op>
double ns_per_op(Op&& op) {
  for (int i = 0; i < 1000; ++i) op();
  std::size_t n = 0;
  const auto t0 = clock::now();
  const auto end = t0 + window(0.3);
  clock::time_point t1;
  do {
    for (int i = 0; i < 256; ++i) op();
    n += 256;
    t1 = clock::now();
  } while (t1 < end);
  return static_cast<double>(elapsed_ns(t0, t1)) / static_cast<double>(n);
}

int run_codec() {
  const std::string payload = make_payload();
  const std::string args = fwd::detail::encode_arguments(echo, payload);
  const std::string result = fwd::detail::encode_result<std::string>(payload);
  boost::system::error_code ec;

  const double encode_args = ns_per_op([&] { sink += fwd::detail::encode_arguments(echo, payload).size(); });
  const double decode_args = ns_per_op([&] {
    sink += std::get<0>(fwd::detail::decode_arguments<std::decay_t<decltype(echo)>>(args, ec)).size();
  });
  const double encode_result = ns_per_op([&] { sink += fwd::detail::encode_result<std::string>(payload).size(); });
  const double decode_result = ns_per_op([&] { sink += fwd::detail::decode_result<std::string>(result, ec).size(); });
  if (ec) die("fwd codec: " + ec.message());

  // refs=1: the facet is owned here, not by the locale, as Boost's member facet is.
  struct owned_facet : std::numpunct<char> {
    owned_facet() : std::numpunct<char>(1) {}
  };
  static owned_facet facet;
  const double locale = ns_per_op([&] {
    std::locale with_facet(std::locale(), &facet);
    sink += with_facet.name().size();
  });
  const double copy = ns_per_op([&] {
    std::string c = payload;
    sink += c.size();
  });

  emit("rpc.codec_ns.encode_args", encode_args, 0);
  emit("rpc.codec_ns.decode_args", decode_args, 0);
  emit("rpc.codec_ns.encode_result", encode_result, 0);
  emit("rpc.codec_ns.decode_result", decode_result, 0);
  emit("rpc.codec_ns.per_call", encode_args + decode_args + encode_result + decode_result, 0);
  emit("rpc.codec_ns.locale_with_facet", locale, 0);
  emit("rpc.codec_ns.string_copy", copy, 0);
  std::fprintf(stderr, "fwd codec: done (%zu)\n", sink);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "server") return run_server();
    if (mode == "latency") return run_latency(seconds_arg(argc, argv, 2, 2.0));
    if (mode == "throughput") {
      std::vector<std::size_t> depths;
      for (int i = 2; i < argc; ++i) depths.push_back(std::stoul(argv[i]));
      if (depths.empty()) depths = {1, 16, 64, 256};
      return run_throughput(depths);
    }
    if (mode == "memory") return run_memory();
    if (mode == "codec") return run_codec();
  } catch (const std::exception& e) {
    die(std::string("fwd: ") + e.what());
  }
  std::fprintf(stderr, "usage: %s server|latency [s]|throughput [N...]|memory|codec\n", argv[0]);
  return 2;
}
