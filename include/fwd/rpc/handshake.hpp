#pragma once

// The handshake of a fwd connection, as pure functions over frames (fwd/rpc/wire.hpp):
// versions, nonces and proofs of the cluster secret. Nothing here touches a socket.
//
// The handshake, before any other frame: the client sends `client_hello` (versions and a
// nonce); the server answers `server_hello` (its versions, its nonce, and its proof: an
// HMAC-SHA256 of both nonces under the cluster secret); the client checks the proof and
// sends `client_proof` (its own HMAC, with another label); the server checks it and sends
// `welcome`. Either side that finds a version or proof wrong stops: the server says why in
// a `goodbye` frame. Requests are only decoded after `welcome`, so no byte from an
// unauthenticated peer reaches Boost.Serialization.

#include <fwd/detail/hmac.hpp>
#include <fwd/detail/wire_bytes.hpp>
#include <fwd/error.hpp>
#include <fwd/rpc/wire.hpp>

#include <fmt/format.h>

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace fwd::wire {

/// What two peers must share to understand each other's payloads.
struct versions {
  std::uint32_t protocol = protocol_version;
  std::uint32_t archive = 0;  ///< Boost.Serialization's library version
  std::uint8_t byte_order = std::endian::native == std::endian::little ? 1 : 2;  ///< 1 little, 2 big

  friend bool operator==(const versions&, const versions&) = default;
};

/// "protocol 1, Boost archive 19, little-endian"
inline std::string to_string(const versions& v) {
  return fmt::format("protocol {}, Boost archive {}, {}", v.protocol, v.archive,
                     v.byte_order == 1   ? "little-endian"
                     : v.byte_order == 2 ? "big-endian"
                                         : "unknown byte order");
}

using nonce = std::array<std::uint8_t, 32>;
using proof = detail::sha256_digest;

/// A fresh random nonce (OpenSSL's RAND_bytes).
inline nonce random_nonce() { return detail::random_bytes<32>(); }

/// Bytes of a hello body: protocol u32, archive u32, byte order u8, nonce.
inline constexpr std::size_t hello_size = 4 + 4 + 1 + 32;
inline constexpr std::size_t proof_size = 32;

namespace detail {

inline std::string encode_hello(const versions& v, const nonce& n) {
  std::string out(hello_size, '\0');
  fwd::detail::store_le<std::uint32_t>(out.data(), v.protocol);
  fwd::detail::store_le<std::uint32_t>(out.data() + 4, v.archive);
  out[8] = static_cast<char>(v.byte_order);
  std::memcpy(out.data() + 9, n.data(), n.size());
  return out;
}

inline void decode_hello(std::string_view in, versions& v, nonce& n) noexcept {
  v.protocol = fwd::detail::load_le<std::uint32_t>(in.data());
  v.archive = fwd::detail::load_le<std::uint32_t>(in.data() + 4);
  v.byte_order = static_cast<std::uint8_t>(in[8]);
  std::memcpy(n.data(), in.data() + 9, n.size());
}

inline std::string_view as_chars(const nonce& n) noexcept {
  return {reinterpret_cast<const char*>(n.data()), n.size()};
}

// Distinct labels, so that neither side's proof can be replayed as the other's.
inline proof server_proof(std::string_view secret, const nonce& client, const nonce& server) {
  return fwd::detail::hmac_sha256(secret, {"fwd server proof v1", as_chars(client), as_chars(server)});
}
inline proof client_proof(std::string_view secret, const nonce& client, const nonce& server) {
  return fwd::detail::hmac_sha256(secret, {"fwd client proof v1", as_chars(client), as_chars(server)});
}

inline std::string mismatch_message(const versions& local, const versions& peer) {
  return fmt::format(
      "this node speaks {}; the peer speaks {}: run compatible fwd builds (same fwd protocol and Boost "
      "version, same byte order) on every node",
      to_string(local), to_string(peer));
}

}  // namespace detail

/// What a handshake step asks of its caller.
struct handshake_step {
  boost::system::error_code ec;  ///< set: the handshake failed; send `send`, then close
  std::string send;              ///< frames to write to the peer (may be empty)
  bool done = false;             ///< the peer is authenticated: requests may flow
  std::string detail;            ///< with ec: what went wrong, for the error's message

  static handshake_step failure(errc code, std::string why) {
    handshake_step step;
    step.ec = make_error_code(code);
    step.detail = std::move(why);
    return step;
  }
};

/// A goodbye frame: the sender closes the connection because of `code`.
inline std::string encode_goodbye(errc code, std::string_view why) {
  frame_header h;
  h.type = frame_type::goodbye;
  h.aux = static_cast<std::uint64_t>(code);
  return encode_frame(h, why);
}

/**
 * The client's side of the handshake. Call start() and send its bytes; then pass each
 * frame received to on_frame() until a step is done or has an error.
 */
class client_handshake {
 public:
  client_handshake(std::string_view secret, versions local, nonce client_nonce = random_nonce())
      : secret_(secret), local_(local), client_nonce_(client_nonce) {}

  /// The client hello frame.
  std::string start() const {
    frame_header h;
    h.type = frame_type::client_hello;
    return encode_frame(h, {}, detail::encode_hello(local_, client_nonce_));
  }

  handshake_step on_frame(const frame_view& frame) {
    handshake_step step;
    if (state_ == state::failed || state_ == state::done) {
      return fail(errc::protocol_error, "the handshake is already over");
    }
    if (frame.header.type == frame_type::goodbye) {
      return from_goodbye(frame);
    }
    if (state_ == state::wait_server_hello) {
      if (frame.header.type != frame_type::server_hello || frame.body.size() != hello_size + proof_size ||
          !frame.meta.empty()) {
        return fail(errc::protocol_error, "the peer did not answer with a fwd server hello: is it a fwd node?");
      }
      versions peer;
      nonce server_nonce;
      detail::decode_hello(frame.body.substr(0, hello_size), peer, server_nonce);
      if (peer != local_) {
        return fail(errc::version_mismatch, detail::mismatch_message(local_, peer));
      }
      proof claimed;
      std::memcpy(claimed.data(), frame.body.data() + hello_size, proof_size);
      if (!fwd::detail::digests_equal(claimed, detail::server_proof(secret_, client_nonce_, server_nonce))) {
        return fail(errc::unauthenticated,
                    "the server did not prove the cluster secret: give every node the same secret");
      }
      const proof mine = detail::client_proof(secret_, client_nonce_, server_nonce);
      frame_header h;
      h.type = frame_type::client_proof;
      step.send = encode_frame(h, {}, std::string_view(reinterpret_cast<const char*>(mine.data()), mine.size()));
      state_ = state::wait_welcome;
      return step;
    }
    // wait_welcome
    if (frame.header.type != frame_type::welcome || !frame.body.empty() || !frame.meta.empty()) {
      return fail(errc::protocol_error, "the peer broke the fwd handshake (expected welcome)");
    }
    state_ = state::done;
    step.done = true;
    return step;
  }

 private:
  enum class state { wait_server_hello, wait_welcome, done, failed };

  handshake_step fail(errc code, std::string detail) {
    state_ = state::failed;
    return handshake_step::failure(code, std::move(detail));
  }

  handshake_step from_goodbye(const frame_view& frame) {
    const std::uint64_t code = frame.header.aux;
    const bool known = code == static_cast<std::uint64_t>(errc::unauthenticated) ||
                       code == static_cast<std::uint64_t>(errc::version_mismatch) ||
                       code == static_cast<std::uint64_t>(errc::overloaded) ||
                       code == static_cast<std::uint64_t>(errc::protocol_error);
    return fail(known ? static_cast<errc>(code) : errc::protocol_error,
                fmt::format("the server refused the connection: {}", frame.meta.substr(0, 1024)));
  }

  std::string secret_;
  versions local_;
  nonce client_nonce_;
  state state_ = state::wait_server_hello;
};

/**
 * The server's side of the handshake: pass each frame received to on_frame(), send what
 * each step asks, and close on an error (after sending the step's bytes).
 */
class server_handshake {
 public:
  server_handshake(std::string_view secret, versions local, nonce server_nonce = random_nonce())
      : secret_(secret), local_(local), server_nonce_(server_nonce) {}

  handshake_step on_frame(const frame_view& frame) {
    handshake_step step;
    if (state_ == state::wait_client_hello) {
      if (frame.header.type != frame_type::client_hello || frame.body.size() != hello_size || !frame.meta.empty()) {
        return fail(errc::protocol_error, "expected a fwd client hello");
      }
      versions peer;
      detail::decode_hello(frame.body, peer, client_nonce_);
      frame_header h;
      h.type = frame_type::server_hello;
      std::string body = detail::encode_hello(local_, server_nonce_);
      if (peer != local_) {
        // Still say who we are, so that the client can name both versions.
        body.append(proof_size, '\0');
        step = fail(errc::version_mismatch, detail::mismatch_message(local_, peer));
        step.send = encode_frame(h, {}, body);
        step.send += encode_goodbye(errc::version_mismatch, step.detail);
        return step;
      }
      const proof mine = detail::server_proof(secret_, client_nonce_, server_nonce_);
      body.append(reinterpret_cast<const char*>(mine.data()), mine.size());
      step.send = encode_frame(h, {}, body);
      state_ = state::wait_client_proof;
      return step;
    }
    if (state_ == state::wait_client_proof) {
      if (frame.header.type != frame_type::client_proof || frame.body.size() != proof_size || !frame.meta.empty()) {
        return fail(errc::protocol_error, "expected a fwd client proof");
      }
      proof claimed;
      std::memcpy(claimed.data(), frame.body.data(), proof_size);
      if (!fwd::detail::digests_equal(claimed, detail::client_proof(secret_, client_nonce_, server_nonce_))) {
        step = fail(errc::unauthenticated,
                    "the client did not prove the cluster secret: give every node the same secret");
        step.send = encode_goodbye(errc::unauthenticated, step.detail);
        return step;
      }
      frame_header h;
      h.type = frame_type::welcome;
      step.send = encode_frame(h);
      step.done = true;
      state_ = state::done;
      return step;
    }
    return fail(errc::protocol_error, "the handshake is already over");
  }

 private:
  enum class state { wait_client_hello, wait_client_proof, done, failed };

  handshake_step fail(errc code, std::string detail) {
    state_ = state::failed;
    return handshake_step::failure(code, std::move(detail));
  }

  std::string secret_;
  versions local_;
  nonce server_nonce_;
  nonce client_nonce_{};
  state state_ = state::wait_client_hello;
};

/// The most bytes any handshake frame may have; a server decodes handshake frames with
/// this limit, so an unauthenticated peer cannot make it allocate more.
inline constexpr std::size_t max_handshake_frame_size = header_size + hello_size + proof_size + 1024;

}  // namespace fwd::wire
