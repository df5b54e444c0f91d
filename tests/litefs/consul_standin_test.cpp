// The Consul stand-in on its own (no LiteFS, no FUSE): the session, lock and blocking-query
// rules LiteFS's failover depends on.

#include <catch2/catch.hpp>
#include <chrono>
#include <regex>
#include <string>

#include "consul_standin.hpp"
#include "litefs_fixture.hpp"

using namespace std::chrono_literals;

namespace {

struct client {
  fwd_test::consul_standin& consul;
  std::pair<int, std::string> put(const std::string& target, const std::string& body = {}) {
    return fwd_test::http_request(consul.port(), "PUT", target, 5000ms, body);
  }
  std::pair<int, std::string> get(const std::string& target,
                                  std::chrono::milliseconds timeout = 5000ms) {
    return fwd_test::http_request(consul.port(), "GET", target, timeout);
  }
  std::string session(const std::string& ttl, const std::string& lock_delay_ns) {
    auto [status, body] =
        put("/v1/session/create", R"({"Name":"litefs","Behavior":"delete","LockDelay":)" +
                                      lock_delay_ns + R"(,"TTL":")" + ttl + R"("})");
    REQUIRE(status == 200);
    std::smatch m;
    REQUIRE(std::regex_search(body, m, std::regex(R"re("ID":"([^"]+)")re")));
    return m[1].str();
  }
};

}  // namespace

TEST_CASE("Consul stand-in: a lock is exclusive and dies with its session's TTL - then the "
          "lock-delay holds off the next acquire and a blocking GET wakes on the change") {
  fwd_test::consul_standin consul;
  client c{consul};
  CHECK(c.put("/v1/catalog/register", "{}").second == "true");

  const std::string a = c.session("300ms", "400000000");  // TTL 0.3 s, lock-delay 0.4 s
  const std::string b = c.session("10s", "0");
  CHECK(c.put("/v1/kv/litefs/primary?acquire=" + a, R"({"hostname":"node1"})").second == "true");
  CHECK(c.put("/v1/kv/litefs/primary?acquire=" + b, "x").second == "false");
  CHECK(consul.holder("litefs/primary") == a);
  auto [status, body] = c.get("/v1/kv/litefs/primary");
  CHECK(status == 200);
  CHECK(body.find("\"Session\":\"" + a + "\"") != std::string::npos);
  CHECK(body.find("eyJob3N0bmFtZSI6Im5vZGUxIn0=") != std::string::npos);  // base64 of the value
  CHECK(c.put("/v1/session/renew/" + a).first == 200);

  // Not renewed: the session expires, its key is deleted; a blocking GET on the current
  // index wakes for that change.
  const auto asked = std::chrono::steady_clock::now();
  const std::string index = std::to_string(consul.index());
  auto [s2, after] = c.get("/v1/kv/litefs/primary?index=" + index + "&wait=5000ms", 6000ms);
  const auto waited = std::chrono::steady_clock::now() - asked;
  CHECK(s2 == 404);  // deleted with the session (Behavior "delete")
  CHECK(waited >= 200ms);
  CHECK(waited < 3000ms);
  CHECK(c.put("/v1/session/renew/" + a).first == 404);

  // Lock-delay: b cannot take the key at once, then can.
  CHECK(c.put("/v1/kv/litefs/primary?acquire=" + b, "b").second == "false");
  auto [s3, unchanged] = c.get("/v1/kv/litefs/primary?index=100&wait=600ms", 2000ms);
  CHECK(s3 == 404);  // a blocking GET with nothing changing returns after its wait
  CHECK(c.put("/v1/kv/litefs/primary?acquire=" + b, "b").second == "true");
  CHECK(c.put("/v1/kv/litefs/primary?release=" + b).second == "true");
  CHECK_FALSE(consul.holder("litefs/primary").has_value());
  CHECK(c.put("/v1/session/destroy/" + b).second == "true");
  CHECK(fwd_test::http_request(consul.port(), "DELETE", "/v1/kv/litefs/primary", 2000ms).second ==
        "true");
  CHECK(c.get("/v1/kv/litefs/primary").first == 404);
}
