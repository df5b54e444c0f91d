// Read-your-writes with history: a TXID reached proves nothing after a lossy failover
// (the new primary may have written another transaction under it); the checksum at that
// TXID tells the primary's history from another. position_history alone, then the
// monitor's async_wait_history over a directory laid out with LiteFS's bytes.

#include <sys/stat.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fwd/litefs/history.hpp>
#include <fwd/litefs/monitor.hpp>
#include <string>
#include <thread>
#include <tuple>

#include "../support/temp_dir.hpp"

namespace fs = std::filesystem;
namespace litefs = fwd::litefs;
using litefs::history_match;
using namespace std::chrono_literals;

TEST_CASE("the checksum at the primary's TXID tells the primary's history from another") {
  const litefs::position written{7, 0xa7dd8f28ea1b904dULL};
  CHECK(litefs::compare_at(written, {7, 0xa7dd8f28ea1b904dULL}) == history_match::same);
  CHECK(litefs::compare_at(written, {7, 0x8518fd9cfbee119dULL}) == history_match::diverged);
  CHECK(litefs::compare_at(written, {8, 0xa7dd8f28ea1b904dULL}) == history_match::unobserved);

  litefs::position_history h;
  CHECK(h.compare(written) == history_match::unobserved);
  h.record({6, 1});
  h.record({7, 0xa7dd8f28ea1b904dULL});
  h.record({9, 3});
  CHECK(h.compare(written) == history_match::same);
  CHECK(h.compare({7, 2}) == history_match::diverged);
  CHECK(h.compare({8, 2}) == history_match::unobserved);  // passed unseen
  CHECK(h.last_txid() == 9);

  // LiteFS went back to TXID 6 (another history): what was past it is forgotten, and a
  // new transaction at 7 replaces the old one.
  h.rewind_to({6, 1});
  CHECK(h.compare(written) == history_match::unobserved);
  CHECK(h.last_txid() == 6);
  h.record({7, 0x8518fd9cfbee119dULL});
  CHECK(h.compare(written) == history_match::diverged);

  // A new primary: what the database held then proves nothing about what comes after.
  h.forget({7, 0x8518fd9cfbee119dULL});
  CHECK(h.size() == 0);
  CHECK(h.compare({6, 1}) == history_match::unobserved);
  h.record({7, 0x8518fd9cfbee119dULL});
  CHECK(h.compare({7, 0x8518fd9cfbee119dULL}) == history_match::unobserved);
  h.record({8, 5});
  CHECK(h.compare({8, 5}) == history_match::same);

  // Bounded: the oldest TXIDs go first.
  litefs::position_history small(3);
  for (std::uint64_t t = 1; t <= 5; ++t) small.record({t, t * 10});
  CHECK(small.size() == 3);
  CHECK(small.compare({2, 20}) == history_match::unobserved);
  CHECK(small.compare({5, 50}) == history_match::same);
  small.record({0, 1});  // an unreadable position is not a TXID
  CHECK(small.size() == 3);
}

namespace {

std::string pos_bytes(std::uint64_t txid, std::uint64_t checksum) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx/%016llx\n", static_cast<unsigned long long>(txid),
                static_cast<unsigned long long>(checksum));
  return buf;
}

// Replaced whole (as LiteFS serves it): a poll never reads half a position.
void set_position(const fs::path& mount, std::uint64_t txid, std::uint64_t checksum) {
  fwd_test::write_file(mount / "app.db-pos.tmp", pos_bytes(txid, checksum));
  fs::rename(mount / "app.db-pos.tmp", mount / "app.db-pos");
}

void set_primary(const fs::path& mount, const std::string& hostname) {
  fwd_test::write_file(mount / ".primary.tmp", hostname + "\n");
  fs::rename(mount / ".primary.tmp", mount / ".primary");
}

// A replica of node-a at `txid`, and a monitor polling it every millisecond.
struct replica {
  fwd_test::temp_dir tmp;
  fs::path mount = tmp.path() / "litefs";
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work{io.get_executor()};
  std::shared_ptr<litefs::monitor> monitor;
  std::thread thread;
  bool ready = false;  // the monitor has seen the starting position

