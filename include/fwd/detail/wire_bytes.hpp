#pragma once

// Little-endian integer (de)serialisation for the wire codec. The wire's own fields are
// little-endian on every host; only Boost archives inside payloads use native order (which
// is why the handshake compares byte orders).

#include <cstddef>
#include <cstdint>

namespace fwd::detail {

template <class T>
inline void store_le(char* out, T value) noexcept {
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    out[i] = static_cast<char>(static_cast<std::uint8_t>(static_cast<std::uint64_t>(value) >> (8 * i)));
  }
}

template <class T>
inline T load_le(const char* in) noexcept {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    value |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(in[i])) << (8 * i);
  }
  return static_cast<T>(value);
}

}  // namespace fwd::detail
