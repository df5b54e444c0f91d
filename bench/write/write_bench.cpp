// fwd's write path: single-row inserts into a small indexed table, forwarded from two
// replica processes to the primary process (fwd::node over the LiteFS simulation, three
// nodes on 127.0.0.1), against the same inserts on the primary, one transaction each, and
// on the primary with group commit. Then, with the simulation replicating every commit,
// the forwarded inserts with durability none() and replicas(1) side by side: what waiting
// for a replica's report costs.
//
//   bench_write [rounds] [window s]   the driver: builds the simulated cluster (WAL), starts
//                                     three node processes (itself, re-executed with `node`),
//                                     measures every system in interleaved rounds and prints
//                                     BENCH lines (write.*)
//   bench_write node NAME MOUNT PORT MEMBER_PORTS
//                                     one fwd::node; serves bench.write.insert and the load
//                                     generator bench.write.load; prints "READY <port>"
//
// Every system runs the same insert function (the service's own `R fn(sqlite3*, ...)`)
// through fwd's write executor, so each write also records its request id in the dedup
// table, as every fwd write does. The journal mode is WAL and `synchronous` is NORMAL on
// every connection (FWD_BENCH_WRITE_SYNC=FULL|NORMAL|OFF overrides it): see bench/README.md.
#include <sqlite3.h>
#include <sys/prctl.h>

#include <algorithm>
#include <cmath>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <cinttypes>
#include <csignal>
#include <future>
#include <fwd/node.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/sqlite/transaction.hpp>
#include <fwd/write/executor.hpp>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../common/bench_support.hpp"
#include "litefs_sim.hpp"

namespace {

using namespace fwd_bench;
using endpoint = boost::asio::ip::tcp::endpoint;

/// Inserts one row (k, v) into t; returns its rowid.
inline const fwd::procedure<std::int64_t(std::string, std::int64_t)> insert_row{
    "bench.write.insert"};

/// Runs a load on the node it is sent to: (callers, warm-up ms, window ms, key salt,
/// replicas the primary waits for: fwd::durability::replicas(n), 0 for none()) ->
/// [calls issued, completed in the window, failed, latency of each call started in the
/// window in microseconds...]. Each caller issues its next insert when the previous completes.
inline const fwd::procedure<std::vector<std::int64_t>(std::int64_t, std::int64_t, std::int64_t,
                                                      std::int64_t, std::int64_t)>
    run_load{"bench.write.load"};

constexpr const char* secret = "bench-write-secret-of-32-bytes-or-more";
constexpr int total_callers = 64;

const char* schema =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER);"
    "CREATE INDEX t_k ON t(k);";

/// The service's writer, as a user would write it.
std::int64_t insert(sqlite3* db, const std::string& k, std::int64_t v) {
  auto c = fwd::sqlite::connection::borrow(db);
  c.prepare("INSERT INTO t(k, v) VALUES (?1, ?2)").bind(1, k).bind(2, v).execute();
  return c.last_insert_rowid();
}

/// The `synchronous` setting of every writer connection.
std::string synchronous_setting() {
  const char* s = std::getenv("FWD_BENCH_WRITE_SYNC");
  if (s == nullptr || *s == '\0') return "NORMAL";
  const std::string v = s;
  if (v != "FULL" && v != "NORMAL" && v != "OFF" && v != "EXTRA")
    die("FWD_BENCH_WRITE_SYNC must be FULL, NORMAL, OFF or EXTRA (got " + v + ")");
  return v;
}

std::function<void(fwd::sqlite::connection&)> configure_connection() {
  return [sync = synchronous_setting()](fwd::sqlite::connection& c) {
    c.exec("PRAGMA synchronous=" + sync);
  };
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
  std::string first_error;
};

/**
 * `callers` concurrent callers, each issuing its next insert from the completion of its
 * previous one, until the window ends. Calls completing inside the window count towards
 * throughput; calls started inside it give the latencies. Completions may run on several
 * threads (the mutex).
 */
class load_generator : public std::enable_shared_from_this<load_generator> {
 public:
  using done_fn = std::function<void(boost::system::error_code)>;
  using issue_fn = std::function<void(std::string key, std::int64_t v, done_fn done)>;

  load_generator(int callers, clock::duration warmup, clock::duration window, std::uint64_t salt,
                 issue_fn issue, std::function<void(load_result)> finished)
      : callers_(callers),
        warmup_(warmup),
        window_(window),
        salt_(salt),
        issue_(std::move(issue)),
        finished_(std::move(finished)) {}

