// The wire codec on its own: frames and the handshake, as bytes.

#include <fwd/rpc/handshake.hpp>
#include <fwd/rpc/wire.hpp>

#include <catch2/catch.hpp>

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
};

// Runs a whole handshake in memory, frames passed through the real decoder.
handshake_result run_handshake(std::string_view client_secret, std::string_view server_secret,
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
  return r;
}

wire::versions v(std::uint32_t protocol, std::uint32_t archive) {
  wire::versions out;
  out.protocol = protocol;
  out.archive = archive;
  return out;
}

}  // namespace

TEST_CASE("peers that share the secret and the versions authenticate each other") {
  auto r = run_handshake("s3cret", "s3cret", v(1, 19), v(1, 19));
  CHECK_FALSE(r.client_ec);
  CHECK_FALSE(r.server_ec);
  CHECK(r.client_done);
  CHECK(r.server_done);
}

TEST_CASE("a wrong secret is unauthenticated on both sides, before anything else flows") {
  auto r = run_handshake("wrong", "s3cret", v(1, 19), v(1, 19));
  // The client refuses the server's proof first: it never proves anything to an impostor.
  CHECK(r.client_ec == fwd::errc::unauthenticated);
  CHECK_FALSE(r.client_done);
  CHECK_FALSE(r.server_done);
}

TEST_CASE("a server refuses a client proof made with another secret") {
  wire::server_handshake server("s3cret", v(1, 19));
  wire::client_handshake honest("s3cret", v(1, 19));
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
  auto r = run_handshake("s", "s", v(1, 19), v(2, 19));
  CHECK(r.client_ec == fwd::errc::version_mismatch);
  CHECK(r.server_ec == fwd::errc::version_mismatch);
  CHECK_THAT(r.client_detail, Catch::Contains("protocol 1") && Catch::Contains("protocol 2"));
  auto a = run_handshake("s", "s", v(1, 19), v(1, 18));
  CHECK(a.client_ec == fwd::errc::version_mismatch);
  CHECK_THAT(a.client_detail, Catch::Contains("Boost archive 19") && Catch::Contains("Boost archive 18"));
}

TEST_CASE("a handshake frame out of order is a protocol_error") {
  wire::server_handshake server("s", v(1, 19));
  wire::frame_header h;
  h.type = wire::frame_type::request;  // a request before the handshake
  const std::string bytes = wire::encode_frame(h, "fwd.hello", "");
  wire::frame_view f;
  std::size_t used = 0;
  REQUIRE_FALSE(wire::decode_frame(bytes, 4096, f, used));
  CHECK(server.on_frame(f).ec == fwd::errc::protocol_error);
}
