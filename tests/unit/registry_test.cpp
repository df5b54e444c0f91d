// Specification of fwd::rpc::registry: how a node serves procedures. Every call runs on
// a real io_context; every reply is checked for its error, its payload and for being
// delivered exactly once, never inside dispatch().

#include <fwd/rpc/registry.hpp>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace shop {
struct quota_exceeded : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace shop

namespace {

using namespace std::chrono_literals;
using fwd::rpc::call_context;
using fwd::rpc::incoming_call;
using fwd::rpc::registry;
using fwd::rpc::result_handler;

inline constexpr fwd::procedure<std::int64_t(std::string, std::int64_t)> add_tag{"blog.add_tag"};
inline constexpr fwd::procedure<void(std::string)> log_line{"blog.log"};
inline constexpr fwd::procedure<std::vector<std::string>(std::vector<std::string>)> sort_words{"blog.sort"};

// What one dispatch produced.
struct outcome {
  int replies = 0;
  boost::system::error_code ec;
  std::string payload;
};

// A reply handler that records into `out`.
auto record(outcome& out) {
  return [&out](boost::system::error_code ec, std::string payload) {
    ++out.replies;
    out.ec = ec;
    out.payload = std::move(payload);
  };
}

template <class Proc, class... Given>
incoming_call call_of(const Proc& proc, const std::string& arguments) {
  incoming_call call;
  call.procedure = proc.name();
  call.signature = proc.signature();
  call.arguments = arguments;
  for (std::uint8_t i = 0; i < 16; ++i) call.request_id[i] = static_cast<std::uint8_t>(i * 7 + 1);
  return call;
}

// Dispatches one call on a fresh io_context and runs it to completion.
template <class Proc, class... Given>
outcome run_call(const registry& procedures, const Proc& proc, Given&&... given) {
  boost::asio::io_context io;
  const std::string arguments = fwd::detail::encode_arguments(proc, std::forward<Given>(given)...);
  outcome out;
  procedures.dispatch(call_of(proc, arguments), io.get_executor(), record(out));
  REQUIRE(out.replies == 0);  // never inside dispatch
  io.run();
  return out;
}

std::int64_t result_of(const outcome& out) {
  REQUIRE(out.replies == 1);
  INFO(out.payload);
  REQUIRE_FALSE(out.ec);
  boost::system::error_code ec;
  const auto value = fwd::detail::decode_result<std::int64_t>(out.payload, ec);
  REQUIRE_FALSE(ec);
  return value;
}

}  // namespace

TEST_CASE("a synchronous function serves a procedure on the executor, never inside dispatch") {
  registry procedures;
  std::thread::id ran_on;
  procedures.define(add_tag, [&](const std::string& label, std::int64_t base) {
    ran_on = std::this_thread::get_id();
    return base + static_cast<std::int64_t>(label.size());
  });
  boost::asio::io_context io;
  const std::string arguments = fwd::detail::encode_arguments(add_tag, "hello", 100);
  outcome out;
  procedures.dispatch(call_of(add_tag, arguments), io.get_executor(), record(out));
  CHECK(ran_on == std::thread::id{});  // posted, not run inside dispatch
  CHECK(out.replies == 0);
  std::thread::id runner_id;
  std::thread runner([&] {
    runner_id = std::this_thread::get_id();
    io.run();
  });
  runner.join();
  CHECK(result_of(out) == 105);
  CHECK(ran_on == runner_id);  // the thread that ran the executor
}

TEST_CASE("a synchronous function may take the call context first") {
  registry procedures;
  std::optional<call_context> seen;
  procedures.define(add_tag, [&](const call_context& context, std::string label, std::int64_t base) {
    seen = context;
    return base * 2 + static_cast<std::int64_t>(label.size());
  });
  boost::asio::io_context io;
  const std::string arguments = fwd::detail::encode_arguments(add_tag, "ab", 20);
  incoming_call call = call_of(add_tag, arguments);
  call.deadline = std::chrono::steady_clock::now() + 1h;
  outcome out;
  procedures.dispatch(call, io.get_executor(), record(out));
  io.run();
  CHECK(result_of(out) == 42);
  REQUIRE(seen);
  CHECK(seen->request_id == call.request_id);
  CHECK(seen->deadline == call.deadline);
}

