// fwd on real LiteFS: sequential single-row inserts, one in flight, on a 2-node LiteFS
// cluster (the real binary on FUSE mounts, static lease: node1 primary), measured four ways
// in one run:
//
//   direct         SQLite on the primary's mount, one transaction per insert
//                  (BEGIN IMMEDIATE; INSERT; COMMIT), no fwd: the floor
//   local          fwd::node::async_call on the primary node (runs in its write executor)
//   forwarded      async_call on the replica node, forwarded to the primary,
//                  read-your-writes off
//   forwarded_ryw  the same with read-your-writes on: the call completes once the
//                  replica's copy holds the write
//   local_durable, forwarded_durable
//                  local and forwarded with fwd::durability::replicas(1): the primary
//                  acknowledges once the replica has reported a position at or past the
//                  write (over fwd's connection, as its monitor sees LiteFS's tx events)
//
// and, to tell where the time goes, without fwd on the main thread:
//
//   replicated     a direct insert, then the replica's `<db>-pos` polled (every 0.1 ms)
//                  until it reaches the primary's TXID: LiteFS's own replication, the
//                  floor under forwarded_ryw
//   direct_dedup   a direct insert with the SQL fwd's writer adds to each write: a
//                  SAVEPOINT, the request id looked up and recorded in its dedup table
//   direct_dedup_ordered  direct_dedup with time-ordered request ids (48-bit Unix
//                  milliseconds first, then random bits): each dedup row goes to the
//                  table's last leaf instead of a random one
//   direct_writer  direct_dedup plus the writer's mount checks: before the transaction a
//                  forced getattr of the database, after COMMIT `<db>-pos` read (the TXID,
//                  one pread of a kept descriptor, as the writer reads it); what `local`
//                  does minus the thread hand-offs
//   direct_alone   `direct` before the fwd nodes start (measured first, not interleaved):
//                  what the nodes running beside the database cost a writer that does not
//                  use them
//
//   bench_litefs [rounds] [block] [warm-up]
//   bench_litefs check      prints why real LiteFS cannot run here (nothing when it can)
//
// FWD_BENCH_LITEFS_WRITER=io runs the nodes' writers on their io threads
// (write_options::work_executor) instead of their own threads.
// FWD_BENCH_LITEFS_ONLY=<system>[,<system>...] runs those systems alone (warm-up and
// rounds), for a profiler or strace attached to the process.
//
// Both fwd::node instances run in this process (one io_context thread each; the replica
// reaches the primary over TCP on 127.0.0.1), each following its LiteFS's /events stream
// (FWD_BENCH_LITEFS_EVENTS=0: the mount is polled instead). Every system first runs
// `warm-up` inserts, then `rounds` rounds of `block` inserts each, in an order that turns
// every round; before each block the replica has caught up with the primary (not timed).
// Every system runs the same insert function, which prepares and runs the INSERT as
// service code does; fwd's writes also record their request id (exactly once). WAL,
// synchronous=NORMAL on every connection (FWD_BENCH_LITEFS_SYNC=FULL|NORMAL|OFF|EXTRA).
//
// For the direct systems it also reports the WAL frames (pages) each COMMIT appended:
// litefs.wal_frames.<system> (each frame is written to LiteFS as its own FUSE writes).
//
// Without LiteFS (no binary, no FUSE, not root) it prints why on stderr and exits 0 with
// no figures.
#include <pthread.h>
#include <sqlite3.h>
#include <time.h>

#include <array>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <fwd/litefs/detail/io.hpp>
#include <fwd/litefs/detail/position_reader.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/node.hpp>
#include <fwd/sqlite/connection.hpp>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../../examples/cluster_driver.hpp"
#include "../common/bench_support.hpp"
#include "litefs_fixture.hpp"

