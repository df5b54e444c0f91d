// bench/run discovery: what finding the primary costs.
//
//   bench_discovery cached                  a cached lookup, in process
//   bench_discovery cold [deadline ms] [rounds]
//                                           cold discovery among 16 members, one of them a
//                                           black hole, probed in parallel and one by one
//   bench_discovery dns                     one membership poll against a local dnsmasq
//   bench_discovery server <ports file>     the peers (started by `cold` itself): 15 fwd
//                                           servers answering fwd.hello and one black hole
//                                           (accepts TCP, never answers), one io_context
//
// Figures go to stdout as `BENCH <key> <value>` lines, progress to stderr.

#include "../common/bench_support.hpp"
#include "dnsmasq.hpp"

#include <fwd/cluster/discovery.hpp>
#include <fwd/cluster/membership.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/server.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using steady = fwd_bench::clock;
using namespace std::chrono_literals;

namespace {

constexpr const char* secret = "bench-discovery-secret-of-32-bytes-or-more";
constexpr std::size_t fwd_peers = 15;  // plus one black hole: 16 members

std::string hostname_of(std::size_t i) {
  char name[16];
  std::snprintf(name, sizeof name, "node-%02zu", i);
  return name;
}

// --- the peers (child process) ---------------------------------------------------------------

// 15 fwd servers (node-00 says it is primary, the others replica) and a black hole, all on
// one io_context: the probes measure discovery, not how many processes serve them.
int serve(const std::string& ports_file) {
  asio::io_context io;
  fwd::rpc::registry procedures;
  std::vector<std::unique_ptr<fwd::rpc::server>> servers;
  std::ofstream ports(ports_file, std::ios::trunc);
  for (std::size_t i = 0; i < fwd_peers; ++i) {
    fwd::rpc::server_options options;
    options.secret = secret;
    options.node_name = hostname_of(i);
    options.litefs_hostname = hostname_of(i);
    options.status = [i] {
      fwd::rpc::local_status status;
      status.role = i == 0 ? "primary" : "replica";
      status.txid = 42;
      return status;
    };
    servers.push_back(std::make_unique<fwd::rpc::server>(io.get_executor(), procedures, options));
    servers.back()->start();
    ports << servers.back()->local_endpoint().port() << '\n';
  }
  // The black hole: accepts and holds every connection, reads nothing, writes nothing.
  asio::ip::tcp::acceptor hole(io, {asio::ip::make_address("127.0.0.1"), 0});
  std::vector<asio::ip::tcp::socket> held;
  std::function<void()> accept = [&] {
    hole.async_accept([&](boost::system::error_code ec, asio::ip::tcp::socket s) {
      if (ec) return;
      held.push_back(std::move(s));
      accept();
    });
  };
  accept();
  ports << hole.local_endpoint().port() << '\n';
  ports.close();
  fwd_bench::announce_port(hole.local_endpoint().port());
  io.run();  // until the parent kills it
  return 0;
}

// --- cached lookups ---------------------------------------------------------------------------

// An io_context run by a thread of its own, for the client side.
struct runner {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::thread thread{[this] { io.run(); }};
  ~runner() {
    work.reset();
    io.stop();
    thread.join();
  }
};

fwd::litefs::role role_of(fwd::litefs::role_kind kind, std::string primary_hostname = {}) {
  fwd::litefs::role r;
  r.kind = kind;
  r.primary_hostname = std::move(primary_hostname);
  r.reason = "set by the benchmark";
  return r;
}

int cached() {
  asio::io_context io;
  fwd::discovery_options options;
  options.ttl = std::chrono::hours(1);  // the cache stays fresh for the whole measurement
  // The local node is primary: the first lookup fills the cache without probing anyone.
  auto finder = fwd::primary_finder::create(
      io.get_executor(), options, [] { return std::vector<fwd::peer>{}; },
      [](const fwd::peer&, steady::time_point, fwd::primary_finder::probe_handler h) {
        std::move(h)(make_error_code(fwd::errc::no_primary), fwd::node_status{});
      },
      [] { return role_of(fwd::litefs::role_kind::primary); });
  bool filled = false;
  finder->async_find(steady::now() + 5s, [&](boost::system::error_code ec, fwd::primary_location) {
    filled = !ec;
  });
  io.run();
  io.restart();
  if (!filled || finder->cached() == nullptr) fwd_bench::die("the cache was not filled");

  // cached(): batches of 100,000 calls (a few milliseconds each, shorter than a scheduler
  // time slice, so that a preemption spoils one batch, not the figure), each followed by a
  // batch of bare steady_clock reads (what cached() spends checking the TTL), so that load
  // from elsewhere hits both alike. Medians of batches, and the fastest batch.
  std::vector<std::int64_t> per_call_ps;  // picoseconds, to keep a decimal of a nanosecond
  std::vector<std::int64_t> clock_ps;
  std::uintptr_t sink = 0;
  constexpr int batch = 100'000;
  const auto end = steady::now() + fwd_bench::window(0.6);
  while (per_call_ps.size() < 30 || (steady::now() < end && per_call_ps.size() < 2000)) {
    auto t0 = steady::now();
    for (int i = 0; i < batch; ++i) {
      sink += reinterpret_cast<std::uintptr_t>(finder->cached());
      asm volatile("" ::: "memory");  // one real lookup per call, none hoisted out of the loop
    }
    per_call_ps.push_back(fwd_bench::elapsed_ns(t0, steady::now()) * 1000 / batch);
    t0 = steady::now();
    for (int i = 0; i < batch; ++i) {
      sink += static_cast<std::uintptr_t>(steady::now().time_since_epoch().count());
      asm volatile("" ::: "memory");
    }
    clock_ps.push_back(fwd_bench::elapsed_ns(t0, steady::now()) * 1000 / batch);
  }
  if (sink == 0) fwd_bench::die("cached() returned nullptr");
  std::vector<double> over_clock;  // each batch of cached() over the clock batch after it
  for (std::size_t i = 0; i < per_call_ps.size(); ++i) {
    over_clock.push_back(static_cast<double>(per_call_ps[i]) / static_cast<double>(std::max<std::int64_t>(clock_ps[i], 1)));
  }
  std::sort(over_clock.begin(), over_clock.end());
  std::sort(per_call_ps.begin(), per_call_ps.end());
  std::sort(clock_ps.begin(), clock_ps.end());
  fwd_bench::emit("discovery.cached_ns", static_cast<double>(per_call_ps[per_call_ps.size() / 2]) / 1000.0);
  fwd_bench::emit("discovery.cached_ns_best", static_cast<double>(per_call_ps.front()) / 1000.0);
  fwd_bench::emit("discovery.clock_read_ns", static_cast<double>(clock_ps[clock_ps.size() / 2]) / 1000.0);
  fwd_bench::emit("discovery.cached_ratio.over_clock_read", over_clock[over_clock.size() / 2], 2);

  // async_find() on a fresh cache: the hit is completed through a post, so this includes
  // initiating the operation, posting the handler and running it (one thread, no strand).
  std::vector<std::int64_t> find_ns;
  constexpr int find_batch = 10'000;
  std::size_t completed = 0;
  const auto find_end = steady::now() + fwd_bench::window(0.3);
  while (find_ns.size() < 10 || (steady::now() < find_end && find_ns.size() < 200)) {
    const auto deadline = steady::now() + 5s;
    const auto t0 = steady::now();
    for (int i = 0; i < find_batch; ++i) {
      finder->async_find(deadline, [&completed](boost::system::error_code ec, const fwd::primary_location& at) {
        if (!ec && at.local) ++completed;
      });
    }
    io.run();
    io.restart();
    find_ns.push_back(fwd_bench::elapsed_ns(t0, steady::now()) / find_batch);
  }
  if (completed != find_ns.size() * find_batch) fwd_bench::die("async_find missed the cache");
  std::sort(find_ns.begin(), find_ns.end());
  fwd_bench::emit("discovery.cached_find_ns", static_cast<double>(find_ns[find_ns.size() / 2]));
  return 0;
}

// --- cold discovery ---------------------------------------------------------------------------

struct peers_process {
  std::filesystem::path ports_file;
  std::unique_ptr<fwd_bench::server_process> process;
  std::vector<fwd::peer> servers;  // node-00 (primary) .. node-14
  fwd::peer hole;

