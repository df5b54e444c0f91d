// litefs::monitor reads the mount on its own thread: a FUSE request that LiteFS never
// answers (a hung LiteFS) must block neither a thread running the user's io_context nor
// the deadlines of position waiters, and stop() must not wait for a poll interval.
//
// A hung LiteFS is made for real: a FUSE filesystem mounted from a /dev/fuse descriptor
// that nobody serves. The kernel queues every request on it (the first one, INIT, is
// never answered), so any stat or open there blocks until the descriptor is closed, and
// then fails with ENOTCONN: exactly what a stopped LiteFS gives. Needs root and
// /dev/fuse; without them the test says why and passes.

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <fwd/litefs/monitor.hpp>
#include <mutex>
#include <set>
#include <string>
#include <stdexcept>
#include <thread>
#include <vector>

#include "../support/temp_dir.hpp"
#include "../support/unanswered_fuse_mount.hpp"
#include "../support/io_thread.hpp"

namespace fs = std::filesystem;
namespace litefs = fwd::litefs;
using namespace std::chrono_literals;
using fwd_test::unanswered_fuse_mount;
using fwd_test::write_file;

namespace {

void lay_out_primary(const fs::path& mount, std::uint64_t txid) {
  fs::create_directories(mount);
  write_file(mount / ".lag", "+000000000\n");
  char pos[40];
  std::snprintf(pos, sizeof pos, "%016llx/%016llx\n", static_cast<unsigned long long>(txid), 42ULL);
  write_file(mount / "app.db-pos", pos);
}

using fwd_test::io_thread;

}  // namespace

TEST_CASE("a poll stuck in LiteFS blocks neither the io_context nor waiter deadlines, and "
          "stop() returns at once") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  const fs::path hung_dir = tmp.path() / "hung";
  lay_out_primary(mount, 5);
  io_thread runner;  // declared before the mount: the mount is answered first at the end

  unanswered_fuse_mount hung(hung_dir);
  if (!hung.ok()) {
    WARN(hung.why() << ": the hung-LiteFS case needs root and /dev/fuse");
    return;
  }
  std::atomic<bool> use_hung{false};
  std::promise<void> entered;
  std::atomic<bool> entered_once{false};
  litefs::monitor_options o;
  o.mount = mount;
  o.database = "app.db";
  o.poll_interval = 60s;  // no poll unless asked: stop() must not wait for one
  o.read_role = [&]() {
    if (!use_hung) return litefs::current_role(mount);
    if (!entered_once.exchange(true)) entered.set_value();
    // The role check's FUSE requests on a LiteFS that never answers: blocks here.
    return litefs::current_role(hung_dir);
  };
  auto monitor = litefs::monitor::create(runner.io.get_executor(), o);
  monitor->start();
  REQUIRE(monitor->state()->role == litefs::role_kind::primary);

  use_hung = true;
  monitor->poll_now();
  auto in_poll = entered.get_future();
  REQUIRE(in_poll.wait_for(5s) == std::future_status::ready);  // the poll is in LiteFS now

  // The io_context still runs handlers on time.
  boost::asio::steady_timer timer(runner.io, 100ms);
  const auto armed = std::chrono::steady_clock::now();
  auto fired = timer.async_wait(boost::asio::use_future);
  const bool timer_fired = fired.wait_for(3s) == std::future_status::ready;
  if (!timer_fired) hung.answer();  // let the io thread go before failing
  REQUIRE(timer_fired);
  CHECK(std::chrono::steady_clock::now() - armed < 1s);

  // A waiter's deadline passes on time though no poll can finish.
  auto waiting = monitor->async_wait_position(6, std::chrono::steady_clock::now() + 200ms,
                                              boost::asio::use_future);
  REQUIRE(waiting.wait_for(3s) == std::future_status::ready);
  try {
    waiting.get();
    FAIL("the waiter must time out");
  } catch (const boost::system::system_error& e) {
    CHECK(e.code() == fwd::errc::timeout);
  }
  CHECK(monitor->waiters() == 0);
  CHECK(monitor->state()->role == litefs::role_kind::primary);  // still an atomic load

  // LiteFS goes away: the stuck request fails, the poll ends; stop() joins at once.
  hung.answer();
  const auto stopping = std::chrono::steady_clock::now();
  monitor->stop();
  CHECK(std::chrono::steady_clock::now() - stopping < 500ms);
}

TEST_CASE("after start() the mount is read on the monitor's own thread, never on an io_context thread") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  lay_out_primary(mount, 1);
  io_thread runner;
  std::mutex mutex;
  std::set<std::thread::id> readers;
  std::atomic<int> reads{0};
  std::atomic<bool> started{false};
  litefs::monitor_options o;
  o.mount = mount;
  o.database = "app.db";
  o.poll_interval = 5ms;
  o.read_role = [&]() {
    if (started) {
      std::lock_guard lock(mutex);
      readers.insert(std::this_thread::get_id());
      ++reads;
    }
    return litefs::current_role(mount);
  };
  auto monitor = litefs::monitor::create(runner.io.get_executor(), o);
  monitor->start();
  started = true;
  // Reads asked for from the io_context's thread, and the fast polls of a waiter.
  boost::asio::post(runner.io, [monitor] { monitor->poll_now(); });
  auto waiting = monitor->async_wait_position(2, std::chrono::steady_clock::now() + 10s,
                                              boost::asio::use_future);
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (reads < 20 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  REQUIRE(reads >= 20);
  write_file(mount / "app.db-pos", "0000000000000002/000000000000002a\n");
  REQUIRE(waiting.wait_for(5s) == std::future_status::ready);
  CHECK(waiting.get().txid == 2);
  monitor->stop();
  std::lock_guard lock(mutex);
  CHECK(readers.count(runner.id()) == 0);
  CHECK(readers.count(std::this_thread::get_id()) == 0);
  CHECK(readers.size() == 1);  // one polling thread
}

