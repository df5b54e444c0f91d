#pragma once

// The database-path check: a database must be on a LiteFS FUSE mount, never in LiteFS's
// data directory (where nothing replicates: every node silently gets its own database).

#include <fwd/detail/config.hpp>
#include <fwd/litefs/files.hpp>
#include <fwd/litefs/types.hpp>

namespace fwd::litefs {

// ---------------------------------------------------------------------------------------
// The database-path check
// ---------------------------------------------------------------------------------------

/**
 * Checks that `db` is a database path on a LiteFS FUSE mount, in this order:
 *  1. empty path, a NUL byte, or a path naming no file ("/", "dir/", ".", "..") is bad_argument;
 *  2. a path inside LiteFS's data directory (an ancestor holding `dbs/`) is
 *     misconfigured_mount: nothing written there replicates;
 *  3. the database's directory must be a FUSE mount (`statfs().f_type == 0x65735546`),
 *     unless `options.require_fuse` is false: otherwise not_litefs;
 *  4. that directory must hold `.lag`: otherwise not_litefs.
 * Relative paths are taken from the current directory. Other I/O failures keep their
 * system error code. Returns the LiteFS mount directory (the database's directory),
 * empty on failure.
 */
FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                 const path_check_options& options,
                                                 boost::system::error_code& ec,
                                                 diagnostics& diag);

FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                 const path_check_options& options,
                                                 boost::system::error_code& ec);

/// Throws fwd::error with the detailed message when the check fails.
FWD_DECL std::filesystem::path check_database_path(const std::filesystem::path& db,
                                                 const path_check_options& options = {});

}  // namespace fwd::litefs

#if !defined(FWD_SEPARATE_COMPILATION)
#include <fwd/litefs/impl/path_check.ipp>
#endif
