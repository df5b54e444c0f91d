// libFuzzer target: the frames an authenticated peer sends, behind their session MACs. The
// harness holds the keys of a fixed handshake (fixed secret and nonces, run once through
// the real handshake code), so it can seal the frames the fuzzer describes: they pass the
// MAC and reach what lies behind it, the registry and the argument decoders, as on a
// server connection. It also forges, replays and alters frames.
//
// Input: records of [op u8][length u8][length bytes]. op % 4:
//   0  a request sealed in order: material = [procedure u8][flags u8][arguments...]
//   1  the material as a frame's header (padded to 52 bytes; its sizes are set to match)
//      and body, sealed in order: any header the decoder may meet behind a valid MAC
//   2  a request with a tag taken from the material (a forgery): it must not open
//   3  the last sealed frame again (a replay): it must not open
// The stream is fed to the connection's read buffer in pieces whose sizes come from op.
//
// Properties: never crashes or leaks; a frame opens if and only if the harness sealed it
// in order (the first one that does not open ends the connection: nothing after it is
// looked at); every reply the server side seals opens on the client side, in order.

#include <fwd/procedure.hpp>
#include <fwd/rpc/frame_buffer.hpp>
#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/registry.hpp>
#include <fwd/rpc/session.hpp>
#include <fwd/rpc/wire.hpp>

#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace wire = fwd::wire;

namespace {

constexpr const char* secret = "session-fuzz-secret-session-fuzz-secret";

const fwd::procedure<std::int64_t(std::vector<std::string>, std::optional<std::int64_t>)> count{"fuzz.count"};
const fwd::procedure<std::string(std::map<std::string, std::int32_t>)> keys{"fuzz.keys"};
const fwd::procedure<double(double, bool)> half{"fuzz.half"};

struct fixed_handshake {
  wire::client_handshake client;
  wire::server_handshake server;

  fixed_handshake()
      : client(secret, local(), wire::nonce{1, 2, 3}), server(secret, local(), wire::nonce{4, 5, 6}) {
    std::string to_server = client.start();
    for (int round = 0; round < 2; ++round) {
      std::string to_client = pass(server, to_server);
      to_server = pass(client, to_client);
    }
  }

  static wire::versions local() {
    wire::versions v;
    v.archive = 19;
    return v;
  }

