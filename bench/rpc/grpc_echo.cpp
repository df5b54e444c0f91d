// The gRPC baseline: a unary echo of the same 64-byte payload over one HTTP/2 channel on
// loopback, insecure credentials, gRPC's callback API on the server.
//
//   bench_rpc_grpc server            serve Echo.Call on 127.0.0.1:0
//   bench_rpc_grpc latency           sequential blocking calls (sync stub): p50, p99
//   bench_rpc_grpc throughput N...   calls/s with N calls in flight (callback API)
//   bench_rpc_grpc memory            server RSS per idle connection, and with 10,000
//                                    calls sent at once (burst) and held in flight
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "../common/bench_support.hpp"
#include "echo.grpc.pb.h"

namespace {

using namespace fwd_bench;
using fwd_bench::Blob;
using fwd_bench::Echo;

// The burst of the memory figures; the server must admit it whole.
inline constexpr std::size_t burst_calls = 10'000;

class echo_service final : public Echo::CallbackService {
  grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* context, const Blob* request,
                                 Blob* response) override {
    response->set_data(request->data());
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Hold(grpc::CallbackServerContext* context, const Blob* request,
                                 Blob* response) override {
    response->set_data(request->data());
    auto* reactor = context->DefaultReactor();
    std::vector<grpc::ServerUnaryReactor*> ready;
    {
      std::lock_guard lock(mutex_);
      parked_.push_back(reactor);
      if (parked_.size() >= burst_calls) ready.swap(parked_);
    }
    for (auto* r : ready) r->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  std::mutex mutex_;
  std::vector<grpc::ServerUnaryReactor*> parked_;
};

int run_server() {
  echo_service service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, static_cast<int>(2 * burst_calls));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) die("grpc server: cannot listen on 127.0.0.1");
  announce_port(static_cast<unsigned>(port));
  server->Wait();
  return 0;
}

std::shared_ptr<grpc::Channel> make_channel(unsigned short port, bool own_connection = false) {
  grpc::ChannelArguments args;
  // Without this, channels with equal arguments share one TCP connection.
  if (own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                           grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    die("grpc client: cannot connect");
  }
  return channel;
}

Blob make_request() {
  Blob b;
  b.set_data(make_payload());
  return b;
}

void call_once(Echo::Stub& stub, const Blob& request) {
  grpc::ClientContext context;
  Blob response;
  const grpc::Status status = stub.Call(&context, request, &response);
  if (!status.ok() || response.data().size() != payload_size) {
    die("grpc call failed: " + status.error_message());
  }
}

int run_latency(double seconds) {
  server_process server;
  auto stub = Echo::NewStub(make_channel(server.port()));
  const Blob request = make_request();
  const auto s = sequential_latency([&] { call_once(*stub, request); }, seconds);
  std::fprintf(stderr, "grpc: %zu sequential calls\n", s.samples);
  emit("rpc.p50_us.grpc", s.p50_us);
  emit("rpc.p99_us.grpc", s.p99_us);
  return 0;
}

/**
 * Keeps `depth` calls in flight on one stub: each completion issues the next call until
 * `stop()`. Counts completions; `drain()` waits until every slot has finished.
 */
class pipeline {
 public:
  pipeline(Echo::Stub& stub, std::size_t depth) : stub_(stub), slots_(depth) {}

  void start() {
    active_ = slots_.size();
    for (auto& s : slots_) issue(s);
  }
  std::uint64_t completed() const { return completed_.load(std::memory_order_relaxed); }
  void stop() { stop_ = true; }
  bool drain(clock::duration limit) {
    std::unique_lock lock(mutex_);
    return drained_.wait_for(lock, limit, [&] { return active_ == 0; });
  }

 private:
  struct slot {
    std::unique_ptr<grpc::ClientContext> context;
    Blob response;
  };

  void issue(slot& s) {
    s.context = std::make_unique<grpc::ClientContext>();
    stub_.async()->Call(s.context.get(), &request_, &s.response, [this, &s](grpc::Status st) {
      if (!st.ok()) die("grpc async call failed: " + st.error_message());
      completed_.fetch_add(1, std::memory_order_relaxed);
      if (!stop_.load()) {
        issue(s);
        return;
      }
      std::lock_guard lock(mutex_);
      if (--active_ == 0) drained_.notify_all();
    });
  }

