#pragma once

// The primary's side of durable acknowledgement: the positions its replicas report, and
// the writes waiting until enough of them have reached their commit TXID. All the writes
// of one group-commit batch wait for the same TXID, so one report releases them together.
//
// A TXID alone does not show that a replica holds this primary's history: a replica that
// still holds a lost history (a former primary's last transactions, not yet replaced by
// LiteFS's resync) can report a TXID at or past a write that it does not have. So the
// tracker remembers this primary's recent commits (TXID -> checksum: those fwd's writer
// made, and every position the node's LiteFS monitor saw, which includes the commits of
// the service's own connections) and counts a replica only while its position is one of
// them with the same checksum, or older than any it remembers; a replica ahead of this
// primary's last commit, or at one of its TXIDs with another checksum, is on another
// history and does not count until it reports again.

#include <fwd/error.hpp>
#include <fwd/write/durability.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace fwd::detail {

class durability_tracker : public std::enable_shared_from_this<durability_tracker> {
 public:
  using clock = std::chrono::steady_clock;
  /// Receives success, or errc::not_yet_durable / errc::cancelled and why.
  using handler = std::function<void(boost::system::error_code, std::string)>;

  /// `forget_after`: a replica that has not reported for that long no longer counts (nor,
  /// for candidates(), is waited for). `hurry_for`: how long after a durable write the
  /// replicas are told to report every new position at once.
  durability_tracker(boost::asio::any_io_executor executor, std::chrono::milliseconds forget_after,
                     std::chrono::milliseconds hurry_for = std::chrono::milliseconds(2000))
      : executor_(std::move(executor)), forget_after_(forget_after), hurry_for_(hurry_for) {}

  /// Records a replica's position (from a replica of this primary). Returns whether
  /// durable writes waited lately.
  bool report(const position_report& r) {
    std::vector<std::shared_ptr<waiter>> released;
    bool hurry = false;
    {
      std::lock_guard lock(mutex_);
      const auto now = clock::now();
      replica& entry = replicas_[r.hostname];
      entry.txid = r.txid;
      entry.checksum = r.checksum;
      entry.candidate = r.candidate;
      entry.seen = now;
      release_satisfied_locked(now, released);
      hurry = !waiters_.empty() || now - last_wait_ < hurry_for_;
    }
    for (auto& w : released) finish(w, {}, {});
    return hurry;
  }

  /// Records a commit of this node's history (any thread, any order): a write's commit
  /// (the writes of one batch share it), or a position its LiteFS monitor saw. A TXID
  /// recorded again with another checksum starts a new history: the commits recorded at
  /// or after it are forgotten.
  void note_commit(std::uint64_t txid, std::uint64_t checksum) {
    if (txid == 0) return;
    std::vector<std::shared_ptr<waiter>> released;
    {
      std::lock_guard lock(mutex_);
      // Commits may be noted out of order (their replies run on any io thread): only the
      // same TXID with another checksum tells of a new history.
      const auto same = commits_.find(txid);
      if (same != commits_.end()) {
        if (same->second == checksum) return;
        commits_.erase(same, commits_.end());
      }
      commits_.emplace(txid, checksum);
      while (commits_.size() > commits_kept) commits_.erase(commits_.begin());
      // A replica that reported this commit before it was noted here counts from now on.
      if (!waiters_.empty()) release_satisfied_locked(clock::now(), released);
    }
    for (auto& w : released) finish(w, {}, {});
  }

  /**
   * Calls `done` (posted to the executor, exactly once) when `d` holds for `txid`, or
   * with errc::not_yet_durable at `deadline` or on stop().
   */
  void async_wait(std::uint64_t txid, durability d, clock::time_point deadline, handler done) {
    auto w = std::make_shared<waiter>(executor_);
    w->txid = txid;
    w->required = d;
    w->done = std::move(done);
    {
      std::lock_guard lock(mutex_);
      const auto now = clock::now();
      last_wait_ = now;
      if (stopped_) {
        post_done(std::move(w->done), make_error_code(errc::not_yet_durable), stopped_detail(*w));
        return;
      }
      if (satisfied(*w, now)) {
        post_done(std::move(w->done), {}, {});
        return;
      }
      waiters_.push_back(w);
      // Armed under the lock: a report that releases the waiter cancels the timer after.
      w->timer.expires_at(deadline);
      w->timer.async_wait([weak = weak_from_this(), w](boost::system::error_code ec) {
        if (ec) return;
        if (auto self = weak.lock()) self->expire(w);
      });
    }
  }

  /// Fails every waiter with not_yet_durable; later waits fail so at once.
  void stop() {
    std::list<std::shared_ptr<waiter>> all;
    {
      std::lock_guard lock(mutex_);
      stopped_ = true;
      all.swap(waiters_);
    }
    for (auto& w : all) finish(w, make_error_code(errc::not_yet_durable), stopped_detail(*w));
  }