  void start() {
    from_ = clock::now() + warmup_;
    to_ = from_ + window_;
    active_ = callers_;
    result_.latency_us.reserve(1 << 16);
    for (int i = 0; i < callers_; ++i) issue_one();
  }

 private:
  void issue_one() {
    std::uint64_t n;
    {
      std::lock_guard lock(mutex_);
      n = next_++;
      ++result_.issued;
    }
    char key[24];
    std::snprintf(key, sizeof key, "k%016" PRIx64, splitmix64(salt_ << 40 ^ n));
    const auto started = clock::now();
    issue_(key, static_cast<std::int64_t>(n),
           [self = shared_from_this(), started](boost::system::error_code ec) {
             self->completed(started, ec);
           });
  }

  void completed(clock::time_point started, boost::system::error_code ec) {
    const auto now = clock::now();
    bool more = false;
    bool last = false;
    {
      std::lock_guard lock(mutex_);
      if (ec) {
        ++result_.failed;
        if (result_.first_error.empty()) result_.first_error = ec.message();
      } else {
        if (now >= from_ && now < to_) ++result_.in_window;
        if (started >= from_ && started < to_)
          result_.latency_us.push_back(elapsed_ns(started, now) / 1000);
      }
      more = now < to_;
      if (!more) last = --active_ == 0;
    }
    if (more) {
      issue_one();
    } else if (last) {
      finished_(std::move(result_));
    }
  }

  int callers_;
  clock::duration warmup_, window_;
  std::uint64_t salt_;
  issue_fn issue_;
  std::function<void(load_result)> finished_;
  clock::time_point from_, to_;
  std::mutex mutex_;
  int active_ = 0;
  std::uint64_t next_ = 0;
  load_result result_;
};

// --- read-your-writes on replicas ----------------------------------------------------------

/// bench.write.load with read-your-writes chosen per call: (callers, warm-up ms, window ms,
/// key salt, read_your_writes 0/1) -> the same report. With it on, each forwarded insert
/// completes once this replica's LiteFS position has reached the primary's commit (and
/// the replica holds the write), as with fwd's default options.
inline const fwd::procedure<std::vector<std::int64_t>(std::int64_t, std::int64_t, std::int64_t,
                                                      std::int64_t, std::int64_t)>
    run_load_ryw{"bench.write.load_ryw"};

/// Runs `callers` inserts at a time through `node` for a warm-up and a window, each with
/// `options` and a 10 s deadline, then answers `done` with the load report: issued, in
/// the window, failed, then every latency in the window (us).
void run_insert_load(fwd::node& node, fwd::forward_options options, std::int64_t callers,
                     std::int64_t warmup_ms, std::int64_t window_ms, std::int64_t salt,
                     fwd::rpc::result_handler<std::vector<std::int64_t>> done) {
  auto issue = [&node, options](std::string key, std::int64_t v, load_generator::done_fn finished) {
    fwd::forward_options o = options;
    o.deadline = clock::now() + std::chrono::seconds(10);
    node.async_call(o, insert_row, std::move(key), v,
                    [finished = std::move(finished)](boost::system::error_code ec, std::int64_t) {
                      finished(ec);
                    });
  };
  auto report = [done = std::move(done)](load_result r) {
    if (r.failed > 0) std::fprintf(stderr, "bench_write node: %s\n", r.first_error.c_str());
    std::vector<std::int64_t> out{r.issued, r.in_window, r.failed};
    out.insert(out.end(), r.latency_us.begin(), r.latency_us.end());
    done({}, std::move(out));
  };
  std::make_shared<load_generator>(static_cast<int>(callers), std::chrono::milliseconds(warmup_ms),
                                   std::chrono::milliseconds(window_ms), static_cast<std::uint64_t>(salt),
                                   std::move(issue), std::move(report))
      ->start();
}

void define_ryw_load(fwd::node& node) {
  node.registry().define(
      run_load_ryw,
      [&node](std::int64_t callers, std::int64_t warmup_ms, std::int64_t window_ms,
              std::int64_t salt, std::int64_t ryw,
              fwd::rpc::result_handler<std::vector<std::int64_t>> done) {
        fwd::forward_options o;
        o.read_your_writes = ryw != 0;
        run_insert_load(node, o, callers, warmup_ms, window_ms, salt, std::move(done));
      });
}

// --- node process --------------------------------------------------------------------------

