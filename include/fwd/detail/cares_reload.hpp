#pragma once

// A c-ares channel that follows its resolver configuration. c-ares reads resolv.conf
// once, when a channel is created (only its own event thread, which fwd does not use
// since the Asio reactor drives the sockets, reloads it by itself). So fwd compares the
// file's content before each round and, when it changed, builds a new channel from it;
// queries pending on the replaced channel finish there, and it is dropped after.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/strand.hpp>
#include <fwd/detail/cares_channel.hpp>

#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fwd::detail {

class cares_reloading_channel {
 public:
  using strand_type = cares_channel::strand_type;

  /// Throws fwd::error like cares_channel::create.
  cares_reloading_channel(strand_type strand, cares_channel_options options)
      : strand_(std::move(strand)), options_(std::move(options)) {
    if (options_.servers.empty()) {
      watched_ = options_.resolv_conf.empty() ? std::string("/etc/resolv.conf") : options_.resolv_conf;
      content_ = read(watched_);  // read before c-ares does: a change in between is seen later
    }
    current_ = cares_channel::create(strand_, options_);
  }

  cares_reloading_channel(const cares_reloading_channel&) = delete;
  cares_reloading_channel& operator=(const cares_reloading_channel&) = delete;

  /// The channel new queries go to. Must be used on the strand, like everything here.
  cares_channel* get() const noexcept { return current_.get(); }

  /// The file whose changes are followed; empty with explicit servers.
  const std::string& watched() const noexcept { return watched_; }

  /// Re-reads the configuration and replaces the channel when its content changed (an
  /// unreadable file changes nothing). Returns whether it replaced the channel; throws
  /// fwd::error when the new channel cannot be created, and then keeps the old one and
  /// tries again at the next call.
  bool refresh() {
    std::erase_if(retired_, [](const auto& channel) { return channel->pending() == 0; });
    if (watched_.empty()) return false;
    auto content = read(watched_);
    if (!content || content == content_) return false;
    auto replacement = cares_channel::create(strand_, options_);
    if (current_->pending() > 0) retired_.push_back(std::move(current_));
    current_ = std::move(replacement);
    content_ = std::move(content);
    return true;
  }

  /// Completes every pending query, on every channel, with ARES_ECANCELLED.
  void cancel() {
    current_->cancel();
    for (auto& channel : retired_) channel->cancel();
  }

 private:
  static std::optional<std::string> read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    if (in.bad()) return std::nullopt;
    return text;
  }

  strand_type strand_;
  cares_channel_options options_;
  std::string watched_;
  std::optional<std::string> content_;
  std::shared_ptr<cares_channel> current_;
  std::vector<std::shared_ptr<cares_channel>> retired_;  // replaced, queries still pending
};

}  // namespace fwd::detail
