// litefs::monitor over a directory laid out with the exact bytes LiteFS serves
// (.primary, <db>-pos): one poll for everybody, waiters woken by the position, role changes seen,
// and a mount replaced under it (a new filesystem on the directory) seen as a new
// generation. Dead and restarted real mounts are in tests/litefs.

#include <sys/mount.h>
#include <sys/stat.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fwd/litefs/monitor.hpp>
#include <mutex>
#include <string>
#include <thread>

#include "../support/temp_dir.hpp"

namespace fs = std::filesystem;
namespace litefs = fwd::litefs;
using namespace std::chrono_literals;
using fwd_test::write_file;

namespace {

std::string pos_bytes(std::uint64_t txid, std::uint64_t checksum) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx/%016llx\n", static_cast<unsigned long long>(txid),
                static_cast<unsigned long long>(checksum));
  return buf;
}

// A primary's mount: `.lag` 0, no `.primary`, root 0777, app.db-pos at `txid`.
void lay_out_primary(const fs::path& mount, std::uint64_t txid) {
  fs::create_directories(mount);
  write_file(mount / ".lag", "+000000000\n");
  write_file(mount / "app.db-pos", pos_bytes(txid, 0x8518fd9cfbee119dULL));
  ::chmod(mount.c_str(), 0777);
}

// Runs an io_context on a thread and records every state the monitor publishes.
struct monitored {
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread;
  std::shared_ptr<litefs::monitor> monitor;
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<litefs::node_state> seen;

  explicit monitored(const fs::path& mount, std::chrono::milliseconds poll = 5ms) {
    litefs::monitor_options o;
    o.mount = mount;
    o.database = "app.db";
    o.poll_interval = poll;
    o.on_change = [this](const litefs::node_state& s) {
      std::lock_guard lock(mutex);
      seen.push_back(s);
      changed.notify_all();
    };
    monitor = litefs::monitor::create(io.get_executor(), o);
    monitor->start();
    thread = std::thread([this] { io.run(); });
  }
  ~monitored() {
    monitor->stop();
    work.reset();
    thread.join();
  }
  // Waits (bounded) for a published state that satisfies `pred`.
  template <class Pred>
  bool wait_for_state(Pred pred, std::chrono::milliseconds bound = 5s) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, bound, [&] {
      for (const auto& s : seen)
        if (pred(s)) return true;
      return false;
    });
  }
};

}  // namespace

TEST_CASE("the monitor knows the role and position once start() returns, as an atomic load") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  lay_out_primary(mount, 0x31ee);
  monitored m(mount);
  const auto state = m.monitor->state();
  CHECK(state->role == litefs::role_kind::primary);
  CHECK(m.monitor->current_role_kind() == litefs::role_kind::primary);
  CHECK(state->pos.txid == 0x31ee);
  CHECK(state->pos.checksum == 0x8518fd9cfbee119dULL);
  CHECK_FALSE(state->mount_dead);
  CHECK(state->mount_device != 0);
}

TEST_CASE("a replica's role names its primary, and a role change is published") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  lay_out_primary(mount, 1);
  monitored m(mount);
  REQUIRE(m.monitor->state()->role == litefs::role_kind::primary);
  // Demoted: LiteFS writes `.primary` and the root turns read-only.
  write_file(mount / ".primary", "node-b\n");
  write_file(mount / ".lag", "+000000412\n");
  ::chmod(mount.c_str(), 0555);
  REQUIRE(m.wait_for_state([](const litefs::node_state& s) {
    return s.role == litefs::role_kind::replica && s.primary_hostname == "node-b";
  }));
  // The primary is lost: no `.primary`, a growing lag. That is unknown, never primary.
  fs::remove(mount / ".primary");
  write_file(mount / ".lag", "+000002003\n");
  REQUIRE(m.wait_for_state(
      [](const litefs::node_state& s) { return s.role == litefs::role_kind::unknown; }));
  CHECK(m.monitor->current_role_kind() == litefs::role_kind::unknown);
}

