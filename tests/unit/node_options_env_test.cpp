// node_options::from_env(): a node configured by its environment alone, and an error that
// names the variable and shows a valid value for each mistake.

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <fwd/node_options.hpp>
#include <string>

#include "../support/temp_dir.hpp"

namespace {

const std::string good_secret(40, 's');

// Sets the variables a test names and unsets the others; restores nothing (each test
// sets what it needs).
struct env {
  env() {
    for (const char* name : {"FWD_LISTEN", "FWD_MEMBERS", "FWD_DATABASE", "FWD_SECRET",
                             "FWD_SECRET_FILE", "FWD_LITEFS_HTTP"})
      ::unsetenv(name);
    ::setenv("FWD_LISTEN", "0.0.0.0:7070", 1);
    ::setenv("FWD_MEMBERS", "app.internal:7070", 1);
    ::setenv("FWD_DATABASE", "/litefs/app.db", 1);
    ::setenv("FWD_SECRET", good_secret.c_str(), 1);
  }
  ~env() {
    for (const char* name : {"FWD_LISTEN", "FWD_MEMBERS", "FWD_DATABASE", "FWD_SECRET",
                             "FWD_SECRET_FILE", "FWD_LITEFS_HTTP"})
      ::unsetenv(name);
  }
  static void set(const char* name, const std::string& value) { ::setenv(name, value.c_str(), 1); }
  static void unset(const char* name) { ::unsetenv(name); }
};

std::string error_of() {
  boost::system::error_code ec;
  fwd::diagnostics diag;
  fwd::node_options::from_env(ec, diag);
  if (!ec) return "";
  CHECK(ec == fwd::errc::bad_argument);
  return diag.message();
}

}  // namespace

TEST_CASE("from_env reads the listen address, DNS members, database, secret and LiteFS HTTP address") {
  env e;
  env::set("FWD_LITEFS_HTTP", ":20202");
  boost::system::error_code ec;
  fwd::diagnostics diag;
  const fwd::node_options o = fwd::node_options::from_env(ec, diag);
  REQUIRE_FALSE(ec);
  CHECK(o.listen == boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("0.0.0.0"), 7070));
  REQUIRE(o.members.dns.size() == 1);
  CHECK(o.members.dns[0].name == "app.internal");
  CHECK(o.members.dns[0].port == 7070);
  CHECK(o.members.static_members.empty());
  CHECK(o.database == "/litefs/app.db");
  CHECK(o.secret == good_secret);
  REQUIRE(o.litefs_http);
  CHECK(*o.litefs_http ==
        boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 20202));
}

TEST_CASE("from_env takes IPv6 addresses in brackets, and a comma list of static members") {
  env e;
  env::set("FWD_LISTEN", "[::]:7070");
  env::set("FWD_MEMBERS", "[fdaa::3]:7070, 10.0.0.5:7071,[::1]:7072");
  const fwd::node_options o = fwd::node_options::from_env();
  CHECK(o.listen.address() == boost::asio::ip::make_address("::"));
  CHECK(o.listen.port() == 7070);
  REQUIRE(o.members.static_members.size() == 3);
  CHECK(o.members.static_members[0].endpoint ==
        boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("fdaa::3"), 7070));
  CHECK(o.members.static_members[1].endpoint.port() == 7071);
  CHECK(o.members.static_members[2].endpoint.address().is_loopback());
  CHECK(o.members.dns.empty());
  CHECK_FALSE(o.litefs_http);
}

TEST_CASE("from_env reads the secret from FWD_SECRET_FILE without its trailing newline") {
  env e;
  fwd_test::temp_dir dir;
  const auto file = dir.path() / "secret";
  std::ofstream(file) << good_secret << "\n";
  env::unset("FWD_SECRET");
  env::set("FWD_SECRET_FILE", file.string());
  CHECK(fwd::node_options::from_env().secret == good_secret);
}

