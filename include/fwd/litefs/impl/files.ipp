#pragma once

// Definitions of <fwd/litefs/files.hpp>: included by that header in header-only mode, by
// <fwd/src.hpp> (one translation unit) with FWD_SEPARATE_COMPILATION.

#include <fmt/format.h>

#include <fwd/litefs/detail/io.hpp>
#include <fwd/litefs/files.hpp>

namespace fwd::litefs {

FWD_DECL std::string format_position(position p) {
  return fmt::format("{:016x}/{:016x}\n", p.txid, p.checksum);
}

FWD_DECL std::string format_lag(std::chrono::milliseconds lag) {
  return fmt::format("{:+010}\n", lag.count());
}

FWD_DECL position parse_position(std::string_view bytes, boost::system::error_code& ec,
                                 diagnostics& diag, std::string_view source) {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes \"%016x/%016x\\n\" (34 bytes, lowercase hex, e.g. "
      "\"00000000002df417/ce552e44f23fbbdd\\n\"): check that the path is on a LiteFS mount";
  if (bytes.empty()) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} is empty; {}", src, expected));
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
    detail::set_failure(
        ec, diag, errc::bad_litefs_file,
        fmt::format(
            "{} holds {}, not a position: it ends after {} bytes{}. {}", src, shown, bytes.size(),
            bytes.size() == position_size - 1 ? " (the final newline is missing)" : "", expected));
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

FWD_DECL position parse_position(std::string_view bytes, boost::system::error_code& ec,
                                 std::string_view source) {
  diagnostics ignored;
  return parse_position(bytes, ec, ignored, source);
}

FWD_DECL position parse_position(std::string_view bytes, std::string_view source) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_position(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec,
                                             diagnostics& diag, std::string_view source) {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes \"%+010d\\n\" (e.g. \"+000000000\\n\" on the primary, \"+2147483647\\n\" "
      "before the first sync): check that the path is a LiteFS mount";
  auto bad = [&](const std::string& problem) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} holds {}, not a lag: {}. {}", src,
                                    detail::escape_bytes(bytes), problem, expected));
    return std::chrono::milliseconds{0};
  };
  if (bytes.empty()) {
    detail::set_failure(ec, diag, errc::bad_litefs_file,
                        fmt::format("{} is empty; {}", src, expected));
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
  if (digits < 9) return bad(fmt::format("only {} digits, expected 9 or 10 (zero-padded)", digits));
  long long value = 0;
  for (std::size_t k = 1; k <= digits; ++k) value = value * 10 + (bytes[k] - '0');
  if (bytes[0] == '-') value = -value;
  if (value > 2147483647LL || value < -2147483648LL)
    return bad("the value is outside a 32-bit integer");
  return std::chrono::milliseconds{value};
}

FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, boost::system::error_code& ec,
                                             std::string_view source) {
  diagnostics ignored;
  return parse_lag(bytes, ec, ignored, source);
}

FWD_DECL std::chrono::milliseconds parse_lag(std::string_view bytes, std::string_view source) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_lag(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL std::string parse_primary(std::string_view bytes, boost::system::error_code& ec,
                                   diagnostics& diag, std::string_view source) {
  ec.clear();
  diag.clear();
  const std::string_view src = source;
  const std::string_view expected =
      "LiteFS writes the primary's lease hostname and a newline (e.g. \"e829424aee6108\\n\"): "
      "check lease.hostname in the primary's litefs.yml";
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
    detail::set_failure(
        ec, diag, errc::bad_litefs_file,
        fmt::format("{} holds {}: no hostname. {}", src, detail::escape_bytes(bytes), expected));
    return {};
  }
  for (std::size_t i = begin; i < end; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c <= 0x20 || c == 0x7f) {
      detail::set_failure(
          ec, diag, errc::bad_litefs_file,
          fmt::format("{} holds {}, not a hostname: byte {} is {}. {}", src,
                      detail::escape_bytes(bytes), i, detail::describe_byte(bytes[i]), expected));
      return {};
    }
  }
  return std::string(bytes.substr(begin, end - begin));
}

FWD_DECL std::string parse_primary(std::string_view bytes, boost::system::error_code& ec,
                                   std::string_view source) {
  diagnostics ignored;
  return parse_primary(bytes, ec, ignored, source);
}

FWD_DECL std::string parse_primary(std::string_view bytes, std::string_view source) {
  boost::system::error_code ec;
  diagnostics diag;
  auto result = parse_primary(bytes, ec, diag, source);
  fwd::detail::throw_on_error(ec, std::move(diag));
  return result;
}

FWD_DECL std::vector<mount_entry> parse_mounts(std::string_view text) {
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

FWD_DECL bool is_litefs_mount(const mount_entry& e) noexcept {
  return e.source == "litefs" && (e.type == "fuse" || e.type == "fuse.litefs");
}

FWD_DECL std::optional<std::filesystem::path> find_litefs_mount(std::string_view mounts_text) {
  for (const auto& e : parse_mounts(mounts_text)) {
    if (is_litefs_mount(e)) return e.mount_point;
  }
  return std::nullopt;
}
}  // namespace fwd::litefs
