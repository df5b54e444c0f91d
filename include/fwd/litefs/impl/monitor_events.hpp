#pragma once

// litefs::monitor following LiteFS's `/events` stream: newline-delimited JSON objects in
// an HTTP response that never ends. A `tx` event of the monitored database carries its
// new position (TXID and checksum, the values `<db>-pos` shows once LiteFS sends the
// event): it is published as is, with no FUSE syscall, and wakes the waiters it satisfies.
// Every other event (init, primaryChange, anything unknown or unreadable) makes the
// polling thread re-read the mount at once (its files are the truth for the role); a tx
// event of another database changes nothing. Runs on the monitor's strand (network I/O
// only: no FUSE syscall here).

#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <fwd/litefs/detail/event_line.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/telemetry.hpp>

namespace fwd::litefs {

inline void monitor::connect_events() {
  if (stopped_) return;
  boost::system::error_code ignored;
  events_socket_.close(ignored);
  events_socket_ = boost::asio::ip::tcp::socket(strand_);
  events_socket_.async_connect(*poller_->options().http, [self = shared_from_this()](boost::system::error_code ec) {
    if (ec) return self->events_broke();
    self->events_request_.method(boost::beast::http::verb::get);
    self->events_request_.target("/events");
    self->events_request_.version(11);
    self->events_request_.set(boost::beast::http::field::host, "litefs");
    boost::beast::http::async_write(self->events_socket_, self->events_request_,
                                    [self](boost::system::error_code e, std::size_t) {
                                      if (e) return self->events_broke();
                                      self->events_parser_.emplace();
                                      self->events_parser_->body_limit(boost::none);
                                      self->events_buffer_.clear();
                                      self->events_line_.clear();
                                      self->read_events_header();
                                    });
  });
}

inline void monitor::read_events_header() {
  boost::beast::http::async_read_header(
      events_socket_, events_buffer_, *events_parser_,
      [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
        if (ec || self->events_parser_->get().result() != boost::beast::http::status::ok) {
          return self->events_broke();
        }
        self->poller_->events_connected.store(true);
        self->events_connects_.fetch_add(1);
        // A (re)connected stream may have missed changes: read the mount now.
        self->poller_->request();
        self->read_events_body();
      });
}

inline void monitor::read_events_body() {
  auto& body = events_parser_->get().body();
  body.data = events_chunk_.data();
  body.size = events_chunk_.size();
  boost::beast::http::async_read_some(
      events_socket_, events_buffer_, *events_parser_,
      [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
        if (ec == boost::beast::http::error::need_buffer) ec = {};
        const std::size_t got = self->events_chunk_.size() - self->events_parser_->get().body().size;
        self->on_event_bytes(std::string_view(self->events_chunk_.data(), got));
        if (ec || self->events_parser_->is_done()) return self->events_broke();
        self->read_events_body();
      });
}

inline void monitor::on_event_bytes(std::string_view bytes) {
  bool poll = false;
  std::optional<position> announced;
  auto take_line = [&] {
    if (events_line_.empty()) return;
    events_seen_.fetch_add(1);
    if (events_line_.size() >= max_event_line) {
      poll = true;  // cut: unreadable
      return;
    }
    const detail::event_line e = detail::parse_event_line(events_line_, poller_->options().database);
    if (e.kind == detail::event_kind::tx) {
      if (!announced || e.pos.txid > announced->txid) announced = e.pos;
      // Every transaction's checksum, also those a later one in this chunk hides.
      history_.record(e.pos);
    } else if (e.kind == detail::event_kind::other) {
      poll = true;
      // In the stream's order: tx events after an init or primaryChange may come from
      // another history than those before it.
      history_.forget(state()->pos);
    }
  };
  for (char c : bytes) {
    if (c == '\n') {
      take_line();
      events_line_.clear();
    } else if (events_line_.size() < max_event_line) {
      events_line_ += c;
    }
  }
  if (announced) {
    if (auto published = poller_->publish_position(*announced)) {
      fwd::detail::invoke_hook(poller_->options().on_change, *published);
      wake_waiters();
    }
  }
  if (poll) poller_->request();
}

inline void monitor::events_broke() {
  poller_->events_connected.store(false);
  boost::system::error_code ignored;
  events_socket_.close(ignored);
  if (stopped_) return;
  events_timer_.expires_after(poller_->options().events_reconnect);
  events_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (!ec) self->connect_events();
  });
}

}  // namespace fwd::litefs
