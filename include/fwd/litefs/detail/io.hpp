#pragma once

// Bounded reads of LiteFS's control files, byte escaping for error messages, and the
// other small helpers the LiteFS headers share. Internal.

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <fwd/litefs/types.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <iterator>
#include <system_error>

namespace fwd::litefs {

namespace detail {

inline bool is_lower_hex(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}
inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
inline unsigned hex_value(char c) noexcept {
  return c <= '9' ? static_cast<unsigned>(c - '0') : static_cast<unsigned>(c - 'a' + 10);
}

inline void append_escaped_byte(std::string& out, unsigned char c) {
  switch (c) {
    case '\n':
      out += "\\n";
      return;
    case '\r':
      out += "\\r";
      return;
    case '\t':
      out += "\\t";
      return;
    case '\\':
      out += "\\\\";
      return;
    case '"':
      out += "\\\"";
      return;
    default:
      break;
  }
  if (c >= 0x20 && c < 0x7f) {
    out += static_cast<char>(c);
  } else {
    fmt::format_to(std::back_inserter(out), "\\x{:02x}", c);
  }
}

/// `bytes` quoted and C-escaped, at most `shown` bytes of it, with its size:
/// `"ab\n" (3 bytes)` or `"abc..." (5000 bytes, first 48 shown)`.
inline std::string escape_bytes(std::string_view bytes, std::size_t shown = 48) {
  std::string out = "\"";
  const std::size_t n = bytes.size() < shown ? bytes.size() : shown;
  for (std::size_t i = 0; i < n; ++i)
    append_escaped_byte(out, static_cast<unsigned char>(bytes[i]));
  if (n < bytes.size()) {
    fmt::format_to(std::back_inserter(out), "...\" ({} bytes, first {} shown)", bytes.size(), n);
  } else {
    fmt::format_to(std::back_inserter(out), "\" ({} {})", bytes.size(),
                   bytes.size() == 1 ? "byte" : "bytes");
  }
  return out;
}

/// `'A' (0x41)`, for messages about one byte.
inline std::string describe_byte(char c) {
  std::string out = "'";
  append_escaped_byte(out, static_cast<unsigned char>(c));
  fmt::format_to(std::back_inserter(out), "' (0x{:02x})", static_cast<unsigned char>(c));
  return out;
}

inline std::string errno_text(int err) { return std::generic_category().message(err); }

inline void set_failure(boost::system::error_code& ec, diagnostics& diag, errc e, std::string message) {
  ec = make_error_code(e);
  diag.assign(std::move(message));
}

inline void set_errno_failure(boost::system::error_code& ec, diagnostics& diag, int err, std::string message) {
  ec = boost::system::error_code(err, boost::system::system_category());
  diag.assign(std::move(message));
}

// stat() that asks the filesystem instead of the kernel's attribute cache (statx with
// AT_STATX_FORCE_SYNC: a FUSE getattr), for the attributes LiteFS changes under a running
// service. Only st_mode, st_dev and st_ino are filled. Returns 0, or -1 with errno set.
inline int stat_uncached(const std::string& path, struct stat& out) noexcept {
#if defined(STATX_MODE) && defined(AT_STATX_FORCE_SYNC)
  struct statx x {};
  if (::statx(AT_FDCWD, path.c_str(), AT_STATX_FORCE_SYNC, STATX_TYPE | STATX_MODE | STATX_INO, &x) == 0) {
    out = {};
    out.st_mode = x.stx_mode;
    out.st_ino = x.stx_ino;
    out.st_dev = makedev(x.stx_dev_major, x.stx_dev_minor);
    return 0;
  }
  if (errno != ENOSYS) return -1;
#endif
  return ::stat(path.c_str(), &out);
}

// Closes a file descriptor on scope exit.
class fd_guard {
 public:
  explicit fd_guard(int fd) noexcept : fd_(fd) {}
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  int fd_;
};

enum class read_outcome { ok, not_found, too_large, not_regular, io_error };

struct file_read {
  read_outcome outcome = read_outcome::ok;
  int error = 0;  ///< errno for not_found and io_error
  std::string bytes;
};

/// Reads a whole file of at most `limit` bytes with open/read (LiteFS's files are
/// virtual: their size from stat is not to be trusted, and they may vanish between
/// calls). Retries on EINTR; ENOENT at open or read is `not_found`.
inline file_read read_bounded(const std::string& path, std::size_t limit) {
  file_read result;
  int fd;
  do {
    // O_NONBLOCK: a FIFO planted in place of a control file must not hang the open.
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    result.error = errno;
    result.outcome = result.error == ENOENT ? read_outcome::not_found : read_outcome::io_error;
    return result;
  }
  fd_guard guard{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    result.error = errno;
    result.outcome = read_outcome::io_error;
    return result;
  }
  if (!S_ISREG(st.st_mode)) {
    result.outcome = read_outcome::not_regular;
    return result;
  }
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      result.error = errno;
      result.outcome = result.error == ENOENT ? read_outcome::not_found : read_outcome::io_error;
      result.bytes.clear();
      return result;
    }
    if (n == 0) break;
    if (result.bytes.size() + static_cast<std::size_t>(n) > limit) {
      result.outcome = read_outcome::too_large;
      result.bytes.clear();
      return result;
    }
    result.bytes.append(buffer, static_cast<std::size_t>(n));
  }
  return result;
}

