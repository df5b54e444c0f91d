#pragma once

// The handshake of a fwd connection, as pure functions over frames (fwd/rpc/wire.hpp):
// versions, nonces, proofs of the cluster secret and the session keys. Nothing here
// touches a socket.
//
// The handshake, before any other frame: the client sends `client_hello` (the range of
// protocol versions it speaks, its archive version and byte order, a nonce); the server
// answers `server_hello` (its own, its nonce, and its proof: an HMAC-SHA256 under its
// cluster secret of the transcript, both hellos' versions and nonces); the client checks
// the proof and sends `client_proof` (its own HMAC of the transcript, with another label);
// the server checks it and sends `welcome`. Either side that finds no common version or a
// wrong proof stops: the server says why in a `goodbye` frame. Requests are only decoded
// after `welcome`, so no byte from an unauthenticated peer reaches Boost.Serialization.
//
// Versions: each side announces [oldest, newest] (the newest in the hello's body, the
// oldest in its header's aux, which builds that spoke protocol 1 left 0), and both use the
// highest version in both ranges. The Boost archive versions need not be equal; see
// archives_compatible().
//
// Secrets: each side proves the first of its secrets and accepts any of them, so that a
// cluster can change its secret without downtime (add the new one to every node as an
// accepted secret, then make it the first everywhere, then drop the old one). A side finds
// which secret the peer used by checking the peer's proof under each of its own: nothing
// but the two proofs goes on the wire, as before.
//
// Session: once both proofs check, each side derives the session keys (fwd/rpc/session.hpp)
// with HKDF-SHA256: input key material both proven secrets, salt the transcript, and one
// label per direction. From then on every frame carries a MAC under its direction's key.

#include <fwd/detail/hmac.hpp>
#include <fwd/detail/wire_bytes.hpp>
#include <fwd/error.hpp>
#include <fwd/rpc/session.hpp>
#include <fwd/rpc/wire.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fwd::wire {

/// What two peers must share to understand each other's payloads.
struct versions {
  std::uint32_t protocol_min = min_protocol_version;  ///< the oldest protocol version spoken
  std::uint32_t protocol_max = protocol_version;      ///< the newest protocol version spoken
  std::uint32_t archive = 0;  ///< Boost.Serialization's library version
  std::uint8_t byte_order = std::endian::native == std::endian::little ? 1 : 2;  ///< 1 little, 2 big

  friend bool operator==(const versions&, const versions&) = default;
};

/// "protocol 2..3, Boost archive 19, little-endian"
inline std::string to_string(const versions& v) {
  return fmt::format("protocol {}, Boost archive {}, {}",
                     v.protocol_min == v.protocol_max ? fmt::format("{}", v.protocol_max)
                                                      : fmt::format("{}..{}", v.protocol_min, v.protocol_max),
                     v.archive,
                     v.byte_order == 1   ? "little-endian"
                     : v.byte_order == 2 ? "big-endian"
                                         : "unknown byte order");
}

/**
 * The oldest Boost archive library version whose binary archives encode what fwd writes
 * as this build does. fwd's archives are written without Boost's header (no_header), so a
 * reader decodes with its own library version, never the writer's. In Boost's binary
 * archives (1.81), every format difference between library versions is at version 7 or
 * below (class ids, object versions, collection sizes, item versions); from 8 to 19 the
 * bytes of every type fwd's codec writes are the same (tests/unit/codec_fast_path_test.cpp
 * pins them byte for byte, so a Boost whose binary format changes fails it).
 */
inline constexpr std::uint32_t min_compatible_archive_version = 8;

/// Whether peers with these archive versions read each other's payloads: equal, or both
/// at least min_compatible_archive_version.
inline constexpr bool archives_compatible(std::uint32_t a, std::uint32_t b) noexcept {
  return a == b || (a >= min_compatible_archive_version && b >= min_compatible_archive_version);
}

/// The protocol version two peers use: the highest both speak; nullopt when they have
/// none in common, or cannot read each other's payloads (archive, byte order).
inline std::optional<std::uint32_t> negotiate(const versions& local, const versions& peer) noexcept {
  const std::uint32_t low = std::max(local.protocol_min, peer.protocol_min);
  const std::uint32_t high = std::min(local.protocol_max, peer.protocol_max);
  if (low > high || high < min_protocol_version || local.byte_order != peer.byte_order ||
      !archives_compatible(local.archive, peer.archive)) {
    return std::nullopt;
  }
  return high;
}

