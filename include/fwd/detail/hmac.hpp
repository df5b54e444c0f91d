#pragma once

// HMAC-SHA256, HKDF-SHA256, constant-time comparison and random bytes, from OpenSSL. Kept
// apart so that only the handshake and the session layer pull OpenSSL's headers in.

#include <fwd/error.hpp>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

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
 * HMAC-SHA256 under one key, for many messages: the key is set (and its padded blocks
 * hashed) once; each message then costs a re-initialisation of the same context, with
 * nothing allocated by fwd.
 */
class hmac_sha256_context {
 public:
  hmac_sha256_context() = default;
  explicit hmac_sha256_context(const sha256_digest& key) : ctx_(EVP_MAC_CTX_new(hmac()), &EVP_MAC_CTX_free) {
    char digest[] = "SHA256";
    const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                                 OSSL_PARAM_construct_end()};
    if (!ctx_ || EVP_MAC_init(ctx_.get(), key.data(), key.size(), params) != 1) openssl_failed("HMAC-SHA256");
  }

  explicit operator bool() const noexcept { return static_cast<bool>(ctx_); }

  /// Starts a message (under the key given at construction).
  void begin() {
    if (EVP_MAC_init(ctx_.get(), nullptr, 0, nullptr) != 1) openssl_failed("HMAC-SHA256");
  }
  void update(const void* data, std::size_t size) {
    if (EVP_MAC_update(ctx_.get(), static_cast<const unsigned char*>(data), size) != 1) {
      openssl_failed("HMAC-SHA256");
    }
  }
  sha256_digest finish() {
    sha256_digest out{};
    std::size_t length = 0;
    if (EVP_MAC_final(ctx_.get(), out.data(), &length, out.size()) != 1 || length != out.size()) {
      openssl_failed("HMAC-SHA256");
    }
    return out;
  }

 private:
  // Fetched once per process: a fetch looks the algorithm up under a lock.
  static EVP_MAC* hmac() {
    static EVP_MAC* const fetched = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (fetched == nullptr) openssl_failed("HMAC-SHA256 (no HMAC in the default provider)");
    return fetched;
  }

  std::unique_ptr<EVP_MAC_CTX, decltype(&EVP_MAC_CTX_free)> ctx_{nullptr, &EVP_MAC_CTX_free};
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
