#pragma once

// Optional mutual TLS for the RPC transport: what a node presents and whom it trusts.
// Only strings here, so that the options can be named without pulling in OpenSSL.

#include <string>

namespace fwd::rpc {

/**
 * TLS settings of a server (`server_options::tls`) or a client (`client_options::tls`).
 *
 * With TLS, each connection runs a TLS handshake (TLS 1.2 at least; 1.3 when both sides
 * have it) before fwd's own handshake, which still proves the cluster secret: a peer needs
 * both a certificate the other side trusts and the secret. Mutual: a server asks every
 * client for its certificate and verifies it against `ca_file`; a client verifies the
 * server's.
 *
 * Files are PEM. They are read once, when the server or client is constructed; a file that
 * cannot be read or parsed, or a key that does not match its certificate, throws
 * fwd::error (`bad_argument`) naming the file and OpenSSL's reason.
 *
 * A TLS failure (no certificate, a certificate from another CA, a plain fwd client against
 * a TLS server, a TLS client against a plain server) closes that connection only. The
 * client's calls fail with `unauthenticated` and OpenSSL's reason in
 * `call_options::diagnostics`; the server reports `telemetry::connection_failed` with
 * OpenSSL's error (category "asio.ssl"), or `unauthenticated` for a plain fwd client.
 */
struct tls_options {
  /// This node's certificate, then any intermediate CA certificates. Required on a server;
  /// on a client, needed whenever the server requires client certificates (the default).
  std::string certificate_chain_file;
  /// The private key of that certificate (unencrypted PEM). Required with the certificate.
  std::string private_key_file;
  /// The CA certificates a peer's certificate must chain to: the cluster's CA. Empty: the
  /// system's default trust store (rarely what a cluster wants).
  std::string ca_file;
  /// Server: refuse a client that presents no valid certificate (mutual TLS). False: a
  /// client certificate is verified when one is presented, and not required.
  /// Client: verify the server's certificate. False: accept any server certificate; then only
  /// the cluster secret authenticates the server: a relaying man-in-the-middle cannot inject
  /// or alter frames (they carry session MACs) but reads them all. For tests only.
  bool require_peer_certificate = true;
  /// Client only: the name the server's certificate must carry (a DNS name, or an IP address
  /// matched against its IP subjectAltNames); a DNS name is also sent as SNI. Empty: the
  /// certificate's chain is verified, not its name. A server ignores it.
  std::string verify_hostname;
};

}  // namespace fwd::rpc