std::vector<std::uint16_t> parse_ports(const std::string& text) {
  std::vector<std::uint16_t> out;
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t comma = text.find(',', at);
    const std::string part =
        text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    out.push_back(static_cast<std::uint16_t>(std::stoi(part)));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

int node_main(int argc, char** argv) {
  if (argc < 6) die("usage: bench_write node NAME MOUNT PORT MEMBER_PORTS");
  prctl(PR_SET_PDEATHSIG, SIGKILL);  // an interrupted run leaves no node behind
  const std::string name = argv[2];
  const std::filesystem::path mount = argv[3];
  const auto port = static_cast<std::uint16_t>(std::stoi(argv[4]));
  fwd_sim::install_vfs();

  boost::asio::io_context io;
  const auto loopback = boost::asio::ip::make_address("127.0.0.1");
  std::vector<endpoint> members;
  for (auto p : parse_ports(argv[5])) members.emplace_back(loopback, p);

  fwd::node_options options;
  options.listen = {loopback, port};
  options.members = fwd::static_members(members);
  options.database = mount / "app.db";
  options.secret = secret;
  options.litefs_hostname = name;
  options.name = name;
  options.require_fuse = false;  // the simulation's mounts are plain directories
  // Off for the systems measured while the simulation does not replicate (a forwarded
  // call would wait for a shipment that never comes); bench.write.load_ryw turns it on per
  // call, as users run it. See bench/README.md.
  options.read_your_writes = false;
  options.write.on_open = configure_connection();
  fwd::node node(io.get_executor(), options);
  node.define(insert_row, insert);

  node.registry().define(
      run_load,
      [&node](std::int64_t callers, std::int64_t warmup_ms, std::int64_t window_ms,
              std::int64_t salt, std::int64_t durable_replicas,
              fwd::rpc::result_handler<std::vector<std::int64_t>> done) {
        const auto durability = fwd::durability::replicas(static_cast<std::uint16_t>(durable_replicas));
        fwd::forward_options o;
        o.durability = durability;
        run_insert_load(node, o, callers, warmup_ms, window_ms, salt, std::move(done));
      });

  define_ryw_load(node);

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
  double rows_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double rows_per_commit = 0;
};

measurement summarise_load(const load_result& r, clock::duration window, std::uint64_t commits,
                           const std::string& system) {
  if (r.failed > 0)
    die(system + ": " + std::to_string(r.failed) + " write(s) failed: " + r.first_error);
  measurement m;
  const auto lat = summarise([&] {
    std::vector<std::int64_t> ns;
    ns.reserve(r.latency_us.size());
    for (auto us : r.latency_us) ns.push_back(us * 1000);
    return ns;
  }());
  m.rows_per_s = static_cast<double>(r.in_window) / std::chrono::duration<double>(window).count();
  m.p50_ms = lat.p50_us / 1000.0;
  m.p99_ms = lat.p99_us / 1000.0;
  m.rows_per_commit =
      commits > 0 ? static_cast<double>(r.issued) / static_cast<double>(commits) : 0;
  return m;
}

/// One caller's figures (rows/s, p50, p99), for the sequential runs.
void emit_measurement_1(const std::string& system, const measurement& m) {
  emit("write.tput." + system + ".1", m.rows_per_s, 0);
  emit("write.p50_ms." + system + ".1", m.p50_ms, 3);
  emit("write.p99_ms." + system + ".1", m.p99_ms, 3);
}

void emit_measurement(const std::string& system, const measurement& m) {
  const std::string n = "." + std::to_string(total_callers);
  emit("write.tput." + system + n, m.rows_per_s, 0);
  emit("write.p50_ms." + system + n, m.p50_ms, 3);
  emit("write.p99_ms." + system + n, m.p99_ms, 3);
  emit("write.rows_per_commit." + system + n, m.rows_per_commit, 1);
}

/// Inserts rows into t on `db`, `batch` per transaction (BEGIN IMMEDIATE, one prepared
/// INSERT per row, COMMIT), back to back until the window ends: rows per second committed
/// in the window.
double insert_in_batches(fwd::sqlite::connection& db, std::size_t batch, std::uint64_t salt,
                         clock::duration warmup, clock::duration window) {
  auto stmt = db.prepare("INSERT INTO t(k, v) VALUES (?1, ?2)");
  const auto from = clock::now() + warmup;
  const auto to = from + window;
  std::int64_t rows = 0;
  for (std::uint64_t n = 0;;) {
    db.exec("BEGIN IMMEDIATE");
    for (std::size_t i = 0; i < batch; ++i, ++n) {
      char key[24];
      std::snprintf(key, sizeof key, "k%016" PRIx64, splitmix64(salt << 40 ^ n));
      stmt.reset().bind(1, std::string_view(key)).bind(2, static_cast<std::int64_t>(n)).execute();
    }
    db.exec("COMMIT");
    const auto now = clock::now();
    if (now >= to) break;
    if (now >= from) rows += static_cast<std::int64_t>(batch);
  }
  return static_cast<double>(rows) / std::chrono::duration<double>(window).count();
}

/// The completion of one load call on a replica: its report, or its failure, in `promise`.
auto load_completion(std::shared_ptr<std::promise<std::vector<std::int64_t>>> promise,
                     const char* procedure) {
  return [promise = std::move(promise), procedure](boost::system::error_code ec,
                                                   std::vector<std::int64_t> r) {
    if (ec) {
      promise->set_exception(std::make_exception_ptr(fwd::error(ec, procedure)));
    } else {
      promise->set_value(std::move(r));
    }
  };
}

class driver {
 public:
  driver(double window_s) : warmup_(window(0.3)), window_(window(window_s)), sim_(sim_options()) {
    {
      fwd::sqlite::connection db(sim_.database_path(0).string());
      db.exec(schema);
    }
    sim_.replicate_now();  // the replicas get the schema; later commits stay on the primary

    std::vector<std::uint16_t> ports;
    std::string list;
    for (int i = 0; i < 3; ++i) {
      ports.push_back(free_loopback_port());
      list += (i ? "," : "") + std::to_string(ports.back());
    }
    for (std::size_t i = 0; i < 3; ++i) {
      // This program again, as `node ...` (node_main); killed when the driver ends.
      nodes_.push_back(std::make_unique<child_process>(std::vector<std::string>{
          "node", sim_.hostname(i), sim_.mount(i).string(), std::to_string(ports[i]), list}));
    }
    for (auto& n : nodes_) n->wait_ready();
    replicas_ = {endpoint(boost::asio::ip::make_address("127.0.0.1"), ports[1]),
                 endpoint(boost::asio::ip::make_address("127.0.0.1"), ports[2])};
    primary_ = endpoint(boost::asio::ip::make_address("127.0.0.1"), ports[0]);

    fwd::rpc::client_options o;
    o.secret = secret;
    client_ = std::make_unique<fwd::rpc::client>(io_.get_executor(), o);
    io_thread_ = std::thread([this] { io_.run(); });
  }

  ~driver() {
    client_->close();
    work_.reset();
    io_.stop();
    io_thread_.join();
  }

  /// 64 callers, half on each replica: every insert forwarded to the primary, which
  /// acknowledges it once `durable_replicas` replicas have reported it (0: at its commit).
  measurement forwarded(std::uint64_t salt, clock::duration warmup, std::int64_t durable_replicas = 0,
                        const std::string& system = "forwarded") {
    const std::uint64_t before = sim_.position(0).txid;
    std::vector<std::future<std::vector<std::int64_t>>> replies;
    for (std::size_t i = 0; i < replicas_.size(); ++i) {
      auto promise = std::make_shared<std::promise<std::vector<std::int64_t>>>();
      replies.push_back(promise->get_future());
      fwd::rpc::call_options o;
      o.deadline = clock::now() + warmup + window_ + std::chrono::seconds(30);
      client_->async_call(
          replicas_[i], o, run_load, std::int64_t{total_callers / 2},
          std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(warmup).count()},
          std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(window_).count()},
          static_cast<std::int64_t>(salt * 2 + i), durable_replicas,
          load_completion(promise, "bench.write.load"));
    }
    return summarise_replies(replies, before, system);
  }

  /// The replicas' load reports summed: issued, in the window, failed, then latencies (us).
  measurement summarise_replies(std::vector<std::future<std::vector<std::int64_t>>>& replies,
                                std::uint64_t before, const std::string& system) {
    load_result total;
    for (auto& f : replies) {
      std::vector<std::int64_t> r;
      try {
        r = f.get();
      } catch (const std::exception& e) {
        die(system + ": the load call failed: " + e.what());
      }
      if (r.size() < 3) die(system + ": a malformed load report");
      total.issued += r[0];
      total.in_window += r[1];
      total.failed += r[2];
      if (r[2] > 0) total.first_error = "see the node's stderr";
      total.latency_us.insert(total.latency_us.end(), r.begin() + 3, r.end());
    }
    const std::uint64_t after = sim_.position(0).txid;
    return summarise_load(total, window_, after - before, system);
  }

  /// 64 callers, half on each replica, through bench.write.load_ryw: forwarded inserts
  /// with read-your-writes on or off (the simulation must be replicating for `ryw`).
  measurement forwarded_ryw(std::uint64_t salt, clock::duration warmup, bool ryw,
                            const std::string& system) {
    const std::uint64_t before = sim_.position(0).txid;
    std::vector<std::future<std::vector<std::int64_t>>> replies;
    for (std::size_t i = 0; i < replicas_.size(); ++i) {
      auto promise = std::make_shared<std::promise<std::vector<std::int64_t>>>();
      replies.push_back(promise->get_future());
      fwd::rpc::call_options o;
      o.deadline = clock::now() + warmup + window_ + std::chrono::seconds(30);
      client_->async_call(
          replicas_[i], o, run_load_ryw, std::int64_t{total_callers / 2},
          std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(warmup).count()},
          std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(window_).count()},
          static_cast<std::int64_t>(salt * 2 + i), std::int64_t{ryw ? 1 : 0},
          load_completion(promise, "bench.write.load_ryw"));
    }
    return summarise_replies(replies, before, system);
  }

  /// What the simulation's replication has shipped so far.
  fwd_sim::replication_stats replication_stats() const { return sim_.stats(); }

  /// The simulation ships each commit to both replicas (by transaction, see
  /// bench/README.md) from now on, or no more. Turned on, it returns once both replicas
  /// hold the primary's position: the commits made while it was off (tens of thousands)
  /// are shipped before any load is measured, as in a cluster whose replicas are
  /// connected, and not inside the first durable calls' deadlines.
  void replicate(bool on) {
    if (!on) {
      sim_.stop_replication();
      return;
    }
    sim_.start_replication(std::chrono::milliseconds(0));
    const auto give_up = clock::now() + std::chrono::seconds(120);
    for (;;) {
      const auto head = sim_.position(0);
      bool caught_up = true;
      for (std::size_t i = 1; i < sim_.size(); ++i) caught_up = caught_up && sim_.position(i) == head;
      if (caught_up) return;
      if (clock::now() > give_up)
        die("the simulation's replicas did not catch up with the primary within 120 s of replication "
            "starting (see fwd_sim's messages above)");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polled: the positions are files
    }
  }

  /// 64 callers in this process on the primary's database, through a write executor of
  /// their own: `max_batch` 1 is one transaction per insert, the default is group commit.
  measurement local(std::size_t max_batch, std::uint64_t salt, const std::string& system) {
    boost::asio::io_context io;
    auto work = boost::asio::make_work_guard(io);
    fwd::sqlite::write_options o;
    if (max_batch > 0) o.max_batch = max_batch;
    o.on_open = configure_connection();
    o.position_after_commit = [mount = sim_.mount(0)] {
      return fwd::litefs::read_position(mount, "app.db");
    };
    fwd::sqlite::write_executor writer(io.get_executor(), sim_.database_path(0).string(), o);
    const std::uint64_t before = sim_.position(0).txid;
    std::promise<load_result> finished;
    auto issue = [&writer](std::string key, std::int64_t v, load_generator::done_fn done) {
      writer.async_write(
          fwd::make_request_id(),
          [key = std::move(key), v](sqlite3* db) {
            const std::int64_t id = insert(db, key, v);
            return std::string(reinterpret_cast<const char*>(&id), sizeof id);
          },
          [done = std::move(done)](boost::system::error_code ec, std::string, fwd::litefs::position) {
            done(ec);
          });
    };
    auto generator = std::make_shared<load_generator>(
        total_callers, warmup_, window_, salt, std::move(issue),
        [&finished](load_result r) { finished.set_value(std::move(r)); });
    boost::asio::post(io, [generator] { generator->start(); });
    std::thread runner([&io] { io.run(); });
    load_result r = finished.get_future().get();
    work.reset();
    runner.join();
    writer.stop();
    const std::uint64_t after = sim_.position(0).txid;
    return summarise_load(r, window_, after - before, system);
  }

  /// For scale: plain SQLite, one connection and one thread inserting back to back, one
  /// transaction per insert (BEGIN IMMEDIATE, a prepared INSERT, COMMIT), no dedup row, no
  /// executor: the most a single-transaction writer gets from this database and machine.
  double plain_sqlite_rows_per_s(std::uint64_t salt) {
    fwd::sqlite::connection db(sim_.database_path(0).string());
    configure_connection()(db);
    auto stmt = db.prepare("INSERT INTO t(k, v) VALUES (?1, ?2)");
    const auto from = clock::now() + warmup_;
    const auto to = from + window_;
    std::int64_t rows = 0;
    for (std::uint64_t n = 0;; ++n) {
      char key[24];
      std::snprintf(key, sizeof key, "k%016" PRIx64, splitmix64(salt << 40 ^ n));
      db.exec("BEGIN IMMEDIATE");
      stmt.reset().bind(1, std::string_view(key)).bind(2, static_cast<std::int64_t>(n)).execute();
      db.exec("COMMIT");
      const auto now = clock::now();
      if (now >= to) break;
      if (now >= from) ++rows;
    }
    return static_cast<double>(rows) / std::chrono::duration<double>(window_).count();
  }

  clock::duration warmup() const { return warmup_; }

  /// The limit of group commit: plain SQLite on the primary's database (same table,
  /// indexes and VFS as fwd's writer), one connection and one thread, `batch` prepared
  /// inserts per BEGIN IMMEDIATE ... COMMIT, back to back; no dedup row, no executor.
  double raw_batches_rows_per_s(std::size_t batch, std::uint64_t salt) {
    fwd::sqlite::connection db(sim_.database_path(0).string());
    configure_connection()(db);
    return insert_in_batches(db, std::max<std::size_t>(batch, 1), salt, warmup_, window_);
  }

  /// One caller on node `node` (0 is the primary: the write runs there through fwd, not
  /// forwarded), one insert at a time through fwd::node, durability none().
  measurement sequential(std::size_t node, std::uint64_t salt, const std::string& system) {
    auto promise = std::make_shared<std::promise<std::vector<std::int64_t>>>();
    auto reply = promise->get_future();
    fwd::rpc::call_options o;
    o.deadline = clock::now() + warmup_ + window_ + std::chrono::seconds(30);
    client_->async_call(
        node == 0 ? primary_ : replicas_.at(node - 1), o, run_load, std::int64_t{1},
        std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(warmup_).count()},
        std::int64_t{std::chrono::duration_cast<std::chrono::milliseconds>(window_).count()},
        static_cast<std::int64_t>(salt), std::int64_t{0},
        [promise](boost::system::error_code ec, std::vector<std::int64_t> r) {
          if (ec) {
            promise->set_exception(std::make_exception_ptr(fwd::error(ec, "bench.write.load")));
          } else {
            promise->set_value(std::move(r));
          }
        });
    std::vector<std::int64_t> r;
    try {
      r = reply.get();
    } catch (const std::exception& e) {
      die(system + ": the load call failed: " + e.what());
    }
    if (r.size() < 3) die(system + ": a malformed load report");
    load_result total;
    total.issued = r[0];
    total.in_window = r[1];
    total.failed = r[2];
    if (r[2] > 0) total.first_error = "see the node's stderr";
    total.latency_us.assign(r.begin() + 3, r.end());
    return summarise_load(total, window_, 0, system);
  }

  const std::filesystem::path& root() const noexcept { return sim_.root(); }

 private:
  static fwd_sim::cluster_options sim_options() {
    fwd_sim::cluster_options o;
    o.hostnames = {"node-a", "node-b", "node-c"};
    o.mode = fwd_sim::journal_mode::wal;
    return o;
  }

  clock::duration warmup_, window_;
  fwd_sim::cluster sim_;
  std::vector<std::unique_ptr<child_process>> nodes_;
  std::vector<endpoint> replicas_;
  endpoint primary_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{
      io_.get_executor()};
  std::unique_ptr<fwd::rpc::client> client_;
  std::thread io_thread_;
};

