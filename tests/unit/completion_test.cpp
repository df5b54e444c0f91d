// fwd::detail::pending_completion: the one way fwd completes an asynchronous operation.

#include <atomic>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/system/error_code.hpp>
#include <catch2/catch.hpp>
#include <fwd/detail/completion.hpp>
#include <string>
#include <thread>

namespace asio = boost::asio;
using completion = fwd::detail::pending_completion<void(boost::system::error_code, std::string)>;

TEST_CASE("A pending completion tracks work until it completes, and never runs inline") {
  asio::io_context io;
  int calls = 0;
  std::string got;
  completion c(
      [&](boost::system::error_code ec, std::string value) {
        CHECK_FALSE(ec);
        got = std::move(value);
        ++calls;
      },
      io.get_executor());
  CHECK(static_cast<bool>(c));
  // Nothing is ready, but the pending operation is outstanding work: run() would wait.
  CHECK(io.poll() == 0);
  CHECK_FALSE(io.stopped());

  CHECK(c.post({}, "result"));
  CHECK(calls == 0);  // posted, not run inside the completing call
  CHECK_FALSE(static_cast<bool>(c));
  CHECK_FALSE(c.post({}, "again"));  // the first completion wins
  io.run();
  CHECK(calls == 1);
  CHECK(got == "result");
}

TEST_CASE("A pending completion destroyed without completing releases its work") {
  asio::io_context io;
  bool called = false;
  {
    completion c([&](boost::system::error_code, std::string) { called = true; }, io.get_executor());
    CHECK(io.poll() == 0);
    CHECK_FALSE(io.stopped());
  }
  io.run();  // returns: no work left
  CHECK(io.stopped());
  CHECK_FALSE(called);
}

TEST_CASE("A pending completion runs on the handler's associated executor") {
  asio::io_context io;
  auto strand = asio::make_strand(io);
  bool on_strand = false;
  completion c(asio::bind_executor(strand,
                                   [&](boost::system::error_code, std::string) {
                                     on_strand = strand.running_in_this_thread();
                                   }),
               io.get_executor());
  c.dispatch({}, {});
  io.run();
  CHECK(on_strand);
}

TEST_CASE("Racing completions complete a pending completion exactly once") {
  for (int round = 0; round < 200; ++round) {
    asio::io_context io;
    std::atomic<int> calls{0};
    completion c([&](boost::system::error_code, std::string) { ++calls; }, io.get_executor());
    std::atomic<int> won{0};
    std::thread a([&] { won += c.post({}, "a") ? 1 : 0; });
    std::thread b([&] { won += c.post({}, "b") ? 1 : 0; });
    a.join();
    b.join();
    io.run();
    REQUIRE(won == 1);
    REQUIRE(calls == 1);
  }
}

TEST_CASE("A pending completion clears the handler's cancellation slot before it runs") {
  asio::io_context io;
  asio::cancellation_signal signal;
  bool called = false;
  completion c(asio::bind_cancellation_slot(
                   signal.slot(), [&](boost::system::error_code, std::string) { called = true; }),
               io.get_executor());
  bool cancelled = false;
  c.slot().assign([&](asio::cancellation_type) { cancelled = true; });
  signal.emit(asio::cancellation_type::terminal);
  CHECK(cancelled);
  cancelled = false;
  c.post({}, {});
  io.run();
  CHECK(called);
  signal.emit(asio::cancellation_type::terminal);  // the operation's handler is gone
  CHECK_FALSE(cancelled);
}

TEST_CASE("A pending completion takes an already type-erased handler, and can be moved") {
  asio::io_context io;
  int calls = 0;
  asio::any_completion_handler<void(boost::system::error_code, std::string)> erased(
      [&](boost::system::error_code ec, std::string value) {
        CHECK(ec == asio::error::operation_aborted);
        CHECK(value == "x");
        ++calls;
      });
  completion first(std::move(erased), io.get_executor());
  completion second;
  second = std::move(first);  // Boost 1.81's any_completion_handler move assignment recursed
  CHECK_FALSE(static_cast<bool>(first));
  CHECK(static_cast<bool>(second));
  CHECK(io.poll() == 0);
  CHECK_FALSE(io.stopped());
  second.post(asio::error::operation_aborted, "x");
  CHECK(calls == 0);
  io.run();
  CHECK(calls == 1);
}
