#pragma once

// Definitions of <fwd/litefs/path_check.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>

#include <fwd/litefs/detail/io.hpp>
#include <fwd/litefs/path_check.hpp>

namespace fwd::litefs {

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

/// The LiteFS FUSE mount in `mounts_file` (default /proc/self/mounts) to suggest for a
/// database found under the data directory `near`: with several LiteFS mounts, the one
/// that shares the longest path with it (a LiteFS's mount and data directory usually sit
/// side by side, e.g. /litefs and /var/lib/litefs, or <dir>/mnt and <dir>/data); else the
/// first; else /litefs.
inline std::filesystem::path suggested_mount(const std::optional<std::filesystem::path>& mounts_file,
                                             const std::filesystem::path& near = {}) {
  const std::string file = mounts_file ? mounts_file->string() : std::string("/proc/self/mounts");
  const file_read r = read_bounded(file, 1u << 20);
  if (r.outcome != read_outcome::ok) return std::filesystem::path(std::string(default_mount));
  std::optional<std::filesystem::path> best;
  std::size_t best_shared = 0;
  for (const auto& e : parse_mounts(r.bytes)) {
    if (!is_litefs_mount(e)) continue;
    const std::filesystem::path mount(e.mount_point);
    std::size_t shared = 0;
    for (auto a = mount.begin(), b = near.begin(); a != mount.end() && b != near.end() && *a == *b; ++a, ++b) {
      ++shared;
    }
    if (!best || shared > best_shared) {
      best = mount;
      best_shared = shared;
    }
  }
  return best ? *best : std::filesystem::path(std::string(default_mount));
}

}  // namespace detail

FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                   const path_check_options& options,
                                                   boost::system::error_code& ec,
                                                   diagnostics& diag) {
  ec.clear();
  diag.clear();
  auto fail = [&](boost::system::error_code code, std::string message) {
    ec = code;
    diag.assign(std::move(message));
    return std::filesystem::path();
  };
  const std::string raw = db.string();
  if (raw.empty()) {
    return fail(errc::bad_argument,
                "the database path is empty: give the database's path on the LiteFS mount, e.g. "
                "/litefs/blog.db");
  }
  if (raw.find('\0') != std::string::npos) {
    return fail(errc::bad_argument,
                fmt::format("the database path {} contains a NUL byte: give the database's "
                            "path on the LiteFS mount, e.g. /litefs/blog.db",
                            detail::escape_bytes(raw)));
  }
  std::error_code fs_ec;
  std::filesystem::path absolute = std::filesystem::absolute(db, fs_ec);
  if (fs_ec) {
    return fail(boost::system::error_code(fs_ec.value(), boost::system::system_category()),
                fmt::format("cannot make the database path {} absolute: {}", raw, fs_ec.message()));
  }
  const std::string name = db.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return fail(errc::bad_argument,
                fmt::format("the database path {} names a directory, not a database file: give "
                            "the database's path on the LiteFS mount, e.g. /litefs/blog.db",
                            raw));
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
          detail::suggested_mount(options.mounts_file, ancestor) / suggested_name;
      return fail(errc::misconfigured_mount,
                  fmt::format("{} is inside LiteFS's data directory ({}); nothing written there "
                              "replicates. Point SQLite at the FUSE mount, e.g. {}",
                              absolute.string(), ancestor.string(), suggestion.string()));
    }
    if (ancestor == ancestor.parent_path() || ancestor.empty()) break;
  }

  // 3. A FUSE mount.
  struct statfs fs_info {};
  if (::statfs(dir.c_str(), &fs_info) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return fail(errc::not_litefs,
                  fmt::format("the directory {} of the database {} does not exist ({}): point "
                              "SQLite at the LiteFS FUSE mount, e.g. {}, and start LiteFS before "
                              "the application",
                              dir.string(), absolute.string(), detail::errno_text(err),
                              (detail::suggested_mount(options.mounts_file) / name).string()));
    }
    return fail(boost::system::error_code(err, boost::system::system_category()),
                fmt::format("cannot statfs {} (the directory of {}): {}", dir.string(),
                            absolute.string(), detail::errno_text(err)));
  }
  const auto magic = static_cast<std::uint64_t>(static_cast<unsigned long>(fs_info.f_type));
  if (options.require_fuse && magic != fuse_super_magic) {
    const char* fs_name = detail::filesystem_name(magic);
    return fail(
        errc::not_litefs,
        fmt::format("{} (the directory of {}) is not a FUSE mount: its filesystem magic is "
                    "{:#x}{}, a LiteFS mount has {:#x} (FUSE), so nothing written there "
                    "replicates. Point SQLite at the LiteFS FUSE mount, e.g. {} (for a LiteFS "
                    "simulation in tests, set path_check_options::require_fuse = false)",
                    dir.string(), absolute.string(), magic,
                    fs_name ? fmt::format(" ({})", fs_name) : std::string(), fuse_super_magic,
                    (detail::suggested_mount(options.mounts_file) / name).string()));
  }

  // 4. `.lag`, which LiteFS always serves.
  const std::string lag_path = detail::path_string(dir, lag_filename);
  struct stat st {};
  if (::stat(lag_path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      return fail(
          errc::not_litefs,
          fmt::format("{} {}; LiteFS always serves .lag in its mount. Point SQLite at the LiteFS "
                      "FUSE mount, e.g. {}",
                      dir.string(),
                      options.require_fuse
                          ? "is a FUSE mount but has no .lag: not a LiteFS mount"
                          : "has no .lag: not a LiteFS mount nor a LiteFS simulation",
                      (detail::suggested_mount(options.mounts_file) / name).string()));
    }
    return fail(boost::system::error_code(err, boost::system::system_category()),
                fmt::format("cannot stat {}: {}", lag_path, detail::errno_text(err)));
  }
  return dir;
}

FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                   const path_check_options& options,
                                                   boost::system::error_code& ec) {
  diagnostics ignored;
  return check_database_path(db, options, ec, ignored);
}

FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                   const path_check_options& options) {
  boost::system::error_code ec;
  diagnostics diag;
  auto mount = check_database_path(db, options, ec, diag);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return mount;
}
}  // namespace fwd::litefs