/// What the simulation's VFS shim costs plain SQLite: a database of its own in a directory
/// the shim takes for a primary's mount (it holds `.lag`), written with the shim (the
/// process's default VFS, as fwd's writer uses it) and with SQLite's own "unix" VFS.
class vfs_probe {
 public:
  explicit vfs_probe(const std::filesystem::path& root) : dir_(root / "vfs-probe") {
    std::filesystem::create_directories(dir_);
    fwd_sim::write_file_atomically(dir_ / ".lag", fwd_sim::format_lag(0));
    fwd::sqlite::connection db(path_.string());
    db.exec("PRAGMA journal_mode=WAL");
    db.exec(schema);
  }

  /// Rows per second inserted `batch` per transaction, through the shim or not.
  double rows_per_s(bool shim, std::size_t batch, std::uint64_t salt, clock::duration warmup,
                    clock::duration window) {
    fwd::sqlite::connection db =
        shim ? fwd::sqlite::connection(path_.string())
             : fwd::sqlite::connection("file:" + path_.string() + "?vfs=unix",
                                       fwd::sqlite::default_open_flags | SQLITE_OPEN_URI);
    configure_connection()(db);
    return insert_in_batches(db, batch, salt, warmup, window);
  }

 private:
  std::filesystem::path dir_;
  std::filesystem::path path_ = dir_ / "probe.db";
};

