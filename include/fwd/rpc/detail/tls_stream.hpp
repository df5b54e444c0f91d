#pragma once

// The byte stream under an RPC connection: a plain TCP socket, or TLS over one, chosen when
// the connection is set up. Each operation branches once on which it is instead of going
// through a virtual call, so that the plain path costs what a bare socket costs.

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <fmt/format.h>
#include <cstddef>
#include <fwd/error.hpp>
#include <fwd/rpc/tls.hpp>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace fwd::rpc::detail {

/**
 * The SSL context of one side, built from `options`. `owner` names the options in errors
 * ("server_options::tls"). Throws fwd::error (bad_argument) naming the file and OpenSSL's
 * reason when a file cannot be loaded.
 */
inline std::shared_ptr<boost::asio::ssl::context> make_tls_context(const tls_options& options,
                                                                   bool server,
                                                                   std::string_view owner) {
  namespace ssl = boost::asio::ssl;
  auto context =
      std::make_shared<ssl::context>(server ? ssl::context::tls_server : ssl::context::tls_client);
  SSL_CTX* native = context->native_handle();
  auto fail = [&](const std::string& what, const boost::system::error_code& ec) {
    throw fwd::error(make_error_code(errc::bad_argument),
                     ec ? fmt::format("{}: {}: {}", owner, what, ec.message()) : fmt::format("{}: {}", owner, what));
  };
  // TLS 1.2 at least; OpenSSL negotiates 1.3 when the peer has it.
  if (SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1)
    fail("cannot require TLS 1.2", {});
  context->set_options(ssl::context::default_workarounds | ssl::context::no_compression);
  SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION);
  boost::system::error_code ec;
  const bool has_certificate =
      !options.certificate_chain_file.empty() || !options.private_key_file.empty();
  if (has_certificate) {
    if (options.certificate_chain_file.empty() || options.private_key_file.empty()) {
      fail("set both certificate_chain_file and private_key_file (PEM), or neither", {});
    }
    context->use_certificate_chain_file(options.certificate_chain_file, ec);
    if (ec)
      fail(fmt::format("cannot load the certificate chain {} (PEM expected)", options.certificate_chain_file), ec);
    context->use_private_key_file(options.private_key_file, ssl::context::pem, ec);
    if (ec)
      fail(fmt::format("cannot load the private key {} (unencrypted PEM expected)", options.private_key_file), ec);
    if (SSL_CTX_check_private_key(native) != 1) {
      fail(fmt::format("the private key {} does not match the certificate {}", options.private_key_file,
                       options.certificate_chain_file),
           {});
    }
  } else if (server) {
    fail("a TLS server needs certificate_chain_file and private_key_file", {});
  }
  if (!options.ca_file.empty()) {
    context->load_verify_file(options.ca_file, ec);
    if (ec) fail(fmt::format("cannot load the CA certificates {} (PEM expected)", options.ca_file), ec);
  } else {
    context->set_default_verify_paths(ec);
    if (ec) fail("cannot load the system's trust store; set ca_file", ec);
  }
  if (server) {
    context->set_verify_mode(options.require_peer_certificate
                                 ? ssl::verify_peer | ssl::verify_fail_if_no_peer_cert
                                 : ssl::verify_peer);
    if (!options.ca_file.empty()) {
      // Tell clients which CAs are acceptable, so that one holding several certificates picks
      // right.
      if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.ca_file.c_str())) {
        SSL_CTX_set_client_CA_list(native, names);
      }
    }
    // Clients do not resume sessions (each connection is long-lived): send no tickets.
    SSL_CTX_set_num_tickets(native, 0);
  } else {
    context->set_verify_mode(options.require_peer_certificate ? ssl::verify_peer
                                                              : ssl::verify_none);
  }
  return context;
}

/// True when `ec` came from TLS (OpenSSL's reasons, alerts, a truncated TLS stream).
inline bool is_tls_error(const boost::system::error_code& ec) noexcept {
  return ec.category() == boost::asio::error::get_ssl_category() ||
         ec.category() == boost::asio::ssl::error::get_stream_category();
}

/**
 * A plain TCP socket, or TLS over one (after start_tls()). Movable; one read and one write
 * may run at once, on the socket's executor (a strand). A TLS stream lives until its last
 * operation completes, even when this object is reassigned for the next connection.
 */
class transport_stream {
 public:
  using tcp = boost::asio::ip::tcp;
  using executor_type = tcp::socket::executor_type;
  using tls_stream_type = boost::asio::ssl::stream<tcp::socket>;

  explicit transport_stream(tcp::socket socket) : socket_(std::move(socket)) {}

