// fwd_node: one node of the demo service, over a (simulated) LiteFS mount.
//
//   fwd_node --name node-a --mount DIR --db app.db --port 7001 --members 7001,7002,7003
//            [--secret S] [--no-ryw] [--quiet] [--ttl-ms N] [--no-migrate]
//            [--litefs-real [--litefs-hostname H]] [--litefs-http PORT] [--litefs-poll-ms N]
//            [--metrics-listen ADDRESS:PORT]
//
// By default DIR is a mount of the LiteFS simulation (its VFS is installed, FUSE is not
// required). With --litefs-real, DIR is a real LiteFS FUSE mount: the simulation is not
// installed, the database path must be on FUSE, and the node announces H (default NAME)
// as its LiteFS lease hostname, the name replicas read in `.primary`. With --litefs-http
// the node follows LiteFS's /events on 127.0.0.1:PORT; --litefs-poll-ms sets how often it
// re-reads the mount meanwhile. With --metrics-listen it serves its fwd::metrics at
// `GET /metrics` (Prometheus' text format) on that address (port 0: any free port), prints
// "METRICS <port>" once listening and "SCRAPED <n>" after each scrape it answered.
//
// With FWD_NODE_TRACE set in its environment it also prints every probe, connection
// event, lookup miss and finished call (also with --quiet), for a failing test to show.
//
// It serves the demo procedures, migrates the schema at start, prints "READY <port>"
// once listening and "MIGRATED <version>" once the schema is here, and answers
// demo.control / demo.stats for the program driving it. SIGTERM stops it cleanly.

#include <sqlite3.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>
#include <fwd/metrics.hpp>
#include <fwd/migrate.hpp>
#include <fwd/node.hpp>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "demo_procedures.hpp"
#include "litefs_sim.hpp"
#include "metrics_server.hpp"

