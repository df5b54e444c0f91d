#pragma once

// fwd's wire format: frames, as pure functions over bytes (the connection handshake is in
// fwd/rpc/handshake.hpp). Nothing here touches a socket, so every decoder can be fuzzed on
// its own.
//
// A frame is a fixed 52-byte header followed by `meta_size` bytes of metadata (a procedure
// name, an error message) and `body_size` bytes of payload (a Boost archive). Once the
// handshake is over, every frame is followed by a `tag_size`-byte tag, its session MAC
// (fwd/rpc/session.hpp); handshake frames have none. All header fields are little-endian:
//
//   offset size field
//        0    4 magic "FWD1"
//        4    1 type (frame_type)
//        5    1 flags (frame_flags)
//        6    2 a request's durability (with flag has_durability), otherwise zero
//        8    8 stream id: matches a reply to its request on one connection
//       16   16 request id: the caller's id, fixed across retries (exactly once)
//       32    4 remaining deadline in milliseconds (meaningful with flag has_deadline)
//       36    8 aux: a request's signature fingerprint, a reply's status (0 or fwd::errc),
//                a hello's oldest protocol version (0: the same as its newest)
//       44    4 meta size
//       48    4 body size
//
#include <fwd/detail/wire_bytes.hpp>
#include <fwd/error.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace fwd::wire {

/// The newest protocol version this build speaks. Version 1 had no session keys and
/// no frame MACs, and a write's reply carried the primary's TXID alone; version 2 adds
/// session keys and frame MACs (fwd/rpc/session.hpp) and the primary's checksum in a
/// write's reply.
inline constexpr std::uint32_t protocol_version = 2;
/// The oldest protocol version this build speaks. Two peers use the highest version both
/// speak (fwd/rpc/handshake.hpp).
inline constexpr std::uint32_t min_protocol_version = 2;
/// "FWD1", the first four bytes of every frame.
inline constexpr std::uint32_t magic = 0x31445746u;
/// Bytes in a frame header.
inline constexpr std::size_t header_size = 52;
/// Bytes of the session MAC after each frame once the handshake is over.
inline constexpr std::size_t tag_size = 16;
/// The default largest frame (header included) either side accepts: 16 MiB.
inline constexpr std::size_t default_max_frame_size = std::size_t{16} << 20;

enum class frame_type : std::uint8_t {
  client_hello = 1,  ///< body: hello (versions, client nonce)
  server_hello = 2,  ///< body: hello (versions, server nonce) + server proof
  client_proof = 3,  ///< body: client proof
  welcome = 4,       ///< handshake accepted; empty
  request = 5,       ///< meta: procedure name; body: arguments; aux: signature fingerprint
  reply = 6,         ///< meta: error detail; body: result; aux: 0 or an fwd::errc value
  goodbye = 7,       ///< the sender closes: aux: fwd::errc value; meta: why
};

/// Flag bits of a frame header.
namespace frame_flags {
inline constexpr std::uint8_t has_deadline = 0x01;  ///< deadline_ms is the remaining time
/// A request's bytes 6-7 hold the durability its write asks for (fwd::durability::wire()).
inline constexpr std::uint8_t has_durability = 0x02;
inline constexpr std::uint8_t all = has_deadline | has_durability;
}  // namespace frame_flags

/// A caller's request id: 128 bits, unique per call across the cluster, kept across retries.
using request_id = std::array<std::uint8_t, 16>;

struct frame_header {
  frame_type type = frame_type::request;
  std::uint8_t flags = 0;
  std::uint64_t stream_id = 0;
  request_id id{};
  std::uint32_t deadline_ms = 0;
  std::uint16_t durability = 0;  ///< with flag has_durability (requests only)
  std::uint64_t aux = 0;
  std::uint32_t meta_size = 0;
  std::uint32_t body_size = 0;
};

/// A decoded frame; `meta` and `body` point into the decoded buffer.
struct frame_view {
  frame_header header;
  std::string_view meta;
  std::string_view body;
  std::string_view bytes;  ///< the whole frame, header to body, without its tag
  std::string_view tag;    ///< the session MAC that followed it (empty in the handshake)
};

/// Offset of the deadline field, which a sender refreshes just before writing a frame.
inline constexpr std::size_t deadline_offset = 32;

/// Writes `h` (with sizes as given in `h`) into `out[0, header_size)`.
inline void encode_header(const frame_header& h, char* out) noexcept {
  detail::store_le<std::uint32_t>(out, magic);
  out[4] = static_cast<char>(h.type);
  out[5] = static_cast<char>(h.flags);
  detail::store_le<std::uint16_t>(out + 6, (h.flags & frame_flags::has_durability) != 0 ? h.durability : 0);
  detail::store_le<std::uint64_t>(out + 8, h.stream_id);
  std::memcpy(out + 16, h.id.data(), h.id.size());
  detail::store_le<std::uint32_t>(out + deadline_offset, h.deadline_ms);
  detail::store_le<std::uint64_t>(out + 36, h.aux);
  detail::store_le<std::uint32_t>(out + 44, h.meta_size);
  detail::store_le<std::uint32_t>(out + 48, h.body_size);
}

