#pragma once

// Durable acknowledgement: how many replicas must hold a write before the primary
// acknowledges it (fwd::durability), and what a replica tells the primary about its
// LiteFS position (position_report, sent with the built-in report_position).
//
// LiteFS replicates asynchronously: a primary that dies before shipping its last
// transactions loses them when a candidate that lacks them is promoted. With a
// durability other than none(), the primary holds a write's reply until enough replicas
// have reported a position at or past the write's commit TXID; if they do not before
// the call's deadline, the call fails with errc::not_yet_durable (committed on the
// primary, not yet known to be replicated: a retry with the same request id is safe).

#include <fwd/procedure.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace fwd {

/// How many replicas must report a write before the primary acknowledges it.
class durability {
 public:
  enum class kind : std::uint8_t {
    none,        ///< acknowledged once committed on the primary (LiteFS's own guarantee)
    replicas,    ///< once `count()` replicas hold it
    candidates,  ///< once every LiteFS candidate for promotion the primary knows holds it
  };

  /// none().
  constexpr durability() noexcept = default;

  /// Acknowledged once committed on the primary: a failover may lose it.
  static constexpr durability none() noexcept { return {}; }

  /// Acknowledged once `n` replicas have reported a position at or past the write (0: none()).
  static constexpr durability replicas(std::uint16_t n) noexcept {
    if (n == 0) return {};
    return durability(kind::replicas, n > max_replicas ? max_replicas : n);
  }

  /**
   * Acknowledged once every LiteFS candidate for promotion (`lease.candidate: true`) that
   * the primary has heard from recently has reported a position at or past the write, and
   * at least one has: then no promotion of a candidate it knows can lose the write.
   */
  static constexpr durability candidates() noexcept { return durability(kind::candidates, 0); }

  constexpr kind type() const noexcept { return kind_; }
  /// For replicas(n): n; otherwise 0.
  constexpr std::uint16_t count() const noexcept { return count_; }

  /// Its two bytes in a request frame: 0 none, 1..0xfffe replicas(n), 0xffff candidates.
  constexpr std::uint16_t wire() const noexcept {
    switch (kind_) {
      case kind::none: return 0;
      case kind::replicas: return count_;
      case kind::candidates: return 0xffff;
    }
    return 0;
  }
  static constexpr durability from_wire(std::uint16_t value) noexcept {
    if (value == 0xffff) return candidates();
    return replicas(value);
  }

  friend constexpr bool operator==(const durability&, const durability&) = default;

 private:
  static constexpr std::uint16_t max_replicas = 0xfffe;
  constexpr durability(kind k, std::uint16_t n) noexcept : kind_(k), count_(n) {}
  kind kind_ = kind::none;
  std::uint16_t count_ = 0;
};

/// "none", "replicas(N)" or "candidates".
inline std::string to_string(const durability& d) {
  switch (d.type()) {
    case durability::kind::none: return "none";
    case durability::kind::replicas: return "replicas(" + std::to_string(d.count()) + ")";
    case durability::kind::candidates: return "candidates";
  }
  return "?";
}

/// What a replica tells the primary: who it is, which primary its LiteFS follows, and
/// its position in the database.
struct position_report {
  static constexpr std::string_view fwd_type_name = "fwd.position_report";
  std::string hostname;       ///< the replica's LiteFS hostname
  std::string primary;        ///< the primary's LiteFS hostname, as the replica's `.primary` names it
  bool candidate = false;     ///< the replica is a LiteFS candidate for promotion
  std::uint64_t txid = 0;     ///< its `<db>-pos` TXID
  std::uint64_t checksum = 0; ///< and the checksum after it

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive& hostname& primary& candidate& txid& checksum;
  }
};

/// Built-in, served by every node: a replica's position. Answers whether writes waited for
/// durability on this primary lately (the replica then reports each new position at once).
inline const procedure<bool(position_report)> report_position{"fwd_durable.position"};

}  // namespace fwd
