// LiteFS's HTTP API for the simulation: /events and /info with LiteFS v0.5.14's bytes.
#include "http_api.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <system_error>

namespace fwd_sim {
namespace {

std::string hex16(std::uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

std::string quoted(const std::string& s) {
  // Hostnames and database names are plain file names: no byte needs escaping but these.
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string role_data(bool is_primary, const std::string& hostname) {
  // Go's encoding/json with `hostname,omitempty`.
  std::string data = std::string("{\"isPrimary\":") + (is_primary ? "true" : "false");
  if (!hostname.empty()) data += ",\"hostname\":" + quoted(hostname);
  return data + "}";
}

// Go's time.Time in JSON (RFC 3339 with nanoseconds, trailing zeros dropped) of a UTC
// instant at millisecond precision, as LiteFS stamps an LTX file.
std::string go_timestamp_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  const time_t secs = ts.tv_sec;
  tm utc{};
  ::gmtime_r(&secs, &utc);
  char buf[48];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &utc);
  std::string out = buf;
  const long ms = ts.tv_nsec / 1000000;
  if (ms != 0) {
    char frac[24];
    std::snprintf(frac, sizeof frac, ".%03ld", ms);
    std::string f = frac;
    while (f.back() == '0') f.pop_back();
    out += f;
  }
  return out + "Z";
}

std::string chunk(const std::string& payload) {
  char size[20];
  std::snprintf(size, sizeof size, "%zx\r\n", payload.size());
  return size + payload + "\r\n";
}

// The page size and page count in a database header (0 when unreadable).
void read_header(const std::filesystem::path& db, std::uint32_t& page_size,
                 std::uint32_t& pages) {
  page_size = 0;
  pages = 0;
  const int fd = ::open(db.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  unsigned char h[32];
  if (::pread(fd, h, sizeof h, 0) == static_cast<ssize_t>(sizeof h)) {
    page_size = (std::uint32_t{h[16]} << 8) | h[17];
    if (page_size == 1) page_size = 65536;
    pages = (std::uint32_t{h[28]} << 24) | (std::uint32_t{h[29]} << 16) |
            (std::uint32_t{h[30]} << 8) | h[31];
  }
  ::close(fd);
}

}  // namespace

std::string init_event(bool is_primary, const std::string& primary_hostname) {
  return "{\"type\":\"init\",\"data\":" + role_data(is_primary, primary_hostname) + "}\n";
}

std::string primary_change_event(bool is_primary, const std::string& primary_hostname) {
  return "{\"type\":\"primaryChange\",\"data\":" + role_data(is_primary, primary_hostname) +
         "}\n";
}

std::string tx_event(const std::string& db, const db_position& pos, std::uint32_t page_size,
                     std::uint32_t commit) {
  return "{\"type\":\"tx\",\"db\":" + quoted(db) + ",\"data\":{\"txID\":\"" + hex16(pos.txid) +
         "\",\"postApplyChecksum\":\"" + hex16(pos.checksum) +
         "\",\"pageSize\":" + std::to_string(page_size) +
         ",\"commit\":" + std::to_string(commit) + ",\"timestamp\":\"" + go_timestamp_now() +
         "\"}}\n";
}

struct http_api::client {
  int fd = -1;
  std::size_t node = 0;
  std::string in;
  std::string out;
  bool streaming = false;   // a /events subscriber
  bool close_after = false; // close once `out` is written
};

http_api::http_api(std::vector<node> nodes, std::string database, std::string cluster_id)
    : nodes_(std::move(nodes)), database_(std::move(database)), cluster_id_(std::move(cluster_id)) {
  const std::size_t n = nodes_.size();
  ports_.assign(n, 0);
  listeners_.assign(n, -1);
  watches_.assign(n, -1);
  alive_.assign(n, true);
  views_.assign(n, view{});
  positions_.assign(n, db_position{});
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (wake_fd_ < 0 || inotify_fd_ < 0) {
    throw std::system_error(errno, std::generic_category(), "fwd_sim: http api setup");
  }
  for (std::size_t i = 0; i < n; ++i) {
    open_listener(i);
    watch(i);
  }
  thread_ = std::thread([this] { serve(); });
}

http_api::~http_api() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake();
  thread_.join();
  for (auto& c : clients_) ::close(c->fd);
  for (int fd : listeners_)
    if (fd >= 0) ::close(fd);
  ::close(inotify_fd_);
  ::close(wake_fd_);
}

void http_api::open_listener(std::size_t i) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "fwd_sim: socket");
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(ports_[i]);  // 0 the first time: an ephemeral port, kept after
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 64) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(),
                            "fwd_sim: cannot serve the HTTP API of " + nodes_[i].hostname);
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ports_[i] = ntohs(addr.sin_port);
  listeners_[i] = fd;
}

