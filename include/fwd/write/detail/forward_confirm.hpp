#pragma once

// fwd::detail::forward_op's read-your-writes: after a forwarded write, wait until this
// node reaches the primary's position (TXID, checksum) from the reply, then confirm that
// the history it reached holds the write. A TXID alone proves nothing after a failover
// that lost the old primary's last transactions (the new primary may have written another
// transaction under it): the same checksum at that TXID does, or else the write's dedup
// row in this node's database. A write that is not here is retried with its request id.

#include <fwd/litefs/history.hpp>
#include <fwd/write/detail/dedup_lookup.hpp>
#include <fwd/write/detail/forward_op.hpp>

#include <algorithm>
#include <chrono>
#include <string>

namespace fwd::detail {

inline std::string forward_op::replication_lag_detail(litefs::position local) const {
  return fmt::format(
      "the write committed on the primary at TXID {} but this node was at TXID {} when the "
      "deadline passed: not confirmed here; a retry with the same forward_options::id is safe "
      "(answered from the primary's dedup table, or run again if a failover lost it)",
      primary_position_.txid, local.txid);
}

// Waits until the local position reaches the primary's TXID (one shared wait on the
// monitor, or a poll of `<db>-pos` as LiteFS's proxy does), then confirms the history.
inline void forward_op::wait_replication() {
  if (done_) return;
  if (const auto& monitor = core_->options.monitor) {
    monitor->async_wait_history(
        primary_position_, deadline_,
        boost::asio::bind_cancellation_slot(
            replication_wait_.slot(),
            boost::asio::bind_executor(
                strand_, [self = shared_from_this()](boost::system::error_code ec, litefs::history_match match,
                                                     litefs::position local) {
                  if (self->done_) return;
                  if (ec) return self->finish(make_error_code(errc::replication_lag), self->replication_lag_detail(local));
                  self->on_replicated(match, local);
                })));
    return;
  }
  boost::system::error_code ec;
  const litefs::position local =
      litefs::read_position(core_->options.mount, core_->options.database_name, ec);
  if (!ec && local.txid >= primary_position_.txid) {
    on_replicated(litefs::compare_at(primary_position_, local), local);
    return;
  }
  if (core_->stopped.load() || clock::now() >= deadline_) {
    finish(make_error_code(errc::replication_lag), replication_lag_detail(local));
    return;
  }
  timer_.expires_after(core_->options.replication_poll);
  timer_.async_wait([self = shared_from_this()](boost::system::error_code e) {
    if (e) return;  // cancelled: cancel() finishes the call
    self->wait_replication();
  });
}

// This node has reached the primary's TXID. The same checksum there proves the write is
// here; otherwise (another transaction at that TXID, or a TXID passed unseen) its dedup
// row decides. A write that is not here was lost in a failover: retried with its id.
inline void forward_op::on_replicated(litefs::history_match match, litefs::position local) {
  if (match == litefs::history_match::same) {
    report_->confirmation = write_confirmation::checksum;
    finish({}, {});
    return;
  }
  look_up_dedup_row(match, local);
}

// The dedup row is read from the database in the mount: a read that a hung LiteFS may never
// answer. With a monitor it runs on the monitor's polling thread (never on an io_context
// thread), batched with the other calls' lookups (dedup_lookups), and the call's deadline
// bounds the wait for its answer; the answer comes back on the strand. Without a monitor,
// the call already reads the mount on its strand (the position's poll), and so does the
// lookup.
inline void forward_op::look_up_dedup_row(litefs::history_match match, litefs::position local) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - clock::now());
  const auto busy = std::clamp(left, std::chrono::milliseconds(1), std::chrono::milliseconds(100));
  const auto& monitor = core_->options.monitor;
  if (!monitor) {
    std::string why;
    const dedup_row row =
        find_dedup_row((core_->options.mount / core_->options.database_name).string(), id_, busy, why);
    on_dedup_row(match, local, row, why);
    return;
  }
  const std::uint64_t lookup = ++lookups_;
  looking_up_ = true;
  // The answer holds the call weakly: a lookup stuck in FUSE past the call's end keeps
  // nothing of the io_context alive. The deadline timer below holds the call until then.
  const bool queued = core_->lookups->submit(
      *monitor, id_, busy, [weak = weak_from_this(), match, local, lookup](dedup_row row, std::string why) {
        if (auto self = weak.lock()) {
          boost::asio::post(self->strand_, [self, match, local, lookup, row, why = std::move(why)] {
            if (self->done_ || !self->looking_up_ || lookup != self->lookups_) return;
            self->looking_up_ = false;
            self->timer_.cancel();
            self->on_dedup_row(match, local, row, why);
          });
        }
      });
  if (!queued) {
    looking_up_ = false;
    on_dedup_row(match, local, dedup_row::unknown, "the LiteFS monitor is stopped");
    return;
  }
  timer_.expires_at(deadline_);
  timer_.async_wait([self = shared_from_this(), match, local, lookup](boost::system::error_code e) {
    if (e || self->done_ || !self->looking_up_ || lookup != self->lookups_) return;
    self->looking_up_ = false;
    self->on_dedup_row(match, local, dedup_row::unknown,
                       "the read did not end by the call's deadline (is the LiteFS mount hung?)");
  });
}

inline void forward_op::on_dedup_row(litefs::history_match match, litefs::position local, dedup_row row,
                                     const std::string& why) {
  if (done_) return;
  if (row == dedup_row::present) {
    report_->confirmation = write_confirmation::dedup_row;
    finish({}, {});
    return;
  }
  // The primary that answered may be gone: find the primary again.
  core_->finder->invalidate();
  const char* seen = match == litefs::history_match::diverged
                         ? "holds another transaction at that TXID"
                         : "went past that TXID without seeing its checksum";
  std::string detail =
      row == dedup_row::absent
          ? fmt::format("the write committed on the primary at TXID {} (checksum {:016x}), but this node "
                        "(now at TXID {}, checksum {:016x}) {} and has no dedup row for its request id: "
                        "a failover lost it",
                        primary_position_.txid, primary_position_.checksum, local.txid, local.checksum, seen)
          : fmt::format("the write committed on the primary at TXID {} (checksum {:016x}), but this node "
                        "(now at TXID {}) {} and its dedup row could not be read: {}",
                        primary_position_.txid, primary_position_.checksum, local.txid, seen, why);
  on_failure(make_error_code(errc::not_confirmed), std::move(detail));
}

}  // namespace fwd::detail
