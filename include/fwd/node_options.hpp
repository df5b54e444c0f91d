#pragma once

// Everything a fwd::node needs (node_options), and the helpers that fill it: the cluster
// secret from the environment or a file, the members from a list or from DNS.

#include <unistd.h>

#include <fwd/cluster/membership_types.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs/types.hpp>
#include <fwd/rpc/tls.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/write/breaker.hpp>
#include <fwd/write/retry.hpp>
#include <fwd/write/write_options.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fwd {

/// What the node does when the database path is not on a LiteFS mount.
enum class path_check_mode {
  refuse,  ///< start() throws fwd::error (not_litefs / misconfigured_mount)
  warn,    ///< start() reports the problem through node_options::on_warning and goes on
  off,     ///< no check
};

/**
 * The cluster secret from environment variable `name`. Throws fwd::error(bad_argument)
 * when it is unset or empty, saying what to set.
 */
inline std::string secret_from_env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("the environment variable {} holding the cluster secret is unset or "
                                 "empty: set it to the same secret on every node",
                                 name));
  }
  return value;
}

/**
 * The cluster secret from the file at `path` (trailing newlines removed). Throws
 * fwd::error(bad_argument) when it cannot be read or is empty.
 */
inline std::string secret_from_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("cannot read the cluster secret file {}: create it (same content on "
                                 "every node)",
                                 path.string()));
  }
  std::string secret{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  if (secret.empty()) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("the cluster secret file {} is empty", path.string()));
  }
  return secret;
}

/// Members from a fixed list of fwd listen addresses.
inline membership_options static_members(
    const std::vector<boost::asio::ip::tcp::endpoint>& endpoints) {
  membership_options options;
  for (const auto& e : endpoints)
    options.static_members.push_back(member{e.address().to_string(), e});
  return options;
}

/// Members from DNS: every A/AAAA address of `name`, at fwd port `port`.
inline membership_options dns_members(std::string name, std::uint16_t port) {
  membership_options options;
  options.dns.push_back(dns_source::address(std::move(name), port));
  return options;
}

/// The OS hostname (LiteFS's default lease hostname).
inline std::string os_hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return {};
  return name;
}

/// Everything a node needs. Only `database` and a secret (or `insecure`) are required.
struct node_options {
  /// Where this node's fwd server listens (port 0: a free port, see local_endpoint()).
  boost::asio::ip::tcp::endpoint listen{boost::asio::ip::make_address("127.0.0.1"), 0};
  /// The cluster's members (their listen addresses): static_members() or dns_members().
  membership_options members;
  /// The LiteFS mount (default: the database's directory).
  std::filesystem::path mount;
  /// The database inside the mount, e.g. /litefs/blog.db.
  std::filesystem::path database;
  /// The cluster secret every node shares (secret_from_env / secret_from_file): at least
  /// 32 bytes, e.g. `openssl rand -base64 32`. This node proves it to its peers.
  std::string secret;
  /// Secrets accepted from peers besides `secret`, so that the cluster's secret can change
  /// without downtime: give every node the new secret here, then make it each node's
  /// `secret` (keeping the old one here), then drop the old one. At least 32 bytes each.
  std::vector<std::string> accepted_secrets;
  /// Run without a secret (a fixed, public one): only for tests on a private machine.
  bool insecure = false;
  /// This node's LiteFS hostname, what replicas see in `.primary` (default: OS hostname).
  std::string litefs_hostname;
  /// A name for logs and `fwd.hello` (default: the LiteFS hostname).
  std::string name;
  /// The database-path check at start, and whether the mount must be FUSE (false for
  /// the LiteFS simulation).
  path_check_mode path_check = path_check_mode::refuse;
  bool require_fuse = true;
  /// Deadline of a call that sets none.
  std::chrono::milliseconds default_deadline{5000};
  retry_policy retry;
  breaker_options breaker;
  /// Forwarded writes wait until they are visible locally (see forwarder).
  bool read_your_writes = true;
  /// Discovery: how long the primary's address is trusted, and one probe's deadline.
  std::chrono::milliseconds discovery_ttl{2000};
  std::chrono::milliseconds probe_timeout{300};
  /// Connecting to a peer (and its handshake) must finish within this.
  std::chrono::milliseconds connect_timeout{1000};
  /// The primary's writer (group commit, dedup retention, busy timeout...).
  sqlite::write_options write;
  /// LiteFS's HTTP address (its `http.addr`; LiteFS's default is 127.0.0.1:20202). When
  /// set, the node follows LiteFS's `/events` stream and sees role changes and new
  /// transactions as they happen; without it, the mount is polled (`litefs_poll`).
  std::optional<boost::asio::ip::tcp::endpoint> litefs_http;
  /// How often the node's litefs::monitor re-reads the mount when nobody waits for a
  /// position (while one waits: every millisecond, shared by all waiters).
  std::chrono::milliseconds litefs_poll{50};
  /// The local LiteFS role read from the mount (default: litefs::current_role). For tests;
  /// the node itself reads the role from its monitor, which calls this.
  std::function<litefs::role()> role;
  telemetry_ptr telemetry;
  /// Mutual TLS between the nodes (under fwd's own secret check), for networks that are
  /// not private. Every node needs its certificate, its key and the cluster's CA.
  std::optional<rpc::tls_options> tls;
  /// Receives warnings (path check in warn mode). Default: stderr.
  std::function<void(std::string_view)> on_warning;
};

}  // namespace fwd
