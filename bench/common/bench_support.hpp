// Shared by fwd's benchmark programs: timing, percentiles, reading a process's memory,
// running the server half of a benchmark as a child process, and printing figures.
//
// Every benchmark program is one executable with two halves: `<prog> server` listens on
// 127.0.0.1 (port 0), prints "PORT <n>" on stdout and serves until killed; `<prog> <client
// mode>` starts its own server half as a child process (re-executing itself), measures
// against it over loopback and prints one `BENCH <key> <value>` line per figure. Progress
// and diagnostics go to stderr, so stdout carries figures only.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace fwd_bench {

using clock = std::chrono::steady_clock;

/** Bytes carried each way by every benchmarked call. */
inline constexpr std::size_t payload_size = 64;

inline std::int64_t elapsed_ns(clock::time_point from, clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count();
}

/** Seconds from the environment (`FWD_BENCH_SECONDS` scales every measurement window). */
inline double seconds_scale() {
  const char* s = std::getenv("FWD_BENCH_SECONDS");
  if (s == nullptr || *s == '\0') return 1.0;
  const double v = std::strtod(s, nullptr);
  return v > 0 ? v : 1.0;
}

inline clock::duration window(double seconds) {
  return std::chrono::duration_cast<clock::duration>(
      std::chrono::duration<double>(seconds * seconds_scale()));
}

struct latency_summary {
  double p50_us = 0;
  double p99_us = 0;
  std::size_t samples = 0;
};

/** p50 and p99 of round-trip times in nanoseconds (nearest-rank percentiles). */
inline latency_summary summarise(std::vector<std::int64_t> ns) {
  latency_summary s;
  s.samples = ns.size();
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  auto rank = [&](double q) {
    auto i = static_cast<std::size_t>(q * static_cast<double>(ns.size()) + 0.999999);
    return ns[std::min(ns.size() - 1, i == 0 ? 0 : i - 1)];
  };
  s.p50_us = static_cast<double>(rank(0.50)) / 1000.0;
  s.p99_us = static_cast<double>(rank(0.99)) / 1000.0;
  return s;
}

/**
 * Runs `one_call()` (a blocking round trip) back to back: a short warm-up, then samples for
 * `seconds` (scaled) or until `max_samples`, whichever comes first.
 */
template <class Call>
latency_summary sequential_latency(Call&& one_call, double seconds = 2.0,
                                   std::size_t max_samples = 500'000) {
  const auto warm_end = clock::now() + window(0.2);
  while (clock::now() < warm_end) one_call();
  std::vector<std::int64_t> ns;
  ns.reserve(max_samples);
  const auto end = clock::now() + window(seconds);
  while (ns.size() < max_samples) {
    const auto t0 = clock::now();
    one_call();
    const auto t1 = clock::now();
    ns.push_back(elapsed_ns(t0, t1));
    if (t1 >= end) break;
  }
  return summarise(std::move(ns));
}

/** A `VmRSS:`-style field of /proc/<pid>/status in KiB; -1 if absent. */
inline long status_kib(pid_t pid, std::string_view field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > field.size() && line.compare(0, field.size(), field) == 0 &&
        line[field.size()] == ':') {
      return std::strtol(line.c_str() + field.size() + 1, nullptr, 10);
    }
  }
  return -1;
}

/** The optional seconds argument `argv[i]` of a mode, else `fallback`. */
inline double seconds_arg(int argc, char** argv, int i, double fallback) {
  return argc > i ? std::strtod(argv[i], nullptr) : fallback;
}

/** Prints one figure: `BENCH <key> <value>`. */
inline void emit(const std::string& key, double value, int decimals = 1) {
  std::printf("BENCH %s %.*f\n", key.c_str(), decimals, value);
  std::fflush(stdout);
}

inline void note(const char* fmt_text, const std::string& detail = {}) {
  std::fprintf(stderr, fmt_text, detail.c_str());
  std::fputc('\n', stderr);
}

[[noreturn]] inline void die(const std::string& what) {
  std::fprintf(stderr, "bench: %s\n", what.c_str());
  std::exit(2);
}

/** Announces a listening server to the parent: must be the server's first stdout line. */
inline void announce_port(unsigned port) {
  std::printf("PORT %u\n", port);
  std::fflush(stdout);
}

