// Mutual TLS under the RPC transport: real certificates, made at test time with OpenSSL's C
// API in a temporary directory (a cluster CA, a server and a client certificate, and an
// unrelated CA with its own client), a real server and client on loopback.

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <future>
#include <fwd/rpc/client.hpp>
#include <fwd/rpc/server.hpp>
#include <fwd/rpc/tls.hpp>
#include <fwd/telemetry.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test_procedures.hpp"
#include "../support/io_thread.hpp"

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

const std::string secret = "tls-test-cluster-secret-of-32-bytes-or-more";

// --- certificates ---------------------------------------------------------------------------

struct key_deleter {
  void operator()(EVP_PKEY* key) const noexcept { EVP_PKEY_free(key); }
};
struct cert_deleter {
  void operator()(X509* cert) const noexcept { X509_free(cert); }
};
using key_ptr = std::unique_ptr<EVP_PKEY, key_deleter>;
using cert_ptr = std::unique_ptr<X509, cert_deleter>;

struct identity {
  key_ptr key;
  cert_ptr cert;
};

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value);
  REQUIRE(extension != nullptr);
  REQUIRE(X509_add_ext(cert, extension, -1) == 1);
  X509_EXTENSION_free(extension);
}

// A P-256 key and a certificate for `common_name`, signed by `issuer` (self-signed when null).
identity make_identity(const std::string& common_name, const identity* issuer, bool is_ca,
                       const char* usage) {
  static long serial = 1;
  identity out;
  out.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  REQUIRE(out.key);
  out.cert.reset(X509_new());
  X509* cert = out.cert.get();
  REQUIRE(X509_set_version(cert, 2) == 1);
  REQUIRE(ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++) == 1);
  REQUIRE(X509_gmtime_adj(X509_getm_notBefore(cert), -3600) != nullptr);
  REQUIRE(X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600) != nullptr);
  REQUIRE(X509_set_pubkey(cert, out.key.get()) == 1);
  X509_NAME* name = X509_get_subject_name(cert);
  REQUIRE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                     reinterpret_cast<const unsigned char*>(common_name.c_str()),
                                     -1, -1, 0) == 1);
  X509* issuer_cert = issuer ? issuer->cert.get() : cert;
  REQUIRE(X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert)) == 1);
  add_extension(cert, issuer_cert, NID_subject_key_identifier, "hash");
  add_extension(cert, issuer_cert, NID_authority_key_identifier, "keyid:always");
  if (is_ca) {
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert, issuer_cert, NID_key_usage, "critical,digitalSignature");
    add_extension(cert, issuer_cert, NID_ext_key_usage, usage);
    add_extension(cert, issuer_cert, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
  }
  REQUIRE(X509_sign(cert, issuer ? issuer->key.get() : out.key.get(), EVP_sha256()) > 0);
  return out;
}