TEST_CASE("from_env names the variable and shows a valid value for each mistake") {
  env e;
  SECTION("FWD_LISTEN unset") {
    env::unset("FWD_LISTEN");
    const auto why = error_of();
    CHECK_THAT(why, Catch::Contains("FWD_LISTEN is unset") && Catch::Contains("[::]:7070"));
  }
  SECTION("FWD_LISTEN with an unbracketed IPv6 address") {
    env::set("FWD_LISTEN", ":::7070");
    CHECK_THAT(error_of(), Catch::Contains("FWD_LISTEN=\":::7070\"") &&
                               Catch::Contains("IPv6 in brackets"));
  }
  SECTION("FWD_LISTEN with a name") {
    env::set("FWD_LISTEN", "myhost:7070");
    CHECK_THAT(error_of(), Catch::Contains("FWD_LISTEN") && Catch::Contains("0.0.0.0:7070"));
  }
  SECTION("FWD_LISTEN with port 0 or a port past 65535") {
    env::set("FWD_LISTEN", GENERATE(std::string("0.0.0.0:0"), std::string("0.0.0.0:70000"),
                                    std::string("0.0.0.0:")));
    CHECK_THAT(error_of(), Catch::Contains("FWD_LISTEN"));
  }
  SECTION("FWD_MEMBERS unset") {
    env::unset("FWD_MEMBERS");
    CHECK_THAT(error_of(), Catch::Contains("FWD_MEMBERS is unset") &&
                               Catch::Contains("app.internal:7070"));
  }
  SECTION("FWD_MEMBERS with an entry without a port") {
    env::set("FWD_MEMBERS", "10.0.0.5:7070,app.internal");
    CHECK_THAT(error_of(), Catch::Contains("FWD_MEMBERS") &&
                               Catch::Contains("member \"app.internal\" is not host:port"));
  }
  SECTION("FWD_MEMBERS of commas alone") {
    env::set("FWD_MEMBERS", " , ");
    CHECK_THAT(error_of(), Catch::Contains("FWD_MEMBERS") && Catch::Contains("no member given"));
  }
  SECTION("FWD_DATABASE unset or relative") {
    env::unset("FWD_DATABASE");
    CHECK_THAT(error_of(), Catch::Contains("FWD_DATABASE is unset") &&
                               Catch::Contains("/litefs/app.db"));
    env::set("FWD_DATABASE", "app.db");
    CHECK_THAT(error_of(), Catch::Contains("FWD_DATABASE=\"app.db\" is not an absolute path"));
  }
  SECTION("no secret, both secrets, a short secret, an unreadable secret file") {
    env::unset("FWD_SECRET");
    CHECK_THAT(error_of(), Catch::Contains("neither FWD_SECRET nor FWD_SECRET_FILE is set") &&
                               Catch::Contains("openssl rand -hex 32"));
    env::set("FWD_SECRET", good_secret);
    env::set("FWD_SECRET_FILE", "/nonexistent/secret");
    CHECK_THAT(error_of(), Catch::Contains("both set"));
    env::unset("FWD_SECRET");
    CHECK_THAT(error_of(), Catch::Contains("FWD_SECRET_FILE=\"/nonexistent/secret\"") &&
                               Catch::Contains("cannot read"));
    env::unset("FWD_SECRET_FILE");
    env::set("FWD_SECRET", "short-secret");
    CHECK_THAT(error_of(), Catch::Contains("the secret from FWD_SECRET is 12 bytes") &&
                               Catch::Contains("at least 32 bytes"));
  }
  SECTION("FWD_LITEFS_HTTP malformed") {
    env::set("FWD_LITEFS_HTTP", "localhost");
    CHECK_THAT(error_of(), Catch::Contains("FWD_LITEFS_HTTP=\"localhost\"") &&
                               Catch::Contains("127.0.0.1:20202"));
  }
}

TEST_CASE("from_env's throwing form throws fwd::error with the same message") {
  env e;
  env::unset("FWD_DATABASE");
  try {
    fwd::node_options::from_env();
    FAIL("from_env did not throw");
  } catch (const fwd::error& err) {
    CHECK(err.code().value() == static_cast<int>(fwd::errc::bad_argument));
    CHECK_THAT(err.get_diagnostics().message(), Catch::Contains("FWD_DATABASE is unset"));
  }
}

TEST_CASE("parse_endpoint accepts address:port and [ipv6]:port only") {
  CHECK(fwd::parse_endpoint("127.0.0.1:1"));
  CHECK(fwd::parse_endpoint("[::1]:65535"));
  CHECK_FALSE(fwd::parse_endpoint("::1:7070"));
  CHECK_FALSE(fwd::parse_endpoint("[::1]7070"));
  CHECK_FALSE(fwd::parse_endpoint("[::1]:"));
  CHECK_FALSE(fwd::parse_endpoint("127.0.0.1"));
  CHECK_FALSE(fwd::parse_endpoint("127.0.0.1:7x"));
  CHECK_FALSE(fwd::parse_endpoint(":7070"));
  CHECK(fwd::parse_endpoint(":7070", true)->address().to_string() == "127.0.0.1");
}