TEST_CASE("run_on_polling_thread runs jobs on the monitor's thread, in order, between polls, and none after "
          "stop()") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  lay_out_primary(mount, 1);
  io_thread runner;
  litefs::monitor_options o;
  o.mount = mount;
  o.database = "app.db";
  o.poll_interval = 60s;  // jobs do not wait for a poll
  auto monitor = litefs::monitor::create(runner.io.get_executor(), o);
  CHECK_FALSE(monitor->run_on_polling_thread([] {}));  // not started: no thread to run it
  monitor->start();
  std::mutex mutex;
  std::vector<int> order;
  std::set<std::thread::id> threads;
  std::promise<void> last;
  for (int i = 0; i < 5; ++i) {
    REQUIRE(monitor->run_on_polling_thread([&, i] {
      {
        std::lock_guard lock(mutex);
        order.push_back(i);
        threads.insert(std::this_thread::get_id());
      }
      if (i == 1) throw std::runtime_error("swallowed");  // the thread goes on
      if (i == 4) last.set_value();
    }));
  }
  REQUIRE(last.get_future().wait_for(5s) == std::future_status::ready);
  monitor->stop();
  CHECK_FALSE(monitor->run_on_polling_thread([] {}));
  std::lock_guard lock(mutex);
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
  REQUIRE(threads.size() == 1);
  CHECK(*threads.begin() != runner.id());
  CHECK(*threads.begin() != std::this_thread::get_id());
}

TEST_CASE("a job stuck in a hung LiteFS blocks neither the io_context nor stop()") {
  fwd_test::temp_dir tmp;
  const fs::path mount = tmp.path() / "litefs";
  const fs::path hung_dir = tmp.path() / "hung";
  lay_out_primary(mount, 5);
  io_thread runner;
  unanswered_fuse_mount hung(hung_dir);
  if (!hung.ok()) {
    WARN(hung.why() << ": the hung-LiteFS case needs root and /dev/fuse");
    return;
  }
  litefs::monitor_options o;
  o.mount = mount;
  o.database = "app.db";
  o.poll_interval = 60s;
  auto monitor = litefs::monitor::create(runner.io.get_executor(), o);
  monitor->start();
  std::promise<void> entered;
  std::promise<int> ended;
  REQUIRE(monitor->run_on_polling_thread([&, hung_dir] {
    entered.set_value();
    struct stat st {};
    ended.set_value(::stat((hung_dir / "app.db").c_str(), &st) == 0 ? 0 : errno);  // blocks in FUSE
  }));
  REQUIRE(entered.get_future().wait_for(5s) == std::future_status::ready);
  auto result = ended.get_future();
  CHECK(result.wait_for(100ms) == std::future_status::timeout);  // still in the mount

  boost::asio::steady_timer timer(runner.io, 50ms);
  auto fired = timer.async_wait(boost::asio::use_future);
  const bool timer_fired = fired.wait_for(3s) == std::future_status::ready;
  if (!timer_fired) hung.answer();
  REQUIRE(timer_fired);
  CHECK(monitor->run_on_polling_thread([] {}));  // queued behind the stuck one, returns at once

  hung.answer();
  REQUIRE(result.wait_for(5s) == std::future_status::ready);
  CHECK(result.get() == ENOTCONN);
  const auto stopping = std::chrono::steady_clock::now();
  monitor->stop();
  CHECK(std::chrono::steady_clock::now() - stopping < 500ms);
}

namespace {
bool mounted_at(const fs::path& dir) {
  std::ifstream mounts("/proc/mounts");
  std::string line;
  const std::string wanted = " " + dir.string() + " ";
  while (std::getline(mounts, line))
    if (line.find(wanted) != std::string::npos) return true;
  return false;
}
}  // namespace

TEST_CASE("a hung mount left by a test process that died is removed by the next one") {
  fwd_test::temp_dir tmp;
  const fs::path left = tmp.path() / "left";
  // A child mounts and dies without its destructors, as a killed or aborted test does.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto* mount = new unanswered_fuse_mount(left);  // never destroyed
    ::_exit(mount->ok() ? 0 : 3);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 3) {
    WARN("SKIPPED: cannot mount FUSE here");
    return;
  }
  REQUIRE(mounted_at(left));

  unanswered_fuse_mount next(tmp.path() / "next");
  REQUIRE(next.ok());
  CHECK_FALSE(mounted_at(left));
}