void http_api::watch(std::size_t i) {
  // Positions are replaced by rename (write_file_atomically): IN_MOVED_TO.
  watches_[i] = ::inotify_add_watch(inotify_fd_, nodes_[i].mount.c_str(), IN_MOVED_TO | IN_CLOSE_WRITE);
  positions_[i] = read_position(nodes_[i].mount / (database_ + "-pos")).value_or(db_position{});
}

void http_api::wake() {
  const std::uint64_t one = 1;
  [[maybe_unused]] const auto n = ::write(wake_fd_, &one, sizeof one);
}

void http_api::set_view(std::size_t i, bool is_primary, const std::string& primary_hostname) {
  std::lock_guard lock(mutex_);
  const view v{is_primary, primary_hostname};
  if (views_[i] == v) return;
  views_[i] = v;
  if (alive_[i]) broadcast_locked(i, primary_change_event(is_primary, primary_hostname));
  wake();
}

void http_api::set_alive(std::size_t i, bool alive) {
  std::unique_lock lock(mutex_);
  if (alive_[i] == alive) return;
  alive_[i] = alive;
  // The serving thread owns every descriptor: it applies the change, then says so.
  const std::uint64_t ticket = ++requested_;
  wake();
  applied_cv_.wait(lock, [&] { return applied_ >= ticket || stopping_; });
}

// On the serving thread, under the mutex: SIGKILL closes the listener and every
// connection of that LiteFS at once; a restart listens again on the same port and watches
// the new mount.
void http_api::apply_alive_locked() {
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (!alive_[i] && listeners_[i] >= 0) {
      ::close(listeners_[i]);
      listeners_[i] = -1;
      if (watches_[i] >= 0) ::inotify_rm_watch(inotify_fd_, watches_[i]);
      watches_[i] = -1;
      for (auto& c : clients_) {
        if (c->node == i && c->fd >= 0) {
          ::close(c->fd);
          c->fd = -1;
        }
      }
    } else if (alive_[i] && listeners_[i] < 0) {
      try {
        open_listener(i);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
      }
      watch(i);
    }
  }
  applied_ = requested_;
  applied_cv_.notify_all();
}

void http_api::broadcast_locked(std::size_t i, const std::string& event) {
  for (auto& c : clients_) {
    if (c->node == i && c->streaming && c->fd >= 0) c->out += chunk(event);
  }
}

std::string http_api::info_locked(std::size_t i) const {
  // Go's json.MarshalIndent with two spaces, as LiteFS answers /info.
  const view& v = views_[i];
  const std::string primary = v.is_primary ? nodes_[i].hostname : v.hostname;
  return "{\n  \"clusterID\": " + quoted(cluster_id_) + ",\n  \"isPrimary\": " +
         (v.is_primary ? "true" : "false") + ",\n  \"candidate\": true,\n  \"path\": " +
         quoted(nodes_[i].mount.string()) + ",\n  \"primary\": {\n    \"hostname\": " +
         quoted(primary) + "\n  }\n}\n";
}

void http_api::on_inotify() {
  alignas(inotify_event) char buf[8192];
  bool any = false;
  for (;;) {
    const ssize_t n = ::read(inotify_fd_, buf, sizeof buf);
    if (n <= 0) break;
    for (ssize_t at = 0; at < n;) {
      const auto* e = reinterpret_cast<const inotify_event*>(buf + at);
      if (e->len > 0 && database_ + "-pos" == e->name) any = true;
      at += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
    }
  }
  if (!any) return;
  std::lock_guard lock(mutex_);
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    if (!alive_[i] || watches_[i] < 0) continue;
    const auto pos = read_position(nodes_[i].mount / (database_ + "-pos"));
    if (!pos || *pos == positions_[i]) continue;
    positions_[i] = *pos;
    std::uint32_t page_size = 0, pages = 0;
    read_header(nodes_[i].mount / database_, page_size, pages);
    broadcast_locked(i, tx_event(database_, *pos, page_size, pages));
  }
}

