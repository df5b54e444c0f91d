#pragma once

// The bodies of the RPC client's connection: connecting and its handshake, reading
// replies, writing requests, failures and deadlines. Included at the end of
// fwd/rpc/detail/client_connection.hpp.

#include <fwd/rpc/detail/client_connection.hpp>

namespace fwd::rpc::detail {

inline void client_connection::on_submit(std::shared_ptr<pending_call> call) {
  if (shut_down_) {
    call->done = true;
    emit_finished(*call, make_error_code(errc::cancelled));
    call->complete(make_error_code(errc::cancelled), "the client was closed");
    return;
  }
  if (call->frame.size() > state_->options.max_frame_size) {
    call->done = true;
    auto ec = make_error_code(errc::frame_too_large);
    emit_finished(*call, ec);
    call->complete(ec, fmt::format("the request is {} bytes; max_frame_size is {}",
                                   call->frame.size(), state_->options.max_frame_size));
    return;
  }
  call->deadline_entry = deadlines_.emplace(call->deadline, call->stream_id);
  if (call->deadline_entry == deadlines_.begin()) arm_deadline_timer();
  unsent_.push_back(call);
  calls_.emplace(call->stream_id, std::move(call));
  switch (state_now_) {
    case state::ready:
      flush();
      break;
    case state::idle:
      connect();
      break;
    default:
      break;  // sent once the connection is up
  }
}

inline void client_connection::connect() {
  state_now_ = state::connecting;
  const std::uint64_t generation = ++generation_;
  stream_.close();
  stream_ = transport_stream(tcp::socket(strand_));
  connect_timer_.expires_after(state_->options.connect_timeout);
  connect_timer_.async_wait([self = shared_from_this(), generation](boost::system::error_code ec) {
    if (ec || generation != self->generation_) return;
    if (self->state_now_ == state::connecting || self->state_now_ == state::handshaking) {
      self->connect_failed(
          make_error_code(errc::unreachable),
          fmt::format("no connection to {} within the connect timeout", self->peer_name_));
    }
  });
  stream_.socket().async_connect(
      peer_, [self = shared_from_this(), generation](boost::system::error_code ec) {
        if (generation != self->generation_ || self->state_now_ != state::connecting) return;
        if (ec) {
          self->connect_failed(
              make_error_code(errc::unreachable),
              fmt::format("could not connect to {}: {}", self->peer_name_, ec.message()));
          return;
        }
        self->on_connected();
      });
}

inline void client_connection::on_connected() {
  boost::system::error_code ignored;
  stream_.socket().set_option(tcp::no_delay(true), ignored);
  apply_keepalive(stream_.socket(), state_->options.keepalive);
  state_now_ = state::handshaking;
  skip_ = 0;
  if (!state_->tls_context) {
    // Lets flush() write at once without ever blocking (Asio's own operations are
    // unaffected).
    stream_.socket().non_blocking(true, ignored);
    start_handshake();
    return;
  }
  stream_.start_tls(*state_->tls_context);
  stream_.expect_server_name(state_->options.tls->verify_hostname);
  stream_.async_tls_handshake(
      boost::asio::ssl::stream_base::client,
      [self = shared_from_this(), generation = generation_](boost::system::error_code ec) {
        if (generation != self->generation_ || self->state_now_ != state::handshaking) return;
        if (ec) {
          // Nothing was sent; a certificate or TLS mismatch is not
          // fixed by retrying, hence unauthenticated.
          self->connect_failed(make_error_code(errc::unauthenticated),
                               fmt::format("the TLS handshake with {} failed: {}: check "
                                           "both nodes' certificates and CA, and that "
                                           "the server has TLS on",
                                           self->peer_name_, self->stream_.tls_failure_reason(ec)));
          return;
        }
        self->start_handshake();
      });
}

inline void client_connection::connect_failed(boost::system::error_code ec, std::string detail) {
  ++generation_;
  close_socket(ec);
  fwd::detail::emit(state_->options.telemetry, &telemetry::connection_failed,
                    connection_event{peer_name_, ec});
  fail_all(ec, detail, true);
  state_now_ = state::backoff;
  connect_timer_.expires_after(backoff_);
  backoff_ = std::min(backoff_ * 2, state_->options.max_reconnect_backoff);
  connect_timer_.async_wait(
      [self = shared_from_this(), generation = generation_](boost::system::error_code e) {
        if (e || generation != self->generation_ || self->state_now_ != state::backoff) return;
        self->state_now_ = state::idle;
        if (!self->unsent_.empty()) self->connect();
      });
}

inline void client_connection::on_read(boost::system::error_code ec, std::size_t n) {
  if (ec) {
    connection_broke(ec, fmt::format("the connection to {} broke: {}", peer_name_, ec.message()));
    return;
  }
  buffer_.commit(n);
  if (ping_armed_) {
    quiet_since_ = clock::now();
    pinged_ = false;
  }
  wire::frame_view frame;
  const std::uint64_t generation = generation_;
  while (generation == generation_) {
    if (skip_ > 0) {
      if (!skip_buffered()) return;
      if (skip_ > 0) break;
      continue;
    }
    const bool ready = state_now_ == state::ready;
    const std::size_t limit = ready ? state_->options.max_frame_size : wire::max_handshake_frame_size;
    if (!buffer_.next(limit, frame, ec, ready ? wire::tag_size : 0)) {
      if (ec == errc::frame_too_large && state_now_ == state::ready && skip_oversized_reply()) {
        ec = {};
        continue;
      }
      break;
    }
    on_frame(frame);
  }
  if (generation != generation_) return;
  if (ec) {
    connection_broke(
        ec, fmt::format("the server at {} sent bytes that are not fwd's protocol", peer_name_));
    return;
  }
  if (calls_.empty()) buffer_.shrink();
  read();
}

inline void client_connection::on_frame(const wire::frame_view& frame) {
  if (state_now_ == state::handshaking) {
    auto step = handshake_->on_frame(frame);
    if (step.ec) {
      connect_failed(step.ec, step.detail);  // nothing was sent yet
      return;
    }
    if (!step.send.empty()) {
      control_ += step.send;
      flush();
    }
    if (step.done) {
      state_now_ = state::ready;
      session_ = handshake_->take_session();
      handshake_.reset();
      connect_timer_.cancel();
      backoff_ = state_->options.reconnect_backoff;
      fwd::detail::emit(state_->options.telemetry, &telemetry::connection_opened,
                        connection_event{peer_name_, {}, false, session_.protocol()});
      flush();
    }
    return;
  }
  if (!session_.open(frame.bytes, frame.tag)) {
    tampered();
    return;
  }
  if (frame.header.type != wire::frame_type::reply) {
    connection_broke(make_error_code(errc::protocol_error),
                     fmt::format("the server at {} sent an unexpected frame", peer_name_));
    return;
  }
  const auto ec = decode_status(frame.header.aux);
  finish(frame.header.stream_id, ec, std::string(ec ? frame.meta : frame.body));
}

inline bool client_connection::skip_oversized_reply() {
  wire::frame_header h;
  if (wire::decode_header(buffer_.data(), std::numeric_limits<std::size_t>::max(), h) ||
      h.type != wire::frame_type::reply) {
    return false;
  }
  skip_frame_ = wire::frame_size(h);
  skip_ = skip_frame_ + wire::tag_size;
  skip_detail_ = fmt::format("the reply from {} is {} bytes, over max_frame_size ({} bytes): the call ran, "
                             "its result was dropped",
                             peer_name_, skip_frame_, state_->options.max_frame_size);
  skip_stream_ = h.stream_id;
  skip_tag_.clear();
  session_.begin_open();
  return true;
}

inline bool client_connection::skip_buffered() {
  const std::string_view bytes = buffer_.data().substr(0, static_cast<std::size_t>(std::min<std::uint64_t>(
                                                              skip_, buffer_.buffered())));
  const std::size_t frame_part = static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), skip_frame_));
  session_.add(bytes.substr(0, frame_part));
  skip_tag_.append(bytes.substr(frame_part));
  skip_frame_ -= frame_part;
  skip_ -= buffer_.discard(bytes.size());
  if (skip_ > 0) return true;
  if (!session_.end_open(skip_tag_)) {
    tampered();
    return false;
  }
  finish(skip_stream_, make_error_code(errc::frame_too_large), std::move(skip_detail_));
  return true;
}

