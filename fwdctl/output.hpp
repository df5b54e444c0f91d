#pragma once

// How fwdctl shows what it found: the status table (with fmt), its JSON form, and the
// lines `watch` prints when something changes.

#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cluster_probe.hpp"

namespace fwdctl {

/// This machine's time, UTC, "2026-12-02T16:10:00.123Z".
inline std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03}Z", text, ms);
}

inline std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

inline std::string rtt_text(std::chrono::microseconds rtt) {
  return fmt::format("{:.2f}ms", static_cast<double>(rtt.count()) / 1000.0);
}

inline std::string lag_text(const member_reply& r, const cluster_view& view) {
  if (!view.primary_txid) return "?";
  if (r.report.txid >= *view.primary_txid) return "0";
  return std::to_string(*view.primary_txid - r.report.txid);
}

// A member disagrees when it names another primary than the majority, or claims the
// role while another is named.
inline bool disagrees(const member_reply& r, const cluster_view& view) {
  if (!r.ok()) return false;
  if (r.report.primary_hostname != view.primary) return true;
  return r.report.role == "primary" && r.report.litefs_hostname != view.primary;
}

/// One row per member, then what needs attention. "!" marks a member that disagrees on
/// the primary, "x" one that did not answer.
inline std::string status_table(const std::vector<member_reply>& replies, const cluster_view& view) {
  const std::vector<std::string> header = {"MEMBER", "NAME", "LITEFS HOST", "ROLE", "TXID",
                                           "LAG", "VERSION", "RTT", "PRIMARY"};
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> marks;
  for (const auto& r : replies) {
    const std::string member = r.address.empty() ? r.target : r.address;
    if (!r.ok()) {
      rows.push_back({member, "-", "-", std::string(to_string(r.result)), "-", "-", "-", "-", "-"});
      marks.push_back("x");
      continue;
    }
    const auto& s = r.report;
    rows.push_back({member, s.node_name, s.litefs_hostname, s.role, std::to_string(s.txid),
                    lag_text(r, view), s.version, rtt_text(r.rtt),
                    s.primary_hostname.empty() ? "(none)" : s.primary_hostname});
    marks.push_back(disagrees(r, view) ? "!" : " ");
  }
  std::vector<std::size_t> width(header.size());
  for (std::size_t c = 0; c < header.size(); ++c) {
    width[c] = header[c].size();
    for (const auto& row : rows) width[c] = std::max(width[c], row[c].size());
  }
  auto line = [&](const std::string& mark, const std::vector<std::string>& cells) {
    std::string out = mark + " ";
    for (std::size_t c = 0; c < cells.size(); ++c) {
      out += c + 1 == cells.size() ? cells[c] : fmt::format("{:<{}}  ", cells[c], width[c]);
    }
    return out + "\n";
  };
  std::string out = line(" ", header);
  for (std::size_t i = 0; i < rows.size(); ++i) out += line(marks[i], rows[i]);
  out += "\n";
  std::size_t answered = 0;
  for (const auto& r : replies) answered += r.ok() ? 1 : 0;
  if (!view.primary.empty()) {
    out += fmt::format("primary: {} (named by {} of {} members that answered)\n", view.primary,
                       [&] {
                         std::size_t n = 0;
                         for (const auto& r : replies) n += r.ok() && r.report.primary_hostname == view.primary;
                         return n;
                       }(),
                       answered);
  } else if (answered > 0) {
    out += "primary: none known: no member names a primary (LiteFS has no lease holder?)\n";
  }
  if (view.claimants.size() > 1) {
    std::string names;
    for (const auto& c : view.claimants) names += (names.empty() ? "" : ", ") + c;
    out += fmt::format("! more than one member says it is primary: {}\n", names);
  }
  for (const auto& r : replies) {
    if (disagrees(r, view)) {
      out += fmt::format("! {} ({}) disagrees: it says the primary is {}{}, the others say {}\n",
                         r.address, r.report.node_name,
                         r.report.primary_hostname.empty() ? "(none)" : r.report.primary_hostname,
                         r.report.role == "primary" ? " and that it is primary itself" : "",
                         view.primary.empty() ? "(none)" : view.primary);
    }
  }
  for (const auto& r : replies) {
    if (r.ok()) continue;
    out += fmt::format("x {} is {}: {}\n", r.address.empty() ? r.target : r.address,
                       to_string(r.result), r.error);
  }
  return out;
}

