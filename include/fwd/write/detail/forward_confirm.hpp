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
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - clock::now());
  const auto busy = std::clamp(left, std::chrono::milliseconds(1), std::chrono::milliseconds(100));
  std::string why;
  const std::string path = (core_->options.mount / core_->options.database_name).string();
  const dedup_row row = find_dedup_row(path, id_, busy, why);
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
