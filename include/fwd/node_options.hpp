#pragma once

// Everything a fwd::node needs (node_options), and the helpers that fill it: the cluster
// secret from the environment or a file, the members from a list or from DNS, addresses
// and member lists from text, and all of it from the environment (node_options::from_env).

#include <unistd.h>

#include <fwd/cluster/membership_types.hpp>
#include <fwd/error.hpp>
#include <fwd/litefs/types.hpp>
#include <fwd/rpc/tls.hpp>
#include <fwd/telemetry.hpp>
#include <fwd/write/breaker.hpp>
#include <fwd/write/durability.hpp>
#include <fwd/write/retry.hpp>
#include <fwd/write/write_options.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <fmt/format.h>

#include <charconv>
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

/**
 * An address with its port, as text: "10.0.0.5:7070", "[fdaa::3]:7070", "[::]:7070".
 * An IPv6 address needs its brackets. With `allow_empty_host`, ":7070" means
 * 127.0.0.1:7070 (LiteFS's way of writing its `http.addr`). nullopt when the text is not
 * of that form or the port is not 1..65535.
 */
inline std::optional<boost::asio::ip::tcp::endpoint> parse_endpoint(std::string_view text,
                                                                    bool allow_empty_host = false) {
  std::string_view host, port_text;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return std::nullopt;
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // IPv6 without brackets
  }
  unsigned port = 0;
  const auto [end, err] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (err != std::errc{} || end != port_text.data() + port_text.size() || port == 0 || port > 65535)
    return std::nullopt;
  boost::system::error_code ec;
  boost::asio::ip::address address;
  if (host.empty()) {
    if (!allow_empty_host) return std::nullopt;
    address = boost::asio::ip::make_address_v4("127.0.0.1");
  } else {
    address = boost::asio::ip::make_address(std::string(host), ec);
    if (ec) return std::nullopt;
  }
  return boost::asio::ip::tcp::endpoint(address, static_cast<std::uint16_t>(port));
}

/**
 * Members from text: one `host:port` or several, separated by commas. An IP address
 * ("10.0.0.5:7070", "[fdaa::3]:7070") is a static member; a name ("app.internal:7070")
 * is polled in DNS, every A and AAAA address of it a member on that port. On a malformed
 * entry, `ec` is errc::bad_argument and `diag` names the entry and the form expected.
 */
inline membership_options parse_members(std::string_view text, boost::system::error_code& ec,
                                        diagnostics& diag) {
  ec.clear();
  membership_options out;
  auto fail = [&](std::string why) {
    ec = make_error_code(errc::bad_argument);
    diag.assign(std::move(why));
    return membership_options{};
  };
  std::size_t start = 0;
  bool any = false;
  while (start <= text.size()) {
    const auto comma = text.find(',', start);
    std::string_view entry = text.substr(start, comma == std::string_view::npos ? text.npos : comma - start);
    start = comma == std::string_view::npos ? text.size() + 1 : comma + 1;
    while (!entry.empty() && entry.front() == ' ') entry.remove_prefix(1);
    while (!entry.empty() && entry.back() == ' ') entry.remove_suffix(1);
    if (entry.empty()) continue;
    any = true;
    if (auto endpoint = parse_endpoint(entry)) {
      out.static_members.push_back(member{endpoint->address().to_string(), *endpoint});
      continue;
    }
    const auto colon = entry.rfind(':');
    unsigned port = 0;
    const std::string_view name = colon == entry.npos ? std::string_view{} : entry.substr(0, colon);
    const std::string_view port_text = colon == entry.npos ? std::string_view{} : entry.substr(colon + 1);
    const auto [end, err] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    const bool name_ok = !name.empty() && name.find_first_of(":[]/ ") == std::string_view::npos;
    if (!name_ok || err != std::errc{} || end != port_text.data() + port_text.size() || port == 0 ||
        port > 65535) {
      return fail(fmt::format("member \"{}\" is not host:port: write a DNS name or an address with "
                              "its fwd port, e.g. app.internal:7070, 10.0.0.5:7070 or "
                              "[fdaa::3]:7070 (IPv6 in brackets), several separated by commas",
                              entry));
    }
    out.dns.push_back(dns_source::address(std::string(name), static_cast<std::uint16_t>(port)));
  }
  if (!any) {
    return fail("no member given: write a DNS name with the fwd port (app.internal:7070) or a "
                "comma-separated list of host:port");
  }
  return out;
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
  /// Install fwd::sqlite::install_memory_guard() when the node is made: a SQLite VFS and a
  /// SIGBUS handler, so that a LiteFS that dies under SQLite's memory-mapped `-shm` fails
  /// the connection that touches it with an I/O error (SQLITE_IOERR_SHMLOCK) instead of
  /// killing the process. It covers every connection the process opens afterwards with the
  /// default VFS, the application's own reads included. Turn it off only when something
  /// else in the process must own SIGBUS.
  bool guard_memory_maps = true;
  /// Deadline of a call that sets none.
  std::chrono::milliseconds default_deadline{5000};
  retry_policy retry;
  breaker_options breaker;
  /// Forwarded writes wait until they are visible locally (see forwarder).
  bool read_your_writes = true;
  /// Serve the raw-SQL built-ins, fwd::execute_statement and fwd::execute_bulk: any
  /// statement a caller sends runs on the primary. Off (the default), they are answered
  /// `unknown_procedure` with a detail that says how to turn them on, and nothing runs.
  /// The primary's setting is the one that counts: turn it on on every node that may become
  /// primary. fwd::migrate_procedure is served either way.
  bool enable_raw_sql = false;
  /// What the primary waits for before it acknowledges a write (default none(): once
  /// committed on the primary); forward_options::durability overrides it per call. Needs
  /// every node to run this version (older peers refuse a request that carries it).
  fwd::durability durability;
  /// Whether this node's LiteFS is a candidate for promotion (`lease.candidate` in
  /// litefs.yml, `candidate` in LiteFS's `GET /info`): durability::candidates() waits
  /// for the candidates only. Set it as litefs.yml does.
  bool litefs_candidate = true;
  /// As a replica, how often this node tells the primary its LiteFS position when nothing
  /// changed (a changed position is told at once while durable writes wait on the
  /// primary, within `litefs_poll` otherwise). The primary stops counting a replica it has
  /// not heard from for `durability_forget_after`.
  std::chrono::milliseconds position_heartbeat{1000};
  std::chrono::milliseconds durability_forget_after{10000};
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

  /// The smallest cluster secret from_env() accepts, in bytes.
  static constexpr std::size_t min_secret_size = 32;

  /**
   * Options from the environment, the rest left at their defaults:
   *  - FWD_LISTEN (required): this node's listen address, "0.0.0.0:7070", "[::]:7070"
   *    (IPv6 in brackets; "::" accepts IPv4 too where the system maps it);
   *  - FWD_MEMBERS (required): see parse_members(): "app.internal:7070" (DNS, A and
   *    AAAA) or "10.0.0.5:7070,10.0.0.6:7070";
   *  - FWD_DATABASE (required): the database's absolute path in the LiteFS mount;
   *  - FWD_SECRET or FWD_SECRET_FILE (one of them): the cluster secret, at least
   *    min_secret_size bytes (a file's trailing newlines are removed);
   *  - FWD_LITEFS_HTTP (optional): LiteFS's HTTP address, "127.0.0.1:20202" or ":20202".
   * On the first problem, `ec` is errc::bad_argument and `diag` names the variable, what
   * is wrong, and what a valid value looks like.
   */
  static node_options from_env(boost::system::error_code& ec, diagnostics& diag);
  /// As above; throws fwd::error(bad_argument) instead.
  static node_options from_env() {
    boost::system::error_code ec;
    diagnostics diag;
    node_options options = from_env(ec, diag);
    if (ec) throw fwd::error(ec, std::move(diag));
    return options;
  }
};