using nonce = std::array<std::uint8_t, 32>;
using proof = detail::sha256_digest;

/// A fresh random nonce (OpenSSL's RAND_bytes).
inline nonce random_nonce() { return detail::random_bytes<32>(); }

/// Bytes of a hello body: newest protocol u32, archive u32, byte order u8, nonce.
inline constexpr std::size_t hello_size = 4 + 4 + 1 + 32;
inline constexpr std::size_t proof_size = 32;

/// The fewest bytes a cluster secret may have.
inline constexpr std::size_t min_secret_size = 32;

/// Empty when `secret` is long enough; otherwise why not and how to make one. `what`
/// names the setting, e.g. "node_options::secret".
inline std::string secret_problem(std::string_view what, std::string_view secret) {
  if (secret.size() >= min_secret_size) return {};
  return fmt::format(
      "{} is {} bytes; a cluster secret needs at least {} (a short one falls to offline guessing "
      "from a recorded handshake): make one with `openssl rand -base64 32` and give it to every node",
      what, secret.size(), min_secret_size);
}

namespace detail {

inline std::string encode_hello(const versions& v, const nonce& n) {
  std::string out(hello_size, '\0');
  fwd::detail::store_le<std::uint32_t>(out.data(), v.protocol_max);
  fwd::detail::store_le<std::uint32_t>(out.data() + 4, v.archive);
  out[8] = static_cast<char>(v.byte_order);
  std::memcpy(out.data() + 9, n.data(), n.size());
  return out;
}

inline void decode_hello(const frame_header& h, std::string_view in, versions& v, nonce& n) noexcept {
  v.protocol_max = fwd::detail::load_le<std::uint32_t>(in.data());
  v.archive = fwd::detail::load_le<std::uint32_t>(in.data() + 4);
  v.byte_order = static_cast<std::uint8_t>(in[8]);
  // A build that spoke only protocol 1 left aux 0; a range upside down is taken as its newest.
  v.protocol_min = h.aux == 0 || h.aux > v.protocol_max ? v.protocol_max : static_cast<std::uint32_t>(h.aux);
  std::memcpy(n.data(), in.data() + 9, n.size());
}

inline std::string_view as_chars(const nonce& n) noexcept {
  return {reinterpret_cast<const char*>(n.data()), n.size()};
}

// What both proofs and the session keys are bound to: both sides' version ranges and
// nonces, in a fixed layout (a relay that edits a range breaks both proofs).
inline std::string transcript(const versions& client, const nonce& client_nonce, const versions& server,
                              const nonce& server_nonce) {
  std::string out = "fwd handshake v2";
  for (const auto* side : {&client, &server}) {
    char fields[13];
    fwd::detail::store_le<std::uint32_t>(fields, side->protocol_min);
    fwd::detail::store_le<std::uint32_t>(fields + 4, side->protocol_max);
    fwd::detail::store_le<std::uint32_t>(fields + 8, side->archive);
    fields[12] = static_cast<char>(side->byte_order);
    out.append(fields, sizeof fields);
    out.append(as_chars(side == &client ? client_nonce : server_nonce));
  }
  return out;
}

// Distinct labels, so that neither side's proof can be replayed as the other's.
inline proof server_proof(std::string_view secret, std::string_view transcript) {
  return fwd::detail::hmac_sha256(secret, {"fwd server proof v2", transcript});
}
inline proof client_proof(std::string_view secret, std::string_view transcript) {
  return fwd::detail::hmac_sha256(secret, {"fwd client proof v2", transcript});
}

// The secret among `secrets` under which `claimed` is the proof `make` computes; checks
// every one (no early exit), and returns the index of the match, or -1.
template <class Make>
int find_prover(const std::vector<std::string>& secrets, const proof& claimed, Make&& make) {
  int found = -1;
  for (std::size_t i = 0; i < secrets.size(); ++i) {
    if (fwd::detail::digests_equal(claimed, make(secrets[i])) && found < 0) found = static_cast<int>(i);
  }
  return found;
}

inline std::string length_prefixed(std::string_view a, std::string_view b) {
  std::string out;
  char size[4];
  for (std::string_view part : {a, b}) {
    fwd::detail::store_le<std::uint32_t>(size, static_cast<std::uint32_t>(part.size()));
    out.append(size, sizeof size);
    out.append(part);
  }
  return out;
}

// The session keys, from the secret the server proved, the one the client proved, and
// the transcript.
inline session_keys derive_keys(std::string_view server_secret, std::string_view client_secret,
                                std::string_view transcript, std::uint32_t protocol, bool for_client) {
  const std::string ikm = length_prefixed(server_secret, client_secret);
  const auto to_server = fwd::detail::hkdf_sha256(ikm, transcript, "fwd session v2 client to server");
  const auto to_client = fwd::detail::hkdf_sha256(ikm, transcript, "fwd session v2 server to client");
  session_keys keys;
  keys.send = for_client ? to_server : to_client;
  keys.receive = for_client ? to_client : to_server;
  keys.protocol = protocol;
  return keys;
}

inline std::string mismatch_message(const versions& local, const versions& peer) {
  return fmt::format(
      "this node speaks {}; the peer speaks {}: no protocol version in common, or payloads "
      "neither can read (Boost archive versions 8 and up interoperate; byte orders must match): "
      "run fwd builds whose protocol ranges overlap on every node",
      to_string(local), to_string(peer));
}

inline std::vector<std::string> one_secret(std::string_view secret) { return {std::string(secret)}; }

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
 * frame received to on_frame() until a step is done or has an error. Once done,
 * take_session() gives the session that seals and checks every later frame.
 *
 * `secrets`: the first is proved, every one is accepted from the server (see above).
 */
class client_handshake {
 public:
  client_handshake(std::vector<std::string> secrets, versions local, nonce client_nonce = random_nonce())
      : secrets_(std::move(secrets)), local_(local), client_nonce_(client_nonce) {}
  client_handshake(std::string_view secret, versions local, nonce client_nonce = random_nonce())
      : client_handshake(detail::one_secret(secret), local, client_nonce) {}

