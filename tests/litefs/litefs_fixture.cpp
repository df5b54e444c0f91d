#include "litefs_fixture.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

#ifndef FWD_REPO_ROOT
#define FWD_REPO_ROOT "."
#endif

namespace fwd_test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// One bounded wait step while polling the mount (LiteFS's files are the event we wait on).
void pause_briefly() { ::poll(nullptr, 0, 5); }

bool mounted_at(const fs::path& dir) {
  std::ifstream in("/proc/self/mounts");
  std::string device, where;
  std::string rest;
  while (in >> device >> where) {
    std::getline(in, rest);
    if (where == dir.string()) return true;
  }
  return false;
}

bool present(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// The kernel's id of the FUSE connection mounted (last, on top) at `dir`: its device's
// minor number, read from /proc/self/mountinfo (no call into the mount). 0 if none.
unsigned fuse_connection(const fs::path& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  unsigned found = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, device, root, where;
    if (!(fields >> id >> parent >> device >> root >> where) || where != dir.string()) continue;
    const auto colon = device.find(':');
    if (colon == std::string::npos || device.substr(0, colon) != "0") continue;
    found = static_cast<unsigned>(std::stoul(device.substr(colon + 1)));
  }
  return found;
}

// Aborts FUSE connection `id` (fusectl, mounted here if it is not): every request waiting
// on it fails with ENOTCONN, as when its daemon's /dev/fuse is closed.
void abort_fuse_connection(unsigned id) {
  const fs::path connections = "/sys/fs/fuse/connections";
  const fs::path abort_file = connections / std::to_string(id) / "abort";
  if (!present(abort_file)) ::mount("fusectl", connections.c_str(), "fusectl", 0, nullptr);
  std::ofstream(abort_file) << "1\n";
}

// Reaps LiteFS `pid` after SIGKILL. A LiteFS killed while one of its threads was inside
// the kernel on its own mount (a cache invalidation it sent, waiting for a writeback only
// the daemon itself would serve) stays a zombie for ever, and its mount hangs every
// caller: after a bounded wait the mount's FUSE connection is aborted, as an operator
// would (docs/operations.md), which ends that wait.
void reap_killed(pid_t pid, unsigned connection) {
  int status = 0;
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() >= until) {
      if (connection != 0) abort_fuse_connection(connection);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return;
    }
    pause_briefly();
  }
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

fs::path litefs_binary() {
  if (const char* env = std::getenv("FWD_LITEFS"); env && *env) return env;
  return fs::path(FWD_REPO_ROOT) / ".." / "shared" / "litefs" / "litefs";
}

int run_program(const std::vector<std::string>& args, std::string* output) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::optional<std::string> litefs_unavailable() {
  const fs::path bin = litefs_binary();
  if (::access(bin.c_str(), X_OK) != 0)
    return "no LiteFS binary at " + bin.string() + " (set FWD_LITEFS to one)";
  if (::geteuid() != 0) return "LiteFS needs root to mount FUSE; this test runs as uid " +
                               std::to_string(::geteuid());
  if (::access("/dev/fuse", R_OK | W_OK) != 0) return "no usable /dev/fuse on this machine";
  if (run_program({"fusermount3", "-V"}) != 0)
    return "fusermount3 is missing (Debian package fuse3; tools/bootstrap installs it)";
  if (run_program({"sqlite3", "-version"}) != 0)
    return "the sqlite3 CLI is missing (Debian package sqlite3; tools/bootstrap installs it)";
  return std::nullopt;
}

std::pair<int, std::string> http_request(std::uint16_t port, const std::string& method,
                                         const std::string& target,
                                         std::chrono::milliseconds timeout,
                                         const std::string& body) {
  namespace http = boost::beast::http;
  try {
    boost::asio::io_context io;
    boost::beast::tcp_stream stream(io);
    stream.expires_after(timeout);
    stream.connect({boost::asio::ip::make_address("127.0.0.1"), port});
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, "127.0.0.1");
    req.body() = body;
    req.prepare_payload();
    http::write(stream, req);
    boost::beast::flat_buffer buffer;
    http::response<http::string_body> res;
    http::read(stream, buffer, res);
    boost::system::error_code ignored;
    stream.socket().shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
    return {static_cast<int>(res.result_int()), res.body()};
  } catch (const std::exception&) {
    return {0, {}};
  }
}

struct litefs_cluster::node {
  std::string hostname;
  fs::path dir, mount, data, config, log;
  std::unique_ptr<demo::reserved_port> port;
  pid_t pid = -1;
};

