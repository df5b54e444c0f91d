#pragma once

// The LiteFS mount contract: the files LiteFS serves in its FUSE mount (.primary, .lag,
// <db>-pos), the local role they imply, and the check that a database path really is on
// a LiteFS mount (and not in LiteFS's data directory, where nothing replicates).
//
// Every function that can fail comes in three forms:
//   f(args..., failure&)                   fills code + a detailed message, never throws
//   f(args..., boost::system::error_code&) fills the code only, never throws
//   f(args...)                             throws fwd::error carrying the detailed message
// The detailed messages name the file, show the offending bytes (escaped, truncated) and
// say what to do.
//
// Only std and POSIX: this header is cheap to include.

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fwd/error.hpp>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace fwd::litefs {

/// The largest LiteFS control file (.primary, .lag, <db>-pos) fwd reads; a larger file
/// is reported as bad_litefs_file rather than read into memory.
inline constexpr std::size_t max_file_size = 4096;

/// Size of a `<db>-pos` file: `"%016x/%016x\n"`.
inline constexpr std::size_t position_size = 34;

/// The value of `.lag` before this node has ever synced with a primary (Go's MaxInt32).
inline constexpr std::chrono::milliseconds lag_never_synced{2147483647};

/// `statfs().f_type` of every FUSE mount (FUSE_SUPER_MAGIC).
inline constexpr std::uint64_t fuse_super_magic = 0x65735546;

/// Where LiteFS's FUSE mount usually is (`fuse.dir` in litefs.yml), used in suggestions
/// when /proc/self/mounts shows none.
inline constexpr std::string_view default_mount = "/litefs";

inline constexpr std::string_view lag_filename = ".lag";
inline constexpr std::string_view primary_filename = ".primary";
inline constexpr std::string_view position_suffix = "-pos";

/// True when `lag` is LiteFS's "never synced" value.
constexpr bool never_synced(std::chrono::milliseconds lag) noexcept {
  return lag == lag_never_synced;
}

/// A failure with its detailed message (file, offending bytes, what to do).
struct failure {
  boost::system::error_code code;
  std::string message;

  bool failed() const noexcept { return static_cast<bool>(code); }
  /// True when failed, like error_code.
  explicit operator bool() const noexcept { return failed(); }
  void clear() noexcept {
    code.clear();
    message.clear();
  }
  /// Throws fwd::error(code, message).
  [[noreturn]] void raise() const { throw fwd::error(code, message); }
};

/// A database's replication position, as in `<db>-pos`.
struct position {
  std::uint64_t txid = 0;      ///< the last applied transaction id
  std::uint64_t checksum = 0;  ///< the database checksum after applying it
  friend bool operator==(const position&, const position&) = default;
};

/// What this node is, as far as its LiteFS mount tells.
enum class role_kind {
  primary,     ///< this node holds the lease: writes run here
  replica,     ///< a replica connected to `primary_hostname`
  unknown,     ///< no primary known (election, reconnect, none): writes must wait
  not_litefs,  ///< the directory is not a LiteFS mount (no `.lag`)
};

/// "primary", "replica", "unknown" or "not_litefs".
constexpr const char* to_string(role_kind k) noexcept {
  switch (k) {
    case role_kind::primary:
      return "primary";
    case role_kind::replica:
      return "replica";
    case role_kind::unknown:
      return "unknown";
    case role_kind::not_litefs:
      return "not_litefs";
  }
  return "?";
}

/// The local role and why it was decided (for logs).
struct role {
  role_kind kind = role_kind::unknown;
  std::string primary_hostname;  ///< the LiteFS lease hostname; set for replica only
  std::string reason;            ///< the signals that decided `kind`
};

/// One line of /proc/self/mounts, octal escapes (`\040`) decoded.
struct mount_entry {
  std::string source;
  std::filesystem::path mount_point;
  std::string type;
  std::string options;
};

/// Options of check_database_path.
struct path_check_options {
  /// Require the database's directory to be a FUSE mount. The LiteFS simulation used by
  /// tests and the demo is a plain directory and sets this to false.
  bool require_fuse = true;
  /// Where to read the mount table (default /proc/self/mounts), for the suggestion in
  /// messages; tests give a fixture.
  std::optional<std::filesystem::path> mounts_file;
};

/// The outcome of check_database_path.
struct path_check {
  boost::system::error_code code;  ///< empty when the path is fine
  std::string message;             ///< what is wrong and what to do; empty when ok
  std::filesystem::path mount;  ///< the LiteFS mount directory (the database's directory), when ok
  bool ok() const noexcept { return !code; }
};

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
    char buf[5];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
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
    out +=
        "...\" (" + std::to_string(bytes.size()) + " bytes, first " + std::to_string(n) + " shown)";
  } else {
    out += "\" (" + std::to_string(bytes.size()) + (bytes.size() == 1 ? " byte)" : " bytes)");
  }
  return out;
}

