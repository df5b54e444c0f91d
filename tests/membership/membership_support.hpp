#pragma once

// What the membership tests share: an io_context thread, a recorder of hook calls that
// tests wait on with a bound, and options for polling a dnsmasq quickly.

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>
#include <chrono>
#include <condition_variable>
#include <future>
#include <fwd/cluster/membership.hpp>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "dnsmasq.hpp"

namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;
using asio::ip::make_address;
using asio::ip::tcp;

constexpr auto bound = 10s;  // no event here should take longer

// Starts an operation with a callback and waits, with the bound, for its
// (error_code, value); throws if it does not complete in time.
template <class T, class Start>
std::tuple<boost::system::error_code, T> wait_result(Start start) {
  auto promise = std::make_shared<std::promise<std::tuple<boost::system::error_code, T>>>();
  auto future = promise->get_future();
  start([promise](boost::system::error_code ec, T value) {
    promise->set_value({ec, std::move(value)});
  });
  if (future.wait_for(bound) != std::future_status::ready) {
    throw std::runtime_error("the operation did not complete within the bound");
  }
  return future.get();
}

inline std::tuple<boost::system::error_code, std::vector<fwd::member>> resolve_once(
    fwd::membership& members) {
  return wait_result<std::vector<fwd::member>>(
      [&](auto handler) { members.async_resolve_once(std::move(handler)); });
}

// An io_context run by one background thread for the test's duration.
struct io_thread {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::thread thread{[this] { io.run(); }};
  ~io_thread() {
    work.reset();
    thread.join();
  }
};

// Records what the hooks report, and lets the test wait on it with a bound.
struct recorder {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<fwd::membership_event> events;
  std::vector<std::pair<boost::system::error_code, std::string>> errors;
  std::size_t errors_at_last_left = 0;

  fwd::membership_hooks hooks() {
    fwd::membership_hooks h;
    h.on_joined = [this](const fwd::member& m) { add({fwd::membership_event::kind::joined, m}); };
    h.on_left = [this](const fwd::member& m) {
      {
        std::lock_guard lock(mutex);
        errors_at_last_left = errors.size();
      }
      add({fwd::membership_event::kind::left, m});
    };
    h.on_resolve_error = [this](const boost::system::error_code& ec, std::string_view message) {
      std::lock_guard lock(mutex);
      errors.emplace_back(ec, std::string(message));
      changed.notify_all();
    };
    return h;
  }

  void add(fwd::membership_event event) {
    std::lock_guard lock(mutex);
    events.push_back(std::move(event));
    changed.notify_all();
  }

  template <class Predicate>
  bool wait(Predicate predicate, std::chrono::milliseconds within = bound) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, within, [&] { return predicate(*this); });
  }

  bool saw(fwd::membership_event::kind what, const tcp::endpoint& endpoint) const {
    return std::any_of(events.begin(), events.end(),
                       [&](const auto& e) { return e.what == what && e.who.endpoint == endpoint; });
  }
  std::size_t count(fwd::membership_event::kind what) const {
    return static_cast<std::size_t>(
        std::count_if(events.begin(), events.end(), [&](const auto& e) { return e.what == what; }));
  }
};

inline tcp::endpoint ep(const char* address, std::uint16_t port) { return {make_address(address), port}; }

const auto joined = fwd::membership_event::kind::joined;
const auto left = fwd::membership_event::kind::left;

// A DNS server that never answers: a bound UDP socket nobody reads. (A stopped server
// does not do: newer c-ares sees the ICMP "port unreachable" and fails at once.)
struct silent_dns_server {
  asio::io_context io;
  asio::ip::udp::socket socket{io, asio::ip::udp::endpoint(make_address("127.0.0.1"), 0)};
  std::string server() const {
    return "127.0.0.1:" + std::to_string(socket.local_endpoint().port());
  }
};

template <class Server>
fwd::membership_options dns_options(const Server& dns, std::vector<fwd::dns_source> sources) {
  fwd::membership_options options;
  options.dns = std::move(sources);
  options.dns_servers = {dns.server()};
  options.poll_interval = 50ms;
  options.query_timeout = 200ms;
  options.query_tries = 1;
  options.remove_after_polls = 3;
  return options;
}

inline std::vector<tcp::endpoint> endpoints(const std::vector<fwd::member>& members) {
  std::vector<tcp::endpoint> out;
  for (const auto& m : members) out.push_back(m.endpoint);
  return out;
}

}  // namespace
