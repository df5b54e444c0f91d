#pragma once

// TCP keepalive and TCP_USER_TIMEOUT on a connected socket, so that the kernel gives up on
// a peer that vanished without a reset (a host powered off, a link dropped).

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/socket_base.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <chrono>
#include <string_view>

namespace fwd::rpc {

/**
 * The kernel's side of finding a dead peer, on every connection (client and server). With
 * the defaults, a silent peer is given up on within about 15 s: keepalive probes start
 * after 5 s without traffic and three unanswered ones, 3 s apart, end the connection
 * (5 + 3 * 3 = 14 s); data sent and not acknowledged for 15 s ends it too
 * (TCP_USER_TIMEOUT). Zero leaves the system's default for that setting. Where the
 * platform lacks a setting it is skipped. The kernel answers for a process that is alive
 * but stuck: fwd's own ping (client_options::ping_interval) covers that case.
 */
struct keepalive_options {
  std::chrono::seconds idle{5};      ///< TCP_KEEPIDLE: silence before the first probe
  std::chrono::seconds interval{3};  ///< TCP_KEEPINTVL: between probes
  int count = 3;                     ///< TCP_KEEPCNT: unanswered probes that end it
  std::chrono::milliseconds user_timeout{15000};  ///< TCP_USER_TIMEOUT: unacknowledged data
};

namespace detail {

/// The procedure a client calls to see that a server still answers. A server answers it at
/// once with an empty result; one that does not know it answers "no such procedure",
/// which proves as much.
inline constexpr std::string_view ping_procedure = "fwd.ping";

/// Sets keepalive on (always) and its timings where the platform has them. Errors are
/// ignored: a socket without them still works, only finds a dead peer later.
inline void apply_keepalive(boost::asio::ip::tcp::socket& socket, const keepalive_options& l) {
  boost::system::error_code ignored;
  socket.set_option(boost::asio::socket_base::keep_alive(true), ignored);
  [[maybe_unused]] const auto fd = socket.native_handle();
  [[maybe_unused]] auto set = [fd](int name, int value) {
    if (value > 0) ::setsockopt(fd, IPPROTO_TCP, name, &value, sizeof(value));
  };
#if defined(TCP_KEEPIDLE)
  set(TCP_KEEPIDLE, static_cast<int>(l.idle.count()));
#endif
#if defined(TCP_KEEPINTVL)
  set(TCP_KEEPINTVL, static_cast<int>(l.interval.count()));
#endif
#if defined(TCP_KEEPCNT)
  set(TCP_KEEPCNT, l.count);
#endif
#if defined(TCP_USER_TIMEOUT)
  set(TCP_USER_TIMEOUT, static_cast<int>(l.user_timeout.count()));
#endif
}

}  // namespace detail
}  // namespace fwd::rpc