inline void client_connection::tampered() {
  connection_broke(make_error_code(errc::tampered_frame),
                   fmt::format("a frame from {} failed its session MAC (injected, replayed, reordered "
                               "or altered on the way): the connection was closed",
                               peer_name_));
}

inline void client_connection::watch_peer() {
  const auto& o = state_->options;
  if (o.ping_interval.count() <= 0 && o.dead_peer_timeout.count() <= 0) return;
  if (ping_armed_ && ping_generation_ == generation_) return;
  ping_armed_ = true;
  ping_generation_ = generation_;
  quiet_since_ = clock::now();
  pinged_ = false;
  on_ping_timer();
}

inline void client_connection::on_ping_timer() {
  if (ping_generation_ != generation_ || state_now_ != state::ready || calls_.empty()) {
    ping_armed_ = false;  // nothing to watch: the next call sent arms it again
    return;
  }
  const auto& o = state_->options;
  const auto now = clock::now();
  const auto quiet = now - quiet_since_;
  if (o.dead_peer_timeout.count() > 0 && quiet >= o.dead_peer_timeout) {
    connection_broke(
        make_error_code(errc::timeout),
        fmt::format("{} sent nothing for {} ms with calls waiting (dead_peer_timeout), not even "
                    "an answer to a ping: the connection was closed",
                    peer_name_, std::chrono::duration_cast<std::chrono::milliseconds>(quiet).count()));
    return;
  }
  if (o.ping_interval.count() > 0 && !pinged_ && quiet >= o.ping_interval) {
    pinged_ = true;
    send_ping();
  }
  auto next = clock::time_point::max();
  if (o.ping_interval.count() > 0 && !pinged_) next = std::min(next, quiet_since_ + o.ping_interval);
  if (o.dead_peer_timeout.count() > 0) next = std::min(next, quiet_since_ + o.dead_peer_timeout);
  if (next == clock::time_point::max()) {
    ping_armed_ = false;
    return;
  }
  ping_timer_.expires_at(next);
  ping_timer_.async_wait([self = shared_from_this(), generation = ping_generation_](boost::system::error_code ec) {
    if (ec || generation != self->ping_generation_) return;
    self->on_ping_timer();
  });
}