/// fwd's group commit on the primary beside plain SQLite committing the same rows in
/// batches of the size fwd's group commit reached in this round (`group_m`).
void emit_group_commit_limit(driver& d, const measurement& group_m, std::uint64_t salt) {
  const auto batch = static_cast<std::size_t>(std::max(1.0, std::round(group_m.rows_per_commit)));
  const double raw = d.raw_batches_rows_per_s(batch, salt);
  const std::string n = "." + std::to_string(total_callers);
  emit("write.tput.raw_batches" + n, raw, 0);
  emit("write.rows_per_commit.raw_batches" + n, static_cast<double>(batch), 0);
  if (raw > 0) emit("write.tput_ratio.group_commit_over_raw_batches" + n, group_m.rows_per_s / raw, 2);
}

/// One caller, one write at a time: on a replica (forwarded) and on the primary (the same
/// write through fwd, run there), in the order of the round.
void emit_sequential(driver& d, int round, std::uint64_t salt) {
  measurement forwarded_m, local_m;
  for (int k = 0; k < 2; ++k) {
    if ((round + k) % 2 == 0) {
      forwarded_m = d.sequential(1, salt + 1, "sequential_forwarded");
      emit_measurement_1("sequential_forwarded", forwarded_m);
    } else {
      local_m = d.sequential(0, salt + 2, "sequential_local");
      emit_measurement_1("sequential_local", local_m);
    }
  }
  if (local_m.p50_ms > 0)
    emit("write.p50_ratio.sequential_forwarded_over_local", forwarded_m.p50_ms / local_m.p50_ms, 2);
}

