#pragma once

// HMAC-SHA256, constant-time comparison and random bytes, from OpenSSL. Kept apart so that
// only the handshake pulls OpenSSL's headers in.

#include <fwd/error.hpp>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace fwd::detail {

using sha256_digest = std::array<std::uint8_t, 32>;

/// HMAC-SHA256 of the concatenation of `parts`, keyed by `key`.
inline sha256_digest hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts) {
  std::string message;
  for (std::string_view part : parts) message.append(part);
  sha256_digest out{};
  unsigned int length = 0;
  const unsigned char* done =
      HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), out.data(), &length);
  if (done == nullptr || length != out.size()) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     "OpenSSL could not compute HMAC-SHA256: check the OpenSSL installation");
  }
  return out;
}

/// True when the two digests are equal, in time that does not depend on where they differ.
inline bool digests_equal(const sha256_digest& a, const sha256_digest& b) noexcept {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

/// Cryptographically random bytes.
template <std::size_t N>
std::array<std::uint8_t, N> random_bytes() {
  std::array<std::uint8_t, N> out{};
  if (RAND_bytes(out.data(), static_cast<int>(N)) != 1) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     "OpenSSL's random generator failed: check the system's entropy source");
  }
  return out;
}

}  // namespace fwd::detail
