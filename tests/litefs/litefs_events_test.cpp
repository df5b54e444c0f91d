// LiteFS's GET /events on real LiteFS: the exact lines it sends (the simulation serves the
// same, see tests/sim), and fwd's litefs::monitor following the stream: role changes and
// new positions reach it through events alone (its mount poll is set to a minute), and a
// read-your-writes wait completes from tx events.

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <fwd/litefs/monitor.hpp>

#include "litefs_events.hpp"
#include "litefs_nodes.hpp"

namespace {

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// An in-process litefs::monitor of one real LiteFS node that only events can wake.
struct events_only_monitor {
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work{io.get_executor()};
  std::shared_ptr<fwd::litefs::monitor> m;
  std::thread runner;

  events_only_monitor(litefs_cluster& c, std::size_t i) {
    fwd::litefs::monitor_options o;
    o.mount = c.mount(i);
    o.database = db_name;
    o.poll_interval = std::chrono::minutes(1);
    o.wait_poll_interval = std::chrono::minutes(1);
    o.wait_poll_interval_with_events = std::chrono::minutes(1);
    o.http = boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"),
                                            c.http_port(i));
    o.events_reconnect = std::chrono::milliseconds(50);
    m = fwd::litefs::monitor::create(io.get_executor(), o);
    m->start();
    runner = std::thread([this] { io.run(); });
  }
  ~events_only_monitor() {
    m->stop();
    work.reset();
    runner.join();
  }
  template <class Predicate>
  bool wait_state(Predicate ok, std::chrono::milliseconds bound) {
    const auto until = std::chrono::steady_clock::now() + bound;
    while (!ok(*m->state())) {
      if (std::chrono::steady_clock::now() > until) return false;
      ::poll(nullptr, 0, 1);  // reading an atomic state: there is no fd to wait on
    }
    return true;
  }
};

}  // namespace

TEST_CASE("real LiteFS: GET /events sends init, then a tx line per transaction with the "
          "position of <db>-pos, in the format the simulation reproduces") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::static_lease});
  c.start_all();
  litefs_events::stream primary(c.http_port(0));
  litefs_events::stream replica(c.http_port(1));
  INFO(primary.head());
  REQUIRE(primary.ok());
  REQUIRE(replica.ok());
  CHECK(primary.head().find("Content-Type: application/json\r\n") != std::string::npos);
  CHECK(primary.head().find("Transfer-Encoding: chunked\r\n") != std::string::npos);
  const auto p_init = primary.next(5s);
  const auto r_init = replica.next(5s);
  std::printf("real /events: %s\nreal /events: %s\n", p_init.value_or("-").c_str(),
              r_init.value_or("-").c_str());
  CHECK(p_init == std::optional<std::string>(R"({"type":"init","data":{"isPrimary":true}})"));
  CHECK(r_init == std::optional<std::string>(
                      R"({"type":"init","data":{"isPrimary":false,"hostname":")" + c.hostname(0) +
                      R"("}})"));

  REQUIRE(sqlite_cli(c.mount(0) / db_name, "PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
              .rfind("ERROR", 0) != 0);
  REQUIRE(c.wait_caught_up(0, db_name, 10s));
  const std::string pos = trimmed(c.position(0, db_name));
  // Every transaction is one tx line, on the primary and on the replica once applied; the
  // last one carries the position of <db>-pos.
  for (auto* s : {&primary, &replica}) {
    std::string last;
    while (auto line = s->next(2s)) {
      INFO(*line);
      std::printf("real /events: %s\n", line->c_str());
      CHECK(std::regex_match(*line, litefs_events::tx_line));
      last = *line;
      if (litefs_events::tx_position(last, db_name) == pos) break;
    }
    CHECK(litefs_events::tx_position(last, db_name) == std::optional<std::string>(pos));
  }
  std::fflush(stdout);
}