/// `'A' (0x41)`, for messages about one byte.
inline std::string describe_byte(char c) {
  std::string out = "'";
  append_escaped_byte(out, static_cast<unsigned char>(c));
  char buf[16];
  std::snprintf(buf, sizeof buf, "' (0x%02x)", static_cast<unsigned char>(c));
  return out + buf;
}

inline std::string errno_text(int err) { return std::generic_category().message(err); }

inline void set_failure(failure& f, errc e, std::string message) {
  f.code = make_error_code(e);
  f.message = std::move(message);
}

inline void set_errno_failure(failure& f, int err, std::string message) {
  f.code = boost::system::error_code(err, boost::system::system_category());
  f.message = std::move(message);
}

template <class T>
T value_or_throw(T value, const failure& f) {
  if (f) f.raise();
  return value;
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
inline void set_read_failure(failure& f, const file_read& r, const std::string& path,
                             std::string_view what) {
  switch (r.outcome) {
    case read_outcome::ok:
      return;
    case read_outcome::not_found:
      set_errno_failure(f, ENOENT,
                        path + " (" + std::string(what) +
                            ") does not exist: check that the directory is "
                            "a LiteFS mount and that LiteFS is running");
      return;
    case read_outcome::too_large:
      set_failure(
          f, errc::bad_litefs_file,
          path + " (" + std::string(what) + ") is larger than " + std::to_string(max_file_size) +
              " bytes; LiteFS's control files are a few bytes: check that the directory is a "
              "LiteFS mount");
      return;
    case read_outcome::not_regular:
      set_failure(f, errc::bad_litefs_file,
                  path + " (" + std::string(what) +
                      ") is not a regular file; LiteFS serves it as one: "
                      "check that the directory is a LiteFS mount");
      return;
    case read_outcome::io_error:
      set_errno_failure(f, r.error,
                        "cannot read " + path + " (" + std::string(what) +
                            "): " + errno_text(r.error) +
                            ": check the permissions and that LiteFS is running");
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

inline std::string hex(std::uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(value));
  return buf;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Pure formatting and parsing over bytes
// ---------------------------------------------------------------------------------------

/// The exact bytes LiteFS writes in `<db>-pos`: `"%016x/%016x\n"`.
inline std::string format_position(position p) {
  char buf[position_size + 1];
  std::snprintf(buf, sizeof buf, "%016llx/%016llx\n", static_cast<unsigned long long>(p.txid),
                static_cast<unsigned long long>(p.checksum));
  return std::string(buf, position_size);
}

/// The exact bytes LiteFS writes in `.lag`: Go's `"%+010d\n"`, where the width 10
/// counts the sign: `+000000000\n` (11 bytes) for 0, `+2147483647\n` for never synced.
inline std::string format_lag(std::chrono::milliseconds lag) {
  char buf[32];
  const int n = std::snprintf(buf, sizeof buf, "%+010lld\n", static_cast<long long>(lag.count()));
  return std::string(buf, static_cast<std::size_t>(n));
}

/**
 * Parses the contents of a `<db>-pos` file: exactly `"%016x/%016x\n"` (34 bytes,
 * lowercase hex: TXID, then the post-apply checksum). Anything else is bad_litefs_file
 * with a message naming `source` and the offending bytes; never a wrong number.
 */
inline position parse_position(std::string_view bytes, failure& fail,
                               std::string_view source = "<db>-pos") {
  fail.clear();
  const std::string src(source);
  const std::string expected =
      "LiteFS writes \"%016x/%016x\\n\" (34 bytes, lowercase hex, e.g. "
      "\"00000000002df417/ce552e44f23fbbdd\\n\"): check that the path is on a LiteFS mount";
  if (bytes.empty()) {
    detail::set_failure(fail, errc::bad_litefs_file, src + " is empty; " + expected);
    return {};
  }
  const std::string shown = detail::escape_bytes(bytes);
  const std::size_t n = bytes.size() < position_size ? bytes.size() : position_size;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = bytes[i];
    std::string problem;
    if (i == 16) {
      if (c != '/') problem = "expected '/' between TXID and checksum";
    } else if (i == 33) {
      if (c != '\n') problem = "expected the final newline";
    } else if (!detail::is_lower_hex(c)) {
      problem = (c >= 'A' && c <= 'F') ? "uppercase hex; LiteFS writes lowercase"
                                       : "expected a lowercase hex digit";
    }
    if (!problem.empty()) {
      detail::set_failure(fail, errc::bad_litefs_file,
                          src + " holds " + shown + ", not a position: byte " + std::to_string(i) +
                              " is " + detail::describe_byte(c) + ", " + problem + ". " + expected);
      return {};
    }
  }
  if (bytes.size() < position_size) {
    detail::set_failure(
        fail, errc::bad_litefs_file,
        src + " holds " + shown + ", not a position: it ends after " +
            std::to_string(bytes.size()) + " bytes" +
            (bytes.size() == position_size - 1 ? " (the final newline is missing)" : "") + ". " +
            expected);
    return {};
  }
  if (bytes.size() > position_size) {
    detail::set_failure(fail, errc::bad_litefs_file,
                        src + " holds " + shown +
                            ", not a position: " + std::to_string(bytes.size() - position_size) +
                            " unexpected bytes follow the newline. " + expected);
    return {};
  }
  position p;
  for (std::size_t i = 0; i < 16; ++i) {
    p.txid = (p.txid << 4) | detail::hex_value(bytes[i]);
    p.checksum = (p.checksum << 4) | detail::hex_value(bytes[17 + i]);
  }
  return p;
}

inline position parse_position(std::string_view bytes, boost::system::error_code& ec,
                               std::string_view source = "<db>-pos") {
  failure f;
  position p = parse_position(bytes, f, source);
  ec = f.code;
  return p;
}

/// Throws fwd::error (bad_litefs_file) with the detailed message.
inline position parse_position(std::string_view bytes, std::string_view source = "<db>-pos") {
  failure f;
  return detail::value_or_throw(parse_position(bytes, f, source), f);
}

/**
 * Parses the contents of `.lag`: milliseconds of replication lag written by Go's
 * `"%+010d\n"`: a sign, digits zero-padded to a width of 10 counting the sign (9 digits
 * for values below 10^9, 10 above), and a newline. 10 zero-padded digits (`+0000000000`)
 * are accepted too. A 10-digit value of exactly 11 bytes without its newline is
 * accepted: LiteFS advertises `.lag` as 11 bytes, so the kernel may cut the newline off
 * `+2147483647\n`. The result may be negative (clock skew between nodes); compare with
 * lag_never_synced (or never_synced()) for "never synced". Anything else is
 * bad_litefs_file naming `source` and the bytes.
 */
inline std::chrono::milliseconds parse_lag(std::string_view bytes, failure& fail,
                                           std::string_view source = ".lag") {
  fail.clear();
  const std::string src(source);
  const std::string expected =
      "LiteFS writes \"%+010d\\n\" (e.g. \"+000000000\\n\" on the primary, \"+2147483647\\n\" "
      "before the "
      "first sync): check that the path is a LiteFS mount";
  auto bad = [&](const std::string& problem) {
    detail::set_failure(fail, errc::bad_litefs_file,
                        src + " holds " + detail::escape_bytes(bytes) + ", not a lag: " + problem +
                            ". " + expected);
    return std::chrono::milliseconds{0};
  };
  if (bytes.empty()) {
    detail::set_failure(fail, errc::bad_litefs_file, src + " is empty; " + expected);
    return std::chrono::milliseconds{0};
  }
  if (bytes[0] != '+' && bytes[0] != '-')
    return bad("byte 0 is " + detail::describe_byte(bytes[0]) + ", expected '+' or '-'");
  std::size_t i = 1;
  while (i < bytes.size() && i <= 11 && detail::is_digit(bytes[i])) ++i;
  const std::size_t digits = i - 1;
  if (digits > 10) return bad("more than 10 digits");
  if (i == bytes.size()) {
    // Only the kernel's cut at LiteFS's advertised size (11 bytes) drops the newline.
    if (!(digits == 10 && bytes.size() == 11)) return bad("the final newline is missing");
  } else if (bytes[i] != '\n') {
    return bad("byte " + std::to_string(i) + " is " + detail::describe_byte(bytes[i]) +
               ", expected a digit or the final newline");
  } else if (i + 1 != bytes.size()) {
    return bad(std::to_string(bytes.size() - i - 1) + " unexpected bytes follow the newline");
  }
  if (digits < 9)
    return bad("only " + std::to_string(digits) + " digits, expected 9 or 10 (zero-padded)");
  long long value = 0;
  for (std::size_t k = 1; k <= digits; ++k) value = value * 10 + (bytes[k] - '0');
  if (bytes[0] == '-') value = -value;
  if (value > 2147483647LL || value < -2147483648LL)
    return bad("the value is outside a 32-bit integer");
  return std::chrono::milliseconds{value};
}

inline std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec,
                                           std::string_view source = ".lag") {
  failure f;
  auto lag = parse_lag(bytes, f, source);
  ec = f.code;
  return lag;
}

/// Throws fwd::error (bad_litefs_file) with the detailed message.
inline std::chrono::milliseconds parse_lag(std::string_view bytes,
                                           std::string_view source = ".lag") {
  failure f;
  return detail::value_or_throw(parse_lag(bytes, f, source), f);
}

/**
 * Parses the contents of `.primary`: the primary's LiteFS lease hostname and a newline
 * (not a URL). Surrounding whitespace is trimmed; an empty result, a control byte, NUL
 * or a space inside, or more than max_file_size bytes is bad_litefs_file.
 */
inline std::string parse_primary(std::string_view bytes, failure& fail,
                                 std::string_view source = ".primary") {
  fail.clear();
  const std::string src(source);
  const std::string expected =
      "LiteFS writes the primary's lease hostname and a newline (e.g. \"e829424aee6108\\n\"): "
      "check "
      "lease.hostname in the primary's litefs.yml";
  if (bytes.size() > max_file_size) {
    detail::set_failure(fail, errc::bad_litefs_file,
                        src + " holds " + detail::escape_bytes(bytes) + ", more than " +
                            std::to_string(max_file_size) + " bytes: not a hostname. " + expected);
    return {};
  }
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  };
  std::size_t begin = 0, end = bytes.size();
  while (begin < end && is_space(bytes[begin])) ++begin;
  while (end > begin && is_space(bytes[end - 1])) --end;
  if (begin == end) {
    detail::set_failure(
        fail, errc::bad_litefs_file,
        src + " holds " + detail::escape_bytes(bytes) + ": no hostname. " + expected);
    return {};
  }
  for (std::size_t i = begin; i < end; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c <= 0x20 || c == 0x7f) {
      detail::set_failure(fail, errc::bad_litefs_file,
                          src + " holds " + detail::escape_bytes(bytes) +
                              ", not a hostname: byte " + std::to_string(i) + " is " +
                              detail::describe_byte(bytes[i]) + ". " + expected);
      return {};
    }
  }
  return std::string(bytes.substr(begin, end - begin));
}