TEST_CASE("an asynchronous function completes its handler later, with a value or an error") {
  registry procedures;
  procedures.define(add_tag, [](std::string label, std::int64_t base, result_handler<std::int64_t> handler) {
    // Completes from a later turn of the executor, as a real asynchronous operation would.
    boost::asio::post(handler.get_executor(), [handler, n = base + static_cast<std::int64_t>(label.size())] {
      handler({}, n);
    });
  });
  CHECK(result_of(run_call(procedures, add_tag, "abc", 1)) == 4);

  registry failing;
  failing.define(add_tag, [](const call_context&, std::string, std::int64_t, result_handler<std::int64_t> handler) {
    handler(make_error_code(fwd::errc::not_primary), 0);
  });
  const outcome out = run_call(failing, add_tag, "x", 1);
  CHECK(out.replies == 1);
  CHECK(out.ec == fwd::errc::not_primary);
  CHECK(out.payload == make_error_code(fwd::errc::not_primary).message());
}

TEST_CASE("an asynchronous function may complete from another thread") {
  registry procedures;
  std::thread worker;
  procedures.define(add_tag, [&worker](std::string, std::int64_t base, result_handler<std::int64_t> handler) {
    worker = std::thread([handler, base] { handler({}, base + 1); });
  });
  boost::asio::io_context io;
  auto guard = boost::asio::make_work_guard(io);
  const std::string arguments = fwd::detail::encode_arguments(add_tag, "", 41);
  outcome out;
  procedures.dispatch(call_of(add_tag, arguments), io.get_executor(),
                      [&](boost::system::error_code ec, std::string payload) {
                        record(out)(ec, std::move(payload));
                        guard.reset();
                      });
  io.run();
  worker.join();
  CHECK(result_of(out) == 42);
}

TEST_CASE("a coroutine serves a procedure, with or without the call context") {
  registry procedures;
  procedures.define(add_tag, [](std::string label, std::int64_t base) -> boost::asio::awaitable<std::int64_t> {
    boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, 1ms);
    co_await timer.async_wait(boost::asio::use_awaitable);
    co_return base + static_cast<std::int64_t>(label.size());
  });
  std::vector<std::string> seen_sorted;
  procedures.define(sort_words,
                    [](const call_context& context, const std::vector<std::string>& words)
                        -> boost::asio::awaitable<std::vector<std::string>> {
                      // `words` is a reference: it must stay valid across the suspension.
                      co_await boost::asio::post(co_await boost::asio::this_coro::executor,
                                                 boost::asio::use_awaitable);
                      std::vector<std::string> sorted = words;
                      std::sort(sorted.begin(), sorted.end());
                      sorted.push_back(std::to_string(context.request_id[1]));
                      co_return sorted;
                    });
  CHECK(result_of(run_call(procedures, add_tag, "four", 38)) == 42);

  const outcome out = run_call(procedures, sort_words, std::vector<std::string>{"b", "c", "a"});
  REQUIRE(out.replies == 1);
  REQUIRE_FALSE(out.ec);
  boost::system::error_code ec;
  CHECK(fwd::detail::decode_result<std::vector<std::string>>(out.payload, ec) ==
        std::vector<std::string>{"a", "b", "c", "8"});
}

TEST_CASE("void procedures reply with an empty payload in every style") {
  std::vector<std::string> lines;
  registry sync_style;
  sync_style.define(log_line, [&](std::string line) { lines.push_back(line); });
  registry async_style;
  async_style.define(log_line, [&](std::string line, result_handler<void> done) {
    lines.push_back(line);
    done({});
  });
  registry coroutine_style;
  coroutine_style.define(log_line, [&](const call_context&, std::string line) -> boost::asio::awaitable<void> {
    lines.push_back(line);
    co_return;
  });
  for (const registry* r : {&sync_style, &async_style, &coroutine_style}) {
    const outcome out = run_call(*r, log_line, "line");
    CHECK(out.replies == 1);
    CHECK_FALSE(out.ec);
    CHECK(out.payload.empty());
  }
  CHECK(lines == std::vector<std::string>{"line", "line", "line"});
}

TEST_CASE("an unknown procedure is answered with unknown_procedure naming it") {
  registry procedures;
  procedures.define(log_line, [](std::string) {});
  const fwd::procedure<void(std::string)> other{"blog.missing"};
  const outcome out = run_call(procedures, other, "x");
  CHECK(out.replies == 1);
  CHECK(out.ec == fwd::errc::unknown_procedure);
  CHECK(out.payload.find("'blog.missing'") != std::string::npos);
}

