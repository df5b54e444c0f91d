#pragma once

// A small Consul stand-in for LiteFS's consul lease, for tests only: an HTTP server on
// 127.0.0.1 (port chosen by the OS) that implements exactly the calls LiteFS v0.5.14's
// Consul client makes (see ../shared/litefs/README.md):
//
//   PUT    /v1/catalog/register                    -> true
//   PUT    /v1/session/create   {Name,Behavior,LockDelay,TTL} -> {"ID":"..."}
//   PUT    /v1/session/renew/<id>                  -> [session], 404 once it is gone
//   PUT    /v1/session/destroy/<id>                -> true
//   GET    /v1/kv/<key>[?index=N&wait=D]           -> [pair] or 404, X-Consul-Index
//   PUT    /v1/kv/<key>?acquire=<id> | ?release=<id>  (body = value) -> true/false
//   PUT    /v1/kv/<key>[?cas=N]  (a plain put: LiteFS stores its cluster ID at
//                                 <key>/clusterid, a call its README does not list)
//   DELETE /v1/kv/<key>                            -> true
//
// Sessions expire when not renewed within their TTL (a timer thread; real Consul may
// wait up to twice the TTL, this one is exact so failover tests stay short); an expired
// or destroyed session deletes the keys it held (Behavior "delete") and starts their
// lock-delay, during which no acquire succeeds. A GET with `index` blocks until the KV
// index passes it or `wait` elapses.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace fwd_test {

class consul_standin {
 public:
  consul_standin();
  ~consul_standin();
  consul_standin(const consul_standin&) = delete;
  consul_standin& operator=(const consul_standin&) = delete;

  std::uint16_t port() const noexcept { return port_; }
  /// "http://127.0.0.1:<port>", for LiteFS's `lease.consul.url`.
  std::string url() const;

  /// The session holding `key`, if any (for tests and diagnostics).
  std::optional<std::string> holder(const std::string& key);
  /// The KV index (what X-Consul-Index answers).
  std::uint64_t index();
  /// Requests served so far, per "METHOD /path-prefix" (diagnostics).
  std::map<std::string, int> request_counts();

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
  std::uint16_t port_ = 0;
};

}  // namespace fwd_test