inline std::string parse_primary(std::string_view bytes, boost::system::error_code& ec,
                                 std::string_view source = ".primary") {
  failure f;
  std::string host = parse_primary(bytes, f, source);
  ec = f.code;
  return host;
}

/// Throws fwd::error (bad_litefs_file) with the detailed message.
inline std::string parse_primary(std::string_view bytes, std::string_view source = ".primary") {
  failure f;
  return detail::value_or_throw(parse_primary(bytes, f, source), f);
}

/// Parses a mount table in the format of /proc/self/mounts (`source target type options
/// freq passno`, octal escapes decoded). Lines with fewer than 3 fields are skipped.
inline std::vector<mount_entry> parse_mounts(std::string_view text) {
  std::vector<mount_entry> entries;
  while (!text.empty()) {
    const std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view{} : text.substr(eol + 1);
    std::vector<std::string_view> fields;
    std::size_t i = 0;
    while (i < line.size() && fields.size() < 4) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      const std::size_t start = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      if (i > start) fields.push_back(line.substr(start, i - start));
    }
    if (fields.size() < 3) continue;
    mount_entry e;
    e.source = detail::decode_mount_field(fields[0]);
    e.mount_point = detail::decode_mount_field(fields[1]);
    e.type = detail::decode_mount_field(fields[2]);
    if (fields.size() > 3) e.options = detail::decode_mount_field(fields[3]);
    entries.push_back(std::move(e));
  }
  return entries;
}