namespace {

using namespace fwd_bench;
using namespace std::chrono_literals;

inline const fwd::procedure<std::int64_t(std::string, std::int64_t)> insert_row{
    "bench.litefs.insert"};

constexpr const char* db_name = "bench.db";
constexpr const char* secret = "bench-litefs-secret-of-32-bytes-or-more";

/// The service's writer, as a user would write it.
std::int64_t insert(sqlite3* db, const std::string& k, std::int64_t v) {
  auto c = fwd::sqlite::connection::borrow(db);
  c.prepare("INSERT INTO t(k, v) VALUES (?1, ?2)").bind(1, k).bind(2, v).execute();
  return c.last_insert_rowid();
}

std::string synchronous_setting() {
  const char* s = std::getenv("FWD_BENCH_LITEFS_SYNC");
  if (s == nullptr || *s == '\0') return "NORMAL";
  const std::string v = s;
  if (v != "FULL" && v != "NORMAL" && v != "OFF" && v != "EXTRA")
    die("FWD_BENCH_LITEFS_SYNC must be FULL, NORMAL, OFF or EXTRA (got " + v + ")");
  return v;
}

bool follow_events() {
  const char* s = std::getenv("FWD_BENCH_LITEFS_EVENTS");
  return s == nullptr || std::string(s) != "0";
}

/// A pseudo-random 17-character key per insert, so that index inserts land anywhere.
std::string next_key() {
  static std::atomic<std::uint64_t> n{0x9e3779b97f4a7c15ULL};
  std::uint64_t x = n.fetch_add(0x9e3779b97f4a7c15ULL);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  std::string k(17, 'a');
  for (auto& c : k) {
    c = static_cast<char>('a' + x % 26);
    x = x / 26 + 0x632be59bd9b4e019ULL;
  }
  return k;
}

/// One io_context with one thread (named, for profilers), kept alive until destroyed.
struct io_thread {
  explicit io_thread(const char* name) { ::pthread_setname_np(thread.native_handle(), name); }
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread{[this] { io.run(); }};
  ~io_thread() {
    work.reset();
    io.stop();
    thread.join();
  }
};

enum system_id {
  direct,
  local,
  forwarded,
  forwarded_ryw,
  replicated,
  direct_dedup,
  direct_writer,
  direct_alone,
  direct_dedup_ordered,
  local_durable,
  forwarded_durable,
  system_count
};
const std::array<const char*, system_count> system_names{
    "direct",       "local",         "forwarded",   "forwarded_ryw",
    "replicated",   "direct_dedup",  "direct_writer", "direct_alone",
    "direct_dedup_ordered", "local_durable", "forwarded_durable"};

/// A request id that starts with the 48-bit Unix time in milliseconds (big-endian), the
/// rest random: ids made later sort later.
fwd::request_id time_ordered_id() {
  fwd::request_id id = fwd::make_request_id();
  const auto ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 std::chrono::system_clock::now().time_since_epoch())
                                                 .count());
  for (int i = 0; i < 6; ++i) id[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(ms >> (8 * (5 - i)));
  return id;
}

class bench {
 public:
  explicit bench(fwd_test::litefs_cluster& fs) : fs_(fs) {
    direct_ = fwd::sqlite::connection((fs.mount(0) / db_name).string(),
                                      fwd::sqlite::default_open_flags, std::chrono::seconds(5));
    direct_.exec("PRAGMA synchronous=" + synchronous_setting());
    // The dedup table as fwd's writer creates it (the first fwd write creates it too).
    const std::string table = fwd::sqlite::dedup_table_name;
    direct_.exec("CREATE TABLE IF NOT EXISTS " + table +
                 "(id BLOB PRIMARY KEY, result BLOB NOT NULL, created_at INTEGER NOT NULL) "
                 "WITHOUT ROWID");
    lookup_ = direct_.prepare("SELECT result FROM " + table + " WHERE id = ?1");
    record_ = direct_.prepare("INSERT INTO " + table + "(id, result, created_at) VALUES (?1, ?2, ?3)");
    // Counts the frames each COMMIT appends; checkpoints as SQLite's default hook does.
    sqlite3_wal_hook(direct_.native_handle(), &bench::on_wal_commit, this);
  }

