// The fwd demo: three node processes over a simulated LiteFS cluster on loopback.
// Both replicas write (their writes are forwarded to the primary); in the middle the
// primary is killed and a replica is promoted; the writes go on. At the end the demo
// proves that every acknowledged write is in the database exactly once, and exits 0
// only then.
//
//   fwd_demo             a short summary: what happened, and the proof
//   fwd_demo --verbose   also every write, retry and primary change as it happens

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster_driver.hpp"
#include "litefs_sim.hpp"

namespace {

constexpr int writes_per_writer = 40;
constexpr int kill_after = 15;  // the primary dies once each writer has done this many

struct outcome {
  bool acknowledged = false;
  std::string error;
};

/// What the writers saw, for the summary.
struct tally {
  int forwarded = 0, local = 0, retried = 0, visible = 0, not_visible = 0;
  unsigned most_attempts = 0;
};

}  // namespace

int main(int argc, char** argv) {
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--verbose" || arg == "-v") {
      verbose = true;
    } else {
      std::fprintf(stderr, "usage: fwd_demo [--verbose]\n");
      return 2;
    }
  }
  const auto started = std::chrono::steady_clock::now();
  std::printf("fwd demo: 3 nodes over a simulated LiteFS cluster on 127.0.0.1\n");
  std::printf(
      "  node-a is the primary; node-b and node-c each make %d writes, which fwd forwards\n"
      "  to the primary; midway the primary is killed and LiteFS promotes node-c.\n",
      writes_per_writer);
  fwd_sim::cluster_options sim_options;
  sim_options.hostnames = {"node-a", "node-b", "node-c"};
  // FWD_DEMO_ROOT keeps the mounts after the run (for a look with sqlite3).
  if (const char* root = std::getenv("FWD_DEMO_ROOT")) sim_options.root = root;
  fwd_sim::cluster cluster(sim_options);
  cluster.start_replication(std::chrono::milliseconds(5));

  std::vector<std::unique_ptr<demo::reserved_port>> reserved;
  std::vector<std::uint16_t> ports;
  for (int i = 0; i < 3; ++i) {
    reserved.push_back(std::make_unique<demo::reserved_port>());
    ports.push_back(reserved.back()->port());
  }
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  for (std::size_t i = 0; i < 3; ++i) {
    nodes.push_back(std::make_unique<demo::node_process>(
        FWD_NODE_PATH,
        demo::node_arguments(cluster.hostname(i), cluster.mount(i).string(), ports[i], ports,
                             !verbose, {"--secret", demo::default_secret}),
        verbose));
  }
  for (std::size_t i = 0; i < 3; ++i) {
    if (!nodes[i]->wait_for("MIGRATED ", std::chrono::seconds(20))) {
      std::printf("FAILED: %s did not start and migrate\n", cluster.hostname(i).c_str());
      return 1;
    }
  }
  if (verbose) {
    std::printf(
        "all nodes up; primary: node-a (port %u); replicas node-b, node-c migrated the schema\n",
        static_cast<unsigned>(ports[0]));
  }

  demo::controller control(demo::default_secret);
  std::mutex mutex;
  std::map<std::pair<std::string, int>, outcome> outcomes;
  tally seen;
  std::atomic<int> progress_b{0}, progress_c{0};
  auto writer = [&](std::size_t node, std::atomic<int>& progress) {
    const std::string name = cluster.hostname(node);
    for (int seq = 1; seq <= writes_per_writer; ++seq) {
      demo::control_result r;
      try {
        r = control.call(ports[node], "append", {name, std::to_string(seq)}, 8000);
      } catch (const std::exception& e) {
        r.category = 3;
        r.detail = e.what();
      }
      {
        std::lock_guard lock(mutex);
        auto& o = outcomes[{name, seq}];
        o.acknowledged = r.category == 0;
        o.error = r.detail;
        if (r.category == 0) {
          ++(r.ran_locally ? seen.local : seen.forwarded);
          if (r.attempts > 1) ++seen.retried;
          seen.most_attempts = std::max(seen.most_attempts, r.attempts);
          ++(r.visible == 1 ? seen.visible : seen.not_visible);
        }
        if (!verbose) {
          // The summary says it all.
        } else if (r.category == 0) {
          std::printf(
              "%s: write %s#%d -> row %lld, %s, %u attempt(s), TXID %llu, visible here: %s\n",
              name.c_str(), name.c_str(), seq, static_cast<long long>(r.value),
              r.ran_locally ? "ran locally (primary)" : "forwarded", r.attempts,
              static_cast<unsigned long long>(r.txid), r.visible == 1 ? "yes" : "no");
        } else if (r.category != 0) {
          std::printf("%s: write %s#%d FAILED (reported): %s\n", name.c_str(), name.c_str(), seq,
                      r.detail.substr(0, 160).c_str());
        }
      }
      ++progress;
    }
  };
  std::thread wb(writer, 1, std::ref(progress_b));
  std::thread wc(writer, 2, std::ref(progress_c));

  // Wait until both writers are well under way, then kill the primary.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((progress_b < kill_after || progress_c < kill_after) &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a progress poll, bounded above
  }
  if (verbose) std::printf("*** killing the primary node-a (SIGKILL) mid-stream\n");
  const int killed_at = std::min(progress_b.load(), progress_c.load());
  nodes[0]->kill_now();
  nodes[0]->wait_exit(std::chrono::seconds(5));
  if (verbose) std::printf("*** LiteFS election (200 ms without a primary), then node-c is promoted\n");
  // A caught-up candidate is promoted: LiteFS replicates asynchronously, and with
  // promotion::as_is the old primary's last acknowledged writes could be lost (what fwd's
  // exactly-once cannot cover without durable acknowledgement).
  cluster.failover(2, std::chrono::milliseconds(200), fwd_sim::cluster::promotion::caught_up);
  if (verbose) std::printf("*** node-c is primary; node-b now replicates from it\n");

  wb.join();
  wc.join();
  cluster.stop_replication();
  cluster.replicate_now();

  // The proof: read the final primary's database.
  std::map<std::pair<std::string, int>, int> counts;
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(cluster.database_path(2).c_str(), &db, SQLITE_OPEN_READONLY, "unix") !=
      SQLITE_OK) {
    std::printf("FAILED: cannot open the primary's database\n");
    return 1;
  }
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, "SELECT writer, seq, count(*) FROM events GROUP BY writer, seq", -1, &stmt,
                     nullptr);
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    counts[{reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)),
            sqlite3_column_int(stmt, 1)}] = sqlite3_column_int(stmt, 2);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);

  int acknowledged = 0, failed = 0, failed_applied = 0, missing = 0, duplicated = 0;
  for (const auto& [key, o] : outcomes) {
    const int n = counts.count(key) ? counts[key] : 0;
    if (n > 1) ++duplicated;
    if (o.acknowledged) {
      ++acknowledged;
      if (n != 1) ++missing;
    } else {
      ++failed;
      if (n == 1) ++failed_applied;
    }
  }
  for (const auto& [key, n] : counts) {
    if (!outcomes.count(key)) ++duplicated;  // a row nobody asked for
  }
  for (auto& n : nodes) n->terminate();
  for (auto& n : nodes) n->wait_exit(std::chrono::seconds(5));

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("\nwhat happened (%.1f s):\n", seconds);
  std::printf("  %d writes: %d acknowledged, %d failed and reported to the caller", acknowledged + failed,
              acknowledged, failed);
  if (failed > 0) std::printf(" (%d of those had committed once)", failed_applied);
  std::printf("\n");
  std::printf("  acknowledged: %d forwarded from a replica, %d run on the primary where they were made\n",
              seen.forwarded, seen.local);
  std::printf("  the primary node-a was killed after about %d writes per writer; node-c took over;\n"
              "  %d write(s) were retried across the failover (at most %u attempts for one)\n",
              killed_at, seen.retried, seen.most_attempts);
  std::printf("  read-your-writes: %d of %d acknowledged writes were already readable on the node\n"
              "  that made them when its call returned\n",
              seen.visible, acknowledged);
  std::printf("\nthe proof (node-c's database, every write looked up by writer and sequence):\n");
  std::printf("  acknowledged writes missing: %d; writes present more than once: %d\n", missing,
              duplicated);
  if (missing == 0 && duplicated == 0 && acknowledged > 0) {
    std::printf("PROVED: every acknowledged write is present exactly once%s\n",
                verbose ? "" : " (--verbose shows every write)");
    return 0;
  }
  std::printf("FAILED: the proof does not hold\n");
  return 1;
}
