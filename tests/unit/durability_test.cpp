// fwd::durability's encoding, and the primary's tracker of replica positions on its own.

#include <fwd/write/detail/durability_tracker.hpp>
#include <fwd/write/durability.hpp>

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using fwd::durability;

TEST_CASE("durability round-trips through its two wire bytes") {
  for (const durability d : {durability::none(), durability::replicas(1), durability::replicas(3),
                             durability::replicas(0xfffe), durability::candidates()}) {
    CHECK(durability::from_wire(d.wire()) == d);
  }
  CHECK(durability::replicas(0) == durability::none());
  CHECK(durability::none().wire() == 0);
  CHECK(durability::candidates().wire() == 0xffff);
  CHECK(fwd::to_string(durability::replicas(2)) == "replicas(2)");
  CHECK(fwd::to_string(durability::candidates()) == "candidates");
}

namespace {

struct outcome {
  std::optional<boost::system::error_code> ec;
  std::string why;
};

fwd::position_report report(std::string host, bool candidate, std::uint64_t txid) {
  return fwd::position_report{std::move(host), "node-a", candidate, txid, 0};
}

}  // namespace

TEST_CASE("the tracker releases every write of a TXID with one report, and no earlier") {
  boost::asio::io_context io;
  auto tracker = std::make_shared<fwd::detail::durability_tracker>(io.get_executor(), 10s);
  std::vector<outcome> outcomes(3);
  for (auto& o : outcomes) {
    tracker->async_wait(7, durability::replicas(1), std::chrono::steady_clock::now() + 10s,
                        [&o](boost::system::error_code ec, std::string why) {
                          o.ec = ec;
                          o.why = std::move(why);
                        });
  }
  io.poll();
  CHECK(tracker->waiting() == 3);
  CHECK(tracker->report(report("node-b", true, 6)));  // behind: nothing released, writes wait
  io.poll();
  for (const auto& o : outcomes) CHECK_FALSE(o.ec.has_value());
  tracker->report(report("node-c", false, 7));
  io.poll();
  CHECK(tracker->waiting() == 0);
  for (const auto& o : outcomes) {
    REQUIRE(o.ec.has_value());
    CHECK_FALSE(*o.ec);
  }
}

TEST_CASE("the tracker counts distinct replicas, waits for every candidate, and runs out at the deadline") {
  boost::asio::io_context io;
  auto tracker = std::make_shared<fwd::detail::durability_tracker>(io.get_executor(), 10s);
  tracker->report(report("node-b", true, 1));
  tracker->report(report("node-c", false, 1));

  outcome two, candidates, late;
  auto into = [](outcome& o) {
    return [&o](boost::system::error_code ec, std::string why) {
      o.ec = ec;
      o.why = std::move(why);
    };
  };
  tracker->async_wait(5, durability::replicas(2), std::chrono::steady_clock::now() + 10s, into(two));
  tracker->async_wait(5, durability::candidates(), std::chrono::steady_clock::now() + 10s, into(candidates));
  tracker->async_wait(5, durability::replicas(1), std::chrono::steady_clock::now() + 50ms, into(late));

  tracker->report(report("node-c", false, 5));  // the non-candidate
  tracker->report(report("node-c", false, 6));  // twice: still one replica
  io.poll();
  CHECK_FALSE(two.ec.has_value());
  CHECK_FALSE(candidates.ec.has_value());
  REQUIRE(late.ec.has_value());  // replicas(1) released by node-c
  CHECK_FALSE(*late.ec);

  tracker->report(report("node-b", true, 5));
  io.poll();
  REQUIRE(two.ec.has_value());
  CHECK_FALSE(*two.ec);
  REQUIRE(candidates.ec.has_value());
  CHECK_FALSE(*candidates.ec);

  outcome expired;
  tracker->async_wait(9, durability::replicas(1), std::chrono::steady_clock::now() + 30ms, into(expired));
  const auto started = std::chrono::steady_clock::now();
  io.restart();  // poll() ran out of work above
  while (!expired.ec && std::chrono::steady_clock::now() - started < 5s) io.run_one_for(100ms);
  REQUIRE(expired.ec.has_value());
  CHECK(*expired.ec == fwd::errc::not_yet_durable);
  CHECK(fwd::classify(*expired.ec) == fwd::error_class::committed_not_durable);
  CHECK(expired.why.find("TXID 9") != std::string::npos);
  CHECK(expired.why.find("node-b at TXID 5") != std::string::npos);
  CHECK(expired.why.find("same request id is safe") != std::string::npos);
}

TEST_CASE("candidates() is not satisfied while no candidate has reported") {
  boost::asio::io_context io;
  auto tracker = std::make_shared<fwd::detail::durability_tracker>(io.get_executor(), 10s);
  tracker->report(report("node-c", false, 100));
  outcome o;
  tracker->async_wait(5, durability::candidates(), std::chrono::steady_clock::now() + 10s,
                      [&o](boost::system::error_code ec, std::string) { o.ec = ec; });
  io.poll();
  CHECK_FALSE(o.ec.has_value());
  tracker->stop();  // the node stops: the write committed, it is reported as not yet durable
  io.poll();
  REQUIRE(o.ec.has_value());
  CHECK(*o.ec == fwd::errc::not_yet_durable);
}

