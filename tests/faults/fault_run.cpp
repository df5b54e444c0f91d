// fwd_fault_run: one fault scenario against a whole cluster, and a check of its history.
//
//   fwd_fault_run SCENARIO [--seed N] [--fault-ms N] [--verbose]
//   fwd_fault_run --list
//
// Three fwd_node processes (examples/node_main.cpp), each in its own network namespace
// (netns_lab.hpp), over the LiteFS simulation (tests/sim; its files are shared, its
// replication runs in this process). Two writers per node ask their node, over loopback
// inside its namespace, to append rows (writer, seq) that no other call writes, with
// read-your-writes on, and record each call's outcome: acknowledged, failed (with its error
// class) or unconfirmed (the node did not answer). The scenario's fault runs once the
// cluster has acknowledged writes everywhere; once it is healed, the writers go on until
// every node has acknowledged a write again. Then the nodes stop, replication catches up,
// and the `sqlite3` CLI counts the rows of every node's copy of the database.
//
// The checker's invariants:
//   - every acknowledged write is present exactly once (0: lost, 2+: doubled), except
//     in lossy_promotion (durability none), where a local write the old primary
//     acknowledged may be lost by the promotion: counted apart (lost_async), as nothing
//     can tell its caller; lossy_promotion_durable (durability candidates) loses none;
//   - every failed or unconfirmed write is present at most once (2+: doubled);
//   - read-your-writes: right after its acknowledgement, the write was visible, once, on
//     the node that made the call;
//   - no row that no writer wrote (phantom); every node's copy has the same rows.
// It prints one `RESULT` line and each violation, and exits 0 (history correct), 1
// (violation, or no recovery after the heal), 2 (bad usage, setup failed) or 77 (cannot
// run here: the reason is printed).

#include <signal.h>
#include <sys/stat.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <fmt/format.h>
#include <fwd/error.hpp>
#include <fwd/rpc/client.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster_driver.hpp"
#include "delay_proxy.hpp"
#include "demo_procedures.hpp"
#include "litefs_fixture.hpp"
#include "litefs_sim.hpp"
#include "netns_lab.hpp"

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
using fwd_faults::netns_lab;

constexpr std::size_t node_count = 3;
constexpr std::uint16_t node_port = 7000;   // every node's port, inside its own namespace
constexpr std::uint16_t proxy_port = 7100;  // the delay proxy in front of it
constexpr int writers_per_node = 2;
constexpr std::int64_t call_deadline_ms = 2000;

const std::vector<std::string> scenarios = {
    "kill9_primary",  "sigstop_primary", "partition_primary_one", "partition_primary_all",
    "loss5",          "loss30",          "latency200",            "litefs_restart",
    "litefs_restart_real", "lossy_promotion", "lossy_promotion_durable"};
const std::string database_name = "app.db";

enum class outcome { acked, failed, unconfirmed };

struct call_record {
  std::size_t node = 0;
  std::string writer;
  std::int64_t seq = 0;
  outcome result = outcome::unconfirmed;
  std::string error_class;  // failed / unconfirmed: what was reported
  std::int64_t visible = -1;
  double started_s = 0;  // since the writers began
  double ended_s = 0;
  std::uint64_t txid = 0;
  std::uint64_t local_txid = 0;
  bool ran_locally = false;
  std::uint32_t attempts = 0;
};

std::string fwd_error_name(int code) {
  static const char* names[] = {"?",
                                "no_primary",
                                "not_primary",
                                "unreachable",
                                "connection_lost",
                                "timeout",
                                "cancelled",
                                "remote_failure",
                                "unknown_procedure",
                                "signature_mismatch",
                                "protocol_error",
                                "frame_too_large",
                                "unauthenticated",
                                "version_mismatch",
                                "overloaded",
                                "circuit_open",
                                "replication_lag",
                                "not_litefs",
                                "misconfigured_mount",
                                "bad_litefs_file",
                                "bad_argument",
                                "commit_unknown",
                                "not_yet_durable",
                                "tampered_frame",
                                "not_confirmed"};
  if (code > 0 && code < static_cast<int>(sizeof names / sizeof names[0])) return names[code];
  return "fwd." + std::to_string(code);
}

std::string error_class_of(const demo::control_result& r) {
  if (r.category == 1) return fwd_error_name(r.code);
  if (r.category == 2) return "sqlite." + std::to_string(r.code);
  return "other";
}

