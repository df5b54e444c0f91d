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
// The MAC is GMAC with AES-256 (AES-256-GCM with nothing encrypted: the frame's header,
// meta and body are the authenticated data), 16-byte tag. Its nonce is the frame's sequence
// number in its direction (counted from 0 after the handshake, never sent), so a frame
// injected, replayed, dropped or moved fails the check at the receiver, which closes the
// connection.
//
// Why GMAC rather than HMAC-SHA256: both give integrity and origin, which is what fwd
// needs (TLS, when on, gives secrecy; without it payloads travel in clear, as before).
// GMAC costs a tenth of HMAC-SHA256 on a small frame (about 60 ns against 600 for a
// 130-byte frame here) and a sixth on a 64 KiB one, with carry-less multiply; and each
// frame allocates nothing, where OpenSSL 3's HMAC duplicates two digest contexts per
// message. GMAC's one hazard, a nonce
// used twice under a key, cannot happen here: the keys are new for every connection
// (HKDF over both sides' fresh nonces) and the counter only grows. A forger must guess a
// 128-bit tag with no oracle: a wrong tag closes the connection, and the next connection
// has other keys.

#include <fwd/detail/hmac.hpp>
#include <fwd/detail/wire_bytes.hpp>
#include <fwd/rpc/wire.hpp>

#include <openssl/crypto.h>

static_assert(fwd::detail::gmac_context::tag_size == fwd::wire::tag_size);

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
    send_.begin(send_sequence_++);
    send_.update(frame.data(), frame.size());
    const auto mac = send_.finish();
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
    begin_open();
    add(frame);
    return end_open(tag);
  }

  // A frame checked piece by piece, for one that is skipped rather than kept whole:
  // begin_open(), add() every byte of the frame, then end_open() with its tag.
  void begin_open() { receive_.begin(receive_sequence_++); }
  void add(std::string_view bytes) { receive_.update(bytes.data(), bytes.size()); }
  bool end_open(std::string_view tag) {
    const auto mac = receive_.finish();
    return tag.size() == tag_size && CRYPTO_memcmp(mac.data(), tag.data(), tag_size) == 0;
  }

 private:
  fwd::detail::gmac_context send_;
  fwd::detail::gmac_context receive_;
  std::uint64_t send_sequence_ = 0;
  std::uint64_t receive_sequence_ = 0;
  std::uint32_t protocol_ = 0;
};

}  // namespace fwd::wire