TEST_CASE("real LiteFS consul lease: fwd's monitor follows /events - a handoff and new "
          "positions arrive through the stream, and a position wait completes from tx events") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::consul});
  c.start_all();
  REQUIRE(c.is_primary(0));
  create_database(c, 0, true);
  litefs_events::stream watch(c.http_port(1));  // what LiteFS sends, for the record
  REQUIRE(watch.ok());

  events_only_monitor on_replica(c, 1);
  events_only_monitor on_primary(c, 0);
  REQUIRE(on_replica.wait_state([](const auto&) { return true; }, 1s));
  CHECK(on_replica.m->state()->role == fwd::litefs::role_kind::replica);
  CHECK(on_primary.m->state()->role == fwd::litefs::role_kind::primary);
  REQUIRE(on_replica.wait_state([&](const auto&) { return on_replica.m->events().connected; }, 5s));
  REQUIRE(on_primary.wait_state([&](const auto&) { return on_primary.m->events().connected; }, 5s));

  // A commit on the primary: the replica's monitor, which polls once a minute, is woken by
  // the tx event once LiteFS applied the transaction.
  const auto start = on_replica.m->state()->pos;
  auto waiting = on_replica.m->async_wait_position(
      start.txid + 1, std::chrono::steady_clock::now() + 30s, boost::asio::use_future);
  REQUIRE(sqlite_cli(c.mount(0) / db_name, "CREATE TABLE t(x);").rfind("ERROR", 0) != 0);
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  const auto reached = waiting.get();
  const double waited_ms = ms_since(t0);
  CHECK(reached.txid == start.txid + 1);
  CHECK(fwd::litefs::format_position(reached) == c.position(1, db_name));
  CHECK(on_primary.wait_state([&](const auto& s) { return s.pos == reached; }, 2s));

  // Planned handoff: both monitors see the new roles through primaryChange events.
  const auto asked = std::chrono::steady_clock::now();
  REQUIRE(c.promote(1));
  CHECK(on_replica.wait_state(
      [](const auto& s) { return s.role == fwd::litefs::role_kind::primary; }, 5s));
  const double promoted_ms = ms_since(asked);
  CHECK(on_primary.wait_state(
      [&](const auto& s) {
        return s.role == fwd::litefs::role_kind::replica && s.primary_hostname == c.hostname(1);
      },
      10s));
  const double demoted_ms = ms_since(asked);
  // LiteFS first drops the old primary (isPrimary false, no hostname), then takes the lease.
  std::string changes;
  std::optional<std::string> change;
  while (auto line = watch.next_matching(litefs_events::primary_change_line, 2s)) {
    changes += "\n  " + *line;
    if (line->find("\"isPrimary\":true") != std::string::npos) {
      change = line;
      break;
    }
  }
  std::printf("real /events after POST /promote:%s\nmonitor on /events: tx seen %.1f ms after "
              "the commit returned; new primary seen %.0f ms, old primary as replica %.0f ms "
              "after POST /promote (%llu and %llu events)\n",
              changes.c_str(), waited_ms, promoted_ms, demoted_ms,
              static_cast<unsigned long long>(on_replica.m->events().events),
              static_cast<unsigned long long>(on_primary.m->events().events));
  std::fflush(stdout);
  CHECK(change == std::optional<std::string>(R"({"type":"primaryChange","data":{"isPrimary":true}})"));
  CHECK(promoted_ms < 1000 + 1000);  // the handoff (~140 ms) plus delivery, not a poll

  // And a commit on the new primary reaches the old one (now a replica) through tx events.
  const auto before = on_primary.m->state()->pos;
  auto next = on_primary.m->async_wait_position(
      before.txid + 1, std::chrono::steady_clock::now() + 30s, boost::asio::use_future);
  REQUIRE(sqlite_cli(c.mount(1) / db_name, "INSERT INTO t VALUES (1);").rfind("ERROR", 0) != 0);
  REQUIRE(next.wait_for(10s) == std::future_status::ready);
  CHECK(next.get().txid == before.txid + 1);
}

TEST_CASE("real LiteFS consul lease: fwd nodes on /events (node_options::litefs_http, mount "
          "poll once a minute) - read-your-writes and a planned handoff work from events") {
  REQUIRE_REAL_LITEFS();
  litefs_cluster c({.nodes = 2, .lease = fwd_test::lease_kind::consul});
  c.start_all();
  REQUIRE(c.is_primary(0));
  create_database(c, 0, true);
  fwd_nodes n(c);
  for (std::size_t i = 0; i < c.size(); ++i)
    n.extra_args.push_back(
        {"--litefs-http", std::to_string(c.http_port(i)), "--litefs-poll-ms", "60000"});
  n.start_all();
  INFO(n.outputs());

  std::vector<int> acked;
  int seq = 0;
  double slowest_ryw_ms = 0;
  for (int k = 0; k < 5; ++k) {
    const auto t = std::chrono::steady_clock::now();
    const auto r = n.append(1, "e", ++seq, 5000, /*ryw=*/true);
    slowest_ryw_ms = std::max(slowest_ryw_ms, ms_since(t));
    INFO(r.detail);
    REQUIRE(r.category == 0);
    CHECK(r.visible == 1);  // read-your-writes: the replica's own copy has it
    acked.push_back(seq);
  }
  REQUIRE(c.wait_caught_up(0, db_name, 10s));

  const auto asked = std::chrono::steady_clock::now();
  REQUIRE(c.promote(1));
  REQUIRE(c.wait_primary(10s, 0) == std::optional<std::size_t>(1));
  const double handoff_ms = ms_since(asked);
  std::optional<double> accepted_ms;
  std::string last_error;
  int refused = 0;
  while (ms_since(asked) < 30000) {
    const auto r = n.append(0, "e", ++seq, 1500, /*ryw=*/false);
    if (r.category == 0) {
      acked.push_back(seq);
      accepted_ms = ms_since(asked);
      break;
    }
    ++refused;
    last_error = r.detail;
  }
  const auto ryw = n.append(0, "e", ++seq, 10000, /*ryw=*/true);
  INFO(ryw.detail);
  CHECK(ryw.category == 0);
  CHECK(ryw.visible == 1);
  if (ryw.category == 0) acked.push_back(seq);
  std::printf("fwd nodes on /events: slowest forwarded write with read-your-writes %.1f ms; "
              "handoff %.0f ms; node1 forwarded to the new primary %.0f ms after POST /promote "
              "(%d refused, last: %s)\n",
              slowest_ryw_ms, handoff_ms, accepted_ms.value_or(-1), refused,
              last_error.substr(0, 100).c_str());
  std::fflush(stdout);
  INFO("last error: " << last_error);
  REQUIRE(accepted_ms.has_value());
  CHECK(*accepted_ms - handoff_ms < 1000);  // events, not the minute-long poll
  REQUIRE(c.wait_caught_up(1, db_name, 10s));
  for (std::size_t i = 0; i < c.size(); ++i)
    for (int s : acked) {
      INFO("seq " << s << " on node " << i);
      CHECK(cli_count(c, i, "writer = 'e' AND seq = " + std::to_string(s)) == 1);
    }
}