  peers_process() {
    char pattern[] = "/tmp/fwd-bench-discovery-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) fwd_bench::die("mkdtemp failed");
    ports_file = std::filesystem::path(pattern) / "ports";
    process = std::make_unique<fwd_bench::server_process>(std::vector<std::string>{ports_file.string()});
    std::ifstream in(ports_file);
    unsigned port = 0;
    std::vector<unsigned> ports;
    while (in >> port) ports.push_back(port);
    if (ports.size() != fwd_peers + 1) fwd_bench::die("the peers process wrote no ports");
    const auto loopback = asio::ip::make_address("127.0.0.1");
    for (std::size_t i = 0; i < fwd_peers; ++i) {
      servers.push_back({hostname_of(i), {loopback, static_cast<unsigned short>(ports[i])}});
    }
    hole = {"black-hole", {loopback, static_cast<unsigned short>(ports.back())}};
  }
  ~peers_process() {
    process.reset();
    std::error_code ignored;
    std::filesystem::remove_all(ports_file.parent_path(), ignored);
  }

  // The 16 members: the servers in order, the black hole inserted at `hole_at`.
  std::vector<fwd::peer> members(std::size_t hole_at, bool primary_last) const {
    std::vector<fwd::peer> m = servers;
    if (primary_last) std::rotate(m.begin(), m.begin() + 1, m.end());
    m.insert(m.begin() + static_cast<std::ptrdiff_t>(hole_at), hole);
    return m;
  }
};

struct cold_result {
  bool found = false;
  double ms = 0;
  std::uint64_t rounds = 0;
  int answers = 0;  // probes that got a fwd.hello answer, over every round
  std::string failure;
};

// One cold discovery: a new client (no connection open) and a new finder (empty cache).
// Clients and finders are kept until the end, so that none is destroyed while its probes
// still run on the io thread.
struct cold_lab {
  runner run;
  std::vector<std::unique_ptr<fwd::rpc::client>> clients;
  std::vector<std::shared_ptr<fwd::primary_finder>> finders;

