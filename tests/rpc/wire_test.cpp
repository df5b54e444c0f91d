// The wire codec on its own: frames and the handshake, as bytes.

#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/session.hpp>
#include <fwd/rpc/wire.hpp>

#include <catch2/catch.hpp>

#include <array>
#include <memory>
#include <string>
#include <vector>

namespace wire = fwd::wire;

namespace {

wire::frame_header sample_header() {
  wire::frame_header h;
  h.type = wire::frame_type::request;
  h.flags = wire::frame_flags::has_deadline;
  h.stream_id = 0x0102030405060708ull;
  for (std::size_t i = 0; i < h.id.size(); ++i) h.id[i] = static_cast<std::uint8_t>(i * 7);
  h.deadline_ms = 1234;
  h.aux = 0xfeedfacecafebeefull;
  return h;
}

wire::frame_view decode_one(const std::string& bytes, std::size_t max = wire::default_max_frame_size) {
  wire::frame_view view;
  std::size_t consumed = 0;
  auto ec = wire::decode_frame(bytes, max, view, consumed);
  REQUIRE_FALSE(ec);
  REQUIRE(consumed == bytes.size());
  return view;
}

}  // namespace

TEST_CASE("a frame decodes to the header, metadata and body it was encoded with") {
  const std::string bytes = wire::encode_frame(sample_header(), "blog.add_tag", std::string("\0args\xff", 6));
  REQUIRE(bytes.size() == wire::header_size + 12 + 6);
  const auto view = decode_one(bytes);
  CHECK(view.header.type == wire::frame_type::request);
  CHECK(view.header.flags == wire::frame_flags::has_deadline);
  CHECK(view.header.stream_id == 0x0102030405060708ull);
  CHECK(view.header.id == sample_header().id);
  CHECK(view.header.deadline_ms == 1234);
  CHECK(view.header.aux == 0xfeedfacecafebeefull);
  CHECK(view.meta == "blog.add_tag");
  CHECK(view.body == std::string("\0args\xff", 6));
}

TEST_CASE("the header is little-endian with the magic FWD1 first, whatever the host") {
  const std::string bytes = wire::encode_frame(sample_header());
  CHECK(bytes.substr(0, 4) == "FWD1");
  CHECK(static_cast<std::uint8_t>(bytes[8]) == 0x08);  // stream id's lowest byte first
  CHECK(static_cast<std::uint8_t>(bytes[15]) == 0x01);
}

TEST_CASE("coalesced frames decode one after another, a partial frame asks for more bytes") {
  std::string bytes;
  for (int i = 0; i < 3; ++i) {
    auto h = sample_header();
    h.stream_id = static_cast<std::uint64_t>(i);
    wire::append_frame(bytes, h, "p", std::string(static_cast<std::size_t>(i) * 10, 'x'));
  }
  std::string_view rest = bytes;
  for (int i = 0; i < 3; ++i) {
    wire::frame_view view;
    std::size_t consumed = 0;
    // Every strict prefix of the frame is "need more", never an error.
    const std::size_t whole = wire::header_size + 1 + static_cast<std::size_t>(i) * 10;
    for (std::size_t cut = 0; cut < whole; ++cut) {
      REQUIRE_FALSE(wire::decode_frame(rest.substr(0, cut), wire::default_max_frame_size, view, consumed));
      REQUIRE(consumed == 0);
    }
    REQUIRE_FALSE(wire::decode_frame(rest, wire::default_max_frame_size, view, consumed));
    REQUIRE(consumed == whole);
    CHECK(view.header.stream_id == static_cast<std::uint64_t>(i));
    rest.remove_prefix(consumed);
  }
  CHECK(rest.empty());
}

TEST_CASE("bytes that are not a fwd header are a protocol_error") {
  std::string good = wire::encode_frame(sample_header(), "x", "y");
  wire::frame_view view;
  std::size_t consumed = 0;
  SECTION("wrong magic") {
    std::string bad = "GET / HTTP/1.1\r\nHost: example\r\n\r\n" + std::string(40, ' ');
    CHECK(wire::decode_frame(bad, 1 << 20, view, consumed) == fwd::errc::protocol_error);
  }
  SECTION("unknown frame type") {
    good[4] = 99;
    CHECK(wire::decode_frame(good, 1 << 20, view, consumed) == fwd::errc::protocol_error);
  }
  SECTION("unknown flag bits") {
    good[5] = static_cast<char>(0x80);
    CHECK(wire::decode_frame(good, 1 << 20, view, consumed) == fwd::errc::protocol_error);
  }
  SECTION("reserved bytes set") {
    good[6] = 1;
    CHECK(wire::decode_frame(good, 1 << 20, view, consumed) == fwd::errc::protocol_error);
  }
  SECTION("a durability on a frame that is not a request") {
    auto h = sample_header();
    h.type = wire::frame_type::reply;
    h.flags = wire::frame_flags::has_durability;
    h.durability = 1;
    const std::string reply = wire::encode_frame(h, "x", "y");
    CHECK(wire::decode_frame(reply, 1 << 20, view, consumed) == fwd::errc::protocol_error);
  }
}