inline void client_connection::send_ping() {
  wire::frame_header h;
  h.type = wire::frame_type::request;
  h.stream_id = next_stream_id();  // its reply matches no call, and is dropped
  std::memcpy(h.id.data(), state_->id_prefix.data(), 8);
  fwd::detail::store_le<std::uint64_t>(reinterpret_cast<char*>(h.id.data() + 8),
                                       state_->next_id.fetch_add(1, std::memory_order_relaxed));
  const std::size_t at = control_.size();
  wire::append_frame(control_, h, ping_procedure, {});
  session_.seal_tail(control_, at);  // sealed now: control_ goes out before later calls
  flush();
}

inline void client_connection::connection_broke(boost::system::error_code why,
                                                const std::string& detail) {
  const bool was_ready = state_now_ == state::ready;
  if (!was_ready && stream_.is_tls() && why.category() == boost::asio::error::get_ssl_category()) {
    // Under TLS 1.3 the server checks the client's certificate after the client's side of
    // the TLS handshake is done: its refusal arrives here, as an alert.
    connect_failed(
        make_error_code(errc::unauthenticated),
        fmt::format("TLS with {} failed: {}: check this node's certificate and the CA the "
                    "server trusts",
                    peer_name_, stream_.tls_failure_reason(why)));
    return;
  }
  if (!was_ready) {
    connect_failed(why == errc::protocol_error ? why : make_error_code(errc::unreachable), detail);
    return;
  }
  ++generation_;
  close_socket(why);
  fwd::detail::emit(state_->options.telemetry, &telemetry::connection_closed,
                    connection_event{peer_name_, why});
  fail_all(make_error_code(errc::connection_lost), detail, false);
  state_now_ = state::idle;
  if (!unsent_.empty()) connect();
}

