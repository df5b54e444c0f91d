#pragma once

// One resolution round over several DNS sources on a cares_channel: A and AAAA of a name
// (with a fixed port), or SRV of a name (each target's A and AAAA, with the SRV port).
// Every source ends with what it found and whether its answer was definitive: an answer
// is definitive when every query got one (records, "no such record" or NXDOMAIN), and
// not when a query failed (timeout, refused, SERVFAIL, malformed answer, cancelled).

#include <ares.h>

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <functional>
#include <fwd/detail/cares_channel.hpp>
#include <fwd/detail/cares_error.hpp>
#include <fmt/format.h>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fwd::detail {

struct dns_query_spec {
  bool srv = false;  ///< SRV records of `name`, else A/AAAA of `name`
  std::string name;
  std::uint16_t port = 0;  ///< for A/AAAA
};

struct dns_found_address {
  std::string host;  ///< the name the address belongs to (the SRV target for SRV)
  boost::asio::ip::address address;
  std::uint16_t port = 0;
};

struct dns_source_answer {
  bool definitive = true;
  std::vector<dns_found_address> found;
  /// The first failed query (definitive == false), or, when nothing was found, why
  /// (ARES_ENOTFOUND before ARES_ENODATA); empty otherwise.
  boost::system::error_code error;
  std::string failed_query;  ///< e.g. "AAAA node1.cluster.test"
  /// The shortest TTL of the records found (seconds), when the answer carried TTLs.
  std::optional<std::uint32_t> min_ttl;

  // While the round runs: the best "empty" status seen, for when nothing is found.
  int empty_status = ARES_SUCCESS;
  std::string empty_query;
};

/// A round of queries; `done` runs on the channel's strand once every query has
/// answered, unless the channel is destroyed first (then nothing runs).
class dns_resolve_round : public std::enable_shared_from_this<dns_resolve_round> {
 public:
  using done_callback = std::function<void(std::vector<dns_source_answer>&&)>;

  dns_resolve_round(cares_channel* channel, std::vector<dns_query_spec> specs, bool ipv4, bool ipv6,
                    done_callback done)
      : channel_(channel),
        specs_(std::move(specs)),
        ipv4_(ipv4),
        ipv6_(ipv6),
        answers_(specs_.size()),
        done_(std::move(done)) {}

  /// Must run on the channel's strand.
  void start() {
    ++outstanding_;  // held until every query is sent, so `done` cannot run early
    for (std::size_t i = 0; i < specs_.size(); ++i) {
      const auto& spec = specs_[i];
      if (spec.srv) {
        send(spec.name, dns_type_srv, true,
             [self = shared_from_this(), i](int status, std::vector<dns_record>&& records) {
               self->on_srv(i, status, std::move(records));
             });
      } else {
        resolve_addresses(i, spec.name, spec.port, true);
      }
    }
    finish_one();
  }

 private:
  void send(const std::string& name, int type, bool search, cares_channel::answer_callback cb) {
    ++outstanding_;
    channel_->query(name, type, search, std::move(cb));
  }

  void resolve_addresses(std::size_t i, const std::string& name, std::uint16_t port, bool search) {
    if (ipv4_) {
      send(name, dns_type_a, search,
           [self = shared_from_this(), i, name, port](int status,
                                                      std::vector<dns_record>&& records) {
             self->on_address(i, name, port, dns_type_a, status, std::move(records));
           });
    }
    if (ipv6_) {
      send(name, dns_type_aaaa, search,
           [self = shared_from_this(), i, name, port](int status,
                                                      std::vector<dns_record>&& records) {
             self->on_address(i, name, port, dns_type_aaaa, status, std::move(records));
           });
    }
  }

  void note(std::size_t i, int status, std::string query) {
    auto& answer = answers_[i];
    if (status == ARES_SUCCESS) return;
    if (status == ARES_EDESTRUCTION) destroyed_ = true;
    if (status == ARES_ENODATA || status == ARES_ENOTFOUND) {
      if (answer.empty_status == ARES_SUCCESS ||
          (answer.empty_status == ARES_ENODATA && status == ARES_ENOTFOUND)) {
        answer.empty_status = status;
        answer.empty_query = std::move(query);
      }
      return;
    }
    if (answer.definitive) {
      answer.definitive = false;
      answer.error = make_dns_error(status);
      answer.failed_query = std::move(query);
    }
  }

  void note_ttl(std::size_t i, const dns_record& record) {
    if (!record.ttl) return;
    auto& min_ttl = answers_[i].min_ttl;
    min_ttl = min_ttl ? std::min(*min_ttl, *record.ttl) : *record.ttl;
  }

  void on_address(std::size_t i, const std::string& name, std::uint16_t port, int type, int status,
                  std::vector<dns_record>&& records) {
    for (const auto& record : records) {
      answers_[i].found.push_back({name, record.address, port});
      note_ttl(i, record);
    }
    note(i, status, (type == dns_type_a ? "A " : "AAAA ") + name);
    finish_one();
  }

  void on_srv(std::size_t i, int status, std::vector<dns_record>&& records) {
    std::vector<std::pair<std::string, std::uint16_t>> targets;
    for (const auto& record : records) {
      // A target of "." says the service is deliberately not offered there.
      if (!record.target.empty() && record.target != ".") {
        targets.emplace_back(record.target, record.port);
        note_ttl(i, record);
      }
    }
    if (status == ARES_SUCCESS && targets.empty()) status = ARES_ENODATA;
    if (!destroyed_) {
      for (const auto& [target, port] : targets) resolve_addresses(i, target, port, false);
    }
    note(i, status, fmt::format("SRV {}", specs_[i].name));
    finish_one();
  }

  void finish_one() {
    if (--outstanding_ > 0) return;
    if (destroyed_) return;  // the channel is being destroyed: nobody waits for this round
    for (auto& answer : answers_) {
      if (answer.definitive && answer.found.empty() && answer.empty_status != ARES_SUCCESS) {
        answer.error = make_dns_error(answer.empty_status);
        answer.failed_query = answer.empty_query;
      }
    }
    auto done = std::move(done_);
    done(std::move(answers_));
  }

  cares_channel* channel_;  // alive while queries are pending: it owns them
  std::vector<dns_query_spec> specs_;
  bool ipv4_;
  bool ipv6_;
  std::vector<dns_source_answer> answers_;
  done_callback done_;
  std::size_t outstanding_ = 0;
  bool destroyed_ = false;
};

}  // namespace fwd::detail
