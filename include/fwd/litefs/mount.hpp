#pragma once

// Reading a LiteFS mount directory: this node's position, lag and role, in the two
// forms of files.hpp. The role never comes from `.primary`'s absence alone.

#include <fwd/detail/config.hpp>
#include <fwd/litefs/files.hpp>
#include <fwd/litefs/types.hpp>

namespace fwd::litefs {

// ---------------------------------------------------------------------------------------
// Reading a mount directory
// ---------------------------------------------------------------------------------------

/**
 * Reads `<mount>/<db_name>-pos`. `db_name` is the database's file name in the mount
 * (e.g. "blog.db"); a name with '/', NUL, or "."/".." is bad_argument. A missing file is
 * the system error ENOENT (the database does not exist on this mount); bad contents are
 * bad_litefs_file.
 */
FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name,
                              boost::system::error_code& ec, diagnostics& diag);

FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name,
                              boost::system::error_code& ec);

/// Throws fwd::error with the detailed message.
FWD_DECL position read_position(const std::filesystem::path& mount, std::string_view db_name);

/// Reads `<mount>/.lag` (see parse_lag). A missing file is not_litefs.
FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount, boost::system::error_code& ec, diagnostics& diag);

FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount,
                                          boost::system::error_code& ec);

/// Throws fwd::error with the detailed message.
FWD_DECL std::chrono::milliseconds read_lag(const std::filesystem::path& mount);

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
FWD_DECL role read_role(const std::filesystem::path& mount, boost::system::error_code& ec, diagnostics& diag);

FWD_DECL role read_role(const std::filesystem::path& mount, boost::system::error_code& ec);

/// Throws fwd::error on I/O failures other than ENOENT and on malformed files.
FWD_DECL role read_role(const std::filesystem::path& mount);

/**
 * The local role for code that must not throw (handlers, timers, hooks): any failure to
 * read the mount (ENOTCONN or ECONNABORTED once LiteFS stopped under the service, EIO, a
 * malformed file) is `role_kind::unknown`, its reason saying what failed. Writes wait or
 * fail with a retryable error while the role is unknown; nothing crashes.
 */
FWD_DECL role current_role(const std::filesystem::path& mount) noexcept;

}  // namespace fwd::litefs

#if !defined(FWD_SEPARATE_COMPILATION)
#include <fwd/litefs/impl/mount.ipp>
#endif
