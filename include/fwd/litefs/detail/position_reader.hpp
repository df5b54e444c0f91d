#pragma once

// The primary's writer reads `<db>-pos` after each COMMIT (the TXID a forwarded write's
// reply carries for read-your-writes). Opening the file each time costs LiteFS an open, a
// read and a flush and release; this reader keeps the file open and reads it with one
// pread (one FUSE read) instead.
//
// Why a kept descriptor reads the new position: LiteFS serves `<db>-pos` through the
// kernel's page cache, but sets the position (DB.setPos) before it answers the FUSE
// request that commits the transaction, and setPos invalidates the file's cached pages
// (a FUSE notify, processed by the kernel before LiteFS goes on). So once COMMIT has
// returned, a pread reaches LiteFS and returns the new position (tested on real LiteFS:
// tests/litefs). That holds for LiteFS's FUSE mount only: elsewhere (a plain directory
// whose `-pos` is replaced by rename, as the simulation does) the file is opened anew
// for each read, as before.
//
// The descriptor is dropped when the mount generation changes (LiteFS stopped or
// restarted: it points at the old mount) and after any failed or malformed read; the
// read is then made by path. Used by one thread at a time (the writer's). Internal.

#include <fcntl.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <fwd/litefs/files.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/litefs/types.hpp>
#include <string>
#include <utility>

namespace fwd::litefs::detail {

class position_reader {
 public:
  /// `generation` returns the mount generation now (litefs::monitor's), or is empty.
  position_reader(std::filesystem::path mount, std::string db_name,
                  std::function<std::uint64_t()> generation = {})
      : mount_(std::move(mount)), db_name_(std::move(db_name)), generation_(std::move(generation)) {}

  position_reader(const position_reader&) = delete;
  position_reader& operator=(const position_reader&) = delete;
  ~position_reader() { drop(); }

  /// The database's position now; ec set (and a zero position) when it cannot be read.
  position read(boost::system::error_code& ec) {
    ec.clear();
    const std::uint64_t generation = generation_ ? generation_() : 0;
    if (fd_ >= 0 && generation != fd_generation_) drop();
    if (fd_ < 0 && plain_generation_ != generation) open_kept(generation);
    if (fd_ >= 0) {
      char bytes[position_size + 1];
      ssize_t n;
      do {
        n = ::pread(fd_, bytes, sizeof bytes, 0);
      } while (n < 0 && errno == EINTR);
      if (n > 0) {
        const position p = parse_position(std::string_view(bytes, static_cast<std::size_t>(n)), ec);
        if (!ec) return p;
      }
      drop();  // read by path below; the next read opens the file again
    }
    return read_position(mount_, db_name_, ec);
  }

  /// Whether a descriptor is kept now (for tests).
  bool kept() const noexcept { return fd_ >= 0; }

 private:
  // Keeps the file open when it is on a FUSE mount (LiteFS's); otherwise reads by path.
  void open_kept(std::uint64_t generation) {
    const std::string path = (mount_ / (db_name_ + std::string(position_suffix))).string();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct statfs fs {};
    if (::fstatfs(fd, &fs) != 0) {
      ::close(fd);
      return;
    }
    if (static_cast<std::uint64_t>(fs.f_type) != fuse_super_magic) {
      ::close(fd);
      plain_generation_ = generation;  // not LiteFS's mount: by path until it changes
      return;
    }
    fd_ = fd;
    fd_generation_ = generation;
  }

  void drop() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  std::filesystem::path mount_;
  std::string db_name_;
  std::function<std::uint64_t()> generation_;
  int fd_ = -1;
  std::uint64_t fd_generation_ = 0;
  std::optional<std::uint64_t> plain_generation_;  // the file was not on FUSE then
};

}  // namespace fwd::litefs::detail
