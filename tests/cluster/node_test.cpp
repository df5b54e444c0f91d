// fwd::node in one process, as the primary of a one-node simulated cluster: every
// completion token works, the blocking call throws fwd::error, and the node refuses
// to run without a secret or on a database outside a LiteFS mount.

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <fwd/migrate.hpp>
#include <fwd/node.hpp>
#include <string>
#include <thread>

#include "demo_procedures.hpp"
#include "litefs_sim.hpp"

using namespace std::chrono_literals;

namespace {

const fwd::procedure<std::int64_t(std::string)> add_label{"test.add_label"};

std::int64_t insert_label(sqlite3* db, const std::string& label) {
  auto c = fwd::sqlite::connection::borrow(db);
  c.prepare("INSERT INTO labels(label) VALUES (?1)").bind(1, label).execute();
  return c.last_insert_rowid();
}

struct solo_node {
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"solo"};
    return o;
  }()};
  boost::asio::io_context io;
  std::unique_ptr<fwd::node> node;
  std::thread runner;

  explicit solo_node(bool raw_sql = false) {
    fwd_sim::install_vfs();
    fwd::node_options o;
    o.database = sim.database_path(0);
    o.secret = "cluster-test-secret-of-32-bytes-or-more";
    o.litefs_hostname = "solo";
    o.require_fuse = false;
    o.enable_raw_sql = raw_sql;
    node = std::make_unique<fwd::node>(io.get_executor(), o);
    node->define(add_label, insert_label);
    node->start();
    runner = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io);
      io.run();
    });
    fwd::migrate(*node,
                 {{1, "labels", "CREATE TABLE labels(id INTEGER PRIMARY KEY, label TEXT UNIQUE)"}},
                 5s);
  }
  ~solo_node() {
    node->stop();
    io.stop();
    runner.join();
  }
};

}  // namespace

TEST_CASE("node::async_call completes a callback on the primary, run locally") {
  solo_node s;
  std::promise<std::pair<boost::system::error_code, std::int64_t>> done;
  auto report = std::make_shared<fwd::call_report>();
  fwd::forward_options o;
  o.report = report;
  s.node->async_call(o, add_label, "callback", [&](boost::system::error_code ec, std::int64_t id) {
    done.set_value({ec, id});
  });
  auto f = done.get_future();
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  const auto [ec, id] = f.get();
  CHECK_FALSE(ec);
  CHECK(id > 0);
  CHECK(report->ran_locally);
  CHECK(report->attempts == 1);
}

TEST_CASE("node::async_call works with use_future, deferred and use_awaitable") {
  solo_node s;
  auto future = s.node->async_call(add_label, "future", boost::asio::use_future);
  REQUIRE(future.wait_for(5s) == std::future_status::ready);
  CHECK(future.get() > 0);

  auto op = s.node->async_call(add_label, "deferred", boost::asio::deferred);
  std::promise<std::int64_t> deferred_done;
  std::move(op)([&](boost::system::error_code ec, std::int64_t id) {
    deferred_done.set_value(ec ? -1 : id);
  });
  auto f2 = deferred_done.get_future();
  REQUIRE(f2.wait_for(5s) == std::future_status::ready);
  CHECK(f2.get() > 0);

  std::promise<std::int64_t> awaited;
  boost::asio::co_spawn(
      s.io,
      [&]() -> boost::asio::awaitable<void> {
        const std::int64_t id =
            co_await s.node->async_call(add_label, "awaitable", boost::asio::use_awaitable);
        awaited.set_value(id);
      },
      boost::asio::detached);
  auto f3 = awaited.get_future();
  REQUIRE(f3.wait_for(5s) == std::future_status::ready);
  CHECK(f3.get() > 0);
}

TEST_CASE("the blocking node::call throws fwd::error with SQLite's code and message") {
  solo_node s;
  CHECK(s.node->call(add_label, "once") > 0);
  try {
    s.node->call(add_label, "once");
    FAIL("a UNIQUE violation must throw");
  } catch (const fwd::error& e) {
    CHECK(e.code().value() == 2067);
    CHECK(e.classification() == fwd::error_class::permanent);
    CHECK(std::string(e.what()).find("UNIQUE") != std::string::npos);
    const std::string& detail = e.get_diagnostics().message();
    INFO(detail);
    CHECK(detail.rfind("call to test.add_label: ", 0) == 0);
    CHECK(detail.find("UNIQUE") != std::string::npos);
  }
}

