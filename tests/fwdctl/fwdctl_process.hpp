#pragma once

// fwdctl run as a process by the tests: its stdout and stderr collected line by line,
// waited on with a bound (a line containing some text, or the exit).

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace fwdctl_test {

/// A 40-byte secret, and another one (also long enough) for the wrong-secret tests.
inline const std::string cluster_secret = "fwdctl-test-cluster-secret-0123456789abc";
inline const std::string other_secret = "fwdctl-test-another-secret-0123456789xyz";

inline std::filesystem::path write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path) << text << "\n";
  return path;
}

class process {
 public:
  explicit process(std::vector<std::string> args) {
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    args.insert(args.begin(), FWDCTL_PATH);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, FWDCTL_PATH, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (rc != 0) {
      ::close(fds[0]);
      throw std::runtime_error("cannot start " FWDCTL_PATH);
    }
    fd_ = fds[0];
    reader_ = std::thread([this] { read_all(); });
  }
  process(const process&) = delete;
  process& operator=(const process&) = delete;
  ~process() {
    if (!exited_) ::kill(pid_, SIGKILL);
    wait_exit(std::chrono::seconds(5));
    reader_.join();
    ::close(fd_);
  }

  /// Waits (bounded) until the output holds `text`; whether it does.
  bool wait_for_text(const std::string& text, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return output_.find(text) != std::string::npos || closed_; }) &&
           output_.find(text) != std::string::npos;
  }

  /// Waits (bounded) for the exit and the end of its output; the exit status or nullopt.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (!exited_) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      if (std::chrono::steady_clock::now() >= until) return std::nullopt;
      ::poll(nullptr, 0, 5);  // a child's exit has no fd to wait on
    }
    std::unique_lock lock(mutex_);
    changed_.wait_until(lock, until + std::chrono::seconds(1), [&] { return closed_; });
    return status_;
  }

  void terminate() {
    if (!exited_) ::kill(pid_, SIGTERM);
  }

  std::string output() {
    std::lock_guard lock(mutex_);
    return output_;
  }

 private:
  void read_all() {
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::read(fd_, buffer, sizeof buffer);
      if (n <= 0) break;
      std::lock_guard lock(mutex_);
      output_.append(buffer, static_cast<std::size_t>(n));
      changed_.notify_all();
    }
    std::lock_guard lock(mutex_);
    closed_ = true;
    changed_.notify_all();
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  bool exited_ = false;
  int status_ = -1;
  std::thread reader_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::string output_;
  bool closed_ = false;
};

struct result {
  int status = -1;
  std::string output;
};

/// Runs fwdctl to its end (bounded); its exit status (-1: still running) and output.
inline result run(std::vector<std::string> args, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  process p(std::move(args));
  const auto status = p.wait_exit(timeout);
  return {status.value_or(-1), p.output()};
}

}  // namespace fwdctl_test
