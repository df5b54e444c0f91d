#pragma once

// The replica's side of durable acknowledgement: it tells the primary its LiteFS position
// (TXID, checksum) over fwd's authenticated connection, driven by the LiteFS monitor.
//
// While the primary says durable writes wait on it, the reporter waits on the monitor for
// the next TXID (the monitor then polls the mount every millisecond, or follows LiteFS's
// tx events) and reports each new position at once. Otherwise it looks at the monitor's
// state (an atomic load) every `idle_check` and reports a changed position, and at least
// every `heartbeat`, so that the primary knows its replicas before a durable write comes.

#include <fwd/cluster/discovery.hpp>
#include <fwd/litefs/monitor.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/write/durability.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>

namespace fwd::detail {

class position_reporter : public std::enable_shared_from_this<position_reporter> {
 public:
  using clock = std::chrono::steady_clock;

  struct settings {
    std::string hostname;  // this node's LiteFS hostname
    bool candidate = true;
    std::chrono::milliseconds heartbeat{1000};
    std::chrono::milliseconds idle_check{50};
    std::chrono::milliseconds hurry_for{2000};  // after the primary said writes wait
  };

  static std::shared_ptr<position_reporter> create(boost::asio::any_io_executor ex, settings s,
                                                   std::weak_ptr<litefs::monitor> monitor,
                                                   std::weak_ptr<rpc::client> client,
                                                   std::weak_ptr<primary_finder> finder) {
    return std::shared_ptr<position_reporter>(new position_reporter(
        std::move(ex), std::move(s), std::move(monitor), std::move(client), std::move(finder)));
  }

  void start() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      self->stopped_ = false;
      self->step();
    });
  }

  void stop() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      self->stopped_ = true;
      self->timer_.cancel();
      self->wait_.emit(boost::asio::cancellation_type::terminal);
    });
  }

 private:
  position_reporter(boost::asio::any_io_executor ex, settings s, std::weak_ptr<litefs::monitor> monitor,
                    std::weak_ptr<rpc::client> client, std::weak_ptr<primary_finder> finder)
      : strand_(boost::asio::make_strand(ex)),
        timer_(strand_),
        settings_(std::move(s)),
        monitor_(std::move(monitor)),
        client_(std::move(client)),
        finder_(std::move(finder)) {}

  // On the strand: report if there is something new, then wait for the next change.
  void step() {
    if (stopped_ || sending_ || waiting_) return;
    const auto monitor = monitor_.lock();
    if (!monitor) return;
    const auto state = monitor->state();
    const auto now = clock::now();
    if (state->role == litefs::role_kind::replica && (state->pos != reported_ || now >= next_heartbeat_)) {
      send(*state);
      return;
    }
    if (state->role == litefs::role_kind::replica && now < hurry_until_) {
      // The next TXID, as soon as the monitor sees it.
      waiting_ = true;
      monitor->async_wait_position(
          state->pos.txid + 1, std::min(hurry_until_, next_heartbeat_),
          boost::asio::bind_cancellation_slot(
              wait_.slot(), boost::asio::bind_executor(strand_, [self = shared_from_this()](
                                                                    boost::system::error_code, litefs::position) {
                self->waiting_ = false;
                self->step();
              })));
      return;
    }
    timer_.expires_after(settings_.idle_check);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->step();
    });
  }

  void send(const litefs::node_state& state) {
    const auto finder = finder_.lock();
    const auto client = client_.lock();
    if (!finder || !client) return;
    sending_ = true;
    position_report report{settings_.hostname, state.primary_hostname, settings_.candidate, state.pos.txid,
                           state.pos.checksum};
    const auto deadline = clock::now() + settings_.heartbeat;
    finder->async_find(deadline, boost::asio::bind_executor(strand_, [self = shared_from_this(), report,
                                                                      deadline](boost::system::error_code ec,
                                                                                primary_location where) {
      if (ec || where.local || self->stopped_) return self->sent(false, false, {});
      const auto c = self->client_.lock();
      if (!c) return self->sent(false, false, {});
      rpc::call_options options;
      options.deadline = deadline;
      c->async_call(where.endpoint, options, report_position, report,
                    boost::asio::bind_executor(self->strand_, [self, report](boost::system::error_code e, bool hurry) {
                      if (e == errc::not_primary || e == errc::unreachable || e == errc::connection_lost) {
                        if (const auto f = self->finder_.lock()) f->invalidate();
                      }
                      self->sent(!e, hurry, litefs::position{report.txid, report.checksum});
                    }));
    }));
  }

  void sent(bool ok, bool hurry, litefs::position reported) {
    sending_ = false;
    const auto now = clock::now();
    if (ok) {
      reported_ = reported;
      next_heartbeat_ = now + settings_.heartbeat;
      if (hurry) hurry_until_ = now + settings_.hurry_for;
      step();
      return;
    }
    // No primary reached: try again after a pause.
    if (stopped_) return;
    timer_.expires_after(settings_.idle_check);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->step();
    });
  }

  boost::asio::strand<boost::asio::any_io_executor> strand_;
  boost::asio::steady_timer timer_;
  boost::asio::cancellation_signal wait_;
  settings settings_;
  std::weak_ptr<litefs::monitor> monitor_;
  std::weak_ptr<rpc::client> client_;
  std::weak_ptr<primary_finder> finder_;
  bool stopped_ = true;
  bool sending_ = false;
  bool waiting_ = false;
  litefs::position reported_{~std::uint64_t{0}, 0};
  clock::time_point next_heartbeat_{};
  clock::time_point hurry_until_{};
};

}  // namespace fwd::detail