namespace {

fwd::position_report report_at(std::string host, std::uint64_t txid, std::uint64_t checksum) {
  return fwd::position_report{std::move(host), "node-a", true, txid, checksum};
}

std::uint64_t checksum_of(std::uint64_t txid) { return 0x1000 + txid; }

}  // namespace

TEST_CASE("a replica on another history does not count: ahead of the primary's last commit, or at one "
          "of its TXIDs with another checksum") {
  boost::asio::io_context io;
  auto tracker = std::make_shared<fwd::detail::durability_tracker>(io.get_executor(), 10s);
  for (std::uint64_t t = 5; t <= 8; ++t) tracker->note_commit(t, checksum_of(t));
  outcome o;
  tracker->async_wait(7, durability::replicas(1), std::chrono::steady_clock::now() + 10s,
                      [&o](boost::system::error_code ec, std::string) { o.ec = ec; });
  // A former primary's last transactions, which this primary never had: TXID 9 is past
  // every commit here, and TXID 7 here has another checksum.
  tracker->report(report_at("node-b", 9, 0xdead));
  tracker->report(report_at("node-c", 7, 0xbeef));
  io.poll();
  CHECK_FALSE(o.ec.has_value());
  CHECK(tracker->waiting() == 1);

  // LiteFS resynced node-c onto this primary's history.
  tracker->report(report_at("node-c", 8, checksum_of(8)));
  io.poll();
  REQUIRE(o.ec.has_value());
  CHECK_FALSE(*o.ec);

  // The wait's message names a replica on another history as such.
  outcome expired;
  tracker->async_wait(12, durability::replicas(2), std::chrono::steady_clock::now() + 30ms,
                      [&expired](boost::system::error_code ec, std::string why) {
                        expired.ec = ec;
                        expired.why = std::move(why);
                      });
  const auto started = std::chrono::steady_clock::now();
  io.restart();
  while (!expired.ec && std::chrono::steady_clock::now() - started < 5s) io.run_one_for(100ms);
  REQUIRE(expired.ec.has_value());
  CHECK(*expired.ec == fwd::errc::not_yet_durable);
  CHECK(expired.why.find("node-b at TXID 9 of another history") != std::string::npos);
}

TEST_CASE("a replica that reports a commit before the primary has noted it counts once it is noted, and "
          "commits noted out of order are all kept") {
  boost::asio::io_context io;
  auto tracker = std::make_shared<fwd::detail::durability_tracker>(io.get_executor(), 10s);
  tracker->note_commit(5, checksum_of(5));
  outcome o;
  tracker->async_wait(5, durability::replicas(1), std::chrono::steady_clock::now() + 10s,
                      [&o](boost::system::error_code ec, std::string) { o.ec = ec; });
  // The replica reached TXID 7 before the replies of 6 and 7 ran here (on other threads,
  // in either order).
  tracker->report(report_at("node-b", 7, checksum_of(7)));
  io.poll();
  CHECK_FALSE(o.ec.has_value());
  tracker->note_commit(7, checksum_of(7));
  io.poll();
  REQUIRE(o.ec.has_value());
  CHECK_FALSE(*o.ec);

  tracker->note_commit(6, checksum_of(6));  // later than 7: 7 is kept
  outcome at7;
  tracker->async_wait(7, durability::replicas(1), std::chrono::steady_clock::now() + 10s,
                      [&at7](boost::system::error_code ec, std::string) { at7.ec = ec; });
  io.restart();  // poll() ran out of work above
  io.poll();
  REQUIRE(at7.ec.has_value());  // node-b at 7 with 7's checksum: released at once
  CHECK_FALSE(*at7.ec);
}

TEST_CASE("a TXID committed again with another checksum starts a new history on the primary") {
  boost::asio::io_context io;
  auto tracker = std::make_shared<fwd::detail::durability_tracker>(io.get_executor(), 10s);
  for (std::uint64_t t = 5; t <= 8; ++t) tracker->note_commit(t, checksum_of(t));
  // This node's history was replaced at TXID 6 (it lost 6-8 and wrote a new 6).
  tracker->note_commit(6, 0x6666);
  outcome o;
  tracker->async_wait(6, durability::replicas(1), std::chrono::steady_clock::now() + 10s,
                      [&o](boost::system::error_code ec, std::string) { o.ec = ec; });
  tracker->report(report_at("node-b", 8, checksum_of(8)));  // the lost history, ahead of 6 now
  tracker->report(report_at("node-c", 6, checksum_of(6)));  // the lost 6
  io.poll();
  CHECK_FALSE(o.ec.has_value());
  tracker->report(report_at("node-c", 6, 0x6666));
  io.poll();
  REQUIRE(o.ec.has_value());
  CHECK_FALSE(*o.ec);
}