  // Every frame in `bytes` to `side`; returns what it sends back. Aborts if the handshake
  // does not complete as it must.
  template <class Side>
  static std::string pass(Side& side, std::string_view bytes) {
    std::string out;
    while (!bytes.empty()) {
      wire::frame_view frame;
      std::size_t used = 0;
      if (wire::decode_frame(bytes, wire::max_handshake_frame_size, frame, used) || used == 0) std::abort();
      auto step = side.on_frame(frame);
      if (step.ec) std::abort();
      out += step.send;
      bytes.remove_prefix(used);
    }
    return out;
  }
};

const fixed_handshake& handshake() {
  static const fixed_handshake done;
  return done;
}

const fwd::rpc::registry& procedures() {
  static const fwd::rpc::registry r = [] {
    fwd::rpc::registry out;
    out.define(count, [](std::vector<std::string> v, std::optional<std::int64_t> extra) {
      return static_cast<std::int64_t>(v.size()) + extra.value_or(0);
    });
    out.define(keys, [](std::map<std::string, std::int32_t> m) {
      std::string all;
      for (const auto& [k, v] : m) all += k.substr(0, 8);
      return all;
    });
    out.define(half, [](double d, bool b) { return b ? d / 2 : d; });
    return out;
  }();
  return r;
}

std::string request(std::string_view material, std::uint64_t stream_id) {
  static const std::string_view names[] = {count.name(), keys.name(), half.name(), "fuzz.nothing"};
  static const std::uint64_t signatures[] = {count.signature(), keys.signature(), half.signature(), 0};
  const std::uint8_t which = material.empty() ? 0 : static_cast<std::uint8_t>(material[0]);
  const std::uint8_t flags = material.size() < 2 ? 0 : static_cast<std::uint8_t>(material[1]);
  wire::frame_header h;
  h.type = wire::frame_type::request;
  h.stream_id = stream_id;
  h.flags = flags & wire::frame_flags::all;
  h.deadline_ms = 1000;
  h.aux = signatures[which % 4] ^ ((which & 0x80) != 0 ? 1 : 0);  // sometimes the wrong signature
  return wire::encode_frame(h, names[which % 4], material.size() > 2 ? material.substr(2) : std::string_view{});
}

std::string raw_frame(std::string_view material) {
  std::string header(material.substr(0, std::min(material.size(), wire::header_size)));
  header.resize(wire::header_size, '\0');
  const std::string_view rest = material.size() > wire::header_size ? material.substr(wire::header_size) : "";
  const std::size_t meta = rest.empty() ? 0 : static_cast<std::uint8_t>(rest[0]) % (rest.size() + 1);
  fwd::detail::store_le<std::uint32_t>(header.data() + 44, static_cast<std::uint32_t>(meta));
  fwd::detail::store_le<std::uint32_t>(header.data() + 48, static_cast<std::uint32_t>(rest.size() - meta));
  return header + std::string(rest);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  wire::session peer = handshake().client.take_session();    // the honest client's side
  wire::session server = handshake().server.take_session();  // the server connection's
  constexpr std::size_t max_frame = 64 * 1024;

  std::string stream;
  std::vector<bool> honest;  // per frame in `stream`: sealed in order by the harness
  std::vector<std::size_t> pieces;
  std::string last_sealed;
  std::uint64_t stream_id = 1;
  std::size_t at = 0;
  while (at + 2 <= size && honest.size() < 64) {
    const std::uint8_t op = data[at];
    const std::size_t length = std::min<std::size_t>(data[at + 1], size - at - 2);
    const std::string_view material(reinterpret_cast<const char*>(data + at + 2), length);
    at += 2 + length;
    pieces.push_back(1 + op / 4u);
    switch (op % 4) {
      case 0:
      case 1: {
        std::string frame = op % 4 == 0 ? request(material, stream_id++) : raw_frame(material);
        peer.seal_tail(frame, 0);
        last_sealed = frame;
        stream += frame;
        honest.push_back(true);
        break;
      }
      case 2: {
        std::string frame = request(material, stream_id++);
        std::string tag(material.substr(0, std::min(material.size(), wire::tag_size)));
        tag.resize(wire::tag_size, '\0');
        stream += frame + tag;
        honest.push_back(false);
        break;
      }
      default:
        if (last_sealed.empty()) break;
        stream += last_sealed;
        honest.push_back(false);
        break;
    }
  }

  // The server connection's side: the read buffer, the MAC, then the registry.
  boost::asio::io_context io;
  std::vector<std::string> replies;
  fwd::rpc::frame_buffer buffer(64);
  std::size_t offset = 0;
  std::size_t frame_index = 0;
  std::size_t piece = 0;
  bool closed = false;
  while (offset < stream.size() && !closed) {
    auto [room, room_size] = buffer.prepare(16);
    const std::size_t want = pieces.empty() ? 4096 : pieces[piece++ % pieces.size()] * 97;
    const std::size_t n = std::min({room_size, stream.size() - offset, want});
    std::memcpy(room, stream.data() + offset, n);
    buffer.commit(n);
    offset += n;
    wire::frame_view frame;
    boost::system::error_code ec;
    while (!closed && buffer.next(max_frame, frame, ec, wire::tag_size)) {
      if (frame_index >= honest.size()) std::abort();  // more frames than were written
      const bool opened = server.open(frame.bytes, frame.tag);
      if (opened != honest[frame_index++]) std::abort();
      if (!opened) {
        closed = true;  // the connection goes: nothing after is looked at
        break;
      }
      if (frame.header.type != wire::frame_type::request) continue;
      fwd::rpc::incoming_call call;
      call.procedure = frame.meta;
      call.signature = frame.header.aux;
      call.arguments = frame.body;
      procedures().dispatch(call, io.get_executor(),
                            [&replies, id = frame.header.stream_id](boost::system::error_code, std::string result) {
                              wire::frame_header h;
                              h.type = wire::frame_type::reply;
                              h.stream_id = id;
                              replies.push_back(wire::encode_frame(h, {}, result.substr(0, 4096)));
                            });
      io.run();
      io.restart();
    }
    closed = closed || static_cast<bool>(ec);
  }

  // Replies, sealed by the server side in order, open on the client side in order.
  for (auto& reply : replies) {
    server.seal_tail(reply, 0);
    wire::frame_view frame;
    std::size_t used = 0;
    if (wire::decode_frame(reply, max_frame, frame, used, wire::tag_size) || used != reply.size()) std::abort();
    if (!peer.open(frame.bytes, frame.tag)) std::abort();
  }
  return 0;
}
