// The whole cluster under a fixed offered load: three fwd::node processes on the LiteFS
// simulation (127.0.0.1), writers on every node, the simulation replicating every commit.
// Each node issues single-row inserts at a fixed rate (open loop: a write is sent at its
// scheduled time whether or not earlier ones have completed), and each write's latency is
// measured from its scheduled time, so a queue that builds up shows in the latency instead
// of slowing the load down. Every load runs with fwd::durability::none() and replicas(1).
//
//   bench_cluster [window s] [loads]   the driver: builds the simulated cluster (WAL), starts
//                                      three node processes (itself, re-executed with
//                                      `node`), runs every load (writes/s in total, e.g.
//                                      1000,5000,20000) with both durability settings and
//                                      prints BENCH lines (cluster.*)
//   bench_cluster litefs [window s] [loads]
//                                      the same on real LiteFS (three LiteFS processes on FUSE
//                                      mounts, the tests' fixture, static lease); without
//                                      LiteFS or FUSE it says why and measures nothing
//   bench_cluster node NAME MOUNT PORT MEMBER_PORTS LITEFS_HTTP_PORT
//                                      one fwd::node (LITEFS_HTTP_PORT 0: on the simulation);
//                                      serves bench.cluster.insert and the load generator
//                                      bench.cluster.load; prints "READY <port>"
#include <sqlite3.h>

#include <algorithm>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <cinttypes>
#include <csignal>
#include <future>
#include <limits>
#include <map>
#include <fwd/node.hpp>
#include <fwd/sqlite/connection.hpp>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../common/bench_support.hpp"
#include "litefs_fixture.hpp"
#include "litefs_sim.hpp"

namespace {

using namespace fwd_bench;
using endpoint = boost::asio::ip::tcp::endpoint;

/// Inserts one row (k, v) into t; returns its rowid.
inline const fwd::procedure<std::int64_t(std::string, std::int64_t)> insert_row{
    "bench.cluster.insert"};

/// Runs an open-loop load on the node it is sent to: (writes per second, start time as
/// steady_clock nanoseconds since its epoch (CLOCK_MONOTONIC, shared by the processes of
/// one machine), warm-up ms, window ms, key salt, replicas the primary waits for
/// (fwd::durability::replicas(n), 0 for none())) -> [writes issued, completed inside the
/// window, failed, then the latency of every write scheduled inside the window, from its
/// scheduled time to its completion, in microseconds...].
inline const fwd::procedure<std::vector<std::int64_t>(double, std::int64_t, std::int64_t,
                                                      std::int64_t, std::int64_t, std::int64_t)>
    run_load{"bench.cluster.load"};

constexpr const char* secret = "bench-cluster-secret-of-32-bytes-or-more";
constexpr const char* db_name = "app.db";
constexpr int node_count = 3;
/// A write gives up this long after its scheduled time (under overload, this bounds the run).
constexpr auto call_deadline = std::chrono::seconds(5);

const char* schema =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER);"
    "CREATE INDEX t_k ON t(k);";

/// The service's writer, as a user would write it.
std::int64_t insert(sqlite3* db, const std::string& k, std::int64_t v) {
  auto c = fwd::sqlite::connection::borrow(db);
  c.prepare("INSERT INTO t(k, v) VALUES (?1, ?2)").bind(1, k).bind(2, v).execute();
  return c.last_insert_rowid();
}

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

struct load_result {
  std::int64_t issued = 0;
  std::int64_t in_window = 0;
  std::int64_t failed = 0;
  std::vector<std::int64_t> latency_us;
  std::map<std::string, std::int64_t> errors;  // message -> how many writes failed with it
};

/**
 * Issues writes on a fixed schedule: write i is due at start + i / rate. A timer wakes at
 * the next due time and issues every write that is due by then (several at once when the
 * timer fires late), each timed from its due time. Nothing waits for earlier writes to
 * complete. Completions may run on any io thread (the mutex).
 */
class open_loop : public std::enable_shared_from_this<open_loop> {
 public:
  using done_fn = std::function<void(boost::system::error_code)>;
  using issue_fn = std::function<void(std::string key, std::int64_t v, clock::time_point due,
                                      done_fn done)>;

