#pragma once

// fwdctl doctor: the checks a node makes at start, and those only a view of the whole
// cluster allows. Each failed check says what to do.

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <fwd/error.hpp>
#include <fwd/litefs/path_check.hpp>
#include <fwd/node_options.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "cluster_probe.hpp"

namespace fwdctl {

/// One check: passed, or failed with what to do.
struct check {
  std::string name;
  bool ok = false;
  std::string detail;  ///< what was found
  std::string advice;  ///< what to do (failures)
};

/// The cluster secret as fwdctl finds it: --secret-file, FWD_SECRET_FILE or FWD_SECRET.
struct loaded_secret {
  std::string secret;
  std::string source;  ///< "file F" or "FWD_SECRET"
  std::string error;   ///< empty: usable
  std::string advice;
};

inline loaded_secret load_secret(const std::optional<std::string>& secret_file) {
  loaded_secret out;
  std::optional<std::string> file = secret_file;
  if (!file) {
    if (const char* f = std::getenv("FWD_SECRET_FILE"); f != nullptr && *f != '\0') file = f;
  }
  const std::string make_one = fmt::format(
      "write at least {} random bytes to a file readable by the service, the same on every node: "
      "openssl rand -hex 32 > /etc/fwd/secret",
      fwd::node_options::min_secret_size);
  if (file) {
    out.source = fmt::format("file {}", *file);
    std::ifstream in(*file, std::ios::binary);
    if (!in) {
      out.error = fmt::format("cannot read the secret file {}: {}", *file, std::strerror(errno));
      out.advice = fmt::format("check the path and its permissions, or {}", make_one);
      return out;
    }
    out.secret.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    while (!out.secret.empty() && (out.secret.back() == '\n' || out.secret.back() == '\r'))
      out.secret.pop_back();
  } else if (const char* s = std::getenv("FWD_SECRET"); s != nullptr && *s != '\0') {
    out.source = "FWD_SECRET";
    out.secret = s;
  } else {
    out.error = "no secret given: neither --secret-file nor FWD_SECRET_FILE nor FWD_SECRET";
    out.advice = "pass the cluster's secret file with --secret-file";
    return out;
  }
  if (out.secret.size() < fwd::node_options::min_secret_size) {
    out.error = fmt::format("the secret from {} is {} bytes, fewer than {}", out.source,
                            out.secret.size(), fwd::node_options::min_secret_size);
    out.advice = make_one;
  }
  return out;
}

/// GET `target` on `where` within `timeout`: status (0 when it could not be asked) and body.
inline std::pair<int, std::string> http_get(const boost::asio::ip::tcp::endpoint& where,
                                            const std::string& target, std::chrono::milliseconds timeout,
                                            std::string& error) {
  namespace http = boost::beast::http;
  boost::asio::io_context io;
  boost::beast::tcp_stream stream(io);
  http::request<http::empty_body> request{http::verb::get, target, 11};
  request.set(http::field::host, where.address().to_string());
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> response;
  boost::system::error_code failure;
  stream.expires_after(timeout);
  stream.async_connect(where, [&](boost::system::error_code ec) {
    if (ec) {
      failure = ec;
      return;
    }
    http::async_write(stream, request, [&](boost::system::error_code ec, std::size_t) {
      if (ec) {
        failure = ec;
        return;
      }
      http::async_read(stream, buffer, response, [&](boost::system::error_code ec, std::size_t) { failure = ec; });
    });
  });
  io.run();
  if (failure) {
    error = failure.message();
    return {0, {}};
  }
  return {static_cast<int>(response.result_int()), response.body()};
}

struct doctor_options {
  std::filesystem::path database;
  bool require_fuse = true;
  std::optional<std::string> secret_file;
  std::optional<fwd::membership_options> members;
  std::string litefs_http = "127.0.0.1:20202";
  std::chrono::milliseconds timeout{2000};
  std::chrono::milliseconds max_skew{500};
};

// A JSON string field's value in a small, flat LiteFS reply ("" when absent).
inline std::string json_field(const std::string& body, const std::string& name) {
  const auto key = body.find("\"" + name + "\"");
  if (key == std::string::npos) return {};
  auto colon = body.find(':', key);
  if (colon == std::string::npos) return {};
  auto start = body.find_first_not_of(" \t\n", colon + 1);
  if (start == std::string::npos) return {};
  if (body[start] == '"') {
    const auto end = body.find('"', start + 1);
    return end == std::string::npos ? std::string{} : body.substr(start + 1, end - start - 1);
  }
  const auto end = body.find_first_of(",}", start);
  return body.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

inline std::vector<check> run_doctor(const doctor_options& o) {
  std::vector<check> checks;

  {  // The database path, as a node checks it at start.
    check c{"database path", false, {}, {}};
    boost::system::error_code ec;
    fwd::diagnostics diag;
    fwd::litefs::path_check_options options;
    options.require_fuse = o.require_fuse;
    const auto mount = fwd::litefs::check_database_path(o.database, options, ec, diag);
    if (!ec) {
      c.ok = true;
      c.detail = fmt::format("{} is in the LiteFS mount {}", o.database.string(), mount.string());
    } else {
      c.detail = diag.message().empty() ? ec.message() : diag.message();
      if (ec == fwd::errc::misconfigured_mount) {
        c.advice = "open the database through LiteFS's FUSE mount (fuse.dir in litefs.yml, e.g. "
                   "/litefs/app.db), never in its data directory (data.dir): what is written "
                   "there is not replicated, each node would have its own database";
      } else if (ec == fwd::errc::not_litefs) {
        c.advice = "start LiteFS first and give the path of the database in its mount (fuse.dir "
                   "in litefs.yml); a path on another file system is not replicated";
      } else {
        c.advice = "give the database's absolute path in the LiteFS mount, e.g. /litefs/app.db";
      }
    }
    checks.push_back(std::move(c));
  }

  std::string litefs_primary;  // what LiteFS's /info names as primary here
  bool litefs_is_primary = false;
  {  // LiteFS's HTTP API.
    check c{"LiteFS HTTP API", false, {}, {}};
    const auto where = fwd::parse_endpoint(o.litefs_http, true);
    if (!where) {
      c.detail = fmt::format("\"{}\" is not an address:port", o.litefs_http);
      c.advice = "pass LiteFS's http.addr with --litefs-http, e.g. 127.0.0.1:20202";
    } else {
      std::string error;
      const auto [status, body] = http_get(*where, "/info", o.timeout, error);
      if (status == 200) {
        c.ok = true;
        litefs_is_primary = json_field(body, "isPrimary") == "true";
        litefs_primary = json_field(body, "hostname");
        c.detail = fmt::format("{} answers GET /info: this node is {}{}", o.litefs_http,
                               litefs_is_primary ? "primary" : "a replica",
                               litefs_is_primary || litefs_primary.empty()
                                   ? std::string()
                                   : fmt::format(", its primary is {}", litefs_primary));
      } else {
        c.detail = status == 0 ? fmt::format("{} does not answer: {}", o.litefs_http, error)
                               : fmt::format("{} answered GET /info with status {}", o.litefs_http, status);
        c.advice = "is LiteFS running on this machine? Pass its http.addr (litefs.yml) with "
                   "--litefs-http or FWD_LITEFS_HTTP; a node follows LiteFS through it";
      }
    }
    checks.push_back(std::move(c));
  }

  const loaded_secret secret = load_secret(o.secret_file);
  {
    check c{"secret", secret.error.empty(), {}, secret.advice};
    c.detail = secret.error.empty() ? fmt::format("{} holds {} bytes", secret.source, secret.secret.size())
                                    : secret.error;
    checks.push_back(std::move(c));
  }

  if (!o.members) return checks;
  auto replies = resolve_members(*o.members);
  if (secret.error.empty()) ask_members(replies, {secret.secret, o.timeout});
  std::vector<const member_reply*> answered;
  for (const auto& r : replies) {
    const std::string who = r.address.empty() ? r.target : r.address;
    check c{fmt::format("member {}", who), false, {}, {}};
    switch (r.result) {
      case member_reply::outcome::ok:
        c.ok = true;
        c.detail = fmt::format("resolves, answers and authenticates: {} ({}), {}, in {}",
                               r.report.node_name, r.report.litefs_hostname, r.report.role,
                               fmt::format("{:.2f}ms", static_cast<double>(r.rtt.count()) / 1000.0));
        answered.push_back(&r);
        break;
      case member_reply::outcome::unresolvable:
        c.detail = r.error;
        c.advice = "check the name (Fly.io: <app>.internal, AAAA records) and the DNS server "
                   "this machine uses (/etc/resolv.conf)";
        break;
      case member_reply::outcome::unauthenticated:
        c.detail = fmt::format("answers but refuses the secret: {}", r.error);
        c.advice = "give fwdctl and every node the same secret (FWD_SECRET / FWD_SECRET_FILE)";
        break;
      default:
        c.detail = secret.error.empty() ? fmt::format("does not answer: {}", r.error)
                                        : "not asked: no usable secret";
        c.advice = secret.error.empty()
                       ? "is the service running there, listening on that address (FWD_LISTEN) "
                         "and port, with no firewall between?"
                       : "fix the secret first";
    }
    checks.push_back(std::move(c));
  }
  if (answered.empty()) return checks;

  {  // Who is primary, and whether LiteFS's lease hostnames are the ones fwd announces.
    check c{"primary", false, {}, {}};
    const auto view = summarise(replies);
    std::vector<std::string> hostnames;
    for (const auto* r : answered) hostnames.push_back(r->report.litefs_hostname);
    if (view.claimants.size() == 1 && view.agree) {
      c.ok = true;
      c.detail = fmt::format("{} is primary and every member that answered agrees", view.primary);
    } else if (view.claimants.empty()) {
      c.detail = view.primary.empty()
                     ? std::string("no member is primary and none names one")
                     : fmt::format("members name {} as primary but no member that answered is it",
                                   view.primary);
      c.advice = "check LiteFS's lease (lease.candidate, consul) and that the primary's node "
                 "runs the service and is in --members";
    } else {
      std::string detail;
      for (const auto* r : answered)
        detail += fmt::format("{}{} says {}", detail.empty() ? "" : "; ", r->report.litefs_hostname,
                              r->report.primary_hostname.empty() ? "(none)" : r->report.primary_hostname);
      c.detail = fmt::format("members disagree: {}", detail);
      c.advice = "a failover may be under way: run again; if it lasts, check each node's LiteFS "
                 "(GET /info) and lease configuration";
    }
    checks.push_back(std::move(c));

    check h{"LiteFS hostname", true, {}, {}};
    std::vector<std::string> unknown;
    auto known = [&](const std::string& name) {
      return name.empty() || std::find(hostnames.begin(), hostnames.end(), name) != hostnames.end();
    };
    for (const auto* r : answered) {
      if (!known(r->report.primary_hostname))
        unknown.push_back(fmt::format("{} reads \"{}\" in .primary", r->report.litefs_hostname,
                                      r->report.primary_hostname));
    }
    if (!known(litefs_primary)) unknown.push_back(fmt::format("this machine's LiteFS names \"{}\"", litefs_primary));
    if (unknown.empty()) {
      h.detail = "the primary LiteFS names is a member with that fwd LiteFS hostname";
    } else {
      h.ok = false;
      std::string joined;
      for (const auto& u : unknown) joined += (joined.empty() ? "" : "; ") + u;
      h.detail = fmt::format("{}, but no member announces that LiteFS hostname", joined);
      h.advice = "give each node's fwd the LiteFS lease hostname (lease.hostname / "
                 "lease.advertise-url in litefs.yml; node_options::litefs_hostname, by default the "
                 "OS hostname), or discovery cannot match .primary to a member";
    }
    checks.push_back(std::move(h));
  }

  {  // Clock skew: each member's clock against this machine's, halfway through the call.
    check c{"clock skew", true, {}, {}};
    std::int64_t lowest = 0, highest = 0;
    std::string lowest_name, highest_name;
    bool first = true;
    for (const auto* r : answered) {
      const std::int64_t offset = r->report.unix_ms - r->local_unix_ms;
      if (first || offset < lowest) {
        lowest = offset;
        lowest_name = r->report.litefs_hostname;
      }
      if (first || offset > highest) {
        highest = offset;
        highest_name = r->report.litefs_hostname;
      }
      first = false;
    }
    const std::int64_t skew = highest - lowest;
    c.detail = skew == 0 ? std::string("the members' clocks agree to the millisecond")
                         : fmt::format("{} ms between the members' clocks ({} ahead of {})", skew,
                                       highest_name, lowest_name);
    c.detail += fmt::format("; this machine's differs from theirs by {} to {} ms", lowest, highest);
    if (skew > o.max_skew.count()) {
      c.ok = false;
      c.advice = fmt::format("more than {} ms: run time synchronisation (chrony, systemd-timesyncd) on "
                             "every machine; logs, TTLs and lease timing rely on clocks that agree",
                             o.max_skew.count());
    }
    checks.push_back(std::move(c));
  }
  return checks;
}

/// "ok" / "FAIL" lines, the advice under each failure, and a summary.
inline std::string doctor_report(const std::vector<check>& checks) {
  std::size_t width = 0;
  for (const auto& c : checks) width = std::max(width, c.name.size());
  std::string out;
  std::size_t failed = 0;
  for (const auto& c : checks) {
    out += fmt::format("{:<4}  {:<{}}  {}\n", c.ok ? "ok" : "FAIL", c.name, width, c.detail);
    if (!c.ok) {
      ++failed;
      out += fmt::format("      {:<{}}  what to do: {}\n", "", width, c.advice);
    }
  }
  out += failed == 0 ? fmt::format("\nall {} checks passed\n", checks.size())
                     : fmt::format("\n{} of {} checks failed\n", failed, checks.size());
  return out;
}

}  // namespace fwdctl
