#pragma once

// The bodies of the RPC server's connection: the first byte (TLS or not), reading frames,
// running requests and writing their replies, closing. Included at the end of
// fwd/rpc/detail/server_connection.hpp.

#include <fwd/rpc/detail/server_connection.hpp>

namespace fwd::rpc::detail {

inline void server_connection::on_timer() {
  const auto now = std::chrono::steady_clock::now();
  if (!authenticated_) {
    // A slow (or silent) handshake.
    refuse_connection("handshake_timeout", boost::asio::error::timed_out,
                      reporting() ? fmt::format("the handshake was not finished within handshake_timeout ({} ms)",
                                                state_->options.handshake_timeout.count())
                                  : std::string());
    return;
  }
  if (partial_since_ && now - *partial_since_ >= state_->options.frame_read_timeout) {
    // A frame that arrives too slowly.
    refuse_frame("frame_read_timeout", boost::asio::error::timed_out,
                 reporting() ? fmt::format("a frame was not whole within frame_read_timeout ({} ms) of its first "
                                           "byte; {} bytes had arrived",
                                           state_->options.frame_read_timeout.count(), buffer_.buffered())
                             : std::string());
    return;
  }
  if (in_flight_ == 0 && now - last_activity_ >= state_->options.idle_timeout) {
    close({});
    return;
  }
  schedule_timer();
}

inline bool server_connection::charge_partial() {
  // A frame that fits the buffer every connection keeps anyway costs nothing extra.
  constexpr std::size_t free_size = 16 * 1024;
  std::size_t want = buffer_.partial_frame_size();
  if (want <= free_size) want = 0;
  if (want > charged_) {
    const std::size_t extra = want - charged_;
    const std::size_t before = state_->partial_frame_bytes.fetch_add(extra, std::memory_order_relaxed);
    if (before + extra > state_->options.max_partial_frame_bytes) {
      state_->partial_frame_bytes.fetch_sub(extra, std::memory_order_relaxed);
      refuse_frame("partial_frame_budget", make_error_code(errc::overloaded),
                   reporting() ? fmt::format("a frame of {} bytes would take frames being received over "
                                             "max_partial_frame_bytes ({} bytes; {} taken)",
                                             want, state_->options.max_partial_frame_bytes, before)
                               : std::string());
      return false;
    }
  } else if (want < charged_) {
    state_->partial_frame_bytes.fetch_sub(charged_ - want, std::memory_order_relaxed);
  }
  charged_ = want;
  return true;
}

inline void server_connection::await_first_byte() {
  stream_.socket().async_wait(
      tcp::socket::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
        if (self->closed_) return;
        if (ec) {
          self->close(ec);
          return;
        }
        char first = 0;
        const std::size_t n = self->stream_.socket().receive(boost::asio::buffer(&first, 1),
                                                             tcp::socket::message_peek, ec);
        if (ec || n == 0) {
          self->refuse_connection("closed_before_handshake", ec ? ec : boost::asio::error::eof,
                                  "the peer closed the connection before the handshake");
          return;
        }
        if (first == static_cast<char>(wire::magic & 0xff)) {
          self->refuse_plain_client();
          return;
        }
        self->stream_.start_tls(*self->state_->tls_context);
        self->stream_.async_tls_handshake(
            boost::asio::ssl::stream_base::server, [self](boost::system::error_code handshake_ec) {
              if (self->closed_) return;
              if (handshake_ec) {
                // The peer's certificate is missing or untrusted, or it
                // does not speak TLS: OpenSSL's reason says which.
                self->refuse_connection("tls_failed", handshake_ec,
                                        self->reporting() ? fmt::format("TLS handshake failed: {}",
                                                                        handshake_ec.message())
                                                          : std::string());
                return;
              }
              self->read();
            });
      });
}

inline void server_connection::refuse_plain_client() {
  note_refused("tls_required", make_error_code(errc::unauthenticated),
               "a plain client came to a server that requires TLS");
  // Take in what the client sent (its hello), so that closing does not reset the
  // connection before the client reads why.
  boost::system::error_code ignored;
  const std::size_t available = std::min<std::size_t>(stream_.socket().available(ignored), 4096);
  if (!ignored && available > 0) {
    std::string sink(available, '\0');
    stream_.socket().receive(boost::asio::buffer(sink), 0, ignored);
  }
  queue(wire::encode_goodbye(
      errc::unauthenticated,
      "this server requires TLS: set client_options::tls (the node's certificate, its "
      "key and the cluster's CA)"));
  draining_ = true;
  maybe_close_drained();
}