TEST_CASE("a request carries its durability in bytes 6-7, and only with the flag") {
  auto h = sample_header();
  SECTION("with the flag") {
    h.flags = wire::frame_flags::has_deadline | wire::frame_flags::has_durability;
    h.durability = 0xffff;
    const std::string bytes = wire::encode_frame(h, "x", "y");
    CHECK(static_cast<unsigned char>(bytes[6]) == 0xff);
    CHECK(static_cast<unsigned char>(bytes[7]) == 0xff);
    const auto view = decode_one(bytes);
    CHECK(view.header.durability == 0xffff);
    CHECK((view.header.flags & wire::frame_flags::has_durability) != 0);
  }
  SECTION("without the flag the field is not written") {
    h.durability = 3;
    const std::string bytes = wire::encode_frame(h, "x", "y");
    CHECK(bytes[6] == 0);
    CHECK(bytes[7] == 0);
    CHECK(decode_one(bytes).header.durability == 0);
  }
}

TEST_CASE("a frame announcing more than the maximum size is frame_too_large from its header alone") {
  auto h = sample_header();
  std::string bytes(wire::header_size, '\0');
  h.meta_size = 0xffffffffu;
  h.body_size = 0xffffffffu;  // 8 GiB announced; only the header is present
  wire::encode_header(h, bytes.data());
  wire::frame_view view;
  std::size_t consumed = 0;
  CHECK(wire::decode_frame(bytes, wire::default_max_frame_size, view, consumed) == fwd::errc::frame_too_large);
  // The limit counts the whole frame, header included.
  const std::string exact = wire::encode_frame(sample_header(), "", std::string(100, 'b'));
  CHECK_FALSE(wire::decode_frame(exact, exact.size(), view, consumed));
  CHECK(wire::decode_frame(exact, exact.size() - 1, view, consumed) == fwd::errc::frame_too_large);
}

namespace {

struct handshake_result {
  boost::system::error_code client_ec, server_ec;
  std::string client_detail, server_detail;
  bool client_done = false, server_done = false;
  wire::session client_session, server_session;
};

// Runs a whole handshake in memory, frames passed through the real decoder.
handshake_result run_handshake(std::vector<std::string> client_secret, std::vector<std::string> server_secret,
                               wire::versions client_versions, wire::versions server_versions) {
  wire::client_handshake client(client_secret, client_versions);
  wire::server_handshake server(server_secret, server_versions);
  handshake_result r;
  std::string to_server = client.start();
  std::string to_client;
  for (int round = 0; round < 4 && !(r.client_done && r.server_done); ++round) {
    while (!to_server.empty()) {
      wire::frame_view f;
      std::size_t used = 0;
      REQUIRE_FALSE(wire::decode_frame(to_server, wire::max_handshake_frame_size, f, used));
      REQUIRE(used > 0);
      auto step = server.on_frame(f);
      to_server.erase(0, used);
      to_client += step.send;
      if (step.ec) {
        r.server_ec = step.ec;
        r.server_detail = step.detail;
        to_server.clear();
      }
      r.server_done = r.server_done || step.done;
    }
    while (!to_client.empty()) {
      wire::frame_view f;
      std::size_t used = 0;
      REQUIRE_FALSE(wire::decode_frame(to_client, wire::max_handshake_frame_size, f, used));
      auto step = client.on_frame(f);
      to_client.erase(0, used);
      to_server += step.send;
      if (step.ec) {
        r.client_ec = step.ec;
        r.client_detail = step.detail;
        return r;
      }
      r.client_done = r.client_done || step.done;
    }
    if (r.server_ec) break;
  }
  if (r.client_done) r.client_session = client.take_session();
  if (r.server_done) r.server_session = server.take_session();
  return r;
}

handshake_result run_handshake(std::string_view client_secret, std::string_view server_secret,
                               wire::versions client_versions, wire::versions server_versions) {
  return run_handshake(std::vector<std::string>{std::string(client_secret)},
                       std::vector<std::string>{std::string(server_secret)}, client_versions, server_versions);
}

// Protocol versions [low, high] (high = low when not given), archive version `archive`.
wire::versions v(std::uint32_t low, std::uint32_t archive, std::uint32_t high = 0) {
  wire::versions out;
  out.protocol_min = low;
  out.protocol_max = high == 0 ? low : high;
  out.archive = archive;
  return out;
}

// A request frame carrying `body`, sealed by `from`.
std::string sealed(wire::session& from, std::uint64_t stream_id, std::string_view body) {
  wire::frame_header h;
  h.type = wire::frame_type::request;
  h.stream_id = stream_id;
  std::string frame = wire::encode_frame(h, "test.echo", body);
  from.seal_tail(frame, 0);
  return frame;
}

// Whether `to` accepts `bytes` (one sealed frame) as the next frame.
bool opens(wire::session& to, const std::string& bytes) {
  wire::frame_view f;
  std::size_t used = 0;
  REQUIRE_FALSE(wire::decode_frame(bytes, wire::default_max_frame_size, f, used, wire::tag_size));
  REQUIRE(used == bytes.size());
  return to.open(f.bytes, f.tag);
}

}  // namespace

