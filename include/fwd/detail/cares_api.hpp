#pragma once

// What differs between c-ares versions, behind one interface: sending a query and reading
// its answer's records. From c-ares 1.28 on, queries go through ares_query_dnsrec and
// ares_search_dnsrec and answers are read from the parsed ares_dns_record_t (the older
// functions are deprecated there); before 1.28 (Debian 12 ships 1.18), ares_query and
// ares_search hand over the raw answer, read with ares_parse_{a,aaaa,srv}_reply.
//
// FWD_CARES_LEGACY_API=1 selects the older functions on any version (they are still
// exported); their deprecation warnings are silenced locally either way.

#include <ares.h>

#include <algorithm>
#include <array>
#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if !defined(FWD_CARES_LEGACY_API)
#if ARES_VERSION >= 0x011c00
#define FWD_CARES_LEGACY_API 0
#else
#define FWD_CARES_LEGACY_API 1
#endif
#endif

#if !FWD_CARES_LEGACY_API
#include <ares_dns_record.h>
#endif

namespace fwd::detail {

inline constexpr int dns_type_a = 1;      // ns_t_a
inline constexpr int dns_type_aaaa = 28;  // ns_t_aaaa
inline constexpr int dns_type_srv = 33;   // ns_t_srv

/// One record of an answer, of the type asked for.
struct dns_record {
  boost::asio::ip::address address;  ///< A, AAAA
  std::string target;                ///< SRV
  std::uint16_t port = 0;            ///< SRV
  /// Seconds the server lets the record be cached; unknown for SRV before c-ares 1.28.
  std::optional<std::uint32_t> ttl;
};

/// Called once per query: c-ares's status and, on success, the records of the type asked
/// for (a successful answer without any is reported as ARES_ENODATA).
using dns_answer_callback = std::function<void(int status, std::vector<dns_record>&& records)>;

namespace cares_api {

// More records than this in one answer are cut: a cluster of more nodes than one answer
// carries needs SRV or several names.
inline constexpr std::size_t max_records = 256;

struct query_context {
  int type;
  dns_answer_callback callback;
};

inline void deliver(void* arg, int status, std::vector<dns_record>&& records) {
  std::unique_ptr<query_context> context(static_cast<query_context*>(arg));
  if (status == ARES_SUCCESS && records.empty()) status = ARES_ENODATA;
  if (status != ARES_SUCCESS) records.clear();
  context->callback(status, std::move(records));
}

#if FWD_CARES_LEGACY_API

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif

inline int read_records(int type, const unsigned char* answer, int length,
                        std::vector<dns_record>& out) {
  int count = static_cast<int>(max_records);
  if (type == dns_type_a) {
    std::array<ares_addrttl, max_records> records{};
    const int status = ares_parse_a_reply(answer, length, nullptr, records.data(), &count);
    for (int k = 0; status == ARES_SUCCESS && k < count; ++k) {
      boost::asio::ip::address_v4::bytes_type bytes;
      std::memcpy(bytes.data(), &records[k].ipaddr, bytes.size());
      out.push_back({boost::asio::ip::address_v4(bytes), {}, 0,
                     static_cast<std::uint32_t>(std::max(records[k].ttl, 0))});
    }
    return status;
  }
  if (type == dns_type_aaaa) {
    std::array<ares_addr6ttl, max_records> records{};
    const int status = ares_parse_aaaa_reply(answer, length, nullptr, records.data(), &count);
    for (int k = 0; status == ARES_SUCCESS && k < count; ++k) {
      boost::asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), &records[k].ip6addr, bytes.size());
      out.push_back({boost::asio::ip::address_v6(bytes), {}, 0,
                     static_cast<std::uint32_t>(std::max(records[k].ttl, 0))});
    }
    return status;
  }
  ares_srv_reply* records = nullptr;
  const int status = ares_parse_srv_reply(answer, length, &records);
  for (auto* r = records; status == ARES_SUCCESS && r != nullptr; r = r->next) {
    if (r->host != nullptr && out.size() < max_records) out.push_back({{}, r->host, r->port, {}});
  }
  if (records != nullptr) ares_free_data(records);
  return status;
}

inline void on_answer(void* arg, int status, int /*timeouts*/, unsigned char* answer, int length) {
  std::vector<dns_record> records;
  if (status == ARES_SUCCESS) {
    status = read_records(static_cast<query_context*>(arg)->type, answer, length, records);
  }
  deliver(arg, status, std::move(records));
}

/// Sends the query; `callback` runs exactly once, maybe inside this call.
inline void send(ares_channel channel, const std::string& name, int type, bool search,
                 dns_answer_callback callback) {
  auto* context = new query_context{type, std::move(callback)};
  if (search) {
    ares_search(channel, name.c_str(), 1 /* C_IN */, type, &on_answer, context);
  } else {
    ares_query(channel, name.c_str(), 1 /* C_IN */, type, &on_answer, context);
  }
}

