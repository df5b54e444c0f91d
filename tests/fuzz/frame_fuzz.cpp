// libFuzzer target: the frame decoder, on whole buffers and fed in pieces.
// Properties: never crashes, never reads out of bounds, never allocates for an oversized
// frame; a decoded frame re-encodes to exactly the bytes it was decoded from.

#include <fwd/rpc/frame_buffer.hpp>
#include <fwd/rpc/wire.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace wire = fwd::wire;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  constexpr std::size_t max_frame = 4096;

  // Whole buffer: decode frame after frame.
  std::string_view rest = input;
  std::size_t frames = 0;
  for (;;) {
    wire::frame_view view;
    std::size_t consumed = 0;
    if (wire::decode_frame(rest, max_frame, view, consumed) || consumed == 0) break;
    if (consumed > rest.size() || consumed > max_frame) std::abort();
    const std::string again = wire::encode_frame(view.header, view.meta, view.body);
    if (again != rest.substr(0, consumed)) std::abort();
    rest.remove_prefix(consumed);
    ++frames;
  }

  // The same bytes through the connection's read buffer, in pieces whose sizes come from
  // the input itself: it must find the same frames.
  fwd::rpc::frame_buffer buffer(64);
  std::size_t offset = 0;
  std::size_t found = 0;
  bool failed = false;
  while (offset < size && !failed) {
    auto [room, room_size] = buffer.prepare(16);
    const std::size_t piece = std::min<std::size_t>({room_size, size - offset, std::size_t{1} + data[offset] % 97u});
    std::memcpy(room, data + offset, piece);
    buffer.commit(piece);
    offset += piece;
    wire::frame_view view;
    boost::system::error_code ec;
    while (buffer.next(max_frame, view, ec)) ++found;
    failed = static_cast<bool>(ec);
  }
  if (found > frames) std::abort();
  if (!failed && found != frames) std::abort();
  return 0;
}
