#pragma once

// A connection's session after the handshake: every frame, both ways, carries a MAC under
// a key of its direction, over an implicit sequence number and the frame's bytes. Pure
// functions over bytes, like the rest of fwd/rpc/wire.hpp.
//
// The keys come from the handshake (fwd/rpc/handshake.hpp): HKDF-SHA256 over the cluster
// secrets each side proved, salted with the transcript (both nonces, both version ranges),
// one key per direction. Whoever relays a handshake sees the nonces but not the secret, so
// it has no key, and any frame it injects fails its MAC.
//
// The MAC is HMAC-SHA256 truncated to its first 16 bytes (as RFC 4868 does for IPsec),
// over: the frame's sequence number in its direction (8 bytes, little-endian, counted from
// 0 after the handshake and never sent), then the frame's header, meta and body. A frame
// injected, replayed, dropped or moved fails the check at the receiver, which closes the
// connection; the next frame cannot then be made to match either.
//
// Why HMAC-SHA256 rather than an AEAD (AES-GCM, ChaCha20-Poly1305): fwd needs integrity
// and origin, not secrecy (TLS, when on, provides secrecy; without it the payloads travel
// in clear as before), and HMAC has no nonce whose reuse would give the key away: it only
// needs a key per direction and the counter, which both sides keep anyway. Most frames are
// small, and HMAC's cost then is a few SHA-256 blocks. 128 bits of tag: a forger must
// guess a tag with no oracle (a failure closes the connection and the next connection has
// other keys), so each attempt succeeds with probability 2^-128; the full 32 bytes would
// only add bytes to every frame.

#include <fwd/detail/hmac.hpp>
#include <fwd/detail/wire_bytes.hpp>
#include <fwd/rpc/wire.hpp>

#include <openssl/crypto.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace fwd::wire {

/// The keys of one connection, as the handshake derives them.
struct session_keys {
  fwd::detail::sha256_digest send{};     ///< MACs this side's frames
  fwd::detail::sha256_digest receive{};  ///< checks the peer's frames
  std::uint32_t protocol = 0;            ///< the protocol version both sides agreed on
};

/**
 * Seals the frames one side sends and checks those it receives. Frames must be sealed in
 * the order they are written, and opened in the order they arrive.
 */
class session {
 public:
  session() = default;
  explicit session(const session_keys& keys)
      : send_(keys.send), receive_(keys.receive), protocol_(keys.protocol) {}

  /// True once made from a handshake's keys.
  explicit operator bool() const noexcept { return static_cast<bool>(send_); }

  /// The protocol version both sides agreed on.
  std::uint32_t protocol() const noexcept { return protocol_; }

  /// Writes the tag of `frame` (header, meta and body), the next frame this side sends,
  /// into `tag` (tag_size bytes).
  void seal(std::string_view frame, char* tag) {
    const auto mac = compute(send_, send_sequence_++, frame);
    std::memcpy(tag, mac.data(), tag_size);
  }

  /// Appends the tag of the frame that starts at `at` in `out` and runs to its end.
  void seal_tail(std::string& out, std::size_t at) {
    char tag[tag_size];
    seal(std::string_view(out).substr(at), tag);
    out.append(tag, tag_size);
  }

  /// True when `frame` is the next frame the peer sent and `tag` its tag. Once false, the
  /// connection must be closed: the sequence has moved on.
  bool open(std::string_view frame, std::string_view tag) {
    const auto mac = compute(receive_, receive_sequence_++, frame);
    return tag.size() == tag_size && CRYPTO_memcmp(mac.data(), tag.data(), tag_size) == 0;
  }

  // A frame checked piece by piece, for one that is skipped rather than kept whole:
  // begin_open(), add() every byte of the frame, then end_open() with its tag.
  void begin_open() {
    receive_.begin();
    char sequence[8];
    fwd::detail::store_le<std::uint64_t>(sequence, receive_sequence_++);
    receive_.update(sequence, sizeof sequence);
  }
  void add(std::string_view bytes) { receive_.update(bytes.data(), bytes.size()); }
  bool end_open(std::string_view tag) {
    const auto mac = receive_.finish();
    return tag.size() == tag_size && CRYPTO_memcmp(mac.data(), tag.data(), tag_size) == 0;
  }

 private:
  static fwd::detail::sha256_digest compute(fwd::detail::hmac_sha256_context& mac, std::uint64_t sequence,
                                            std::string_view frame) {
    char prefix[8];
    fwd::detail::store_le<std::uint64_t>(prefix, sequence);
    mac.begin();
    mac.update(prefix, sizeof prefix);
    mac.update(frame.data(), frame.size());
    return mac.finish();
  }

  fwd::detail::hmac_sha256_context send_;
  fwd::detail::hmac_sha256_context receive_;
  std::uint64_t send_sequence_ = 0;
  std::uint64_t receive_sequence_ = 0;
  std::uint32_t protocol_ = 0;
};

}  // namespace fwd::wire