TEST_CASE("node::async_call fills the caller's diagnostics before its handler runs") {
  solo_node s;
  fwd::diagnostics diag;
  fwd::forward_options o;
  o.diagnostics = &diag;
  auto call = [&](const std::string& label) {
    std::promise<std::pair<boost::system::error_code, std::string>> done;
    s.node->async_call(o, add_label, label, [&](boost::system::error_code ec, std::int64_t) {
      done.set_value({ec, diag.message()});  // read inside the handler
    });
    auto f = done.get_future();
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    return f.get();
  };
  CHECK_FALSE(call("twice").first);
  const auto [ec, detail] = call("twice");
  CHECK(ec.value() == 2067);
  INFO(detail);
  CHECK(detail.find("UNIQUE") != std::string::npos);
  CHECK(detail.find("call to") == std::string::npos);  // the detail alone
  // The next call clears it when it starts; a success leaves it empty.
  const auto [ok, after] = call("other");
  CHECK_FALSE(ok);
  CHECK(after.empty());
}

TEST_CASE("the built-in statement procedure returns changes and the last insert rowid") {
  solo_node s(true);
  const auto r = s.node->call(fwd::execute_statement, "INSERT INTO labels(label) VALUES (?1)",
                              std::vector<fwd::sql_value>{std::string("built-in")});
  CHECK(r.changes == 1);
  CHECK(r.last_insert_rowid > 0);
  // The wrong number of values is a clear error, not a crash.
  CHECK_THROWS_AS(s.node->call(fwd::execute_statement, "INSERT INTO labels(label) VALUES (?1)",
                               std::vector<fwd::sql_value>{}),
                  fwd::error);
}

TEST_CASE("the raw-SQL built-ins run nothing unless the node enables them, and say how to") {
  solo_node s;
  const std::vector<fwd::sql_value> values{std::string("raw")};
  // Called on this node (the primary: it runs locally).
  fwd::diagnostics local_why;
  fwd::forward_options o;
  o.diagnostics = &local_why;
  std::promise<boost::system::error_code> local;
  s.node->async_call(o, fwd::execute_statement, "INSERT INTO labels(label) VALUES (?1)", values,
                     [&](boost::system::error_code ec, fwd::statement_result) { local.set_value(ec); });
  auto local_done = local.get_future();
  REQUIRE(local_done.wait_for(10s) == std::future_status::ready);
  CHECK(local_done.get() == fwd::errc::unknown_procedure);
  INFO(local_why.message());
  CHECK(local_why.message().find("enable_raw_sql") != std::string::npos);

  // Sent to the node's server by a peer that holds the secret.
  boost::asio::io_context io;
  fwd::rpc::client_options co;
  co.secret = "cluster-test-secret-of-32-bytes-or-more";
  fwd::rpc::client peer(io.get_executor(), co);
  std::optional<boost::system::error_code> remote;
  fwd::diagnostics remote_why;
  fwd::rpc::call_options call;
  call.diagnostics = &remote_why;
  peer.async_call(s.node->local_endpoint(), call, fwd::execute_bulk, "INSERT INTO labels(label) VALUES (?1)",
                  std::vector<std::vector<fwd::sql_value>>{values},
                  [&](boost::system::error_code ec, fwd::statement_result) {
                    remote = ec;
                    io.stop();
                  });
  io.run_for(10s);  // until the reply, bounded
  REQUIRE(remote.has_value());
  CHECK(*remote == fwd::errc::unknown_procedure);
  INFO(remote_why.message());
  CHECK(remote_why.message().find("fwd_write.execute_bulk (raw SQL) is not enabled") != std::string::npos);

  // Nothing ran; the service's own procedures still do.
  CHECK(s.node->call(add_label, "after") > 0);
}

TEST_CASE("a node refuses to run without a secret unless insecure is set") {
  boost::asio::io_context io;
  fwd::node_options o;
  o.database = "/tmp/never-opened.db";
  CHECK_THROWS_AS(fwd::node(io.get_executor(), o), fwd::error);
  o.insecure = true;
  CHECK_NOTHROW(fwd::node(io.get_executor(), o));
}

TEST_CASE("a node refuses a secret under 32 bytes, saying how to make one") {
  boost::asio::io_context io;
  fwd::node_options o;
  o.database = "/tmp/never-opened.db";
  o.secret = "cluster-secret";
  try {
    fwd::node n(io.get_executor(), o);
    FAIL("a 14-byte secret must be refused");
  } catch (const fwd::error& e) {
    CHECK(e.code() == fwd::errc::bad_argument);
    CHECK_THAT(e.what(), Catch::Contains("node_options::secret is 14 bytes") &&
                             Catch::Contains("openssl rand -base64 32"));
  }
  o.secret = std::string(32, 's');
  o.accepted_secrets = {"old"};
  try {
    fwd::node n(io.get_executor(), o);
    FAIL("a 3-byte accepted secret must be refused");
  } catch (const fwd::error& e) {
    CHECK_THAT(e.what(), Catch::Contains("node_options::accepted_secrets[0] is 3 bytes"));
  }
  o.accepted_secrets = {std::string(44, 'o')};
  CHECK_NOTHROW(fwd::node(io.get_executor(), o));
}