inline void client_connection::flush() {
  if (writing_) return;
  buffers_.clear();
  batch_.clear();
  if (!control_.empty()) {
    control_in_flight_.swap(control_);
    control_.clear();
    buffers_.push_back(boost::asio::buffer(control_in_flight_));
  }
  if (state_now_ == state::ready) {
    const auto now = clock::now();
    std::size_t bytes = 0;
    while (!unsent_.empty() && batch_.size() < 1024 && bytes < (std::size_t{1} << 22)) {
      auto call = std::move(unsent_.front());
      unsent_.pop_front();
      if (call->done) continue;
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(call->deadline - now).count();
      if (left <= 0) {
        finish(call->stream_id, make_error_code(errc::timeout),
               "the deadline passed before the call was sent");
        continue;
      }
      // The remaining time, as of now: the server drops the request if it runs out.
      fwd::detail::store_le<std::uint32_t>(
          call->frame.data() + wire::deadline_offset,
          static_cast<std::uint32_t>(std::min<long long>(left, 0xffffffffLL)));
      call->sent = true;
      session_.seal(call->frame, call->tag.data());
      bytes += call->frame.size() + wire::tag_size;
      buffers_.push_back(boost::asio::buffer(call->frame));
      buffers_.push_back(boost::asio::buffer(call->tag));
      batch_.push_back(std::move(call));
    }
  }
  if (!batch_.empty()) watch_peer();
  if (buffers_.empty()) return;
  writing_ = true;
  if (!stream_.is_tls() && stream_.socket().non_blocking() && batch_.size() == calls_.size()) {
    // Plain TCP, and no other call waits for a reply: what the socket takes now is written
    // now, which spares the trip through the scheduler that an asynchronous write's
    // completion costs. The rest, and any error, go through async_write below. With
    // other calls in flight, the asynchronous write is kept: calls started while it
    // completes (as replies arrive) go out together in the next write.
    boost::system::error_code ec;
    std::size_t written = stream_.socket().write_some(buffers_, ec);
    if (ec) written = 0;
    if (written == boost::asio::buffer_size(buffers_)) {
      writing_ = false;
      batch_.clear();
      control_in_flight_.clear();
      flush();  // what the batch limits left behind
      return;
    }
    auto first = buffers_.begin();
    while (written >= first->size()) written -= (first++)->size();
    buffers_.erase(buffers_.begin(), first);
    buffers_.front() += written;
  }
  boost::asio::async_write(
      stream_, buffers_,
      [self = shared_from_this(), generation = generation_](boost::system::error_code ec,
                                                            std::size_t) {
        if (generation != self->generation_) return;
        self->writing_ = false;
        self->batch_.clear();
        self->control_in_flight_.clear();
        if (ec && self->state_now_ == state::handshaking && self->stream_.is_tls()) {
          // A server that refuses this TLS client resets the connection
          // after its alert: the pending read reports the alert (or the
          // connect timeout ends the attempt).
          return;
        }
        if (ec) {
          self->connection_broke(
              ec, fmt::format("writing to {} failed: {}", self->peer_name_, ec.message()));
          return;
        }
        self->flush();
      });
}

inline void client_connection::fail_all(boost::system::error_code ec, const std::string& detail,
                                        bool include_unsent) {
  std::vector<std::shared_ptr<pending_call>> failing;
  for (auto it = calls_.begin(); it != calls_.end();) {
    if (it->second->sent || include_unsent) {
      failing.push_back(std::move(it->second));
      it = calls_.erase(it);
    } else {
      ++it;
    }
  }
  if (include_unsent) unsent_.clear();
  for (auto& call : failing) complete(*call, ec, detail);
}

inline void client_connection::arm_deadline_timer() {
  if (deadlines_.empty()) {
    if (!stream_.socket().is_open()) cancel_deadline_timer();
    return;
  }
  const auto first = deadlines_.begin()->first;
  if (timer_armed_ && armed_for_ <= first) return;
  timer_armed_ = true;
  armed_for_ = first;
  deadline_timer_.expires_at(first);
  deadline_timer_.async_wait([self = shared_from_this(), first](boost::system::error_code ec) {
    if (ec || !self->timer_armed_ || self->armed_for_ != first) return;
    self->timer_armed_ = false;
    self->on_deadlines();
  });
}

inline void client_connection::on_deadlines() {
  const auto now = clock::now();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    finish(deadlines_.begin()->second, make_error_code(errc::timeout),
           fmt::format("no reply from {} before the call's deadline", peer_name_));
  }
  arm_deadline_timer();
}

}  // namespace fwd::rpc::detail