namespace {

std::atomic<std::int64_t> append_runs{0};
std::atomic<std::int64_t> calls_started{0};
std::atomic<std::int64_t> retries{0};
std::string node_name;
bool quiet = false;
std::mutex out_mutex;

void say(const std::string& text) {
  if (quiet) return;
  std::lock_guard lock(out_mutex);
  std::printf("  [%s] %s\n", node_name.c_str(), text.c_str());
  std::fflush(stdout);
}

std::vector<std::string> split(const std::string& text, char by) {
  std::vector<std::string> out;
  std::string part;
  for (char c : text) {
    if (c == by) {
      out.push_back(part);
      part.clear();
    } else {
      part += c;
    }
  }
  if (!part.empty()) out.push_back(part);
  return out;
}

fwd::sql_value as_sql_value(const std::string& text) {
  if (!text.empty() && text.find_first_not_of("-0123456789") == std::string::npos)
    return std::int64_t{std::stoll(text)};
  return text;
}

std::int64_t local_count(const std::filesystem::path& db, const std::string& writer,
                         std::int64_t seq) {
  try {
    fwd::sqlite::connection c(db.string(), SQLITE_OPEN_READONLY, std::chrono::milliseconds(1000));
    auto stmt = c.prepare("SELECT count(*) FROM events WHERE writer = ?1 AND seq = ?2");
    stmt.bind(1, writer).bind(2, seq);
    stmt.step();
    return stmt.column_int64(0);
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string mount, db_name = "app.db", secret = "demo-cluster-secret-of-32-bytes-or-more";
  std::vector<std::uint16_t> member_ports;
  std::uint16_t port = 0;
  bool ryw = true, run_migrations = true, litefs_real = false;
  std::string litefs_hostname;
  int ttl_ms = 2000;
  int litefs_http_port = 0, litefs_poll_ms = 0;
  std::optional<boost::asio::ip::tcp::endpoint> metrics_listen;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fwd_node: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--name")
      node_name = next();
    else if (arg == "--mount")
      mount = next();
    else if (arg == "--db")
      db_name = next();
    else if (arg == "--port")
      port = static_cast<std::uint16_t>(std::stoi(next()));
    else if (arg == "--members")
      for (const auto& p : split(next(), ','))
        member_ports.push_back(static_cast<std::uint16_t>(std::stoi(p)));
    else if (arg == "--secret")
      secret = next();
    else if (arg == "--no-ryw")
      ryw = false;
    else if (arg == "--quiet")
      quiet = true;
    else if (arg == "--ttl-ms")
      ttl_ms = std::stoi(next());
    else if (arg == "--no-migrate")
      run_migrations = false;
    else if (arg == "--litefs-real")
      litefs_real = true;
    else if (arg == "--litefs-hostname")
      litefs_hostname = next();
    else if (arg == "--litefs-http")
      litefs_http_port = std::stoi(next());
    else if (arg == "--litefs-poll-ms")
      litefs_poll_ms = std::stoi(next());
    else if (arg == "--metrics-listen") {
      const std::string where = next();
      const auto colon = where.rfind(':');
      boost::system::error_code ec;
      const auto address = boost::asio::ip::make_address(
          colon == std::string::npos ? std::string() : where.substr(0, colon), ec);
      if (colon == std::string::npos || ec) {
        std::fprintf(stderr, "fwd_node: --metrics-listen wants ADDRESS:PORT, not %s\n", where.c_str());
        return 2;
      }
      metrics_listen = boost::asio::ip::tcp::endpoint(
          address, static_cast<std::uint16_t>(std::stoi(where.substr(colon + 1))));
    }
    else {
      std::fprintf(stderr, "fwd_node: unknown option %s\n", arg.c_str());
      return 2;
    }
  }
  if (mount.empty() || node_name.empty()) {
    std::fprintf(
        stderr,
        "usage: fwd_node --name NAME --mount DIR [--db app.db] --port P --members P1,P2,...\n");
    return 2;
  }
  if (!litefs_real) fwd_sim::install_vfs();  // real LiteFS: SQLite's own VFS on the FUSE mount
  if (litefs_hostname.empty()) litefs_hostname = node_name;

  boost::asio::io_context io;
  const auto loopback = boost::asio::ip::make_address("127.0.0.1");
  std::vector<boost::asio::ip::tcp::endpoint> members;
  for (auto p : member_ports) members.emplace_back(loopback, p);

  auto hooks = std::make_shared<fwd::telemetry>();
  hooks->call_started = [](const fwd::call_started_event&) { ++calls_started; };
  hooks->retry = [](const fwd::retry_event& e) {
    ++retries;
    say("retry #" + std::to_string(e.next_attempt) + " of " + std::string(e.procedure) +
        " after: " + e.reason.message().substr(0, 70));
  };
  hooks->primary_changed = [](const fwd::primary_changed_event& e) {
    say("primary is now " + std::string(e.current) +
        (e.previous.empty() ? "" : " (was " + std::string(e.previous) + ")"));
  };
  auto trace = [](const std::string& t) {
    std::lock_guard lock(out_mutex);
    std::printf("  [%s] %s\n", node_name.c_str(), t.c_str());
    std::fflush(stdout);
  };
  if (std::getenv("FWD_NODE_TRACE")) {
    hooks->probe_finished = [trace](const fwd::probe_event& e) {
      trace("TRACE probe " + std::string(e.peer) + " " + std::string(e.role) + " " +
            e.outcome.message());
    };
    hooks->connection_failed = [trace](const fwd::connection_event& e) {
      trace("TRACE connfail " + std::string(e.peer) + " " + e.reason.message());
    };
    hooks->connection_closed = [trace](const fwd::connection_event& e) {
      trace("TRACE connclosed " + std::string(e.peer) + " " + e.reason.message());
    };
    hooks->connection_opened = [trace](const fwd::connection_event& e) {
      trace("TRACE connopened " + std::string(e.peer));
    };
    hooks->discovery_lookup = [trace](const fwd::discovery_lookup_event& e) {
      if (!e.hit) trace("TRACE lookup miss");
    };
    hooks->call_finished = [trace](const fwd::call_finished_event& e) {
      trace("TRACE call_finished " + std::string(e.procedure) + " " + std::string(e.peer) + " " +
            e.outcome.message());
    };
  }
  hooks->breaker_changed = [](const fwd::breaker_event& e) {
    say("circuit breaker for " + std::string(e.peer) + " is " + std::string(e.state));
  };

  fwd::node_options options;
  options.listen = {loopback, port};
  options.members = fwd::static_members(members);
  options.members.poll_interval = std::chrono::milliseconds(500);
  options.database = std::filesystem::path(mount) / db_name;
  options.secret = secret;
  options.litefs_hostname = litefs_hostname;
  options.name = node_name;
  options.require_fuse = litefs_real;  // the simulation's mounts are plain directories
  options.read_your_writes = ryw;
  options.discovery_ttl = std::chrono::milliseconds(ttl_ms);
  // The metrics count every event, then pass it on to the hooks above.
  auto metrics = std::make_shared<fwd::metrics>();
  options.telemetry = metrics->hooks(hooks);
  if (litefs_http_port > 0)
    options.litefs_http = boost::asio::ip::tcp::endpoint(
        loopback, static_cast<std::uint16_t>(litefs_http_port));
  if (litefs_poll_ms > 0) options.litefs_poll = std::chrono::milliseconds(litefs_poll_ms);
  fwd::node node(io.get_executor(), options);

  node.define(demo::append, [](sqlite3* db, const std::string& writer, std::int64_t seq) {
    ++append_runs;
    auto c = fwd::sqlite::connection::borrow(db);
    c.prepare("INSERT INTO events(writer, seq, ran_on) VALUES (?1, ?2, ?3)")
        .bind(1, writer)
        .bind(2, seq)
        .bind(3, node_name)
        .execute();
    return c.last_insert_rowid();
  });
  node.define(demo::add_tag, [](fwd::sqlite::connection& c, const std::string& label) {
    c.prepare("INSERT INTO tags(label) VALUES (?1)").bind(1, label).execute();
    return c.last_insert_rowid();
  });
  node.define(demo::transfer, [](fwd::sqlite::connection& c, std::int64_t from, std::int64_t to,
                                 std::int64_t amount) {
    c.prepare("UPDATE accounts SET balance = balance - ?1 WHERE id = ?2")
        .bind(1, amount)
        .bind(2, from)
        .execute();
    c.prepare("UPDATE accounts SET balance = balance + ?1 WHERE id = ?2")
        .bind(1, amount)
        .bind(2, to)
        .execute();
    auto check = c.prepare("SELECT balance FROM accounts WHERE id = ?1");
    check.bind(1, from).step();
    const std::int64_t balance = check.column_int64(0);
    if (balance < 0) throw std::runtime_error("insufficient funds: the transfer is rolled back");
    return balance;
  });

  const std::filesystem::path database = options.database;
  node.registry().define(demo::stats, [&node, database]() {
    std::int64_t version = -1;
    try {
      version = fwd::local_schema_version(database);
    } catch (const std::exception&) {
    }
    return std::vector<std::int64_t>{append_runs.load(), calls_started.load(), retries.load(),
                                     version,
                                     node.role().kind == fwd::litefs::role_kind::primary ? 1 : 0};
  });
  node.registry().define(demo::control, [&node, database](
                                            std::string what, std::vector<std::string> args,
                                            std::int64_t deadline_ms, bool call_ryw,
                                            fwd::rpc::result_handler<demo::control_result> done) {
    fwd::forward_options o;
    o.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(deadline_ms);
    o.read_your_writes = call_ryw;
    // The call's diagnostics live as long as its handler, which reads them.
    auto diag = std::make_shared<fwd::diagnostics>();
    o.diagnostics = diag.get();
    o.report = std::make_shared<fwd::call_report>();
    auto finish = [&node, done, o, diag, database, what, args](boost::system::error_code ec,
                                                               std::int64_t value) {
      demo::control_result r;
      if (ec) {
        r.category = ec.category() == fwd::fwd_category()      ? 1
                     : ec.category() == fwd::sqlite_category() ? 2
                                                               : 3;
        r.code = ec.value();
        r.detail = fmt::format("{}: {}", ec.message(), diag->message());
      }
      r.value = value;
      r.attempts = o.report->attempts;
      r.ran_locally = o.report->ran_locally;
      r.txid = o.report->txid;
      r.local_txid = node.local_txid();
      if (what == "append" && args.size() == 2)
        r.visible = local_count(database, args[0], std::stoll(args[1]));
      done({}, r);
    };
    auto bad = [&](const std::string& why) {
      demo::control_result r;
      r.category = 3;
      r.detail = why;
      done({}, r);
    };
    if (what == "append" && args.size() == 2) {
      say("append(" + args[0] + ", " + args[1] + ")");
      node.async_call(o, demo::append, args[0], std::int64_t{std::stoll(args[1])}, finish);
    } else if (what == "tag" && args.size() == 1) {
      node.async_call(o, demo::add_tag, args[0], finish);
    } else if (what == "transfer" && args.size() == 3) {
      node.async_call(o, demo::transfer, std::int64_t{std::stoll(args[0])},
                      std::int64_t{std::stoll(args[1])}, std::int64_t{std::stoll(args[2])}, finish);
    } else if (what == "execute" && !args.empty()) {
      std::vector<fwd::sql_value> values;
      for (std::size_t i = 1; i < args.size(); ++i) values.push_back(as_sql_value(args[i]));
      node.async_call(o, fwd::execute_statement, args[0], values,
                      [finish](boost::system::error_code ec, fwd::statement_result r) {
                        finish(ec, r.changes);
                      });
    } else if (what == "bulk" && args.size() == 3) {
      std::vector<std::vector<fwd::sql_value>> rows;
      for (std::int64_t i = 0; i < std::stoll(args[1]); ++i)
        rows.push_back({args[2] + std::to_string(i)});
      node.async_call(o, fwd::execute_bulk, args[0], rows,
                      [finish](boost::system::error_code ec, fwd::statement_result r) {
                        finish(ec, r.changes);
                      });
    } else {
      bad("unknown control call " + what);
    }
  });

  try {
    node.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fwd_node %s: cannot start: %s\n", node_name.c_str(), e.what());
    return 1;
  }
  {
    std::lock_guard lock(out_mutex);
    std::printf("READY %u\n", static_cast<unsigned>(node.local_endpoint().port()));
    std::fflush(stdout);
  }

  std::unique_ptr<demo::metrics_server> metrics_http;
  if (metrics_listen) {
    auto scrapes = std::make_shared<std::atomic<std::uint64_t>>(0);
    try {
      metrics_http = std::make_unique<demo::metrics_server>(
          io.get_executor(), *metrics_listen, metrics, [scrapes] {
            const auto n = ++*scrapes;
            std::lock_guard lock(out_mutex);
            std::printf("SCRAPED %llu\n", static_cast<unsigned long long>(n));
            std::fflush(stdout);
          });
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fwd_node %s: cannot serve metrics on %s:%u: %s\n", node_name.c_str(),
                   metrics_listen->address().to_string().c_str(),
                   static_cast<unsigned>(metrics_listen->port()), e.what());
      return 1;
    }
    std::lock_guard lock(out_mutex);
    std::printf("METRICS %u\n", static_cast<unsigned>(metrics_http->local_endpoint().port()));
    std::fflush(stdout);
  }

  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  // On an io thread: stop without blocking it, and end the io threads once the calls in
  // flight have completed and the writer has finished its batch.
  signals.async_wait([&](boost::system::error_code, int) {
    if (metrics_http) metrics_http->close();
    node.async_stop([&io] { io.stop(); });
  });

  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) threads.emplace_back([&io] { io.run(); });

  int status = 0;
  if (run_migrations) {
    try {
      const std::int64_t version = fwd::migrate(node, demo::schema(), std::chrono::seconds(30));
      std::lock_guard lock(out_mutex);
      std::printf("MIGRATED %lld\n", static_cast<long long>(version));
      std::fflush(stdout);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fwd_node %s: migration failed: %s\n", node_name.c_str(), e.what());
      status = 1;
    }
  }
  for (auto& t : threads) t.join();
  return status;
}
