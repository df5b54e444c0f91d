#pragma once

// `fwd.hello`, the procedure every fwd server answers: who the node is and what it knows
// of LiteFS. Discovery calls it.

#include <fwd/procedure.hpp>
#include <fwd/rpc/wire.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace fwd::rpc {

/// A node's answer to `fwd.hello`.
struct hello_info {
  static constexpr std::string_view fwd_type_name = "fwd.hello_info";

  std::string node_name;        ///< the server's configured name
  std::string litefs_hostname;  ///< the node's LiteFS hostname (what `.primary` names)
  std::string role;             ///< "primary", "replica", "unknown" or "not_litefs"
  std::uint64_t txid = 0;       ///< the database's TXID on that node (`<db>-pos`)
  std::uint32_t protocol_version = wire::protocol_version;

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & node_name & litefs_hostname & role & txid & protocol_version;
  }
};

/// The built-in procedure: `client.async_call(peer, fwd::rpc::hello, token)`.
inline const fwd::procedure<hello_info()> hello{"fwd.hello"};

}  // namespace fwd::rpc