/// Plain SQLite with and without the simulation's VFS shim, one transaction per row and
/// 64 rows per transaction: the simulation's own cost, apart from fwd's.
void emit_vfs_cost(vfs_probe& probe, int round, std::uint64_t salt) {
  const auto w = window(1.0);
  const auto warm = window(0.2);
  for (const std::size_t batch : {std::size_t{1}, std::size_t{64}}) {
    double with = 0, without = 0;
    for (int k = 0; k < 2; ++k) {
      if ((round + k) % 2 == 0) {
        with = probe.rows_per_s(true, batch, salt + 2 * batch, warm, w);
      } else {
        without = probe.rows_per_s(false, batch, salt + 2 * batch + 1, warm, w);
      }
    }
    const std::string b = ".batch" + std::to_string(batch);
    emit("write.tput.plain_sqlite.sim_vfs" + b, with, 0);
    emit("write.tput.plain_sqlite.unix_vfs" + b, without, 0);
    if (without > 0) emit("write.tput_ratio.sim_vfs_over_unix_vfs" + b, with / without, 2);
  }
}

/// Read-your-writes on and off, the simulation replicating every commit to both replicas
/// (as LiteFS does, by transaction), in alternating order within each round.
void read_your_writes_rounds(driver& d, int rounds) {
  d.replicate(true);
  d.forwarded_ryw(3000, window(0.5), true, "forwarded_ryw");  // the replicas catch up
  const auto shipped_before = d.replication_stats();
  for (int round = 0; round < rounds; ++round) {
    measurement off_m, on_m;
    const std::uint64_t salt = 300 + static_cast<std::uint64_t>(round) * 4;
    for (int k = 0; k < 2; ++k) {
      if ((round + k) % 2 == 0) {
        off_m = d.forwarded_ryw(salt + 1, d.warmup(), false, "forwarded_ryw_off");
        emit_measurement("forwarded_ryw_off", off_m);
      } else {
        on_m = d.forwarded_ryw(salt + 2, d.warmup(), true, "forwarded_ryw");
        emit_measurement("forwarded_ryw", on_m);
      }
    }
    const std::string n = "." + std::to_string(total_callers);
    if (off_m.rows_per_s > 0)
      emit("write.tput_ratio.forwarded_ryw_over_forwarded" + n, on_m.rows_per_s / off_m.rows_per_s, 2);
  }
  const auto shipped = d.replication_stats();
  const auto shipments = shipped.shipments - shipped_before.shipments;
  if (shipments > 0) {
    emit("write.replication.transactions_per_shipment",
         static_cast<double>(shipped.transactions - shipped_before.transactions) /
             static_cast<double>(shipments), 2);
    emit("write.replication.pages_per_shipment",
         static_cast<double>(shipped.pages - shipped_before.pages) / static_cast<double>(shipments), 1);
    emit("write.replication.us_per_shipment",
         std::chrono::duration<double, std::micro>(shipped.busy - shipped_before.busy).count() /
             static_cast<double>(shipments), 0);
  }
  emit("write.replication.snapshots", static_cast<double>(shipped.snapshots - shipped_before.snapshots), 0);
  d.replicate(false);
}

