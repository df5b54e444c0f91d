// fwdctl: looks at a running fwd cluster.
//
//   fwdctl status --members LIST [--secret-file F] [--json] [--timeout-ms N]
//   fwdctl doctor --database PATH [--members LIST] [--secret-file F] [--litefs-http ADDR]
//                 [--max-skew-ms N] [--no-require-fuse]
//   fwdctl watch  --members LIST [--secret-file F] [--interval-ms N]
//
// LIST is what FWD_MEMBERS holds: "app.internal:7070" (every A/AAAA address of the name)
// or "10.0.0.5:7070,[fdaa::3]:7070". The secret comes from --secret-file, else from
// FWD_SECRET_FILE or FWD_SECRET; --members defaults to FWD_MEMBERS and --litefs-http to
// FWD_LITEFS_HTTP (else 127.0.0.1:20202, LiteFS's default).
//
// Exit status: 0 when everything is well (status: every member answered and they agree
// on the primary; doctor: every check passed), 1 otherwise, 2 on a usage error.

#include <signal.h>
#include <poll.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fmt/format.h>
#include <fwd/node_options.hpp>
#include <fwd/version.hpp>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cluster_probe.hpp"
#include "doctor.hpp"
#include "output.hpp"

namespace {

struct arguments {
  std::string command;
  std::optional<std::string> members, secret_file, database, litefs_http;
  bool json = false;
  bool require_fuse = true;
  std::chrono::milliseconds timeout{2000};
  std::chrono::milliseconds interval{1000};
  std::chrono::milliseconds max_skew{500};
};

constexpr const char* usage =
    "usage:\n"
    "  fwdctl status --members LIST [--secret-file F] [--json] [--timeout-ms N]\n"
    "  fwdctl doctor --database PATH [--members LIST] [--secret-file F] [--litefs-http ADDR]\n"
    "                [--max-skew-ms N] [--no-require-fuse]\n"
    "  fwdctl watch  --members LIST [--secret-file F] [--interval-ms N]\n"
    "  fwdctl version\n"
    "LIST: \"app.internal:7070\" (DNS) or \"10.0.0.5:7070,[fdaa::3]:7070\"; default $FWD_MEMBERS.\n"
    "The secret: --secret-file, else $FWD_SECRET_FILE or $FWD_SECRET.\n";

[[noreturn]] void usage_error(const std::string& why) {
  fmt::print(stderr, "fwdctl: {}\n{}", why, usage);
  std::exit(2);
}

std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

std::chrono::milliseconds milliseconds_of(const std::string& option, const std::string& text) {
  try {
    std::size_t used = 0;
    const long long n = std::stoll(text, &used);
    if (used == text.size() && n > 0) return std::chrono::milliseconds(n);
  } catch (const std::exception&) {
  }
  usage_error(fmt::format("{} wants a positive number of milliseconds, not \"{}\"", option, text));
}

arguments parse(int argc, char** argv) {
  arguments a;
  if (argc < 2) usage_error("no command given");
  a.command = argv[1];
  if (a.command == "--help" || a.command == "-h" || a.command == "help") {
    fmt::print("{}", usage);
    std::exit(0);
  }
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", arg));
      return argv[++i];
    };
    if (arg == "--members") a.members = next();
    else if (arg == "--secret-file") a.secret_file = next();
    else if (arg == "--database") a.database = next();
    else if (arg == "--litefs-http") a.litefs_http = next();
    else if (arg == "--json") a.json = true;
    else if (arg == "--no-require-fuse") a.require_fuse = false;
    else if (arg == "--timeout-ms") a.timeout = milliseconds_of(arg, next());
    else if (arg == "--interval-ms") a.interval = milliseconds_of(arg, next());
    else if (arg == "--max-skew-ms") a.max_skew = milliseconds_of(arg, next());
    else if (arg == "-h" || arg == "--help") {
      fmt::print("{}", usage);
      std::exit(0);
    } else {
      usage_error(fmt::format("unknown option {}", arg));
    }
  }
  if (!a.members) a.members = env("FWD_MEMBERS");
  if (!a.litefs_http) a.litefs_http = env("FWD_LITEFS_HTTP");
  return a;
}

