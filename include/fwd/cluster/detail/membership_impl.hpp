#pragma once

// The state and work of a membership: DNS polling on a strand, the snapshot, and the
// pending async_wait_change and async_resolve_once operations.

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>
#include <chrono>
#include <cstdint>
#include <functional>
#include <fwd/detail/cares_channel.hpp>
#include <fwd/detail/cares_error.hpp>
#include <fwd/detail/cares_reload.hpp>
#include <fwd/detail/cares_resolve.hpp>
#include <fwd/detail/completion.hpp>
#include <fwd/cluster/membership_types.hpp>
#include <fwd/error.hpp>
#include <fwd/telemetry.hpp>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fwd {

namespace detail {

inline std::string describe(const dns_source& source) {
  if (source.type == dns_source::record_type::srv) return fmt::format("SRV records of {}", source.name);
  return fmt::format("A/AAAA records of {} (port {})", source.name, source.port);
}

class membership_impl : public std::enable_shared_from_this<membership_impl> {
 public:
  using strand_type = boost::asio::strand<boost::asio::any_io_executor>;
  using wait_completion =
      fwd::detail::pending_completion<void(boost::system::error_code, membership_snapshot_ptr)>;
  using resolve_completion =
      fwd::detail::pending_completion<void(boost::system::error_code, std::vector<member>)>;

  membership_impl(boost::asio::any_io_executor executor, membership_options options)
      : executor_(executor),
        strand_(boost::asio::make_strand(executor)),
        options_(std::move(options)),
        poll_timer_(strand_),
        snapshot_(std::make_shared<const membership_snapshot>()),
        tracked_(options_.dns.size()) {
    validate();
    for (const auto& source : options_.dns) {
      specs_.push_back({source.type == dns_source::record_type::srv, source.name, source.port});
    }
    if (!options_.dns.empty()) {
      channel_ = std::make_unique<cares_reloading_channel>(
          strand_, cares_channel_options{options_.dns_servers, options_.resolv_conf,
                                         options_.resolv_conf_port, options_.query_timeout,
                                         options_.query_tries});
    }
  }

  const boost::asio::any_io_executor& executor() const noexcept { return executor_; }

  membership_snapshot_ptr snapshot() const noexcept {
    return snapshot_.load(std::memory_order_acquire);
  }