namespace {

constexpr const char* cluster_dir_prefix = "fwd-litefs-";

// A process killed outright (SIGKILL, a crash) cannot unmount: its LiteFS dies with it
// (PR_SET_PDEATHSIG) and leaves dead FUSE mounts behind. Each cluster directory names
// its owner; a new cluster unmounts and removes those whose owner is gone.
void sweep_abandoned_clusters() {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/tmp", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(cluster_dir_prefix, 0) != 0) continue;
    std::ifstream owner_file(entry.path() / "owner");
    long owner = 0;
    if (!(owner_file >> owner) || owner <= 0) continue;
    if (::kill(static_cast<pid_t>(owner), 0) == 0 || errno != ESRCH) continue;
    bool mounted = false;
    for (const auto& node : fs::directory_iterator(entry.path(), ec)) {
      const fs::path mnt = node.path() / "mnt";
      for (int attempt = 0; attempt < 8 && mounted_at(mnt); ++attempt)
        run_program({"fusermount3", "-uz", mnt.string()});
      mounted = mounted || mounted_at(mnt);
    }
    if (!mounted) fs::remove_all(entry.path(), ec);
  }
}

}  // namespace

litefs_cluster::litefs_cluster(litefs_cluster_options options) : options_(std::move(options)) {
  sweep_abandoned_clusters();
  std::string tmpl = std::string("/tmp/") + cluster_dir_prefix + "XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  root_ = tmpl;
  std::ofstream(root_ / "owner") << ::getpid() << "\n";
  if (options_.lease == lease_kind::consul) consul_ = std::make_unique<consul_standin>();
  for (std::size_t i = 0; i < options_.nodes; ++i) {
    auto n = std::make_unique<node>();
    n->hostname = "node" + std::to_string(i + 1);
    n->dir = root_ / n->hostname;
    n->mount = n->dir / "mnt";
    n->data = n->dir / "data";
    n->config = n->dir / "litefs.yml";
    n->log = n->dir / "litefs.log";
    n->port = std::make_unique<demo::reserved_port>();
    fs::create_directories(n->mount);
    fs::create_directories(n->data);
    nodes_.push_back(std::move(n));
  }
  for (std::size_t i = 0; i < nodes_.size(); ++i) write_config(i);
}

litefs_cluster::~litefs_cluster() {
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    try {
      stop(i);
    } catch (...) {
    }
  }
  // Only remove the directory when nothing of it is mounted any more: a remove through a
  // live mount would reach into LiteFS.
  bool any_mounted = false;
  for (auto& n : nodes_) any_mounted = any_mounted || mounted_at(n->mount);
  if (!any_mounted && !std::getenv("FWD_LITEFS_KEEP")) {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
}

std::string litefs_cluster::hostname(std::size_t i) const { return nodes_.at(i)->hostname; }
fs::path litefs_cluster::mount(std::size_t i) const { return nodes_.at(i)->mount; }
fs::path litefs_cluster::data_dir(std::size_t i) const { return nodes_.at(i)->data; }
std::uint16_t litefs_cluster::http_port(std::size_t i) const { return nodes_.at(i)->port->port(); }
bool litefs_cluster::running(std::size_t i) const { return nodes_.at(i)->pid > 0; }
std::string litefs_cluster::log(std::size_t i) const { return read_text(nodes_.at(i)->log); }

void litefs_cluster::write_config(std::size_t i) {
  const node& n = *nodes_[i];
  const std::string url = "http://127.0.0.1:" + std::to_string(n.port->port());
  std::ofstream out(n.config);
  out << "exit-on-error: false\n"
      << "fuse:\n  dir: \"" << n.mount.string() << "\"\n"
      << "data:\n  dir: \"" << n.data.string() << "\"\n"
      << "http:\n  addr: \"127.0.0.1:" << n.port->port() << "\"\n"
      << "lease:\n";
  if (options_.lease == lease_kind::static_lease) {
    const std::string primary_url = "http://127.0.0.1:" + std::to_string(nodes_[0]->port->port());
    out << "  type: static\n"
        << "  hostname: " << nodes_[0]->hostname << "\n"
        << "  advertise-url: " << primary_url << "\n"
        << "  candidate: " << (i == 0 ? "true" : "false") << "\n";
  } else {
    out << "  type: consul\n"
        << "  hostname: " << n.hostname << "\n"
        << "  advertise-url: " << url << "\n"
        << "  candidate: true\n"
        << "  consul:\n"
        << "    url: " << consul_->url() << "\n"
        << "    key: litefs/primary\n"
        << "    ttl: " << options_.ttl << "\n"
        << "    lock-delay: " << options_.lock_delay << "\n";
  }
}