  open_loop(boost::asio::any_io_executor ex, double rate, clock::time_point start,
            clock::duration warmup, clock::duration window, std::uint64_t salt, issue_fn issue,
            std::function<void(load_result)> finished)
      : strand_(boost::asio::make_strand(ex)),
        timer_(strand_),
        interval_(std::chrono::duration<double>(1.0 / rate)),
        start_(start),
        from_(start + warmup),
        to_(start + warmup + window),
        total_(static_cast<std::uint64_t>(std::chrono::duration<double>(warmup + window).count() *
                                          rate)),
        salt_(salt),
        issue_(std::move(issue)),
        finished_(std::move(finished)) {
    result_.latency_us.reserve(static_cast<std::size_t>(
        std::chrono::duration<double>(window).count() * rate + 16));
  }

  void start() {
    boost::asio::post(strand_, [self = shared_from_this()] { self->arm(); });
  }

 private:
  clock::time_point due(std::uint64_t i) const {
    return start_ + std::chrono::duration_cast<clock::duration>(interval_ * static_cast<double>(i));
  }

  void arm() {
    if (next_ == total_) {
      bool last;
      {
        std::lock_guard lock(mutex_);
        all_issued_ = true;
        last = completed_ == total_;
      }
      if (last) finish();
      return;
    }
    timer_.expires_at(due(next_));
    timer_.async_wait([self = shared_from_this()](boost::system::error_code) { self->fire(); });
  }

  void fire() {
    const auto now = clock::now();
    while (next_ < total_ && due(next_) <= now) issue_one(next_++);
    arm();
  }

  void issue_one(std::uint64_t n) {
    {
      std::lock_guard lock(mutex_);
      ++result_.issued;
    }
    char key[24];
    std::snprintf(key, sizeof key, "k%016" PRIx64, splitmix64(salt_ << 40 ^ n));
    const auto at = due(n);
    issue_(key, static_cast<std::int64_t>(n), at,
           [self = shared_from_this(), at](boost::system::error_code ec) { self->completed(at, ec); });
  }

  void completed(clock::time_point at, boost::system::error_code ec) {
    const auto now = clock::now();
    bool last;
    {
      std::lock_guard lock(mutex_);
      if (ec) {
        ++result_.failed;
        ++result_.errors[ec.message()];
      } else if (now >= from_ && now < to_) {
        ++result_.in_window;
      }
      // A failed write never completes: -1, which the driver ranks above every latency.
      if (at >= from_ && at < to_)
        result_.latency_us.push_back(ec ? -1 : elapsed_ns(at, now) / 1000);
      last = ++completed_ == total_ && all_issued_;
    }
    if (last) finish();
  }

  void finish() { finished_(std::move(result_)); }

  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  std::chrono::duration<double> interval_;
  clock::time_point start_, from_, to_;
  std::uint64_t total_;
  std::uint64_t salt_;
  issue_fn issue_;
  std::function<void(load_result)> finished_;
  std::uint64_t next_ = 0;  // on the strand
  std::mutex mutex_;
  std::uint64_t completed_ = 0;
  bool all_issued_ = false;
  load_result result_;
};

// --- node process --------------------------------------------------------------------------