  void start() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      if (self->polling_) return;
      self->polling_ = true;
      self->poll(++self->poll_generation_);
    });
  }

  void stop() {
    boost::asio::post(strand_, [self = shared_from_this()] {
      self->polling_ = false;
      ++self->poll_generation_;
      self->poll_timer_.cancel();
      if (self->channel_) self->channel_->cancel();  // pending rounds end with ECANCELLED
      auto waiters = std::move(self->waiters_);
      self->waiters_.clear();
      for (auto& [id, w] : waiters) self->finish_wait(w, boost::asio::error::operation_aborted);
    });
  }

  template <class Handler>
  void initiate_resolve_once(Handler&& handler) {
    auto op = std::make_shared<resolve_op>();
    op->completion = resolve_completion(std::forward<Handler>(handler), executor_);
    if (auto slot = op->completion.slot(); slot.is_connected()) {
      // A weak reference: the slot belongs to the handler the operation holds.
      slot.assign([weak = weak_from_this(), weak_op = std::weak_ptr<resolve_op>(op)](
                      boost::asio::cancellation_type type) {
        if (!(type &
              (boost::asio::cancellation_type::terminal | boost::asio::cancellation_type::partial |
               boost::asio::cancellation_type::total))) {
          return;
        }
        auto self = weak.lock();
        auto op = weak_op.lock();
        if (self && op) {
          boost::asio::post(self->strand_, [op] {
            finish_resolve(*op, boost::asio::error::operation_aborted, {});
          });
        }
      });
    }
    boost::asio::post(strand_, [self = shared_from_this(), op] {
      if (!op->completion) return;  // cancelled before it started
      self->resolve([weak = self->weak_from_this(), op](std::vector<dns_source_answer>&& answers) {
        auto self = weak.lock();
        if (!self) return;
        boost::system::error_code ec;
        for (const auto& answer : answers) {
          if (answer.error == make_dns_error(ARES_ECANCELLED)) {
            ec = boost::asio::error::operation_aborted;
            break;
          }
          if (!ec && answer.error) ec = answer.error;
        }
        std::vector<member> members;
        for (auto& [endpoint, m] : self->merge(answers)) members.push_back(std::move(m));
        finish_resolve(*op, ec, std::move(members));
      });
    });
  }

  template <class Handler>
  void initiate_wait_change(Handler&& handler, std::uint64_t after_version) {
    const std::uint64_t id = next_waiter_id_.fetch_add(1, std::memory_order_relaxed);
    waiter w;
    w.after_version = after_version;
    w.completion = wait_completion(std::forward<Handler>(handler), executor_);
    if (auto slot = w.completion.slot(); slot.is_connected()) {
      slot.assign([weak = weak_from_this(), id](boost::asio::cancellation_type type) {
        if (!(type &
              (boost::asio::cancellation_type::terminal | boost::asio::cancellation_type::partial |
               boost::asio::cancellation_type::total))) {
          return;
        }
        if (auto self = weak.lock()) {
          boost::asio::post(self->strand_, [self, id] {
            auto found = self->waiters_.find(id);
            if (found == self->waiters_.end()) return;
            auto w = std::move(found->second);
            self->waiters_.erase(found);
            self->finish_wait(w, boost::asio::error::operation_aborted);
          });
        }
      });
    }
    boost::asio::post(strand_, [self = shared_from_this(), id, w = std::move(w)]() mutable {
      if (self->snapshot()->version > w.after_version) {
        self->finish_wait(w, {});
      } else {
        self->waiters_.emplace(id, std::move(w));
      }
    });
  }

 private:
  struct tracked_member {
    member who;
    unsigned missed_polls = 0;
    std::chrono::steady_clock::time_point first_missed{};
  };

  struct waiter {
    std::uint64_t after_version = 0;
    wait_completion completion;
  };

  struct resolve_op {
    resolve_completion completion;
  };

  static void finish_resolve(resolve_op& op, boost::system::error_code ec,
                             std::vector<member> members) {
    op.completion.post(ec, std::move(members));
  }

  void finish_wait(waiter& w, boost::system::error_code ec) {
    if (!w.completion) return;
    w.completion.post(ec, ec ? membership_snapshot_ptr{} : snapshot());
  }

  void validate() const {
    const auto bad = [](const std::string& what) {
      throw fwd::error(make_error_code(errc::bad_argument), fmt::format("membership_options: {}", what));
    };
    for (const auto& source : options_.dns) {
      if (source.name.empty()) bad("a DNS source has an empty name: give the cluster's DNS name");
      if (source.type == dns_source::record_type::address && source.port == 0) {
        bad(fmt::format("DNS source {} has port 0: give the port members listen on", source.name));
      }
    }
    if (options_.poll_interval <= std::chrono::milliseconds::zero()) {
      bad("poll_interval must be positive");
    }
    if (options_.query_timeout <= std::chrono::milliseconds::zero() || options_.query_tries < 1) {
      bad("query_timeout must be positive and query_tries at least 1");
    }
    if (!options_.ipv4 && !options_.ipv6) bad("enable ipv4, ipv6 or both");
  }

  // Resolves every DNS source once; `done` runs on the strand.
  void resolve(std::function<void(std::vector<dns_source_answer>&&)> done) {
    if (!channel_) {
      done({});
      return;
    }
    try {
      channel_->refresh();
    } catch (const fwd::error& e) {
      report(e.code(), fmt::format("{} changed but c-ares cannot use it ({}); the previous "
                                   "configuration is kept",
                                   channel_->watched(), e.what()));
    }
    std::make_shared<dns_resolve_round>(channel_->get(), specs_, options_.ipv4, options_.ipv6,
                                        std::move(done))
        ->start();
  }

  // Static members and what the answers found, by endpoint.
  std::map<boost::asio::ip::tcp::endpoint, member> merge(
      const std::vector<dns_source_answer>& answers) const {
    std::map<boost::asio::ip::tcp::endpoint, member> merged;
    for (const auto& m : options_.static_members) merged.emplace(m.endpoint, m);
    for (const auto& answer : answers) {
      for (const auto& found : answer.found) {
        boost::asio::ip::tcp::endpoint endpoint(found.address, found.port);
        merged.emplace(endpoint, member{found.host, endpoint});
      }
    }
    return merged;
  }

  void poll(std::uint64_t generation) {
    resolve([weak = weak_from_this(), generation](std::vector<dns_source_answer>&& answers) {
      auto self = weak.lock();
      if (!self || !self->polling_ || generation != self->poll_generation_) return;
      self->apply(answers);
      if (!self->channel_) return;  // a static list alone never changes: nothing to poll
      self->poll_timer_.expires_after(self->next_poll_delay(answers));
      self->poll_timer_.async_wait(boost::asio::bind_executor(
          self->strand_, [weak, generation](const boost::system::error_code& ec) {
            auto self = weak.lock();
            if (ec || !self || !self->polling_ || generation != self->poll_generation_) return;
            self->poll(generation);
          }));
    });
  }

  // poll_interval, or sooner when a record found expires sooner (a TTL of 0 sets no bound).
  std::chrono::milliseconds next_poll_delay(const std::vector<dns_source_answer>& answers) const {
    auto delay = options_.poll_interval;
    for (const auto& answer : answers) {
      if (answer.min_ttl && *answer.min_ttl > 0) {
        delay = std::min<std::chrono::milliseconds>(delay, std::chrono::seconds(*answer.min_ttl));
      }
    }
    return delay;
  }

  void report(const boost::system::error_code& ec, const std::string& message) {
    // Runs inside c-ares's callback: nothing may unwind through its C frames.
    fwd::detail::invoke_hook(options_.hooks.on_resolve_error, ec, message);
  }

  // Folds one poll's answers into the tracked members and publishes what changed.
  void apply(const std::vector<dns_source_answer>& answers) {
    const auto now = std::chrono::steady_clock::now();
    const unsigned polls_to_remove = std::max(1u, options_.remove_after_polls);
    for (std::size_t i = 0; i < answers.size(); ++i) {
      const auto& answer = answers[i];
      auto& tracked = tracked_[i];
      const std::string what = describe(options_.dns[i]);
      if (!answer.definitive) {
        report(answer.error,
               fmt::format("DNS query {} for {} failed: {}; keeping the {} member(s) of the last good answer",
                           answer.failed_query, what, answer.error.message(), tracked.size()));
        continue;
      }
      if (answer.error) {
        report(answer.error, fmt::format("DNS query {} for {} found no member: {}; {} member(s) are removed "
                                         "after {} such answer(s)",
                                         answer.failed_query, what, answer.error.message(), tracked.size(),
                                         polls_to_remove));
      }
      std::unordered_map<boost::asio::ip::tcp::endpoint, const dns_found_address*> found;
      for (const auto& f : answer.found) {
        found.emplace(boost::asio::ip::tcp::endpoint(f.address, f.port), &f);
      }
      for (const auto& [endpoint, f] : found) {
        tracked[endpoint] = tracked_member{member{f->host, endpoint}, 0, {}};
      }
      for (auto it = tracked.begin(); it != tracked.end();) {
        auto& t = it->second;
        if (found.count(it->first) != 0) {
          ++it;
          continue;
        }
        if (t.missed_polls++ == 0) t.first_missed = now;
        const bool grace_over = options_.remove_after > std::chrono::milliseconds::zero() &&
                                now - t.first_missed >= options_.remove_after;
        if (t.missed_polls >= polls_to_remove || grace_over) {
          it = tracked.erase(it);
        } else {
          ++it;
        }
      }
    }

    std::map<boost::asio::ip::tcp::endpoint, member> next;
    for (const auto& m : options_.static_members) next.emplace(m.endpoint, m);
    for (const auto& tracked : tracked_) {
      for (const auto& [endpoint, t] : tracked) next.emplace(endpoint, t.who);
    }

    const auto previous = snapshot();
    std::vector<membership_event> changes;
    for (const auto& m : previous->members) {
      if (next.count(m.endpoint) == 0) changes.push_back({membership_event::kind::left, m});
    }
    for (const auto& [endpoint, m] : next) {
      if (!previous->contains(endpoint)) changes.push_back({membership_event::kind::joined, m});
    }
    if (changes.empty() && previous->version != 0) return;

    auto published = std::make_shared<membership_snapshot>();
    published->version = previous->version + 1;
    for (auto& [endpoint, m] : next) published->members.push_back(std::move(m));
    published->changes = std::move(changes);
    snapshot_.store(published, std::memory_order_release);

    for (const auto& event : published->changes) {
      const auto& hook = event.what == membership_event::kind::joined ? options_.hooks.on_joined
                                                                      : options_.hooks.on_left;
      fwd::detail::invoke_hook(hook, event.who);
    }
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (published->version > it->second.after_version) {
        finish_wait(it->second, {});
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }

  boost::asio::any_io_executor executor_;
  strand_type strand_;
  membership_options options_;
  std::vector<dns_query_spec> specs_;
  std::unique_ptr<cares_reloading_channel> channel_;
  boost::asio::steady_timer poll_timer_;
  std::atomic<membership_snapshot_ptr> snapshot_;
  // Per DNS source: the members its answers found, with how often they were missed since.
  std::vector<std::unordered_map<boost::asio::ip::tcp::endpoint, tracked_member>> tracked_;
  std::map<std::uint64_t, waiter> waiters_;
  std::atomic<std::uint64_t> next_waiter_id_{1};
  bool polling_ = false;
  std::uint64_t poll_generation_ = 0;
};

}  // namespace detail

}  // namespace fwd
