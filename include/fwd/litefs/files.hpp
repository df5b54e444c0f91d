#pragma once

// The exact bytes of LiteFS's control files (<db>-pos, .lag, .primary, /proc/mounts):
// formatting and parsing, with errors that show the offending bytes and say what to do.
//
// Every function that can fail comes in Asio's two forms:
//   f(args..., boost::system::error_code& ec[, fwd::diagnostics& diag])
//       never throws; sets `ec`, and `diag` (when given) to the detailed message
//   f(args...)
//       throws fwd::error, whose what() and get_diagnostics() carry the detailed message

#include <fwd/litefs/detail/io.hpp>
#include <fwd/litefs/types.hpp>

#include <fmt/format.h>

#include <optional>
#include <vector>

namespace fwd::litefs {

// ---------------------------------------------------------------------------------------
// Pure formatting and parsing over bytes
// ---------------------------------------------------------------------------------------

/// The exact bytes LiteFS writes in `<db>-pos`: `"%016x/%016x\n"`.
inline std::string format_position(position p) {
  return fmt::format("{:016x}/{:016x}\n", p.txid, p.checksum);
}

/// The exact bytes LiteFS writes in `.lag`: Go's `"%+010d\n"`, where the width 10
/// counts the sign: `+000000000\n` (11 bytes) for 0, `+2147483647\n` for never synced.
inline std::string format_lag(std::chrono::milliseconds lag) {
  return fmt::format("{:+010}\n", lag.count());
}

/**
 * Parses the contents of a `<db>-pos` file: exactly `"%016x/%016x\n"` (34 bytes,
 * lowercase hex: TXID, then the post-apply checksum). Anything else is bad_litefs_file
 * with a message naming `source` and the offending bytes; never a wrong number.
 */
inline position parse_position(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                               std::string_view source = "<db>-pos") {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes \"%016x/%016x\\n\" (34 bytes, lowercase hex, e.g. "
      "\"00000000002df417/ce552e44f23fbbdd\\n\"): check that the path is on a LiteFS mount";
  if (bytes.empty()) {
    detail::set_failure(ec, diag, errc::bad_litefs_file, fmt::format("{} is empty; {}", src, expected));
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
      detail::set_failure(ec, diag, errc::bad_litefs_file,
                          fmt::format("{} holds {}, not a position: byte {} is {}, {}. {}", src,
                                      shown, i, detail::describe_byte(c), problem, expected));
      return {};
    }
  }
  if (bytes.size() < position_size) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
        fmt::format("{} holds {}, not a position: it ends after {} bytes{}. {}", src, shown,
                    bytes.size(),
                    bytes.size() == position_size - 1 ? " (the final newline is missing)" : "",
                    expected));
    return {};
  }
  if (bytes.size() > position_size) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} holds {}, not a position: {} unexpected bytes follow the "
                                    "newline. {}",
                                    src, shown, bytes.size() - position_size, expected));
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
  diagnostics ignored;
  return parse_position(bytes, ec, ignored, source);
}

/// Throws fwd::error (bad_litefs_file) with the detailed message.
inline position parse_position(std::string_view bytes, std::string_view source = "<db>-pos") {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_position(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
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
inline std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                                           std::string_view source = ".lag") {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes \"%+010d\\n\" (e.g. \"+000000000\\n\" on the primary, \"+2147483647\\n\" "
      "before the "
      "first sync): check that the path is a LiteFS mount";
  auto bad = [&](const std::string& problem) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} holds {}, not a lag: {}. {}", src,
                                    detail::escape_bytes(bytes), problem, expected));
    return std::chrono::milliseconds{0};
  };
  if (bytes.empty()) {
    detail::set_failure(ec, diag, errc::bad_litefs_file, fmt::format("{} is empty; {}", src, expected));
    return std::chrono::milliseconds{0};
  }
  if (bytes[0] != '+' && bytes[0] != '-')
    return bad(fmt::format("byte 0 is {}, expected '+' or '-'", detail::describe_byte(bytes[0])));
  std::size_t i = 1;
  while (i < bytes.size() && i <= 11 && detail::is_digit(bytes[i])) ++i;
  const std::size_t digits = i - 1;
  if (digits > 10) return bad("more than 10 digits");
  if (i == bytes.size()) {
    // Only the kernel's cut at LiteFS's advertised size (11 bytes) drops the newline.
    if (!(digits == 10 && bytes.size() == 11)) return bad("the final newline is missing");
  } else if (bytes[i] != '\n') {
    return bad(fmt::format("byte {} is {}, expected a digit or the final newline", i,
                           detail::describe_byte(bytes[i])));
  } else if (i + 1 != bytes.size()) {
    return bad(fmt::format("{} unexpected bytes follow the newline", bytes.size() - i - 1));
  }
  if (digits < 9)
    return bad(fmt::format("only {} digits, expected 9 or 10 (zero-padded)", digits));
  long long value = 0;
  for (std::size_t k = 1; k <= digits; ++k) value = value * 10 + (bytes[k] - '0');
  if (bytes[0] == '-') value = -value;
  if (value > 2147483647LL || value < -2147483648LL)
    return bad("the value is outside a 32-bit integer");
  return std::chrono::milliseconds{value};
}

inline std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec,
                                           std::string_view source = ".lag") {
  diagnostics ignored;
  return parse_lag(bytes, ec, ignored, source);
}

/// Throws fwd::error (bad_litefs_file) with the detailed message.
inline std::chrono::milliseconds parse_lag(std::string_view bytes,
                                           std::string_view source = ".lag") {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_lag(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

/**
 * Parses the contents of `.primary`: the primary's LiteFS lease hostname and a newline
 * (not a URL). Surrounding whitespace is trimmed; an empty result, a control byte, NUL
 * or a space inside, or more than max_file_size bytes is bad_litefs_file.
 */
inline std::string parse_primary(std::string_view bytes, boost::system::error_code& ec, diagnostics& diag,
                                 std::string_view source = ".primary") {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes the primary's lease hostname and a newline (e.g. \"e829424aee6108\\n\"): "
      "check "
      "lease.hostname in the primary's litefs.yml";
  if (bytes.size() > max_file_size) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} holds {}, more than {} bytes: not a hostname. {}", src,
                                    detail::escape_bytes(bytes), max_file_size, expected));
    return {};
  }
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  };
  std::size_t begin = 0, end = bytes.size();
  while (begin < end && is_space(bytes[begin])) ++begin;
  while (end > begin && is_space(bytes[end - 1])) --end;
  if (begin == end) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
        fmt::format("{} holds {}: no hostname. {}", src, detail::escape_bytes(bytes), expected));
    return {};
  }
  for (std::size_t i = begin; i < end; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c <= 0x20 || c == 0x7f) {
      detail::set_failure(ec, diag, errc::bad_litefs_file,
                          fmt::format("{} holds {}, not a hostname: byte {} is {}. {}", src,
                                      detail::escape_bytes(bytes), i,
                                      detail::describe_byte(bytes[i]), expected));
      return {};
    }
  }
  return std::string(bytes.substr(begin, end - begin));
}

inline std::string parse_primary(std::string_view bytes, boost::system::error_code& ec,
                                 std::string_view source = ".primary") {
  diagnostics ignored;
  return parse_primary(bytes, ec, ignored, source);
}

/// Throws fwd::error (bad_litefs_file) with the detailed message.
inline std::string parse_primary(std::string_view bytes, std::string_view source = ".primary") {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_primary(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
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

}  // namespace fwd::litefs
