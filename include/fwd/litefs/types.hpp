#pragma once

// What fwd knows of LiteFS, as values: the files' limits and names, a position
// (TXID, checksum), the local role, and the result of the database-path check.

#include <fwd/error.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

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

}  // namespace fwd::litefs
