#pragma once

// Driving fwd_node processes from one program (the demo and the cluster tests): start
// them on free loopback ports over a simulated LiteFS cluster, wait for their output
// lines, ask them to make calls (demo.control over fwd's RPC), kill them.

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <fwd/rpc/client.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "demo_procedures.hpp"

extern char** environ;

namespace demo {

/// A TCP port on 127.0.0.1 held for a node that starts later. A port that was bound, read
/// and released could be taken in between (by another test, or as the ephemeral port of
/// any outgoing connection): the node then failed with "Address already in use". This
/// keeps a socket bound to the port, with SO_REUSEADDR and without listening, for as long
/// as it lives: the node (whose acceptor also sets SO_REUSEADDR) can still bind and listen
/// there, and nothing else is given the port.
class reserved_port {
 public:
  reserved_port() : socket_(io_) {
    socket_.open(boost::asio::ip::tcp::v4());
    socket_.set_option(boost::asio::socket_base::reuse_address(true));
    socket_.bind({boost::asio::ip::make_address("127.0.0.1"), 0});
  }
  std::uint16_t port() const { return socket_.local_endpoint().port(); }

 private:
  boost::asio::io_context io_;
  boost::asio::ip::tcp::socket socket_;
};

/// One node process. Its stdout lines are collected (and echoed when asked).
class node_process {
 public:
  node_process(const std::string& program, std::vector<std::string> args, bool echo) : echo_(echo) {
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    std::vector<char*> argv;
    args.insert(args.begin(), program);
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, program.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (rc != 0) {
      ::close(fds[0]);
      throw std::runtime_error("cannot start " + program);
    }
    fd_ = fds[0];
    reader_ = std::thread([this] { read_lines(); });
  }

  node_process(const node_process&) = delete;
  node_process& operator=(const node_process&) = delete;

  ~node_process() {
    kill_now();
    wait_exit(std::chrono::seconds(5));
    if (reader_.joinable()) reader_.join();
    if (fd_ >= 0) ::close(fd_);
  }

  pid_t pid() const noexcept { return pid_; }

  /// Waits (bounded) for a line starting with `prefix`; returns the rest of that line.
  std::optional<std::string> wait_for(const std::string& prefix,
                                      std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    std::optional<std::string> found;
    changed_.wait_for(lock, timeout, [&] {
      for (const auto& line : lines_) {
        if (line.rfind(prefix, 0) == 0) {
          found = line.substr(prefix.size());
          return true;
        }
      }
      return closed_;
    });
    return found;
  }

  /// Every line the process has printed so far, for a failing test to show.
  std::string output() {
    std::lock_guard lock(mutex_);
    std::string all;
    for (const auto& line : lines_) all += line + "\n";
    return all;
  }

  /// SIGKILL: the process dies at once, mid-work.
  void kill_now() {
    if (pid_ > 0 && !exited_) ::kill(pid_, SIGKILL);
  }
  /// SIGTERM: clean shutdown.
  void terminate() {
    if (pid_ > 0 && !exited_) ::kill(pid_, SIGTERM);
  }

  /// Waits (bounded) for the process to exit; its exit status, or nullopt.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    if (exited_) return status_;
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return status_;
      }
      if (std::chrono::steady_clock::now() >= until) return std::nullopt;
      ::poll(nullptr, 0, 5);  // polling a child's exit: there is no fd to wait on
    }
  }

 private:
  void read_lines() {
    std::string partial;
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::read(fd_, buffer, sizeof buffer);
      if (n <= 0) break;
      partial.append(buffer, static_cast<std::size_t>(n));
      std::size_t end;
      while ((end = partial.find('\n')) != std::string::npos) {
        std::string line = partial.substr(0, end);
        partial.erase(0, end + 1);
        if (echo_ && line.rfind("  [", 0) == 0) {
          std::printf("%s\n", line.c_str());
          std::fflush(stdout);
        }
        std::lock_guard lock(mutex_);
        lines_.push_back(std::move(line));
        changed_.notify_all();
      }
    }
    std::lock_guard lock(mutex_);
    closed_ = true;
    changed_.notify_all();
  }

  bool echo_;
  pid_t pid_ = -1;
  int fd_ = -1;
  bool exited_ = false;
  int status_ = 0;
  std::thread reader_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> lines_;
  bool closed_ = false;
};

/// Talks to nodes' demo.control / demo.stats.
class controller {
 public:
  explicit controller(std::string secret = "demo-cluster-secret-of-32-bytes-or-more")
      : work_(boost::asio::make_work_guard(io_)),
        client_(io_.get_executor(), options(std::move(secret))) {
    thread_ = std::thread([this] { io_.run(); });
  }
  ~controller() {
    client_.close();
    work_.reset();
    io_.stop();
    thread_.join();
  }

  /// Asks the node on `port` to make one call; waits for its report.
  control_result call(std::uint16_t port, const std::string& what, std::vector<std::string> args,
                      std::int64_t deadline_ms = 5000, bool read_your_writes = true) {
    fwd::rpc::call_options o;
    o.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(deadline_ms + 10000);
    return client_.call(endpoint(port), o, control, what, std::move(args), deadline_ms,
                        read_your_writes);
  }

  /// The node's counters (see demo::stats).
  std::vector<std::int64_t> stats_of(std::uint16_t port) {
    fwd::rpc::call_options o;
    o.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    return client_.call(endpoint(port), o, stats);
  }

  static boost::asio::ip::tcp::endpoint endpoint(std::uint16_t port) {
    return {boost::asio::ip::make_address("127.0.0.1"), port};
  }

 private:
  static fwd::rpc::client_options options(std::string secret) {
    fwd::rpc::client_options o;
    o.secret = std::move(secret);
    o.connect_timeout = std::chrono::milliseconds(1000);
    o.reconnect_backoff = std::chrono::milliseconds(10);
    o.max_reconnect_backoff = std::chrono::milliseconds(100);
    return o;
  }

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  fwd::rpc::client client_;
  std::thread thread_;
};

/// The arguments of fwd_node for node `name` on `port`, with `members` ports.
inline std::vector<std::string> node_arguments(const std::string& name, const std::string& mount,
                                               std::uint16_t port,
                                               const std::vector<std::uint16_t>& members,
                                               bool quiet, std::vector<std::string> extra = {}) {
  std::string list;
  for (auto p : members) list += (list.empty() ? "" : ",") + std::to_string(p);
  std::vector<std::string> args = {
      "--name", name, "--mount", mount, "--port", std::to_string(port), "--members", list};
  if (quiet) args.push_back("--quiet");
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

}  // namespace demo