/// True for a LiteFS FUSE mount: source `litefs`, type `fuse` (or `fuse.litefs`).
inline bool is_litefs_mount(const mount_entry& e) noexcept {
  return e.source == "litefs" && (e.type == "fuse" || e.type == "fuse.litefs");
}

/// The first LiteFS FUSE mount point in a mount table's text, if any.
inline std::optional<std::filesystem::path> find_litefs_mount(std::string_view mounts_text) {
  for (const auto& e : parse_mounts(mounts_text)) {
    if (is_litefs_mount(e)) return e.mount_point;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------
// Reading a mount directory
// ---------------------------------------------------------------------------------------

/**
 * Reads `<mount>/<db_name>-pos`. `db_name` is the database's file name in the mount
 * (e.g. "blog.db"); a name with '/', NUL, or "."/".." is bad_argument. A missing file is
 * the system error ENOENT (the database does not exist on this mount); bad contents are
 * bad_litefs_file.
 */
inline position read_position(const std::filesystem::path& mount, std::string_view db_name,
                              failure& fail) {
  fail.clear();
  if (db_name.empty() || db_name == "." || db_name == ".." ||
      db_name.find('/') != std::string_view::npos || db_name.find('\0') != std::string_view::npos) {
    detail::set_failure(
        fail, errc::bad_argument,
        "read_position: database name " + detail::escape_bytes(db_name) +
            " is not a file name in the mount: give the database's file name, e.g. \"blog.db\"");
    return {};
  }
  const std::string path =
      detail::path_string(mount, std::string(db_name) + std::string(position_suffix));
  const detail::file_read r = detail::read_bounded(path, max_file_size);
  if (r.outcome == detail::read_outcome::not_found) {
    detail::set_errno_failure(
        fail, ENOENT,
        path + " does not exist: the database " + std::string(db_name) +
            " does not exist on this LiteFS mount yet (create it through the mount), "
            "or " +
            mount.string() + " is not a LiteFS mount");
    return {};
  }
  detail::set_read_failure(fail, r, path, "the database's LiteFS position");
  if (fail) return {};
  return parse_position(r.bytes, fail, path);
}

inline position read_position(const std::filesystem::path& mount, std::string_view db_name,
                              boost::system::error_code& ec) {
  failure f;
  position p = read_position(mount, db_name, f);
  ec = f.code;
  return p;
}

/// Throws fwd::error with the detailed message.
inline position read_position(const std::filesystem::path& mount, std::string_view db_name) {
  failure f;
  return detail::value_or_throw(read_position(mount, db_name, f), f);
}

/// Reads `<mount>/.lag` (see parse_lag). A missing file is not_litefs.
inline std::chrono::milliseconds read_lag(const std::filesystem::path& mount, failure& fail) {
  fail.clear();
  const std::string path = detail::path_string(mount, lag_filename);
  const detail::file_read r = detail::read_bounded(path, max_file_size);
  if (r.outcome == detail::read_outcome::not_found) {
    detail::set_failure(
        fail, errc::not_litefs,
        path + " does not exist: " + mount.string() +
            " is not a LiteFS mount (LiteFS always serves .lag): use the fuse.dir of "
            "litefs.yml, e.g. " +
            std::string(default_mount));
    return {};
  }
  detail::set_read_failure(fail, r, path, "LiteFS's replication lag");
  if (fail) return {};
  return parse_lag(r.bytes, fail, path);
}

inline std::chrono::milliseconds read_lag(const std::filesystem::path& mount,
                                          boost::system::error_code& ec) {
  failure f;
  auto lag = read_lag(mount, f);
  ec = f.code;
  return lag;
}

/// Throws fwd::error with the detailed message.
inline std::chrono::milliseconds read_lag(const std::filesystem::path& mount) {
  failure f;
  return detail::value_or_throw(read_lag(mount, f), f);
}

/**
 * Decides this node's role from its LiteFS mount:
 *  - no `.lag` (or no such directory): not_litefs;
 *  - `.primary` present and readable: replica, primary_hostname = its trimmed content;
 *  - `.primary` absent, or present at lstat but gone at open/read (LiteFS re-checks it on
 *    every access: ENOENT then means absent, never an error): primary only if the mount
 *    root's mode has a write bit (LiteFS: 0777 on the primary, 0555 on replicas) AND
 *    `.lag` reads 0; otherwise unknown (election, reconnect, no primary): writes must
 *    wait, never run locally.
 * `reason` says which signals decided. Failures: I/O errors other than ENOENT (system
 * category) and malformed `.primary`/`.lag` (bad_litefs_file); the role is then unknown.
 *
 * The presence of `.primary` is tested with lstat (LiteFS serves no symlinks), so a
 * dangling symlink reproduces "present at stat, ENOENT at open".
 */
inline role read_role(const std::filesystem::path& mount, failure& fail) {
  fail.clear();
  role result;
  const std::string mount_str = mount.string();
  auto fail_role = [&]() {
    result.kind = role_kind::unknown;
    result.reason = fail.message;
    return result;
  };

  struct stat root {};
  if (::stat(mount_str.c_str(), &root) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      result.kind = role_kind::not_litefs;
      result.reason =
          mount_str + " does not exist (" + detail::errno_text(err) + "): not a LiteFS mount";
      return result;
    }
    detail::set_errno_failure(
        fail, err, "cannot stat the LiteFS mount " + mount_str + ": " + detail::errno_text(err));
    return fail_role();
  }
  if (!S_ISDIR(root.st_mode)) {
    result.kind = role_kind::not_litefs;
    result.reason = mount_str + " is not a directory: not a LiteFS mount";
    return result;
  }

  const std::string lag_path = detail::path_string(mount, lag_filename);
  struct stat lag_st {};
  if (::stat(lag_path.c_str(), &lag_st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      result.kind = role_kind::not_litefs;
      result.reason = mount_str + " has no .lag: not a LiteFS mount (LiteFS always serves .lag)";
      return result;
    }
    detail::set_errno_failure(fail, err,
                              "cannot stat " + lag_path + ": " + detail::errno_text(err));
    return fail_role();
  }

  const std::string primary_path = detail::path_string(mount, primary_filename);
  std::string absent_why = "no .primary";
  struct stat primary_st {};
  if (::lstat(primary_path.c_str(), &primary_st) == 0) {
    const detail::file_read r = detail::read_bounded(primary_path, max_file_size);
    if (r.outcome == detail::read_outcome::ok) {
      std::string host = parse_primary(r.bytes, fail, primary_path);
      if (fail) return fail_role();
      result.kind = role_kind::replica;
      result.reason = primary_path + " names the primary " + host;
      result.primary_hostname = std::move(host);
      return result;
    }
    if (r.outcome != detail::read_outcome::not_found) {
      detail::set_read_failure(fail, r, primary_path, "the primary's hostname");
      return fail_role();
    }
    absent_why = ".primary vanished between stat and read (ENOENT: LiteFS lost its primary)";
  } else if (errno != ENOENT) {
    const int err = errno;
    detail::set_errno_failure(fail, err,
                              "cannot stat " + primary_path + ": " + detail::errno_text(err));
    return fail_role();
  }

  const detail::file_read lag_read = detail::read_bounded(lag_path, max_file_size);
  if (lag_read.outcome == detail::read_outcome::not_found) {
    result.kind = role_kind::not_litefs;
    result.reason = lag_path + " vanished while reading it: the LiteFS mount went away";
    return result;
  }
  detail::set_read_failure(fail, lag_read, lag_path, "LiteFS's replication lag");
  if (fail) return fail_role();
  const std::chrono::milliseconds lag = parse_lag(lag_read.bytes, fail, lag_path);
  if (fail) return fail_role();

  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(root.st_mode & 07777));
  const bool writable = (root.st_mode & 0222) != 0;
  const std::string lag_text = never_synced(lag) ? std::string("never synced (+2147483647)")
                                                 : std::to_string(lag.count()) + " ms";
  if (writable && lag.count() == 0) {
    result.kind = role_kind::primary;
    result.reason = absent_why + ", mount root writable (mode " + mode +
                    ") and .lag 0: this node is the primary";
    return result;
  }
  result.kind = role_kind::unknown;
  result.reason = absent_why + ", mount root mode " + mode +
                  (writable ? " (writable)" : " (read-only: a replica)") + ", .lag " + lag_text +
                  ": no primary known (election, reconnect, or none); writes must wait";
  return result;
}