/// Handles what is ready on `read_fd` / `write_fd` (ARES_SOCKET_BAD: none) and what has
/// timed out.
inline void process(ares_channel channel, ares_socket_t read_fd, ares_socket_t write_fd) {
  ares_process_fd(channel, read_fd, write_fd);
}

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#else  // FWD_CARES_LEGACY_API

inline void read_records(int type, const ares_dns_record_t* answer, std::vector<dns_record>& out) {
  const std::size_t count = ares_dns_record_rr_cnt(answer, ARES_SECTION_ANSWER);
  for (std::size_t k = 0; k < count && out.size() < max_records; ++k) {
    const ares_dns_rr_t* rr = ares_dns_record_rr_get_const(answer, ARES_SECTION_ANSWER, k);
    if (rr == nullptr || static_cast<int>(ares_dns_rr_get_type(rr)) != type) continue;
    const std::uint32_t ttl = ares_dns_rr_get_ttl(rr);
    if (type == dns_type_a) {
      const in_addr* a = ares_dns_rr_get_addr(rr, ARES_RR_A_ADDR);
      if (a == nullptr) continue;
      boost::asio::ip::address_v4::bytes_type bytes;
      std::memcpy(bytes.data(), a, bytes.size());
      out.push_back({boost::asio::ip::address_v4(bytes), {}, 0, ttl});
    } else if (type == dns_type_aaaa) {
      const ares_in6_addr* a = ares_dns_rr_get_addr6(rr, ARES_RR_AAAA_ADDR);
      if (a == nullptr) continue;
      boost::asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), a, bytes.size());
      out.push_back({boost::asio::ip::address_v6(bytes), {}, 0, ttl});
    } else {
      const char* target = ares_dns_rr_get_str(rr, ARES_RR_SRV_TARGET);
      if (target == nullptr) continue;
      out.push_back({{}, target, ares_dns_rr_get_u16(rr, ARES_RR_SRV_PORT), ttl});
    }
  }
}

inline void on_answer(void* arg, ares_status_t status, std::size_t /*timeouts*/,
                      const ares_dns_record_t* answer) {
  std::vector<dns_record> records;
  if (status == ARES_SUCCESS && answer != nullptr) {
    read_records(static_cast<query_context*>(arg)->type, answer, records);
  }
  deliver(arg, status, std::move(records));
}

/// Sends the query; `callback` runs exactly once, maybe inside this call.
inline void send(ares_channel_t* channel, const std::string& name, int type, bool search,
                 dns_answer_callback callback) {
  auto* context = new query_context{type, std::move(callback)};
  const auto rr_type = static_cast<ares_dns_rec_type_t>(type);
  if (!search) {
    // The callback runs on every failure too.
    ares_query_dnsrec(channel, name.c_str(), ARES_CLASS_IN, rr_type, &on_answer, context, nullptr);
    return;
  }
  ares_dns_record_t* query = nullptr;
  ares_status_t status =
      ares_dns_record_create(&query, 0, ARES_FLAG_RD, ARES_OPCODE_QUERY, ARES_RCODE_NOERROR);
  if (status == ARES_SUCCESS) {
    status = ares_dns_record_query_add(query, name.c_str(), rr_type, ARES_CLASS_IN);
  }
  if (status == ARES_SUCCESS) {
    // The callback runs on every failure but a null argument; the query is copied.
    ares_search_dnsrec(channel, query, &on_answer, context);
  } else {
    deliver(context, status, {});
  }
  ares_dns_record_destroy(query);
}

/// Handles what is ready on `read_fd` / `write_fd` (ARES_SOCKET_BAD: none) and what has
/// timed out.
inline void process(ares_channel_t* channel, ares_socket_t read_fd, ares_socket_t write_fd) {
#if ARES_VERSION >= 0x012200
  // ares_process_fds (1.34) handles the events and the timeouts in one pass.
  ares_fd_events_t events[2];
  std::size_t count = 0;
  if (read_fd != ARES_SOCKET_BAD) events[count++] = {read_fd, ARES_FD_EVENT_READ};
  if (write_fd != ARES_SOCKET_BAD) events[count++] = {write_fd, ARES_FD_EVENT_WRITE};
  ares_process_fds(channel, count == 0 ? nullptr : events, count, ARES_PROCESS_FLAG_NONE);
#else
  ares_process_fd(channel, read_fd, write_fd);
#endif
}

#endif  // FWD_CARES_LEGACY_API

}  // namespace cares_api

}  // namespace fwd::detail