  cold_result once(std::vector<fwd::peer> members, std::size_t concurrency,
                   std::chrono::milliseconds deadline, fwd::litefs::role local,
                   std::chrono::milliseconds caller_allows) {
    fwd::rpc::client_options client_options;
    client_options.secret = secret;
    clients.push_back(std::make_unique<fwd::rpc::client>(run.io.get_executor(), client_options));
    fwd::discovery_options options;
    options.ttl = std::chrono::hours(1);
    options.probe_timeout = deadline;
    options.max_concurrent_probes = concurrency;
    auto answers = std::make_shared<std::atomic<int>>(0);
    options.hooks.probe_result = [answers](const fwd::peer&, const boost::system::error_code& ec,
                                           const fwd::node_status&) {
      if (!ec) ++*answers;
    };
    auto finder = fwd::primary_finder::create(
        run.io.get_executor(), options, [members] { return members; },
        fwd::hello_prober(*clients.back()), [local] { return local; });
    finders.push_back(finder);
    cold_result r;
    const auto t0 = steady::now();
    auto found = finder->async_find(t0 + caller_allows, asio::use_future);
    try {
      const fwd::primary_location at = found.get();
      r.ms = static_cast<double>(fwd_bench::elapsed_ns(t0, steady::now())) / 1e6;
      r.found = at.litefs_hostname == "node-00";
      if (!r.found) r.failure = "found " + at.litefs_hostname + " instead of node-00";
    } catch (const std::exception& e) {
      r.ms = static_cast<double>(fwd_bench::elapsed_ns(t0, steady::now())) / 1e6;
      r.failure = e.what() + std::string(": ") + finder->last_failure();
    }
    r.rounds = finder->probe_rounds();
    r.answers = answers->load();
    finder->stop();
    asio::post(run.io, [c = clients.back().get()] { c->close(); });
    return r;
  }