inline role read_role(const std::filesystem::path& mount, boost::system::error_code& ec) {
  failure f;
  role r = read_role(mount, f);
  ec = f.code;
  return r;
}

/// Throws fwd::error on I/O failures other than ENOENT and on malformed files.
inline role read_role(const std::filesystem::path& mount) {
  failure f;
  return detail::value_or_throw(read_role(mount, f), f);
}

// ---------------------------------------------------------------------------------------
// The database-path check
// ---------------------------------------------------------------------------------------

namespace detail {

/// A LiteFS data directory holds `dbs/`, whose entries are `<name>/` directories with a
/// `database` file or an `ltx/` directory. An empty `dbs/` counts too (no database yet).
inline bool looks_like_data_directory(const std::filesystem::path& dir) {
  std::error_code ec;
  const std::filesystem::path dbs = dir / "dbs";
  if (!std::filesystem::is_directory(dbs, ec)) return false;
  std::filesystem::directory_iterator it(dbs, ec);
  if (ec) return false;
  bool empty = true;
  // Bounded: a huge unrelated directory must not make the check slow.
  for (int seen = 0; it != std::filesystem::directory_iterator() && seen < 256;
       it.increment(ec), ++seen) {
    if (ec) return false;
    empty = false;
    const std::filesystem::path entry = it->path();
    std::error_code e1, e2;
    if (std::filesystem::is_directory(entry, e1) &&
        (std::filesystem::exists(entry / "database", e1) ||
         std::filesystem::is_directory(entry / "ltx", e2))) {
      return true;
    }
  }
  return empty;
}

/// The first LiteFS FUSE mount in `mounts_file` (default /proc/self/mounts), else /litefs.
inline std::filesystem::path suggested_mount(
    const std::optional<std::filesystem::path>& mounts_file) {
  const std::string file = mounts_file ? mounts_file->string() : std::string("/proc/self/mounts");
  const file_read r = read_bounded(file, 1u << 20);
  if (r.outcome == read_outcome::ok) {
    if (auto m = find_litefs_mount(r.bytes)) return *m;
  }
  return std::filesystem::path(std::string(default_mount));
}

}  // namespace detail