inline void server_connection::on_read(boost::system::error_code ec, std::size_t n) {
  if (closed_) return;
  if (ec) {
    // A TLS peer that just closes its socket truncates the TLS stream: an ordinary close too.
    const bool closed_by_peer =
        ec == boost::asio::error::eof || ec == boost::asio::ssl::error::stream_truncated;
    if (!authenticated_) {
      // A bare connect-and-close lands here, as does a peer that gave up mid-handshake
      // (a client closes after the server's proof when it holds another secret).
      const auto why = closed_by_peer ? boost::system::error_code(boost::asio::error::eof) : ec;
      if (received_ == 0) {
        refuse_connection("closed_before_handshake", why, "the peer closed the connection before the handshake");
      } else {
        refuse_connection("closed_during_handshake", why,
                          reporting() ? fmt::format("the peer closed the connection during the handshake, after "
                                                    "{} bytes (a client that refuses the server's versions or "
                                                    "proof of the secret closes here)",
                                                    received_)
                                      : std::string());
      }
      return;
    }
    close(closed_by_peer ? boost::system::error_code{} : ec);
    return;
  }
  buffer_.commit(n);
  received_ += n;
  last_activity_ = std::chrono::steady_clock::now();
  wire::frame_view frame;
  bool took_frame = false;
  while (!closed_ && !draining_) {
    const std::size_t limit =
        authenticated_ ? state_->options.max_frame_size : wire::max_handshake_frame_size;
    if (!buffer_.next(limit, frame, ec, authenticated_ ? wire::tag_size : 0)) break;
    took_frame = true;
    on_frame(frame);
  }
  if (ec) {
    // Malformed or oversized: this connection only.
    if (!authenticated_) {
      refuse_connection("handshake_failed", ec,
                        reporting() ? fmt::format("the handshake frame was refused: {}", ec.message())
                                    : std::string());
    } else if (ec == errc::frame_too_large) {
      refuse_frame("frame_too_large", ec,
                   reporting() ? fmt::format("a frame announced over max_frame_size ({} bytes)",
                                             state_->options.max_frame_size)
                               : std::string());
    } else {
      refuse_frame("malformed_frame", ec,
                   reporting() ? fmt::format("a frame header is malformed: {}", ec.message()) : std::string());
    }
    return;
  }
  if (closed_) return;
  if (authenticated_) {
    // The deadline of the frame being received runs from its first byte.
    if (buffer_.buffered() == 0) {
      partial_since_.reset();
    } else if (took_frame || !partial_since_) {
      partial_since_ = last_activity_;
      schedule_timer();
    }
    if (!charge_partial()) return;
  }
  if (in_flight_ == 0) buffer_.shrink();
  read();
}

inline void server_connection::on_frame(const wire::frame_view& frame) {
  if (!authenticated_) {
    auto step = handshake_->on_frame(frame);
    if (!step.send.empty()) queue(step.send);
    if (step.ec) {
      note_refused("handshake_failed", step.ec,
                   reporting() ? fmt::format("the handshake failed: {}", step.ec.message()) : std::string());
      draining_ = true;  // write the goodbye, then close
      maybe_close_drained();
      return;
    }
    if (step.done) {
      authenticated_ = true;
      state_->unauthenticated.fetch_sub(1, std::memory_order_relaxed);
      session_ = handshake_->take_session();
      handshake_.reset();
      fwd::detail::emit(state_->options.telemetry, &telemetry::connection_opened,
                        connection_event{peer_, {}, true, session_.protocol()});
      timer_armed_ = false;  // armed for the handshake's deadline: re-armed for what is next
      schedule_timer();
    }
    return;
  }
  if (!session_.open(frame.bytes, frame.tag)) {
    // Injected (a relay of the handshake has no key), replayed, reordered or altered:
    // nothing of it is looked at, and the connection goes.
    refuse_frame("tampered_frame", make_error_code(errc::tampered_frame),
                 "a frame failed its session MAC (injected, replayed, reordered or altered on the way)");
    return;
  }
  if (frame.header.type == wire::frame_type::goodbye) {
    draining_ = true;
    maybe_close_drained();
    return;
  }
  if (frame.header.type != wire::frame_type::request) {
    refuse_frame("unexpected_frame", make_error_code(errc::protocol_error),
                 reporting() ? fmt::format("a frame of type {} where a request was expected",
                                           static_cast<unsigned>(frame.header.type))
                             : std::string());
    return;
  }
  on_request(frame);
}