  /// WAL frames per COMMIT of system `s` (0 when none was counted).
  double wal_frames_per_commit(system_id s) const {
    return wal_commits_[s] == 0 ? 0.0 : static_cast<double>(wal_frames_[s]) / static_cast<double>(wal_commits_[s]);
  }

  void attach(fwd::node& primary, fwd::node& replica) {
    primary_ = &primary;
    replica_ = &replica;
  }

  /// Runs `n` inserts of system `s`; their latencies go to `out` when given.
  void run(system_id s, int n, std::vector<std::int64_t>* out) {
    switch (s) {
      case direct:
      case replicated:
      case direct_dedup:
      case direct_writer:
      case direct_alone:
      case direct_dedup_ordered:
        for (int i = 0; i < n; ++i) {
          const auto t0 = clock::now();
          counting_ = out != nullptr ? static_cast<int>(s) : -1;
          direct_insert(s);
          counting_ = -1;
          if (s == replicated) wait_replica();
          const auto t1 = clock::now();
          if (out) out->push_back(elapsed_ns(t0, t1));
        }
        return;
      case local:
        return chain(*primary_, false, true, n, out);
      case forwarded:
        return chain(*replica_, false, false, n, out);
      case forwarded_ryw:
        return chain(*replica_, true, false, n, out);
      case local_durable:
        return chain(*primary_, false, true, n, out, fwd::durability::replicas(1));
      case forwarded_durable:
        return chain(*replica_, false, false, n, out, fwd::durability::replicas(1));
      default:
        return;
    }
  }

  /// Waits (bounded, untimed) until the replica's copy has every write.
  void settle() {
    if (!fs_.wait_caught_up(0, db_name, 10s)) die("the replica did not catch up within 10 s");
  }

 private:
  void direct_insert(system_id s) {
    const bool dedup = s == direct_dedup || s == direct_writer || s == direct_dedup_ordered;
    const std::string db = (fs_.mount(0) / db_name).string();
    if (s == direct_writer) {
      struct stat st {};
      if (fwd::litefs::detail::stat_uncached(db, st) != 0) die("cannot stat " + db);
    }
    boost::system::error_code ec;
    std::string message;
    direct_.exec("BEGIN IMMEDIATE", ec, &message);
    if (ec) die("direct BEGIN IMMEDIATE: " + message);
    try {
      if (dedup) {
        direct_.exec("SAVEPOINT fwd_write");
        const fwd::request_id id = s == direct_dedup_ordered ? time_ordered_id() : fwd::make_request_id();
        lookup_.reset().bind(1, fwd::sqlite::blob_view(id));
        if (lookup_.step()) die("a fresh request id is already recorded");
        lookup_.reset();
        const std::int64_t row = insert(direct_.native_handle(), next_key(), ++value_);
        const std::string result = fwd::detail::encode_result<std::int64_t>(row);
        record_.reset()
            .bind(1, fwd::sqlite::blob_view(id))
            .bind(2, fwd::sqlite::blob_view(result.data(), result.size()))
            .bind(3, std::int64_t{1})
            .execute();
        direct_.exec("RELEASE fwd_write");
      } else {
        insert(direct_.native_handle(), next_key(), ++value_);
      }
    } catch (const std::exception& e) {
      direct_.exec("ROLLBACK", ec);
      die(std::string("direct INSERT: ") + e.what());
    }
    direct_.exec("COMMIT", ec, &message);
    if (ec) die("direct COMMIT: " + message);
    if (s == direct_writer) {
      boost::system::error_code pos_ec;
      if (position_.read(pos_ec).txid == 0 || pos_ec)
        die("no TXID in the primary's " + std::string(db_name) + "-pos");
    }
  }

