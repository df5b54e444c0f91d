#pragma once

// The server side of a write procedure (also run directly for a local call): checks the
// local role, decodes the arguments and runs the user's function on the write executor.

#include <fwd/error.hpp>
#include <fwd/litefs/mount.hpp>
#include <fwd/procedure.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/sqlite/connection.hpp>
#include <fwd/write/builtins.hpp>
#include <fwd/write/detail/forward_core.hpp>
#include <fwd/write/executor.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <iterator>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fwd::detail {

template <class F, class... Ds>
decltype(auto) invoke_writer(F& fn, sqlite3* db, std::tuple<Ds...>& args) {
  return std::apply(
      [&](auto&... values) -> decltype(auto) {
        if constexpr (std::is_invocable_v<F&, sqlite3*, Ds&...>) {
          return std::invoke(fn, db, values...);
        } else {
          auto c = sqlite::connection::borrow(db);
          return std::invoke(fn, c, values...);
        }
      },
      args);
}

// After the commit, with a durability asked: replies once enough replicas have reported a
// position at or past `txid`, or with not_yet_durable a little before the caller's
// deadline (so that the answer reaches it in time). Every write of a batch waits for the
// batch's TXID: one report releases them all.
inline void wait_durable(const std::weak_ptr<forward_core>& weak, rpc::reply_handler reply, durability required,
                         std::chrono::steady_clock::time_point deadline, std::uint64_t txid, std::string payload) {
  const auto core = weak.lock();
  if (!core || txid == 0) {
    std::move(reply)(make_error_code(errc::not_yet_durable),
                     fmt::format("the write committed on the primary, but {}: durability {} cannot be "
                                 "confirmed; retrying with the same request id is safe",
                                 core ? "its TXID is not known (LiteFS's position could not be read, or did not "
                                        "move with the commit)"
                                      : "the node is shutting down",
                                 to_string(required)));
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (deadline == std::chrono::steady_clock::time_point{}) deadline = now + core->options.default_deadline;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
  deadline -= std::clamp(left / 10, std::chrono::milliseconds(2), std::chrono::milliseconds(100));
  auto shared_reply = std::make_shared<rpc::reply_handler>(std::move(reply));
  core->durability->async_wait(txid, required, deadline,
                               [shared_reply, payload = std::move(payload)](boost::system::error_code ec,
                                                                            std::string why) mutable {
                                 if (ec) {
                                   std::move (*shared_reply)(ec, std::move(why));
                                 } else {
                                   std::move (*shared_reply)(boost::system::error_code{}, std::move(payload));
                                 }
                               });
}

// The server side of a write procedure (also run directly for local calls): checks the
// local role, decodes the arguments, and runs the user's function through the write
// executor with the call's request id; replies with the position envelope.
template <class Proc, class F>
rpc::registry::raw_handler make_write_handler(std::weak_ptr<forward_core> weak,
                                              std::shared_ptr<F> fn, std::string procedure_key) {
  return [weak, fn, procedure_key](const rpc::incoming_call& call, boost::asio::any_io_executor /*executor*/,
                    rpc::reply_handler reply) {
    auto core = weak.lock();
    if (!core || core->stopped.load()) {
      std::move(reply)(make_error_code(errc::cancelled), "the node is shutting down; nothing ran");
      return;
    }
    litefs::role role;
    try {
      role = core->options.role();
    } catch (const std::exception& e) {
      role.reason = fmt::format("reading the local role failed: {}", e.what());
    } catch (...) {
      role.reason = "reading the local role failed";
    }
    if (role.kind != litefs::role_kind::primary) {
      std::string why = fmt::format("this node is not the primary ({}); nothing ran", role.reason);
      if (role.kind == litefs::role_kind::replica)
        fmt::format_to(std::back_inserter(why), "; LiteFS names the primary {}", role.primary_hostname);
      std::move(reply)(make_error_code(errc::not_primary), std::move(why));
      return;
    }
    auto writer = core->writer;
    if (!writer) {
      std::move(reply)(make_error_code(errc::not_primary),
                       "this node has not started its writer; nothing ran");
      return;
    }
    boost::system::error_code ec;
    std::string why;
    auto args = std::make_shared<typename Proc::arguments>(
        fwd::detail::decode_arguments<Proc>(call.arguments, ec, &why));
    if (ec) {
      std::move(reply)(ec, fmt::format("the arguments of '{}' could not be decoded as {}: {}", call.procedure,
                                       Proc::signature_text(), why));
      return;
    }
    using R = typename Proc::result_type;
    writer->async_write(
        call.request_id, procedure_key,
        [fn, args](sqlite3* db) -> std::string {
          if constexpr (std::is_void_v<R>) {
            invoke_writer(*fn, db, *args);
            return {};
          } else {
            return fwd::detail::encode_result<R>(static_cast<R>(invoke_writer(*fn, db, *args)));
          }
        },
        call.deadline,  // dropped before it runs once the caller has stopped waiting
        [reply = std::move(reply), weak, required = durability::from_wire(call.durability),
         deadline = call.deadline](boost::system::error_code e, std::string result, litefs::position pos) mutable {
          if (e) {
            std::move(reply)(e, std::move(result));
            return;
          }
          if (pos.txid != 0) {
            if (const auto core = weak.lock()) core->durability->note_commit(pos.txid, pos.checksum);
          }
          if (required == durability::none()) {
            std::move(reply)(boost::system::error_code{}, encode_write_reply(pos, result));
          } else {
            wait_durable(weak, std::move(reply), required, deadline, pos.txid, encode_write_reply(pos, result));
          }
        });
  };
}

}  // namespace fwd::detail