inline void server_connection::on_request(const wire::frame_view& frame) {
  const auto& h = frame.header;
  if (frame.meta == ping_procedure) {
    // A client checking that this server still answers: at once, outside every limit.
    wire::frame_header answer;
    answer.type = wire::frame_type::reply;
    answer.stream_id = h.stream_id;
    answer.id = h.id;
    append_sealed(answer, {}, {});
    write();
    return;
  }
  const auto refuse_call = [&](std::string_view reason, errc code, std::string_view why) {
    const auto ec = make_error_code(code);
    report("call", reason, ec, why);
    reply(h.stream_id, h.id, ec, why);
  };
  if (state_->stopping.load(std::memory_order_relaxed)) {
    refuse_call("shutting_down", errc::overloaded, "the server is shutting down");
    return;
  }
  if ((h.flags & wire::frame_flags::has_deadline) != 0 && h.deadline_ms == 0) {
    // The caller's deadline passed before the request got here: do not run it.
    refuse_call("deadline_passed", errc::timeout, "the deadline had passed when the request arrived");
    return;
  }
  if (auto bound = take_place()) {
    refuse_call("overloaded", errc::overloaded, *bound);
    return;
  }
  auto call = std::make_shared<running_call>();
  call->stream_id = h.stream_id;
  call->id = h.id;

  // The views are valid during dispatch() only; the registry copies what it keeps.
  incoming_call incoming;
  incoming.procedure = frame.meta;
  incoming.signature = h.aux;
  incoming.arguments = frame.body;
  incoming.request_id = h.id;
  if ((h.flags & wire::frame_flags::has_durability) != 0) incoming.durability = h.durability;
  if ((h.flags & wire::frame_flags::has_deadline) != 0) {
    incoming.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(h.deadline_ms);
  }

  // Bound to the strand: the registry completes every reply through the reply handler's
  // associated executor (reply_once), so this runs on the strand already.
  auto on_done = [self = shared_from_this(), call](boost::system::error_code ec, std::string result) {
    self->on_reply(*call, ec, std::move(result));
  };
  const registry& target =
      incoming.procedure.starts_with("fwd.") ? state_->builtins : *state_->user_registry;
  try {
    target.dispatch(incoming, state_->executor,
                    boost::asio::bind_executor(strand_, std::move(on_done)));
  } catch (const std::exception& e) {
    on_reply(*call, make_error_code(errc::remote_failure),
             fmt::format("dispatch failed: {}", e.what()));
  }
}

inline void server_connection::on_reply(running_call& call, boost::system::error_code ec,
                                        std::string result) {
  if (call.replied) return;
  call.replied = true;
  release_place();
  if (ec && reporting()) {
    // The registry's own refusals: the procedure did not run.
    if (ec == errc::unknown_procedure) report("call", "unknown_procedure", ec, result);
    if (ec == errc::signature_mismatch) report("call", "signature_mismatch", ec, result);
    if (ec == errc::protocol_error) report("call", "decode_failure", ec, result);
  }
  if (closed_) return;
  if (in_flight_ == 0) {
    // The idle timeout counts again from now (the timer was left unarmed while calls ran).
    last_activity_ = std::chrono::steady_clock::now();
    schedule_timer();
  }
  const std::size_t max_result = state_->options.max_frame_size - wire::header_size;
  if (!ec && result.size() > max_result) {
    // The client would refuse the frame: say why instead of sending it.
    const std::string why =
        fmt::format("the result is {} bytes, over the limit of {} bytes a reply may carry "
                    "(max_frame_size {} less the {}-byte header)",
                    result.size(), max_result, state_->options.max_frame_size, wire::header_size);
    report("call", "reply_too_large", make_error_code(errc::frame_too_large), why);
    reply(call.stream_id, call.id, make_error_code(errc::frame_too_large), why);
    if (draining_) maybe_close_drained();
    return;
  }
  if (ec) {
    reply(call.stream_id, call.id, ec, result);
  } else {
    wire::frame_header h;
    h.type = wire::frame_type::reply;
    h.stream_id = call.stream_id;
    h.id = call.id;
    append_sealed(h, {}, result);
    write();
  }
  if (draining_) maybe_close_drained();
}

