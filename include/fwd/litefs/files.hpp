#pragma once

// The exact bytes of LiteFS's control files (<db>-pos, .lag, .primary, /proc/mounts):
// formatting and parsing, with errors that show the offending bytes and say what to do.
//
// Every function that can fail comes in Asio's two forms:
//   f(args..., boost::system::error_code& ec[, fwd::diagnostics& diag])
//       never throws; sets `ec`, and `diag` (when given) to the detailed message
//   f(args...)
//       throws fwd::error, whose what() and get_diagnostics() carry the detailed message

#include <fwd/detail/config.hpp>
#include <fwd/litefs/types.hpp>

#include <optional>
#include <vector>

namespace fwd::litefs {

// ---------------------------------------------------------------------------------------
// Pure formatting and parsing over bytes
// ---------------------------------------------------------------------------------------

/// The exact bytes LiteFS writes in `<db>-pos`: `"%016x/%016x\n"`.
FWD_DECL std::string format_position(position p);

/// The exact bytes LiteFS writes in `.lag`: Go's `"%+010d\n"`, where the width 10
/// counts the sign: `+000000000\n` (11 bytes) for 0, `+2147483647\n` for never synced.
FWD_DECL std::string format_lag(std::chrono::milliseconds lag);

/**
 * Parses the contents of a `<db>-pos` file: exactly `"%016x/%016x\n"` (34 bytes,
 * lowercase hex: TXID, then the post-apply checksum). Anything else is bad_litefs_file
 * with a message naming `source` and the offending bytes; never a wrong number.
 */
FWD_DECL position parse_position(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                               std::string_view source = "<db>-pos");

FWD_DECL position parse_position(std::string_view bytes, boost::system::error_code& ec,
                               std::string_view source = "<db>-pos");

/// Throws fwd::error (bad_litefs_file) with the detailed message.
FWD_DECL position parse_position(std::string_view bytes, std::string_view source = "<db>-pos");

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
FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                                           std::string_view source = ".lag");

FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec,
                                           std::string_view source = ".lag");

/// Throws fwd::error (bad_litefs_file) with the detailed message.
FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes,
                                           std::string_view source = ".lag");

/**
 * Parses the contents of `.primary`: the primary's LiteFS lease hostname and a newline
 * (not a URL). Surrounding whitespace is trimmed; an empty result, a control byte, NUL
 * or a space inside, or more than max_file_size bytes is bad_litefs_file.
 */
FWD_DECL std::string parse_primary(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                                 std::string_view source = ".primary");

FWD_DECL std::string parse_primary(std::string_view bytes, boost::system::error_code& ec,
                                 std::string_view source = ".primary");

/// Throws fwd::error (bad_litefs_file) with the detailed message.
FWD_DECL std::string parse_primary(std::string_view bytes, std::string_view source = ".primary");

/// Parses a mount table in the format of /proc/self/mounts (`source target type options
/// freq passno`, octal escapes decoded). Lines with fewer than 3 fields are skipped.
FWD_DECL std::vector<mount_entry> parse_mounts(std::string_view text);

/// True for a LiteFS FUSE mount: source `litefs`, type `fuse` (or `fuse.litefs`).
FWD_DECL bool is_litefs_mount(const mount_entry& e) noexcept;

/// The first LiteFS FUSE mount point in a mount table's text, if any.
FWD_DECL std::optional<std::filesystem::path> find_litefs_mount(std::string_view mounts_text);

}  // namespace fwd::litefs

#if !defined(FWD_SEPARATE_COMPILATION)
#include <fwd/litefs/impl/files.ipp>
#endif
