#pragma once

// Definitions of <fwd/litefs/mount.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>

#include <fwd/litefs/detail/io.hpp>
#include <fwd/litefs/mount.hpp>

namespace fwd::litefs {

FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name,
                                boost::system::error_code& ec, diagnostics& diag) {
  ec.clear();
  diag.clear();
  if (db_name.empty() || db_name == "." || db_name == ".." ||
      db_name.find('/') != std::string_view::npos || db_name.find('\0') != std::string_view::npos) {
    detail::set_failure(
        ec, diag, errc::bad_argument,
        fmt::format("read_position: database name {} is not a file name in the mount: give the "
                    "database's file name, e.g. \"blog.db\"",
                    detail::escape_bytes(db_name)));
    return {};
  }
  const std::string path =
      detail::path_string(mount, fmt::format("{}{}", db_name, position_suffix));
  const detail::file_read r = detail::read_bounded(path, max_file_size);
  if (r.outcome == detail::read_outcome::not_found) {
    detail::set_errno_failure(
        ec, diag, ENOENT,
        fmt::format("{} does not exist: the database {} does not exist on this LiteFS mount yet "
                    "(create it through the mount), or {} is not a LiteFS mount",
                    path, db_name, mount.string()));
    return {};
  }
  detail::set_read_failure(ec, diag, r, path, "the database's LiteFS position");
  if (ec) return {};
  return parse_position(r.bytes, ec, diag, path);
}

FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name,
                                boost::system::error_code& ec) {
  diagnostics ignored;
  return read_position(mount, db_name, ec, ignored);
}

FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = read_position(mount, db_name, ec, diag);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount,
                                            boost::system::error_code& ec, diagnostics& diag) {
  ec.clear();
  diag.clear();
  const std::string path = detail::path_string(mount, lag_filename);
  const detail::file_read r = detail::read_bounded(path, max_file_size);
  if (r.outcome == detail::read_outcome::not_found) {
    detail::set_failure(
        ec, diag, errc::not_litefs,
        fmt::format("{} does not exist: {} is not a LiteFS mount (LiteFS always serves .lag): "
                    "use the fuse.dir of litefs.yml, e.g. {}",
                    path, mount.string(), default_mount));
    return {};
  }
  detail::set_read_failure(ec, diag, r, path, "LiteFS's replication lag");
  if (ec) return {};
  return parse_lag(r.bytes, ec, diag, path);
}

FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount,
                                            boost::system::error_code& ec) {
  diagnostics ignored;
  return read_lag(mount, ec, ignored);
}

FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = read_lag(mount, ec, diag);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL role read_role(const std::filesystem::path& mount, boost::system::error_code& ec,
                        diagnostics& diag) {
  ec.clear();
  diag.clear();
  role result;
  const std::string mount_str = mount.string();
  auto fail_role = [&]() {
    result.kind = role_kind::unknown;
    result.reason = diag.message();
    return result;
  };

  struct stat root {};
  // The root's mode tells the role, but the kernel caches it for up to 60 s after LiteFS
  // changes role (LiteFS sets no attribute validity): read it with AT_STATX_FORCE_SYNC.
  if (detail::stat_uncached(mount_str, root) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      result.kind = role_kind::not_litefs;
      result.reason = fmt::format("{} does not exist ({}): not a LiteFS mount", mount_str,
                                  detail::errno_text(err));
      return result;
    }
    detail::set_errno_failure(
        ec, diag, err,
        fmt::format("cannot stat the LiteFS mount {}: {}", mount_str, detail::errno_text(err)));
    return fail_role();
  }
  if (!S_ISDIR(root.st_mode)) {
    result.kind = role_kind::not_litefs;
    result.reason = fmt::format("{} is not a directory: not a LiteFS mount", mount_str);
    return result;
  }

  const std::string lag_path = detail::path_string(mount, lag_filename);
  struct stat lag_st {};
  if (::stat(lag_path.c_str(), &lag_st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      result.kind = role_kind::not_litefs;
      result.reason =
          fmt::format("{} has no .lag: not a LiteFS mount (LiteFS always serves .lag)", mount_str);
      return result;
    }
    detail::set_errno_failure(ec, diag, err,
                              fmt::format("cannot stat {}: {}", lag_path, detail::errno_text(err)));
    return fail_role();
  }

  const std::string primary_path = detail::path_string(mount, primary_filename);
  std::string absent_why = "no .primary";
  struct stat primary_st {};
  if (::lstat(primary_path.c_str(), &primary_st) == 0) {
    const detail::file_read r = detail::read_bounded(primary_path, max_file_size);
    if (r.outcome == detail::read_outcome::ok) {
      std::string host = parse_primary(r.bytes, ec, diag, primary_path);
      if (ec) return fail_role();
      result.kind = role_kind::replica;
      result.reason = fmt::format("{} names the primary {}", primary_path, host);
      result.primary_hostname = std::move(host);
      return result;
    }
    if (r.outcome != detail::read_outcome::not_found) {
      detail::set_read_failure(ec, diag, r, primary_path, "the primary's hostname");
      return fail_role();
    }
    absent_why = ".primary vanished between stat and read (ENOENT: LiteFS lost its primary)";
  } else if (errno != ENOENT) {
    const int err = errno;
    detail::set_errno_failure(
        ec, diag, err, fmt::format("cannot stat {}: {}", primary_path, detail::errno_text(err)));
    return fail_role();
  }

  const detail::file_read lag_read = detail::read_bounded(lag_path, max_file_size);
  if (lag_read.outcome == detail::read_outcome::not_found) {
    result.kind = role_kind::not_litefs;
    result.reason =
        fmt::format("{} vanished while reading it: the LiteFS mount went away", lag_path);
    return result;
  }
  detail::set_read_failure(ec, diag, lag_read, lag_path, "LiteFS's replication lag");
  if (ec) return fail_role();
  const std::chrono::milliseconds lag = parse_lag(lag_read.bytes, ec, diag, lag_path);
  if (ec) return fail_role();

  const unsigned mode = static_cast<unsigned>(root.st_mode & 07777);
  const bool writable = (root.st_mode & 0222) != 0;
  const std::string lag_text = never_synced(lag) ? std::string("never synced (+2147483647)")
                                                 : fmt::format("{} ms", lag.count());
  if (writable && lag.count() == 0) {
    result.kind = role_kind::primary;
    result.reason =
        fmt::format("{}, mount root writable (mode {:04o}) and .lag 0: this node is the primary",
                    absent_why, mode);
    return result;
  }
  result.kind = role_kind::unknown;
  result.reason = fmt::format(
      "{}, mount root mode {:04o} {}, .lag {}: no primary known (election, reconnect, or none); "
      "writes must wait",
      absent_why, mode, writable ? "(writable)" : "(read-only: a replica)", lag_text);
  return result;
}

FWD_DECL role read_role(const std::filesystem::path& mount, boost::system::error_code& ec) {
  diagnostics ignored;
  return read_role(mount, ec, ignored);
}

FWD_DECL role read_role(const std::filesystem::path& mount) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = read_role(mount, ec, diag);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL role current_role(const std::filesystem::path& mount) noexcept {
  try {
    // The role is already `unknown` with the failure as its reason.
    boost::system::error_code ignored;
    return read_role(mount, ignored);
  } catch (...) {
    role r;
    r.kind = role_kind::unknown;
    return r;
  }
}
}  // namespace fwd::litefs