  /// The client hello frame.
  std::string start() const {
    frame_header h;
    h.type = frame_type::client_hello;
    h.aux = local_.protocol_min;
    return encode_frame(h, {}, detail::encode_hello(local_, client_nonce_));
  }

  handshake_step on_frame(const frame_view& frame) {
    handshake_step step;
    if (secrets_.empty()) return fail(errc::unauthenticated, "no cluster secret to prove");
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
      detail::decode_hello(frame.header, frame.body.substr(0, hello_size), peer, server_nonce);
      const auto agreed = negotiate(local_, peer);
      if (!agreed) {
        return fail(errc::version_mismatch, detail::mismatch_message(local_, peer));
      }
      const std::string transcript = detail::transcript(local_, client_nonce_, peer, server_nonce);
      proof claimed;
      std::memcpy(claimed.data(), frame.body.data() + hello_size, proof_size);
      const int server_secret = detail::find_prover(
          secrets_, claimed, [&](const std::string& s) { return detail::server_proof(s, transcript); });
      if (server_secret < 0) {
        return fail(errc::unauthenticated,
                    "the server did not prove the cluster secret: give every node the same secret "
                    "(or, while changing it, the new one among each node's accepted secrets)");
      }
      const proof mine = detail::client_proof(secrets_.front(), transcript);
      keys_ = detail::derive_keys(secrets_[static_cast<std::size_t>(server_secret)], secrets_.front(), transcript,
                                  *agreed, true);
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

  /// Once a step was done: the session (keys and protocol version agreed on).
  session take_session() const { return session(keys_); }

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

  std::vector<std::string> secrets_;
  versions local_;
  nonce client_nonce_;
  session_keys keys_;
  state state_ = state::wait_server_hello;
};

/**
 * The server's side of the handshake: pass each frame received to on_frame(), send what
 * each step asks, and close on an error (after sending the step's bytes). Once done,
 * take_session() gives the session that seals and checks every later frame.
 *
 * `secrets`: the first is proved, every one is accepted from the client.
 */
class server_handshake {
 public:
  server_handshake(std::vector<std::string> secrets, versions local, nonce server_nonce = random_nonce())
      : secrets_(std::move(secrets)), local_(local), server_nonce_(server_nonce) {}
  server_handshake(std::string_view secret, versions local, nonce server_nonce = random_nonce())
      : server_handshake(detail::one_secret(secret), local, server_nonce) {}

