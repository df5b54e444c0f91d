// Cluster membership against a real dnsmasq on a loopback port.

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <future>
#include <fwd/cluster/membership.hpp>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "dnsmasq.hpp"
#include "membership_support.hpp"

TEST_CASE("A and AAAA records of a name become members on the given port") {
  fwd::test::dnsmasq dns(
      "127.0.0.11 node.cluster.test\n"
      "127.0.0.12 node.cluster.test\n"
      "fd00::11 node.cluster.test\n");
  io_thread io;
  fwd::membership members(io.io.get_executor(),
                          dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)}));

  auto [ec, found] = resolve_once(members);
  REQUIRE_FALSE(ec);
  CHECK(endpoints(found) == std::vector<tcp::endpoint>{ep("127.0.0.11", 7070),
                                                       ep("127.0.0.12", 7070),
                                                       ep("fd00::11", 7070)});
  for (const auto& m : found) CHECK(m.host == "node.cluster.test");
  // Resolving once does not change the membership.
  CHECK(members.snapshot()->version == 0);
  CHECK(members.snapshot()->members.empty());
}

TEST_CASE("records added, removed and changed while polling give joined and left events") {
  fwd::test::dnsmasq dns("127.0.0.11 node.cluster.test\n");
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.hooks = seen.hooks();
  fwd::membership members(io.io.get_executor(), options);
  members.start();

  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.11", 7070)); }));

  // Added.
  dns.write_hosts("127.0.0.11 node.cluster.test\n127.0.0.12 node.cluster.test\n");
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.12", 7070)); }));

  // Removed.
  dns.write_hosts("127.0.0.12 node.cluster.test\n");
  REQUIRE(seen.wait([](auto& r) { return r.saw(left, ep("127.0.0.11", 7070)); }));

  // Changed: .12 becomes .13.
  dns.write_hosts("127.0.0.13 node.cluster.test\n");
  REQUIRE(seen.wait([](auto& r) {
    return r.saw(joined, ep("127.0.0.13", 7070)) && r.saw(left, ep("127.0.0.12", 7070));
  }));

  const auto now = members.snapshot();
  CHECK(endpoints(now->members) == std::vector<tcp::endpoint>{ep("127.0.0.13", 7070)});
  std::lock_guard lock(seen.mutex);
  CHECK(seen.count(joined) == 3);
  CHECK(seen.count(left) == 2);
  CHECK(seen.errors.empty());
}

TEST_CASE("a name answering NXDOMAIN fails with fwd.dns ARES_ENOTFOUND") {
  fwd::test::dnsmasq dns("127.0.0.11 node.cluster.test\n");
  io_thread io;
  fwd::membership members(
      io.io.get_executor(),
      dns_options(dns, {fwd::dns_source::address("absent.cluster.test", 7070)}));

  auto [ec, found] = resolve_once(members);
  CHECK(found.empty());
  REQUIRE(ec);
  CHECK(ec == fwd::dns_errc::not_found);
  CHECK(ec.value() == ARES_ENOTFOUND);
  CHECK(std::string(ec.category().name()) == "fwd.dns");
  CHECK_THAT(ec.message(), Catch::Contains(ares_strerror(ARES_ENOTFOUND)) &&
                               Catch::Contains("NXDOMAIN") &&
                               Catch::Contains("check the configured name"));
}

TEST_CASE("a member is removed only after remove_after_polls answers leave it out") {
  fwd::test::dnsmasq dns("127.0.0.11 node.cluster.test\n");
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.hooks = seen.hooks();
  options.remove_after_polls = 3;
  fwd::membership members(io.io.get_executor(), options);
  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.11", 7070)); }));

  // The name disappears: every poll now answers NXDOMAIN, which is reported each time.
  dns.write_hosts("");
  REQUIRE(seen.wait([](auto& r) { return r.saw(left, ep("127.0.0.11", 7070)); }));
  std::lock_guard lock(seen.mutex);
  // Left with the third NXDOMAIN, not before.
  CHECK(seen.errors_at_last_left == 3);
  for (const auto& [ec, message] : seen.errors) {
    CHECK(ec == fwd::dns_errc::not_found);
    CHECK_THAT(message, Catch::Contains("absent") || Catch::Contains("node.cluster.test"));
  }
  CHECK(members.snapshot()->members.empty());
}

