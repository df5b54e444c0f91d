#include <fwd/write/forward_options.hpp>

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

namespace {

std::uint64_t time_prefix(const fwd::request_id& id) {
  std::uint64_t ms = 0;
  for (std::size_t i = 0; i < 6; ++i) ms = (ms << 8) | id[i];
  return ms;
}

std::uint64_t now_ms() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace

TEST_CASE("request ids drawn after fork() differ between the parent and the child") {
  // The calling thread's generator is in use before the fork, as in a server that forks
  // workers after it has made calls.
  (void)fwd::make_request_id();
  constexpr int count = 8;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(fds[0]);
    for (int i = 0; i < count; ++i) {
      const fwd::request_id id = fwd::make_request_id();
      if (::write(fds[1], id.data(), id.size()) != static_cast<ssize_t>(id.size())) ::_exit(2);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::vector<fwd::request_id> parent;
  for (int i = 0; i < count; ++i) parent.push_back(fwd::make_request_id());
  std::vector<fwd::request_id> children;
  fwd::request_id id{};
  std::size_t got = 0;
  for (;;) {
    const ssize_t n = ::read(fds[0], id.data() + got, id.size() - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
    if (got == id.size()) {
      children.push_back(id);
      got = 0;
    }
  }
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(children.size() == static_cast<std::size_t>(count));
  for (const auto& c : children) {
    for (const auto& p : parent) {
      // The time prefix may match; the 80 random bits must not.
      CHECK(std::memcmp(c.data() + 6, p.data() + 6, 10) != 0);
    }
  }
}

TEST_CASE("request ids are unique and ordered by their millisecond time prefix") {
  constexpr std::size_t count = 200'000;
  const std::uint64_t before = now_ms();
  std::vector<fwd::request_id> ids;
  ids.reserve(count);
  for (std::size_t i = 0; i < count; ++i) ids.push_back(fwd::make_request_id());
  const std::uint64_t after = now_ms();

  std::set<fwd::request_id> distinct(ids.begin(), ids.end());
  CHECK(distinct.size() == count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t t = time_prefix(ids[i]);
    REQUIRE(t >= before);
    REQUIRE(t <= after);
    if (i > 0) REQUIRE(time_prefix(ids[i - 1]) <= t);
  }
  // An id drawn a few milliseconds later sorts after every earlier one (bytewise, as the
  // dedup table's BLOB key compares).
  const auto wait_until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (now_ms() <= after + 1 && std::chrono::steady_clock::now() < wait_until) {
  }
  const fwd::request_id later = fwd::make_request_id();
  CHECK(std::all_of(ids.begin(), ids.end(), [&](const fwd::request_id& id) { return id < later; }));
}

TEST_CASE("request ids from different threads do not collide") {
  constexpr std::size_t per_thread = 20'000;
  std::vector<std::vector<fwd::request_id>> drawn(4);
  std::vector<std::thread> threads;
  for (auto& out : drawn) {
    threads.emplace_back([&out] {
      for (std::size_t i = 0; i < per_thread; ++i) out.push_back(fwd::make_request_id());
    });
  }
  for (auto& t : threads) t.join();
  std::set<fwd::request_id> distinct;
  for (const auto& out : drawn) distinct.insert(out.begin(), out.end());
  CHECK(distinct.size() == per_thread * drawn.size());
}