/**
 * Checks that `db` is a database path on a LiteFS FUSE mount, in this order:
 *  1. empty path, a NUL byte, or a path naming no file ("/", "dir/", ".", "..") is bad_argument;
 *  2. a path inside LiteFS's data directory (an ancestor holding `dbs/`) is
 *     misconfigured_mount: nothing written there replicates;
 *  3. the database's directory must be a FUSE mount (`statfs().f_type == 0x65735546`),
 *     unless `options.require_fuse` is false: otherwise not_litefs;
 *  4. that directory must hold `.lag`: otherwise not_litefs.
 * Relative paths are taken from the current directory. Other I/O failures keep their
 * system error code. On success, `mount` is the database's directory.
 */
inline path_check check_database_path(const std::filesystem::path& db,
                                      const path_check_options& options = {}) {
  path_check result;
  auto fail = [&](boost::system::error_code code, std::string message) {
    result.code = code;
    result.message = std::move(message);
    return result;
  };
  const std::string raw = db.string();
  if (raw.empty()) {
    return fail(errc::bad_argument,
                "the database path is empty: give the database's path on the LiteFS mount, e.g. "
                "/litefs/blog.db");
  }
  if (raw.find('\0') != std::string::npos) {
    return fail(errc::bad_argument,
                "the database path " + detail::escape_bytes(raw) +
                    " contains a NUL byte: give the database's path on the LiteFS mount, "
                    "e.g. /litefs/blog.db");
  }
  std::error_code fs_ec;
  std::filesystem::path absolute = std::filesystem::absolute(db, fs_ec);
  if (fs_ec) {
    return fail(boost::system::error_code(fs_ec.value(), boost::system::system_category()),
                "cannot make the database path " + raw + " absolute: " + fs_ec.message());
  }
  const std::string name = db.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return fail(errc::bad_argument,
                "the database path " + raw +
                    " names a directory, not a database file: give the database's path on "
                    "the LiteFS mount, e.g. /litefs/blog.db");
  }
  absolute = absolute.lexically_normal();
  const std::filesystem::path dir = absolute.parent_path();

  // 2. Inside LiteFS's data directory: the mistake that silently splits the cluster.
  for (std::filesystem::path ancestor = dir;; ancestor = ancestor.parent_path()) {
    if (detail::looks_like_data_directory(ancestor)) {
      // For <data>/dbs/<name>/database, suggest <name>; otherwise the file's own name.
      std::string suggested_name = absolute.filename().string();
      const std::filesystem::path rel = absolute.lexically_relative(ancestor);
      auto part = rel.begin();
      if (part != rel.end() && *part == "dbs" && ++part != rel.end() &&
          std::next(part) != rel.end()) {
        suggested_name = part->string();
      }
      const std::filesystem::path suggestion =
          detail::suggested_mount(options.mounts_file) / suggested_name;
      return fail(errc::misconfigured_mount,
                  absolute.string() + " is inside LiteFS's data directory (" + ancestor.string() +
                      "); nothing written there replicates. Point SQLite at the FUSE mount, e.g. " +
                      suggestion.string());
    }
    if (ancestor == ancestor.parent_path() || ancestor.empty()) break;
  }

  // 3. A FUSE mount.
  struct statfs fs_info {};
  if (::statfs(dir.c_str(), &fs_info) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return fail(errc::not_litefs,
                  "the directory " + dir.string() + " of the database " + absolute.string() +
                      " does not exist (" + detail::errno_text(err) +
                      "): point SQLite at the LiteFS FUSE mount, e.g. " +
                      (detail::suggested_mount(options.mounts_file) / name).string() +
                      ", and start LiteFS before the application");
    }
    return fail(boost::system::error_code(err, boost::system::system_category()),
                "cannot statfs " + dir.string() + " (the directory of " + absolute.string() +
                    "): " + detail::errno_text(err));
  }
  const auto magic = static_cast<std::uint64_t>(static_cast<unsigned long>(fs_info.f_type));
  if (options.require_fuse && magic != fuse_super_magic) {
    const char* fs_name = detail::filesystem_name(magic);
    return fail(
        errc::not_litefs,
        dir.string() + " (the directory of " + absolute.string() +
            ") is not a FUSE mount: its filesystem magic is " + detail::hex(magic) +
            (fs_name ? std::string(" (") + fs_name + ")" : std::string()) +
            ", a LiteFS mount has " + detail::hex(fuse_super_magic) +
            " (FUSE), so nothing written there replicates. Point SQLite at the LiteFS FUSE mount, "
            "e.g. " +
            (detail::suggested_mount(options.mounts_file) / name).string() +
            " (for a LiteFS simulation in tests, set path_check_options::require_fuse = false)");
  }

  // 4. `.lag`, which LiteFS always serves.
  const std::string lag_path = detail::path_string(dir, lag_filename);
  struct stat st {};
  if (::stat(lag_path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      return fail(
          errc::not_litefs,
          dir.string() +
              (options.require_fuse ? " is a FUSE mount but has no .lag: not a LiteFS mount"
                                    : " has no .lag: not a LiteFS mount nor a LiteFS simulation") +
              "; LiteFS always serves .lag in its mount. Point SQLite at the LiteFS FUSE mount, "
              "e.g. " +
              (detail::suggested_mount(options.mounts_file) / name).string());
    }
    return fail(boost::system::error_code(err, boost::system::system_category()),
                "cannot stat " + lag_path + ": " + detail::errno_text(err));
  }
  result.mount = dir;
  return result;
}

/// Throws fwd::error with check_database_path's message when the check fails; returns
/// the LiteFS mount directory (the database's directory) otherwise.
inline std::filesystem::path require_database_path(const std::filesystem::path& db,
                                                   const path_check_options& options = {}) {
  path_check check = check_database_path(db, options);
  if (!check.ok()) throw fwd::error(check.code, check.message);
  return check.mount;
}

}  // namespace fwd::litefs