TEST_CASE("one empty answer does not drop members while later answers bring them back") {
  fwd::test::dnsmasq dns("127.0.0.11 node.cluster.test\n");
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.hooks = seen.hooks();
  options.remove_after_polls = 1000;  // only the count of agreeing answers matters here
  fwd::membership members(io.io.get_executor(), options);
  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.11", 7070)); }));

  dns.write_hosts("");
  REQUIRE(seen.wait([](auto& r) { return r.errors.size() >= 2; }));
  dns.write_hosts("127.0.0.11 node.cluster.test\n");
  // Once answers carry it again, the member is still there and never left.
  REQUIRE(seen.wait([&](auto&) {
    auto m = members.snapshot();
    return m->contains(ep("127.0.0.11", 7070));
  }));
  std::lock_guard lock(seen.mutex);
  CHECK(seen.count(left) == 0);
  CHECK(seen.count(joined) == 1);
}

TEST_CASE("SRV records give each target's addresses on the record's port") {
  fwd::test::dnsmasq dns("127.0.0.11 node1.cluster.test\n127.0.0.12 node2.cluster.test\n",
                         {"_fwd._tcp.cluster.test,node1.cluster.test,7070",
                          "_fwd._tcp.cluster.test,node2.cluster.test,7071"});
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::srv("_fwd._tcp.cluster.test")});
  options.hooks = seen.hooks();
  fwd::membership members(io.io.get_executor(), options);

  auto [ec, found] = resolve_once(members);
  REQUIRE_FALSE(ec);
  REQUIRE(endpoints(found) ==
          std::vector<tcp::endpoint>{ep("127.0.0.11", 7070), ep("127.0.0.12", 7071)});
  CHECK(found[0].host == "node1.cluster.test");
  CHECK(found[1].host == "node2.cluster.test");

  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.count(joined) == 2; }));

  // node2's SRV record goes away (dnsmasq reads SRV records only at start).
  dns.restart_with_srv({"_fwd._tcp.cluster.test,node1.cluster.test,7070"});
  REQUIRE(seen.wait([](auto& r) { return r.saw(left, ep("127.0.0.12", 7071)); }));
  CHECK(endpoints(members.members()) == std::vector<tcp::endpoint>{ep("127.0.0.11", 7070)});
}

TEST_CASE("DNS server stopped: members are kept and the failure is reported") {
  fwd::test::dnsmasq dns("127.0.0.11 node.cluster.test\n");
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.hooks = seen.hooks();
  fwd::membership members(io.io.get_executor(), options);
  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.11", 7070)); }));

  dns.stop();
  // More failed polls than remove_after_polls: failures never count towards removal.
  REQUIRE(seen.wait([](auto& r) { return r.errors.size() >= 5; }));
  {
    std::lock_guard lock(seen.mutex);
    for (const auto& [ec, message] : seen.errors) {
      CHECK(std::string(ec.category().name()) == "fwd.dns");
      CHECK((ec == fwd::dns_errc::connection_refused || ec == fwd::dns_errc::timeout));
      CHECK_THAT(message, Catch::Contains("node.cluster.test") &&
                              Catch::Contains("keeping the 1 member(s)"));
    }
    CHECK(seen.count(left) == 0);
  }
  CHECK(members.snapshot()->contains(ep("127.0.0.11", 7070)));

  // The server comes back with one more record: polling recovers by itself.
  dns.restart_with_hosts("127.0.0.11 node.cluster.test\n127.0.0.12 node.cluster.test\n");
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.12", 7070)); }));
  std::lock_guard lock(seen.mutex);
  CHECK(seen.count(left) == 0);
}