/**
 * The server half, running as a child of this process (the same executable with `server`
 * and extra arguments). Killed and reaped on destruction; dies with its parent
 * (PR_SET_PDEATHSIG), so an interrupted run leaves no server behind.
 */
class server_process {
 public:
  explicit server_process(std::vector<std::string> extra_args = {}) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) die("pipe2 failed");
    const pid_t parent = getpid();
    // The executable's path, resolved before the fork: exec'ing "/proc/self/exe" itself would
    // start the wrong program under a tool that runs this one (valgrind --trace-children).
    char self[4096];
    const ssize_t self_size = readlink("/proc/self/exe", self, sizeof self - 1);
    if (self_size <= 0) die("readlink /proc/self/exe failed");
    self[self_size] = '\0';
    pid_ = fork();
    if (pid_ < 0) die("fork failed");
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      dup2(out[1], STDOUT_FILENO);
      std::vector<std::string> args{"bench-server", "server"};
      args.insert(args.end(), extra_args.begin(), extra_args.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(self, argv.data());
      _exit(127);
    }
    close(out[1]);
    // The first line is "PORT <n>"; reading it is also the readiness signal.
    std::string line;
    char c;
    while (read(out[0], &c, 1) == 1 && c != '\n') line.push_back(c);
    close(out[0]);
    if (line.rfind("PORT ", 0) != 0) die("server half did not start (got '" + line + "')");
    port_ = static_cast<unsigned short>(std::stoul(line.substr(5)));
  }
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;
  ~server_process() {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }

  pid_t pid() const { return pid_; }
  unsigned short port() const { return port_; }
  long rss_kib() const { return status_kib(pid_, "VmRSS"); }
  long peak_rss_kib() const { return status_kib(pid_, "VmHWM"); }

 private:
  pid_t pid_ = -1;
  unsigned short port_ = 0;
};

/** The 64 bytes every call carries (recognisable, not all zero). */
inline std::string make_payload() {
  std::string p(payload_size, '\0');
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<char>('a' + i % 26);
  return p;
}

/** Waits until `done()` is true, polling every millisecond, for at most `limit`. */
template <class Pred>
bool wait_until(Pred&& done, clock::duration limit) {
  const auto deadline = clock::now() + limit;
  while (!done()) {
    if (clock::now() >= deadline) return false;
    usleep(1000);
  }
  return true;
}

/**
 * Resets the server's peak RSS (VmHWM) to its current RSS by writing 5 to
 * /proc/<pid>/clear_refs (Linux >= 4.0), so that a later VmHWM is the peak of what follows.
 */
inline bool reset_peak_rss(const server_process& server) {
  std::ofstream out("/proc/" + std::to_string(server.pid()) + "/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

/** Lets the server settle after a burst, then reads its RSS (the kernel updates it lazily). */
inline long settled_rss_kib(const server_process& server) {
  usleep(200'000);
  return server.rss_kib();
}

/**
 * A helper process: this program re-executed with `args` (its argv[1]... ), stdout piped to
 * the parent. `wait_ready()` reads its first line, which must start with "READY ". Killed
 * and reaped on destruction; dies with its parent (PR_SET_PDEATHSIG).
 */
class child_process {
 public:
  explicit child_process(std::vector<std::string> args) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) die("pipe2 failed");
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) die("fork failed");
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      dup2(out[1], STDOUT_FILENO);
      args.insert(args.begin(), "bench-child");
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    close(out[1]);
    fd_ = out[0];
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process() {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    close(fd_);
  }
  /// Blocks until the child prints its "READY ..." line; the rest of that line.
  std::string wait_ready() {
    std::string line;
    char c;
    while (read(fd_, &c, 1) == 1 && c != '\n') line.push_back(c);
    if (line.rfind("READY ", 0) != 0) die("a child process did not start (got '" + line + "')");
    return line.substr(6);
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
};

/** A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed). */
inline unsigned short free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    die("cannot bind a loopback port");
  }
  close(fd);
  return ntohs(a.sin_port);
}

/** "1,2,3" -> {1, 2, 3} (numbers separated by commas). */
inline std::vector<long> parse_list(const std::string& text) {
  std::vector<long> out;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t comma = text.find(',', at);
    if (comma == std::string::npos) comma = text.size();
    if (comma > at) out.push_back(std::stol(text.substr(at, comma - at)));
    at = comma + 1;
  }
  return out;
}

}  // namespace fwd_bench
