#pragma once

// A real dnsmasq for tests: a child process serving DNS on a free 127.0.0.1 port (UDP and
// TCP), authoritative for its local domains (unknown names there answer NXDOMAIN), with
// A/AAAA records from a hosts file that dnsmasq re-reads by itself when it changes, and
// SRV records fixed at start (change them with restart()). Optionally an --addn-hosts
// file, re-read on SIGHUP (write_addn_hosts), a TTL for local records (--local-ttl), and
// another loopback address (127.0.0.2, ::1) or a given port to listen on.
//
//   fwd::test::dnsmasq dns("127.0.0.11 node1.cluster.test\n");
//   options.dns_servers = {dns.server()};       // "127.0.0.1:<port>"
//   dns.write_hosts("127.0.0.12 node1.cluster.test\n");

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

extern char** environ;

namespace fwd::test {

struct dnsmasq_options {
  /// Contents of the hosts file: "address name..." lines.
  std::string hosts;
  /// --srv-host values: "_service._tcp.domain,target,port[,priority,weight]".
  std::vector<std::string> srv_hosts;
  /// Domains dnsmasq answers for alone (NXDOMAIN for names it does not know).
  std::vector<std::string> local_domains{"cluster.test"};
  /// The address to listen on: "127.0.0.1", another 127.0.0.0/8 address, or "::1".
  std::string listen_address = "127.0.0.1";
  /// The port to listen on; 0: a free one.
  std::uint16_t port = 0;
  /// --local-ttl: the TTL of the records of the hosts files, in seconds (dnsmasq: 0).
  std::optional<unsigned> local_ttl;
  /// Contents of an --addn-hosts file (dnsmasq re-reads it on SIGHUP); none if unset.
  std::optional<std::string> addn_hosts;
};

class dnsmasq {
 public:
  /// Serves `hosts` (hosts-file lines) and the --srv-host values `srv_hosts`.
  explicit dnsmasq(std::string hosts, std::vector<std::string> srv_hosts = {})
      : dnsmasq(make_options(std::move(hosts), std::move(srv_hosts))) {}

  explicit dnsmasq(dnsmasq_options options) : options_(std::move(options)) {
    char pattern[] = "/tmp/fwd-dnsmasq-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = pattern;
    std::filesystem::create_directory(hosts_dir());
    // dnsmasq started as root drops to "nobody", which must still read the hosts files.
    ::chmod(dir_.c_str(), 0755);
    ::chmod(hosts_dir().c_str(), 0755);
    write_hosts(options_.hosts);
    if (options_.addn_hosts) write_file(addn_hosts_path(), *options_.addn_hosts);
    if (options_.port != 0) {
      port_ = options_.port;
      if (!launch_and_wait()) {
        throw std::runtime_error("dnsmasq did not start on port " + std::to_string(port_) +
                                 ":\n" + log());
      }
    } else {
      start_on_free_port();
    }
  }

  dnsmasq(const dnsmasq&) = delete;
  dnsmasq& operator=(const dnsmasq&) = delete;

  ~dnsmasq() {
    stop();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::uint16_t port() const noexcept { return port_; }
  /// The server as fwd's options take it: "127.0.0.1:<port>" or "[::1]:<port>".
  std::string server() const {
    return (v6() ? "[" + options_.listen_address + "]" : options_.listen_address) + ":" +
           std::to_string(port_);
  }
  const std::string& address() const noexcept { return options_.listen_address; }
  bool running() const noexcept { return pid_ > 0; }

  /// Replaces the hosts file at once (written aside, then renamed into the watched
  /// directory, so dnsmasq never reads half a file).
  void write_hosts(std::string_view content) { write_file(hosts_dir() / "hosts", content); }

  /// Replaces the --addn-hosts file and has dnsmasq re-read it (SIGHUP); the change is
  /// served once dnsmasq has handled the signal.
  void write_addn_hosts(std::string_view content) {
    options_.addn_hosts = std::string(content);
    write_file(addn_hosts_path(), content);
    if (pid_ > 0) ::kill(pid_, SIGHUP);
  }

  /// Stops the server (SIGTERM, then waits for it to exit).
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  /// Starts again on the same port, with new options for SRV and local domains (the hosts
  /// file is kept unless `options.hosts` is non-empty). Throws if the port is taken.
  void restart(dnsmasq_options options) {
    stop();
    const bool new_hosts = !options.hosts.empty();
    options_ = std::move(options);
    if (new_hosts) write_hosts(options_.hosts);
    if (options_.addn_hosts) write_file(addn_hosts_path(), *options_.addn_hosts);
    if (!launch_and_wait()) {
      throw std::runtime_error("dnsmasq did not restart on port " + std::to_string(port_) + ":\n" +
                               log());
    }
  }
  void restart() { restart(options_); }
  /// Restarts with other SRV records (same hosts file, same port).
  void restart_with_srv(std::vector<std::string> srv_hosts) {
    auto options = options_;
    options.hosts.clear();
    options.srv_hosts = std::move(srv_hosts);
    restart(std::move(options));
  }
  /// Restarts with another hosts file (same SRV records, same port).
  void restart_with_hosts(std::string hosts) {
    auto options = options_;
    options.hosts = std::move(hosts);
    restart(std::move(options));
  }

  /// dnsmasq's own output, for failure messages.
  std::string log() const {
    std::ifstream in(dir_ / "log");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  static dnsmasq_options make_options(std::string hosts, std::vector<std::string> srv_hosts) {
    dnsmasq_options options;
    options.hosts = std::move(hosts);
    options.srv_hosts = std::move(srv_hosts);
    return options;
  }

  std::filesystem::path hosts_dir() const { return dir_ / "hosts.d"; }
  std::filesystem::path addn_hosts_path() const { return dir_ / "addn-hosts"; }
  bool v6() const { return options_.listen_address.find(':') != std::string::npos; }

  // Written aside, then renamed into place, so dnsmasq never reads half a file.
  void write_file(const std::filesystem::path& path, std::string_view content) {
    const auto staging = dir_ / "staging";
    {
      std::ofstream out(staging, std::ios::trunc);
      out << content;
    }
    ::chmod(staging.c_str(), 0644);
    std::filesystem::rename(staging, path);
  }

  // The listen address with `port`, as a socket address.
  sockaddr_storage socket_address(std::uint16_t port, socklen_t& length) const {
    sockaddr_storage storage{};
    if (v6()) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&storage);
      a->sin6_family = AF_INET6;
      ::inet_pton(AF_INET6, options_.listen_address.c_str(), &a->sin6_addr);
      a->sin6_port = htons(port);
      length = sizeof *a;
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&storage);
      a->sin_family = AF_INET;
      ::inet_pton(AF_INET, options_.listen_address.c_str(), &a->sin_addr);
      a->sin_port = htons(port);
      length = sizeof *a;
    }
    return storage;
  }

