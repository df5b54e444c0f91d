// Membership against DNS as production serves it: names with AAAA records only, TTLs
// (answers never cached, short TTLs polled within), and a resolver configuration that
// changes under a running membership.

#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <fwd/cluster/membership.hpp>
#include <string>

#include "../support/temp_dir.hpp"
#include "dnsmasq.hpp"
#include "membership_support.hpp"

namespace {

// A resolv.conf of the test's own, replaced whole (written aside, then renamed).
struct temp_resolv_conf {
  fwd_test::temp_dir dir;
  std::filesystem::path path = dir.path() / "resolv.conf";
  explicit temp_resolv_conf(const std::string& content) { write(content); }
  void write(const std::string& content) const {
    const auto staging = dir.path() / "staging";
    std::ofstream(staging, std::ios::trunc) << content;
    std::filesystem::rename(staging, path);
  }
};

fwd::test::dnsmasq_options with_addn_hosts(std::string hosts, unsigned ttl) {
  fwd::test::dnsmasq_options options;
  options.addn_hosts = std::move(hosts);
  options.local_ttl = ttl;
  return options;
}

}  // namespace

TEST_CASE("a name with AAAA records only, served over IPv6, gives IPv6 members one can reach") {
  // Like Fly.io's <app>.internal: AAAA records only, from a DNS server on IPv6.
  asio::io_context local;
  tcp::acceptor acceptor(local, tcp::endpoint(make_address("::1"), 0));
  const auto port = acceptor.local_endpoint().port();
  fwd::test::dnsmasq_options dns_config;
  dns_config.listen_address = "::1";
  dns_config.local_domains = {"internal"};
  dns_config.hosts = "::1 app.internal\nfdaa:0:1::2 app.internal\n";
  fwd::test::dnsmasq dns(dns_config);

  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("app.internal", port)});
  REQUIRE(options.dns_servers.front() == "[::1]:" + std::to_string(dns.port()));
  options.hooks = seen.hooks();
  options.remove_after_polls = 1;
  fwd::membership members(io.io.get_executor(), options);
  members.start();

  const tcp::endpoint loopback(make_address("::1"), port);
  const tcp::endpoint other(make_address("fdaa:0:1::2"), port);
  REQUIRE(seen.wait([&](auto& r) { return r.saw(joined, loopback) && r.saw(joined, other); }));
  const auto now = members.snapshot();
  CHECK(endpoints(now->members) == std::vector<tcp::endpoint>{loopback, other});
  for (const auto& m : now->members) CHECK(m.host == "app.internal");

  // The member's endpoint is one a node connects to.
  tcp::socket client(local);
  client.connect(now->members.front().endpoint);
  auto accepted = acceptor.accept();
  CHECK(accepted.remote_endpoint().address() == make_address("::1"));

  // A machine goes away: its AAAA record with it.
  dns.write_hosts("::1 app.internal\n");
  REQUIRE(seen.wait([&](auto& r) { return r.saw(left, other); }));
  std::lock_guard lock(seen.mutex);
  // The A query answered "no such record" each time, which is no failure: nothing reported.
  CHECK(seen.errors.empty());
}

TEST_CASE("records with a long TTL are asked for again at every poll, never cached") {
  // An hour's TTL: c-ares's query cache would answer every poll from the first answer.
  fwd::test::dnsmasq dns(with_addn_hosts("127.0.0.11 node.cluster.test\n", 3600));
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.hooks = seen.hooks();
  options.remove_after_polls = 1;
  fwd::membership members(io.io.get_executor(), options);
  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.11", 7070)); }));

  for (const char* next : {"127.0.0.12", "127.0.0.13"}) {
    const auto changed = std::chrono::steady_clock::now();
    dns.write_addn_hosts(std::string(next) + " node.cluster.test\n");
    REQUIRE(seen.wait([&](auto& r) { return r.saw(joined, ep(next, 7070)); }));
    // Polls are 50 ms apart: the change shows within a few, far inside the TTL.
    CHECK(std::chrono::steady_clock::now() - changed < 3s);
  }
  CHECK(endpoints(members.members()) == std::vector<tcp::endpoint>{ep("127.0.0.13", 7070)});
}

TEST_CASE("records with a TTL shorter than poll_interval are polled again when it ends") {
  fwd::test::dnsmasq dns(with_addn_hosts("127.0.0.11 node.cluster.test\n", 1));
  io_thread io;
  recorder seen;
  auto options = dns_options(dns, {fwd::dns_source::address("node.cluster.test", 7070)});
  options.hooks = seen.hooks();
  options.poll_interval = 1h;  // only the TTL can bring the next poll
  options.remove_after_polls = 1;
  fwd::membership members(io.io.get_executor(), options);
  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.11", 7070)); }));

  for (const char* next : {"127.0.0.12", "127.0.0.13"}) {
    const auto changed = std::chrono::steady_clock::now();
    dns.write_addn_hosts(std::string(next) + " node.cluster.test\n");
    REQUIRE(seen.wait([&](auto& r) { return r.saw(joined, ep(next, 7070)); }));
    // Within the 1 s TTL, plus the time dnsmasq takes to re-read its file and some slack.
    CHECK(std::chrono::steady_clock::now() - changed < 2500ms);
  }
  std::lock_guard lock(seen.mutex);
  CHECK(seen.count(left) == 2);
}

TEST_CASE("a changed resolv.conf is followed at the next poll") {
  // Two servers on one port, 127.0.0.1 and 127.0.0.2, each with its own answer; the
  // resolver configuration names one, then the other.
  fwd::test::dnsmasq first("127.0.0.11 node.cluster.test\n");
  fwd::test::dnsmasq_options second_config;
  second_config.listen_address = "127.0.0.2";
  second_config.port = first.port();
  second_config.hosts = "127.0.0.22 node.cluster.test\n";
  fwd::test::dnsmasq second(second_config);
  temp_resolv_conf conf("nameserver 127.0.0.1\n");

  io_thread io;
  recorder seen;
  fwd::membership_options options;
  options.dns = {fwd::dns_source::address("node.cluster.test", 7070)};
  options.resolv_conf = conf.path.string();
  options.resolv_conf_port = first.port();
  options.poll_interval = 50ms;
  options.query_timeout = 200ms;
  options.query_tries = 1;
  options.remove_after_polls = 1;
  options.hooks = seen.hooks();
  fwd::membership members(io.io.get_executor(), options);
  members.start();
  REQUIRE(seen.wait([](auto& r) { return r.saw(joined, ep("127.0.0.11", 7070)); }));

  conf.write("nameserver 127.0.0.2\n");
  REQUIRE(seen.wait([](auto& r) {
    return r.saw(joined, ep("127.0.0.22", 7070)) && r.saw(left, ep("127.0.0.11", 7070));
  }));

  // And back.
  conf.write("nameserver 127.0.0.1\n");
  REQUIRE(seen.wait([](auto& r) { return r.count(joined) == 3; }));
  CHECK(endpoints(members.members()) == std::vector<tcp::endpoint>{ep("127.0.0.11", 7070)});
  std::lock_guard lock(seen.mutex);
  CHECK(seen.errors.empty());
}