  explicit replica(std::uint64_t txid, std::uint64_t checksum) {
    fs::create_directories(mount);
    fwd_test::write_file(mount / ".lag", "+000000012\n");
    set_primary(mount, "node-a");
    set_position(mount, txid, checksum);
    ::chmod(mount.c_str(), 0555);
    litefs::monitor_options o;
    o.mount = mount;
    o.database = "app.db";
    o.poll_interval = 1ms;
    monitor = litefs::monitor::create(io.get_executor(), o);
    monitor->start();
    thread = std::thread([this] { io.run(); });
    // The monitor trusts no position it first sees (it may be the end of a history it did
    // not watch being written): let it see `txid` before a test moves the position on.
    ready = reached(txid);
  }
  ~replica() {
    monitor->stop();
    work.reset();
    thread.join();
    ::chmod(mount.c_str(), 0755);
  }

  auto wait(litefs::position target, std::chrono::milliseconds bound = 10s) {
    return monitor->async_wait_history(target, std::chrono::steady_clock::now() + bound, boost::asio::use_future);
  }

  // Waits (bounded) until the monitor has published `txid` (a position waiter: woken on
  // the monitor's strand once the position is in its history).
  bool reached(std::uint64_t txid) {
    auto waiting = monitor->async_wait_position(txid, std::chrono::steady_clock::now() + 5s, boost::asio::use_future);
    if (waiting.wait_for(6s) != std::future_status::ready) return false;
    try {
      return waiting.get().txid == txid;
    } catch (const boost::system::system_error&) {
      return false;  // the deadline passed first
    }
  }
};

}  // namespace

TEST_CASE("a replica that reaches the primary's TXID with the primary's checksum holds the write") {
  replica r(4, 40);
  REQUIRE(r.ready);
  auto waiting = r.wait({5, 0xfeed});
  set_position(r.mount, 5, 0xfeed);
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  const auto [match, local] = waiting.get();
  CHECK(match == history_match::same);
  CHECK(local == litefs::position{5, 0xfeed});
  // Already there: answered from the history at once.
  auto again = r.wait({5, 0xfeed});
  REQUIRE(again.wait_for(5s) == std::future_status::ready);
  CHECK(std::get<0>(again.get()) == history_match::same);
}

TEST_CASE("another transaction at the primary's TXID (a lossy failover) is told apart by its checksum") {
  replica r(4, 40);
  REQUIRE(r.ready);
  // The old primary committed the write at 5 (checksum 0xfeed) and answered; the new
  // primary, promoted at 4, wrote its own 5.
  auto waiting = r.wait({5, 0xfeed});
  set_position(r.mount, 5, 0xbad);
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  const auto [match, local] = waiting.get();
  CHECK(match == history_match::diverged);
  CHECK(local.txid == 5);
}

TEST_CASE("a replica that goes past the primary's TXID unseen cannot confirm it by checksum") {
  replica r(4, 40);
  REQUIRE(r.ready);
  auto waiting = r.wait({5, 0xfeed});
  set_position(r.mount, 7, 70);  // 5 and 6 arrived together
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  CHECK(std::get<0>(waiting.get()) == history_match::unobserved);
}

TEST_CASE("a new primary makes the replica forget its history: a TXID seen before proves nothing after") {
  replica r(4, 40);
  REQUIRE(r.ready);
  set_position(r.mount, 5, 0xfeed);
  REQUIRE(r.reached(5));
  auto seen = r.wait({5, 0xfeed});
  REQUIRE(seen.wait_for(5s) == std::future_status::ready);
  REQUIRE(std::get<0>(seen.get()) == history_match::same);
  // node-b takes over and this replica takes its (other) history at 8, unseen before.
  set_primary(r.mount, "node-b");
  set_position(r.mount, 8, 80);
  REQUIRE(r.reached(8));
  auto after = r.wait({5, 0xfeed});
  REQUIRE(after.wait_for(5s) == std::future_status::ready);
  CHECK(std::get<0>(after.get()) == history_match::unobserved);
}