  std::uint16_t pick_free_port() const {
    socklen_t length = 0;
    auto address = socket_address(0, length);
    const int fd = ::socket(address.ss_family, SOCK_DGRAM, 0);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      if (fd >= 0) ::close(fd);
      throw std::runtime_error("cannot bind a UDP socket on " + options_.listen_address);
    }
    ::close(fd);
    return v6() ? ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port)
                : ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
  }

  void start_on_free_port() {
    // Another process may take the port between our probe and dnsmasq's bind: retry.
    for (int attempt = 0; attempt < 8; ++attempt) {
      port_ = pick_free_port();
      if (launch_and_wait()) return;
    }
    throw std::runtime_error("dnsmasq did not start:\n" + log());
  }

  bool launch_and_wait() {
    std::vector<std::string> args{
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=" + std::to_string(port_),
        "--listen-address=" + options_.listen_address,
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--hostsdir=" + hosts_dir().string(),
        "--pid-file=" + (dir_ / "pid").string(),
        "--log-facility=-",
    };
    for (const auto& domain : options_.local_domains) args.push_back("--local=/" + domain + "/");
    for (const auto& srv : options_.srv_hosts) args.push_back("--srv-host=" + srv);
    if (options_.local_ttl) args.push_back("--local-ttl=" + std::to_string(*options_.local_ttl));
    if (options_.addn_hosts) args.push_back("--addn-hosts=" + addn_hosts_path().string());

    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log_path = (dir_ / "log").string();
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    pid_t pid = -1;
    const int rc = ::posix_spawnp(&pid, "dnsmasq", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("cannot run dnsmasq: is it installed?");
    pid_ = pid;
    if (wait_ready(std::chrono::seconds(10))) return true;
    stop();
    return false;
  }

  // Ready when it answers a query (any answer); false if it exits or the bound passes.
  bool wait_ready(std::chrono::milliseconds bound) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    socklen_t length = 0;
    const auto server = socket_address(port_, length);
    const int fd = ::socket(server.ss_family, SOCK_DGRAM, 0);
    ::connect(fd, reinterpret_cast<const sockaddr*>(&server), length);
    // A query for "ready.test" type A, class IN, id 0x4242, recursion desired.
    static constexpr unsigned char query[] = {0x42, 0x42, 0x01, 0x00, 0,   1,   0,   0,   0, 0,
                                              0,    0,    5,    'r',  'e', 'a', 'd', 'y', 4, 't',
                                              'e',  's',  't',  0,    0,   1,   0,   1};
    bool ready = false;
    while (!ready && std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;  // exited: most likely the port was taken
        break;
      }
      ::send(fd, query, sizeof query, 0);
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) == 1) {
        unsigned char answer[512];
        const auto n = ::recv(fd, answer, sizeof answer, 0);
        ready = n >= 2 && answer[0] == 0x42 && answer[1] == 0x42;
      }
    }
    ::close(fd);
    return ready;
  }

  dnsmasq_options options_;
  std::filesystem::path dir_;
  std::uint16_t port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace fwd::test