void litefs_cluster::start(std::size_t i, std::chrono::milliseconds timeout) {
  node& n = *nodes_.at(i);
  if (n.pid > 0) return;
  const std::string bin = litefs_binary().string();
  const std::string config = n.config.string();
  const std::string log = n.log.string();
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    // If the test process dies (a crash, a ctest timeout), LiteFS dies with it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    const int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, 0);
    ::execl(bin.c_str(), bin.c_str(), "mount", "-config", config.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  n.pid = pid;
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!present(n.mount / ".lag")) {
    int status = 0;
    if (::waitpid(n.pid, &status, WNOHANG) == n.pid) {
      n.pid = -1;
      throw std::runtime_error("LiteFS " + n.hostname + " exited before mounting:\n" + this->log(i));
    }
    if (std::chrono::steady_clock::now() >= until)
      throw std::runtime_error("LiteFS " + n.hostname + " did not mount within the deadline:\n" +
                               this->log(i));
    pause_briefly();
  }
}

void litefs_cluster::start_all(std::chrono::milliseconds timeout) {
  start(0, timeout);
  if (!wait_primary(timeout))
    throw std::runtime_error("LiteFS node1 did not become primary:\n" + log(0));
  for (std::size_t i = 1; i < size(); ++i) start(i, timeout);
  for (std::size_t i = 1; i < size(); ++i)
    if (!wait_connected(i, timeout))
      throw std::runtime_error("LiteFS " + hostname(i) + " did not connect to the primary:\n" +
                               log(i));
}

void litefs_cluster::stop(std::size_t i) {
  node& n = *nodes_.at(i);
  if (n.pid > 0) {
    ::kill(n.pid, SIGTERM);
    const auto until = std::chrono::steady_clock::now() + 5s;
    int status = 0;
    for (;;) {
      if (::waitpid(n.pid, &status, WNOHANG) == n.pid) break;
      if (std::chrono::steady_clock::now() >= until) {
        // Before it has joined a cluster LiteFS ignores SIGTERM.
        kill(i);
        break;
      }
      pause_briefly();
    }
    n.pid = -1;
  }
  unmount(i);
}

void litefs_cluster::kill(std::size_t i) {
  node& n = *nodes_.at(i);
  if (n.pid <= 0) return;
  const unsigned connection = fuse_connection(n.mount);
  ::kill(n.pid, SIGKILL);
  reap_killed(n.pid, connection);
  n.pid = -1;
}

void litefs_cluster::restart(std::size_t i, std::chrono::milliseconds timeout) {
  stop(i);
  start(i, timeout);
}

void litefs_cluster::unmount(std::size_t i) {
  const fs::path& dir = nodes_.at(i)->mount;
  // A restarted LiteFS mounts on top of a dead mount: there may be several.
  for (int attempt = 0; attempt < 8 && mounted_at(dir); ++attempt) {
    if (run_program({"fusermount3", "-u", dir.string()}) != 0)
      run_program({"fusermount3", "-uz", dir.string()});
  }
}

std::string litefs_cluster::info(std::size_t i) {
  if (!running(i)) return {};
  auto [status, body] = http_request(http_port(i), "GET", "/info", 1000ms);
  return status == 200 ? body : std::string();
}

bool litefs_cluster::is_primary(std::size_t i) {
  // /info is indented JSON: "isPrimary": true
  static const std::regex primary(R"re("isPrimary"\s*:\s*true)re");
  return std::regex_search(info(i), primary);
}

std::optional<std::size_t> litefs_cluster::wait_primary(std::chrono::milliseconds timeout,
                                                        std::optional<std::size_t> except) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    for (std::size_t i = 0; i < size(); ++i) {
      if (except && *except == i) continue;
      if (running(i) && is_primary(i)) return i;
    }
    if (std::chrono::steady_clock::now() >= until) return std::nullopt;
    pause_briefly();
  }
}

bool litefs_cluster::wait_connected(std::size_t i, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!present(mount(i) / ".primary")) {
    if (std::chrono::steady_clock::now() >= until) return false;
    pause_briefly();
  }
  return true;
}

bool litefs_cluster::promote(std::size_t i, std::string* why) {
  auto [status, body] = http_request(http_port(i), "POST", "/promote", 10000ms);
  if (why) *why = "HTTP " + std::to_string(status) + ": " + body;
  return status >= 200 && status < 300;
}

std::string litefs_cluster::position(std::size_t i, const std::string& db) {
  const fs::path p = mount(i) / (db + "-pos");
  if (!present(p)) return {};
  return read_text(p);
}

bool litefs_cluster::wait_caught_up(std::size_t primary, const std::string& db,
                                    std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::string want = position(primary, db);
    bool all = !want.empty();
    for (std::size_t i = 0; all && i < size(); ++i)
      if (running(i) && i != primary && position(i, db) != want) all = false;
    if (all) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    pause_briefly();
  }
}

}  // namespace fwd_test