int node_main(int argc, char** argv) {
  if (argc < 7) die("usage: bench_cluster node NAME MOUNT PORT MEMBER_PORTS LITEFS_HTTP_PORT");
  const std::string name = argv[2];
  const std::filesystem::path mount = argv[3];
  const auto port = static_cast<std::uint16_t>(std::stoi(argv[4]));
  const auto litefs_http = static_cast<std::uint16_t>(std::stoi(argv[6]));
  const bool simulated = litefs_http == 0;
  // The simulation's VFS shim acts on every directory holding `.lag`: never on real LiteFS.
  if (simulated) fwd_sim::install_vfs();

  boost::asio::io_context io;
  const auto loopback = boost::asio::ip::make_address("127.0.0.1");
  std::vector<endpoint> members;
  for (auto p : parse_list(argv[5])) members.emplace_back(loopback, static_cast<std::uint16_t>(p));

  fwd::node_options options;
  options.listen = {loopback, port};
  options.members = fwd::static_members(members);
  options.database = mount / db_name;
  options.secret = secret;
  options.litefs_hostname = name;
  options.name = name;
  if (simulated) {
    options.require_fuse = false;  // the simulation's mounts are plain directories
  } else {
    options.litefs_http = endpoint(loopback, litefs_http);  // follows LiteFS's /events
  }
  // The simulation replicates by copying the database, not page by page as LiteFS does:
  // waiting for it after every forwarded write measures that copy. See bench/README.md.
  // On LiteFS too, so that both measure the same calls.
  options.read_your_writes = false;
  options.write.on_open = [](fwd::sqlite::connection& c) { c.exec("PRAGMA synchronous=NORMAL"); };
  fwd::node node(io.get_executor(), options);
  node.define(insert_row, insert);

  node.registry().define(
      run_load, [&node, &io](double rate, std::int64_t start_ns, std::int64_t warmup_ms,
                             std::int64_t window_ms, std::int64_t salt, std::int64_t durable_replicas,
                             fwd::rpc::result_handler<std::vector<std::int64_t>> done) {
        const auto durability =
            fwd::durability::replicas(static_cast<std::uint16_t>(durable_replicas));
        auto issue = [&node, durability](std::string key, std::int64_t v, clock::time_point due,
                                         open_loop::done_fn finished) {
          fwd::forward_options o;
          o.deadline = due + call_deadline;
          o.durability = durability;
          node.async_call(o, insert_row, std::move(key), v,
                          [finished = std::move(finished)](boost::system::error_code ec,
                                                           std::int64_t) { finished(ec); });
        };
        auto report = [done](load_result r) {
          for (const auto& [message, n] : r.errors)
            std::fprintf(stderr, "bench_cluster node: %" PRId64 " write(s) failed: %s\n", n,
                         message.c_str());
          std::vector<std::int64_t> out{r.issued, r.in_window, r.failed};
          out.insert(out.end(), r.latency_us.begin(), r.latency_us.end());
          done({}, std::move(out));
        };
        if (rate <= 0) return report({});
        std::make_shared<open_loop>(io.get_executor(), rate,
                                    clock::time_point(std::chrono::nanoseconds(start_ns)),
                                    std::chrono::milliseconds(warmup_ms),
                                    std::chrono::milliseconds(window_ms),
                                    static_cast<std::uint64_t>(salt), std::move(issue),
                                    std::move(report))
            ->start();
      });

  try {
    node.start();
  } catch (const std::exception& e) {
    die("node " + name + " cannot start: " + e.what());
  }
  std::printf("READY %u\n", static_cast<unsigned>(node.local_endpoint().port()));
  std::fflush(stdout);

  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](boost::system::error_code, int) {
    node.stop();
    io.stop();
  });
  std::thread second([&io] { io.run(); });  // two io threads, as a service would run
  io.run();
  second.join();
  return 0;
}

// --- driver --------------------------------------------------------------------------------

struct measurement {
  double offered = 0;  // writes/s
  double achieved = 0;
  double p50_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0;
  std::int64_t failed = 0;
  double rows_per_commit = 0;
};

/// Nearest-rank percentile of `ok` (sorted latencies of the writes that succeeded) among
/// `total` writes, the `total - ok.size()` failed ones ranked above every latency: infinite
/// when the rank falls on a failed write (the write never completed).
double percentile(const std::vector<std::int64_t>& ok, std::size_t total, double q) {
  if (total == 0) return 0;
  auto i = static_cast<std::size_t>(q * static_cast<double>(total) + 0.999999);
  i = std::min(total, std::max<std::size_t>(i, 1));
  if (i > ok.size()) return std::numeric_limits<double>::infinity();
  return static_cast<double>(ok[i - 1]);
}

class driver {
 public:
  driver(bool real_litefs, clock::duration warmup, clock::duration window)
      : warmup_(warmup), window_(window) {
    if (real_litefs) {
      fs_ = std::make_unique<fwd_test::litefs_cluster>(fwd_test::litefs_cluster_options{
          .nodes = node_count, .lease = fwd_test::lease_kind::static_lease});
      fs_->start_all();
      fwd::sqlite::connection db((fs_->mount(0) / db_name).string());
      db.exec("PRAGMA journal_mode=WAL");
      db.exec(schema);
    } else {
      sim_ = std::make_unique<fwd_sim::cluster>(sim_options());
      fwd::sqlite::connection db(sim_->database_path(0).string());
      db.exec(schema);
    }
    if (sim_) sim_->replicate_now();
    if (!wait_until([this] { return caught_up(); }, std::chrono::seconds(30)))
      die("the replicas did not receive the schema within 30 s");

    std::vector<unsigned short> ports;
    std::string list;
    for (int i = 0; i < node_count; ++i) {
      ports.push_back(free_loopback_port());
      list += (i ? "," : "") + std::to_string(ports.back());
    }
    for (std::size_t i = 0; i < node_count; ++i) {
      nodes_.push_back(std::make_unique<child_process>(std::vector<std::string>{
          "node", hostname(i), mount(i).string(), std::to_string(ports[i]), list,
          std::to_string(fs_ ? fs_->http_port(i) : 0)}));
      endpoints_.emplace_back(boost::asio::ip::make_address("127.0.0.1"), ports[i]);
    }
    for (auto& n : nodes_) n->wait_ready();
    // Every commit is shipped to both replicas as soon as the replicator gets to it, so
    // replicas report positions and replicas(1) can be met.
    if (sim_) sim_->start_replication(std::chrono::milliseconds(0));

    fwd::rpc::client_options o;
    o.secret = secret;
    client_ = std::make_unique<fwd::rpc::client>(io_.get_executor(), o);
    io_thread_ = std::thread([this] { io_.run(); });
  }

