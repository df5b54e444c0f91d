#pragma once

// A c-ares channel driven by the Asio reactor: the sockets c-ares opens are watched with
// Asio descriptors (assigned with c-ares's fd, released without closing it, since c-ares
// owns and closes it), and c-ares's timeouts are kept by an Asio steady_timer. Nothing
// blocks and nothing polls: work happens only when a socket is ready or a timeout is due.
//
// Every query asks the server: c-ares's query cache (1.23 and later, on by default since
// 1.31, keeping answers up to an hour) is turned off, since membership polls exist to see
// changes as soon as the server has them.

#include <ares.h>

#include <algorithm>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <fwd/detail/cares_api.hpp>
#include <fwd/detail/cares_error.hpp>
#include <fwd/error.hpp>
#include <fmt/format.h>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace fwd::detail {

/// Initialises the c-ares library once per process, thread-safely; throws fwd::error.
inline void cares_library_init() {
  // A function-local static is initialised once even when threads race to it; if the
  // initialisation throws, the next call tries again.
  static const bool initialised = [] {
    const int status = ares_library_init(ARES_LIB_INIT_ALL);
    if (status != ARES_SUCCESS) {
      throw fwd::error(make_dns_error(status), "ares_library_init failed");
    }
    return true;
  }();
  (void)initialised;
}

struct cares_channel_options {
  /// Explicit servers ("10.0.0.2", "10.0.0.2:5353", "[fd00::2]:53"); empty = the resolver
  /// configuration in `resolv_conf`.
  std::vector<std::string> servers;
  /// The resolver configuration read when `servers` is empty; empty: /etc/resolv.conf.
  std::string resolv_conf;
  /// The port of the servers `resolv_conf` names (its syntax has none); 0: 53.
  std::uint16_t resolv_conf_port = 0;
  std::chrono::milliseconds timeout{2000};  ///< per try
  int tries = 2;
};

/// Checks one server string and returns it in c-ares's CSV syntax; throws fwd::error
/// (errc::bad_argument) with what to write instead.
inline std::string cares_server_csv_entry(const std::string& server) {
  const auto fail = [&server] {
    throw fwd::error(make_error_code(errc::bad_argument),
                     fmt::format("bad DNS server \"{}\": write an IP address with an optional "
                                 "port, e.g. \"10.0.0.2\", \"127.0.0.1:5353\" or "
                                 "\"[fd00::2]:53\" (names are not resolved)",
                                 server));
  };
  std::string host = server;
  std::string port;
  if (!server.empty() && server.front() == '[') {
    const auto close = server.find(']');
    if (close == std::string::npos) fail();
    host = server.substr(1, close - 1);
    if (close + 1 < server.size()) {
      if (server[close + 1] != ':') fail();
      port = server.substr(close + 2);
    }
  } else if (std::count(server.begin(), server.end(), ':') == 1) {
    const auto colon = server.find(':');
    host = server.substr(0, colon);
    port = server.substr(colon + 1);
  }
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(host, ec);
  if (ec) fail();
  if (!port.empty()) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) fail();
    const long value = std::stol(port);
    if (value < 1 || value > 65535) fail();
  }
  const std::string host_part =
      address.is_v6() ? fmt::format("[{}]", address.to_string()) : address.to_string();
  return port.empty() ? host_part : fmt::format("{}:{}", host_part, port);
}

/// One c-ares channel on a strand. Every member function must be called on that strand;
/// c-ares's callbacks (query completions, socket state) run on it too.
class cares_channel : public std::enable_shared_from_this<cares_channel> {
 public:
  using strand_type = boost::asio::strand<boost::asio::any_io_executor>;
  /// Called once per query with c-ares's status and, on success, the records.
  using answer_callback = dns_answer_callback;

  /// Creates a channel; throws fwd::error on bad options or when c-ares cannot start.
  static std::shared_ptr<cares_channel> create(strand_type strand,
                                               const cares_channel_options& options) {
    cares_library_init();
    std::string csv;
    for (const auto& server : options.servers) {
      if (!csv.empty()) csv += ',';
      csv += cares_server_csv_entry(server);
    }
    auto channel = std::shared_ptr<cares_channel>(new cares_channel(std::move(strand)));
    ares_options opts{};
    opts.sock_state_cb = &cares_channel::on_socket_state;
    opts.sock_state_cb_data = channel.get();
    opts.timeout = static_cast<int>(options.timeout.count());
    opts.tries = options.tries;
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
#if defined(ARES_OPT_QUERY_CACHE)
    opts.qcache_max_ttl = 0;  // no cache: every poll asks the server
    mask |= ARES_OPT_QUERY_CACHE;
#endif
    if (options.servers.empty() && !options.resolv_conf.empty()) {
      opts.resolvconf_path = const_cast<char*>(options.resolv_conf.c_str());  // copied
      mask |= ARES_OPT_RESOLVCONF;
    }
    if (options.servers.empty() && options.resolv_conf_port != 0) {
      opts.udp_port = options.resolv_conf_port;
      opts.tcp_port = options.resolv_conf_port;
      mask |= ARES_OPT_UDP_PORT | ARES_OPT_TCP_PORT;
    }
    int status = ares_init_options(&channel->channel_, &opts, mask);
    if (status != ARES_SUCCESS) {
      channel->channel_ = nullptr;
      throw fwd::error(make_dns_error(status), "ares_init_options failed");
    }
    if (!csv.empty()) {
      status = ares_set_servers_ports_csv(channel->channel_, csv.c_str());
      if (status != ARES_SUCCESS) {
        throw fwd::error(make_dns_error(status), fmt::format("ares_set_servers_ports_csv(\"{}\")", csv));
      }
    }
    return channel;
  }

