#pragma once

// Shared by the real-LiteFS tests: fwd_node processes (--litefs-real) over the mounts of
// a litefs_cluster, driven through demo.control like tests/cluster; rows counted with the
// sqlite3 CLI on the mounts themselves.
//
// Where real LiteFS cannot run (no binary, no /dev/fuse, no fusermount3, not root) each
// test prints one line "SKIPPED (real LiteFS unavailable): <why>" and returns: it passes
// without having tested anything (Catch2 v2 has no skip).

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fwd/error.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/path_check.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cluster_driver.hpp"
#include "litefs_fixture.hpp"

using namespace std::chrono_literals;
using fwd_test::litefs_cluster;

#define REQUIRE_REAL_LITEFS()                                                        \
  do {                                                                               \
    if (auto why_ = fwd_test::litefs_unavailable()) {                                \
      std::printf("SKIPPED (real LiteFS unavailable): %s\n", why_->c_str());         \
      std::fflush(stdout);                                                           \
      return;                                                                        \
    }                                                                                \
  } while (false)

namespace litefs_tests {

inline const std::string db_name = "app.db";

inline double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

// sqlite3 CLI on a path; the trimmed output, or "ERROR(<status>): output".
inline std::string sqlite_cli(const std::filesystem::path& db, const std::string& sql) {
  std::string out;
  const int status = fwd_test::run_program({"sqlite3", "-bail", db.string(), sql}, &out);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (status != 0) return "ERROR(" + std::to_string(status) + "): " + out;
  return out;
}

// fwd_node processes over a litefs_cluster's mounts, node i on LiteFS node i.
struct fwd_nodes {
  litefs_cluster& fs;
  std::vector<std::unique_ptr<demo::reserved_port>> reserved;
  std::vector<std::uint16_t> ports;
  std::vector<std::unique_ptr<demo::node_process>> nodes;
  demo::controller control;

  explicit fwd_nodes(litefs_cluster& c) : fs(c) {
    ::setenv("FWD_NODE_TRACE", "1", 0);  // a failing test shows each node's probes and calls
    for (std::size_t i = 0; i < fs.size(); ++i) {
      reserved.push_back(std::make_unique<demo::reserved_port>());
      ports.push_back(reserved.back()->port());
    }
    nodes.resize(fs.size());
  }

  /// Extra fwd_node arguments per node (e.g. --litefs-http), set before start().
  std::vector<std::vector<std::string>> extra_args;

  void start(std::size_t i) {
    std::vector<std::string> args = {"--litefs-real", "--db", db_name};
    if (i < extra_args.size()) args.insert(args.end(), extra_args[i].begin(), extra_args[i].end());
    nodes[i] = std::make_unique<demo::node_process>(
        FWD_NODE_PATH,
        demo::node_arguments(fs.hostname(i), fs.mount(i).string(), ports[i], ports, true, args),
        false);
  }

  void start_all() {
    for (std::size_t i = 0; i < fs.size(); ++i) start(i);
    for (std::size_t i = 0; i < fs.size(); ++i) {
      const bool ok = nodes[i]->wait_for("MIGRATED ", 30s).has_value();
      if (!ok) UNSCOPED_INFO("fwd node " << i << " printed:\n" << nodes[i]->output());
      REQUIRE(ok);
    }
  }

  void kill(std::size_t i) {
    nodes[i]->kill_now();
    nodes[i]->wait_exit(5s);
  }

  demo::control_result append(std::size_t from, const std::string& writer, int seq,
                              std::int64_t deadline_ms = 5000, bool read_your_writes = true) {
    return control.call(ports[from], "append", {writer, std::to_string(seq)}, deadline_ms,
                        read_your_writes);
  }

  std::string outputs() {
    std::string all;
    for (std::size_t i = 0; i < nodes.size(); ++i)
      if (nodes[i]) all += "--- fwd node " + std::to_string(i) + ":\n" + nodes[i]->output();
    return all;
  }
};

// Creates the database on the primary's mount in the given journal mode (the mode is in
// the database header, so it replicates) and waits until every replica has it.
inline void create_database(litefs_cluster& c, std::size_t primary, bool wal) {
  const std::string mode = sqlite_cli(c.mount(primary) / db_name,
                                      wal ? "PRAGMA journal_mode=WAL; PRAGMA application_id=0;"
                                          : "PRAGMA journal_mode=DELETE; PRAGMA application_id=0;");
  INFO("journal mode set: " << mode);
  REQUIRE(mode.rfind(wal ? "wal" : "delete", 0) == 0);
  REQUIRE(c.wait_caught_up(primary, db_name, 10s));
}

inline std::int64_t cli_count(litefs_cluster& c, std::size_t i, const std::string& where) {
  const std::string out =
      sqlite_cli(c.mount(i) / db_name, "SELECT count(*) FROM events WHERE " + where + ";");
  try {
    return std::stoll(out);
  } catch (...) {
    UNSCOPED_INFO("sqlite3 on " << c.mount(i) << ": " << out);
    return -1;
  }
}

}  // namespace litefs_tests


using namespace litefs_tests;