TEST_CASE("a static list is published at start and needs no DNS") {
  io_thread io;
  fwd::membership_options options;
  options.static_members = {{"b", ep("127.0.0.22", 7070)}, {"a", ep("127.0.0.21", 7070)}};
  fwd::membership members(io.io.get_executor(), options);
  members.start();

  auto [ec, snapshot] = wait_result<fwd::membership_snapshot_ptr>(
      [&](auto handler) { members.async_wait_change(0, std::move(handler)); });
  REQUIRE_FALSE(ec);
  CHECK(snapshot->version == 1);
  REQUIRE(snapshot->members.size() == 2);
  CHECK(snapshot->members[0].host == "a");  // sorted by endpoint
  CHECK(snapshot->members[1].endpoint == ep("127.0.0.22", 7070));
  CHECK(snapshot->changes.size() == 2);
}

TEST_CASE("DNS and static members combined: static members stay, duplicates merge") {
  fwd::test::dnsmasq dns("127.0.0.11 node.cluster.test\n127.0.0.12 node.cluster.test\n");
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.static_members = {{"seed", ep("127.0.0.21", 7070)}, {"seed-dns", ep("127.0.0.11", 7070)}};
  options.hooks = seen.hooks();
  fwd::membership members(io.io.get_executor(), options);

  auto [ec, found] = resolve_once(members);
  REQUIRE_FALSE(ec);
  CHECK(endpoints(found) == std::vector<tcp::endpoint>{ep("127.0.0.11", 7070),
                                                       ep("127.0.0.12", 7070),
                                                       ep("127.0.0.21", 7070)});

  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.count(joined) == 3; }));

  // DNS loses both names: the DNS-only member leaves, the static ones stay.
  dns.write_hosts("");
  REQUIRE(seen.wait([](auto& r) { return r.saw(left, ep("127.0.0.12", 7070)); }));
  CHECK(endpoints(members.members()) ==
        std::vector<tcp::endpoint>{ep("127.0.0.11", 7070), ep("127.0.0.21", 7070)});
  std::lock_guard lock(seen.mutex);
  CHECK(seen.count(left) == 1);
}

TEST_CASE("async operations take callbacks, use_future, use_awaitable and deferred") {
  asio::io_context io;
  fwd::membership_options options;
  options.static_members = {{"a", ep("127.0.0.21", 7070)}};
  fwd::membership members(io.get_executor(), options);

  SECTION("callback, completed through the executor and never inside the call") {
    bool called = false;
    members.async_resolve_once([&](boost::system::error_code ec, std::vector<fwd::member> found) {
      CHECK_FALSE(ec);
      CHECK(found.size() == 1);
      called = true;
    });
    CHECK_FALSE(called);
    members.start();
    std::shared_ptr<const fwd::membership_snapshot> seen;
    members.async_wait_change(0, [&](boost::system::error_code ec, fwd::membership_snapshot_ptr s) {
      CHECK_FALSE(ec);
      seen = std::move(s);
    });
    CHECK(seen == nullptr);
    io.run_for(bound);
    CHECK(called);
    REQUIRE(seen);
    CHECK(seen->members.size() == 1);
  }

  SECTION("use_future: the value, or the error thrown") {
    members.start();
    auto work = asio::make_work_guard(io);
    std::thread runner([&] { io.run_for(bound); });
    auto found = members.async_resolve_once(asio::use_future);
    auto snapshot = members.async_wait_change(0, asio::use_future);
    REQUIRE(found.wait_for(bound) == std::future_status::ready);
    CHECK(found.get().size() == 1);
    CHECK(snapshot.get()->members.size() == 1);
    members.stop();
    auto aborted = members.async_wait_change(1000, asio::use_future);
    members.stop();
    CHECK_THROWS_AS(aborted.get(), boost::system::system_error);
    work.reset();
    runner.join();
  }

  SECTION("use_awaitable") {
    members.start();
    bool done = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          auto [ec, found] =
              co_await members.async_resolve_once(asio::as_tuple(asio::use_awaitable));
          CHECK_FALSE(ec);
          CHECK(found.size() == 1);
          auto snapshot = co_await members.async_wait_change(0, asio::use_awaitable);
          CHECK(snapshot->version >= 1);
          done = true;
        },
        asio::detached);
    io.run_for(bound);
    CHECK(done);
  }

  SECTION("deferred") {
    members.start();
    auto op = members.async_wait_change(0, asio::deferred);
    fwd::membership_snapshot_ptr seen;
    std::move(op)([&](boost::system::error_code ec, fwd::membership_snapshot_ptr s) {
      CHECK_FALSE(ec);
      seen = std::move(s);
    });
    auto once = members.async_resolve_once(asio::deferred);
    std::size_t count = 0;
    std::move(once)(
        [&](boost::system::error_code, std::vector<fwd::member> found) { count = found.size(); });
    io.run_for(bound);
    REQUIRE(seen);
    CHECK(count == 1);
  }
}