fwd::membership_options members_or_exit(const arguments& a) {
  if (!a.members) usage_error("give the members with --members (or FWD_MEMBERS)");
  boost::system::error_code ec;
  fwd::diagnostics diag;
  auto members = fwd::parse_members(*a.members, ec, diag);
  if (ec) usage_error(fmt::format("--members: {}", diag.message()));
  return members;
}

std::string secret_or_exit(const arguments& a) {
  const auto loaded = fwdctl::load_secret(a.secret_file);
  if (!loaded.error.empty()) {
    fmt::print(stderr, "fwdctl: {}\n  what to do: {}\n", loaded.error, loaded.advice);
    std::exit(1);
  }
  return loaded.secret;
}

int run_status(const arguments& a) {
  const auto members = members_or_exit(a);
  auto replies = fwdctl::resolve_members(members);
  fwdctl::ask_members(replies, {secret_or_exit(a), a.timeout});
  const auto view = fwdctl::summarise(replies);
  if (a.json) {
    fmt::print("{}\n", fwdctl::status_json(replies, view));
  } else {
    fmt::print("{}", fwdctl::status_table(replies, view));
  }
  bool all_ok = view.agree && view.claimants.size() == 1;
  for (const auto& r : replies) all_ok = all_ok && r.ok();
  return all_ok ? 0 : 1;
}

int run_doctor(const arguments& a) {
  if (!a.database) usage_error("doctor needs --database, the database's path in the LiteFS mount");
  fwdctl::doctor_options o;
  o.database = *a.database;
  o.require_fuse = a.require_fuse;
  o.secret_file = a.secret_file;
  o.timeout = a.timeout;
  o.max_skew = a.max_skew;
  if (a.members) o.members = members_or_exit(a);
  o.litefs_http = a.litefs_http.value_or("127.0.0.1:20202");
  const auto checks = fwdctl::run_doctor(o);
  fmt::print("{}", fwdctl::doctor_report(checks));
  for (const auto& c : checks)
    if (!c.ok) return 1;
  return 0;
}

volatile std::sig_atomic_t stop_requested = 0;
void on_signal(int) { stop_requested = 1; }

int run_watch(const arguments& a) {
  const auto members = members_or_exit(a);
  const std::string secret = secret_or_exit(a);
  ::signal(SIGINT, on_signal);
  ::signal(SIGTERM, on_signal);
  fwdctl::watch_state state;
  fmt::print("{} watching {} (every {} ms; Ctrl-C stops)\n", fwdctl::utc_now(), *a.members,
             a.interval.count());
  std::fflush(stdout);
  while (stop_requested == 0) {
    auto replies = fwdctl::resolve_members(members);
    fwdctl::ask_members(replies, {secret, a.timeout});
    for (const auto& line : state.update(replies)) fmt::print("{} {}\n", fwdctl::utc_now(), line);
    std::fflush(stdout);
    // Until the next poll, or a signal (poll returns early with EINTR).
    const auto until = std::chrono::steady_clock::now() + a.interval;
    while (stop_requested == 0 && std::chrono::steady_clock::now() < until) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      ::poll(nullptr, 0, static_cast<int>(std::min<long long>(left.count() + 1, 100)));
    }
  }
  fmt::print("{} stopped\n", fwdctl::utc_now());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const arguments a = parse(argc, argv);
  try {
    if (a.command == "status") return run_status(a);
    if (a.command == "doctor") return run_doctor(a);
    if (a.command == "watch") return run_watch(a);
    if (a.command == "version") {
      fmt::print("fwdctl {}\n", FWD_VERSION_STRING);
      return 0;
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "fwdctl {}: {}\n", a.command, e.what());
    return 1;
  }
  usage_error(fmt::format("unknown command {}", a.command));
}