  ~cold_lab() {
    for (auto& f : finders) f->stop();
    std::promise<void> closed;
    asio::post(run.io, [&] {
      for (auto& c : clients) c->close();
      closed.set_value();
    });
    closed.get_future().wait();
  }
};

int cold(std::chrono::milliseconds deadline, int rounds) {
  peers_process peers;
  cold_lab lab;
  const auto unknown = role_of(fwd::litefs::role_kind::unknown);
  const auto named = role_of(fwd::litefs::role_kind::replica, "node-00");
  const std::size_t middle = 8;
  const std::string d = std::to_string(deadline.count());
  std::fprintf(stderr, "bench: cold discovery, 16 members (black hole at position %zu), probe deadline %s ms\n",
               middle, d.c_str());

  auto report = [&](const std::string& key, const cold_result& r) {
    if (!r.found) fwd_bench::die(key + ": no primary found in " + std::to_string(r.ms) + " ms: " + r.failure);
    if (r.rounds != 1) std::fprintf(stderr, "bench: %s took %llu probe rounds\n", key.c_str(),
                                    static_cast<unsigned long long>(r.rounds));
    fwd_bench::emit(key, r.ms, 2);
  };

  // Rounds interleave parallel and sequential, so that load from elsewhere hits both alike;
  // each round prints its own ratio (bench/run reports medians).
  for (int round = 0; round < rounds; ++round) {
    // Local role unknown (a replica without `.primary`): every member must answer or time
    // out before the single claimant is trusted, so the black hole's deadline bounds it.
    const auto parallel = lab.once(peers.members(middle, false), 16, deadline, unknown, 2s);
    const auto sequential = lab.once(peers.members(middle, false), 1, deadline, unknown, 2s);
    report("discovery.cold_ms.parallel", parallel);
    report("discovery.cold_ms.sequential", sequential);
    fwd_bench::emit("discovery.cold_ratio.sequential_over_parallel", sequential.ms / parallel.ms, 2);
    // How many of the 15 servers a round heard from (the black hole never answers).
    fwd_bench::emit("discovery.cold_answers.parallel", parallel.answers, 0);
    fwd_bench::emit("discovery.cold_answers.sequential", sequential.answers, 0);
    // A replica whose `.primary` names node-00: the round ends at node-00's answer.
    report("discovery.cold_ms.parallel_named", lab.once(peers.members(middle, false), 16, deadline, named, 2s));
  }

  // One by one with the black hole probed first and the primary last: does a caller that
  // allows ten probe deadlines find it?
  const auto starved = lab.once(peers.members(0, true), 1, deadline, unknown, deadline * 10);
  std::fprintf(stderr, "bench: one by one, black hole first, primary last: %s after %.1f ms, %llu rounds%s%s\n",
               starved.found ? "found" : "NOT found", starved.ms,
               static_cast<unsigned long long>(starved.rounds), starved.found ? "" : ": ",
               starved.failure.substr(0, 300).c_str());
  fwd_bench::emit("discovery.cold_found.sequential_hole_first", starved.found ? 1 : 0, 0);
  fwd_bench::emit("discovery.cold_rounds.sequential_hole_first", static_cast<double>(starved.rounds), 0);
  fwd_bench::emit("discovery.probe_deadline_ms", static_cast<double>(deadline.count()), 0);
  return 0;
}

// --- DNS --------------------------------------------------------------------------------------

int dns() {
  std::string hosts;
  for (int i = 1; i <= 16; ++i) hosts += "127.0.1." + std::to_string(i) + " nodes.cluster.test\n";
  fwd::test::dnsmasq server(hosts);
  runner run;
  fwd::membership_options options;
  options.dns = {fwd::dns_source::address("nodes.cluster.test", 7000)};
  options.dns_servers = {server.server()};
  options.ipv6 = false;  // the hosts file has A records only: one query per poll
  options.query_timeout = 1000ms;
  fwd::membership members(run.io.get_executor(), options);

  auto poll = [&] {
    auto found = members.async_resolve_once(asio::use_future).get();
    if (found.size() != 16) fwd_bench::die("dnsmasq answered " + std::to_string(found.size()) + " members, not 16");
  };
  for (int i = 0; i < 50; ++i) poll();
  std::vector<std::int64_t> ns;
  const auto end = steady::now() + fwd_bench::window(0.6);
  while (ns.size() < 200 || (steady::now() < end && ns.size() < 20'000)) {
    const auto t0 = steady::now();
    poll();
    ns.push_back(fwd_bench::elapsed_ns(t0, steady::now()));
  }
  const auto s = fwd_bench::summarise(std::move(ns));
  std::fprintf(stderr, "bench: %zu polls\n", s.samples);
  fwd_bench::emit("dns.resolve_us", s.p50_us);
  fwd_bench::emit("dns.resolve_p99_us", s.p99_us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "server" && argc > 2) return serve(argv[2]);
    if (mode == "cached") return cached();
    if (mode == "cold") {
      const auto deadline = std::chrono::milliseconds(argc > 2 ? std::stoi(argv[2]) : 100);
      const int rounds = argc > 3 ? std::stoi(argv[3]) : 5;
      return cold(deadline, rounds);
    }
    if (mode == "dns") return dns();
  } catch (const std::exception& e) {
    fwd_bench::die(mode + ": " + e.what());
  }
  std::fprintf(stderr, "usage: %s cached | cold [deadline ms] [rounds] | dns | server <ports file>\n", argv[0]);
  return 2;
}
