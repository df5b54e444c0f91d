#pragma once

// A user-space TCP proxy that delays every byte it relays (the kernel here has no netem).
// It listens on 0.0.0.0:<listen_port> inside a node's network namespace and relays each
// connection to 127.0.0.1:<target_port> there; what arrives in either direction is sent
// on `delay()` later, in order. The delay can change while connections are open.

#include <array>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <deque>
#include <future>
#include <optional>
#include <memory>
#include <string>
#include <thread>

#include "netns_lab.hpp"

namespace fwd_faults {

class delay_proxy {
 public:
  delay_proxy(const netns_lab& lab, std::size_t node, std::uint16_t listen_port,
              std::uint16_t target_port)
      : target_port_(target_port) {
    std::promise<void> listening;
    auto ready = listening.get_future();
    thread_ = std::thread([this, &lab, node, listen_port, &listening] {
      try {
        lab.enter(node);
        acceptor_.emplace(io_, boost::asio::ip::tcp::endpoint(boost::asio::ip::tcp::v4(), listen_port));
        listening.set_value();
      } catch (...) {
        listening.set_exception(std::current_exception());
        return;
      }
      accept();
      io_.run();
    });
    try {
      ready.get();
    } catch (...) {
      thread_.join();
      throw;
    }
  }
  ~delay_proxy() {
    io_.stop();
    thread_.join();
  }
  delay_proxy(const delay_proxy&) = delete;
  delay_proxy& operator=(const delay_proxy&) = delete;

  void set_delay(std::chrono::milliseconds d) { delay_ms_ = d.count(); }

 private:
  using tcp = boost::asio::ip::tcp;

  struct direction {
    explicit direction(boost::asio::io_context& io) : timer(io) {}
    std::array<char, 16384> buffer{};
    std::deque<std::pair<std::chrono::steady_clock::time_point, std::string>> queue;
    boost::asio::steady_timer timer;
    bool writing = false;
    bool ended = false;
  };

  struct link : std::enable_shared_from_this<link> {
    link(boost::asio::io_context& io, const std::atomic<long>& delay)
        : client(io), server(io), up(io), down(io), delay_ms(delay) {}
    tcp::socket client, server;
    direction up, down;  // up: client -> server
    const std::atomic<long>& delay_ms;

    void start() {
      read(client, server, up);
      read(server, client, down);
    }
    void read(tcp::socket& from, tcp::socket& to, direction& d) {
      from.async_read_some(boost::asio::buffer(d.buffer),
                           [self = shared_from_this(), &from, &to, &d](boost::system::error_code ec, std::size_t n) {
                             if (ec) {
                               d.ended = true;
                               if (!d.writing) self->end(to);
                               return;
                             }
                             d.queue.emplace_back(std::chrono::steady_clock::now() +
                                                      std::chrono::milliseconds(self->delay_ms.load()),
                                                  std::string(d.buffer.data(), n));
                             if (!d.writing) self->write(to, d);
                             self->read(from, to, d);
                           });
    }
    void write(tcp::socket& to, direction& d) {
      if (d.queue.empty()) {
        d.writing = false;
        if (d.ended) end(to);
        return;
      }
      d.writing = true;
      d.timer.expires_at(d.queue.front().first);
      d.timer.async_wait([self = shared_from_this(), &to, &d](boost::system::error_code ec) {
        if (ec) return;
        boost::asio::async_write(to, boost::asio::buffer(d.queue.front().second),
                                 [self, &to, &d](boost::system::error_code ec2, std::size_t) {
                                   if (ec2) {
                                     self->close();
                                     return;
                                   }
                                   d.queue.pop_front();
                                   self->write(to, d);
                                 });
      });
    }
    void end(tcp::socket& to) {
      boost::system::error_code ignored;
      to.shutdown(tcp::socket::shutdown_send, ignored);
      if (up.ended && down.ended) close();
    }
    void close() {
      boost::system::error_code ignored;
      client.close(ignored);
      server.close(ignored);
      up.timer.cancel();
      down.timer.cancel();
    }
  };

  void accept() {
    auto l = std::make_shared<link>(io_, delay_ms_);
    acceptor_->async_accept(l->client, [this, l](boost::system::error_code ec) {
      if (ec) return;
      l->server.async_connect({boost::asio::ip::make_address("127.0.0.1"), target_port_},
                              [l](boost::system::error_code ec2) {
                                if (ec2) {
                                  l->close();
                                  return;
                                }
                                l->start();
                              });
      accept();
    });
  }

  std::uint16_t target_port_;
  std::atomic<long> delay_ms_{0};
  boost::asio::io_context io_;
  std::optional<tcp::acceptor> acceptor_;
  std::thread thread_;
};

}  // namespace fwd_faults