TEST_CASE("async_wait_change is cancelled by its cancellation slot and by stop") {
  io_thread io;
  fwd::membership_options options;
  options.static_members = {{"a", ep("127.0.0.21", 7070)}};
  fwd::membership members(io.io.get_executor(), options);
  members.start();
  auto first = wait_result<fwd::membership_snapshot_ptr>(
      [&](auto handler) { members.async_wait_change(0, std::move(handler)); });
  REQUIRE(std::get<1>(first)->version == 1);

  SECTION("terminal cancellation") {
    asio::cancellation_signal signal;
    std::promise<boost::system::error_code> result;
    asio::post(io.io, [&] {
      members.async_wait_change(
          1, asio::bind_cancellation_slot(
                 signal.slot(), [&](boost::system::error_code ec, fwd::membership_snapshot_ptr s) {
                   CHECK(s == nullptr);
                   result.set_value(ec);
                 }));
      asio::post(io.io, [&] { signal.emit(asio::cancellation_type::terminal); });
    });
    auto future = result.get_future();
    REQUIRE(future.wait_for(bound) == std::future_status::ready);
    CHECK(future.get() == asio::error::operation_aborted);
  }

  SECTION("stop") {
    auto [ec, s] = wait_result<fwd::membership_snapshot_ptr>([&](auto handler) {
      members.async_wait_change(1, std::move(handler));
      members.stop();
    });
    CHECK(ec == asio::error::operation_aborted);
    CHECK(s == nullptr);
  }
}

TEST_CASE("bad options are refused with an error that says what to write") {
  asio::io_context io;
  fwd::membership_options options;
  options.dns = {fwd::dns_source::address("node.cluster.test", 7070)};

  options.dns_servers = {"dns.example:53"};
  try {
    fwd::membership members(io.get_executor(), options);
    FAIL("a server name was accepted");
  } catch (const fwd::error& e) {
    CHECK(e.code() == fwd::errc::bad_argument);
    CHECK_THAT(e.what(), Catch::Contains("dns.example:53") && Catch::Contains("IP address"));
  }

  options.dns_servers = {"127.0.0.1:99999"};
  CHECK_THROWS_AS(fwd::membership(io.get_executor(), options), fwd::error);

  options.dns_servers = {"[::1]:5353", "127.0.0.1"};
  CHECK_NOTHROW(fwd::membership(io.get_executor(), options));

  options.dns = {fwd::dns_source::address("node.cluster.test", 0)};
  CHECK_THROWS_WITH(fwd::membership(io.get_executor(), options), Catch::Contains("port 0"));
}

TEST_CASE("DNS errors keep c-ares's status in the fwd.dns category") {
  const auto ec = fwd::make_dns_error(ARES_ETIMEOUT);
  CHECK(std::string(ec.category().name()) == "fwd.dns");
  CHECK(ec.value() == ARES_ETIMEOUT);
  CHECK(ec == fwd::dns_errc::timeout);
  CHECK_THAT(ec.message(), Catch::Contains(ares_strerror(ARES_ETIMEOUT)) &&
                               Catch::Contains("raise the query timeout"));
  const std::error_code std_ec = fwd::dns_errc::connection_refused;
  CHECK(std_ec.value() == ARES_ECONNREFUSED);
}

