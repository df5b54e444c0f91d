#pragma once

// LiteFS's `GET /events` as a test reads it, and the exact format of its lines, shared by
// the simulation's tests and the real-LiteFS tests (the simulation must match the real
// bytes). Observed on LiteFS v0.5.14 (http/server.go: a chunked application/json response,
// one json.Encoder line per event; store.go: Event{type, db, data}):
//
//   {"type":"init","data":{"isPrimary":true}}
//   {"type":"init","data":{"isPrimary":false,"hostname":"node1"}}
//   {"type":"primaryChange","data":{"isPrimary":false}}
//   {"type":"primaryChange","data":{"isPrimary":true}}
//   {"type":"tx","db":"app.db","data":{"txID":"0000000000000003",
//     "postApplyChecksum":"a7dd8f28ea1b904d","pageSize":4096,"commit":2,
//     "timestamp":"2026-12-02T12:31:30.757Z"}}
//
// `hostname` is omitted when empty (the primary, or no primary known). In a tx event the
// database name is at the top level (`db`), not in `data`; txID and postApplyChecksum are
// 16 lowercase hex digits, as in `<db>-pos`.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <regex>
#include <string>

namespace litefs_events {

inline const std::regex init_line(
    R"re(^\{"type":"init","data":\{"isPrimary":(true|false)(,"hostname":"[^"]+")?\}\}$)re");
inline const std::regex primary_change_line(
    R"re(^\{"type":"primaryChange","data":\{"isPrimary":(true|false)(,"hostname":"[^"]+")?\}\}$)re");
inline const std::regex tx_line(
    R"re(^\{"type":"tx","db":"([^"]+)","data":\{"txID":"([0-9a-f]{16})","postApplyChecksum":"([0-9a-f]{16})","pageSize":[0-9]+,"commit":[0-9]+,"timestamp":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,3})?Z"\}\}$)re");

/// Whether `line` is one of the three event forms above.
inline bool well_formed(const std::string& line) {
  return std::regex_match(line, init_line) || std::regex_match(line, primary_change_line) ||
         std::regex_match(line, tx_line);
}

/// The `<db>-pos` form ("%016x/%016x") of a tx line's position, or nullopt.
inline std::optional<std::string> tx_position(const std::string& line, const std::string& db) {
  std::smatch m;
  if (!std::regex_match(line, m, tx_line) || m[1] != db) return std::nullopt;
  return m[2].str() + "/" + m[3].str();
}

/// A subscriber of `GET /events` on 127.0.0.1:port: the response's head, then one event
/// line at a time (chunked transfer decoded, the newline removed).
class stream {
 public:
  explicit stream(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return;
    const std::string request = "GET /events HTTP/1.1\r\nHost: litefs\r\n\r\n";
    if (::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(request.size()))
      return;
    const auto until = std::chrono::steady_clock::now() + timeout;
    std::size_t end;
    while ((end = raw_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(until)) return;
    }
    head_ = raw_.substr(0, end + 4);
    raw_.erase(0, end + 4);
  }
  ~stream() {
    if (fd_ >= 0) ::close(fd_);
  }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  /// The status line and headers ("" when the request failed).
  const std::string& head() const { return head_; }
  bool ok() const { return head_.rfind("HTTP/1.1 200 ", 0) == 0; }

  /// The next event line, or nullopt if none came within `timeout` or the stream ended.
  std::optional<std::string> next(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto nl = body_.find('\n');
      if (nl != std::string::npos) {
        std::string line = body_.substr(0, nl);
        body_.erase(0, nl + 1);
        return line;
      }
      // Decode whole chunks from raw_ into body_.
      const auto crlf = raw_.find("\r\n");
      if (crlf != std::string::npos) {
        const std::size_t size = std::stoul(raw_.substr(0, crlf), nullptr, 16);
        if (size == 0) return std::nullopt;  // the last chunk: the stream ended
        if (raw_.size() >= crlf + 2 + size + 2) {
          body_ += raw_.substr(crlf + 2, size);
          raw_.erase(0, crlf + 2 + size + 2);
          continue;
        }
      }
      if (!fill(until)) return std::nullopt;
    }
  }

  /// The next line matching `re` (others are skipped), or nullopt.
  std::optional<std::string> next_matching(const std::regex& re, std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      auto line = next(left);
      if (!line) return std::nullopt;
      if (std::regex_match(*line, re)) return line;
    }
  }

 private:
  bool fill(std::chrono::steady_clock::time_point until) {
    if (fd_ < 0 || ended_) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      ended_ = true;
      return false;
    }
    raw_.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool ended_ = false;
  std::string head_;
  std::string raw_;
  std::string body_;
};

}  // namespace litefs_events
