#pragma once

// One line of LiteFS's `GET /events` stream, as litefs::monitor reads it. LiteFS v0.5.14
// writes one JSON object per line (store.go: Event{type, db, data}):
//
//   {"type":"init","data":{"isPrimary":true}}
//   {"type":"primaryChange","data":{"isPrimary":false,"hostname":"node1"}}
//   {"type":"tx","db":"app.db","data":{"txID":"0000000000000003",
//     "postApplyChecksum":"a7dd8f28ea1b904d","pageSize":4096,"commit":2,"timestamp":"..."}}
//
// A tx event is sent after LiteFS has set the database's position (the one `<db>-pos`
// shows), both on the primary (at commit) and on a replica (once the transaction is
// applied): its TXID and checksum are the position. Internal.

#include <cstddef>
#include <cstdint>
#include <fwd/litefs/types.hpp>
#include <optional>
#include <string_view>

namespace fwd::litefs::detail {

enum class event_kind {
  tx,           ///< a transaction on the monitored database: `position` holds it
  tx_other_db,  ///< a transaction on another database of the mount
  other,        ///< anything else (init, primaryChange, unknown or malformed)
};

struct event_line {
  event_kind kind = event_kind::other;
  position pos;
};

// The 16 lowercase hex digits after `"<key>":"` in `line`, followed by `"`.
inline std::optional<std::uint64_t> event_hex_field(std::string_view line, std::string_view key) {
  std::size_t at = 0;
  for (;;) {
    at = line.find(key, at);
    if (at == std::string_view::npos) return std::nullopt;
    // The key must be a whole JSON key: `"key":"`.
    if (at > 0 && line[at - 1] == '"' && line.substr(at + key.size(), 3) == "\":\"") break;
    at += key.size();
  }
  const std::string_view digits = line.substr(at + key.size() + 3);
  if (digits.size() < 17 || digits[16] != '"') return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 16; ++i) {
    const char c = digits[i];
    unsigned d = 0;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a' + 10);
    } else {
      return std::nullopt;
    }
    v = (v << 4) | d;
  }
  return v;
}

/// Classifies one event line (without its newline) for the database `db` (its file name in
/// the mount). Only a tx line of the exact form above yields a position; a tx line that
/// cannot be read (another form, an escaped name) is `other`, so that the caller reads the
/// mount instead.
inline event_line parse_event_line(std::string_view line, std::string_view db) {
  event_line out;
  constexpr std::string_view tx_prefix = R"({"type":"tx","db":")";
  if (line.substr(0, tx_prefix.size()) != tx_prefix) return out;
  const std::string_view rest = line.substr(tx_prefix.size());
  const std::size_t name_end = rest.find('"');
  if (name_end == std::string_view::npos) return out;
  const std::string_view name = rest.substr(0, name_end);
  if (name.find('\\') != std::string_view::npos) return out;  // escaped: not compared
  if (rest.substr(name_end, 10) != R"(","data":{)") return out;
  const std::string_view data = rest.substr(name_end + 10);
  if (name != db) {
    out.kind = event_kind::tx_other_db;
    return out;
  }
  const auto txid = event_hex_field(data, "txID");
  const auto checksum = event_hex_field(data, "postApplyChecksum");
  if (!txid || !checksum) return out;
  out.kind = event_kind::tx;
  out.pos = position{*txid, *checksum};
  return out;
}

}  // namespace fwd::litefs::detail