/// The same as JSON: {"primary", "agree", "members": [...]}.
inline std::string status_json(const std::vector<member_reply>& replies, const cluster_view& view) {
  std::string members;
  for (const auto& r : replies) {
    if (!members.empty()) members += ",";
    members += fmt::format("{{\"target\":{},\"address\":{},\"status\":{}", json_string(r.target),
                           json_string(r.address), json_string(to_string(r.result)));
    if (!r.ok()) {
      members += fmt::format(",\"error\":{}}}", json_string(r.error));
      continue;
    }
    const auto& s = r.report;
    std::string errors;
    for (const auto& e : s.last_errors) {
      if (!errors.empty()) errors += ",";
      errors += fmt::format("{{\"unix_ms\":{},\"what\":{}}}", e.unix_ms, json_string(e.what));
    }
    std::string listed;
    for (const auto& m : s.members) {
      if (!listed.empty()) listed += ",";
      listed += fmt::format("{{\"host\":{},\"address\":{}}}", json_string(m.host), json_string(m.address));
    }
    const std::string lag = lag_text(r, view);
    members += fmt::format(
        ",\"name\":{},\"litefs_hostname\":{},\"role\":{},\"role_reason\":{},\"txid\":{},"
        "\"checksum\":{},\"lag_txids\":{},\"litefs_lag_ms\":{},\"version\":{},\"rtt_ms\":{:.3f},"
        "\"primary_hostname\":{},\"primary_address\":{},\"disagrees\":{},\"mount_dead\":{},"
        "\"writer_queue\":{},\"calls_in_flight\":{},\"requests_in_flight\":{},\"connections\":{},"
        "\"clock_offset_ms\":{},\"members\":[{}],\"last_errors\":[{}]}}",
        json_string(s.node_name), json_string(s.litefs_hostname), json_string(s.role),
        json_string(s.role_reason), s.txid, s.checksum, lag == "?" ? std::string("null") : lag,
        s.lag_ms, json_string(s.version), static_cast<double>(r.rtt.count()) / 1000.0,
        json_string(s.primary_hostname), json_string(s.primary_address),
        disagrees(r, view) ? "true" : "false", s.mount_dead ? "true" : "false", s.writer_queue,
        s.calls_in_flight, s.requests_in_flight, s.connections, s.unix_ms - r.local_unix_ms, listed,
        errors);
  }
  return fmt::format("{{\"primary\":{},\"agree\":{},\"members\":[{}]}}", json_string(view.primary),
                     view.agree ? "true" : "false", members);
}

/// What `watch` remembers between polls, and the lines each change gives.
class watch_state {
 public:
  std::vector<std::string> update(const std::vector<member_reply>& replies) {
    std::vector<std::string> lines;
    const auto view = summarise(replies);
    std::size_t answered = 0;
    for (const auto& r : replies) answered += r.ok() ? 1 : 0;
    if (answered > 0 && (first_ || view.primary != primary_)) {
      if (first_) {
        lines.push_back(fmt::format("primary is {}", view.primary.empty() ? "(none)" : view.primary));
      } else {
        lines.push_back(fmt::format("primary changed: {} -> {}", primary_.empty() ? "(none)" : primary_,
                                    view.primary.empty() ? "(none)" : view.primary));
      }
      primary_ = view.primary;
    }
    std::map<std::string, std::string> reachability;
    std::set<std::string> listed;
    std::map<std::string, std::string> says;
    for (const auto& r : replies) {
      const std::string who = r.address.empty() ? r.target : r.address;
      reachability[who] = r.ok() ? "" : fmt::format("{}: {}", to_string(r.result), r.error);
      if (!r.ok()) continue;
      for (const auto& m : r.report.members) listed.insert(m.address);
      says[who] = r.report.primary_hostname;
    }
    for (const auto& [who, problem] : reachability) {
      const auto before = reachability_.find(who);
      const bool known = before != reachability_.end();
      const bool was_ok = known && before->second.empty();
      if (problem.empty()) {
        if (known && !was_ok) lines.push_back(fmt::format("member {} answers again", who));
      } else if (!known || was_ok) {
        lines.push_back(fmt::format("member {} does not answer: {}", who, problem));
      }
    }
    if (answered > 0) {
      if (!first_) {
        for (const auto& m : listed)
          if (!listed_.contains(m)) lines.push_back(fmt::format("member joined: {}", m));
        for (const auto& m : listed_)
          if (!listed.contains(m)) lines.push_back(fmt::format("member left: {}", m));
      }
      listed_ = listed;
    }
    for (const auto& [who, primary] : says) {
      const bool disagree = primary != view.primary;
      const auto before = disagreeing_.find(who);
      const bool was = before != disagreeing_.end() && before->second;
      if (disagree && !was) {
        lines.push_back(fmt::format("! {} says the primary is {}, the others say {}", who,
                                    primary.empty() ? "(none)" : primary,
                                    view.primary.empty() ? "(none)" : view.primary));
      } else if (!disagree && was) {
        lines.push_back(fmt::format("{} agrees again: the primary is {}", who, view.primary));
      }
      disagreeing_[who] = disagree;
    }
    reachability_ = std::move(reachability);
    first_ = false;
    return lines;
  }

 private:
  bool first_ = true;
  std::string primary_;
  std::map<std::string, std::string> reachability_;
  std::set<std::string> listed_;
  std::map<std::string, bool> disagreeing_;
};

}  // namespace fwdctl
