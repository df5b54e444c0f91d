#pragma once

// A network of nodes in network namespaces, for the fault suite: one namespace per node
// (lo, and eth0 at 10.77.0.<i+1>/24), plus one namespace holding the bridge that joins
// their veth pairs. Nothing is created in the caller's namespace, so the addresses exist
// only inside the lab. nftables in a node's namespace cuts or thins its traffic.
//
// Namespaces are named fwdf-<pid>-<role>: a lab whose owner was killed outright is swept
// by the next one (sweep()). Needs root, `ip` and `nft`.

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace fwd_faults {

/// Runs a shell command; its exit status and what it printed (stdout and stderr).
struct command_result {
  int status = -1;
  std::string output;
};

inline command_result run_command(const std::string& command, const std::string& input = {}) {
  command_result r;
  const std::string full = input.empty() ? command + " 2>&1"
                                         : command + " 2>&1 <<'FWDF_EOF'\n" + input + "\nFWDF_EOF";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) return r;
  char buffer[1024];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) r.output.append(buffer, n);
  const int status = ::pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

/// Runs a command that must succeed; throws with its output otherwise.
inline void must(const std::string& command, const std::string& input = {}) {
  const auto r = run_command(command, input);
  if (r.status != 0)
    throw std::runtime_error("'" + command + "' failed (" + std::to_string(r.status) + "): " + r.output);
}

inline constexpr const char* lab_prefix = "fwdf-";
inline const std::filesystem::path netns_dir = "/var/run/netns";

/// The owner pid in a name made by this lab (fwdf-<pid>-...), or 0.
inline long owner_of(const std::string& name) {
  if (name.rfind(lab_prefix, 0) != 0) return 0;
  const std::string rest = name.substr(std::strlen(lab_prefix));
  const auto dash = rest.find('-');
  if (dash == std::string::npos || dash == 0) return 0;
  if (rest.substr(0, dash).find_first_not_of("0123456789") != std::string::npos) return 0;
  return std::stol(rest.substr(0, dash));
}

inline bool owner_gone(long pid) { return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH; }

class netns_lab {
 public:
  /// Why a lab cannot be built here, or nullopt.
  static std::optional<std::string> unavailable() {
    if (::geteuid() != 0) return "not root: network namespaces and nftables need CAP_NET_ADMIN";
    if (run_command("command -v ip").status != 0) return "no `ip` (iproute2) on PATH";
    if (run_command("command -v nft").status != 0) return "no `nft` (nftables) on PATH";
    const std::string probe = std::string(lab_prefix) + std::to_string(::getpid()) + "-probe";
    const auto added = run_command("ip netns add " + probe);
    if (added.status != 0) return "cannot create a network namespace: " + added.output;
    const auto nft = run_command("ip netns exec " + probe + " nft add table ip fwdfault");
    run_command("ip netns del " + probe);
    if (nft.status != 0) return "nftables refused inside a network namespace: " + nft.output;
    return std::nullopt;
  }

  /// Deletes the namespaces of labs whose owner process is gone.
  static void sweep() {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(netns_dir, ec)) {
      const std::string name = e.path().filename().string();
      if (owner_gone(owner_of(name))) run_command("ip netns del " + name);
    }
  }

  explicit netns_lab(std::size_t nodes) : nodes_(nodes) {
    base_ = std::string(lab_prefix) + std::to_string(::getpid());
    try {
      must("ip netns add " + bridge_ns());
      made_.push_back(bridge_ns());
      must("ip -n " + bridge_ns() + " link add br0 type bridge");
      must("ip -n " + bridge_ns() + " link set br0 up");
      for (std::size_t i = 0; i < nodes_; ++i) {
        const std::string ns = name(i);
        must("ip netns add " + ns);
        made_.push_back(ns);
        must("ip -n " + ns + " link set lo up");
        must("ip -n " + ns + " link add eth0 type veth peer name p" + std::to_string(i) + " netns " +
             bridge_ns());
        must("ip -n " + bridge_ns() + " link set p" + std::to_string(i) + " master br0 up");
        must("ip -n " + ns + " addr add " + address(i) + "/24 dev eth0");
        must("ip -n " + ns + " link set eth0 up");
      }
    } catch (...) {
      remove();
      throw;
    }
  }
  ~netns_lab() { remove(); }
  netns_lab(const netns_lab&) = delete;
  netns_lab& operator=(const netns_lab&) = delete;

  std::size_t size() const noexcept { return nodes_; }
  std::string name(std::size_t i) const { return base_ + "-n" + std::to_string(i); }
  std::string path(std::size_t i) const { return (netns_dir / name(i)).string(); }
  static std::string address(std::size_t i) { return "10.77.0." + std::to_string(i + 1); }

  /// Moves the calling thread into node i's namespace (sockets it opens from now on, and
  /// threads it starts, live there).
  void enter(std::size_t i) const {
    const int fd = ::open(path(i).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path(i) + ": " + std::strerror(errno));
    const int rc = ::setns(fd, CLONE_NEWNET);
    const int err = errno;
    ::close(fd);
    if (rc != 0) throw std::runtime_error("setns " + path(i) + ": " + std::strerror(err));
  }

  /// Node i drops every packet to and from the given nodes (both directions of each pair
  /// are cut, on both sides).
  void partition(std::size_t i, const std::vector<std::size_t>& from) {
    for (std::size_t j : from) {
      drop_between(i, j);
      drop_between(j, i);
    }
  }

  /// Every node drops `percent`% of the packets it sends on eth0, at random.
  void loss(int percent) {
    for (std::size_t i = 0; i < nodes_; ++i) {
      must("ip netns exec " + name(i) + " nft -f -",
           "table ip fwdfault {\n"
           "  chain output { type filter hook output priority 0; policy accept;\n"
           "    oifname \"eth0\" numgen random mod 100 < " + std::to_string(percent) + " drop; }\n"
           "}");
    }
  }

  /// Removes every rule the lab added.
  void heal() {
    for (std::size_t i = 0; i < nodes_; ++i) run_command("ip netns exec " + name(i) + " nft flush ruleset");
  }

 private:
  void drop_between(std::size_t i, std::size_t j) {
    must("ip netns exec " + name(i) + " nft -f -",
         "table ip fwdfault {\n"
         "  chain input { type filter hook input priority 0; policy accept; ip saddr " + address(j) + " drop; }\n"
         "  chain output { type filter hook output priority 0; policy accept; ip daddr " + address(j) + " drop; }\n"
         "}");
  }

  std::string bridge_ns() const { return base_ + "-br"; }

  void remove() noexcept {
    for (auto it = made_.rbegin(); it != made_.rend(); ++it) run_command("ip netns del " + *it);
    made_.clear();
  }

  std::size_t nodes_;
  std::string base_;
  std::vector<std::string> made_;
};

}  // namespace fwd_faults
