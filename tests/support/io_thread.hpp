#pragma once

// An io_context run by one background thread for a test's duration: stopped and joined
// when destroyed, whatever work is left.

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <thread>

namespace fwd_test {

struct io_thread {
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread{[this] { io.run(); }};

  std::thread::id id() const { return thread.get_id(); }

  ~io_thread() {
    work.reset();
    io.stop();
    thread.join();
  }
};

}  // namespace fwd_test