TEST_CASE("position waiters are woken when the position reaches their TXID, or time out") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  lay_out_primary(mount, 5);
  monitored m(mount, 1000ms);  // a slow idle poll: a waiter must make it fast
  auto reached = m.monitor->async_wait_position(5, std::chrono::steady_clock::now() + 5s,
                                                boost::asio::use_future);
  REQUIRE(reached.wait_for(5s) == std::future_status::ready);
  CHECK(reached.get().txid == 5);  // already there

  auto later = m.monitor->async_wait_position(7, std::chrono::steady_clock::now() + 10s,
                                              boost::asio::use_future);
  auto never = m.monitor->async_wait_position(100, std::chrono::steady_clock::now() + 50ms,
                                              boost::asio::use_future);
  write_file(mount / "app.db-pos", pos_bytes(7, 42));
  REQUIRE(later.wait_for(5s) == std::future_status::ready);  // well before the idle poll's 1 s
  const litefs::position p = later.get();
  CHECK(p.txid == 7);
  CHECK(p.checksum == 42);
  REQUIRE(never.wait_for(5s) == std::future_status::ready);
  try {
    never.get();
    FAIL("a waiter past its deadline must fail");
  } catch (const boost::system::system_error& e) {
    CHECK(e.code() == fwd::errc::timeout);
  }
}

TEST_CASE("stop() completes waiting position waiters with cancelled") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  lay_out_primary(mount, 1);
  auto m = std::make_unique<monitored>(mount);
  auto waiting = m->monitor->async_wait_position(9, std::chrono::steady_clock::now() + 30s,
                                                 boost::asio::use_future);
  m->monitor->stop();
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  CHECK_THROWS_AS(waiting.get(), boost::system::system_error);
}

TEST_CASE("a new filesystem mounted over the mount (LiteFS restarted) is a new mount generation") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  lay_out_primary(mount, 3);
  monitored m(mount);
  const auto first = m.monitor->state();
  if (::mount("fwd-test", mount.c_str(), "tmpfs", 0, "size=1m") != 0) {
    WARN("cannot mount a tmpfs here (" << std::strerror(errno)
                                       << "): the restart case runs on real LiteFS only");
    return;
  }
  struct unmount_at_end {
    fs::path dir;
    ~unmount_at_end() { ::umount2(dir.c_str(), MNT_DETACH); }
  } guard{mount};
  lay_out_primary(mount, 9);  // the new mount's files
  REQUIRE(m.wait_for_state([&](const litefs::node_state& s) {
    return s.mount_generation > first->mount_generation && s.pos.txid == 9;
  }));
  const auto second = m.monitor->state();
  CHECK(second->mount_device != first->mount_device);
  CHECK(second->role == litefs::role_kind::primary);
}

namespace {

// LiteFS's HTTP API as far as `/events` goes: a chunked response that never ends, one
// JSON object per line, sent when the test says so.
class fake_litefs_http {
 public:
  fake_litefs_http() : acceptor_(io_, {boost::asio::ip::make_address("127.0.0.1"), 0}) {
    thread_ = std::thread([this] { serve(); });
  }
  ~fake_litefs_http() {
    {
      std::lock_guard lock(mutex_);
      closing_ = true;
    }
    cv_.notify_all();
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    thread_.join();
  }
  boost::asio::ip::tcp::endpoint endpoint() const { return acceptor_.local_endpoint(); }
  /// Sends one event line on the current stream.
  void send(const std::string& json) { push(json + "\n"); }
  /// Ends the current stream (the monitor must reconnect).
  void drop() { push({}); }
  int accepted() const { return accepted_.load(); }

 private:
  void push(std::string item) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(item));
    }
    cv_.notify_all();
  }
  void serve() {
    for (;;) {
      boost::asio::ip::tcp::socket s(io_);
      boost::system::error_code ec;
      acceptor_.accept(s, ec);
      if (ec) return;
      ++accepted_;
      boost::asio::streambuf request;
      boost::asio::read_until(s, request, "\r\n\r\n", ec);
      if (ec) continue;
      const std::string head =
          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
      boost::asio::write(s, boost::asio::buffer(head), ec);
      for (;;) {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
        if (closing_) return;
        std::string item = std::move(queue_.front());
        queue_.erase(queue_.begin());
        lock.unlock();
        if (item.empty()) break;  // drop: close this stream
        char size[16];
        std::snprintf(size, sizeof size, "%zx\r\n", item.size());
        boost::asio::write(s, boost::asio::buffer(std::string(size) + item + "\r\n"), ec);
        if (ec) break;
      }
    }
  }

  boost::asio::io_context io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> queue_;
  bool closing_ = false;
  std::atomic<int> accepted_{0};
};

}  // namespace

