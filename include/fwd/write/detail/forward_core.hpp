#pragma once

// The state a forwarder's calls share: its executor and options, the RPC client, the
// primary finder, the local writer, the retry budget, the breakers and the procedures
// served locally. Kept alive by the calls.

#include <fwd/cluster/discovery.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/write/breaker.hpp>
#include <fwd/write/detail/dedup_lookup.hpp>
#include <fwd/write/detail/durability_tracker.hpp>
#include <fwd/write/executor.hpp>
#include <fwd/write/forward_options.hpp>
#include <fwd/write/retry.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>
#include <cstddef>
#include <string>
#include <utility>

namespace fwd::detail {

/// The shared state of a forwarder: what every call needs, kept alive by the calls.
struct forward_core {
  boost::asio::any_io_executor executor;
  forwarder_options options;
  std::shared_ptr<rpc::client> client;
  std::shared_ptr<primary_finder> finder;
  std::shared_ptr<sqlite::write_executor> writer;  // set at start
  // The replicas' positions, and the writes this node (as primary) holds until durable.
  std::shared_ptr<durability_tracker> durability;
  // Read-your-writes' dedup-row lookups, batched on the monitor's polling thread.
  std::shared_ptr<dedup_lookups> lookups;
  retry_budget budget;
  breaker_set breakers;
  std::atomic<bool> stopped{false};
  struct local_procedure {
    std::uint64_t signature;
    rpc::registry::raw_handler handler;
  };
  std::map<std::string, local_procedure, std::less<>> procedures;  // filled before start

  /// A call began: it counts until it has completed.
  void call_began() {
    std::lock_guard lock(idle_mutex);
    ++in_flight;
  }

  /// A call completed (its handler is posted): runs the when_idle callbacks at the last.
  void call_ended() {
    std::vector<std::function<void()>> ready;
    {
      std::lock_guard lock(idle_mutex);
      if (--in_flight == 0) ready.swap(on_idle);
    }
    for (auto& f : ready) f();
  }

  /// Runs `f` once no call is in flight (at once if none is).
  void when_idle(std::function<void()> f) {
    {
      std::lock_guard lock(idle_mutex);
      if (in_flight != 0) {
        on_idle.push_back(std::move(f));
        return;
      }
    }
    f();
  }

  std::mutex idle_mutex;
  std::size_t in_flight = 0;                     // guarded by idle_mutex
  std::vector<std::function<void()>> on_idle;    // guarded by idle_mutex

  forward_core(boost::asio::any_io_executor ex, forwarder_options opts,
               std::shared_ptr<rpc::client> c, std::shared_ptr<primary_finder> f)
      : executor(std::move(ex)),
        options(std::move(opts)),
        client(std::move(c)),
        finder(std::move(f)),
        durability(std::make_shared<durability_tracker>(executor, options.durability_forget_after)),
        lookups(std::make_shared<dedup_lookups>((options.mount / options.database_name).string())),
        budget(options.retry),
        breakers(options.breaker) {
    if (!options.role) options.role = [mount = options.mount] { return litefs::current_role(mount); };
  }
};

}  // namespace fwd::detail