  cares_channel(const cares_channel&) = delete;
  cares_channel& operator=(const cares_channel&) = delete;

  /// Pending queries complete with ARES_EDESTRUCTION, inside the destructor.
  ~cares_channel() {
    if (channel_ != nullptr) ares_destroy(channel_);  // calls on_socket_state(fd, 0, 0)
    for (auto& [fd, watcher] : watchers_) release(*watcher);
  }

  const strand_type& strand() const noexcept { return strand_; }

  /// Sends a query of `type` (ns_t_a, ns_t_aaaa, ns_t_srv) for `name`, class IN; `search`
  /// applies the resolver's search domains (ares_search) rather than the name as given
  /// (ares_query). `callback` may run inside this call when c-ares fails at once.
  void query(const std::string& name, int type, bool search, answer_callback callback) {
    ++pending_;
    cares_api::send(channel_, name, type, search,
                    [this, callback = std::move(callback)](int status,
                                                           std::vector<dns_record>&& records) {
                      --pending_;
                      callback(status, std::move(records));
                    });
    arm_timeout();
  }

  /// How many queries have not completed yet.
  std::size_t pending() const noexcept { return pending_; }

  /// Completes every pending query with ARES_ECANCELLED, inside this call.
  void cancel() {
    ares_cancel(channel_);
    arm_timeout();
  }

  /// How many sockets c-ares has open now (for tests and diagnostics).
  std::size_t open_sockets() const noexcept { return watchers_.size(); }

 private:
  struct socket_watcher {
    explicit socket_watcher(const strand_type& strand) : descriptor(strand) {}
    boost::asio::posix::stream_descriptor descriptor;
    int fd = -1;
    bool want_read = false;
    bool want_write = false;
    bool read_pending = false;
    bool write_pending = false;
    bool closed = false;
  };

  explicit cares_channel(strand_type strand) : strand_(std::move(strand)), timer_(strand_) {}

  static void on_socket_state(void* data, ares_socket_t fd, int readable, int writable) {
    static_cast<cares_channel*>(data)->update_watch(fd, readable != 0, writable != 0);
  }

  static void release(socket_watcher& watcher) {
    if (watcher.closed) return;
    watcher.closed = true;
    // release() deregisters the fd from the reactor (pending waits complete with
    // operation_aborted) and leaves it open: c-ares closes it right after this callback.
    if (watcher.descriptor.is_open()) watcher.descriptor.release();
  }

  void update_watch(int fd, bool readable, bool writable) {
    auto found = watchers_.find(fd);
    if (!readable && !writable) {
      if (found != watchers_.end()) {
        release(*found->second);
        watchers_.erase(found);
      }
      return;
    }
    if (found == watchers_.end()) {
      auto watcher = std::make_shared<socket_watcher>(strand_);
      watcher->fd = fd;
      boost::system::error_code ec;
      watcher->descriptor.assign(fd, ec);
      if (ec) {
        // The reactor refused the fd: c-ares's own timeout will fail the query, so the
        // caller still gets an answer; nothing is watched for this socket.
        watcher->closed = true;
      }
      found = watchers_.emplace(fd, std::move(watcher)).first;
    }
    auto& watcher = found->second;
    watcher->want_read = readable;
    watcher->want_write = writable;
    arm_waits(watcher);
  }

  void arm_waits(const std::shared_ptr<socket_watcher>& watcher) {
    if (watcher->closed) return;
    if (watcher->want_read && !watcher->read_pending) {
      watcher->read_pending = true;
      watcher->descriptor.async_wait(
          boost::asio::posix::descriptor_base::wait_read,
          boost::asio::bind_executor(
              strand_, [self = shared_from_this(), watcher](const boost::system::error_code& ec) {
                watcher->read_pending = false;
                if (watcher->closed || ec == boost::asio::error::operation_aborted) return;
                if (watcher->want_read) self->process(watcher->fd, ARES_SOCKET_BAD);
                self->arm_waits(watcher);
              }));
    }
    if (watcher->want_write && !watcher->write_pending) {
      watcher->write_pending = true;
      watcher->descriptor.async_wait(
          boost::asio::posix::descriptor_base::wait_write,
          boost::asio::bind_executor(
              strand_, [self = shared_from_this(), watcher](const boost::system::error_code& ec) {
                watcher->write_pending = false;
                if (watcher->closed || ec == boost::asio::error::operation_aborted) return;
                if (watcher->want_write) self->process(ARES_SOCKET_BAD, watcher->fd);
                self->arm_waits(watcher);
              }));
    }
  }

  void process(ares_socket_t read_fd, ares_socket_t write_fd) {
    cares_api::process(channel_, read_fd, write_fd);
    arm_timeout();
  }

  // Sets the timer to c-ares's next timeout, or leaves it idle when nothing is pending.
  void arm_timeout() {
    timeval tv{};
    const timeval* next = ares_timeout(channel_, nullptr, &tv);
    const std::uint64_t generation = ++timer_generation_;
    if (next == nullptr) {
      timer_.cancel();
      return;
    }
    timer_.expires_after(std::chrono::seconds(next->tv_sec) +
                         std::chrono::microseconds(next->tv_usec));
    timer_.async_wait(boost::asio::bind_executor(
        strand_, [self = shared_from_this(), generation](const boost::system::error_code& ec) {
          if (ec || generation != self->timer_generation_) return;
          self->process(ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // handles the expired queries
        }));
  }

  ares_channel channel_ = nullptr;
  strand_type strand_;
  boost::asio::steady_timer timer_;
  std::uint64_t timer_generation_ = 0;
  std::size_t pending_ = 0;
  std::unordered_map<int, std::shared_ptr<socket_watcher>> watchers_;
};

}  // namespace fwd::detail
