// libFuzzer target: both sides of the handshake fed hostile frames. The first input byte
// picks the side; the rest is a stream of frames. Properties: never crashes; a side never
// reports `done` to a peer that did not prove the secret (the fuzzer does not know it).

#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/wire.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace wire = fwd::wire;

namespace {

wire::versions local() {
  wire::versions v;
  v.archive = 19;
  return v;
}

constexpr wire::nonce fixed_nonce{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

template <class Side>
void drive(Side& side, std::string_view rest) {
  for (int steps = 0; steps < 16; ++steps) {
    wire::frame_view view;
    std::size_t consumed = 0;
    if (wire::decode_frame(rest, wire::max_handshake_frame_size, view, consumed) || consumed == 0) return;
    rest.remove_prefix(consumed);
    const wire::handshake_step step = side.on_frame(view);
    // Only the secret's holder can make a side finish: the fuzzer never has it.
    if (step.done) std::abort();
    if (step.ec) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view frames(reinterpret_cast<const char*>(data + 1), size - 1);
  if ((data[0] & 1) == 0) {
    wire::server_handshake server("a secret the fuzzer cannot know", local(), fixed_nonce);
    drive(server, frames);
  } else {
    wire::client_handshake client("a secret the fuzzer cannot know", local(), fixed_nonce);
    (void)client.start();
    drive(client, frames);
  }
  return 0;
}