  // Polls the replica's `<db>-pos` until it reaches the primary's.
  void wait_replica() {
    const std::uint64_t want = fwd::litefs::read_position(fs_.mount(0), db_name).txid;
    const auto until = clock::now() + 10s;
    for (;;) {
      boost::system::error_code ec;
      if (fwd::litefs::read_position(fs_.mount(1), db_name, ec).txid >= want) return;
      if (clock::now() >= until) die("the replica did not reach the primary's TXID within 10 s");
      const timespec pause{0, 100'000};
      ::nanosleep(&pause, nullptr);
    }
  }

  // n sequential async_calls on `node`, each issued from the completion of the previous one
  // (on the node's io thread), as a service handler chains its calls.
  void chain(fwd::node& node, bool ryw, bool expect_local, int n,
             std::vector<std::int64_t>* out, fwd::durability durability = {}) {
    struct state {
      fwd::node& node;
      bool ryw, expect_local;
      fwd::durability durability;
      int left;
      std::vector<std::int64_t>* out;
      std::int64_t& value;
      std::promise<std::string> done;  // empty: every call succeeded
      fwd::diagnostics diag;             // the failed call's detail
      void next() {
        if (left == 0) {
          done.set_value({});
          return;
        }
        --left;
        fwd::forward_options o;
        o.read_your_writes = ryw;
        o.durability = durability;
        o.report = std::make_shared<fwd::call_report>();
        o.diagnostics = &diag;
        const auto t0 = clock::now();
        node.async_call(o, insert_row, next_key(), ++value,
                        [this, t0, o](boost::system::error_code ec, std::int64_t) {
                          const auto t1 = clock::now();
                          if (ec) {
                            done.set_value(ec.message() + ": " + diag.message());
                            return;
                          }
                          if (o.report->ran_locally != expect_local ||
                              o.report->waited_for_replication != (ryw && !expect_local)) {
                            done.set_value(expect_local ? "a call on the primary was forwarded"
                                                        : "a call on the replica ran locally, or "
                                                          "read-your-writes was not as asked");
                            return;
                          }
                          if (out) out->push_back(elapsed_ns(t0, t1));
                          next();
                        });
      }
    };
    state s{node, ryw, expect_local, durability, n, out, value_, {}, {}};
    auto result = s.done.get_future();
    s.next();
    if (result.wait_for(60s) != std::future_status::ready) die("a call chain did not finish in 60 s");
    if (const std::string failure = result.get(); !failure.empty()) die("a call failed: " + failure);
  }

  fwd_test::litefs_cluster& fs_;
  fwd::node* primary_ = nullptr;
  fwd::node* replica_ = nullptr;
  fwd::sqlite::connection direct_;
  fwd::sqlite::statement lookup_, record_;
  std::int64_t value_ = 0;
  fwd::litefs::detail::position_reader position_{fs_.mount(0), db_name};
  int counting_ = -1;  // the system whose COMMIT frames are counted now
  int last_frames_ = 0;
  int last_system_ = -1;  // the system of the last COMMIT seen (-1: not counted)
  std::array<std::uint64_t, system_count> wal_frames_{}, wal_commits_{};

  static int on_wal_commit(void* self_ptr, sqlite3* db, const char* name, int frames) {
    auto* self = static_cast<bench*>(self_ptr);
    const int added = frames > self->last_frames_ ? frames - self->last_frames_ : frames;
    self->last_frames_ = frames;
    // Only a COMMIT that follows one of the same system's counts: before the first of a
    // block other connections (fwd's writers) may have appended frames of their own.
    if (self->counting_ >= 0 && self->counting_ == self->last_system_) {
      self->wal_frames_[static_cast<std::size_t>(self->counting_)] += static_cast<std::uint64_t>(added);
      ++self->wal_commits_[static_cast<std::size_t>(self->counting_)];
    }
    self->last_system_ = self->counting_;
    if (frames >= 1000) {
      sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    }
    return SQLITE_OK;
  }
};

fwd::node_options node_options(fwd_test::litefs_cluster& fs, std::size_t i,
                               const std::vector<std::uint16_t>& ports,
                               boost::asio::any_io_executor io) {
  const auto loopback = boost::asio::ip::make_address("127.0.0.1");
  std::vector<boost::asio::ip::tcp::endpoint> members;
  for (auto p : ports) members.emplace_back(loopback, p);
  fwd::node_options o;
  o.listen = {loopback, ports[i]};
  o.members = fwd::static_members(members);
  o.database = fs.mount(i) / db_name;
  o.secret = secret;
  o.litefs_hostname = fs.hostname(i);
  o.name = fs.hostname(i);
  if (follow_events()) o.litefs_http = boost::asio::ip::tcp::endpoint(loopback, fs.http_port(i));
  // FWD_BENCH_LITEFS_WRITER=io: the writer runs its batches on the node's io thread
  // (write_options::work_executor) instead of its own thread: no hand-off between threads.
  if (const char* w = std::getenv("FWD_BENCH_LITEFS_WRITER"); w && std::string(w) == "io")
    o.write.work_executor = io;
  o.write.on_open = [sync = synchronous_setting()](fwd::sqlite::connection& c) {
    c.exec("PRAGMA synchronous=" + sync);
  };
  return o;
}

void report(const std::vector<std::vector<std::int64_t>>& samples, const bench& b) {
  std::array<latency_summary, system_count> s;
  for (int i = 0; i < system_count; ++i) {
    if (samples[i].empty()) continue;
    s[i] = summarise(samples[i]);
    emit(std::string("litefs.p50_us.") + system_names[i], s[i].p50_us);
    emit(std::string("litefs.p99_us.") + system_names[i], s[i].p99_us);
  }
  for (int i : {direct, direct_dedup, direct_dedup_ordered, direct_writer}) {
    if (b.wal_frames_per_commit(static_cast<system_id>(i)) > 0)
      emit(std::string("litefs.wal_frames.") + system_names[i], b.wal_frames_per_commit(static_cast<system_id>(i)), 2);
  }
  for (int i : {local, forwarded, forwarded_ryw, replicated, direct_dedup, direct_writer,
                direct_alone, direct_dedup_ordered, local_durable, forwarded_durable}) {
    if (samples[i].empty() || samples[direct].empty()) continue;
    emit(std::string("litefs.p50_ratio.") + system_names[i] + "_over_direct",
         s[i].p50_us / s[direct].p50_us, 2);
    emit(std::string("litefs.p99_ratio.") + system_names[i] + "_over_direct",
         s[i].p99_us / s[direct].p99_us, 2);
  }
  if (!samples[forwarded_durable].empty() && !samples[forwarded].empty())
    emit("litefs.p50_ratio.forwarded_durable_over_forwarded",
         s[forwarded_durable].p50_us / s[forwarded].p50_us, 2);
  if (!samples[local_durable].empty() && !samples[local].empty())
    emit("litefs.p50_ratio.local_durable_over_local", s[local_durable].p50_us / s[local].p50_us, 2);
  if (!samples[forwarded_durable].empty() && !samples[forwarded_ryw].empty())
    emit("litefs.p50_ratio.forwarded_durable_over_forwarded_ryw",
         s[forwarded_durable].p50_us / s[forwarded_ryw].p50_us, 2);
  if (!samples[forwarded_ryw].empty() && !samples[replicated].empty())
    emit("litefs.p50_ratio.forwarded_ryw_over_replicated",
         s[forwarded_ryw].p50_us / s[replicated].p50_us, 2);
  if (!samples[local].empty() && !samples[direct_writer].empty())
    emit("litefs.p50_ratio.local_over_direct_writer", s[local].p50_us / s[direct_writer].p50_us, 2);
  if (!samples[local].empty() && !samples[direct_alone].empty())
    emit("litefs.p50_ratio.local_over_direct_alone", s[local].p50_us / s[direct_alone].p50_us, 2);
  if (!samples[direct].empty() && !samples[direct_alone].empty())
    emit("litefs.p50_ratio.direct_over_direct_alone", s[direct].p50_us / s[direct_alone].p50_us, 2);
  emit("litefs.samples", static_cast<double>(samples[direct].size()), 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "check") {
    if (auto why = fwd_test::litefs_unavailable()) std::printf("%s\n", why->c_str());
    return 0;
  }
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 20;
  const int block = argc > 2 ? std::atoi(argv[2]) : 50;
  const int warm_up = argc > 3 ? std::atoi(argv[3]) : 100;
  if (rounds < 1 || block < 1 || warm_up < 0) die("usage: bench_litefs [rounds] [block] [warm-up]");

  if (auto why = fwd_test::litefs_unavailable()) {
    std::fprintf(stderr, "bench litefs: skipped, real LiteFS is unavailable: %s\n", why->c_str());
    return 0;
  }

  try {
    fwd_test::litefs_cluster fs({.nodes = 2, .lease = fwd_test::lease_kind::static_lease});
    fs.start_all();
    {
      fwd::sqlite::connection c((fs.mount(0) / db_name).string());
      c.exec("PRAGMA journal_mode=WAL");
      c.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER); CREATE INDEX t_k ON t(k)");
    }
    if (!fs.wait_caught_up(0, db_name, 10s)) die("the replica did not receive the database");

    const char* only = std::getenv("FWD_BENCH_LITEFS_ONLY");
    const bool all = only == nullptr || *only == '\0';
    const std::string only_list = all ? std::string() : "," + std::string(only) + ",";
    auto chosen = [&](int i) {
      return all || only_list.find("," + std::string(system_names[i]) + ",") != std::string::npos;
    };
    bench b(fs);
    std::vector<std::vector<std::int64_t>> samples(system_count);
    if (chosen(direct_alone)) {
      note("bench litefs: %s", "direct inserts before the fwd nodes start");
      b.run(direct_alone, warm_up, nullptr);
      for (int r = 0; r < rounds; ++r) {
        b.settle();
        b.run(direct_alone, block, &samples[direct_alone]);
      }
    }

    std::vector<std::unique_ptr<demo::reserved_port>> reserved;
    std::vector<std::uint16_t> ports;
    for (int i = 0; i < 2; ++i) {
      reserved.push_back(std::make_unique<demo::reserved_port>());
      ports.push_back(reserved.back()->port());
    }
    io_thread io_primary("io-primary"), io_replica("io-replica");
    fwd::node primary(io_primary.io.get_executor(), node_options(fs, 0, ports, io_primary.io.get_executor()));
    fwd::node replica(io_replica.io.get_executor(), node_options(fs, 1, ports, io_replica.io.get_executor()));
    for (fwd::node* n : {&primary, &replica}) n->define(insert_row, insert);
    primary.start();
    replica.start();
    if (!wait_until([&] { return primary.role().kind == fwd::litefs::role_kind::primary &&
                                 replica.role().kind == fwd::litefs::role_kind::replica; },
                    10s)) {
      die("the nodes did not see their LiteFS roles within 10 s");
    }

    b.attach(primary, replica);
    std::vector<system_id> order{direct,       local,         forwarded,
                                 forwarded_ryw, replicated, direct_dedup,
                                 direct_writer, direct_dedup_ordered, local_durable,
                                 forwarded_durable};
    if (!all) {
      order.clear();
      for (int i = 0; i < system_count; ++i)
        if (chosen(i) && i != direct_alone) order.push_back(static_cast<system_id>(i));
      if (order.empty() && !chosen(direct_alone))
        die(std::string("FWD_BENCH_LITEFS_ONLY: no system in ") + only);
    }
    note("bench litefs: warm-up, %s", std::to_string(warm_up) + " inserts per system");
    for (system_id s : order) {
      b.settle();
      b.run(s, warm_up, nullptr);
    }
    for (int r = 0; r < rounds && !order.empty(); ++r) {
      for (std::size_t j = 0; j < order.size(); ++j) {
        const system_id s = order[(static_cast<std::size_t>(r) + j) % order.size()];
        b.settle();
        b.run(s, block, &samples[s]);
      }
    }
    if (follow_events()) {
      const auto e = replica.monitor().events();
      note("bench litefs: the replica's /events stream: %s",
           std::string(e.connected ? "connected" : "NOT connected") + ", " +
               std::to_string(e.events) + " events");
    }
    report(samples, b);
    primary.stop();
    replica.stop();
  } catch (const std::exception& e) {
    die(std::string("bench litefs: ") + e.what());
  }
  return 0;
}