// A tx line exactly as LiteFS v0.5.14 writes it (tests/litefs/litefs_events.hpp).
std::string tx_line(const std::string& db, std::uint64_t txid, std::uint64_t checksum) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                R"({"type":"tx","db":"%s","data":{"txID":"%016llx","postApplyChecksum":"%016llx",)"
                R"("pageSize":4096,"commit":2,"timestamp":"2026-12-02T12:31:30.757Z"}})",
                db.c_str(), static_cast<unsigned long long>(txid), static_cast<unsigned long long>(checksum));
  return buf;
}

TEST_CASE(
    "with LiteFS's HTTP address, a tx event wakes position waiters without waiting for a poll") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  lay_out_primary(mount, 1);
  fake_litefs_http http;
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  litefs::monitor_options o;
  o.mount = mount;
  o.database = "app.db";
  o.poll_interval = 60s;  // no poll during this test: only events can wake anybody
  o.wait_poll_interval_with_events = 60s;
  o.http = http.endpoint();
  o.events_reconnect = 10ms;
  auto monitor = litefs::monitor::create(io.get_executor(), o);
  monitor->start();
  std::thread runner([&] { io.run(); });
  http.send(R"({"type":"init","data":{"isPrimary":true}})");
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (monitor->events().events < 1 && std::chrono::steady_clock::now() < until)
    std::this_thread::yield();
  REQUIRE(monitor->events().connected);
  // The init event asked for a re-read of the mount, whose `<db>-pos` says 1 for the whole
  // test: let it finish first, or it could land after the tx event below and publish 1.
  boost::asio::post(io, boost::asio::use_future).wait();
  while (!monitor->polls_requested_done() && std::chrono::steady_clock::now() < until)
    std::this_thread::yield();
  REQUIRE(monitor->polls_requested_done());

  SECTION("the tx event's position is published as it is, without reading <db>-pos") {
    auto waiting = monitor->async_wait_position(2, std::chrono::steady_clock::now() + 30s,
                                                boost::asio::use_future);
    // `<db>-pos` still says 1: only the event can bring 2 (and its checksum).
    http.send(tx_line("app.db", 2, 0xa7dd8f28ea1b904dULL));
    REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
    const litefs::position reached = waiting.get();
    CHECK(reached.txid == 2);
    CHECK(reached.checksum == 0xa7dd8f28ea1b904dULL);
    CHECK(monitor->state()->pos == reached);

    // Another database's transaction, or an older TXID, changes nothing.
    const auto version = monitor->state()->version;
    http.send(tx_line("other.db", 9, 1));
    http.send(tx_line("app.db", 1, 1));
    while (monitor->events().events < 4 && std::chrono::steady_clock::now() < until)
      std::this_thread::yield();
    REQUIRE(monitor->events().events >= 4);
    // The handler that read those lines has returned once this runs (one io thread).
    boost::asio::post(io, boost::asio::use_future).wait();
    CHECK(monitor->state()->version == version);
    CHECK(monitor->state()->pos.txid == 2);
  }

  SECTION("a tx line in another form is not trusted: the mount is read instead") {
    auto waiting = monitor->async_wait_position(2, std::chrono::steady_clock::now() + 30s,
                                                boost::asio::use_future);
    write_file(mount / "app.db-pos", pos_bytes(2, 7));
    http.send(R"({"type":"tx","data":{"db":"app.db","txID":"0000000000000002"}})");
    REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
    const litefs::position reached = waiting.get();
    CHECK(reached.txid == 2);
    CHECK(reached.checksum == 7);  // from the file
  }

  // The stream ends (LiteFS restarted): the monitor reconnects and goes on.
  http.drop();
  while (http.accepted() < 2 && std::chrono::steady_clock::now() < until + 5s)
    std::this_thread::yield();
  CHECK(http.accepted() == 2);
  auto next = monitor->async_wait_position(5, std::chrono::steady_clock::now() + 30s,
                                           boost::asio::use_future);
  http.send(tx_line("app.db", 5, 8));
  REQUIRE(next.wait_for(5s) == std::future_status::ready);
  CHECK(next.get().txid == 5);

  monitor->stop();
  work.reset();
  runner.join();
}
