#pragma once

// What cluster membership is made of: members, DNS sources, snapshots, hooks, options.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>
#include <chrono>
#include <cstdint>
#include <functional>
#include <fwd/detail/cares_channel.hpp>
#include <fwd/detail/cares_error.hpp>
#include <fwd/detail/cares_resolve.hpp>
#include <fwd/detail/completion.hpp>
#include <fwd/error.hpp>
#include <fwd/telemetry.hpp>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fwd {

/// A cluster member: the name it was found under and the address fwd connects to.
/// Members are equal, ordered and hashed by `endpoint` only.
struct member {
  std::string host;  ///< the DNS name (SRV target for SRV), or a static member's label
  boost::asio::ip::tcp::endpoint endpoint;

  friend bool operator==(const member& a, const member& b) noexcept {
    return a.endpoint == b.endpoint;
  }
  friend bool operator<(const member& a, const member& b) noexcept {
    return a.endpoint < b.endpoint;
  }
  friend std::ostream& operator<<(std::ostream& out, const member& m) {
    return out << m.host << " (" << m.endpoint << ")";
  }
};

/// "host (address:port)".
inline std::string to_string(const member& m) {
  const auto address = m.endpoint.address();
  return address.is_v6() ? fmt::format("{} ([{}]:{})", m.host, address.to_string(), m.endpoint.port())
                         : fmt::format("{} ({}:{})", m.host, address.to_string(), m.endpoint.port());
}

/// Hashes a member by its endpoint.
struct member_hash {
  std::size_t operator()(const member& m) const noexcept {
    return std::hash<boost::asio::ip::tcp::endpoint>{}(m.endpoint);
  }
};

/// A DNS name whose records are cluster members.
struct dns_source {
  enum class record_type {
    address,  ///< A and AAAA records of `name`, each member on `port`
    srv,      ///< SRV records of `name`: each target's A and AAAA, on the record's port
  };
  record_type type = record_type::address;
  std::string name;
  std::uint16_t port = 0;  ///< for `address`

  /// A and AAAA records of `name`, every member listening on `port`.
  static dns_source address(std::string name, std::uint16_t port) {
    return {record_type::address, std::move(name), port};
  }
  /// SRV records of `name` (e.g. "_fwd._tcp.cluster.internal").
  static dns_source srv(std::string name) { return {record_type::srv, std::move(name), 0}; }
};

/// One change of the member set.
struct membership_event {
  enum class kind { joined, left };
  kind what;
  member who;
};

/// The member set at one moment. Immutable once published.
struct membership_snapshot {
  /// 0 until the first poll has completed; then +1 at each change.
  std::uint64_t version = 0;
  /// Current members, sorted by endpoint.
  std::vector<member> members;
  /// The events that turned the previous version into this one.
  std::vector<membership_event> changes;

  bool contains(const boost::asio::ip::tcp::endpoint& endpoint) const noexcept {
    for (const auto& m : members) {
      if (m.endpoint == endpoint) return true;
    }
    return false;
  }
};

using membership_snapshot_ptr = std::shared_ptr<const membership_snapshot>;

/// Telemetry hooks; each runs on the membership's strand and must not block. Unset hooks
/// cost nothing.
struct membership_hooks {
  std::function<void(const member&)> on_joined;
  std::function<void(const member&)> on_left;
  /// A DNS query failed, or a name answered NXDOMAIN or no records; `message` says which
  /// query and what is done about it (members kept, or counted towards removal).
  std::function<void(const boost::system::error_code&, std::string_view message)> on_resolve_error;
};

struct membership_options {
  /// DNS names to poll; may be combined with `static_members`.
  std::vector<dns_source> dns;
  /// Members that are always present (never removed by DNS answers).
  std::vector<member> static_members;
  /// DNS servers as "ip", "ip:port" or "[ipv6]:port"; empty: the servers and search
  /// domains of `resolv_conf`.
  std::vector<std::string> dns_servers;
  /// The resolver configuration used when `dns_servers` is empty; empty: /etc/resolv.conf.
  /// Its content is compared before every poll: a change (other nameservers, search
  /// domains) takes effect at that poll.
  std::string resolv_conf;
  /// The port of the nameservers `resolv_conf` names (its syntax has none); 0: 53.
  std::uint16_t resolv_conf_port = 0;
  /// The longest time between the end of one poll and the start of the next. When the
  /// records found carry a shorter TTL (above 0 s), the next poll comes when it ends, so
  /// that a change in DNS is seen within the records' TTL. Answers are never cached.
  std::chrono::milliseconds poll_interval{std::chrono::seconds(5)};
  /// c-ares's timeout for one try of one query, and how many tries.
  std::chrono::milliseconds query_timeout{std::chrono::seconds(2)};
  int query_tries = 2;
  /// A member left out of this many consecutive definitive answers is removed.
  unsigned remove_after_polls = 3;
  /// If non-zero, a member left out of definitive answers for this long is removed too,
  /// even before `remove_after_polls` answers.
  std::chrono::milliseconds remove_after{0};
  /// Which address families to look up.
  bool ipv4 = true;
  bool ipv6 = true;
  membership_hooks hooks;
};

}  // namespace fwd

template <>
struct std::hash<fwd::member> {
  std::size_t operator()(const fwd::member& m) const noexcept { return fwd::member_hash{}(m); }
};
