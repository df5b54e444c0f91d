#pragma once

// HMAC-SHA256, HKDF-SHA256, GMAC (AES-256-GCM), constant-time comparison and random bytes,
// from OpenSSL. Kept apart so that only the handshake and the session layer pull OpenSSL's
// headers in.

#include <fwd/error.hpp>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/modes.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

namespace fwd::detail {

using sha256_digest = std::array<std::uint8_t, 32>;

[[noreturn]] inline void openssl_failed(const char* what) {
  throw fwd::error(make_error_code(errc::bad_argument),
                   std::string("OpenSSL could not compute ") + what + ": check the OpenSSL installation");
}

/// HMAC-SHA256 of the concatenation of `parts`, keyed by `key`.
inline sha256_digest hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts) {
  std::string message;
  for (std::string_view part : parts) message.append(part);
  sha256_digest out{};
  unsigned int length = 0;
  const unsigned char* done =
      HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), out.data(), &length);
  if (done == nullptr || length != out.size()) openssl_failed("HMAC-SHA256");
  return out;
}

/// HKDF-SHA256 (RFC 5869): a 32-byte key from input keying material `ikm`, `salt` and the
/// context string `info`.
inline sha256_digest hkdf_sha256(std::string_view ikm, std::string_view salt, std::string_view info) {
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr),
                                                                  &EVP_PKEY_CTX_free);
  sha256_digest out{};
  std::size_t length = out.size();
  const auto bytes = [](std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); };
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) <= 0 || EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) <= 0 ||
      EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), bytes(salt), static_cast<int>(salt.size())) <= 0 ||
      EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), bytes(ikm), static_cast<int>(ikm.size())) <= 0 ||
      EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), bytes(info), static_cast<int>(info.size())) <= 0 ||
      EVP_PKEY_derive(ctx.get(), out.data(), &length) <= 0 || length != out.size()) {
    openssl_failed("HKDF-SHA256");
  }
  return out;
}

/**
 * GMAC: AES-256-GCM with nothing to encrypt, the message as additional authenticated data,
 * so that the tag authenticates it. One key for many messages, each under its own 96-bit
 * nonce (which must never repeat under a key).
 *
 * Built on OpenSSL's GCM mode directly (CRYPTO_gcm128, which uses carry-less multiply
 * where the CPU has it) over an AES-256 block cipher context: the key schedule and the
 * hash key are computed once, and each message costs a nonce, the hash of its bytes and
 * one AES block, with nothing allocated. Through EVP_EncryptInit_ex, re-keying the nonce
 * alone costs three times as much on a small frame.
 */
class gmac_context {
 public:
  static constexpr std::size_t tag_size = 16;
  using tag = std::array<std::uint8_t, tag_size>;

  gmac_context() = default;
  explicit gmac_context(const sha256_digest& key) : aes_(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free) {
    if (!aes_ || EVP_EncryptInit_ex(aes_.get(), EVP_aes_256_ecb(), nullptr, key.data(), nullptr) != 1 ||
        EVP_CIPHER_CTX_set_padding(aes_.get(), 0) != 1) {
      openssl_failed("AES-256");
    }
    gcm_.reset(CRYPTO_gcm128_new(aes_.get(), &encrypt_block));
    if (!gcm_) openssl_failed("GCM");
  }

  explicit operator bool() const noexcept { return static_cast<bool>(gcm_); }

  /// Starts a message under the nonce 0^32 || `counter` (little-endian).
  void begin(std::uint64_t counter) noexcept {
    unsigned char iv[12] = {};
    for (int i = 0; i < 8; ++i) iv[4 + i] = static_cast<unsigned char>(counter >> (8 * i));
    CRYPTO_gcm128_setiv(gcm_.get(), iv, sizeof iv);
  }
  void update(const void* data, std::size_t size) {
    if (CRYPTO_gcm128_aad(gcm_.get(), static_cast<const unsigned char*>(data), size) != 0) {
      openssl_failed("GMAC (a message over 2^61 bytes)");
    }
  }
  tag finish() noexcept {
    tag out{};
    CRYPTO_gcm128_tag(gcm_.get(), out.data(), out.size());
    return out;
  }

 private:
  // One AES block, as GCM asks for it (the context is ECB without padding: no state).
  static void encrypt_block(const unsigned char in[16], unsigned char out[16], const void* aes) {
    int length = 0;
    EVP_EncryptUpdate(static_cast<EVP_CIPHER_CTX*>(const_cast<void*>(aes)), out, &length, in, 16);
  }

  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> aes_{nullptr, &EVP_CIPHER_CTX_free};
  std::unique_ptr<GCM128_CONTEXT, decltype(&CRYPTO_gcm128_release)> gcm_{nullptr, &CRYPTO_gcm128_release};
};

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