TEST_CASE("a node refuses to start on a database outside a LiteFS mount, or warns when told to") {
  const auto dir =
      std::filesystem::temp_directory_path() / ("fwd-not-litefs-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  boost::asio::io_context io;
  fwd::node_options o;
  o.database = dir / "app.db";
  o.secret = "cluster-test-secret-of-32-bytes-or-more";
  o.require_fuse = false;
  {
    fwd::node n(io.get_executor(), o);
    try {
      n.start();
      FAIL("start must refuse");
    } catch (const fwd::error& e) {
      CHECK((e.code() == fwd::errc::not_litefs || e.code() == fwd::errc::misconfigured_mount));
    }
  }
  std::string warned;
  o.path_check = fwd::path_check_mode::warn;
  o.on_warning = [&](std::string_view text) { warned = text; };
  {
    fwd::node n(io.get_executor(), o);
    CHECK_NOTHROW(n.start());
    CHECK_FALSE(warned.empty());
  }
  std::filesystem::remove_all(dir);
}

namespace {

std::uint16_t free_loopback_port() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor probe(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return probe.local_endpoint().port();
}

struct telemetry_counts {
  std::atomic<int> joined{0}, lookups_missed{0}, probes{0}, forwarded_ok{0}, primary_changes{0};
};

}  // namespace

TEST_CASE("telemetry reports members joining, lookups, probes, the primary and forwarded calls") {
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"tel-a", "tel-b"};
    return o;
  }()};
  fwd_sim::install_vfs();
  sim.start_replication(0ms);
  const boost::asio::ip::tcp::endpoint a_ep{boost::asio::ip::make_address("127.0.0.1"), free_loopback_port()};
  const boost::asio::ip::tcp::endpoint b_ep{boost::asio::ip::make_address("127.0.0.1"), free_loopback_port()};

  auto counts = std::make_shared<telemetry_counts>();
  auto hooks = std::make_shared<fwd::telemetry>();
  hooks->member_joined = [counts](const fwd::member_event&) { ++counts->joined; };
  hooks->discovery_lookup = [counts](const fwd::discovery_lookup_event& e) {
    if (!e.hit) ++counts->lookups_missed;
  };
  hooks->probe_finished = [counts](const fwd::probe_event&) { ++counts->probes; };
  hooks->primary_changed = [counts](const fwd::primary_changed_event&) { ++counts->primary_changes; };
  hooks->call_finished = [counts](const fwd::call_finished_event& e) {
    if (!e.outcome && !e.peer.empty()) ++counts->forwarded_ok;
  };

  boost::asio::io_context io;
  auto options_for = [&](std::size_t i, const boost::asio::ip::tcp::endpoint& listen) {
    fwd::node_options o;
    o.listen = listen;
    o.members = fwd::static_members({a_ep, b_ep});
    o.database = sim.database_path(i);
    o.secret = "telemetry-test-secret-of-32-bytes-or-more";
    o.litefs_hostname = sim.hostname(i);
    o.require_fuse = false;
    return o;
  };
  fwd::node a(io.get_executor(), options_for(0, a_ep));
  auto b_options = options_for(1, b_ep);
  b_options.telemetry = hooks;
  fwd::node b(io.get_executor(), b_options);
  for (fwd::node* n : {&a, &b}) {
    n->define(add_label, insert_label);
    n->start();
  }
  std::thread runner([&] {
    auto guard = boost::asio::make_work_guard(io);
    io.run();
  });
  fwd::migrate(a, {{1, "labels", "CREATE TABLE labels(id INTEGER PRIMARY KEY, label TEXT UNIQUE)"}}, 5s);

  CHECK(b.call(add_label, "through telemetry") > 0);
  CHECK(counts->joined >= 2);
  CHECK(counts->lookups_missed >= 1);
  CHECK(counts->probes >= 1);
  CHECK(counts->primary_changes >= 1);
  CHECK(counts->forwarded_ok >= 1);

  b.stop();
  a.stop();
  io.stop();
  runner.join();
  sim.stop_replication();
}

namespace {

const fwd::procedure<std::int64_t(std::string)> failing_writer{"test.failing_writer"};

// A telemetry whose every hook throws: fwd must ignore a throwing observer.
std::shared_ptr<fwd::telemetry> throwing_telemetry(std::atomic<int>& calls) {
  auto t = std::make_shared<fwd::telemetry>();
  auto thrower = [&calls](const auto&) {
    ++calls;
    throw std::runtime_error("a telemetry hook that throws");
  };
  t->call_started = thrower;
  t->call_finished = thrower;
  t->connection_opened = thrower;
  t->connection_closed = thrower;
  t->connection_failed = thrower;
  t->retry = thrower;
  t->primary_changed = thrower;
  t->member_joined = thrower;
  t->member_left = thrower;
  t->breaker_changed = thrower;
  t->discovery_lookup = thrower;
  t->probe_finished = thrower;
  t->resolver_error = thrower;
  t->litefs_changed = thrower;
  return t;
}

}  // namespace