  executor_type get_executor() noexcept { return socket().get_executor(); }

  /// The TCP socket (under TLS, the TLS stream's).
  tcp::socket& socket() noexcept { return tls_ ? tls_->stream.next_layer() : socket_; }

  bool is_tls() const noexcept { return tls_ != nullptr; }

  /// From now on, bytes go through TLS with `context` (call before any byte is exchanged).
  void start_tls(boost::asio::ssl::context& context) {
    tls_ = std::make_shared<tls_session>(std::move(socket_), context);
  }

  /// Client side: the server's certificate must carry `name`; a DNS name also goes as SNI.
  void expect_server_name(const std::string& name) {
    if (!tls_ || name.empty()) return;
    SSL* ssl = tls_->stream.native_handle();
    boost::system::error_code not_address;
    boost::asio::ip::make_address(name, not_address);
    // OpenSSL's own checks, so that a mismatch has its own verify error ("hostname mismatch").
    if (not_address) {
      SSL_set_tlsext_host_name(ssl, name.c_str());
      SSL_set1_host(ssl, name.c_str());
    } else {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str());
    }
  }

  /// OpenSSL's reason for a TLS failure, with the certificate verification's when it failed.
  std::string tls_failure_reason(const boost::system::error_code& ec) const {
    if (tls_) {
      const long verify = SSL_get_verify_result(tls_->stream.native_handle());
      if (verify != X509_V_OK) return fmt::format("{} ({})", ec.message(), X509_verify_cert_error_string(verify));
    }
    return ec.message();
  }

  /// The TLS handshake, as `type`; completes `handler(error_code)` on the socket's executor.
  template <class Handler>
  void async_tls_handshake(boost::asio::ssl::stream_base::handshake_type type, Handler&& handler) {
    auto& stream = tls_->stream;
    stream.async_handshake(type, [keep = tls_, h = std::forward<Handler>(handler)](
                                     boost::system::error_code ec) mutable { std::move(h)(ec); });
  }

  /// AsyncReadStream: `void(error_code, std::size_t)`.
  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
        [this](auto handler, const MutableBuffers& b) {
          if (!tls_) {
            socket_.async_read_some(b, std::move(handler));
            return;
          }
          auto& stream = tls_->stream;
          stream.async_read_some(
              b, [keep = tls_, h = std::move(handler)](
                     boost::system::error_code ec, std::size_t n) mutable { std::move(h)(ec, n); });
        },
        token, buffers);
  }

  /// AsyncWriteStream: `void(error_code, std::size_t)`.
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
        [this](auto handler, const ConstBuffers& b) {
          if (!tls_) {
            socket_.async_write_some(b, std::move(handler));
            return;
          }
          // TLS writes one buffer at a time; gather many small frames into one, so that
          // coalesced frames still make few TLS records and few system calls.
          const auto data = tls_->gather(b);
          auto& stream = tls_->stream;
          stream.async_write_some(data, [keep = tls_, h = std::move(handler)](
                                            boost::system::error_code ec, std::size_t n) mutable {
            std::move(h)(ec, n);
          });
        },
        token, buffers);
  }

  /// Closes the connection at once (no TLS close_notify: fwd's goodbye frame says why).
  void close() noexcept {
    boost::system::error_code ignored;
    socket().shutdown(tcp::socket::shutdown_both, ignored);
    socket().close(ignored);
  }

 private:
  struct tls_session {
    tls_session(tcp::socket socket, boost::asio::ssl::context& context)
        : stream(std::move(socket), context) {}

    template <class ConstBuffers>
    boost::asio::const_buffer gather(const ConstBuffers& buffers) {
      auto it = boost::asio::buffer_sequence_begin(buffers);
      const auto end = boost::asio::buffer_sequence_end(buffers);
      if (it == end) return {};
      boost::asio::const_buffer first(*it);
      if (std::next(it) == end || first.size() >= gather_limit) return first;
      gathered.clear();
      for (; it != end && gathered.size() < gather_limit; ++it) {
        boost::asio::const_buffer b(*it);
        const std::size_t take = std::min(b.size(), gather_limit - gathered.size());
        gathered.append(static_cast<const char*>(b.data()), take);
      }
      return boost::asio::buffer(gathered);
    }

    static constexpr std::size_t gather_limit = 64 * 1024;
    tls_stream_type stream;
    std::string gathered;  // one write at a time, so one buffer serves them all
  };

  tcp::socket socket_;                // the connection, until start_tls()
  std::shared_ptr<tls_session> tls_;  // after start_tls(): owns the socket
};

}  // namespace fwd::rpc::detail