TEST_CASE("a different signature is answered with signature_mismatch and nothing is decoded or run") {
  registry procedures;
  int runs = 0;
  procedures.define(add_tag, [&](std::string, std::int64_t) -> std::int64_t { return ++runs; });
  // The caller declares blog.add_tag with another parameter type.
  const fwd::procedure<std::int64_t(std::string, std::int32_t)> stale{"blog.add_tag"};
  const outcome out = run_call(procedures, stale, "x", 1);
  CHECK(out.replies == 1);
  CHECK(out.ec == fwd::errc::signature_mismatch);
  CHECK(out.payload.find("i64(string,i64)") != std::string::npos);
  CHECK(runs == 0);
}

TEST_CASE("undecodable arguments are answered with protocol_error and nothing runs") {
  registry procedures;
  int runs = 0;
  procedures.define(add_tag, [&](std::string, std::int64_t) -> std::int64_t { return ++runs; });
  const std::string valid = fwd::detail::encode_arguments(add_tag, "label", 5);
  for (const std::string& bad : {std::string(), valid.substr(0, valid.size() - 1), valid + "x",
                                 std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8)}) {
    boost::asio::io_context io;
    outcome out;
    procedures.dispatch(call_of(add_tag, bad), io.get_executor(), record(out));
    io.run();
    CHECK(out.replies == 1);
    CHECK(out.ec == fwd::errc::protocol_error);
    CHECK(out.payload.find("could not be decoded") != std::string::npos);
  }
  CHECK(runs == 0);
}

TEST_CASE("an exception is answered with remote_failure carrying its type and message") {
  registry sync_style;
  sync_style.define(add_tag, [](std::string label, std::int64_t) -> std::int64_t {
    throw shop::quota_exceeded("too many tags: " + label);
  });
  outcome out = run_call(sync_style, add_tag, "x", 1);
  CHECK(out.replies == 1);
  CHECK(out.ec == fwd::errc::remote_failure);
  CHECK(out.payload == "shop::quota_exceeded: too many tags: x");

  registry async_style;
  async_style.define(add_tag, [](std::string, std::int64_t, result_handler<std::int64_t>) {
    throw std::invalid_argument("bad label");
  });
  out = run_call(async_style, add_tag, "x", 1);
  CHECK(out.replies == 1);
  CHECK(out.ec == fwd::errc::remote_failure);
  CHECK(out.payload == "std::invalid_argument: bad label");

  registry coroutine_style;
  coroutine_style.define(add_tag, [](std::string, std::int64_t) -> boost::asio::awaitable<std::int64_t> {
    co_await boost::asio::post(co_await boost::asio::this_coro::executor, boost::asio::use_awaitable);
    throw std::out_of_range("no such post");
  });
  out = run_call(coroutine_style, add_tag, "x", 1);
  CHECK(out.replies == 1);
  CHECK(out.ec == fwd::errc::remote_failure);
  CHECK(out.payload == "std::out_of_range: no such post");

  registry odd;
  odd.define(log_line, [](std::string) { throw 42; });
  out = run_call(odd, log_line, "x");
  CHECK(out.ec == fwd::errc::remote_failure);
  CHECK(out.payload.find("not derived from std::exception") != std::string::npos);
}

TEST_CASE("defining a name twice throws bad_argument") {
  registry procedures;
  procedures.define(add_tag, [](std::string, std::int64_t) -> std::int64_t { return 0; });
  const fwd::procedure<void()> same_name{"blog.add_tag"};
  try {
    procedures.define(same_name, [] {});
    FAIL("a second definition was accepted");
  } catch (const fwd::error& e) {
    CHECK(e.code() == fwd::errc::bad_argument);
    CHECK(std::string(e.what()).find("blog.add_tag") != std::string::npos);
  }
  CHECK_THROWS_AS(procedures.define_raw("blog.add_tag", 1, [](auto&&...) {}), fwd::error);
  CHECK(procedures.names() == std::vector<std::string>{"blog.add_tag"});
}