  ~driver() {
    if (sim_) sim_->stop_replication();
    client_->close();
    work_.reset();
    io_.stop();
    io_thread_.join();
  }

  /// `offered` writes/s in total, a third on each node, each node's schedule shifted by a
  /// third of its interval so that the nodes' writes interleave.
  measurement run(double offered, std::int64_t durable_replicas, std::uint64_t salt,
                  const std::string& what) {
    return run(offered, durable_replicas, salt, warmup_, window_, what);
  }

  measurement run(double offered, std::int64_t durable_replicas, std::uint64_t salt,
                  clock::duration warmup, clock::duration window, const std::string& what) {
    reset_table();
    const std::uint64_t before = txid(0);
    const double per_node = offered / node_count;
    const auto start = clock::now() + std::chrono::milliseconds(50);
    std::vector<std::future<std::vector<std::int64_t>>> replies;
    for (std::size_t i = 0; i < node_count; ++i) {
      auto promise = std::make_shared<std::promise<std::vector<std::int64_t>>>();
      replies.push_back(promise->get_future());
      const auto node_start =
          start + std::chrono::duration_cast<clock::duration>(
                      std::chrono::duration<double>(static_cast<double>(i) / offered));
      fwd::rpc::call_options o;
      o.deadline = start + warmup + window + std::chrono::seconds(60);
      client_->async_call(
          endpoints_[i], o, run_load, per_node,
          std::int64_t{std::chrono::duration_cast<std::chrono::nanoseconds>(
                           node_start.time_since_epoch())
                           .count()},
          std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(warmup).count()},
          std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(window).count()},
          static_cast<std::int64_t>(salt * node_count + i), durable_replicas,
          [promise](boost::system::error_code ec, std::vector<std::int64_t> r) {
            if (ec) {
              promise->set_exception(std::make_exception_ptr(fwd::error(ec, "bench.cluster.load")));
            } else {
              promise->set_value(std::move(r));
            }
          });
    }
    load_result total;
    for (auto& f : replies) {
      std::vector<std::int64_t> r;
      try {
        r = f.get();
      } catch (const std::exception& e) {
        die(what + ": the load call failed: " + e.what());
      }
      if (r.size() < 3) die(what + ": a malformed load report");
      total.issued += r[0];
      total.in_window += r[1];
      total.failed += r[2];
      total.latency_us.insert(total.latency_us.end(), r.begin() + 3, r.end());
    }
    const std::uint64_t after = txid(0);

    measurement m;
    m.offered = offered;
    m.achieved =
        static_cast<double>(total.in_window) / std::chrono::duration<double>(window).count();
    const std::size_t samples = total.latency_us.size();
    std::vector<std::int64_t> ok;
    ok.reserve(samples);
    for (auto us : total.latency_us)
      if (us >= 0) ok.push_back(us);
    std::sort(ok.begin(), ok.end());
    m.p50_ms = percentile(ok, samples, 0.50) / 1000.0;
    m.p99_ms = percentile(ok, samples, 0.99) / 1000.0;
    m.p999_ms = percentile(ok, samples, 0.999) / 1000.0;
    m.max_ms = ok.empty() ? 0 : static_cast<double>(ok.back()) / 1000.0;
    m.failed = total.failed;
    m.rows_per_commit = after > before ? static_cast<double>(total.issued - total.failed) /
                                             static_cast<double>(after - before)
                                       : 0;
    std::fprintf(stderr,
                 "bench_cluster: %s: %.0f writes/s offered, %.0f achieved, p50 %.3f ms, p99 %.3f "
                 "ms, p999 %.3f ms, %" PRId64 " failed, %zu samples\n",
                 what.c_str(), m.offered, m.achieved, m.p50_ms, m.p99_ms, m.p999_ms, m.failed,
                 samples);
    return m;
  }

 private:
  /// Every run starts from an empty table in a compacted database that every replica
  /// has, so no run pays for the rows a heavier one left (a deeper index, more pages per
  /// commit). On real LiteFS only the catching up: its runs go on from the last one's rows.
  void reset_table() {
    if (sim_) {
      fwd::sqlite::connection db(sim_->database_path(0).string());
      db.exec("PRAGMA busy_timeout=10000");
      db.exec("DELETE FROM t");
      db.exec("VACUUM");
    }
    if (!wait_until([this] { return caught_up(); }, std::chrono::seconds(30)))
      die("the replicas did not catch up with the primary within 30 s");
  }

  std::filesystem::path mount(std::size_t i) const { return sim_ ? sim_->mount(i) : fs_->mount(i); }
  std::string hostname(std::size_t i) const { return sim_ ? sim_->hostname(i) : fs_->hostname(i); }
  /// Node i's TXID, from `<db>-pos` (0 while unreadable).
  std::uint64_t txid(std::size_t i) const {
    boost::system::error_code ec;
    const auto p = fwd::litefs::read_position(mount(i), db_name, ec);
    return ec ? 0 : p.txid;
  }
  bool caught_up() const {
    const auto p = txid(0);
    for (std::size_t i = 1; i < node_count; ++i)
      if (txid(i) != p) return false;
    return p != 0;
  }

  static fwd_sim::cluster_options sim_options() {
    fwd_sim::cluster_options o;
    o.hostnames = {"node-a", "node-b", "node-c"};
    o.mode = fwd_sim::journal_mode::wal;
    return o;
  }

  clock::duration warmup_, window_;
  std::unique_ptr<fwd_sim::cluster> sim_;            // the simulation, or
  std::unique_ptr<fwd_test::litefs_cluster> fs_;     // real LiteFS
  std::vector<std::unique_ptr<child_process>> nodes_;
  std::vector<endpoint> endpoints_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{
      io_.get_executor()};
  std::unique_ptr<fwd::rpc::client> client_;
  std::thread io_thread_;
};

