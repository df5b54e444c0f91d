#pragma once

// DNS resolver errors: c-ares's status codes kept as they are (ARES_ENOTFOUND stays 4) in
// their own category "fwd.dns", with c-ares's message followed by what to do.

#include <ares.h>

#include <boost/system/error_category.hpp>
#include <boost/system/error_code.hpp>
#include <fmt/format.h>

#include <string>
#include <system_error>
#include <type_traits>

namespace fwd {

/// c-ares's status codes, under fwd's names; the values are c-ares's own.
enum class dns_errc {
  no_data = ARES_ENODATA,                  ///< the name exists but has no record of that type
  format_error = ARES_EFORMERR,            ///< the server could not read the query
  server_failure = ARES_ESERVFAIL,         ///< the server failed (SERVFAIL)
  not_found = ARES_ENOTFOUND,              ///< the name does not exist (NXDOMAIN)
  not_implemented = ARES_ENOTIMP,          ///< the server does not implement that query
  refused = ARES_EREFUSED,                 ///< the server refused to answer
  bad_query = ARES_EBADQUERY,              ///< the query was malformed
  bad_name = ARES_EBADNAME,                ///< the name is not a valid DNS name
  bad_response = ARES_EBADRESP,            ///< the answer was malformed
  connection_refused = ARES_ECONNREFUSED,  ///< no DNS server answered on its port
  timeout = ARES_ETIMEOUT,                 ///< no answer within the query timeout
  out_of_memory = ARES_ENOMEM,             ///< c-ares ran out of memory
  destroyed = ARES_EDESTRUCTION,           ///< the resolver was destroyed mid-query
  bad_string = ARES_EBADSTR,               ///< a configuration string (e.g. a server) is malformed
  not_initialized = ARES_ENOTINITIALIZED,  ///< c-ares's library initialisation failed
  cancelled = ARES_ECANCELLED,             ///< the query was cancelled
};

namespace detail {

// What to do after each c-ares status, appended to ares_strerror's text.
inline const char* dns_advice(int status) noexcept {
  switch (status) {
    case ARES_ENODATA:
      return "the name exists but has no record of the requested type: add A/AAAA (or SRV) "
             "records for the cluster's nodes";
    case ARES_EFORMERR:
    case ARES_EBADQUERY:
      return "the server could not parse the query: check the name and the DNS server";
    case ARES_ESERVFAIL:
      return "the DNS server failed to answer: check its upstream and its logs; members "
             "from the last good answer are kept";
    case ARES_ENOTFOUND:
      return "the name does not exist (NXDOMAIN): check the configured name and the DNS "
             "zone; members are removed only after repeated NXDOMAIN answers";
    case ARES_ENOTIMP:
      return "the DNS server does not implement this query type: use another server or "
             "A/AAAA records instead of SRV";
    case ARES_EREFUSED:
      return "the DNS server refused the query: check that it serves this zone to this host";
    case ARES_EBADNAME:
      return "the name is not a valid DNS name: fix the configured name";
    case ARES_EBADRESP:
      return "the DNS answer was malformed: check the DNS server";
    case ARES_ECONNREFUSED:
      return "no DNS server answered on its address and port: check that the server runs "
             "and the configured servers (host:port); members from the last good answer "
             "are kept";
    case ARES_ETIMEOUT:
      return "no DNS answer within the query timeout: check the server and the network, or "
             "raise the query timeout; members from the last good answer are kept";
    case ARES_ENOMEM:
      return "out of memory";
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
      return "the resolver was stopped or destroyed before the answer arrived";
    case ARES_EBADSTR:
      return "a DNS server must be written as an IP address with an optional port: "
             "\"10.0.0.2:53\" or \"[fd00::2]:53\"";
    case ARES_ENOTINITIALIZED:
      return "c-ares could not initialise: check the resolver configuration "
             "(/etc/resolv.conf) or give explicit DNS servers";
    default:
      return "see c-ares's documentation for this status";
  }
}

class dns_category_impl final : public boost::system::error_category {
 public:
  // A fixed id lets categories from different shared libraries compare equal.
  constexpr dns_category_impl() noexcept
      : boost::system::error_category(0x8e1f'3c7a'5d02'4b93ull) {}
  const char* name() const noexcept override { return "fwd.dns"; }
  std::string message(int status) const override {
    return fmt::format("{} (c-ares status {}): {}", ares_strerror(status), status,
                       dns_advice(status));
  }
};

}  // namespace detail

/// The category of c-ares status codes, named "fwd.dns"; the value is c-ares's status
/// (e.g. ARES_ENOTFOUND, 4).
inline const boost::system::error_category& dns_category() noexcept {
  static constexpr detail::dns_category_impl instance;
  return instance;
}

/// An error_code for c-ares's status `status`.
inline boost::system::error_code make_dns_error(int status) noexcept {
  return {status, dns_category()};
}

inline boost::system::error_code make_error_code(dns_errc e) noexcept {
  return make_dns_error(static_cast<int>(e));
}

}  // namespace fwd

template <>
struct boost::system::is_error_code_enum<fwd::dns_errc> : std::true_type {};
template <>
struct std::is_error_code_enum<fwd::dns_errc> : std::true_type {};