inline void server_connection::write() {
  if (writing_in_progress_ || queued_.empty() || closed_) return;
  writing_in_progress_ = true;
  std::swap(queued_, writing_);
  if (!stream_.is_tls() && stream_.socket().non_blocking() && in_flight_ == 0) {
    // Plain TCP, and no other call of this connection running: what the socket takes now
    // is written now, which spares the trip through the scheduler that an asynchronous
    // write's completion costs. The rest, and any error, go through async_write below.
    // With calls running, the asynchronous write is kept: replies that come while it
    // completes go out together in the next write.
    boost::system::error_code ec;
    std::size_t written = stream_.socket().write_some(boost::asio::buffer(writing_), ec);
    if (ec) written = 0;
    if (written == writing_.size()) {
      writing_in_progress_ = false;
      writing_.clear();
      if (writing_.capacity() > (std::size_t{1} << 20)) writing_.shrink_to_fit();
      if (draining_ || !reading_) {
        // What a write's completion does next, outside this call (on_read calls it).
        boost::asio::post(strand_, [self = shared_from_this()] {
          if (self->draining_) self->maybe_close_drained();
          self->read();
        });
      }
      return;
    }
    writing_.erase(0, written);
  }
  boost::asio::async_write(stream_, boost::asio::buffer(writing_),
                           [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                             self->writing_in_progress_ = false;
                             self->writing_.clear();
                             if (self->writing_.capacity() > (std::size_t{1} << 20))
                               self->writing_.shrink_to_fit();
                             if (ec) {
                               self->close(ec);
                               return;
                             }
                             self->write();
                             if (self->draining_) self->maybe_close_drained();
                             self->read();  // reading pauses while too many replies wait
                           });
}

inline void server_connection::close(boost::system::error_code why) {
  if (closed_) return;
  closed_ = true;
  release_partial();
  timer_.cancel();
  stream_.close();
  if (authenticated_) {
    fwd::detail::emit(state_->options.telemetry, &telemetry::connection_closed,
                      connection_event{peer_, why, true});
  } else if (!failed_) {
    // Not refused by refuse_connection: the server stopped, or the socket failed.
    fwd::detail::emit(state_->options.telemetry, &telemetry::connection_failed,
                      connection_event{peer_, why ? why : make_error_code(errc::cancelled), true});
  }
}

inline std::optional<std::string> server_connection::take_place() {
  const auto& limits = state_->limits;
  if (in_flight_ >= limits.per_connection) {
    return fmt::format("too many requests in flight on this connection ({}, max_in_flight_per_connection)",
                       limits.per_connection);
  }
  const std::size_t mine = share_->in_flight.fetch_add(1, std::memory_order_relaxed);
  if (mine >= limits.per_address) {
    share_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    return fmt::format("too many requests in flight from this address ({}, max_in_flight_per_address)",
                       limits.per_address);
  }
  // An address past its reserved share may use only the shared part of the server.
  const bool reserved = mine < limits.reserved_per_address;
  const std::size_t limit = reserved ? limits.total : limits.shared;
  const std::size_t total = state_->in_flight.fetch_add(1, std::memory_order_relaxed);
  if (total >= limit) {
    state_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    share_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    return reserved ? fmt::format("too many requests in flight on the server ({}, max_in_flight)", limits.total)
                    : fmt::format("too many requests in flight on the server: this address runs {}, and the "
                                  "server keeps its last {} places for addresses running fewer than {}",
                                  mine, limits.total - limits.shared, limits.reserved_per_address);
  }
  ++in_flight_;
  return std::nullopt;
}

inline void server_connection::refuse_connection(std::string_view reason, boost::system::error_code ec,
                                                 std::string_view detail) {
  if (closed_) return;
  note_refused(reason, ec, detail);
  close(ec);
}

inline void server_connection::note_refused(std::string_view reason, boost::system::error_code ec,
                                            std::string_view detail) {
  if (failed_) return;
  failed_ = ec;
  report_refused_connection(state_->options, peer_, reason, ec, detail);
}

inline void server_connection::refuse_frame(std::string_view reason, boost::system::error_code ec,
                                            std::string_view detail) {
  if (closed_) return;
  report("frame", reason, ec, detail);
  close(ec);
}

}  // namespace fwd::rpc::detail
