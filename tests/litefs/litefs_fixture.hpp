#pragma once

#include <fwd/error.hpp>
#include <fwd/litefs/path_check.hpp>

// Real LiteFS as a test fixture: a cluster of LiteFS processes (the real binary, v0.5.14)
// on FUSE mounts in a temporary directory, on free loopback ports, with a static lease
// (node 0 is primary for ever) or a consul lease against the fixture's Consul stand-in
// (real failover). Everything it started is stopped and unmounted when it goes away, also
// when a test fails: SIGTERM, SIGKILL for a node that ignores it, then
// `fusermount3 -u` (and `-uz` for a dead or busy mount).
//
//   if (auto why = fwd_test::litefs_unavailable()) { skip_line(*why); return; }
//   fwd_test::litefs_cluster c({.nodes = 3, .lease = fwd_test::lease_kind::consul});
//   c.start_all();                 // node 0 first (it becomes primary), then the others
//   c.mount(1) / "app.db";         // the database on node 1's FUSE mount
//   c.kill(0); c.wait_primary(..); // failover;   c.promote(2): planned handoff
//   c.stop(1); c.restart(1);
//
// The binary is $FWD_LITEFS, else ../shared/litefs/litefs beside the repository.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cluster_driver.hpp"
#include "consul_standin.hpp"

namespace fwd_test {

/// Why real-LiteFS tests cannot run here (no binary, no /dev/fuse, no fusermount3, not
/// root), or nullopt when they can.
std::optional<std::string> litefs_unavailable();

/// The LiteFS binary: $FWD_LITEFS, else <repo>/../shared/litefs/litefs.
std::filesystem::path litefs_binary();

/// Runs a program (searched in PATH) with arguments; its exit status (-1: could not run).
/// Output goes to `output` when given.
int run_program(const std::vector<std::string>& args, std::string* output = nullptr);

enum class lease_kind { static_lease, consul };

struct litefs_cluster_options {
  std::size_t nodes = 2;
  lease_kind lease = lease_kind::static_lease;
  std::string ttl = "2s";            // consul session TTL (short: failover tests stay fast)
  std::string lock_delay = "500ms";  // consul lock-delay
};

class litefs_cluster {
 public:
  explicit litefs_cluster(litefs_cluster_options options = {});
  ~litefs_cluster();
  litefs_cluster(const litefs_cluster&) = delete;
  litefs_cluster& operator=(const litefs_cluster&) = delete;

  std::size_t size() const noexcept { return nodes_.size(); }
  /// Node i's LiteFS lease hostname ("node1", "node2", ...), what replicas show in .primary.
  std::string hostname(std::size_t i) const;
  std::filesystem::path mount(std::size_t i) const;
  std::filesystem::path data_dir(std::size_t i) const;
  std::filesystem::path root() const { return root_; }
  std::uint16_t http_port(std::size_t i) const;
  consul_standin* consul() noexcept { return consul_.get(); }

  /// Starts node i's LiteFS and waits (bounded) for its mount to show `.lag`; throws with
  /// the node's log if it does not come up.
  void start(std::size_t i, std::chrono::milliseconds timeout = std::chrono::seconds(20));
  /// Node 0 first, until it is primary; then the others, until each shows `.primary`.
  void start_all(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  /// SIGTERM (SIGKILL after 5 s), reaped, then unmounted.
  void stop(std::size_t i);
  /// SIGKILL, reaped. The dead mount stays (ENOTCONN) until restart() or the destructor.
  void kill(std::size_t i);
  /// Unmounts whatever is left on node i's mount and starts it again.
  void restart(std::size_t i, std::chrono::milliseconds timeout = std::chrono::seconds(20));
  bool running(std::size_t i) const;

  /// GET /info on node i's LiteFS HTTP API ("" when it does not answer).
  std::string info(std::size_t i);
  /// /info says isPrimary:true.
  bool is_primary(std::size_t i);
  /// Waits (bounded) until some running node other than `except` is primary per /info.
  std::optional<std::size_t> wait_primary(std::chrono::milliseconds timeout,
                                          std::optional<std::size_t> except = std::nullopt);
  /// Waits (bounded) until node i's mount shows `.primary` (connected replica).
  bool wait_connected(std::size_t i, std::chrono::milliseconds timeout);
  /// POST /promote on node i (planned handoff); true when LiteFS answered 2xx, else `why`
  /// gets its status and body.
  bool promote(std::size_t i, std::string* why = nullptr);
  /// The content of `<db>-pos` on node i's mount ("" when absent).
  std::string position(std::size_t i, const std::string& db);
  /// Waits (bounded) until every running node's `<db>-pos` equals the one of node `primary`.
  bool wait_caught_up(std::size_t primary, const std::string& db,
                      std::chrono::milliseconds timeout);
  /// Node i's LiteFS output so far (for failing tests).
  std::string log(std::size_t i) const;

 private:
  struct node;
  void write_config(std::size_t i);
  void unmount(std::size_t i);

  litefs_cluster_options options_;
  std::filesystem::path root_;
  std::unique_ptr<consul_standin> consul_;
  std::vector<std::unique_ptr<node>> nodes_;
};

/// An HTTP request to 127.0.0.1:port (bounded by `timeout`): status and body; status 0 on
/// a connection failure.
std::pair<int, std::string> http_request(std::uint16_t port, const std::string& method,
                                         const std::string& target,
                                         std::chrono::milliseconds timeout,
                                         const std::string& body = {});

/// The database-path check's outcome as one value, for assertions.
struct path_check_result {
  boost::system::error_code code;
  std::string message;
  std::filesystem::path mount;
  bool ok() const { return !code; }
};

inline path_check_result check_path(const std::filesystem::path& db) {
  path_check_result r;
  fwd::diagnostics diag;
  r.mount = fwd::litefs::check_database_path(db, {}, r.code, diag);
  r.message = diag.message();
  return r;
}

}  // namespace fwd_test