TEST_CASE("polling is driven by the reactor: an idle poller uses almost no CPU") {
  fwd::test::dnsmasq dns("127.0.0.11 node.cluster.test\n");
  asio::io_context io;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.poll_interval = 20ms;
  fwd::membership members(io.get_executor(), options);
  members.start();

  timespec before{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &before);
  const auto wall_start = std::chrono::steady_clock::now();
  io.run_for(500ms);  // about 25 polls, each a real exchange with dnsmasq
  const auto wall = std::chrono::steady_clock::now() - wall_start;
  timespec after{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &after);
  const auto cpu = std::chrono::seconds(after.tv_sec - before.tv_sec) +
                   std::chrono::nanoseconds(after.tv_nsec - before.tv_nsec);

  CHECK(members.snapshot()->contains(ep("127.0.0.11", 7070)));
  // A busy loop would use about as much CPU as wall time.
  CHECK(cpu < wall / 5);
}

TEST_CASE("a grace period removes a member left out for that long") {
  fwd::test::dnsmasq dns("127.0.0.11 node.cluster.test\n");
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.hooks = seen.hooks();
  options.remove_after_polls = 1000;
  options.remove_after = 300ms;
  fwd::membership members(io.io.get_executor(), options);
  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.11", 7070)); }));

  dns.write_hosts("");
  REQUIRE(seen.wait([](auto& r) { return !r.errors.empty(); }));
  const auto first_miss = std::chrono::steady_clock::now();
  REQUIRE(seen.wait([](auto& r) { return r.saw(left, ep("127.0.0.11", 7070)); }));
  // Left once the grace period had passed since the first miss (less one poll of slack:
  // the miss was reported just before `first_miss` was taken).
  CHECK(std::chrono::steady_clock::now() - first_miss >= 300ms - 60ms);
  std::lock_guard lock(seen.mutex);
  CHECK(seen.errors_at_last_left >= 3);  // several polls missed it before the grace ended
}

TEST_CASE("an answer too large for UDP is fetched again over TCP") {
  std::string hosts;
  for (int i = 1; i <= 100; ++i) {
    hosts += "127.0.1." + std::to_string(i) + " big.cluster.test\n";
  }
  fwd::test::dnsmasq dns(hosts);
  io_thread io;
  auto options = dns_options(dns, {fwd::dns_source::address("big.cluster.test", 7070)});
  options.ipv6 = false;
  fwd::membership members(io.io.get_executor(), options);

  auto [ec, found] = resolve_once(members);
  REQUIRE_FALSE(ec);
  CHECK(found.size() == 100);  // 100 A records: about 1,600 bytes, beyond UDP's 512
}

TEST_CASE("async_resolve_once is cancelled by its cancellation slot") {
  silent_dns_server dns;  // queries wait for their timeout
  io_thread io;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.query_timeout = 5s;
  fwd::membership members(io.io.get_executor(), options);

  asio::cancellation_signal signal;
  const auto started = std::chrono::steady_clock::now();
  auto [ec, found] = wait_result<std::vector<fwd::member>>([&](auto handler) {
    asio::post(io.io, [&, handler = std::move(handler)]() mutable {
      members.async_resolve_once(asio::bind_cancellation_slot(signal.slot(), std::move(handler)));
      asio::post(io.io, [&] { signal.emit(asio::cancellation_type::terminal); });
    });
  });
  CHECK(ec == asio::error::operation_aborted);
  CHECK(found.empty());
  CHECK(std::chrono::steady_clock::now() - started < 5s);
}

TEST_CASE("destroying a polling membership ends its queries at once") {
  silent_dns_server dns;  // every query would wait for its 5 s timeout
  const auto started = std::chrono::steady_clock::now();
  {
    io_thread io;
    auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
    options.query_timeout = 5s;
    std::promise<void> polled;
    auto members = std::make_unique<fwd::membership>(io.io.get_executor(), options);
    members->start();
    asio::post(io.io, [&] { polled.set_value(); });
    polled.get_future().wait();
    members.reset();
    // io_thread's destructor joins once the io_context has no work left: the pending
    // queries, their sockets and timers must all be gone.
  }
  CHECK(std::chrono::steady_clock::now() - started < 4s);
}
