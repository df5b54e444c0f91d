#pragma once

// Asking every member of a fwd cluster for its status (fwd.status): the members resolved
// from text (addresses, or DNS names and all their A/AAAA records), each asked twice on
// one authenticated connection, the second call timed (the first one pays for connecting).

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <fmt/format.h>
#include <fwd/error.hpp>
#include <fwd/node_options.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/server_options.hpp>
#include <fwd/status.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace fwdctl {

/// What one member answered, or why it did not.
struct member_reply {
  enum class outcome { ok, unresolvable, unreachable, unauthenticated, failed };
  std::string target;   ///< as given: "app.internal:7070" or "10.0.0.5:7070"
  std::string address;  ///< "ip:port" ("" when the name did not resolve)
  boost::asio::ip::tcp::endpoint endpoint;
  outcome result = outcome::failed;
  std::string error;  ///< why not ok
  fwd::status_report report;
  std::chrono::microseconds rtt{0};
  std::int64_t local_unix_ms = 0;  ///< this machine's clock halfway through the timed call
  bool ok() const noexcept { return result == outcome::ok; }
};

inline const char* to_string(member_reply::outcome o) noexcept {
  switch (o) {
    case member_reply::outcome::ok: return "ok";
    case member_reply::outcome::unresolvable: return "unresolvable";
    case member_reply::outcome::unreachable: return "unreachable";
    case member_reply::outcome::unauthenticated: return "unauthenticated";
    case member_reply::outcome::failed: return "failed";
  }
  return "failed";
}

struct probe_options {
  std::string secret;
  std::chrono::milliseconds timeout{2000};
};

/// The addresses the members text names, in order; a name that does not resolve gives
/// one entry with an empty address and the resolver's error.
inline std::vector<member_reply> resolve_members(const fwd::membership_options& members) {
  std::vector<member_reply> out;
  for (const auto& m : members.static_members) {
    member_reply r;
    r.endpoint = m.endpoint;
    r.address = fwd::rpc::detail::endpoint_string(m.endpoint);
    r.target = r.address;
    out.push_back(std::move(r));
  }
  boost::asio::io_context io;
  boost::asio::ip::tcp::resolver resolver(io);
  for (const auto& source : members.dns) {
    const std::string target = fmt::format("{}:{}", source.name, source.port);
    boost::system::error_code ec;
    const auto results = resolver.resolve(source.name, std::to_string(source.port), ec);
    if (ec || results.empty()) {
      member_reply r;
      r.target = target;
      r.result = member_reply::outcome::unresolvable;
      r.error = fmt::format("{} does not resolve: {}", source.name,
                            ec ? ec.message() : std::string("no address"));
      out.push_back(std::move(r));
      continue;
    }
    std::vector<boost::asio::ip::tcp::endpoint> seen;
    for (const auto& entry : results) {
      const auto endpoint = entry.endpoint();
      bool known = false;
      for (const auto& s : seen) known = known || s == endpoint;
      if (known) continue;
      seen.push_back(endpoint);
      member_reply r;
      r.target = target;
      r.endpoint = endpoint;
      r.address = fwd::rpc::detail::endpoint_string(endpoint);
      out.push_back(std::move(r));
    }
  }
  return out;
}

/// Asks every resolved member for its status, all at once; fills each reply.
inline void ask_members(std::vector<member_reply>& replies, const probe_options& options) {
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  fwd::rpc::client_options client_options;
  client_options.secret = options.secret;
  client_options.connect_timeout = options.timeout;
  client_options.default_timeout = options.timeout;
  fwd::rpc::client client(io.get_executor(), client_options);
  std::thread runner([&io] { io.run(); });

  std::vector<std::thread> askers;
  for (auto& reply : replies) {
    if (reply.result == member_reply::outcome::unresolvable) continue;
    askers.emplace_back([&reply, &client, &options] {
      auto ask = [&](fwd::status_report& out) {
        fwd::diagnostics diag;
        fwd::rpc::call_options o;
        o.deadline = std::chrono::steady_clock::now() + options.timeout;
        o.diagnostics = &diag;
        try {
          out = client.call(reply.endpoint, o, fwd::status_procedure);
          return true;
        } catch (const fwd::error& e) {
          const auto code = e.code();
          const bool auth = std::string_view(code.category().name()) == fwd::fwd_category().name() &&
                            code.value() == static_cast<int>(fwd::errc::unauthenticated);
          reply.result = auth ? member_reply::outcome::unauthenticated
                              : member_reply::outcome::unreachable;
          reply.error = diag.message().empty() ? e.what() : fmt::format("{}: {}", code.message(), diag.message());
          return false;
        } catch (const std::exception& e) {
          reply.result = member_reply::outcome::failed;
          reply.error = e.what();
          return false;
        }
      };
      fwd::status_report first;
      if (!ask(first)) return;
      const auto start = std::chrono::steady_clock::now();
      const auto start_unix = fwd::unix_now_ms();
      if (!ask(reply.report)) return;
      const auto end = std::chrono::steady_clock::now();
      reply.rtt = std::chrono::duration_cast<std::chrono::microseconds>(end - start);
      reply.local_unix_ms = start_unix + std::chrono::duration_cast<std::chrono::milliseconds>(end - start).count() / 2;
      reply.result = member_reply::outcome::ok;
    });
  }
  for (auto& t : askers) t.join();
  client.close();
  work.reset();
  io.stop();
  runner.join();
}

/// What the members say together: the primary as the majority sees it, who disagrees.
struct cluster_view {
  std::string primary;                 ///< the LiteFS hostname most members name ("" none)
  std::vector<std::string> claimants;  ///< members whose role is primary (their hostnames)
  bool agree = true;                   ///< every member that answered names `primary`
  std::optional<std::uint64_t> primary_txid;
};

inline cluster_view summarise(const std::vector<member_reply>& replies) {
  cluster_view view;
  std::vector<std::pair<std::string, int>> votes;
  for (const auto& r : replies) {
    if (!r.ok()) continue;
    bool counted = false;
    for (auto& [name, n] : votes) {
      if (name == r.report.primary_hostname) {
        ++n;
        counted = true;
      }
    }
    if (!counted) votes.emplace_back(r.report.primary_hostname, 1);
    if (r.report.role == "primary") {
      view.claimants.push_back(r.report.litefs_hostname);
      if (!view.primary_txid || r.report.txid > *view.primary_txid) view.primary_txid = r.report.txid;
    }
  }
  int best = 0;
  for (const auto& [name, n] : votes) {
    if (n > best || (n == best && view.primary.empty())) {
      best = n;
      view.primary = name;
    }
  }
  view.agree = votes.size() <= 1 && view.claimants.size() <= 1 &&
               (view.claimants.empty() || view.claimants.front() == view.primary);
  return view;
}

}  // namespace fwdctl
