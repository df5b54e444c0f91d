// LiteFS's HTTP API as the simulation serves it: `GET /events` and `GET /info` per node,
// with LiteFS v0.5.14's bytes (see litefs_sim.hpp). One thread serves every node of a
// cluster; the controller tells it each node's view of the primary and when a node's
// LiteFS dies or comes back; it sees new positions itself through inotify.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "litefs_sim.hpp"

namespace fwd_sim {

/** One event line as LiteFS writes it (JSON + "\n"). */
std::string init_event(bool is_primary, const std::string& primary_hostname);
std::string primary_change_event(bool is_primary, const std::string& primary_hostname);
std::string tx_event(const std::string& db, const db_position& pos, std::uint32_t page_size,
                     std::uint32_t commit);

class http_api {
 public:
  struct node {
    std::string hostname;
    std::filesystem::path mount;
  };
  http_api(std::vector<node> nodes, std::string database, std::string cluster_id);
  ~http_api();
  http_api(const http_api&) = delete;
  http_api& operator=(const http_api&) = delete;

  std::uint16_t port(std::size_t i) const { return ports_.at(i); }
  /** The node's view of the primary; a change is sent as primaryChange. */
  void set_view(std::size_t i, bool is_primary, const std::string& primary_hostname);
  /** LiteFS on node i died (false: streams end, the port refuses) or came back. */
  void set_alive(std::size_t i, bool alive);

 private:
  struct client;
  struct view {
    bool is_primary = false;
    std::string hostname;
    friend bool operator==(const view&, const view&) = default;
  };
  void serve();
  void wake();
  void open_listener(std::size_t i);
  void watch(std::size_t i);
  void on_inotify();
  void on_readable(client& c);
  void apply_alive_locked();
  void broadcast_locked(std::size_t i, const std::string& event);
  std::string info_locked(std::size_t i) const;

  std::vector<node> nodes_;
  std::string database_;
  std::string cluster_id_;
  std::vector<std::uint16_t> ports_;
  int wake_fd_ = -1;
  int inotify_fd_ = -1;

  mutable std::mutex mutex_;
  bool stopping_ = false;
  std::vector<int> listeners_;  // -1 while the node is dead
  std::vector<int> watches_;    // inotify watch descriptors, -1 while dead
  std::vector<bool> alive_;
  std::uint64_t requested_ = 0;
  std::uint64_t applied_ = 0;
  std::condition_variable applied_cv_;
  std::vector<view> views_;
  std::vector<db_position> positions_;
  std::vector<std::unique_ptr<client>> clients_;
  std::thread thread_;
};

}  // namespace fwd_sim