/// Appends one frame to `out` (so that many frames can be coalesced into one write). The
/// sizes in `h` are ignored: those of `meta` and `body` are written.
inline void append_frame(std::string& out, frame_header h, std::string_view meta, std::string_view body) {
  h.meta_size = static_cast<std::uint32_t>(meta.size());
  h.body_size = static_cast<std::uint32_t>(body.size());
  const std::size_t at = out.size();
  out.resize(at + header_size);
  encode_header(h, out.data() + at);
  out.append(meta);
  out.append(body);
}

/// One frame as a string.
inline std::string encode_frame(const frame_header& h, std::string_view meta = {}, std::string_view body = {}) {
  std::string out;
  out.reserve(header_size + meta.size() + body.size());
  append_frame(out, h, meta, body);
  return out;
}

/// The whole size of a frame with that header.
inline std::uint64_t frame_size(const frame_header& h) noexcept {
  return header_size + std::uint64_t{h.meta_size} + h.body_size;
}

/**
 * Decodes the header at the start of `bytes` (which must hold at least header_size bytes).
 * Fails with errc::protocol_error when the bytes are not a fwd header, and with
 * errc::frame_too_large when the frame it announces exceeds `max_frame_size`, before
 * anything is allocated for it.
 */
inline boost::system::error_code decode_header(std::string_view bytes, std::size_t max_frame_size,
                                               frame_header& out) noexcept {
  if (bytes.size() < header_size) return make_error_code(errc::protocol_error);
  const char* in = bytes.data();
  if (detail::load_le<std::uint32_t>(in) != magic) return make_error_code(errc::protocol_error);
  const auto type = static_cast<std::uint8_t>(in[4]);
  if (type < static_cast<std::uint8_t>(frame_type::client_hello) ||
      type > static_cast<std::uint8_t>(frame_type::goodbye)) {
    return make_error_code(errc::protocol_error);
  }
  const auto flags = static_cast<std::uint8_t>(in[5]);
  if ((flags & ~frame_flags::all) != 0) return make_error_code(errc::protocol_error);
  // Bytes 6-7 are zero unless a request carries its durability there.
  const auto durability = detail::load_le<std::uint16_t>(in + 6);
  const bool has_durability = (flags & frame_flags::has_durability) != 0;
  if (has_durability ? type != static_cast<std::uint8_t>(frame_type::request) : durability != 0) {
    return make_error_code(errc::protocol_error);
  }
  frame_header h;
  h.durability = durability;
  h.type = static_cast<frame_type>(type);
  h.flags = flags;
  h.stream_id = detail::load_le<std::uint64_t>(in + 8);
  std::memcpy(h.id.data(), in + 16, h.id.size());
  h.deadline_ms = detail::load_le<std::uint32_t>(in + deadline_offset);
  h.aux = detail::load_le<std::uint64_t>(in + 36);
  h.meta_size = detail::load_le<std::uint32_t>(in + 44);
  h.body_size = detail::load_le<std::uint32_t>(in + 48);
  if (frame_size(h) > max_frame_size) return make_error_code(errc::frame_too_large);
  out = h;
  return {};
}

/**
 * Decodes the first frame in `buffer`, followed by a tag of `tag_bytes` (0 in the
 * handshake, tag_size after it; `max_frame_size` does not count it). On success with a
 * whole frame, sets `out` and `consumed` (the frame's size, tag included); with only part
 * of a frame, returns success and sets `consumed` to 0 (read more and call again). Errors
 * as decode_header.
 */
inline boost::system::error_code decode_frame(std::string_view buffer, std::size_t max_frame_size,
                                              frame_view& out, std::size_t& consumed,
                                              std::size_t tag_bytes = 0) noexcept {
  consumed = 0;
  if (buffer.size() < header_size) return {};
  frame_header h;
  if (auto ec = decode_header(buffer, max_frame_size, h)) return ec;
  const std::uint64_t size = frame_size(h);
  if (buffer.size() < size + tag_bytes) return {};
  out.header = h;
  out.meta = buffer.substr(header_size, h.meta_size);
  out.body = buffer.substr(header_size + h.meta_size, h.body_size);
  out.bytes = buffer.substr(0, static_cast<std::size_t>(size));
  out.tag = buffer.substr(static_cast<std::size_t>(size), tag_bytes);
  consumed = static_cast<std::size_t>(size + tag_bytes);
  return {};
}

}  // namespace fwd::wire