TEST_CASE("peers that share the secret and the versions authenticate each other") {
  auto r = run_handshake("s3cret", "s3cret", v(2, 19), v(2, 19));
  CHECK_FALSE(r.client_ec);
  CHECK_FALSE(r.server_ec);
  CHECK(r.client_done);
  CHECK(r.server_done);
}

TEST_CASE("a wrong secret is unauthenticated on both sides, before anything else flows") {
  auto r = run_handshake("wrong", "s3cret", v(2, 19), v(2, 19));
  // The client refuses the server's proof first: it never proves anything to an impostor.
  CHECK(r.client_ec == fwd::errc::unauthenticated);
  CHECK_FALSE(r.client_done);
  CHECK_FALSE(r.server_done);
}

TEST_CASE("a server refuses a client proof made with another secret") {
  wire::server_handshake server("s3cret", v(2, 19));
  wire::client_handshake honest("s3cret", v(2, 19));
  wire::frame_view f;
  std::size_t used = 0;
  const std::string hello = honest.start();
  REQUIRE_FALSE(wire::decode_frame(hello, 4096, f, used));
  auto step = server.on_frame(f);
  REQUIRE_FALSE(step.ec);
  // A forged proof: 32 bytes that are not the HMAC.
  wire::frame_header h;
  h.type = wire::frame_type::client_proof;
  const std::string forged = wire::encode_frame(h, {}, std::string(32, 'A'));
  REQUIRE_FALSE(wire::decode_frame(forged, 4096, f, used));
  step = server.on_frame(f);
  CHECK(step.ec == fwd::errc::unauthenticated);
  CHECK_FALSE(step.done);
  // It tells the client why before closing.
  REQUIRE_FALSE(wire::decode_frame(step.send, 4096, f, used));
  CHECK(f.header.type == wire::frame_type::goodbye);
  CHECK(f.header.aux == static_cast<std::uint64_t>(fwd::errc::unauthenticated));
}

TEST_CASE("a protocol or archive version mismatch names both versions") {
  auto r = run_handshake("s", "s", v(3, 19), v(2, 19));
  CHECK(r.client_ec == fwd::errc::version_mismatch);
  CHECK(r.server_ec == fwd::errc::version_mismatch);
  CHECK_THAT(r.client_detail, Catch::Contains("protocol 3,") && Catch::Contains("protocol 2,"));
  auto ranges = run_handshake("s", "s", v(4, 19, 5), v(2, 19, 3));
  CHECK(ranges.client_ec == fwd::errc::version_mismatch);
  CHECK_THAT(ranges.client_detail, Catch::Contains("protocol 4..5") && Catch::Contains("protocol 2..3"));
  // Archive versions before Boost's binary format settled must be equal.
  auto a = run_handshake("s", "s", v(2, 19), v(2, 7));
  CHECK(a.client_ec == fwd::errc::version_mismatch);
  CHECK_THAT(a.client_detail, Catch::Contains("Boost archive 19") && Catch::Contains("Boost archive 7"));
  // A build that speaks only protocol 1 (no session MACs) is refused, by name.
  auto old = run_handshake("s", "s", v(2, 19), v(1, 19));
  CHECK(old.client_ec == fwd::errc::version_mismatch);
  CHECK_THAT(old.client_detail, Catch::Contains("protocol 1,"));
}