void http_api::on_readable(client& c) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(c.fd, buf, sizeof buf);
    if (n == 0) {
      ::close(c.fd);
      c.fd = -1;
      return;
    }
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        ::close(c.fd);
        c.fd = -1;
      }
      break;
    }
    if (!c.streaming && !c.close_after) c.in.append(buf, static_cast<std::size_t>(n));
  }
  if (c.fd < 0 || c.streaming || c.close_after) return;
  if (c.in.find("\r\n\r\n") == std::string::npos) {
    if (c.in.size() > 65536) {
      ::close(c.fd);
      c.fd = -1;
    }
    return;
  }
  const std::string line = c.in.substr(0, c.in.find("\r\n"));
  std::lock_guard lock(mutex_);
  const std::string common = "Content-Type: application/json\r\nLitefs-Cluster-Id: " +
                             cluster_id_ + "\r\n";
  if (line.rfind("GET /events ", 0) == 0) {
    c.streaming = true;
    c.out += "HTTP/1.1 200 OK\r\n" + common + "Transfer-Encoding: chunked\r\n\r\n";
    c.out += chunk(init_event(views_[c.node].is_primary, views_[c.node].hostname));
  } else if (line.rfind("GET /info ", 0) == 0) {
    const std::string body = info_locked(c.node);
    c.out += "HTTP/1.1 200 OK\r\n" + common + "Content-Length: " + std::to_string(body.size()) +
             "\r\nConnection: close\r\n\r\n" + body;
    c.close_after = true;
  } else {
    const std::string body = "404 page not found\n";
    c.out += "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
             body;
    c.close_after = true;
  }
}

void http_api::serve() {
  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({inotify_fd_, POLLIN, 0});
    std::vector<std::size_t> listener_node;
    std::vector<client*> polled;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) {
        applied_cv_.notify_all();
        return;
      }
      apply_alive_locked();
      for (std::size_t i = 0; i < listeners_.size(); ++i) {
        if (listeners_[i] < 0) continue;
        fds.push_back({listeners_[i], POLLIN, 0});
        listener_node.push_back(i);
      }
      // Write what is pending; drop closed clients.
      std::erase_if(clients_, [](const std::unique_ptr<client>& c) { return c->fd < 0; });
      for (auto& c : clients_) {
        while (!c->out.empty()) {
          const ssize_t n = ::send(c->fd, c->out.data(), c->out.size(), MSG_NOSIGNAL);
          if (n <= 0) {
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
            ::close(c->fd);
            c->fd = -1;
            break;
          }
          c->out.erase(0, static_cast<std::size_t>(n));
        }
        if (c->fd >= 0 && c->out.empty() && c->close_after) {
          ::close(c->fd);
          c->fd = -1;
        }
        if (c->fd < 0) continue;
        fds.push_back({c->fd, static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
        polled.push_back(c.get());
      }
    }
    if (::poll(fds.data(), fds.size(), -1) < 0) continue;
    if (fds[0].revents) {
      std::uint64_t v;
      [[maybe_unused]] const auto n = ::read(wake_fd_, &v, sizeof v);
    }
    if (fds[1].revents) on_inotify();
    for (std::size_t k = 0; k < listener_node.size(); ++k) {
      if (!fds[2 + k].revents) continue;
      std::lock_guard lock(mutex_);
      const std::size_t i = listener_node[k];
      if (listeners_[i] < 0) continue;  // killed meanwhile
      for (;;) {
        const int fd = ::accept4(listeners_[i], nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) break;
        auto c = std::make_unique<client>();
        c->fd = fd;
        c->node = i;
        clients_.push_back(std::move(c));
      }
    }
    const std::size_t first_client = 2 + listener_node.size();
    for (std::size_t k = 0; k < polled.size(); ++k) {
      if (!(fds[first_client + k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      client* c = polled[k];
      if (c->fd >= 0) on_readable(*c);
    }
  }
}

}  // namespace fwd_sim