void emit_measurement(const std::string& suffix, const measurement& m) {
  emit("cluster.tput." + suffix, m.achieved, 0);
  emit("cluster.p50_ms." + suffix, m.p50_ms, 3);
  emit("cluster.p99_ms." + suffix, m.p99_ms, 3);
  emit("cluster.p999_ms." + suffix, m.p999_ms, 3);
  emit("cluster.max_ms." + suffix, m.max_ms, 3);
  emit("cluster.failed." + suffix, static_cast<double>(m.failed), 0);
  emit("cluster.rows_per_commit." + suffix, m.rows_per_commit, 1);
}

int driver_main(int argc, char** argv) {
  const bool real_litefs = argc > 1 && std::string(argv[1]) == "litefs";
  if (real_litefs) {
    --argc;
    ++argv;
    if (auto why = fwd_test::litefs_unavailable()) {
      std::fprintf(stderr, "bench_cluster: skipped, real LiteFS is unavailable: %s\n", why->c_str());
      return 0;
    }
  }
  const double window_s = seconds_arg(argc, argv, 1, 4.0);
  std::vector<long> loads = argc > 2 ? parse_list(argv[2]) : std::vector<long>{1000, 2000, 5000, 10000, 20000};
  std::sort(loads.begin(), loads.end());
  if (loads.empty() || loads.front() <= 0) die("loads must be positive writes/s, e.g. 1000,5000");
  if (!real_litefs) fwd_sim::install_vfs();  // the driver writes the primary's database too
  std::fprintf(stderr, "bench_cluster: 3 nodes on %s, WAL, synchronous=NORMAL, %.1f s windows\n",
               real_litefs ? "real LiteFS" : "the simulation", window_s * seconds_scale());
  driver d(real_litefs, window(0.5), window(window_s));
  // Discovery, connections, the primary's writer and the replicas' reports come up before
  // anything is measured.
  d.run(300, 0, 1, window(0.2), window(0.5), "warm-up none()");
  d.run(300, 1, 2, window(0.2), window(0.5), "warm-up replicas(1)");

  std::uint64_t salt = 10;
  for (std::size_t i = 0; i < loads.size(); ++i) {
    // The order of the two settings turns with each load, so that neither always runs on
    // the larger database or right after the heavier run.
    for (int k = 0; k < 2; ++k) {
      const std::int64_t replicas = (static_cast<int>(i) + k) % 2;
      const std::string setting = replicas ? "replicas1" : "none";
      const std::string suffix = std::to_string(loads[i]) + "." + setting;
      emit_measurement(suffix, d.run(static_cast<double>(loads[i]), replicas, salt++, suffix));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc > 1 && std::string(argv[1]) == "node") return node_main(argc, argv);
    return driver_main(argc, argv);
  } catch (const std::exception& e) {
    die(std::string("bench_cluster: ") + e.what());
  }
}