TEST_CASE("peers use the highest protocol version both speak") {
  auto r = run_handshake("s", "s", v(2, 19, 3), v(2, 19));
  REQUIRE(r.client_done);
  REQUIRE(r.server_done);
  CHECK(r.client_session.protocol() == 2);
  CHECK(r.server_session.protocol() == 2);
  auto up = run_handshake("s", "s", v(2, 19, 4), v(3, 19, 5));
  REQUIRE(up.client_done);
  CHECK(up.client_session.protocol() == 4);
  CHECK(up.server_session.protocol() == 4);
}

TEST_CASE("Boost archive versions from 8 on interoperate, in both directions") {
  CHECK(wire::archives_compatible(19, 18));
  CHECK(wire::archives_compatible(8, 20));
  CHECK(wire::archives_compatible(7, 7));
  CHECK_FALSE(wire::archives_compatible(7, 19));
  CHECK_FALSE(wire::archives_compatible(19, 7));
  auto r = run_handshake("s", "s", v(2, 18), v(2, 19));
  CHECK(r.client_done);
  CHECK(r.server_done);
  wire::versions other_order = v(2, 19);
  other_order.byte_order = 2;
  auto endian = run_handshake("s", "s", other_order, v(2, 19));
  CHECK(endian.client_ec == fwd::errc::version_mismatch);
  CHECK_THAT(endian.client_detail, Catch::Contains("big-endian"));
}

TEST_CASE("both sides derive the same session keys, one per direction") {
  auto r = run_handshake("s3cret", "s3cret", v(2, 19), v(2, 19));
  REQUIRE(r.client_done);
  REQUIRE(r.server_done);
  CHECK(opens(r.server_session, sealed(r.client_session, 1, "to the server")));
  CHECK(opens(r.client_session, sealed(r.server_session, 1, "to the client")));
  // A frame sealed for one direction does not open in the other: a reflected frame fails.
  auto again = run_handshake("s3cret", "s3cret", v(2, 19), v(2, 19));
  const std::string to_server = sealed(again.client_session, 1, "x");
  CHECK_FALSE(opens(again.client_session, to_server));
}

TEST_CASE("a replayed, reordered, altered or foreign frame fails its MAC") {
  auto r = run_handshake("s3cret", "s3cret", v(2, 19), v(2, 19));
  const std::string first = sealed(r.client_session, 1, "first");
  const std::string second = sealed(r.client_session, 2, "second");
  SECTION("in order: both open") {
    CHECK(opens(r.server_session, first));
    CHECK(opens(r.server_session, second));
  }
  SECTION("replayed") {
    CHECK(opens(r.server_session, first));
    CHECK_FALSE(opens(r.server_session, first));
  }
  SECTION("reordered") { CHECK_FALSE(opens(r.server_session, second)); }
  SECTION("altered") {
    std::string changed = first;
    changed[wire::header_size + 3] ^= 1;
    CHECK_FALSE(opens(r.server_session, changed));
  }
  SECTION("from another session with the same secret and versions") {
    auto other = run_handshake("s3cret", "s3cret", v(2, 19), v(2, 19));
    CHECK_FALSE(opens(r.server_session, sealed(other.client_session, 1, "first")));
  }
}

TEST_CASE("secrets rotate: each side proves its first secret and accepts all of its own") {
  const std::string old_secret = "the old cluster secret";
  const std::string new_secret = "the new cluster secret";
  // New secret first on the client, old on the server that already accepts the new one.
  auto a = run_handshake({new_secret, old_secret}, {old_secret, new_secret}, v(2, 19), v(2, 19));
  REQUIRE(a.client_done);
  REQUIRE(a.server_done);
  CHECK(opens(a.server_session, sealed(a.client_session, 1, "a")));
  CHECK(opens(a.client_session, sealed(a.server_session, 1, "b")));
  // The old secret dropped on one side too early: whoever still proves it is refused.
  auto b = run_handshake({new_secret}, {old_secret, new_secret}, v(2, 19), v(2, 19));
  CHECK(b.client_ec == fwd::errc::unauthenticated);  // it cannot check the server's old proof
  auto c = run_handshake({old_secret, new_secret}, {new_secret}, v(2, 19), v(2, 19));
  CHECK(c.server_ec == fwd::errc::unauthenticated);  // the server no longer accepts the old one
  CHECK(c.client_done == false);
  auto d = run_handshake({old_secret}, {new_secret, old_secret}, v(2, 19), v(2, 19));
  CHECK(d.client_ec == fwd::errc::unauthenticated);
}

