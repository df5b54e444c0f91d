#pragma once

// The bodies of fwd::primary_finder's refresh: the queue of lookups, the probe rounds and
// the watch of the local role. Included at the end of fwd/cluster/discovery.hpp.

#include <fwd/cluster/discovery.hpp>

namespace fwd {

inline void primary_finder::enqueue(clock::time_point deadline, find_completion completion) {
  auto slot = completion.slot();
  const std::uint64_t id = next_waiter_id_.fetch_add(1, std::memory_order_relaxed);
  if (slot.is_connected()) {
    slot.assign([weak = weak_from_this(), id](boost::asio::cancellation_type type) {
      if ((type & boost::asio::cancellation_type::terminal) == boost::asio::cancellation_type::none)
        return;
      if (auto self = weak.lock()) {
        boost::asio::dispatch(self->strand_, [self, id] {
          self->fail_waiters(errc::cancelled, [id](const waiter& w) { return w.id == id; });
        });
      }
    });
  }
  boost::asio::dispatch(
      strand_, [self = shared_from_this(), id, deadline, c = std::move(completion)]() mutable {
        fwd::detail::invoke_hook(self->options_.hooks.cache_miss);
        if (self->stopped_) {
          c.post(make_error_code(errc::cancelled), {});
          return;
        }
        self->waiters_.push_back(waiter{id, deadline, std::move(c)});
        self->start_round();
      });
}

template <class Predicate>
inline void primary_finder::fail_waiters(errc why, Predicate&& which) {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (which(*it)) {
      it->completion.post(make_error_code(why), {});
      it = waiters_.erase(it);
    } else {
      ++it;
    }
  }
}

inline void primary_finder::start_round() {
  if (round_ || waiters_.empty()) return;
  if (const primary_location* hit = cached()) {
    finish(*hit);
    return;
  }
  auto round = std::make_shared<round_state>();
  round_ = round;
  // No probe outlives the most patient caller.
  round->latest_deadline = clock::now();
  for (const auto& w : waiters_)
    round->latest_deadline = std::max(round->latest_deadline, w.deadline);

  round->local = local_role();
  forget_failed_hostnames();
  switch (round->local.kind) {
    case litefs::role_kind::primary:
      finish(primary_location{true, {}, {}});
      return;
    case litefs::role_kind::not_litefs:
      round_.reset();
      record_failure(fmt::format("the mount is not LiteFS: {}", round->local.reason));
      fail_waiters(errc::not_litefs, [](const waiter&) { return true; });
      return;
    case litefs::role_kind::replica:
      if (auto it = hostnames_.find(round->local.primary_hostname); it != hostnames_.end()) {
        for (const peer& p : current_members()) {
          if (p.endpoint == it->second) {
            finish(primary_location{false, p.endpoint, round->local.primary_hostname});
            return;
          }
        }
      }
      break;
    case litefs::role_kind::unknown:
      break;
  }
  probe_rounds_.fetch_add(1, std::memory_order_relaxed);
  round->members = current_members();
  if (round->members.empty()) {
    end_round(round, "no members are known");
    return;
  }
  launch_probes(round);
}

inline void primary_finder::launch_probes(const std::shared_ptr<round_state>& round) {
  while (!round->done && round->in_flight < options_.max_concurrent_probes &&
         round->next < round->members.size()) {
    const peer target = round->members[round->next++];
    ++round->in_flight;
    // Each probe gets its own deadline, so members queued behind a slow one (when
    // max_concurrent_probes is below the member count) still get a full probe.
    const clock::time_point deadline =
        std::min(clock::now() + options_.probe_timeout, round->latest_deadline);
    // The answer hops onto the strand itself: a probe function may invoke its handler
    // directly from any thread (calling an executor_binder does not switch executors),
    // and on_probe must never run beside another strand handler.
    auto on_answer = [self = shared_from_this(), round, target](boost::system::error_code ec,
                                                                node_status status) {
      boost::asio::dispatch(self->strand_,
                            [self, round, target, ec, status = std::move(status)]() mutable {
                              self->on_probe(round, target, ec, std::move(status));
                            });
    };
    try {
      if (!probe_) throw std::logic_error("no probe function");
      probe_(target, deadline, std::move(on_answer));
    } catch (...) {
      // The probe never started: it answers as unreachable, after this call returns.
      boost::asio::post(strand_, [self = shared_from_this(), round, target] {
        self->on_probe(round, target, make_error_code(errc::unreachable), {});
      });
    }
  }
}