TEST_CASE(
    "faults inside a running node (role and position reads, probes, a writer, telemetry) never "
    "reach io_context::run(), and every call completes with a classified error") {
  fwd_sim::cluster sim{[] {
    fwd_sim::cluster_options o;
    o.hostnames = {"solo"};
    return o;
  }()};
  fwd_sim::install_vfs();
  boost::asio::io_context io;
  std::atomic<int> hook_calls{0};
  std::atomic<bool> role_fails{false};
  std::atomic<int> escaped{0};

  // A member nobody listens on: every probe of it fails.
  boost::asio::ip::tcp::endpoint dead_member;
  {
    boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
    dead_member = a.local_endpoint();
  }

  fwd::node_options o;
  o.database = sim.database_path(0);
  o.secret = "cluster-test-secret-of-32-bytes-or-more";
  o.litefs_hostname = "solo";
  o.require_fuse = false;
  o.members = fwd::static_members({dead_member});
  o.telemetry = throwing_telemetry(hook_calls);
  o.discovery_ttl = 50ms;
  const auto mount = sim.mount(0);
  o.role = [&role_fails, mount] {
    if (role_fails) throw std::runtime_error("the role read failed (ENOTCONN)");
    return fwd::litefs::current_role(mount);
  };
  o.write.position_after_commit = []() -> fwd::litefs::position {
    throw std::runtime_error("the position read failed");
  };
  fwd::node node(io.get_executor(), o);
  node.define(add_label, insert_label);
  node.define(failing_writer, [](sqlite3*, const std::string&) -> std::int64_t {
    throw std::runtime_error("the service's writer failed");
  });
  node.start();
  std::thread runner([&] {
    auto guard = boost::asio::make_work_guard(io);
    for (;;) {
      try {
        io.run();
        return;
      } catch (...) {
        ++escaped;  // must never happen
      }
    }
  });

  fwd::migrate(node, {{1, "labels", "CREATE TABLE labels(id INTEGER PRIMARY KEY, label TEXT UNIQUE)"}},
               5s);
  auto call = [&](const auto& proc, std::string arg, std::chrono::milliseconds deadline) {
    fwd::forward_options options;
    options.deadline = std::chrono::steady_clock::now() + deadline;
    auto f = node.async_call(options, proc, std::move(arg),
                             boost::asio::use_future([](boost::system::error_code ec, std::int64_t v) {
                               return std::make_pair(ec, v);
                             }));
    REQUIRE(f.wait_for(10s) == std::future_status::ready);  // every call completes
    return f.get();
  };

  // Throwing hooks and a failing position read: the write still succeeds.
  auto ok = call(add_label, "with throwing hooks", 5s);
  CHECK_FALSE(ok.first);
  CHECK(ok.second > 0);
  CHECK(hook_calls > 0);

  // The service's writer throws: that call fails, permanently, with the writer's message.
  auto failed = call(failing_writer, "x", 5s);
  CHECK(failed.first == fwd::errc::remote_failure);
  CHECK(fwd::classify(failed.first) == fwd::error_class::permanent);

  // The role read throws (as on a dead mount): discovery probes the dead member, finds no
  // primary, and the call fails by its deadline with a retryable error.
  role_fails = true;
  // The node's monitor sees it at its next poll: wait for that, bounded.
  const auto seen_by = std::chrono::steady_clock::now() + 5s;
  while (node.role().kind != fwd::litefs::role_kind::unknown && std::chrono::steady_clock::now() < seen_by)
    std::this_thread::yield();
  REQUIRE(node.role().kind == fwd::litefs::role_kind::unknown);
  node.discovery().invalidate();
  auto no_role = call(add_label, "while the role cannot be read", 300ms);
  INFO(no_role.first.message());
  CHECK(no_role.first);
  CHECK(fwd::classify(no_role.first) != fwd::error_class::permanent);

  // The mount is readable again: the node, still running, writes.
  role_fails = false;
  const auto back_by = std::chrono::steady_clock::now() + 5s;
  while (node.role().kind != fwd::litefs::role_kind::primary && std::chrono::steady_clock::now() < back_by)
    std::this_thread::yield();
  node.discovery().invalidate();
  auto again = call(add_label, "after the fault", 5s);
  CHECK_FALSE(again.first);
  CHECK(again.second > 0);

  node.stop();
  io.stop();
  runner.join();
  CHECK(escaped == 0);
}