TEST_CASE("the reply is called exactly once, however the procedure misbehaves") {
  SECTION("an asynchronous handler completed twice replies once, with the first result") {
    registry procedures;
    procedures.define(add_tag, [](std::string, std::int64_t, result_handler<std::int64_t> handler) {
      handler({}, 1);
      handler({}, 2);
      handler(make_error_code(fwd::errc::timeout), 3);
    });
    CHECK(result_of(run_call(procedures, add_tag, "x", 0)) == 1);
  }
  SECTION("an asynchronous handler dropped without a call replies remote_failure") {
    registry procedures;
    procedures.define(add_tag, [](std::string, std::int64_t, result_handler<std::int64_t>) {});
    const outcome out = run_call(procedures, add_tag, "x", 0);
    CHECK(out.replies == 1);
    CHECK(out.ec == fwd::errc::remote_failure);
    CHECK(out.payload.find("without being called") != std::string::npos);
  }
  SECTION("an asynchronous function that completes and then throws replies once") {
    registry procedures;
    procedures.define(add_tag, [](std::string, std::int64_t, result_handler<std::int64_t> handler) {
      handler({}, 7);
      throw std::runtime_error("after the fact");
    });
    CHECK(result_of(run_call(procedures, add_tag, "x", 0)) == 7);
  }
  SECTION("a raw handler that replies and throws, or never replies, answers once") {
    registry procedures;
    procedures.define_raw("fwd.twice", 99, [](const incoming_call&, boost::asio::any_io_executor, fwd::rpc::reply_handler reply) {
      std::move(reply)(boost::system::error_code{}, std::string("first"));
      throw std::runtime_error("late");
    });
    procedures.define_raw("fwd.never", 99, [](const incoming_call&, boost::asio::any_io_executor, fwd::rpc::reply_handler) {});
    for (const char* name : {"fwd.twice", "fwd.never"}) {
      boost::asio::io_context io;
      incoming_call call;
      call.procedure = name;
      call.signature = 99;
      outcome out;
      procedures.dispatch(call, io.get_executor(), record(out));
      io.run();
      CHECK(out.replies == 1);
      if (std::string_view(name) == "fwd.twice") {
        CHECK_FALSE(out.ec);
        CHECK(out.payload == "first");
      } else {
        CHECK(out.ec == fwd::errc::remote_failure);
      }
    }
  }
}

TEST_CASE("a call whose deadline has passed is answered with timeout and does not run") {
  registry procedures;
  int runs = 0;
  procedures.define(log_line, [&](std::string) { ++runs; });
  boost::asio::io_context io;
  const std::string arguments = fwd::detail::encode_arguments(log_line, "late");
  incoming_call call = call_of(log_line, arguments);
  call.deadline = std::chrono::steady_clock::now() - 1ms;
  outcome out;
  procedures.dispatch(call, io.get_executor(), record(out));
  io.run();
  CHECK(out.replies == 1);
  CHECK(out.ec == fwd::errc::timeout);
  CHECK(runs == 0);
}

TEST_CASE("the reply runs on its own associated executor") {
  registry procedures;
  procedures.define(log_line, [](std::string) {});
  boost::asio::io_context io;
  auto strand = boost::asio::make_strand(io);
  const std::string arguments = fwd::detail::encode_arguments(log_line, "x");
  bool on_strand = false;
  int replies = 0;
  procedures.dispatch(call_of(log_line, arguments), io.get_executor(),
                      boost::asio::bind_executor(strand, [&](boost::system::error_code ec, std::string) {
                        CHECK_FALSE(ec);
                        ++replies;
                        on_strand = strand.running_in_this_thread();
                      }));
  io.run();
  CHECK(replies == 1);
  CHECK(on_strand);
}

TEST_CASE("raw procedures receive the call's bytes and metadata") {
  registry procedures;
  std::string seen_arguments;
  std::array<std::uint8_t, 16> seen_id{};
  procedures.define_raw("fwd.echo", 0x1234, [&](const incoming_call& call, boost::asio::any_io_executor,
                                                fwd::rpc::reply_handler reply) {
    seen_arguments = std::string(call.arguments);
    seen_id = call.request_id;
    std::move(reply)(boost::system::error_code{}, std::string(call.arguments) + "!");
  });
  CHECK(procedures.contains("fwd.echo"));
  CHECK_FALSE(procedures.contains("fwd.echo2"));
  CHECK(procedures.signature_of("fwd.echo") == 0x1234u);
  CHECK_FALSE(procedures.signature_of("nope"));

  boost::asio::io_context io;
  std::string bytes = "raw bytes";
  incoming_call call;
  call.procedure = "fwd.echo";
  call.signature = 0x1234;
  call.arguments = bytes;
  call.request_id[15] = 9;
  outcome out;
  procedures.dispatch(call, io.get_executor(), record(out));
  bytes = "overwritten";  // the registry keeps its own copy
  io.run();
  CHECK(out.payload == "raw bytes!");
  CHECK(seen_arguments == "raw bytes");
  CHECK(seen_id[15] == 9);
}

TEST_CASE("the registry lists the names it serves") {
  registry procedures;
  CHECK(procedures.names().empty());
  procedures.define(log_line, [](std::string) {});
  procedures.define(add_tag, [](std::string, std::int64_t) -> std::int64_t { return 0; });
  CHECK(procedures.names() == std::vector<std::string>{"blog.add_tag", "blog.log"});
  CHECK(procedures.signature_of("blog.log") == log_line.signature());
}
