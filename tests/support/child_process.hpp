#pragma once

// A child process for tests that need several real processes: started with fork/exec,
// its stdout on a pipe the test reads line by line with a bound, killed and reaped when
// the object goes away. Header-only; POSIX.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace fwd_test {

class child_process {
 public:
  /// Starts argv[0] (a path) with argv; its stdout is readable through read_line(), its
  /// stdin is a pipe that close_stdin() closes (programs may treat that as "stop").
  explicit child_process(std::vector<std::string> argv) {
    int out[2];
    int in[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(in, O_CLOEXEC) != 0) {
      throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    }
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(in[0], STDIN_FILENO);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(in[0]);
    stdout_ = out[0];
    stdin_ = in[1];
  }

  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  ~child_process() {
    kill(SIGKILL);
    wait();
    if (stdout_ >= 0) ::close(stdout_);
    close_stdin();
  }

  pid_t pid() const noexcept { return pid_; }

  /// The next line the child printed (without the newline). Throws when none arrives
  /// within `timeout` or the child closed its stdout.
  std::string read_line(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) throw std::runtime_error("child printed no line in time");
      pollfd p{stdout_, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) continue;
      char chunk[4096];
      const ssize_t n = ::read(stdout_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw std::runtime_error("child closed its stdout");
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  /// Reads lines until one starts with `prefix`; returns the rest of that line.
  std::string read_until(const std::string& prefix,
                         std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      std::string line = read_line(left.count() > 0 ? left : std::chrono::milliseconds(1));
      if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
    }
  }

  /// Writes `line` and a newline on the child's stdin. Throws when it cannot.
  void write_line(const std::string& line) {
    const std::string text = line + "\n";
    std::size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = ::write(stdin_, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw std::runtime_error(std::string("write to child: ") + std::strerror(errno));
      done += static_cast<std::size_t>(n);
    }
  }

  void close_stdin() noexcept {
    if (stdin_ >= 0) {
      ::close(stdin_);
      stdin_ = -1;
    }
  }

  void kill(int signal = SIGKILL) noexcept {
    if (pid_ > 0 && !reaped_) ::kill(pid_, signal);
  }

  /// Waits for the child to exit; returns its wait status (or the earlier one).
  int wait() noexcept {
    if (pid_ > 0 && !reaped_) {
      while (::waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
      }
      reaped_ = true;
    }
    return status_;
  }

 private:
  pid_t pid_ = -1;
  int stdout_ = -1;
  int stdin_ = -1;
  int status_ = 0;
  bool reaped_ = false;
  std::string buffer_;
};

}  // namespace fwd_test