int driver_main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
  const double window_s = seconds_arg(argc, argv, 2, 2.0);
  fwd_sim::install_vfs();  // the driver writes the primary's database too: same shim
  std::fprintf(stderr, "bench_write: WAL, synchronous=%s, %d rounds of %.1f s windows\n",
               synchronous_setting().c_str(), rounds, window_s * seconds_scale());
  driver d(window_s);
  vfs_probe probe(d.root());
  // Discovery, connections and the primary's writer come up before anything is measured.
  d.forwarded(1000, window(0.5));

  for (int round = 0; round < rounds; ++round) {
    measurement fwd_m, single_m, group_m;
    const std::uint64_t salt = static_cast<std::uint64_t>(round) * 8;
    // The order turns each round, so that no system always follows the same one.
    for (int k = 0; k < 3; ++k) {
      switch ((round + k) % 3) {
        case 0:
          fwd_m = d.forwarded(salt + 1, d.warmup());
          emit_measurement("forwarded", fwd_m);
          break;
        case 1:
          single_m = d.local(1, salt + 4, "local_single_txn");
          emit_measurement("local_single_txn", single_m);
          break;
        default:
          group_m = d.local(0, salt + 5, "local_group_commit");
          emit_measurement("local_group_commit", group_m);
          break;
      }
    }
    const std::string n = "." + std::to_string(total_callers);
    emit("write.tput.plain_sqlite_one_writer", d.plain_sqlite_rows_per_s(salt + 6), 0);
    if (single_m.rows_per_s > 0)
      emit("write.tput_ratio.forwarded_over_local" + n, fwd_m.rows_per_s / single_m.rows_per_s, 2);
    if (group_m.rows_per_s > 0)
      emit("write.tput_ratio.forwarded_over_group_commit" + n,
           fwd_m.rows_per_s / group_m.rows_per_s, 2);
    if (single_m.rows_per_s > 0)
      emit("write.tput_ratio.group_commit_over_single_txn" + n,
           group_m.rows_per_s / single_m.rows_per_s, 2);
    emit_group_commit_limit(d, group_m, salt + 7);
    emit_sequential(d, round, 200 + salt);
    emit_vfs_cost(probe, round, 300 + salt);
  }

  // Durable acknowledgement: both with the simulation replicating, in alternating order.
  d.replicate(true);
  d.forwarded(2000, window(0.5), 1, "forwarded_durable");  // the replicas start reporting
  for (int round = 0; round < rounds; ++round) {
    measurement none_m, durable_m;
    const std::uint64_t salt = 100 + static_cast<std::uint64_t>(round) * 4;
    for (int k = 0; k < 2; ++k) {
      if ((round + k) % 2 == 0) {
        none_m = d.forwarded(salt + 1, d.warmup(), 0, "forwarded_replicating");
        emit_measurement("forwarded_replicating", none_m);
      } else {
        durable_m = d.forwarded(salt + 2, d.warmup(), 1, "forwarded_durable");
        emit_measurement("forwarded_durable", durable_m);
      }
    }
    const std::string n = "." + std::to_string(total_callers);
    if (none_m.rows_per_s > 0)
      emit("write.tput_ratio.durable_over_none" + n, durable_m.rows_per_s / none_m.rows_per_s, 2);
    if (none_m.p50_ms > 0) emit("write.p50_ratio.durable_over_none" + n, durable_m.p50_ms / none_m.p50_ms, 2);
  }
  d.replicate(false);
  read_your_writes_rounds(d, rounds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc > 1 && std::string(argv[1]) == "node") return node_main(argc, argv);
    return driver_main(argc, argv);
  } catch (const std::exception& e) {
    die(std::string("bench_write: ") + e.what());
  }
}