inline void primary_finder::on_probe(const std::shared_ptr<round_state>& round, const peer& target,
                                     boost::system::error_code ec, node_status status) {
  --round->in_flight;
  ++round->answered;
  fwd::detail::invoke_hook(options_.hooks.probe_result, target, ec, status);
  if (round->done) return;
  auto tried = std::back_inserter(round->tried);
  const std::string who = target.name.empty() ? target.endpoint.address().to_string() : target.name;
  if (ec) {
    fmt::format_to(tried, "{} ({}); ", who, ec.message().substr(0, 60));
  } else {
    fmt::format_to(tried, "{} ({}); ", who, litefs::to_string(status.role));
    if (!status.litefs_hostname.empty()) hostnames_[status.litefs_hostname] = target.endpoint;
    if (status.role == litefs::role_kind::primary) {
      // The member that the local `.primary` names settles it at once.
      if (round->local.kind == litefs::role_kind::replica &&
          status.litefs_hostname == round->local.primary_hostname) {
        round->done = true;
        round_.reset();
        finish(primary_location{false, target.endpoint, status.litefs_hostname});
        return;
      }
      round->claimants.emplace_back(target, std::move(status));
    }
  }
  if (round->next < round->members.size()) {
    launch_probes(round);
    return;
  }
  if (round->in_flight > 0) return;
  // Every member answered or timed out.
  round->done = true;
  if (round->claimants.size() == 1 && round->local.kind != litefs::role_kind::replica) {
    const auto& [p, s] = round->claimants.front();
    round_.reset();
    finish(primary_location{false, p.endpoint, s.litefs_hostname});
    return;
  }
  std::string why;
  if (round->claimants.empty()) {
    why = "no member says it is primary";
  } else if (round->local.kind == litefs::role_kind::replica) {
    // A member that is primary but announces another LiteFS hostname than the one
    // LiteFS names: that node's fwd hostname is not its LiteFS lease hostname.
    const auto& [p, st] = round->claimants.front();
    why = fmt::format(
        "LiteFS names the primary {}, but the member {} that is primary announces the LiteFS "
        "hostname "
        "'{}': set that node's litefs_hostname to its LiteFS lease hostname (lease.hostname in its "
        "litefs.yml; on Fly.io the machine id)",
        round->local.primary_hostname, rpc::detail::endpoint_string(p.endpoint),
        st.litefs_hostname);
  } else {
    why = fmt::format("{} members claim to be primary", round->claimants.size());
  }
  end_round(round, fmt::format("{}; probed: {}", why, round->tried));
}

inline void primary_finder::end_round(const std::shared_ptr<round_state>& round,
                                      const std::string& why) {
  round->done = true;
  round_.reset();
  record_failure(why);
  const auto now = clock::now();
  fail_waiters(errc::no_primary, [now](const waiter& w) { return w.deadline <= now; });
  if (waiters_.empty() || stopped_) return;
  retry_timer_.expires_after(options_.retry_interval);
  retry_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (!ec) self->start_round();
  });
}

inline void primary_finder::finish(primary_location location) {
  round_.reset();
  const primary_location* stored = intern(std::move(location));
  const primary_location* before = current_.exchange(stored, std::memory_order_acq_rel);
  expires_.store(expiry_clock_ns() + std::chrono::nanoseconds(options_.ttl).count(),
                 std::memory_order_relaxed);
  if (stored != before && stored != last_announced_) {
    last_announced_ = stored;
    fwd::detail::invoke_hook(options_.hooks.primary_changed, *stored);
  }
  cached_role_ = local_role();
  for (auto& w : waiters_) w.completion.post({}, *stored);
  waiters_.clear();
}

inline const primary_location* primary_finder::intern(primary_location location) {
  for (const auto& known : locations_) {
    if (*known == location) return known.get();
  }
  locations_.push_back(std::make_unique<const primary_location>(std::move(location)));
  return locations_.back().get();
}

inline litefs::role primary_finder::local_role() noexcept {
  try {
    return role_();
  } catch (const std::exception& e) {
    litefs::role r;
    r.reason = fmt::format("reading the local role failed: {}", e.what());
    return r;
  } catch (...) {
    return litefs::role{};
  }
}

inline std::vector<peer> primary_finder::current_members() noexcept {
  try {
    return members_ ? members_() : std::vector<peer>{};
  } catch (...) {
    return {};
  }
}

inline void primary_finder::forget_failed_hostnames() noexcept {
  std::vector<boost::asio::ip::tcp::endpoint> failed;
  bool all = false;
  {
    std::lock_guard lock(forget_mutex_);
    failed.swap(forget_);
    all = std::exchange(forget_all_, false);
  }
  if (all) {
    hostnames_.clear();
    return;
  }
  for (const auto& endpoint : failed) {
    std::erase_if(hostnames_, [&](const auto& entry) { return entry.second == endpoint; });
  }
}

inline void primary_finder::record_failure(std::string why) {
  std::lock_guard lock(failure_mutex_);
  last_failure_ = std::move(why);
}

inline void primary_finder::watch_role() {
  if (stopped_) return;
  role_timer_.expires_after(options_.role_poll_interval);
  role_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (ec || self->stopped_) return;
    if (self->current_.load(std::memory_order_acquire) != nullptr) {
      const litefs::role now = self->local_role();
      if (now.kind != self->cached_role_.kind ||
          now.primary_hostname != self->cached_role_.primary_hostname) {
        self->invalidate();
      }
    }
    self->watch_role();
  });
}

}  // namespace fwd