inline node_options node_options::from_env(boost::system::error_code& ec, diagnostics& diag) {
  ec.clear();
  diag.clear();
  node_options options;
  auto fail = [&](std::string why) {
    ec = make_error_code(errc::bad_argument);
    diag.assign(std::move(why));
    return node_options{};
  };
  auto get = [](const char* name) -> std::optional<std::string> {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') return std::nullopt;
    return std::string(value);
  };

  const auto listen = get("FWD_LISTEN");
  if (!listen) return fail("FWD_LISTEN is unset: set it to this node's listen address, e.g. 0.0.0.0:7070 or [::]:7070");
  if (auto endpoint = parse_endpoint(*listen)) {
    options.listen = *endpoint;
  } else {
    return fail(fmt::format("FWD_LISTEN=\"{}\" is not an address:port: write e.g. 0.0.0.0:7070, "
                            "10.0.0.5:7070 or [::]:7070 (IPv6 in brackets; a name is not accepted)",
                            *listen));
  }

  const auto members = get("FWD_MEMBERS");
  if (!members) {
    return fail("FWD_MEMBERS is unset: set it to the members' DNS name with the fwd port "
                "(app.internal:7070) or a comma-separated list of host:port");
  }
  boost::system::error_code member_ec;
  diagnostics member_diag;
  options.members = parse_members(*members, member_ec, member_diag);
  if (member_ec) return fail(fmt::format("FWD_MEMBERS=\"{}\": {}", *members, member_diag.message()));

  const auto database = get("FWD_DATABASE");
  if (!database) return fail("FWD_DATABASE is unset: set it to the database's path in the LiteFS mount, e.g. /litefs/app.db");
  options.database = *database;
  if (!options.database.is_absolute() || !options.database.has_filename()) {
    return fail(fmt::format("FWD_DATABASE=\"{}\" is not an absolute path to a file: write the "
                            "database's path in the LiteFS mount, e.g. /litefs/app.db",
                            *database));
  }

  const auto secret = get("FWD_SECRET");
  const auto secret_file = get("FWD_SECRET_FILE");
  const char* secret_source = "FWD_SECRET";
  if (secret && secret_file) {
    return fail("FWD_SECRET and FWD_SECRET_FILE are both set: set only one of them");
  } else if (secret) {
    options.secret = *secret;
  } else if (secret_file) {
    secret_source = "FWD_SECRET_FILE";
    try {
      options.secret = secret_from_file(*secret_file);
    } catch (const fwd::error& e) {
      return fail(fmt::format("FWD_SECRET_FILE=\"{}\": {}", *secret_file, e.get_diagnostics().message()));
    }
  } else {
    return fail("neither FWD_SECRET nor FWD_SECRET_FILE is set: give every node the same secret "
                "of at least 32 bytes, e.g. from `openssl rand -hex 32`");
  }
  if (options.secret.size() < min_secret_size) {
    return fail(fmt::format("the secret from {} is {} bytes: it must be at least {} bytes, the same "
                            "on every node, e.g. from `openssl rand -hex 32`",
                            secret_source, options.secret.size(), min_secret_size));
  }

  if (const auto http = get("FWD_LITEFS_HTTP")) {
    if (auto endpoint = parse_endpoint(*http, true)) {
      options.litefs_http = *endpoint;
    } else {
      return fail(fmt::format("FWD_LITEFS_HTTP=\"{}\" is not an address:port: write LiteFS's "
                              "http.addr, e.g. 127.0.0.1:20202 or :20202",
                              *http));
    }
  }
  return options;
}

}  // namespace fwd