/// Turns a failed read into a failure naming the file. `what` says what the file is.
inline void set_read_failure(boost::system::error_code& ec, diagnostics& diag, const file_read& r, const std::string& path,
                             std::string_view what) {
  switch (r.outcome) {
    case read_outcome::ok:
      return;
    case read_outcome::not_found:
      set_errno_failure(ec, diag, ENOENT,
                        fmt::format("{} ({}) does not exist: check that the directory is a "
                                    "LiteFS mount and that LiteFS is running",
                                    path, what));
      return;
    case read_outcome::too_large:
      set_failure(ec, diag, errc::bad_litefs_file,
          fmt::format("{} ({}) is larger than {} bytes; LiteFS's control files are a few bytes: "
                      "check that the directory is a LiteFS mount",
                      path, what, max_file_size));
      return;
    case read_outcome::not_regular:
      set_failure(ec, diag, errc::bad_litefs_file,
                  fmt::format("{} ({}) is not a regular file; LiteFS serves it as one: check "
                              "that the directory is a LiteFS mount",
                              path, what));
      return;
    case read_outcome::io_error:
      set_errno_failure(ec, diag, r.error,
                        fmt::format("cannot read {} ({}): {}: check the permissions and that "
                                    "LiteFS is running",
                                    path, what, errno_text(r.error)));
      return;
  }
}

inline std::string path_string(const std::filesystem::path& mount, std::string_view name) {
  return (mount / std::filesystem::path(std::string(name))).string();
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash) the kernel writes in /proc/self/mounts fields.
inline std::string decode_mount_field(std::string_view field) {
  std::string out;
  out.reserve(field.size());
  for (std::size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && field[i + 1] >= '0' && field[i + 1] <= '3' &&
        field[i + 2] >= '0' && field[i + 2] <= '7' && field[i + 3] >= '0' && field[i + 3] <= '7') {
      out += static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                               (field[i + 3] - '0'));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

inline const char* filesystem_name(std::uint64_t magic) noexcept {
  switch (magic) {
    case 0xef53:
      return "ext2/ext3/ext4";
    case 0x01021994:
      return "tmpfs";
    case 0x794c7630:
      return "overlayfs";
    case 0x58465342:
      return "xfs";
    case 0x9123683e:
      return "btrfs";
    case 0x6969:
      return "nfs";
    case 0x2fc12fc1:
      return "zfs";
    case 0xff534d42:
      return "cifs";
    case 0x65735546:
      return "fuse";
    default:
      return nullptr;
  }
}

}  // namespace detail

}  // namespace fwd::litefs