  Echo::Stub& stub_;
  const Blob request_ = make_request();
  std::vector<slot> slots_;
  std::atomic<std::uint64_t> completed_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable drained_;
  std::size_t active_ = 0;
};

int run_throughput(const std::vector<std::size_t>& depths) {
  server_process server;
  auto stub = Echo::NewStub(make_channel(server.port()));
  for (const std::size_t depth : depths) {
    pipeline p(*stub, depth);
    p.start();
    std::this_thread::sleep_for(window(0.2));  // warm-up, not measured
    const auto c0 = p.completed();
    const auto t0 = clock::now();
    std::this_thread::sleep_for(window(0.6));  // the measurement window
    const auto c1 = p.completed();
    const auto t1 = clock::now();
    p.stop();
    if (!p.drain(std::chrono::seconds(30))) die("grpc: calls did not drain");
    const double rate = static_cast<double>(c1 - c0) / (static_cast<double>(elapsed_ns(t0, t1)) / 1e9);
    std::fprintf(stderr, "grpc: %zu in flight: %.0f calls/s\n", depth, rate);
    emit("rpc.tput.grpc." + std::to_string(depth), rate, 0);
  }
  return 0;
}

int run_memory(std::size_t idle_connections, std::size_t inflight) {
  {
    // Idle connections: each its own channel (own TCP connection), connected and used once.
    server_process server;
    auto warm = Echo::NewStub(make_channel(server.port(), true));
    const Blob request = make_request();
    for (int i = 0; i < 100; ++i) call_once(*warm, request);
    const long before = settled_rss_kib(server);
    std::vector<std::unique_ptr<Echo::Stub>> idle;
    for (std::size_t i = 0; i < idle_connections; ++i) {
      idle.push_back(Echo::NewStub(make_channel(server.port(), true)));
      call_once(*idle.back(), request);
    }
    const long after = settled_rss_kib(server);
    const double per_conn = static_cast<double>(after - before) / static_cast<double>(idle_connections);
    std::fprintf(stderr, "grpc: server RSS %ld -> %ld KiB with %zu idle connections\n", before,
                 after, idle_connections);
    emit("rpc.rss_kib_per_idle_conn.grpc", per_conn, 2);
  }
  // 10,000 calls issued at once on one channel: echoed as they come (burst), then held by
  // the server until all have arrived (in flight). The server's peak RSS growth.
  for (const bool held : {false, true}) {
    server_process server;
    auto stub = Echo::NewStub(make_channel(server.port()));
    const Blob request = make_request();
    for (int i = 0; i < 100; ++i) call_once(*stub, request);
    const long before = settled_rss_kib(server);
    const bool peak_reset = reset_peak_rss(server);
    struct slot {
      grpc::ClientContext context;
      Blob response;
    };
    std::vector<slot> slots(inflight);
    std::atomic<std::size_t> done{0};
    for (auto& s : slots) {
      auto on_done = [&](grpc::Status st) {
        if (!st.ok()) die("grpc async call failed: " + st.error_message());
        done.fetch_add(1);
      };
      if (held) {
        stub->async()->Hold(&s.context, &request, &s.response, on_done);
      } else {
        stub->async()->Call(&s.context, &request, &s.response, on_done);
      }
    }
    if (!wait_until([&] { return done.load() == inflight; }, std::chrono::seconds(60))) {
      die("grpc: burst did not complete");
    }
    const long peak = server.peak_rss_kib();
    std::fprintf(stderr, "grpc: server RSS %ld KiB, peak %ld KiB during %zu calls %s%s\n", before, peak,
                 inflight, held ? "held in flight" : "sent at once", peak_reset ? "" : " (peak not reset: upper bound)");
    emit(held ? "rpc.rss_kib_10k_inflight.grpc" : "rpc.rss_kib_10k_burst.grpc", static_cast<double>(peak - before), 0);
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
  if (mode == "memory") return run_memory(1000, burst_calls);
  std::fprintf(stderr, "usage: %s server|latency|throughput [N...]|memory\n", argv[0]);
  return 2;
}