// Every PEM file a test needs, in a temporary directory removed afterwards.
class tls_files {
 public:
  tls_files() {
    std::string pattern = (std::filesystem::temp_directory_path() / "fwd-tls-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    dir_ = pattern;
    const identity ca = make_identity("fwd test cluster CA", nullptr, true, nullptr);
    const identity server = make_identity("fwd test server", &ca, false, "serverAuth");
    const identity client = make_identity("fwd test client", &ca, false, "clientAuth");
    const identity other_ca = make_identity("unrelated CA", nullptr, true, nullptr);
    const identity stranger = make_identity("fwd test stranger", &other_ca, false, "clientAuth");
    write_cert("ca.pem", ca);
    write_identity("server", server);
    write_identity("client", client);
    write_cert("other_ca.pem", other_ca);
    write_identity("stranger", stranger);
  }

  tls_files(const tls_files&) = delete;
  tls_files& operator=(const tls_files&) = delete;

  ~tls_files() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  /// The server's TLS options: its certificate, trusting the cluster CA.
  fwd::rpc::tls_options server() const {
    fwd::rpc::tls_options o;
    o.certificate_chain_file = path("server.pem");
    o.private_key_file = path("server.key");
    o.ca_file = path("ca.pem");
    return o;
  }

  /// A client's TLS options: `who`'s certificate ("client", "stranger" or "" for none),
  /// trusting `ca`.
  fwd::rpc::tls_options client(const std::string& who = "client",
                               const std::string& ca = "ca.pem") const {
    fwd::rpc::tls_options o;
    if (!who.empty()) {
      o.certificate_chain_file = path(who + ".pem");
      o.private_key_file = path(who + ".key");
    }
    o.ca_file = path(ca);
    return o;
  }

 private:
  void write_cert(const std::string& name, const identity& id) {
    FILE* f = std::fopen(path(name).c_str(), "w");
    REQUIRE(f != nullptr);
    const int written = PEM_write_X509(f, id.cert.get());
    std::fclose(f);
    REQUIRE(written == 1);
  }

  void write_identity(const std::string& name, const identity& id) {
    write_cert(name + ".pem", id);
    FILE* f = std::fopen(path(name + ".key").c_str(), "w");
    REQUIRE(f != nullptr);
    const int written =
        PEM_write_PrivateKey(f, id.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
    REQUIRE(written == 1);
  }

  std::filesystem::path dir_;
};

const tls_files& files() {
  static const tls_files made;  // keys are cheap, but once is enough
  return made;
}

// --- servers, clients, calls ----------------------------------------------------------------

using fwd_test::io_thread;

// Records the server's failed connections, to wait on them.
struct failures {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<boost::system::error_code> reasons;

  fwd::telemetry_ptr hooks() {
    auto t = std::make_shared<fwd::telemetry>();
    t->connection_failed = [this](const fwd::connection_event& e) {
      std::lock_guard lock(mutex);
      reasons.push_back(e.reason);
      changed.notify_all();
    };
    return t;
  }

  boost::system::error_code wait_first(std::chrono::seconds bound = 10s) {
    std::unique_lock lock(mutex);
    REQUIRE(changed.wait_for(lock, bound, [this] { return !reasons.empty(); }));
    return reasons.front();
  }
};

// An in-process server (TLS when `tls` is set) defining test.echo and test.add.
class test_server {
 public:
  explicit test_server(std::optional<fwd::rpc::tls_options> tls,
                       fwd::telemetry_ptr telemetry = nullptr) {
    procedures_.define(test_procs::echo, [](std::string s) { return s; });
    procedures_.define(test_procs::add, [](std::int64_t a, std::int64_t b) { return a + b; });
    fwd::rpc::server_options options;
    options.secret = secret;
    options.node_name = "tls-node";
    options.tls = std::move(tls);
    options.telemetry = std::move(telemetry);
    server_.emplace(io_.io.get_executor(), procedures_, std::move(options));
    server_->start();
  }

  tcp::endpoint endpoint() const { return server_->local_endpoint(); }

 private:
  fwd::rpc::registry procedures_;  // outlives the io thread, which runs the connections
  io_thread io_;
  std::optional<fwd::rpc::server> server_;
};

fwd::rpc::client_options client_options(std::optional<fwd::rpc::tls_options> tls,
                                        std::string key = secret) {
  fwd::rpc::client_options options;
  options.secret = std::move(key);
  options.tls = std::move(tls);
  options.reconnect_backoff = 1ms;
  return options;
}

template <class R>
struct outcome {
  boost::system::error_code ec;
  R value{};
  std::string detail;
};

// One call, waited for with a bound; the error detail comes back with the error.
template <class R, class... Params, class... Args>
outcome<R> call(fwd::rpc::client& client, const tcp::endpoint& peer,
                const fwd::procedure<R(Params...)>& proc, Args&&... args) {
  fwd::rpc::call_options options;
  auto diag = std::make_shared<fwd::diagnostics>();
  options.diagnostics = diag.get();
  options.deadline = std::chrono::steady_clock::now() + 20s;
  std::promise<outcome<R>> done;
  auto future = done.get_future();
  client.async_call(peer, options, proc, std::forward<Args>(args)...,
                    [&done, diag](boost::system::error_code ec, R value) {
                      done.set_value(outcome<R>{ec, std::move(value), diag->message()});
                    });
  REQUIRE(future.wait_for(30s) == std::future_status::ready);
  return future.get();
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("over mutual TLS, typed calls succeed and fwd's own handshake still runs") {
  test_server server(files().server());
  io_thread io;
  auto tls = files().client();
  tls.verify_hostname = "127.0.0.1";  // matched against the certificate's IP subjectAltName
  fwd::rpc::client client(io.io.get_executor(), client_options(tls));

  auto sum = call(client, server.endpoint(), test_procs::add, 40, 2);
  REQUIRE_FALSE(sum.ec);
  CHECK(sum.value == 42);
  auto info = call(client, server.endpoint(), fwd::rpc::hello);
  REQUIRE_FALSE(info.ec);
  CHECK(info.value.node_name == "tls-node");

  // Many calls in flight on the one TLS connection, small and large frames coalesced.
  constexpr int calls = 500;
  std::vector<std::promise<outcome<std::string>>> done(calls);
  std::vector<std::string> sent(calls);
  for (int i = 0; i < calls; ++i) {
    sent[i] = std::string(i % 50 == 0 ? 300000 : 1 + i, static_cast<char>('a' + i % 26));
    client.async_call(server.endpoint(), test_procs::echo, sent[i],
                      [&done, i](boost::system::error_code ec, std::string value) {
                        done[i].set_value(outcome<std::string>{ec, std::move(value), {}});
                      });
  }
  for (int i = 0; i < calls; ++i) {
    auto f = done[i].get_future();
    REQUIRE(f.wait_for(30s) == std::future_status::ready);
    auto got = f.get();
    REQUIRE_FALSE(got.ec);
    REQUIRE(got.value == sent[i]);
  }
}

TEST_CASE(
    "a TLS server refuses a client without a certificate: unauthenticated, with OpenSSL's reason") {
  test_server server(files().server());
  io_thread io;
  fwd::rpc::client anonymous(io.io.get_executor(), client_options(files().client("")));
  auto refused = call(anonymous, server.endpoint(), test_procs::add, 1, 2);
  CHECK(refused.ec == fwd::errc::unauthenticated);
  INFO(refused.detail);
  CHECK(contains(refused.detail, "TLS"));
  CHECK(contains(refused.detail, "certificate"));

  // The server goes on serving clients that have one.
  fwd::rpc::client member(io.io.get_executor(), client_options(files().client()));
  auto sum = call(member, server.endpoint(), test_procs::add, 1, 2);
  REQUIRE_FALSE(sum.ec);
  CHECK(sum.value == 3);
}

TEST_CASE("a TLS server refuses a client certificate from another CA, and says why in telemetry") {
  failures failed;
  test_server server(files().server(), failed.hooks());
  io_thread io;
  fwd::rpc::client stranger(io.io.get_executor(),
                            client_options(files().client("stranger", "ca.pem")));
  auto refused = call(stranger, server.endpoint(), test_procs::add, 1, 2);
  CHECK(refused.ec == fwd::errc::unauthenticated);
  INFO(refused.detail);
  CHECK(contains(refused.detail, "TLS"));
  CHECK(contains(refused.detail, "unknown ca"));

  const auto reason = failed.wait_first();
  INFO(reason.message());
  CHECK(contains(reason.message(), "certificate verify failed"));
}

TEST_CASE("a TLS client refuses a server whose certificate its CA did not sign") {
  test_server server(files().server());
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(),
                          client_options(files().client("client", "other_ca.pem")));
  auto refused = call(client, server.endpoint(), test_procs::add, 1, 2);
  CHECK(refused.ec == fwd::errc::unauthenticated);
  INFO(refused.detail);
  CHECK(contains(refused.detail, "certificate verify failed"));
  CHECK(contains(refused.detail, "certificate chain"));  // X509's reason, after OpenSSL's
  // The blocking form throws the same reason in its diagnostics.
  try {
    client.call(server.endpoint(), test_procs::add, 1, 2);
    FAIL("call() did not throw");
  } catch (const fwd::error& e) {
    CHECK(e.code() == fwd::errc::unauthenticated);
    INFO(e.get_diagnostics().message());
    CHECK(contains(e.get_diagnostics().message(), "call to "));
    CHECK(contains(e.get_diagnostics().message(), "certificate verify failed"));
  }
}

TEST_CASE("a TLS client refuses a server certificate that does not carry the expected name") {
  test_server server(files().server());
  io_thread io;
  auto tls = files().client();
  tls.verify_hostname = "primary.cluster.internal";
  fwd::rpc::client client(io.io.get_executor(), client_options(tls));
  auto refused = call(client, server.endpoint(), test_procs::add, 1, 2);
  CHECK(refused.ec == fwd::errc::unauthenticated);
  INFO(refused.detail);
  CHECK(contains(refused.detail, "hostname mismatch"));
}

TEST_CASE(
    "a plain TCP client against a TLS server fails cleanly, and the server keeps serving TLS "
    "clients") {
  failures failed;
  test_server server(files().server(), failed.hooks());
  io_thread io;
  fwd::rpc::client plain(io.io.get_executor(), client_options(std::nullopt));
  auto refused = call(plain, server.endpoint(), test_procs::add, 1, 2);
  CHECK(refused.ec == fwd::errc::unauthenticated);
  INFO(refused.detail);
  CHECK(contains(refused.detail, "requires TLS"));
  CHECK(failed.wait_first() == fwd::errc::unauthenticated);

  // Bytes that are neither fwd nor TLS close that connection only.
  {
    asio::io_context raw_io;
    tcp::socket raw(raw_io);
    raw.connect(server.endpoint());
    asio::write(raw, asio::buffer(std::string("GET / HTTP/1.1\r\n\r\n")));
    char byte = 0;
    boost::system::error_code ec;
    raw.read_some(asio::buffer(&byte, 1), ec);  // the server closes: EOF or reset, never data
    CHECK(ec);
  }

  fwd::rpc::client member(io.io.get_executor(), client_options(files().client()));
  for (int i = 0; i < 3; ++i) {
    auto sum = call(member, server.endpoint(), test_procs::add, i, 1);
    REQUIRE_FALSE(sum.ec);
    CHECK(sum.value == i + 1);
  }
  // The plain client keeps being refused, never served.
  CHECK(call(plain, server.endpoint(), test_procs::add, 1, 2).ec == fwd::errc::unauthenticated);
}

TEST_CASE("a TLS client against a plain server fails with unauthenticated, not a hang") {
  test_server server(std::nullopt);
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options(files().client()));
  auto refused = call(client, server.endpoint(), test_procs::add, 1, 2);
  CHECK(refused.ec == fwd::errc::unauthenticated);
  INFO(refused.detail);
  CHECK(contains(refused.detail, "TLS handshake"));
}

TEST_CASE("over valid TLS, a client with the wrong cluster secret is still unauthenticated") {
  test_server server(files().server());
  io_thread io;
  fwd::rpc::client client(io.io.get_executor(), client_options(files().client(), "not-the-cluster-secret-but-32-bytes-long"));
  auto refused = call(client, server.endpoint(), test_procs::add, 1, 2);
  CHECK(refused.ec == fwd::errc::unauthenticated);
  INFO(refused.detail);
  CHECK(contains(refused.detail, "cluster secret"));
}

TEST_CASE("TLS files that cannot be used are a bad_argument when the server or client is built") {
  io_thread io;
  fwd::rpc::registry procedures;
  auto server_with = [&](fwd::rpc::tls_options tls) {
    fwd::rpc::server_options options;
    options.secret = secret;
    options.tls = std::move(tls);
    fwd::rpc::server server(io.io.get_executor(), procedures, std::move(options));
  };
  auto expect_bad_argument = [](auto&& build, const std::string& part) {
    try {
      build();
      FAIL("no error");
    } catch (const fwd::error& e) {
      INFO(e.what());
      CHECK(e.code() == fwd::errc::bad_argument);
      CHECK(contains(e.what(), part));
    }
  };

  auto missing = files().server();
  missing.certificate_chain_file = files().path("nowhere.pem");
  expect_bad_argument([&] { server_with(missing); }, "nowhere.pem");

  auto no_certificate = files().server();
  no_certificate.certificate_chain_file.clear();
  no_certificate.private_key_file.clear();
  expect_bad_argument([&] { server_with(no_certificate); },
                      "a TLS server needs certificate_chain_file");

  auto wrong_key = files().server();
  wrong_key.private_key_file = files().path("client.key");
  expect_bad_argument([&] { server_with(wrong_key); }, "client.key");

  auto bad_ca = files().client();
  bad_ca.ca_file = files().path("client.key");  // not a certificate
  expect_bad_argument(
      [&] { fwd::rpc::client client(io.io.get_executor(), client_options(bad_ca)); },
      "client_options::tls");
}