  handshake_step on_frame(const frame_view& frame) {
    handshake_step step;
    if (secrets_.empty()) return fail(errc::unauthenticated, "no cluster secret to prove");
    if (state_ == state::wait_client_hello) {
      if (frame.header.type != frame_type::client_hello || frame.body.size() != hello_size || !frame.meta.empty()) {
        return fail(errc::protocol_error, "expected a fwd client hello");
      }
      versions peer;
      nonce client_nonce;
      detail::decode_hello(frame.header, frame.body, peer, client_nonce);
      frame_header h;
      h.type = frame_type::server_hello;
      h.aux = local_.protocol_min;
      std::string body = detail::encode_hello(local_, server_nonce_);
      agreed_ = negotiate(local_, peer).value_or(0);
      if (agreed_ == 0) {
        // Still say who we are, so that the client can name both versions.
        body.append(proof_size, '\0');
        step = fail(errc::version_mismatch, detail::mismatch_message(local_, peer));
        step.send = encode_frame(h, {}, body);
        step.send += encode_goodbye(errc::version_mismatch, step.detail);
        return step;
      }
      transcript_ = detail::transcript(peer, client_nonce, local_, server_nonce_);
      const proof mine = detail::server_proof(secrets_.front(), transcript_);
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
      const int client_secret = detail::find_prover(
          secrets_, claimed, [&](const std::string& s) { return detail::client_proof(s, transcript_); });
      if (client_secret < 0) {
        step = fail(errc::unauthenticated,
                    "the client did not prove the cluster secret: give every node the same secret "
                    "(or, while changing it, the new one among each node's accepted secrets)");
        step.send = encode_goodbye(errc::unauthenticated, step.detail);
        return step;
      }
      keys_ = detail::derive_keys(secrets_.front(), secrets_[static_cast<std::size_t>(client_secret)], transcript_,
                                  agreed_, false);
      frame_header h;
      h.type = frame_type::welcome;
      step.send = encode_frame(h);
      step.done = true;
      state_ = state::done;
      return step;
    }
    return fail(errc::protocol_error, "the handshake is already over");
  }

  /// Once a step was done: the session (keys and protocol version agreed on).
  session take_session() const { return session(keys_); }

 private:
  enum class state { wait_client_hello, wait_client_proof, done, failed };

  handshake_step fail(errc code, std::string detail) {
    state_ = state::failed;
    return handshake_step::failure(code, std::move(detail));
  }

  std::vector<std::string> secrets_;
  versions local_;
  nonce server_nonce_;
  std::uint32_t agreed_ = 0;
  std::string transcript_;
  session_keys keys_;
  state state_ = state::wait_client_hello;
};

/// The most bytes any handshake frame may have; a server decodes handshake frames with
/// this limit, so an unauthenticated peer cannot make it allocate more.
inline constexpr std::size_t max_handshake_frame_size = header_size + hello_size + proof_size + 1024;

}  // namespace fwd::wire

namespace fwd::rpc::detail {

// The secrets a client or server proves and accepts: `secret` first, then `accepted`.
// Throws fwd::error(bad_argument) when one is shorter than wire::min_secret_size.
inline std::vector<std::string> checked_secrets(std::string_view options, const std::string& secret,
                                                const std::vector<std::string>& accepted) {
  std::vector<std::string> all{secret};
  all.insert(all.end(), accepted.begin(), accepted.end());
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::string what =
        i == 0 ? fmt::format("{}::secret", options) : fmt::format("{}::accepted_secrets[{}]", options, i - 1);
    if (std::string problem = wire::secret_problem(what, all[i]); !problem.empty()) {
      throw fwd::error(make_error_code(errc::bad_argument), problem);
    }
  }
  return all;
}

}  // namespace fwd::rpc::detail