// The history, shared by the writers.
class history {
 public:
  void add(call_record r) {
    std::lock_guard lock(mutex_);
    records_.push_back(std::move(r));
  }
  std::vector<call_record> all() const {
    std::lock_guard lock(mutex_);
    return records_;
  }
  // Whether every node acknowledged a call that started at or after `since_s`.
  bool every_node_acked_since(double since_s) const {
    std::lock_guard lock(mutex_);
    std::vector<bool> seen(node_count, false);
    for (const auto& r : records_)
      if (r.result == outcome::acked && r.started_s >= since_s) seen[r.node] = true;
    return std::all_of(seen.begin(), seen.end(), [](bool b) { return b; });
  }

 private:
  mutable std::mutex mutex_;
  std::vector<call_record> records_;
};

// Waits for `done()` with a bound, checking every 20 ms.
bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds bound) {
  const auto until = clock_type::now() + bound;
  while (!done()) {
    if (clock_type::now() >= until) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

// The writers of one node: an RPC client whose sockets live in the node's namespace.
class node_writers {
 public:
  node_writers(const netns_lab& lab, std::size_t node, history& h, clock_type::time_point epoch)
      : lab_(lab), node_(node), history_(h), epoch_(epoch),
        work_(boost::asio::make_work_guard(io_)), client_(io_.get_executor(), client_options()) {
    io_thread_ = std::thread([this] {
      lab_.enter(node_);
      io_.run();
    });
    for (int k = 0; k < writers_per_node; ++k) {
      threads_.emplace_back([this, k] { write_loop("n" + std::to_string(node_) + "w" + std::to_string(k)); });
    }
  }
  ~node_writers() {
    stop();
    client_.close();
    work_.reset();
    io_.stop();
    io_thread_.join();
  }
  node_writers(const node_writers&) = delete;
  node_writers& operator=(const node_writers&) = delete;

  /// Lets each writer finish the call it is making, then ends them.
  void stop() {
    stopping_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  static fwd::rpc::client_options client_options() {
    fwd::rpc::client_options o;
    o.secret = demo::default_secret;
    o.connect_timeout = 1000ms;
    o.reconnect_backoff = 10ms;
    o.max_reconnect_backoff = 100ms;
    return o;
  }

  double now_s() const { return std::chrono::duration<double>(clock_type::now() - epoch_).count(); }

  void write_loop(const std::string& writer) {
    lab_.enter(node_);
    const boost::asio::ip::tcp::endpoint node_endpoint{boost::asio::ip::make_address("127.0.0.1"), node_port};
    for (std::int64_t seq = 1; !stopping_; ++seq) {
      call_record r;
      r.node = node_;
      r.writer = writer;
      r.seq = seq;
      r.started_s = now_s();
      try {
        fwd::rpc::call_options o;
        // Room beyond the call's own deadline: the node answers with its outcome.
        o.deadline = clock_type::now() + std::chrono::milliseconds(call_deadline_ms + 3000);
        const auto res = client_.call(node_endpoint, o, demo::control, std::string("append"),
                                      std::vector<std::string>{writer, std::to_string(seq)},
                                      call_deadline_ms, true);
        r.txid = res.txid;
        r.local_txid = res.local_txid;
        r.ran_locally = res.ran_locally;
        r.attempts = res.attempts;
        if (res.category == 0) {
          r.result = outcome::acked;
          r.visible = res.visible;
        } else {
          r.result = outcome::failed;
          r.error_class = error_class_of(res);
        }
      } catch (const boost::system::system_error& e) {
        r.result = outcome::unconfirmed;
        r.error_class = e.code().category() == fwd::fwd_category() ? fwd_error_name(e.code().value())
                                                                   : e.code().message();
      } catch (const std::exception& e) {
        r.result = outcome::unconfirmed;
        r.error_class = e.what();
      }
      r.ended_s = now_s();
      const bool acked = r.result == outcome::acked;
      history_.add(std::move(r));
      // Pacing after a failure (a dead node refuses at once), not a wait for an event.
      if (!acked) std::this_thread::sleep_for(100ms);
    }
  }

  const netns_lab& lab_;
  std::size_t node_;
  history& history_;
  clock_type::time_point epoch_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  fwd::rpc::client client_;
  std::thread io_thread_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stopping_{false};
};

// Roots of simulated clusters: /tmp/fwdf-<pid>-sim. A run killed outright leaves its
// mounts (the simulation's dead FUSE and tmpfs stacks) and files; the next run removes them.
std::filesystem::path sim_root() { return "/tmp/fwdf-" + std::to_string(::getpid()) + "-sim"; }

void unmount_under(const std::filesystem::path& root) {
  for (int pass = 0; pass < 16; ++pass) {
    std::ifstream mounts("/proc/mounts");
    std::string device, target, rest;
    std::vector<std::string> targets;
    while (mounts >> device >> target && std::getline(mounts, rest))
      if (target.rfind(root.string() + "/", 0) == 0) targets.push_back(target);
    if (targets.empty()) return;
    for (const auto& t : targets) ::umount2(t.c_str(), MNT_DETACH);
  }
}

void sweep_sim_roots() {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/tmp", ec)) {
    const std::string name = e.path().filename().string();
    if (!fwd_faults::owner_gone(fwd_faults::owner_of(name))) continue;
    unmount_under(e.path());
    std::filesystem::remove_all(e.path(), ec);
  }
}

struct counts {
  std::map<std::pair<std::string, std::int64_t>, std::int64_t> rows;
  std::string error;
};

// Every (writer, seq) and its number of rows in `db`, counted by the sqlite3 CLI.
counts count_rows(const std::filesystem::path& db) {
  counts c;
  const auto r = fwd_faults::run_command("sqlite3 -readonly -batch -separator ' ' '" + db.string() +
                                         "' 'SELECT writer, seq, count(*) FROM events GROUP BY writer, seq'");
  if (r.status != 0) {
    c.error = r.output;
    return c;
  }
  std::istringstream in(r.output);
  std::string writer;
  std::int64_t seq = 0, n = 0;
  while (in >> writer >> seq >> n) c.rows[{writer, seq}] = n;
  return c;
}

struct options {
  std::string scenario;
  std::uint64_t seed = 0;
  std::chrono::milliseconds fault{6000};
  bool verbose = false;
};

class run {
 public:
  explicit run(options o) : o_(std::move(o)), rng_(o_.seed) {}

  int execute() {
    const bool latency = o_.scenario == "latency200";
    const bool lossy = o_.scenario.rfind("lossy_promotion", 0) == 0;
    if (o_.scenario == "litefs_restart") {
      if (auto why = fwd_sim::dead_mount_unavailable()) return skip("LiteFS restart needs FUSE mounts: " + *why);
    }

    if (o_.scenario == "litefs_restart_real") {
      if (auto why = fwd_test::litefs_unavailable()) return skip("real LiteFS unavailable: " + *why);
      // Real LiteFS processes run in this namespace, on loopback (their replication is not
      // what this scenario attacks); the nodes reach their FUSE mounts, which they share.
      real_.emplace(fwd_test::litefs_cluster_options{.nodes = node_count,
                                                     .lease = fwd_test::lease_kind::static_lease});
      real_->start_all();
      std::string out;
      if (fwd_test::run_program({"sqlite3", database(0).string(), "PRAGMA journal_mode=WAL;"}, &out) != 0 ||
          !real_->wait_caught_up(0, database_name, 20s))
        return setup_failure("cannot create the database on real LiteFS: " + out);
    } else {
      fwd_sim::cluster_options co;
      co.root = sim_root();
      co.database = database_name;
      std::filesystem::create_directories(co.root);
      co.http = false;  // its port would be on this namespace's loopback, out of the nodes' reach
      cluster_.emplace(co);
      // LiteFS ships a commit a few ms after it happens; in the lossy promotion, late
      // enough for the new primary to miss the last ones.
      cluster_->start_replication(lossy ? 400ms : 10ms);
    }

    if (latency)
      for (std::size_t i = 0; i < node_count; ++i)
        proxies_.push_back(std::make_unique<fwd_faults::delay_proxy>(lab_, i, proxy_port, node_port));
    members_.clear();
    for (std::size_t i = 0; i < node_count; ++i)
      members_ += (i ? "," : "") + netns_lab::address(i) + ":" + std::to_string(latency ? proxy_port : node_port);
    nodes_.resize(node_count);
    for (std::size_t i = 0; i < node_count; ++i) start_node(i);
    for (std::size_t i = 0; i < node_count; ++i) {
      if (!nodes_[i]->wait_for("MIGRATED", 30s))
        return setup_failure("node " + std::to_string(i) + " did not migrate:\n" + nodes_[i]->output());
    }

    const auto epoch = clock_type::now();
    auto since = [epoch] { return std::chrono::duration<double>(clock_type::now() - epoch).count(); };
    for (std::size_t i = 0; i < node_count; ++i)
      writers_.push_back(std::make_unique<node_writers>(lab_, i, history_, epoch));
    if (!wait_until([&] { return history_.every_node_acked_since(0); }, 30s))
      return setup_failure("the cluster acknowledged no write on some node within 30 s");
    std::this_thread::sleep_for(jitter(1000ms, 2000ms));  // writes before the fault

    const double fault_at = since();
    const std::string what = inject();
    std::printf("fault at %.3f-%.3f s: %s\n", fault_at, since(), what.c_str());
    std::fflush(stdout);
    std::this_thread::sleep_for(jitter(o_.fault, o_.fault + o_.fault / 3));
    heal();
    const double healed_at = since();
    std::printf("healed at %.3f s\n", healed_at);
    std::fflush(stdout);
    // Nodes the fault ended (a node killed, or one that died with its LiteFS) start again.
    for (std::size_t i = 0; i < node_count; ++i) {
      if (const auto status = nodes_[i]->wait_exit(0ms)) {
        std::printf("node %s had exited (status %d); started again\n", hostname(i).c_str(), *status);
        if (*status != 128 + SIGKILL) {
          std::printf("NODE DIED %s (status %d, not killed by the scenario); its last lines:\n", hostname(i).c_str(),
                      *status);
          const std::string out = nodes_[i]->output();
          std::printf("%s\n", out.substr(out.size() > 3000 ? out.size() - 3000 : 0).c_str());
        }
        start_node(i);
      }
    }
    const bool recovered = wait_until([&] { return history_.every_node_acked_since(healed_at); }, 45s);
    const double recovered_at = since();
    std::this_thread::sleep_for(1000ms);  // writes after recovery
    for (auto& w : writers_) w->stop();
    writers_.clear();
    for (auto& n : nodes_) {
      n->terminate();
      if (!n->wait_exit(10s)) n->kill_now();
    }
    bool caught_up = true;
    if (real_) {
      caught_up = real_->wait_caught_up(primary(), database_name, 30s);
    } else {
      cluster_->stop_replication();
      cluster_->replicate_now();
    }
    if (!caught_up) std::printf("replicas did not catch up with the primary within 30 s\n");

    return check(recovered, fault_at, healed_at, recovered_at);
  }

  ~run() {
    writers_.clear();
    nodes_.clear();
    proxies_.clear();
    cluster_.reset();
    real_.reset();
    unmount_under(sim_root());
    std::error_code ec;
    std::filesystem::remove_all(sim_root(), ec);
  }

 private:
  int skip(const std::string& why) {
    std::printf("SKIP %s: %s\n", o_.scenario.c_str(), why.c_str());
    return 77;
  }
  int setup_failure(const std::string& why) {
    std::printf("SETUP FAILED %s seed=%llu: %s\n", o_.scenario.c_str(),
                static_cast<unsigned long long>(o_.seed), why.c_str());
    return 2;
  }

  std::chrono::milliseconds jitter(std::chrono::milliseconds low, std::chrono::milliseconds high) {
    std::uniform_int_distribution<long> d(low.count(), high.count());
    return std::chrono::milliseconds(d(rng_));
  }
  std::size_t pick(std::vector<std::size_t> among) {
    std::uniform_int_distribution<std::size_t> d(0, among.size() - 1);
    return among[d(rng_)];
  }

  void start_node(std::size_t i) {
    std::vector<std::string> args = {"--net=" + lab_.path(i),
                                     FWD_NODE_PATH,
                                     "--name",
                                     hostname(i),
                                     "--mount",
                                     mount(i).string(),
                                     "--port",
                                     std::to_string(node_port),
                                     "--listen",
                                     "0.0.0.0",
                                     "--members",
                                     members_};
    if (!o_.verbose) args.push_back("--quiet");
    // Every node is a candidate: a write is acknowledged once each replica reports it.
    if (durable()) args.insert(args.end(), {"--durability", "candidates"});
    if (real_) args.insert(args.end(), {"--litefs-real", "--db", database_name});
    nodes_[i].reset();
    // nsenter enters the node's network namespace only: it shares this process's mounts,
    // where the simulation's LiteFS lives.
    nodes_[i] = std::make_unique<demo::node_process>("/usr/bin/nsenter", args, o_.verbose);
    if (!nodes_[i]->wait_for("READY", 20s))
      throw std::runtime_error("node " + std::to_string(i) + " did not start:\n" + nodes_[i]->output());
  }

  // The scenarios whose nodes acknowledge a write only once the candidates have it.
  bool durable() const { return o_.scenario == "lossy_promotion_durable"; }

  std::size_t primary() const {
    if (real_) return 0;  // static lease
    const auto p = cluster_->primary();
    if (!p) throw std::runtime_error("the cluster has no primary");
    return *p;
  }
  std::string hostname(std::size_t i) const { return real_ ? real_->hostname(i) : cluster_->hostname(i); }
  std::filesystem::path mount(std::size_t i) const { return real_ ? real_->mount(i) : cluster_->mount(i); }
  std::filesystem::path database(std::size_t i) const { return mount(i) / database_name; }
  std::vector<std::size_t> replicas_of(std::size_t p) const {
    std::vector<std::size_t> r;
    for (std::size_t i = 0; i < node_count; ++i)
      if (i != p) r.push_back(i);
    return r;
  }

  // Starts the scenario's fault; says what it did. heal() ends it.
  std::string inject() {
    const std::size_t p = primary();
    old_primary_ = p;
    const auto replicas = replicas_of(p);
    const auto& s = o_.scenario;
    if (s == "kill9_primary") {
      nodes_[p]->kill_now();
      nodes_[p]->wait_exit(5s);
      // Its LiteFS hands the lease to a replica it has fully shipped to.
      const std::size_t next = pick(replicas);
      cluster_->failover(next, 500ms, fwd_sim::cluster::promotion::caught_up);
      return "SIGKILL fwd_node on " + hostname(p) + "; LiteFS promotes " + hostname(next) +
             " (caught up)";
    }
    if (s == "sigstop_primary") {
      stopped_ = nodes_[p]->pid();
      ::kill(stopped_, SIGSTOP);
      return "SIGSTOP fwd_node on " + hostname(p);
    }
    if (s == "partition_primary_one" || s == "partition_primary_all") {
      cut_ = s == "partition_primary_one" ? std::vector<std::size_t>{pick(replicas)} : replicas;
      lab_.partition(p, cut_);
      std::string names;
      for (auto r : cut_) {
        cluster_->disconnect(r);  // LiteFS's replication stream crosses the same network
        names += " " + hostname(r);
      }
      return "partition " + hostname(p) + " from" + names;
    }
    if (s == "loss5" || s == "loss30") {
      const int percent = s == "loss5" ? 5 : 30;
      lab_.loss(percent);
      return std::to_string(percent) + "% of packets dropped on every node";
    }
    if (s == "latency200") {
      for (auto& proxy : proxies_) proxy->set_delay(200ms);
      return "200 ms added to every byte between nodes, both ways";
    }
    if (s == "litefs_restart" || s == "litefs_restart_real") {
      restarted_ = pick({p, replicas[0], replicas[1]});
      if (real_)
        real_->kill(restarted_);
      else
        cluster_->kill(restarted_);
      return "LiteFS killed under " + hostname(restarted_) + (restarted_ == p ? " (primary)" : " (replica)");
    }
    if (s == "lossy_promotion" || s == "lossy_promotion_durable") {
      const std::size_t next = pick(replicas);
      cluster_->failover(next, 300ms, fwd_sim::cluster::promotion::as_is);
      return "LiteFS promotes " + hostname(next) + " with what it has (as_is)";
    }
    throw std::invalid_argument("unknown scenario " + s);
  }

  void heal() {
    const auto& s = o_.scenario;
    if (s == "sigstop_primary" && stopped_ > 0) ::kill(stopped_, SIGCONT);
    if (s == "partition_primary_one" || s == "partition_primary_all" || s == "loss5" || s == "loss30") {
      lab_.heal();
      for (auto r : cut_) cluster_->reconnect(r);
    }
    if (s == "latency200")
      for (auto& proxy : proxies_) proxy->set_delay(0ms);
    if (s == "litefs_restart") cluster_->restart(restarted_);
    if (s == "litefs_restart_real") real_->restart(restarted_);
  }

  int check(bool recovered, double fault_at, double healed_at, double recovered_at) {
    const auto records = history_.all();
    std::vector<counts> copies;
    for (std::size_t i = 0; i < node_count; ++i) {
      copies.push_back(count_rows(database(i)));
      if (!copies.back().error.empty())
        return setup_failure("sqlite3 cannot read " + database(i).string() + ": " + copies.back().error);
    }
    const auto& rows = copies[primary()].rows;
    std::size_t acked = 0, failed = 0, unconfirmed = 0, lost = 0, doubled = 0, ryw = 0, phantom = 0, diverged = 0;
    // Acknowledged by the old primary for a local call with durability none, then lost by
    // a lossy promotion: LiteFS replicates asynchronously, so without durability nothing
    // can tell that caller. Counted, not a violation; any other loss is one.
    std::size_t lost_async = 0;
    const bool async_loss_expected = o_.scenario == "lossy_promotion";
    std::size_t failed_present = 0, unconfirmed_present = 0, ryw_unknown = 0;
    std::map<std::string, std::size_t> classes;
    std::size_t during = 0, acked_during = 0;  // calls made while the fault lasted
    const call_record* slowest = nullptr;
    std::vector<std::string> violations;
    std::map<std::pair<std::string, std::int64_t>, const call_record*> attempted;
    auto describe = [&](const call_record& r) {
      return fmt::format("{}#{} (node {}, call {:.3f}-{:.3f} s, {}, {} attempt(s), primary txid {}, local txid {})",
                         r.writer, r.seq, hostname(r.node), r.started_s, r.ended_s,
                         r.ran_locally ? "ran locally" : "forwarded", r.attempts, r.txid, r.local_txid);
    };
    for (const auto& r : records) {
      attempted[{r.writer, r.seq}] = &r;
      if (!slowest || r.ended_s - r.started_s > slowest->ended_s - slowest->started_s) slowest = &r;
      if (r.started_s >= fault_at && r.started_s < healed_at) {
        ++during;
        if (r.result == outcome::acked) ++acked_during;
      }
      const auto it = rows.find({r.writer, r.seq});
      const std::int64_t n = it == rows.end() ? 0 : it->second;
      switch (r.result) {
        case outcome::acked:
          ++acked;
          if (n == 0 && async_loss_expected && r.ran_locally && r.node == old_primary_) {
            ++lost_async;
            if (lost_async <= 3) std::printf("  lost (acknowledged on the old primary, durability none): %s\n",
                                             describe(r).c_str());
          } else if (n == 0) {
            ++lost;
            violations.push_back("LOST acknowledged write " + describe(r));
          }
          if (r.visible < 0) {
            ++ryw_unknown;  // the node could not read its copy in time (a busy primary)
          } else if (r.visible != 1) {
            ++ryw;
            violations.push_back(fmt::format("READ-YOUR-WRITES broken: {} rows visible on the calling node "
                                             "right after the acknowledgement of {}",
                                             r.visible, describe(r)));
          }
          break;
        case outcome::failed:
          ++failed;
          ++classes[r.error_class];
          if (n == 1) ++failed_present;
          break;
        case outcome::unconfirmed:
          ++unconfirmed;
          ++classes["unconfirmed: " + r.error_class.substr(0, 40)];
          if (n == 1) ++unconfirmed_present;
          break;
      }
      if (n > 1) {
        ++doubled;
        violations.push_back(fmt::format("DOUBLED ({} rows) {} write {}", n,
                                         r.result == outcome::acked ? "acknowledged" : "unacknowledged", describe(r)));
      }
    }
    for (const auto& [key, n] : rows) {
      if (!attempted.count(key)) {
        ++phantom;
        violations.push_back(fmt::format("PHANTOM row {}#{} ({} rows) that no call wrote", key.first, key.second, n));
      }
    }
    for (std::size_t i = 0; i < node_count; ++i) {
      if (copies[i].rows != rows) {
        ++diverged;
        violations.push_back("DIVERGED: " + hostname(i) + "'s copy differs from the primary's");
      }
    }
    if (!recovered) violations.push_back(fmt::format("NO RECOVERY: some node acknowledged no write within 45 s of "
                                                     "the heal at {:.1f} s",
                                                     healed_at));
    if (acked == 0) violations.push_back("NOTHING ACKNOWLEDGED: the run checked nothing");

    std::printf("  during the fault: %zu calls, %zu acknowledged\n", during, acked_during);
    if (slowest)
      std::printf("  slowest call: %.2f s (deadline %.1f s): %s\n", slowest->ended_s - slowest->started_s,
                  call_deadline_ms / 1000.0, describe(*slowest).c_str());
    for (const auto& [cls, n] : classes) std::printf("  %-48s %zu\n", cls.c_str(), n);
    std::printf("  failed writes present: %zu of %zu; unconfirmed present: %zu of %zu; recovered %.1f s after the heal; "
                "read-your-writes not measured for %zu acknowledged calls (the node could not read in time)\n",
                failed_present, failed, unconfirmed_present, unconfirmed, recovered_at - healed_at, ryw_unknown);
    if (lost_async > 0)
      std::printf("  lost: %zu acknowledged on the old primary with durability none (LiteFS's asynchronous "
                  "replication; expected here)\n",
                  lost_async);
    std::printf("RESULT scenario=%s seed=%llu writes=%zu acked=%zu failed=%zu unconfirmed=%zu lost=%zu doubled=%zu "
                "ryw=%zu phantom=%zu diverged=%zu lost_async=%zu violations=%zu\n",
                o_.scenario.c_str(), static_cast<unsigned long long>(o_.seed), records.size(), acked, failed,
                unconfirmed, lost, doubled, ryw, phantom, diverged, lost_async, violations.size());
    const std::size_t shown = std::min<std::size_t>(violations.size(), 40);
    for (std::size_t i = 0; i < shown; ++i) std::printf("VIOLATION %s\n", violations[i].c_str());
    if (shown < violations.size()) std::printf("VIOLATION ... and %zu more\n", violations.size() - shown);
    std::fflush(stdout);
    return violations.empty() ? 0 : 1;
  }

  options o_;
  std::mt19937_64 rng_;
  netns_lab lab_{node_count};
  std::optional<fwd_sim::cluster> cluster_;
  std::optional<fwd_test::litefs_cluster> real_;
  std::vector<std::unique_ptr<fwd_faults::delay_proxy>> proxies_;
  std::vector<std::unique_ptr<demo::node_process>> nodes_;
  std::vector<std::unique_ptr<node_writers>> writers_;
  std::string members_;
  history history_;
  pid_t stopped_ = -1;
  std::vector<std::size_t> cut_;
  std::size_t restarted_ = 0;
  std::size_t old_primary_ = 0;  // the primary when the fault began
};

}  // namespace

int main(int argc, char** argv) {
  options o;
  o.seed = std::random_device{}();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--list") {
      for (const auto& s : scenarios) std::printf("%s\n", s.c_str());
      return 0;
    } else if (arg == "--seed" && i + 1 < argc) {
      o.seed = std::stoull(argv[++i]);
    } else if (arg == "--fault-ms" && i + 1 < argc) {
      o.fault = std::chrono::milliseconds(std::stol(argv[++i]));
    } else if (arg == "--verbose") {
      o.verbose = true;
    } else if (o.scenario.empty() && arg[0] != '-') {
      o.scenario = arg;
    } else {
      std::fprintf(stderr, "usage: fwd_fault_run SCENARIO [--seed N] [--fault-ms N] [--verbose] | --list\n");
      return 2;
    }
  }
  if (std::find(scenarios.begin(), scenarios.end(), o.scenario) == scenarios.end()) {
    std::fprintf(stderr, "fwd_fault_run: unknown scenario '%s' (--list shows them)\n", o.scenario.c_str());
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  if (auto why = netns_lab::unavailable()) {
    std::printf("SKIP %s: %s\n", o.scenario.c_str(), why->c_str());
    return 77;
  }
  if (::access("/usr/bin/nsenter", X_OK) != 0 || fwd_faults::run_command("command -v sqlite3").status != 0) {
    std::printf("SKIP %s: needs /usr/bin/nsenter (util-linux) and the sqlite3 CLI\n", o.scenario.c_str());
    return 77;
  }
  netns_lab::sweep();
  sweep_sim_roots();
  std::printf("scenario %s seed %llu\n", o.scenario.c_str(), static_cast<unsigned long long>(o.seed));
  std::fflush(stdout);
  try {
    run r(o);
    return r.execute();
  } catch (const std::exception& e) {
    std::printf("SETUP FAILED %s seed=%llu: %s\n", o.scenario.c_str(), static_cast<unsigned long long>(o.seed),
                e.what());
    return 2;
  }
}