  /// Writes waiting now (for tests and telemetry).
  std::size_t waiting() const {
    std::lock_guard lock(mutex_);
    return waiters_.size();
  }

 private:
  struct replica {
    std::uint64_t txid = 0;
    std::uint64_t checksum = 0;
    bool candidate = false;
    clock::time_point seen;
  };
  struct waiter {
    explicit waiter(const boost::asio::any_io_executor& ex) : timer(ex) {}
    std::uint64_t txid = 0;
    durability required;
    handler done;
    boost::asio::steady_timer timer;
  };

  bool fresh(const replica& r, clock::time_point now) const noexcept { return now - r.seen < forget_after_; }

  // With the lock held: whether the replica's position can be on this primary's history
  // (see the top of this file). Positions older than every commit remembered cannot be
  // checked and count, as they did before any commit was remembered.
  bool on_this_history(const replica& r) const {
    if (commits_.empty() || r.txid < commits_.begin()->first) return true;
    if (r.txid > commits_.rbegin()->first) return false;
    const auto at = commits_.find(r.txid);
    return at == commits_.end() || at->second == r.checksum;
  }

  // With the lock held: the replica counts for a write at `txid`.
  bool holds(const replica& r, std::uint64_t txid, clock::time_point now) const {
    return fresh(r, now) && r.txid >= txid && on_this_history(r);
  }

  // With the lock held: takes the waiters whose durability now holds.
  void release_satisfied_locked(clock::time_point now, std::vector<std::shared_ptr<waiter>>& released) {
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (satisfied(**it, now)) {
        released.push_back(std::move(*it));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // With the lock held.
  bool satisfied(const waiter& w, clock::time_point now) const {
    if (w.required.type() == durability::kind::replicas) {
      std::size_t holding = 0;
      for (const auto& [name, r] : replicas_)
        if (holds(r, w.txid, now)) ++holding;
      return holding >= w.required.count();
    }
    if (w.required.type() == durability::kind::candidates) {
      std::size_t known = 0;
      for (const auto& [name, r] : replicas_) {
        if (!r.candidate || !fresh(r, now)) continue;
        if (!holds(r, w.txid, now)) return false;
        ++known;
      }
      return known > 0;
    }
    return true;
  }

  void expire(const std::shared_ptr<waiter>& w) {
    std::string why;
    {
      std::lock_guard lock(mutex_);
      bool found = false;
      for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
        if (*it != w) continue;
        waiters_.erase(it);
        found = true;
        break;
      }
      if (!found) return;  // released (or stopped) meanwhile
      why = describe(*w, clock::now());
    }
    finish(w, make_error_code(errc::not_yet_durable), std::move(why));
  }

  // With the lock held: what the primary saw when the wait ran out.
  std::string describe(const waiter& w, clock::time_point now) const {
    std::string seen;
    for (const auto& [name, r] : replicas_) {
      if (!fresh(r, now)) continue;
      if (w.required.type() == durability::kind::candidates && !r.candidate) continue;
      fmt::format_to(std::back_inserter(seen), "{}{} at TXID {}{}", seen.empty() ? "" : ", ", name, r.txid,
                     on_this_history(r) ? "" : " of another history");
    }
    if (seen.empty()) seen = w.required.type() == durability::kind::candidates ? "no candidate has reported"
                                                                               : "no replica has reported";
    return fmt::format(
        "the write committed on the primary at TXID {}, but durability {} was not reached before the "
        "deadline ({}): it is not yet known to be replicated; retrying with the same request id is safe",
        w.txid, to_string(w.required), seen);
  }

  static std::string stopped_detail(const waiter& w) {
    return fmt::format(
        "the write committed on the primary at TXID {}, but the node stopped before durability {} was "
        "reached: retrying with the same request id is safe",
        w.txid, to_string(w.required));
  }

  void finish(const std::shared_ptr<waiter>& w, boost::system::error_code ec, std::string why) {
    w->timer.cancel();
    post_done(std::move(w->done), ec, std::move(why));
  }

  void post_done(handler done, boost::system::error_code ec, std::string why) {
    boost::asio::post(executor_, [done = std::move(done), ec, why = std::move(why)]() mutable {
      done(ec, std::move(why));
    });
  }

  boost::asio::any_io_executor executor_;
  std::chrono::milliseconds forget_after_;
  std::chrono::milliseconds hurry_for_;
  mutable std::mutex mutex_;
  std::map<std::string, replica, std::less<>> replicas_;
  std::list<std::shared_ptr<waiter>> waiters_;
  static constexpr std::size_t commits_kept = 4096;
  std::map<std::uint64_t, std::uint64_t> commits_;  // this primary's recent TXID -> checksum
  clock::time_point last_wait_{};
  bool stopped_ = false;
};

}  // namespace fwd::detail