TEST_CASE("a relay that forwards the handshake has no session key") {
  // The relay sees every handshake byte; what it derives without the secret does not seal
  // frames the server accepts.
  wire::client_handshake client("the cluster secret", v(2, 19));
  wire::server_handshake server("the cluster secret", v(2, 19));
  wire::client_handshake relay_guess("a guess at the secret", v(2, 19));
  wire::frame_view f;
  std::size_t used = 0;
  const std::string hello = client.start();
  REQUIRE_FALSE(wire::decode_frame(hello, wire::max_handshake_frame_size, f, used));
  auto server_hello = server.on_frame(f);
  REQUIRE_FALSE(server_hello.ec);
  REQUIRE_FALSE(wire::decode_frame(server_hello.send, wire::max_handshake_frame_size, f, used));
  auto proof = client.on_frame(f);
  REQUIRE_FALSE(proof.ec);
  CHECK(relay_guess.on_frame(f).ec == fwd::errc::unauthenticated);
  REQUIRE_FALSE(wire::decode_frame(proof.send, wire::max_handshake_frame_size, f, used));
  auto welcome = server.on_frame(f);
  REQUIRE(welcome.done);
  auto server_session = server.take_session();
  // An injected frame sealed under keys from a wrong secret fails.
  wire::session_keys guessed;
  guessed.send.fill(0x42);
  guessed.receive.fill(0x42);
  wire::session relay(guessed);
  CHECK_FALSE(opens(server_session, sealed(relay, 1, "SELECT 1")));
}

TEST_CASE("secrets under 32 bytes are refused, with how to make one") {
  CHECK(wire::secret_problem("x", std::string(32, 'k')).empty());
  const std::string why = wire::secret_problem("node_options::secret", "short");
  CHECK_THAT(why, Catch::Contains("node_options::secret is 5 bytes") && Catch::Contains("openssl rand -base64 32"));
}

TEST_CASE("a handshake frame out of order is a protocol_error") {
  wire::server_handshake server("s", v(2, 19));
  wire::frame_header h;
  h.type = wire::frame_type::request;  // a request before the handshake
  const std::string bytes = wire::encode_frame(h, "fwd.hello", "");
  wire::frame_view f;
  std::size_t used = 0;
  REQUIRE_FALSE(wire::decode_frame(bytes, 4096, f, used));
  CHECK(server.on_frame(f).ec == fwd::errc::protocol_error);
}

TEST_CASE("a frame's tag is AES-256-GCM's tag over the frame as authenticated data, the sequence as nonce") {
  fwd::detail::sha256_digest key;
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i * 7 + 1);
  fwd::detail::gmac_context gmac(key);
  for (std::size_t size : {0u, 1u, 16u, 17u, 130u, 4097u}) {
    std::string message(size, '\0');
    for (std::size_t i = 0; i < size; ++i) message[i] = static_cast<char>(i * 13);
    const std::uint64_t counter = 0x0102030405060708ull + size;
    gmac.begin(counter);
    gmac.update(message.data(), message.size());
    const auto ours = gmac.finish();
    // The same through OpenSSL's AES-256-GCM, encrypting nothing.
    unsigned char iv[12] = {};
    for (int i = 0; i < 8; ++i) iv[4 + i] = static_cast<unsigned char>(counter >> (8 * i));
    std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> gcm(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
    int length = 0;
    unsigned char none[16];
    std::array<std::uint8_t, 16> theirs{};
    REQUIRE(EVP_EncryptInit_ex(gcm.get(), EVP_aes_256_gcm(), nullptr, key.data(), iv) == 1);
    if (size > 0) {
      REQUIRE(EVP_EncryptUpdate(gcm.get(), nullptr, &length, reinterpret_cast<const unsigned char*>(message.data()),
                                static_cast<int>(size)) == 1);
    }
    REQUIRE(EVP_EncryptFinal_ex(gcm.get(), none, &length) == 1);
    REQUIRE(EVP_CIPHER_CTX_ctrl(gcm.get(), EVP_CTRL_GCM_GET_TAG, 16, theirs.data()) == 1);
    CHECK(ours == theirs);
  }
}
