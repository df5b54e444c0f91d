#pragma once

// What a replica knows of its own history: the (TXID, checksum) pairs its database held
// recently. A forwarded write's reply carries the primary's position after the commit;
// reaching that TXID proves nothing on its own, since a failover that lost the old
// primary's last transactions lets the new primary write another transaction under the
// same TXID. LiteFS's checksum is one of the whole database after that transaction, so an
// equal checksum at that TXID means the same database, the write included.

#include <fwd/litefs/types.hpp>

#include <cstddef>
#include <cstdint>
#include <map>

namespace fwd::litefs {

/// How a position reported by the primary compares with this node's history.
enum class history_match {
  same,        ///< this node held that TXID with that checksum: the primary's history
  diverged,    ///< this node held that TXID with another checksum: another history
  unobserved,  ///< this node has not seen that TXID's checksum (it went past it unseen)
};

/// "same", "diverged" or "unobserved".
constexpr const char* to_string(history_match m) noexcept {
  switch (m) {
    case history_match::same:
      return "same";
    case history_match::diverged:
      return "diverged";
    case history_match::unobserved:
      return "unobserved";
  }
  return "?";
}

/// How `local`, a position this node held, compares with `wanted` (same TXID or not).
constexpr history_match compare_at(position wanted, position local) noexcept {
  if (local.txid != wanted.txid) return history_match::unobserved;
  return local.checksum == wanted.checksum ? history_match::same : history_match::diverged;
}

/**
 * The positions this node's database held since its history last may have been replaced
 * (a new primary, a new mount), most recent `capacity` TXIDs. Not thread-safe: one owner
 * (litefs::monitor keeps one on its strand).
 */
class position_history {
 public:
  explicit position_history(std::size_t capacity = 4096) : capacity_(capacity == 0 ? 1 : capacity) {}

  /// The database held `p` (a later observation of the same TXID replaces the earlier).
  void record(position p) {
    if (p.txid == 0 || p == carried_over_) return;
    seen_[p.txid] = p.checksum;
    while (seen_.size() > capacity_) seen_.erase(seen_.begin());
  }

  /// The database went back to `p` (LiteFS restored another history): what was recorded
  /// past it belongs to a history the database no longer holds.
  void rewind_to(position p) {
    seen_.erase(seen_.upper_bound(p.txid), seen_.end());
    record(p);
  }

  /// The history may be replaced from now on (another primary, a new mount): forget it
  /// all. `held`, what the database holds at this moment, was written under the old one:
  /// it is not recorded again (the new primary may send a snapshot of another history
  /// past it at any time, and nothing would tell that one from a continuation).
  void forget(position held = {}) noexcept {
    seen_.clear();
    carried_over_ = held;
  }

  /// How `wanted` compares with what this node held.
  history_match compare(position wanted) const noexcept {
    const auto it = seen_.find(wanted.txid);
    if (it == seen_.end()) return history_match::unobserved;
    return compare_at(wanted, position{it->first, it->second});
  }

  /// The highest TXID recorded (0 when none).
  std::uint64_t last_txid() const noexcept { return seen_.empty() ? 0 : seen_.rbegin()->first; }

  std::size_t size() const noexcept { return seen_.size(); }

 private:
  std::map<std::uint64_t, std::uint64_t> seen_;  // TXID -> checksum
  std::size_t capacity_;
  position carried_over_;  // held when the history was last forgotten
};

}  // namespace fwd::litefs
