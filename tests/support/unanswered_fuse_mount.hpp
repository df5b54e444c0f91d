#pragma once

// A hung LiteFS, made for real: a FUSE filesystem mounted from a /dev/fuse descriptor that
// nobody serves. The kernel queues every request on it (the first one, INIT, is never
// answered), so any stat or open there blocks until the descriptor is closed, and then
// fails with ENOTCONN: exactly what a stopped LiteFS gives. Needs root and /dev/fuse;
// ok() is false otherwise, and why() says what failed.

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fwd_test {

// The mount's source names its owner process ("fwd-unanswered-<pid>"). A process killed
// outright (or aborted) never runs the destructor: the next mount removes what such a
// process left (the mount, and its mount point), as the LiteFS fixture does with its
// clusters.
inline constexpr const char* unanswered_source_prefix = "fwd-unanswered-";

inline void sweep_abandoned_unanswered_mounts() {
  std::ifstream mounts("/proc/mounts");
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string source, target;
    fields >> source >> target;
    if (source.rfind(unanswered_source_prefix, 0) != 0) continue;
    const long owner = std::strtol(source.c_str() + std::strlen(unanswered_source_prefix), nullptr, 10);
    if (owner <= 0 || ::kill(static_cast<pid_t>(owner), 0) == 0 || errno != ESRCH) continue;
    ::umount2(target.c_str(), MNT_DETACH);
    std::error_code ignored;
    std::filesystem::remove(target, ignored);  // the empty mount point
  }
}

// A FUSE mount nobody serves: every request on it waits until answer() closes the
// descriptor, then fails with ENOTCONN.
class unanswered_fuse_mount {
 public:
  explicit unanswered_fuse_mount(const std::filesystem::path& dir) : dir_(dir) {
    sweep_abandoned_unanswered_mounts();
    std::filesystem::create_directories(dir);
    fd_ = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd_ < 0) {
      why_ = std::string("cannot open /dev/fuse: ") + std::strerror(errno);
      return;
    }
    const std::string options = "fd=" + std::to_string(fd_) + ",rootmode=40000,user_id=0,group_id=0";
    const std::string source = unanswered_source_prefix + std::to_string(::getpid());
    if (::mount(source.c_str(), dir.c_str(), "fuse", MS_NOSUID | MS_NODEV, options.c_str()) != 0) {
      why_ = std::string("cannot mount FUSE: ") + std::strerror(errno);
      answer();
      return;
    }
    mounted_ = true;
  }
  ~unanswered_fuse_mount() {
    answer();
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  /// LiteFS "dies": the requests waiting on the mount fail with ENOTCONN.
  void answer() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  std::filesystem::path dir_;
  int fd_ = -1;
  bool mounted_ = false;
  std::string why_;
};

}  // namespace fwd_test
